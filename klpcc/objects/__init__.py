"""Stage 6 (optional): what the compiled code says changed, explained.

With a ``compile_commands.json``, every translation unit a release touches -- its
own file, or a header it includes -- is compiled for the base and for the release
with its own flags plus ``-ffunction-sections -fdata-sections -fdump-ipa-clones``,
and the code of every function is compared section by section with pyelftools,
after normalising relocations to what they name (a symbol, a string's text) rather
than to offsets.  gcc's own record of inlining and cloning (``ipa-clones``) and the
source-level answer explain each difference:

* code that changed though its source did not: an inlined function changed, a macro
  it expands changed, a header it includes changed, data it reads changed;
* source that changed though its code did not (comments, formatting, a dead branch);
* compiler clones (``.isra``, ``.constprop``, ``.part``, ``.cold``) mapped to their
  function; changed data (``.data``, ``.rodata``, static locals) reported, never
  patched.

Objects are cached by the hash of the preprocessed unit and its flags, so a longer
series compiles only what its new release touched; units compile in parallel.

The package, by job: :mod:`.compile` (the compiler and its cache), :mod:`.elf`
(reading objects), :mod:`.compare` (comparing and explaining), :mod:`.dwarf` (a
binary's DWARF and the cross-check), :mod:`.report` (the findings, as JSON or
text); here, :func:`check`: the check of a release.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..compdb import BuildFailed, CompileCommands, Overlay
from ..history import Analysis, Replay
from .compare import compare, is_readonly
from .compile import OBJECTS_FLAGS, Compiler, check_cache, default_cache
from .dwarf import Dwarf, cross_check, dwarf_of, read_dwarf
from .elf import Code, UnitObject, never_returning, read_object, source_name
from .report import DataFinding, FunctionFinding, ObjectReport, summary, text, to_json

__all__ = [
    "OBJECTS_FLAGS", "Code", "Compiler", "DataFinding", "Dwarf", "FunctionFinding", "ObjectReport",
    "UnitObject", "check", "default_cache", "dwarf_of", "is_readonly", "never_returning", "preprocess",
    "read_dwarf", "read_object",
    "source_name", "summary", "text", "to_json",
]


def _units_touched(rep: Replay, release: int, commands: CompileCommands,
                   report: ObjectReport) -> tuple[list[str], set[str]]:
    changed = set(rep.snapshots.changed_paths(release))
    units = []
    for p in sorted(changed):
        if not p.endswith((".c", ".cc", ".cpp", ".cxx")):
            continue
        if p not in commands.entries:
            report.notes.append(f"{p}: the release changes it but the compilation database has no "
                                "entry for it: not compared")
        elif rep.snapshots.read(p, release) is None:
            report.notes.append(f"{p}: deleted by the release: its functions are removed, nothing to compile")
        elif rep.snapshots.read(p, 0) is None:
            report.notes.append(f"{p}: added by the release: all its functions are new")
        else:
            units.append(p)
    return units, changed


def check(analysis: Analysis, commands: CompileCommands, *, jobs: int | None = None,
          cache: Path | None = None, progress: Callable[[int, int], None] | None = None,
          binary: str | Path | None = None, keep_preprocessed: bool = False) -> ObjectReport:
    """Compile the units release R touches, for the base and for R, and compare;
    with ``binary`` (the running program, built with ``-g``), cross-check with the
    inlining its DWARF records."""
    rep = analysis.replay
    release = analysis.release
    report = ObjectReport(analysis.release_name)
    dwarf = read_dwarf(binary) if binary is not None else None  # a bad binary fails before compiling
    if cache is not None:
        check_cache(cache)
    overlay = Overlay(rep, commands)
    compiler = Compiler(overlay, cache, keep_preprocessed)
    try:
        units, changed = _units_touched(rep, release, commands, report)
        headers = sorted(p for p in changed if p not in commands.entries)
        others = [p for p in commands.entries if p not in units] if headers else []
        jobs = max(1, jobs or os.cpu_count() or 1)
        tasks = [(r, p) for p in units for r in (0, release)] + [(0, p) for p in others]
        results: dict[tuple[int, str], tuple[Path, bytes, bool, set[str]] | str] = {}
        done = 0

        def run(task: tuple[int, str], deps_only: bool = False):
            r, p = task
            try:
                return task, compiler.compile(r, p, commands.entries[p], deps_only)
            except (BuildFailed, OSError, ValueError) as exc:
                return task, f"{p}: {exc}"

        with ThreadPoolExecutor(max_workers=jobs) as pool:
            pending = list(pool.map(run, tasks[:len(units) * 2]))
            for task, res in pending:
                results[task] = res
                done += 1
                if progress:
                    progress(done, len(tasks))
            # units reading a touched header: found from the base's preprocessing
            extra, unread = [], []
            for task, res in pool.map(lambda t: run(t, True), tasks[len(units) * 2:]):
                done += 1
                if progress:
                    progress(done, len(tasks))
                if isinstance(res, tuple) and res[3] & set(headers):
                    extra.append(task[1])
                elif isinstance(res, str):
                    unread.append(res)
            # a unit that may read a changed header but does not preprocess: said, not skipped
            for res in unread[:10]:
                report.notes.append(f"not compared (it may read a header the release changes): {res}")
            if len(unread) > 10:
                report.notes.append(f"{len(unread) - 10} more units do not preprocess either: not compared")
            for task, res in pool.map(run, [(r, p) for p in extra for r in (0, release)]):
                results[task] = res
        for p in sorted([*units, *extra]):
            base, new = results.get((0, p)), results.get((release, p))
            if isinstance(base, str) or isinstance(new, str) or base is None or new is None:
                why = next(x for x in (base, new) if isinstance(x, str)) if \
                    isinstance(base, str) or isinstance(new, str) else f"{p}: not compiled"
                report.notes.append(why if p in units else f"not compared (it reads a header the release "
                                                            f"changes): {why}")
                continue
            report.units.append({"path": p, "compiled": int(not base[2]) + int(not new[2]),
                                 "cached": int(base[2]) + int(new[2]),
                                 "headers": sorted(new[3] & changed - {p})})
            assert base[0] is not None and new[0] is not None
            try:
                before, after = read_object(base[0], base[1]), read_object(new[0], new[1])
            except Exception as exc:  # pyelftools' own errors on a damaged object
                report.notes.append(f"{p}: cannot read its object: {type(exc).__name__}: {exc}")
                continue
            compare(p, before, after, new[3] & changed - {p}, analysis, report, reads=new[3])
            report.objects[p] = (before, after)
            report.never_returns[p] = never_returning(new[0])
    finally:
        overlay.close()
    report.functions.sort(key=lambda f: (f.unit, f.function))
    report.preprocessed = compiler.preprocessed
    if dwarf is not None:
        cross_check(report, analysis, commands, dwarf)
    return report


def preprocess(analysis: Analysis, commands: CompileCommands, *, jobs: int | None = None
               ) -> tuple[dict[str, bytes], list[str]]:
    """Each base unit of ``commands`` as the compiler sees it (preprocessed, not
    compiled), and notes on the units that do not preprocess."""
    overlay = Overlay(analysis.replay, commands)
    compiler = Compiler(overlay, None, keep_preprocessed=True)
    notes: list[str] = []

    def run(p: str) -> None:
        try:
            compiler.compile(0, p, commands.entries[p], deps_only=True)
        except (BuildFailed, OSError, ValueError) as exc:
            notes.append(f"{p}: {exc}")

    try:
        with ThreadPoolExecutor(max_workers=max(1, jobs or os.cpu_count() or 1)) as pool:
            list(pool.map(run, sorted(commands.entries)))
    finally:
        overlay.close()
    return compiler.preprocessed, sorted(notes)
