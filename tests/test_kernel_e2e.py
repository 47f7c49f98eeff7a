"""End to end on a real kernel: the fs/proc fixture series (fixtures/kernel-livepatch)
compiled, built into livepatch modules against Debian's installed kernel headers, and
loaded release after release with runtime/kernel/klpcc-load into that kernel booted
under qemu (TCG).  Then the series of fixtures/kernel-compiled, built without the
target's kallsyms: what the compiled code says decides (a changed ``static inline``
and a function the kernel inlined everywhere are patched through their callers; the
statics the kernel inlined away are predicted from the compiled units and copied).

The base tree is Debian's ``linux-source-6.1`` of exactly the installed kernel's
version (fetched and cached outside the repository).  The target's ``/proc/kallsyms``
comes from a first boot, as a release engineer would take it from the machine.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .helpers import klpcc
from .predict import predict
from .qemu_guest import GuestRun, KernelUnderTest, ensure_kernel_packages, run_guest
from .test_real_sources import fetch_kernel

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SERIES = ROOT / "fixtures" / "kernel-livepatch" / "patches"
COMPILED = ROOT / "fixtures" / "kernel-compiled" / "patches"
LOADER = ROOT / "runtime" / "kernel" / "klpcc-load"
SECRET = "klpcc.secret=hunter2"
STATE = 0x4B50
# the files the series touches and the local headers they include: all the test
# extracts from linux-source
SOURCES = ("fs/proc/cmdline.c", "fs/proc/base.c", "fs/proc/internal.h", "fs/proc/fd.h", "lib/kstrtox.h",
           "fs/binfmt_misc.c", "fs/internal.h", "fs/proc/meminfo.c", "fs/proc/array.c")
# fs/binfmt_misc.c is built into a module: patched when the module loads
OBJECT = "fs/binfmt_misc.c=binfmt_misc"
BINFMT = "/proc/sys/fs/binfmt_misc"


@dataclass
class E2E:
    kernel: KernelUnderTest
    builds: dict[str, dict] = field(default_factory=dict)  # module name -> build.json
    build_seconds: dict[str, float] = field(default_factory=dict)
    lint_downgrade: dict = field(default_factory=dict)
    lint_rc: int = -1
    kallsyms_boot: GuestRun | None = None
    kallsyms: Path | None = None
    src: Path | None = None
    guest: GuestRun | None = None

    def out(self, step: str) -> dict[str, str]:
        """What the guest showed after ``step``: cmdline, limits, personality, patches, modules."""
        shown: dict[str, str] = {}
        for line in self.guest.lines(f"SHOW {step} "):
            key, _, value = line.partition(" ")
            shown[key] = value.strip()
        assert shown, f"the guest showed nothing for {step}:\n{self.guest.tail()}"
        return shown

    def load(self, step: str) -> tuple[int, str]:
        rc = self.guest.lines(f"RC {step} ")
        assert rc, f"no exit status for {step}:\n{self.guest.tail()}"
        return int(rc[0]), "\n".join(self.guest.lines(f"LOAD {step} "))

    @property
    def dmesg(self) -> list[str]:
        return self.guest.lines("DMESG ")


def _show(step: str) -> str:
    return (f'echo "SHOW {step} cmdline $(cat /proc/cmdline)"; '
            f'echo "SHOW {step} limits $(head -n 1 /proc/self/limits)"; '
            f'echo "SHOW {step} personality $(cat /proc/self/personality)"; '
            f'echo "SHOW {step} binfmt $(cat {BINFMT}/status 2>/dev/null || echo absent)"; '
            f'echo "SHOW {step} patches $(ls /sys/kernel/livepatch | tr "\\n" " ")"; '
            f'echo "SHOW {step} modules $(cut -d" " -f1 /proc/modules | tr "\\n" " ")"\n')


def _show_compiled(step: str) -> str:
    return (f'echo "SHOW {step} meminfo $(grep -E "^(MemTotal|KlpccPages):" /proc/meminfo | tr "\n" "|")"; '
            f'echo "SHOW {step} status $(grep ctxt_switches /proc/self/status | tr "\t\n" " |")"; '
            f'echo "SHOW {step} patches $(ls /sys/kernel/livepatch | tr "\n" " ")"\n')


def _load(step: str, *args: str) -> str:
    return (f'out=$(/bin/klpcc-load {" ".join(args)} 2>&1); rc=$?; '
            f'echo "$out" | sed "s/^/LOAD {step} /"; echo "RC {step} $rc"\n')


SCRIPT = "".join([
    _show("r0"), _show_compiled("c0"),
    # from the source alone, without the target's kallsyms: the patch names statics the
    # kernel inlined away, and the kernel refuses it
    _load("nokallsyms", "/lib/klpcc/klpcc_proc_r2src.ko"), _show("nokallsyms"),
    _load("r1", "/lib/klpcc/klpcc_proc_r1.ko"), _show("r1"),
    # release 2 without kallsyms, by default: the compiled units predict what the kernel
    # inlined away (lock_trace), which the module copies; then release 2 built with them
    _load("r2nk", "/lib/klpcc/klpcc_proc_r2nk.ko"), _show("r2nk"),
    _load("r2", "/lib/klpcc/klpcc_proc_r2.ko"), _show("r2"),
    # the module release 2 patches loads now: the livepatch core patches it as it comes
    f"insmod /lib/klpcc/binfmt_misc.ko && mount -t binfmt_misc none {BINFMT} && "
    f"echo ':klpcc:E::klpccx::/bin/sh:' > {BINFMT}/register; echo \"RC binfmt $?\"\n",
    _show("binfmt"),
    _load("r3", "/lib/klpcc/klpcc_proc_r3.ko"), _show("r3"),
    _load("downgrade", "/lib/klpcc/klpcc_proc_r2.ko"), _show("downgrade"),
    _load("status", "--status"),
    _load("disable", "--disable", "klpcc_proc_r3"), _show("disabled"),
    # fixtures/kernel-compiled, every release built without kallsyms
    _load("c1", "/lib/klpcc/klpcc_compiled_c1.ko"), _show_compiled("c1"),
    _load("c2", "/lib/klpcc/klpcc_compiled_c2.ko"), _show_compiled("c2"),
    _load("c3", "/lib/klpcc/klpcc_compiled_c3.ko"), _show_compiled("c3"),
    _load("cdisable", "--disable", "klpcc_compiled_c3"), _show_compiled("cdisabled"),
    'dmesg | sed "s/^/DMESG /"\n',
])


def _kallsyms(work: Path) -> tuple[Path, GuestRun]:
    run = run_guest({}, "echo KSBEGIN; gzip -c /proc/kallsyms | base64; echo KSEND", timeout=600)
    m = re.search(r"KSBEGIN\n(.*?)KSEND", run.output, re.S)
    assert m, f"no kallsyms from the guest:\n{run.tail()}"
    path = work / "kallsyms"
    path.write_bytes(gzip.decompress(base64.b64decode("".join(m.group(1).split()))))
    return path, run


def _build(e: E2E, bundle: Path, name: str, out: Path, *extra: str) -> None:
    start = time.perf_counter()
    r = klpcc("build", str(bundle), "--kernel", str(e.kernel.kdir), "--name", name, "-o", str(out),
              "--format", "json", *extra)
    e.build_seconds[name] = time.perf_counter() - start
    assert r.returncode == 0, r.stderr
    e.builds[name] = json.loads(r.stdout)


@pytest.fixture(scope="module")
def e2e(tmp_path_factory) -> E2E:
    e = E2E(ensure_kernel_packages())
    src = fetch_kernel(e.kernel.source_version, SOURCES)
    work = tmp_path_factory.mktemp("kernel-e2e")
    kallsyms, e.kallsyms_boot = _kallsyms(work)
    e.kallsyms, e.src = kallsyms, src
    files: dict[str, Path | bytes] = {
        "/bin/klpcc-load": LOADER,
        "/lib/klpcc/binfmt_misc.ko": Path(f"/lib/modules/{e.kernel.release}/kernel/fs/binfmt_misc.ko"),
    }
    for r in (1, 2, 3):
        bundle = work / f"bundle{r}"
        res = klpcc("compile", str(SERIES), "--source", str(src), "--release", str(r), "-o", str(bundle))
        assert res.returncode == 0, res.stderr
        name = f"klpcc_proc_r{r}"
        _build(e, bundle, name, work / name, "--kallsyms", str(kallsyms), "--object", OBJECT)
        files[f"/lib/klpcc/{name}.ko"] = work / name / f"{name}.ko"
    _build(e, work / "bundle2", "klpcc_proc_r2nk", work / "r2nk", "--object", OBJECT)
    files["/lib/klpcc/klpcc_proc_r2nk.ko"] = work / "r2nk" / "klpcc_proc_r2nk.ko"
    _build(e, work / "bundle2", "klpcc_proc_r2src", work / "r2src", "--object", OBJECT, "--source-level")
    files["/lib/klpcc/klpcc_proc_r2src.ko"] = work / "r2src" / "klpcc_proc_r2src.ko"
    for r in (1, 2, 3):
        bundle = work / f"compiled{r}"
        res = klpcc("compile", str(COMPILED), "--source", str(src), "--release", str(r), "-o", str(bundle))
        assert res.returncode == 0, res.stderr
        name = f"klpcc_compiled_c{r}"
        _build(e, bundle, name, work / name)
        files[f"/lib/klpcc/{name}.ko"] = work / name / f"{name}.ko"
    lint = klpcc("lint", str(SERIES), "--source", str(src), "--release", "2", "--from", "3",
                 "--format", "json")
    e.lint_rc, e.lint_downgrade = lint.returncode, json.loads(lint.stdout)
    e.guest = run_guest(files, SCRIPT, timeout=600, append=f"{SECRET} foo=bar")
    assert e.guest.status == 0, e.guest.tail()
    return e


def test_modules_carry_the_releases_functions_nops_states_and_callbacks(e2e):
    r1, r2, r3 = (e2e.builds[f"klpcc_proc_r{r}"] for r in (1, 2, 3))
    assert [f["name"] for f in r1["functions"]] == ["cmdline_proc_show"]
    assert sorted((f["object"], f["name"]) for f in r3["functions"]) == [
        ("binfmt_misc", "bm_status_read"), ("vmlinux", "proc_pid_limits"),
        ("vmlinux", "proc_pid_personality")]
    assert r3["nops"] == ["fs/proc/cmdline.c:cmdline_proc_show"]
    assert r2["states"] == [{"id": STATE, "version": 1}] and r3["states"] == [{"id": STATE, "version": 2}]
    assert {c["kind"] for c in r3["callbacks"]} == {"pre_patch", "post_patch", "pre_unpatch", "post_unpatch"}
    assert all(b["replace"] for b in (r1, r2, r3))
    # statics and unexported globals go through livepatch relocations
    assert ".klp.sym.vmlinux.saved_command_line,0" in r1["livepatch_symbols"].values()
    assert ".klp.sym.vmlinux.lnames,0" in r3["livepatch_symbols"].values()
    # the module's statics, its list and lock included, are the module's own
    assert {".klp.sym.binfmt_misc.entries,0", ".klp.sym.binfmt_misc.entries_lock,0",
            ".klp.sym.binfmt_misc.enabled,0"} <= set(r3["livepatch_symbols"].values())
    assert {s["section"] for s in r3["livepatch_relocations"]} >= {
        ".klp.rela.binfmt_misc..text.klpcc_new_1_bm_status_read",
        ".klp.rela.vmlinux..text.klpcc_new_2_proc_pid_limits"}
    # lock_trace is inlined in the running kernel: with its kallsyms, the module has a copy
    assert any("lock_trace" in c["what"] for c in r3["copied"])
    assert r3["function_set"]["symbols_from"] == "kallsyms"
    # without them, the compiled unit predicts the same
    r2nk = e2e.builds["klpcc_proc_r2nk"]
    fs = r2nk["function_set"]
    assert (fs["symbols_from"], fs["decided_by"]) == ("predicted", "objects")
    assert any("lock_trace" in c["what"] for c in r2nk["copied"])
    assert ".klp.sym.vmlinux.lock_trace,0" not in r2nk["livepatch_symbols"].values()
    # from the source alone, the module names the symbol the kernel does not have
    r2src = e2e.builds["klpcc_proc_r2src"]
    assert r2src["function_set"]["decided_by"] == "source"
    assert ".klp.sym.vmlinux.lock_trace,0" in r2src["livepatch_symbols"].values()


def test_original_output_before_any_patch(e2e):
    base = e2e.out("r0")
    assert SECRET in base["cmdline"]
    assert base["limits"].startswith("Limit ")
    assert base["personality"] == "00000000"
    assert base["patches"] == "" and base["modules"] == "" and base["binfmt"] == "absent"


def test_unresolvable_static_is_refused_by_the_kernel_and_nothing_changes(e2e):
    rc, out = e2e.load("nokallsyms")
    assert rc == 1 and "klpcc-load:" in out
    assert any("lock_trace" in line and "not found" in line for line in e2e.dmesg), e2e.dmesg
    assert e2e.out("nokallsyms") == e2e.out("r0")


def test_release_2_built_without_kallsyms_loads_and_behaves(e2e):
    rc, out = e2e.load("r2nk")
    assert rc == 0, out
    shown = e2e.out("r2nk")
    assert "klpcc.secret=***" in shown["cmdline"]
    assert shown["limits"].startswith("Resource ") and shown["personality"] == "0x00000000"
    assert shown["patches"] == "klpcc_proc_r2nk"
    rc, out = e2e.load("r2")
    assert rc == 0, out
    assert {k: v for k, v in e2e.out("r2").items() if k not in ("patches", "modules")} == {
        k: v for k, v in shown.items() if k not in ("patches", "modules")}


def test_release_1_redacts_the_secret(e2e):
    rc, out = e2e.load("r1")
    assert rc == 0, out
    shown = e2e.out("r1")
    assert "klpcc.secret=***" in shown["cmdline"] and "hunter2" not in shown["cmdline"]
    assert "foo=bar" in shown["cmdline"]
    assert shown["limits"].startswith("Limit ") and shown["personality"] == "00000000"
    assert shown["patches"] == "klpcc_proc_r1"


def test_release_2_replaces_release_1_and_keeps_its_fix(e2e):
    rc, out = e2e.load("r2")
    assert rc == 0, out
    shown = e2e.out("r2")
    assert "klpcc.secret=***" in shown["cmdline"]
    assert shown["limits"].startswith("Resource ")
    assert shown["personality"] == "0x00000000"
    assert shown["patches"] == "klpcc_proc_r2"
    assert "klpcc_proc_r1" not in shown["modules"]  # replaced, and its module removed


def test_a_module_loaded_after_the_patch_is_patched_as_it_loads(e2e):
    rc, _ = e2e.load("binfmt")
    assert rc == 0, e2e.guest.tail()
    # the patched function counts the module's own list: one format registered
    assert e2e.out("binfmt")["binfmt"] == "enabled, 1 registered"


def test_release_3_reverts_release_1_fix_and_replaces_release_2(e2e):
    rc, out = e2e.load("r3")
    assert rc == 0, out
    shown = e2e.out("r3")
    assert shown["cmdline"] == e2e.out("r0")["cmdline"]  # the nop: original output back
    assert shown["limits"].startswith("Resource ") and shown["personality"] == "0x00000000"
    assert shown["patches"] == "klpcc_proc_r3"
    assert shown["modules"].split() == ["klpcc_proc_r3", "binfmt_misc"]
    assert shown["binfmt"] == "enabled, 1 registered"


def test_only_the_new_patch_callbacks_run(e2e):
    fixture = [re.sub(r"^\[[ \d.]+\] ", "", d) for d in e2e.dmesg if "klpcc-fixture" in d]
    assert fixture == [
        "klpcc-fixture: r2 pre_patch (state absent before)",  # r2nk, replacing r1
        "klpcc-fixture: r2 post_patch (state version 1)",
        "klpcc-fixture: r2 pre_patch (state present before)",  # r2, replacing r2nk
        "klpcc-fixture: r2 post_patch (state version 1)",
        "klpcc-fixture: r3 pre_patch (state present before)",
        "klpcc-fixture: r3 post_patch (state version 2)",
        "klpcc-fixture: r3 pre_unpatch",
        "klpcc-fixture: r3 post_unpatch",
    ]


def test_state_downgrade_is_flagged_by_lint_and_refused_by_the_kernel(e2e):
    assert e2e.lint_rc == 1
    rules = {(f["rule"], f["severity"]) for f in e2e.lint_downgrade["findings"]}
    assert ("S002", "error") in rules
    rc, out = e2e.load("downgrade")
    assert rc == 1 and "klpcc-load:" in out
    assert any("klpcc_proc_r2" in d and "not compatible" in d for d in e2e.dmesg)
    assert e2e.out("downgrade") == e2e.out("r3")


def test_status_and_disable(e2e):
    rc, out = e2e.load("status")
    assert rc == 0 and "klpcc_proc_r3" in out
    rc, out = e2e.load("disable")
    assert rc == 0, out
    shown = e2e.out("disabled")
    base = e2e.out("r0")
    assert {k: v for k, v in shown.items() if k not in ("binfmt", "modules")} == {
        k: v for k, v in base.items() if k not in ("binfmt", "modules")}
    assert shown["binfmt"] == "enabled"  # binfmt_misc's original status
    assert shown["modules"] == "binfmt_misc"


def test_compiled_function_sets_without_kallsyms(e2e):
    c1, c2, c3 = (e2e.builds[f"klpcc_compiled_c{r}"] for r in (1, 2, 3))
    for b in (c1, c2, c3):
        fs = b["function_set"]
        assert (fs["decided_by"], fs["symbols_from"]) == ("objects", "predicted")
    # release 1: meminfo_proc_show calls show_val_kb, which the kernel inlined: copied
    assert [f["name"] for f in c1["functions"]] == ["meminfo_proc_show"]
    assert any(c["what"].startswith("show_val_kb") for c in c1["copied"])
    # release 2: the static inline task_context_switch_counts, through proc_pid_status
    assert sorted(f["name"] for f in c2["functions"]) == ["meminfo_proc_show", "proc_pid_status"]
    assert any(n.startswith("task_context_switch_counts (fs/proc/array.c) leaves the patch")
               for n in c2["function_set"]["notes"]), c2["function_set"]["notes"]
    assert any(n.startswith("proc_pid_status (fs/proc/array.c) joins the patch: inlined "
                            "`task_context_switch_counts` changed") for n in c2["function_set"]["notes"])
    # release 3: show_val_kb, inlined everywhere, through meminfo_proc_show
    assert sorted(f["name"] for f in c3["functions"]) == ["meminfo_proc_show", "proc_pid_status"]
    assert any(n.startswith("show_val_kb (fs/proc/meminfo.c) leaves the patch")
               for n in c3["function_set"]["notes"]), c3["function_set"]["notes"]


def _meminfo(shown: dict[str, str]) -> list[str]:
    return [" ".join(line.split()) for line in shown["meminfo"].split("|") if line.strip()]


def test_compiled_releases_behave_as_their_source_says(e2e):
    base = e2e.out("c0")
    assert [line.split()[-1] for line in _meminfo(base)] == ["kB"] and "klpcc" not in base["status"]
    for step in ("c1", "c2", "c3"):
        rc, out = e2e.load(step)
        assert rc == 0, (step, out)
    c1, c2, c3 = e2e.out("c1"), e2e.out("c2"), e2e.out("c3")
    assert _meminfo(c1)[1] == "KlpccPages: 4 kB" and c1["patches"] == "klpcc_compiled_c1"
    assert "klpcc" not in c1["status"]
    assert _meminfo(c2)[1] == "KlpccPages: 4 kB"
    m = re.search(r"voluntary_ctxt_switches: (\d+)\|nonvoluntary_ctxt_switches: (\d+)\|"
                  r"klpcc_ctxt_switches: (\d+)\|", c2["status"])
    assert m and int(m[1]) + int(m[2]) == int(m[3]), c2["status"]
    assert [line.split()[-1] for line in _meminfo(c3)] == ["KiB", "KiB"] and "klpcc_ctxt" in c3["status"]
    rc, out = e2e.load("cdisable")
    assert rc == 0, out
    gone = e2e.out("cdisabled")
    assert [line.split()[-1] for line in _meminfo(gone)] == ["kB"] and "klpcc" not in gone["status"]
    assert gone["patches"] == ""


def test_the_statics_the_kernel_kept_are_predicted_from_the_compiled_units(e2e, capsys):
    """The prediction without --kallsyms, against the guest's kallsyms, on the fs/proc
    units the fixtures touch (bench/bench_predict.py runs it on 100+ units)."""
    units = ["fs/proc/array.c", "fs/proc/base.c", "fs/proc/cmdline.c", "fs/proc/meminfo.c"]
    res = predict(e2e.kernel.kdir, e2e.src, units, e2e.kallsyms)
    assert res.units == units, res.skipped
    assert res.compared >= 40 and res.rate >= 0.95, (res.compared, res.wrong)
    with capsys.disabled():
        print(f"\nprediction on {len(units)} units: {res.agree}/{res.compared} = {100 * res.rate:.1f}%"
              + "".join(f"\n  {w}" for w in res.wrong))


def test_figures(e2e, capsys):
    """Module build time per release and insmod to transition complete (printed)."""
    times = {}
    for step in ("r1", "r2", "r3"):
        _, out = e2e.load(step)
        m = re.search(r"enabled in ([\d.]+) s \(transition ([\d.]+) s\)", out)
        assert m, out
        times[step] = (float(m[1]), float(m[2]))
    with capsys.disabled():
        for r in (1, 2, 3):
            name = f"klpcc_proc_r{r}"
            make = e2e.builds[name]["build_seconds"]
            print(f"\n{name}: build {e2e.build_seconds[name]:.1f} s (make {make:.1f} s), "
                  f"insmod to enabled {times[f'r{r}'][0]:.2f} s, transition {times[f'r{r}'][1]:.2f} s")
        print(f"guest boots: kallsyms {e2e.kallsyms_boot.seconds:.1f} s, scenario {e2e.guest.seconds:.1f} s")
