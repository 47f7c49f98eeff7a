#!/usr/bin/env python3
"""Benchmark: the object-level check on a generated project.

Generates UNITS C files of FUNCS functions each; every unit includes a common header,
and a release changes a macro of that header plus one function of one unit, so every
unit must be found (by preprocessing), compiled for the base and the release, and
compared.  In one run it measures ``analyze`` alone, then the object-level check with
``--jobs 1`` and ``--jobs N`` on an empty cache, and again on the warm cache, and prints
times and ratios (against ``analyze`` and against ``--jobs 1``).

    python bench/bench_objects.py [--units 40] [--funcs 50] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def function(i: int) -> str:
    return (f"int fn_{i}(int x)\n{{\n\tint y = x * {i % 7 + 2} + SCALE;\n\n"
            f"\tif (y > {1000 + i})\n\t\ty -= {i};\n\treturn y ^ {i % 13};\n}}\n\n")


def make(root: Path, units: int, funcs: int) -> tuple[Path, Path, Path]:
    base = root / "base"
    (base / "src").mkdir(parents=True)
    (base / "src" / "common.h").write_text("#ifndef COMMON_H\n#define COMMON_H\n#define SCALE 3\n#endif\n")
    n = 0
    for u in range(units):
        body = '#include "common.h"\n\n' + "".join(function(n + k) for k in range(funcs))
        (base / "src" / f"u{u:03d}.c").write_text(body)
        n += funcs
    patches = root / "patches"
    patches.mkdir()
    first = (base / "src" / "u000.c").read_text()
    changed = first.replace("y -= 0;", "y -= 1;")
    import difflib

    diff = "".join(difflib.unified_diff(["#ifndef COMMON_H\n", "#define COMMON_H\n", "#define SCALE 3\n",
                                         "#endif\n"],
                                        ["#ifndef COMMON_H\n", "#define COMMON_H\n", "#define SCALE 4\n",
                                         "#endif\n"], "a/src/common.h", "b/src/common.h"))
    diff += "".join(difflib.unified_diff(first.splitlines(True), changed.splitlines(True),
                                         "a/src/u000.c", "b/src/u000.c"))
    (patches / "0001-release.patch").write_text(diff)
    (patches / "series").write_text("0001-release.patch\n")
    db = root / "compile_commands.json"
    db.write_text(json.dumps([{"directory": str(base / "src"), "file": f"u{u:03d}.c",
                               "arguments": ["gcc", "-O2", "-c", f"u{u:03d}.c"]} for u in range(units)]))
    return patches, base, db


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--units", type=int, default=40)
    ap.add_argument("--funcs", type=int, default=50)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    from klpcc.api import AnalyzeOptions, ObjectOptions, analyze, analyze_objects

    with tempfile.TemporaryDirectory(prefix="klpcc-bench-objects-") as tmp:
        patches, base, db = make(Path(tmp), args.units, args.funcs)
        opts = AnalyzeOptions(series=[str(patches)], source=str(base))
        t0 = time.perf_counter()
        analyze(opts)
        t_analyze = time.perf_counter() - t0
        rows = []
        for label, jobs, cache in (("jobs 1, empty cache", 1, "c1"), (f"jobs {args.jobs}, empty cache",
                                                                       args.jobs, "c2"),
                                   (f"jobs {args.jobs}, warm cache", args.jobs, "c2")):
            t0 = time.perf_counter()
            _, report = analyze_objects(opts, ObjectOptions(str(db), jobs=jobs, cache=str(Path(tmp, cache))))
            rows.append((label, time.perf_counter() - t0, report))
        print(f"{args.units} units x {args.funcs} functions; a header macro and one function change")
        print(f"analyze alone: {t_analyze:.2f} s")
        print(f"{'run':<24}{'seconds':>8}{'x analyze':>10}{'x jobs 1':>9}{'compiled':>9}{'cache':>6}"
              f"{'code-only':>10}{'both':>5}")
        for label, secs, rep in rows:
            s = {f.what for f in rep.functions}
            assert "code-only" in s, "the header's macro change must show"
            print(f"{label:<24}{secs:>8.2f}{secs / t_analyze:>10.1f}{secs / rows[0][1]:>9.2f}"
                  f"{rep.compiled:>9}{rep.cache_hits:>6}{len(rep.by('code-only')):>10}{len(rep.by('both')):>5}")


if __name__ == "__main__":
    main()
