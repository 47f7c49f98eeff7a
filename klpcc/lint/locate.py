"""Where a line of a release's source came from in the series: the patch and the
patch line that added it, or that removed it later."""

from __future__ import annotations

from ..history import LineChanges, Replay


def _new_to_old(lc: LineChanges, line: int) -> int | None:
    """Line of the previous version that became ``line`` (None: the patch added it)."""
    idx = line - 1
    shift = 0
    for e in lc.edits:
        if e.new_start + e.new_count <= idx:
            shift += e.old_count - e.new_count
        elif e.new_start <= idx:
            return None
        else:
            break
    return idx + shift + 1


def _old_to_new(lc: LineChanges, line: int) -> int | None:
    idx = line - 1
    shift = 0
    for e in lc.edits:
        if e.old_start + e.old_count <= idx:
            shift += e.new_count - e.old_count
        elif e.old_start <= idx:
            return None
        else:
            break
    return idx + shift + 1


def added_by(rep: Replay, release: int, path: str, line: int) -> tuple[str, int] | None:
    """(patch, patch line) of the ``+`` line that put line ``line`` of ``path`` as
    release ``release`` has it; None when the line is the base's."""
    r = release
    cur: int | None = line
    while r >= 1 and cur is not None:
        lc = rep.line_changes.get((r, path))
        if lc is not None:
            if cur in lc.added:
                return lc.patch, lc.added[cur]
            if lc.old_path is None:
                return lc.patch, lc.patch_line
            cur = _new_to_old(lc, cur)
            path = lc.old_path
        r -= 1
    return None


def removed_by(rep: Replay, release: int, upto: int, path: str, line: int) -> tuple[str, int] | None:
    """(patch, patch line) of the ``-`` line of a release after ``release`` and up to
    ``upto`` that removed line ``line`` of ``path`` as ``release`` has it."""
    cur: int | None = line
    for r in range(release + 1, upto + 1):
        lc = rep.line_changes.get((r, path))
        if lc is None or lc.old_path != path:
            moved = [(p, c) for (rr, p), c in rep.line_changes.items() if rr == r and c.old_path == path]
            if not moved:
                continue
            path, lc = moved[0]
        if cur in lc.removed:
            return lc.patch, lc.removed[cur]
        cur = _old_to_new(lc, cur)
        if cur is None:
            return lc.patch, lc.patch_line
    return None
