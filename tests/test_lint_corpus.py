"""``klpcc lint`` on two real kernel series, judged finding by finding.

Debian's Linux 6.1 point releases 6.1.170-3 -> 6.1.176-1 (pinned: the judgements are
about exactly these sources) as two series: ``kernel/``, ``mm/`` and ``fs/proc/``; and
``drivers/`` with ``net/``.  ``tests/lint_corpus.json`` holds every finding of
``klpcc lint`` on each, marked true or false by reading the diff and both sources,
with a one-line reason.  A finding that appears or disappears without the corpus
being updated fails the test, and so does a precision under 98%.  Run with
``pytest -s`` to see the figures per rule.

A second, independent check: every function the series changes in a file whose
directory's makefile removes ftrace's flags (found here by a plain text search of the
makefile) has a U004 finding.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from klpcc.api import AnalyzeOptions, analyze, lint, write_review
from klpcc.review import from_series

from .browser import chromium, open_page
from .test_real_sources import KERNEL_SUBSET, fetch_kernel, write_series

pytestmark = pytest.mark.slow

CORPUS = Path(__file__).with_name("lint_corpus.json")
BASE, RELEASE = "6.1.170-3", "6.1.176-1"
SERIES = {
    "kernel-mm-proc": (KERNEL_SUBSET, ("kernel", "mm", "fs/proc")),
    "drivers-net": (("drivers", "net"), ("drivers", "net")),
}
PRECISION = 0.98


def finding_id(f) -> str:
    """A finding's identity in the corpus: rule and place (file:line of the release)."""
    return f"{f.rule.id} {f.site.file}:{f.site.line}" if f.site else f"{f.rule.id} {f.message}"


@pytest.fixture(scope="module")
def corpus() -> dict:
    return json.loads(CORPUS.read_text())


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """name -> (patches dir, base tree) of each series, written once per module."""
    out = {}
    for name, (subset, dirs) in SERIES.items():
        trees = [fetch_kernel(v, subset) for v in (BASE, RELEASE)]
        tmp = tmp_path_factory.mktemp(name)
        out[name] = (write_series(tmp, trees, [f"0001-linux-{RELEASE}"], dirs), trees[0])
    return out


@pytest.fixture(scope="module")
def linted(series):
    return {name: lint(AnalyzeOptions(series=[str(p)], source=str(base)))
            for name, (p, base) in series.items()}


@pytest.mark.parametrize("name", list(SERIES))
def test_every_finding_is_judged_and_precise(name: str, corpus: dict, linted):
    judged = {j["id"]: j for j in corpus["series"][name]["findings"]}
    res = linted[name]
    seen = [(finding_id(f), f) for f in res.findings]
    ids = [i for i, _ in seen]
    twice = sorted(k for k, n in Counter(ids).items() if n > 1)
    assert not twice, f"two findings share a place: {twice}"
    appeared = sorted(set(ids) - set(judged))
    gone = sorted(set(judged) - set(ids))
    per_rule: dict[str, Counter] = {}
    for i, f in seen:
        c = per_rule.setdefault(f.rule.id, Counter())
        c["findings"] += 1
        if i in judged:
            c["true" if judged[i]["true"] else "false"] += 1
    print(f"\n[lint-corpus] {name}: {len(ids)} findings ({res.count('error')} errors, "
          f"{res.count('warning')} warnings, {res.count('note')} notes)")
    for rule, c in sorted(per_rule.items()):
        print(f"[lint-corpus]   {rule}: {c['findings']} findings, {c['true']} true, {c['false']} false")
    for i in ids:
        if i in judged and not judged[i]["true"]:
            print(f"[lint-corpus]   false: {i}: {judged[i]['reason']}")
    true = sum(1 for i in ids if i in judged and judged[i]["true"])
    precision = true / len(ids) if ids else 1.0
    print(f"[lint-corpus]   precision {true}/{len(ids)} = {precision:.1%}")
    assert not appeared and not gone, (
        "the findings changed; judge the new ones and update tests/lint_corpus.json\n"
        + "".join(f"  appeared: {i}: {dict(seen)[i].message}\n" for i in appeared)
        + "".join(f"  gone: {i}: {judged[i]['reason']}\n" for i in gone))
    assert precision >= PRECISION, f"precision {precision:.1%} < {PRECISION:.0%}"


_REMOVE = re.compile(r"^(?:CFLAGS_REMOVE_(?P<file>[\w.-]+)\.o|ccflags-remove-\S*)\s*[:+]?=.*"
                     r"(?:\$\(CC_FLAGS_FTRACE\)|-pg\b)", re.M)


def _untraced_by_text(root: Path, path: str) -> bool:
    """Does the makefile of ``path``'s directory remove ftrace's flags for it (a plain
    text search: conditions and flags added back are not looked at)?"""
    makefile = root / Path(path).parent / "Makefile"
    if not makefile.is_file():
        return False
    stem = Path(path).stem
    return any(m["file"] in (None, stem) for m in _REMOVE.finditer(makefile.read_text(errors="replace")))


@pytest.fixture(scope="module")
def analysed(series):
    return {name: analyze(AnalyzeOptions(series=[str(p)], source=str(base)))
            for name, (p, base) in series.items()}


@pytest.mark.parametrize("name", list(SERIES))
def test_every_changed_function_of_a_file_built_without_ftrace_is_reported(name: str, series, linted,
                                                                           analysed):
    patches, base = series[name]
    a = analysed[name]
    expected = sorted((e.file, e.name) for e in a.functions
                      if e.change == "modified" and e.file.endswith(".c") and _untraced_by_text(base, e.file))
    reported = {(f.site.file, f.site.function) for f in linted[name].findings
                if f.rule.id == "U004" and f.site}
    missing = [x for x in expected if x not in reported]
    print(f"\n[lint-corpus] {name}: {len(expected)} changed functions in files built without ftrace, "
          f"{len(expected) - len(missing)} reported")
    assert not missing, f"changed functions of files built without ftrace not reported: {missing}"
    if name == "kernel-mm-proc":
        assert len(expected) >= 10, "the series should change functions of kernel/trace and mm/kasan"


_PAGE = """
const missing = [...document.querySelectorAll('a[href^="#"]')]
    .filter(a => !document.getElementById(a.getAttribute('href').slice(1))).length;
return {rows: document.querySelectorAll('#function-matrix tbody tr').length,
        findings: document.querySelectorAll('#findings .finding').length,
        to_lines: document.querySelectorAll('#findings a.patch-link').length,
        missing: missing, fetched: performance.getEntriesByType('resource').length};
"""


@pytest.mark.parametrize("name", list(SERIES))
def test_the_review_report_of_a_real_series_opens_whole(name: str, analysed, linted, tmp_path):
    """The report of a 6.1 point-release series (drivers/ and net/: 1,700 functions,
    188 findings) is a page of a few MB whose every row, finding and link is there
    once the browser has loaded it; how fast it opens is measured by
    bench/bench_review.py."""
    a, res = analysed[name], linted[name]
    out = tmp_path / "report.html"
    write_review(from_series(a, res), out)
    size = out.stat().st_size
    print(f"\n[review] {name}: {len(a.functions)} functions, {len(res.findings)} findings, "
          f"{size / 1e6:.2f} MB")
    assert size < 8_000_000
    with chromium() as d:
        open_page(d, out.as_uri())
        got = d.execute_script(_PAGE)
    assert got["rows"] == len(a.functions) and got["findings"] == len(res.findings)
    assert got["to_lines"] == sum(1 for f in res.findings if f.patch is not None)
    assert got["missing"] == 0 and got["fetched"] == 0
