"""Output of ``klpcc analyze``: JSON (schema ``klpcc.analysis/1``) and text."""

from __future__ import annotations

import json
import re
from collections import Counter

from . import __version__
from .history import (
    ADDED,
    DROPPED,
    MODIFIED,
    NOP,
    REMOVED,
    UNCHANGED,
    Analysis,
    Entry,
    dependencies,
)
from .manifest import Change
from .names import needs_quoting, quote

ANALYSIS_SCHEMA = "klpcc.analysis/1"
MAX_COLUMNS = 20  # releases shown in the text matrix

_SYMBOL = {MODIFIED: "M", ADDED: "A", REMOVED: "R", NOP: "N", DROPPED: "D", UNCHANGED: ".",
           "absent": " "}


def change_of(e: Entry, names: list[str]) -> Change:
    """An entry of the net change as the JSON outputs carry it (release names, not numbers)."""
    return Change(
        name=e.name, file=e.file, change=e.change, kind=e.kind, key=e.key,
        static=e.static if e.kind == "function" else None,
        files=tuple(e.files) if len(e.files) > 1 else (), macro=e.macro or None, lines=e.lines,
        base_fingerprint=e.base_fingerprint, fingerprint=e.fingerprint,
        patch=None if e.origin is None else (e.origin[0], e.origin[1]), history=tuple(e.history),
        touched=tuple(names[r - 1] for r in e.touched),
        fingerprints={names[r - 1]: fp for r, fp in e.fingerprints.items()}, transition=e.transition)


def analysis_json(a: Analysis) -> dict:
    rep = a.replay
    with_t = a.installed is not None
    counts = Counter(e.change for e in a.functions)
    names = rep.releases
    doc: dict = {
        "schema": ANALYSIS_SCHEMA,
        "generator": f"klpcc {__version__}",
        "series": rep.series.origin,
        "base": rep.base.identity(),
        "releases": names,
        "release": a.release_name,
        "release_index": a.release,
        "from": a.installed_name,
        "functions": [change_of(e, names).to_json(with_t) for e in a.functions],
        "nops": [e.key for e in a.functions if e.change == NOP],
        "outside": [change_of(e, names).to_json() for e in a.outside],
        "summary": {k: counts.get(k, 0) for k in (MODIFIED, ADDED, REMOVED, NOP, DROPPED)},
        "dependencies": dependencies(rep, a.release),
        "warnings": a.warnings,
        "notes": a.notes,
    }
    if with_t:
        doc["transitions"] = {}
        for e in a.functions:
            if e.transition:
                doc["transitions"].setdefault(e.transition, []).append(e.key)
    return doc


def dump_json(doc: dict) -> str:
    """JSON text of a document: indented for people, unless it is so large (long
    histories of many functions) that indenting would cost seconds.  Always valid
    Unicode, and exact: a string that holds bytes that are not UTF-8 (carried as lone
    surrogates) is written the way git quotes names (``"caf\\351.c"``, quotes
    included), and so is one that would read as such (:func:`klpcc.names.decoded`
    reads every string back)."""
    size = sum(len(f.get("history", ())) for f in doc.get("functions", ()))

    def dumps(d: dict) -> str:
        return json.dumps(d, indent=2) if size <= 50_000 else json.dumps(d, separators=(",", ":"))

    text = dumps(doc)
    if "\\ud" in text or _LOOKS_QUOTED.search(text):  # a lone surrogate, or a backslash and 3 octal digits
        text = dumps(clean(doc))
    return text


_LOOKS_QUOTED = re.compile(r"\\\\[0-7]{3}")


def clean(value):
    """``value`` with every string JSON could not give back exactly quoted (see
    :func:`dump_json`)."""
    if isinstance(value, str):
        return quote(value) if needs_quoting(value) else value
    if isinstance(value, dict):
        return {clean(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def readable(text: str) -> str:
    """``text`` as valid Unicode for people (a page): bytes that were not UTF-8 become
    U+FFFD."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte
        return text.encode("utf-8", "replace").decode("utf-8")


def _table(rows: list[list[str]], header: list[str]) -> list[str]:
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    for r in rows:
        out.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return out


def _cells(e: Entry, first: int) -> list[str]:
    touched = set(e.touched)
    return [_SYMBOL.get(k, "?") + ("*" if r in touched else "")
            for r, k in enumerate(e.history[first - 1:], first)]


def analysis_text(a: Analysis) -> str:
    rep = a.replay
    n = len(rep.releases)
    lines = [f"release {a.release}/{n}: {a.release_name}"]
    if a.installed is not None:
        direction = "downgrade" if a.installed > a.release else "upgrade"
        lines[0] += f"  ({direction} from {a.installed}: {a.installed_name})"
    ident = rep.base.identity()
    lines.append(f"base: {ident.get('path')}" + (f" @ {ident['commit'][:12]}" if "commit" in ident else ""))
    first = max(1, a.release - MAX_COLUMNS + 1)
    if first > 1:
        lines.append(f"  (releases 1..{first - 1} are not shown; --format json has them all)")
    for i, name in enumerate(rep.releases[first - 1: a.release], first):
        lines.append(f"  {i:>3}  {name}")
    lines.append("")
    cols = [str(i) for i in range(first, a.release + 1)]
    if a.functions:
        header = ["function", "file", *cols, "now"]
        if a.installed is not None:
            header.append(f"from {a.installed}")
        rows = []
        for e in a.functions:
            name = e.name + (" (static)" if e.static else "")
            file = e.file + (f":{e.lines[0]}" if e.lines else "")
            row = [name, file, *_cells(e, first), e.change]
            if a.installed is not None:
                row.append(e.transition or "")
            rows.append(row)
        lines.extend(_table(rows, header))
    else:
        lines.append("no function differs from the base in releases 1.."
                     f"{a.release}")
    if a.outside:
        lines.append("")
        lines.append("changes outside functions:")
        rows = []
        for e in a.outside:
            file = e.file + (f":{e.lines[0]}" if e.lines else "")
            rows.append([e.kind, e.name or "-", file, *_cells(e, first), e.change])
        lines.extend("  " + ln for ln in _table(rows, ["kind", "name", "file", *cols, "now"]))
    counts = Counter(e.change for e in a.functions)
    lines.append("")
    summary = ", ".join(f"{counts.get(k, 0)} {k}" for k in (MODIFIED, ADDED, REMOVED, NOP))
    if counts.get(DROPPED):
        summary += f", {counts[DROPPED]} dropped"
    lines.append(f"summary: {summary}")
    nops = [e.key for e in a.functions if e.change == NOP]
    if nops:
        lines.append("nops (reverted to the original by this release): " + ", ".join(nops))
    if a.installed is not None:
        tcount = Counter(e.transition for e in a.functions if e.transition)
        lines.append("transition: " + ", ".join(
            f"{tcount.get(k, 0)} {k}" for k in ("add", "update", "keep", "nop", "drop")))
    lines.append("legend: M modified  A added  R removed  N nop (back to the original)  "
                 "D dropped  . as base  * changed by that release")
    return "\n".join(lines) + "\n"
