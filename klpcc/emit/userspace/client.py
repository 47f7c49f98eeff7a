"""Userspace target: talking to the runtime in a running program (``klpcc apply``,
``status``, ``disable``) over its control socket."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from ...errors import KlpccError

HINT = "link it with `klpcc config --libs` or start it with LD_PRELOAD=$(klpcc config --preload)"
_MAX_SUN_PATH = 107


def _status(pid: int) -> dict[str, list[str]]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        raise KlpccError(f"no process {pid}") from None
    except OSError as exc:
        raise KlpccError(f"cannot read /proc/{pid}/status: {exc.strerror}") from None
    return {k: v.split() for k, _, v in (line.partition(":") for line in text.splitlines())}


def _same_ns(pid: int, kind: str) -> bool | None:
    """Is process ``pid`` in our namespace of ``kind`` (None: cannot tell)?"""
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino == os.stat(f"/proc/self/ns/{kind}").st_ino
    except OSError:
        return None


def _listening(pid: int) -> list[str] | None:
    """The paths (as the process sees them) of the Unix sockets process ``pid`` listens
    on; None when this user may not look at its descriptors."""
    try:
        inodes = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        table = Path(f"/proc/{pid}/net/unix").read_text(errors="replace").splitlines()[1:]
    except PermissionError:
        return None
    except OSError:
        return []
    out = []
    for line in table:
        f = line.split(None, 7)
        # Num RefCount Protocol Flags Type St Inode Path; flag 0x10000: listening
        if len(f) == 8 and f[6] in inodes and int(f[3], 16) & 0x10000 and f[7].startswith("/"):
            out.append(f[7])
    return out


@dataclass(frozen=True)
class Endpoint:
    """Where to reach the runtime of a process: ``path`` to connect to from here, and
    ``shown``, the socket as the process sees it."""

    pid: int
    path: Path
    shown: str
    other_userns: bool = False

    def about(self) -> str:
        return _who(self.pid, self.other_userns)


def _who(pid: int, other_userns: bool) -> str:
    return f"process {pid}" + (" (in another user namespace)" if other_userns else "")


def locate(pid: int, explicit: str | None = None) -> Endpoint:
    """Find the control socket of the runtime in process ``pid``, from the process's
    point of view: the Unix socket it listens on named ``<its pid>.sock``, reached
    through ``/proc/PID/root`` (its mount namespace, its chroot), else the conventional
    directories there; ``$KLPCC_SOCKET_DIR`` here first when it is set.  Whether the
    socket really is the process's is checked on connecting."""
    if explicit:
        return Endpoint(pid, Path(explicit), explicit)
    st = _status(pid)
    nspid = (st.get("NSpid") or [str(pid)])[-1]  # its pid in its own pid namespace
    uid = (st.get("Uid") or ["?", "?"])[1]
    other_userns = _same_ns(pid, "user") is False
    # paths the process sees, from here: through its root (its mount namespace, its
    # chroot), or as they are when this user may not go there and it shares our mounts
    roots = [f"/proc/{pid}/root"] + ([""] if _same_ns(pid, "mnt") is not False else [])
    env = os.environ.get("KLPCC_SOCKET_DIR")
    if env:
        for name in dict.fromkeys((nspid, str(pid))):
            if (Path(env) / f"{name}.sock").exists():
                return Endpoint(pid, Path(env) / f"{name}.sock", f"{env}/{name}.sock", other_userns)
    found = _listening(pid)
    for root in roots:
        paths = found
        if paths is None:  # not ours to look at: the usual places
            dirs = ["/run/klpcc", f"/run/user/{uid}/klpcc", f"/tmp/.klpcc-{uid}"]
            with contextlib.suppress(OSError):
                dirs += sorted(f"/tmp/{p.name}" for p in Path(f"{root}/tmp").glob(f".klpcc-{uid}.*"))
            paths = [f"{d}/{nspid}.sock" for d in dirs]
        mine = [p for p in paths if _named(p.rsplit("/", 1)[-1], nspid) and os.path.lexists(root + p)]
        if mine:
            return Endpoint(pid, Path(root + mine[0]), mine[0], other_userns)
    raise KlpccError(_absent(pid, other_userns))


def _named(name: str, nspid: str) -> bool:
    """Is ``name`` the runtime's socket of the process whose own pid is ``nspid``
    (``PID.sock``, or ``PID.XXXXXXXX.sock`` beside another PID namespace's)?"""
    return name == f"{nspid}.sock" or (name.startswith(f"{nspid}.") and name.endswith(".sock"))


def _absent(pid: int, other_userns: bool) -> str:
    """Why no socket was found: no runtime in the process, or one that does not listen."""
    who = _who(pid, other_userns)
    try:
        maps = Path(f"/proc/{pid}/maps").read_text(errors="replace")
    except OSError as exc:
        return (f"{who}: no klpcc socket found, and this user may not look into the process "
                f"({exc.strerror}): run as its user or root")
    if "libklpcc" in maps:
        return (f"{who} runs the klpcc runtime, but it listens on no socket (its standard error "
                "says why: 'not listening')")
    return f"{who} runs no klpcc runtime: {HINT}"


def _connect(ep: Endpoint, wait: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(wait)
    target = str(ep.path)
    dirfd = None
    try:
        # too long: through a descriptor of its directory
        if len(target.encode("utf-8", "surrogateescape")) > _MAX_SUN_PATH:
            dirfd = os.open(os.path.dirname(target), os.O_PATH | os.O_CLOEXEC)
            target = f"/proc/self/fd/{dirfd}/{os.path.basename(target)}"
        sock.connect(target)
        peer = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
        if peer != ep.pid:  # nothing is sent to a socket that is not the process's own
            sock.close()
            whose = f"process {peer}" if peer else "a process this one cannot see"
            raise KlpccError(f"the socket {ep.shown} is not the klpcc socket of {ep.about()}: {whose} "
                             "listens on it")
        return sock
    except PermissionError:
        sock.close()
        owner = ""
        with contextlib.suppress(OSError):
            owner = f" (it belongs to uid {os.stat(ep.path).st_uid})"
        raise KlpccError(f"this user (uid {os.geteuid()}) may not open the klpcc socket of {ep.about()}, "
                         f"{ep.shown}{owner}: run as the process's user or root") from None
    except (ConnectionRefusedError, FileNotFoundError):
        sock.close()
        raise KlpccError(f"the klpcc runtime of {ep.about()} does not answer: its socket {ep.shown} is "
                         "there but nothing listens on it (the process is exiting, or stopped)") from None
    except TimeoutError:
        sock.close()
        raise KlpccError(f"{ep.about()} did not answer within {wait:.0f} s") from None
    except OSError as exc:
        sock.close()
        raise KlpccError(f"cannot talk to {ep.about()} at {ep.shown}: {exc.strerror or exc}") from None
    finally:
        if dirfd is not None:
            os.close(dirfd)


def _exchange(ep: Endpoint, line: str, wait: float, fd: int | None) -> dict:
    sock = _connect(ep, wait)
    try:
        if fd is None:
            sock.sendall(line.encode("utf-8", "surrogateescape") + b"\n")
        else:
            socket.send_fds(sock, [line.encode("utf-8", "surrogateescape") + b"\n"], [fd])
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    except TimeoutError:
        raise KlpccError(f"{ep.about()} did not answer within {wait:.0f} s") from None
    except OSError as exc:
        raise KlpccError(f"cannot talk to {ep.about()} at {ep.shown}: {exc.strerror or exc}") from None
    finally:
        sock.close()
    text = b"".join(chunks).decode("utf-8", "replace").strip()
    try:
        doc = json.loads(text)
    except ValueError:
        raise KlpccError(f"process {ep.pid} answered something else than JSON: {text[:200]!r}") from None
    if not isinstance(doc, dict) or "ok" not in doc:
        raise KlpccError(f"process {ep.pid} answered an unexpected document: {text[:200]!r}")
    return doc


def _proof(pid: int, address: str) -> str | None:
    """The runtime's token at ``address`` in process ``pid``, read from its memory: what
    a user who may read (and so control) the process can send back; None when this user
    may not."""
    try:
        with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
            mem.seek(int(address, 16))
            token = mem.read(16)
    except (OSError, ValueError, OverflowError):
        return None
    return token.hex() if len(token) == 16 else None


def request(pid: int, line: str, *, wait: float, explicit: str | None = None, fd: int | None = None) -> dict:
    """Send one request to the runtime of ``pid`` (with the descriptor ``fd``); its
    one-line JSON answer.  When the runtime does not know the caller's uid in its user
    namespace (root of the host and a process in a container), the caller proves that
    it may read the process's memory, if it may."""
    ep = locate(pid, explicit)
    doc = _exchange(ep, line, wait, fd)
    if not doc.get("ok") and doc.get("step") == "request" and isinstance(doc.get("proof"), str):
        token = _proof(pid, doc["proof"])
        if token is not None:
            return _exchange(ep, f"proof {token} {line}", wait, fd)
        doc = {k: v for k, v in doc.items() if k != "proof"}
        doc["error"] = f"{doc.get('error', '')}; this user may not read its memory either"
    doc.pop("proof", None)
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
        if doc.get("pending"):
            extra.append("switched when their library loads: " + ", ".join(doc["pending"]))
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
        for o in p.get("objects", []):
            lines.append(f"    object {o['name']} (build-id {str(o['build_id'])[:12]})"
                         + ("" if o.get("loaded") else ": not loaded"))
        for f in p.get("functions", []):
            flag = ", immediate" if f.get("immediate") else ""
            flag += ", waiting for its library" if f.get("pending") else ""
            lines.append(f"    {f['name']}  ({f.get('why', '')}{flag})")
        for st in p.get("states", []):
            lines.append(f"    state {st['id']} version {st['version']}")
    return "\n".join(lines) + "\n"


def apply(pid: int, patch: str, timeout: float, explicit: str | None = None) -> Answer:
    """Install the patch object ``patch`` in process ``pid``: an atomic replace.  The
    object travels as an open descriptor, so the process loads it whatever its own
    filesystem holds (a container, a chroot)."""
    path = Path(patch)
    if not path.is_file():
        raise KlpccError(f"no patch object {patch}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise KlpccError(f"cannot open the patch object {patch}: {exc.strerror}") from None
    try:
        return Answer("apply", request(pid, f"apply-fd {int(timeout * 1000)} {path.resolve()}",
                                       wait=timeout + 30, explicit=explicit, fd=fd))
    finally:
        os.close(fd)


def status(pid: int, explicit: str | None = None) -> Answer:
    """The patches installed in process ``pid``."""
    return Answer("status", request(pid, "status", wait=30, explicit=explicit))


def disable(pid: int, timeout: float, explicit: str | None = None, name: str | None = None) -> Answer:
    """Back to the original code in process ``pid``: the patch called ``name``, or the
    only one installed."""
    if name is not None and (not name or "\n" in name or "\r" in name):
        raise KlpccError(f"--patch {name!r}: not a patch name (empty, or more than one line)")
    line = f"disable {int(timeout * 1000)}" + (f" {name}" if name else "")
    return Answer("disable", request(pid, line, wait=timeout + 30, explicit=explicit))
