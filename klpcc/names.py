"""File names with any bytes, carried exactly: inside klpcc a name is a ``str`` whose
bytes that are not UTF-8 are lone surrogates (``surrogateescape``); outside, it is
written the way git quotes names -- ``"caf\\351.c"``: C escapes for a quote, a
backslash and control characters, octal for bytes outside ASCII -- wherever text
cannot hold it as it is (a diff, JSON, C's ``#line``)."""

from __future__ import annotations

import re

_ESCAPES = {0x07: "\\a", 0x08: "\\b", 0x09: "\\t", 0x0A: "\\n", 0x0B: "\\v", 0x0C: "\\f", 0x0D: "\\r",
            0x22: '\\"', 0x5C: "\\\\"}


def raw(name: str) -> bytes:
    """The bytes of ``name`` (a surrogate that stands for no byte: U+FFFD's)."""
    try:
        return name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return name.encode("utf-8", "replace")


def quote(name: str) -> str:
    """``name`` C-quoted as git quotes it, quotes included."""
    return '"' + "".join(_ESCAPES.get(b) or (chr(b) if 0x20 <= b < 0x7F else f"\\{b:03o}")
                         for b in raw(name)) + '"'


def git_name(name: str) -> str:
    """A file name as git writes it in a diff: as it is, or, when it holds a quote, a
    backslash, a control character or a byte outside ASCII, quoted (:func:`quote`),
    which ``git apply`` and ``patch`` read back exactly."""
    if all(0x20 <= b < 0x7F and b not in (0x22, 0x5C) for b in raw(name)):
        return name
    return quote(name)


def unquote(text: str) -> str:
    """The name a git-quoted ``text`` stands for (``text`` itself when not quoted)."""
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        body = raw(text[1:-1]).decode("unicode_escape")
        return body.encode("latin-1").decode("utf-8", "surrogateescape")
    return text


_OCTAL = re.compile(r"\\[0-7]{3}")


def looks_quoted(text: str) -> bool:
    """Is ``text`` what :func:`quote` makes of a name JSON cannot hold: between double
    quotes, with an octal escape in it?  (An ``#include "x.h"``'s name is not.)"""
    return len(text) >= 2 and text[0] == '"' and text[-1] == '"' and _OCTAL.search(text) is not None


def needs_quoting(text: str) -> bool:
    """Must JSON carry ``text`` quoted to give it back exactly: does it hold bytes that
    are not UTF-8, or look quoted itself?  Either way :func:`quote` gives a text that
    looks quoted, and nothing else does: :func:`decoded` reads every string back."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return looks_quoted(text)


def decoded(value):
    """A document as JSON gave it, with every quoted string read back (the inverse of
    :func:`klpcc.report.clean`)."""
    if isinstance(value, str):
        return unquote(value) if looks_quoted(value) else value
    if isinstance(value, dict):
        return {decoded(k): decoded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decoded(v) for v in value]
    return value
