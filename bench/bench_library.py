"""Shared-library figures for the userspace target, on the library and programs of
tests/test_userspace_library.py (libtax.so; taxd: three worker threads calling it):

* apply time: `klpcc apply --all-mapping` over N processes (1, 4, 16), the whole command
  and per process, against `klpcc status --pid` of one process (the command's own cost);
* start-up: a program that maps the library and exits at once, with a patch installed
  for the library (applied before main), against the runtime without an installed patch
  and against no runtime at all;
* the cost of a call into the library through its PLT, redirected into the patch,
  against the same call unpatched and against a direct call inside the program.

    .venv/bin/python bench/bench_library.py [--processes 1,4,16] [--starts 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers import klpcc, make_series  # noqa: E402
from tests.test_userspace_library import BASE, LIB_FIX, Proc, _cc, _lib, _taxd  # noqa: E402
from tests.userspace_helpers import wait_listening  # noqa: E402

QUICK_C = """\
#include <stdio.h>
#include "lib/tax.h"
int main(void)
{
	return tax(2000) == 0;
}
"""

CALLS_C = """\
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "lib/tax.h"

__attribute__((noinline)) static int local_tax(int cents)
{
	return cents * (cents > 1000 ? 20 : 10) / 100;
}

/* ns per call of fn, called n times in a loop (a direct call or one through the PLT) */
#define NS_PER_CALL(fn, n)                                                        \
	({                                                                        \
		struct timespec a_, b_;                                           \
		volatile long sink_ = 0;                                          \
		clock_gettime(CLOCK_MONOTONIC, &a_);                              \
		for (long i_ = 0; i_ < (n); i_++)                                 \
			sink_ += fn((int)(i_ & 4095));                            \
		clock_gettime(CLOCK_MONOTONIC, &b_);                              \
		((b_.tv_sec - a_.tv_sec) * 1e9 + (b_.tv_nsec - a_.tv_nsec)) / (n); \
	})

int main(int argc, char **argv)
{
	char line[64];
	long n = argc > 1 ? atol(argv[1]) : 20000000;

	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("ready\\n");
	while (fgets(line, sizeof(line), stdin))
		printf("%.3f %.3f\\n", NS_PER_CALL(local_tax, n), NS_PER_CALL(tax, n));
	return 0;
}
"""


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def build(tmp: Path):
    cflags = klpcc("config", "--cflags").stdout.split()
    libs = klpcc("config", "--libs").stdout.split()
    tree = {**BASE, "quick.c": QUICK_C, "calls.c": CALLS_C}
    patches, src = make_series(tmp / "s", tree, [LIB_FIX])
    lib = _lib(src, tmp / "lib", cflags)
    taxd = _taxd(src, lib.parent, tmp / "taxd", cflags, libs)
    quick, bare = tmp / "quick", tmp / "quick-bare"
    link = [f"-L{lib.parent}", "-ltax", f"-Wl,-rpath,{lib.parent}"]
    _cc("-O2", *cflags, "-o", quick, src / "quick.c", *link, *libs)
    _cc("-O2", *cflags, "-o", bare, src / "quick.c", *link)
    calls = tmp / "calls"
    _cc("-O2", *cflags, "-o", calls, src / "calls.c", *link, *libs)
    assert klpcc("compile", str(patches), "--source", str(src), "-o", str(tmp / "b")).returncode == 0
    fix = tmp / "fix.so"
    r = klpcc("build", str(tmp / "b"), "--library", str(lib), "-o", str(fix))
    assert r.returncode == 0, r.stderr
    return lib, taxd, quick, bare, calls, fix


def apply_figures(lib: Path, taxd: Path, fix: Path, counts: list[int]) -> None:
    print("apply --all-mapping over N processes (each: 3 threads calling the library)")
    for n in counts:
        procs = [Proc([str(taxd)]) for _ in range(n)]
        try:
            for p in procs:
                wait_listening(p.pid)
            base = statistics.median(timed(lambda p=p: klpcc("status", "--pid", str(p.pid)))
                                     for p in procs[:3])
            took = timed(lambda: klpcc("apply", str(fix), "--all-mapping", str(lib)))
            print(f"  N={n:3d}: {took * 1000:7.1f} ms in all, {took / n * 1000:6.1f} ms per process; "
                  f"status of one process {base * 1000:6.1f} ms: x{took / base:.1f} for N, "
                  f"x{took / n / base:.2f} per process")
        finally:
            for p in procs:
                p.stop()


def start_figures(quick: Path, bare: Path, fix: Path, starts: int, tmp: Path) -> None:
    env = {**os.environ, "KLPCC_STATE_DIR": str(tmp / "store")}

    def median_start(exe: Path) -> float:
        def once() -> None:
            subprocess.run([str(exe)], env=env, check=False, stderr=subprocess.DEVNULL)

        return statistics.median(timed(once) for _ in range(starts))

    none, runtime = median_start(bare), median_start(quick)
    r = subprocess.run([sys.executable, "-m", "klpcc", "install", str(fix)], env=env, capture_output=True,
                       text=True, check=False)
    assert r.returncode == 0, r.stderr
    installed = median_start(quick)
    print(f"start-up (median of {starts}): no runtime {none * 1000:.2f} ms, runtime {runtime * 1000:.2f} ms "
          f"(x{runtime / none:.2f}), runtime with the library's patch installed {installed * 1000:.2f} ms "
          f"(x{installed / none:.2f}; {(installed - runtime) * 1000:+.2f} ms for the patch)")


def call_figures(calls: Path, fix: Path) -> None:
    p = Proc([str(calls)])
    try:
        wait_listening(p.pid)
        p.ask("go")  # warm up
        direct, plt = map(float, p.ask("go").split())
        assert klpcc("apply", "--pid", str(p.pid), str(fix)).returncode == 0
        p.ask("go")
        _, patched = map(float, p.ask("go").split())
    finally:
        p.stop()
    print(f"a call: direct in the program {direct:.2f} ns; into the library through its PLT {plt:.2f} ns "
          f"(x{plt / direct:.2f}); redirected into the patch {patched:.2f} ns (x{patched / direct:.2f}, "
          f"x{patched / plt:.2f} of the unpatched PLT call)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--processes", default="1,4,16")
    ap.add_argument("--starts", type=int, default=30)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="klpcc-bench-lib-") as t:
        tmp = Path(t)
        lib, taxd, quick, bare, calls, fix = build(tmp)
        apply_figures(lib, taxd, fix, [int(x) for x in args.processes.split(",")])
        start_figures(quick, bare, fix, args.starts, tmp)
        call_figures(calls, fix)


if __name__ == "__main__":
    main()
