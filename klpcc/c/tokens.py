"""C tokens, and the fingerprints of items taken from them."""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from collections.abc import Sequence

from .text import COMMENT, LITERAL_TOKEN, strip_comments

_SPACE = re.compile(rb"\s+")
_CONTINUATION = re.compile(rb"\\\r?\n")

_PUNCTUATORS = sorted(
    "... <<= >>= -> ++ -- << >> <= >= == != && || *= /= %= += -= &= ^= |= ## <: :> <% %>".split(),
    key=len, reverse=True,
)
_TOKEN = re.compile(
    (r"\s+|"  # white space, skipped in one step (no token starts with it)
     + COMMENT + "|("
     + r"[,;(){}\[\]?~]|"  # punctuators no longer one starts with, first: the commonest
     + LITERAL_TOKEN  # string or character literal
     + r"|\.?[0-9](?:[eEpP][+-]|[A-Za-z0-9_.])*"  # preprocessing number
     + r"|[A-Za-z_][A-Za-z0-9_]*"  # identifier or keyword
     ).encode()
    + b"|" + b"|".join(re.escape(p.encode()) for p in _PUNCTUATORS)
    + rb"|\S)",
    re.S,
)


# Text of words, white space and one-character operators only (tables of numbers, most
# often), whose tokens are its runs of word characters and each operator: no comment,
# literal, '.', '#' or backslash; no two operators side by side (no '->', '<<=', '<:');
# no exponent sign ('1e-5' is one token).
_PLAIN = re.compile(rb"[\w\s,;(){}\[\]?~=*+\-&|<>!%^:]*")
_OPERATORS = [bytes([c]) for c in b",;(){}[]?~=*+-&|<>!%^:"]
_SIDE_BY_SIDE = re.compile(rb"[=*+\-&|<>!%^:]{2}|[eEpP][+-]")
_PLAIN_MIN = 1024  # shorter texts (most code) go straight to the general pattern: the checks cost more


def tokens(text: bytes) -> list[bytes]:
    """C tokens of ``text`` (maximal munch), comments and whitespace dropped."""
    if len(text) >= _PLAIN_MIN and (split := plain_tokens(text)) is not None:
        return split
    return munched(text)


def plain_tokens(text: bytes) -> list[bytes] | None:
    """The tokens of plain text (words, white space and lone operators), found by
    spacing each operator off and splitting (several times faster); None for other text."""
    if _SIDE_BY_SIDE.search(text) or not _PLAIN.fullmatch(text):
        return None
    for op in _OPERATORS:
        if op in text:
            text = text.replace(op, b" " + op + b" ")
    return text.split()


def munched(text: bytes) -> list[bytes]:
    """:func:`tokens` by the general pattern alone."""
    if b"\\" in text:
        text = _CONTINUATION.sub(b" ", text)
    return [m for m in _TOKEN.findall(text) if m]


_FUNCTION_LIKE = re.compile(rb"\s*#\s*define\s+\w+\(")


_MEMO: OrderedDict[bytes, str] = OrderedDict()  # content -> fingerprint, most recent last
_MEMO_LIMIT = 1 << 16  # entries
_MEMO_SMALL = 64  # shorter texts are keys themselves; longer ones by digest


def fingerprint(text: bytes) -> str:
    """Fingerprint of a piece of C that ignores comments and whitespace (except the
    one that tells ``#define F(x)`` from ``#define F (x)``).  Content-addressed: an
    item whose bytes did not change is not tokenised again."""
    key = bytes(text) if len(text) <= _MEMO_SMALL else hashlib.blake2b(text, digest_size=20).digest()
    found = _MEMO.get(key)
    if found is not None:
        _MEMO.move_to_end(key)
        return found
    toks = tokens(text)
    if _FUNCTION_LIKE.match(text):
        toks.append(b"#function-like")
    fp = hashlib.blake2b(b"\x1f".join(toks), digest_size=12).hexdigest()
    _MEMO[key] = fp
    if len(_MEMO) > _MEMO_LIMIT:
        _MEMO.popitem(last=False)
    return fp


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
