"""The object-level check (``klpcc analyze --objects``) on real C: simplejson's
``_speedups.c`` over consecutive PyPI releases, base = the oldest release's tree.

A ``compile_commands.json`` with one entry, ``gcc -O2 -fPIC -I<Python headers> -c
_speedups.c``, is written for the base tree at test time, and every release of the
series is checked against the base.  What klpcc says is checked against

* the source-level answer: every function the release modifies or adds in
  ``_speedups.c`` is in the object report, as "both" or "source-only";
* an oracle computed here by other means: each function's code is disassembled
  (``objdump``) from objects compiled here from the release trees, with gcc's
  ``.LC<n>`` labels and string sections resolved to the text they hold and the
  numbers gcc appends to local names dropped; a difference is "line numbers" when
  every differing instruction is the ``mov $LINE,%edx`` that passes ``__LINE__`` to
  ``__assert_fail`` (lines moved above an ``assert``), "code" otherwise.  Whether a
  function is compiled at all is read from the preprocessed unit (``gcc -E``);
* what the diffs between releases show, read by hand (the last two tests).

The sources are fetched with :func:`tests.test_real_sources.fetch_sdists` (cached in
``$KLPCC_TEST_CACHE``, default ``~/.cache/klpcc-tests``); a missing ``Python.h`` fails
the test (install python3-dev), never skips.  Run with ``pytest -s`` to see the
per-release table.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from klpcc.api import AnalyzeOptions, ObjectOptions, analyze_objects
from klpcc.history import ADDED, MODIFIED, REMOVED, Analysis
from klpcc.objects import ObjectReport, to_json

from .test_real_sources import SIMPLEJSON, _run, fetch_sdists, write_series

pytestmark = pytest.mark.slow

CFILE = SIMPLEJSON.cfile  # simplejson/_speedups.c
RELEASES = SIMPLEJSON.releases  # base first
# the compile command of the brief, and the same with -DNDEBUG (as setuptools builds
# extensions against a release Python): without asserts, no line numbers in the code
CONFIGS = {"as-given": (), "ndebug": ("-DNDEBUG",)}

# =========================================================================== set-up


def python_include() -> Path:
    inc = Path(sysconfig.get_paths()["include"])
    if not (inc / "Python.h").is_file():
        pytest.fail(f"{inc}/Python.h is missing: install the Python development headers "
                    f"(python3-dev, or python3.{sys.version_info.minor}-dev) to compile simplejson's "
                    f"C extension", pytrace=False)
    if shutil.which("gcc") is None:
        pytest.fail("gcc is missing: the object-level check compiles with it", pytrace=False)
    return inc


def write_commands(path: Path, tree: Path, include: Path, extra: tuple[str, ...] = ()) -> Path:
    """A compilation database for ``tree``: one entry, simplejson/_speedups.c."""
    argv = ["gcc", "-O2", "-fPIC", f"-I{include}", *extra, "-c", "_speedups.c"]
    path.write_text(json.dumps([{"directory": str(tree / "simplejson"), "file": "_speedups.c",
                                 "command": shlex.join(argv)}], indent=2) + "\n")
    return path


@dataclass
class Setup:
    trees: list[Path]  # extracted sdists, base first
    names: list[str]  # patch names, release 1..N
    patches: Path
    include: Path
    tmp: Path
    runs: dict[str, list[ReleaseRun]] = field(default_factory=dict)  # config -> releases 1..N


@dataclass
class ReleaseRun:
    number: int
    name: str
    config: str
    analysis: Analysis
    report: ObjectReport
    seconds: float
    oracle: dict[str, str]  # function -> "line", "code" (only functions whose code differs)
    compiled_in: set[str]  # functions defined in the preprocessed release unit
    again: ObjectReport | None = None  # same release, same cache
    serial: ObjectReport | None = None  # --jobs 1, no cache


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Setup:
    include = python_include()
    trees = fetch_sdists(SIMPLEJSON.name, RELEASES, SIMPLEJSON.subdir)
    tmp = tmp_path_factory.mktemp("objects-real")
    names = [f"{i:04d}-{SIMPLEJSON.name}-{v}" for i, v in enumerate(RELEASES[1:], 1)]
    patches = write_series(tmp, trees, names, [SIMPLEJSON.subdir])
    return Setup(trees, names, patches, include, tmp)


def findings(report: ObjectReport) -> dict:
    """Everything a report says except how it got its objects."""
    doc = to_json(report)
    doc["summary"] = {k: v for k, v in doc["summary"].items() if k not in ("compiled", "cache_hits")}
    doc["units"] = [{k: v for k, v in u.items() if k not in ("compiled", "cached")} for u in doc["units"]]
    return doc


def source_changes(analysis) -> dict[str, str]:
    """Function -> modified/added/removed in _speedups.c, as the source-level analysis says."""
    return {e.name: e.change for e in analysis.functions
            if e.file == CFILE and e.change in (MODIFIED, ADDED, REMOVED)}


def run_config(s: Setup, config: str) -> list[ReleaseRun]:
    if config in s.runs:
        return s.runs[config]
    extra = CONFIGS[config]
    commands = write_commands(s.tmp / f"compile_commands-{config}.json", s.trees[0], s.include, extra)
    cache = s.tmp / f"cache-{config}"
    oracle = Oracle(s.tmp / f"oracle-{config}", s.include, extra)
    base_code = oracle.code(s.trees[0])
    runs = []
    for r in range(1, len(RELEASES)):
        opts = AnalyzeOptions(series=[str(s.patches)], source=str(s.trees[0]), release=r)
        t0 = time.monotonic()
        analysis, report = analyze_objects(opts, ObjectOptions(commands=str(commands), jobs=2,
                                                               cache=str(cache)))
        seconds = time.monotonic() - t0
        run = ReleaseRun(r, s.names[r - 1], config, analysis, report, seconds,
                         compare_code(base_code, oracle.code(s.trees[r])), oracle.defined(s.trees[r]))
        if config == "as-given":
            run.again = analyze_objects(opts, ObjectOptions(commands=str(commands), jobs=2,
                                                            cache=str(cache)))[1]
            run.serial = analyze_objects(opts, ObjectOptions(commands=str(commands), jobs=1,
                                                             no_cache=True))[1]
        runs.append(run)
    s.runs[config] = runs
    print_table(config, extra, runs)
    return runs


# =========================================================================== oracle

_LC = re.compile(r"^\.L[A-Za-z]*\d+$")
_INSN = re.compile(r"^\s*[0-9a-f]+:\t([^\t]*)((?:\t[0-9a-f]+: R_\S+\t\S+)*)\s*$")
_RELOC = re.compile(r"\t[0-9a-f]+: (R_\S+)\t(\S+)")
_TARGET = re.compile(r"^(.*?)([+-]0x[0-9a-f]+)?$")
_LINE_ARG = re.compile(r"^mov\s+\$0x[0-9a-f]+,%edx$")
_PC_RELATIVE = {"R_X86_64_PC32", "R_X86_64_PLT32", "R_X86_64_GOTPCREL", "R_X86_64_GOTPCRELX",
                "R_X86_64_REX_GOTPCRELX"}


def _plain(symbol: str) -> str:
    """gcc's numbers off a local name: kwlist.12 -> kwlist, f.isra.0 -> f.isra."""
    return re.sub(r"(\.\d+)+$", "", symbol)


class Oracle:
    """Compiles a tree's _speedups.c itself (no klpcc) and disassembles it."""

    def __init__(self, work: Path, include: Path, extra: tuple[str, ...]):
        self.work = work
        self.flags = ["-O2", "-fPIC", f"-I{include}", *extra]
        work.mkdir(parents=True, exist_ok=True)

    def defined(self, tree: Path) -> set[str]:
        """Functions with a definition in the preprocessed unit."""
        text = _run(["gcc", *self.flags, "-E", "-P", "_speedups.c"], "preprocessing _speedups.c",
                    cwd=tree / "simplejson").stdout
        out = set()
        for m in re.finditer(r"^([A-Za-z_]\w*)\s*\(", text, re.M):
            depth, i = 0, m.end() - 1
            while i < len(text):
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                i += 1
                if depth == 0:
                    break
            if text[i:].lstrip().startswith("{"):
                out.add(m.group(1))
        return out

    def code(self, tree: Path) -> dict[str, dict[str, list[str]]]:
        """Source function -> its symbols (clones included) -> normalised instructions."""
        from elftools.elf.elffile import ELFFile
        from elftools.elf.sections import SymbolTableSection

        obj = self.work / f"{tree.parent.name}.o"
        _run(["gcc", *self.flags, "-ffunction-sections", "-fdata-sections", "-c", "_speedups.c",
              "-o", str(obj)], "compiling _speedups.c for the oracle", cwd=tree / "simplejson")
        with open(obj, "rb") as fh:
            elf = ELFFile(fh)
            sections = {sec.name: sec.data() if sec["sh_type"] != "SHT_NOBITS" else b""
                        for sec in elf.iter_sections()}
            names = [sec.name for sec in elf.iter_sections()]
            labels = {}
            for sec in elf.iter_sections():
                if isinstance(sec, SymbolTableSection):
                    for sym in sec.iter_symbols():
                        if _LC.match(sym.name) and isinstance(sym["st_shndx"], int):
                            labels[sym.name] = (names[sym["st_shndx"]], sym["st_value"])
        dump = _run(["objdump", "-dr", "-w", "--no-show-raw-insn", str(obj)], "disassembling").stdout

        def target(rtype: str, text: str) -> str:
            name, addend = _TARGET.match(text).groups()
            add = int(addend, 16) if addend else 0
            where = labels.get(name) or ((name, 0) if name in sections else None)
            if where is None:
                return f"{_plain(name)}{add:+d}"
            sec, off = where
            off += add + (4 if rtype in _PC_RELATIVE else 0)
            data = sections.get(sec, b"")
            if ".str" in sec:
                end = data.find(b"\0", off)
                return "str:" + data[off:end if end >= 0 else None].decode("utf-8", "replace")
            if ".cst" in sec:
                return "cst:" + data[off:off + int(re.sub(r"\D", "", sec.rsplit(".", 1)[-1]) or 8)].hex()
            return f"{_plain(sec)}{add:+d}"

        out: dict[str, dict[str, list[str]]] = {}
        lines: list[str] | None = None
        for line in dump.splitlines():
            if m := re.match(r"^[0-9a-f]+ <(.+)>:$", line):
                sym = m.group(1)
                lines = out.setdefault(sym.split(".")[0], {}).setdefault(_plain(sym), [])
            elif lines is not None and (m := _INSN.match(line)):
                insn = re.sub(r"\s*(<[^>]*>|#.*)", "", m.group(1)).strip()
                relocs = [f"{t} {target(t, x)}" for t, x in _RELOC.findall(m.group(2))]
                lines.append(" | ".join([insn, *relocs]))
        return out


def compare_code(base: dict[str, dict[str, list[str]]], new: dict[str, dict[str, list[str]]]
                 ) -> dict[str, str]:
    """Source function -> "line" or "code", for each function whose code differs."""
    out = {}
    for fn in set(base) | set(new):
        a, b = base.get(fn, {}), new.get(fn, {})
        if a == b:
            continue
        verdict = "line"
        if set(a) != set(b):
            verdict = "code"
        for sym in set(a) & set(b):
            if a[sym] == b[sym]:
                continue
            if len(a[sym]) != len(b[sym]) or not any("__assert_fail" in x for x in b[sym]):
                verdict = "code"
                continue
            if not all(_LINE_ARG.match(x) and _LINE_ARG.match(y)
                       for x, y in zip(a[sym], b[sym]) if x != y):
                verdict = "code"
        out[fn] = verdict
    return out


# =========================================================================== the table


def print_table(config: str, extra: tuple[str, ...], runs: list[ReleaseRun]) -> None:
    head = (f"{'release':<26}{'source':>7}{'object':>7}{'both':>6}{'code-only':>10}"
            f"{'source-only':>12}{'line-only':>10}{'compiled':>9}{'cache':>6}{'seconds':>8}")
    out = [f"\n[objects-real] {SIMPLEJSON.name} {' -> '.join(RELEASES)}, each release against "
           f"{RELEASES[0]}; {' '.join(['gcc -O2 -fPIC', *extra])} ({config})", head]
    for run in runs:
        rep = run.report
        obj = len(rep.by("both")) + len(rep.by("code-only"))
        out.append(f"{run.number} {run.name:<24}{len(source_changes(run.analysis)):>7}{obj:>7}"
                   f"{len(rep.by('both')):>6}{len(rep.by('code-only')):>10}{len(rep.by('source-only')):>12}"
                   f"{len(rep.by('line-only')):>10}{rep.compiled:>9}{rep.cache_hits:>6}{run.seconds:>8.2f}")
        for f in rep.functions:
            if f.what != "both":
                truth = run.oracle.get(f.function, "none")
                out.append(f"    {f.what:<12}{f.function}: {f.reason}  [oracle: {truth}]")
        out += [f"    data        {d.symbol} ({d.section}): {d.change}" for d in rep.data]
        out += [f"    note        {n}" for n in rep.notes]
    print("\n".join(out))


# =========================================================================== checks


def reason_problems(run: ReleaseRun) -> list[str]:
    """Each code-only and source-only reason: present, specific, and true by the oracle."""
    problems = []
    where = f"{run.config} release {run.number} ({run.name})"
    headers = {h for u in run.report.units for h in u["headers"]}
    for f in run.report.functions:
        truth = run.oracle.get(f.function, "none")
        said = f"{where}: {f.function}: {f.what} because {f.reason!r}"
        clones = re.findall(r"calls the compiler clone ((?:`[^`]+`(?:, )?)+), which changed", f.reason)
        if clones:
            # it calls a changed clone (patched through it): the clone's function changed
            named = re.findall(r"`([^`.]+)[^`]*`", clones[0])
            if all(run.oracle.get(n, "none") == "none" for n in named):
                problems.append(f"{said}; but the oracle sees no change in {', '.join(named)}")
            if f.what == "code-only":
                continue
        elif f.what in ("both", "code-only", "line-only") and truth == "none":
            problems.append(f"{said}; but its code is the same once gcc's label numbers are resolved")
        if f.what == "both":
            continue
        if not f.reason.strip():
            problems.append(f"{where}: {f.function}: {f.what} with no reason")
            continue
        if f.what == "code-only":
            named = re.findall(r"`([^`]+)`", f.reason) if f.reason.startswith("header") else []
            wrong = [h for h in named if h not in headers or h == f.unit]
            if wrong:
                problems.append(f"{said}; but {', '.join(wrong)} is not a changed header the unit reads "
                                f"(its changed headers: {sorted(headers) or 'none'})")
            elif "no source change found" in f.reason:
                problems.append(f"{said}: not a specific reason (oracle: {truth})")
            if truth == "line":
                problems.append(f"{said}; but its only code change is the line number passed to "
                                f"__assert_fail (lines moved above an assert): line-only")
        elif f.what == "line-only":
            if truth != "line":
                problems.append(f"{said}; but the oracle says its code change is {truth!r}")
        elif f.what == "source-only":
            if f.symbols:
                if truth != "none":
                    problems.append(f"{said}; but its code changed (oracle: {truth})")
                continue
            compiled = f.function in run.compiled_in
            fact = "inlined" if compiled else "not compiled"
            says_inlined = "inlined" in f.reason
            says_absent = "not compiled" in f.reason
            if (says_inlined, says_absent) != (compiled, not compiled):
                problems.append(f"{said}: not specific; it is {fact} in this configuration "
                                f"({'defined' if compiled else 'absent'} after preprocessing)")
    return problems


def test_every_release_compiles_and_keeps_the_source_changes(setup):
    """(1) the unit compiles for every release; (2) every function the source-level
    analysis says the release modifies or adds in _speedups.c is in the object report
    as "both" or "source-only" (a source-only one with its reason)."""
    problems = []
    for run in run_config(setup, "as-given"):
        where = f"release {run.number} ({run.name})"
        rep = run.report
        if rep.notes:
            problems.append(f"{where}: notes {rep.notes}")
        if [u["path"] for u in rep.units] != [CFILE]:
            problems.append(f"{where}: units {rep.units}, expected {CFILE} alone")
        if rep.compiled + rep.cache_hits != 2:
            problems.append(f"{where}: {rep.compiled} compiled + {rep.cache_hits} cached, expected 2")
        got = {f.function: f for f in rep.functions}
        for fn, change in sorted(source_changes(run.analysis).items()):
            if change == REMOVED:
                continue
            f = got.get(fn)
            if f is None:
                problems.append(f"{where}: {fn} ({change} in the source) is not in the object report")
            elif f.what not in ("both", "source-only"):
                problems.append(f"{where}: {fn} ({change} in the source) is {f.what}")
            elif f.what == "source-only" and not f.reason.strip():
                problems.append(f"{where}: {fn} is source-only with no reason")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_every_reason_is_specific_and_true(setup, config):
    """(3) every code-only and source-only finding has a reason, specific (no "or",
    no catch-all), and true: a header it names is a changed header the unit reads;
    a function whose code changed only in __LINE__ says so; a function with no code
    is said to be inlined or not compiled, whichever it is; and no function is
    reported changed in code when, labels resolved, its code is the same."""
    problems = [p for run in run_config(setup, config) for p in reason_problems(run)]
    assert not problems, f"{len(problems)} wrong or unspecific reasons:\n" + "\n".join(problems)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_every_code_change_is_found(setup, config):
    """Every function whose code the oracle finds changed is in the report: as "both"
    or "code-only" for a real change (no code change goes unpatched), as "line-only"
    when only the __LINE__ passed to an assert moved."""
    problems = []
    for run in run_config(setup, config):
        said = {f.function: f.what for f in run.report.functions}
        for fn, verdict in sorted(run.oracle.items()):
            want = ("line-only",) if verdict == "line" else ("both", "code-only")
            if said.get(fn) not in want:
                problems.append(f"{config} release {run.number} ({run.name}): {fn}: its code changed "
                                f"({verdict}); klpcc says {said.get(fn, 'nothing')}, not {' or '.join(want)}")
    assert not problems, "\n".join(problems)


def test_a_second_run_is_served_from_the_cache(setup):
    """(4) the same release again with the same cache: nothing compiled, both objects
    from the cache, the same findings."""
    problems = []
    for run in run_config(setup, "as-given"):
        again = run.again
        assert again is not None
        if (again.compiled, again.cache_hits) != (0, 2):
            problems.append(f"release {run.number}: second run compiled {again.compiled}, "
                            f"{again.cache_hits} from the cache; expected 0 and 2")
        if findings(again) != findings(run.report):
            problems.append(f"release {run.number}: the second run's findings differ:\n"
                            f"{json.dumps(findings(run.report), indent=1)}\n"
                            f"{json.dumps(findings(again), indent=1)}")
    assert not problems, "\n".join(problems)


def test_jobs_do_not_change_the_findings(setup):
    """(5) --jobs 1 (compiled afresh) and --jobs 2 give the same findings."""
    for run in run_config(setup, "as-given"):
        assert run.serial is not None
        assert run.serial.compiled == 2 and run.serial.cache_hits == 0
        assert findings(run.serial) == findings(run.report), f"release {run.number}"


def test_cli_json_agrees_with_the_library(setup):
    """``klpcc analyze ... --objects --format json`` carries the same report under
    ``objects`` (served from the cache the library runs filled)."""
    runs = run_config(setup, "as-given")
    commands = setup.tmp / "compile_commands-as-given.json"
    proc = _run([sys.executable, "-m", "klpcc", "analyze", str(setup.patches), "--source",
                 str(setup.trees[0]), "--objects", str(commands), "--jobs", "2", "--cache",
                 str(setup.tmp / "cache-as-given"), "--format", "json"], "klpcc analyze --objects")
    doc = json.loads(proc.stdout)["objects"]
    assert doc["summary"]["compiled"] == 0 and doc["summary"]["cache_hits"] == 2
    expected = findings(runs[-1].report)
    assert {k: v for k, v in doc.items() if k not in ("summary", "units")} == \
        {k: v for k, v in expected.items() if k not in ("summary", "units")}
    assert set(doc["summary"]) == {"both", "code_only", "source_only", "line_only", "units", "compiled",
                                   "cache_hits"}


# =========================================================================== read from the diffs


def test_3_20_1_changes_one_function_and_moves_every_line_below_it(setup):
    """3.19.1 -> 3.20.1, read from the diff: the body of encoder_listencode_dict
    changes (only string keys are memoised) and two ``#define JSON_StringCheck``
    lines are added near the top, one per Python-version branch; no function uses
    the macro.  So, with 3.19.1 as the base: without asserts (-DNDEBUG) the code of
    exactly one function changes, encoder_listencode_dict; as given (asserts on),
    every other function whose code changes only passes a different __LINE__ to
    __assert_fail, and its reason must say so -- not name a header (the unit reads
    no changed header; it is its own file that changed)."""
    old, new = setup.trees[2], setup.trees[3]
    text = (new / CFILE).read_text()
    uses = [line for line in text.splitlines() if "JSON_StringCheck" in line]
    assert len(uses) == 2 and all(line.startswith("#define JSON_StringCheck") for line in uses), uses
    assert len(text.splitlines()) > len((old / CFILE).read_text().splitlines())
    patch = setup.patches / f"{setup.names[2]}.patch"
    problems = []
    for config, extra in CONFIGS.items():
        commands = write_commands(setup.tmp / f"pair-{config}.json", old, setup.include, extra)
        analysis, rep = analyze_objects(AnalyzeOptions(series=[str(patch)], source=str(old)),
                                        ObjectOptions(commands=str(commands), jobs=2, no_cache=True))
        assert source_changes(analysis) == {"encoder_listencode_dict": MODIFIED}
        assert not rep.notes and not rep.data, (rep.notes, rep.data)
        got = {f.function: f for f in rep.functions}
        assert got["encoder_listencode_dict"].what == "both", got["encoder_listencode_dict"]
        oracle = Oracle(setup.tmp / f"pair-oracle-{config}", setup.include, extra)
        truth = compare_code(oracle.code(old), oracle.code(new))
        # callers of encoder_listencode_dict's compiler clone call the clone itself: patched through it
        via_clone = {fn for fn, f in got.items()
                     if "calls the compiler clone `encoder_listencode_dict." in f.reason}
        if config == "ndebug":
            assert truth == {"encoder_listencode_dict": "code"}, truth
            assert sorted(set(got) - via_clone) == ["encoder_listencode_dict"], [
                (f.function, f.what, f.reason) for f in rep.functions]
            continue
        others = {fn for fn in truth if fn != "encoder_listencode_dict"}
        assert others and all(truth[fn] == "line" for fn in others), truth
        assert set(got) - {"encoder_listencode_dict"} - via_clone == others
        for fn in sorted(others - via_clone):
            f = got[fn]
            if f.what != "line-only" or "__LINE__" not in f.reason:
                problems.append(f"3.19.1 -> 3.20.1, {fn}: {f.what} because {f.reason!r}; its only "
                                f"change is the __LINE__ passed to __assert_fail")
    assert not problems, f"{len(problems)} functions:\n" + "\n".join(problems)


def test_3_19_1_python2_only_changes_are_not_compiled(setup):
    """Release 2 (3.19.1) against the base, read from the diffs: 3.18.0 and 3.19.1
    change _match_number_str (PyObject_CallOneArg; the error position and a leak
    fix) and 3.19.1 changes scan_once_str (_parse_constant's new argument), but both
    functions are wholly in the ``#if PY_MAJOR_VERSION < 3`` half of the file:
    compiled against Python 3 they are no code at all, so source-only, explained as
    not compiled in.  _match_number_unicode, changed the same way (less the leak
    fix), is compiled but inlined into scan_once_unicode, whose code changes:
    source-only, explained as inlined."""
    run = run_config(setup, "as-given")[1]
    assert RELEASES[run.number] == "3.19.1"
    got = {f.function: f for f in run.report.functions}
    for fn in ("_match_number_str", "scan_once_str"):
        assert fn not in run.compiled_in
        f = got[fn]
        assert (f.what, f.symbols) == ("source-only", ()), f
        assert "not compiled" in f.reason and "inlined" not in f.reason, \
            f"{fn}: changed only for Python 2, not compiled in; klpcc says {f.reason!r}"
    assert "_match_number_unicode" in run.compiled_in
    assert got["scan_once_unicode"].what in ("both", "code-only")
    f = got["_match_number_unicode"]
    assert (f.what, f.symbols) == ("source-only", ()), f
    assert "inlined" in f.reason and "not compiled" not in f.reason, \
        f"_match_number_unicode: inlined into scan_once_unicode; klpcc says {f.reason!r}"
