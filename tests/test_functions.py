"""Stage 4: locating C functions in unpreprocessed source, and fingerprints."""

from __future__ import annotations

from collections import Counter

import pytest

from klpcc.c import CSource, LineEdit, fingerprint, split_lines, tokens


def items(src: str):
    return CSource("t.c", split_lines(src.encode())).items()


def functions(src: str) -> dict[str, tuple[bool, int, int]]:
    return {it.name: (it.static, it.start_line, it.end_line)
            for it in items(src) if it.kind == "function"}


def test_plain_and_static_functions_with_spans():
    src = (
        "#include <stdio.h>\n"        # 1
        "static int a(void)\n"        # 2
        "{\n"                         # 3
        "\treturn 1;\n"               # 4
        "}\n"                         # 5
        "\n"                          # 6
        "int b(int x) { return x; }\n"  # 7
    )
    assert functions(src) == {"a": (True, 2, 5), "b": (False, 7, 7)}


@pytest.mark.parametrize("decl, name, static", [
    ("static int __init foo_init(void)", "foo_init", True),
    ("static void __exit foo_exit(void)", "foo_exit", True),
    ("static __always_inline int fast(struct x *p)", "fast", True),
    ("static void __cold noinline slow(int x)", "slow", True),
    ("asmlinkage __visible void __sched schedule(void)", "schedule", False),
    ("static __printf(2, 3) void pr(int l, const char *fmt, ...)", "pr", True),
    ("int __weak arch_thing(void)", "arch_thing", False),
    ("static int foo(void) __releases(x)", "foo", True),
    ("static struct foo *to_foo(struct bar *b)", "to_foo", True),
    ("static int (*getfn(void))(int)", "getfn", True),
    ("Py_LOCAL_INLINE(int) fast_path(PyObject *o)", "fast_path", False),
    ("static PyObject *\nspam_system(PyObject *self, PyObject *args)", "spam_system", True),
    ("static void MY_UNKNOWN_ATTR quirky(void)", "quirky", True),
])
def test_annotated_definitions(decl, name, static):
    got = functions(f"{decl}\n{{\n\treturn 0;\n}}\n")
    assert list(got) == [name]
    assert got[name][0] is static


def test_macro_defined_functions():
    src = (
        "SYSCALL_DEFINE3(open, const char __user *, filename, int, flags, umode_t, mode)\n"
        "{\n\treturn do_sys_open(AT_FDCWD, filename, flags, mode);\n}\n"
        "COMPAT_SYSCALL_DEFINE2(getfoo, int, a, int, b)\n{\n\treturn 0;\n}\n"
        "BPF_CALL_2(bpf_map_lookup, struct bpf_map *, map, void *, key)\n{\n\treturn 0;\n}\n"
    )
    found = {it.name: it.macro for it in items(src) if it.kind == "function"}
    assert found == {"sys_open": "SYSCALL_DEFINE3", "compat_sys_getfoo": "COMPAT_SYSCALL_DEFINE2",
                     "bpf_map_lookup": "BPF_CALL_2"}


def test_knr_definition():
    src = "int knr(a, b)\nint a; char *b;\n{\n\treturn a;\n}\nint after(void) { return 0; }\n"
    assert functions(src) == {"knr": (False, 1, 5), "after": (False, 6, 6)}


def test_ifdef_variants_are_one_function_with_two_definitions():
    src = (
        "#ifdef CONFIG_X\n"
        "static int cfg(void) { return 1; }\n"
        "#else\n"
        "static int cfg(void) { return 0; }\n"
        "#endif\n"
    )
    defs = [it for it in items(src) if it.kind == "function"]
    assert [(d.name, d.start_line) for d in defs] == [("cfg", 2), ("cfg", 4)]
    assert defs[0].fingerprint != defs[1].fingerprint
    conds = [it.name for it in items(src) if it.kind == "conditional"]
    assert conds == ["#ifdef CONFIG_X", "#else"]


def test_header_guard_and_static_inline():
    src = (
        "#ifndef FOO_H\n#define FOO_H\n"
        "struct foo { int a; };\n"
        "static inline int foo_get(const struct foo *f)\n{\n\treturn f->a;\n}\n"
        "#endif\n"
    )
    kinds = {(it.kind, it.name) for it in items(src)}
    assert ("function", "foo_get") in kinds
    assert ("macro", "FOO_H") in kinds
    assert ("type", "struct foo") in kinds


def test_outside_items_are_named():
    src = (
        "#include <linux/module.h>\n"
        "#define LIMIT 10\n"
        "#define MAX(a, b) ((a) > (b) ? (a) : (b))\n"
        "static int counter = 3;\n"
        "int shared;\n"
        "int proto(int);\n"
        "typedef unsigned long ulong_t;\n"
        "static const struct file_operations fops = { .open = foo, };\n"
        "EXPORT_SYMBOL_GPL(proto);\n"
        "enum mode { A, B };\n"
    )
    got = {(it.kind, it.name) for it in items(src)}
    assert got == {
        ("include", "<linux/module.h>"), ("macro", "LIMIT"), ("macro", "MAX"),
        ("variable", "counter"), ("variable", "shared"), ("prototype", "proto"),
        ("typedef", "ulong_t"), ("variable", "fops"),
        ("statement", "EXPORT_SYMBOL_GPL(proto);"), ("type", "enum mode"),
    }


def test_ifdef_inside_initialiser_does_not_swallow_following_functions():
    # tree-sitter cannot parse a conditional inside an initializer list; the lexical
    # fallback must still find every function after it
    src = (
        "static struct ctl_table table[] = {\n"
        "#ifdef CONFIG_A\n"
        "\t{ .procname = \"a\", },\n"
        "#endif\n"
        "\t{ }\n"
        "};\n"
        "\n"
        "static int __init setup(void)\n{\n\treturn register_table(table);\n}\n"
        "\n"
        "static void helper(int x)\n{\n\tif (x)\n\t\tx++;\n}\n"
        "int api(void)\n{\n#ifdef CONFIG_B\n\tif (b) {\n#else\n\tif (c) {\n#endif\n"
        "\t\treturn 1;\n\t}\n\treturn 0;\n}\n"
    )
    got = functions(src)
    assert got["setup"] == (True, 8, 11)
    assert got["helper"] == (True, 13, 17)
    assert got["api"][:2] == (False, 18)
    assert got["api"][2] == 28


def test_missing_brace_inside_a_function_does_not_swallow_the_file():
    src = (
        "static void a(void)\n{\n\tfor_each_thing(x)\n\t\tuse(x);\n}\n\n"
        "static int b(void)\n{\n\tMACRO_WITHOUT_SEMI(x)\n\treturn 1;\n}\n\n"
        "static int c(void)\n{\n\treturn 2;\n}\n"
    )
    got = functions(src)
    assert set(got) == {"a", "b", "c"}
    assert got["c"] == (True, 13, 16)


def test_fingerprint_ignores_comments_and_whitespace_but_not_tokens():
    a = b"int f(int x)\n{\n\treturn x + 1; /* one */\n}\n"
    b = b"int f(int x) {   // same\n  return x+1;\n}\n"
    c = b"int f(int x)\n{\n\treturn x + 2;\n}\n"
    d = b'int f(int x)\n{\n\treturn x + "/* not a comment */"[0];\n}\n'
    e = b'int f(int x)\n{\n\treturn x + "/*  not a comment */"[0];\n}\n'
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(a) != fingerprint(c)
    assert fingerprint(d) != fingerprint(e)  # whitespace inside a string is code
    assert tokens(b"a+++b") == [b"a", b"++", b"+", b"b"]  # maximal munch
    assert fingerprint(b"y = a++ + b;") != fingerprint(b"y = a + ++b;")
    assert fingerprint(b"p->x.y") == fingerprint(b"p -> x . y")


def test_annotation_change_is_a_change():
    a = items("static int __init f(void)\n{\n\treturn 0;\n}\n")[0]
    b = items("static int __exit f(void)\n{\n\treturn 0;\n}\n")[0]
    assert (a.name, b.name) == ("f", "f")
    assert a.fingerprint != b.fingerprint


def _edit(old: str, new: str, edits: list[LineEdit]):
    """Edit incrementally, and check the result against fresh parses: the items the
    edit reports before/after must account for every difference between them."""
    src = CSource("t.c", split_lines(old.encode()))
    old_all = Counter((i.kind, i.name, i.fingerprint) for i in src.items())
    before, after = src.edit(split_lines(new.encode()), edits)
    fresh = CSource("t.c", split_lines(new.encode())).items()
    assert [(i.kind, i.name, i.fingerprint, i.start_line) for i in src.items()] == \
        [(i.kind, i.name, i.fingerprint, i.start_line) for i in fresh]
    new_all = Counter((i.kind, i.name, i.fingerprint) for i in fresh)
    b = Counter((i.kind, i.name, i.fingerprint) for i in before)
    a = Counter((i.kind, i.name, i.fingerprint) for i in after)
    assert old_all - b + a == new_all
    return before, after


def test_incremental_edit_closing_a_comment_away_reaches_what_the_error_hid():
    # '/*' above a string holding '*/' makes an error region whose lexical reading ends
    # before the '#ifdef' after it does; taking the '/*' away again must find the
    # '#else' branch too, which the parser's changed ranges do not reach
    base = ('int alpha(int x)\n{\n\tprintk("*/ }{");\n}\n#ifdef CONFIG_X\nint alpha(int x)\n{\n'
            '\tx = 0;\n}\n#else\nint alpha(int x)\n{\n\tx = 0;\n}\n#endif\n')
    before, after = _edit("/* an unterminated comment\n" + base, base, [LineEdit(0, 1, 0, 0)])
    assert [(i.kind, i.name) for i in after].count(("conditional", "#else")) == 1


def test_incremental_edit_of_a_directive_in_a_broken_file_reaches_the_items_it_conditions():
    # an '#ifdef' without '#endif' the parser leaves as a bare token: taking it away
    # changes the conditions of the unparsed code far below it
    old = ("#ifdef CONFIG_X\nstatic const int t3[][2] = {\n\t{0, 4},\n\t{1, 3},\n};\nint f5(int x)\n{\n"
           "\t{9, 9},\n\t{8, 8}, /* x */\n\t{8, 8}, /* x */\n")
    new = "static int q[] = {\n" + old.split("\n", 2)[2]
    before, after = _edit(old, new, [LineEdit(0, 2, 0, 1)])
    assert "unparsed" in [i.kind for i in before] and "unparsed" in [i.kind for i in after]


# Edits in regions read lexically (the siblings after a node the parser recovered in,
# up to where braces balance): how far such a region reaches, and so the items after
# it, can change far from the edit.  Shapes found by bench/bench_incremental.py on
# randomly edited kernel files, reduced.
_LEXICAL_REACH = [
    ("#define M(x) \\\nvoid free_store(char *p)\n{\nMACRO(a, b)\n\t\tfree_store(q);\n}\n}\n",
     "", "\t\treturn false;\n", "\t\trestore_tags(page_address(pg), t);\n\treturn true;\n"),
    ("}\n", "EXPORT_SYMBOL(node_dist);\n", "\n",
     "/* c */\nstruct node_info info[NR] =\n#include <linux/init.h>\n{\n};\n"),
    ("/**\n", " * n, the rest of @d is padded.\n *\n */\n",
     "#define M(x) \\\n * * The count of bytes copied\n",
     "#ifndef HAVE_COPY\n/**\n */\nlong copy_str(char *d, const char *s, long n)\n{\n"
     "int cmp_str(const char *a, const char *b, long n)\n{\n * @n: The largest count of bytes to look at\n{\n"
     "\tconst char *c;\n\tfor (p = s; *p != '\\0'; ++p) {\n"),
]


@pytest.mark.parametrize("pre, old, new, post", _LEXICAL_REACH)
def test_incremental_edit_in_a_region_read_lexically(pre: str, old: str, new: str, post: str):
    at = pre.count("\n")
    _edit(pre + old + post, pre + new + post, [LineEdit(at, old.count("\n"), at, new.count("\n"))])


def test_incremental_edit_reports_only_the_touched_function():
    old = "int a(void)\n{\n\treturn 1;\n}\nint b(void)\n{\n\treturn 2;\n}\nint c(void)\n{\n\treturn 3;\n}\n"
    new = old.replace("return 2;", "return 22;")
    before, after = _edit(old, new, [LineEdit(6, 1, 6, 1)])
    assert [i.name for i in before] == ["b"]
    assert [i.name for i in after] == ["b"]
    assert before[0].fingerprint != after[0].fingerprint


def test_incremental_edit_opening_a_comment_reaches_the_rest_of_the_file():
    old = "int a(void)\n{\n\treturn 1;\n}\nint b(void)\n{\n\treturn 2;\n}\nint c(void)\n{\n\treturn 3;\n}\n"
    lines = old.splitlines(keepends=True)
    new = "".join(lines[:4] + ["/* b and c are commented out\n"] + lines[4:] + ["*/\n"])
    before, after = _edit(old, new, [LineEdit(4, 0, 4, 1), LineEdit(12, 0, 13, 1)])
    assert {i.name for i in before if i.kind == "function"} == {"b", "c"}
    assert not [i for i in after if i.kind == "function"]


def test_incremental_edit_wrapping_functions_in_a_conditional():
    old = "int a(void)\n{\n\treturn 1;\n}\nint b(void)\n{\n\treturn 2;\n}\nint c(void)\n{\n\treturn 3;\n}\n"
    lines = old.splitlines(keepends=True)
    new = "".join(lines[:4] + ["#if 0\n"] + lines[4:8] + ["#endif\n"] + lines[8:])
    before, after = _edit(old, new, [LineEdit(4, 0, 4, 1), LineEdit(8, 0, 9, 1)])
    assert ("conditional", "#if 0") in {(i.kind, i.name) for i in after}


def test_incremental_edit_at_end_of_file_without_newline():
    old = "int a(void)\n{\n\treturn 1;\n}"
    new = "int a(void)\n{\n\treturn 2;\n}"
    before, after = _edit(old, new, [LineEdit(2, 2, 2, 2)])
    assert [i.name for i in after] == ["a"]


def test_split_lines_only_on_newline():
    assert split_lines(b"a\x0cb\rc\nd") == [b"a\x0cb\rc\n", b"d"]
    assert split_lines(b"") == []


def test_an_annotation_defined_away_in_a_conditional_keeps_the_functions_after_it_in_place():
    """kernel/params.c before 6.1.176: ``#define __modinit __init`` in an ``#else``.  The
    annotation is not blanked inside the directive (a value of blanks made the parser
    read the ``#endif`` into the definition and every later function into the ``#else``),
    so removing the whole block changes no later function's fingerprint."""
    block = "#ifdef CONFIG_MODULES\n#define __modinit\n#else\n#define __modinit __init\n#endif\n\n"
    rest = ("#ifdef CONFIG_SYSFS\nvoid kernel_param_lock(struct module *mod)\n"
            "{\n\tmutex_lock(&param_lock);\n}\n#endif\n")
    before = {it.name: it.fingerprint for it in items(block + rest) if it.kind == "function"}
    after = {it.name: it.fingerprint for it in items(rest) if it.kind == "function"}
    assert before == after and set(after) == {"kernel_param_lock"}


def test_an_edit_to_a_continued_directive_parses_as_the_whole_file_does():
    """Annotations in a directive's continuation lines are left as written, in a fresh
    parse and after an edit alike (masking follows edits line by line elsewhere)."""
    old = ("#define __modinit \\\n\t__init\n\nint a(void)\n{\n\treturn 1;\n}\n"
           "#ifdef X\nint b(void)\n{\n\treturn 2;\n}\n#endif\n")
    new = old.replace("\t__init\n", "\t__exit\n").replace("return 2", "return 3")
    src = CSource("t.c", split_lines(old.encode()))
    src.items()
    new_lines = split_lines(new.encode())
    edits = [LineEdit(1, 1, 1, 1), LineEdit(10, 1, 10, 1)]
    src.edit(new_lines, edits)
    fresh = CSource("t.c", new_lines)
    assert [(i.kind, i.name, i.fingerprint) for i in src.items()] == \
        [(i.kind, i.name, i.fingerprint) for i in fresh.items()]
    assert src._masked == fresh._masked
