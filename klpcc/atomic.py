"""Outputs written whole or not at all.

Every file and directory klpcc writes goes through here: :func:`write_atomic` for a
file (text or bytes: a report, a patch object, a cache entry), :func:`staged` for a
directory (a bundle, a module's build directory).  Each is written under a temporary
name next to its target and renamed into place only when complete; on any error,
nothing is left behind, not even the parent directories the write created.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import KlpccError


def absolute(path: str | Path) -> Path:
    """``path`` made absolute without following links (a link is replaced, not its target)."""
    return Path(os.path.abspath(path))


BUNDLE_MARK = "manifest.json"  # what a directory klpcc compile wrote holds


def check_target(outdir: str | Path, force: bool, marks: tuple[str, ...] = (BUNDLE_MARK,)) -> None:
    """Refuse an output directory that cannot (or may not) be replaced.  ``--force``
    replaces a link (not what it points to), an empty directory, or a directory holding
    one of ``marks`` (the files by which klpcc knows its own outputs): never any other
    directory."""
    target = absolute(outdir)
    if target == Path(os.getcwd()) or target in Path(os.getcwd()).parents or target.parent == target:
        raise KlpccError(f"{outdir} holds the current directory; name a directory of its own")
    if os.path.lexists(target) and not force:
        raise KlpccError(f"{outdir} exists; use --force to replace it")
    if os.path.lexists(target) and not target.is_dir():
        raise KlpccError(f"{outdir} exists and is not a directory")
    if os.path.lexists(target) and not target.is_symlink() and any(target.iterdir()) \
            and not any(_klpcc_wrote(target / m) for m in marks):
        raise KlpccError(f"{outdir} is not a directory klpcc wrote (it has no {' or '.join(marks)} "
                         "of klpcc's); --force replaces only those: remove it yourself or name another")
    parent = target.parent
    existing = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise KlpccError(f"cannot create {outdir}: {existing} is not a directory")


def _klpcc_wrote(path: Path) -> bool:
    """Is ``path`` a file klpcc wrote: a manifest whose schema is klpcc's (its first key),
    or a header of klpcc's runtime (a ``manifest.json`` alone may be anybody's)?"""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    if path.name.endswith(".json"):
        return re.match(rb'\s*\{\s*"schema"\s*:\s*"klpcc\.', head) is not None
    return b"klpcc" in head


def _as_written(path: str | Path) -> Path:
    """Where writing ``path`` lands: links in its directories followed, not a link at
    its end (that link is replaced, not what it points to)."""
    target = absolute(path)
    return Path(os.path.realpath(target.parent)) / target.name


@dataclass(frozen=True)
class Inputs:
    """What a run reads, so that no output of it lands on its inputs: ``files`` read
    (patches, series files, configurations), ``trees`` read whole (a bundle, a git
    repository's object store, a kernel build directory) and ``sources`` (base source
    trees: their C files are read, and the files ``touched`` names)."""

    files: tuple[Path, ...] = ()
    trees: tuple[Path, ...] = ()
    sources: tuple[Path, ...] = ()
    touched: frozenset[str] = frozenset()  # paths under a source tree the run reads

    @staticmethod
    def of(files: Iterable[str | Path | None] = (), trees: Iterable[str | Path | None] = (),
           sources: Iterable[str | Path | None] = (), touched: Iterable[str] = ()) -> Inputs:
        def real(paths: Iterable[str | Path | None]) -> tuple[Path, ...]:
            return tuple(Path(os.path.realpath(p)) for p in paths if p is not None and str(p))

        return Inputs(real(files), real(trees), real(sources), frozenset(touched))

    def check_dir(self, outdir: str | Path) -> None:
        """An output directory (which ``--force`` replaces whole) must be no input and
        hold none."""
        out = _as_written(outdir)
        for p in (*self.files, *self.trees, *self.sources):
            if out == p or out in p.parents:
                raise KlpccError(f"{outdir} {'is' if out == p else 'holds'} {p}, which this run reads; "
                                 "name a directory of its own")

    def check_file(self, output: str | Path) -> None:
        """An output file must not be written over a file the run reads."""
        from .c.language import is_c_file

        out = _as_written(output)
        for p in self.files:
            if out == p:
                raise KlpccError(f"{output} is {p}, which this run reads; name another output")
        for tree in self.trees:
            if tree in out.parents:
                raise KlpccError(f"{output} is inside {tree}, which this run reads; name another output")
        for root in self.sources:
            if root in out.parents and out.is_file():
                rel = out.relative_to(root).as_posix()
                if is_c_file(rel) or rel in self.touched:
                    raise KlpccError(f"{output} is a file of the base tree {root}, which this run reads; "
                                     "name another output")


def inside(root: Path, path: str) -> Path:
    """``root / path`` for a relative path that stays under ``root``: a file klpcc
    writes into an output never lands anywhere else."""
    parts = path.split("/")
    if not path or path.startswith("/") or ".." in parts or "\0" in path:
        raise KlpccError(f"refusing to write {path!r}: not a path inside {root.name}")
    return root / path


def check_file_target(path: str | Path, force: bool) -> None:
    """Refuse an output file that exists (without ``force``) or is a directory."""
    target = Path(path)
    if target.is_dir():
        raise KlpccError(f"{path} is a directory")
    if target.exists() and not force:
        raise KlpccError(f"{path} exists; use --force to replace it")


@contextlib.contextmanager
def staged(outdir: str | Path) -> Iterator[Path]:
    """A temporary directory next to ``outdir`` that replaces it when the block ends
    without an error, and is removed when it does not (with the directories it made)."""
    outdir = absolute(outdir)
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


def write_atomic(path: str | Path, data: str | bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` whole or not at all (text as UTF-8, undecodable bytes
    kept as they were read).  A path that is not a regular file (``/dev/stdout``,
    ``/dev/null``, a pipe) is written to as it is, not replaced."""
    target = absolute(path)
    if target.is_dir():
        raise KlpccError(f"{path} is a directory")
    raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    if target.exists() and not target.is_file():
        with open(target, "wb") as fh:
            fh.write(raw)
        return
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    except FileNotFoundError:
        raise KlpccError(f"cannot write {path}: its directory does not exist") from None
    except PermissionError:
        raise KlpccError(f"cannot write {path}: permission denied in its directory") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
        os.chmod(tmp, mode)
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
