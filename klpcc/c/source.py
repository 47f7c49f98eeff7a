"""The incremental source: a C file parsed once and kept in step with line edits.

A :class:`CSource` follows line edits through tree-sitter's incremental parser;
:meth:`CSource.edit` returns only the items an edit can have changed, before and
after, so the cost of following a series grows with the size of its diffs rather
than with the size of the files.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import accumulate

from tree_sitter import Tree

from .items import Item, _collect, _first_child_ending_after
from .language import mask_annotations, parse_without, table_spans
from .lexical import Lexed


@dataclass(frozen=True, slots=True)
class LineEdit:
    """Lines ``old_start .. old_start+old_count`` replaced by ``new_count`` lines that
    start at ``new_start`` (0-based line indexes in the old and in the new file)."""

    old_start: int
    old_count: int
    new_start: int
    new_count: int


def split_lines(data: bytes) -> list[bytes]:
    """Lines of ``data``, each with its ``\n``; only ``\n`` ends a line (as in diffs)."""
    parts = data.split(b"\n")
    lines = [p + b"\n" for p in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def line_offsets(lines: Sequence[bytes]) -> list[int]:
    return list(accumulate(map(len, lines), initial=0))


#: Parse every edited file afresh and compare all its items (the reference that the
#: incremental answers are tested against; never faster).
REFERENCE = False


class CSource:
    """A C file parsed once and kept in step with its edits."""

    __slots__ = ("path", "data", "tree", "_offsets", "_masked", "_tables", "_all", "_lexed")

    def __init__(self, path: str, lines: Sequence[bytes]):
        self.path = path
        self.data = b"".join(lines)
        masked = mask_annotations(self.data)
        self._offsets = line_offsets(lines)
        self._tables = table_spans(masked)
        self.tree: Tree = parse_without(masked, self._tables)
        # the masked text (same offsets as the text): it follows line edits line by line
        self._masked: bytes = masked
        self._all: list[Item] | None = None  # every item, once computed
        self._lexed = Lexed(self._offsets)

    # -- queries ---------------------------------------------------------------

    def items(self, ranges: Sequence[tuple[int, int]] | None = None) -> list[Item]:
        """Items touching any of the byte ranges (inclusive ends), or all items."""
        root = self.tree.root_node
        out: list[Item] = []
        if ranges is None:
            if self._all is None:
                _collect(root, self.data, 0, len(self.data), out, self._lexed)
                self._all = out
            return list(self._all)
        seen: set[int] = set()
        for lo, hi in _merge(ranges):
            found: list[Item] = []
            _collect(root, self.data, lo, hi, found, self._lexed)
            for item in found:
                if item.start_byte not in seen:
                    seen.add(item.start_byte)
                    out.append(item)
        out.sort(key=lambda it: it.start_byte)
        return out

    def functions(self) -> list[Item]:
        return [it for it in self.items() if it.kind == "function"]

    # -- edits -----------------------------------------------------------------

    def edit(self, new_lines: Sequence[bytes], edits: Sequence[LineEdit]) -> tuple[list[Item], list[Item]]:
        """Move to ``new_lines``; return (items before, items after) of the region
        the edits can have changed.  Items outside both lists are unchanged."""
        old_data, old_offsets = self.data, self._offsets
        new_data = b"".join(new_lines)
        new_offsets = line_offsets(new_lines)
        blocks = [
            (
                old_offsets[e.old_start],
                old_offsets[e.old_start + e.old_count],
                new_offsets[e.new_start],
                new_offsets[e.new_start + e.new_count],
            )
            for e in edits
        ]
        old_tree = self.tree
        edited = old_tree.copy()
        for (o0, o1, n0, n1), e in zip(blocks, edits):
            edited.edit(
                start_byte=n0,
                old_end_byte=n0 + (o1 - o0),
                new_end_byte=n1,
                start_point=(e.new_start, 0),
                old_end_point=_point(old_data, old_offsets, e.old_start + e.old_count,
                                     row_shift=e.new_start - e.old_start),
                new_end_point=_point(new_data, new_offsets, e.new_start + e.new_count),
            )
        masked_data = _follow(self._masked, old_offsets, new_lines, edits)
        tables = table_spans(masked_data)
        # tables left out of the parse that change with the edit are the parser's
        # included ranges changing: it parses again where they differ, and says so in
        # the changed ranges
        new_tree = parse_without(masked_data, tables, edited)
        changed = [(r.start_byte, r.end_byte) for r in edited.changed_ranges(new_tree)]
        old_edits = [(o0, o1) for o0, o1, _, _ in blocks]
        new_edits = [(n0, n1) for _, _, n0, n1 in blocks]

        old_src = CSource.__new__(CSource)
        old_src.path, old_src.data, old_src.tree = self.path, old_data, old_tree
        old_src._offsets, old_src._masked, old_src._tables = old_offsets, self._masked, self._tables
        old_src._all, old_src._lexed = self._all, self._lexed
        self.data, self._offsets, self._masked, self._tables = new_data, new_offsets, masked_data, tables
        self._all, self._lexed = None, Lexed(new_offsets)

        def afresh() -> tuple[list[Item], list[Item]]:
            # Error recovery is not the same in an incremental parse as in a fresh
            # one.  Where it can matter, parse afresh and compare every item, so that
            # what is found never depends on the history of edits.  (Comparing only
            # where tree-sitter's changed ranges between the old tree and the fresh
            # one say misses items: an unbalanced '#ifdef' moves conditionals the
            # ranges do not cover.)
            self.tree = parse_without(masked_data, tables)
            return _difference(old_src.items(), self.items())

        # errors near the edits or near what the parser changed, on either side
        mapper = _Mapper(blocks)
        if REFERENCE or _errors_near(old_tree, old_edits + [mapper.to_old(a, b) for a, b in changed]) \
                or _errors_near(new_tree, new_edits + changed):
            return afresh()
        self.tree = new_tree
        before, after = self._around(old_src, old_tree, mapper, old_edits, new_edits + changed, changed)
        if _read_lexically(old_src._lexed, old_edits) or _read_lexically(self._lexed, new_edits):
            # an edit in a region read lexically (the siblings after a node the parser
            # recovered in, up to where braces balance): how far that region reaches,
            # and so what the items after it are, can change far from the edit
            return afresh()
        return before, after

    def _around(self, old_src: CSource, old_tree: Tree, mapper: _Mapper,
                old_edits: list[tuple[int, int]], new_edits: list[tuple[int, int]],
                changed: list[tuple[int, int]]) -> tuple[list[Item], list[Item]]:
        """The items of ``old_src`` and of this source around the edits and the
        changed ranges, widened until each side covers the other."""
        # an edited '#if' line changes the context of every item of its conditional
        old_edits = old_edits + _conditionals_edited(old_tree, old_src.data, old_edits)
        new_edits = new_edits + _conditionals_edited(self.tree, self.data, new_edits)
        old_ranges = old_edits + [mapper.to_old(a, b) for a, b in changed]
        while True:
            before = old_src.items(old_ranges)
            widened_old = old_ranges + [(it.start_byte, it.end_byte) for it in before]
            new_ranges = new_edits + [mapper.to_new(a, b) for a, b in widened_old]
            after = self.items(new_ranges)
            back = [mapper.to_old(it.start_byte, it.end_byte) for it in after]
            if _covered(back, widened_old):
                return before, after
            old_ranges = widened_old + back


_DIRECTIVE = re.compile(rb"^[ \t]*#[ \t]*(?:if|ifdef|ifndef|elif|elifdef|elifndef|else|endif)\b", re.M)
_CHAIN_HEADS = frozenset({"preproc_if", "preproc_ifdef"})


def _conditionals_edited(tree: Tree, data: bytes, ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Spans of the conditionals whose directives the edits in ``ranges`` touch: the
    innermost '#if' chain around each such edit, and every chain starting in it."""
    out: list[tuple[int, int]] = []
    for lo, hi in ranges:
        line_start = data.rfind(b"\n", 0, lo) + 1
        if not _DIRECTIVE.search(data, line_start, max(hi, lo + 1)):
            continue
        node, inner = tree.root_node, None
        while True:  # down to the innermost chain around the edit
            child = _first_child_ending_after(node, lo)
            if child is None or child.start_byte > lo or child.end_byte < hi:
                break
            if child.type in _CHAIN_HEADS:
                inner = child
            node = child
        if inner is not None:
            out.append((inner.start_byte, inner.end_byte))
        stack = [tree.root_node]
        while stack:  # chains that start inside the edit
            n = stack.pop()
            for c in n.children:
                if c.end_byte < lo or c.start_byte > hi:
                    continue
                if c.type in _CHAIN_HEADS and c.start_byte >= line_start:
                    out.append((c.start_byte, c.end_byte))
                elif c.type in _CHAIN_HEADS or c.type in ("preproc_else", "preproc_elif", "preproc_elifdef"):
                    stack.append(c)
    return out


def _errors_near(tree: Tree, ranges: Sequence[tuple[int, int]]) -> bool:
    """Does any top-level node touching the ranges hold a parse error?"""
    root = tree.root_node
    if not root.has_error:
        return False
    for lo, hi in _merge(ranges):
        node = _first_child_ending_after(root, lo - 1) if lo > 0 else root.child(0)
        while node is not None and node.start_byte <= hi:
            if node.has_error:
                return True
            node = node.next_sibling
    return False


def _read_lexically(lexed: Lexed, edits: Sequence[tuple[int, int]]) -> bool:
    """Does an edit touch a region that was read lexically?"""
    return any(lo <= hi2 and hi >= lo2 for lo2, hi2 in lexed.local for lo, hi in edits)


def _difference(old: list[Item], new: list[Item]) -> tuple[list[Item], list[Item]]:
    """The items of ``old`` and of ``new`` that the other has not (as multisets of
    kind, name, storage and fingerprint)."""
    return _missing_from(old, new), _missing_from(new, old)


def _missing_from(items: list[Item], other: list[Item]) -> list[Item]:
    def key(it: Item) -> tuple:
        return (it.kind, it.name, it.static, it.fingerprint)

    left = Counter(key(it) for it in other)
    out = []
    for it in items:
        k = key(it)
        if left[k]:
            left[k] -= 1
        else:
            out.append(it)
    return out


def _follow(old_masked: bytes, old_offsets: Sequence[int], new_lines: Sequence[bytes],
            edits: Sequence[LineEdit]) -> bytes:
    """The masked text of the new lines: unchanged lines keep their masked form, the
    lines the edits bring in are masked afresh.  Masking is line by line but for a
    directive's continuation lines (left as written, like the directive): where an
    edit touches a line ending in a backslash, the whole text is masked afresh."""
    def continues(line: bytes) -> bool:
        return line.rstrip(b"\r\n").endswith(b"\\")

    for e in edits:
        near = new_lines[max(e.new_start - 1, 0):e.new_start + e.new_count]
        gone = old_masked[old_offsets[max(e.old_start - 1, 0)]:old_offsets[e.old_start + e.old_count]]
        if any(continues(ln) for ln in near) or any(continues(ln) for ln in split_lines(gone)):
            return mask_annotations(b"".join(new_lines))
    out: list[bytes] = []
    pos = 0
    for e in edits:
        out.append(old_masked[old_offsets[pos]:old_offsets[e.old_start]])
        # one call for the lines of an edit: no pattern of the mask spans a line here
        out.append(mask_annotations(b"".join(new_lines[e.new_start:e.new_start + e.new_count])))
        pos = e.old_start + e.old_count
    out.append(old_masked[old_offsets[pos]:])
    return b"".join(out)


def _point(data: bytes, offsets: list[int], line: int, row_shift: int = 0) -> tuple[int, int]:
    """(row, column) of the start of ``line``, or of the end of an unterminated last line."""
    if line < len(offsets) - 1 or not data or data.endswith(b"\n"):
        return (line + row_shift, 0)
    # end of a last line with no newline
    last_start = offsets[line - 1]
    return (line - 1 + row_shift, len(data) - last_start)


def _merge(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def _covered(ranges: Iterable[tuple[int, int]], by: Iterable[tuple[int, int]]) -> bool:
    cover = _merge(by)
    starts = [lo for lo, _ in cover]
    for lo, hi in ranges:
        i = bisect_right(starts, lo) - 1
        if i < 0 or cover[i][1] < hi:
            return False
    return True


class _Mapper:
    """Maps byte positions between the old and the new text of a set of line edits."""

    def __init__(self, blocks: Sequence[tuple[int, int, int, int]]):
        self.blocks = list(blocks)
        self.old_starts = [b[0] for b in self.blocks]
        self.new_starts = [b[2] for b in self.blocks]

    def _map(self, pos: int, starts: list[int], src: int, dst: int, end: bool) -> int:
        i = bisect_right(starts, pos) - 1
        if i < 0:
            return pos
        block = self.blocks[i]
        s0, s1 = block[src], block[src + 1]
        d0, d1 = block[dst], block[dst + 1]
        if pos < s1 or (pos == s1 and not end and s0 == s1):
            return d1 if end else d0
        return pos - s1 + d1

    def to_new(self, lo: int, hi: int) -> tuple[int, int]:
        return self._map(lo, self.old_starts, 0, 2, False), self._map(hi, self.old_starts, 0, 2, True)

    def to_old(self, lo: int, hi: int) -> tuple[int, int]:
        return self._map(lo, self.new_starts, 2, 0, False), self._map(hi, self.new_starts, 2, 0, True)

