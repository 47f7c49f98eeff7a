"""Gather what a review report shows, from a series (:func:`from_series`) or from a
bundle (:func:`from_bundle`), into a :class:`~.model.Review`."""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from .. import __version__
from ..c import CSource, Item, is_c_file, split_lines
from ..diffs import parse_patch
from ..errors import KlpccError
from ..history import ADDED, DROPPED, MODIFIED, NOP, Analysis, item_key
from ..lint.rules import RULES
from ..manifest import Bundle, Change, Finding, lint_sections
from ..report import change_of
from ..series import Patch, release_name
from .model import MAX_COLUMNS, DiffLine, Edge, Excerpt, FindingView, FunctionDiff, Review, Row

if TYPE_CHECKING:
    from ..lint import LintResult
    from ..objects import ObjectReport

MAX_DIFF_LINES = 400  # per function; the rest is counted, not shown
_WHOLE_HUNK = 120  # longer hunks show windows around the lines linked to
_WINDOW = 12

Texts = Callable[[str], tuple[bytes | None, bytes | None]]  # path -> (base, release)
Span = tuple[int, int] | None
# a change -> its lines in the base and in the release (None: it has none there), when
# they are known without parsing; None: parse both versions to find them
Spans = Callable[[Change], tuple[Span, Span] | None]


# --------------------------------------------------------------------------- patches


class _Patches:
    """The patches of the series (the ones that can be read) and the parts of them the
    report links to."""

    def __init__(self, releases: tuple[str, ...], read: Callable[[int], Patch | None],
                 release_of: Callable[[str], int | None], exists: Callable[[str], bool] | None = None):
        self.releases = releases
        self._read = read
        self.release_of = release_of  # a patch file's path, as shown -> its release
        self._exists = exists  # does the base have this path (to tell -p0 from -p1)
        self._lines: dict[int, tuple[str, list[str]] | None] = {}
        self._patch: dict[int, Patch] = {}
        self.marks: dict[int, set[int]] = {}

    def lines(self, release: int) -> tuple[str, list[str]] | None:
        if release not in self._lines:
            got = self._read(release)
            self._lines[release] = None if got is None else (
                got.path, [ln.decode("utf-8", "replace").rstrip("\r") for ln in got.data.split(b"\n")])
            if got is not None:
                self._patch[release] = got
        return self._lines[release]

    def mark(self, release: int, line: int | None) -> str | None:
        """The id of patch line ``line`` of ``release`` (None: no such line to show)."""
        if line is None or not 0 < release <= len(self.releases):
            return None
        got = self.lines(release)
        if got is None or not 0 < line <= len(got[1]):
            return None
        self.marks.setdefault(release, set()).add(line)
        return line_id(release, line)

    def text(self, release: int, line: int) -> str | None:
        got = self.lines(release)
        return None if got is None or not 0 < line <= len(got[1]) else got[1][line - 1]

    def excerpts(self) -> list[Excerpt]:
        out: list[Excerpt] = []
        for release in sorted(self.marks):
            got = self.lines(release)
            assert got is not None
            patch, lines = got
            sections = _sections(self._patch[release], lines, self._exists)
            groups: dict[tuple[int, int, int, str | None], set[int]] = {}
            for m in sorted(self.marks[release]):
                groups.setdefault(_section_of(sections, m - 1, len(lines)), set()).add(m)
            for (first, hunk, end, file), marks in sorted(groups.items()):
                shown = _shown(first, hunk, end, marks)
                out.append(Excerpt(anchor=f"x{release}-{first + 1}", release=release, patch=patch, file=file,
                                   lines=tuple((None if i is None else i + 1,
                                                f"⋯ {-gap} line(s)" if i is None else lines[i])
                                               for i, gap in shown),
                                   marked=frozenset(marks)))
        return out


def line_id(release: int, line: int) -> str:
    return f"p{release}-{line}"


def _sections(patch: Patch, lines: list[str], exists: Callable[[str], bool] | None
              ) -> list[tuple[int, int, int, str | None]]:
    """The hunks of a patch, as the diff reader reads it: (first line shown, hunk
    header, end, file), 0-based and ``end`` exclusive; ``first`` is the file's diff
    header for its first hunk."""
    try:
        changes = parse_patch(patch, exists)
    except KlpccError:  # it was read when the series was; a bundle's copy is checked by its hash
        return []
    out: list[tuple[int, int, int, str | None]] = []
    for fc in changes:
        for i, h in enumerate(fc.hunks):
            end = max((line for _, _, line in h.lines), default=h.patch_line)  # 1-based last = 0-based end
            while end < len(lines) and lines[end].startswith("\\"):  # "\ No newline at end of file"
                end += 1
            out.append(((fc.patch_line if i == 0 else h.patch_line) - 1, h.patch_line - 1, end, fc.path))
    return out


def _section_of(sections: list[tuple[int, int, int, str | None]], i: int, n: int
                ) -> tuple[int, int, int, str | None]:
    for sec in sections:
        if sec[0] <= i < sec[2]:
            return sec
    # not in a hunk (a rename, a binary change): a few lines around it
    return (max(0, i - 2), max(0, i - 2), min(n, i + 3), None)


def _shown(first: int, hunk: int, end: int, marks: Iterable[int]) -> list[tuple[int | None, int]]:
    """The lines of a section to show (0-based), and gaps as (None, -count)."""
    if end - first <= _WHOLE_HUNK:
        return [(i, 0) for i in range(first, end)]
    keep = set(range(first, min(end, hunk + 1)))
    for m in marks:
        keep.update(range(max(first, m - 1 - _WINDOW), min(end, m + _WINDOW)))
    out: list[tuple[int | None, int]] = []
    prev = first - 1
    for i in sorted(keep):
        if i > prev + 1:
            out.append((None, -(i - prev - 1)))
        out.append((i, 0))
        prev = i
    if prev < end - 1:
        out.append((None, -(end - 1 - prev)))
    return out


# --------------------------------------------------------------------------- function diffs


class _Code:
    """Each function's text in the base and in the release."""

    def __init__(self, texts: Texts, spans: Spans | None = None, others: Iterable[str] = ()):
        self._texts = texts
        self._spans = spans
        self._others = tuple(others)  # where else a function's base definition may be (it moved)
        self._lines: dict[tuple[int, str], list[bytes] | None] = {}
        self._items: dict[tuple[int, str], list[Item]] = {}

    def _file(self, side: int, path: str) -> list[bytes] | None:
        if (side, path) not in self._lines:
            data = self._texts(path)[side]
            self._lines[(side, path)] = None if data is None else split_lines(data)
        return self._lines[(side, path)]

    def _text(self, lines: list[bytes], start: int, end: int) -> list[tuple[int, str]]:
        return [(n, lines[n - 1].decode("utf-8", "replace").rstrip("\r\n"))
                for n in range(start, min(end, len(lines)) + 1)]

    def lines(self, side: int, path: str, key: str) -> list[tuple[int, str]]:
        """The lines of every definition of ``key`` in ``path`` (each #if variant)."""
        lines = self._file(side, path)
        if lines is None:
            return []
        if (side, path) not in self._items:
            self._items[(side, path)] = CSource(path, lines).items() if is_c_file(path) else []
        out: list[tuple[int, str]] = []
        for it in sorted((it for it in self._items[(side, path)] if item_key(path, it) == key),
                         key=lambda it: it.start_line):
            out.extend(self._text(lines, it.start_line, it.end_line))
        return out

    def _sides(self, change: Change) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
        key = change.key or change.name
        files = change.files or ((change.file,) if change.file else ())
        known = self._spans(change) if self._spans is not None and len(files) == 1 else None
        if known is None:
            a = [ln for f in files for ln in self.lines(0, f, key)]
            if not a and change.change != ADDED:  # it moved here from another file
                a = next((got for f in self._others if f not in files and (got := self.lines(0, f, key))), [])
            return a, [ln for f in files for ln in self.lines(1, f, key)]
        out: list[list[tuple[int, str]]] = []
        for side, span in enumerate(known):
            lines = self._file(side, files[0]) if span is not None else None
            out.append([] if lines is None or span is None else self._text(lines, *span))
        return out[0], out[1]

    def diff(self, change: Change) -> FunctionDiff:
        try:
            a, b = self._sides(change)
        except KlpccError as exc:
            return FunctionDiff(note=_NOTES.get(change.change) or f"no diff: {exc}")
        note = _NOTES.get(change.change)
        if not a and not b:
            return FunctionDiff(note=note or "no diff: neither the base nor the release has its code here")
        out: list[DiffLine] = []
        sm = difflib.SequenceMatcher(None, [t for _, t in a], [t for _, t in b], autojunk=False)
        for group in sm.get_grouped_opcodes(3):
            i1, j1 = group[0][1], group[0][3]
            i2, j2 = group[-1][2], group[-1][4]
            start_a = a[i1][0] if i1 < len(a) else (a[-1][0] + 1 if a else 0)
            start_b = b[j1][0] if j1 < len(b) else (b[-1][0] + 1 if b else 0)
            out.append(DiffLine("@", f"@@ -{start_a},{i2 - i1} +{start_b},{j2 - j1} @@"))
            for tag, x1, x2, y1, y2 in group:
                if tag == "equal":
                    out.extend(DiffLine(" ", t) for _, t in a[x1:x2])
                    continue
                out.extend(DiffLine("-", t) for _, t in a[x1:x2])
                out.extend(DiffLine("+", t) for _, t in b[y1:y2])
        if not out:
            note = note or "the same text in the base and in the release"
        return FunctionDiff(lines=tuple(out[:MAX_DIFF_LINES]), note=note,
                            omitted=max(0, len(out) - MAX_DIFF_LINES))


_NOTES = {
    NOP: "back to the base's code: the patch carries a nop, which reverts the earlier releases' change",
    DROPPED: "an earlier release added it and this one removes it again: nothing to carry, nothing to revert",
}


# --------------------------------------------------------------------------- the review


def _compiled(objects: dict | None) -> dict[tuple[str, str | None], tuple[str, str]]:
    out: dict[tuple[str, str | None], tuple[str, str]] = {}
    for f in (objects or {}).get("functions", ()):
        out.setdefault((f["function"], f.get("file")), (f["what"], f["reason"]))
        out.setdefault((f["function"], None), (f["what"], f["reason"]))
    return out


def _edges(rows: Iterable[Row], index: dict[str, int]) -> tuple[Edge, ...]:
    pairs: dict[tuple[int, int], list[str]] = {}
    for row in rows:
        touched = [index[t] for t in row.change.touched if t in index]
        for earlier, later in zip(touched, touched[1:]):
            pairs.setdefault((earlier, later), []).append(row.change.key or row.change.name)
    return tuple(Edge(e, lt, tuple(fns)) for (e, lt), fns in sorted(pairs.items()))


def _build(*, origin: str, from_bundle: bool, base: dict, releases: tuple[str, ...], release: int,
           installed: int | None, functions: list[Change], outside: list[Change],
           links: Callable[[Change, _Patches], dict[int, str]], patches: _Patches, texts: Texts,
           spans: Spans | None, others: Iterable[str],
           findings: tuple[Finding, ...] | None, lint_against: tuple[str, ...], lint_notes: tuple[str, ...],
           objects: dict | None, warnings: tuple[str, ...], notes: tuple[str, ...],
           carries_patches: bool = True) -> Review:
    code = _Code(texts, spans, others)
    compiled = _compiled(objects)
    rows: list[Row] = []
    for i, ch in enumerate(functions, 1):
        rows.append(Row(anchor=f"fn{i}", change=ch, links=links(ch, patches), diff=code.diff(ch),
                        compiled=compiled.get((ch.name, ch.file)) or compiled.get((ch.name, None))))
    outside_rows = [Row(anchor=f"item{i}", change=ch, links=links(ch, patches))
                    for i, ch in enumerate(outside, 1)]
    index = {name: i for i, name in enumerate(releases, 1)}
    by_function: dict[tuple[str, str | None], str] = {}
    for row in rows:
        by_function.setdefault((row.change.name, row.change.file), row.anchor)
        by_function.setdefault((row.change.name, None), row.anchor)
    named = Counter(row.change.name for row in rows)
    views: tuple[FindingView, ...] | None = None
    if findings is not None:
        rules = {r.id: r for r in RULES}
        out = []
        for f in findings:
            link = text = None
            if f.patch is not None and f.patch_line is not None:
                r = patches.release_of(f.patch) or index.get(release_name(f.patch))
                if r is not None:
                    link = patches.mark(r, f.patch_line)
                    text = patches.text(r, f.patch_line) if link else None
            if link is None and f.function is not None:
                link = by_function.get((f.function, f.file))
                if link is None and named[f.function] == 1:
                    link = by_function.get((f.function, None))
            out.append(FindingView(f, rules.get(f.rule), link, text))
        views = tuple(out)
    return Review(
        generator=f"klpcc {__version__}", origin=origin, from_bundle=from_bundle, base=dict(base),
        releases=releases, release=release, installed=installed, functions=tuple(rows),
        outside=tuple(outside_rows), findings=views, lint_against=lint_against, lint_notes=lint_notes,
        objects=objects, edges=_edges(rows, index), excerpts=tuple(patches.excerpts()),
        warnings=warnings, notes=notes, carries_patches=carries_patches)


def from_series(analysis: Analysis, lint: LintResult | None = None, objects: ObjectReport | None = None
                ) -> Review:
    """The review of an analysis (its replay must have kept the release's files), with
    the lint of the release and the object-level check when they were run."""
    from ..lint.output import lint_json
    from ..objects.report import to_json as objects_json

    rep = analysis.replay
    names = tuple(rep.releases)
    release = analysis.release
    paths = {p.path: i for i, p in enumerate(rep.series.patches, 1)}

    patches = _Patches(names, lambda r: rep.series.patches[r - 1], paths.get, rep.base.exists)

    def links(ch: Change, pt: _Patches) -> dict[int, str]:
        track = rep.functions.get(ch.key or "") or rep.outside.get(ch.key or "")
        out: dict[int, str] = {}
        if track is None:
            return out
        for c in track.changes:
            if c.release <= release - MAX_COLUMNS:  # a column the page does not show
                continue
            if c.release <= release and names[c.release - 1] in ch.touched and c.release not in out:
                anchor = pt.mark(c.release, c.patch_line)
                if anchor is not None:
                    out[c.release] = anchor
        return out

    def texts(path: str) -> tuple[bytes | None, bytes | None]:
        try:
            now = rep.snapshots.read(path, release)
        except KeyError:
            raise KlpccError(f"{path} as release {release} has it was not kept") from None
        return rep.base.read(path), now

    def spans(ch: Change) -> tuple[Span, Span] | None:
        """The replay's spans of a function with one definition on each side: in the
        base (as it read the base) and in the release (the analysis's)."""
        track = rep.functions.get(ch.key or "")
        if track is None or len(track.base_signature) > 1 or len(track.signature(release)) > 1:
            return None
        if track.base_signature and set(track.base_files) != {ch.file}:  # it moved: parse
            return None
        base_span = rep.base_spans.get(track.key) if track.base_signature else None
        if track.base_signature and base_span is None:
            return None
        if ch.change in (NOP, MODIFIED, ADDED):
            return (base_span, ch.lines) if ch.lines is not None else None
        return base_span, None

    findings = None
    against: tuple[str, ...] = ()
    lnotes: tuple[str, ...] = ()
    if lint is not None:
        section = lint_json(lint) | {"states": [], "callbacks": [], "shadow": []}  # the findings only
        findings = lint_sections(section)["lint"].findings
        against = tuple(lint.against)
        lnotes = tuple(lint.layout_notes) + tuple(lint.notes)
    return _build(
        origin=rep.series.origin, from_bundle=False, base=rep.base.identity(), releases=names,
        release=release, installed=analysis.installed,
        functions=[change_of(e, list(names)) for e in analysis.functions],
        outside=[change_of(e, list(names)) for e in analysis.outside], links=links, patches=patches,
        texts=texts,
        spans=spans, others=sorted({p for r in range(1, release + 1) for p in rep.files_touched.get(r, ())}),
        findings=findings, lint_against=against, lint_notes=lnotes,
        objects=None if objects is None else objects_json(objects),
        warnings=tuple(analysis.warnings), notes=tuple(analysis.notes))


def from_bundle(bundle: Bundle) -> Review:
    """The review of a bundle: what ``klpcc compile`` recorded, and the patches it
    carries (``patches/``; a bundle written without them has no hunks to link to)."""
    m = bundle.manifest
    names = tuple(m.releases)
    index = {name: i for i, name in enumerate(names, 1)}
    by_path = {p.path: index[p.release] for p in m.patches if p.release in index}
    def read(r: int) -> Patch | None:
        got = bundle.patch(r)
        return None if got is None else Patch(names[r - 1], got[0], got[1])

    known = {path for path, _ in m.base.files} | set(bundle.source_paths)
    patches = _Patches(names, read, by_path.get, known.__contains__)

    def links(ch: Change, pt: _Patches) -> dict[int, str]:
        if ch.patch is None or not ch.touched or ch.touched[-1] not in index:
            return {}
        r = index[ch.touched[-1]]
        anchor = pt.mark(r, ch.patch[1])
        return {} if anchor is None else {r: anchor}

    carried = set(bundle.source_paths)

    def texts(path: str) -> tuple[bytes | None, bytes | None]:
        if path not in carried:  # a file the release leaves as the base has it (a nop's, say)
            raise KlpccError(f"the bundle does not carry {path}")
        return bundle.base_source(path), bundle.source(path)

    return _build(
        origin=str(bundle.path), from_bundle=True, base=m.base.identity, releases=names,
        release=m.release_index,
        installed=None, functions=list(m.functions), outside=list(m.outside), links=links, patches=patches,
        texts=texts, spans=None, others=sorted(carried), findings=m.findings if m.lint is not None else None,
        lint_against=m.lint.against if m.lint is not None else (), lint_notes=(), objects=m.objects,
        warnings=m.warnings, notes=(), carries_patches=bool(m.patches))
