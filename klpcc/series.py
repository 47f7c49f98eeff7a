"""Stage 1: load a series of patches (quilt series, patch files, or a git range).

Each patch is one release of the live patch, named by its file stem (or, for a git
range, by its commit subject).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import KlpccError, max_input_bytes, too_large
from .trees import BaseTree, DirectoryTree, GitTree


@dataclass(frozen=True, slots=True)
class Patch:
    """One patch of the series: one release."""

    name: str  # release name
    path: str  # where it came from, as shown in messages
    data: bytes
    strip: int | None = None  # -pN from a quilt series; None: detect


@dataclass(frozen=True, slots=True)
class Series:
    patches: tuple[Patch, ...]
    origin: str  # what was loaded, for reports
    base: BaseTree | None = None  # the base tree, when the series brings it (git)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.patches]

    def index(self, ref: str | int | None, what: str = "release") -> int:
        """1-based position of a release given by name or 1-based position."""
        n = len(self.patches)
        if ref is None:
            return n
        text = str(ref).strip()
        for i, patch in enumerate(self.patches, 1):
            if patch.name == text:
                return i
        if text.isascii() and text.isdigit() and 1 <= int(text) <= n:
            return int(text)
        names = ", ".join(self.names[:8]) + (", ..." if n > 8 else "")
        raise KlpccError(f"unknown {what} {text!r}: the series has {n} releases ({names})")


_PATCH_SUFFIXES = (".patch", ".diff", ".mbox", ".eml", ".txt")
_QUILT_OPT = re.compile(r"^-p(\d+)$")


def release_name(path: str) -> str:
    name = os.path.basename(path)
    for suffix in _PATCH_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _read(path: Path, shown: str) -> bytes:
    try:
        if path.is_file() and (size := path.stat().st_size) > max_input_bytes():
            raise KlpccError(too_large(size), patch=shown)
        return path.read_bytes()
    except FileNotFoundError:
        raise KlpccError("no such file", patch=shown) from None
    except IsADirectoryError:
        raise KlpccError("is a directory, not a patch", patch=shown) from None
    except OSError as exc:
        raise KlpccError(f"cannot read: {exc.strerror}", patch=shown) from None


def _looks_like_diff(data: bytes) -> bool:
    return bool(re.search(rb"^(diff |--- |\+\+\+ |@@ |Index: |GIT binary patch)", data, re.M))


def _parse_series_file(path: Path) -> list[Patch]:
    shown = str(path)
    text = _read(path, shown).decode("utf-8", "surrogateescape")
    base = path.parent
    patches: list[Patch] = []
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = _uncomment(raw)
        if not line:
            continue
        fields = line.split()
        name, opts = fields[0], fields[1:]
        strip = None
        for opt in opts:
            m = _QUILT_OPT.match(opt)
            if m:
                strip = int(m.group(1))
            elif opt in ("-R",):
                raise KlpccError(f"reversed patches (-R) are not supported: {name}",
                                 patch=shown, line=lineno)
            else:
                raise KlpccError(f"unknown option {opt!r} for {name}", patch=shown, line=lineno)
        ppath = base / name
        if not ppath.is_file():
            raise KlpccError(f"the series names {name}, which does not exist", patch=shown,
                             line=lineno)
        rname = release_name(name)
        if rname in seen:
            raise KlpccError(f"release {rname!r} is listed twice (lines {seen[rname]} and {lineno})",
                             patch=shown, line=lineno)
        seen[rname] = lineno
        patches.append(Patch(rname, str(ppath), _read(ppath, str(ppath)), strip))
    return patches


def load_series(paths: Sequence[str]) -> Series:
    """Load a series from a quilt ``series`` file, a directory holding one, or
    several patch files given in order."""
    if not paths:
        raise KlpccError("no series given: name a quilt series file, a directory holding one, "
                         "patch files, or use --git REPO BASE..TIP")
    if len(paths) == 1:
        p = Path(paths[0])
        if p.is_dir():
            for candidate in (p / "series", p / "patches" / "series"):
                if candidate.is_file():
                    patches = _parse_series_file(candidate)
                    return _checked(Series(tuple(patches), str(candidate)), str(candidate))
            raise KlpccError("the directory holds no quilt 'series' file", patch=str(p))
        if p.is_file():
            data = _read(p, str(p))
            if p.name == "series" or (not _looks_like_diff(data) and _is_series_text(p, data)):
                patches = _parse_series_file(p)
                return _checked(Series(tuple(patches), str(p)), str(p))
    patches = []
    seen: dict[str, str] = {}
    for path in paths:
        p = Path(path)
        data = _read(p, path)
        name = release_name(path)
        if name in seen:
            raise KlpccError(f"two patches give the release name {name!r} ({seen[name]} and {path})",
                             patch=path)
        seen[name] = path
        patches.append(Patch(name, path, data))
    return _checked(Series(tuple(patches), " ".join(paths)), paths[0])


_COMMENT = re.compile(r"(^|\s)#.*$")


def _uncomment(line: str) -> str:
    """A series line without its comment (``#`` at the start or after a blank)."""
    return _COMMENT.sub("", line).strip()


def _is_series_text(path: Path, data: bytes) -> bool:
    """Does the file read as a quilt series (every line names a patch, maybe missing)?"""
    text = data.decode("utf-8", "replace")
    names = [ln.split()[0] for ln in map(_uncomment, text.splitlines()) if ln]
    return bool(names) and all(
        n.endswith(_PATCH_SUFFIXES) or (path.parent / n).is_file() for n in names)


def _checked(series: Series, shown: str) -> Series:
    if not series.patches:
        raise KlpccError("the series is empty: it names no patches", patch=shown)
    return series


# --------------------------------------------------------------------------- git


def _git(repo: str, *args: str) -> bytes:
    try:
        proc = subprocess.run(["git", "-C", repo, *args], capture_output=True, check=False)
    except FileNotFoundError:
        raise KlpccError("git is not installed") from None
    if proc.returncode != 0:
        msg = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise KlpccError(f"git {' '.join(args[:2])}: {msg[-1] if msg else 'failed'}", patch=repo)
    return proc.stdout


def load_git_range(repo: str, rng: str) -> Series:
    """Each first-parent commit of ``BASE..TIP`` is a release; BASE is the base tree."""
    if ".." not in rng or rng.count("..") != 1 or "..." in rng:
        raise KlpccError(f"expected a range BASE..TIP, got {rng!r}", patch=repo)
    base_ref, tip_ref = rng.split("..")
    if not base_ref or not tip_ref:
        raise KlpccError(f"expected a range BASE..TIP, got {rng!r}", patch=repo)
    if not Path(repo).is_dir():
        raise KlpccError("no such repository", patch=repo)
    _git(repo, "rev-parse", "--git-dir")
    revs = []
    for ref in (base_ref, tip_ref):
        try:
            revs.append(_git(repo, "rev-parse", "--verify", "--quiet", ref + "^{commit}").decode().strip())
        except KlpccError:
            raise KlpccError(f"unknown revision {ref!r} (no such commit in the repository)",
                             patch=repo) from None
    base = revs[0]
    ancestor = subprocess.run(["git", "-C", repo, "merge-base", "--is-ancestor", revs[0], revs[1]],
                              capture_output=True, check=False)
    if ancestor.returncode != 0:
        raise KlpccError(f"in {rng}, {base_ref} is not an ancestor of {tip_ref}: the range is "
                         "not a series of commits on top of its base", patch=repo)
    commits = _git(repo, "rev-list", "--reverse", "--first-parent", rng).decode().split()
    patches = []
    used: dict[str, int] = {}
    for sha in commits:
        subject = _git(repo, "log", "-1", "--format=%s", sha).decode("utf-8", "replace").strip()
        subject = subject or sha[:12]
        used[subject] = used.get(subject, 0) + 1
        name = subject if used[subject] == 1 else f"{subject} ({used[subject]})"
        data = _git(repo, "diff", "--no-color", "--no-ext-diff", "-M",
                    "--full-index", "--binary", f"{sha}^1", sha)
        if len(data) > max_input_bytes():
            raise KlpccError(f"the diff of commit {sha[:12]} {too_large(len(data))}", patch=repo)
        patches.append(Patch(name, f"{repo}@{sha[:12]}", data, 1))
    if not patches:
        raise KlpccError(f"the range {rng} holds no commits: the series is empty", patch=repo)
    return Series(tuple(patches), f"{repo} {rng}", GitTree(repo, base))


def load(paths: Sequence[str], git: tuple[str, str] | None = None,
         source: str | None = None) -> tuple[Series, BaseTree]:
    """Load the series and its base tree from command-line style arguments."""
    if git is not None:
        if paths:
            raise KlpccError("give either patch files or --git, not both")
        series = load_git_range(*git)
        assert series.base is not None
        if source is not None:
            return series, DirectoryTree(source)
        return series, series.base
    series = load_series(paths)
    if source is None:
        raise KlpccError("--source BASE is required: the base source tree the series applies to")
    return series, DirectoryTree(source)
