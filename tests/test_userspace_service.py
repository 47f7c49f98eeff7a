"""A service whose threads never return (fixtures/service): ``main`` answers requests
forever through an out-of-line handler in another file; worker threads bill forever
with a function gcc folds into their loop.  The compiled code decides the patch:

* release 1 changes ``price``, which gcc inlined into ``quote``: ``quote`` is patched,
  ``price`` (no code of its own) is not, and ``main`` never is;
* release 2 changes ``bill``, folded into ``worker`` (and ``bill_now``): the build says
  ``worker`` never returns and refuses it until ``--immediate worker``; then running
  workers keep the old code while new calls (``bill_now``) get the new;
* release 3 backs release 1 out (a nop).

Under load, every release, a downgrade and a disable give exactly what a fresh build of
that release answers."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .helpers import klpcc
from .userspace_helpers import wait_listening

ROOT = Path(__file__).resolve().parents[1]
SERIES = ROOT / "fixtures" / "service" / "patches"
SRC = ROOT / "fixtures" / "service" / "src"
TICK = re.compile(r"^tick (\d+): quote\(5\)=(\d+) quote\(12\)=(\d+) bill=(\d+) worker=(\d+) served=\d+$")


def _build(src: Path, out: Path) -> Path:
    flags = klpcc("config", "--cflags").stdout.split()
    libs = klpcc("config", "--libs").stdout.split()
    out.mkdir(parents=True, exist_ok=True)
    exe = out / "server"
    subprocess.run(["cc", "-O2", *flags, "-o", str(exe), str(src / "server.c"), str(src / "requests.c"),
                    *libs], check=True)
    return exe


def _fresh(tmp: Path, release: int) -> tuple[int, int, int]:
    """What a fresh build of ``release`` answers: (quote(5), quote(12), bill)."""
    src = tmp / f"src{release}"
    shutil.copytree(SRC, src)
    if release:
        subprocess.run(["git", "init", "-q", str(src)], check=True)
        patches = [SERIES / n for n in (SERIES / "series").read_text().split()[:release]]
        subprocess.run(["git", "-C", str(src), "apply", *map(str, patches)], check=True)
    exe = _build(src, tmp / f"fresh{release}")
    out = subprocess.run([str(exe), "1", "1", "1"], capture_output=True, text=True, check=True,
                         timeout=60).stdout
    m = TICK.match(out.splitlines()[-1])
    assert m, out
    return int(m[2]), int(m[3]), int(m[4])


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("service")
    exe = _build(SRC, tmp / "live")
    bundles = {}
    for r in (1, 2, 3):
        bundles[r] = tmp / f"b{r}"
        res = klpcc("compile", str(SERIES), "--source", str(SRC), "-r", str(r), "-o", str(bundles[r]))
        assert res.returncode == 0, res.stderr
    return tmp, exe, bundles


def _build_patch(service, release: int, *extra: str) -> subprocess.CompletedProcess:
    tmp, exe, bundles = service
    return klpcc("build", str(bundles[release]), "--binary", str(exe), "-o", str(tmp / f"r{release}.so"),
                 "--force", "--format", "json", *extra)


def _functions(res: subprocess.CompletedProcess) -> dict[str, tuple[str, bool]]:
    assert res.returncode == 0, res.stderr
    return {f["name"]: (f["why"], f["immediate"]) for f in json.loads(res.stdout)["functions"]}


def test_the_compiled_code_decides_and_main_is_never_in_the_patch(service):
    r1 = _functions(_build_patch(service, 1))
    assert r1 == {"quote": ("inlined `price` changed", False)}, r1
    refused = _build_patch(service, 2)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "worker never returns" in refused.stderr and "inlined `bill` changed" in refused.stderr
    assert "--immediate worker" in refused.stderr
    r2 = _functions(_build_patch(service, 2, "--immediate", "worker"))
    assert r2 == {"quote": ("inlined `price` changed", False), "bill_now": ("inlined `bill` changed", False),
                  "worker": ("inlined `bill` changed", True)}, r2
    r3 = _functions(_build_patch(service, 3, "--immediate", "worker"))
    assert set(r3) == {"bill_now", "worker"}
    doc = json.loads(_build_patch(service, 3, "--immediate", "worker").stdout)
    assert doc["function_set"]["decided_by"] == "objects"
    assert "price (requests.c) leaves the patch" not in " ".join(doc["function_set"]["notes"])
    for res in (r1, r2, r3):
        assert "main" not in res
    # from the source alone, the program's DWARF is the evidence for what price was inlined into
    source = _functions(_build_patch(service, 1, "--source-level"))
    assert source == {"quote": ("inlined price (the program's DWARF)", False)}, source
    wrong = klpcc("build", str(service[2][1]), "--binary", str(service[1]), "-o", str(service[0] / "x.so"),
                  "--immediate", "nosuch")
    assert wrong.returncode == 2 and "--immediate nosuch" in wrong.stderr


def _ticks(log: Path) -> list[tuple[int, int, int, int, int]]:
    rows = []
    for line in log.read_text().splitlines():
        if m := TICK.match(line):
            rows.append(tuple(int(g) for g in m.groups()))
    return rows


def _after(log: Path, start: int, count: int = 2, timeout: float = 20) -> tuple[int, int, int, int, int]:
    """The ``count``-th tick printed after the ``start``-th one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = _ticks(log)
        if len(rows) >= start + count:
            return rows[start + count - 1]
        time.sleep(0.02)
    raise AssertionError(f"no tick after {start}: {log.read_text()[-500:]}")


def test_under_load_each_step_answers_as_a_fresh_build(service):
    tmp, exe, _ = service
    for r in (1, 2, 3):
        res = _build_patch(service, r, *(("--immediate", "worker") if r > 1 else ()))
        assert res.returncode == 0, res.stderr
    fresh = {r: _fresh(tmp, r) for r in (0, 1, 2, 3)}
    assert len(set(fresh.values())) == 4, fresh  # every release answers differently
    log = tmp / "live.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(exe), "16", "20", "0"], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_listening(proc.pid)
        first = _after(log, 0)
        assert first[1:4] == fresh[0], (first, fresh[0])
        worker_original = first[4]
        for step, release in (("apply", 1), ("apply", 2), ("apply", 3), ("downgrade", 1), ("disable", 0)):
            if step == "disable":
                res = klpcc("disable", "--pid", str(proc.pid))
            else:
                res = klpcc("apply", "--pid", str(proc.pid), str(tmp / f"r{release}.so"))
            assert res.returncode == 0, (step, release, res.stdout + res.stderr)
            now = _after(log, len(_ticks(log)))  # the second tick after the switch: wholly after it
            assert now[1:4] == fresh[release], (step, release, now, fresh[release])
            # the workers never left worker: their running frames keep the original code
            assert now[4] == worker_original, (step, release, now)
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)


def test_klpcc_toml_marks_a_release_immediate(service, tmp_path):
    """``immediate = [...]`` in a release's table of klpcc.toml, as --immediate does."""
    series = tmp_path / "patches"
    shutil.copytree(SERIES, series)
    (series / "klpcc.toml").write_text('[releases."0002-server-the-billing-fee-is-five"]\n'
                                       'immediate = ["worker"]\n')
    bundle = tmp_path / "b2"
    res = klpcc("compile", str(series), "--source", str(SRC), "-r", "2", "-o", str(bundle))
    assert res.returncode == 0, res.stderr
    assert json.loads((bundle / "manifest.json").read_text())["immediate"] == ["worker"]
    built = klpcc("build", str(bundle), "--binary", str(service[1]), "-o", str(tmp_path / "r2.so"),
                  "--format", "json")
    assert _functions(built)["worker"] == ("inlined `bill` changed", True)
    (series / "klpcc.toml").write_text('[releases.2]\nimmediate = "worker"\n')
    bad = klpcc("compile", str(series), "--source", str(SRC), "-r", "2", "-o", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "immediate must be a list of function names" in bad.stderr
