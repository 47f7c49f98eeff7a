"""The userspace runtime (runtime/userspace, libklpcc.so) on a real multi-threaded program.

tests/userspace/prog.c is built with the flags of klpcc's userspace target and linked
with libklpcc.so; the patch objects are written by hand (tests/userspace_helpers.py), with
offsets and sizes read from the program's symbol table.  Every replacement returns
x + 100000 * version, so a call's result says which code ran.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.userspace_helpers import (
    PROG_SRC,
    PROGRAM_CFLAGS,
    STEP,
    Builder,
    Func,
    Patch,
    Program,
    as_user,
    build_program,
    build_runtime,
    simple,
    versioned,
)


@dataclass
class Env:
    lib: Path
    binary: Path
    patches: Builder


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Env:
    root = tmp_path_factory.mktemp("userspace")
    lib = build_runtime(root / "lib")
    binary = build_program(lib.parent, root / "prog")
    return Env(lib, binary, Builder(binary, root / "patches"))


@pytest.fixture
def prog(env, tmp_path):
    p = Program(env.binary, tmp_path / "run")
    yield p
    rc = p.close()
    assert rc == 0, f"the program exited with {rc}: {p.stderr()}"


def versions(prog: Program) -> tuple[int, int]:
    return prog.version("value"), prog.version("other")


def task_state(pid: int, tid: int) -> str:
    text = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
    return text[text.rindex(")") + 2]


def wait_sleeping(prog: Program, tid: int, timeout: float = 10.0) -> None:
    """Until the thread sleeps (blocked in its pipe read)."""
    end = time.monotonic() + timeout
    while task_state(prog.pid, tid) != "S":
        assert time.monotonic() < end, "the thread never blocked"
        time.sleep(0.005)


def wait_result(prog: Program, which: str, done: int, timeout: float = 10.0) -> int:
    """The last result once `done` calls of the blocked thread have returned."""
    end = time.monotonic() + timeout
    while True:
        n, last = map(int, prog.cmd(f"result {which}").split())
        if n >= done:
            return last
        assert time.monotonic() < end, f"{which}: {n} calls returned, waiting for {done}"
        time.sleep(0.005)


def journal(prog: Program) -> list[str]:
    """The lines the patches' callbacks wrote into the program's journal."""
    text = prog.cmd("journal")
    return text.split("|")[:-1] if text else []


def mapped(prog: Program, path: Path) -> bool:
    return str(path) in Path(f"/proc/{prog.pid}/maps").read_text()


# ---- 1. apply, nop, downgrade, disable ---------------------------------------------------------


def test_apply_nop_downgrade_disable(env, prog):
    p1 = env.patches.build(simple("r1", {"value": 1, "other": 1}))
    p2 = env.patches.build(simple("r2", {"value": 2}))
    assert versions(prog) == (0, 0)

    r = prog.apply(p1)
    assert r["ok"], r
    assert (r["patch"], r["replaced"], r["unloaded"], r["nops"]) == ("r1", [], [], [])
    assert r["tries"] >= 1 and r["total_us"] >= r["stopped_us"] > 0
    assert versions(prog) == (1, 1)
    st = prog.status()
    assert st["pid"] == prog.pid and st["applies"] == 1 and len(st["build_id"]) == 40
    assert st["build_id"] == env.patches.build_id
    [patch] = st["patches"]
    assert patch == {
        "name": "r1", "path": str(p1), "state": "installed",
        "objects": [{"name": "program", "build_id": env.patches.build_id, "loaded": True}],
        "functions": [{"name": "value", "object": "program", "pending": False, "immediate": False,
                       "why": "modified"},
                      {"name": "other", "object": "program", "pending": False, "immediate": False,
                       "why": "modified"}],
        "states": [],
    }
    assert sorted(st["redirected"], key=lambda d: d["name"]) == [
        {"name": "other", "patch": "r1"}, {"name": "value", "patch": "r1"}]

    # The replacement bumps the program's static counter through its ref slot.
    before = int(prog.cmd("counter"))
    for _ in range(3):
        prog.call("value")
    assert int(prog.cmd("counter")) == before + 3

    # r2 drops `other`: it gets its NOPs back, the original runs again.
    r = prog.apply(p2)
    assert r["ok"], r
    assert (r["patch"], r["replaced"], r["unloaded"], r["nops"]) == ("r2", ["r1"], ["r1"], ["other"])
    assert versions(prog) == (2, 0)
    st = prog.status()
    assert [p["name"] for p in st["patches"]] == ["r2"]
    assert st["redirected"] == [{"name": "value", "patch": "r2"}]
    assert not mapped(prog, p1)

    # A downgrade is another apply.
    r = prog.apply(p1)
    assert r["ok"] and r["replaced"] == ["r2"] and r["nops"] == [], r
    assert versions(prog) == (1, 1)

    # Applying the installed object again changes nothing.
    r = prog.apply(p1)
    assert r["ok"] and r["nops"] == [], r
    assert versions(prog) == (1, 1)
    assert [p["name"] for p in prog.status()["patches"]] == ["r1"]

    r = prog.disable()
    assert r["ok"], r
    assert (r["patch"], r["unloaded"], sorted(r["nops"])) == ("r1", ["r1"], ["other", "value"])
    assert versions(prog) == (0, 0)
    st = prog.status()
    assert (st["patches"], st["redirected"], st["applies"]) == ([], [], 4)
    assert not mapped(prog, p1)

    r = prog.disable()
    assert (r["ok"], r["step"]) == (False, "request"), r
    assert prog.apply(p2)["ok"] and versions(prog) == (2, 0)


def test_requests_and_socket(env, prog):
    assert prog.request("frobnicate") == {
        "ok": False, "step": "request",
        "error": "unknown request (apply-fd <timeout_ms> <name> | apply <timeout_ms> <path> | status | "
                 "disable <timeout_ms> [<patch>])"}
    for bad in ("apply 100 relative.so", "apply x /abs.so", "apply 100", "apply-fd 100 /abs.so",
                "apply-fd 100", "apply-fd x /abs.so", "disable", "disable x", "disable 100 ", "status now",
                "proof 00 status", "proof " + "0" * 32 + " status"):
        r = prog.request(bad)
        assert (r["ok"], r["step"]) == (False, "request"), (bad, r)
    # The socket is the process's, mode 0600, and goes away with it.
    mode = prog.sock.stat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    assert prog.close() == 0
    assert not prog.sock.exists()


def test_answers_are_json_whatever_the_names(env, prog):
    name = 'r"1\\ü\t'
    why = 'inlined "foo"\nand more'
    p = env.patches.build(Patch(name, [Func("value", versioned(1), why=why)]))
    r = prog.apply(p)
    assert r["ok"] and r["patch"] == name, r
    [patch] = prog.status()["patches"]
    assert patch["name"] == name and patch["functions"][0]["why"] == why
    # Bytes that are not UTF-8 (a path is bytes) come back as U+FFFD.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(prog.sock))
        s.sendall(b"apply 100 /nonexistent/\xff\x01.so\n")
        answer = s.makefile("rb").read()
    r = json.loads(answer)
    assert r["step"] == "read" and "/nonexistent/\ufffd\u0001.so" in r["error"], r


def test_socket_directory_refused(env, tmp_path):
    for name, mode, owner in (("open", 0o777, None), ("group", 0o770, None), ("other-uid", 0o700, 65534)):
        d = tmp_path / name
        d.mkdir()
        d.chmod(mode)
        if owner is not None:
            os.chown(d, owner, owner)
        p = Program(env.binary, tmp_path / f"run-{name}", env={"KLPCC_SOCKET_DIR": str(d)})
        try:
            assert p.version("value") == 0  # the program runs, unpatched
            assert list(d.iterdir()) == []
            assert "not listening" in p.stderr() and str(d) in p.stderr()
        finally:
            assert p.close() == 0


def test_foreign_uid_refused(env, tmp_path):
    """Only the process's euid and root may talk to it (SO_PEERCRED)."""
    p1 = env.patches.build(simple("r1", {"value": 1}))
    sockdir = Path(tempfile.mkdtemp(prefix="klpcc-test-", dir="/tmp"))  # reachable by nobody
    prog = Program(env.binary, tmp_path / "run", env={"KLPCC_SOCKET_DIR": str(sockdir)})
    prog.sock = sockdir / f"{prog.pid}.sock"

    def ask(line: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(prog.sock))
            s.sendall(line.encode() + b"\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        return data.decode()

    def as_nobody(line: str) -> str:
        return as_user(65534, lambda: ask(line))

    # The directory (0700) and the socket (0600) already keep other users out ...
    assert as_nobody(f"apply 1000 {p1}").startswith("error ")
    # ... and with the file permissions opened up, the runtime still refuses them.
    try:
        sockdir.chmod(0o711)
        prog.sock.chmod(0o666)
        r = json.loads(as_nobody(f"apply 1000 {p1}"))
        assert (r["ok"], r["step"]) == (False, "request") and "uid 65534" in r["error"], r
        assert prog.version("value") == 0 and prog.status()["patches"] == []
    finally:
        assert prog.close() == 0
        shutil.rmtree(sockdir)


def test_preloaded_and_other_signal(env, tmp_path):
    """LD_PRELOAD instead of linking; KLPCC_SIGNAL picks the stop signal."""
    binary = tmp_path / "prog-plain"  # not linked with libklpcc.so
    subprocess.run(["gcc", *PROGRAM_CFLAGS, "-pthread", str(PROG_SRC), "-o", str(binary), "-Wl,--build-id"],
                   check=True)
    builder = Builder(binary, tmp_path / "patches")
    p1 = builder.build(simple("r1", {"value": 1, "slow": 1}))
    p = Program(binary, tmp_path / "run", env={"LD_PRELOAD": str(env.lib), "KLPCC_SIGNAL": "SIGRTMIN+3"})
    try:
        p.cmd("busy 4 2000")
        r = p.apply(p1)
        assert r["ok"], r
        assert p.version("value") == 1
        p.cmd("stop")
        assert p.stats()["bad"] == 0
    finally:
        assert p.close() == 0


# ---- 2. under load ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_load_applies_up_and_down(env, prog):
    """16 threads call value() and other() without pause while 210 applies (upgrades,
    downgrades, nops, disables) switch them.  Each thread checks every result: it must
    come from a patch installed around the call, and from the new patch once the apply
    returned (the test says so before and after each apply: target, current)."""
    releases = {
        1: ({"value": 1, "other": 1}, (1, 1)),
        2: ({"value": 2}, (2, 0)),
        3: ({"value": 3, "other": 3}, (3, 3)),
    }
    paths = {k: env.patches.build(simple(f"r{k}", fns)) for k, (fns, _) in releases.items()}
    expect = {0: (0, 0)} | {k: e for k, (_, e) in releases.items()}
    order = [1, 2, 3, 2, 1, 3, 0]
    prog.cmd("load 16")
    total_tries = 0
    for i in range(210):
        k = order[i % len(order)]
        prog.cmd("target {} {}".format(*expect[k]))
        r = prog.disable() if k == 0 else prog.apply(paths[k])
        assert r["ok"], (i, r)
        total_tries += r["tries"]
        prog.cmd("current {} {}".format(*expect[k]))
        assert versions(prog) == expect[k]
    prog.cmd("stop")
    s = prog.stats()
    assert s["violations"] == 0 and s["bad"] == 0, s
    # Every call ran exactly once (the test's own calls, two per apply, bump it too).
    assert s["calls"] > 0 and s["counter"] == s["calls"] + 2 * 210, s
    assert s["checked"] > 0.99 * s["calls"], s
    print(f"\n210 applies under load: {s['calls']} calls checked, {total_tries} stops")


@pytest.mark.slow
def test_threads_coming_and_going(env, prog):
    """Threads are created and exit all the time while 150 applies stop the world."""
    paths = [env.patches.build(simple(f"c{k}", {"value": k})) for k in (1, 2)]
    prog.cmd("churn 4")
    prog.cmd("load 2")
    for i in range(150):
        prog.cmd(f"target {i % 2 + 1} 0")
        r = prog.apply(paths[i % 2])
        assert r["ok"], (i, r)
        prog.cmd(f"current {i % 2 + 1} 0")
    spawned = int(prog.cmd("spawned"))
    prog.cmd("stop")
    s = prog.stats()
    assert s["bad"] == 0 and s["violations"] == 0 and spawned > 150, (s, spawned)


def test_thread_that_blocks_the_stop_signal(env, prog):
    """A thread that never takes the stop signal makes applies fail, not hang; once it
    takes the signals queued for it, they are ignored."""
    p1 = env.patches.build(simple("r1", {"value": 1}))
    prog.cmd("sigblocked")
    t0 = time.monotonic()
    r = prog.apply(p1, timeout_ms=300)
    assert (r["ok"], r["step"]) == (False, "stack") and "did not stop" in r["error"], r
    assert time.monotonic() - t0 < 5
    assert prog.version("value") == 0 and prog.status()["patches"] == []
    prog.cmd("sigunblock")  # the late handlers run now, and return at once
    r = prog.apply(p1, timeout_ms=2000)
    assert r["ok"], r
    assert prog.version("value") == 1


def test_thread_without_unwind_info(env, prog):
    """A stack the unwinder cannot walk to its end proves nothing: the apply waits."""
    p1 = env.patches.build(simple("r1", {"value": 1}))
    prog.cmd("nocfi")
    r = prog.apply(p1, timeout_ms=300)
    assert (r["ok"], r["step"]) == (False, "stack") and "unwound reliably" in r["error"], r
    assert prog.version("value") == 0
    prog.cmd("nocfi_stop")
    assert prog.apply(p1, timeout_ms=2000)["ok"] and prog.version("value") == 1


# ---- 3. a thread inside a function being replaced ---------------------------------------------------


@pytest.mark.slow
def test_apply_waits_for_a_thread_to_leave(env, prog):
    p1 = env.patches.build(simple("r1", {"value": 1, "blocker": 1}))
    tid = int(prog.cmd("block 7 1"))
    wait_sleeping(prog, tid)  # inside the original blocker(), in read()
    result = {}
    t0 = time.monotonic()
    worker = threading.Thread(target=lambda: result.update(prog.apply(p1, timeout_ms=20000)))
    worker.start()
    time.sleep(0.5)
    assert worker.is_alive() and prog.version("value") == 0  # still waiting, nothing switched
    prog.cmd("unblock blocker")
    worker.join(30)
    r = result
    assert r["ok"], r
    # It waited for the thread (the runtime's clock starts when the request arrives).
    assert time.monotonic() - t0 >= 0.5 and r["total_us"] >= 300000, r
    assert r["tries"] > 1 and r["parked"] >= 1, r
    # The thread finished the original's call and went back to its caller normally.
    assert prog.cmd("join blocker") == "1 7"
    assert prog.version("value") == 1


@pytest.mark.slow
def test_stack_timeout_leaves_the_patch_in_force(env, prog):
    p1 = env.patches.build(simple("r1", {"value": 1, "other": 1, "blocker": 1}))
    p2 = env.patches.build(simple("r2", {"value": 2, "blocker": 2}, callbacks={
        "pre_patch": 'note("r2 pre_patch"); return 0;',
        "post_unpatch": 'note("r2 post_unpatch");',
    }))
    assert prog.apply(p1)["ok"]
    tid = int(prog.cmd("block 7 1"))
    wait_sleeping(prog, tid)  # inside r1's blocker
    before = prog.status()
    r = prog.apply(p2, timeout_ms=300)
    assert (r["ok"], r["step"]) == (False, "stack"), r
    assert "blocker" in r["error"] and "installed copy" in r["error"] and str(tid) in r["error"], r
    # it says why the patch changes the function (the descriptor's reason)
    assert r["error"].endswith("which the patch changes: modified"), r
    # Nothing changed: r1 fully in force, r2 unloaded, its pre_patch undone by post_unpatch.
    assert prog.status() == before
    assert versions(prog) == (1, 1)
    assert not mapped(prog, p2)
    assert journal(prog) == ["r2 pre_patch", "r2 post_unpatch"]
    # The trap set on the blocked call was taken back: it returns normally, through r1.
    prog.cmd("unblock blocker")
    assert prog.cmd("join blocker") == f"1 {7 + STEP}"
    r = prog.apply(p2, timeout_ms=2000)
    assert r["ok"] and r["tries"] == 1, r
    assert versions(prog) == (2, 0)


# ---- 4. busy threads park ------------------------------------------------------------------------------


@pytest.mark.slow
def test_busy_threads_are_parked(env, prog):
    """16 threads spend nearly all their time inside slow(): every apply switching slow()
    parks them on their way out and succeeds."""
    b1 = env.patches.build(simple("b1", {"slow": 1}))
    b2 = env.patches.build(simple("b2", {"slow": 2, "value": 2}))
    prog.cmd("busy 16 20000")
    parked = []
    for i in range(12):
        # The threads parked by the previous apply are back inside slow() first.
        calls = prog.stats()["calls"]
        while prog.stats()["calls"] < calls + 64:
            time.sleep(0.001)
        r = prog.apply(b1 if i % 2 == 0 else b2, timeout_ms=20000)
        assert r["ok"], (i, r)
        assert r["parked"] > 0, (i, r)
        parked.append(r["parked"])
        assert prog.version("slow") == (1 if i % 2 == 0 else 2)
    prog.cmd("stop")
    s = prog.stats()
    assert s["bad"] == 0 and s["calls"] > 0 and s["counter"] == s["calls"] + 12, s  # + the test's calls
    print(f"\nbusy applies: parked per apply {parked}")


def test_new_jump_slots_beside_busy_ones(env, prog):
    """Slots are added to the page whose slot the threads are jumping through."""
    first = env.patches.build(simple("slot1", {"fn_0": 1}))
    more = env.patches.build(simple("slot99", {f"fn_{i}": 2 for i in range(100)}))
    assert prog.apply(first)["ok"]
    prog.cmd("fnbusy 2 1")  # fn_0 without pause, through its jump slot
    time.sleep(0.05)
    r = prog.apply(more)
    assert r["ok"], r
    prog.cmd("stop")
    assert prog.version("fn_99") == 2 and prog.version("fn_0") == 2


PAIR = "struct pair { long a, b; };"


def regs_patch(version: int) -> Patch:
    spin = "for (volatile long i = 0; i < 20000; i++) ;\nbump();\n"
    return Patch(f"regs{version}", [
        Func("pair_fn", spin + f"return (struct pair){{ x + STEP * {version}, ~x }};",
             decl="struct pair klpp_pair_fn(long x)"),
        Func("cplx_fn", spin + f"return (double)(x + STEP * {version}) - (double)x * 1.0i;",
             decl="double _Complex klpp_cplx_fn(long x)"),
    ], extra=PAIR)


def test_parking_keeps_the_return_registers(env, prog):
    """Threads parked on their way out of pair_fn() (result in rax:rdx) and cplx_fn()
    (result in xmm0:xmm1) get both halves of every result intact."""
    paths = [env.patches.build(regs_patch(v)) for v in (1, 2)]
    prog.cmd("regs 8 20000")
    time.sleep(0.1)
    parked = 0
    for i in range(10):
        r = prog.apply(paths[i % 2], timeout_ms=20000)
        assert r["ok"], (i, r)
        parked += r["parked"]
    prog.cmd("stop")
    s = prog.stats()
    assert parked > 0 and s["bad"] == 0 and s["calls"] > 0, (parked, s)


# ---- 5. the entry window --------------------------------------------------------------------------------

PTRACE_GETREGS, PTRACE_SINGLESTEP, PTRACE_DETACH = 12, 9, 17
PTRACE_SEIZE, PTRACE_INTERRUPT = 0x4206, 0x4207
WALL = 0x40000000
RIP = 16  # index in struct user_regs_struct


def program_bias(pid: int, binary: Path) -> int:
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        f = line.split()
        if len(f) >= 6 and f[5] == str(binary) and int(f[2], 16) == 0:
            return int(f[0].split("-")[0], 16)
    raise AssertionError("the program is not mapped")


def signal_pending(pid: int, tid: int, sig: int) -> bool:
    for line in Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines():
        if line.startswith("SigPnd:"):
            return bool(int(line.split()[1], 16) & (1 << (sig - 1)))
    return False


class Stepper:
    """ptrace on one thread of the program: stop it at an instruction, let it go."""

    def __init__(self, tid: int):
        self.tid = tid
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
        self.libc.ptrace.restype = ctypes.c_long

    def ptrace(self, req: int, data: int | None = None) -> None:
        if self.libc.ptrace(req, self.tid, None, data) < 0:
            raise OSError(ctypes.get_errno(), f"ptrace({req})")

    def stop_at(self, address: int) -> None:
        """Single-step the thread until it is about to execute `address`.  It always
        takes one step at least: detaching can inject a signal only from the stop a
        step ends in (a signal-delivery-stop), not from the interrupt's."""
        regs = (ctypes.c_ulong * 27)()
        self.ptrace(PTRACE_SEIZE)
        self.ptrace(PTRACE_INTERRUPT)
        os.waitpid(self.tid, WALL)
        for _ in range(100000):
            self.ptrace(PTRACE_SINGLESTEP)
            os.waitpid(self.tid, WALL)
            self.ptrace(PTRACE_GETREGS, ctypes.addressof(regs))
            if regs[RIP] == address:
                return
        raise AssertionError(f"never reached {address:#x}")

    def detach(self, sig: int = 0) -> None:
        """Let it run; `sig` is delivered first, at the stopped instruction."""
        self.ptrace(PTRACE_DETACH, sig)


def wait_pending(pid: int, tid: int, sig: int) -> None:
    end = time.monotonic() + 10
    while not signal_pending(pid, tid, sig):
        assert time.monotonic() < end, "the runtime never signalled the thread"
        time.sleep(0.001)


def wait_tiny(prog: Program, version: int) -> None:
    end = time.monotonic() + 10
    while prog.cmd("tinylast") != str(version):
        assert time.monotonic() < end, f"tiny() never returned version {version}"
        time.sleep(0.01)


def test_entry_window_rewound(env, prog):
    """A thread interrupted between the NOPs of an entry being written must not run the
    new bytes from their middle.  The test makes it happen for real: it single-steps a
    thread calling tiny() in a loop (ptrace) until it has run two of the five NOPs,
    starts the apply, waits until the runtime's stop signal is pending on that thread and
    detaches: the signal arrives with the saved IP at tiny+2.  The runtime must move it
    back to tiny (status counts it in "rewound"); the thread then jumps into the patch.
    Without the rewind the thread executes the jump's rel32 as code and crashes."""
    t1 = env.patches.build(simple("t1", {"tiny": 1}))
    tid = int(prog.cmd("tinyloop"))
    entry = program_bias(prog.pid, env.binary) + env.patches.syms["tiny"][0]
    stepper = Stepper(tid)
    stepper.stop_at(entry + 2)
    result = {}
    worker = threading.Thread(target=lambda: result.update(prog.apply(t1, timeout_ms=20000)))
    worker.start()
    wait_pending(prog.pid, tid, signal.SIGRTMIN + 7)
    stepper.detach()  # resumes at tiny+2 with the stop signal pending
    worker.join(30)
    r = result
    assert r["ok"] and r["tries"] == 1, r  # a thread in the NOPs is not inside the function
    assert prog.status()["rewound"] == 1
    wait_tiny(prog, 1)
    prog.cmd("stop")
    assert prog.stats()["bad"] == 0


def test_entry_window_under_a_signal_handler(env, prog):
    """The same window, but the thread sits there under a signal handler of the program
    (SIGUSR1, blocked in read()) when the world stops: its saved IP is in the handler's
    signal frame, which the runtime does not own.  Even for an immediate function the
    entry must not be written under it: the thread counts as busy and is parked once the
    handler returned and the original call finished."""
    t1 = env.patches.build(Patch("t1-imm", [Func("tiny", versioned(1), immediate=True)]))
    tid = int(prog.cmd("tinyloop"))
    entry = program_bias(prog.pid, env.binary) + env.patches.syms["tiny"][0]
    stepper = Stepper(tid)
    stepper.stop_at(entry + 2)
    stepper.detach(signal.SIGUSR1)  # the handler runs (and blocks) over tiny+2
    wait_sleeping(prog, tid)
    result = {}
    worker = threading.Thread(target=lambda: result.update(prog.apply(t1, timeout_ms=20000)))
    worker.start()
    time.sleep(0.5)
    assert worker.is_alive(), result
    prog.cmd("handler_unblock")
    worker.join(30)
    r = result
    assert r["ok"] and r["tries"] > 1 and r["parked"] == 1, r
    wait_tiny(prog, 1)
    prog.cmd("stop")
    assert prog.stats()["bad"] == 0


@pytest.mark.slow
def test_tight_loop_over_a_short_function(env, prog):
    """A thread calls tiny() (five NOPs, a mov, a ret) in a tight loop while tiny is
    redirected and given its NOPs back 400 times: stops land in the NOPs now and then."""
    t1 = env.patches.build(simple("t1", {"tiny": 1}))
    prog.cmd("tinyloop")
    for i in range(400):
        r = prog.apply(t1) if i % 2 == 0 else prog.disable()
        assert r["ok"], (i, r)
    prog.cmd("stop")
    s = prog.stats()
    assert s["bad"] == 0 and s["calls"] > 0, s
    print(f"\ntight loop: {prog.status()['rewound']} threads rewound in 400 switches")


# ---- 6. faults: each leaves the installed patch exactly in force -------------------------------------

GOOD = {"value": 1, "other": 1}


def _truncated(env: Env, tmp: Path) -> Path:
    good = env.patches.build(simple("whole", GOOD, states=[(1, 2)]))
    cut = tmp / "truncated.so"
    data = good.read_bytes()
    cut.write_bytes(data[: len(data) // 3])
    return cut


def _not_elf(env: Env, tmp: Path) -> Path:
    p = tmp / "notes.so"
    p.write_text("just text\n")
    return p


FAULTS = {
    "bad-offset": (lambda env, tmp: simple("f", GOOD, states=[(1, 2)], offsets={"value": 0x7FFF0000}),
                   "symbol", "value"),
    "not-an-entry": (lambda env, tmp: simple("f", GOOD, states=[(1, 2)],
                                             offsets={"other": env.patches.syms["other"][0] + 8}),
                     "symbol", "other"),
    "bad-ref": (lambda env, tmp: simple("f", GOOD, states=[(1, 2)], ref_offsets={"counter": 0x7FFF0000}),
                "symbol", "counter"),
    "pre-patch-error": (lambda env, tmp: simple("f", GOOD, states=[(1, 2)],
                                                callbacks={"pre_patch": "return -5;"}),
                        "pre_patch", "-5"),
    "state-lower": (lambda env, tmp: simple("f", GOOD, states=[(1, 1)]), "state", "version 1"),
    "state-dropped": (lambda env, tmp: simple("f", GOOD), "state", "drops state 1"),
    "build-id": (lambda env, tmp: simple("f", GOOD, states=[(1, 2)], build_id="00" * 20), "build-id", "00"),
    "truncated": (_truncated, "read", "truncated"),
    "not-elf": (_not_elf, "read", "notes.so"),
    "missing-file": (lambda env, tmp: tmp / "nothing.so", "read", "No such file"),
    "manifest-invalid": (lambda env, tmp: simple("f", GOOD, states=[(1, 2)], manifest="release 3"),
                         "descriptor", "manifest"),
    "manifest-null": (lambda env, tmp: simple("f", GOOD, states=[(1, 2)], manifest=None),
                      "descriptor", "manifest"),
    "no-descriptor": (lambda env, tmp: simple("f", GOOD, states=[(1, 2)], descriptor="something_else"),
                      "descriptor", "klpcc_patch_descriptor"),
    "wrong-abi": (lambda env, tmp: simple("f", GOOD, states=[(1, 2)], abi=7), "descriptor", "abi 7"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_fault_leaves_previous_patch(env, prog, tmp_path, fault):
    make, step, words = FAULTS[fault]
    base = env.patches.build(simple("base", {"value": 3}, states=[(1, 2)]))
    assert prog.apply(base)["ok"]
    before = prog.status()
    made = make(env, tmp_path)
    path = env.patches.build(made) if isinstance(made, Patch) else made
    r = prog.apply(path, timeout_ms=2000)
    assert r["ok"] is False and r["step"] == step, r
    assert words in r["error"] and "\n" not in r["error"], r
    assert prog.status() == before
    assert versions(prog) == (3, 0)
    assert not mapped(prog, path)
    # ... and the program can still be patched.
    good = env.patches.build(simple("after", GOOD, states=[(1, 2)]))
    assert prog.apply(good)["ok"] and versions(prog) == (1, 1)


# ---- 7. immediate functions ------------------------------------------------------------------------------


@pytest.mark.slow
def test_immediate_switches_under_a_running_thread(env, prog):
    i1_strict = env.patches.build(simple("i1-strict", {"imm": 1}))
    i1 = env.patches.build(Patch("i1", [Func("imm", versioned(1, read_pipe="imm_pipe"), immediate=True)]))
    i2 = env.patches.build(Patch("i2", [Func("imm", versioned(2, read_pipe="imm_pipe"), immediate=True)]))
    r3 = env.patches.build(simple("r3", {"value": 3}))

    tid = int(prog.cmd("immblock 5 3"))
    wait_sleeping(prog, tid)  # inside the original imm()
    r = prog.apply(i1_strict, timeout_ms=200)
    assert (r["ok"], r["step"]) == (False, "stack"), r
    r = prog.apply(i1, timeout_ms=200)
    assert r["ok"] and r["tries"] == 1, r  # not checked: it switches at once
    prog.cmd("unblock imm")
    assert wait_result(prog, "imm", 1) == 5  # that call ran the original to its end
    wait_sleeping(prog, tid)  # the next call is inside i1's copy

    r = prog.apply(i2, timeout_ms=200)
    assert r["ok"] and r["replaced"] == ["i1"] and r["unloaded"] == [], r
    st = prog.status()
    assert [(p["name"], p["state"]) for p in st["patches"]] == [("i2", "installed"), ("i1", "replaced")]
    assert st["patches"][1]["functions"] == [{"name": "imm", "object": "program", "pending": False,
                                              "immediate": True, "why": "modified"}]
    assert mapped(prog, i1)
    prog.cmd("unblock imm")
    assert wait_result(prog, "imm", 2) == 5 + STEP  # finished in i1's code, still loaded
    wait_sleeping(prog, tid)  # now inside i2's copy
    prog.cmd("unblock imm")
    assert wait_result(prog, "imm", 3) == 5 + 2 * STEP
    prog.cmd("join imm")

    # Once a stop finds no frame in it, the old one is unloaded; i2 (just replaced,
    # immediate) stays until a later switch.
    r = prog.apply(r3)
    assert r["ok"] and r["replaced"] == ["i2"] and r["unloaded"] == ["i1"], r
    assert [p["name"] for p in prog.status()["patches"]] == ["r3", "i2"]
    r = prog.disable()
    assert r["ok"] and sorted(r["unloaded"]) == ["i2", "r3"], r
    assert prog.status()["patches"] == []


# ---- 8. states and shadow variables ------------------------------------------------------------------------

SHADOW_HELPERS = r"""
#pragma GCC diagnostic ignored "-Wunused-function"
static int set_ctor(void *obj, void *data, void *arg) { (void)obj; *(int *)data = *(int *)arg; return 0; }
static int fail_ctor(void *obj, void *data, void *arg) { (void)obj; (void)data; (void)arg; return -1; }
static int dtors;
static void count_dtor(void *obj, void *data) { (void)obj; note("dtor %d", *(int *)data); dtors++; }
static const char *show(struct klpcc_state *s)
{
    static char buf[8][64]; static int n;
    char *b = buf[n++ % 8];
    if (!s) return "none";
    snprintf(b, 64, "%lu/v%u/%s", s->id, s->version, s->data ? (char *)s->data : "-");
    return b;
}
"""

# value() reports the state it sees from a program thread: 10 + its version, +100 if a previous one shows.
STATE_VALUE = """
struct klpcc_state *s = klpcc_get_state(1);
bump();
return x + STEP * (10 + (s ? s->version : 0) + (klpcc_get_prev_state(1) ? 100 : 0));
"""


def test_states_and_shadow_variables(env, prog):
    s1 = Patch("s1", [Func("value", STATE_VALUE)], states=[(1, 1)], extra=SHADOW_HELPERS, callbacks={
        "pre_patch": r"""
            note("s1 pre_patch %s prev=%s", show(klpcc_get_state(1)), show(klpcc_get_prev_state(1)));
            klpcc_get_state(1)->data = strdup("from-s1");
            return 0;""",
        "post_patch": r"""
            void *obj = ref_counter, *obj2 = ref_journal;
            int v42 = 42, v43 = 43, v44 = 44;
            int *a = klpcc_shadow_alloc(obj, 7, 4 * sizeof(int), set_ctor, &v42);
            note("alloc %d %d dup=%s get=%s goa=%s", a ? a[0] : -1, a ? a[3] : -1,
                 klpcc_shadow_alloc(obj, 7, 16, NULL, NULL) ? "yes" : "null",
                 klpcc_shadow_get(obj, 7) == a ? "same" : "other",
                 klpcc_shadow_get_or_alloc(obj, 7, 16, set_ctor, &v44) == a ? "same" : "other");
            int *b = klpcc_shadow_get_or_alloc(obj2, 7, sizeof(int), set_ctor, &v43);
            note("goa-new %d ctor-fail=%s get=%s", b ? *b : -1,
                 klpcc_shadow_alloc(obj, 8, 16, fail_ctor, NULL) ? "yes" : "null",
                 klpcc_shadow_get(obj, 8) ? "yes" : "null");
            klpcc_shadow_free(obj2, 7, count_dtor);
            note("freed get=%s", klpcc_shadow_get(obj2, 7) ? "yes" : "null");
            klpcc_shadow_alloc(obj, 9, sizeof(int), set_ctor, &v43);
            klpcc_shadow_alloc(obj2, 9, sizeof(int), set_ctor, &v44);
            klpcc_shadow_free_all(9, count_dtor);
            note("free_all dtors=%d get=%s,%s still=%d", dtors, klpcc_shadow_get(obj, 9) ? "yes" : "null",
                 klpcc_shadow_get(obj2, 9) ? "yes" : "null", *(int *)klpcc_shadow_get(obj, 7));""",
    })
    s2 = Patch("s2", [Func("value", STATE_VALUE)], states=[(1, 2)], extra=SHADOW_HELPERS, callbacks={
        "pre_patch": r"""
            note("s2 pre_patch %s prev=%s", show(klpcc_get_state(1)), show(klpcc_get_prev_state(1)));
            return 0;""",
        "post_patch": r"""
            note("s2 post_patch %s prev=%s shadow=%d", show(klpcc_get_state(1)),
                 show(klpcc_get_prev_state(1)), *(int *)klpcc_shadow_get(ref_counter, 7));""",
        "pre_unpatch": r"""
            note("s2 pre_unpatch %s prev=%s", show(klpcc_get_state(1)), show(klpcc_get_prev_state(1)));""",
        "post_unpatch": r"""
            klpcc_shadow_free_all(7, count_dtor);
            note("s2 post_unpatch %s shadow=%s", show(klpcc_get_state(1)),
                 klpcc_shadow_get(ref_counter, 7) ? "yes" : "null");""",
    })
    s1_again = Patch("s1-again", [Func("value", STATE_VALUE)], states=[(1, 1)])
    p1, p2, p1b = (env.patches.build(p) for p in (s1, s2, s1_again))

    assert prog.apply(p1)["ok"]
    lines = journal(prog)
    lines[5:7] = sorted(lines[5:7])  # free_all visits the table in hash order
    assert lines == [
        "s1 pre_patch 1/v1/- prev=none",
        "alloc 42 0 dup=null get=same goa=same",
        "goa-new 43 ctor-fail=null get=null",
        "dtor 43",
        "freed get=null",
        "dtor 43",
        "dtor 44",
        "free_all dtors=3 get=null,null still=42",
    ]
    assert prog.version("value") == 11  # outside callbacks: the installed patch's state, no previous
    assert prog.status()["patches"][0]["states"] == [{"id": 1, "version": 1}]

    n = len(journal(prog))
    assert prog.apply(p2)["ok"]
    assert journal(prog)[n:] == [
        "s2 pre_patch 1/v2/from-s1 prev=1/v1/from-s1",
        "s2 post_patch 1/v2/from-s1 prev=1/v1/from-s1 shadow=42",
    ]
    assert prog.version("value") == 12

    r = prog.apply(p1b)  # a downgrade of state 1 is refused
    assert (r["ok"], r["step"]) == (False, "state") and "version 1" in r["error"], r
    assert prog.version("value") == 12

    n = len(journal(prog))
    assert prog.disable()["ok"]
    assert journal(prog)[n:] == [
        "s2 pre_unpatch 1/v2/from-s1 prev=none",
        "dtor 42",
        "s2 post_unpatch 1/v2/from-s1 shadow=null",
    ]
    assert prog.version("value") == 0
    # With nothing installed, any state set goes.
    assert prog.apply(p1b)["ok"] and prog.version("value") == 11


def test_shadow_table_is_safe_to_share(env, prog):
    """Shadow variables from program threads: 16 threads allocate and free their own."""
    body = r"""
    int local, v = (int)x;  /* the object: this call's own, so no thread frees another's */
    int *d = klpcc_shadow_get_or_alloc(&local, 5, sizeof(int), init_ctor, &v);
    long ok = d && *d == v && klpcc_shadow_get(&local, 5) == d
              && !klpcc_shadow_alloc(&local, 5, sizeof(int), NULL, NULL);
    klpcc_shadow_free(&local, 5, NULL);
    ok = ok && !klpcc_shadow_get(&local, 5);
    bump();
    return x + STEP * (ok ? 4 : 9);
    """
    extra = "static int init_ctor(void *obj, void *data, void *arg)" \
            "{ (void)obj; *(int *)data = *(int *)arg; return 0; }"
    p = env.patches.build(Patch("sh", [Func("value", body)], extra=extra))
    assert prog.apply(p)["ok"]
    prog.cmd("target 4 0")
    prog.cmd("current 4 0")
    prog.cmd("load 8")
    time.sleep(1)
    prog.cmd("stop")
    s = prog.stats()
    assert s["violations"] == 0 and s["bad"] == 0 and s["calls"] > 0, s
