"""The Ansible collection (ansible/): ``ansible-playbook`` from ``ansible-core`` (PyPI, in a
virtual environment cached outside the repository) rolls releases of the live demo's
series (fixtures/demo/live) out across several inventory hosts on this machine -- each
host its own running service, socket directory, state directory and copy of the
releases, over the local connection -- with the collection built and installed by
``ansible-galaxy`` as users install it.

* a rollout of three releases, in waves; an idempotent re-run (nothing changed);
* a wave where one host's health check fails: that wave goes back to the release each of
  its hosts ran, the rollout stops, the hosts of other waves are untouched;
* a host where ``klpcc lint`` refuses (a downgrade that drops a system state): it fails
  before anything changes, the others go on;
* ``klpcc_facts`` and ``klpcc_patch`` state=absent, check mode.

Every outcome is checked against the processes themselves (``klpcc status``) and the
hosts' stores, not only against what Ansible printed."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .helpers import klpcc
from .userspace_helpers import wait_listening

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
COLLECTION = ROOT / "ansible"
LIVE = ROOT / "fixtures" / "demo" / "live"
SERIES = LIVE / "patches"
ANSIBLE = "ansible-core>=2.16,<2.18"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "klpcc-tests" / "ansible-core-2.17"
KLPCC_BIN = Path(sys.executable).parent / "klpcc"
RELEASES = [n for n in (SERIES / "series").read_text().split()]
NAMES = [n.removesuffix(".patch") for n in RELEASES]
HOSTS = ("h1", "h2", "h3", "h4")


def ansible_venv() -> Path:
    """The bin directory of a virtual environment with ansible-core (made once)."""
    stamp = CACHE / "stamp"
    if not (stamp.is_file() and stamp.read_text() == ANSIBLE
            and (CACHE / "bin" / "ansible-playbook").exists()):
        shutil.rmtree(CACHE, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(CACHE)], check=True)
        proc = subprocess.run([str(CACHE / "bin" / "pip"), "install", "-q", ANSIBLE], capture_output=True,
                              text=True, check=False)
        if proc.returncode != 0:
            pytest.fail(f"pip install {ANSIBLE} failed: {proc.stderr[-2000:]}", pytrace=False)
        stamp.write_text(ANSIBLE)
    return CACHE / "bin"


@dataclass
class Host:
    name: str
    dir: Path
    proc: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        return {"KLPCC_SOCKET_DIR": str(self.dir / "sock"), "KLPCC_STATE_DIR": str(self.dir / "state")}

    def in_force(self) -> list[str]:
        """The patches the host's service has in force, asked of the process itself."""
        res = subprocess.run([str(KLPCC_BIN), "status", "--pid", str(self.proc.pid), "--format", "json"],
                             capture_output=True, text=True, env={**os.environ, **self.env}, check=True)
        return [p["name"] for p in json.loads(res.stdout)["patches"] if p["state"] == "installed"]

    def klpcc(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(KLPCC_BIN), *args], capture_output=True, text=True,
                              env={**os.environ, **self.env}, check=False)

    def put(self, patch: Path) -> None:
        """The host to ``patch`` by hand: whatever is in force out, ``patch`` in, and in
        its store."""
        pid = str(self.proc.pid)
        if self.in_force():
            assert self.klpcc("disable", "--pid", pid).returncode == 0
        for args in (("apply", "--pid", pid, str(patch)), ("install", "--force", str(patch))):
            res = self.klpcc(*args)
            assert res.returncode == 0, res.stdout + res.stderr

    def recorded(self) -> list[str]:
        """The releases the host's store records."""
        res = subprocess.run([str(KLPCC_BIN), "status", "--all", "--format", "json"], capture_output=True,
                             text=True, env={**os.environ, **self.env}, check=False)
        return sorted({r["release"] for r in json.loads(res.stdout)["installed"]})


@dataclass
class Fleet:
    bin: Path
    tmp: Path
    env: dict[str, str]
    hosts: dict[str, Host] = field(default_factory=dict)
    artifacts: dict[str, Path] = field(default_factory=dict)

    def inventory(self) -> Path:
        """Each host local, with its own processes, socket and state directories."""
        hosts = {h.name: {"ansible_connection": "local",
                          "ansible_python_interpreter": str(self.bin / "python"),
                          "klpcc_pids": [h.proc.pid], "klpcc_socket_dir": str(h.dir / "sock"),
                          "klpcc_state_dir": str(h.dir / "state"),
                          "klpcc_remote_dir": str(h.dir / "incoming"),
                          "klpcc_host_dir": str(h.dir)} for h in self.hosts.values()}
        doc = {"klpcc": {"hosts": hosts, "vars": {
            "klpcc_bin": str(KLPCC_BIN), "klpcc_controller_bin": str(KLPCC_BIN),
            "klpcc_artifacts": {n: str(p) for n, p in self.artifacts.items()},
            "klpcc_series": str(SERIES / "series"), "klpcc_source": str(LIVE / "src"),
            "klpcc_health_command": "test ! -e {{ klpcc_host_dir }}/unhealthy",
            "klpcc_timeout": 20}}}
        path = self.tmp / "inventory.json"
        path.write_text(json.dumps(doc, indent=1))  # JSON is YAML
        return path

    def rollout(self, release: int, *extra: str, limit: str | None = None) -> subprocess.CompletedProcess:
        argv = [str(self.bin / "ansible-playbook"), "-i", str(self.inventory()), "klpcc.fleet.rollout",
                "-e", f"klpcc_release={NAMES[release - 1]}", *extra]
        if limit:
            argv += ["--limit", limit]
        return subprocess.run(argv, capture_output=True, text=True, env=self.env, cwd=self.tmp, check=False,
                              timeout=600)

    def state(self) -> dict[str, list[str]]:
        return {n: h.in_force() for n, h in self.hosts.items()}


def recap(out: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP: host -> {ok, changed, failed, ...} (summed over the plays)."""
    rows: dict[str, dict[str, int]] = {}
    for m in re.finditer(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$", out, re.M):
        counts = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m[2])}
        rows[m[1]] = counts
    return rows


def summaries(out: str) -> dict[str, str]:
    return dict(re.findall(r'"msg": "klpcc rollout (\S+): (.*)"', out))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    bin_dir = ansible_venv()
    tmp = tmp_path_factory.mktemp("fleet")
    collections = tmp / "collections"
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(collections), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_HOST_KEY_CHECKING": "0", "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-tmp"),
           "ANSIBLE_REMOTE_TEMP": str(tmp / "ansible-tmp"), "ANSIBLE_RETRY_FILES_ENABLED": "0",
           "ANSIBLE_SHOW_CUSTOM_STATS": "1"}
    built = subprocess.run([str(bin_dir / "ansible-galaxy"), "collection", "build", str(COLLECTION),
                            "--output-path", str(tmp / "dist")],
                           capture_output=True, text=True, env=env, check=False)
    assert built.returncode == 0, built.stdout + built.stderr
    (tarball,) = (tmp / "dist").glob("klpcc-fleet-*.tar.gz")
    inst = subprocess.run([str(bin_dir / "ansible-galaxy"), "collection", "install", str(tarball), "-p",
                           str(collections)], capture_output=True, text=True, env=env, check=False)
    assert inst.returncode == 0, inst.stdout + inst.stderr
    for module in ("klpcc_patch", "klpcc_facts"):  # documented, the shared options included
        doc = subprocess.run([str(bin_dir / "ansible-doc"), f"klpcc.fleet.{module}"], capture_output=True,
                             text=True, env=env, check=False)
        assert doc.returncode == 0 and "state_dir" in doc.stdout and "socket_dir" in doc.stdout, doc.stderr
    example = subprocess.run([str(bin_dir / "ansible-inventory"), "-i",
                              str(COLLECTION / "examples" / "inventory.yml"), "--list"],
                             capture_output=True, text=True, env=env, check=False)
    assert example.returncode == 0, example.stderr
    groups = json.loads(example.stdout)
    assert len(groups["klpcc"]["hosts"]) == 4 and len(groups["klpcc_kernel"]["hosts"]) == 2
    # the service, and its four releases as patch objects
    flags = klpcc("config", "--cflags").stdout.split()
    libs = klpcc("config", "--libs").stdout.split()
    exe = tmp / "service"
    subprocess.run(["cc", "-O2", *flags, "-o", str(exe), str(LIVE / "src" / "service.c"),
                    str(LIVE / "src" / "shop.c"), *libs], check=True)
    f = Fleet(bin_dir, tmp, env)
    for i, name in enumerate(NAMES, 1):
        bundle = tmp / f"bundle{i}"
        res = klpcc("compile", str(SERIES / "series"), "--source", str(LIVE / "src"), "-r", str(i),
                    "-o", str(bundle))
        assert res.returncode == 0, res.stderr
        res = klpcc("build", str(bundle), "--binary", str(exe), "-o", str(tmp / f"r{i}.so"))
        assert res.returncode == 0, res.stderr
        f.artifacts[name] = tmp / f"r{i}.so"
    for name in HOSTS:
        host = Host(name, tmp / name)
        for d in ("sock", "state", "incoming"):
            (host.dir / d).mkdir(parents=True, mode=0o700)
        log = open(host.dir / "service.log", "w")  # noqa: SIM115 (the process keeps it)
        host.proc = subprocess.Popen([str(exe), "2", "100", "0"], stdout=log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **host.env})
        f.hosts[name] = host
    try:
        for host in f.hosts.values():
            os.environ.update(host.env)
            wait_listening(host.proc.pid)
        for key in ("KLPCC_SOCKET_DIR", "KLPCC_STATE_DIR"):
            os.environ.pop(key, None)
        yield f
    finally:
        for key in ("KLPCC_SOCKET_DIR", "KLPCC_STATE_DIR"):
            os.environ.pop(key, None)
        for host in f.hosts.values():
            host.proc.send_signal(signal.SIGKILL)
            host.proc.wait(timeout=10)


def test_a_rollout_of_three_releases_in_waves_then_a_re_run_changes_nothing(fleet):
    assert fleet.state() == {h: [] for h in HOSTS}
    for release in (1, 2, 3):
        res = fleet.rollout(release, "-e", "klpcc_serial=2")
        assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
        assert fleet.state() == {h: [NAMES[release - 1]] for h in HOSTS}, res.stdout[-3000:]
        assert {h: fleet.hosts[h].recorded() for h in HOSTS} == {h: [NAMES[release - 1]] for h in HOSTS}
        before = NAMES[release - 2] if release > 1 else "no patch"
        assert summaries(res.stdout) == {h: f"{before} -> {NAMES[release - 1]}: switched" for h in HOSTS}
        # two waves of two hosts
        assert res.stdout.count("PLAY [Roll a klpcc cumulative release out]") == 2
    again = fleet.rollout(3, "-e", "klpcc_serial=2")
    assert again.returncode == 0, again.stdout[-4000:]
    assert all(row["changed"] == 0 and row["failed"] == 0
               for row in recap(again.stdout).values()), again.stdout
    assert summaries(again.stdout) == {h: f"{NAMES[2]} -> {NAMES[2]}: unchanged" for h in HOSTS}
    assert fleet.state() == {h: [NAMES[2]] for h in HOSTS}


def test_a_failed_health_check_rolls_its_wave_back_and_stops_the_rollout(fleet):
    assert fleet.state() == {h: [NAMES[2]] for h in HOSTS}
    marker = fleet.hosts["h3"].dir / "unhealthy"
    marker.write_text("")
    try:
        # waves: h1, then h2 and h3, then h4
        res = fleet.rollout(4, "-e", '{"klpcc_serial": [1, 2, 1]}')
    finally:
        marker.unlink()
    assert res.returncode != 0, res.stdout[-4000:]
    assert fleet.state() == {"h1": [NAMES[3]], "h2": [NAMES[2]], "h3": [NAMES[2]], "h4": [NAMES[2]]}, \
        res.stdout[-4000:]
    assert fleet.hosts["h2"].recorded() == [NAMES[2]] and fleet.hosts["h3"].recorded() == [NAMES[2]]
    said = summaries(res.stdout)
    assert said["h1"] == f"{NAMES[2]} -> {NAMES[3]}: switched"
    assert said["h3"].startswith(f"{NAMES[2]} -> {NAMES[3]}: rolled back to {NAMES[2]} (Health check")
    assert said["h2"] == f"{NAMES[2]} -> {NAMES[3]}: rolled back to {NAMES[2]} (another host of the wave " \
                         "failed: h3)"
    assert "h4" not in said and "h4" not in recap(res.stdout)  # never reached
    # the release once the host is healthy again: the rollout finishes
    done = fleet.rollout(4, "-e", "klpcc_serial=2")
    assert done.returncode == 0, done.stdout[-4000:]
    assert fleet.state() == {h: [NAMES[3]] for h in HOSTS}
    assert summaries(done.stdout)["h1"] == f"{NAMES[3]} -> {NAMES[3]}: unchanged"


def test_a_host_where_lint_refuses_changes_nothing_and_the_others_go_on(fleet):
    """Back from release 4 to release 1 drops the discount state release 2 declared: klpcc
    lint refuses it, as the runtime would.  A host that ran release 1 goes on."""
    h1, h4 = fleet.hosts["h1"], fleet.hosts["h4"]
    for host in (h1, h4):
        if host.in_force() != [NAMES[3]]:
            host.put(fleet.artifacts[NAMES[3]])
    refused = h4.klpcc("apply", "--pid", str(h4.proc.pid), str(fleet.artifacts[NAMES[0]]))
    assert "drops state 21320" in refused.stderr, refused.stderr  # what lint says, the runtime does
    h4.put(fleet.artifacts[NAMES[0]])
    assert fleet.state()["h4"] == [NAMES[0]] and fleet.state()["h1"] == [NAMES[3]]
    res = fleet.rollout(1, "-e", "klpcc_serial=4", "-e", "klpcc_max_fail_percentage=50", limit="h1,h4")
    assert res.returncode != 0, res.stdout[-4000:]
    assert re.search(rf"klpcc lint refuses {NAMES[3]} -> {NAMES[0]}: S001 ", res.stdout), res.stdout[-4000:]
    assert fleet.state()["h1"] == [NAMES[3]]  # unchanged
    assert fleet.state()["h4"] == [NAMES[0]]
    assert summaries(res.stdout) == {"h4": f"{NAMES[0]} -> {NAMES[0]}: unchanged"}


def test_facts_absent_and_check_mode(fleet, tmp_path):
    """klpcc_facts says what each host runs; klpcc_patch in check mode changes nothing
    and says it would; state=absent disables and uninstalls, then reports no change."""
    h2 = fleet.hosts["h2"]
    if h2.in_force() != [NAMES[3]]:
        h2.put(fleet.artifacts[NAMES[3]])
    play = tmp_path / "play.yml"
    play.write_text(f"""
- hosts: h2
  gather_facts: false
  tasks:
    - klpcc.fleet.klpcc_facts:
        pids: "{{{{ klpcc_pids }}}}"
        socket_dir: "{{{{ klpcc_socket_dir }}}}"
        state_dir: "{{{{ klpcc_state_dir }}}}"
        klpcc: "{{{{ klpcc_bin }}}}"
        kernel: false
    - debug:
        msg: "FACTS {{{{ ansible_facts.klpcc | to_json }}}}"
    - klpcc.fleet.klpcc_patch: &absent
        patch: "{fleet.artifacts[NAMES[3]]}"
        state: absent
        pids: "{{{{ klpcc_pids }}}}"
        socket_dir: "{{{{ klpcc_socket_dir }}}}"
        state_dir: "{{{{ klpcc_state_dir }}}}"
        klpcc: "{{{{ klpcc_bin }}}}"
      check_mode: true
      register: checked
    - klpcc.fleet.klpcc_patch: *absent
      register: removed
    - klpcc.fleet.klpcc_patch: *absent
      register: again
    - debug:
        msg: "RESULTS {{{{ [checked.changed, removed.changed, again.changed, """
                   f"""removed.processes.processes[0].result]
                          | to_json }}}}"
""")
    res = subprocess.run([str(fleet.bin / "ansible-playbook"), "-i", str(fleet.inventory()), str(play)],
                         capture_output=True, text=True, env=fleet.env, check=False, timeout=300)
    assert res.returncode == 0, res.stdout[-4000:]
    facts = json.loads(re.search(r'"msg": "FACTS (.*)"', res.stdout)[1].replace('\\"', '"'))
    assert facts["release"] == NAMES[3] and not facts["mixed"]
    assert [p["pid"] for p in facts["processes"]] == [h2.proc.pid]
    assert {r["release"] for r in facts["installed"]} == {NAMES[3]}
    results = json.loads(re.search(r'"msg": "RESULTS (.*)"', res.stdout)[1].replace('\\"', '"'))
    assert results == [True, True, False, "disabled"]
    assert h2.in_force() == [] and h2.recorded() == []
    # a host that ran no patch, unhealthy after the switch: rolled back by disabling
    (h2.dir / "unhealthy").write_text("")
    try:
        res = fleet.rollout(1, limit="h2")
    finally:
        (h2.dir / "unhealthy").unlink()
    assert res.returncode != 0
    said = summaries(res.stdout)["h2"]
    assert said.startswith(f"no patch -> {NAMES[0]}: rolled back to no patch (Health check"), said
    assert h2.in_force() == [] and h2.recorded() == []


# --------------------------------------------------------------------------- a kernel host


def _module_utils():
    """The collection's module_utils, as klpcc_patch runs them (they import nothing of Ansible)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("klpcc_fleet_utils",
                                                  COLLECTION / "plugins" / "module_utils" / "klpcc.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_a_kernel_host_through_the_modules_exact_commands(tmp_path):
    """The qemu guest (Debian's kernel, busybox, no Python) as the kernel host: for each
    step of a rollout, klpcc_patch's kernel logic (``kernel_commands``) says what to run
    given what /sys/kernel/livepatch holds; the guest runs exactly that, and what it then
    holds is what the next step assumed.  Releases 1 and 2 of fixtures/kernel-compiled,
    built without kallsyms: up, an idempotent re-run (nothing to run), a second release,
    a rollback to the first (an atomic replace downward), and absent."""
    from .qemu_guest import ensure_kernel_packages, run_guest
    from .test_kernel_e2e import COMPILED, LOADER, SOURCES
    from .test_real_sources import fetch_kernel

    kernel = ensure_kernel_packages()
    src = fetch_kernel(kernel.source_version, SOURCES)
    utils = _module_utils()
    files: dict[str, Path | bytes] = {"/bin/klpcc-load": LOADER}
    names = {}
    for r in (1, 2):
        bundle, out, name = tmp_path / f"b{r}", tmp_path / f"m{r}", f"klpcc_fleet_c{r}"
        res = klpcc("compile", str(COMPILED / "series"), "--source", str(src), "-r", str(r), "-o",
                    str(bundle))
        assert res.returncode == 0, res.stderr
        res = klpcc("build", str(bundle), "--kernel", str(kernel.kdir), "--name", name, "-o", str(out))
        assert res.returncode == 0, res.stderr
        info = json.loads(klpcc("inspect", str(out / f"{name}.ko"), "--format", "json").stdout)
        assert info["name"] == name and info["release_index"] == r
        files[f"/lib/klpcc/{name}.ko"] = out / f"{name}.ko"
        names[r] = name
    loader = "/bin/klpcc-load"

    def commands(state: str, r: int, loaded: dict) -> list[list[str]]:
        return utils.kernel_commands(state, f"/lib/klpcc/{names[r]}.ko", names[r], loaded, loader, 60)

    enabled = {"enabled": True, "transition": False}
    steps = [  # (step, state, release, what the kernel holds before, what it holds after)
        ("up", "present", 1, {}, {names[1]}),
        ("again", "present", 1, {names[1]: enabled}, {names[1]}),
        ("next", "present", 2, {names[1]: enabled}, {names[2]}),
        ("rollback", "present", 1, {names[2]: enabled}, {names[1]}),
        ("absent", "absent", 1, {names[1]: enabled}, set()),
    ]
    script = []
    planned = {}
    for step, state, r, before, _ in steps:
        cmds = commands(state, r, before)
        planned[step] = cmds
        for cmd in cmds:
            script.append(" ".join(cmd) + f' >/dev/null 2>&1; echo "RC {step} $?"\n')
        script.append(f'for p in /sys/kernel/livepatch/*; do [ -d "$p" ] && echo "HOLDS {step} ${{p##*/}} '
                      f'$(cat $p/enabled)"; done; echo "HOLDS {step} -"\n')
        script.append(f'echo "SHOWS {step} $(grep -c ^KlpccPages: /proc/meminfo) '
                      f'$(grep -c ^klpcc_ctxt_switches: /proc/self/status)"\n')
    assert planned["again"] == []
    assert planned["up"] == [[loader, "--timeout", "60", f"/lib/klpcc/{names[1]}.ko"]]
    assert planned["absent"] == [[loader, "--timeout", "60", "--disable", names[1]]]
    guest = run_guest(files, "".join(script), timeout=600)
    assert guest.status == 0, guest.tail()
    for step, _, _, _, after in steps:
        assert all(line == "0" for line in guest.lines(f"RC {step} ")), (step, guest.tail())
        holds = {ln.split()[0] for ln in guest.lines(f"HOLDS {step} ") if ln != "-"}
        assert holds == after, (step, holds, guest.tail())
        assert all(ln.split()[1] == "1" for ln in guest.lines(f"HOLDS {step} ") if ln != "-"), step
    # release 1 shows KlpccPages in /proc/meminfo, release 2 also klpcc_ctxt_switches in
    # /proc/self/status: what each step left in force is what runs
    assert [guest.lines(f"SHOWS {s} ")[0] for s, *_ in steps] == ["1 0", "1 0", "1 1", "1 0", "0 0"]
