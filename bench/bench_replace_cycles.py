"""1,000 replace cycles under load on the demo service (fixtures/demo/live): its
workers call the functions being switched without pause while the four releases'
patch objects are applied round and round (each apply replaces the one before, up and
down, nops included) through the library client, as `klpcc apply` does.

Prints the failures (must be 0), the apply end-to-end times (median, p99, max), the
stopped windows and parking counts the runtime reports, and the throughput of the
service's workers against a run without applies (same process: the first seconds).

    .venv/bin/python bench/bench_replace_cycles.py [--cycles 1000] [--workers 16]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from klpcc import api  # noqa: E402

SERIES = ROOT / "fixtures" / "demo" / "live" / "patches"
SRC = ROOT / "fixtures" / "demo" / "live" / "src"
KLPCC = [sys.executable, "-m", "klpcc"]


def run(*args: str) -> str:
    return subprocess.run([*KLPCC, *args], check=True, capture_output=True, text=True).stdout


def served(log: Path) -> int:
    lines = [ln for ln in log.read_text().splitlines() if ln.startswith("tick")]
    return int(re.search(r"served=(\d+)", lines[-1])[1]) if lines else 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=16)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="klpcc-cycles-") as t:
        tmp = Path(t)
        exe = tmp / "service"
        subprocess.run(["cc", "-O2", *run("config", "--cflags").split(), "-o", str(exe),
                        str(SRC / "service.c"), str(SRC / "shop.c"), *run("config", "--libs").split()],
                       check=True)
        objs = []
        for r in (1, 2, 3, 4):
            run("compile", str(SERIES), "--source", str(SRC), "-r", str(r), "-o", str(tmp / f"b{r}"))
            run("build", str(tmp / f"b{r}"), "--binary", str(exe), "-o", str(tmp / f"r{r}.so"))
            objs.append(str(tmp / f"r{r}.so"))
        log = tmp / "log"
        with open(log, "w") as out:
            proc = subprocess.Popen([str(exe), str(args.workers), "100", "0"], stdout=out,
                                    stderr=subprocess.STDOUT)
        try:
            sock = Path(f"/tmp/.klpcc-{os.geteuid()}/{proc.pid}.sock")
            while not sock.exists():
                time.sleep(0.02)
            time.sleep(2.0)
            base_rate = served(log) / 2.0
            # up and down among the releases with the discount state (release 1 has none:
            # going back to it is a state downgrade the runtime refuses): r2 r3 r4 r3 r2 ...
            # r2 <-> r3 reverts and re-patches greeting (a nop each way)
            order = [1, 2, 3, 2]
            total_ms, stopped, parked, tries, failures = [], [], [], [], []
            start_served, start = served(log), time.perf_counter()
            for i in range(args.cycles):
                obj = objs[order[i % len(order)]]
                t0 = time.perf_counter()
                doc = api.apply(proc.pid, obj, timeout=10).doc
                total_ms.append((time.perf_counter() - t0) * 1000)
                if not doc.get("ok"):
                    failures.append(doc)
                    continue
                stopped.append(doc.get("stopped_us", 0))
                parked.append(doc.get("parked", 0))
                tries.append(doc.get("tries", 0))
            elapsed = time.perf_counter() - start
            time.sleep(0.3)
            rate = (served(log) - start_served) / elapsed
            alive = proc.poll() is None
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)

    def q(xs: list[float], p: float) -> float:
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else 0.0

    print(f"{args.cycles} replace cycles, {args.workers} workers serving without pause")
    print(f"failures: {len(failures)}; process alive after: {alive}")
    for f in failures[:5]:
        print(f"  {f}")
    print(f"apply end to end (client): median {statistics.median(total_ms):.2f} ms, "
          f"p99 {q(total_ms, 0.99):.2f} ms, max {max(total_ms):.2f} ms")
    if stopped:
        print(f"stopped window: median {statistics.median(stopped):.0f} us, p99 {q(stopped, 0.99):.0f} us, "
              f"max {max(stopped)} us")
        print(f"stops per apply: median {statistics.median(tries):.0f}, max {max(tries)}; "
              f"threads parked per apply: median {statistics.median(parked):.0f}, max {max(parked)}")
    print(f"service throughput: {base_rate / 1e6:.2f} M requests/s before, {rate / 1e6:.2f} M/s during the "
          f"cycles ({rate / base_rate:.2f}x)")


if __name__ == "__main__":
    main()
