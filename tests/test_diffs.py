"""Stage 2 (parsing and applying the diffs of a patch) and stage 3 (the base tree and
the tree of every release)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from klpcc.cli import main
from klpcc.diffs import apply_hunks, parse_patch
from klpcc.errors import KlpccError
from klpcc.history import replay
from klpcc.series import Patch, Series, load_series
from klpcc.trees import DirectoryTree, GitTree, Snapshots, blob_id

from .helpers import write_tree

UTIL = "int util_max(int a, int b)\n{\n\treturn a > b ? a : b;\n}\n"
UTIL_GE = UTIL.replace("a > b", "a >= b")

HUNK_GE = """\
@@ -1,4 +1,4 @@
 int util_max(int a, int b)
 {
-\treturn a > b ? a : b;
+\treturn a >= b ? a : b;
 }
"""


def mkpatch(text: str | bytes, strip: int | None = None, path: str = "t.patch") -> Patch:
    data = text.encode() if isinstance(text, str) else text
    return Patch("t", path, data, strip)


def lines_of(content: str | bytes) -> list[bytes]:
    data = content.encode() if isinstance(content, str) else content
    return data.splitlines(keepends=True)


def lineno(text: str, prefix: str, nth: int = 1) -> int:
    """1-based number of the nth line of ``text`` starting with ``prefix``."""
    hits = [i for i, ln in enumerate(text.splitlines(), 1) if ln.startswith(prefix)]
    return hits[nth - 1]


def exists_in(*paths: str):
    known = set(paths)
    dirs = {p.rsplit("/", i)[0] for p in paths for i in range(1, p.count("/") + 1)}
    return lambda p: p in known or p in dirs


def apply_one(base: str | bytes, text: str | bytes, *, fuzz: int = 0, exists=None,
              strip: int | None = None):
    patch = mkpatch(text, strip)
    (change,) = parse_patch(patch, exists)
    return change, apply_hunks(lines_of(base), change, patch, fuzz)


def result(applied) -> bytes:
    return b"".join(applied.lines)


# --------------------------------------------------------------------------- formats


def test_plain_unified_diff_with_timestamps_and_a_backup_name():
    text = ("--- util.c.orig\t2024-10-01 10:00:00.000000000 +0200\n"
            "+++ util.c\t2024-10-01 10:05:00.000000000 +0200\n" + HUNK_GE)
    change, applied = apply_one(UTIL, text, exists=exists_in("util.c"))
    assert (change.kind, change.old_path, change.new_path) == ("modify", "util.c", "util.c")
    assert result(applied) == UTIL_GE.encode()
    assert applied.notes == []


def test_diff_naur_output_is_detected_as_p1():
    text = ("diff -Naur linux.orig/src/util.c linux/src/util.c\n"
            "--- linux.orig/src/util.c\t2024-10-01 10:00:00\n"
            "+++ linux/src/util.c\t2024-10-01 10:05:00\n" + HUNK_GE)
    change, applied = apply_one(UTIL, text, exists=exists_in("src/util.c"))
    assert change.path == "src/util.c"
    assert result(applied) == UTIL_GE.encode()


def test_index_style_header():
    text = ("Index: util.c\n"
            "===================================================================\n"
            "--- util.c\n+++ util.c\n" + HUNK_GE)
    change, applied = apply_one(UTIL, text, exists=exists_in("util.c"))
    assert change.path == "util.c"
    assert result(applied) == UTIL_GE.encode()


@pytest.mark.parametrize(("old", "new", "tree", "want"), [
    ("a/src/util.c", "b/src/util.c", ("src/util.c",), "src/util.c"),  # -p1, git style prefixes
    ("src/util.c", "src/util.c", ("src/util.c",), "src/util.c"),  # -p0
    ("util.c", "util.c", ("util.c",), "util.c"),  # -p0, top level
    ("orig/src/util.c", "new/src/util.c", ("src/util.c",), "src/util.c"),  # -p1, other prefixes
    ("a/util.c", "b/util.c", ("a/util.c", "util.c"), "util.c"),  # a/ b/: -p1 wins
])
def test_strip_level_is_detected(old, new, tree, want):
    text = f"--- {old}\n+++ {new}\n" + HUNK_GE
    change, applied = apply_one(UTIL, text, exists=exists_in(*tree))
    assert change.path == want
    assert result(applied) == UTIL_GE.encode()


def test_strip_level_for_a_new_file_in_an_existing_directory():
    text = "--- /dev/null\n+++ work/src/new.c\n@@ -0,0 +1 @@\n+int fresh;\n"
    (change,) = parse_patch(mkpatch(text), exists_in("src/util.c"))
    assert (change.kind, change.new_path) == ("add", "src/new.c")
    text0 = "--- /dev/null\n+++ src/new.c\n@@ -0,0 +1 @@\n+int fresh;\n"
    (change0,) = parse_patch(mkpatch(text0), exists_in("src/util.c"))
    assert change0.new_path == "src/new.c"


def test_explicit_strip_level_from_the_series_wins():
    text = "--- x/y/util.c\n+++ x/y/util.c\n" + HUNK_GE
    (change,) = parse_patch(mkpatch(text, strip=2), exists_in())
    assert change.path == "util.c"
    (change,) = parse_patch(mkpatch(text, strip=1), exists_in())
    assert change.path == "y/util.c"
    same = "--- a/util.c\n+++ a/util.c\n" + HUNK_GE
    (change,) = parse_patch(mkpatch(same, strip=0), exists_in("util.c"))
    assert change.path == "a/util.c"


GIT_MULTI = f"""\
diff --git a/util.c b/util.c
index 5e1c309..8d2a4f1 100644
--- a/util.c
+++ b/util.c
{HUNK_GE}\
diff --git a/new.c b/new.c
new file mode 100644
index 0000000..3b18e51
--- /dev/null
+++ b/new.c
@@ -0,0 +1,2 @@
+int new_one;
+int new_two;
diff --git a/old.c b/old.c
deleted file mode 100644
index 3b18e51..0000000
--- a/old.c
+++ /dev/null
@@ -1 +0,0 @@
-int old;
"""


def test_git_diff_with_modified_new_and_deleted_files():
    changes = parse_patch(mkpatch(GIT_MULTI), exists_in("util.c", "old.c"))
    assert [(c.kind, c.old_path, c.new_path) for c in changes] == [
        ("modify", "util.c", "util.c"),
        ("add", None, "new.c"),
        ("delete", "old.c", None),
    ]
    # each file change and each hunk knows where it is in the patch
    assert [c.patch_line for c in changes] == [
        lineno(GIT_MULTI, "diff --git a/util.c"),
        lineno(GIT_MULTI, "diff --git a/new.c"),
        lineno(GIT_MULTI, "diff --git a/old.c"),
    ]
    assert [c.hunks[0].patch_line for c in changes] == [
        lineno(GIT_MULTI, "@@", 1), lineno(GIT_MULTI, "@@", 2), lineno(GIT_MULTI, "@@", 3)]
    patch = mkpatch(GIT_MULTI)
    assert result(apply_hunks([], changes[1], patch)) == b"int new_one;\nint new_two;\n"
    assert result(apply_hunks(lines_of("int old;\n"), changes[2], patch)) == b""


def test_rename_with_hunks():
    text = ("diff --git a/util.c b/lib/util.c\nsimilarity index 75%\nrename from util.c\n"
            "rename to lib/util.c\nindex 5e1c309..8d2a4f1 100644\n"
            "--- a/util.c\n+++ b/lib/util.c\n" + HUNK_GE)
    change, applied = apply_one(UTIL, text, exists=exists_in("util.c"))
    assert (change.kind, change.old_path, change.new_path) == ("rename", "util.c", "lib/util.c")
    assert result(applied) == UTIL_GE.encode()


def test_renames_and_copies_without_hunks_do_not_swallow_the_next_file():
    text = ("diff --git a/util.c b/lib/util.c\nsimilarity index 100%\nrename from util.c\n"
            "rename to lib/util.c\n"
            "diff --git a/calc.c b/calc2.c\nsimilarity index 100%\ncopy from calc.c\ncopy to calc2.c\n"
            "diff --git a/other.c b/other.c\n--- a/other.c\n+++ b/other.c\n"
            "@@ -1 +1 @@\n-int o;\n+int p;\n")
    changes = parse_patch(mkpatch(text), exists_in("util.c", "calc.c", "other.c"))
    assert [(c.kind, c.old_path, c.new_path, len(c.hunks)) for c in changes] == [
        ("rename", "util.c", "lib/util.c", 0),
        ("copy", "calc.c", "calc2.c", 0),
        ("modify", "other.c", "other.c", 1),
    ]


def test_copy_with_hunks():
    text = ("diff --git a/util.c b/util2.c\nsimilarity index 80%\ncopy from util.c\ncopy to util2.c\n"
            "--- a/util.c\n+++ b/util2.c\n" + HUNK_GE)
    change, applied = apply_one(UTIL, text, exists=exists_in("util.c"))
    assert (change.kind, change.old_path, change.new_path) == ("copy", "util.c", "util2.c")
    assert result(applied) == UTIL_GE.encode()


SIGNATURE = "-- "  # the signature separator has a trailing space
MAIL = f"""\
From 8d2a4f1c0ffee5e1c3090000000000000000dead Mon Sep 17 00:00:00 2001
From: Dev Eloper <dev@example.com>
Date: Tue, 1 Oct 2024 10:00:00 +0200
Subject: [PATCH 2/5] util: prefer the first argument on ties

Callers expect util_max(a, b) to return a when both are equal; they
compare pointers to the result.

Signed-off-by: Dev Eloper <dev@example.com>
---
 new.c  | 1 +
 util.c | 2 +-
 2 files changed, 2 insertions(+), 1 deletion(-)
 create mode 100644 new.c

diff --git a/new.c b/new.c
new file mode 100644
index 0000000..3b18e51
--- /dev/null
+++ b/new.c
@@ -0,0 +1 @@
+int fresh;
diff --git a/util.c b/util.c
index 5e1c309..8d2a4f1 100644
--- a/util.c
+++ b/util.c
{HUNK_GE}\
{SIGNATURE}
2.39.5

"""


def test_git_format_patch_mail():
    patch = mkpatch(MAIL)
    changes = parse_patch(patch, exists_in("util.c"))
    assert [(c.kind, c.path) for c in changes] == [("add", "new.c"), ("modify", "util.c")]
    assert changes[1].patch_line == lineno(MAIL, "diff --git a/util.c")
    # the signature is not part of the last hunk
    assert result(apply_hunks(lines_of(UTIL), changes[1], patch)) == UTIL_GE.encode()
    assert [t for _, t, _ in changes[1].hunks[-1].lines][-1] == b"}\n"


def test_git_format_patch_mail_whose_last_hunk_line_looks_like_a_signature():
    # a removed line "- " (a line holding one space) right before the signature
    base = "int a;\n \n"
    text = ("From x Mon Sep 17 00:00:00 2001\nSubject: [PATCH] t\n\n---\n x.c | 1 -\n\n"
            "diff --git a/x.c b/x.c\n--- a/x.c\n+++ b/x.c\n@@ -1,2 +1 @@\n int a;\n- \n"
            "-- \n2.39.5\n\n")
    change, applied = apply_one(base, text, exists=exists_in("x.c"))
    assert result(applied) == b"int a;\n"


# --------------------------------------------------------------------------- line ends


def test_no_newline_at_end_of_file_on_the_old_side():
    base = b"int a;\nint b;"
    text = ("--- a/x.c\n+++ b/x.c\n@@ -1,2 +1,3 @@\n int a;\n-int b;\n"
            "\\ No newline at end of file\n+int b;\n+int c;\n")
    _, applied = apply_one(base, text)
    assert result(applied) == b"int a;\nint b;\nint c;\n"


def test_no_newline_at_end_of_file_on_the_new_side():
    text = ("--- a/x.c\n+++ b/x.c\n@@ -1,2 +1,2 @@\n int a;\n-int b;\n+int b;\n"
            "\\ No newline at end of file\n")
    _, applied = apply_one(b"int a;\nint b;\n", text)
    assert result(applied) == b"int a;\nint b;"


def test_no_newline_at_end_of_file_on_both_sides():
    text = ("--- a/x.c\n+++ b/x.c\n@@ -1,2 +1,2 @@\n int a;\n-int b;\n"
            "\\ No newline at end of file\n+int c;\n\\ No newline at end of file\n")
    _, applied = apply_one(b"int a;\nint b;", text)
    assert result(applied) == b"int a;\nint c;"


def test_missing_final_newline_is_not_matched_by_a_line_that_has_one():
    text = "--- a/x.c\n+++ b/x.c\n@@ -1,2 +1,2 @@\n int a;\n-int b;\n+int c;\n"
    with pytest.raises(KlpccError) as exc:
        apply_one(b"int a;\nint b;", text)
    assert "x.c" in str(exc.value)


CRLF_BASE = b"int a;\r\nint b;\r\nint c;\r\n"


def test_crlf_file_with_a_git_diff():
    # git diff of a CRLF file: LF headers, content lines keep their CR
    text = (b"diff --git a/x.c b/x.c\n--- a/x.c\n+++ b/x.c\n"
            b"@@ -1,3 +1,3 @@\n int a;\r\n-int b;\r\n+int B;\r\n int c;\r\n")
    _, applied = apply_one(CRLF_BASE, text)
    assert result(applied) == b"int a;\r\nint B;\r\nint c;\r\n"


def test_crlf_patch_file_for_a_crlf_file():
    # the whole patch saved with CRLF line ends
    text = b"--- a/x.c\r\n+++ b/x.c\r\n@@ -1,3 +1,3 @@\r\n int a;\r\n-int b;\r\n+int B;\r\n int c;\r\n"
    change, applied = apply_one(CRLF_BASE, text, exists=exists_in("x.c"))
    assert change.path == "x.c"
    assert result(applied) == b"int a;\r\nint B;\r\nint c;\r\n"


def test_lf_patch_does_not_apply_to_a_crlf_file():
    text = "--- a/x.c\n+++ b/x.c\n@@ -1,3 +1,3 @@\n int a;\n-int b;\n+int B;\n int c;\n"
    with pytest.raises(KlpccError) as exc:
        apply_one(CRLF_BASE, text)
    assert "x.c" in str(exc.value) and "t.patch:3" in str(exc.value)


# --------------------------------------------------------------------------- placement, fuzz

LONG = "".join(f"int v{i};\n" for i in range(1, 21))  # int v1; .. int v20;


def test_hunk_applies_at_an_offset():
    text = "--- a/x.c\n+++ b/x.c\n@@ -9,3 +9,3 @@\n int v9;\n-int v10;\n+long v10;\n int v11;\n"
    base = "int extra1;\nint extra2;\nint extra3;\n" + LONG
    _, applied = apply_one(base, text)
    assert result(applied) == (base.replace("int v10;", "long v10;")).encode()
    assert len(applied.notes) == 1 and "+3" in applied.notes[0]
    base = LONG.replace("int v1;\nint v2;\n", "")
    _, applied = apply_one(base, text)
    assert result(applied) == (base.replace("int v10;", "long v10;")).encode()
    assert len(applied.notes) == 1 and "-2" in applied.notes[0]


def test_second_hunk_follows_the_offset_of_the_first():
    text = ("--- a/x.c\n+++ b/x.c\n@@ -2,3 +2,4 @@\n int v2;\n+int v2b;\n int v3;\n int v4;\n"
            "@@ -15,3 +16,3 @@\n int v15;\n-int v16;\n+long v16;\n int v17;\n")
    _, applied = apply_one(LONG, text)
    want = LONG.replace("int v2;\n", "int v2;\nint v2b;\n").replace("int v16;", "long v16;")
    assert result(applied) == want.encode()
    assert applied.notes == []


FUZZY = "--- a/x.c\n+++ b/x.c\n@@ -9,3 +9,3 @@\n int v9_was;\n-int v10;\n+long v10;\n int v11;\n"


def test_context_mismatch_needs_fuzz():
    with pytest.raises(KlpccError) as exc:
        apply_one(LONG, FUZZY)
    msg = str(exc.value)
    assert "t.patch:3:" in msg and "x.c" in msg and "hunk #1" in msg
    _, applied = apply_one(LONG, FUZZY, fuzz=1)
    assert result(applied) == LONG.replace("int v10;", "long v10;").encode()
    assert any("fuzz 1" in n for n in applied.notes)


def test_fuzz_does_not_drop_changed_lines():
    text = "--- a/x.c\n+++ b/x.c\n@@ -9,3 +9,3 @@\n int v9;\n-int v10_was;\n+long v10;\n int v11;\n"
    with pytest.raises(KlpccError):
        apply_one(LONG, text, fuzz=3)


def test_fuzz_on_the_command_line(tmp_path):
    write_tree(tmp_path / "src", {"x.c": "int f(void)\n{\n\treturn 1;\n}\n"})
    p = tmp_path / "fix.patch"
    p.write_text("--- a/x.c\n+++ b/x.c\n@@ -1,4 +1,4 @@\n int f(int)\n {\n-\treturn 1;\n+\treturn 2;\n }\n")
    args = ["analyze", str(p), "--source", str(tmp_path / "src"), "--format", "json"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2
    assert f"{p}:3:" in r.stderr and "x.c" in r.stderr
    r = CliRunner().invoke(main, [*args, "--fuzz", "1"])
    assert r.exit_code == 0, r.output
    assert [(f["name"], f["change"]) for f in json.loads(r.stdout)["functions"]] == [("f", "modified")]


# --------------------------------------------------------------------------- stage 3: trees


def test_directory_tree(tmp_path):
    write_tree(tmp_path, {"a.c": "int a;\n", "sub/b.c": "int b;\n"})
    t = DirectoryTree(str(tmp_path))
    assert t.read("a.c") == b"int a;\n"
    assert t.read("sub/b.c") == b"int b;\n"
    assert t.read("nope.c") is None
    assert t.read("a.c/x") is None
    assert t.identity()["path"] == os.path.abspath(tmp_path)
    with pytest.raises(KlpccError):
        t.read("sub")
    with pytest.raises(KlpccError):
        DirectoryTree(str(tmp_path / "nope"))
    with pytest.raises(KlpccError):
        DirectoryTree(str(tmp_path / "a.c"))


def test_directory_tree_refuses_a_link_out_of_the_tree(tmp_path):
    write_tree(tmp_path / "outside", {"secret.c": "int s;\n"})
    write_tree(tmp_path / "src", {"a.c": "int a;\n"})
    (tmp_path / "src" / "s.c").symlink_to(tmp_path / "outside" / "secret.c")
    with pytest.raises(KlpccError) as exc:
        DirectoryTree(str(tmp_path / "src")).read("s.c")
    assert "s.c" in str(exc.value)


def test_git_tree(tmp_path):
    repo = tmp_path / "r"
    write_tree(repo, {"a.c": "int a;\n"})
    env = ["-c", "user.name=T", "-c", "user.email=t@e", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "-C", str(repo), "init", "-q"], check=True)
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(repo), *env, "commit", "-qm", "one"], check=True)
    sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], check=True,
                         capture_output=True, text=True).stdout.strip()
    (repo / "a.c").write_text("int changed;\n")  # the work tree is not the commit
    t = GitTree(str(repo), sha)
    assert t.read("a.c") == b"int a;\n"
    assert t.read("b.c") is None
    assert t.identity()["commit"] == sha


def test_snapshots_store_each_content_once_and_keep_what_is_asked():
    s = Snapshots(frozenset({2}))
    s.record("a.c", 0, b"v0")
    s.record("b.c", 0, None)
    s.record("a.c", 1, b"v1")
    s.record("a.c", 2, b"v2")
    s.record("b.c", 2, b"new")
    s.record("a.c", 3, b"v0")  # back to the base
    s.record("b.c", 4, None)
    assert s.read("a.c", 0) == b"v0"
    assert s.read("a.c", 2) == b"v2"  # kept
    assert s.read("a.c", 3) == s.read("a.c", 4) == b"v0"
    assert s.read("b.c", 0) is None and s.read("b.c", 3) == b"new" and s.read("b.c", 4) is None
    assert s.blob_at("a.c", 1) == blob_id(b"v1")  # known by id even when not kept
    assert s.paths() == ["a.c", "b.c"]
    assert s.changed_paths(1) == ["a.c"]
    assert s.changed_paths(2) == ["a.c", "b.c"]
    assert s.changed_paths(3) == ["b.c"]
    assert s.changed_paths(4) == []
    with pytest.raises(KeyError):
        s.blob_at("c.c", 0)


# --------------------------------------------------------------------------- releases' trees


def _write(tmp_path: Path, name: str, text: str | bytes) -> str:
    p = tmp_path / "patches" / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(text.encode() if isinstance(text, str) else text)
    return str(p)


def test_release_trees_follow_adds_deletes_renames_and_copies(tmp_path):
    base = write_tree(tmp_path / "src", {"util.c": UTIL, "calc.c": "int calc;\n", "gone.c": "int g;\n"})
    p1 = _write(tmp_path, "1-rename.patch",
                "diff --git a/util.c b/lib/util.c\nsimilarity index 100%\n"
                "rename from util.c\nrename to lib/util.c\n")
    p2 = _write(tmp_path, "2-edit-renamed.patch",
                "diff --git a/lib/util.c b/lib/util.c\n--- a/lib/util.c\n+++ b/lib/util.c\n" + HUNK_GE)
    p3 = _write(tmp_path, "3-copy-and-delete.patch",
                "diff --git a/calc.c b/calc2.c\nsimilarity index 100%\ncopy from calc.c\ncopy to calc2.c\n"
                "diff --git a/gone.c b/gone.c\ndeleted file mode 100644\n--- a/gone.c\n+++ /dev/null\n"
                "@@ -1 +0,0 @@\n-int g;\n")
    p4 = _write(tmp_path, "4-new-and-rename-with-edit.patch",
                "--- /dev/null\n+++ b/fresh.c\n@@ -0,0 +1,2 @@\n+int fresh;\n+int fresher;\n"
                "diff --git a/calc2.c b/calc3.c\nsimilarity index 50%\nrename from calc2.c\n"
                "rename to calc3.c\n--- a/calc2.c\n+++ b/calc3.c\n@@ -1 +1 @@\n-int calc;\n+long calc;\n")
    series = load_series([p1, p2, p3, p4])
    rep = replay(series, DirectoryTree(str(base)), keep={1, 2, 3, 4})
    snap = rep.snapshots
    want = {
        0: {"util.c": UTIL, "lib/util.c": None, "calc.c": "int calc;\n", "calc2.c": None,
            "calc3.c": None, "gone.c": "int g;\n", "fresh.c": None},
        1: {"util.c": None, "lib/util.c": UTIL},
        2: {"lib/util.c": UTIL_GE},
        3: {"calc2.c": "int calc;\n", "gone.c": None},
        4: {"fresh.c": "int fresh;\nint fresher;\n", "calc2.c": None, "calc3.c": "long calc;\n"},
    }
    tree: dict[str, str | None] = {}
    for release in range(5):
        tree.update(want[release])
        for path, content in tree.items():
            got = snap.read(path, release)
            assert got == (None if content is None else content.encode()), (release, path)
    assert set(rep.files_touched[1]) == {"util.c", "lib/util.c"}
    assert set(snap.changed_paths(4)) == {"util.c", "lib/util.c", "calc3.c", "gone.c",
                                         "fresh.c"}


def test_release_trees_with_p0_p1_and_offsets_from_a_quilt_series(tmp_path):
    base = write_tree(tmp_path / "src", {"x.c": LONG})
    _write(tmp_path, "a.patch", "--- x.c\n+++ x.c\n@@ -1,2 +1,3 @@\n+int v0;\n int v1;\n int v2;\n")
    # written against the base, so at offset +1 after a.patch
    _write(tmp_path, "b.patch", "--- a/x.c\n+++ b/x.c\n@@ -19,2 +19,2 @@\n int v19;\n-int v20;\n+long v20;\n")
    (tmp_path / "patches" / "series").write_text("a.patch -p0\nb.patch -p1\n")
    series = load_series([str(tmp_path / "patches")])
    rep = replay(series, DirectoryTree(str(base)), keep={1, 2})
    assert rep.snapshots.read("x.c", 1) == ("int v0;\n" + LONG).encode()
    assert rep.snapshots.read("x.c", 2) == ("int v0;\n" + LONG.replace("int v20;", "long v20;")).encode()
    notes = rep.notes_upto(2)
    assert len(notes) == 1 and "b.patch" in notes[0] and "+1" in notes[0]
    assert rep.notes_upto(1) == []


def test_replay_does_not_touch_the_base_tree(tmp_path):
    base = write_tree(tmp_path / "src", {"util.c": UTIL})
    before = {p: p.read_bytes() for p in base.rglob("*")}
    p = _write(tmp_path, "fix.patch", "--- a/util.c\n+++ b/util.c\n" + HUNK_GE)
    replay(Series((Patch("fix", p, Path(p).read_bytes()),), "t"), DirectoryTree(str(base)))
    assert {p: p.read_bytes() for p in base.rglob("*")} == before


def test_zero_context_hunks():
    base = "l1\nl2\nl3\nl4\n"
    ins = "--- a/x.c\n+++ b/x.c\n@@ -2,0 +3,2 @@\n+n1\n+n2\n"
    assert result(apply_one(base, ins)[1]) == b"l1\nl2\nn1\nn2\nl3\nl4\n"
    top = "--- a/x.c\n+++ b/x.c\n@@ -0,0 +1 @@\n+l0\n"
    assert result(apply_one(base, top)[1]) == b"l0\n" + base.encode()
    dele = "--- a/x.c\n+++ b/x.c\n@@ -2 +1,0 @@\n-l2\n"
    assert result(apply_one(base, dele)[1]) == b"l1\nl3\nl4\n"


def test_blank_context_line_without_its_space():
    # mailers and editors strip the lone space of an empty context line
    text = "--- a/x.c\n+++ b/x.c\n@@ -1,3 +1,3 @@\n int a;\n\n-int b;\n+int c;\n"
    assert result(apply_one("int a;\n\nint b;\n", text)[1]) == b"int a;\n\nint c;\n"


@pytest.mark.parametrize("gone", ["-", "- "])
def test_plain_diff_ending_in_a_removed_line_that_looks_like_a_mail_signature(gone):
    # "--" / "-- " at the end of a plain diff removes the line "-" / "- "; only a
    # format-patch mail has a signature
    text = f"--- a/x.c\n+++ b/x.c\n@@ -1,2 +1 @@\n int a;\n-{gone}\n"
    assert result(apply_one(f"int a;\n{gone}\n", text)[1]) == b"int a;\n"
