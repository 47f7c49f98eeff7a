#!/usr/bin/env python3
"""Benchmark: ``klpcc analyze`` on series made of real projects' releases.

Consecutive releases of C extensions on PyPI (sdists fetched at run time with
``pip download`` and cached in ``~/.cache/klpcc-bench``; only their C sources are
kept) become a quilt series, one ``diff -ruN`` patch per release.  In one run, on the
same series and tree, it measures in fresh processes:

* ``klpcc analyze`` (the command line, with ``--format json``; and the library call
  inside a process, with its import time),
* ``git apply`` of the whole series in one call, and one ``git apply`` per patch,

and prints wall times, peak memory and the ratios klpcc / git apply.  It also times two
floors in fresh processes, which no analysis built on this stack can go under: starting
the interpreter with the libraries every analysis loads (``stack``), and that plus one
tree-sitter parse of each C file the series touches, as klpcc parses (``parse``); each
is printed as a ratio to the one-call ``git apply``.  With
``--check FILE`` it writes (or, when FILE exists, compares against) the analysis
JSON of each series, so that a change can be shown to keep the output byte-identical.

    python bench/bench_real_series.py [--projects regex,cffi] [--releases 13] [--check FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench_series import CHILD  # the library call, timed in a fresh process

CACHE = Path(os.environ.get("KLPCC_BENCH_CACHE") or Path.home() / ".cache" / "klpcc-bench")

# project -> (the file that marks the directory kept, releases oldest first)
PROJECTS: dict[str, tuple[str, list[str]]] = {
    "regex": ("_regex.c", [
        "2025.7.31", "2025.7.33", "2025.7.34", "2025.8.29", "2025.9.1", "2025.9.18", "2025.10.22",
        "2025.10.23", "2025.11.3", "2026.1.14", "2026.1.15", "2026.2.19", "2026.2.28"]),
    "cffi": ("_cffi_backend.c", [
        "1.12.2", "1.12.3", "1.13.0", "1.13.1", "1.13.2", "1.14.0", "1.14.1", "1.14.2", "1.14.3",
        "1.14.4", "1.14.5", "1.14.6", "1.15.0"]),
}



def fetch(name: str, version: str, marker: str) -> Path:
    """The C sources (``.c``/``.h``) of the directory holding ``marker`` in the sdist of
    ``name==version``, cached."""
    dest = CACHE / "pypi" / f"{name}-{version}"
    if (dest / ".complete").is_file():
        return dest / "src"
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-{version}-", dir=CACHE))
    try:
        index = urllib.request.Request(f"https://pypi.org/simple/{name}/",
                                       headers={"Accept": "application/vnd.pypi.simple.v1+json"})
        with urllib.request.urlopen(index, timeout=60) as r:
            files = json.load(r)["files"]
        (url,) = [f["url"] for f in files if f["filename"] == f"{name}-{version}.tar.gz"]
        with urllib.request.urlopen(url, timeout=300) as r:
            (tmp / url.rsplit("/", 1)[-1]).write_bytes(r.read())
        (archive,) = [p for p in tmp.iterdir() if p.name.endswith(".tar.gz")]
        with tarfile.open(archive) as tar:
            names = [m for m in tar.getmembers() if m.isfile()]
            hit = [m.name for m in names if m.name.endswith("/" + marker)]
            if not hit:
                raise SystemExit(f"{archive.name} has no {marker}")
            root = hit[0].rsplit("/", 1)[0] + "/"
            keep = [m for m in names if m.name.startswith(root) and m.name.endswith((".c", ".h"))]
            for m in keep:
                m.name = m.name[len(root):]
            tar.extractall(tmp / "src", members=keep, filter="data")
        (tmp / ".complete").write_text(version)
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        archive.unlink()
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest / "src"


def make_series(work: Path, trees: list[Path], versions: list[str]) -> tuple[Path, Path]:
    """A quilt series of one patch per release over the first tree; (patches, base)."""
    base = work / "base"
    shutil.copytree(trees[0], base)
    patches = work / "patches"
    patches.mkdir()
    names = []
    for i, (old, new) in enumerate(zip(trees, trees[1:]), 1):
        for side, target in (("a", old), ("b", new)):
            link = work / side
            if link.is_symlink():
                link.unlink()
            link.symlink_to(target)
        proc = subprocess.run(["diff", "-ruN", "a", "b"], cwd=work, capture_output=True, check=False)
        if proc.returncode not in (0, 1):
            raise SystemExit(f"diff failed: {proc.stderr.decode(errors='replace')}")
        name = f"{i:04d}-{versions[i]}.patch"
        (patches / name).write_bytes(proc.stdout)
        names.append(name)
    (patches / "series").write_text("".join(f"{n}\n" for n in names))
    return patches, base


# the floor: the interpreter, the libraries of the analysis, and (with files given) one
# parse of each file as klpcc parses it; nothing else
FLOOR = r"""
import resource, sys
import click, unidiff, tree_sitter, tree_sitter_c
from klpcc.c.language import mask_annotations, parse_without, table_spans
for path in sys.argv[1:]:
    with open(path, "rb") as f:
        masked = mask_annotations(f.read())
    parse_without(masked, table_spans(masked))  # one tree at a time
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def touched_c_files(base: Path, patches: Path, names: list[str]) -> list[str]:
    """The C files of the base tree that some patch of the series changes."""
    paths = set()
    for n in names:
        for line in (patches / n).read_bytes().splitlines():
            if line.startswith(b"--- a/"):
                paths.add(line[6:].split(b"\t")[0].decode())
    return sorted(str(base / p) for p in paths if p.endswith((".c", ".h")) and (base / p).is_file())


def timed(cmd: list[str], cwd: Path | None = None) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, check=False)
    return time.perf_counter() - start, proc


def git_apply(base: Path, patches: Path, names: list[str], one_call: bool, work: Path) -> float:
    tree = work / ("g1" if one_call else "gn")
    shutil.copytree(base, tree)
    subprocess.run(["git", "init", "-q"], cwd=tree, check=True)
    files = [str(patches / n) for n in names]
    start = time.perf_counter()
    def apply(*paths: str) -> bool:  # an empty release is a patch git applies too
        return subprocess.run(["git", "apply", "--allow-empty", *paths], cwd=tree, capture_output=True,
                              check=False).returncode == 0

    ok = apply(*files) if one_call else all(apply(f) for f in files)
    took = time.perf_counter() - start
    if not ok:
        raise SystemExit(f"git apply failed on {patches}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--projects", default=",".join(PROJECTS))
    ap.add_argument("--releases", type=int, default=13, help="releases per project (base included)")
    ap.add_argument("--runs", type=int, default=3, help="runs of each command; the best is kept")
    ap.add_argument("--check", type=Path, help="JSON file of the analyses: written, or compared when present")
    args = ap.parse_args()
    klpcc = [sys.executable, "-m", "klpcc"]
    expected = json.loads(args.check.read_text()) if args.check and args.check.is_file() else None
    outputs: dict[str, str] = {}
    print(f"{'series':<10} {'rel':>3} {'diff MB':>7} {'C KB':>6} {'cli s':>6} {'lib s':>6} {'import s':>8} "
          f"{'MB':>5} {'git1 s':>6} {'gitN s':>6} {'cli/git1':>8} {'cli/gitN':>8} {'stack/git1':>10} "
          f"{'parse/git1':>10} {'touched MB':>10} {'stack MB':>8} {'parse MB':>8}")
    for name in args.projects.split(","):
        marker, versions = PROJECTS[name]
        versions = versions[: args.releases]
        with ThreadPoolExecutor(4) as pool:
            trees = list(pool.map(fetch, [name] * len(versions), versions, [marker] * len(versions)))
        with tempfile.TemporaryDirectory(prefix="klpcc-bench-") as tmp:
            work = Path(tmp)
            patches, base = make_series(work, trees, versions)
            names = (patches / "series").read_text().split()
            diff_mb = sum((patches / n).stat().st_size for n in names) / 1e6
            c_kb = max(p.stat().st_size for p in base.rglob("*.c")) / 1e3
            best: dict[str, float] = {}
            child = {}
            touched = touched_c_files(base, patches, names)
            for _ in range(args.runs):
                t, proc = timed([*klpcc, "analyze", str(patches), "--source", str(base), "--format", "json"])
                if proc.returncode != 0:
                    raise SystemExit(f"klpcc analyze failed: {proc.stderr.decode(errors='replace')}")
                # the series lives in a temporary directory: its name is not part of the answer
                outputs[name] = hashlib.sha256(proc.stdout.replace(str(work).encode(), b"<work>")).hexdigest()
                best["cli"] = min(best.get("cli", t), t)
                _, proc = timed([sys.executable, "-c", CHILD, str(patches), str(base)])
                doc = json.loads(proc.stdout)
                if doc["analyze"] < best.get("lib", float("inf")):
                    child = doc
                    best["lib"] = doc["analyze"]
                for floor, files in (("stack", []), ("parse", touched)):
                    t, proc = timed([sys.executable, "-c", FLOOR, *files])
                    if proc.returncode != 0:
                        raise SystemExit(f"floor failed: {proc.stderr.decode(errors='replace')}")
                    best[floor] = min(best.get(floor, t), t)
                    best[floor + "_mb"] = int(proc.stdout) / 1024
                run_dir = work / f"r{_}"
                best["git1"] = min(best.get("git1", 1e9), git_apply(base, patches, names, True, run_dir))
                best["gitN"] = min(best.get("gitN", 1e9), git_apply(base, patches, names, False, run_dir))
            print(f"{name:<10} {len(names):>3} {diff_mb:>7.2f} {c_kb:>6.0f} {best['cli']:>6.2f} "
                  f"{best['lib']:>6.2f} {child['import']:>8.2f} {child['maxrss_kb'] / 1024:>5.0f} "
                  f"{best['git1']:>6.2f} {best['gitN']:>6.2f} {best['cli'] / best['git1']:>8.1f} "
                  f"{best['cli'] / best['gitN']:>8.1f} {best['stack'] / best['git1']:>10.1f} "
                  f"{best['parse'] / best['git1']:>10.1f} {sum(map(os.path.getsize, touched)) / 1e6:>10.2f} "
                  f"{best['stack_mb']:>8.0f} {best['parse_mb']:>8.0f}")
    start = time.perf_counter()
    subprocess.run([*klpcc, "--version"], capture_output=True, check=True)
    version = time.perf_counter() - start
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], capture_output=True, check=True)
    bare = time.perf_counter() - start
    print(f"klpcc --version {version:.3f} s, python -c pass {bare:.3f} s: {version / bare:.1f}x")
    if args.check:
        if expected is None:
            args.check.write_text(json.dumps(outputs, indent=1) + "\n")
            print(f"analysis digests written to {args.check}")
        else:
            same = {k: expected.get(k) == v for k, v in outputs.items()}
            print(f"analysis output byte-identical to {args.check}: {same}")
            if not all(same.values()):
                sys.exit(1)
    print(f"(peak memory of this driver: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB)")


if __name__ == "__main__":
    main()
