#!/usr/bin/env python3
"""Benchmark: ``klpcc lint`` against ``klpcc analyze`` on the same series.

Uses the tree and series generator of ``bench_series.py`` (FILES files x FUNCS
functions, releases editing, reverting and adding functions); every fifth release
also adds or changes a livepatch state, a callback and a shadow variable use, so
that the lint has facts to extract and compare.  For each size it runs, in one
fresh process per command, the library calls ``analyze`` and ``lint`` on the same
series, and prints their times, the ratio lint / analyze and the peak memory.

    python bench/bench_lint.py [--files 40] [--funcs 100] [--sizes 10,100]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_series import Tree, file_patch  # noqa: E402

CHILD = r"""
import json, resource, sys, time
from klpcc.api import AnalyzeOptions, analyze, lint
opts = AnalyzeOptions(series=[sys.argv[2]], source=sys.argv[3])
t0 = time.perf_counter()
if sys.argv[1] == "lint":
    res = lint(opts)
    n = len(res.findings)
else:
    n = len(analyze(opts).functions)
t1 = time.perf_counter()
print(json.dumps({"seconds": t1 - t0, "count": n,
                  "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""

LIVEPATCH = "src/livepatch.c"


def livepatch_text(version: int) -> list[str]:
    """A livepatch glue file: a state at ``version``, callbacks, a shadow use."""
    return [
        "#define STATE_ID 3\n", "#define SHADOW_ID 9\n", "\n",
        "struct extra { long hits; int flags; };\n", "\n",
        "static int pre(struct klp_object *obj)\n", "{\n",
        "\tstruct klp_state *s = klp_get_prev_state(STATE_ID);\n",
        "\treturn s ? 0 : 0;\n", "}\n", "\n",
        "static void post_unpatch(struct klp_object *obj)\n", "{\n",
        "\tklp_shadow_free_all(SHADOW_ID, NULL);\n", "}\n", "\n",
        f"int lp_hit_{version}(void *obj)\n", "{\n",
        "\tstruct extra *e = klp_shadow_get_or_alloc(obj, SHADOW_ID, sizeof(struct extra), "
        "GFP_KERNEL, NULL, NULL);\n",
        "\treturn e ? 1 : 0;\n", "}\n", "\n",
        "static struct klp_state states[] = {\n",
        f"\t{{ .id = STATE_ID, .version = {version} }},\n", "\t{}\n", "};\n", "\n",
        "static struct klp_callbacks cbs = {\n", "\t.pre_patch = pre,\n",
        "\t.post_unpatch = post_unpatch,\n", "};\n",
    ]


def make(size: int, files: int, funcs: int, work: Path, seed: int) -> tuple[Path, Path, int]:
    rng = random.Random(seed)
    case = work / f"s{size}"
    base = case / "base"
    tree = Tree(base, files, funcs, rng)
    patches = case / "patches"
    patches.mkdir(parents=True)
    names = []
    glue: list[str] = []
    for i in range(1, size + 1):
        text = tree.edit(rng)
        if i % 5 == 1:
            new = livepatch_text(i // 5 + 1)
            text += file_patch(LIVEPATCH, glue, new) if glue else (
                f"diff --git a/{LIVEPATCH} b/{LIVEPATCH}\nnew file mode 100644\n--- /dev/null\n"
                f"+++ b/{LIVEPATCH}\n@@ -0,0 +1,{len(new)} @@\n" + "".join("+" + ln for ln in new))
            glue = new
        name = f"{i:04d}-release.patch"
        (patches / name).write_text(text)
        names.append(name)
    (patches / "series").write_text("\n".join(names) + "\n")
    return patches, base, tree.count


def child(what: str, patches: Path, base: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, what, str(patches), str(base)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"bench: {what} failed: {proc.stderr.strip()[-800:]}")
    return json.loads(proc.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=40)
    ap.add_argument("--funcs", type=int, default=100)
    ap.add_argument("--sizes", default="10,100")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    print(f"{'releases':>8} {'functions':>9} {'analyze s':>9} {'lint s':>8} {'lint/analyze':>12} "
          f"{'analyze MB':>10} {'lint MB':>8} {'findings':>8}")
    with tempfile.TemporaryDirectory(prefix="klpcc-bench-lint-") as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            patches, base, functions = make(size, args.files, args.funcs, Path(tmp), args.seed)
            a = child("analyze", patches, base)
            b = child("lint", patches, base)
            print(f"{size:>8} {functions:>9} {a['seconds']:>9.2f} {b['seconds']:>8.2f} "
                  f"{b['seconds'] / a['seconds']:>11.1f}x {a['maxrss_kb'] / 1024:>10.0f} "
                  f"{b['maxrss_kb'] / 1024:>8.0f} {b['count']:>8}")


if __name__ == "__main__":
    main()
