"""Builders and a client for the userspace runtime's tests and figures.

The program under test is tests/userspace/prog.c, built with the flags klpcc's userspace
target requires and linked with libklpcc.so.  Patch objects are written here by hand:
C sources with a `klpcc_patch_descriptor` whose offsets and sizes come from the program's
symbol table (read with pyelftools), compiled as klpcc would compile them.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from elftools.elf.elffile import ELFFile

from klpcc.errors import KlpccError

ROOT = Path(__file__).resolve().parent.parent
RUNTIME = ROOT / "runtime" / "userspace"
PROG_SRC = ROOT / "tests" / "userspace" / "prog.c"

PROGRAM_CFLAGS = [
    "-O2",
    "-fpatchable-function-entry=5,0",
    "-falign-functions=16",
    "-flive-patching=inline-clone",
    "-fno-omit-frame-pointer",
    "-fasynchronous-unwind-tables",
    "-g",
]
PATCH_CFLAGS = ["-O2", "-g", "-fPIC", "-shared", "-fno-semantic-interposition", "-Wl,-Bsymbolic-functions"]
STEP = 100000  # a result is x + STEP * version

# Statics of the program every patch object references (ref slots).
COMMON_REFS = ("counter", "journal", "journal_len", "blocker_pipe", "imm_pipe")


def build_runtime(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(["make", "-s", "-C", str(RUNTIME), f"O={out}"], check=True, capture_output=True)
    return out / "libklpcc.so"


def build_program(libdir: Path, out: Path, src: Path = PROG_SRC) -> Path:
    cmd = ["gcc", *PROGRAM_CFLAGS, "-Wall", "-Wextra", "-Werror", "-pthread", str(src), "-o", str(out),
           "-Wl,--build-id", "-Wl,--no-as-needed", f"-L{libdir}", "-lklpcc", f"-Wl,-rpath,{libdir}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return out


def symbols(binary: Path) -> dict[str, tuple[int, int]]:
    """name -> (st_value, st_size) of the program's functions and objects."""
    out: dict[str, tuple[int, int]] = {}
    with open(binary, "rb") as f:
        for sym in ELFFile(f).get_section_by_name(".symtab").iter_symbols():
            if sym["st_info"]["type"] in ("STT_FUNC", "STT_OBJECT") and sym.name:
                out.setdefault(sym.name, (sym["st_value"], sym["st_size"]))
    return out


def build_id(binary: Path) -> str:
    with open(binary, "rb") as f:
        for note in ELFFile(f).get_section_by_name(".note.gnu.build-id").iter_notes():
            if note["n_type"] == "NT_GNU_BUILD_ID":
                return note["n_desc"]
    raise AssertionError(f"{binary}: no build-id")


# ---- patch objects ---------------------------------------------------------------------------


def versioned(version: int, spin: str | None = None, read_pipe: str | None = None) -> str:
    """The body of a replacement returning x + STEP * version (and bumping the counter)."""
    body = ""
    if spin:
        body += f"for (volatile long i = 0; i < {spin}; i++) ;\n"
    if read_pipe:
        body += (f"char c; int *fds = (int *)ref_{read_pipe};\n"
                 "while (read(fds[0], &c, 1) < 0 && errno == EINTR) ;\n")
    body += f"bump();\nreturn x + STEP * {version}L;"
    return body


@dataclass
class Func:
    name: str                  # the program's function
    body: str                  # C statements, the argument is `long x`
    immediate: bool = False
    why: str = "modified"
    decl: str = ""             # the prototype, if not `long klpp_<name>(long x)`


@dataclass
class Patch:
    name: str
    funcs: list[Func] = field(default_factory=list)
    states: list[tuple[int, int]] = field(default_factory=list)
    callbacks: dict[str, str] = field(default_factory=dict)  # pre_patch... -> C body
    extra: str = ""            # C code before the replacements
    refs: tuple[str, ...] = COMMON_REFS
    offsets: dict[str, int] = field(default_factory=dict)   # override a function's offset
    ref_offsets: dict[str, int] = field(default_factory=dict)
    build_id: str | None = None
    manifest: str | None = '{"release": "test"}'
    abi: int = 2
    descriptor: str = "klpcc_patch_descriptor"  # the symbol's name


def simple(name: str, versions: dict[str, int], **kw) -> Patch:
    """A patch whose replacements return x + STEP * version."""
    spins = {"slow": "20000"}
    pipes = {"blocker": "blocker_pipe", "imm": "imm_pipe"}
    funcs = [Func(f, versioned(v, spins.get(f), pipes.get(f))) for f, v in versions.items()]
    return Patch(name, funcs, **kw)


def c_string(s: str | None) -> str:
    if s is None:
        return "NULL"
    return json.dumps(s)  # a JSON string of ASCII text is a valid C string literal


def patch_source(p: Patch, syms: dict[str, tuple[int, int]], bid: str) -> str:
    out = [
        "#include <errno.h>",
        "#include <stdarg.h>",
        "#include <stdio.h>",
        "#include <stdlib.h>",
        "#include <string.h>",
        "#include <unistd.h>",
        '#include "klpcc.h"',
        "#define STEP 100000L",
    ]
    out += [f"static void *ref_{r};" for r in p.refs]
    out.append(
        "__attribute__((unused)) static void bump(void)\n"
        "{ __atomic_add_fetch((long *)ref_counter, 1, __ATOMIC_RELAXED); }\n"
        "__attribute__((unused, format(printf, 1, 2))) static void note(const char *fmt, ...)\n"
        "{\n"
        "  char *j = ref_journal; long *len = ref_journal_len; va_list ap;\n"
        "  va_start(ap, fmt);\n"
        "  int n = vsnprintf(j + *len, 8192 - *len - 1, fmt, ap);\n"
        "  va_end(ap);\n"
        "  if (n > 0) { *len += n < 8190 - *len ? n : 8190 - *len; j[(*len)++] = '\\n'; }\n"
        "}"
    )
    out.append(p.extra)
    for f in p.funcs:
        out.append(f"{f.decl or f'long klpp_{f.name}(long x)'}\n{{\n{f.body}\n}}")
    for kind, body in p.callbacks.items():
        ret = "int" if kind == "pre_patch" else "void"
        out.append(f"static {ret} cb_{kind}(void)\n{{\n{body}\n}}")
    entries = []
    for f in p.funcs:
        off, size = syms[f.name]
        off = p.offsets.get(f.name, off)
        entries.append(f'{{ "{f.name}", {off:#x}UL, {size}UL, (void *)klpp_{f.name}, '
                       f'{int(f.immediate)}, {c_string(f.why)}, 0 }}')
    refs = []
    for r in p.refs:
        off = p.ref_offsets.get(r, syms[r][0])
        refs.append(f'{{ "{r}", {off:#x}UL, &ref_{r}, 0 }}')
    states = [f"{{ {i}, {v} }}" for i, v in p.states]
    out.append("static const struct klpcc_object objects[] = "
               f'{{ {{ "program", {c_string(p.build_id or bid)}, 0 }} }};')
    out.append("static const struct klpcc_func funcs[] = {\n  " + ",\n  ".join(entries or ["{0}"]) + "\n};")
    out.append("static const struct klpcc_ref refs[] = {\n  " + ",\n  ".join(refs or ["{0}"]) + "\n};")
    out.append("static const struct klpcc_state_decl states[] = {\n  "
               + ",\n  ".join(states or ["{0}"]) + "\n};")
    cbs = {k: (f"cb_{k}" if k in p.callbacks else "NULL")
           for k in ("pre_patch", "post_patch", "pre_unpatch", "post_unpatch")}
    out.append(
        f"const struct klpcc_patch {p.descriptor} = {{\n"
        f"  .abi = {p.abi}, .name = {c_string(p.name)},\n"
        f"  .objects = objects, .nobjects = 1,\n"
        f"  .funcs = funcs, .nfuncs = {len(entries)},\n"
        f"  .refs = refs, .nrefs = {len(refs)},\n"
        f"  .states = states, .nstates = {len(states)},\n"
        f"  .pre_patch = {cbs['pre_patch']}, .post_patch = {cbs['post_patch']},\n"
        f"  .pre_unpatch = {cbs['pre_unpatch']}, .post_unpatch = {cbs['post_unpatch']},\n"
        f"  .manifest = {c_string(p.manifest)},\n"
        "};"
    )
    return "\n".join(out) + "\n"


class Builder:
    """Builds patch objects for one program, each source once."""

    def __init__(self, binary: Path, out: Path):
        self.binary = binary
        self.syms = symbols(binary)
        self.build_id = build_id(binary)
        self.out = out
        out.mkdir(parents=True, exist_ok=True)

    def build(self, p: Patch) -> Path:
        src = patch_source(p, self.syms, self.build_id)
        digest = hashlib.sha256(src.encode()).hexdigest()[:12]
        so = self.out / f"{p.name}-{digest}.so"
        if not so.exists():
            c = so.with_suffix(".c")
            c.write_text(src)
            tmp = so.with_suffix(".tmp")
            cmd = ["gcc", *PATCH_CFLAGS, "-Wall", "-Werror", f"-I{RUNTIME}", str(c), "-o", str(tmp)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            assert done.returncode == 0, f"{c}:\n{done.stderr}"
            tmp.rename(so)
        return so


# ---- the control socket ------------------------------------------------------------------------


def wait_listening(pid: int, timeout: float = 10.0) -> None:
    """Until the runtime in process ``pid`` listens (its socket found as the client
    finds it)."""
    from klpcc.emit.userspace.client import locate

    deadline = time.monotonic() + timeout
    while True:
        try:
            locate(pid)
            return
        except KlpccError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def request(sock: Path, line: str, timeout: float = 120.0) -> dict:
    """Send one request line; return the answer (one line of JSON)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock))
        s.sendall(line.encode() + b"\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.endswith(b"\n") and data.count(b"\n") == 1, data
    return json.loads(data)


class Program:
    """The test program, running, with its control socket."""

    def __init__(self, binary: Path, workdir: Path, env: dict[str, str] | None = None):
        workdir.mkdir(parents=True, exist_ok=True)
        self.sockdir = workdir / "sock"
        self.sockdir.mkdir(mode=0o700, exist_ok=True)
        full_env = dict(os.environ, KLPCC_SOCKET_DIR=str(self.sockdir))
        full_env.update(env or {})
        self.stderr_path = workdir / f"stderr-{time.monotonic_ns()}.txt"
        self._stderr = open(self.stderr_path, "w+")  # noqa: SIM115
        self.proc = subprocess.Popen([str(binary)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr, text=True, bufsize=1, env=full_env)
        ready = self.proc.stdout.readline().split()
        assert ready[:1] == ["ready"], (ready, self.stderr())
        self.pid = int(ready[1])
        self.sock = self.sockdir / f"{self.pid}.sock"
        self.lock = threading.Lock()

    def stderr(self) -> str:
        if not self._stderr.closed:
            self._stderr.flush()
        return self.stderr_path.read_text()

    def cmd(self, line: str) -> str:
        with self.lock:
            assert self.proc.poll() is None, f"the program died ({self.proc.returncode}): {self.stderr()}"
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
            answer = self.proc.stdout.readline()
        assert answer, f"no answer to {line!r}: the program died? {self.stderr()}"
        return answer.strip()

    def call(self, fn: str, x: int = 1) -> int:
        return int(self.cmd(f"call {fn} {x}"))

    def version(self, fn: str, x: int = 1) -> int:
        r = self.call(fn, x)
        assert (r - x) % STEP == 0, r
        return (r - x) // STEP

    def stats(self) -> dict[str, int]:
        return {k: int(v) for k, v in (kv.split("=") for kv in self.cmd("stats").split())}

    def request(self, line: str, timeout: float = 120.0) -> dict:
        return request(self.sock, line, timeout)

    def apply(self, path: Path, timeout_ms: int = 10000) -> dict:
        return self.request(f"apply {timeout_ms} {path}")

    def disable(self, timeout_ms: int = 10000) -> dict:
        return self.request(f"disable {timeout_ms}")

    def status(self) -> dict:
        return self.request("status")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> int:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
            except BrokenPipeError:
                pass
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()
        return self.proc.returncode


def as_user(uid: int, fn, *, userns: bool = False) -> str:
    """Run ``fn()`` in a child as ``uid`` (as the root of a new user namespace mapped to
    ``uid`` with ``userns``: a container's root); what it returned, as text, or
    "error ..." (a KlpccError or an OSError) or "crash ..." (anything else)."""
    rfd, wfd = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(rfd)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            if userns:
                libc = ctypes.CDLL(None, use_errno=True)
                libc.prctl(4, 1)  # PR_SET_DUMPABLE: /proc/self is ours again after setuid
                if libc.unshare(0x10000000):  # CLONE_NEWUSER
                    raise OSError(ctypes.get_errno(), "unshare")
                Path("/proc/self/setgroups").write_text("deny")
                Path("/proc/self/uid_map").write_text(f"0 {uid} 1")
                Path("/proc/self/gid_map").write_text(f"0 {uid} 1")
            try:
                text = str(fn())
            except (KlpccError, OSError) as exc:
                text = f"error {exc}"
            os.write(wfd, text.encode())
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            os.write(wfd, f"crash {type(exc).__name__}: {exc}".encode())
        finally:
            os._exit(0)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as f:
        out = f.read().decode()
    os.waitpid(child, 0)
    return out
