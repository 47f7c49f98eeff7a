#!/usr/bin/env python3
"""Benchmark: the tokeniser on every item of real C files, its plain-text path against
the general pattern alone (``klpcc.c.tokens.tokens`` against ``munched``), in one
process, on the same items; the best of 3.  Both must give the same tokens.

    python bench/bench_tokens.py FILE.c [FILE.c ...]
"""

from __future__ import annotations

import argparse
import importlib
import time
from pathlib import Path

from klpcc.c.source import CSource, split_lines

tokens = importlib.import_module("klpcc.c.tokens")  # the module (klpcc.c.tokens is also the function)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    print(f"{'file':<28} {'MB':>5} {'plain MB':>8} {'general ms':>10} {'tokens ms':>9} {'ratio':>6}")
    for f in args.files:
        data = f.read_bytes()
        texts = [data[i.start_byte:i.end_byte] for i in CSource(str(f), split_lines(data)).items()]
        best: dict[str, float] = {}
        for _ in range(args.runs):
            for name, fn in (("general", tokens.munched), ("tokens", tokens.tokens)):
                start = time.perf_counter()
                out = [fn(t) for t in texts]
                best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)
                if name == "general":
                    want = out
                elif out != want:
                    raise SystemExit(f"{f}: the two paths give different tokens")
        plain = sum(len(t) for t in texts
                    if len(t) >= tokens._PLAIN_MIN and tokens.plain_tokens(t) is not None)
        print(f"{f.name:<28} {len(data) / 1e6:>5.2f} {plain / 1e6:>8.2f} {best['general'] * 1000:>10.0f} "
              f"{best['tokens'] * 1000:>9.0f} {best['general'] / best['tokens']:>5.1f}x")


if __name__ == "__main__":
    main()
