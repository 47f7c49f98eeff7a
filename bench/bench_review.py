#!/usr/bin/env python3
"""Benchmark: ``klpcc report`` -- how long the review page takes to make, how big it
is, and how fast headless Chromium opens it.

For each series (the bundled demo, the kernel fixture series, and Debian's Linux 6.1
point releases 6.1.170-3 -> 6.1.176-1 as two series, ``kernel/ mm/ fs/proc/`` and
``drivers/ net/``, as the tests build them), in one process:

* ``lint`` alone (the baseline: the report runs it) and ``review`` (lint, analysis,
  the diff of each function), then rendering and writing the page;
* the page's size, against the size of the series' patches;
* Chromium (Debian's chromium and chromium-driver, Selenium) opening the page, against
  opening an empty page in the same browser, until the load event.

With ``--screenshot FILE`` it also writes a screenshot of the demo's report (the one
docs/report.png holds).

    python bench/bench_review.py [--series demo,kernel,6.1-kernel-mm,6.1-drivers-net]
                                 [--screenshot docs/report.png]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from klpcc.api import AnalyzeOptions, lint, review, write_review  # noqa: E402
from tests.browser import chromium  # noqa: E402

SERIES = ("demo", "kernel", "6.1-kernel-mm", "6.1-drivers-net")
_LOADED = "const t = performance.getEntriesByType('navigation')[0]; return t.loadEventEnd"


def _series(name: str, tmp: Path) -> tuple[Path, Path]:
    if name in ("demo", "kernel"):
        return ROOT / "fixtures" / name / "patches", ROOT / "fixtures" / name / "src"
    from tests.test_real_sources import KERNEL_SUBSET, fetch_kernel, write_series

    subset, dirs = {"6.1-kernel-mm": (KERNEL_SUBSET, ("kernel", "mm", "fs/proc")),
                    "6.1-drivers-net": (("drivers", "net"), ("drivers", "net"))}[name]
    trees = [fetch_kernel(v, subset) for v in ("6.1.170-3", "6.1.176-1")]
    return write_series(tmp / name, trees, ["0001-linux-6.1.176-1"], dirs), trees[0]


def _open(driver, path: Path, repeat: int = 3) -> float:
    """Best of ``repeat`` loads of ``path``, in ms (navigation start to load end)."""
    best = float("inf")
    for _ in range(repeat):
        driver.get("about:blank")
        driver.get(path.as_uri())
        best = min(best, float(driver.execute_script(_LOADED)))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", default=",".join(SERIES))
    ap.add_argument("--screenshot", metavar="FILE", help="write a screenshot of the demo's report")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="klpcc-bench-review-"))
    empty = tmp / "empty.html"
    empty.write_text("<!DOCTYPE html><title>empty</title>")
    rows = []
    with chromium(1280, 1000) as driver:
        base_ms = _open(driver, empty)
        for name in args.series.split(","):
            patches, src = _series(name, tmp)
            opts = AnalyzeOptions(series=[str(patches)], source=str(src))
            t0 = time.perf_counter()
            lint(opts)
            t1 = time.perf_counter()
            rv = review(opts)
            t2 = time.perf_counter()
            out = tmp / f"{name}.html"
            write_review(rv, out)
            t3 = time.perf_counter()
            patch_bytes = sum(p.stat().st_size for p in patches.iterdir() if p.name != "series")
            ms = _open(driver, out)
            rows.append((name, len(rv.functions), len(rv.findings or ()), t1 - t0, t2 - t1, t3 - t2,
                         out.stat().st_size, patch_bytes, ms))
            print(f"{name}: lint {t1 - t0:.2f} s, review {t2 - t1:.2f} s "
                  f"({(t2 - t1) / (t1 - t0):.2f}x lint), "
                  f"render+write {t3 - t2:.3f} s, page {out.stat().st_size / 1e6:.2f} MB "
                  f"({out.stat().st_size / patch_bytes:.1f}x the patches), opens in {ms:.0f} ms "
                  f"({ms / base_ms:.1f}x an empty page: {base_ms:.0f} ms)", flush=True)
        if args.screenshot:
            demo = tmp / "demo-shot.html"
            os.chdir(ROOT)  # the paths on the page as a user in the checkout sees them
            write_review(review(AnalyzeOptions(series=["fixtures/demo/patches"], source="fixtures/demo/src")),
                         demo)
            driver.get(demo.as_uri())
            driver.save_screenshot(args.screenshot)
            print(f"screenshot: {args.screenshot}")
    print()
    print("| series | functions | findings | lint s | review s | review / lint | page MB | page / patches "
          "| opens ms | / empty page |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, fns, nf, tl, tr, tw, size, pb, ms in rows:
        print(f"| {name} | {fns} | {nf} | {tl:.2f} | {tr + tw:.2f} | {(tr + tw) / tl:.2f} | {size / 1e6:.2f} "
              f"| {size / pb:.1f} | {ms:.0f} | {ms / base_ms:.1f} |")


if __name__ == "__main__":
    main()
