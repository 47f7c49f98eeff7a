"""Stage 3: the base source tree and the tree of each release.

The base is read lazily (a directory, or a git commit).  Releases are stored as
content-addressed snapshots of the files the series touches: per path, the blob it
has from each release on, so cost grows with the diffs, not with the size of the
tree times the number of releases.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import subprocess
import tempfile
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .errors import KlpccError


def blob_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BaseTree(Protocol):
    """The source tree the series applies to."""

    def read(self, path: str) -> bytes | None:
        """Content of ``path`` (relative, '/'-separated), or None if it does not exist."""

    def identity(self) -> dict[str, str]:
        """What identifies this tree in a manifest."""

    def exists(self, path: str) -> bool:
        """Is there a file or directory at ``path``?"""

    def mentions(self, names: Iterable[str]) -> dict[str, list[str]]:
        """For each identifier, the C files (``.c``/``.h``) of the tree that name it."""

    def includers(self, names: Iterable[str]) -> list[str]:
        """The C files (``.c``/``.h``) of the tree with an ``#include`` of a file whose
        name (its last component) is one of ``names``."""


class DirectoryTree:
    def __init__(self, root: str):
        if not str(root):
            raise KlpccError("the base source tree is named by an empty path")
        self.root = Path(root)
        if not self.root.is_dir():
            raise KlpccError(f"the base source tree {root} is not a directory")
        self._real = self.root.resolve()

    def _inside(self, path: str) -> Path:
        """``path`` under the root; a path that names something outside is refused."""
        parts = path.split("/")
        if not path or path.startswith("/") or ".." in parts or "\0" in path:
            raise KlpccError(f"{path!r} is not a path inside the source tree")
        return self.root / path

    def read(self, path: str) -> bytes | None:
        full = self._inside(path)
        try:
            real = full.resolve()
        except RuntimeError:
            raise KlpccError(f"{path} is a symbolic link that loops in the source tree") from None
        except OSError:
            return None
        if real != self._real and self._real not in real.parents:
            raise KlpccError(f"{path} leads outside the source tree (a symbolic link)")
        try:
            return full.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except IsADirectoryError:
            raise KlpccError(f"{path} is a directory in the source tree") from None
        except OSError as exc:
            raise KlpccError(f"cannot read {path}: {exc.strerror}") from None

    def identity(self) -> dict[str, str]:
        return {"kind": "directory", "path": os.path.abspath(self.root)}

    def exists(self, path: str) -> bool:
        try:
            full = self._inside(path)
        except KlpccError:
            return False  # nothing outside the tree exists in it
        try:
            real = full.resolve()
        except RuntimeError:
            raise KlpccError(f"{path} is a symbolic link that loops in the source tree") from None
        except OSError:
            return False
        inside = real == self._real or self._real in real.parents
        return inside and full.exists()

    def mentions(self, names: Iterable[str]) -> dict[str, list[str]]:
        wanted = sorted(set(names))
        out: dict[str, list[str]] = {n: [] for n in wanted}
        if not wanted:
            return out
        pattern = re.compile(rb"\b(" + b"|".join(re.escape(n.encode()) for n in wanted) + rb")\b")
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fname in sorted(filenames):
                if not fname.endswith((".c", ".h")):
                    continue
                full = os.path.join(dirpath, fname)
                try:
                    with open(full, "rb") as fh:
                        data = fh.read()
                except OSError:
                    continue
                found = {m.group(1).decode() for m in pattern.finditer(data)}
                rel = os.path.relpath(full, self.root).replace(os.sep, "/")
                for n in sorted(found):
                    out[n].append(rel)
        return out


    def includers(self, names: Iterable[str]) -> list[str]:
        pattern = _include_pattern(names)
        if pattern is None:
            return []
        # grep reads a kernel tree in a second or two, where Python takes ten
        with _patterns(pattern) as file:
            proc = _run(["grep", "-r", "-l", "-Z", "-I", "-E", *(f"--include=*{s}" for s in _INCLUDED),
                         "--exclude-dir=.?*", "-f", file, "."], self.root)
        return _listed(proc.stdout, "./")


class GitTree:
    def __init__(self, repo: str, commit: str):
        self.repo = repo
        self.commit = commit

    def read(self, path: str) -> bytes | None:
        proc = subprocess.run(
            ["git", "-C", self.repo, "cat-file", "blob", f"{self.commit}:{path}"],
            capture_output=True, check=False,
        )
        if proc.returncode != 0:
            return None
        return proc.stdout

    def identity(self) -> dict[str, str]:
        return {"kind": "git", "path": os.path.abspath(self.repo), "commit": self.commit}

    def exists(self, path: str) -> bool:
        proc = subprocess.run(
            ["git", "-C", self.repo, "cat-file", "-e", f"{self.commit}:{path.rstrip('/')}"],
            capture_output=True, check=False,
        )
        return proc.returncode == 0

    def mentions(self, names: Iterable[str]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for n in sorted(set(names)):
            proc = subprocess.run(
                ["git", "-C", self.repo, "grep", "-l", "-w", "-F", "-e", n, self.commit, "--",
                 "*.c", "*.h"], capture_output=True, check=False)
            prefix = f"{self.commit}:"
            out[n] = sorted(line[len(prefix):] if line.startswith(prefix) else line
                            for line in proc.stdout.decode("utf-8", "replace").splitlines())
        return out


    def includers(self, names: Iterable[str]) -> list[str]:
        pattern = _include_pattern(names)
        if pattern is None:
            return []
        with _patterns(pattern) as file:
            proc = _run(["git", "-C", self.repo, "grep", "-l", "-z", "-I", "-E", "-f", file, self.commit,
                         "--", *(f"*{s}" for s in _INCLUDED)], None)
        return _listed(proc.stdout, f"{self.commit}:")


# the files that include others: C files, headers, and the fragments C files include
_INCLUDED = (".c", ".h", ".inc", ".def")


def _include_pattern(names: Iterable[str]) -> list[str] | None:
    """Extended regular expressions (POSIX), one a line, for an ``#include`` of one of
    ``names`` (a name with a newline cannot be included)."""
    wanted = sorted({n for n in names if n and "/" not in n and "\n" not in n and "\0" not in n})
    if not wanted:
        return None
    head = r'^[[:space:]]*#[[:space:]]*include[[:space:]]*["<]([^">]*/)?'
    return [head + _ERE_SPECIAL.sub(r"\\\g<0>", n) + '[">]' for n in wanted]


_ERE_SPECIAL = re.compile(r"[][.^$*+?(){}|\\]")


@contextlib.contextmanager
def _patterns(patterns: list[str]):
    """A file of ``patterns`` for ``grep -f`` (any number of them, whatever the argument limit)."""
    with tempfile.NamedTemporaryFile("wb", prefix="klpcc-includes-", suffix=".txt") as fh:
        fh.write(b"".join(p.encode("utf-8", "surrogateescape") + b"\n" for p in patterns))
        fh.flush()
        yield fh.name


def _run(argv: list[str], cwd: Path | None) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, check=False)
    except OSError as exc:
        raise KlpccError(f"cannot run {argv[0]} to find the files that include a header: {exc}") from None
    if proc.returncode not in (0, 1):  # 1: nothing found; anything else: it could not read the tree
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise KlpccError(f"cannot find the files that include a header ({argv[0]}): "
                         f"{err[0] if err else f'exit {proc.returncode}'}")
    return proc


def _listed(out: bytes, prefix: str) -> list[str]:
    names = [n.decode("utf-8", "surrogateescape") for n in out.split(b"\0") if n]
    return sorted(n[len(prefix):] if n.startswith(prefix) else n for n in names)


@dataclass
class Snapshots:
    """Content of every touched file in every release.

    ``versions[path]`` is a list of (release, blob id or None for absent), release 0
    being the base; the content of a path in release r is its last version at or
    before r.  Content is kept per path for the base, for the latest version, and
    for versions some release in ``keep`` sees; other versions are known by id only.
    """

    keep: frozenset[int] = frozenset()
    versions: dict[str, list[tuple[int, str | None]]] = field(default_factory=dict)
    contents: dict[tuple[str, int], bytes] = field(default_factory=dict)  # (path, version release)

    def record(self, path: str, release: int, data: bytes | None) -> None:
        """``path`` has ``data`` from ``release`` on (None: it does not exist)."""
        history = self.versions.setdefault(path, [])
        if history and history[-1][0] == release:
            history.pop()
            self.contents.pop((path, release), None)
        if history:
            prev = history[-1][0]
            # the superseded version stays only if the base or a kept release sees it
            if prev != 0 and not any(prev <= k < release for k in self.keep):
                self.contents.pop((path, prev), None)
        history.append((release, None if data is None else blob_id(data)))
        if data is not None:
            self.contents[(path, release)] = data

    def _version(self, path: str, release: int) -> tuple[int, str | None]:
        """(release that wrote it, blob id) of the version of ``path`` at ``release``."""
        history = self.versions.get(path)
        if not history:
            raise KeyError(path)
        i = bisect_right([r for r, _ in history], release) - 1
        if i < 0:
            raise KeyError(path)
        return history[i]

    def blob_at(self, path: str, release: int) -> str | None:
        return self._version(path, release)[1]

    def read(self, path: str, release: int) -> bytes | None:
        """Content of ``path`` at ``release`` (base is 0); the release must be kept."""
        version, bid = self._version(path, release)
        if bid is None:
            return None
        try:
            return self.contents[(path, version)]
        except KeyError:
            raise KeyError(f"{path}@{release} was not kept") from None

    def paths(self) -> list[str]:
        return sorted(self.versions)

    def changed_paths(self, release: int) -> list[str]:
        """Paths whose content at ``release`` differs from the base."""
        return [p for p in self.paths() if self.blob_at(p, release) != self.blob_at(p, 0)]
