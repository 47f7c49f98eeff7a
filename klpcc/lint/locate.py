"""Where a line of a release's source came from in the series: the patch and the
patch line that added it, or that removed it later."""

from __future__ import annotations

from ..history import LineChanges, Replay


def _across(lc: LineChanges, line: int, forward: bool) -> int | None:
    """Line ``line`` of one side of the edits on the other side (None: it is one of
    the lines the patch changed)."""
    idx = line - 1
    shift = 0
    for e in lc.edits:
        here, here_n, there_n = (e.old_start, e.old_count, e.new_count) if forward else \
            (e.new_start, e.new_count, e.old_count)
        if here + here_n <= idx:
            shift += there_n - here_n
        elif here <= idx:
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
        for lc in reversed(rep.line_changes.get((r, path), ())):
            if cur in lc.added:
                return lc.patch, lc.added[cur]
            if lc.old_path is None:
                return lc.patch, lc.patch_line
            cur = _across(lc, cur, forward=False)
            path = lc.old_path
            if cur is None:
                return None
        r -= 1
    return None


def removed_by(rep: Replay, release: int, upto: int, path: str, line: int) -> tuple[str, int] | None:
    """(patch, patch line) of the ``-`` line of a release after ``release`` and up to
    ``upto`` that removed line ``line`` of ``path`` as ``release`` has it."""
    cur: int | None = line
    for r in range(release + 1, upto + 1):
        changes = [c for c in rep.line_changes.get((r, path), ()) if c.old_path == path]
        if not changes:  # renamed away in this release?
            moved = [(p, cs) for (rr, p), cs in rep.line_changes.items()
                     if rr == r and any(c.old_path == path for c in cs)]
            if not moved:
                continue
            path, changes = moved[0][0], [c for c in moved[0][1] if c.old_path is not None]
        for lc in changes:
            if cur in lc.removed:
                return lc.patch, lc.removed[cur]
            cur = _across(lc, cur, forward=True)
            if cur is None:
                return lc.patch, lc.patch_line
    return None
