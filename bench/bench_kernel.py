"""Kernel target figures: module build time per release of the fs/proc fixture series,
and the time from insmod to transition complete in the installed kernel under qemu.

Baselines, measured in the same run: building a one-function module with the
kernel's build system alone (build ratio), and insmod of that plain module in the same
guest (load ratio).  Each release is loaded CYCLES times (r1, r2, r3, disable), median
and worst are printed.

    .venv/bin/python bench/bench_kernel.py [--cycles 5]
"""

from __future__ import annotations

import argparse
import base64
import gzip
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.qemu_guest import ensure_kernel_packages, run_guest  # noqa: E402
from tests.test_kernel_e2e import SOURCES  # noqa: E402
from tests.test_real_sources import fetch_kernel  # noqa: E402

SERIES = ROOT / "fixtures" / "kernel-livepatch" / "patches"
PLAIN = """#include <linux/module.h>
#include <linux/kernel.h>
static int __init plain_init(void) { pr_info("plain loaded\\n"); return 0; }
static void __exit plain_exit(void) { }
module_init(plain_init);
module_exit(plain_exit);
MODULE_LICENSE("GPL");
"""


def klpcc(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "klpcc", *args], check=True, capture_output=True, text=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=5)
    args = ap.parse_args()
    kernel = ensure_kernel_packages()
    src = fetch_kernel(kernel.source_version, SOURCES)
    with tempfile.TemporaryDirectory(prefix="klpcc-bench-kernel-") as tmp:
        work = Path(tmp)
        plain = work / "plain"
        plain.mkdir()
        (plain / "plain.c").write_text(PLAIN)
        (plain / "Kbuild").write_text("obj-m := plain.o\n")
        start = time.perf_counter()
        subprocess.run(["make", "-C", str(kernel.kdir), f"M={plain}", "modules"], check=True,
                       capture_output=True)
        base_build = time.perf_counter() - start

        run = run_guest({}, "echo KSBEGIN; gzip -c /proc/kallsyms | base64; echo KSEND", timeout=600)
        m = re.search(r"KSBEGIN\n(.*?)KSEND", run.output, re.S)
        kallsyms = work / "kallsyms"
        kallsyms.write_bytes(gzip.decompress(base64.b64decode("".join(m.group(1).split()))))

        files: dict[str, Path] = {"/bin/klpcc-load": ROOT / "runtime/kernel/klpcc-load",
                                  "/lib/klpcc/plain.ko": plain / "plain.ko"}
        print(f"kernel {kernel.release} ({kernel.package_version}); plain module build {base_build:.2f} s")
        print("release  compile  build   build/plain")
        for r in (1, 2, 3):
            start = time.perf_counter()
            klpcc("compile", str(SERIES), "--source", str(src), "-r", str(r), "-o", str(work / f"b{r}"))
            compiled = time.perf_counter() - start
            start = time.perf_counter()
            klpcc("build", str(work / f"b{r}"), "--kernel", str(kernel.kdir), "--kallsyms", str(kallsyms),
                  "--object", "fs/binfmt_misc.c=binfmt_misc",
                  "--name", f"klpcc_proc_r{r}", "-o", str(work / f"m{r}"))
            built = time.perf_counter() - start
            files[f"/lib/klpcc/klpcc_proc_r{r}.ko"] = work / f"m{r}" / f"klpcc_proc_r{r}.ko"
            print(f"r{r}       {compiled:5.2f} s  {built:5.2f} s  {built / base_build:5.1f}x")

        script = ("t0=$(cut -d' ' -f1 /proc/uptime); insmod /lib/klpcc/plain.ko; "
                  "t1=$(cut -d' ' -f1 /proc/uptime); echo \"PLAIN $t0 $t1\"; rmmod plain\n"
                  f"for i in $(seq {args.cycles}); do\n"
                  "  for r in 1 2 3; do\n"
                  "    /bin/klpcc-load /lib/klpcc/klpcc_proc_r$r.ko | sed \"s/^/LOAD r$r /\"\n"
                  "  done\n"
                  "  /bin/klpcc-load --disable klpcc_proc_r3 >/dev/null\n"
                  "done\n")
        guest = run_guest(files, script, timeout=900)
        t0, t1 = map(float, guest.lines("PLAIN ")[0].split())
        plain_load = max(t1 - t0, 0.01)  # /proc/uptime counts in 10 ms steps
        print(f"\ninsmod of the plain module: {plain_load * 1000:.0f} ms (resolution 10 ms)")
        print("release  insmod->transition complete (median / worst)  transition alone  "
              "ratio to plain insmod")
        for r in (1, 2, 3):
            runs = [re.search(r"enabled in ([\d.]+) s \(transition ([\d.]+) s\)", line)
                    for line in guest.lines(f"LOAD r{r} ")]
            total = [float(m[1]) for m in runs if m]
            trans = [float(m[2]) for m in runs if m]
            if len(total) != args.cycles:
                raise SystemExit(f"r{r}: {len(total)} of {args.cycles} loads reported:\n{guest.tail()}")
            print(f"r{r}       {statistics.median(total) * 1000:6.0f} / {max(total) * 1000:4.0f} ms"
                  f"                      {statistics.median(trans) * 1000:5.0f} ms"
                  f"           {statistics.median(total) / plain_load:5.1f}x")
        print(f"\nguest run {guest.seconds:.1f} s for {3 * args.cycles} replaces and {args.cycles} disables")


if __name__ == "__main__":
    main()
