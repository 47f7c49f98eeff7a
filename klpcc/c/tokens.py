"""C tokens, and the fingerprints of items taken from them."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

from .text import COMMENT, LITERAL_TOKEN, strip_comments

_SPACE = re.compile(rb"\s+")
_CONTINUATION = re.compile(rb"\\\r?\n")

_PUNCTUATORS = sorted(
    "... <<= >>= -> ++ -- << >> <= >= == != && || *= /= %= += -= &= ^= |= ## <: :> <% %>".split(),
    key=len, reverse=True,
)
_TOKEN = re.compile(
    (COMMENT + "|("
     + LITERAL_TOKEN  # string or character literal
     + r"|\.?[0-9](?:[eEpP][+-]|[A-Za-z0-9_.])*"  # preprocessing number
     + r"|[A-Za-z_][A-Za-z0-9_]*"  # identifier or keyword
     ).encode()
    + b"|" + b"|".join(re.escape(p.encode()) for p in _PUNCTUATORS)
    + rb"|\S)",
    re.S,
)


def tokens(text: bytes) -> list[bytes]:
    """C tokens of ``text`` (maximal munch), comments and whitespace dropped."""
    text = _CONTINUATION.sub(b" ", text)
    return [m for m in _TOKEN.findall(text) if m]


_FUNCTION_LIKE = re.compile(rb"\s*#\s*define\s+\w+\(")


def fingerprint(text: bytes) -> str:
    """Fingerprint of a piece of C that ignores comments and whitespace (except the
    one that tells ``#define F(x)`` from ``#define F (x)``)."""
    toks = tokens(text)
    if _FUNCTION_LIKE.match(text):
        toks.append(b"#function-like")
    return hashlib.blake2b(b"\x1f".join(toks), digest_size=12).hexdigest()


def in_context(fp: str, context: Sequence[str]) -> str:
    """A fingerprint that also says under which conditional branches (outermost
    first) an item stands: moving an ``#endif`` changes what is compiled."""
    for cond in reversed(context):
        fp = hashlib.blake2b(f"{cond}\x1e{fp}".encode(), digest_size=12).hexdigest()
    return fp


def normalise(text: bytes) -> bytes:
    """``text`` on one line: line continuations and comments made spaces, runs of
    white space made one."""
    text = _CONTINUATION.sub(b" ", text)
    text = strip_comments(text)
    return _SPACE.sub(b" ", text).strip()


def short_text(text: bytes, limit: int = 60) -> str:
    """:func:`normalise`\\ d ``text`` as a name, cut to ``limit`` characters."""
    name = normalise(text).decode("utf-8", "replace")
    return name if len(name) <= limit else name[: limit - 3] + "..."
