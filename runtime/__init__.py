"""The runtime sources klpcc ships (``klpcc.runtime``): C and POSIX sh, not Python.

* ``userspace/``: ``libklpcc.so``, the in-process runtime, built on demand with the
  system compiler (``klpcc config --libs``), and ``klpcc.h``, its ABI and patch API;
* ``kernel/``: ``klpcc-load``, the loader, ``klpcc-load.service``, the systemd unit that
  loads the installed module at boot (``klpcc-load --all``), and ``klpcc_livepatch.h``,
  what patch code of a livepatch module uses.

They are package data: found through this package wherever klpcc is installed.
"""

from __future__ import annotations

from pathlib import Path

from klpcc.errors import KlpccError


def directory(target: str, marker: str) -> Path:
    """The sources of ``target`` (``userspace`` or ``kernel``), checked by one of its files."""
    here = Path(__file__).resolve().parent / target
    if not (here / marker).is_file():
        raise KlpccError(f"klpcc's {target} runtime is missing ({here / marker}); reinstall klpcc")
    return here


def userspace() -> Path:
    return directory("userspace", "klpcc.h")


def kernel() -> Path:
    return directory("kernel", "klpcc_livepatch.h")
