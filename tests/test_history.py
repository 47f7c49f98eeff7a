"""Stage 5: net change, nops, transitions and the release graph, on small series."""

from __future__ import annotations

from pathlib import Path

from klpcc.api import AnalyzeOptions, analyze
from klpcc.history import release_graph

from .helpers import make_series


def fn(name: str, body: str = "return 0;", static: bool = False) -> str:
    return f"{'static ' if static else ''}int {name}(void)\n{{\n\t{body}\n}}\n\n"


def run(tmp: Path, base: dict, releases: list[dict], release=None, installed=None):
    patches, src = make_series(tmp, base, releases)
    return analyze(AnalyzeOptions(series=[str(patches)], source=str(src), release=release,
                                  installed=installed))


def changes(a) -> dict[str, str]:
    return {e.key: e.change for e in a.functions}


def test_modify_then_revert_is_a_nop(tmp_path):
    base = {"a.c": fn("f") + fn("g")}
    rels = [{"a.c": fn("f", "return 1;") + fn("g")}, {"a.c": fn("f") + fn("g")}]
    assert changes(run(tmp_path, base, rels, release=1)) == {"f": "modified"}
    a = run(tmp_path / "2", base, rels)
    assert changes(a) == {"f": "nop"}
    assert a.functions[0].history == ("modified", "nop")
    assert a.functions[0].touched == (1, 2)


def test_add_then_remove_is_dropped_and_remove_base_is_removed(tmp_path):
    base = {"a.c": fn("f") + fn("g")}
    rels = [{"a.c": fn("f") + fn("g") + fn("h")}, {"a.c": fn("f")}]
    a = run(tmp_path, base, rels)
    assert changes(a) == {"h": "dropped", "g": "removed"}
    h = next(e for e in a.functions if e.key == "h")
    assert h.history == ("added", "dropped")


def test_removed_then_restored_is_listed_unchanged_not_nop(tmp_path):
    base = {"a.c": fn("f") + fn("g")}
    rels = [{"a.c": fn("f")}, {"a.c": fn("f") + fn("g")}]
    a = run(tmp_path, base, rels)
    assert changes(a) == {"g": "unchanged"}
    assert a.functions[0].history == ("removed", "unchanged")


def test_comment_and_whitespace_edits_are_not_changes(tmp_path):
    base = {"a.c": fn("f", "return x + 1;")}
    rels = [{"a.c": "/* doc */\nint f(void)\n{\n    return x+1; // same\n}\n"}]
    a = run(tmp_path, base, rels)
    assert changes(a) == {}
    # the comment before the function is no item either
    assert [e.kind for e in a.outside] == []


def test_non_static_function_moved_between_files_is_unchanged(tmp_path):
    base = {"a.c": fn("f") + fn("g"), "b.c": fn("h")}
    rels = [{"a.c": fn("g"), "b.c": fn("h") + fn("f")}]
    assert changes(run(tmp_path, base, rels)) == {}


def test_a_changed_function_moved_to_another_file_is_listed_where_it_now_is(tmp_path):
    """Release 1 changes f, release 2 moves it (unchanged) to a new file and deletes the
    old one: f is still modified, but defined in new/x.c, at its lines there, and
    release 2 builds on release 1."""
    base = {"old/x.c": fn("f") + fn("g")}
    rels = [{"old/x.c": fn("f", "return 1;") + fn("g")},
            {"old/x.c": None, "new/x.c": fn("g") + fn("f", "return 1;")}]
    a = run(tmp_path, base, rels)
    (f,) = [e for e in a.functions if e.key == "f"]
    assert (f.change, f.history, f.touched) == ("modified", ("modified", "modified"), (1,))
    assert (f.file, f.files, f.lines) == ("new/x.c", ("new/x.c",), (6, 9))
    assert f.origin is not None and f.origin[0].endswith("0002-release-2.patch")
    graph = release_graph(a.replay)
    assert graph.has_edge(("release", "0001-release-1"), ("release", "0002-release-2"))
    # and release 1 alone still has it where it was
    (f1,) = [e for e in run(tmp_path / "1", base, rels, release=1).functions if e.key == "f"]
    assert (f1.file, f1.lines) == ("old/x.c", (1, 4))


def test_static_function_moved_between_files_is_removed_and_added(tmp_path):
    base = {"a.c": fn("f", static=True) + fn("g"), "b.c": fn("h")}
    rels = [{"a.c": fn("g"), "b.c": fn("h") + fn("f", static=True)}]
    assert changes(run(tmp_path, base, rels)) == {"a.c:f": "removed", "b.c:f": "added"}


def test_same_static_name_in_two_files_are_two_functions(tmp_path):
    base = {"a.c": fn("show", static=True), "b.c": fn("show", static=True)}
    rels = [{"b.c": fn("show", "return 2;", static=True)}]
    a = run(tmp_path, base, rels)
    assert changes(a) == {"b.c:show": "modified"}
    assert a.functions[0].file == "b.c" and a.functions[0].static


def test_static_to_global_changes_identity(tmp_path):
    base = {"a.c": fn("f", static=True)}
    rels = [{"a.c": fn("f")}]
    assert changes(run(tmp_path, base, rels)) == {"a.c:f": "removed", "f": "added"}


def test_change_in_one_ifdef_branch_modifies_the_function(tmp_path):
    def src(x: str) -> str:
        return ("#ifdef CONFIG_X\nstatic int cfg(void) { return 1; }\n#else\n"
                f"static int cfg(void) {{ return {x}; }}\n#endif\n")
    rels = [{"k.c": src("2")}, {"k.c": src("0")}]
    a = run(tmp_path, {"k.c": src("0")}, rels)
    assert changes(a) == {"k.c:cfg": "nop"}
    assert changes(run(tmp_path / "r1", {"k.c": src("0")}, rels, release=1)) == {"k.c:cfg": "modified"}


def test_hunk_spanning_two_functions_and_a_global(tmp_path):
    base = {"a.c": "static int limit = 1;\n" + fn("f") + fn("g") + fn("h")}
    new = "static int limit = 2;\n" + fn("f", "return 1;") + fn("g", "return 1;") + fn("h")
    a = run(tmp_path, base, [{"a.c": new}])
    assert changes(a) == {"f": "modified", "g": "modified"}
    assert [(e.kind, e.name, e.change) for e in a.outside] == [("variable", "limit", "modified")]


def test_header_static_inline_and_macro(tmp_path):
    h = "#ifndef X_H\n#define X_H\n#define N 1\nstatic inline int two(void) { return 2; }\n#endif\n"
    h2 = h.replace("#define N 1", "#define N 2").replace("return 2;", "return 3;")
    a = run(tmp_path, {"x.h": h}, [{"x.h": h2}])
    assert changes(a) == {"x.h:two": "modified"}
    assert {(e.kind, e.name, e.change) for e in a.outside} == {("macro", "N", "modified")}


def test_transitions_upgrade_and_downgrade(tmp_path):
    base = {"a.c": fn("f") + fn("g") + fn("h")}
    rels = [
        {"a.c": fn("f", "return 1;") + fn("g") + fn("h")},                      # 1: f
        {"a.c": fn("f", "return 1;") + fn("g", "return 1;") + fn("h") + fn("n")},  # 2: +g +n
        {"a.c": fn("f") + fn("g", "return 2;") + fn("h", "return 1;")},           # 3
    ]
    up = run(tmp_path, base, rels, release=3, installed=2)
    assert {e.key: e.transition for e in up.functions} == {
        "f": "nop", "g": "update", "h": "add", "n": "drop"}
    keep = run(tmp_path / "k", base, rels, release=2, installed=1)
    assert {e.key: e.transition for e in keep.functions} == {"f": "keep", "g": "add", "n": "add"}
    down = run(tmp_path / "d", base, rels, release=1, installed=3)
    assert {e.key: e.transition for e in down.functions} == {
        "f": "add", "g": "nop", "h": "nop", "n": None}


def test_release_graph_orders_releases_that_touch_the_same_function(tmp_path):
    base = {"a.c": fn("f") + fn("g")}
    rels = [{"a.c": fn("f", "return 1;") + fn("g")},
            {"a.c": fn("f", "return 1;") + fn("g", "return 1;")},
            {"a.c": fn("f", "return 2;") + fn("g", "return 1;")}]
    a = run(tmp_path, base, rels)
    g = release_graph(a.replay)
    names = a.replay.releases
    assert g.has_edge(("release", names[0]), ("release", names[2]))
    assert not g.has_edge(("release", names[1]), ("release", names[2]))
    assert g.has_edge(("release", names[1]), ("function", "g"))


def test_non_c_files_are_outside_changes(tmp_path):
    base = {"a.c": fn("f"), "Makefile": "all:\n\tcc a.c\n"}
    a = run(tmp_path, base, [{"Makefile": "all:\n\tcc -O2 a.c\n"}])
    assert changes(a) == {}
    assert [(e.kind, e.name, e.change) for e in a.outside] == [("file", "Makefile", "modified")]
