"""Stage 7: the cumulative patch bundle of a release.

``manifest.json`` (schema ``klpcc.manifest/2``), ``cumulative.diff`` (base to
the release, for every file the series touched) and ``sources/`` (the release's
version of every changed C file and of the local headers it includes: what a target
builds the patch from), written atomically: everything goes to a temporary directory
next to the target, which is renamed into place.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import posixpath
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from .errors import KlpccError
from .functions import is_c_file, split_lines
from .history import Analysis

if TYPE_CHECKING:
    from .lint import LintResult
    from .objects import ObjectReport
from .report import analysis_json, dump_json
from .trees import blob_id

MANIFEST_SCHEMA = "klpcc.manifest/2"


def _absolute(outdir: Path) -> Path:
    """OUTDIR made absolute without following links (a link is replaced, not its target)."""
    return Path(os.path.abspath(outdir))


def check_target(outdir: Path, force: bool) -> None:
    target = _absolute(outdir)
    if target == Path(os.getcwd()) or target in Path(os.getcwd()).parents or target.parent == target:
        raise KlpccError(f"{outdir} holds the current directory; name a directory of its own")
    if os.path.lexists(target) and not force:
        raise KlpccError(f"{outdir} exists; use --force to replace it")
    if os.path.lexists(target) and not target.is_dir():
        raise KlpccError(f"{outdir} exists and is not a directory")
    parent = target.parent
    existing = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise KlpccError(f"cannot create {outdir}: {existing} is not a directory")


def cumulative_diff(analysis: Analysis) -> tuple[str, list[dict]]:
    """Unified diff from the base to the release for every file that differs."""
    rep = analysis.replay
    snaps = rep.snapshots
    out: list[str] = []
    files: list[dict] = []
    for path in snaps.changed_paths(analysis.release):
        old = snaps.read(path, 0)
        new = snaps.read(path, analysis.release)
        status = "added" if old is None else "deleted" if new is None else "modified"
        files.append({
            "path": path,
            "status": status,
            "base_sha256": None if old is None else blob_id(old),
            "sha256": None if new is None else blob_id(new),
        })
        out.append(_file_diff(path, old, new))
    return "".join(out), files


def _file_diff(path: str, old: bytes | None, new: bytes | None) -> str:
    a = [] if old is None else [ln.decode("utf-8", "surrogateescape") for ln in split_lines(old)]
    b = [] if new is None else [ln.decode("utf-8", "surrogateescape") for ln in split_lines(new)]
    head = [f"diff --git a/{path} b/{path}\n"]
    if old is None:
        head.append("new file mode 100644\n")
    elif new is None:
        head.append("deleted file mode 100644\n")
    # like git, end a name with a tab when it holds a space, so that patch(1) reads it whole
    tab = "\t" if " " in path else ""
    src = "/dev/null" if old is None else f"a/{path}{tab}"
    dst = "/dev/null" if new is None else f"b/{path}{tab}"
    body: list[str] = []
    for line in difflib.unified_diff(a, b, src, dst, n=3, lineterm=""):
        if line.startswith(("---", "+++", "@@")):
            body.append(line.rstrip("\n") + "\n")
        elif line.endswith("\n"):
            body.append(line)
        else:
            body.append(line + "\n\\ No newline at end of file\n")
    return "".join(head + body)


_LOCAL_INCLUDE = re.compile(rb'^[ \t]*#[ \t]*include[ \t]*"([^"\n]+)"', re.M)


def release_sources(analysis: Analysis) -> dict[str, bytes]:
    """The release's version of every changed C file, and the headers those include
    with ``#include "..."`` from their own directory (transitively): with the kernel
    or program headers, what the patch's code is compiled from."""
    rep = analysis.replay
    snaps = rep.snapshots

    def read(path: str) -> bytes | None:
        try:
            return snaps.read(path, analysis.release)
        except KeyError:
            return rep.base.read(path)

    out: dict[str, bytes] = {}
    todo = [p for p in snaps.changed_paths(analysis.release) if is_c_file(p)]
    while todo:
        path = todo.pop()
        if path in out:
            continue
        data = read(path)
        if data is None:
            continue
        out[path] = data
        for m in _LOCAL_INCLUDE.finditer(data):
            name = m.group(1).decode("utf-8", "surrogateescape")
            cand = posixpath.normpath(posixpath.join(posixpath.dirname(path), name))
            if not cand.startswith("../") and cand not in out:
                todo.append(cand)
    return dict(sorted(out.items()))


def manifest(analysis: Analysis, files: list[dict], lint: LintResult | None = None,
             objects: ObjectReport | None = None, keep_source_only: bool = False,
             sources: dict[str, bytes] | None = None) -> dict:
    doc = analysis_json(analysis)
    if sources is None:
        sources = release_sources(analysis)
    rep = analysis.replay
    base = dict(rep.base.identity())
    base["files"] = [
        {"path": p, "sha256": rep.snapshots.blob_at(p, 0)} for p in rep.snapshots.paths()
    ]
    return {
        "schema": MANIFEST_SCHEMA,
        "generator": f"klpcc {__version__}",
        "release": {"name": analysis.release_name, "index": analysis.release},
        "releases": doc["releases"],
        "base": base,
        "functions": doc["functions"],
        "nops": doc["nops"],
        "outside": doc["outside"],
        "files": files,
        "diff": "cumulative.diff",
        "sources": [{"path": p, "sha256": blob_id(d)} for p, d in sources.items()],
        "dependencies": doc["dependencies"],
        "warnings": doc["warnings"],
        **(_lint_sections(lint) if lint is not None else {}),
        **(_object_sections(doc, objects, keep_source_only) if objects is not None else {}),
    }


def _object_sections(doc: dict, report: ObjectReport, keep_source_only: bool) -> dict:
    """With the object-level check: functions whose code changed though their source
    did not join the patch (with the reason); functions whose code did not change
    leave it unless asked to stay."""
    from . import objects as _objects

    functions = list(doc["functions"])
    carried = {(f.function, f.file) for f in report.functions if f.what in ("both", "code-only")}
    # a header's function one unit inlined away may still have code in another unit
    source_only = {(f.function, f.file) for f in report.by("source-only")} - carried
    if not keep_source_only:
        functions = [f for f in functions if (f["name"], f["file"]) not in source_only]
    listed = {(f["name"], f["file"]) for f in functions}
    for f in report.by("code-only"):
        if (f.function, f.file) in listed:
            continue
        listed.add((f.function, f.file))
        functions.append({"name": f.function, "file": f.file, "change": "modified",
                          "origin": "objects", "reason": f.reason, "symbols": list(f.symbols)})
    return {"functions": functions, "objects": _objects.to_json(report)}


def _lint_sections(res: LintResult) -> dict:
    from .lint.output import lint_json

    doc = lint_json(res)
    facts = doc["facts"].get(res.release, {"states": [], "callbacks": [], "shadow": []})
    return {
        "states": facts["states"],
        "callbacks": facts["callbacks"],
        "shadow": facts["shadow"],
        "lint": {"schema": doc["schema"], "against": doc["against"], "summary": doc["summary"],
                 "findings": doc["findings"]},
    }


def write(analysis: Analysis, outdir: Path, *, force: bool = False,
          lint: LintResult | None = None, objects: ObjectReport | None = None,
          keep_source_only: bool = False) -> None:
    check_target(outdir, force)
    diff, files = cumulative_diff(analysis)
    sources = release_sources(analysis)
    doc = manifest(analysis, files, lint, objects, keep_source_only, sources)
    with staged(outdir) as tmp:
        (tmp / "cumulative.diff").write_text(diff, encoding="utf-8", errors="surrogateescape")
        (tmp / "manifest.json").write_text(dump_json(doc) + "\n", encoding="utf-8")
        for path, data in sources.items():
            dest = tmp / "sources" / path
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)


@contextlib.contextmanager
def staged(outdir: Path) -> Iterator[Path]:
    """A temporary directory next to ``outdir`` that replaces it when the block ends
    without an error, and is removed when it does not (with the directories it made)."""
    outdir = _absolute(outdir)
    parent = outdir.parent
    created = [p for p in (parent, *parent.parents) if not p.exists()]
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KlpccError(f"cannot create {parent}: {exc.strerror}") from None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.tmp-", dir=parent))
    except OSError:
        _remove_created(created)
        raise
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if os.path.lexists(outdir):
            old = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.old-", dir=parent))
            try:
                os.rename(outdir, old / "x")
                try:
                    os.rename(tmp, outdir)
                except OSError:
                    os.rename(old / "x", outdir)
                    raise
            finally:
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, outdir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_created(created)
        raise


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all."""
    target = _absolute(Path(path))
    if target.is_dir():
        raise KlpccError(f"{path} is a directory")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    except FileNotFoundError:
        raise KlpccError(f"cannot write {path}: its directory does not exist") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _remove_created(dirs: list[Path]) -> None:
    """Remove the (empty) directories a failed write created, innermost first."""
    for d in dirs:
        try:
            d.rmdir()
        except OSError:
            break
