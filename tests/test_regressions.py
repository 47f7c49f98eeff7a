"""Problems found in review, each pinned by the smallest input that showed it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from klpcc.api import AnalyzeOptions, analyze, compile_bundle
from klpcc.c import CSource, split_lines
from klpcc.errors import KlpccError
from klpcc.history import dependencies, release_graph

from .helpers import klpcc, make_series, write_tree


def opts(patches: Path, src: Path, **kw) -> AnalyzeOptions:
    return AnalyzeOptions(series=[str(patches)], source=str(src), **kw)


def test_two_files_with_the_same_content(tmp_path):
    """Contents shared by two paths must survive one of them moving on."""
    patches, src = make_series(tmp_path, {"a.txt": "x\n", "b.txt": "y\n"},
                               [{"a.txt": "same\n", "b.txt": "same\n"}, {"a.txt": "other\n"}])
    out = tmp_path / "out"
    compile_bundle(opts(patches, src), out)
    doc = json.loads((out / "manifest.json").read_text())
    assert {f["path"]: f["status"] for f in doc["files"]} == {"a.txt": "modified", "b.txt": "modified"}


def test_edit_away_from_and_back_to_code_with_parse_errors(tmp_path):
    """A release identical to the base reports nothing, even where the parser had to
    recover from errors (an unterminated prototype) in the releases between."""
    a = ("int broken(int x\n#ifdef CONFIG_A\nstatic inline int f(void) { return 1; }\n"
         "#else\nstatic inline int f(void) { return 0; }\n#endif\n")
    b = a.replace("int broken(int x\n", "int broken(int x);\n")
    patches, src = make_series(tmp_path, {"a.h": a}, [{"a.h": b}, {"a.h": a}])
    last = analyze(opts(patches, src))
    assert [e.change for e in last.functions if e.change not in ("unchanged", "dropped")] == []
    assert [e.change for e in last.outside if e.change not in ("unchanged", "dropped")] == []


def test_p1_patch_creating_a_file_in_an_existing_directory(tmp_path):
    src = write_tree(tmp_path / "src", {"kernel/a.c": "int a;\n"})
    patch = tmp_path / "new.patch"
    patch.write_text("--- /dev/null\n+++ linux/kernel/new.c\n@@ -0,0 +1 @@\n+int b;\n")
    a = analyze(AnalyzeOptions(series=[str(patch)], source=str(src)))
    assert [e.key for e in a.outside] == ["kernel/new.c:variable:b"]


def test_strip_level_is_one_per_patch(tmp_path):
    src = write_tree(tmp_path / "src", {"kernel/a.c": "int a;\n"})
    patch = tmp_path / "p.patch"
    patch.write_text(
        "--- linux.orig/kernel/a.c\n+++ linux/kernel/a.c\n@@ -1 +1 @@\n-int a;\n+int aa;\n"
        "--- /dev/null\n+++ linux/drivers/newdrv/x.c\n@@ -0,0 +1 @@\n+int x;\n")
    a = analyze(AnalyzeOptions(series=[str(patch)], source=str(src)))
    assert {e.file for e in a.outside} == {"kernel/a.c", "drivers/newdrv/x.c"}


def test_struct_read_either_way_has_one_fingerprint(tmp_path):
    base = "struct a {\n\tint x;\n};\n\nstruct s {\n\tint y;\n};\n"
    patches, src = make_series(tmp_path, {"a.h": base}, [{"a.h": base.replace("int x;", "int x; x++;")}])
    a = analyze(opts(patches, src))
    assert {e.key: e.change for e in a.outside} == {"a.h:type:struct a": "modified"}


def test_moving_an_endif_changes_the_functions_it_moves_across(tmp_path):
    base = "#ifdef CONFIG_X\nint a(void) { return 1; }\n#endif\nint f(void) { return 2; }\n"
    moved = "#ifdef CONFIG_X\nint a(void) { return 1; }\nint f(void) { return 2; }\n#endif\n"
    patches, src = make_series(tmp_path, {"x.c": base}, [{"x.c": moved}])
    assert {e.key: e.change for e in analyze(opts(patches, src)).functions} == {"f": "modified"}


def test_conditional_context_agrees_between_the_parser_and_the_fallback():
    # the same function, once in a region the parser reads and once in one it gives up on
    clean = b"#ifdef CONFIG_X\nstatic int f(void)\n{\n\treturn 1;\n}\n#endif\n"
    broken = b"static int t[] = {\n#ifdef A\n\t1,\n#endif\n};\n" + clean
    def fp(data):
        return [i.fingerprint for i in CSource("t.c", split_lines(data)).items() if i.name == "f"]
    assert fp(clean) == fp(broken) and len(fp(clean)) == 1


def test_function_like_and_object_like_macros_differ(tmp_path):
    patches, src = make_series(tmp_path, {"m.h": "#define SQ(x) ((x) * (x))\n"},
                               [{"m.h": "#define SQ (x) ((x) * (x))\n"}])
    assert {e.key: e.change for e in analyze(opts(patches, src)).outside} == {"m.h:macro:SQ": "modified"}


def test_warnings_of_later_releases_stay_out_of_earlier_ones(tmp_path):
    patches, src = make_series(tmp_path, {"a.c": "int f(void) { return 0; }\n"},
                               [{"a.c": "int f(void) { return 1; }\n"}])
    (patches / "0002-empty.patch").write_text("")
    (patches / "series").write_text("0001-release-1.patch\n0002-empty.patch\n")
    assert analyze(opts(patches, src, release=1)).warnings == []
    assert len(analyze(opts(patches, src, release=2)).warnings) == 1


def test_output_directory_holding_the_current_one_is_refused(tmp_path):
    patches, src = make_series(tmp_path, {"a.c": "int a;\n"}, [{"a.c": "int b;\n"}])
    work = tmp_path / "work"
    work.mkdir()
    r = klpcc("compile", str(patches), "--source", str(src), "-o", ".", "--force", cwd=work)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert sorted(os.listdir(tmp_path)) == ["base", "patches", "work"]
    assert os.listdir(work) == []


def test_symlinked_output_directory_is_replaced_not_its_target(tmp_path):
    patches, src = make_series(tmp_path, {"a.c": "int a;\n"}, [{"a.c": "int b;\n"}])
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep").write_text("mine")
    link = tmp_path / "bundle"
    link.symlink_to(target)
    compile_bundle(opts(patches, src), link, force=True)
    assert not link.is_symlink() and (link / "manifest.json").is_file()
    assert (target / "keep").read_text() == "mine"


def test_mail_without_its_mbox_line_still_loses_its_signature(tmp_path):
    src = write_tree(tmp_path / "src", {"a.c": "int a;\n"})
    patch = tmp_path / "0001-fix.patch"
    patch.write_text("Subject: [PATCH] fix\n\n---\n a.c | 2 +-\n\n"
                     "diff --git a/a.c b/a.c\n--- a/a.c\n+++ b/a.c\n@@ -1 +1 @@\n-int a;\n+int b;\n"
                     "-- \n2.39.5\n\n")
    a = analyze(AnalyzeOptions(series=[str(patch)], source=str(src)))
    assert {e.key for e in a.outside} == {"a.c:variable:a", "a.c:variable:b"}


def test_diff_removing_lines_that_look_like_a_signature(tmp_path):
    src = write_tree(tmp_path / "src", {"notes.txt": "keep\n-- \n"})
    patch = tmp_path / "sig.patch"
    patch.write_text("--- a/notes.txt\n+++ b/notes.txt\n@@ -1,2 +1 @@\n keep\n--- \n")
    a = analyze(AnalyzeOptions(series=[str(patch)], source=str(src)))
    assert a.replay.snapshots.read("notes.txt", 1) == b"keep\n"


def test_cumulative_diff_with_spaces_in_paths_applies_with_patch(tmp_path):
    patches, src = make_series(tmp_path, {"my dir/a b.c": "int a;\n"}, [{"my dir/a b.c": "int b;\n"}])
    out = tmp_path / "out"
    compile_bundle(opts(patches, src), out)
    work = tmp_path / "work"
    shutil.copytree(src, work)
    subprocess.run(["patch", "-s", "-p1", "-i", str(out / "cumulative.diff")], cwd=work, check=True)
    assert (work / "my dir" / "a b.c").read_text() == "int b;\n"


@pytest.mark.parametrize("release", ["²", "0", "-1"])
def test_odd_release_positions_are_bad_input(tmp_path, release):
    patches, src = make_series(tmp_path, {"a.c": "int a;\n"}, [{"a.c": "int b;\n"}])
    r = klpcc("analyze", str(patches), "--source", str(src), "--release", release)
    assert r.returncode == 2 and r.stderr.startswith("klpcc: error: unknown release")


def test_series_comment_after_a_tab(tmp_path):
    patches, src = make_series(tmp_path, {"a.c": "int a;\n"}, [{"a.c": "int b;\n"}])
    (patches / "series").write_text("0001-release-1.patch\t# the fix\n")
    assert analyze(opts(patches, src)).release_name == "0001-release-1"


def test_hunk_at_line_zero_with_old_lines_is_malformed(tmp_path):
    src = write_tree(tmp_path / "src", {"a.c": "a\nb\nc\n"})
    patch = tmp_path / "zero.patch"
    patch.write_text("--- a/a.c\n+++ b/a.c\n@@ -0,3 +0,3 @@\n x\n y\n z\n")
    with pytest.raises(KlpccError) as err:
        analyze(AnalyzeOptions(series=[str(patch)], source=str(src)))
    assert err.value.line == 3 and "malformed" in str(err.value)


def test_api_takes_one_path_as_the_series_and_checks_fuzz(demo):
    patches, src = demo
    assert analyze(AnalyzeOptions(series=str(patches), source=str(src))).release == 5
    with pytest.raises(KlpccError):
        AnalyzeOptions(series=[str(patches)], source=str(src), fuzz=9)


def test_whole_file_changes_point_at_their_patch_line(tmp_path):
    patches, src = make_series(tmp_path, {"a.c": "int a;\n"}, [{"b.c": "int f(void) { return 0; }\n"}])
    a = analyze(opts(patches, src))
    (entry,) = a.functions
    assert entry.origin is not None and entry.origin[1] == 1  # the 'diff --git' line


def test_dependencies_name_every_earlier_release_and_agree_with_the_graph(tmp_path):
    rels = [{"a.c": f"int f(void) {{ return {i}; }}\n"} for i in (1, 2, 3)]
    patches, src = make_series(tmp_path, {"a.c": "int f(void) { return 0; }\n"}, rels)
    a = analyze(opts(patches, src))
    names = a.replay.releases
    deps = dependencies(a.replay)
    assert deps[names[2]] == names[:2]
    import networkx as nx
    g = release_graph(a.replay)
    for name in names:
        ancestors = {n[1] for n in nx.ancestors(g, ("release", name)) if n[0] == "release"}
        assert ancestors == set(deps[name])


def test_usage_errors_are_one_line(tmp_path):
    r = klpcc("analyze", "--format", "xml", "x")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("klpcc: error:")


def test_a_function_moved_out_of_an_ifdef_unchanged_is_not_changed(tmp_path):
    # kernel/sched/fair.c's is_core_idle left an '#ifdef CONFIG_NUMA_BALANCING' block
    # in a stable update: every configuration that compiled it compiles the same code
    base = ("#ifdef CONFIG_X\nstatic int a(void) { return 1; }\nstatic int f(void) { return 2; }\n#endif\n"
            "int g(void) { return 3; }\n")
    moved = ("static int f(void) { return 2; }\n#ifdef CONFIG_X\nstatic int a(void) { return 1; }\n#endif\n"
             "int g(void) { return 4; }\n")
    patches, src = make_series(tmp_path, {"x.c": base}, [{"x.c": moved}])
    assert {e.key: e.change for e in analyze(opts(patches, src)).functions} == {"g": "modified"}
    # the same code moved under another condition, or into one, still changes what is compiled
    other = base.replace("#ifdef CONFIG_X", "#ifdef CONFIG_Y")
    patches, src = make_series(tmp_path / "y", {"x.c": base}, [{"x.c": other}])
    assert {e.key: e.change for e in analyze(opts(patches, src)).functions} == {
        "x.c:a": "modified", "x.c:f": "modified"}


NESTED = """\
#ifndef GUARD_H
#define GUARD_H
#ifdef CONFIG_A
static int a1(void) { return 1; }
#if defined(CONFIG_B)
static int b1(void) { return 2; }
#elif CONFIG_C
static int c1(void) { return 3; }
#else
static int d1(void) { return 4; }
#endif
static int a2(void) { return 5; }
#else
static int e1(void) { return 6; }
#endif
int z(void) { return 7; }
#endif
"""


@pytest.mark.parametrize("line", [i for i, ln in enumerate(NESTED.splitlines()) if ln.startswith("#")
                                  and "define" not in ln])
def test_an_edited_conditional_line_changes_every_item_it_guards(line: int):
    # the incremental parse must re-read every item whose #if branches an edit renames
    from klpcc.c import CSource, LineEdit

    lines = NESTED.encode().splitlines(keepends=True)
    new = list(lines)
    new[line] = new[line].replace(b"CONFIG_", b"CONFIG_X").replace(b"#else", b"#elif CONFIG_Q") \
        .replace(b"#endif", b"#endif /* moved */")
    src = CSource("x.h", lines)
    old = src.items()
    before, after = src.edit(new, [LineEdit(line, 1, line, 1)])

    def count(items):
        return Counter((it.kind, it.name, it.fingerprint) for it in items)
    assert count(old) - count(before) + count(after) == count(CSource("x.h", new).items())


def _big_region(n: int) -> bytes:
    parts = []
    for i in range(n):
        parts.append(f"#ifdef CONFIG_{i % 3}\nstatic int f{i}(int x)\n{{\n\treturn x + {i};\n}}\n\n"
                     f"#else\nstatic int f{i}(int x)\n{{\n\treturn x;\n}}\n#endif\n\n"
                     f"/*\n}}\n\n*/\nstruct s{i} {{\n\tint a;\n}};\n\n")
    return "".join(parts).encode()


@pytest.mark.parametrize("twist", ["plain", "open-if", "open-brace"])
def test_a_large_region_scanned_in_chunks_reads_as_scanned_whole(twist: str):
    # the lexical reading of a large region is remembered chunk by chunk; chunks end
    # where the scan is at rest, and the conditionals open before one are part of its key
    from klpcc.c import lexical

    data = _big_region(600)
    if twist == "open-if":  # a conditional open across many chunks
        data = b"#if defined(CONFIG_OUTER)\n" + data + b"#endif\n"
    elif twist == "open-brace":  # an initializer open across the first cut: scanned whole
        data = b"static int table[] = {\n" + data
    assert len(data) > lexical._CHUNKED
    whole = lexical._lexical_items(data, 0, len(data))
    chunked = lexical._chunked(data)
    if twist == "open-brace":
        assert chunked is None
        return
    assert chunked is not None
    assert chunked == ([lexical._row(it) for it in whole[0]], whole[1])


def _table_file(rows: int, directive: bool = False) -> bytes:
    body = "".join(f"\t{{ {i}, 0x{i:04x}, \"r{i}\" }},\n" for i in range(rows))
    if directive:
        body = body.replace("\t{ 7, ", "#ifdef CONFIG_T\n\t{ 7, ", 1).replace("\t{ 8, ", "#endif\n\t{ 8, ", 1)
    return ("static int before(void)\n{\n\treturn 1;\n}\n\n"
            f"static const struct row rows[] = {{\n{body}}};\n\n"
            "/* }; in a comment\n}; */\nint after(int x)\n{\n\treturn x;\n}\n").encode()


@pytest.mark.parametrize("rows, directive, blanked",
                         [(2000, False, True), (20, False, False), (2000, True, False)])
def test_large_tables_are_blanked_for_the_parser_only(rows: int, directive: bool, blanked: bool):
    # the body of a large file-scope initialiser is not parsed (a node per token), but
    # its item and fingerprint are those of the real text, also across edits inside it
    from klpcc.c import CSource, LineEdit
    from klpcc.c.language import mask_annotations, table_spans

    data = _table_file(rows, directive)
    spans = table_spans(mask_annotations(data))
    assert bool(spans) is blanked
    assert all(data[lo - 1:lo] == b"\n" and data[hi:hi + 2] == b"};" for lo, hi in spans)
    lines = data.splitlines(keepends=True)
    src = CSource("t.c", lines)
    items = [(it.kind, it.name, it.fingerprint) for it in src.items()]
    assert [i[:2] for i in items] == [("function", "before"), ("variable", "rows"), ("function", "after")]
    at = next(i for i, ln in enumerate(lines) if ln.startswith(b"\t{ 5,"))
    new = lines[:at] + [b"\t{ 5, 0x0005, \"changed\" },\n"] + lines[at + 1:]
    gone, came = src.edit(new, [LineEdit(at, 1, at, 1)])
    assert [it.name for it in gone] == ["rows"] and [it.name for it in came] == ["rows"]
    fresh = CSource("t.c", new).items()
    assert [(it.kind, it.name, it.fingerprint) for it in src.items()] == \
        [(it.kind, it.name, it.fingerprint) for it in fresh]


def test_a_table_left_out_of_the_parse_keeps_lines_whatever_split_the_caller_used():
    # the parser counts rows at newlines only: a lone '\r' in a comment above a table
    # left out of the parse must not shift the lines of what follows
    from klpcc.c import CSource
    from klpcc.c.source import split_lines

    data = b"/* a\rb */\n" + _table_file(2000)
    by_newline = [(it.kind, it.name, it.start_line, it.end_line)
                  for it in CSource("t.c", split_lines(data)).items()]
    by_any = [(it.kind, it.name, it.start_line, it.end_line)
              for it in CSource("t.c", data.splitlines(keepends=True)).items()]
    assert by_any == by_newline
    assert [i[:3] for i in by_newline] == [("function", "before", 2), ("variable", "rows", 7),
                                           ("function", "after", 2012)]
