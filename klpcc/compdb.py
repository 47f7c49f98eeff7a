"""Build information: a ``compile_commands.json`` (as CMake, Meson, Bear and the
kernel's ``gen_compile_commands.py`` write it), and a scratch *overlay* where the
files a series touches are written as a release has them, so that any unit of the
base tree can be compiled as that release would compile it."""

from __future__ import annotations

import json
import os
import posixpath
import shlex
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from .atomic import write_atomic
from .errors import KlpccError
from .history import Replay

_DROP_WITH_ARG = {"-o", "-MF", "-MT", "-MQ", "-include-pch", "-dumpdir", "-dumpbase"}
_INCLUDE_FLAGS = ("-iquote", "-isystem", "-idirafter", "-I")
_DROP = ("-c", "-M", "-MM", "-MD", "-MMD", "-MP", "-Werror", "-pipe", "-S", "-E")
_DROP_PREFIXES = ("-Werror", "-o", "-Wp,-M", "-flto")
_FILE_FLAGS = ("-include", "-imacros")  # a file argument that may be one the series touches
_SOURCE_SUFFIXES = (".c", ".cc", ".cpp", ".cxx", ".C", ".i")


class BuildFailed(Exception):
    """A compile, preprocess or probe step failed; callers fall back or note it."""


@dataclass(frozen=True, slots=True)
class Command:
    directory: str
    args: tuple[str, ...]
    file: str  # as the entry names it


class CompileCommands:
    """A ``compile_commands.json``: each translation unit's compile command."""

    def __init__(self, path: str | Path, root: Path | None):
        self.path = Path(path)
        shown = str(path)
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise KlpccError(f"cannot read it: {exc.strerror}", patch=shown) from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            line = getattr(exc, "lineno", None)
            raise KlpccError(f"is not a JSON compilation database: {exc}", patch=shown,
                             line=line) from None
        if not isinstance(doc, list):
            raise KlpccError("is not a JSON compilation database (expected a list of entries)",
                             patch=shown)
        self.root = root.resolve() if root is not None else None
        self.entries: dict[str, Command] = {}
        for i, entry in enumerate(doc, 1):
            if not isinstance(entry, dict) or not isinstance(entry.get("directory"), str) \
                    or not isinstance(entry.get("file"), str):
                raise KlpccError(f"entry {i} needs 'directory' and 'file' strings", patch=shown)
            if isinstance(entry.get("arguments"), list):
                args = tuple(str(a) for a in entry["arguments"])
            elif isinstance(entry.get("command"), str):
                try:
                    args = tuple(shlex.split(entry["command"]))
                except ValueError as exc:
                    raise KlpccError(f"entry {i}: cannot split its command: {exc}", patch=shown) from None
            else:
                raise KlpccError(f"entry {i} needs 'arguments' or 'command'", patch=shown)
            directory = entry["directory"]
            if not os.path.isabs(directory):  # relative to the database's own directory
                directory = str((self.path.parent / directory).resolve())
            if not entry["file"].endswith(_SOURCE_SUFFIXES):
                continue  # a header (a precompiled one) is no translation unit
            full = Path(directory, entry["file"])
            rel = self._relative(full)
            if rel is not None:
                self.entries.setdefault(rel, Command(directory, args, entry["file"]))

    def _relative(self, full: Path) -> str | None:
        if self.root is None:
            return None
        try:
            return full.resolve().relative_to(self.root).as_posix()
        except (OSError, ValueError):
            return None

    def get(self, path: str) -> Command | None:
        return self.entries.get(path)


class Overlay:
    """The touched files of each release, written out on demand under one scratch
    directory, and the compile commands rewritten to read them."""

    def __init__(self, rep: Replay, commands: CompileCommands):
        if commands.root is None:
            raise KlpccError("the compilation database needs the base as a directory")
        self.rep = rep
        self.commands = commands
        self.root: Path = commands.root
        self._tmp: Path | None = None
        self._dirs: dict[int, Path] = {}
        self._lock = threading.RLock()  # units are compiled from several threads

    @property
    def scratch(self) -> Path:
        with self._lock:
            if self._tmp is None:
                self._tmp = Path(tempfile.mkdtemp(prefix="klpcc-overlay-"))
            return self._tmp

    def close(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def directory(self, release: int) -> Path:
        """The files the series touches, as ``release`` has them."""
        with self._lock:
            return self._directory(release)

    def _directory(self, release: int) -> Path:
        if release not in self._dirs:
            root = self.scratch / f"r{release}"
            for path in self.rep.snapshots.paths():
                try:
                    data = self.rep.snapshots.read(path, release)
                except KeyError:
                    continue
                if data is None:
                    continue
                target = root / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            self._siblings(root)
            root.mkdir(parents=True, exist_ok=True)
            self._dirs[release] = root
        return self._dirs[release]

    def _siblings(self, root: Path) -> None:
        """Copy the untouched headers beside each touched one: a header that includes
        a touched neighbour with quotes finds it in its own directory first, so it must
        be read from the overlay too."""
        touched = set(self.rep.snapshots.paths())
        dirs = {posixpath.dirname(p) for p in touched if not p.endswith(_SOURCE_SUFFIXES)}
        for d in sorted(dirs):
            src_dir = self.root / d
            try:
                names = sorted(os.listdir(src_dir))
            except OSError:
                continue
            for name in names[:5000]:
                if not name.endswith((".h", ".hh", ".hpp", ".inc", ".def")):
                    continue
                target = root / d / name
                if posixpath.join(d, name) in touched or target.exists():
                    continue  # the release's own version (or its absence) stands
                try:
                    data = (src_dir / name).read_bytes()
                except OSError:
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)

    def argv(self, release: int, path: str, cmd: Command) -> tuple[list[str], Path]:
        """The compile command of unit ``path`` for ``release``, without its output,
        dependency and ``-c`` options, and the unit's file in the overlay."""
        root = self.root
        overlay = self.directory(release)
        src = overlay / path
        with self._lock:
            if not src.exists():  # a unit the series does not touch: compiled beside the release's files
                data = self.rep.base.read(path)
                if data is None:
                    raise FileNotFoundError(f"{path} does not exist in release {release}")
                src.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(src, data)
        args = list(cmd.args)
        compiler = args[0] if args else "cc"
        out: list[str] = []
        source_abs = str(Path(cmd.directory, cmd.file).resolve())
        rest = args[1:]
        i = 0
        while i < len(rest):
            a = rest[i]
            i += 1
            if a in _DROP_WITH_ARG:
                i += 1
                continue
            if a in _DROP or a.startswith(_DROP_PREFIXES) or (
                    not a.startswith("-") and str(Path(cmd.directory, a).resolve()) == source_abs):
                continue
            if a in _FILE_FLAGS and i < len(rest):  # -include config.h: the release's copy
                target = Path(cmd.directory, rest[i]).resolve()
                i += 1
                inside = target == root or root in target.parents
                if inside and (overlay / target.relative_to(root)).exists():
                    target = overlay / target.relative_to(root)
                out += [a, str(target)]
                continue
            flag = next((f for f in _INCLUDE_FLAGS if a.startswith(f)), None)
            if flag is not None:
                value = a[len(flag):]
                if not value and i < len(rest):  # -I dir, in two arguments
                    value = rest[i]
                    i += 1
                inc = Path(cmd.directory, value).resolve()
                if inc == root or root in inc.parents:
                    out.append(f"{flag}{overlay / os.path.relpath(inc, root)}")
                out.append(f"{flag}{value}")
                continue
            out.append(a)
        out.append(f"-iquote{Path(source_abs).parent}")
        out.append("-fno-lto")  # objects with code in them, not LTO bytecode
        return [compiler, *out], src

