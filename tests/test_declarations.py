"""klpcc.c.declarations: declarations as the compiler sees them, from preprocessed
text in the shapes the kernel's macros expand to."""

from __future__ import annotations

from klpcc.c.declarations import PreprocessedUnit, declarations


def test_macro_expansions_give_typed_declarations():
    text = (b'static __attribute__((section(".data..percpu" ""))) __typeof__(struct swevent_htable) '
            b'swevent_htable;\n'
            b"static struct { int a; } anon_x;\n"
            b"static int counter = 3, *where;\n"
            b"extern int elsewhere;\n"
            b"static int helper(int v) { return v; }\n")
    d = declarations(text, None)
    assert d["swevent_htable"].text == "extern __typeof__(struct swevent_htable) swevent_htable;"
    assert d["swevent_htable"].static and d["swevent_htable"].defines
    assert d["anon_x"].text == "extern struct { int a; } anon_x;"
    assert d["counter"].text == "extern int counter;" and d["where"].text == "extern int *where;"
    assert not d["elsewhere"].defines and not d["elsewhere"].static
    assert d["helper"].function and d["helper"].text == "extern int helper(int v);"


def test_what_a_parse_recovered_from_is_no_declaration():
    # an attribute between a declarator and its initializer, and a typedef an attribute cut in two
    text = (b'static struct netdev_queue_attribute bql_limit_attribute __attribute__((__section__('
            b'".data..ro_after_init"))) = { .attr = { .name = "limit", .mode = 0644 }, .show = show_it, };\n'
            b"typedef __attribute__((__format__(printf, 2, 3))) void (*print_t)(void *p, const char *);\n")
    d = declarations(text, None)
    assert set(d) == {"bql_limit_attribute"}, d
    assert d["bql_limit_attribute"].text == "extern struct netdev_queue_attribute bql_limit_attribute;"


def test_the_lines_of_a_file_and_what_they_define():
    text = (b'# 1 "kernel/x.c"\n'
            b"int a;\n"
            b'# 10 "kernel/x.c"\n'
            b"static int b; static int c;\n"
            b'# 1 "include/linux/y.h" 1\n'
            b"static int in_header;\n")
    unit = PreprocessedUnit("kernel/x.c", text)
    assert unit.lines("kernel/x.c") == {1: [b"int a;"], 10: [b"static int b; static int c;"]}
    assert set(unit.definitions(10, 10)) == {"b", "c"}
    assert set(unit.definitions(1, 1, "include/linux/y.h")) == {"in_header"}
    assert set(unit.declarations({"a", "in_header", "nothing"})) == {"a", "in_header"}
