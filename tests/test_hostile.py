"""Hostile inputs (``tests/hostile.py``): a bounded sample of mutated patches in CI
(``bench/bench_hostile.py`` runs the full sweep), and the hostile cases that are not
patch mutations: base trees, includes, names, nesting, sizes."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .helpers import klpcc, make_series
from .hostile import (
    World,
    check,
    check_config,
    check_range,
    git_range,
    make_repo,
    make_world,
    mutate,
    mutate_toml,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return make_world(tmp_path_factory.mktemp("hostile"))


@settings(max_examples=int(os.environ.get("KLPCC_HOSTILE_EXAMPLES", "250")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(seed=st.integers(min_value=0), which=st.integers(min_value=0))
def test_a_mutated_patch_is_applied_as_git_applies_it_or_refused_on_one_line(world, seed, which):
    rng = random.Random(seed)
    kind, data = mutate(rng, world.seeds[which % len(world.seeds)])
    check(world, data)  # raises Broken when the invariant does not hold


@settings(max_examples=int(os.environ.get("KLPCC_HOSTILE_EXAMPLES", "250")) // 3, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(seed=st.integers(min_value=0))
def test_a_mutated_klpcc_toml_gives_a_bundle_or_one_error_naming_it(world, seed):
    kind, data = mutate_toml(random.Random(seed))
    check_config(world, data)  # raises Broken when the invariant does not hold


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> Path:
    return make_repo(tmp_path_factory.mktemp("history"))


@settings(max_examples=int(os.environ.get("KLPCC_HOSTILE_EXAMPLES", "250")) // 3, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(seed=st.integers(min_value=0))
def test_a_git_range_gives_its_commits_or_one_error(history, seed):
    outcome = check_range(history, git_range(random.Random(seed), history))
    assert outcome.klpcc in ("accepted", "refused")


def test_ranges_users_type(history):
    """The ranges that must work, and those that must be refused, each as said."""
    assert check_range(history, "v0..HEAD").klpcc == "accepted"
    assert check_range(history, "v0..main").klpcc == "accepted"
    refused = (("HEAD..v0", "is not an ancestor"), ("v0..v0", "holds no commits"),
               ("nosuch..HEAD", "unknown revision 'nosuch'"), ("--all..HEAD", "unknown revision '--all'"),
               ("v0..HEAD..v0", "expected a range BASE..TIP"))
    for spec, says in refused:
        outcome = check_range(history, spec)
        assert outcome.klpcc == "refused" and says in outcome.message, (spec, outcome.message)


def _digest(root: Path) -> dict[str, tuple[str, int]]:
    return {p.relative_to(root).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file()}


def test_the_command_line_on_mutated_patches(world, tmp_path):
    """As users run it: exit 0, 1 or 2 only; on 2 one line naming the patch and no
    bundle; the base tree untouched whatever happens."""
    rng = random.Random(2026)
    before = _digest(world.base)
    codes = set()
    for n in range(12):
        kind, data = mutate(rng, rng.choice(world.seeds))
        patch = tmp_path / f"{n:02d}-{kind}.patch"
        patch.write_bytes(data)
        out = tmp_path / f"bundle{n}"
        r = klpcc("compile", str(patch), "--source", str(world.base), "-o", str(out))
        codes.add(r.returncode)
        assert r.returncode in (0, 1, 2), (kind, r.stderr)
        assert "Traceback" not in r.stderr
        if r.returncode == 2:
            assert r.stderr.count("\n") == 1 and patch.name in r.stderr, (kind, r.stderr)
            assert not out.exists()
    assert _digest(world.base) == before
    assert 2 in codes


BASE = {"src/a.c": '#include "a.h"\n\nint a(void)\n{\n\treturn A;\n}\n', "src/a.h": "#define A 1\n"}


def test_an_absolute_include_into_the_base_is_left_alone(tmp_path):
    """A patched file that includes a base header by its absolute name: the bundle
    neither writes that header nor lists an absolute path; a system header by its
    absolute name is no error."""
    target = tmp_path / "base" / "src" / "a.h"  # where make_series writes the base
    release = {"src/a.c": BASE["src/a.c"].replace('"a.h"', f'"{target}"').replace("return A", "return A + 1")}
    patches, src = make_series(tmp_path, BASE, [release])
    assert target.is_file()
    stamp = target.stat().st_mtime_ns
    out = tmp_path / "bundle"
    r = klpcc("compile", str(patches), "--source", str(src), "-o", str(out))
    assert r.returncode == 0, r.stderr
    sources = [s["path"] for s in json.loads((out / "manifest.json").read_text())["sources"]]
    assert sources == ["src/a.c"] and target.stat().st_mtime_ns == stamp
    r = klpcc("build", str(out), "--source-only", "-o", str(tmp_path / "mod"))
    assert r.returncode == 0, r.stderr
    assert target.stat().st_mtime_ns == stamp
    release = {"src/a.c": BASE["src/a.c"].replace('"a.h"', '"/usr/include/stdio.h"')
               .replace("return A", "return 2")}
    patches, src = make_series(tmp_path / "system", BASE, [release])
    r = klpcc("compile", str(patches), "--source", str(src), "-o", str(tmp_path / "bundle2"))
    assert r.returncode == 0, r.stderr


def test_a_symbolic_link_loop_in_the_base_is_an_error(tmp_path):
    patches, src = make_series(tmp_path, BASE, [{"src/a.c": BASE["src/a.c"].replace("A;", "A + 1;")}])
    (src / "src" / "a.c").unlink()
    os.symlink("loop2", src / "src" / "a.c")
    os.symlink("a.c", src / "src" / "loop2")
    r = klpcc("analyze", str(patches), "--source", str(src))
    assert r.returncode == 2 and "loops" in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_a_file_where_the_series_has_a_directory_is_refused(tmp_path):
    patches, src = make_series(tmp_path, BASE, [{"src/b.c": "int b;\n", "src/b.c/inner.c": "int c;\n"}])
    r = klpcc("compile", str(patches), "--source", str(src), "-o", str(tmp_path / "bundle"))
    assert r.returncode == 2 and "src/b.c is a file" in r.stderr, r.stderr
    assert not (tmp_path / "bundle").exists()


def test_deep_nesting_reads_without_recursion_errors(tmp_path):
    deep = ("".join(f"#ifdef C{i}\n" for i in range(1000)) + "int deep(void)\n{\n\treturn 1;\n}\n"
            + "#endif\n" * 1000)
    expr = "int wide(void)\n{\n\treturn " + " + ".join(f"v{i}" for i in range(3000)) + ";\n}\n"
    base = {"src/d.c": deep + expr}
    release = {"src/d.c": deep.replace("return 1", "return 2") + expr.replace("v7 ", "v8 ")}
    patches, src = make_series(tmp_path, base, [release])
    r = klpcc("analyze", str(patches), "--source", str(src), "--format", "json")
    assert r.returncode == 0, r.stderr
    assert {f["name"]: f["change"] for f in json.loads(r.stdout)["functions"]} == {"deep": "modified",
                                                                                 "wide": "modified"}


def test_a_hunk_far_beyond_the_file_fails_fast(world, tmp_path):
    data = world.seeds[0].replace(b"@@ -2,", b"@@ -1000000002,", 1)
    start = time.perf_counter()
    outcome = check(world, data)
    assert outcome.klpcc == "refused" and time.perf_counter() - start < 10


def test_source_bytes_that_are_not_utf8_never_crash_the_output(tmp_path):
    """An #include of a Latin-1 name in a release: the name is read with U+FFFD for the
    byte, and neither text nor JSON output fails, even on a strict UTF-8 stdout."""
    base = {"src/a.c": "int a(void)\n{\n\treturn 1;\n}\n"}
    patches, src = make_series(tmp_path, base, [{"src/a.c": "#include \"caf\udce9.h\"\n" + base["src/a.c"]}])
    env = dict(os.environ, PYTHONIOENCODING="utf-8:strict")
    text = subprocess.run([sys.executable, "-m", "klpcc", "analyze", str(patches), "--source", str(src)],
                          capture_output=True, env=env, check=False)
    assert text.returncode == 0, text.stderr
    assert '"caf\ufffd.h"'.encode() in text.stdout
    doc = subprocess.run([sys.executable, "-m", "klpcc", "analyze", str(patches), "--source", str(src),
                          "--format", "json"], capture_output=True, env=env, check=False)
    assert doc.returncode == 0, doc.stderr
    names = [o["name"] for o in json.loads(doc.stdout.decode("utf-8"))["outside"]]
    assert '"caf\ufffd.h"' in names, names
