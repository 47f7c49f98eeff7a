"""``klpcc lint``: regressions found in code review, one small series per reproduced case.

Each test builds its series inline (the C sources are the review's own small inputs, trimmed
to what matters) and runs the command line with ``--format json``.  Releases are named
``0001-release-1``, ``0002-release-2``, ...
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from .helpers import klpcc, make_series

SURROGATE_ESCAPE = re.compile(r"\\ud[89a-f][0-9a-f]{2}", re.IGNORECASE)


def rel(n: int) -> str:
    return f"{n:04d}-release-{n}"


def lint(patches: Path, base: Path, *extra: str) -> tuple[int, dict]:
    """Run ``klpcc lint --format json``; the run must not fail (exit 0 or 1) and print JSON."""
    r = klpcc("lint", str(patches / "series"), "--source", str(base), "--format", "json", *extra)
    assert r.returncode in (0, 1), (r.returncode, r.stderr)
    return r.returncode, json.loads(r.stdout)


def rules(data: dict) -> list[str]:
    return sorted(f["rule"] for f in data["findings"])


def only(data: dict, rule: str) -> dict:
    found = [f for f in data["findings"] if f["rule"] == rule]
    assert len(found) == 1, data["findings"]
    return found[0]


def patch_line(patches: Path, n: int, line: str) -> int:
    """The 1-based line of ``line`` (with its ``+``/``-``) in release ``n``'s patch."""
    lines = (patches / f"{rel(n)}.patch").read_text().splitlines()
    assert lines.count(line) == 1, line
    return lines.index(line) + 1


def assert_at(finding: dict, patches: Path, n: int, line: str) -> None:
    where = (finding["patch"] and Path(finding["patch"]).name, finding["patch_line"])
    assert where == (f"{rel(n)}.patch", patch_line(patches, n, line)), finding


def assert_clean(code: int, data: dict) -> None:
    assert (code, data["findings"]) == (0, [])


# =========================================================================== shadow types (H001)

FOO = "struct foo { int a; };\n\nint use(struct foo *f)\n{\n\treturn f->a;\n}\n"
FOO_ALLOC = """struct foo { int a; };

struct foo_extra { int n; };

int use(struct foo *f)
{
	struct foo_extra *e = klp_shadow_get_or_alloc(f, 4, sizeof(*e), GFP_KERNEL, NULL, NULL);
	return f->a + (e ? e->n : 0);
}
"""


def test_h2_forward_declared_struct_is_not_another_type(tmp_path):
    """Before: a get in a file that only forward-declares the struct gave H001 (definition 'changed')."""
    b = "struct foo;\nint other(struct foo *f)\n{\n\treturn 0;\n}\n"
    b1 = ("struct foo;\nstruct foo_extra;\nint other(struct foo *f)\n{\n"
          "\tstruct foo_extra *e = klp_shadow_get(f, 4);\n\treturn e != 0;\n}\n")
    patches, base = make_series(tmp_path, {"a.c": FOO, "b.c": b}, [{"a.c": FOO_ALLOC, "b.c": b1}])
    assert_clean(*lint(patches, base))


def test_t1_toml_shadow_type_agrees_with_code(tmp_path):
    """Before: a klpcc.toml shadow entry's type (no definition there) gave H001 against the code's."""
    patches, base = make_series(tmp_path, {"x.c": FOO},
                                [{"x.c": FOO_ALLOC}, {"x.c": FOO.replace("f->a;", "f->a + 1;")}])
    (patches / "klpcc.toml").write_text(
        f'[releases."{rel(2)}"]\n'
        'shadow = [{ id = 4, type = "struct foo_extra", ops = ["free_all"], dtor = "foo_dtor" }]\n')
    assert_clean(*lint(patches, base))


def test_c9_void_pointer_get_is_not_another_type(tmp_path):
    """Before: `void *raw = klp_shadow_get(...)` gave H001 (`void` vs `struct foo_extra`)."""
    peek = "\nint peek(struct foo *f)\n{\n\treturn f->a;\n}\n"
    peek1 = ("\nint peek(struct foo *f)\n{\n\tvoid *raw = klp_shadow_get(f, 4);\n"
             "\treturn f->a + (raw != 0);\n}\n")
    const = "\nint look(struct foo *f)\n{\n\treturn f->a;\n}\n"
    const1 = ("\nint look(struct foo *f)\n{\n\tconst struct foo_extra *e = klp_shadow_get(f, 4);\n"
              "\treturn f->a + e->n;\n}\n")
    patches, base = make_series(tmp_path, {"x.c": FOO + peek + const},
                                [{"x.c": FOO_ALLOC + peek1 + const1}])
    assert_clean(*lint(patches, base))


def test_h1_sizeof_local_variable_is_its_type(tmp_path):
    """Before: `sizeof(start)` of an int local gave H001 (`int` vs `start`)."""
    r1 = FOO.replace("\treturn", "\tklp_shadow_alloc(f, 5, sizeof(int), GFP_KERNEL, NULL, NULL);\n\treturn")
    r2 = FOO.replace("\treturn", "\tint start = f->a;\n\n"
                     "\tklp_shadow_alloc(f, 5, sizeof(start), GFP_KERNEL, NULL, &start);\n\treturn")
    patches, base = make_series(tmp_path, {"x.c": FOO}, [{"x.c": r1}, {"x.c": r2}])
    assert_clean(*lint(patches, base))


# =========================================================================== states (S001)

KLP_STATE = """#include <linux/livepatch.h>

#define CONN_STATE 7

static struct klp_patch patch;

static int conn_pre_patch(struct klp_object *obj)
{
	struct klp_state *st = klp_get_state(&patch, CONN_STATE);
	return st ? 0 : -EINVAL;
}

static struct klp_object objs[] = {
	{
		.callbacks = {
			.pre_patch = conn_pre_patch,
		},
	},
	{ }
};

static struct klp_state states[] = {
%s	{ }
};
"""
X_C = "int a(void)\n{\n\treturn 0;\n}\n"


def test_c5_dropped_state_blames_the_removal_and_latest_version(tmp_path):
    """Before: S001 pointed at r2's version bump and named release 1 / version 1, not r3's `-` line."""
    v = "\t{ .id = CONN_STATE, .version = %d },\n"
    patches, base = make_series(tmp_path, {"x.c": X_C}, [
        {"kernel/klp.c": KLP_STATE % (v % 1)},
        {"kernel/klp.c": KLP_STATE % (v % 2)},
        {"kernel/klp.c": KLP_STATE % ""},
    ])
    code, data = lint(patches, base)
    assert code == 1
    assert rules(data) == ["S001", "S003"]  # S003: r3's pre_patch still asks for state 7
    s = only(data, "S001")
    assert_at(s, patches, 3, "-\t{ .id = CONN_STATE, .version = 2 },")
    assert (s["file"], s["line"], s["against"]) == ("kernel/klp.c", 23, [rel(1), rel(2)])
    assert f"(version 2) that release {rel(2)} declares" in s["message"], s["message"]


def test_e1_enum_with_ifdef_is_not_judged_and_noted(tmp_path):
    """Before: ST_D after an #ifdef'd enumerator was taken as 1 (not 2 or 3) and gave S001."""
    r1 = ("enum klp_states {\n\tST_A,\n#ifdef CONFIG_B\n\tST_B,\n#endif\n\tST_C,\n\tST_D,\n};\n\n"
          "static struct klp_state states[] = {\n\t{ .id = ST_D, .version = 1 },\n\t{ }\n};\n")
    r2 = "static struct klp_state states[] = {\n\t{ .id = 2, .version = 1 },\n\t{ }\n};\n"
    patches, base = make_series(tmp_path, {"x.c": X_C}, [{"klp.c": r1}, {"klp.c": r2}])
    code, data = lint(patches, base)
    assert_clean(code, data)
    assert len(data["notes"]) == 1 and "ST_D" in data["notes"][0], data["notes"]
    assert "not compared" in data["notes"][0]


def test_d3_one_patch_two_sections_for_one_file_keeps_line_maps(tmp_path):
    """Before: a patch changing x.c in two `---/+++` sections lost patch/patch_line (null)."""
    src = "".join(f"int f{i}(void)\n{{\n\treturn {i};\n}}\n\n" for i in range(20))
    r1 = src.replace("\treturn 17;", "\tstruct klp_state *s = klp_get_state(&p, 11);\n\treturn 17;")
    patches, base = make_series(tmp_path, {"x.c": src}, [{"x.c": r1}, {"x.c": r1 + "\n"}])
    # release 2 is written by hand: one patch, two `--- a/x.c` sections (the second one adds a line)
    (patches / f"{rel(2)}.patch").write_text(
        "--- a/x.c\n+++ b/x.c\n@@ -1,4 +1,5 @@\n int f0(void)\n {\n+\t/* new comment line */\n"
        " \treturn 0;\n }\n"
        "--- a/x.c\n+++ b/x.c\n@@ -97,4 +98,5 @@\n int f19(void)\n {\n"
        "+\tstruct klp_state *t = klp_get_state(&p, 12);\n \treturn 19;\n }\n")
    code, data = lint(patches, base)
    assert code == 0  # S003 is a warning
    assert rules(data) == ["S003", "S003"]
    by_id = {("11" if "state 11" in f["message"] else "12"): f for f in data["findings"]}
    f11, f12 = by_id["11"], by_id["12"]
    assert (f11["function"], f11["file"], f11["line"]) == ("f17", "x.c", 89)
    assert_at(f11, patches, 1, "+\tstruct klp_state *s = klp_get_state(&p, 11);")
    assert (f12["function"], f12["file"], f12["line"]) == ("f19", "x.c", 100)
    assert_at(f12, patches, 2, "+\tstruct klp_state *t = klp_get_state(&p, 12);")


# =========================================================================== layouts (U001)

REC_H = "struct rec {\n\tint id;\n\tlong hits;\n};\n"
REC_C = '#include "h.h"\n\nint foo(struct rec *r)\n{\n\treturn r->id + 1;\n}\n'


def compile_commands(tmp_path: Path, base: Path, arguments: list[str]) -> str:
    cc = tmp_path / "compile_commands.json"
    cc.write_text(json.dumps([{"directory": str(base), "file": "kernel/a.c", "arguments": arguments}]))
    return str(cc)


def rec_series(tmp_path: Path) -> tuple[Path, Path]:
    return make_series(tmp_path, {"include/h.h": REC_H, "kernel/a.c": REC_C}, [{
        "include/h.h": "struct rec {\n\tlong hits;\n\tint id;\n};\n",
        "kernel/a.c": REC_C.replace("+ 1", "+ 2"),
    }])


def test_l1_include_dir_as_two_arguments(tmp_path):
    """Before: with `-I include` (two arguments) in compile_commands the swapped members gave no U001."""
    patches, base = rec_series(tmp_path)
    args = ["gcc", "-I", "include", "-c", "kernel/a.c", "-o", "kernel/a.o"]
    code, data = lint(patches, base, "--compile-commands", compile_commands(tmp_path, base, args))
    assert (code, rules(data), data["layout_notes"]) == (1, ["U001"], [])
    u = data["findings"][0]
    assert (u["file"], u["line"]) == ("include/h.h", 2)
    assert_at(u, patches, 1, "+\tlong hits;")
    assert "struct rec" in u["message"] and "member hits moved or resized" in u["message"], u["message"]


def test_l2_nested_struct_members(tmp_path):
    """Before: swapping the members of a nested struct gave no U001 with --compile-commands."""
    h0 = "struct rec {\n\tint id;\n\tstruct {\n\t\tint lo;\n\t\tint hi;\n\t} range;\n};\n"
    h1 = "struct rec {\n\tint id;\n\tstruct {\n\t\tint hi;\n\t\tint lo;\n\t} range;\n};\n"
    c0 = REC_C.replace("r->id", "r->range.lo")
    patches, base = make_series(tmp_path, {"include/h.h": h0, "kernel/a.c": c0},
                                [{"include/h.h": h1, "kernel/a.c": c0.replace("+ 1", "+ 2")}])
    args = ["gcc", "-Iinclude", "-c", "kernel/a.c", "-o", "kernel/a.o"]
    code, data = lint(patches, base, "--compile-commands", compile_commands(tmp_path, base, args))
    assert (code, rules(data), data["layout_notes"]) == (1, ["U001"], [])
    assert "member range.hi moved or resized" in data["findings"][0]["message"]


@pytest.mark.parametrize("compiler", ["gcc\0x", "/nonexistent/klpcc-no-such-cc"], ids=["nul", "missing"])
def test_compile_commands_unusable_compiler_falls_back(tmp_path, compiler):
    """Before: a NUL in the arguments or a compiler that does not exist ended the run (exit 2/3)."""
    patches, base = rec_series(tmp_path)
    args = [compiler, "-Iinclude", "-c", "kernel/a.c", "-o", "kernel/a.o"]
    code, data = lint(patches, base, "--compile-commands", compile_commands(tmp_path, base, args))
    assert (code, rules(data)) == (1, ["U001"])  # text comparison still sees the change
    assert data["layout_notes"], data


def test_u3_typedef_with_two_names_lists_users(tmp_path):
    """Before: changing `typedef struct {...} rec_t, *rec_p;` gave U001 without the unpatched users."""
    a = ("typedef struct {\n\tint a;\n} rec_t, *rec_p;\n\nint use(rec_t *r)\n{\n\treturn r->a;\n}\n\n"
         "int user2(rec_p r)\n{\n\treturn r->a + 1;\n}\n\nint fix(int x)\n{\n\treturn x;\n}\n")
    a1 = a.replace("\tint a;", "\tlong a;").replace("return x;", "return x + 1;")
    patches, base = make_series(tmp_path, {"a.c": a}, [{"a.c": a1}])
    code, data = lint(patches, base)
    assert (code, rules(data)) == (1, ["U001"])
    u = data["findings"][0]
    assert (u["file"], u["line"]) == ("a.c", 2)
    assert_at(u, patches, 1, "+\tlong a;")
    assert u["message"].endswith("unpatched code uses it: use (a.c), user2 (a.c)"), u["message"]


# =========================================================================== callbacks (C001, C003)


def test_c7_null_post_unpatch_is_no_callback(tmp_path):
    """Before: `.post_unpatch = NULL` counted as a callback, so the lost post_unpatch gave no C001."""
    k1 = ('#include "kpatch-macros.h"\n\nstatic void undo(void)\n{\n\tpr_info("x\\n");\n}\n'
          "KPATCH_POST_UNPATCH_CALLBACK(undo);\n")
    k2 = ("#include <linux/livepatch.h>\n\nstatic struct klp_object objs[] = {\n\t{\n\t\t.callbacks = {\n"
          "\t\t\t.pre_patch = NULL,\n\t\t\t.post_unpatch = NULL,\n\t\t},\n\t},\n\t{ }\n};\n")
    patches, base = make_series(tmp_path, {"x.c": X_C}, [{"klp.c": k1}, {"klp.c": k2}])
    code, data = lint(patches, base)
    assert (code, rules(data)) == (1, ["C001"])
    c = data["findings"][0]
    assert (c["file"], c["line"], c["against"]) == ("klp.c", 7, [rel(1)])
    assert_at(c, patches, 1, "+KPATCH_POST_UNPATCH_CALLBACK(undo);")
    assert "post_unpatch callback undo()" in c["message"], c["message"]


def test_cb_post_patch_with_locals_only_logs(tmp_path):
    """Before: a post_patch declaring locals (`const char *name = ...`) and logging gave C003."""
    k1 = """#include <linux/livepatch.h>

static void fix_post_patch(struct klp_object *obj)
{
	const char *name = obj->name ? obj->name : "vmlinux";
	unsigned long now;

	pr_info("livepatch: %s patched\\n", name);
}

static struct klp_object objs[] = {
	{
		.callbacks = {
			.post_patch = fix_post_patch,
		},
	}, { }
};
"""
    patches, base = make_series(tmp_path, {"x.c": X_C},
                                [{"klp.c": k1}, {"klp.c": None, "x.c": X_C.replace("0;", "1;")}])
    assert_clean(*lint(patches, base))


# =========================================================================== signatures (U003)


def test_u2_parameter_renames_are_no_signature_change(tmp_path):
    """Before: renaming array and function-pointer parameters (and `unsigned int`->`unsigned`) gave U003."""
    a = ("int sum(int buf[], int n, void (*cb)(int v))\n{\n\treturn buf[0] + n;\n}\n\n"
         "int caller(void)\n{\n\tint b[2] = {1, 2};\n\treturn sum(b, 2, 0);\n}\n\n"
         "int flags(unsigned int f)\n{\n\treturn f & 1;\n}\n\nint caller2(void)\n{\n\treturn flags(3);\n}\n")
    a1 = (a.replace("int sum(int buf[], int n, void (*cb)(int v))",
                    "int sum(int data[], int count, void (*fn)(int value))")
          .replace("return buf[0] + n;", "return data[0] + count + 1;")
          .replace("unsigned int f)", "unsigned f)").replace("f & 1", "f & 3"))
    patches, base = make_series(tmp_path, {"a.c": a}, [{"a.c": a1}])
    assert_clean(*lint(patches, base))


# =========================================================================== shadow ids (H002)


def test_c6_wrappers_with_parameter_ids_are_not_reads(tmp_path):
    """Before: a wrapper function/macro passing its parameter `id` to klp_shadow_get gave H002 for `id`."""
    x1 = """struct foo { int a; };

#define FOO_SHADOW 4
#define foo_shadow_get(o, id) klp_shadow_get(o, id)

struct foo_extra { int n; };

static void *shadow_lookup(void *obj, unsigned long id)
{
	return klp_shadow_get(obj, id);
}

int use(struct foo *f)
{
	struct foo_extra *e = klp_shadow_alloc(f, FOO_SHADOW, sizeof(*e), GFP_KERNEL, NULL, NULL);
	struct foo_extra *e2 = shadow_lookup(f, FOO_SHADOW);
	struct foo_extra *e3 = foo_shadow_get(f, FOO_SHADOW);
	return f->a + e->n + e2->n + e3->n;
}
"""
    patches, base = make_series(tmp_path, {"x.c": FOO}, [{"x.c": x1}])
    assert_clean(*lint(patches, base))


# =========================================================================== odd inputs

STATE_X = ("int a(void)\n{\n\treturn 1;\n}\n"
           "static struct klp_state st[] = {\n\t{ .id = %s, .version = 1 },\n\t{ }\n};\n")


def n1_series(tmp_path: Path) -> tuple[Path, Path]:
    """Release 1 declares state `ST_CAF\\xc9` (a Latin-1 byte, not UTF-8); release 2 drops it."""
    patches, base = make_series(tmp_path, {"x.c": X_C}, [{"x.c": STATE_X % "ST_CAF@"}, {"x.c": X_C}])
    for p in patches.glob("*.patch"):
        p.write_bytes(p.read_bytes().replace(b"ST_CAF@", b"ST_CAF\xc9"))
    return patches, base


def strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


def test_n1_non_utf8_identifier_text_to_file(tmp_path):
    """Before: a non-UTF-8 byte in a state id crashed the text report written with -o FILE (exit 3)."""
    patches, base = n1_series(tmp_path)
    out = tmp_path / "report.txt"
    r = klpcc("lint", str(patches / "series"), "--source", str(base), "-o", str(out))
    assert (r.returncode, r.stderr) == (0, "")
    text = out.read_bytes()
    assert text.startswith(f"release {rel(2)} against {rel(1)}\n".encode())
    assert b"note: system state ST_CAF" in text and b"not compared" in text, text


def test_n1_non_utf8_identifier_json(tmp_path):
    """Before: the JSON carried the byte as a lone surrogate (`\\udcc9`), which is not valid Unicode."""
    patches, base = n1_series(tmp_path)
    r = klpcc("lint", str(patches / "series"), "--source", str(base), "--format", "json")
    assert r.returncode in (0, 1), r.stderr
    assert not SURROGATE_ESCAPE.search(r.stdout), r.stdout
    data = json.loads(r.stdout)
    for s in strings(data):
        s.encode("utf-8")  # raises on a lone surrogate
    assert (r.returncode, data["findings"]) == (0, [])
    assert len(data["notes"]) == 1 and "ST_CAF" in data["notes"][0], data["notes"]


@pytest.mark.parametrize("state_id", ["+".join(["1"] * 3000), "1" * 4400], ids=["c10-sum", "c3-digits"])
def test_huge_state_id_expressions(tmp_path, state_id):
    """Before: a 3000-term sum (RecursionError) or a 4400-digit literal (int digit limit) gave exit 3."""
    patches, base = make_series(tmp_path, {"x.c": X_C}, [{"x.c": STATE_X % state_id}])
    code, data = lint(patches, base)
    assert (code, data["findings"]) == (0, [])
    assert len(data["facts"][rel(1)]["states"]) == 1


@pytest.mark.parametrize("toml", [
    '[releases."²"]\nstates = [{ id = 1, version = 1 }]\n',
    '[releases."1"]\ncallbacks = [["a"]]\n',
    '[releases."1"]\nstates = [{ id = true, version = 1 }]\n',
    '[releases."1"]\nshadow = [{ id = true, type = "int", ops = ["alloc"] }]\n',
], ids=["release-superscript", "callbacks-list", "state-id-bool", "shadow-id-bool"])
def test_bad_klpcc_toml_is_bad_input(tmp_path, toml):
    """Before: these klpcc.toml values crashed (exit 3) or were silently taken instead of exit 2."""
    patches, base = make_series(tmp_path, {"x.c": X_C}, [{"x.c": X_C.replace("0;", "1;")}])
    (patches / "klpcc.toml").write_text(toml)
    r = klpcc("lint", str(patches / "series"), "--source", str(base), "--format", "json")
    assert (r.returncode, r.stdout) == (2, ""), r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("klpcc: error:") and "klpcc.toml" in lines[0], r.stderr


@pytest.mark.parametrize("comment", ["/* Copyright (c) someone */", "/* Copyright \u00a9 someone */"],
                         ids=["ascii", "non-ascii"])
def test_p1_non_ascii_comment_same_findings(tmp_path, comment):
    """Sanity: one non-ASCII character in a comment must not shift or change the findings."""
    body = "".join(f"int f{i}(int x)\n{{\n\tint y = x * {i};\n\ty += {i};\n\treturn y;\n}}\n\n"
                   for i in range(200))
    base = comment + "\n" + body
    r1 = base.replace("x * 150;", "x * 150 + (klp_shadow_get(&x, 1) != 0);")
    patches, src = make_series(tmp_path, {"big.c": base}, [{"big.c": r1}])
    code, data = lint(patches, src)
    assert (code, rules(data)) == (1, ["H002"])
    h = data["findings"][0]
    assert (h["function"], h["file"], h["line"]) == ("f150", "big.c", 2 + 7 * 150 + 2)
    assert_at(h, patches, 1, "+\tint y = x * 150 + (klp_shadow_get(&x, 1) != 0);")
