"""What the object-level check found, and its renderings (JSON, text)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class FunctionFinding:
    function: str
    unit: str  # the unit compiled
    file: str  # the file that defines the function (the unit, or a header)
    what: str  # "code-only", "source-only", "line-only", "both"
    reason: str
    symbols: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DataFinding:
    symbol: str
    unit: str
    change: str  # "changed", "added", "removed"
    section: str
    static_local: bool
    function: str | None = None  # the function a static local belongs to


@dataclass
class ObjectReport:
    release: str
    units: list[dict] = field(default_factory=list)  # path, compiled, cached, seconds
    functions: list[FunctionFinding] = field(default_factory=list)
    data: list[DataFinding] = field(default_factory=list)
    clones: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    dwarf: list[dict] = field(default_factory=list)  # changed functions the running binary inlines
    # for the targets, not in the JSON: each compared unit's objects (base, release), and
    # the functions of the release with no way out (no return, no tail call)
    objects: dict[str, tuple] = field(default_factory=dict, repr=False)
    never_returns: dict[str, set[str]] = field(default_factory=dict, repr=False)
    preprocessed: dict[str, bytes] = field(default_factory=dict, repr=False)  # base units, when kept

    def by(self, what: str) -> list[FunctionFinding]:
        return [f for f in self.functions if f.what == what]

    @property
    def compiled(self) -> int:
        return sum(u["compiled"] for u in self.units)

    @property
    def cache_hits(self) -> int:
        return sum(u["cached"] for u in self.units)


def summary(report: ObjectReport) -> dict:
    return {
        "both": len(report.by("both")),
        "code_only": len(report.by("code-only")),
        "source_only": len(report.by("source-only")),
        "line_only": len(report.by("line-only")),
        "units": len(report.units),
        "compiled": report.compiled,
        "cache_hits": report.cache_hits,
    }


def to_json(report: ObjectReport) -> dict:
    return {
        "release": report.release,
        "summary": summary(report),
        "units": report.units,
        "functions": [{"function": f.function, "file": f.file, "unit": f.unit, "what": f.what,
                       "reason": f.reason, "symbols": list(f.symbols)} for f in report.functions],
        "data": [{"symbol": d.symbol, "unit": d.unit, "change": d.change, "section": d.section,
                  "static_local": d.static_local, "function": d.function} for d in report.data],
        "clones": dict(sorted(report.clones.items())),
        "dwarf": report.dwarf,
        "notes": report.notes,
    }


def text(report: ObjectReport) -> str:
    s = summary(report)
    lines = [f"object-level check of release {report.release}: {s['units']} unit(s), "
             f"{s['compiled']} compiled, {s['cache_hits']} from the cache"]
    for what, title in (("code-only", "code changed, source did not (joins the patch)"),
                        ("source-only", "source changed, code did not (dropped from the patch)"),
                        ("line-only", "only line numbers in the code changed (not patched)"),
                        ("both", "source and code changed")):
        found = report.by(what)
        if found:
            lines.append(f"  {title}:")
            lines += [f"    {f.function} ({f.file}{'' if f.file == f.unit else ', in ' + f.unit}): {f.reason}"
                      for f in found]
    if report.data:
        lines.append("  data changed (not patched; for the lint to judge):")
        lines += [f"    {d.symbol} ({d.unit}, {d.section}): {d.change}"
                  + (f" [static local of {d.function}]" if d.static_local else "") for d in report.data]
    for d in report.dwarf:
        missing = f" (not in the patch: {', '.join(d['not_in_patch'])})" if d["not_in_patch"] else ""
        lines.append(f"  the binary inlines `{d['function']}` into {', '.join(d['inlined_into'])}{missing}")
    lines += [f"  note: {n}" for n in report.notes]
    return "\n".join(lines) + "\n"
