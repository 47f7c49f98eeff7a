"""Errors klpcc reports to its users: one line naming patch, file and line."""

from __future__ import annotations

import os
import re

MAX_SHOWN = 600  # characters of a message shown at most: an error is one bounded line


def max_input_bytes() -> int:
    """The largest patch or source file klpcc reads (``KLPCC_MAX_FILE_MB``, default
    32 MiB): memory grows with the C it parses (about 120 MiB per MiB of C), so a
    larger input is refused up front rather than exhausting the machine."""
    given = os.environ.get("KLPCC_MAX_FILE_MB", "").strip()
    if not given:
        return 32 << 20
    try:
        mib = float(given)
    except ValueError:
        mib = -1.0
    if not 1 <= mib < float(1 << 30):  # also refuses nan and inf
        raise KlpccError(f"KLPCC_MAX_FILE_MB must be a number of MiB, 1 or more, not {given!r}")
    return int(mib * (1 << 20))


def too_large(size: int) -> str:
    return (f"is {size / (1 << 20):.1f} MiB: klpcc reads files up to {max_input_bytes() / (1 << 20):.0f} MiB "
            "(set KLPCC_MAX_FILE_MB to allow more)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BREAK = re.compile(r"[ \t]*[\r\n]\s*")


# a lone surrogate as repr() writes it (\udcNN after an even run of backslashes: not
# the text "\\udcNN" of a line that had it written out)
_SURROGATE = re.compile(r"(?<!\\)((?:\\\\)*)\\udc([89a-f][0-9a-f])")


def quoted(text: str, limit: int = 60) -> str:
    """``text`` (a line of a patch or a file, undecodable bytes carried as lone
    surrogates) quoted for a message, cut to ``limit`` characters: white space as it is,
    control characters and bytes that are not UTF-8 as escapes (``\\xe9``)."""
    text = text.rstrip("\r\n")
    return _SURROGATE.sub(r"\1\\x\2", repr(text if len(text) <= limit else text[:limit - 3] + "..."))


def _escaped(text: str) -> str:
    """``text`` with control characters (a newline, a tab, a NUL in a file name) written
    as escapes, so that it stays on one line."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


class KlpccError(Exception):
    """Bad input or a refused operation.

    ``patch`` and ``line`` locate the problem in the series (a patch file and a
    1-based line of it); ``file`` names the source file concerned.
    """

    def __init__(self, message: str, *, patch: str | None = None, line: int | None = None,
                 file: str | None = None):
        super().__init__(message)
        self.message = message
        self.patch = patch
        self.line = line
        self.file = file

    def __str__(self) -> str:
        where = ""
        if self.patch:
            where = _escaped(self.patch) + (f":{self.line}" if self.line else "") + ": "
        if self.file:
            where += _escaped(self.file) + ": "
        # one line: line breaks (and the indentation after them) become one space; other
        # white space stays (a quoted line of a patch shows its spaces as they are)
        text = where + _escaped(_BREAK.sub(" ", self.message).strip())
        if len(text) > MAX_SHOWN:
            text = text[:MAX_SHOWN - 20] + f"... ({len(text)} characters)"
        return text
