"""runtime/kernel/klpcc-load against the real kernel: the installed Debian kernel boots
in qemu (tests/qemu_guest.py) and the loader installs, replaces and disables small
livepatch modules built here against the installed headers.

The modules all patch cmdline_proc_show (fs/proc/cmdline.c) so that /proc/cmdline
shows which one is in force:

  lp_a      replace=true, prints KLPCC-LP-A
  lp_b      replace=true, prints KLPCC-LP-B
  lp_c      replace=false, prints KLPCC-LP-C, declares system state 0x4b1 version 1
  lp_stall  replace=true, patches kthreadd instead: kthreadd (pid 2) sleeps inside it
            for ever, so the transition can never complete and the loader must time
            out and reverse it
  lp_hold   replace=true, prints KLPCC-LP-HOLD; a kernel thread of its own sleeps inside
            the new function until /sys/module/lp_hold/parameters/release is set, so
            disabling it cannot complete before then

One boot runs every step; each test checks the part of the guest's output it is about.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import ROOT
from .qemu_guest import GuestRun, KernelUnderTest, ensure_kernel_packages, run_guest

LOADER = ROOT / "runtime" / "kernel" / "klpcc-load"

pytestmark = pytest.mark.slow

# One module per entry: name -> (text shown in /proc/cmdline, replace, kind, state id).
MODULES = {
    "lp_a": ("KLPCC-LP-A", True, "", 0),
    "lp_b": ("KLPCC-LP-B", True, "", 0),
    "lp_c": ("KLPCC-LP-C", False, "", 0x4B1),
    "lp_stall": ("KLPCC-LP-STALL", True, "stall", 0),
    "lp_hold": ("KLPCC-LP-HOLD", True, "hold", 0),
}

MODULE_SOURCE = r"""
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/seq_file.h>

#if LP_HOLD
#include <linux/kthread.h>
#include <linux/sched.h>

static bool release;
module_param(release, bool, 0644);
MODULE_PARM_DESC(release, "let the holding thread leave the new function");

static struct task_struct *lp_thread;
#endif

#if LP_STALL
/* Never runs: kthreadd is entered once, at boot, and never returns. */
static int lp_new_func(void *unused)
{
	return 0;
}
#define LP_OLD_NAME "kthreadd"
#else
static noinline int lp_new_func(struct seq_file *m, void *v)
{
#if LP_HOLD
	if (!m) {
		/* Only lp_thread calls it so: sleep in here until released. */
		while (!kthread_should_stop() && !READ_ONCE(release))
			schedule_timeout_interruptible(HZ / 10);
		return 0;
	}
#endif
	seq_puts(m, LP_TEXT "\n");
	return 0;
}
#define LP_OLD_NAME "cmdline_proc_show"
#endif

#if LP_HOLD
static int lp_thread_fn(void *unused)
{
	lp_new_func(NULL, NULL);
	while (!kthread_should_stop())
		schedule_timeout_interruptible(HZ / 10);
	return 0;
}
#endif

static struct klp_func lp_funcs[] = {
	{
		.old_name = LP_OLD_NAME,
		.new_func = lp_new_func,
	},
	{ }
};

static struct klp_object lp_objs[] = {
	{
		/* .name NULL: the function is in vmlinux */
		.funcs = lp_funcs,
	},
	{ }
};

#if LP_STATE_ID
static struct klp_state lp_states[] = {
	{
		.id = LP_STATE_ID,
		.version = 1,
	},
	{ }
};
#endif

static struct klp_patch lp_patch = {
	.mod = THIS_MODULE,
	.objs = lp_objs,
#if LP_STATE_ID
	.states = lp_states,
#endif
	.replace = LP_REPLACE,
};

static int __init lp_init(void)
{
	int ret;

#if LP_HOLD
	lp_thread = kthread_run(lp_thread_fn, NULL, "lp_hold");
	if (IS_ERR(lp_thread))
		return PTR_ERR(lp_thread);
#endif
	ret = klp_enable_patch(&lp_patch);
#if LP_HOLD
	if (ret)
		kthread_stop(lp_thread);
#endif
	return ret;
}

static void __exit lp_exit(void)
{
#if LP_HOLD
	kthread_stop(lp_thread);
#endif
}

module_init(lp_init);
module_exit(lp_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("klpcc-load test patch");
MODULE_INFO(livepatch, "Y");
"""


@dataclass
class Built:
    kernel: KernelUnderTest
    modules: dict[str, Path]
    seconds: float


def build_modules(kut: KernelUnderTest, workdir: Path) -> Built:
    """Write the C sources of MODULES into ``workdir`` and build them as external modules."""
    workdir.mkdir(parents=True, exist_ok=True)
    for name, (text, replace, kind, state_id) in MODULES.items():
        header = (f"// SPDX-License-Identifier: GPL-2.0\n"
                  f'#define LP_TEXT "{text}"\n'
                  f"#define LP_REPLACE {'true' if replace else 'false'}\n"
                  f"#define LP_STALL {int(kind == 'stall')}\n"
                  f"#define LP_HOLD {int(kind == 'hold')}\n"
                  f"#define LP_STATE_ID {state_id:#x}\n")
        (workdir / f"{name}.c").write_text(header + MODULE_SOURCE)
    (workdir / "Makefile").write_text("obj-m := " + " ".join(f"{n}.o" for n in MODULES) + "\n")
    started = time.monotonic()
    res = subprocess.run(["make", "-C", str(kut.kdir), f"M={workdir}", f"-j{os.cpu_count() or 1}", "modules"],
                         capture_output=True, text=True, check=False)
    seconds = time.monotonic() - started
    if res.returncode != 0:
        pytest.fail(f"building the test modules failed:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}")
    modules = {name: workdir / f"{name}.ko" for name in MODULES}
    for name, ko in modules.items():
        assert ko.is_file(), f"{name}.ko was not built"
    return Built(kernel=kut, modules=modules, seconds=seconds)


# The guest script.  Every result line starts with "R:" (a step, then what it saw), so
# kernel messages on the console cannot be taken for results.
GUEST_SCRIPT = r"""
r() { echo "R:$*"; }
# run STEP COMMAND...: the command's output lines as "R:STEP: line", then "R:STEP rc=N".
run() {
	step=$1; shift
	"$@" >/tmp/out 2>&1
	rc=$?
	while IFS= read -r line; do r "$step: $line"; done </tmp/out
	r "$step rc=$rc"
}
show() {
	r "$1 cmdline=$(cat /proc/cmdline)"
	r "$1 patches=$(ls /sys/kernel/livepatch | tr '\n' ' ')"
	r "$1 modules=$(cut -d' ' -f1 /proc/modules | grep '^lp_' | sort | tr '\n' ' ')"
}
# Errors only: stderr alone.
errs() {
	step=$1; shift
	"$@" >/dev/null 2>/tmp/err
	rc=$?
	while IFS= read -r line; do r "$step stderr: $line"; done </tmp/err
	r "$step rc=$rc"
}

show boot
run help klpcc-load --help
errs usage klpcc-load
errs usage2 klpcc-load /m/lp_a.ko /m/lp_b.ko
errs badtimeout klpcc-load --timeout soon /m/lp_a.ko
run status0 klpcc-load --status
errs missing klpcc-load /m/nonexistent.ko
errs disable_unknown klpcc-load --disable nosuch

run load_a klpcc-load /m/lp_a.ko
show a
run status_a klpcc-load --status
errs load_a_again klpcc-load /m/lp_a.ko

run load_stall klpcc-load --timeout 4 /m/lp_stall.ko
show stall

run load_b klpcc-load /m/lp_b.ko
show b

run load_c klpcc-load /m/lp_c.ko
show c
run status_c klpcc-load --status
errs load_a_incompatible klpcc-load /m/lp_a.ko
show incompatible
run disable_c klpcc-load --disable lp_c
show after_disable_c

run status_b klpcc-load --status
run disable_b klpcc-load --disable lp_b
show end
run status_end klpcc-load --status

run load_hold klpcc-load /m/lp_hold.ko
show hold
run disable_hold_stuck klpcc-load --timeout 4 --disable lp_hold
show hold_stuck
run status_hold klpcc-load --status
echo 1 >/sys/module/lp_hold/parameters/release
run disable_hold klpcc-load --disable lp_hold
show hold_end

# a module file renamed (as packages do): the patch is the module's own name
cp /m/lp_b.ko /tmp/klpcc-renamed-release.ko
run load_renamed klpcc-load /tmp/klpcc-renamed-release.ko
show renamed
run disable_renamed klpcc-load --disable lp_b
show renamed_end

dmesg | grep -e livepatch -e 'lp_' | sed 's/^\[ *[0-9.]*\] //; s/^/D:/'
"""


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> tuple[Built, GuestRun]:
    kut = ensure_kernel_packages()
    built = build_modules(kut, tmp_path_factory.mktemp("lpmods"))
    files: dict[str, Path | bytes] = {"/bin/klpcc-load": LOADER}
    files.update({f"/m/{name}.ko": ko for name, ko in built.modules.items()})
    run = run_guest(files, GUEST_SCRIPT, timeout=600)
    print(f"modules built in {built.seconds:.1f} s; guest ran {run.seconds:.1f} s")
    if run.status != 0:
        pytest.fail(f"guest script did not finish (status {run.status}); console tail:\n{run.tail()}")
    return built, run


def step(run: GuestRun, name: str) -> list[str]:
    """The lines step ``name`` printed (output, then "rc=N" last)."""
    out = []
    for line in run.lines("R:"):
        if line.startswith(f"{name}: "):
            out.append(line[len(name) + 2:])
        elif line.startswith(f"{name} "):
            out.append(line[len(name) + 1:])
    assert out, f"no output for step {name!r} in:\n{run.output}"
    return out


def rc(run: GuestRun, name: str) -> int:
    last = step(run, name)[-1]
    assert last.startswith("rc="), last
    return int(last[3:])


def shown(run: GuestRun, name: str) -> dict[str, str]:
    """What show() printed after step ``name``: cmdline, patches, modules."""
    out = {}
    for line in step(run, name):
        key, _, value = line.partition("=")
        out[key] = value.strip()
    return out


def status_rows(run: GuestRun, name: str) -> dict[str, list[str]]:
    lines = step(run, name)[:-1]
    assert lines[0].split() == ["NAME", "ENABLED", "TRANSITION", "REFCNT", "STATE"], lines
    return {row.split()[0]: row.split()[1:] for row in lines[1:]}


def test_loader_is_posix_sh():
    assert os.access(LOADER, os.X_OK)
    for shell in (["sh", "-n"], ["busybox", "sh", "-n"], ["dash", "-n"]):
        try:
            res = subprocess.run([*shell, str(LOADER)], capture_output=True, text=True, check=False)
        except FileNotFoundError:
            continue
        assert res.returncode == 0, f"{shlex.join(shell)}: {res.stderr}"


def test_modules_are_livepatches(guest):
    built, _ = guest
    for name, ko in built.modules.items():
        info = subprocess.run(["modinfo", "-F", "livepatch", str(ko)], capture_output=True, text=True,
                              check=False)
        if info.returncode == 0:
            assert info.stdout.strip() == "Y", name
        vermagic = subprocess.run(["modinfo", "-F", "vermagic", str(ko)], capture_output=True, text=True,
                                  check=False)
        if vermagic.returncode == 0:
            assert vermagic.stdout.split()[0] == built.kernel.release


def test_usage_and_errors(guest):
    _, run = guest
    assert rc(run, "help") == 0
    assert any("usage: klpcc-load" in line for line in step(run, "help"))
    for name in ("usage", "usage2", "badtimeout"):
        assert rc(run, name) == 1, name
        assert step(run, name)[0].startswith("stderr: klpcc-load: "), step(run, name)
    assert "invalid --timeout" in step(run, "badtimeout")[0]


def test_status_without_patches(guest):
    _, run = guest
    assert step(run, "status0") == ["no livepatch patches", "rc=0"]
    assert step(run, "status_end") == ["no livepatch patches", "rc=0"]


def test_missing_file(guest):
    _, run = guest
    out = step(run, "missing")
    assert out == ["stderr: klpcc-load: /m/nonexistent.ko: no such file", "rc=1"]


def test_disable_unknown(guest):
    _, run = guest
    out = step(run, "disable_unknown")
    assert len(out) == 2 and out[0].startswith("stderr: klpcc-load: ") and "nosuch" in out[0], out
    assert out[-1] == "rc=1"


def test_load_first_patch(guest):
    _, run = guest
    boot = shown(run, "boot")
    assert boot["cmdline"].startswith("console=ttyS0") and boot["patches"] == "" and boot["modules"] == ""
    out = step(run, "load_a")
    assert out[-1] == "rc=0"
    assert out[0].startswith("klpcc-load: lp_a enabled in ") and out[0].endswith(
        "replaced: none; removed modules: none"), out
    assert shown(run, "a") == {"cmdline": "KLPCC-LP-A", "patches": "lp_a", "modules": "lp_a"}
    assert status_rows(run, "status_a") == {"lp_a": ["1", "0", "1", "live"]}


def test_load_same_patch_twice_is_refused(guest):
    _, run = guest
    out = step(run, "load_a_again")
    assert out[-1] == "rc=1", out
    assert out[0].startswith("stderr: klpcc-load: insmod /m/lp_a.ko failed: ") and out[0].endswith(
        "(a module of that name is already loaded; see klpcc-load --status)"), out


def test_a_renamed_module_file_loads_under_its_own_name(guest):
    _, run = guest
    out = step(run, "load_renamed")
    assert out[-1] == "rc=0" and out[0].startswith("klpcc-load: lp_b enabled in "), out
    assert shown(run, "renamed")["patches"] == "lp_b" and shown(run, "renamed")["modules"] == "lp_b"
    assert rc(run, "disable_renamed") == 0
    assert shown(run, "renamed_end")["patches"] == "" and shown(run, "renamed_end")["modules"] == ""


def test_transition_timeout_is_reversed(guest):
    _, run = guest
    out = step(run, "load_stall")
    assert out[-1] == "rc=2"
    # Half-way, the loader nudges the blocking tasks (or says the kernel does it itself:
    # the signal attribute is gone since Linux 5.18).
    assert any(line.startswith("klpcc-load: lp_stall: transition still pending after ") and "signal" in line
               for line in out), out
    assert ("klpcc-load: lp_stall: transition did not complete in 4 s; reversed, the previous patches stay "
            "in force") in out, out
    # lp_stall is gone again, lp_a untouched.
    assert shown(run, "stall") == {"cmdline": "KLPCC-LP-A", "patches": "lp_a", "modules": "lp_a"}


def test_atomic_replace(guest):
    _, run = guest
    out = step(run, "load_b")
    assert out[-1] == "rc=0"
    assert len(out) == 2, out
    assert out[0].startswith("klpcc-load: lp_b enabled in "), out
    assert out[0].endswith("replaced: lp_a; removed modules: lp_a"), out
    # lp_a is gone from /sys/kernel/livepatch and from the loaded modules.
    assert shown(run, "b") == {"cmdline": "KLPCC-LP-B", "patches": "lp_b", "modules": "lp_b"}


def test_no_replace_patch_stays_beside(guest):
    _, run = guest
    out = step(run, "load_c")
    assert out[-1] == "rc=0"
    assert "klpcc-load: patch lp_b was not replaced (the new patch does not replace it); it stays enabled" \
        in out, out
    assert any(line.startswith("klpcc-load: lp_c enabled in ") and line.endswith(
        "replaced: none; removed modules: none") for line in out), out
    assert shown(run, "c") == {"cmdline": "KLPCC-LP-C", "patches": "lp_b lp_c", "modules": "lp_b lp_c"}
    assert status_rows(run, "status_c") == {"lp_b": ["1", "0", "1", "live"], "lp_c": ["1", "0", "1", "live"]}


def test_incompatible_states_are_refused(guest):
    _, run = guest
    out = step(run, "load_a_incompatible")
    assert out[-1] == "rc=1"
    assert out[0].startswith("stderr: klpcc-load: insmod /m/lp_a.ko failed: "), out
    assert any("Livepatch patch (lp_a) is not compatible with the already installed livepatches" in line
               for line in out[1:]), out
    assert all(line.startswith("stderr: klpcc-load: ") for line in out[:-1]), out
    assert shown(run, "incompatible") == {"cmdline": "KLPCC-LP-C", "patches": "lp_b lp_c",
                                          "modules": "lp_b lp_c"}


def test_disable(guest):
    _, run = guest
    out = step(run, "disable_c")
    assert out[-1] == "rc=0" and out[0].startswith("klpcc-load: lp_c disabled in "), out
    assert shown(run, "after_disable_c") == {"cmdline": "KLPCC-LP-B", "patches": "lp_b", "modules": "lp_b"}
    assert status_rows(run, "status_b") == {"lp_b": ["1", "0", "1", "live"]}
    out = step(run, "disable_b")
    assert out == [out[0], "rc=0"] and out[0].startswith("klpcc-load: lp_b disabled in "), out
    assert out[0].endswith("module lp_b removed"), out
    end = shown(run, "end")
    assert end == {"cmdline": shown(run, "boot")["cmdline"], "patches": "", "modules": ""}


def test_kernel_messages(guest):
    _, run = guest
    dmesg = run.lines("D:")
    for expected in ["livepatch: enabling patch 'lp_a'",
                     "livepatch: 'lp_a': starting patching transition",
                     "livepatch: 'lp_a': patching complete",
                     "livepatch: 'lp_stall': starting patching transition",
                     # the reversal (its own message is pr_debug)
                     "livepatch: 'lp_stall': starting unpatching transition",
                     "livepatch: 'lp_stall': unpatching complete",
                     "livepatch: 'lp_b': patching complete",
                     "livepatch: Livepatch patch (lp_a) is not compatible with the already installed "
                     "livepatches.",
                     "livepatch: 'lp_b': starting unpatching transition",
                     "livepatch: 'lp_b': unpatching complete"]:
        assert expected in dmesg, f"{expected!r} not in:\n" + "\n".join(dmesg)
    assert "livepatch: 'lp_stall': patching complete" not in dmesg


def test_disable_timeout_is_reversed(guest):
    _, run = guest
    assert step(run, "load_hold")[-1] == "rc=0"
    holding = {"cmdline": "KLPCC-LP-HOLD", "patches": "lp_hold", "modules": "lp_hold"}
    assert shown(run, "hold") == holding
    out = step(run, "disable_hold_stuck")
    assert out[-1] == "rc=2", out
    assert any(line.startswith("klpcc-load: lp_hold: transition still pending after ") for line in out), out
    assert "klpcc-load: lp_hold: disabling did not complete in 4 s; reversed, the patch stays in force" in out
    # Still fully in force.
    assert shown(run, "hold_stuck") == holding
    assert status_rows(run, "status_hold") == {"lp_hold": ["1", "0", "1", "live"]}
    # Once its thread has left the new function, disabling goes through.
    out = step(run, "disable_hold")
    assert out[-1] == "rc=0" and out[0].startswith("klpcc-load: lp_hold disabled in "), out
    end = shown(run, "hold_end")
    assert end == {"cmdline": shown(run, "boot")["cmdline"], "patches": "", "modules": ""}
