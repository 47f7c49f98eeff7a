#!/usr/bin/env python3
"""Sweep: random edits to real C files, the incremental source against fresh parses.

Each file of the trees given (or of the kernel and PyPI trees the tests and the
real-series benchmark cache) gets a run of random line edits: one to three hunks each,
of brace, conditional, comment and string lines (a string holding ``*/`` among them),
table rows, and lines taken from elsewhere in the file.  After every edit, the items
the incremental source reports as gone and new must turn the items before into exactly
those of a fresh parse (kind, name, storage, fingerprint); every item reported gone
must be an item of the text before, and every one reported new an item of the fresh
parse (all fields); and its items must be the fresh parse's, lines included.  A
mismatch is printed with what reproduces it (file, seed, step) and, with ``--keep
DIR``, saved there as the text before and after with the edit.  Exits 1 on any
mismatch.  ``tests/test_incremental_real.py`` runs a bounded sample of this in CI (25
edits to each of cffi's and regex's large C files): a smoke check, since the shapes
that break an incremental answer are rare (3 in 12,000 edits before they were fixed);
those found are reduced into ``tests/test_functions.py``.

    python bench/bench_incremental.py [--files 60] [--steps 40] [--seed 1] [--tree DIR ...] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from dataclasses import astuple
from pathlib import Path

from klpcc.c import CSource, LineEdit
from klpcc.c.source import split_lines

CACHE = Path.home() / ".cache"
SNIPPETS = [b"}\n", b"{\n", b"};\n", b"#ifdef CONFIG_X\n", b"#if 0\n", b"#endif\n", b"#else\n",
            b"#elif defined(Y)\n", b"static int x;\n", b"\treturn 0;\n", b"int f(void)\n",
            b"__attribute__((noinline))\n", b"static __init int g(void)\n", b"MACRO(a, b)\n",
            b"/*\n", b"*/\n", b"/* c */\n", b'\tprintk("*/ }{");\n', b"\t{ 1, 2 },\n", b"\\\n",
            b"#define M(x) \\\n", b"\n"]


def default_trees() -> list[Path]:
    trees = sorted((CACHE / "klpcc-tests" / "linux-source-6.1").glob("*/src"))[:1]
    trees += sorted((CACHE / "klpcc-bench" / "pypi").glob("*/src"))
    return trees


def key(it) -> tuple:
    return (it.kind, it.name, it.static, it.fingerprint)


def full(it) -> tuple:
    return (it.kind, it.name, it.static, it.fingerprint, it.start_line, it.end_line)


def whole(it) -> tuple:
    """Every field of an item (lines and bytes, conditions, macro, code)."""
    return astuple(it)


def random_edit(rng: random.Random, lines: list[bytes]) -> tuple[list[bytes], list[LineEdit]]:
    """One to three non-overlapping hunks, ascending."""
    hunks = sorted(rng.sample(range(len(lines) + 1), k=min(rng.choice((1, 1, 2, 3)), len(lines) + 1)))
    new: list[bytes] = []
    edits: list[LineEdit] = []
    pos = 0
    for at in hunks:
        if at < pos:
            continue
        count = min(rng.choice((0, 1, 1, 2, 3)), len(lines) - at)
        added = [rng.choice(SNIPPETS) if rng.random() < 0.6 else lines[rng.randrange(len(lines))]
                 for _ in range(rng.choice((0, 1, 1, 2)))] if lines else [rng.choice(SNIPPETS)]
        if count == 0 and not added:
            added = [rng.choice(SNIPPETS)]
        new += lines[pos:at]
        edits.append(LineEdit(at, count, len(new), len(added)))
        new += added
        pos = at + count
    new += lines[pos:]
    return new, edits


def sweep(path: Path, rel: str, steps: int, seed: int, keep: Path | None) -> tuple[int, list[str]]:
    rng = random.Random(f"{seed}:{rel}")
    lines = split_lines(path.read_bytes())
    src = CSource(rel, lines)
    current = Counter(map(key, src.items()))
    problems: list[str] = []
    for step in range(steps):
        new, edits = random_edit(rng, lines)
        old_items = {whole(i) for i in src.items()}
        gone, came = src.edit(new, edits)
        current.subtract(Counter(map(key, gone)))
        current.update(Counter(map(key, came)))
        negative = -current  # an item reported gone that was not there
        current = +current
        fresh = CSource(rel, new).items()
        fresh_items = {whole(i) for i in fresh}
        if negative or current != Counter(map(key, fresh)) \
                or [full(i) for i in src.items()] != [full(i) for i in fresh] \
                or any(whole(i) not in old_items for i in gone) \
                or any(whole(i) not in fresh_items for i in came):
            problems.append(f"{rel}: seed {seed}, step {step}: edits {[astuple(e) for e in edits]}")
            if keep is not None:
                case = keep / f"{rel.replace('/', '_')}-{seed}-{step}"
                case.mkdir(parents=True, exist_ok=True)
                (case / "before.c").write_bytes(b"".join(lines))
                (case / "after.c").write_bytes(b"".join(new))
                (case / "edits.json").write_text(json.dumps([astuple(e) for e in edits]))
            src = CSource(rel, new)  # go on from a fresh start
            current = Counter(map(key, src.items()))
        lines = new
    return steps, problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=60, help="files sampled over all trees")
    ap.add_argument("--steps", type=int, default=40, help="edits per file")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tree", type=Path, action="append", help="a tree of C files (default: the cached ones)")
    ap.add_argument("--keep", type=Path, help="save each mismatch here")
    args = ap.parse_args()
    trees = args.tree or default_trees()
    files = [(t, p) for t in trees for p in sorted(t.rglob("*.[ch]")) if p.is_file()]
    if not files:
        sys.exit("no C files: give --tree DIR, or run the tests once to fill the caches")
    rng = random.Random(args.seed)
    chosen = rng.sample(files, k=min(args.files, len(files)))
    start = time.perf_counter()
    edits = 0
    size = 0
    problems: list[str] = []
    for tree, path in chosen:
        rel = str(path.relative_to(tree))
        size += path.stat().st_size
        n, found = sweep(path, rel, args.steps, args.seed, args.keep)
        edits += n
        problems += found
    took = time.perf_counter() - start
    print(f"{len(chosen)} files ({size / 1e6:.1f} MB) from {len(trees)} trees, {edits} random edits, "
          f"{len(problems)} mismatches against fresh parses, {took:.0f} s")
    for p in problems:
        print(f"  {p}")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
