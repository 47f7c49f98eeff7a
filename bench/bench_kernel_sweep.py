"""The kernel sweep, in full: PICKS (file, function) picks drawn from Debian's
linux-source of the installed kernel (fs, kernel, mm, net/core, drivers/base, fs/xfs,
arch/x86/kvm, in the shares of tests/kernel_sweep.py QUOTAS), each changed by one line
and run through ``klpcc compile`` and ``klpcc build --kernel`` without kallsyms; then
GUEST of the built modules, from every subsystem, loaded, checked and disabled in the
installed kernel under qemu.

Prints the shares (built, refused by reason, and the defects: broken, crashed,
undocumented) by subsystem, the built share with the __init/__exit picks left aside
(no live patch can redirect those), and the time of each pick's compile + build against
its baseline measured in the same run: compiling the pick's file once, unchanged, with
Kbuild's flags.

    .venv/bin/python bench/bench_kernel_sweep.py [--picks 300] [--seed 1] [--guest 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import kernel_sweep as ks  # noqa: E402
from tests.qemu_guest import ensure_kernel_packages, run_guest  # noqa: E402
from tests.test_real_sources import fetch_kernel  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--picks", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--guest", type=int, default=20)
    ap.add_argument("--json", type=Path, help="write every outcome here")
    args = ap.parse_args()
    kut = ensure_kernel_packages()
    root = fetch_kernel(kut.source_version, ks.SUBSET)
    quotas = {s: max(1, round(n * args.picks / sum(ks.QUOTAS.values()))) for s, n in ks.QUOTAS.items()}
    start = time.perf_counter()
    picks = ks.draw(root, ks.config(kut.kdir), quotas, args.seed)
    print(f"{len(picks)} picks drawn in {time.perf_counter() - start:.1f} s (seed {args.seed})", flush=True)
    outcomes: list[ks.Outcome] = []
    ratios: list[tuple[float, ks.Outcome, float]] = []
    with tempfile.TemporaryDirectory(prefix="klpcc-sweep-") as tmp:
        for i, p in enumerate(picks):
            o = ks.run_pick(root, kut.kdir, p, Path(tmp) / str(i), jobs=2)
            outcomes.append(o)
            if o.status == "built":
                try:
                    base = ks.baseline_seconds(root, kut.kdir, p, Path(tmp) / f"base{i}")
                    ratios.append(((o.compile_seconds + o.build_seconds) / base, o, base))
                except RuntimeError as exc:  # no baseline for this pick: said, not fatal
                    print(f"    (no baseline: {str(exc)[:200]})")
            print(f"{i:3d} {o.status:12s} {o.reason:24s} {p.path}:{p.function} ({p.object}) "
                  f"{o.compile_seconds + o.build_seconds:.1f} s", flush=True)
            if args.json:
                args.json.write_text(json.dumps([x.to_json() for x in outcomes], indent=1))
        figures = ks.shares(outcomes)
        print("\n" + json.dumps(figures, indent=1))
        n = len(outcomes)
        built = figures["total"]["built"]
        init = figures["reasons"].get("__init/__exit", 0)
        print(f"\nbuilt {built}/{n} ({100 * built / n:.1f}%); without the {init} __init/__exit picks "
              f"{built}/{n - init} ({100 * built / max(1, n - init):.1f}%)")
        defects = sum(figures["total"][s] for s in ("broken", "crashed", "undocumented"))
        print(f"defects (broken + crashed + undocumented): {defects}")
        if ratios:
            r = sorted(x[0] for x in ratios)
            print(f"compile + build / one Kbuild compile of the file: median {statistics.median(r):.1f}x, "
                  f"p90 {r[int(0.9 * (len(r) - 1))]:.1f}x, worst {r[-1]:.1f}x")
            for ratio, o, base in sorted(ratios, key=lambda x: -x[0])[:5]:
                took = o.compile_seconds + o.build_seconds
                print(f"  slowest: {o.pick.path}:{o.pick.function} {took:.1f} s "
                      f"({ratio:.1f}x of {base:.2f} s)")
        sample = ks.guest_sample(outcomes, args.guest)
        if sample:
            files, script = ks.guest_files_and_script(kut.release, sample)
            run = run_guest(files, script, kernel=kut, timeout=1800, memory="1G")
            results = ks.guest_results(run.output, sample)
            ok = [r for r in results if r.ok]
            subs = sorted({o.pick.subsystem for o in sample})
            print(f"\nguest: {len(ok)}/{len(results)} modules loaded, enabled with every function hooked, "
                  f"disabled and removed ({', '.join(subs)}); boot and script {run.seconds:.1f} s")
            for r in results:
                if not r.ok:
                    print(f"  FAILED {r.name}: loaded={r.loaded} enabled={r.enabled} functions={r.functions} "
                          f"disabled={r.disabled} objects={r.objects} {' | '.join(r.log)[:300]}")


if __name__ == "__main__":
    main()
