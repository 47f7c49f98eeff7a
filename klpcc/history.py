"""Stage 5: the history of every function (and every other top-level item) across
the releases of a series, and what follows from it.

:func:`replay` applies the series release by release.  Each touched C file is
parsed once; after that only the items an edit can have changed are looked at
again.  Every item has an identity -- a ``static`` function is ``file:name``, any
other function is its name (so a non-static function moved to another file with the
same body is unchanged), anything else outside functions is ``file:kind:name`` --
and a *signature* per release: the multiset of the fingerprints of its definitions
(one per ``#if`` branch that defines it).

:func:`analyse` turns that into the net change of a release against the base, the
nops an atomic replace must perform, and the transition from an installed release.
"""

from __future__ import annotations

import dataclasses
import hashlib
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .c import CSource, Item, LineEdit, is_c_file, split_lines
from .diffs import Applied, FileChange, apply_hunks, parse_patch
from .errors import KlpccError, max_input_bytes, too_large
from .series import Patch, Series
from .trees import BaseTree, Snapshots

if TYPE_CHECKING:
    import networkx as nx

# state of an item in one release, against the base
UNCHANGED, MODIFIED, ADDED, REMOVED, ABSENT = "unchanged", "modified", "added", "removed", "absent"
# what the cumulative patch of a release does with it
NOP, DROPPED = "nop", "dropped"
# transitions from an installed release
T_ADD, T_UPDATE, T_KEEP, T_NOP, T_DROP = "add", "update", "keep", "nop", "drop"

Signature = tuple[str, ...]


@dataclass(slots=True)
class Change:
    """An item's signature changed in ``release``."""

    release: int
    signature: Signature
    files: tuple[str, ...]
    patch: str
    patch_line: int | None


@dataclass(slots=True)
class Track:
    """One function or other top-level item, followed across the series."""

    key: str
    kind: str
    name: str
    static: bool
    macro: str | None = None
    base: Counter = field(default_factory=Counter)
    cur: Counter = field(default_factory=Counter)
    base_files: Counter = field(default_factory=Counter)
    cur_files: Counter = field(default_factory=Counter)
    changes: list[Change] = field(default_factory=list)
    # fingerprint -> (its code without #if branches, the branches)
    codes: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)

    @property
    def base_signature(self) -> Signature:
        return tuple(sorted(self.base.elements()))

    def signature(self, release: int) -> Signature:
        sig = self.base_signature
        for ch in self.changes:
            if ch.release > release:
                break
            sig = ch.signature
        return sig

    def files_at(self, release: int) -> tuple[str, ...]:
        files = tuple(sorted(self.base_files))
        for ch in self.changes:
            if ch.release > release:
                break
            files = ch.files
        return files

    def state(self, release: int) -> str:
        return classify(self.base_signature, self.signature(release))


def item_key(path: str, item: Item) -> str:
    """Identity of an item across the series: ``file:name`` for a static function,
    ``name`` for any other function, ``file:kind:name`` for anything else."""
    if item.kind == "function":
        return f"{path}:{item.name}" if item.static else item.name
    return f"{path}:{item.kind}:{item.name}"


def pick_variant(candidates: Iterable[Item], other: Iterable[str]) -> Item | None:
    """Of the definitions of one item in one version (one per ``#if`` branch), the one
    to show: the first whose fingerprint ``other`` (the signature of the version it is
    compared with) does not have -- the version that changed; for anything but a
    function, the fullest of them (a struct's definition, not its forward
    declarations)."""
    left = Counter(other)
    pool: list[Item] = []
    every = list(candidates)
    for it in every:
        if left[it.fingerprint] > 0:
            left[it.fingerprint] -= 1
        else:
            pool.append(it)
    pool = pool or every
    if not pool:
        return None
    if pool[0].kind == "function":
        return pool[0]
    return max(pool, key=lambda it: it.end_byte - it.start_byte)


def classify(base: Signature, sig: Signature) -> str:
    if not base:
        return ADDED if sig else ABSENT
    if not sig:
        return REMOVED
    return UNCHANGED if sig == base else MODIFIED


def combined(sig: Signature) -> str | None:
    """One fingerprint for a signature (several for a function defined per branch)."""
    if not sig:
        return None
    if len(sig) == 1:
        return sig[0]
    return hashlib.blake2b("+".join(sig).encode("utf-8", "surrogateescape"), digest_size=12).hexdigest()


@dataclass(frozen=True, slots=True)
class LineChanges:
    """What one release's patch did to the lines of one file: where each added line
    came from in the patch, which old lines it removed, and the edits between the
    previous version (of ``old_path``) and this one."""

    patch: str
    old_path: str | None  # the path the previous version had (a rename's source)
    edits: tuple[LineEdit, ...]
    added: dict[int, int]  # line in this release (1-based) -> patch line
    removed: dict[int, int]  # line in the previous version (1-based) -> patch line
    patch_line: int  # the file's diff header in the patch


@dataclass(slots=True)
class _File:
    path: str
    lines: list[bytes] | None  # None: the file does not exist
    src: CSource | None = None


@dataclass
class Replay:
    """The whole series, applied."""

    series: Series
    base: BaseTree
    functions: dict[str, Track]
    outside: dict[str, Track]
    snapshots: Snapshots
    notes: list[tuple[int, str]]  # (release, text): where hunks applied at an offset or with fuzz
    warnings: list[tuple[int, str]]  # (release, text)
    files_touched: dict[int, list[str]]  # release -> paths its patch changed
    base_spans: dict[str, tuple[int, int]] = field(default_factory=dict)  # key -> lines in base
    sources: dict[str, CSource] = field(default_factory=dict)  # C files as the last release has them
    # (release, path) -> what the release's patch did to the file's lines, in the order
    # it did it (a patch may change one file in several sections)
    line_changes: dict[tuple[int, str], list[LineChanges]] = field(default_factory=dict)

    @property
    def releases(self) -> list[str]:
        return self.series.names

    def warnings_upto(self, release: int) -> list[str]:
        return [text for r, text in self.warnings if r <= release]

    def notes_upto(self, release: int) -> list[str]:
        return [text for r, text in self.notes if r <= release]


class _Replayer:
    def __init__(self, series: Series, base: BaseTree, fuzz: int, keep: Iterable[int]):
        self.series = series
        self.base = base
        self.fuzz = fuzz
        self.files: dict[str, _File] = {}
        self.functions: dict[str, Track] = {}
        self.outside: dict[str, Track] = {}
        self.snapshots = Snapshots(frozenset(keep))
        self.notes: list[tuple[int, str]] = []
        self.warnings: list[tuple[int, str]] = []
        self._index = 0
        self.files_touched: dict[int, list[str]] = {}
        self._dirty: dict[int, Track] = {}
        self.base_spans: dict[str, tuple[int, int]] = {}
        self._origin: dict[str, tuple[str, int | None]] = {}
        self.line_changes: dict[tuple[int, str], list[LineChanges]] = {}

    # -- files ----------------------------------------------------------------

    def _file(self, path: str) -> _File:
        f = self.files.get(path)
        if f is None:
            data = self.base.read(path)
            if data is not None and len(data) > max_input_bytes():
                raise KlpccError(too_large(len(data)), file=path)
            if data is not None and is_c_file(path) and b"\0" in data:
                raise KlpccError("is not a C text file (it holds NUL bytes)", file=path)
            lines = None if data is None else split_lines(data)
            f = _File(path, lines)
            self.files[path] = f
            self.snapshots.record(path, 0, data)
            if lines is not None and is_c_file(path):
                f.src = CSource(path, lines)
            for item in self._items_of(f):
                self._add(path, item, base=True)
                track = self._track(path, item)
                self.base_spans.setdefault(track.key, (item.start_line, item.end_line))
                # the file was as in the base in every earlier release: the item was
                # part of what those releases had too
                for ch in track.changes:
                    ch.signature = tuple(sorted((*ch.signature, item.fingerprint)))
                    ch.files = tuple(sorted(set(ch.files) | {path}))
        return f

    @staticmethod
    def _items_of(f: _File) -> list[Item]:
        """Every item of a file: its C items, or the file itself when it is not C."""
        if f.lines is None:
            return []
        if f.src is not None:
            return f.src.items()
        data = b"".join(f.lines)
        digest = hashlib.blake2b(data, digest_size=12).hexdigest()
        return [Item("file", f.path, False, 0, len(data), 1, max(len(f.lines), 1), digest)]

    def exists(self, path: str) -> bool:
        f = self.files.get(path)
        if f is not None:
            return f.lines is not None
        return self.base.exists(path)

    # -- items ----------------------------------------------------------------

    def _track(self, path: str, item: Item) -> Track:
        key = item_key(path, item)
        table = self.functions if item.kind == "function" else self.outside
        track = table.get(key)
        if track is None:
            track = Track(key, item.kind, item.name, item.static, item.macro)
            table[key] = track
        elif item.macro and not track.macro:
            track.macro = item.macro
        return track

    def _add(self, path: str, item: Item, base: bool = False) -> None:
        track = self._track(path, item)
        track.codes[item.fingerprint] = (item.code or item.fingerprint, item.within)
        if base:
            track.base[item.fingerprint] += 1
            track.base_files[path] += 1
        track.cur[item.fingerprint] += 1
        track.cur_files[path] += 1
        if not base:
            self._dirty[id(track)] = track

    def _remove(self, path: str, item: Item) -> None:
        track = self._track(path, item)
        track.cur[item.fingerprint] -= 1
        if track.cur[item.fingerprint] <= 0:
            del track.cur[item.fingerprint]
        track.cur_files[path] -= 1
        if track.cur_files[path] <= 0:
            del track.cur_files[path]
        self._dirty[id(track)] = track

    def _note_origin(self, path: str, items: Sequence[Item], edits: Sequence[LineEdit],
                     edit_lines: Sequence[int], patch: Patch, new_side: bool) -> None:
        """The patch line of the first edit touching each item (edits are in ascending
        order and do not overlap: found by bisection, not by a scan per item)."""
        spans = [(e.new_start, e.new_count) if new_side else (e.old_start, e.old_count) for e in edits]
        ends = [start + max(count, 1) - 1 for start, count in spans]
        for item in items:
            track = self._track(path, item)
            if track.key in self._origin:
                continue
            line = None
            k = bisect_left(ends, item.start_line - 1)
            if k < len(spans) and spans[k][0] <= item.end_line - 1:
                line = edit_lines[k]
            if line is None and edit_lines:
                line = edit_lines[0]
            self._origin[track.key] = (patch.path, line)

    # -- releases -------------------------------------------------------------

    def run(self) -> Replay:
        for index, patch in enumerate(self.series.patches, 1):
            self._release(index, patch)
        sources = {p: f.src for p, f in self.files.items() if f.src is not None}
        return Replay(self.series, self.base, self.functions, self.outside, self.snapshots,
                      self.notes, self.warnings, self.files_touched, self.base_spans, sources,
                      self.line_changes)

    def _record_lines(self, path: str, old_path: str | None, patch: Patch, change: FileChange,
                      applied: Applied) -> None:
        self.line_changes.setdefault((self._index, path), []).append(LineChanges(
            patch.path, old_path, tuple(applied.edits), applied.added, applied.removed,
            change.patch_line))

    def _release(self, index: int, patch: Patch) -> None:
        self._index = index
        try:
            said: list[str] = []
            changes = parse_patch(patch, self.exists, said)
            self.warnings.extend((index, w) for w in said)
        except KlpccError as exc:
            exc.patch = exc.patch or patch.path
            raise
        if not changes:
            self.warnings.append((index, f"{patch.path}: release {patch.name!r} is empty: it changes "
                                         "nothing"))
        touched: list[str] = []
        for change in changes:
            try:
                touched.extend(self._apply(index, patch, change))
            except KlpccError as exc:
                if exc.patch is None:  # a problem of the base file the patch touches
                    exc.patch, exc.line = patch.path, change.patch_line
                raise
        self.files_touched[index] = touched
        for path in dict.fromkeys(touched):
            f = self.files[path]
            data = None if f.lines is None else b"".join(f.lines)
            self.snapshots.record(path, index, data)
        for track in self._dirty.values():
            sig = tuple(sorted(track.cur.elements()))
            base = track.base_signature
            if len(sig) == 1 and len(base) == 1 and sig != base and _moved_out(track, base[0], sig[0]):
                # the same code, now under fewer #if branches (moved out of an #ifdef):
                # a configuration compiles it as before, or newly; it changes in none
                sig = base
            prev = track.changes[-1].signature if track.changes else track.base_signature
            files = tuple(sorted(track.cur_files))
            prev_files = track.changes[-1].files if track.changes else tuple(sorted(track.base_files))
            if sig != prev or (sig and files != prev_files):
                # a change of code, or the same code moved to another file (which is
                # where it is now compiled: the release is recorded, not as a change of code)
                origin = self._origin.get(track.key, (patch.path, None))
                track.changes.append(Change(index, sig, files, origin[0], origin[1]))
                if track.kind == "unparsed" and sig != prev:
                    line = f":{origin[1]}" if origin[1] else ""
                    self.warnings.append((index,
                        f"{patch.path}{line}: {track.key.split(':')[0]}: release {patch.name!r} "
                        "changes code the C parser could not read; check by hand that no "
                        "function change is missed there"))
        self._dirty.clear()
        self._origin.clear()

    def _apply(self, index: int, patch: Patch, change: FileChange) -> list[str]:
        kind = change.kind
        if kind in ("modify", "delete"):
            path = change.old_path
            assert path is not None
            f = self._file(path)
            if f.lines is None:
                raise KlpccError("the patch changes a file that does not exist",
                                 patch=patch.path, line=change.patch_line, file=path)
            applied = apply_hunks(f.lines, change, patch, self.fuzz)
            self.notes.extend((self._index, f"{patch.path}: {n}") for n in applied.notes)
            self._record_lines(path, path, patch, change, applied)
            if kind == "delete":
                if applied.lines:
                    raise KlpccError("the patch deletes the file but does not remove all of it "
                                     "(the file has lines the patch does not show)",
                                     patch=patch.path, line=change.patch_line, file=path)
                self._replace(f, None, patch, change.patch_line)
            else:
                self._edit(f, applied.lines, applied.edits, applied.edit_lines, patch)
            return [path]
        if kind == "add":
            path = change.new_path
            assert path is not None
            self._check_place(path, patch, change)
            f = self._file(path)
            if f.lines is not None:
                raise KlpccError("the patch creates a file that already exists",
                                 patch=patch.path, line=change.patch_line, file=path)
            applied = apply_hunks([], change, patch, self.fuzz)
            self._record_lines(path, None, patch, change, applied)
            self._check_c(path, applied.lines, patch, change)
            self._replace(f, applied.lines, patch, change.patch_line)
            return [path]
        # rename or copy
        old_path, new_path = change.old_path, change.new_path
        assert old_path is not None and new_path is not None
        src = self._file(old_path)
        if src.lines is None:
            raise KlpccError(f"the patch {kind}s a file that does not exist",
                             patch=patch.path, line=change.patch_line, file=old_path)
        self._check_place(new_path, patch, change)
        dst = self._file(new_path)
        if dst.lines is not None and new_path != old_path:
            raise KlpccError(f"the patch {kind}s onto a file that already exists",
                             patch=patch.path, line=change.patch_line, file=new_path)
        applied = apply_hunks(src.lines, change, patch, self.fuzz)
        self.notes.extend((self._index, f"{patch.path}: {n}") for n in applied.notes)
        self._record_lines(new_path, old_path, patch, change, applied)
        self._check_c(new_path, applied.lines, patch, change)
        if kind == "rename":
            self._replace(src, None, patch, change.patch_line)
        self._replace(dst, applied.lines, patch, change.patch_line)
        return [old_path, new_path]

    def _is_file(self, path: str) -> bool:
        f = self.files.get(path)
        if f is not None:
            return f.lines is not None
        try:
            return self.base.read(path) is not None
        except KlpccError:  # a directory
            return False

    def _check_place(self, path: str, patch: Patch, change: FileChange) -> None:
        """A file the patch creates needs a place: no file where a directory of its path
        must be, no file of the series under it."""
        parts = path.split("/")
        for i in range(1, len(parts)):
            if self._is_file(prefix := "/".join(parts[:i])):
                raise KlpccError(f"cannot create {path}: {prefix} is a file", patch=patch.path,
                                 line=change.patch_line, file=path)
        under = next((p for p, f in self.files.items() if p.startswith(path + "/") and f.lines is not None),
                     None)
        if under is not None:
            raise KlpccError(f"cannot create {path}: it is a directory (it holds {under})", patch=patch.path,
                             line=change.patch_line, file=path)

    def _check_c(self, path: str, lines: list[bytes], patch: Patch, change: FileChange) -> None:
        if is_c_file(path) and any(b"\0" in ln for ln in lines):
            raise KlpccError("the new content is not C text (it holds NUL bytes)",
                             patch=patch.path, line=change.patch_line, file=path)

    def _replace(self, f: _File, lines: list[bytes] | None, patch: Patch,
                 line: int | None = None) -> None:
        """Whole-file change: every old item goes, every new one comes."""
        for item in self._items_of(f):
            self._remove(f.path, item)
            self._origin.setdefault(self._track(f.path, item).key, (patch.path, line))
        f.lines = lines
        f.src = None
        if lines is not None and is_c_file(f.path):
            f.src = CSource(f.path, lines)
        for item in self._items_of(f):
            self._add(f.path, item)
            self._origin.setdefault(self._track(f.path, item).key, (patch.path, line))

    def _edit(self, f: _File, lines: list[bytes], edits: list[LineEdit], edit_lines: list[int],
              patch: Patch) -> None:
        if not edits:
            f.lines = lines
            return
        if f.src is None:
            self._replace(f, lines, patch, edit_lines[0] if edit_lines else None)
            return
        f.lines = lines
        before, after = f.src.edit(lines, edits)
        self._note_origin(f.path, after, edits, edit_lines, patch, new_side=True)
        self._note_origin(f.path, before, edits, edit_lines, patch, new_side=False)
        for item in before:
            self._remove(f.path, item)
        for item in after:
            self._add(f.path, item)


def _moved_out(track: Track, old: str, new: str) -> bool:
    """Is the definition of fingerprint ``new`` that of ``old`` moved out of some of the
    ``#if`` branches around it, its code unchanged?"""
    a, b = track.codes.get(old), track.codes.get(new)
    if a is None or b is None or a[0] != b[0]:
        return False
    return len(b[1]) < len(a[1]) and a[1][: len(b[1])] == b[1]


def replay(series: Series, base: BaseTree, *, fuzz: int = 0, keep: Iterable[int] = ()) -> Replay:
    """Apply the whole series to the base, following every item.  The content of
    every touched file is kept for the base and for the releases in ``keep``."""
    return _Replayer(series, base, fuzz, keep).run()


# --------------------------------------------------------------------------- analysis


@dataclass(frozen=True, slots=True)
class Entry:
    """A function (or other item) in the net change of a release."""

    key: str
    kind: str
    name: str
    static: bool
    macro: str | None
    file: str
    files: tuple[str, ...]
    change: str  # modified, added, removed, nop, dropped, unchanged
    history: tuple[str, ...]  # the change kind in each release 1..R
    touched: tuple[int, ...]  # releases that changed its code
    fingerprints: dict[int, str | None]  # fingerprint each touching release left
    base_fingerprint: str | None
    fingerprint: str | None
    transition: str | None
    origin: tuple[str, int | None] | None  # patch and patch line of its last change
    lines: tuple[int, int] | None  # span in the release (or in the base when gone)


@dataclass(frozen=True)
class Analysis:
    replay: Replay
    release: int  # 1-based
    installed: int | None  # --from
    functions: tuple[Entry, ...]
    outside: tuple[Entry, ...]

    @property
    def release_name(self) -> str:
        return self.replay.releases[self.release - 1]

    @property
    def warnings(self) -> list[str]:
        """Warnings from the releases this analysis looks at."""
        return self.replay.warnings_upto(max(self.release, self.installed or 0))

    @property
    def notes(self) -> list[str]:
        return self.replay.notes_upto(max(self.release, self.installed or 0))

    @property
    def installed_name(self) -> str | None:
        return None if self.installed is None else self.replay.releases[self.installed - 1]

    def by_change(self, change: str) -> list[Entry]:
        return [e for e in self.functions if e.change == change]


def timeline(track: Track, upto: int) -> tuple[list[str], list[int]]:
    """The change kind of the item in each release 1..``upto`` (what that release's
    cumulative patch does with it), and the releases that changed its code."""
    base = track.base_signature
    kinds: list[str] = []
    touched: list[int] = []
    seen_modified = seen_added = False
    sig, start = base, 1

    def fill(stop: int) -> None:
        nonlocal seen_modified, seen_added
        if stop < start:
            return
        state = classify(base, sig)
        kind = state
        if state == UNCHANGED and seen_modified:
            kind = NOP
        elif state == ABSENT and seen_added:
            kind = DROPPED
        kinds.extend([kind] * (stop - start + 1))
        seen_modified |= state == MODIFIED
        seen_added |= state == ADDED

    for ch in track.changes:
        if ch.release > upto:
            break
        fill(ch.release - 1)
        if ch.signature != sig:
            touched.append(ch.release)
        sig, start = ch.signature, ch.release
    fill(upto)
    return kinds, touched


def patched(track: Track, release: int) -> bool:
    """Does the live patch of ``release`` carry code for the item?"""
    return track.state(release) in (MODIFIED, ADDED)


def transition(track: Track, installed: int, release: int) -> str | None:
    """What replacing release ``installed`` by ``release`` does with the function."""
    in_k, in_n = patched(track, installed), patched(track, release)
    if in_n and not in_k:
        return T_ADD
    if in_n and in_k:
        return T_KEEP if track.signature(installed) == track.signature(release) else T_UPDATE
    if in_k:
        return T_DROP if not track.base else T_NOP
    return None


def _listed(track: Track, release: int) -> bool:
    base = track.base_signature
    return any(ch.signature != base for ch in track.changes if ch.release <= release)


def analyse(rep: Replay, release: int, installed: int | None = None) -> Analysis:
    """Net change of ``release`` (1-based) against the base; with ``installed``, the
    transition from it."""

    def entries(table: dict[str, Track], outside: bool) -> list[Entry]:
        out: list[Entry] = []
        for track in table.values():
            listed = _listed(track, release)
            if installed is not None and not outside:
                listed = listed or _listed(track, installed)
            if not listed:
                continue
            kinds, touched = timeline(track, release)
            fps, prev = {}, track.base_signature
            for ch in track.changes:  # what each release that changed its code left
                if ch.release <= release and ch.signature != prev:
                    fps[ch.release] = combined(ch.signature)
                prev = ch.signature
            files = track.files_at(release) or tuple(sorted(track.base_files)) or next(
                (c.files for c in reversed(track.changes) if c.files), ())
            last = [c for c in track.changes if c.release <= release]
            origin = (last[-1].patch, last[-1].patch_line) if last else None
            out.append(Entry(
                key=track.key, kind=track.kind, name=track.name, static=track.static,
                macro=track.macro, file=files[0] if files else "", files=files,
                change=kinds[-1], history=tuple(kinds), touched=tuple(touched), fingerprints=fps,
                base_fingerprint=combined(track.base_signature),
                fingerprint=combined(track.signature(release)),
                transition=None if installed is None or outside else transition(track, installed, release),
                origin=origin, lines=None,
            ))
        out.sort(key=lambda e: (e.file, e.name, e.key))
        return out

    functions = entries(rep.functions, False)
    outside = entries(rep.outside, True)
    functions = _with_lines(rep, release, functions)
    outside = _with_lines(rep, release, outside)
    return Analysis(rep, release, installed, tuple(functions), tuple(outside))


def _with_lines(rep: Replay, release: int, entries: list[Entry]) -> list[Entry]:
    """Fill in each entry's span, in the release or, for what it removed, the base."""
    wanted: dict[tuple[str, int], list[int]] = {}
    for i, e in enumerate(entries):
        present = e.change not in (REMOVED, NOP, DROPPED, ABSENT)
        where = release if present or e.change == NOP else 0
        if e.change in (DROPPED, ABSENT):
            continue
        for path in e.files[:1]:
            wanted.setdefault((path, where), []).append(i)
    spans: dict[int, tuple[int, int]] = {}
    last = len(rep.releases)
    for (path, where), idxs in wanted.items():
        if where == 0:
            for i in idxs:
                if entries[i].key in rep.base_spans:
                    spans[i] = rep.base_spans[entries[i].key]
            continue
        if not is_c_file(path):
            continue
        if where == last and path in rep.sources:
            items = rep.sources[path].items()
        else:
            try:
                data = rep.snapshots.read(path, where)
            except KeyError:
                continue
            if data is None:
                continue
            items = CSource(path, split_lines(data)).items()
        by_key: dict[str, list[Item]] = {}
        for item in items:
            by_key.setdefault(item_key(path, item), []).append(item)
        for i in idxs:
            key = entries[i].key
            track = rep.functions.get(key) or rep.outside.get(key)
            item = pick_variant(by_key.get(key, ()), track.base_signature if track is not None else ())
            if item is not None:
                spans[i] = (item.start_line, item.end_line)
    out = []
    for i, e in enumerate(entries):
        if i in spans:
            e = dataclasses.replace(e, lines=spans[i])
        out.append(e)
    return out


def release_graph(rep: Replay, upto: int | None = None) -> nx.DiGraph:
    """Releases and the functions they change, as a graph: an edge release -> function
    for every change, and release -> release edges where a later release changes a
    function an earlier one changed (an ordering dependency)."""
    import networkx as nx  # costly to import; only needed here

    g = nx.DiGraph()
    names = rep.releases
    upto = len(names) if upto is None else upto
    for i, name in enumerate(names[:upto], 1):
        g.add_node(("release", name), index=i)
    for track in rep.functions.values():
        fn = ("function", track.key)
        last: int | None = None
        for ch in track.changes:
            if ch.release > upto:
                break
            g.add_node(fn, name=track.name, static=track.static)
            g.add_edge(("release", names[ch.release - 1]), fn)
            if last is not None:
                src, dst = ("release", names[last - 1]), ("release", names[ch.release - 1])
                if g.has_edge(src, dst):
                    g.edges[src, dst]["functions"].append(track.key)
                else:
                    g.add_edge(src, dst, functions=[track.key])
            last = ch.release
    return g


def dependencies(rep: Replay, upto: int | None = None) -> dict[str, list[str]]:
    """For each release, the earlier releases it builds on: those that changed a
    function it changes (the ancestors of the release in :func:`release_graph`)."""
    names = rep.releases
    upto = len(names) if upto is None else upto
    deps: dict[int, set[int]] = {r: set() for r in range(1, upto + 1)}
    for track in rep.functions.values():
        earlier: list[int] = []
        for ch in track.changes:
            if ch.release > upto:
                break
            deps[ch.release].update(earlier)
            earlier.append(ch.release)
    return {names[r - 1]: [names[e - 1] for e in sorted(d)] for r, d in deps.items()}
