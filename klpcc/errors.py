"""Errors klpcc reports to its users: one line naming patch, file and line."""

from __future__ import annotations


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
            where = self.patch + (f":{self.line}" if self.line else "") + ": "
        if self.file:
            where += self.file + ": "
        return where + " ".join(self.message.split())
