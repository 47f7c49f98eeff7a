"""The bundle as every target reads it: the typed manifest (``klpcc.manifest``), and
the one policy of what may be built, applied alike by the kernel and the userspace
targets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from klpcc.errors import KlpccError
from klpcc.manifest import Manifest, read

from .conftest import FIXTURES
from .helpers import klpcc, make_series

SERIES = {
    "demo": (FIXTURES / "demo" / "patches", FIXTURES / "demo" / "src"),
    **{name: (FIXTURES / "lint" / name / "patches", FIXTURES / "lint" / name / "src")
       for name in ("states-takeover", "callbacks-replace", "shadow-lifecycle", "userspace-sessiond")},
}


def compile_bundle(tmp: Path, patches: Path, src: Path, *extra: str) -> Path:
    out = tmp / "bundle"
    proc = klpcc("compile", str(patches / "series"), "--source", str(src), "-o", str(out), *extra)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.parametrize("name", sorted(SERIES))
def test_read_back_is_what_was_written(tmp_path, name):
    """Every field survives the round trip: a target sees exactly the manifest compile wrote."""
    bundle = compile_bundle(tmp_path, *SERIES[name])
    doc = json.loads((bundle / "manifest.json").read_text())
    b = read(bundle)
    assert b.manifest.to_json() == doc
    m = b.manifest
    assert m.release == doc["release"]["name"] and m.release_index == doc["release"]["index"]
    assert [c.name for c in m.functions] == [f["name"] for f in doc["functions"]]
    assert [(s.id, s.version) for s in m.states or ()] == [(s["id"], s["version"]) for s in doc["states"]]
    assert [(c.kind, c.callback) for c in m.callbacks or ()] == [(c["kind"], c["callback"])
                                                               for c in doc["callbacks"]]
    for s in m.sources:
        assert b.source(s.path) == (bundle / "sources" / s.path).read_bytes()


def test_the_lint_fixtures_carry_what_targets_read(tmp_path):
    """Not vacuous: the round trip above covers states, callbacks and shadow variables."""
    seen = {"states": 0, "callbacks": 0, "shadow": 0}
    for name in SERIES:
        doc = Manifest.from_json(json.loads((compile_bundle(tmp_path / name, *SERIES[name]) / "manifest.json")
                                            .read_text()))
        seen["states"] += len(doc.states or ())
        seen["callbacks"] += len(doc.callbacks or ())
        seen["shadow"] += len(doc.shadow or ())
    assert all(seen.values()), seen


BROKEN = [
    (lambda d: d["functions"][0].pop("name"), "manifest.functions[0].name is missing"),
    (lambda d: d["functions"][0].update(static="no"), "manifest.functions[0].static is not true or false"),
    (lambda d: d["release"].update(index="5"), "manifest.release.index is not a number"),
    (lambda d: d.update(nops="log_line"), "manifest.nops is not a list"),
    (lambda d: d["sources"].append(7), "manifest.sources[7] is not an object"),
    (lambda d: d["header_units"][0].update(path="../main.c"),
     "manifest.header_units[0].path '../main.c' is not a path inside the bundle"),
    (lambda d: d["header_units"][0].update(headers="proto.h"),
     "manifest.header_units[0].headers is not a list"),
    (lambda d: d["lint"]["findings"].append({"rule": "U001"}), "manifest.lint.findings[0].name is missing"),
    (lambda d: d["states"].append({"id": 1.5, "version": 1, "file": "x.c", "line": 1, "function": None,
                                   "origin": "code"}), "manifest.states[0].id is not a number or a string"),
]


@pytest.mark.parametrize("breaks, says", BROKEN, ids=[b[1].split(" is")[0] for b in BROKEN])
def test_a_malformed_manifest_is_refused_naming_the_field(tmp_path, breaks, says):
    bundle = compile_bundle(tmp_path, *SERIES["demo"])
    doc = json.loads((bundle / "manifest.json").read_text())
    # the 6 files the series changes or includes, and main.c, which reads the changed proto.h
    assert len(doc["sources"]) == 7 and not doc["states"] and not doc["lint"]["findings"]
    breaks(doc)
    (bundle / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(KlpccError, match=says.replace("[", r"\[").replace("]", r"\]")):
        read(bundle)
    for target in (["--source-only"], ["--binary", shutil.which("true") or "/bin/true"]):
        out = tmp_path / "out"
        proc = klpcc("build", str(bundle), *target, "-o", str(out))
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert says in proc.stderr and "Traceback" not in proc.stderr
        assert not out.exists()


# --------------------------------------------------------------------------- one policy

BASE = {
    "item.h": "struct item {\n\tint a;\n\tint b;\n};\nint item_sum(struct item *it);\n",
    "item.c": '#include "item.h"\n\nint item_sum(struct item *it)\n{\n\treturn it->a + it->b;\n}\n',
}
LAYOUT = {
    "item.h": BASE["item.h"].replace("\tint b;\n", "\tint b;\n\tint c;\n"),
    "item.c": BASE["item.c"].replace("it->a + it->b", "it->a + it->b + it->c"),
}


def _refusals(bundle: Path, tmp: Path) -> list[str]:
    out = []
    for target in (["--source-only"], ["--binary", shutil.which("true") or "/bin/true"]):
        dest = tmp / "out"
        proc = klpcc("build", str(bundle), *target, "-o", str(dest))
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert not dest.exists()
        out.append(proc.stderr)
    return out


def test_both_targets_refuse_a_layout_change_alike(tmp_path):
    """The kernel would refuse such a module; the userspace runtime would switch code
    that reads data of another shape: both targets refuse it, with the same words."""
    patches, src = make_series(tmp_path, BASE, [LAYOUT])
    kernel, program = _refusals(compile_bundle(tmp_path, patches, src), tmp_path)
    assert kernel == program, (kernel, program)
    assert kernel.startswith("klpcc: error: item.h:") and "refusing to build" in kernel and "U001" in kernel


def test_both_targets_refuse_a_state_id_they_cannot_compute(tmp_path):
    release = {"item.c": BASE["item.c"].replace("it->a + it->b", "it->b + it->a")
               + "\nKLPCC_STATE(STATE_ID_FROM_ELSEWHERE, 1);\n"}
    patches, src = make_series(tmp_path, BASE, [release])
    kernel, program = _refusals(compile_bundle(tmp_path, patches, src), tmp_path)
    assert kernel == program and "state id" in kernel and "not a constant klpcc can compute" in kernel, kernel


def test_the_bundle_carries_both_sides_of_every_unit(tmp_path):
    """base/ holds the base version of each changed source; an unchanged header is the
    same on both sides; a file the release adds has no base side."""
    patches, src = SERIES["demo"]
    bundle = read(compile_bundle(tmp_path, patches, src))
    changed = {f.path for f in bundle.manifest.files}
    for s in bundle.manifest.sources:
        base = bundle.base_source(s.path)
        on_disk = src / s.path
        if s.path in changed and on_disk.is_file():
            assert base == on_disk.read_bytes() and base != bundle.source(s.path), s.path
        elif s.path in changed:
            assert base is None, s.path
        else:
            assert base == bundle.source(s.path) == on_disk.read_bytes(), s.path
    assert {s.path for s in bundle.manifest.base_sources} == {p for p in changed if (src / p).is_file()} & {
        s.path for s in bundle.manifest.sources}
