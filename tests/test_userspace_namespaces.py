"""Reaching a patchable process wherever it runs: with a private /tmp and /run (its own
mount namespace), in a container (own mount and PID namespaces, chrooted into a
minimal root where the patch object's path does not exist), as a user whose
/tmp/.klpcc-<uid> another user created first, and in a user namespace whose root is
not the host's root -- each applies a release and disables it, with `unshare`,
`nsenter` and `setpriv` (util-linux) as root.  And the refusals: another user, and a
container's root reaching for the host's process."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from klpcc.emit.userspace.client import locate
from klpcc.emit.userspace.client import status as client_status
from klpcc.errors import KlpccError

from .helpers import klpcc
from .test_schemas import ID_BASE, registry
from .test_userspace_cli import SERIES, SRC, _service
from .userspace_helpers import as_user, request, wait_listening

USER, OTHER = 4242, 4243  # uids no account has
ROOT = Path(__file__).resolve().parents[1]
PATCH = "0002-shop-bulk-discount"

@pytest.fixture(scope="module")
def built():
    """The shop service and its release-2 patch object, in a directory every user may
    read (outside /tmp, which the namespaces below hide), with libklpcc.so beside them."""
    if os.geteuid() != 0:
        pytest.fail("the namespace tests make namespaces and switch users: run them as root")
    tmp = Path(tempfile.mkdtemp(prefix="klpcc-ns-", dir="/var/tmp"))
    tmp.chmod(0o755)
    try:
        exe = _service(tmp)
        lib = Path(klpcc("config", "--preload").stdout.strip())
        shutil.copy(lib, tmp / "libklpcc.so")
        bundle = tmp / "b2"
        res = klpcc("compile", str(SERIES), "--source", str(SRC), "-r", "2", "-o", str(bundle))
        assert res.returncode == 0, res.stderr
        patch = tmp / "r2.so"
        res = klpcc("build", str(bundle), "--binary", str(exe), "-o", str(patch))
        assert res.returncode == 0, res.stderr
        res = klpcc("compile", str(SERIES), "--source", str(SRC), "-r", "3", "-o", str(tmp / "b3"))
        assert res.returncode == 0, res.stderr
        res = klpcc("build", str(tmp / "b3"), "--binary", str(exe), "-o", str(tmp / "r3.so"))
        assert res.returncode == 0, res.stderr
        for p in tmp.iterdir():
            p.chmod(0o755)
        yield tmp, exe, patch
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("KLPCC_SOCKET_DIR", "XDG_RUNTIME_DIR")}
    env["LD_LIBRARY_PATH"] = str(tmp)
    return env


def _descendant(pid: int, name: str, timeout: float = 10.0) -> int:
    """The first process named ``name`` under ``pid`` (``pid`` itself included)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        todo = [pid]
        while todo:
            p = todo.pop()
            try:
                if os.readlink(f"/proc/{p}/exe").endswith("/" + name):
                    return p
                for task in os.listdir(f"/proc/{p}/task"):
                    todo += [int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
            except OSError:
                continue
        time.sleep(0.02)
    raise AssertionError(f"no {name} under {pid}")


def _stop(proc: subprocess.Popen, pid: int) -> None:
    """Kill the service (and what started it), and remove the socket a killed runtime
    leaves behind."""
    with contextlib.suppress(KlpccError, OSError):
        locate(pid).path.unlink()  # through its root, whatever its mount namespace
    for p in (pid, proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    proc.wait(timeout=10)


def _cycle(pid: int, patch: Path, *, inside: list[str] | None = None, target: str | None = None) -> None:
    """apply, status, disable through the command line (run with ``inside`` before it:
    from within the process's namespaces, naming it ``target``)."""
    def run(*args: str) -> subprocess.CompletedProcess:
        if inside is None:
            return klpcc(*args)
        return subprocess.run([*inside, sys.executable, "-m", "klpcc", *args], capture_output=True, text=True,
                              check=False)

    who = target or str(pid)
    res = run("apply", "--pid", who, str(patch), "--format", "json")
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(res.stdout)["patch"] == PATCH
    res = run("status", "--pid", who, "--format", "json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert [(p["name"], p["state"], p["path"]) for p in doc["patches"]] == [(PATCH, "installed", str(patch))]
    res = run("disable", "--pid", who)
    assert res.returncode == 0 and res.stdout.startswith(f"disabled {PATCH}"), res.stdout + res.stderr
    assert "no patch installed" in run("status", "--pid", who).stdout


def test_private_tmp_and_run_from_the_host_and_from_inside(built):
    """A service with its own mount and PID namespaces and private /tmp and /run (what
    systemd's PrivateTmp= and a container give): its socket is not on the host's
    filesystem, yet klpcc reaches it from the host by the host's pid, and from inside
    (nsenter) by its own pid, 1."""
    tmp, exe, patch = built
    # the checkout (klpcc, for the client run inside) stays where it is, even under /tmp
    script = ('mount -t tmpfs -o mode=0755 tmpfs /run && mkdir /run/hold && mount --bind "$1" /run/hold '
              '&& mount -t tmpfs tmpfs /tmp && mkdir -p "$1" && mount --move /run/hold "$1" '
              '&& rmdir /run/hold && exec "$0" 2 50 0')
    proc = subprocess.Popen(
        ["unshare", "--mount", "--pid", "--fork", "--mount-proc", "--propagation", "private", "sh", "-c",
         script, str(exe), str(ROOT)], env=_env(tmp), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pid = _descendant(proc.pid, "service")
    try:
        wait_listening(pid)
        ep = locate(pid)
        assert ep.shown == "/run/klpcc/1.sock" and str(ep.path) == f"/proc/{pid}/root/run/klpcc/1.sock"
        # not the host's /run/klpcc/1.sock (if the host has one)
        assert not Path(ep.shown).exists() or os.stat(ep.shown).st_ino != ep.path.stat().st_ino
        _cycle(pid, patch)
        _cycle(pid, patch, inside=["nsenter", "--target", str(pid), "--mount", "--pid", "--"], target="1")
    finally:
        _stop(proc, pid)


def _minimal_root(tmp: Path, exe: Path) -> Path:
    """A root holding the service, the libraries it loads and empty /proc, /tmp, /run."""
    root = Path(tempfile.mkdtemp(prefix="root-", dir=tmp))
    out = subprocess.run(["ldd", str(exe)], capture_output=True, text=True, check=True, env=_env(tmp)).stdout
    libs = [w for line in out.splitlines() for w in line.split() if w.startswith("/")]
    for lib in libs:
        dest = root / lib.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(lib, dest)
    shutil.copy(exe, root / "service")
    for d in ("proc", "tmp", "run"):
        (root / d).mkdir()
    return root


def test_a_container_whose_filesystem_lacks_the_patch_object(built):
    """Own mount and PID namespaces, chrooted into a minimal root: the patch object's
    path does not exist in there, so it travels as a descriptor; a request naming the
    path (the old way) cannot work there."""
    tmp, exe, patch = built
    root = _minimal_root(tmp, exe)
    assert not (root / str(patch).lstrip("/")).exists()
    env = {k: v for k, v in _env(tmp).items() if k != "LD_LIBRARY_PATH"}
    env["LD_LIBRARY_PATH"] = str(tmp)  # the same path inside the root: ldd's copy is there
    proc = subprocess.Popen(
        ["unshare", "--mount", "--pid", "--fork", "--propagation", "private", "sh", "-c",
         'mount -t proc proc "$0/proc" && exec chroot "$0" /service 2 50 0', str(root)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pid = _descendant(proc.pid, "service")
    try:
        wait_listening(pid)
        assert locate(pid).shown == "/run/klpcc/1.sock"
        old = request(locate(pid).path, f"apply 1000 {patch}")
        assert (old["ok"], old["step"]) == (False, "read") and "No such file" in old["error"], old
        _cycle(pid, patch)
    finally:
        _stop(proc, pid)


def test_a_tmp_directory_another_user_created_first(built):
    """/tmp/.klpcc-<uid> made first by another user (who could otherwise keep the fixes
    out): the runtime listens in a fresh directory beside it, and says so; klpcc finds
    it."""
    tmp, exe, patch = built
    assert not Path(f"/run/user/{USER}").exists()
    taken = Path(f"/tmp/.klpcc-{USER}")
    shutil.rmtree(taken, ignore_errors=True)
    taken.mkdir(mode=0o700)
    os.chown(taken, 65534, 65534)
    log = tmp / "taken.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(["setpriv", f"--reuid={USER}", f"--regid={USER}", "--clear-groups", str(exe),
                                 "2", "50", "0"], env=_env(tmp), stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_listening(proc.pid)
        ep = locate(proc.pid)
        assert ep.shown.startswith(f"/tmp/.klpcc-{USER}.") and ep.shown.endswith(f"/{proc.pid}.sock")
        made = Path(ep.shown).parent
        assert made.stat().st_uid == USER and made.stat().st_mode & 0o777 == 0o700
        assert list(taken.iterdir()) == []
        text = log.read_text()
        assert f"{taken} belongs to uid 65534, not to uid {USER}" in text and f"listening in {made}" in text
        _cycle(proc.pid, patch)
    finally:
        _stop(proc, proc.pid)
        shutil.rmtree(taken, ignore_errors=True)
        for d in Path("/tmp").glob(f".klpcc-{USER}.*"):
            shutil.rmtree(d, ignore_errors=True)


def test_a_user_namespace_whose_root_is_not_the_hosts(built):
    """A service as the root of a user namespace mapped to an ordinary uid: the host's
    root is no uid it knows (SO_PEERCRED says 65534), so it is refused until it shows
    it may read the process's memory -- which the host's root may, and another user may
    not."""
    tmp, exe, patch = built
    proc = subprocess.Popen(["setpriv", f"--reuid={USER}", f"--regid={USER}", "--clear-groups", "unshare",
                             "--user", "--map-root-user", str(exe), "2", "50", "0"], env=_env(tmp),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(proc.pid)
        ep = locate(proc.pid)
        assert ep.other_userns
        plain = request(ep.path, "status")
        assert (plain["ok"], plain["step"]) == (False, "request") and "uid 65534 may not" in plain["error"]
        assert plain["proof"].startswith("0x")
        schema = {"$ref": f"{ID_BASE}runtime-answer.schema.json#/$defs/status"}
        assert not list(Draft202012Validator(schema, registry=registry()).iter_errors(plain))
        _cycle(proc.pid, patch)
        # another user may not even look for its socket, nor read its memory
        got = as_user(OTHER, lambda: client_status(proc.pid).doc)
        assert got.startswith("error ") and "may not" in got, got
    finally:
        _stop(proc, proc.pid)
        own = Path("/tmp/.klpcc-0")
        if own.exists() and own.stat().st_uid == USER:  # made by the namespace's root
            shutil.rmtree(own, ignore_errors=True)
        for d in Path("/tmp").glob(".klpcc-0.*"):
            if d.stat().st_uid == USER:
                shutil.rmtree(d, ignore_errors=True)


def test_a_containers_root_may_not_patch_the_hosts_process(built):
    """The root of a user namespace (an ordinary uid on the host) reaching for a
    process of the host's root: the socket is not its to open; and with the file modes
    opened up, the runtime refuses it, and it cannot read the process's memory."""
    tmp, exe, patch = built
    proc = subprocess.Popen([str(exe), "2", "50", "0"], env=_env(tmp), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_listening(proc.pid)
        ep = locate(proc.pid)
        assert ep.shown == f"/run/klpcc/{proc.pid}.sock"
        got = as_user(OTHER, lambda: client_status(proc.pid).doc, userns=True)
        assert got.startswith("error ") and "may not" in got, got
        sock = Path(ep.shown)  # the host's own path: the other user may not go through /proc/PID/root
        mode = sock.parent.stat().st_mode & 0o777
        try:
            sock.parent.chmod(0o711)
            sock.chmod(0o666)
            got = as_user(OTHER, lambda: client_status(proc.pid, str(sock)).doc, userns=True)
            assert not got.startswith(("error ", "crash ")) and "may not control this process" in got, got
            assert "may not read its memory either" in got and "'ok': False" in got
        finally:
            sock.chmod(0o600)
            sock.parent.chmod(mode)
        res = klpcc("status", "--pid", str(proc.pid))
        assert res.returncode == 0 and "no patch installed" in res.stdout
    finally:
        _stop(proc, proc.pid)


def test_messages_tell_apart_what_was_found(built, tmp_path):
    """A runtime that listens on no socket (it said why on its stderr), and a socket
    nothing listens on."""
    import socket as sockets

    tmp, exe, _ = built
    bad = tmp_path / "open"
    bad.mkdir(mode=0o777)
    bad.chmod(0o777)
    env = dict(_env(tmp), KLPCC_SOCKET_DIR=str(bad))
    proc = subprocess.Popen([str(exe), "2", "50", "0"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while "libklpcc" not in Path(f"/proc/{proc.pid}/maps").read_text() and time.monotonic() < deadline:
            time.sleep(0.02)
        res = klpcc("status", "--pid", str(proc.pid))
        want = f"process {proc.pid} runs the klpcc runtime, but it listens on no socket"
        assert res.returncode == 2 and want in res.stderr, res.stderr
    finally:
        _stop(proc, proc.pid)
    assert "writable by group or others" in proc.stderr.read()
    stale = tmp_path / "stale.sock"
    with sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM) as s:
        s.bind(str(stale))  # bound, never listening
        res = klpcc("status", "--pid", str(os.getpid()), "--socket", str(stale))
    assert res.returncode == 2 and "does not answer" in res.stderr and str(stale) in res.stderr, res.stderr


def _installed(pid: int) -> list[str]:
    res = klpcc("status", "--pid", str(pid), "--format", "json")
    assert res.returncode == 0, res.stderr
    return [p["name"] for p in json.loads(res.stdout)["patches"] if p["state"] == "installed"]


def test_the_same_object_twice_then_another_release(built):
    """Loading through descriptors: applying one object twice, then the next release,
    installs the next release (the loader knows objects by name and by file; each
    apply loads a copy of its own)."""
    tmp, exe, patch = built
    proc = subprocess.Popen([str(exe), "2", "50", "0"], env=_env(tmp), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_listening(proc.pid)
        for obj, name in ((patch, PATCH), (patch, PATCH), (tmp / "r3.so", "0003-shop-greeting-back-out"),
                          (patch, PATCH)):
            res = klpcc("apply", "--pid", str(proc.pid), str(obj), "--format", "json")
            assert res.returncode == 0 and json.loads(res.stdout)["patch"] == name, res.stdout + res.stderr
            assert _installed(proc.pid) == [name]
    finally:
        _stop(proc, proc.pid)


def test_two_pid_namespaces_sharing_run(built):
    """Two services that are both pid 1 of their own PID namespace and share /run: the
    second listens beside the first (not over it), and each is patched alone."""
    tmp, exe, patch = built
    procs, pids = [], []
    try:
        for _ in range(2):
            cmd = ["unshare", "--pid", "--fork", "--mount-proc", str(exe), "2", "50", "0"]
            procs.append(subprocess.Popen(cmd, env=_env(tmp), stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
            pids.append(_descendant(procs[-1].pid, "service"))
            wait_listening(pids[-1])
        shown = [locate(p).shown for p in pids]
        assert shown[0] == "/run/klpcc/1.sock"
        assert shown[1].startswith("/run/klpcc/1.") and shown[1] != shown[0]
        res = klpcc("apply", "--pid", str(pids[0]), str(patch))
        assert res.returncode == 0, res.stderr
        assert _installed(pids[0]) == [PATCH] and _installed(pids[1]) == []
    finally:
        for proc, pid in zip(procs, pids):
            _stop(proc, pid)


def test_nothing_is_sent_to_a_socket_that_is_not_the_processs(built, tmp_path):
    """A socket at the place given (or found) that another process listens on gets
    neither the patch object nor a request."""
    import socket as sockets

    tmp, exe, patch = built
    proc = subprocess.Popen([str(exe), "2", "50", "0"], env=_env(tmp), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    fake = tmp_path / "fake.sock"
    try:
        wait_listening(proc.pid)
        with sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM) as listener:
            listener.bind(str(fake))
            listener.listen(4)
            res = klpcc("apply", "--pid", str(proc.pid), str(patch), "--socket", str(fake))
            assert res.returncode == 2 and f"is not the klpcc socket of process {proc.pid}" in res.stderr
            assert f"process {os.getpid()} listens on it" in res.stderr, res.stderr
            listener.settimeout(2)
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(2)
                assert conn.recv(100) == b""  # connected, and closed with nothing said
        assert _installed(proc.pid) == []
    finally:
        _stop(proc, proc.pid)


def test_an_object_the_process_could_not_open_and_a_plain_chroot(built):
    """The object travels as the client's descriptor: a file only root may read goes
    to a service of another user; and a service chrooted in the host's own mount
    namespace is found through its root."""
    tmp, exe, patch = built
    private = tmp / "private"
    private.mkdir(mode=0o700)
    secret = private / "r2.so"
    shutil.copy(patch, secret)
    secret.chmod(0o600)
    proc = subprocess.Popen(["setpriv", f"--reuid={USER}", f"--regid={USER}", "--clear-groups", str(exe),
                             "2", "50", "0"], env=dict(_env(tmp), KLPCC_SOCKET_DIR=str(tmp / "socks")),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (tmp / "socks").mkdir(mode=0o700)
    os.chown(tmp / "socks", USER, USER)
    try:
        wait_listening(proc.pid)
        _cycle(proc.pid, secret)
    finally:
        _stop(proc, proc.pid)
    root = _minimal_root(tmp, exe)
    proc = subprocess.Popen(["chroot", str(root), "/service", "2", "50", "0"], env=_env(tmp),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(proc.pid)
        ep = locate(proc.pid)
        assert ep.shown == f"/run/klpcc/{proc.pid}.sock"
        assert (root / "run/klpcc" / f"{proc.pid}.sock").exists()
        assert _installed(proc.pid) == []
        # its root has no /proc: a descriptor cannot be opened by name there, and it says so
        res = klpcc("apply", "--pid", str(proc.pid), str(patch))
        assert res.returncode == 1 and "this process has no /proc" in res.stderr, res.stderr
    finally:
        _stop(proc, proc.pid)
