"""Kernel patches across reboots: ``klpcc install --kernel`` keeps the cumulative module
for a kernel release in a store, ``klpcc-load --all`` loads it at boot, run by the
``klpcc-load.service`` unit (runtime/kernel).

The fast tests run the loader on this machine where no kernel is touched (usage, an
empty store, stores it must refuse) and check the unit (``systemd-analyze verify``
where it is installed).  The slow ones build release 1 of fixtures/kernel-livepatch
(it redacts ``klpcc.secret=`` in /proc/cmdline) with klpcc, install it into a store on
the host, and boot the installed kernel under qemu three times with that same store at
/var/lib/klpcc: each boot's /init first runs the unit's ExecStart line, taken from the
.service file.  Boot 1 finds the patch loaded at boot, runs the line again (nothing to
do), tries an empty and a broken store, and disables the patch; boot 2, the reboot,
finds it back in force; boot 3, with ``klpcc.load=0``, finds it not loaded.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import ROOT
from .helpers import klpcc
from .qemu_guest import GuestRun, KernelUnderTest, ensure_kernel_packages, run_guest
from .test_kernel_e2e import SERIES, SOURCES
from .test_real_sources import fetch_kernel

LOADER = ROOT / "runtime" / "kernel" / "klpcc-load"
UNIT = ROOT / "runtime" / "kernel" / "klpcc-load.service"
DEFAULT_STORE = "/var/lib/klpcc"
NAME = "klpcc_proc_r1"
SECRET = "klpcc.secret=hunter2"


# --- the unit ------------------------------------------------------------------------


def unit_entries(path: Path = UNIT) -> dict[str, dict[str, list[str]]]:
    """section -> key -> values (in order) of a systemd unit file."""
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = out.setdefault(line[1:-1], {})
            continue
        assert section is not None and "=" in line, f"{path}: not a unit line: {raw!r}"
        key, _, value = line.partition("=")
        section.setdefault(key.strip(), []).append(value.strip())
    return out


def exec_start() -> str:
    """The unit's ExecStart line, checked to mean the same to sh as to systemd."""
    (line,) = unit_entries()["Service"]["ExecStart"]
    # no prefix (-@:+!), no specifier (%), no quoting: sh runs it as systemd does
    assert re.fullmatch(r"/[\w/.-]+( [\w/.=-]+)*", line), line
    return line


def test_unit(tmp_path):
    """The unit's keys, and ``systemd-analyze verify`` on it where systemd is installed
    (with ExecStart pointed at the loader, as the installation the unit describes does)."""
    unit = unit_entries()
    assert unit["Unit"]["DefaultDependencies"] == ["no"]
    assert "local-fs.target" in " ".join(unit["Unit"]["After"]).split()
    assert "sysinit.target" in " ".join(unit["Unit"]["Before"]).split()
    assert unit["Unit"]["ConditionKernelCommandLine"] == ["!klpcc.load=0"]
    assert unit["Service"]["Type"] == ["oneshot"]
    assert unit["Service"]["RemainAfterExit"] == ["yes"]
    argv = shlex.split(exec_start())
    assert argv[0].startswith("/") and Path(argv[0]).name == "klpcc-load" and argv[1:] == ["--all"], argv
    assert unit["Install"]["WantedBy"] == ["sysinit.target"]
    comments = UNIT.read_text()
    assert "klpcc config --loader" in comments and "systemctl enable klpcc-load.service" in comments
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        print("systemd-analyze is not installed: the unit's keys were checked, not verified")
        return
    installed = tmp_path / UNIT.name
    installed.write_text(UNIT.read_text().replace(f"ExecStart={argv[0]} ", f"ExecStart={LOADER} "))
    assert f"ExecStart={LOADER} --all" in installed.read_text()
    res = subprocess.run([analyze, "verify", str(installed)], capture_output=True, text=True, check=False)
    assert res.returncode == 0 and not res.stderr.strip() and not res.stdout.strip(), res.stdout + res.stderr


# --- the loader, where no kernel is touched -----------------------------------------------------------


# the system's sh, and busybox's where it is installed (as on a minimal system)
SHELLS = [["sh"]] + ([["busybox", "sh"]] if shutil.which("busybox") else [])


@pytest.fixture(params=SHELLS, ids=lambda shell: shell[0])
def load_all(request):
    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        full = {k: v for k, v in os.environ.items() if k != "KLPCC_STATE_DIR"}
        full.update(env or {})
        return subprocess.run([*request.param, str(LOADER), *args], capture_output=True, text=True,
                              check=False, env=full)
    return run


@pytest.fixture
def krel() -> str:
    if " klpcc.load=0 " in f" {Path('/proc/cmdline').read_text().strip()} ":
        pytest.fail("this machine booted with klpcc.load=0: klpcc-load --all would skip every case here")
    return os.uname().release


def test_usage_of_all(load_all):
    assert "--all [--state-dir DIR]" in load_all("--help").stdout
    for args, message in [(["--state-dir", "/x", "--status"], "--state-dir goes with --all"),
                          (["--all", "/m/x.ko"], "only one of MODULE.ko, --all, --status, --disable"),
                          (["--all", "--state-dir"], "--state-dir needs a directory"),
                          (["--all", "--state-dir="], "--state-dir needs a directory")]:
        res = load_all(*args)
        assert res.returncode == 1 and res.stderr.startswith(f"klpcc-load: {message}"), (args, res.stderr)


def test_nothing_installed(tmp_path, krel, load_all):
    store = tmp_path / "store"
    (store / "kernel" / "0.0.0-another-kernel").mkdir(parents=True)
    (store / "kernel" / "0.0.0-another-kernel" / "klpcc_x.ko").write_bytes(b"for another kernel")
    none = tmp_path / "none"
    for args, env, where in [(["--state-dir", str(store)], None, store),
                             ([f"--state-dir={store}"], None, store),
                             ([], {"KLPCC_STATE_DIR": str(store)}, store),
                             ([], {"KLPCC_STATE_DIR": str(none)}, none),
                             (["--state-dir", str(store)], {"KLPCC_STATE_DIR": str(none)}, store)]:
        res = load_all("--all", *args, env=env)
        assert (res.returncode, res.stderr) == (0, ""), res
        assert res.stdout == f"klpcc-load: no livepatch module installed for kernel {krel} in " \
                             f"{where}/kernel/{krel}\n", res
    res = load_all("--all", env={"KLPCC_STATE_DIR": ""})
    assert (res.returncode, res.stdout) == (0, "klpcc-load: KLPCC_STATE_DIR is set and empty: there is no "
                                               "store to load from\n"), res


def test_stores_it_refuses(tmp_path, krel, load_all):
    store = tmp_path / "store"
    area = store / "kernel" / krel
    area.mkdir(parents=True)
    for d in (store, store / "kernel", area):
        d.chmod(0o755)
    (area / "klpcc_a.ko").write_bytes(b"a")
    (area / "klpcc_b.ko").write_bytes(b"b")
    res = load_all("--all", "--state-dir", str(store))
    assert res.returncode == 1 and res.stdout == "", res
    assert res.stderr == f"klpcc-load: {area}: several modules installed for kernel {krel} (klpcc_a.ko " \
                         "klpcc_b.ko); klpcc install --kernel keeps one\n"
    (area / "klpcc_b.ko").unlink()
    for path, mode in [(area / "klpcc_a.ko", 0o666), (area, 0o775), (store, 0o777)]:
        path.chmod(mode)
        res = load_all("--all", "--state-dir", str(store))
        assert res.returncode == 1 and res.stdout == "", res
        assert res.stderr == f"klpcc-load: {area}/klpcc_a.ko: not loaded: {path} is writable by group or " \
                             "others, or owned by another user\n", res
        path.chmod(0o755 if path.is_dir() else 0o644)


# --- reboots in the guest -----------------------------------------------------------------


@dataclass
class Reboots:
    kernel: KernelUnderTest
    exec_start: str
    install: dict
    boots: list[GuestRun]

    def step(self, boot: int, name: str) -> list[str]:
        """What step ``name`` of boot ``boot`` printed: "out: ...", "err: ..." lines, then "rc=N"."""
        run = self.boots[boot]
        out = [line[len(name) + 1:] for line in run.lines("R:") if line.startswith(f"{name} ")]
        assert out, f"no output for {name!r} in boot {boot}:\n{run.output}"
        return out

    def shown(self, boot: int, name: str) -> dict[str, str]:
        return dict(line.partition("=")[::2] for line in self.step(boot, name))


GUEST_LIB = r"""
r() { echo "R:$*"; }
run() {
	step=$1; shift
	"$@" >/tmp/out 2>/tmp/err
	rc=$?
	while IFS= read -r line; do r "$step out: $line"; done </tmp/out
	while IFS= read -r line; do r "$step err: $line"; done </tmp/err
	r "$step rc=$rc"
}
show() {
	r "$1 cmdline=$(cat /proc/cmdline)"
	r "$1 enabled=$(cat /sys/kernel/livepatch/NAME/enabled 2>/dev/null || echo absent)"
	r "$1 patches=$(ls /sys/kernel/livepatch | tr '\n' ' ' | sed 's/ $//')"
	r "$1 modules=$(cut -d' ' -f1 /proc/modules | grep '^klpcc' | tr '\n' ' ' | sed 's/ $//')"
}
"""


def _script(exec_line: str, body: str) -> str:
    # the unit's line first, as the early boot runs it, then what the test looks at
    return (GUEST_LIB.replace("NAME", NAME) + "show start\n"
            + f"run execstart sh -c {shlex.quote(exec_line)}\n" + "show boot\n" + body)


BOOT1 = f"""
run again sh -c "$EXEC"
run empty klpcc-load --all --state-dir /empty-store
run broken env KLPCC_STATE_DIR=/broken-store klpcc-load --all
run disable klpcc-load --disable {NAME}
show disabled
dmesg | grep -e livepatch | sed 's/^\\[ *[0-9.]*\\] //; s/^/D:/'
"""

BOOT2 = f"""
run status klpcc-load --status
ls -l {DEFAULT_STORE}/kernel/*/ | sed 's/^/L:/'
"""


@pytest.fixture(scope="module")
def reboots(tmp_path_factory) -> Reboots:
    kut = ensure_kernel_packages()
    src = fetch_kernel(kut.source_version, SOURCES)
    work = tmp_path_factory.mktemp("kernel-reboot")
    res = klpcc("compile", str(SERIES), "--source", str(src), "--release", "1", "-o", str(work / "bundle"))
    assert res.returncode == 0, res.stderr
    res = klpcc("build", str(work / "bundle"), "--kernel", str(kut.kdir), "--name", NAME, "-o",
                str(work / "module"))
    assert res.returncode == 0, res.stderr
    module = work / "module" / f"{NAME}.ko"
    # the store on the host: what the guest's /var/lib/klpcc holds at every boot
    store = work / "store"
    res = klpcc("install", "--kernel", str(module), "--state-dir", str(store), "--format", "json")
    assert res.returncode == 0, res.stderr
    install = json.loads(res.stdout)

    line = exec_start()
    loader_path = shlex.split(line)[0]
    files: dict[str, Path | bytes] = {loader_path: LOADER, "/bin/klpcc-load": LOADER}
    for f in store.rglob("*"):
        if f.is_file():
            files[f"{DEFAULT_STORE}/{f.relative_to(store).as_posix()}"] = f
    boot1 = dict(files)
    boot1["/empty-store/kernel/0.0.0-another-kernel/klpcc_other.ko"] = module
    boot1[f"/broken-store/kernel/{kut.release}/klpcc_broken.ko"] = b"not a kernel module\n"
    exec_var = f"EXEC={shlex.quote(line)}\n"
    boots = [
        run_guest(boot1, exec_var + _script(line, BOOT1), timeout=600, kernel=kut, append=SECRET),
        run_guest(files, _script(line, BOOT2), timeout=600, kernel=kut, append=SECRET),
        run_guest(files, _script(line, BOOT2), timeout=600, kernel=kut, append=f"{SECRET} klpcc.load=0"),
    ]
    for i, run in enumerate(boots, 1):
        print(f"boot {i}: {run.seconds:.1f} s")
        assert run.status == 0, f"boot {i} did not finish (status {run.status}):\n{run.tail()}"
    return Reboots(kut, line, install, boots)


@pytest.mark.slow
def test_install_keeps_the_module_for_its_kernel(reboots):
    (record,) = reboots.install["records"]
    assert (record["key"], record["action"]) == (reboots.kernel.release, "installed"), record
    assert any(line.startswith("L:-rw-r--r-- ") and line.endswith(f" {NAME}.ko")
               for line in reboots.boots[1].output.splitlines()), reboots.boots[1].output


@pytest.mark.slow
def test_the_unit_loads_the_installed_patch_at_boot(reboots):
    start, boot = reboots.shown(0, "start"), reboots.shown(0, "boot")
    assert SECRET in start["cmdline"] and start["enabled"] == "absent" and start["patches"] == ""
    out = reboots.step(0, "execstart")
    assert out[-1] == "rc=0" and len(out) == 2, out
    assert out[0].startswith(f"out: klpcc-load: {NAME} enabled in ") and out[0].endswith(
        "replaced: none; removed modules: none"), out
    assert "klpcc.secret=***" in boot["cmdline"] and "hunter2" not in boot["cmdline"]
    assert (boot["enabled"], boot["patches"], boot["modules"]) == ("1", NAME, NAME)


@pytest.mark.slow
def test_a_patch_in_force_is_not_loaded_again(reboots):
    path = f"{DEFAULT_STORE}/kernel/{reboots.kernel.release}/{NAME}.ko"
    assert reboots.step(0, "again") == [
        f"out: klpcc-load: {NAME} ({path}) is already loaded and enabled; nothing to do", "rc=0"]
    dmesg = reboots.boots[0].lines("D:")
    assert dmesg.count(f"livepatch: enabling patch '{NAME}'") == 1, dmesg


@pytest.mark.slow
def test_nothing_installed_for_this_kernel(reboots):
    release = reboots.kernel.release
    assert reboots.step(0, "empty") == [
        f"out: klpcc-load: no livepatch module installed for kernel {release} in "
        f"/empty-store/kernel/{release}", "rc=0"]


@pytest.mark.slow
def test_a_broken_module_is_one_line_naming_it(reboots):
    out = reboots.step(0, "broken")
    path = f"/broken-store/kernel/{reboots.kernel.release}/klpcc_broken.ko"
    assert len(out) == 2 and out[-1] == "rc=1", out
    assert out[0].startswith(f"err: klpcc-load: insmod {path} failed: "), out
    # the patch loaded at boot is untouched: still there to disable
    assert reboots.step(0, "disable")[-1] == "rc=0"


@pytest.mark.slow
def test_after_a_reboot_the_patch_is_back_in_force(reboots):
    disabled = reboots.shown(0, "disabled")
    assert (disabled["enabled"], disabled["patches"], disabled["modules"]) == ("absent", "", "")
    assert SECRET in disabled["cmdline"]
    start, boot = reboots.shown(1, "start"), reboots.shown(1, "boot")
    assert SECRET in start["cmdline"] and start["enabled"] == "absent"
    out = reboots.step(1, "execstart")
    assert out[-1] == "rc=0" and out[0].startswith(f"out: klpcc-load: {NAME} enabled in "), out
    assert "klpcc.secret=***" in boot["cmdline"] and "hunter2" not in boot["cmdline"]
    assert (boot["enabled"], boot["patches"], boot["modules"]) == ("1", NAME, NAME)
    status = [line for line in reboots.step(1, "status") if line.startswith("out: ")]
    assert status[1].split()[1:4] == [NAME, "1", "0"], status


@pytest.mark.slow
def test_klpcc_load_0_on_the_command_line_skips_it(reboots):
    out = reboots.step(2, "execstart")
    assert out == ["out: klpcc-load: klpcc.load=0 on the kernel command line: the installed livepatch module "
                   "is not loaded", "rc=0"], out
    boot = reboots.shown(2, "boot")
    assert "klpcc.load=0" in boot["cmdline"] and SECRET in boot["cmdline"]
    assert (boot["enabled"], boot["patches"], boot["modules"]) == ("absent", "", "")
    # the store is still there: only the boot skipped it
    assert any(line.endswith(f" {NAME}.ko") for line in reboots.boots[2].lines("L:")), reboots.boots[2].output


def _fake_module(out: Path, name: str, krel: str, index: int, series: str = "s1") -> Path:
    """An ELF object with a livepatch module's modinfo: what install --kernel reads."""
    src = out.with_suffix(".c")
    info = [f"name={name}", f"vermagic={krel} SMP preempt mod_unload modversions", "livepatch=Y",
            f"klpcc_release=r{index}", f"klpcc_release_index={index}", f"klpcc_series={series}"]
    src.write_text("".join(f'__attribute__((section(".modinfo"), used)) static const char m{i}[] = "{v}";\n'
                           for i, v in enumerate(info)))
    subprocess.run(["cc", "-c", "-o", str(out), str(src)], check=True)
    return out


def test_the_kernel_store(tmp_path):
    """install --kernel keeps one module per kernel release, newest of its series, in a
    store klpcc-load would trust; uninstall by module or release."""
    store = tmp_path / "store"
    m1 = _fake_module(tmp_path / "lp1.ko", "klpcc_r1", "6.1.0-test", 1)
    m2 = _fake_module(tmp_path / "lp2.ko", "klpcc_r2", "6.1.0-test", 2)
    run = lambda *a: klpcc(*map(str, a), "--state-dir", str(store))  # noqa: E731
    r = run("install", "--kernel", m2, "--format", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["records"] == [{"object": "kernel 6.1.0-test", "key": "6.1.0-test",
                                                "action": "installed", "release": "r2", "previous": None}]
    r = run("install", "--kernel", m1)
    assert r.returncode == 2 and "a newer release (r2) is installed for kernel 6.1.0-test" in r.stderr
    r = run("install", "--kernel", m1, "--force")
    assert r.returncode == 0 and r.stdout.startswith("replaced r1 for kernel 6.1.0-test"), r.stdout
    assert sorted(p.name for p in (store / "kernel" / "6.1.0-test").glob("*.ko")) == ["klpcc_r1.ko"]
    # a store klpcc-load would not trust is not filled
    os.chmod(store / "kernel", 0o777)
    r = run("install", "--kernel", m2)
    assert r.returncode == 2 and "kernel is not a directory of uid" in r.stderr, r.stderr
    os.chmod(store / "kernel", 0o755)
    r = run("uninstall", "--kernel", "6.1.0-test")
    assert r.returncode == 0 and r.stdout.startswith("removed r1 for kernel 6.1.0-test"), r.stdout
    assert not (store / "kernel" / "6.1.0-test").exists()
    r = run("uninstall", "--kernel", "..")
    assert r.returncode == 2 and "neither a livepatch module nor a kernel release" in r.stderr
