"""Unit and property tests of the lint's building blocks: masking, constant
resolution, signatures, and tracing a source line back to the patch line that made
it (or forward to the one that removed it)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from klpcc.c import mask
from klpcc.history import replay
from klpcc.lint.facts import Constants, layout_key, split_args
from klpcc.lint.locate import added_by, removed_by
from klpcc.lint.rules import _signature
from klpcc.series import load

from .helpers import make_series

# --------------------------------------------------------------------------- masking


def test_mask_blanks_comments_and_literals_keeping_offsets():
    text = 'a = "klp_shadow_get(x, 1)"; /* klp_shadow_free(x, 2) */\nb = \'"\'; // .pre_patch = f\nc;'
    m = mask(text)
    assert len(m) == len(text)
    assert m.count("\n") == text.count("\n")
    assert "klp_shadow" not in m and "pre_patch" not in m
    assert m.startswith('a = "') and m.endswith("c;")
    assert m.index("b =") == text.index("b =")


def test_split_args_respects_nesting():
    assert split_args("obj, ID(1, 2), sizeof(struct s), f(a, b)") == [
        "obj", "ID(1, 2)", "sizeof(struct s)", "f(a, b)"]
    assert split_args("") == []
    assert split_args("{ .id = 1, .version = 2 }, {}") == ["{ .id = 1, .version = 2 }", "{}"]


# --------------------------------------------------------------------------- constants


def test_constants_resolve_literals_macros_and_enums():
    c = Constants([
        "#define BASE 0x100\n#define NEXT (BASE + 1)\n#define SHIFTED (1UL << 4)\n"
        "#define OCT 010\n#define NAME_ONLY some_symbol\n",
        "enum ids { ID_A = 5, ID_B, ID_C = NEXT };\n",
    ])
    assert c.resolve("0x10") == 16
    assert c.resolve("42UL") == 42
    assert c.resolve("OCT") == 8
    assert c.resolve("NEXT") == 257
    assert c.resolve("SHIFTED") == 16
    assert c.resolve("ID_B") == 6
    assert c.resolve("ID_C") == 257
    assert c.resolve("NAME_ONLY") == "NAME_ONLY"  # not a number: kept as written
    assert c.resolve("unknown_id") == "unknown_id"


def test_constants_refuse_runaway_expressions():
    c = Constants(["#define HUGE (1 << 100000000)\n#define LOOP LOOP\n#define DIV (1 / 0)\n"])
    assert c.resolve("HUGE") == "HUGE"
    assert c.resolve("LOOP") == "LOOP"
    assert c.resolve("DIV") == "DIV"


def test_layout_key_sees_through_integer_macros_only():
    c = Constants(["#define KEY_MAX 64\n#define OTHER 65\n"])
    plain = layout_key("struct r { char key[64]; int v; };", c)
    assert layout_key("struct r {\n  char key[KEY_MAX]; /* bound */\n  int v;\n};", c) == plain
    assert layout_key("struct r { char key[OTHER]; int v; };", c) != plain
    assert layout_key("struct r { char key[64]; long v; };", c) != plain


# --------------------------------------------------------------------------- signatures


def test_signature_ignores_parameter_names_and_storage():
    a = _signature("static int show(struct seq_file *m, void *v)")
    assert a == _signature("int show(struct seq_file *seq, void *unused)")
    # const on a pointer's target: callers pass the same pointer, the code is called the same way
    assert a == _signature("int show(struct seq_file *m, const void *v)")
    assert a != _signature("long show(struct seq_file *m, void *v)")
    assert a != _signature("int show(struct seq_file *m)")
    assert _signature("void f(unsigned long)") != _signature("void f(unsigned)")
    assert _signature("void f(struct foo)") == _signature("void f(struct foo x)")
    assert _signature("void f(struct foo)") != _signature("void f(struct bar)")


# --------------------------------------------------------------------------- line origins

# An edit script: at each step, replace lines [start, start+drop) of the current
# file with ``add`` new lines.
_edit = st.tuples(st.integers(0, 40), st.integers(0, 3), st.integers(0, 3))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(_edit, min_size=1, max_size=4), min_size=1, max_size=4))
def test_every_line_traces_to_the_patch_line_that_made_or_removed_it(script):
    """Lines are unique texts naming the release that wrote them, so the oracle is
    the text itself: a base line has no patch; any other line comes from a ``+``
    line with the same text in the patch of the release it names; a line some later
    release removed comes from a ``-`` line with that text in that release's patch."""
    base_lines = [f"base {i}\n" for i in range(30)]
    versions = [base_lines]
    cur = list(base_lines)
    for r, edits in enumerate(script, 1):
        for n, (start, drop, add) in enumerate(edits):
            at = min(start, len(cur))
            cur[at:at + drop] = [f"rel{r} edit{n} line{j}\n" for j in range(add)]
        versions.append(list(cur))
    with tempfile.TemporaryDirectory() as tmp:
        releases = [{"f.c": "".join(v)} for v in versions[1:]]
        patches, base = make_series(Path(tmp), {"f.c": "".join(base_lines)}, releases)
        series, tree = load([str(patches)], None, str(base))
        rep = replay(series, tree, keep=range(len(versions)))
        patch_text = {p.path: p.data.decode().splitlines() for p in series.patches}
        last = len(versions) - 1
        for line_no, text in enumerate(versions[last], 1):
            got = added_by(rep, last, "f.c", line_no)
            if text.startswith("base"):
                assert got is None, (line_no, text, got)
                continue
            assert got is not None, (line_no, text)
            patch, pline = got
            assert patch_text[patch][pline - 1] == "+" + text.rstrip("\n")
            assert patch.endswith(f"release-{text.split()[0][3:]}.patch")
        for r in range(last):
            for line_no, text in enumerate(versions[r], 1):
                gone = next((k for k in range(r + 1, last + 1) if text not in versions[k]), None)
                got = removed_by(rep, r, last, "f.c", line_no)
                if gone is None:
                    assert got is None, (r, line_no, text, got)
                    continue
                assert got is not None, (r, line_no, text)
                patch, pline = got
                assert patch_text[patch][pline - 1] == "-" + text.rstrip("\n")
                assert patch.endswith(f"release-{gone}.patch")


def test_constants_expansion_is_bounded():
    defs = "".join(f"#define M{i} (M{i + 1} + M{i + 1} + M{i + 1} + M{i + 1})\n" for i in range(30))
    c = Constants([defs + "#define M30 1\n"])
    assert c.resolve("M0") == "M0"  # 4**30 terms: refused quickly, not computed
    assert c.resolve("M27") == 64


# --------------------------------------------------------------------------- facts

_GLUE_BASE = {"lp/glue.c": "int glue_ready;\n"}


def _facts_of(tmp: Path, releases: list[dict]) -> dict:
    import json

    from .helpers import klpcc

    patches, base = make_series(tmp, _GLUE_BASE, releases)
    r = klpcc("lint", str(patches), "--source", str(base), "--format", "json")
    assert r.returncode in (0, 1), r.stderr
    return json.loads(r.stdout)


def test_state_queries_take_the_id_argument_of_each_api(tmp_path):
    glue = """#define ST 4
static struct klp_state states[] = { { .id = ST, .version = 1 }, {} };

static int pre(struct klp_object *obj)
{
\tstruct klp_state *now = klp_get_state(obj->patch, ST);
\tstruct klp_state *prev = klp_get_prev_state(ST);
\tvoid *u = klpcc_get_prev_state(9);

\treturn now && prev && u ? 0 : 1;
}

static struct klp_callbacks cbs = { .pre_patch = pre };
"""
    doc = _facts_of(tmp_path, [{"lp/glue.c": glue}])
    s003 = [f for f in doc["findings"] if f["rule"] == "S003"]
    assert len(s003) == 1, doc["findings"]  # 4 is declared, 9 is not
    assert "system state 9" in s003[0]["message"] and s003[0]["line"] == 8
    assert s003[0]["function"] == "pre"


def test_shadow_type_from_a_parameter_declared_pointer(tmp_path):
    glue = """struct tally { long n; };

int bump(void *obj, struct tally *t)
{
\tt = klp_shadow_get(obj, 12);
\treturn t ? 1 : 0;
}

int make(void *obj)
{
\treturn klp_shadow_alloc(obj, 12, sizeof(struct tally), 0, NULL, NULL) != NULL;
}
"""
    doc = _facts_of(tmp_path, [{"lp/glue.c": glue}])
    uses = doc["facts"]["0001-release-1"]["shadow"]
    assert {(u["op"], u["type"], u["function"]) for u in uses} == {
        ("get", "struct tally", "bump"), ("alloc", "struct tally", "make")}


def test_api_declarations_are_not_uses(tmp_path):
    header = """void *klp_shadow_get(void *obj, unsigned long id);
void klp_shadow_free(void *obj, unsigned long id, void (*dtor)(void *obj, void *data));
"""
    doc = _facts_of(tmp_path, [{"lp/glue.c": "int glue_ready;\n" + header}])
    assert doc["facts"]["0001-release-1"]["shadow"] == []
    assert doc["findings"] == []


def test_a_patch_that_changes_one_file_in_two_sections(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "f.c").write_text("".join(f"base {i}\n" for i in range(1, 21)))
    patch = tmp_path / "0001-two-sections.patch"
    patch.write_text(
        "--- a/f.c\n+++ b/f.c\n@@ -1,3 +1,4 @@\n+first\n base 1\n base 2\n base 3\n"
        "--- a/f.c\n+++ b/f.c\n@@ -15,4 +15,5 @@\n base 14\n base 15\n+second\n base 16\n base 17\n")
    series, tree = load([str(patch)], None, str(base))
    rep = replay(series, tree, keep=range(2))
    lines = rep.snapshots.read("f.c", 1).decode().splitlines()
    text = patch.read_text().splitlines()
    for wanted in ("first", "second"):
        got = added_by(rep, 1, "f.c", lines.index(wanted) + 1)
        assert got is not None and text[got[1] - 1] == "+" + wanted, (wanted, got)
    assert added_by(rep, 1, "f.c", lines.index("base 16") + 1) is None


def test_a_typedef_and_its_struct_are_one_shadow_type(tmp_path):
    glue = """typedef struct tally { long n; } tally_t;

int bump(void *obj)
{
\ttally_t *t = klp_shadow_get(obj, 12);
\treturn t ? 1 : 0;
}

int make(void *obj)
{
\treturn klp_shadow_alloc(obj, 12, sizeof(struct tally), 0, NULL, NULL) != NULL;
}
"""
    doc = _facts_of(tmp_path, [{"lp/glue.c": glue}])
    uses = doc["facts"]["0001-release-1"]["shadow"]
    assert {u["type"] for u in uses} == {"struct tally"}
    assert doc["findings"] == []


@pytest.mark.parametrize("old, new, same", [
    ("long hits; int flags;", "int64_t hits; /* per call */ int32_t flags;", True),
    ("struct spi_master *master;", "struct spi_controller *host;", True),  # a pointer, renamed
    ("bool slave_abort;", "bool target_abort;", True),
    ("s16 len;", "u16 len;", True),
    ("unsigned char buf[4];", "u8 buf[4];", True),
    ("int (*lock)(struct ks *k, unsigned long *flags);", "void (*lock)(struct ks *k);", True),
    ("const struct info *info;", "struct info *info;", True),
    ("bool on;", "int on;", False),  # 1 byte -> 4
    ("u32 term;", "u32 *term;", False),
    ("int a; int b;", "int b;", False),
    ("unsigned int a:1, b:2;", "unsigned int a:1, b:3;", False),
    ("char key[16];", "char key[32];", False),
    ("struct { int a; } u;", "struct { long a; } u;", False),
])
def test_layouts_compare_member_shapes(old: str, new: str, same: bool):
    c = Constants([])
    assert (layout_key(f"struct s {{ {old} }};", c) == layout_key(f"struct s {{ {new} }};", c)) is same


@pytest.mark.parametrize("old, new, same", [
    ("static void set_bit(unsigned int reg, u8 v) { x(reg, v); }",
     "static void set_bit(u32 reg, unsigned char v) { x(reg, v); }", True),
    ("void f(struct s *p) { g(p); }", "void f(const struct s *p) { g(p); }", True),
    ("static int __init f(void) { return 0; }",
     "static int __init __noipa f(void) { /* why */ return 0; }", True),
    ("static struct soc s = { .a = 1, .b = x };",
     "static struct soc s = { .a = 1, .b = x, .c = false, };", True),
    ("static struct h s = { .lock = L };",
     "static struct h s = { .ht = HLIST_HEAD_INIT, .lock = L };", True),
    ("static struct soc s = { .a = 1 };", "static struct soc s = { .a = 1, .c = true };", False),
    ("void f(int reg) { x(reg); }", "void f(u32 reg) { x(reg); }", False),  # int is s32
    ("void f(void) { x(\"a\"); }", "void f(void) { x(\"b\"); }", False),
])
def test_code_tells_how_a_definition_is_written_from_what_it_compiles_to(old: str, new: str, same: bool):
    from klpcc.lint.rules import _code

    assert (_code(old) == _code(new)) is same


def test_signatures_see_typedefs_of_one_integer_type_and_const_targets():
    from klpcc.lint.rules import _signature

    sig = _signature
    assert sig("void f(unsigned int reg, const struct s *p)") == sig("void f(u32 r, struct s *q)")
    assert sig("static int __modinit f(char *n)") == sig("static int __init_or_module f(char *n)")
    assert sig("static void f(int reg)") != sig("static void f(long reg)")
    assert sig("static void f(int reg)") != sig("static void f(int reg, int more)")
