"""klpcc.c.text: the one reading of C comments and literals (mask, scan, strip_comments)."""

from __future__ import annotations

from hypothesis import given
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
