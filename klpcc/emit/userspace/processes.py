"""Userspace target: many processes at once.  ``klpcc apply --all-mapping LIB.so``
applies a patch object to every process of this user (every process, for root) that
maps that exact library build; ``--pid`` repeated names the processes; ``klpcc status
--all`` asks every process that runs the runtime.  Each process gets its own answer
(``klpcc.processes/1``, docs/formats.md)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ... import elfinfo
from ...elfinfo import build_id as file_build_id
from ...errors import KlpccError
from . import client

SCHEMA = "klpcc.processes/1"
# what happened in one process
APPLIED, DISABLED, STATUS = "applied", "disabled", "status"
REFUSED, NO_RUNTIME, OTHER_BUILD, UNREACHABLE, GONE = (
    "refused", "no-runtime", "different-build", "unreachable", "gone")
# a process that did not get what was asked: found by --all-mapping, or named with --pid
# (then a process without the runtime, or gone, was asked for too)
FAILED = {REFUSED, UNREACHABLE}
FAILED_NAMED = FAILED | {NO_RUNTIME, GONE}


@dataclass(frozen=True)
class Library:
    path: str
    build_id: str

    @property
    def stem(self) -> str:
        """``libz`` of ``libz.so.1.2.13``: builds of one library share it."""
        return _stem(self.path)


def _stem(path: str) -> str:
    name = path.rsplit("/", 1)[-1].removesuffix(" (deleted)")
    return name.split(".so", 1)[0]


@dataclass
class ProcessResult:
    pid: int
    command: str
    result: str
    error: str | None = None
    answer: dict | None = None

    def to_json(self) -> dict:
        out: dict = {"pid": self.pid, "command": self.command, "result": self.result}
        if self.error is not None:
            out["error"] = self.error
        if self.answer is not None:
            out["answer"] = self.answer
        return out


@dataclass
class Fleet:
    """Answers of many processes to one action."""

    action: str  # apply, disable, status
    patch: str | None = None
    library: Library | None = None
    processes: list[ProcessResult] = field(default_factory=list)
    installed: list[dict] | None = None  # status --all: the store's records
    named: bool = False  # the processes were named (--pid), not found

    @property
    def failed(self) -> bool:
        return any(p.result in (FAILED_NAMED if self.named else FAILED) for p in self.processes)

    def to_json(self) -> dict:
        out: dict = {"schema": SCHEMA, "action": self.action, "patch": self.patch,
                     "library": None if self.library is None else
                     {"path": self.library.path, "build_id": self.library.build_id},
                     "processes": [p.to_json() for p in self.processes]}
        if self.installed is not None:
            out["installed"] = self.installed
        return out

    def text(self) -> str:
        lines = []
        for p in self.processes:
            who = f"process {p.pid} ({p.command})"
            if p.result in (APPLIED, DISABLED):
                lines.append(f"{who}: " + client.Answer(self.action, p.answer or {}).text().rstrip("\n"))
            elif p.result == STATUS:
                lines.append(client.Answer("status", p.answer or {}).text().rstrip("\n"))
            elif p.result == OTHER_BUILD or p.result == NO_RUNTIME:
                lines.append(f"{who}: not patchable: {p.error}")
            else:
                lines.append(f"{who}: {p.result}: {p.error}")
        count: dict[str, int] = {}
        for p in self.processes:
            count[p.result] = count.get(p.result, 0) + 1
        what = ", ".join(f"{n} {r}" for r, n in sorted(count.items())) or "none"
        if self.library is not None:
            lines.append(f"{len(self.processes)} processes map {os.path.basename(self.library.path)} "
                         f"(build-id {self.library.build_id[:12]}) or another build of it: {what}")
        elif self.action != "status":
            lines.append(f"{len(self.processes)} processes: {what}")
        for r in self.installed or ():
            key = f" (build-id {r['key'][:12]})" if r["kind"] == "userspace" else ""
            warn = "" if r["trusted"] else ": NOT APPLIED, the store or the file may be written by others"
            lines.append(f"installed in {r['store']}: {r['object']}{key}: {r['release']} "
                         f"({r['patch']}){warn}")
        if self.installed == [] and not self.processes:
            lines.append("no process runs the klpcc runtime, and nothing is installed")
        return "\n".join(lines) + "\n"


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text(errors="replace").strip()
    except OSError:
        return "?"


def _ours(pid: int) -> bool:
    """May this user control process ``pid`` (its effective uid is ours, or we are root)?"""
    if os.geteuid() == 0:
        return True
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[2]) == os.geteuid()
    except (OSError, ValueError, IndexError):
        pass
    return False


def _pids() -> Iterator[int]:
    me = os.getpid()
    for name in sorted(os.listdir("/proc"), key=lambda n: (len(n), n)):
        if name.isdigit() and int(name) != me and _ours(int(name)):
            yield int(name)


@dataclass(frozen=True)
class _Mapping:
    range: str  # start-end, for /proc/PID/map_files
    inode: int
    path: str  # as the process sees it


def _mappings(pid: int) -> list[_Mapping] | None:
    """The files process ``pid`` maps (one entry per file); None when it is gone or not
    ours to look at."""
    try:
        text = Path(f"/proc/{pid}/maps").read_text(errors="surrogateescape")
    except OSError:
        return None
    out: dict[tuple[int, str], _Mapping] = {}
    for line in text.splitlines():
        f = line.split(None, 5)
        if len(f) == 6 and f[5].startswith("/") and f[4] != "0":
            out.setdefault((int(f[4]), f[5]), _Mapping(f[0], int(f[4]), f[5]))
    return list(out.values())


def _mapped_build_id(pid: int, m: _Mapping) -> str | None:
    """The build-id of the file process ``pid`` maps: through its root when the file
    there is the one mapped (same inode), else through map_files (root only)."""
    shown = m.path.removesuffix(" (deleted)")
    for candidate in (f"/proc/{pid}/root{shown}", f"/proc/{pid}/map_files/{m.range}"):
        with contextlib.suppress(OSError):
            if os.stat(candidate).st_ino == m.inode:
                return file_build_id(candidate)
    return None


def _runs_runtime(maps: list[_Mapping]) -> bool:
    return any("libklpcc" in m.path.rsplit("/", 1)[-1] for m in maps)


def _each(pids: list[int], act: Callable[[int], dict], done: str, fleet: Fleet) -> None:
    for pid in pids:
        try:
            answer = act(pid)
        except KlpccError as exc:
            result = GONE if not os.path.exists(f"/proc/{pid}") else (
                NO_RUNTIME if "runs no klpcc runtime" in exc.message else UNREACHABLE)
            fleet.processes.append(ProcessResult(pid, _comm(pid), result, exc.message))
            continue
        ok = bool(answer.get("ok"))
        fleet.processes.append(ProcessResult(pid, _comm(pid), done if ok else REFUSED,
                                             None if ok else f"{answer.get('step')}: {answer.get('error')}",
                                             answer))


def tree(root: int) -> list[int]:
    """Process ``root`` and its descendants (a pre-fork server and its workers), parents
    before children."""
    if not os.path.exists(f"/proc/{root}"):
        raise KlpccError(f"no process {root}")
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text(errors="replace")
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop(0)
        out.append(pid)
        todo += sorted(children.get(pid, []))
    return out


def library(path: str) -> Library:
    bid = file_build_id(path)
    if bid is None:
        raise KlpccError("has no GNU build-id: it cannot be matched with the processes that map it",
                         patch=path)
    return Library(str(Path(path).resolve()), bid)


def mapping(lib: Library) -> tuple[list[int], list[ProcessResult]]:
    """Processes of this user (all, for root) that map ``lib``'s build and run the
    runtime; and those that cannot take the patch: the build mapped without the
    runtime, or another build of the library."""
    targets: list[int] = []
    other: list[ProcessResult] = []
    for pid in _pids():
        maps = _mappings(pid)
        if not maps:
            continue
        same = [m for m in maps if _stem(m.path) == lib.stem]
        if not same:
            continue
        ids = {_mapped_build_id(pid, m) for m in same}
        if lib.build_id in ids:
            if _runs_runtime(maps):
                targets.append(pid)
            else:
                other.append(ProcessResult(pid, _comm(pid), NO_RUNTIME,
                                           f"it maps {os.path.basename(lib.path)} but runs no klpcc runtime: "
                                           f"{client.HINT}"))
            continue
        shown = ", ".join(sorted(i[:12] for i in ids if i)) or "unreadable"
        other.append(ProcessResult(pid, _comm(pid), OTHER_BUILD,
                                   f"it maps another build of {lib.stem} (build-id {shown}); the patch is "
                                   f"for {lib.build_id[:12]}"))
    return targets, other


def apply_many(patch: str, timeout: float, pids: list[int], lib: Library | None,
               socket: str | None = None) -> Fleet:
    fleet = Fleet("apply", str(Path(patch).resolve()), lib, named=lib is None)
    if lib is not None:
        objects = elfinfo.patch_manifest(patch)["patch_object"]["objects"]
        if lib.build_id not in {o["build_id"] for o in objects}:
            what = ", ".join(f"{o['name']} ({o['build_id'][:12]})" for o in objects)
            raise KlpccError(f"is for {what}, not for {lib.path} (build-id {lib.build_id[:12]})", patch=patch)
        pids, other = mapping(lib)
        fleet.processes += other
    _each(pids, lambda pid: client.apply(pid, patch, timeout, socket).doc, APPLIED, fleet)
    fleet.processes.sort(key=lambda p: p.pid)
    return fleet


def disable_many(pids: list[int], timeout: float, name: str | None, socket: str | None = None) -> Fleet:
    fleet = Fleet("disable", named=True)
    _each(pids, lambda pid: client.disable(pid, timeout, socket, name).doc, DISABLED, fleet)
    return fleet


def status_all(installed: list[dict]) -> Fleet:
    fleet = Fleet("status", installed=installed)
    pids = [pid for pid in _pids() if _runs_runtime(_mappings(pid) or [])]
    _each(pids, lambda pid: client.status(pid).doc, STATUS, fleet)
    return fleet
