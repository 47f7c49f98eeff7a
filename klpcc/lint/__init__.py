"""Stage 7b: can a release's cumulative patch safely replace what is installed?

:func:`lint` finds, in the code each release carries, its system states, callbacks
and shadow variables (and in ``klpcc.toml``), and checks release R against every
earlier release (or the one installed) by the rules of atomic replace.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..compdb import CompileCommands
from ..history import Replay, analyse
from .config import Config
from .facts import Extractor, ReleaseFacts
from .layout import Layouts
from .rules import RULES, SEVERITIES, Checker, Finding, Rule

__all__ = ["RULES", "Finding", "LintResult", "ReleaseFacts", "Rule", "check"]


@dataclass
class LintResult:
    release: str
    against: tuple[str, ...]
    findings: list[Finding]
    facts: dict[str, ReleaseFacts] = field(default_factory=dict)
    names: tuple[str, ...] = ()  # every release of the series, in order
    layout_notes: list[str] = field(default_factory=list)  # where exact layouts fell back to text
    notes: list[str] = field(default_factory=list)  # what could not be judged, and why

    def name_of(self, release: int) -> str:
        return self.names[release - 1] if 0 < release <= len(self.names) else str(release)

    def count(self, severity: str) -> int:
        return sum(1 for f in self.findings if f.severity == severity)

    def fails(self, error_on: str) -> bool:
        """Does a finding reach ``error_on`` (error: errors only; warning: both)?"""
        levels = SEVERITIES[: SEVERITIES.index(error_on) + 1]
        return any(f.severity in levels for f in self.findings)


def release_facts(rep: Replay, upto: int, config: Config | None = None,
                  extractor: Extractor | None = None) -> dict[int, ReleaseFacts]:
    """States, callbacks and shadow variables of releases 1..``upto`` (all kept)."""
    x = extractor or Extractor(rep)
    out: dict[int, ReleaseFacts] = {}
    for r in range(1, upto + 1):
        rf = x.facts(r)
        if config is not None:
            config.apply(rf)
        out[r] = rf
    return out


def check(rep: Replay, release: int, installed: int | None = None,
          config: Config | None = None, commands: CompileCommands | None = None,
          objects=None, kernel_config: Mapping[str, str] | None = None) -> LintResult:
    """Lint ``release`` against ``installed`` or, without it, every earlier release.
    Every release up to the later of the two must have been kept in the replay.
    With ``commands`` (a compilation database), struct layouts are the compiler's.
    ``kernel_config`` (a kernel's ``.config``, read) is what Kbuild makefiles are read
    with; without it, :data:`klpcc.kbuild.LIVEPATCH_CONFIG`."""
    layouts = Layouts(rep, commands) if commands is not None else None
    try:
        return _check(rep, release, installed, config, layouts, objects, kernel_config)
    finally:
        if layouts is not None:
            layouts.close()


def _check(rep: Replay, release: int, installed: int | None, config: Config | None,
           layouts: Layouts | None, objects=None, kernel_config: Mapping[str, str] | None = None
           ) -> LintResult:
    against = [installed] if installed is not None else list(range(1, release))
    x = Extractor(rep, layouts)
    facts = release_facts(rep, max(release, installed or 0), config, x)
    checker = Checker(rep, x, facts, analyse(rep, release), kernel_config)
    for k in against:
        if k == release:
            continue
        checker.states(k)
        checker.callbacks(k)
    checker.queries()
    checker.shadows([k for k in against if k != release])
    checker.unsupported()
    if objects is not None:  # an ObjectReport: what the compiled release changes in data
        checker.data(objects)
    order = {s: i for i, s in enumerate(SEVERITIES)}
    findings = sorted(checker.findings, key=lambda f: (
        order[f.severity], f.rule.id, f.site.file if f.site else "", f.site.line if f.site else 0))
    names = rep.releases
    return LintResult(names[release - 1], tuple(names[k - 1] for k in against if k != release),
                      findings, {names[r - 1]: rf for r, rf in facts.items()}, tuple(names),
                      list(layouts.failures) if layouts is not None else [],
                      list(dict.fromkeys(checker.notes)))
