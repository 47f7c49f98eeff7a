"""klpcc apply/status/disable against a running program: the refusals a user meets,
through the command line."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from .helpers import klpcc
from .userspace_helpers import wait_listening

ROOT = Path(__file__).resolve().parents[1]
SERIES = ROOT / "fixtures" / "demo" / "live" / "patches"
SRC = ROOT / "fixtures" / "demo" / "live" / "src"


def _service(out: Path, extra: str = "") -> Path:
    flags = klpcc("config", "--cflags").stdout.split()
    libs = klpcc("config", "--libs").stdout.split()
    exe = out / "service"
    subprocess.run(["cc", "-O2", *extra.split(), *flags, "-o", str(exe), str(SRC / "service.c"),
                    str(SRC / "shop.c"), *libs], check=True)
    return exe


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ucli")
    exe = _service(tmp)
    other = tmp / "other"
    other.mkdir()
    other_exe = _service(other, "-O1")  # another build of the same program
    bundle = tmp / "b2"
    assert klpcc("compile", str(SERIES), "--source", str(SRC), "-r", "2", "-o", str(bundle)).returncode == 0
    good = tmp / "r2.so"
    assert klpcc("build", str(bundle), "--binary", str(exe), "-o", str(good)).returncode == 0
    foreign = tmp / "r2-other.so"
    assert klpcc("build", str(bundle), "--binary", str(other_exe), "-o", str(foreign)).returncode == 0
    proc = subprocess.Popen([str(exe), "2", "50", "0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_listening(proc.pid)
    yield proc.pid, good, foreign, tmp
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)


def test_apply_status_disable(running):
    pid, good, _, _ = running
    r = klpcc("apply", "--pid", str(pid), str(good), "--format", "json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["patch"] == "0002-shop-bulk-discount"
    r = klpcc("status", "--pid", str(pid), "--format", "json")
    doc = json.loads(r.stdout)
    assert [p["name"] for p in doc["patches"]] == ["0002-shop-bulk-discount"]
    assert {f["name"] for f in doc["patches"][0]["functions"]} == {"greeting", "serve"}
    r = klpcc("disable", "--pid", str(pid))
    assert r.returncode == 0 and r.stdout.startswith("disabled 0002-shop-bulk-discount"), r.stdout + r.stderr
    assert "no patch installed" in klpcc("status", "--pid", str(pid)).stdout


def test_a_patch_for_another_build_is_refused(running):
    pid, _, foreign, _ = running
    r = klpcc("apply", "--pid", str(pid), str(foreign))
    assert r.returncode == 1
    assert r.stderr.startswith("klpcc: error: apply failed at build-id: "), r.stderr
    assert "no patch installed" in klpcc("status", "--pid", str(pid)).stdout


def test_bad_targets(running, tmp_path):
    pid, good, _, _ = running
    r = klpcc("apply", "--pid", "999999999", str(good))
    assert r.returncode == 2 and "no process 999999999" in r.stderr
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        r = klpcc("apply", "--pid", str(sleeper.pid), str(good))
        assert r.returncode == 2 and "runs no klpcc runtime" in r.stderr
    finally:
        sleeper.kill()
        sleeper.wait()
    r = klpcc("apply", "--pid", str(pid), str(tmp_path / "missing.so"))
    assert r.returncode == 2 and "no patch object" in r.stderr
    truncated = tmp_path / "truncated.so"
    truncated.write_bytes(good.read_bytes()[:4000])
    r = klpcc("apply", "--pid", str(pid), str(truncated))
    assert r.returncode == 1 and "apply failed at read" in r.stderr, r.stderr
