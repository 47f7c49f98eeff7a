#!/usr/bin/env python3
"""Benchmark: a long series of one-line releases on one real C file.

    python bench/bench_real_file.py FILE.c [RELEASES]

Each release changes one `return 0;` of FILE (in turn, then back), the way a series
of small fixes does.  Measured in one run: the klpcc library (replay and analysis),
and `git apply` of the same patches, one call per patch.  Real kernel files, unlike
generated ones, hold regions the C parser can only recover from; edits near them
cost a fresh parse of the file.  The Linux sources the tests fetch are a good input:
`~/.cache/klpcc-tests/linux-source-6.1/*/src/mm/page_alloc.c`.
"""

from __future__ import annotations

import difflib
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from klpcc.history import analyse, replay
from klpcc.series import Patch, Series
from klpcc.trees import DirectoryTree


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    source = Path(sys.argv[1])
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    lines = source.read_text(encoding="utf-8", errors="surrogateescape").splitlines(True)
    spots = [i for i, ln in enumerate(lines) if "return 0;" in ln]
    if not spots:
        sys.exit(f"{source} has no 'return 0;' to edit")
    work = Path(tempfile.mkdtemp(prefix="klpcc-bench-"))
    try:
        base = work / "base"
        base.mkdir()
        name = source.name
        shutil.copy(source, base / name)
        cur, patches = list(lines), []
        for r in range(1, count + 1):
            new = list(cur)
            i = spots[r % len(spots)]
            new[i] = lines[i] if new[i] != lines[i] else lines[i].replace("return 0;", f"return {r};")
            text = "".join(difflib.unified_diff(cur, new, f"a/{name}", f"b/{name}"))
            path = work / f"{r:04d}.patch"
            path.write_text(text, encoding="utf-8", errors="surrogateescape")
            patches.append(Patch(f"r{r}", str(path), text.encode("utf-8", "surrogateescape"), 1))
            cur = new

        t0 = time.perf_counter()
        rep = replay(Series(tuple(patches), "bench"), DirectoryTree(str(base)), keep={count})
        listed = len(analyse(rep, count).functions)
        klpcc_s = time.perf_counter() - t0

        repo = work / "git"
        shutil.copytree(base, repo)
        subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
        t0 = time.perf_counter()
        for p in patches:
            subprocess.run(["git", "apply", p.path], cwd=repo, check=True)
        git_s = time.perf_counter() - t0
    finally:
        shutil.rmtree(work, ignore_errors=True)
    kb = sum(map(len, lines)) // 1024
    print(f"{source.name} ({kb} KB), {count} one-line releases, {listed} functions listed")
    print(f"klpcc library {klpcc_s:.2f} s ({1000 * klpcc_s / count:.0f} ms per release); "
          f"git apply per patch {git_s:.2f} s; ratio {klpcc_s / git_s:.1f}")


if __name__ == "__main__":
    main()
