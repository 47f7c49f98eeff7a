"""Never lose a change: every line of a patch is a header, a hunk line, known metadata
or said to be ignored; a patch that would lose a line is refused naming its line, and
``git apply`` agrees with what is accepted."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from klpcc.diffs import parse_patch
from klpcc.errors import KlpccError
from klpcc.series import Patch

from .helpers import klpcc, write_tree

BASE = {"util.c": "int a(void)\n{\n\treturn 1;\n}\n\nint b(void)\n{\n\treturn 2;\n}\n",
        "calc.c": "int c(void)\n{\n\treturn 3;\n}\n"}

GOOD = """\
diff --git a/util.c b/util.c
index 1111111..2222222 100644
--- a/util.c
+++ b/util.c
@@ -1,4 +1,4 @@
 int a(void)
 {
-\treturn 1;
+\treturn 10;
 }
@@ -6,4 +6,4 @@ int a(void)
 int b(void)
 {
-\treturn 2;
+\treturn 20;
 }
diff --git a/calc.c b/calc.c
--- a/calc.c
+++ b/calc.c
@@ -1,4 +1,4 @@
 int c(void)
 {
-\treturn 3;
+\treturn 30;
 }
"""


def parse(text: str | bytes, notes: list[str] | None = None):
    data = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
    return parse_patch(Patch("t", "t.patch", data), lambda p: p in BASE, notes)


def refused(text: str | bytes) -> KlpccError:
    with pytest.raises(KlpccError) as info:
        parse(text)
    assert info.value.patch == "t.patch"
    return info.value


def line_of(text: str, start: str, nth: int = 1) -> int:
    return [i for i, ln in enumerate(text.splitlines(), 1) if ln.startswith(start)][nth - 1]


def test_the_good_patch_reads_whole():
    changes = parse(GOOD)
    assert [(c.path, len(c.hunks)) for c in changes] == [("util.c", 2), ("calc.c", 1)]


@pytest.mark.parametrize("old, new", [
    ("@@ -1,4 +1,4 @@\n", "@@ -1,4 +1,4\n"),  # no closing @@
    ("@@ -1,4 +1,4 @@\n", "@@ -1,4 +1,4@@\n"),  # no space before it
    ("@@ -1,4 +1,4 @@\n", "@@ -1,4 +1,\x004 @@\n"),  # a NUL
    ("@@ -1,4 +1,4 @@\n", "@@ -1,4 +1,4 @@x\n"),  # a stray byte after it
    ("@@ -1,4 +1,4 @@\n", "@@ -1," + "4" * 5000 + " +1,4 @@\n"),  # 5,000 digits
])
def test_a_malformed_hunk_header_is_refused_at_its_line(old, new):
    text = GOOD.replace(old, new, 1)
    err = refused(text)
    assert err.line == line_of(text, "@@") and "malformed hunk header" in err.message, err
    assert len(str(err)) < 300


def test_a_deleted_plus_line_is_refused():
    text = GOOD.replace("+++ b/calc.c\n", "")
    err = refused(text)
    assert "'---' line without the '+++'" in err.message or "'---' line is missing" in err.message, err


def test_a_deleted_hunk_header_is_refused_where_its_lines_start():
    text = GOOD.replace("@@ -6,4 +6,4 @@ int a(void)\n", "")
    err = refused(text)
    assert err.line == line_of(text, " int b(void)"), err
    assert "outside any hunk" in err.message or "more lines than its header says" in err.message, err


def test_garbage_between_two_hunks_is_refused():
    text = GOOD.replace("@@ -6,4", "this line is not part of the diff\n@@ -6,4", 1)
    err = refused(text)
    assert err.line == line_of(text, "@@ -6,4") and "without a file header" in err.message, err


def test_a_hunk_that_counts_too_few_lines_is_refused():
    text = GOOD.replace("@@ -1,4 +1,4 @@", "@@ -1,3 +1,3 @@", 1)
    err = refused(text)
    assert err.line == line_of(text, " }") and "more lines than its header says" in err.message, err


def test_a_hunk_that_ends_early_is_refused():
    text = GOOD.replace(" }\n@@ -6,4", "@@ -6,4", 1)
    err = refused(text)
    assert "the hunk ends before" in err.message, err


def test_the_same_file_diff_twice_is_refused():
    section = GOOD[GOOD.index("diff --git a/calc.c"):]
    err = refused(GOOD + section)
    assert "repeats its diff of calc.c" in err.message
    assert err.line == line_of(GOOD + section, "diff --git a/calc.c", 2)


def test_text_between_file_diffs_is_said_and_a_hunk_that_changes_nothing_refused():
    notes: list[str] = []
    text = GOOD.replace("diff --git a/calc.c", "some words a mailer added\ndiff --git a/calc.c")
    parse(text, notes)
    assert any("text between file diffs ignored" in n and "some words" in n for n in notes), notes
    text = text.replace("@@ -1,4 +1,4 @@\n int c(void)\n {\n-\treturn 3;\n+\treturn 30;\n }\n",
                        "@@ -1,4 +1,4 @@\n int c(void)\n {\n \treturn 3;\n }\n")
    err = refused(text)
    assert err.line == line_of(text, "@@", 3) and "changes no line" in err.message, err


def test_a_patch_cut_short_is_refused():
    assert "no hunk after them" in refused(GOOD[:GOOD.index("@@ -1,4 +1,4 @@\n int c")]).message
    assert "middle of a hunk line" in refused(GOOD.rstrip("\n")).message


def test_a_mode_change_is_said_and_a_symbolic_link_refused():
    notes: list[str] = []
    mode = "diff --git a/util.c b/util.c\nold mode 100644\nnew mode 100755\n"
    parse(mode + GOOD[GOOD.index("diff --git a/calc.c"):], notes)
    assert any("mode change 100644 -> 100755 not carried" in n for n in notes), notes
    link = "diff --git a/util.c b/util.c\nold mode 100644\nnew mode 120000\n"
    assert "symbolic link" in refused(link).message


def test_a_diff_after_the_signature_is_refused_and_a_signature_is_not():
    mail = GOOD + "-- \n2.39.5\n\n"
    assert len(parse(mail)) == 2
    err = refused(GOOD.replace("diff --git a/calc.c", "-- \n2.39.5\ndiff --git a/calc.c"))
    assert "after the mail signature" in err.message


# --------------------------------------------------------------------------- through the CLI


def _git_apply(tmp: Path, text: str) -> bool:
    tree = write_tree(tmp / "git", BASE)
    subprocess.run(["git", "init", "-q", str(tree)], check=True)
    (tmp / "p.patch").write_text(text, encoding="utf-8", errors="surrogateescape")
    return subprocess.run(["git", "-C", str(tree), "apply", "--check", str(tmp / "p.patch")],
                          capture_output=True, check=False).returncode == 0


@pytest.mark.parametrize("mutation, git_rejects", [
    (("@@ -1,4 +1,4 @@\n", "@@ -1,4 +1,4\n"), True),
    (("+++ b/calc.c\n", ""), True),
    (("@@ -6,4", "stray\n@@ -6,4"), True),
    # git apply skips the headerless lines and applies the rest: klpcc refuses
    (("@@ -6,4 +6,4 @@ int a(void)\n", ""), False),
])
def test_a_patch_that_would_lose_lines_is_refused_through_the_cli(tmp_path, mutation, git_rejects):
    text = GOOD.replace(*mutation, 1)
    assert _git_apply(tmp_path, text) is not git_rejects
    src = write_tree(tmp_path / "src", BASE)
    (tmp_path / "patches").mkdir()
    (tmp_path / "patches" / "0001-fix.patch").write_text(text)
    out = tmp_path / "bundle"
    r = klpcc("compile", str(tmp_path / "patches" / "0001-fix.patch"), "--source", str(src), "-o", str(out))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "0001-fix.patch:" in r.stderr, r.stderr
    assert not out.exists()


ODD_NAMES = ["sp ace.c", 'q"uote.c', "back\\slash.c", "café.c", "dir with space/ünï.h"]


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


def test_odd_file_names_round_trip_through_git(tmp_path):
    """Names with spaces, quotes, backslashes and UTF-8 come in from git, and the bundle's
    cumulative.diff gives them back the way git quotes them: git apply takes it and
    makes exactly the release's files."""
    repo = tmp_path / "repo"
    write_tree(repo, {name: f"int f{i}(void)\n{{\n\treturn {i};\n}}\n" for i, name in enumerate(ODD_NAMES)})
    _git(repo, "init", "-q")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base")
    base = _git(repo, "rev-parse", "HEAD").strip()
    for i, name in enumerate(ODD_NAMES):
        (repo / name).write_text(f"int f{i}(void)\n{{\n\treturn {i} + 1;\n}}\n")
    (repo / "new 'file'.c").write_text("int g(void)\n{\n\treturn 7;\n}\n")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "release")
    out = tmp_path / "bundle"
    r = klpcc("compile", "--git", str(repo), f"{base}..HEAD", "-o", str(out))
    assert r.returncode == 0, r.stderr
    check = tmp_path / "check"
    subprocess.run(["git", "clone", "-q", str(repo), str(check)], check=True)
    _git(check, "checkout", "-q", base)
    applied = subprocess.run(["git", "-C", str(check), "apply", str(out / "cumulative.diff")],
                             capture_output=True, text=True, check=False)
    assert applied.returncode == 0, applied.stderr
    for name in [*ODD_NAMES, "new 'file'.c"]:
        assert (check / name).read_bytes() == (repo / name).read_bytes(), name
    analysis = klpcc("analyze", "--git", str(repo), f"{base}..HEAD", "--format", "json")
    files = {f["file"] for f in __import__("json").loads(analysis.stdout)["functions"]}
    assert files == {*ODD_NAMES, "new 'file'.c"}, files


def _odd_patch(raw: bytes) -> bytes:
    quoted = b'"' + b"".join(b"\\t" if c == 9 else b"\\n" if c == 10 else bytes([c]) if 0x20 <= c < 0x80
                             else b"\\%03o" % c for c in raw) + b'"'
    return (b"diff --git " + quoted.replace(b'"', b'"a/', 1) + b" " + quoted.replace(b'"', b'"b/', 1) + b"\n"
            b"new file mode 100644\n--- /dev/null\n+++ " + quoted.replace(b'"', b'"b/', 1) + b"\n"
            b"@@ -0,0 +1 @@\n+int x;\n")


@pytest.mark.parametrize("name, says", [
    ("x" * 300 + ".c", "longer than a file system allows"),
    ("d/" * 2100 + "x.c", "longer than a file system allows"),
    (b"nul\0.c", "holds a NUL byte"),
])
def test_names_no_file_system_can_hold_are_refused_on_one_line(tmp_path, name, says):
    raw = name if isinstance(name, bytes) else name.encode()
    (tmp_path / "0001-odd.patch").write_bytes(_odd_patch(raw))
    src = write_tree(tmp_path / "src", BASE)
    r = klpcc("analyze", str(tmp_path / "0001-odd.patch"), "--source", str(src))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and says in r.stderr, r.stderr
    assert "0001-odd.patch:1:" in r.stderr and len(r.stderr) < 700
