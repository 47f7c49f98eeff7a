"""Userspace target: talking to the runtime in a running program (``klpcc apply``,
``status``, ``disable``) over its control socket."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from ...errors import KlpccError


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


@dataclass(frozen=True)
class Answer:
    """The runtime's one-line JSON answer to a request (``docs/formats.md``): ``ok``,
    and on a refusal the ``step`` that refused and the ``error``."""

    action: str  # apply, disable, status
    doc: dict

    @property
    def ok(self) -> bool:
        return bool(self.doc.get("ok"))

    @property
    def failure(self) -> str:
        """One line naming the step that refused and why."""
        return f"{self.action} failed at {self.doc.get('step', '?')}: {self.doc.get('error', '?')}"

    def text(self) -> str:
        """What the command prints on success."""
        doc = self.doc
        if self.action == "status":
            return _status_text(doc)
        extra = []
        if doc.get("replaced"):
            extra.append("replaced " + ", ".join(doc["replaced"]))
        if doc.get("nops"):
            extra.append("reverted " + ", ".join(doc["nops"]))
        if doc.get("unloaded"):
            extra.append("unloaded " + ", ".join(doc["unloaded"]))
        timing = f" in {doc['total_us'] / 1000:.1f} ms" if "total_us" in doc else ""
        done = {"apply": "applied", "disable": "disabled"}[self.action]
        return f"{done} {doc.get('patch', '')}{timing}" + (f" ({'; '.join(extra)})" if extra else "") + "\n"


def _status_text(doc: dict) -> str:
    lines = [f"process {doc.get('pid')} (build-id {str(doc.get('build_id'))[:12]}): "
             f"{doc.get('applies', 0)} applies"]
    if not doc.get("patches"):
        lines.append("  no patch installed")
    for p in doc.get("patches", []):
        lines.append(f"  {p['name']}  {p['state']}  {p.get('path', '')}")
        for f in p.get("functions", []):
            flag = ", immediate" if f.get("immediate") else ""
            lines.append(f"    {f['name']}  ({f.get('why', '')}{flag})")
        for st in p.get("states", []):
            lines.append(f"    state {st['id']} version {st['version']}")
    return "\n".join(lines) + "\n"


def apply(pid: int, patch: str, timeout: float, explicit: str | None = None) -> Answer:
    """Install the patch object ``patch`` in process ``pid``: an atomic replace."""
    path = Path(patch)
    if not path.is_file():
        raise KlpccError(f"no patch object {patch}")
    return Answer("apply", request(pid, f"apply {int(timeout * 1000)} {path.resolve()}", wait=timeout + 30,
                                   explicit=explicit))


def status(pid: int, explicit: str | None = None) -> Answer:
    """The patches installed in process ``pid``."""
    return Answer("status", request(pid, "status", wait=30, explicit=explicit))


def disable(pid: int, timeout: float, explicit: str | None = None) -> Answer:
    """Back to the original code everywhere in process ``pid``."""
    return Answer("disable", request(pid, f"disable {int(timeout * 1000)}", wait=timeout + 30,
                                     explicit=explicit))
