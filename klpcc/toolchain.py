"""Running the compiler and the kernel's make, and reading what they say went wrong.

One reader of compiler output serves every stage that compiles (the object-level
check, exact layouts, both targets): :func:`first_error` picks the line that says
what failed; :func:`located_error` places the first error on a line of the files
klpcc wrote or carried (an error inside a system or kernel header is reported where
the unit's own code led to it).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Collection, Sequence
from pathlib import Path

from .errors import KlpccError

_DIAG = re.compile(r"^(?P<file>[^:\s]+):(?P<line>\d+):(?:\d+:)? (?P<kind>fatal error|error|note|warning): "
                   r"(?P<msg>.*)$")


def first_error(output: str | bytes, limit: int = 200) -> str:
    """The line of a tool's output that says what went wrong (else its first line)."""
    text = output.decode("utf-8", "replace") if isinstance(output, bytes) else output
    # "error:"/"ERROR:" said as such first (modpost's, the compiler's), then the word
    # "error" (not inside a name: a warning about fw_decompress_xz_error is no error)
    for pattern in (r"(^|\s|:)(fatal error|error|ERROR)(:| \d)", r"\berror\b"):
        for line in text.splitlines():
            if re.search(pattern, line, 0 if pattern.startswith("(^") else re.I):
                return line.strip()[:limit]
    return (text.strip().splitlines() or ["(no message)"])[0].strip()[:limit]


def located_error(output: str, paths: Collection[str]) -> str | None:
    """The compiler's first error as ``file:line: message``, on a line of ``paths`` when
    the diagnostics lead there (``(in header:line)`` then says where it was raised);
    None when the output holds no diagnostic."""
    lines = output.splitlines()
    for i, line in enumerate(lines):
        m = _DIAG.match(line.strip())
        if not m or "error" not in m["kind"]:
            continue
        if m["file"] in paths:
            return f"{m['file']}:{m['line']}: {m['msg']}"
        for later in lines[i + 1:]:
            n = _DIAG.match(later.strip())
            if n and n["file"] in paths:
                return f"{n['file']}:{n['line']}: {m['msg']} (in {m['file']}:{m['line']})"
            if n and "error" in n["kind"]:
                break
        return f"{m['file']}:{m['line']}: {m['msg']}"
    return None


def run(cmd: Sequence[str], *, subject: str, action: str, paths: Collection[str] = (),
        cwd: Path | str | None = None) -> str:
    """Run a build command; its output.  On failure, a :class:`KlpccError` naming the
    first error, placed on a line of ``paths`` when it can be (``{subject} does not
    compile: file:line: message``), else ``{action} failed: the error line``."""
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, errors="replace", check=False,
                              cwd=cwd)
    except FileNotFoundError:
        raise KlpccError(f"{cmd[0]} is not installed") from None
    text = proc.stdout + proc.stderr
    if proc.returncode != 0:
        where = located_error(text, paths)
        if where:
            raise KlpccError(f"{subject} does not compile: {where}")
        raise KlpccError(f"{action} failed: {first_error(text, 300)}")
    return text
