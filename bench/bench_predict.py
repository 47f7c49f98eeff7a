#!/usr/bin/env python3
"""Benchmark: how well ``klpcc build --kernel`` without ``--kallsyms`` predicts which
statics Debian's running kernel kept, over real units of linux-source-6.1.

Boots the installed Debian kernel under qemu once to read its ``/proc/kallsyms``,
extracts ``fs/``, ``kernel/``, ``mm/``, ``net/core/`` of linux-source at exactly that
kernel's version (the other headers come from the kernel's build directory), compiles every ``.c`` of those
directories that is built into vmlinux with the kernel's own flags (from Kbuild, as
the build does), and compares (``tests/predict.py``).  Prints the agreement and every
disagreement.

    python bench/bench_predict.py [--dirs fs,kernel,mm,net/core] [--limit N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.predict import predict  # noqa: E402
from tests.qemu_guest import ensure_kernel_packages  # noqa: E402
from tests.test_kernel_e2e import _kallsyms  # noqa: E402
from tests.test_real_sources import fetch_kernel  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dirs", default="fs,kernel,mm,net/core")
    ap.add_argument("--limit", type=int, default=0, help="at most N units (0: all)")
    args = ap.parse_args()
    kernel = ensure_kernel_packages()
    dirs = tuple(d.strip("/") for d in args.dirs.split(","))
    start = time.perf_counter()
    tree = fetch_kernel(kernel.source_version, dirs)  # headers come from the kernel build directory
    work = Path(tempfile.mkdtemp(prefix="klpcc-bench-predict-"))
    kallsyms, _ = _kallsyms(work)
    units = sorted(p.relative_to(tree).as_posix() for d in dirs for p in (tree / d).glob("*.c"))
    if args.limit:
        units = units[:args.limit]
    fetched = time.perf_counter() - start
    start = time.perf_counter()
    res = predict(kernel.kdir, tree, units, kallsyms)
    seconds = time.perf_counter() - start
    print(f"kernel {kernel.release} ({kernel.package_version}); {len(units)} units of {', '.join(dirs)}; "
          f"sources and kallsyms in {fetched:.0f} s")
    print(f"units compiled and built into vmlinux: {len(res.units)}; skipped: {len(res.skipped)} "
          f"({sum('not built' in w for w in res.skipped.values())} not built in, "
          f"{sum('compile' in w for w in res.skipped.values())} not compiling out of tree)")
    print(f"static functions compared: {res.compared}; agreement {res.agree}/{res.compared} = "
          f"{100 * res.rate:.2f}% ({seconds:.0f} s)")
    for line in res.wrong:
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
