"""Stage 1: loading a series -- quilt series files, patch files, git ranges -- and
picking releases out of it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from klpcc.cli import main
from klpcc.errors import KlpccError
from klpcc.series import Series, load, load_git_range, load_series, release_name
from klpcc.trees import DirectoryTree, GitTree

from .helpers import klpcc, make_series, unified, write_tree

BASE = {
    "calc.c": (
        "int add(int a, int b)\n"
        "{\n"
        "\treturn a + b;\n"
        "}\n"
        "\n"
        "int sub(int a, int b)\n"
        "{\n"
        "\treturn a - b;\n"
        "}\n"
    ),
    "lib/clamp.c": (
        "static int lo = 0;\n"
        "\n"
        "int clamp(int v)\n"
        "{\n"
        "\treturn v < lo ? lo : v;\n"
        "}\n"
    ),
}
R1 = {"calc.c": BASE["calc.c"].replace("return a + b;", "return (int)((long)a + b);")}
R2 = {"lib/clamp.c": BASE["lib/clamp.c"].replace("v < lo", "v <= lo")}
R3 = {"calc.c": R1["calc.c"].replace("return a - b;", "return (int)((long)a - b);")}


def cli(*args: str):
    return CliRunner().invoke(main, list(args))


def analyze_json(*args: str) -> dict:
    r = cli("analyze", *args, "--format", "json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def changed(doc: dict) -> dict[str, str]:
    return {f["name"]: f["change"] for f in doc["functions"]}


# --------------------------------------------------------------------------- quilt series


def _patch_files(root: Path, names: list[str]) -> list[Path]:
    out = []
    for n in names:
        p = root / n
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"--- a/{n}\n+++ b/{n}\n@@ -1 +1 @@\n-a\n+b\n")
        out.append(p)
    return out


def test_quilt_series_file_comments_blank_lines_and_options(tmp_path):
    d = tmp_path / "q"
    files = _patch_files(d, ["one.patch", "two.diff", "sub/three.patch", "four"])
    (d / "series").write_text(
        "# live patch releases, oldest first\n"
        "\n"
        "one.patch\n"
        "   \n"
        "two.diff -p1\n"
        "  # an indented comment\n"
        "sub/three.patch -p0   # trailing comment\n"
        "\tfour\n"
    )
    s = load_series([str(d / "series")])
    assert s.names == ["one", "two", "three", "four"]
    assert [p.strip for p in s.patches] == [None, 1, 0, None]
    assert [p.data for p in s.patches] == [f.read_bytes() for f in files]
    assert [Path(p.path).resolve() for p in s.patches] == [f.resolve() for f in files]


def test_series_lines_are_relative_to_the_series_file(tmp_path, monkeypatch):
    d = tmp_path / "pkg" / "patches"
    _patch_files(tmp_path / "pkg", ["extra/x.patch"])
    _patch_files(d, ["y.patch"])
    (d / "series").write_text("../extra/x.patch\ny.patch\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _patch_files(elsewhere, ["y.patch"])  # a decoy next to the working directory
    monkeypatch.chdir(elsewhere)
    s = load_series([str(d / "series")])
    assert s.names == ["x", "y"]
    assert Path(s.patches[1].path).resolve() == (d / "y.patch").resolve()


def test_directory_holding_series(tmp_path):
    _patch_files(tmp_path, ["a.patch", "b.patch"])
    (tmp_path / "series").write_text("b.patch\na.patch\n")
    assert load_series([str(tmp_path)]).names == ["b", "a"]


def test_directory_holding_patches_series(tmp_path):
    _patch_files(tmp_path / "patches", ["a.patch", "b.patch"])
    (tmp_path / "patches" / "series").write_text("a.patch\nb.patch\n")
    s = load_series([str(tmp_path)])
    assert s.names == ["a", "b"]
    assert Path(s.patches[0].path).resolve() == (tmp_path / "patches" / "a.patch").resolve()


def test_directory_without_series_is_an_error(tmp_path):
    _patch_files(tmp_path, ["a.patch"])
    with pytest.raises(KlpccError) as exc:
        load_series([str(tmp_path)])
    assert str(tmp_path) in str(exc.value)


def test_several_patch_files_in_the_order_given(tmp_path):
    a, b, c = _patch_files(tmp_path, ["10-late.patch", "02-early.patch", "05-mid.diff"])
    s = load_series([str(a), str(b), str(c)])
    assert s.names == ["10-late", "02-early", "05-mid"]
    assert [p.strip for p in s.patches] == [None, None, None]
    assert [p.path for p in s.patches] == [str(a), str(b), str(c)]


def test_single_patch_file(tmp_path):
    (a,) = _patch_files(tmp_path, ["fix.patch"])
    s = load_series([str(a)])
    assert s.names == ["fix"]
    assert s.patches[0].data == a.read_bytes()


@pytest.mark.parametrize(("path", "name"), [
    ("0001-fix-it.patch", "0001-fix-it"),
    ("dir/fix.diff", "fix"),
    ("mail.mbox", "mail"),
    ("mail.eml", "mail"),
    ("notes.txt", "notes"),
    ("plain", "plain"),
    (".patch", ".patch"),
])
def test_release_name(path, name):
    assert release_name(path) == name


def test_quilt_reversed_and_unknown_options_are_refused(tmp_path):
    _patch_files(tmp_path, ["a.patch"])
    for opt in ("-R", "--fuzz=3"):
        (tmp_path / "series").write_text(f"a.patch {opt}\n")
        with pytest.raises(KlpccError) as exc:
            load_series([str(tmp_path / "series")])
        assert f"{tmp_path / 'series'}:1:" in str(exc.value)


def test_release_listed_twice_is_refused(tmp_path):
    _patch_files(tmp_path, ["a.patch"])
    (tmp_path / "series").write_text("a.patch\n# again\na.patch\n")
    with pytest.raises(KlpccError) as exc:
        load_series([str(tmp_path / "series")])
    assert f"{tmp_path / 'series'}:3:" in str(exc.value)


# --------------------------------------------------------------------------- release selection


@pytest.fixture
def abc() -> Series:
    from klpcc.series import Patch

    return Series(tuple(Patch(n, f"{n}.patch", b"") for n in ("alpha", "beta", "gamma")), "t")


def test_index_by_name_position_and_default(abc):
    assert abc.index(None) == 3  # the last release by default
    assert abc.index("alpha") == 1
    assert abc.index("gamma") == 3
    assert abc.index("2") == 2
    assert abc.index(2) == 2
    assert abc.index(" beta ") == 2


@pytest.mark.parametrize("ref", ["delta", "0", "4", "-1", "", "1.5"])
def test_index_rejects_unknown_names_and_positions_out_of_range(abc, ref):
    with pytest.raises(KlpccError) as exc:
        abc.index(ref)
    msg = str(exc.value)
    assert repr(ref.strip()) in msg or ref.strip() in msg
    assert "alpha" in msg and "gamma" in msg  # it tells what the series holds


def test_a_release_named_like_a_number_is_found_by_name_first():
    from klpcc.series import Patch

    s = Series(tuple(Patch(n, n, b"") for n in ("2", "1")), "t")
    assert s.index("2") == 1
    assert s.index("1") == 2


# --------------------------------------------------------------------------- load()


def test_load_requires_source_for_patch_files(tmp_path):
    (a,) = _patch_files(tmp_path, ["a.patch"])
    with pytest.raises(KlpccError, match="--source"):
        load([str(a)])
    series, base = load([str(a)], source=str(tmp_path))
    assert isinstance(base, DirectoryTree)
    assert series.names == ["a"]


def test_load_refuses_patch_files_and_git_together(tmp_path):
    (a,) = _patch_files(tmp_path, ["a.patch"])
    with pytest.raises(KlpccError, match="--git"):
        load([str(a)], git=(str(tmp_path), "x..y"))


def test_load_refuses_nothing_at_all():
    with pytest.raises(KlpccError):
        load([], source=".")


# --------------------------------------------------------------------------- end to end


def test_quilt_directory_end_to_end_with_p0_and_p1(tmp_path):
    patches, base = make_series(tmp_path, BASE, [R1, R2, R3], git=False)  # -p0 lines
    doc = analyze_json(str(patches), "--source", str(base))
    assert doc["releases"] == ["0001-release-1", "0002-release-2", "0003-release-3"]
    assert doc["release"] == "0003-release-3"
    assert changed(doc) == {"add": "modified", "sub": "modified", "clamp": "modified"}

    patches2, base2 = make_series(tmp_path / "git", BASE, [R1, R2, R3])
    (patches2 / "series").write_text(
        "0001-release-1.patch -p1\n0002-release-2.patch\n# 0003-release-3.patch\n")
    doc = analyze_json(str(patches2 / "series"), "--source", str(base2))
    assert doc["releases"] == ["0001-release-1", "0002-release-2"]
    assert changed(doc) == {"add": "modified", "clamp": "modified"}


def test_patch_files_end_to_end_with_release_by_name_and_position(tmp_path):
    patches, base = make_series(tmp_path, BASE, [R1, R2, R3], names=["fix-add", "fix-clamp", "fix-sub"])
    files = [str(patches / f"{n}.patch") for n in ("fix-add", "fix-clamp", "fix-sub")]
    last = analyze_json(*files, "--source", str(base))
    assert last["release"] == "fix-sub"
    assert changed(last) == {"add": "modified", "clamp": "modified", "sub": "modified"}
    by_name = analyze_json(*files, "--source", str(base), "--release", "fix-clamp")
    by_pos = analyze_json(*files, "--source", str(base), "-r", "2")
    assert by_name["release"] == by_pos["release"] == "fix-clamp"
    assert changed(by_name) == changed(by_pos) == {"add": "modified", "clamp": "modified"}
    first = analyze_json(*files, "--source", str(base), "--release", "1")
    assert changed(first) == {"add": "modified"}


def test_from_by_name_and_position(tmp_path):
    patches, base = make_series(tmp_path, BASE, [R1, R2, R3], names=["fix-add", "fix-clamp", "fix-sub"])
    a = analyze_json(str(patches), "--source", str(base), "--from", "fix-add")
    b = analyze_json(str(patches), "--source", str(base), "--from", "1")
    assert a["from"] == b["from"] == "fix-add"
    ta = {f["name"]: f["transition"] for f in a["functions"]}
    assert ta == {f["name"]: f["transition"] for f in b["functions"]}
    # add: patched in 1 and in 3 with the same code; clamp and sub: new in the live patch
    assert ta == {"add": "keep", "clamp": "add", "sub": "add"}


# --------------------------------------------------------------------------- git ranges


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=T", "-c", "user.email=t@example.com",
         "-c", "commit.gpgsign=false", *args],
        check=True, capture_output=True, text=True,
    ).stdout


def make_repo(root: Path, base: dict, commits: list[tuple[str, dict]]) -> Path:
    """A repository whose commit tagged ``base`` holds ``base``; then one commit per
    (subject, files) on top."""
    repo = root / "repo"
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    write_tree(repo, base)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base tree")
    git(repo, "tag", "base")
    for subject, files in commits:
        for path, content in files.items():
            p = repo / path
            if content is None:
                p.unlink()
            else:
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text(content)
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", subject, "-m", "A longer body.\n\n--- not a diff")
    return repo


@pytest.fixture
def repo(tmp_path) -> Path:
    return make_repo(tmp_path, BASE, [
        ("calc: widen add", R1),
        ("clamp: include the bound", R2),
        ("calc: widen sub", R3),
    ])


def test_git_range_each_commit_is_a_release_named_by_its_subject(repo):
    s = load_git_range(str(repo), "base..main")
    assert s.names == ["calc: widen add", "clamp: include the bound", "calc: widen sub"]
    assert all(p.strip == 1 for p in s.patches)
    assert isinstance(s.base, GitTree)
    assert s.base.commit == git(repo, "rev-parse", "base").strip()
    assert s.base.read("calc.c") == BASE["calc.c"].encode()
    assert s.base.read("lib/clamp.c") == BASE["lib/clamp.c"].encode()
    assert s.base.read("nope.c") is None
    assert b"+++ b/calc.c" in s.patches[0].data
    assert b"lib/clamp.c" in s.patches[1].data and b"calc.c" not in s.patches[1].data


def test_git_range_end_to_end(repo):
    doc = analyze_json("--git", str(repo), "base..main")
    assert doc["releases"] == ["calc: widen add", "clamp: include the bound", "calc: widen sub"]
    assert doc["release"] == "calc: widen sub"
    assert changed(doc) == {"add": "modified", "clamp": "modified", "sub": "modified"}
    mid = analyze_json("--git", str(repo), "base..main", "--release", "clamp: include the bound")
    assert changed(mid) == {"add": "modified", "clamp": "modified"}
    pos = analyze_json("--git", str(repo), "base..main", "--release", "1")
    assert pos["release"] == "calc: widen add"
    assert changed(pos) == {"add": "modified"}


def test_git_range_with_a_sha_base_and_a_new_and_deleted_file(tmp_path):
    repo = make_repo(tmp_path, BASE, [
        ("add mul", {"mul.c": "int mul(int a, int b)\n{\n\treturn a * b;\n}\n"}),
        ("drop clamp", {"lib/clamp.c": None}),
    ])
    base_sha = git(repo, "rev-parse", "base").strip()
    doc = analyze_json("--git", str(repo), f"{base_sha}..HEAD")
    assert doc["releases"] == ["add mul", "drop clamp"]
    assert changed(doc) == {"mul": "added", "clamp": "removed"}


def test_git_range_duplicate_subjects_get_distinct_names(tmp_path):
    repo = make_repo(tmp_path, BASE, [("fix", R1), ("fix", R2)])
    names = load_git_range(str(repo), "base..main").names
    assert names[0] == "fix" and len(set(names)) == 2


def test_git_range_in_a_subprocess(repo):
    r = klpcc("analyze", "--git", str(repo), "base..main", "--release", "2", "--format", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["release"] == "clamp: include the bound"


def test_patches_generated_by_make_series_match_unified():
    # sanity of the helper the other tests lean on
    text = unified({"x.c": "a\n"}, {"x.c": "b\n"})
    assert text.startswith("diff --git a/x.c b/x.c\n--- a/x.c\n+++ b/x.c\n@@ -1 +1 @@\n-a\n+b\n")


def test_series_file_with_crlf_line_ends(tmp_path):
    _patch_files(tmp_path, ["a.patch", "b.patch"])
    (tmp_path / "series").write_bytes(b"# releases\r\na.patch -p1\r\n\r\nb.patch\r\n")
    s = load_series([str(tmp_path / "series")])
    assert s.names == ["a", "b"]
    assert [p.strip for p in s.patches] == [1, None]


def test_real_git_format_patch_mails_as_the_series(repo, tmp_path):
    out = tmp_path / "mails"
    git(repo, "format-patch", "-q", "-o", str(out), "base..main")
    mails = sorted(out.iterdir())
    assert len(mails) == 3
    base = write_tree(tmp_path / "base", BASE)
    doc = analyze_json(*map(str, mails), "--source", str(base))
    assert doc["releases"] == [m.stem for m in mails]
    assert changed(doc) == {"add": "modified", "clamp": "modified", "sub": "modified"}
    # a quilt series of the same mails, -p1 given explicitly
    (out / "series").write_text("".join(f"{m.name} -p1\n" for m in mails))
    assert changed(analyze_json(str(out), "--source", str(base))) == changed(doc)


def test_git_range_with_renames(tmp_path):
    moved = BASE["lib/clamp.c"]
    repo = make_repo(tmp_path, BASE, [
        ("move clamp", {"lib/clamp.c": None, "src/clamp.c": moved}),  # no hunks
        ("move and edit calc", {"calc.c": None, "src/calc.c": R1["calc.c"]}),  # with hunks
    ])
    s = load_git_range(str(repo), "base..main")
    assert b"rename from lib/clamp.c" in s.patches[0].data
    assert b"rename from calc.c" in s.patches[1].data and b"@@ " in s.patches[1].data
    doc = analyze_json("--git", str(repo), "base..main")
    # non-static functions keep their identity across files: only add's code changed
    assert changed(doc) == {"add": "modified"}
    assert {f["name"]: f["file"] for f in doc["functions"]} == {"add": "src/calc.c"}
    # the same, as plain git diff output applied to a directory
    patch = tmp_path / "all.patch"
    patch.write_text(git(repo, "diff", "-M", "base", "main"))
    base = write_tree(tmp_path / "base", BASE)
    doc = analyze_json(str(patch), "--source", str(base))
    assert changed(doc) == {"add": "modified"}
