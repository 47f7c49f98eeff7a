"""The fallback lexical scanner, for where tree-sitter recovers from errors.

Where tree-sitter gives up (an ERROR node, typically after a conditional directive
inside an initializer, or a statement-like macro), items are found by a lexical
scan instead, the way tag generators do it: balanced braces, with only the first
branch of a conditional counted.  Spans come out as the parser would give them, and
fingerprints are taken from the text, so an item reads the same either way.
"""

from __future__ import annotations

import hashlib
import re
from bisect import bisect_right
from collections import OrderedDict

from .items import Item, _is_macro_name, _macro_name
from .language import macro_variable, mask_annotations
from .text import COMMENT, LITERAL_TOKEN, mask
from .tokens import fingerprint, in_context, normalise, short_text

_SCAN = re.compile(
    ("(?P<comment>" + COMMENT + ")"
     + r"|(?P<pp>^[ \t]*\#(?:\\\r?\n|/\*.*?\*/|[^\n])*)"
     + "|(?P<str>" + LITERAL_TOKEN + ")"
     + r"|(?P<word>[A-Za-z_0-9]+)"
     + r"|(?P<punct>\S)").encode(),
    re.S | re.M,
)
_TYPE_KEYWORDS = frozenset({b"struct", b"union", b"enum"})
_C_KEYWORDS = frozenset(
    b"""auto break case char const continue default do double else enum extern float for
    goto if inline int long register restrict return short signed sizeof static struct
    switch typedef union unsigned void volatile while _Bool""".split()
)
_DIRECTIVE = re.compile(rb"#\s*([a-z_]+)\s*(.*)", re.S)


def _is_word(tok: bytes) -> bool:
    return bool(tok) and (tok[0:1].isalpha() or tok[0:1] == b"_")


# the conditionals open where a scan starts: (skip, dead_if, conds) as _scan keeps them
State = tuple[tuple[bool, ...], tuple[bool, ...], tuple[tuple[str, str], ...]]


def _lexical_items(data: bytes, start: int, end: int) -> tuple[list[Item], bool]:
    """Items of ``data[start:end]`` found by a lexical scan, and whether the region
    ends cleanly (braces balanced, no item left open)."""
    items, clean, _, _ = _scan(data, start, end, ((), (), ()))
    return items, clean


def _scan(data: bytes, start: int, end: int, state: State) -> tuple[list[Item], bool, State, bool]:
    """:func:`_lexical_items` from inside the conditionals of ``state``; also the
    conditionals open at the end, and whether the scan ends at rest there (no brace,
    parenthesis or item open: the next text can be scanned on its own)."""
    masked = mask_annotations(data[start:end])
    items: list[Item] = []
    depth = 0  # braces
    paren = 0  # parentheses, at brace depth 0
    stmt: list[tuple[bytes, int, int]] = []  # depth-0 tokens of the current item
    stmt_start = -1
    skip: list[bool] = list(state[0])  # per open conditional: is this branch left unread?
    dead_if: list[bool] = list(state[1])  # per open conditional: is it '#if 0'?
    call_end = -1  # end of a leading MACRO(...) call that may lack its ';'
    conds: list[tuple[str, str]] = list(state[2])  # per open conditional: (its '#if', the branch)
    stmt_ctx: tuple[str, ...] = ()  # the branches around the current item
    first_line = data.count(b"\n", 0, start) + 1
    newlines = [m.start() + start for m in re.finditer(b"\n", masked)]

    def line_of(pos: int) -> int:
        return first_line + bisect_right(newlines, pos - 1)

    def context() -> tuple[str, ...]:
        return tuple(branch for _, branch in conds)

    def emit(kind: str, name: str, static: bool, lo: int, hi: int, macro: str | None = None,
             ctx: tuple[str, ...] | None = None) -> None:
        end_line = line_of(hi - 1) if hi > lo else line_of(lo)
        code = fingerprint(data[lo:hi])
        within = stmt_ctx if ctx is None else ctx
        fp = in_context(code, within)
        items.append(Item(kind, name, static, lo, hi, line_of(lo), end_line, fp, macro,
                          "" if fp == code else code, tuple(within)))

    def emit_call(lo: int, hi: int) -> None:
        """A macro call standing as a statement of its own, without ';'."""
        made = macro_variable(data[lo:hi])
        if made is not None:  # DEFINE_PER_CPU(struct rq, runqueues)
            emit(made[0], made[1], made[2], lo, hi, made[3])
        else:
            emit("statement", short_text(data[lo:hi]), False, lo, hi)

    for m in _SCAN.finditer(masked):
        group = m.lastgroup
        if group == "comment":
            continue
        lo, hi = start + m.start(), start + m.end()
        tok = m.group()
        if group == "pp":
            text = tok.strip()
            d = _DIRECTIVE.match(text)
            directive = d.group(1) if d else b""
            name = normalise(text).decode("utf-8", "replace")
            around = context()  # the branches around this directive
            if directive in (b"if", b"ifdef", b"ifndef"):
                # code under '#if 0' is dead: not read at all
                dead = directive == b"if" and normalise(d.group(2) if d else b"") == b"0"
                skip.append(dead)
                dead_if.append(dead)
                conds.append((name, name))
            elif directive in (b"elif", b"else") and skip:
                # a branch holding whole items is read; a branch inside an item is not
                skip[-1] = (depth > 0 or bool(stmt)) and not dead_if[-1]
                dead_if[-1] = False
                around = around[:-1]
                conds[-1] = (conds[-1][0], f"{conds[-1][0]}/{name}")
            elif directive == b"endif" and skip:
                skip.pop()
                dead_if.pop()
                conds.pop()
            if depth == 0 and stmt and directive in (b"define", b"undef", b"include"):
                # a statement-like macro call without ';' ends before such a line
                if call_end >= 0:
                    emit_call(stmt_start, call_end)
                else:
                    emit("unparsed", "", False, stmt_start, stmt[-1][2])
                stmt, stmt_start, paren, call_end = [], -1, 0, -1
            if depth == 0 and not stmt and directive != b"endif" and not any(skip[:-1]) \
                    and not (skip and skip[-1] and directive not in (b"if", b"ifdef", b"ifndef",
                                                                     b"elif", b"else")):
                lo += len(tok) - len(tok.lstrip())
                rest = normalise(d.group(2)).decode("utf-8", "replace") if d else ""
                if directive == b"define":
                    emit("macro", re.split(r"[\s(]", rest, maxsplit=1)[0], False, lo, hi, ctx=around)
                elif directive == b"include":
                    emit("include", rest, False, lo, hi, ctx=around)
                elif directive in (b"if", b"ifdef", b"ifndef", b"elif", b"else"):
                    emit("conditional", name, False, lo, hi, ctx=around)
                else:
                    emit("directive", name, False, lo, hi, ctx=around)
            continue
        if any(skip):
            continue
        if call_end >= 0 and depth == 0:
            # MACRO(...) then, on a later line, something that cannot continue it:
            # the call was a statement of its own, written without ';'
            if data.count(b"\n", call_end, lo) and tok not in (b"{", b";", b",", b"=", b"(", b")"):
                emit_call(stmt_start, call_end)
                stmt, stmt_start, paren = [], -1, 0
            call_end = -1
        if tok == b"{":
            if depth == 0 and not stmt:
                stmt_start, stmt_ctx = lo, context()
            depth += 1
            if depth == 1:
                stmt.append((tok, lo, hi))
            continue
        if tok == b"}":
            depth = max(depth - 1, 0)
            if depth == 0:
                if not stmt:  # a stray closing brace
                    stmt_start, stmt_ctx = lo, context()
                stmt.append((tok, lo, hi))
                if _is_function_header(stmt):
                    _emit_function(stmt, stmt_start, hi, emit)
                    stmt, stmt_start, paren = [], -1, 0
            continue
        if depth > 0:
            continue
        if not stmt:
            stmt_start, stmt_ctx = lo, context()
        stmt.append((tok, lo, hi))
        if tok == b"(":
            paren += 1
        elif tok == b")":
            paren = max(paren - 1, 0)
            if paren == 0 and len(stmt) > 2 and _is_word(stmt[0][0]) and stmt[1][0] == b"(" \
                    and _closes_first_group(stmt):
                call_end = hi
        elif tok == b";" and paren == 0:
            _emit_declaration(stmt, stmt_start, hi, data, emit)
            stmt, stmt_start = [], -1
    clean = depth == 0 and (not stmt or call_end >= 0)
    at_rest = depth == 0 and not stmt and paren == 0 and call_end < 0
    if stmt:
        if call_end >= 0:
            emit_call(stmt_start, call_end)
        else:  # what is left open runs to the end of the region
            emit("unparsed", "", False, stmt_start, end if depth else stmt[-1][2])
    return items, clean, (tuple(skip), tuple(dead_if), tuple(conds)), at_rest


def _closes_first_group(stmt: list[tuple[bytes, int, int]]) -> bool:
    """Does the last token of ``stmt`` close the parenthesis its second token opens?"""
    level = 0
    for i, (tok, _, _) in enumerate(stmt[1:], 1):
        if tok == b"(":
            level += 1
        elif tok == b")":
            level -= 1
            if level == 0:
                return i == len(stmt) - 1
    return False


def _groups(head: list[bytes]) -> list[tuple[int, int]]:
    """(open, close) indexes of the top-level parenthesised groups of ``head``."""
    out = []
    level = 0
    open_at = 0
    for i, tok in enumerate(head):
        if tok == b"(":
            if level == 0:
                open_at = i
            level += 1
        elif tok == b")" and level:
            level -= 1
            if level == 0:
                out.append((open_at, i))
    return out


def _is_function_header(stmt: list[tuple[bytes, int, int]]) -> bool:
    """Is ``stmt`` (depth-0 tokens ending in a brace block) a function definition?"""
    toks = [t for t, _, _ in stmt]
    if b"{" not in toks:
        return False
    head = toks[: toks.index(b"{")]
    if not head or head[-1] != b")" or not _groups(head):
        return False
    level = 0
    for tok in head:  # an initialiser has '=' outside parentheses
        level += (tok == b"(") - (tok == b")")
        if tok == b"=" and level == 0:
            return False
    return not (head[0] in _TYPE_KEYWORDS and len(head) > 1 and head[2:3] == [b"{"])


def _emit_function(stmt, lo: int, hi: int, emit) -> None:
    toks = [t for t, _, _ in stmt]
    head = toks[: toks.index(b"{")]
    groups = _groups(head)
    first_open = groups[0][0]
    words_before = [t for t in head[:first_open] if _is_word(t)]
    callee = head[first_open - 1].decode("utf-8", "replace") if first_open > 0 else "?"
    if len(groups) == 1 and (first_open == 1 or (
            _is_macro_name(callee) and len(words_before) == len(head[:first_open]))):
        # MACRO(name, ...) { ... }
        arg = head[first_open + 1] if _is_word(head[first_open + 1]) else b""
        name = _macro_name(callee, arg.decode("utf-8", "replace"))
        emit("function", name, b"static" in head[:first_open], lo, hi, callee)
        return
    open_at = groups[-1][0]
    if open_at > 0 and _is_word(head[open_at - 1]):
        at = open_at - 1
    else:  # int (*getfn(void))(int): the name is inside the first group
        at = next((i for i in range(first_open + 1, len(head) - 1)
                   if _is_word(head[i]) and head[i + 1] == b"("), first_open - 1)
    name = head[at].decode("utf-8", "replace") if at >= 0 else "?"
    emit("function", name, b"static" in head[:at], lo, hi)


def _emit_declaration(stmt, lo: int, hi: int, data: bytes, emit) -> None:
    made = macro_variable(data[lo:hi])
    if made is not None:  # static DEFINE_PER_CPU(struct rq, runqueues);
        emit(made[0], made[1], made[2], lo, hi, made[3])
        return
    toks = [t for t, _, _ in stmt]
    short = short_text(data[lo:hi])
    static = b"static" in toks
    if toks[0] == b"typedef":
        words = [t for t in toks if _is_word(t) and t not in _C_KEYWORDS]
        emit("typedef", words[-1].decode() if words else "?", False, lo, hi)
        return
    if len(toks) > 2 and toks[0] in _TYPE_KEYWORDS and b"{" in toks[1:3] and toks[-2] == b"}":
        tag = toks[1].decode() if toks[1] != b"{" else "<anonymous>"
        emit("type", f"{toks[0].decode()} {tag}", False, lo, hi)
        return
    if len(toks) > 1 and _is_word(toks[0]) and toks[1] == b"(":
        emit("statement", short, False, lo, hi)
        return
    stop = len(toks)
    for i, t in enumerate(toks):
        if t in (b"=", b"[", b";", b","):
            stop = i
            break
    head = toks[:stop]
    if b"(" in head and b"=" not in toks:
        paren = head.index(b"(")
        name = head[paren - 1] if paren > 0 and _is_word(head[paren - 1]) else b"?"
        text_name = name.decode("utf-8", "replace")
        arg = toks[paren + 1] if paren + 1 < len(toks) else b""
        if _is_macro_name(text_name) and _is_word(arg):
            # static DEFINE_HASHTABLE(table, 6); defines a variable through a macro
            emit("variable", arg.decode("utf-8", "replace"), static, lo, hi, text_name)
            return
        emit("prototype", text_name, static, lo, hi)
        return
    words = [t for t in head if _is_word(t)]
    emit("variable", words[-1].decode("utf-8", "replace") if words else short, static, lo, hi)




class Lexed:
    """Lexical scans of the regions of one text, remembered; scans of regions whose
    text was seen before (in an earlier version of the file) are reused."""

    _shared: OrderedDict[bytes, tuple] = OrderedDict()
    _limit = 4096

    def __init__(self, offsets: list[int]):
        self.offsets = offsets  # where each line starts
        self.local: dict[tuple[int, int], tuple[list[Item], bool]] = {}

    def __call__(self, src: bytes, start: int, end: int) -> tuple[list[Item], bool]:
        got = self.local.get((start, end))
        if got is not None:
            return got
        region = src[start:end]
        key = hashlib.blake2b(region, digest_size=16).digest()
        shared = self._cached(key)
        if shared is None:
            shared = _chunked(region) if len(region) > _CHUNKED else None
            if shared is None:
                items, clean = _lexical_items(region, 0, len(region))
                shared = ([_row(it) for it in items], clean)
            self._keep(key, shared)
        shift = bisect_right(self.offsets, start) - 1  # lines before the region's line
        got = ([Item(k, n, st, a + start, b + start, l1 + shift, l2 + shift, fp, m, c, w)
                for k, n, st, a, b, l1, l2, fp, m, c, w in shared[0]], shared[1])
        self.local[(start, end)] = got
        return got

    @classmethod
    def _cached(cls, key: bytes):
        found = cls._shared.get(key)
        if found is not None:
            cls._shared.move_to_end(key)
        return found

    @classmethod
    def _keep(cls, key: bytes, value) -> None:
        cls._shared[key] = value
        if len(cls._shared) > cls._limit:
            cls._shared.popitem(last=False)


_CHUNKED = 32 * 1024  # a region larger than this is scanned in chunks, each remembered
# where a chunk may end: after a line that is only a closing brace (the end of a
# top-level function or type in most C), seen with comments and strings blanked
_CHUNK_END = re.compile(rb"^\}[ \t]*;?[ \t]*\r?\n", re.M)


def _row(it: Item) -> tuple:
    return (it.kind, it.name, it.static, it.start_byte, it.end_byte, it.start_line, it.end_line,
            it.fingerprint, it.macro, it.code, it.within)


def _chunked(region: bytes) -> tuple[list[tuple], bool] | None:
    """The scan of a large region as a sequence of chunks that end where the scan is
    at rest, each looked up by its text and the conditionals open before it, so that
    an edit re-scans the chunk it falls in, not the region.  None when a chunk does not
    end at rest (the region is scanned whole instead)."""
    cuts = [m.end() for m in _CHUNK_END.finditer(mask(region))]
    bounds, last = [0], 0
    for cut in cuts:  # chunks of at least a few KB
        if cut - last >= 4096 and len(region) - cut >= 4096:
            bounds.append(cut)
            last = cut
    if len(bounds) < 2:
        return None
    bounds.append(len(region))
    rows: list[tuple] = []
    state: State = ((), (), ())
    clean = True
    lines = 0
    for i, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
        chunk = region[lo:hi]
        key = hashlib.blake2b(chunk, digest_size=16).digest() + repr(state).encode()
        got = Lexed._cached(key)
        if got is None:
            items, ok, after, at_rest = _scan(chunk, 0, len(chunk), state)
            got = ([_row(it) for it in items], ok, after, at_rest)
            Lexed._keep(key, got)
        chunk_rows, clean, after, at_rest = got
        if not at_rest and i < len(bounds) - 2:
            return None
        rows += [(k, n, st, a + lo, b + lo, l1 + lines, l2 + lines, fp, m, c, w)
                 for k, n, st, a, b, l1, l2, fp, m, c, w in chunk_rows]
        lines += chunk.count(b"\n")
        state = after
    return rows, clean

