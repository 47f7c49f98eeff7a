#!/usr/bin/env python3
"""Benchmark: hostile inputs, the full sweep, and the large cases.

1. ``--cases`` mutated patches (``tests/hostile.py``: damaged hunk headers, lost and
   garbage lines, repeated sections, counts off, odd names and modes, truncation),
   each applied to the same tree by klpcc and by ``git apply``.  Prints how many
   klpcc accepted and refused, against what git did, per mutation; any case where the
   invariant breaks (klpcc accepts what git makes otherwise, or fails other than with
   one located error) is counted and its patch kept under ``--keep``.
2. The large cases, in fresh processes, against ``git apply`` of the same patch in
   the same run: 10,000 hunks on one 80,000-line file, and one patch adding a file
   of 100,000 functions.  Prints wall time, peak memory and the ratio to git.

3. ``--inputs`` mutated ``klpcc.toml`` files and as many git ranges as users type and
   mistype them: each gives a bundle (an analysis) or one error naming the file (the
   repository), never anything else.

    python bench/bench_hostile.py [--cases 10000] [--inputs 2000] [--seed 1] [--keep DIR] [--skip-large]
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.hostile import (  # noqa: E402
    Broken,
    check,
    check_config,
    check_range,
    git_range,
    make_repo,
    make_world,
    mutate,
    mutate_toml,
)

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from klpcc.api import AnalyzeOptions, analyze
a = analyze(AnalyzeOptions(series=[sys.argv[1]], source=sys.argv[2]))
print(json.dumps({"seconds": time.perf_counter() - t0, "functions": len(a.functions),
                  "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def sweep(cases: int, seed: int, keep: Path | None) -> int:
    work = Path(tempfile.mkdtemp(prefix="klpcc-hostile-"))
    world = make_world(work)
    rng = random.Random(seed)
    counts: collections.Counter = collections.Counter()
    broken = 0
    start = time.perf_counter()
    for n in range(cases):
        kind, data = mutate(rng, rng.choice(world.seeds))
        try:
            o = check(world, data)
            counts[(kind, o.klpcc, o.git)] += 1
        except Broken as exc:
            broken += 1
            counts[(kind, "BROKEN", str(exc)[:60])] += 1
            if keep is not None:
                keep.mkdir(parents=True, exist_ok=True)
                (keep / f"case{n}-{kind}.patch").write_bytes(data)
    seconds = time.perf_counter() - start
    shutil.rmtree(work, ignore_errors=True)
    total = collections.Counter()
    for (_kind, ours, git), v in counts.items():
        total[(ours, git)] += v
    print(f"{cases} cases (seed {seed}) in {seconds:.0f} s ({seconds / cases * 1000:.1f} ms each)")
    print(f"  klpcc accepted, git applied the same:   {total[('accepted', 'applied')]}")
    print(f"  klpcc refused,  git rejected:           {total[('refused', 'rejected')]}")
    print(f"  klpcc refused,  git applied (stricter): {total[('refused', 'applied')]}")
    print(f"  klpcc accepted, git rejected (a patch that changes nothing): {total[('accepted', 'rejected')]}")
    print(f"  invariant broken:                       {broken}")
    print("  per mutation (accepted / refused / broken):")
    for kind in sorted({k for k, _, _ in counts}):
        acc = sum(v for (k, o, _), v in counts.items() if k == kind and o == "accepted")
        ref = sum(v for (k, o, _), v in counts.items() if k == kind and o == "refused")
        bad = sum(v for (k, o, _), v in counts.items() if k == kind and o == "BROKEN")
        print(f"    {kind:18} {acc:6} {ref:6} {bad:4}")
    return broken


def sweep_inputs(cases: int, seed: int) -> int:
    """``cases`` mutated klpcc.toml files and ``cases`` git ranges: accepted or refused
    with one located error, never anything else."""
    work = Path(tempfile.mkdtemp(prefix="klpcc-hostile-"))
    world, repo = make_world(work), make_repo(work)
    rng = random.Random(seed)
    counts: collections.Counter = collections.Counter()
    start = time.perf_counter()
    for _ in range(cases):
        kind, data = mutate_toml(rng)
        try:
            counts[("klpcc.toml", check_config(world, data).klpcc)] += 1
        except Broken as exc:
            counts[("klpcc.toml", "BROKEN")] += 1
            print(f"  broken klpcc.toml ({kind}): {exc}")
        spec = git_range(rng, repo)
        try:
            counts[("git range", check_range(repo, spec).klpcc)] += 1
        except Broken as exc:
            counts[("git range", "BROKEN")] += 1
            print(f"  broken range {spec!r}: {exc}")
    seconds = time.perf_counter() - start
    shutil.rmtree(work, ignore_errors=True)
    print(f"{cases} klpcc.toml files and {cases} git ranges (seed {seed}) in {seconds:.0f} s")
    for what in ("klpcc.toml", "git range"):
        print(f"  {what:10} accepted {counts[(what, 'accepted')]:6}  refused on one located line "
              f"{counts[(what, 'refused')]:6}  broken {counts[(what, 'BROKEN')]}")
    return counts[("klpcc.toml", "BROKEN")] + counts[("git range", "BROKEN")]


def _klpcc(patch: Path, src: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(patch), str(src)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout)


def _git_apply(patch: Path, src: Path, work: Path) -> float:
    tree = work / "git"
    shutil.rmtree(tree, ignore_errors=True)
    shutil.copytree(src, tree)
    subprocess.run(["git", "init", "-q", str(tree)], check=True)
    start = time.perf_counter()
    subprocess.run(["git", "-C", str(tree), "apply", str(patch)], check=True)
    return time.perf_counter() - start


def large() -> None:
    work = Path(tempfile.mkdtemp(prefix="klpcc-large-"))
    # 10,000 hunks (3 lines of context each) on one file of 80,000 lines
    lines = []
    for i in range(10_000):
        lines += [f"int f{i}(int x)\n", "{\n", f"\tint y = x + {i};\n", "\ty *= 2;\n", "\treturn y;\n", "}\n",
                  "\n", "\n"]
    src = work / "src"
    src.mkdir()
    (src / "big.c").write_text("".join(lines))
    out = ["--- a/big.c\n", "+++ b/big.c\n"]
    for k in range(10_000):
        i = k * 8 + 3
        before = "".join(" " + ln for ln in lines[i - 3:i])
        after = "".join(" " + ln for ln in lines[i + 1:i + 4])
        out.append(f"@@ -{i - 2},7 +{i - 2},7 @@\n" + before + "-" + lines[i] + "+\ty *= 3;\n" + after)
    hunks = work / "hunks.patch"
    hunks.write_text("".join(out))
    # one patch adding a file of 100,000 functions
    body = "".join(f"int g{i}(int x)\n{{\n\treturn x + {i};\n}}\n\n" for i in range(100_000)).splitlines(True)
    adds = work / "adds.patch"
    added = "".join("+" + ln for ln in body)
    adds.write_text(f"--- /dev/null\n+++ b/gen.c\n@@ -0,0 +1,{len(body)} @@\n" + added)
    cases = (("10,000 hunks on an 80,000-line file", hunks), ("a new file of 100,000 functions", adds))
    for name, patch in cases:
        k = _klpcc(patch, src)
        g = _git_apply(patch, src, work)
        print(f"{name} ({patch.stat().st_size / 1e6:.1f} MB patch): klpcc analyze {k['seconds']:.2f} s, "
              f"peak {k['maxrss_kb'] / 1024:.0f} MiB, {k['functions']} functions; git apply {g:.2f} s; "
              f"ratio {k['seconds'] / g:.0f}x")
    shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", type=Path, help="directory for the patches that break the invariant")
    ap.add_argument("--inputs", type=int, default=2_000, help="mutated klpcc.toml files, and git ranges")
    ap.add_argument("--skip-large", action="store_true")
    args = ap.parse_args()
    broken = sweep(args.cases, args.seed, args.keep)
    broken += sweep_inputs(args.inputs, args.seed)
    if not args.skip_large:
        large()
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
