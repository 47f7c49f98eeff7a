"""Userspace target: the runtime library a patchable program loads (``libklpcc.so``,
built from ``klpcc.runtime``'s ``userspace/`` sources) and the options that make a
program patchable (``klpcc config``)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ... import runtime, toolchain
from ...errors import KlpccError

# what a program needs to be patchable: five one-byte NOPs at every function entry
# (room for a jump written while the world is stopped), 16-byte aligned functions,
# no interprocedural assumptions beyond inlining and cloning, exact unwind tables and
# frame pointers for the stack check, DWARF for finding inlined copies
CFLAGS = ("-fpatchable-function-entry=5,0", "-falign-functions=16", "-flive-patching=inline-clone",
          "-fno-omit-frame-pointer", "-fasynchronous-unwind-tables", "-g")


def runtime_library(cc: str = "cc") -> Path:
    """``libklpcc.so`` built from the runtime's ``userspace/`` sources with the system compiler, once
    per version of its sources and of the compiler (cached)."""
    src = runtime.userspace()
    digest = hashlib.sha256()
    for f in sorted(src.iterdir()):
        if f.is_file() and f.suffix in (".c", ".h", ".S") or f.name == "Makefile":
            digest.update(f.name.encode() + b"\0" + f.read_bytes())
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        raise KlpccError(f"the C compiler {cc} does not run; install gcc") from None
    digest.update(version.encode())
    cache = Path(os.environ.get("KLPCC_CACHE") or Path.home() / ".cache" / "klpcc") / "runtime"
    dest = cache / digest.hexdigest()[:16]
    lib = dest / "libklpcc.so"
    if lib.is_file():
        return lib
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=cache))
    try:
        toolchain.run(["make", "-s", "-C", str(src), f"O={tmp}", f"CC={cc}"], subject="the klpcc runtime",
                      action="building the klpcc runtime")
        if not (tmp / "libklpcc.so").is_file():
            raise KlpccError(f"building the klpcc runtime made no libklpcc.so in {tmp}")
        try:
            os.rename(tmp, dest)
        except OSError:  # built concurrently by another klpcc: use that one
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return lib


def libs(cc: str = "cc") -> str:
    d = runtime_library(cc).parent
    return (f"-L{d} -Wl,-rpath,{d} -Wl,--no-as-needed -lklpcc -Wl,--as-needed -Wl,--build-id -pthread")


def cflags() -> str:
    return " ".join(CFLAGS)


