#!/usr/bin/env python3
"""Benchmark: klpcc on long series over a tree with thousands of functions.

Generates a C tree (FILES files x FUNCS functions) and series of 10, 100 and 1000
releases, each release editing, reverting or adding a few functions.  For each
series it measures, in fresh processes of the same run:

* ``klpcc analyze`` (the command, and the library call inside it),
* ``git apply`` of the same series: one ``git apply`` per patch (as ``quilt push``
  or ``git am`` does), and all patches in one ``git apply`` invocation,

and prints wall time, peak memory and the ratios klpcc / git apply.  It also times a
floor in a fresh process, which no analysis built on this stack goes under: starting the
interpreter with the libraries the analysis loads, reading every patch with ``unidiff``,
applying its hunks, and keeping a tree-sitter tree of each touched file current (one
parse of the base, then one incremental reparse per file per release); nothing else.

    python bench/bench_series.py [--files 40] [--funcs 100] [--sizes 10,100,1000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from klpcc.api import AnalyzeOptions, analyze
t1 = time.perf_counter()
a = analyze(AnalyzeOptions(series=[sys.argv[1]], source=sys.argv[2]))
t2 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "analyze": t2 - t1, "functions": len(a.functions),
                  "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""

FLOOR = r"""
import sys
from pathlib import Path
import click, tree_sitter, tree_sitter_c, unidiff
from tree_sitter import Point
from klpcc.c.language import parse_without
patches, base = Path(sys.argv[1]), Path(sys.argv[2])
texts, trees = {}, {}
for name in (patches / "series").read_text().split():
    for pf in unidiff.PatchSet((patches / name).read_text()):
        path = pf.path
        if path not in texts:
            texts[path] = (base / path).read_bytes().splitlines(keepends=True)
            trees[path] = parse_without(b"".join(texts[path]), [])
        lines, tree = texts[path], trees[path]
        for h in reversed(list(pf)):  # bottom up: earlier hunks keep their places
            at = h.source_start - 1 if h.source_length else h.source_start
            old = lines[at:at + h.source_length]
            new = [ln.value.encode() for ln in h if not ln.is_removed]
            start = sum(map(len, lines[:at]))
            lines[at:at + len(old)] = new
            tree.edit(start, start + sum(map(len, old)), start + sum(map(len, new)), Point(at, 0),
                      Point(at + len(old), 0), Point(at + len(new), 0))
        trees[path] = parse_without(b"".join(lines), [], tree)
"""


def function_text(name: str, k: int, static: bool) -> list[str]:
    return [
        f"{'static ' if static else ''}int {name}(int x)\n",
        "{\n",
        f"\tint y = x * {k};\n",
        "\n",
        f"\tif (y > {1000 + k})\n",
        f"\t\ty -= {k};\n",
        "\t/* keep the result small */\n",
        f"\treturn y + {k % 7};\n",
        "}\n",
        "\n",
    ]


class Tree:
    def __init__(self, root: Path, files: int, funcs: int, rng: random.Random):
        self.root = root
        self.blocks: dict[str, list[list[str]]] = {}
        self.base: dict[str, list[list[str]]] = {}
        n = 0
        for f in range(files):
            path = f"src/mod{f:03d}.c"
            blocks = [[f"/* module {f} */\n", "#include <stdio.h>\n", "\n"]]
            for _ in range(funcs):
                blocks.append(function_text(f"fn_{n:05d}", n, rng.random() < 0.5))
                n += 1
            self.blocks[path] = blocks
            self.base[path] = [list(b) for b in blocks]
        self.count = n
        for path, blocks in self.blocks.items():
            p = root / path
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text("".join("".join(b) for b in blocks))

    def edit(self, rng: random.Random) -> str:
        """One release: a few edits, returned as a patch."""
        parts = []
        for path in rng.sample(sorted(self.blocks), k=rng.choice((1, 1, 2))):
            blocks = self.blocks[path]
            old_lines = [ln for b in blocks for ln in b]
            i = rng.randrange(1, len(blocks))
            action = rng.random()
            block = blocks[i]
            if action < 0.6 or (action < 0.8 and (i >= len(self.base[path])
                                                   or block == self.base[path][i])):
                # modify a body line
                j = rng.randrange(2, len(block) - 2)
                blocks[i] = block[:j] + [f"\tx += {rng.randrange(1000)};\n"] + block[j + 1:]
            elif action < 0.8 and i < len(self.base[path]) and block != self.base[path][i]:
                # revert to the base text
                blocks[i] = list(self.base[path][i])
            else:  # add a function after this one
                self.count += 1
                blocks.insert(i + 1, function_text(f"fn_new_{self.count:05d}", self.count, False))
            new_lines = [ln for b in blocks for ln in b]
            parts.append(file_patch(path, old_lines, new_lines))
        return "".join(parts)


def file_patch(path: str, old: list[str], new: list[str], ctx: int = 3) -> str:
    """A one-hunk git-style patch for a single contiguous change."""
    start = 0
    while start < min(len(old), len(new)) and old[start] == new[start]:
        start += 1
    end_o, end_n = len(old), len(new)
    while end_o > start and end_n > start and old[end_o - 1] == new[end_n - 1]:
        end_o -= 1
        end_n -= 1
    a0 = max(0, start - ctx)
    a1 = min(len(old), end_o + ctx)
    b1 = end_n + (a1 - end_o)
    lines = [f"diff --git a/{path} b/{path}\n", f"--- a/{path}\n", f"+++ b/{path}\n",
             f"@@ -{a0 + 1},{a1 - a0} +{a0 + 1},{b1 - a0} @@\n"]
    lines += [" " + ln for ln in old[a0:start]]
    lines += ["-" + ln for ln in old[start:end_o]]
    lines += ["+" + ln for ln in new[start:end_n]]
    lines += [" " + ln for ln in old[end_o:a1]]
    return "".join(lines)


def run(cmd: list[str], **kw) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd[:3])} failed ({proc.returncode}): "
                 f"{(proc.stderr or proc.stdout).strip()[-800:]}")
    return dt, proc


def bench(size: int, files: int, funcs: int, work: Path, seed: int) -> dict:
    rng = random.Random(seed)
    case = work / f"s{size}"
    base = case / "base"
    tree = Tree(base, files, funcs, rng)
    functions = tree.count
    patches = case / "patches"
    patches.mkdir(parents=True)
    names = []
    diff_bytes = 0
    for i in range(1, size + 1):
        text = tree.edit(rng)
        diff_bytes += len(text)
        name = f"{i:04d}-release.patch"
        (patches / name).write_text(text)
        names.append(name)
    (patches / "series").write_text("\n".join(names) + "\n")
    tree_bytes = sum(p.stat().st_size for p in base.rglob("*.c"))

    # git apply, one invocation per patch, and all at once
    results = {}
    for mode in ("per-patch", "one-call"):
        repo = case / f"git-{mode}"
        shutil.copytree(base, repo)
        run(["git", "init", "-q"], cwd=repo)
        t0 = time.perf_counter()
        if mode == "per-patch":
            for name in names:
                run(["git", "apply", str(patches / name)], cwd=repo)
        else:
            run(["git", "apply", *[str(patches / n) for n in names]], cwd=repo)
        results[mode] = time.perf_counter() - t0

    # klpcc, as a command and as the library call inside a fresh process
    dt_cmd, _ = run([sys.executable, "-m", "klpcc", "analyze", str(patches), "--source", str(base),
                     "--format", "json"])
    _, child = run([sys.executable, "-c", CHILD, str(patches), str(base)])
    lib = json.loads(child.stdout)
    dt_floor, _ = run([sys.executable, "-c", FLOOR, str(patches), str(base)])
    return {
        "releases": size,
        "tree_files": files,
        "tree_functions": functions,
        "tree_kb": tree_bytes // 1024,
        "diff_kb": diff_bytes // 1024,
        "klpcc_s": dt_cmd,
        "klpcc_lib_s": lib["analyze"],
        "floor_s": dt_floor,
        "klpcc_import_s": lib["import"],
        "peak_mb": lib["maxrss_kb"] / 1024,
        "git_apply_per_patch_s": results["per-patch"],
        "git_apply_one_call_s": results["one-call"],
        "listed_functions": lib["functions"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=40)
    ap.add_argument("--funcs", type=int, default=100)
    ap.add_argument("--sizes", default="10,100,1000")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="klpcc-bench-"))
    try:
        rows = [bench(s, args.files, args.funcs, work, args.seed) for s in sizes]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"tree: {rows[0]['tree_files']} files, {rows[0]['tree_functions']} functions, "
          f"{rows[0]['tree_kb']} KB; python {sys.version.split()[0]}, {os.cpu_count()} cpus")
    head = ("releases", "diff KB", "klpcc s", "lib s", "peak MB", "git apply/patch s",
            "git apply 1-call s", "ratio/patch", "ratio 1-call", "lib ratio 1-call", "floor s",
            "floor ratio 1-call")
    print(" | ".join(head))
    for r in rows:
        print(" | ".join([
            f"{r['releases']}", f"{r['diff_kb']}", f"{r['klpcc_s']:.2f}", f"{r['klpcc_lib_s']:.2f}",
            f"{r['peak_mb']:.0f}", f"{r['git_apply_per_patch_s']:.2f}",
            f"{r['git_apply_one_call_s']:.2f}",
            f"{r['klpcc_s'] / r['git_apply_per_patch_s']:.2f}",
            f"{r['klpcc_s'] / r['git_apply_one_call_s']:.2f}",
            f"{r['klpcc_lib_s'] / r['git_apply_one_call_s']:.2f}",
            f"{r['floor_s']:.2f}", f"{r['floor_s'] / r['git_apply_one_call_s']:.2f}",
        ]))


if __name__ == "__main__":
    main()
