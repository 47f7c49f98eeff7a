"""The output contracts: ``analyze --format json`` and the bundle ``compile`` writes
(manifest.json and a cumulative.diff that takes the base to the release)."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from klpcc.cli import main

from .helpers import klpcc, make_series, write_tree

BASE = {
    "calc.c": (
        "static int clip(int v)\n"
        "{\n"
        "\treturn v > 100 ? 100 : v;\n"
        "}\n"
        "\n"
        "int add(int a, int b)\n"
        "{\n"
        "\treturn clip(a + b);\n"
        "}\n"
    ),
    "lib/clamp.c": "int clamp(int v)\n{\n\treturn v < 0 ? 0 : v;\n}\n",
    "README": "calc\n",
}
MUL = "\nint mul(int a, int b)\n{\n\treturn clip(a * b);\n}\n"
# 1: add changes, mul is new
R1 = {"calc.c": BASE["calc.c"].replace("clip(a + b)", "clip(a) + clip(b)") + MUL}
# 2: the static clip changes, lib/clamp.c goes, new.c comes
R2 = {
    "calc.c": R1["calc.c"].replace("v > 100 ? 100 : v", "v >= 100 ? 100 : v"),
    "lib/clamp.c": None,
    "new.c": "int fresh(void)\n{\n\treturn 1;\n}\n",
}
# 3: add is back to the original
R3 = {"calc.c": R2["calc.c"].replace("clip(a) + clip(b)", "clip(a + b)")}
NAMES = ["r1-add-mul", "r2-clip-clamp-fresh", "r3-revert-add"]


def tree_at(release: int) -> dict[str, str]:
    """The source tree of a release (0: the base), by my own bookkeeping."""
    tree: dict[str, str | None] = dict(BASE)
    for rel in (R1, R2, R3)[:release]:
        tree.update(rel)
    return {k: v for k, v in tree.items() if v is not None}


@pytest.fixture
def series(tmp_path) -> tuple[Path, Path]:
    return make_series(tmp_path, BASE, [R1, R2, R3], names=NAMES)


def invoke(*args: str | Path):
    return CliRunner().invoke(main, [str(a) for a in args])


def analyze_json(*args: str | Path) -> dict:
    r = invoke("analyze", *args, "--format", "json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def by_name(doc: dict) -> dict[str, dict]:
    return {f["name"]: f for f in doc["functions"]}


# --------------------------------------------------------------------------- analyze --format json


def test_analyze_json_contract(series):
    patches, base = series
    doc = analyze_json(patches, "--source", base)
    assert isinstance(doc["schema"], str) and re.search(r"\d", doc["schema"])
    assert doc["releases"] == NAMES
    assert doc["release"] == "r3-revert-add"
    fns = by_name(doc)
    assert {n: f["change"] for n, f in fns.items()} == {
        "add": "nop", "mul": "added", "clip": "modified", "clamp": "removed", "fresh": "added"}
    assert {n: f["file"] for n, f in fns.items()} == {
        "add": "calc.c", "mul": "calc.c", "clip": "calc.c", "clamp": "lib/clamp.c", "fresh": "new.c"}
    assert {n: f["static"] for n, f in fns.items()} == {
        "add": False, "mul": False, "clip": True, "clamp": False, "fresh": False}
    for f in doc["functions"]:
        assert "transition" not in f
    # one entry per release 1..R, aligned with "releases"
    assert {n: f["history"] for n, f in fns.items()} == {
        "add": ["modified", "modified", "nop"],
        "mul": ["added", "added", "added"],
        "clip": ["unchanged", "modified", "modified"],
        "clamp": ["unchanged", "removed", "removed"],
        "fresh": ["absent", "added", "added"],
    }
    assert doc["nops"] == ["add"]
    json.dumps(doc)  # plain JSON all the way down


def test_analyze_json_for_an_earlier_release(series):
    patches, base = series
    doc = analyze_json(patches, "--source", base, "--release", "r2-clip-clamp-fresh")
    assert doc["releases"] == NAMES  # the whole series, whatever release is shown
    assert doc["release"] == "r2-clip-clamp-fresh"
    fns = by_name(doc)
    assert {n: f["change"] for n, f in fns.items()} == {
        "add": "modified", "mul": "added", "clip": "modified", "clamp": "removed", "fresh": "added"}
    for f in doc["functions"]:
        assert len(f["history"]) == 2
        assert f["history"][-1] == f["change"]
    assert analyze_json(patches, "--source", base, "-r", "2") == doc


def test_analyze_json_with_from(series):
    patches, base = series
    doc = analyze_json(patches, "--source", base, "--from", "r1-add-mul")
    fns = by_name(doc)
    assert all("transition" in f for f in doc["functions"])
    # add: live-patched in 1, back to the original in 3; mul: the same code in both;
    # clip and fresh: only the new live patch carries them
    assert {n: fns[n]["transition"] for n in ("add", "mul", "clip", "fresh")} == {
        "add": "nop", "mul": "keep", "clip": "add", "fresh": "add"}
    assert analyze_json(patches, "--source", base, "--from", "1") == doc


def test_analyze_json_update_and_drop_transitions(tmp_path):
    base = {"x.c": "int f(void)\n{\n\treturn 1;\n}\n"}
    r1 = {"x.c": base["x.c"].replace("return 1", "return 2")
          + "\nint g(void)\n{\n\treturn 0;\n}\n"}
    r2 = {"x.c": base["x.c"].replace("return 1", "return 3")}
    patches, src = make_series(tmp_path, base, [r1, r2])
    fns = by_name(analyze_json(patches, "--source", src, "--from", "1"))
    assert fns["f"]["change"] == "modified" and fns["f"]["transition"] == "update"
    assert fns["g"]["transition"] == "drop"  # added by release 1, gone again in 2


def test_analyze_json_in_a_subprocess(series):
    patches, base = series
    r = klpcc("analyze", str(patches), "--source", str(base), "--format", "json", "--release", "1")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["release"] == "r1-add-mul"
    assert {f["name"]: f["change"] for f in doc["functions"]} == {"add": "modified", "mul": "added"}


# --------------------------------------------------------------------------- compile


def compile_to(out: Path, *args: str | Path) -> dict:
    r = invoke("compile", *args, "-o", out)
    assert r.exit_code == 0, r.output
    names = sorted(p.name for p in out.iterdir())
    assert names in (["cumulative.diff", "manifest.json", "patches"],
                     ["cumulative.diff", "manifest.json", "patches", "sources"],
                     ["base", "cumulative.diff", "manifest.json", "patches", "sources"])
    m = json.loads((out / "manifest.json").read_text())
    assert ("base" in names) == bool(m.get("base_sources"))
    # the patches of releases 1..R, byte for byte as the series has them
    assert [p["release"] for p in m["patches"]] == m["releases"][: m["release"]["index"]]
    for p in m["patches"]:  # (a git range's patches are commits, not files)
        assert not Path(p["path"]).is_file() or (out / p["file"]).read_bytes() == Path(p["path"]).read_bytes()
    assert sorted(q.name for q in (out / "patches").iterdir()) == \
        sorted(Path(p["file"]).name for p in m["patches"])
    return m


def files_of(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): p.read_bytes().decode()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".git" not in p.relative_to(root).parts
    }


def git_apply(base: Path, diff: Path, work: Path, *opts: str) -> Path:
    """A copy of ``base`` with ``diff`` applied by git (a repository of its own, so
    that no enclosing repository changes what git apply does)."""
    shutil.copytree(base, work)
    subprocess.run(["git", "init", "-q", str(work)], check=True)
    if diff.stat().st_size:
        subprocess.run(["git", "-C", str(work), "apply", "--whitespace=nowarn", *opts, str(diff)],
                       check=True, capture_output=True)
    return work


def test_manifest_contract(series, tmp_path):
    patches, base = series
    m = compile_to(tmp_path / "out", patches, "--source", base)
    assert isinstance(m["schema"], str) and re.search(r"\d", m["schema"])
    assert m["release"] == {"name": "r3-revert-add", "index": 3}
    assert str(base) in json.dumps(m["base"])
    assert {f["name"]: f["change"] for f in m["functions"]} == {
        "add": "nop", "mul": "added", "clip": "modified", "clamp": "removed", "fresh": "added"}
    assert m["nops"] == ["add"]
    assert sorted((f["path"], f["status"]) for f in m["files"]) == [
        ("calc.c", "modified"), ("lib/clamp.c", "deleted"), ("new.c", "added")]


def test_manifest_functions_agree_with_analyze(series, tmp_path):
    patches, base = series
    m = compile_to(tmp_path / "out", patches, "--source", base, "--release", "2")
    doc = analyze_json(patches, "--source", base, "--release", "2")
    assert m["functions"] == doc["functions"]
    assert m["nops"] == []


@pytest.mark.parametrize("release", [1, 2, 3])
def test_cumulative_diff_takes_the_base_to_the_release(series, tmp_path, release):
    patches, base = series
    out = tmp_path / "out"
    compile_to(out, patches, "--source", base, "--release", str(release))
    work = git_apply(base, out / "cumulative.diff", tmp_path / "work")
    assert files_of(work) == tree_at(release)


@pytest.mark.parametrize("release", [1, 2, 3])
def test_bundle_sources_are_the_release_versions_of_changed_c_files(series, tmp_path, release):
    patches, base = series
    out = tmp_path / "out"
    m = compile_to(out, patches, "--source", base, "--release", str(release))
    tree = tree_at(release)
    changed = {f["path"] for f in m["files"] if f["status"] != "deleted"}
    assert files_of(out / "sources") == {p: tree[p] for p in changed}
    assert [s["path"] for s in m["sources"]] == sorted(changed)


def test_bundle_sources_carry_local_headers_transitively(tmp_path):
    a = '#include <linux/fs.h>\n#include "internal.h"\nint f(void)\n{\n\treturn 1;\n}\n'
    base = {
        "fs/proc/a.c": a,
        "fs/proc/internal.h": '#include "../mount.h"\n#include "missing.h"\nstruct pi { int x; };\n',
        "fs/mount.h": "struct mnt { int y; };\n",
        "fs/proc/other.h": "int unrelated;\n",
    }
    patches, src = make_series(tmp_path, base, [{"fs/proc/a.c": a.replace("1;", "2;")}])
    out = tmp_path / "out"
    m = compile_to(out, patches, "--source", src)
    assert sorted(files_of(out / "sources")) == ["fs/mount.h", "fs/proc/a.c", "fs/proc/internal.h"]
    assert "return 2;" in (out / "sources/fs/proc/a.c").read_text()
    assert [s["path"] for s in m["sources"]] == ["fs/mount.h", "fs/proc/a.c", "fs/proc/internal.h"]


def test_cumulative_diff_of_renames_line_ends_and_final_newlines(tmp_path):
    src = write_tree(tmp_path / "src", {"util.c": "int u(void)\n{\n\treturn 0;\n}\n"})
    (src / "crlf.c").write_bytes(b"int a;\r\nint b;\r\n")
    (src / "nonl.c").write_bytes(b"int x;\nint y;")
    pd = tmp_path / "patches"
    pd.mkdir()
    (pd / "1.patch").write_bytes(
        b"diff --git a/util.c b/lib/util.c\nsimilarity index 80%\nrename from util.c\nrename to lib/util.c\n"
        b"--- a/util.c\n+++ b/lib/util.c\n@@ -1,4 +1,4 @@\n int u(void)\n {\n-\treturn 0;\n+\treturn 1;\n }\n"
        b"diff --git a/crlf.c b/crlf.c\n--- a/crlf.c\n+++ b/crlf.c\n"
        b"@@ -1,2 +1,2 @@\n int a;\r\n-int b;\r\n+int B;\r\n"
        b"diff --git a/nonl.c b/nonl.c\n--- a/nonl.c\n+++ b/nonl.c\n@@ -1,2 +1,2 @@\n int x;\n-int y;\n"
        b"\\ No newline at end of file\n+int z;\n\\ No newline at end of file\n")
    (pd / "2.patch").write_bytes(
        b"diff --git a/nonl.c b/nonl.c\n--- a/nonl.c\n+++ b/nonl.c\n@@ -1,2 +1,3 @@\n int x;\n-int z;\n"
        b"\\ No newline at end of file\n+int z;\n+int w;\n")
    (pd / "series").write_text("1.patch\n2.patch\n")
    want = {
        1: {"lib/util.c": b"int u(void)\n{\n\treturn 1;\n}\n", "crlf.c": b"int a;\r\nint B;\r\n",
            "nonl.c": b"int x;\nint z;"},
        2: {"lib/util.c": b"int u(void)\n{\n\treturn 1;\n}\n", "crlf.c": b"int a;\r\nint B;\r\n",
            "nonl.c": b"int x;\nint z;\nint w;\n"},
    }
    for release in (1, 2):
        out = tmp_path / f"out{release}"
        m = compile_to(out, pd, "--source", src, "--release", str(release))
        assert sorted(f["path"] for f in m["files"]) == ["crlf.c", "lib/util.c", "nonl.c", "util.c"]
        work = git_apply(src, out / "cumulative.diff", tmp_path / f"work{release}")
        got = {str(p.relative_to(work)): p.read_bytes() for p in work.rglob("*")
               if p.is_file() and ".git" not in p.relative_to(work).parts}
        assert got == want[release]


def test_cumulative_diff_matches_applying_the_demo_series_one_by_one(demo, tmp_path):
    """git apply, patch after patch, is the independent judge of each release's tree."""
    patches, src = demo
    lines = [ln.split() for ln in (patches / "series").read_text().splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    step = tmp_path / "step"
    shutil.copytree(src, step)
    subprocess.run(["git", "init", "-q", str(step)], check=True)
    for i, (name, *opts) in enumerate(lines, 1):
        strip = opts[0] if opts else "-p1"
        subprocess.run(["git", "-C", str(step), "apply", strip, str(patches / name)], check=True)
        if i not in (2, len(lines)):
            continue
        out = tmp_path / f"out{i}"
        r = klpcc("compile", str(patches), "--source", str(src), "--release", str(i), "-o", str(out))
        assert r.returncode == 0, r.stderr
        work = git_apply(src, out / "cumulative.diff", tmp_path / f"work{i}")
        assert files_of(work) == files_of(step), f"release {i}"


def test_compile_from_a_git_range(tmp_path):
    repo = write_tree(tmp_path / "repo", BASE)

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(repo), "-c", "user.name=T", "-c", "user.email=t@e",
                        "-c", "commit.gpgsign=false", *args], check=True, capture_output=True)

    git("init", "-q", "-b", "main")
    git("add", "-A")
    git("commit", "-qm", "base")
    git("tag", "v1.0")
    for subject, rel in zip(NAMES, (R1, R2, R3)):
        for path, content in rel.items():
            if content is None:
                (repo / path).unlink()
            else:
                (repo / path).write_text(content)
        git("add", "-A")
        git("commit", "-qm", subject)
    (repo / "calc.c").write_text("uncommitted junk\n")  # the base is the commit, not the work tree
    out = tmp_path / "out"
    m = compile_to(out, "--git", repo, "v1.0..main", "--release", "r2-clip-clamp-fresh")
    assert {f["name"]: f["change"] for f in m["functions"]} == {
        "add": "modified", "mul": "added", "clip": "modified", "clamp": "removed", "fresh": "added"}
    base = tmp_path / "base"
    tar = subprocess.run(["git", "-C", str(repo), "archive", "v1.0"], check=True, capture_output=True)
    with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as t:
        t.extractall(base, filter="data")
    work = git_apply(base, out / "cumulative.diff", tmp_path / "work")
    assert files_of(work) == tree_at(2)
