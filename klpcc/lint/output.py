"""Lint results as text (people), JSON ``klpcc.lint/1`` (pipelines) and SARIF 2.1.0
(code review tools)."""

from __future__ import annotations

from .. import __version__
from ..names import raw
from . import LintResult
from .rules import RULES, Finding

LINT_SCHEMA = "klpcc.lint/1"
SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"


def _where(f: Finding) -> str:
    if f.patch is not None:
        return f"{f.patch[0]}:{f.patch[1]}: "
    if f.site is not None:
        return f"{f.site.file}:{f.site.line}: "
    return ""


def lint_text(res: LintResult) -> str:
    against = ", ".join(res.against) or "no earlier release"
    lines = [f"release {res.release} against {against}"]
    for f in res.findings:
        src = ""
        if f.patch is not None and f.site is not None:
            src = f" [{f.site.file}:{f.site.line}]"
        lines.append(f"{_where(f)}{f.severity}: {f.rule.id} {f.rule.name}: {f.message}{src}")
        lines.append(f"    hint: {f.hint}")
    for note in res.layout_notes:
        lines.append(f"note: layout compared as text: {note}")
    for note in res.notes:
        lines.append(f"note: {note}")
    lines.append(f"{res.count('error')} error(s), {res.count('warning')} warning(s), "
                 f"{res.count('note')} note(s)")
    return "\n".join(lines) + "\n"


def lint_json(res: LintResult) -> dict:
    return {
        "schema": LINT_SCHEMA,
        "release": res.release,
        "against": list(res.against),
        "summary": {s: res.count(s) for s in ("error", "warning", "note")},
        "findings": [{
            "rule": f.rule.id,
            "name": f.rule.name,
            "severity": f.severity,
            "message": f.message,
            "hint": f.hint,
            "release": f.release,
            "against": list(f.against),
            "function": f.site.function if f.site else None,
            "file": f.site.file if f.site else None,
            "line": f.site.line if f.site else None,
            "patch": f.patch[0] if f.patch else None,
            "patch_line": f.patch[1] if f.patch else None,
        } for f in res.findings],
        "facts": {name: rf.to_json() for name, rf in res.facts.items()},
        "layout_notes": list(res.layout_notes),
        "notes": list(res.notes),
    }


def _location(uri: str, line: int, text: str, base: str | None = None) -> dict:
    loc: dict = {"physicalLocation": {"artifactLocation": {"uri": uri}, "region": {"startLine": line}},
                 "message": {"text": text}}
    if base:
        loc["physicalLocation"]["artifactLocation"]["uriBaseId"] = base
    return loc


def _uri(path: str) -> str:
    from urllib.parse import quote

    return quote(raw(path), safe="/._-~")  # every byte of the name (a backslash too), percent-encoded


def lint_sarif(res: LintResult) -> dict:
    index = {r.id: i for i, r in enumerate(RULES)}
    rules = [{
        "id": r.id,
        "name": r.name,
        "shortDescription": {"text": r.summary},
        "fullDescription": {"text": r.description},
        "help": {"text": r.hint},
        "defaultConfiguration": {"level": r.severity},
        "properties": {"family": {"S": "states", "C": "callbacks", "H": "shadow-variables",
                                  "U": "unsupported-changes"}[r.id[0]]},
    } for r in RULES]
    results = []
    for f in res.findings:
        locations = []
        if f.patch is not None:
            locations.append(_location(_uri(f.patch[0]), f.patch[1], "the offending hunk line"))
        if f.site is not None:
            what = f"in release {res.name_of(f.site.release)}" if f.site.in_tree else \
                f"(what release {res.name_of(f.site.release)} declares there)"
            locations.append(_location(_uri(f.site.file), f.site.line, f"{f.site.file} {what}",
                                       "SRCROOT" if f.site.in_tree else None))
        result = {
            "ruleId": f.rule.id,
            "ruleIndex": index[f.rule.id],
            "level": f.severity,
            "message": {"text": f"{f.message}. Hint: {f.hint}"},
            "locations": locations,
            "properties": {"release": f.release, "against": list(f.against),
                           "function": f.site.function if f.site else None},
        }
        results.append(result)
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "klpcc", "version": __version__,
                                "semanticVersion": __version__, "rules": rules}},
            "originalUriBaseIds": {"SRCROOT": {"description": {
                "text": "The root of the source tree the series applies to."}}},
            "results": results,
            "properties": {"release": res.release, "against": list(res.against)},
        }],
    }
