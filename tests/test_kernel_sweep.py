"""A bounded sample of the kernel sweep (tests/kernel_sweep.py; the full sweep is
bench/bench_kernel_sweep.py): (file, function) picks drawn from every subsystem of
Debian's linux-source of the installed kernel, each changed by one line, compiled and
built into a livepatch module against the installed kernel's headers, without the
target's kallsyms.  No pick may crash, leave a unit that does not compile, or be
refused for a reason docs/kernel.md does not list; most must build; a sample of the
built modules is loaded, checked and disabled in the real kernel under qemu.

``KLPCC_SWEEP_SEED`` draws another sample (the default is fixed, so a failure can be
run again as it was)."""

from __future__ import annotations

import os

import pytest

from . import kernel_sweep as ks
from .qemu_guest import ensure_kernel_packages, run_guest
from .test_real_sources import fetch_kernel

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("KLPCC_SWEEP_SEED", "12"))
# about 24 picks, every subsystem represented
QUOTAS = {sub: max(2, n * 24 // 300) for sub, n in ks.QUOTAS.items()}
GUEST_MODULES = 6


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    kut = ensure_kernel_packages()
    root = fetch_kernel(kut.source_version, ks.SUBSET)
    picks = ks.draw(root, ks.config(kut.kdir), QUOTAS, SEED)
    work = tmp_path_factory.mktemp("sweep")
    outcomes = [ks.run_pick(root, kut.kdir, p, work / str(i), jobs=2) for i, p in enumerate(picks)]
    return kut, picks, outcomes


def _show(outcomes: list[ks.Outcome], status: str) -> str:
    return "\n".join(f"{o.pick.path}:{o.pick.function} ({o.pick.object}): {o.message[-800:]}"
                     for o in outcomes if o.status == status)


def test_the_sample_covers_every_subsystem(sweep):
    _, picks, _ = sweep
    assert {p.subsystem for p in picks} == set(QUOTAS)
    assert len(picks) == sum(QUOTAS.values())
    # modules as well as vmlinux: fs/xfs and arch/x86/kvm are built as modules by Debian
    assert {p.object for p in picks} >= {"vmlinux", "xfs", "kvm"}


def test_no_pick_crashes_or_leaves_a_unit_that_does_not_compile(sweep):
    _, _, outcomes = sweep
    for status in ("crashed", "broken"):
        assert not [o for o in outcomes if o.status == status], _show(outcomes, status)


def test_every_refusal_is_a_documented_reason_naming_the_file(sweep):
    _, _, outcomes = sweep
    assert not [o for o in outcomes if o.status == "undocumented"], _show(outcomes, "undocumented")
    for o in outcomes:
        if o.status == "refused":
            assert o.message.startswith("klpcc: error:"), o.message
            assert o.pick.path in o.message, o.message


def test_most_picks_build_and_each_module_patches_its_function(sweep):
    _, _, outcomes = sweep
    built = [o for o in outcomes if o.status == "built"]
    assert len(built) >= 0.6 * len(outcomes), ks.shares(outcomes)
    for o in built:
        names = {f.split(":", 1)[1] for f in o.functions}
        fn = o.pick.function
        # a syscall is patched through its entry stubs (__x64_sys_NAME and the like); a
        # function the kernel inlined everywhere through the callers that carry it
        carried = any(f"inlined `{fn}` changed" in n or n.startswith(f"{fn} (") and
                      "its callers are patched instead" in n for n in o.notes)
        assert fn in names or any(n.endswith(f"_sys_{fn}") for n in names) or carried, (
            o.pick, o.functions, o.notes)
        assert {f.split(":", 1)[0] for f in o.functions} <= {"vmlinux", o.pick.object}, (o.pick, o.functions)


def test_a_sample_of_the_modules_loads_enables_and_disables_in_the_kernel(sweep):
    kut, _, outcomes = sweep
    sample = ks.guest_sample(outcomes, GUEST_MODULES)
    assert len(sample) >= 4, ks.shares(outcomes)
    files, script = ks.guest_files_and_script(kut.release, sample)
    run = run_guest(files, script, kernel=kut, timeout=600, memory="1G")
    results = ks.guest_results(run.output, sample)
    bad = [r for r in results if not r.ok]
    assert not bad, "\n".join(f"{r.name}: loaded={r.loaded} enabled={r.enabled} functions={r.functions} "
                              f"disabled={r.disabled} objects={r.objects}\n  " + "\n  ".join(r.log)
                              for r in bad) + "\n" + run.tail()
    oops = [ln for ln in run.lines("DMESG ") if any(w in ln for w in ("BUG", "Oops", "WARNING"))]
    assert not oops, "\n".join(oops)
