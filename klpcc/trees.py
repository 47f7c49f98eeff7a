"""Stage 3: the base source tree and the tree of each release.

The base is read lazily (a directory, or a git commit).  Releases are stored as
content-addressed snapshots of the files the series touches: per path, the blob it
has from each release on, so cost grows with the diffs, not with the size of the
tree times the number of releases.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from bisect import bisect_right
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


class DirectoryTree:
    def __init__(self, root: str):
        self.root = Path(root)
        if not self.root.is_dir():
            raise KlpccError(f"the base source tree {root} is not a directory")
        self._real = self.root.resolve()

    def read(self, path: str) -> bytes | None:
        full = (self.root / path)
        try:
            real = full.resolve()
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


@dataclass
class Snapshots:
    """Content of every touched file in every release, stored once per content.

    ``versions[path]`` is a list of (release, blob id or None for absent), release 0
    being the base; the content of a path in release r is its last version at or
    before r.  Content is kept for the base, for the releases in ``keep`` and for
    the latest version of each path; other versions are recorded by id only.
    """

    keep: frozenset[int] = frozenset()
    versions: dict[str, list[tuple[int, str | None]]] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    _pinned: set[str] = field(default_factory=set)

    def record(self, path: str, release: int, data: bytes | None) -> None:
        """``path`` has ``data`` from ``release`` on (None: it does not exist)."""
        bid = None if data is None else blob_id(data)
        history = self.versions.setdefault(path, [])
        if history and history[-1][0] == release:
            history.pop()
        if history:
            prev_release, prev_bid = history[-1]
            # the version being superseded is still needed if a kept release saw it
            if prev_bid is not None and prev_bid not in self._pinned and not any(
                prev_release <= k < release for k in self.keep
            ):
                self.blobs.pop(prev_bid, None)
            elif prev_bid is not None:
                self._pinned.add(prev_bid)
        if bid is not None and data is not None:
            self.blobs.setdefault(bid, data)
            if release == 0:
                self._pinned.add(bid)
        history.append((release, bid))

    def blob_at(self, path: str, release: int) -> str | None:
        history = self.versions.get(path)
        if not history:
            raise KeyError(path)
        i = bisect_right([r for r, _ in history], release) - 1
        if i < 0:
            raise KeyError(path)
        return history[i][1]

    def read(self, path: str, release: int) -> bytes | None:
        """Content of ``path`` at ``release`` (base is 0); the release must be kept."""
        bid = self.blob_at(path, release)
        if bid is None:
            return None
        try:
            return self.blobs[bid]
        except KeyError:
            raise KeyError(f"{path}@{release} was not kept") from None

    def paths(self) -> list[str]:
        return sorted(self.versions)

    def changed_paths(self, release: int) -> list[str]:
        """Paths whose content at ``release`` differs from the base."""
        return [p for p in self.paths() if self.blob_at(p, release) != self.blob_at(p, 0)]
