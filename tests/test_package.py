"""klpcc as users install it: a wheel built from a copy of the source tree (``pip
wheel``) installed into a fresh virtual environment, then used from a directory outside
any checkout; and ``pip install .`` into another.

Every package must be in the installed tree, and the runtime sources must be found
through the package: the userspace runtime is built from them (``config --libs``),
the kernel target copies its header from them (``build --source-only``), and the
loader ships executable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from .conftest import FIXTURES, ROOT


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)
    shown = " ".join(map(str, cmd))
    assert proc.returncode == 0, f"{shown} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _copy_of_the_tree(src: Path) -> None:
    """The tracked files as the work tree has them, and new files of the package."""
    files = _run(["git", "ls-files", "-z"], cwd=ROOT).stdout.split("\0")
    for name in filter(None, files):
        if not (ROOT / name).is_file():  # deleted in the work tree, not yet committed
            continue
        dest = src / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes((ROOT / name).read_bytes())
        os.chmod(dest, (ROOT / name).stat().st_mode & 0o777)
    for path in ROOT.rglob("*"):  # files new in the work tree count too (a test run before a commit)
        rel = path.relative_to(ROOT)
        if (path.is_file() and rel.parts[0] in ("klpcc", "runtime") and "__pycache__" not in rel.parts
                and not (src / rel).exists()):
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_bytes(path.read_bytes())
            os.chmod(src / rel, path.stat().st_mode & 0o777)


@pytest.fixture(scope="module")
def source_copy(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("package") / "src"
    _copy_of_the_tree(src)
    return src


@pytest.fixture(scope="module")
def installed(source_copy, tmp_path_factory) -> tuple[Path, Path]:
    """A wheel built from the tree, installed into a fresh venv: (the venv's bin
    directory, a work directory outside the checkout)."""
    tmp = tmp_path_factory.mktemp("wheel")
    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    _run([str(bin_dir / "python"), "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp / "dist"), "."],
         cwd=source_copy)
    (wheel,) = (tmp / "dist").glob("klpcc-*.whl")
    _run([str(bin_dir / "python"), "-m", "pip", "install", "-q", str(wheel)], cwd=tmp)
    work = tmp / "work"
    work.mkdir()
    return bin_dir, work


def test_pip_install_of_the_tree_works(source_copy, tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    _run([str(bin_dir / "python"), "-m", "pip", "install", "-q", "."], cwd=source_copy)
    patches, src = FIXTURES / "demo" / "patches", FIXTURES / "demo" / "src"
    out = _run([str(bin_dir / "klpcc"), "analyze", str(patches / "series"), "--source", str(src),
                "--format", "json"], cwd=tmp_path)
    assert json.loads(out.stdout)["nops"] == ["log_line"]
    assert _site_packages(bin_dir).is_relative_to(env_dir)


def _site_packages(bin_dir: Path) -> Path:
    out = _run([str(bin_dir / "python"), "-c", "import klpcc, os; print(os.path.dirname(klpcc.__file__))"],
               cwd="/")
    return Path(out.stdout.strip())


def test_every_package_and_runtime_file_is_installed(installed):
    bin_dir, _ = installed
    pkg = _site_packages(bin_dir)
    assert "site-packages" in str(pkg) and not str(pkg).startswith(str(ROOT)), pkg
    wanted = {p.parent.relative_to(ROOT / "klpcc").as_posix() for p in (ROOT / "klpcc").rglob("__init__.py")}
    have = {p.parent.relative_to(pkg).as_posix() for p in pkg.rglob("__init__.py")}
    assert wanted <= have, f"packages missing from the installed tree: {sorted(wanted - have)}"
    runtime = pkg / "runtime"
    for path in (ROOT / "runtime").rglob("*"):
        rel = path.relative_to(ROOT / "runtime")
        if path.is_file() and "__pycache__" not in rel.parts and not path.name.startswith("."):
            assert (runtime / rel).is_file(), f"runtime/{rel} is not installed"
    assert os.access(runtime / "kernel" / "klpcc-load", os.X_OK), "the loader is not executable"
    loader = _run([str(bin_dir / "klpcc"), "config", "--loader"], cwd="/").stdout.strip()
    assert Path(loader) == runtime / "kernel" / "klpcc-load"
    _run(["sh", "-n", loader])
    # every module imports (the CLI alone would not reach them all)
    mods = [".".join(("klpcc", *p.relative_to(pkg).with_suffix("").parts)).removesuffix(".__init__")
            for p in pkg.rglob("*.py") if p.name != "__main__.py"]
    _run([str(bin_dir / "python"), "-c", f"import importlib; [importlib.import_module(m) for m in {mods!r}]"],
         cwd="/")


def test_analyze_and_compile_the_demo_from_elsewhere(installed):
    bin_dir, work = installed
    patches, src = FIXTURES / "demo" / "patches", FIXTURES / "demo" / "src"
    out = _run([str(bin_dir / "klpcc"), "analyze", str(patches / "series"), "--source", str(src),
                "--format", "json"], cwd=work)
    doc = json.loads(out.stdout)
    assert doc["schema"] == "klpcc.analysis/1" and doc["nops"] == ["log_line"]
    assert {f["key"]: f["change"] for f in doc["functions"]}["store_count"] == "modified"
    _run([str(bin_dir / "klpcc"), "compile", str(patches / "series"), "--source", str(src), "-o", "bundle"],
         cwd=work)
    built = _run([str(bin_dir / "klpcc"), "build", "bundle", "--source-only", "-o", "module",
                  "--format", "json"], cwd=work)
    assert json.loads(built.stdout)["schema"] == "klpcc.kernel-build/1"
    header = (work / "module" / "klpcc_livepatch.h").read_text()
    assert header == (ROOT / "runtime" / "kernel" / "klpcc_livepatch.h").read_text()


def test_config_builds_the_runtime_from_the_installed_sources(installed, tmp_path):
    bin_dir, work = installed
    env = dict(os.environ, KLPCC_CACHE=str(tmp_path / "cache"))
    libs = _run([str(bin_dir / "klpcc"), "config", "--libs"], cwd=work, env=env).stdout.split()
    libdir = Path(next(a for a in libs if a.startswith("-L"))[2:])
    assert libdir.is_relative_to(tmp_path / "cache") and (libdir / "libklpcc.so").is_file(), libs
    preload = _run([str(bin_dir / "klpcc"), "config", "--preload"], cwd=work, env=env).stdout.strip()
    assert Path(preload) == libdir / "libklpcc.so"
    # a program linked with it starts its runtime (the control socket appears)
    prog = tmp_path / "prog.c"
    prog.write_text("#include <unistd.h>\nint main(void) { sleep(30); return 0; }\n")
    cflags = _run([str(bin_dir / "klpcc"), "config", "--cflags"], cwd=work, env=env).stdout.split()
    _run(["cc", *cflags, str(prog), "-o", str(tmp_path / "prog"), *libs])
    sock_dir = tmp_path / "sockets"
    proc = subprocess.Popen([str(tmp_path / "prog")], env=dict(env, KLPCC_SOCKET_DIR=str(sock_dir)))
    try:
        status = None
        for _ in range(100):
            if (sock_dir / f"{proc.pid}.sock").exists():
                status = subprocess.run([str(bin_dir / "klpcc"), "status", "--pid", str(proc.pid), "--format",
                                         "json"], capture_output=True, text=True, cwd=work,
                                        env=dict(env, KLPCC_SOCKET_DIR=str(sock_dir)), check=False)
                break
            subprocess.run(["sleep", "0.05"], check=False)
        assert status is not None and status.returncode == 0, status
        assert json.loads(status.stdout)["patches"] == []
    finally:
        proc.kill()
        proc.wait()


def test_the_checkout_is_not_what_runs(installed):
    """Sanity for the tests above: the installed klpcc does not import from the checkout."""
    bin_dir, work = installed
    out = _run([str(bin_dir / "python"), "-c", "import klpcc.runtime as r; print(r.userspace())"], cwd=work)
    assert not out.stdout.strip().startswith(str(ROOT)), out.stdout
    assert sys.prefix != str(bin_dir.parent)


def test_version_and_help_start_without_the_pipeline():
    # start-up cost: `klpcc --version` imports neither the command line library nor the
    # pipeline; `--help` imports the command line but not tree-sitter, networkx, ELF or C parsers
    def imported(*args: str) -> tuple[str, set[str]]:
        proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "klpcc", *args],
                              capture_output=True, text=True, check=True)
        mods = {line.split("|")[-1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
        return proc.stdout, mods

    out, mods = imported("--version")
    assert out.strip().startswith("klpcc, version ")
    assert not {m for m in mods if m.startswith(("click", "klpcc.api", "tree_sitter"))}, sorted(mods)
    out, mods = imported("--help")
    assert "analyze" in out and "click" in mods
    heavy = {m for m in mods
             if m.split(".")[0] in ("tree_sitter", "networkx", "elftools", "pycparser", "unidiff")}
    assert not heavy, sorted(heavy)
