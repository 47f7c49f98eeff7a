"""C comments and string/character literals, read the same way everywhere.

The lexical grammar of comments and literals is written here once: the tokeniser
(:mod:`.tokens`) and the fallback scanner (:mod:`.lexical`) build their patterns from
it, and :func:`mask` -- what the lint and the unit writers look through to see only
code -- is one pass of it:

* a ``//`` comment runs to the end of its line, a ``/*`` comment to its ``*/`` (or to
  the end of the text when it has none);
* a literal runs to its closing quote, a backslash escaping the character after it
  (a line break too); a quote with no closing one before the end of its line is not a
  literal, and the text after it is read as code.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import AnyStr

#: A comment (pattern source, for ``re.S``).  ``/\*.*?(?:\*/|\Z)``, written so that
#: it reads a long comment in runs rather than a character at a time.
COMMENT = r"//[^\n]*|/\*[^*]*(?:\*+[^*/][^*]*)*(?:\*+/|\**\Z)"


def _literal(quote: str) -> str:
    """Pattern source of a ``quote`` literal up to, not including, its closing quote."""
    return rf"{quote}(?:\\.|[^{quote}\\\n])*"


#: A string or character literal as a token (pattern source, for ``re.S``): one with
#: no closing quote is a token to the end of its line.
LITERAL_TOKEN = _literal('"') + '"?|' + _literal("'") + "'?"

_LEXEME = "(" + COMMENT + ")|" + _literal('"') + '"|' + _literal("'") + "'"
_LEXEMES = re.compile(_LEXEME, re.S)
_LEXEMES_B = re.compile(_LEXEME.encode(), re.S)


def _blank(s: str) -> str:
    return "\n".join([" " * len(line) for line in s.split("\n")]) if "\n" in s else " " * len(s)


def _blank_b(s: bytes) -> bytes:
    return b"\n".join([b" " * len(line) for line in s.split(b"\n")]) if b"\n" in s else b" " * len(s)


def _masked(m: re.Match[str]) -> str:
    s = m.group()
    if m.start(1) >= 0:  # a comment
        return _blank(s)
    return s[0] + _blank(s[1:-1]) + s[-1]


def _masked_b(m: re.Match[bytes]) -> bytes:
    s = m.group()
    if m.start(1) >= 0:
        return _blank_b(s)
    return s[:1] + _blank_b(s[1:-1]) + s[-1:]


def mask(text: AnyStr) -> AnyStr:
    """``text`` (str or bytes) with comments and the insides of string and character
    literals blanked: same length, line breaks and quotes kept, so that every offset
    stays valid and pattern matches see only code."""
    if isinstance(text, bytes):
        return _LEXEMES_B.sub(_masked_b, text)
    return _LEXEMES.sub(_masked, text)


def _uncommented(m: re.Match[str]) -> str:
    return " " if m.start(1) >= 0 else m.group()


def _uncommented_b(m: re.Match[bytes]) -> bytes:
    return b" " if m.start(1) >= 0 else m.group()


def strip_comments(text: AnyStr) -> AnyStr:
    """``text`` (str or bytes) with each comment replaced by one space, literals kept
    as written."""
    if isinstance(text, bytes):
        return _LEXEMES_B.sub(_uncommented_b, text) if b"/" in text else text
    return _LEXEMES.sub(_uncommented, text) if "/" in text else text


@lru_cache(maxsize=64)
def _scanner(stops: str) -> re.Pattern[str]:
    """Comments, literals, and (group 2) the brackets and ``stops`` outside them."""
    return re.compile(_LEXEME + "|([" + re.escape("()[]{}" + stops) + "])", re.S)


def scan(text: str, stops: str) -> int:
    """Index of the first character of ``stops`` outside brackets, comments and
    literals, or -1.  The text is read as :func:`mask` reads it, up to that character."""
    depth = 0
    for m in _scanner(stops).finditer(text):
        at = m.start(2)
        if at < 0:  # a comment or a literal
            continue
        c = text[at]
        if depth == 0 and c in stops:
            return at
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
    return -1
