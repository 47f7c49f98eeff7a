#!/usr/bin/env python3
"""Benchmark: the function set each fixture release patches, decided from the source
alone (``--source-level``) and from the compiled code (the default), and what the
compiled comparison costs: build time without it, with it on a cold object cache, and
with it on a warm one, in the same run.

Userspace: fixtures/demo/live and fixtures/service, built patchable.  Kernel:
fixtures/kernel-livepatch and fixtures/kernel-compiled against the installed kernel's
headers and linux-source of its version (``--source-only``: the module is written, not
made, so the figures are the function-set decision itself).

    python bench/bench_function_sets.py [--skip-kernel]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
KLPCC = [sys.executable, "-m", "klpcc"]


def run(*args: str, env: dict | None = None) -> tuple[dict, float]:
    start = time.perf_counter()
    proc = subprocess.run([*KLPCC, *args, "--format", "json"], capture_output=True, text=True, env=env,
                          check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "?"}, seconds
    return json.loads(proc.stdout), seconds


def program(src: Path, files: list[str], out: Path) -> Path:
    flags = subprocess.run([*KLPCC, "config", "--cflags"], capture_output=True, text=True, check=True).stdout
    libs = subprocess.run([*KLPCC, "config", "--libs"], capture_output=True, text=True, check=True).stdout
    exe = out / "prog"
    sources = [str(src / f) for f in files]
    subprocess.run(["cc", "-O2", *flags.split(), "-o", str(exe), *sources, *libs.split()], check=True)
    return exe


def names(doc: dict) -> list[str]:
    return sorted(f["name"] for f in doc.get("functions", []))


def measure(label: str, series: Path, src: Path, releases: int, target: list[str], work: Path,
            extra: dict[int, list[str]] | None = None) -> None:
    print(f"\n{label}")
    print(f"  {'release':<44} {'source':>6} {'compiled':>8}   {'without':>8} {'cold':>8} {'warm':>8}   "
          "changes")
    for r in range(1, releases + 1):
        bundle = work / f"{label}-b{r}"
        subprocess.run([*KLPCC, "compile", str(series), "--source", str(src), "-r", str(r), "-o", str(bundle),
                        "--force"], capture_output=True, check=True)
        more = (extra or {}).get(r, [])
        cache = work / f"cache-{label}-{r}"
        env = dict(os.environ, XDG_CACHE_HOME=str(cache), KLPCC_CACHE=str(cache / "klpcc"))
        out = work / f"{label}-out{r}"

        def build(*opts: str, env=env, bundle=bundle, more=more, out=out) -> tuple[dict, float]:
            shutil.rmtree(out, ignore_errors=True)
            return run("build", str(bundle), *target, "-o", str(out), "--force", *more, *opts, env=env)

        src_doc, t0 = build("--source-level")
        cold, t1 = build()
        warm, t2 = build()
        name = json.loads((bundle / "manifest.json").read_text())["release"]["name"]
        a = "refused" if "error" in src_doc else str(len(names(src_doc)))
        b = "refused" if "error" in warm else str(len(names(warm)))
        joined = sorted(set(names(warm)) - set(names(src_doc)))
        left = sorted(set(names(src_doc)) - set(names(warm)))
        what = (f"+{','.join(joined)}" if joined else "") + (f" -{','.join(left)}" if left else "")
        if "error" in src_doc:
            what += f" (source-level: {src_doc['error'][-80:]})"
        print(f"  {name[:44]:<44} {a:>6} {b:>8}   {t0:>7.2f}s {t1:>7.2f}s {t2:>7.2f}s   {what}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-kernel", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="klpcc-bench-sets-"))
    live = ROOT / "fixtures" / "demo" / "live"
    exe = program(live / "src", ["service.c", "shop.c"], work)
    measure("demo-live", live / "patches", live / "src", 4, ["--binary", str(exe)], work)
    svc = ROOT / "fixtures" / "service"
    (work / "svc").mkdir()
    exe = program(svc / "src", ["server.c", "requests.c"], work / "svc")
    measure("service", svc / "patches", svc / "src", 3, ["--binary", str(exe)], work,
            {2: ["--immediate", "worker"], 3: ["--immediate", "worker"]})
    if not args.skip_kernel:
        from tests.qemu_guest import ensure_kernel_packages
        from tests.test_kernel_e2e import OBJECT, SOURCES
        from tests.test_real_sources import fetch_kernel

        kernel = ensure_kernel_packages()
        src = fetch_kernel(kernel.source_version, SOURCES)
        kdir = ["--kernel", str(kernel.kdir), "--source-only"]
        measure("kernel-livepatch", ROOT / "fixtures" / "kernel-livepatch" / "patches", src, 3,
                [*kdir, "--object", OBJECT], work)
        measure("kernel-compiled", ROOT / "fixtures" / "kernel-compiled" / "patches", src, 3, kdir, work)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
