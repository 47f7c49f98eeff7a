"""The incremental engine against its reference, on series of real releases.

``klpcc analyze`` follows each release's edits through tree-sitter's incremental
parser and compares only the items around them.  Its reference
(``klpcc.c.source.REFERENCE``) parses every edited file afresh at every release and
compares all of its items.  On the releases of real C projects (the sdists of two
PyPI C extensions with large C files, as ``bench/bench_real_series.py`` times them,
and Debian's kernel point releases) both must give byte for byte the same JSON."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

import klpcc.c.source as source
from klpcc import api, report

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_real_series as real  # noqa: E402  (the series the benchmark times)


def analysis_json(patches: Path, base: Path, reference: bool, monkeypatch) -> tuple[str, float]:
    monkeypatch.setattr(source, "REFERENCE", reference)
    start = time.perf_counter()
    analysis = api.analyze(api.AnalyzeOptions(series=[str(patches)], source=str(base)))
    took = time.perf_counter() - start
    return report.dump_json(report.analysis_json(analysis)), took


def check_same(patches: Path, base: Path, what: str, monkeypatch) -> None:
    fast, t_fast = analysis_json(patches, base, False, monkeypatch)
    slow, t_slow = analysis_json(patches, base, True, monkeypatch)
    print(f"\n[incremental] {what}: {len(fast)} bytes of JSON; incremental {t_fast:.2f} s, "
          f"reference {t_slow:.2f} s")
    assert fast.count('"key"') > 0, "the series changes no function: nothing is compared"
    if fast != slow:
        a, b = fast.splitlines(), slow.splitlines()
        at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        pytest.fail(f"{what}: incremental and reference JSON differ at line {at + 1}: "
                    f"{a[at] if at < len(a) else '<end>'!r} against {b[at] if at < len(b) else '<end>'!r}",
                    pytrace=False)


@pytest.mark.parametrize("project, releases", [("cffi", 13), ("regex", 13)])
def test_real_pypi_series_incremental_is_the_reference(project: str, releases: int, tmp_path, monkeypatch):
    marker, versions = real.PROJECTS[project]
    versions = versions[:releases]
    trees = [real.fetch(project, v, marker) for v in versions]
    patches, base = real.make_series(tmp_path, trees, versions)
    check_same(patches, base, f"{project} {versions[0]} -> {versions[-1]}", monkeypatch)


def test_kernel_point_releases_incremental_is_the_reference(tmp_path, monkeypatch):
    from .test_real_sources import KernelSeries

    series = KernelSeries(tmp_path)
    check_same(series.patches, series.roots[0], f"linux {' -> '.join(series.versions)}", monkeypatch)


@pytest.mark.parametrize("project, marker", [("cffi", "_cffi_backend.c"), ("regex", "_regex.c")])
def test_random_edits_to_real_files_read_as_parsed_afresh(project: str, marker: str, tmp_path):
    # a bounded sample of bench/bench_incremental.py: random edits (braces, conditionals,
    # comments, a string holding '*/', table rows) to the large C file of each project
    import bench_incremental as sweep

    tree = real.fetch(project, real.PROJECTS[project][1][-1], real.PROJECTS[project][0])
    steps, problems = sweep.sweep(tree / marker, marker, steps=25, seed=7, keep=tmp_path)
    assert steps == 25
    assert not problems, "\n".join(problems)
