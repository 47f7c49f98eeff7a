"""The ``klpcc`` command's entry point: ``klpcc --version`` answers before the command
line (click) and the pipeline are imported; everything else goes to :mod:`klpcc.cli`."""

from __future__ import annotations

import sys


def run() -> None:
    if sys.argv[1:] == ["--version"]:
        from . import __version__

        print(f"klpcc, version {__version__}")
        return
    from .cli import run as cli_run

    cli_run()
