"""Userspace target: talking to the runtime in a running program, and building the
runtime itself (``klpcc config``)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from ..errors import KlpccError
from .umod import userspace_runtime_dir

# what a program needs to be patchable: five one-byte NOPs at every function entry
# (room for a jump written while the world is stopped), 16-byte aligned functions,
# no interprocedural assumptions beyond inlining and cloning, exact unwind tables and
# frame pointers for the stack check, DWARF for finding inlined copies
CFLAGS = ("-fpatchable-function-entry=5,0", "-falign-functions=16", "-flive-patching=inline-clone",
          "-fno-omit-frame-pointer", "-fasynchronous-unwind-tables", "-g")


def runtime_library(cc: str = "cc") -> Path:
    """``libklpcc.so`` built from ``runtime/userspace`` with the system compiler, once
    per version of its sources and of the compiler (cached)."""
    src = userspace_runtime_dir()
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
        proc = subprocess.run(["make", "-s", "-C", str(src), f"O={tmp}", f"CC={cc}"], capture_output=True,
                              text=True, check=False)
        if proc.returncode != 0 or not (tmp / "libklpcc.so").is_file():
            text = proc.stdout + proc.stderr
            line = next((ln for ln in text.splitlines() if "rror" in ln), text[-300:])
            raise KlpccError(f"building the klpcc runtime failed: {line.strip()}")
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


def socket_path(pid: int, explicit: str | None = None) -> Path:
    """Where the runtime in process ``pid`` listens: ``$KLPCC_SOCKET_DIR`` (default
    ``/tmp/.klpcc-<uid>``, the process's effective uid) ``/<pid>.sock``."""
    if explicit:
        return Path(explicit)
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        raise KlpccError(f"no process {pid}") from None
    except OSError as exc:
        raise KlpccError(f"cannot read /proc/{pid}/status: {exc.strerror}") from None
    uid = next((line.split()[2] for line in status.splitlines() if line.startswith("Uid:")), None)
    base = os.environ.get("KLPCC_SOCKET_DIR") or f"/tmp/.klpcc-{uid}"
    return Path(base) / f"{pid}.sock"


def request(pid: int, line: str, *, wait: float, explicit: str | None = None) -> dict:
    """Send one request to the runtime of ``pid``; its one-line JSON answer."""
    path = socket_path(pid, explicit)
    if not path.exists():
        raise KlpccError(f"process {pid} runs no klpcc runtime ({path} does not exist): link it with "
                         "`klpcc config --libs` or start it with LD_PRELOAD=$(klpcc config --preload)")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(wait)
    try:
        sock.connect(str(path))
        sock.sendall(line.encode() + b"\n")
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    except TimeoutError:
        raise KlpccError(f"process {pid} did not answer within {wait:.0f} s") from None
    except OSError as exc:
        raise KlpccError(f"cannot talk to process {pid} at {path}: {exc.strerror or exc}") from None
    finally:
        sock.close()
    text = b"".join(chunks).decode("utf-8", "replace").strip()
    try:
        doc = json.loads(text)
    except ValueError:
        raise KlpccError(f"process {pid} answered something else than JSON: {text[:200]!r}") from None
    if not isinstance(doc, dict) or "ok" not in doc:
        raise KlpccError(f"process {pid} answered an unexpected document: {text[:200]!r}")
    return doc


def apply(pid: int, patch: str, timeout: float, explicit: str | None = None) -> dict:
    path = Path(patch)
    if not path.is_file():
        raise KlpccError(f"no patch object {patch}")
    return request(pid, f"apply {int(timeout * 1000)} {path.resolve()}", wait=timeout + 30, explicit=explicit)


def status(pid: int, explicit: str | None = None) -> dict:
    return request(pid, "status", wait=30, explicit=explicit)


def disable(pid: int, timeout: float, explicit: str | None = None) -> dict:
    return request(pid, f"disable {int(timeout * 1000)}", wait=timeout + 30, explicit=explicit)
