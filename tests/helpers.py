"""Helpers for tests: build base trees and patch series from file contents."""

from __future__ import annotations

import difflib
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

Files = Mapping[str, str | None]  # path -> content (None: absent)


def write_tree(root: Path, files: Files) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for path, content in files.items():
        if content is None:
            continue
        p = root / path
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content, encoding="utf-8", errors="surrogateescape")
    return root


def unified(old: Files, new: Files, *, git: bool = True) -> str:
    """A patch turning the files ``old`` into ``new`` (paths in either)."""
    out: list[str] = []
    for path in sorted(set(old) | set(new)):
        a, b = old.get(path), new.get(path)
        if a == b:
            continue
        al = [] if a is None else a.splitlines(keepends=True)
        bl = [] if b is None else b.splitlines(keepends=True)
        if git:
            out.append(f"diff --git a/{path} b/{path}\n")
            if a is None:
                out.append("new file mode 100644\n")
            elif b is None:
                out.append("deleted file mode 100644\n")
        src = "/dev/null" if a is None else (f"a/{path}" if git else path)
        dst = "/dev/null" if b is None else (f"b/{path}" if git else path)
        for line in difflib.unified_diff(al, bl, src, dst, n=3):
            if line.endswith("\n"):
                out.append(line)
            else:
                out.append(line + "\n\\ No newline at end of file\n")
    return "".join(out)


def make_series(tmp: Path, base: Files, releases: list[Files], *, names: list[str] | None = None,
                git: bool = True) -> tuple[Path, Path]:
    """Write ``base`` to tmp/base and one patch per release to tmp/patches (each
    release gives the files it changes, None deleting one); returns (patches, base)."""
    base_dir = write_tree(tmp / "base", base)
    patches = tmp / "patches"
    patches.mkdir(parents=True, exist_ok=True)
    current = dict(base)
    series = []
    for i, rel in enumerate(releases, 1):
        new = dict(current)
        new.update(rel)
        name = names[i - 1] if names else f"{i:04d}-release-{i}"
        (patches / f"{name}.patch").write_text(unified(current, new, git=git), encoding="utf-8",
                                                errors="surrogateescape")
        series.append(f"{name}.patch" + ("" if git else " -p0"))
        current = {k: v for k, v in new.items() if v is not None}
    (patches / "series").write_text("\n".join(series) + "\n")
    return patches, base_dir


def klpcc(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the klpcc command line in a subprocess, as a user would."""
    return subprocess.run([sys.executable, "-m", "klpcc", *args], capture_output=True, text=True,
                          cwd=cwd, check=False)


# The lint rules as README documents them: id -> (name, severity).
LINT_RULES = {
    "S001": ("state-dropped", "error"),
    "S002": ("state-version-lowered", "error"),
    "S003": ("state-not-declared", "warning"),
    "C001": ("unpatch-callbacks-lost", "error"),
    "C002": ("unpatch-callback-not-taken-over", "warning"),
    "C003": ("post-patch-effects-lost", "warning"),
    "H001": ("shadow-type-mismatch", "error"),
    "H002": ("shadow-get-unallocated", "error"),
    "H003": ("shadow-leak", "warning"),
    "H004": ("shadow-destructor-mismatch", "warning"),
    "H005": ("shadow-free-in-teardown", "warning"),
    "U001": ("struct-layout-changed", "error"),
    "U002": ("global-initializer-changed", "error"),
    "U003": ("signature-changed", "error"),
    "U004": ("unpatchable-function", "error"),
    "U005": ("header-inline-changed", "error"),
    "U006": ("inline-function-changed", "warning"),
    "U007": ("data-changed", "error"),
    "U008": ("static-made-global", "warning"),
    "U009": ("change-not-carried", "warning"),
}
