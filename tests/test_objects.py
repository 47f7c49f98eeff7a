"""The object-level check on fixtures written for each case it must explain: an
inlined static helper, a macro, a header's static inline function, a comment-only
edit, a constant-propagation clone, a changed static local -- compiled for real with
gcc and compared with pyelftools."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from klpcc import objects
from klpcc.api import AnalyzeOptions, ObjectOptions, analyze_objects

from .helpers import klpcc, make_series

HEADER = """#ifndef UTIL_H
#define UTIL_H
#define SCALE 3
static inline int clamp(int v) { return v > 100 ? 100 : v; }
#endif
"""

UNIT = """#include "util.h"

static int helper(int x)
{
\treturn x * 2 + 1;
}

static int __attribute__((noinline)) mul(int x, int k)
{
\treturn x * k + (x >> 3);
}

int use_helper(int y)
{
\treturn helper(y) + 7;
}

int use_macro(int y)
{
\treturn y * SCALE;
}

int use_clamp(int y)
{
\treturn clamp(y) - 1;
}

/* a comment */
int commented(int y)
{
\treturn y - 2;
}

int counter(void)
{
\tstatic int calls = 5;
\treturn calls++;
}

int use_mul(int y)
{
\treturn mul(y, 4);
}

int plain(int y)
{
\treturn y ^ 0x55;
}
"""


def _project(tmp: Path, releases: list[dict[str, str]]) -> tuple[Path, Path, Path]:
    patches, base = make_series(tmp, {"src/util.h": HEADER, "src/a.c": UNIT}, releases)
    db = tmp / "compile_commands.json"
    db.write_text(json.dumps([{"directory": str(base / "src"),
                               "arguments": ["gcc", "-O2", "-c", "a.c", "-o", "a.o"], "file": "a.c"}]))
    return patches, base, db


def _check(patches: Path, base: Path, db: Path, tmp: Path, **kw) -> objects.ObjectReport:
    _, report = analyze_objects(AnalyzeOptions(series=[str(patches)], source=str(base)),
                                ObjectOptions(str(db), cache=str(tmp / "cache"), **kw))
    return report


def _findings(report: objects.ObjectReport) -> dict[str, tuple[str, str]]:
    return {f.function: (f.what, f.reason) for f in report.functions}


def test_inlined_static_helper_changes_its_callers(tmp_path):
    patches, base, db = _project(tmp_path, [{"src/a.c": UNIT.replace("x * 2 + 1", "x * 2 + 3")}])
    got = _findings(_check(patches, base, db, tmp_path))
    assert got["use_helper"] == ("code-only", "inlined `helper` changed")
    assert got["helper"][0] == "source-only" and "no code of its own" in got["helper"][1]
    assert set(got) == {"use_helper", "helper"}


def test_changed_macro(tmp_path):
    patches, base, db = _project(tmp_path, [{"src/util.h": HEADER.replace("SCALE 3", "SCALE 5")}])
    got = _findings(_check(patches, base, db, tmp_path))
    assert got == {"use_macro": ("code-only", "macro `SCALE` changed")}


def test_header_static_inline(tmp_path):
    patches, base, db = _project(tmp_path, [{"src/util.h": HEADER.replace("v > 100 ? 100", "v > 99 ? 99")}])
    report = _check(patches, base, db, tmp_path)
    got = _findings(report)
    assert got["use_clamp"] == ("code-only", "inlined `clamp` changed")
    clamp = next(f for f in report.functions if f.function == "clamp")
    assert clamp.what == "source-only" and clamp.file == "src/util.h" and clamp.unit == "src/a.c"
    assert report.units[0]["headers"] == ["src/util.h"]


def test_comment_only_edit_changes_nothing(tmp_path):
    edited = UNIT.replace("/* a comment */", "/* a much longer comment,\n * on two lines */").replace(
        "\treturn y - 2;", "\treturn  y - 2;  // same code")
    patches, base, db = _project(tmp_path, [{"src/a.c": edited}])
    report = _check(patches, base, db, tmp_path)
    assert report.functions == [] and report.data == [] and report.notes == []
    assert report.units[0]["path"] == "src/a.c"


def test_constant_propagation_clone(tmp_path):
    patches, base, db = _project(tmp_path, [{"src/a.c": UNIT.replace("mul(y, 4)", "mul(y, 6)")}])
    report = _check(patches, base, db, tmp_path)
    got = _findings(report)
    # the constant went into the clone: use_mul's own code is the same, the clone's is not;
    # use_mul calls the clone itself, so it is patched (its new code calls the new clone)
    assert got["use_mul"][0] == "both"
    assert "it calls the compiler clone `mul.constprop`, which changed" in got["use_mul"][1]
    assert got["mul"][0] == "code-only"
    assert "clone `mul.constprop` changed" in got["mul"][1] and "use_mul" in got["mul"][1]
    assert report.clones.get("mul.constprop.0") == "mul"


def test_changed_static_local(tmp_path):
    patches, base, db = _project(tmp_path, [{"src/a.c": UNIT.replace("calls = 5", "calls = 6")}])
    report = _check(patches, base, db, tmp_path)
    got = _findings(report)
    assert got["counter"][0] == "source-only" and "static local `calls`" in got["counter"][1]
    assert [(d.symbol, d.change, d.static_local) for d in report.data] == [("calls", "changed", True)]


def test_cache_and_jobs(tmp_path):
    patches, base, db = _project(tmp_path, [{"src/a.c": UNIT.replace("x * 2 + 1", "x * 2 + 3")}])
    first = _check(patches, base, db, tmp_path, jobs=1)
    second = _check(patches, base, db, tmp_path, jobs=2)
    assert (first.compiled, first.cache_hits) == (2, 0)
    assert (second.compiled, second.cache_hits) == (0, 2)
    assert _findings(first) == _findings(second)
    fresh = _check(patches, base, db, tmp_path, no_cache=True)
    assert fresh.compiled == 2 and _findings(fresh) == _findings(first)


def test_a_longer_series_compiles_only_what_its_new_release_touched(tmp_path):
    releases = [{"src/a.c": UNIT.replace("x * 2 + 1", "x * 2 + 3")},
                {"src/a.c": UNIT.replace("x * 2 + 1", "x * 2 + 3").replace("y ^ 0x55", "y ^ 0x56")}]
    patches, base, db = _project(tmp_path, releases)
    opts = ObjectOptions(str(db), cache=str(tmp_path / "cache"))
    _, r1 = analyze_objects(AnalyzeOptions(series=[str(patches)], source=str(base), release=1), opts)
    _, r2 = analyze_objects(AnalyzeOptions(series=[str(patches)], source=str(base), release=2), opts)
    assert (r1.compiled, r1.cache_hits) == (2, 0)
    assert (r2.compiled, r2.cache_hits) == (1, 1)  # the base unit is the one cached
    assert _findings(r2)["plain"][0] == "both"


def test_manifest_takes_code_only_functions_and_drops_source_only(tmp_path):
    patches, base, db = _project(tmp_path, [{"src/a.c": UNIT.replace("x * 2 + 1", "x * 2 + 3")}])
    out = tmp_path / "bundle"
    r = klpcc("compile", str(patches), "--source", str(base), "--objects", str(db), "--cache",
              str(tmp_path / "cache"), "-o", str(out))
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "manifest.json").read_text())
    names = {f["name"]: f for f in m["functions"]}
    assert names["use_helper"]["origin"] == "objects"
    assert names["use_helper"]["reason"] == "inlined `helper` changed"
    assert "helper" not in names  # no code of its own: dropped
    assert m["objects"]["summary"]["code_only"] == 1
    r = klpcc("compile", str(patches), "--source", str(base), "--objects", str(db), "--cache",
              str(tmp_path / "cache"), "--keep-source-only", "-o", str(out), "--force")
    assert r.returncode == 0, r.stderr
    names = {f["name"] for f in json.loads((out / "manifest.json").read_text())["functions"]}
    assert {"helper", "use_helper"} <= names


def test_cli_text_and_json(tmp_path):
    patches, base, db = _project(tmp_path, [{"src/util.h": HEADER.replace("SCALE 3", "SCALE 5")}])
    r = klpcc("analyze", str(patches), "--source", str(base), "--objects", str(db), "--no-cache")
    assert r.returncode == 0, r.stderr
    assert "use_macro (src/a.c): macro `SCALE` changed" in r.stdout
    r = klpcc("analyze", str(patches), "--source", str(base), "--objects", str(db), "--no-cache",
              "--format", "json")
    doc = json.loads(r.stdout)
    assert doc["objects"]["summary"]["code_only"] == 1
    assert doc["objects"]["functions"][0]["function"] == "use_macro"


def test_a_unit_that_does_not_compile_is_a_note(tmp_path):
    patches, base, db = _project(tmp_path, [{"src/a.c": UNIT.replace("return y ^ 0x55;", "return y ^;")}])
    report = _check(patches, base, db, tmp_path)
    assert report.units == [] and len(report.notes) == 1
    assert "src/a.c" in report.notes[0] and "does not compile" in report.notes[0]


@pytest.mark.parametrize("args, message", [
    (["--jobs", "2"], "--jobs goes with --objects"),
    (["--objects", "missing.json"], "missing.json: cannot read it"),
])
def test_bad_object_options(tmp_path, args, message):
    patches, base, _ = _project(tmp_path, [{"src/a.c": UNIT.replace("x * 2 + 1", "x * 2 + 3")}])
    r = klpcc("analyze", str(patches), "--source", str(base), *args)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_only_units_that_read_a_changed_header_are_compiled(tmp_path):
    files = {"src/util.h": HEADER, "src/a.c": UNIT,
             "src/b.c": '#include "util.h"\n\nint b_scale(int y)\n{\n\treturn y * SCALE + 1;\n}\n',
             "src/c.c": "int c_plain(int y)\n{\n\treturn y + 1;\n}\n"}
    patches, base = make_series(tmp_path, files, [{"src/util.h": HEADER.replace("SCALE 3", "SCALE 5")}])
    db = tmp_path / "compile_commands.json"
    db.write_text(json.dumps([{"directory": str(base / "src"), "arguments": ["gcc", "-O2", "-c", f],
                               "file": f} for f in ("a.c", "b.c", "c.c")]))
    report = _check(patches, base, db, tmp_path)
    assert [u["path"] for u in report.units] == ["src/a.c", "src/b.c"]
    assert all(u["headers"] == ["src/util.h"] for u in report.units)
    assert _findings(report) == {"use_macro": ("code-only", "macro `SCALE` changed"),
                                 "b_scale": ("code-only", "macro `SCALE` changed")}
    assert report.compiled == 4  # c.c was only preprocessed


def test_moved_code_whose_line_numbers_changed_is_not_a_change(tmp_path):
    unit = '#include <assert.h>\n\nint first(int y)\n{\n\treturn y + 1;\n}\n\n' \
           'int checked(int y)\n{\n\tassert(y > 0);\n\treturn y * 3;\n}\n'
    grown = unit.replace("\treturn y + 1;\n", "\tint z = y + 1;\n\n\treturn z * 2;\n")
    patches, base = make_series(tmp_path, {"src/a.c": unit}, [{"src/a.c": grown}])
    db = tmp_path / "compile_commands.json"
    db.write_text(json.dumps([{"directory": str(base / "src"), "arguments": ["gcc", "-O2", "-c", "a.c"],
                               "file": "a.c"}]))
    report = _check(patches, base, db, tmp_path)
    got = _findings(report)
    assert got["first"][0] == "both"
    assert got["checked"][0] == "line-only" and "moved from line 8 to 10" in got["checked"][1]
    # NDEBUG: no assert, no line number: nothing to say about checked
    db.write_text(db.read_text().replace('"-O2"', '"-O2", "-DNDEBUG"'))
    assert "checked" not in _findings(_check(patches, base, db, tmp_path))


def _binary(tmp: Path, base: Path, flags: list[str]) -> Path:
    """The running program: the base unit built with -g and a main."""
    main = tmp / "main.c"
    main.write_text("int use_helper(int);\nint main(void) { return use_helper(3) & 1; }\n")
    prog = tmp / "prog"
    subprocess.run(["gcc", *flags, "-g", str(base / "src" / "a.c"), str(main), "-o", str(prog)], check=True)
    return prog


def test_the_binary_dwarf_confirms_the_inlining(tmp_path):
    patches, base, db = _project(tmp_path, [{"src/a.c": UNIT.replace("x * 2 + 1", "x * 2 + 3")}])
    prog = _binary(tmp_path, base, ["-O2"])
    report = _check(patches, base, db, tmp_path, binary=str(prog))
    assert {"function": "helper", "inlined_into": ["use_helper"], "not_in_patch": []} in report.dwarf
    assert report.notes == []


def test_the_binary_built_otherwise_is_said(tmp_path):
    patches, base, db = _project(tmp_path, [{"src/a.c": UNIT.replace("x * 2 + 1", "x * 2 + 3")}])
    prog = _binary(tmp_path, base, ["-O2"])
    db.write_text(db.read_text().replace('"-O2"', '"-O0"'))  # the commands are not the binary's
    report = _check(patches, base, db, tmp_path, binary=str(prog))
    assert any("inlines `helper` (changed) into use_helper" in n for n in report.notes), report.notes
    assert any("built with -O2" in n and "says -O0" in n for n in report.notes), report.notes


def test_a_binary_without_dwarf_is_refused(tmp_path):
    patches, base, db = _project(tmp_path, [{"src/a.c": UNIT.replace("x * 2 + 1", "x * 2 + 3")}])
    prog = _binary(tmp_path, base, ["-O2"])
    subprocess.run(["strip", "--strip-debug", str(prog)], check=True)
    r = klpcc("analyze", str(patches), "--source", str(base), "--objects", str(db), "--binary", str(prog))
    assert r.returncode == 2 and "has no DWARF" in r.stderr and str(prog) in r.stderr


# --------------------------------------------------------------------------- review cases


def _units(tmp: Path, base: dict[str, str], release: dict[str, str], args: list[str] | None = None,
           units: tuple[str, ...] = ("a.c",)) -> tuple[Path, Path, Path]:
    patches, root = make_series(tmp, base, [release])
    db = tmp / "compile_commands.json"
    db.write_text(json.dumps([{"directory": str(root / "src"), "file": u,
                               "arguments": ["gcc", "-O2", *(args or []), "-c", u]} for u in units]))
    return patches, root, db


def test_read_only_tables_travel_with_their_function(tmp_path):
    unit = ('const char *level_name(int i)\n{\n\tstatic const char *const names[] = { "low", "high" };\n'
            '\treturn names[i & 1];\n}\n\nint sw(int x)\n{\n\tswitch (x) {\n\tcase 0: return 11;\n'
            '\tcase 1: return 22;\n\tcase 2: return 33;\n\tcase 3: return 44;\n'
            '\tdefault: return 0;\n\t}\n}\n')
    new = unit.replace('"high"', '"HIGH"').replace("return 33", "return 35")
    patches, base, db = _units(tmp_path, {"src/a.c": unit}, {"src/a.c": new})
    got = _findings(_check(patches, base, db, tmp_path))
    assert got["level_name"][0] in ("both", "code-only") and got["sw"][0] in ("both", "code-only"), got


def test_constants_that_are_not_line_numbers_are_a_change(tmp_path):
    unit = "#include <assert.h>\n\nenum { LIMIT = 10 };\n\nint check_limit(int v)\n{\n" \
           "\tassert(v >= 0);\n\treturn v > LIMIT ? LIMIT : v;\n}\n"
    new = unit.replace("LIMIT = 10 };", "LIMIT = 20 };\n/* raised */")
    patches, base, db = _units(tmp_path, {"src/a.c": unit}, {"src/a.c": new})
    got = _findings(_check(patches, base, db, tmp_path))
    assert got["check_limit"][0] == "code-only", got


def test_headers_reached_through_an_untouched_header_and_include_flags(tmp_path):
    files = {"src/val.h": "#define VAL 3\n", "src/wrap.h": '#include "val.h"\n#define WRAP(x) ((x) + VAL)\n',
             "src/config.h": "#define FACTOR 3\n",
             "src/a.c": '#include "wrap.h"\n\nint use_wrap(int x)\n{\n\treturn WRAP(x);\n}\n\n'
                        "int scale(int x)\n{\n\treturn x * FACTOR;\n}\n"}
    patches, base, db = _units(tmp_path, files, {"src/val.h": "#define VAL 7\n",
                                                 "src/config.h": "#define FACTOR 5\n"},
                               ["-include", "config.h", "-flto", "-Wp,-MMD,.a.o.d"])
    report = _check(patches, base, db, tmp_path)
    got = _findings(report)
    assert got["use_wrap"][0] == "code-only" and got["scale"] == ("code-only", "macro `FACTOR` changed")
    assert not (base / "src" / ".a.o.d").exists()  # nothing written into the tree


def test_same_static_name_in_two_units_and_a_header_inline_kept_by_one(tmp_path):
    header = "static inline int clamp(int v) { return v > 100 ? 100 : v; }\n#define SCALE 3\n"
    a = '#include "util.h"\nstatic int helper(int x)\n{\n\treturn x + 1;\n}\n' \
        "int use_a(int x)\n{\n\treturn helper(x) + clamp(x);\n}\n"
    b = '#include "util.h"\nstatic int __attribute__((noinline)) helper(int x)\n{\n\treturn x * SCALE;\n}\n' \
        "int (*keep)(int) = clamp;\nint use_b(int x)\n{\n\treturn helper(x);\n}\n"
    patches, base, db = _units(tmp_path, {"src/util.h": header, "src/a.c": a, "src/b.c": b},
                               {"src/a.c": a.replace("x + 1", "x + 2"),
                                "src/util.h": header.replace("SCALE 3", "SCALE 4").replace("100", "99")},
                               units=("a.c", "b.c"))
    report = _check(patches, base, db, tmp_path)
    by_unit = {(f.function, f.unit): f for f in report.functions}
    assert by_unit[("helper", "src/b.c")].what == "code-only"  # its macro changed, not a.c's helper
    assert by_unit[("helper", "src/b.c")].reason == "macro `SCALE` changed"
    out = tmp_path / "bundle"
    r = klpcc("compile", str(patches), "--source", str(base), "--objects", str(db), "--no-cache",
              "-o", str(out))
    assert r.returncode == 0, r.stderr
    names = {(f["name"], f["file"]) for f in json.loads((out / "manifest.json").read_text())["functions"]}
    assert ("clamp", "src/util.h") in names  # b.c keeps an out-of-line copy that changed


def test_cache_problems(tmp_path):
    files = {"src/inc/x.h": "#define X 1\n", "src/a.c": '#include "x.h"\nint f(void)\n{\n\treturn X;\n}\n'}
    patches, base, db = _units(tmp_path, files, {"src/inc/x.h": "#define X 2\n"}, ["-Iinc"])
    first, second = _check(patches, base, db, tmp_path), _check(patches, base, db, tmp_path)
    assert (first.compiled, second.compiled, second.cache_hits) == (2, 0, 2)  # -I into the tree hits
    for obj in (tmp_path / "cache").glob("*.o"):
        obj.write_bytes(obj.read_bytes()[:10])  # damaged entries are compiled again
    third = _check(patches, base, db, tmp_path)
    assert third.compiled == 2 and _findings(third) == _findings(first)
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = klpcc("analyze", str(patches), "--source", str(base), "--objects", str(db), "--cache", str(blocker))
    assert r.returncode == 2 and "cannot use the object cache" in r.stderr


def test_entries_the_check_cannot_use_are_said(tmp_path):
    files = {"src/a.c": "int f(void)\n{\n\treturn 1;\n}\n", "src/b.c": "int g(void)\n{\n\treturn 1;\n}\n",
             "src/u.h": "#define U 1\n"}
    release = {"src/a.c": None, "src/b.c": files["src/b.c"].replace("1", "2"), "src/u.h": "#define U 2\n"}
    patches, base, db = _units(tmp_path, files, release, units=("a.c", "u.h"))
    report = _check(patches, base, db, tmp_path)
    assert report.units == []
    assert any("src/a.c: deleted by the release" in n for n in report.notes), report.notes
    assert any("src/b.c: the release changes it but the compilation database has no entry" in n
               for n in report.notes), report.notes


def test_lint_judges_the_data_the_objects_find(tmp_path):
    unit = UNIT + "\nint limit = 5;\n\nint get_limit(void)\n{\n\treturn limit;\n}\n"
    release = unit.replace("calls = 5", "calls = 6").replace("limit = 5;", "limit = 7;")
    patches, base = make_series(tmp_path, {"src/util.h": HEADER, "src/a.c": unit}, [{"src/a.c": release}])
    db = tmp_path / "compile_commands.json"
    db.write_text(json.dumps([{"directory": str(base / "src"), "arguments": ["gcc", "-O2", "-c", "a.c"],
                               "file": "a.c"}]))
    r = klpcc("lint", str(patches), "--source", str(base), "--objects", str(db), "--no-cache",
              "--format", "json")
    assert r.returncode == 1, r.stderr
    found = [(f["rule"], f["message"]) for f in json.loads(r.stdout)["findings"]]
    u007 = [m for rule, m in found if rule == "U007"]
    assert len(u007) == 1 and "static local `calls` of counter()" in u007[0], found
    assert [rule for rule, m in found if "limit" in m] == ["U002"]  # said once, by the source rule
    plain = klpcc("lint", str(patches), "--source", str(base), "--format", "json")
    assert "U007" not in {f["rule"] for f in json.loads(plain.stdout)["findings"]}


def test_the_bundle_records_the_data_the_objects_find_and_targets_refuse_it(tmp_path):
    """compile --objects lints with the object report, as lint --objects does: the bundle
    carries U007, and a target refuses to build what would switch code over changed data."""
    release = UNIT.replace("calls = 5", "calls = 6")
    patches, base = make_series(tmp_path, {"src/util.h": HEADER, "src/a.c": UNIT}, [{"src/a.c": release}])
    db = tmp_path / "compile_commands.json"
    db.write_text(json.dumps([{"directory": str(base / "src"), "arguments": ["gcc", "-O2", "-c", "a.c"],
                               "file": "a.c"}]))
    bundle = tmp_path / "bundle"
    r = klpcc("compile", str(patches), "--source", str(base), "--objects", str(db), "--no-cache",
              "-o", str(bundle))
    assert r.returncode == 0, r.stderr
    findings = json.loads((bundle / "manifest.json").read_text())["lint"]["findings"]
    assert [f["rule"] for f in findings] == ["U007"], findings
    out = tmp_path / "out"
    r = klpcc("build", str(bundle), "--source-only", "-o", str(out))
    assert r.returncode == 2 and "refusing to build: data the running code uses changes (U007" in r.stderr
    assert not out.exists()


CLONES = """struct big { int a[16]; };

static int __attribute__((noinline)) sum(struct big b, int unused)
{
\tint s = 0;
\tfor (int i = 0; i < 16; i++)
\t\ts += b.a[i];
\treturn s;
}

int use_sum(struct big *p)
{
\treturn sum(*p, 0) + 1;
}

int twice(int x)
{
\treturn x * 2 + 1;
}

int use_twice(int y)
{
\treturn twice(y) + twice(y + 1);
}

static int bill(int u, int r)
{
\treturn u * r + 2;
}

int worker_value(void)
{
\treturn bill(3, 7);
}
"""


@pytest.mark.parametrize("old, new, expected", [
    # constant folding: bill(3, 7) is 23 in worker_value's code, bill has no code of its own
    ("u * r + 2", "u * r + 5", {"worker_value": ("code-only", "inlined `bill` changed"),
                                "bill": ("source-only", "no code of its own: inlined into worker_value")}),
    # partial inlining: twice is inlined into use_twice and kept out of line too
    ("x * 2 + 1", "x * 2 + 3", {"twice": ("both", "source modified"),
                                "use_twice": ("code-only", "inlined `twice` changed")}),
    # a clone: use_sum calls sum.constprop itself, so it joins the patch with it
    ("s += b.a[i];", "s += 2 * b.a[i];", {
        "sum": ("both", "source modified"),
        "use_sum": ("code-only", "it calls the compiler clone `sum.constprop`, which changed")}),
])
def test_folding_partial_inlining_and_clones(tmp_path, old, new, expected):
    patches, base, db = _units(tmp_path, {"src/a.c": CLONES}, {"src/a.c": CLONES.replace(old, new)})
    got = _findings(_check(patches, base, db, tmp_path))
    assert set(got) == set(expected), got
    for fn, (what, reason) in expected.items():
        assert got[fn][0] == what and got[fn][1].startswith(reason), (fn, got[fn])


def test_functions_with_no_way_out(tmp_path):
    """objdump's reading of what never returns: a loop, a function that ends in exit;
    not one that returns, tail-calls, or dispatches through a switch."""
    src = tmp_path / "n.c"
    src.write_text("#include <stdlib.h>\nstatic volatile int sink;\nextern int other(int);\n"
                   "void *loop(void *a) { for (;;) sink++; return a; }\n"
                   "void die(void) { sink = 1; exit(1); }\n"
                   "int ret(int x) { return x + sink; }\n"
                   "int tail(int x) { return other(x + 1); }\n"
                   "int sw(int x) { switch (x) { case 0: return 3; case 1: return 5; case 2: return 8; "
                   "case 3: return 13; case 4: return 21; default: return 0; } }\n")
    obj = tmp_path / "n.o"
    subprocess.run(["gcc", "-O2", "-ffunction-sections", "-c", str(src), "-o", str(obj)], check=True)
    assert objects.never_returning(obj) == {"loop", "die"}
