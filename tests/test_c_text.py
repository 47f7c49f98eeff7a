"""klpcc.c.text: the one reading of C comments and literals (mask, scan, strip_comments)."""

from __future__ import annotations

import importlib

from hypothesis import given, settings
from hypothesis import strategies as st

from klpcc.c import mask, scan, strip_comments

C_BITS = st.lists(st.sampled_from(["/*", "*/", "//", "/", "*", '"', "'", "\\", "\n", "a", " ", "{", "}",
                                   "(", ")", "=", ";", ","]), max_size=30).map("".join)


def test_mask_str_and_bytes():
    text = 'int a = f("x /* y", \'"\'); /* c\nd */ // e\nb;\n'
    want = 'int a = f("' + " " * 6 + '", \' \'); ' + " " * 4 + "\n" + " " * 9 + "\nb;\n"
    assert mask(text) == want
    assert mask(text.encode()) == want.encode()


def test_mask_leaves_a_quote_with_no_closing_one_on_its_line():
    assert mask("don't {\n}") == "don't {\n}"
    assert mask("/* open") == "       "


@given(C_BITS)
def test_mask_keeps_every_offset_and_line(text: str):
    masked = mask(text)
    assert len(masked) == len(text)
    assert [i for i, c in enumerate(masked) if c == "\n"] == [i for i, c in enumerate(text) if c == "\n"]
    assert mask(text.encode()) == masked.encode()


def test_scan():
    assert scan("int f(int a, /* { */ char *b) { return 0; }", "{") == 30
    assert scan('static char s[] = { "a;b" };', "=;") == 16
    assert scan('static char s[4] = "={";', "{") == -1
    assert scan("int a, b;", ",") == 5
    assert scan("void (*f)(int, int);", ",") == -1
    assert scan("x // ;\n;", ";") == 7


@given(C_BITS, st.sampled_from(["{", "=;", ","]))
def test_scan_finds_the_first_stop_of_the_masked_text(text: str, stops: str):
    masked = mask(text)
    depth, want = 0, -1
    for i, c in enumerate(masked):
        if depth == 0 and c in stops:
            want = i
            break
        depth += (c in "([{") - (c in ")]}")
    assert scan(text, stops) == want


def test_strip_comments_keeps_literals():
    assert strip_comments(b'f("http://x"); /* a */ // b\n') == b'f("http://x");    \n'
    assert strip_comments("a/**/b") == "a b"



def test_tokens_skip_white_space_and_take_lone_punctuators_first():
    # the tokeniser consumes runs of white space in one step and tries the punctuators
    # no longer one begins with first; the tokens are those of maximal munch all the same
    from klpcc.c import tokens

    text = b"int  a[3] = { 1, 2 };\n\tx = y ? ~z : (w <<= 2) ... <: %> /* c */ s->t;\n"
    assert tokens(text) == [b"int", b"a", b"[", b"3", b"]", b"=", b"{", b"1", b",", b"2", b"}", b";",
                            b"x", b"=", b"y", b"?", b"~", b"z", b":", b"(", b"w", b"<<=", b"2", b")",
                            b"...", b"<:", b"%>", b"s", b"->", b"t", b";"]


# the characters of the plain-text path, the ones that make it refuse, and white space
# of every kind the split knows
# (the first drawn most often, so that many texts take the plain path)
_PLAIN_BITS = ["a", "e", "E", "p", "x", "_", "0", "1", "9", " ", "\t", "\n", "\r", "\x0b", "\x0c",
               *",;(){}[]?~=*+-&|<>!%^:"]
TOKEN_BITS = st.lists(st.sampled_from(
    _PLAIN_BITS * 4 + [".", "/", "#", '"', "'", "\\", "\x80", "\x1f", "@", "$"]),
    max_size=40).map(lambda bits: "".join(bits).encode("latin-1"))


@settings(max_examples=500)
@given(TOKEN_BITS)
def test_tokens_of_plain_text_are_those_of_maximal_munch(text: bytes):
    # text of words, white space and lone operators is split without the general pattern;
    # the tokens must be the same as the pattern's, whatever the text (and long texts,
    # which the tokeniser sends that way, too)
    from klpcc.c.tokens import munched, plain_tokens, tokens

    split = plain_tokens(text)
    assert split is None or split == munched(text)
    long = text * (1 + 1100 // max(len(text), 1)) + b" "
    assert tokens(long) == munched(long)


def test_tokens_of_tables_take_the_plain_path_and_others_do_not():
    module = importlib.import_module("klpcc.c.tokens")  # klpcc.c.tokens is also the function

    row = b"\t-1, 0x1F, 2 * 3, ~4, a | b, !c, d ^ e, f % 9 : 7,\n"
    table = b"static const int t[] = {\n" + row * 30 + b"};\n"
    assert len(table) >= module._PLAIN_MIN and module.plain_tokens(table) is not None
    assert module.tokens(table) == module.munched(table)
    for shape in (b"x = 1e-5;", b"p->q;", b"a <<= 2;", b"s.t = 1;", b'x = "a";', b"a /* c */;",
                  b"x == y;", b"#define A 1", b"<: :>"):
        assert module.plain_tokens(shape) is None, shape
        assert module.tokens(shape * 200) == module.munched(shape * 200)
