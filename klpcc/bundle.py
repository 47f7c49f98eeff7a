"""Stage 7: the cumulative patch bundle of a release.

``manifest.json`` (schema ``klpcc.manifest/2``), ``cumulative.diff`` (base to
the release, for every file the series touched), ``sources/`` (the release's
version of every changed C file and of the local headers it includes: what a target
builds the patch from) and ``base/`` (the base version of those the release changed:
what a target compares the release's code with), written atomically: everything goes to a temporary directory
next to the target, which is renamed into place.
"""

from __future__ import annotations

import difflib
import posixpath
import re
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from . import HEADER_UNITS, __version__, kbuild
from .atomic import check_target, inside, staged
from .c import is_c_file, split_lines
from .errors import KlpccError
from .history import MODIFIED, NOP, Analysis, dependencies
from .manifest import (
    OBJECTS_ORIGIN,
    Base,
    Change,
    FileChange,
    HeaderUnit,
    Manifest,
    PatchFile,
    SourceFile,
    lint_sections,
)
from .names import git_name

if TYPE_CHECKING:
    from .lint import LintResult
    from .objects import ObjectReport
from .report import change_of, dump_json
from .trees import blob_id


def cumulative_diff(analysis: Analysis) -> tuple[str, list[FileChange]]:
    """Unified diff from the base to the release for every file that differs."""
    rep = analysis.replay
    snaps = rep.snapshots
    out: list[str] = []
    files: list[FileChange] = []
    for path in snaps.changed_paths(analysis.release):
        old = snaps.read(path, 0)
        new = snaps.read(path, analysis.release)
        status = "added" if old is None else "deleted" if new is None else "modified"
        files.append(FileChange(path, status, None if old is None else blob_id(old),
                                None if new is None else blob_id(new)))
        out.append(_file_diff(path, old, new))
    return "".join(out), files


def _file_diff(path: str, old: bytes | None, new: bytes | None) -> str:
    a = [] if old is None else [ln.decode("utf-8", "surrogateescape") for ln in split_lines(old)]
    b = [] if new is None else [ln.decode("utf-8", "surrogateescape") for ln in split_lines(new)]
    head = [f"diff --git {git_name('a/' + path)} {git_name('b/' + path)}\n"]
    if old is None:
        head.append("new file mode 100644\n")
    elif new is None:
        head.append("deleted file mode 100644\n")
    # like git, end a name with a tab when it holds a space, so that patch(1) reads it whole
    tab = "\t" if " " in path and git_name(path) == path else ""
    src = "/dev/null" if old is None else git_name(f"a/{path}") + tab
    dst = "/dev/null" if new is None else git_name(f"b/{path}") + tab
    body: list[str] = []
    for line in difflib.unified_diff(a, b, src, dst, n=3, lineterm=""):
        if line.startswith(("---", "+++", "@@")):
            body.append(line.rstrip("\n") + "\n")
        elif line.endswith("\n"):
            body.append(line)
        else:
            body.append(line + "\n\\ No newline at end of file\n")
    return "".join(head + body)


_LOCAL_INCLUDE = re.compile(rb'^[ \t]*#[ \t]*include[ \t]*(?:"([^"\n]+)"|<([^>\n]+)>)', re.M)


def _includes(path: str, data: bytes, dirs: list[str], exists) -> Iterator[str]:
    """The files of the tree ``path``'s ``#include`` lines name: ``"name"`` from the
    including file's directory first, then ``dirs`` (the ``-I`` directories its
    makefiles add); ``<name>`` from ``dirs`` only; ``"../x"`` may also be reached from a
    kernel's ``include/`` (btf.c: ``"../tools/lib/..."``).  An absolute name is a file of
    the system, left alone."""
    for m in _LOCAL_INCLUDE.finditer(data):
        name = (m.group(1) or m.group(2)).decode("utf-8", "surrogateescape")
        if name.startswith("/") or "\0" in name:
            continue
        up = ("include",) if name.startswith("../") else ()
        for where in ((posixpath.dirname(path),) if m.group(1) else ()) + tuple(dirs) + up:
            cand = posixpath.normpath(posixpath.join(where, name))
            if cand == ".." or cand.startswith("../"):
                continue
            if exists(cand):
                yield cand
                break


def release_sources(analysis: Analysis, units: Iterable[str] = ()) -> dict[str, bytes]:
    """The release's version of every changed C file and of ``units`` (the unchanged
    units that read a changed header: :func:`header_units`), and the headers those
    include (transitively) with ``#include "..."`` from their own directory, or with
    either form from a directory the kernel's makefiles add with ``-I``, and those
    makefiles: with the kernel or program headers, what the patch's code is compiled from."""
    rep = analysis.replay
    snaps = rep.snapshots

    def read(path: str) -> bytes | None:
        try:
            return snaps.read(path, analysis.release)
        except KeyError:
            return rep.base.read(path)

    def quiet(path: str) -> bytes | None:
        try:
            return read(path)
        except KlpccError:  # a file reached through a link out of the tree: not the tree's
            return None

    out: dict[str, bytes] = {}
    changed = [p for p in snaps.changed_paths(analysis.release) if is_c_file(p)]
    for unit in [*changed, *units]:
        # Kbuild's makefiles say how a kernel file is built and which directories its
        # -I names: they travel with it, and headers found there do too
        out.update(kbuild.makefiles(quiet, unit))
        dirs = kbuild.include_dirs(quiet, unit) if unit.endswith(".c") else []
        todo = [unit]
        while todo:
            path = todo.pop()
            if path in out and path != unit:
                continue
            data = quiet(path)
            if data is None:
                continue
            out[path] = data
            todo.extend(c for c in _includes(path, data, dirs, lambda c: c in out or quiet(c) is not None)
                        if c not in out)
    return dict(sorted(out.items()))


def header_units(analysis: Analysis, limit: int = HEADER_UNITS) -> dict[str, tuple[str, ...]]:
    """The C units of the base tree the release does not change that read a header it
    changes (directly or through other headers), each with the changed headers it reads:
    their code may change too (an inlined ``static inline``, a macro, a constant), so
    the targets compile and compare them as they do the changed units.  More than
    ``limit`` such units is refused: comparing them all is a build of much of the tree."""
    rep = analysis.replay
    changed = set(rep.snapshots.changed_paths(analysis.release))
    reads: dict[str, set[str]] = {p: {p} for p in changed if is_c_file(p) and not p.endswith(".c")}
    units: dict[str, set[str]] = {}
    frontier = set(reads)

    def quiet(path: str) -> bytes | None:
        try:
            return rep.base.read(path)
        except KlpccError:
            return None

    def exists(path: str) -> bool:
        try:
            return rep.base.exists(path)
        except KlpccError:
            return False

    while frontier and len(units) <= limit:
        names = {posixpath.basename(h) for h in frontier}
        found = [f for f in rep.base.includers(names) if f not in changed and f not in reads]
        frontier = set()
        for f in found:
            data = quiet(f)
            if data is None:
                continue
            hit: set[str] = set()
            for m in _LOCAL_INCLUDE.finditer(data):
                name = posixpath.normpath((m.group(1) or m.group(2)).decode("utf-8", "surrogateescape"))
                if posixpath.basename(name) in names:
                    hit |= _named(f, name, m.group(1) is not None, reads, exists)
            if not hit:
                continue
            if f.endswith(".c"):
                units.setdefault(f, set()).update(hit)
                if len(units) > limit:
                    break
            # what includes it reads the changed headers too (a .c file included by another:
            # kernel/sched/build_policy.c; an .inc, a .def)
            reads[f] = hit
            frontier.add(f)
    if len(units) > limit:
        headers = sorted({h for hs in units.values() for h in hs})
        shown = ", ".join(headers[:3]) + (" ..." if len(headers) > 3 else "")
        raise KlpccError(f"{shown}: the release changes a header that at least {len(units)} unchanged C "
                         f"files of the base tree include, more than --header-units {limit}: comparing "
                         "their code is a build of much of the tree; raise --header-units, or change "
                         "fewer headers")
    return {u: tuple(sorted(hs)) for u, hs in sorted(units.items())}


def _named(f: str, name: str, quoted: bool, reads: dict[str, set[str]], exists) -> set[str]:
    """The changed headers file ``f`` reads through its ``#include`` of ``name``, among
    ``reads`` (header -> the changed headers it reads).  ``"name"`` is the file's own
    directory's when there is one there; otherwise, and for ``<name>``, the header is
    found in an include directory: any header whose path ends so -- except that a
    kernel's ``include/NAME`` comes before its other copies (``include/uapi``, another
    tree's), and ``tools/`` holds copies of the kernel's headers for its own programs
    only."""
    own = posixpath.normpath(posixpath.join(posixpath.dirname(f), name))
    if quoted and (own in reads or exists(own)):
        return reads.get(own, set())
    if name == ".." or name.startswith("../"):
        return set()
    main = exists("include/" + name)
    out: set[str] = set()
    for r, hs in reads.items():
        if r != name and not r.endswith("/" + name):
            continue
        if r.startswith("tools/") != f.startswith("tools/"):
            continue
        if main and r != "include/" + name and not f.startswith("tools/"):
            continue
        out |= hs
    return out


def base_sources(analysis: Analysis, sources: dict[str, bytes]) -> dict[str, bytes]:
    """The base version of every file of ``sources/`` the release changed (a file the
    release adds has none): with ``sources/``, both sides of every unit a target
    compiles to compare their code."""
    snaps = analysis.replay.snapshots
    changed = set(snaps.changed_paths(analysis.release))
    out = {}
    for path in sources:
        if path in changed and (old := snaps.read(path, 0)) is not None:
            out[path] = old
    return out


def _patch_file(release: int) -> str:
    """Where the bundle keeps the patch of ``release`` (1-based)."""
    return f"patches/{release:04d}.patch"


def manifest(analysis: Analysis, files: list[FileChange], lint: LintResult | None = None,
             objects: ObjectReport | None = None, keep_source_only: bool = False,
             sources: dict[str, bytes] | None = None,
             units: dict[str, tuple[str, ...]] | None = None) -> Manifest:
    """The manifest of the bundle of ``analysis``'s release (``units``: the
    :func:`header_units` its sources carry)."""
    units = units or {}
    if sources is None:
        sources = release_sources(analysis, units)
    rep = analysis.replay
    names = rep.releases
    functions = tuple(change_of(e, names) for e in analysis.functions)
    m = Manifest(
        generator=f"klpcc {__version__}",
        release=analysis.release_name,
        release_index=analysis.release,
        releases=tuple(names),
        base=Base(dict(rep.base.identity()),
                  tuple((p, rep.snapshots.blob_at(p, 0)) for p in rep.snapshots.paths())),
        functions=functions,
        nops=tuple(e.key for e in analysis.functions if e.change == NOP),
        outside=tuple(change_of(e, names) for e in analysis.outside),
        files=tuple(files),
        sources=tuple(SourceFile(p, blob_id(d)) for p, d in sources.items()),
        base_sources=tuple(SourceFile(p, blob_id(d)) for p, d in base_sources(analysis, sources).items()),
        header_units=tuple(HeaderUnit(p, hs) for p, hs in units.items()),
        dependencies=dependencies(rep, analysis.release),
        warnings=tuple(analysis.warnings),
        patches=tuple(PatchFile(p.name, p.path, _patch_file(i), blob_id(p.data))
                      for i, p in enumerate(rep.series.patches[: analysis.release], 1)),
    )
    if lint is not None:
        m = _with_lint(m, lint)
    if objects is not None:
        m = _with_objects(m, objects, keep_source_only)
    return m


def _with_objects(m: Manifest, report: ObjectReport, keep_source_only: bool) -> Manifest:
    """With the object-level check: functions whose code changed though their source
    did not join the patch (with the reason); functions whose code did not change
    leave it unless asked to stay."""
    from . import objects as _objects

    functions = list(m.functions)
    carried = {(f.function, f.file) for f in report.functions if f.what in ("both", "code-only")}
    # a header's function one unit inlined away may still have code in another unit
    source_only = {(f.function, f.file) for f in report.by("source-only")} - carried
    if not keep_source_only:
        functions = [f for f in functions if (f.name, f.file) not in source_only]
    listed = {(f.name, f.file) for f in functions}
    for f in report.by("code-only"):
        if (f.function, f.file) in listed:
            continue
        listed.add((f.function, f.file))
        functions.append(Change(f.function, f.file, MODIFIED, origin=OBJECTS_ORIGIN, reason=f.reason,
                                symbols=tuple(f.symbols)))
    return replace(m, functions=tuple(functions), objects=_objects.to_json(report))


def _with_lint(m: Manifest, res: LintResult) -> Manifest:
    """The release's states, callbacks and shadow variables, and the lint's findings."""
    from .lint.output import lint_json

    doc = lint_json(res)
    facts = doc["facts"].get(res.release, {"states": [], "callbacks": [], "shadow": []})
    section = {"schema": doc["schema"], "against": doc["against"], "summary": doc["summary"],
               "findings": doc["findings"], "states": facts["states"], "callbacks": facts["callbacks"],
               "shadow": facts["shadow"]}
    return replace(m, **lint_sections(section))


def write(analysis: Analysis, outdir: Path, *, force: bool = False,
          lint: LintResult | None = None, objects: ObjectReport | None = None,
          keep_source_only: bool = False, immediate: tuple[str, ...] = (),
          header_limit: int = HEADER_UNITS) -> None:
    check_target(outdir, force)
    diff, files = cumulative_diff(analysis)
    units = header_units(analysis, header_limit)
    sources = release_sources(analysis, units)
    doc = replace(manifest(analysis, files, lint, objects, keep_source_only, sources, units),
                  immediate=tuple(immediate)).to_json()
    with staged(outdir) as tmp:
        (tmp / "cumulative.diff").write_text(diff, encoding="utf-8", errors="surrogateescape")
        (tmp / "manifest.json").write_text(dump_json(doc) + "\n", encoding="utf-8")
        for i, p in enumerate(analysis.replay.series.patches[: analysis.release], 1):
            inside(tmp, _patch_file(i)).parent.mkdir(exist_ok=True)
            inside(tmp, _patch_file(i)).write_bytes(p.data)
        for folder, files in (("sources", sources), ("base", base_sources(analysis, sources))):
            for path, data in files.items():
                dest = inside(tmp / folder, path)
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(data)
