"""What the compiled code says a release changes, for the targets: both sides of every
unit a bundle carries, compiled with the target's own flags and compared function by
function with the object-level check (:mod:`klpcc.objects`).

The answer decides the function set of both targets:

* every function whose code changed joins, with its reason: callers that hold an
  inlined or constant-folded copy of a changed function, callers of a changed compiler
  clone (they call the clone directly);
* a function whose source changed but whose code did not leaves;
* a changed function the running code has no symbol for (inlined everywhere, a
  ``static inline``, present only as a clone) is compiled into the patch but not
  redirected: its callers carry it;
* a function of the set with no way out (a thread loop, ``main``) is named: a live
  patch can never switch it consistently.

A target gives the compile command of each unit (``commands``); a compile database
given to ``klpcc compile --objects`` wins: its answer is already in the bundle.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import write_atomic
from ..c.declarations import PreprocessedUnit
from ..compdb import Command
from ..errors import KlpccError
from ..manifest import Bundle, Change
from .policy import Plan


@dataclass
class CompiledSet:
    """The compiled comparison of a bundle's units."""

    report: object  # klpcc.objects.ObjectReport
    symbols: dict[str, set[str]]  # unit -> symbols its compiled base defines (functions and data)
    never_returns: dict[str, set[str]]  # unit -> functions of the release with no way out
    seconds: float
    compiled: int = 0
    cached: int = 0
    notes: list[str] = field(default_factory=list)
    _units: dict[str, PreprocessedUnit] = field(default_factory=dict, repr=False)

    def summary(self) -> dict:
        """Units compared, objects compiled and taken from the cache, seconds."""
        return {"units": len(self.symbols), "compiled": self.compiled, "cached": self.cached,
                "seconds": round(self.seconds, 3)}

    def unit(self, path: str) -> PreprocessedUnit | None:
        """The compiled base unit ``path`` as the compiler saw it (None: not compiled)."""
        text = self.report.preprocessed.get(path)  # type: ignore[attr-defined]
        if text is None:
            return None
        if path not in self._units:
            self._units[path] = PreprocessedUnit(path, text)
        return self._units[path]

    def defines(self, path: str, name: str) -> bool | None:
        """Does the compiled base unit ``path`` define a symbol ``name`` (None: not compiled)?"""
        syms = self.symbols.get(path)
        return None if syms is None else name in syms


# --------------------------------------------------------------------------- the bundle as a replay


class _Snapshots:
    def __init__(self, bundle: Bundle):
        self.bundle = bundle
        self.changed = {f.path for f in bundle.manifest.files}

    def paths(self) -> list[str]:
        return list(self.bundle.source_paths)

    def read(self, path: str, release: int) -> bytes | None:
        if path not in self.bundle.source_paths:
            raise KeyError(path)
        return self.bundle.base_source(path) if release == 0 else self.bundle.source(path)

    def changed_paths(self, release: int) -> list[str]:
        return [p for p in self.bundle.source_paths if p in self.changed]


class _Base:
    def __init__(self, bundle: Bundle):
        self.bundle = bundle

    def read(self, path: str) -> bytes | None:
        return self.bundle.base_source(path) if path in self.bundle.source_paths else None


@dataclass
class _Replay:
    snapshots: _Snapshots
    base: _Base


@dataclass
class _Analysis:
    """The part of :class:`klpcc.history.Analysis` the object-level check reads."""

    replay: _Replay
    release_name: str
    functions: tuple[Change, ...]
    outside: tuple[Change, ...]
    release: int = 1


@dataclass
class _Commands:
    root: Path
    entries: dict[str, Command]


def _replayed(bundle: Bundle, command: Callable[[str, Path], Command], cache: Path | None,
              notes: list[str] | None) -> tuple[_Analysis, _Commands]:
    """The bundle as the object-level check reads it, and the command of each C unit the
    release changes or that reads a header it changes (``command(unit, base_root)``,
    which refuses a unit this target does not build: said in ``notes``; None: only the
    changed units)."""
    m = bundle.manifest
    base = {p: data for p in bundle.source_paths if (data := bundle.base_source(p)) is not None}
    # the base side under a path named by its content: the same base compiles to the
    # same preprocessed text (line markers name it), so its objects come from the cache
    digest = hashlib.sha256(b"".join(p.encode("utf-8", "surrogateescape") + b"\0" + hashlib.sha256(d).digest()
                                     for p, d in sorted(base.items()))).hexdigest()[:20]
    from ..objects import default_cache

    root = (cache or default_cache()).parent / "compare" / digest
    for path, data in base.items():
        dest = root / path
        if not dest.is_file() or dest.read_bytes() != data:
            dest.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(dest, data)
    root.mkdir(parents=True, exist_ok=True)
    # the release's changed C files: a .c file another one includes travels too, but is no unit
    changed = {f.path for f in m.files}
    units = [p for p in bundle.source_paths if p.endswith(".c") and p in base and p in changed]
    commands = _Commands(root, {p: command(p, root) for p in units})
    # the unchanged units that read a changed header: compared where this target builds them
    for u in m.header_units if notes is not None else ():
        if u.path in base and u.path not in commands.entries:
            try:
                commands.entries[u.path] = command(u.path, root)
            except KlpccError as exc:
                notes.append(f"{u.path} reads {', '.join(u.headers)} but is not compared: {exc.message}")
    analysis = _Analysis(_Replay(_Snapshots(bundle), _Base(bundle)), m.release,
                         tuple(f for f in m.functions if f.kind == "function" and f.origin is None),
                         m.outside)
    return analysis, commands


def compare_bundle(bundle: Bundle, command: Callable[[str, Path], Command], *, cache: Path | None,
                   jobs: int | None = None) -> CompiledSet:
    """Compile both sides of every C unit the bundle carries with ``command(unit,
    base_root)`` and compare them."""
    from .. import objects

    start = time.perf_counter()
    skipped: list[str] = []
    analysis, commands = _replayed(bundle, command, cache, skipped)
    report = objects.check(analysis, commands, jobs=jobs, cache=cache,  # type: ignore[arg-type]
                           keep_preprocessed=True)
    symbols = {p: {c.symbol for c in base.code.values()} for p, (base, _) in report.objects.items()}
    out = CompiledSet(report, symbols, dict(report.never_returns), time.perf_counter() - start,
                      report.compiled, report.cache_hits, [*skipped, *report.notes])
    return out


def preprocess_bundle(bundle: Bundle, command: Callable[[str, Path], Command], *, cache: Path | None,
                      jobs: int | None = None) -> tuple[dict[str, PreprocessedUnit], list[str]]:
    """Every C unit the release changes, its base as the compiler sees it with
    ``command`` (preprocessed only: what the unit writer reads of the compiled code
    when the function set comes from the source), and notes on the units that do not
    preprocess."""
    from .. import objects

    analysis, commands = _replayed(bundle, command, cache, None)
    texts, notes = objects.preprocess(analysis, commands, jobs=jobs)  # type: ignore[arg-type]
    return {p: PreprocessedUnit(p, t) for p, t in texts.items()}, notes


# the names module_init() and module_exit() give a module's entry points (aliases)
_ENTRY_ALIASES = frozenset({"init_module", "cleanup_module"})


def decide(plan: Plan, compiled: CompiledSet, *, keep_source_only: bool = False,
           owner: Callable[[str], str | None] | None = None) -> list[str]:
    """The plan's function set from the compiled code (see the module's docstring);
    notes on what joined and what left.  ``owner`` names the source function a symbol
    belongs to when a macro gave it another name (a syscall's entry stubs): a change of
    the symbol is a change of that function."""
    report = compiled.report
    notes: list[str] = []
    owned: dict[tuple[str, str], str] = {}  # (file, source function) -> why its symbols changed
    findings = []
    for f in report.functions:  # type: ignore[attr-defined]
        if f.function in _ENTRY_ALIASES and f.what == "code-only":
            continue  # module_init()/module_exit()'s alias: its function is in the findings itself
        if owner is not None and (o := owner(f.function)) is not None:
            if f.what in ("both", "code-only"):
                owned.setdefault((f.file, o), f"{f.function}: {f.reason}" if f.what == "code-only" else "")
            continue
        findings.append(f)
    for (path, name), why in owned.items():
        fns = plan.functions.setdefault(path, {})
        if fns.get(name) != "added":
            if name not in fns:
                notes.append(f"{name} ({path}) joins the patch: {why}")
            plan.add(path, name, plan.why.get((path, name), why or "modified") if name in fns else why)
    for f in findings:
        if (f.file, f.function) in owned:
            continue
        if not f.file.endswith(".c") or f.file not in plan.functions and f.what == "source-only":
            continue
        fns = plan.functions.setdefault(f.file, {})
        if f.what in ("both", "code-only"):
            if fns.get(f.function) != "added":
                joined = f.function not in fns
                why = f.reason if f.what == "code-only" else plan.why.get((f.file, f.function), "modified")
                plan.add(f.file, f.function, why)
                if joined:
                    notes.append(f"{f.function} ({f.file}) joins the patch: {f.reason}")
        elif f.what in ("source-only", "line-only") and fns.get(f.function) == "modified" \
                and not keep_source_only:
            del fns[f.function]
            plan.left[(f.file, f.function)] = f.reason
            notes.append(f"{f.function} ({f.file}) leaves the patch: {f.reason}")
    return notes


def not_redirected(plan: Plan, present: Callable[[str, str], bool | None], compiled: CompiledSet | None
                   ) -> list[str]:
    """Modified functions the running code has no symbol for: compiled into the patch
    for their callers, not redirected.  Only where the compiled code shows the same
    (the function has no symbol in the compiled unit either, so its callers' code is
    what changed); otherwise they stay, and the target refuses them."""
    notes = []
    if compiled is None:
        return notes
    for path, fns in plan.functions.items():
        for name, change in list(fns.items()):
            if change == "modified" and present(path, name) is False and \
                    compiled.defines(path, name) is False:
                fns[name] = "added"
                notes.append(f"{name} ({path}) has no symbol of its own in the running code (inlined "
                             "everywhere, or only compiler clones): its callers are patched instead")
    return notes


def through_callers(plan: Plan, compiled: CompiledSet, unhooked: Callable[[str, str], bool]) -> list[str]:
    """Changed functions the running code has a copy of that cannot be redirected
    (``unhooked(path, name)``: a ``static inline`` kept out of line, which the kernel
    compiles without ftrace's hook): compiled into the patch, not redirected, and every
    function of the unit that calls that copy joins (its new code calls the patch's),
    up the calls until a caller can be redirected."""
    notes = []
    todo = [(path, name) for path, fns in plan.functions.items() for name, change in fns.items()
            if change == "modified" and compiled.defines(path, name) and unhooked(path, name)]
    seen: set[tuple[str, str]] = set()
    while todo:
        path, name = todo.pop()
        if (path, name) in seen:
            continue
        seen.add((path, name))
        fns = plan.functions.setdefault(path, {})
        fns[name] = "added"
        objects = compiled.report.objects.get(path)  # type: ignore[attr-defined]
        code = list(objects[0].code.values()) if objects else []
        users = [c for c in code if c.symbol != name and any(r.split("+")[0].split("-")[0] == name
                                                             for r in c.refs)]
        held = sorted(c.symbol for c in users if c.kind != "function")
        if held:
            raise KlpccError(f"cannot patch {name}: a static inline the kernel kept out of line (no ftrace "
                             f"hook of its own), and the data {held[0]} holds its address: the running code "
                             "calls that copy through it, and a live patch cannot redirect it", file=path)
        callers = sorted({c.symbol.split(".")[0] for c in users})
        listed = f": {', '.join(callers)}" if callers else ""
        notes.append(f"{name} ({path}) cannot be redirected (a static inline kept out of line has no ftrace "
                     f"hook): compiled into the patch for its callers{listed}")
        for caller in callers:
            if fns.get(caller) not in ("modified", "added"):
                plan.add(path, caller, f"calls the out-of-line copy of `{name}`, which changed")
                notes.append(f"{caller} ({path}) joins the patch: it calls the out-of-line copy of `{name}`, "
                             "which changed")
            if fns.get(caller) == "modified" and unhooked(path, caller):
                todo.append((path, caller))
    return notes


def stuck(plan: Plan, compiled: CompiledSet | None, marked: Iterable[str], requested: Iterable[str],
          hint: str) -> list[str]:
    """Refuse a function of the set that never returns unless it is marked immediate
    (``hint`` says how, ``{name}`` standing for the function); the marked ones that
    never return.  ``requested`` (named on the command line) must be in the patch."""
    marked = set(marked) | set(requested)
    found = []
    for path, fns in sorted(plan.functions.items()):
        never = compiled.never_returns.get(path, set()) if compiled is not None else set()
        for name, change in sorted(fns.items()):
            if change != "modified" or name not in never:
                continue
            why = plan.why.get((path, name), "modified")
            if name not in marked:
                raise KlpccError(f"{name} never returns (no return and no jump out of it), and the patch "
                                 f"must change it: {why}; a thread inside it could never switch. "
                                 + hint.format(name=name), file=path)
            found.append(name)
    patched = {n for fns in plan.functions.values() for n, change in fns.items() if change == "modified"}
    unknown = sorted(set(requested) - patched)
    if unknown:
        raise KlpccError(f"--immediate {unknown[0]}: the patch does not change a function of that name")
    return found
