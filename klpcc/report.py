"""Output of ``klpcc analyze``: JSON (schema ``klpcc.analysis/1``) and text."""

from __future__ import annotations

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

ANALYSIS_SCHEMA = "klpcc.analysis/1"

_SYMBOL = {MODIFIED: "M", ADDED: "A", REMOVED: "R", NOP: "N", DROPPED: "D", UNCHANGED: ".",
           "absent": " "}


def _entry_json(e: Entry, with_transition: bool) -> dict:
    doc: dict = {
        "name": e.name,
        "key": e.key,
        "file": e.file,
        "static": e.static,
        "change": e.change,
    }
    if e.kind != "function":
        doc = {"kind": e.kind, **doc}
        del doc["static"]
    if len(e.files) > 1:
        doc["files"] = list(e.files)
    if e.macro:
        doc["macro"] = e.macro
    if with_transition:
        doc["transition"] = e.transition
    doc["lines"] = None if e.lines is None else {"start": e.lines[0], "end": e.lines[1]}
    doc["base_fingerprint"] = e.base_fingerprint
    doc["fingerprint"] = e.fingerprint
    doc["patch"] = None if e.origin is None else {"file": e.origin[0], "line": e.origin[1]}
    doc["history"] = [
        {"release": h.release, "state": h.state, "touched": h.touched, "fingerprint": h.fingerprint}
        for h in e.history
    ]
    return doc


def analysis_json(a: Analysis) -> dict:
    rep = a.replay
    with_t = a.installed is not None
    counts = Counter(e.change for e in a.functions)
    doc: dict = {
        "schema": ANALYSIS_SCHEMA,
        "generator": f"klpcc {__version__}",
        "series": rep.series.origin,
        "base": rep.base.identity(),
        "releases": rep.releases,
        "release": a.release_name,
        "release_index": a.release,
        "from": a.installed_name,
        "functions": [_entry_json(e, with_t) for e in a.functions],
        "nops": [e.key for e in a.functions if e.change == NOP],
        "outside": [_entry_json(e, False) for e in a.outside],
        "summary": {k: counts.get(k, 0) for k in (MODIFIED, ADDED, REMOVED, NOP, DROPPED)},
        "dependencies": dependencies(rep, a.release),
        "warnings": rep.warnings,
        "notes": rep.notes,
    }
    if with_t:
        doc["transitions"] = {}
        for e in a.functions:
            if e.transition:
                doc["transitions"].setdefault(e.transition, []).append(e.key)
    return doc


def _table(rows: list[list[str]], header: list[str]) -> list[str]:
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    for r in rows:
        out.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return out


def _cells(e: Entry) -> list[str]:
    return [_SYMBOL.get(h.state, "?") + ("*" if h.touched else "") for h in e.history]


def analysis_text(a: Analysis) -> str:
    rep = a.replay
    n = len(rep.releases)
    lines = [f"release {a.release}/{n}: {a.release_name}"]
    if a.installed is not None:
        direction = "downgrade" if a.installed > a.release else "upgrade"
        lines[0] += f"  ({direction} from {a.installed}: {a.installed_name})"
    ident = rep.base.identity()
    lines.append(f"base: {ident.get('path')}" + (f" @ {ident['commit'][:12]}" if "commit" in ident else ""))
    for i, name in enumerate(rep.releases[: a.release], 1):
        lines.append(f"  {i:>3}  {name}")
    lines.append("")
    cols = [str(i) for i in range(1, a.release + 1)]
    if a.functions:
        header = ["function", "file", *cols, "now"]
        if a.installed is not None:
            header.append(f"from {a.installed}")
        rows = []
        for e in a.functions:
            name = e.name + (" (static)" if e.static else "")
            file = e.file + (f":{e.lines[0]}" if e.lines else "")
            row = [name, file, *_cells(e), e.change]
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
            rows.append([e.kind, e.name or "-", file, *_cells(e), e.change])
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
