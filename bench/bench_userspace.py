"""Userspace runtime figures, measured on the test program (tests/userspace/prog.c):

* the cost of a call through a redirect against a direct call, in the same process:
  the original (its five NOPs), the same call redirected into a patch object (the entry's
  jump, then a jump slot when the object lies beyond +-2 GB), and the replacement called
  directly through a pointer from dlsym;
* the stopped window (the final stop's stopped_us, median and p99) and the apply
  end-to-end time seen by the client, for 1, 4 and 16 threads x 1, 10 and 100 functions
  switched, with the threads idle (blocked in read) or busy (calling the functions being
  switched without pause, so that they have to be parked).

    .venv/bin/python bench/bench_userspace.py [--applies 50] [--calls 20000000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.userspace_helpers import (  # noqa: E402
    Builder,
    Func,
    Patch,
    Program,
    build_program,
    build_runtime,
    simple,
)


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def far_jump(p: Program, binary: Path, patch: Path) -> bool:
    """Whether the patch object lies beyond +-2 GB of the program (a jump slot is used)."""
    starts = {}
    for line in Path(f"/proc/{p.pid}/maps").read_text().splitlines():
        f = line.split()
        if len(f) >= 6 and f[5] in (str(binary), str(patch)):
            starts.setdefault(f[5], int(f[0].split("-")[0], 16))
    return abs(starts[str(binary)] - starts[str(patch)]) >= 1 << 31


def call_cost(binary: Path, builder: Builder, work: Path, calls: int) -> None:
    # tiny() returns its argument; the replacement does the same plus a constant.
    patch = builder.build(Patch("bench-call", [Func("tiny", "return x + STEP;")]))
    p = Program(binary, work / "calls")
    try:
        original = min(float(p.cmd(f"timecall tiny {calls}")) for _ in range(5))
        r = p.apply(patch)
        assert r["ok"], r
        redirected = min(float(p.cmd(f"timecall tiny {calls}")) for _ in range(5))
        direct = min(float(p.cmd(f"timedirect {patch} klpp_tiny {calls}")) for _ in range(5))
        via = "entry jump + jump slot" if far_jump(p, binary, patch) else "entry jump"
    finally:
        p.close()
    print(f"call cost of tiny(), ns/call (best of 5 runs of {calls} calls through a function pointer):")
    rows = [("original, five NOPs at its entry", f"{original:6.2f}"),
            (f"redirected ({via})", f"{redirected:6.2f}"),
            ("the replacement, called directly", f"{direct:6.2f}"),
            ("cost of the redirect", f"{redirected - direct:+6.2f}")]
    for label, value in rows:
        print(f"  {label:<40} {value}")
    print()


def stopped_window(binary: Path, builder: Builder, work: Path, threads: int, nfuncs: int, busy: bool,
                   applies: int) -> dict[str, float]:
    a = builder.build(simple(f"w{nfuncs}a", {f"fn_{i}": 1 for i in range(nfuncs)}))
    b = builder.build(simple(f"w{nfuncs}b", {f"fn_{i}": 2 for i in range(nfuncs)}))
    p = Program(binary, work / f"w-{threads}-{nfuncs}-{busy}")
    stopped, e2e, tries, parked = [], [], [], []
    try:
        p.cmd(f"fnbusy {threads} {nfuncs}" if busy else f"idle {threads}")
        time.sleep(0.05)
        for i in range(applies):
            t0 = time.perf_counter()
            r = p.apply(a if i % 2 == 0 else b, timeout_ms=60000)
            e2e.append((time.perf_counter() - t0) * 1e3)
            assert r["ok"], r
            stopped.append(r["stopped_us"])
            tries.append(r["tries"])
            parked.append(r["parked"])
        p.cmd("stop")
    finally:
        p.close()
    return {
        "stop_med": statistics.median(stopped), "stop_p99": percentile(stopped, 0.99),
        "e2e_med": statistics.median(e2e), "e2e_p99": percentile(e2e, 0.99),
        "tries": statistics.median(tries), "parked": statistics.median(parked),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--applies", type=int, default=50, help="applies per configuration")
    ap.add_argument("--calls", type=int, default=20_000_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-userspace-") as tmp:
        work = Path(tmp)
        lib = build_runtime(work / "lib")
        binary = build_program(lib.parent, work / "prog")
        builder = Builder(binary, work / "patches")
        call_cost(binary, builder, work, args.calls)
        print(f"stopped window and apply end-to-end ({args.applies} applies each; threads besides the"
              " main one and the control thread):")
        print(f"{'threads':>7} {'funcs':>5} {'mode':>4} | {'stopped us med':>14} {'p99':>6} |"
              f" {'apply ms med':>12} {'p99':>7} | {'tries':>5} {'parked':>6}")
        for mode in ("idle", "busy"):
            for threads in (1, 4, 16):
                for nfuncs in (1, 10, 100):
                    f = stopped_window(binary, builder, work, threads, nfuncs, mode == "busy", args.applies)
                    print(f"{threads:>7} {nfuncs:>5} {mode:>4} |"
                          f" {f['stop_med']:>14.0f} {f['stop_p99']:>6.0f} |"
                          f" {f['e2e_med']:>12.2f} {f['e2e_p99']:>7.2f} |"
                          f" {f['tries']:>5.0f} {f['parked']:>6.0f}", flush=True)


if __name__ == "__main__":
    main()
