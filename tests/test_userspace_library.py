"""Shared libraries in running processes: a patch object for a library build (build
--library), one for a program and its library together, applied to every process that
maps the library (--all-mapping), to a process that loads the library after the apply
(dlopen) and unloads it, patches of the program and of the library side by side, and
patches installed in a store that come back when a process restarts."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from .helpers import klpcc, make_series, write_tree
from .userspace_helpers import wait_listening

TAX_H = "int tax(int cents);\nlong tax_calls(void);\nconst char *tax_version(void);\n"
TAX_C = """\
#include "tax.h"

static long calls;

static int rate(int cents)
{
	return cents > 1000 ? 20 : 10;
}

int tax(int cents)
{
	calls++;
	return cents * rate(cents) / 100;
}

long tax_calls(void)
{
	return calls;
}

const char *tax_version(void)
{
	return "tax 1.0";
}
"""

# taxd: worker threads call tax() all the time; the main thread answers one line per
# command: `tax N`, `calls`, `banner`; it says `start T` (T: tax of 2000) before anything.
MAIN_C = """\
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "lib/tax.h"

static volatile long sink;

__attribute__((noinline)) static const char *banner(void)
{
	return "taxd 1";
}

static void *worker(void *arg)
{
	(void)arg;
	for (;;) {
		sink += tax(1500);
		usleep(200);
	}
	return NULL;
}

int main(void)
{
	char line[128];
	pthread_t t;

	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("start %d\\n", tax(2000));
	for (int i = 0; i < 3; i++)
		pthread_create(&t, NULL, worker, NULL);
	while (fgets(line, sizeof(line), stdin)) {
		if (!strncmp(line, "tax ", 4))
			printf("%d\\n", tax(atoi(line + 4)));
		else if (!strncmp(line, "banner", 6))
			printf("%s\\n", banner());
		else
			printf("?\\n");
	}
	return 0;
}
"""

# taxdl: loads the library only when asked (`load`, `unload`, `tax N`).
DL_C = """\
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
	char line[128];
	void *h = NULL;
	int (*tax)(int) = NULL;

	(void)argc;
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("start\\n");
	while (fgets(line, sizeof(line), stdin)) {
		if (!strncmp(line, "load", 4)) {
			h = dlopen(argv[1], RTLD_NOW);
			tax = h ? (int (*)(int))dlsym(h, "tax") : NULL;
			printf("%s\\n", tax ? "loaded" : dlerror());
		} else if (!strncmp(line, "unload", 6)) {
			printf("%d\\n", dlclose(h));
			h = NULL;
			tax = NULL;
		} else if (!strncmp(line, "tax ", 4) && tax) {
			printf("%d\\n", tax(atoi(line + 4)));
		} else {
			printf("?\\n");
		}
	}
	return 0;
}
"""

BASE = {"lib/tax.h": TAX_H, "lib/tax.c": TAX_C, "main.c": MAIN_C, "dl.c": DL_C}
LIB_FIX = {"lib/tax.c": TAX_C.replace("cents > 1000 ? 20 : 10", "cents > 1000 ? 25 : 10")}
BOTH = {**LIB_FIX, "main.c": MAIN_C.replace('"taxd 1"', '"taxd 2"')}
PROGRAM_ONLY = {"main.c": MAIN_C.replace('"taxd 1"', '"taxd 3"')}
AMOUNTS = (5, 999, 1000, 1001, 2000, 123456)


@dataclass
class Built:
    tmp: Path
    lib: Path  # libtax.so, built with klpcc config --cflags
    other_lib: Path  # another build of it (-O1)
    taxd: Path  # taxd with the runtime, linked with lib
    plain: Path  # taxd without the runtime
    other: Path  # taxd with the runtime, linked with other_lib
    taxdl: Path  # taxdl with the runtime
    r1: Path  # the library fix, for lib
    r2: Path  # the fix and a program change, for taxd and lib together
    prog3: Path  # a program change only (another series), for taxd
    expected: dict[int, int]  # tax of AMOUNTS in a fresh build of the fix
    libs: list[str]


def _cc(*args: str | Path) -> None:
    done = subprocess.run(["cc", *map(str, args)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _lib(src: Path, out: Path, cflags: list[str], opt: str = "-O2") -> Path:
    out.mkdir(parents=True, exist_ok=True)
    _cc(opt, *cflags, "-fPIC", "-shared", "-Wl,--build-id", "-Wl,-soname,libtax.so", "-o", out / "libtax.so",
        src / "lib" / "tax.c")
    return out / "libtax.so"


def _taxd(src: Path, libdir: Path, out: Path, cflags: list[str], libs: list[str]) -> Path:
    _cc("-O2", *cflags, "-pthread", "-o", out, src / "main.c", f"-L{libdir}", "-ltax", f"-Wl,-rpath,{libdir}",
        *libs)
    return out


class Proc:
    """A running program answering one line per command."""

    def __init__(self, argv: list[str], env: dict | None = None):
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=env)
        self.pid = self.p.pid
        self.first = self.line()

    def line(self, timeout: float = 30.0) -> str:
        ready, _, _ = select.select([self.p.stdout], [], [], timeout)
        assert ready, f"process {self.pid} said nothing in {timeout} s"
        return self.p.stdout.readline().strip()

    def ask(self, cmd: str) -> str:
        self.p.stdin.write(cmd + "\n")
        self.p.stdin.flush()
        return self.line()

    def taxes(self) -> dict[int, int]:
        return {n: int(self.ask(f"tax {n}")) for n in AMOUNTS}

    def stop(self) -> str:
        self.p.terminate()
        try:
            _, err = self.p.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            _, err = self.p.communicate()
        return err


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Built:
    tmp = tmp_path_factory.mktemp("ulib")
    cflags = klpcc("config", "--cflags").stdout.split()
    libs = klpcc("config", "--libs").stdout.split()
    patches, src = make_series(tmp / "s1", BASE, [LIB_FIX, BOTH])
    lib = _lib(src, tmp / "lib", cflags)
    other_lib = _lib(src, tmp / "other-lib", cflags, "-O1")
    taxd = _taxd(src, lib.parent, tmp / "taxd", cflags, libs)
    plain = _taxd(src, lib.parent, tmp / "taxd-plain", cflags, [])
    other = _taxd(src, other_lib.parent, tmp / "taxd-other", cflags, libs)
    taxdl = tmp / "taxdl"
    _cc("-O2", *cflags, "-o", taxdl, src / "dl.c", *libs)
    out = {}
    for r, args in (("1", ["--library", lib]), ("2", ["--binary", taxd, "--library", lib])):
        bundle = tmp / f"b{r}"
        r_ = klpcc("compile", str(patches), "--source", str(src), "-r", r, "-o", str(bundle))
        assert r_.returncode == 0, r_.stderr
        out[r] = tmp / f"r{r}.so"
        r_ = klpcc("build", str(bundle), *map(str, args), "-o", str(out[r]))
        assert r_.returncode == 0, r_.stderr
    p3, src3 = make_series(tmp / "s3", BASE, [PROGRAM_ONLY], names=["0001-banner"])
    klpcc("compile", str(p3), "--source", str(src3), "-o", str(tmp / "b3"))
    prog3 = tmp / "p3.so"
    r_ = klpcc("build", str(tmp / "b3"), "--binary", str(taxd), "-o", str(prog3))
    assert r_.returncode == 0, r_.stderr
    # the answers of a fresh build of the fix
    fresh_src = write_tree(tmp / "fresh", {**BASE, **LIB_FIX})
    fresh_lib = _lib(fresh_src, tmp / "fresh-lib", [])
    fresh = Proc([str(_taxd(fresh_src, fresh_lib.parent, tmp / "fresh-taxd", [], []))])
    expected = fresh.taxes()
    fresh.stop()
    return Built(tmp, lib, other_lib, taxd, plain, other, taxdl, out["1"], out["2"], prog3, expected, libs)


@pytest.fixture
def store(tmp_path, monkeypatch) -> Path:
    """A store of this test's own, for the runtime in the processes and for klpcc."""
    monkeypatch.setenv("KLPCC_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


def _started(argv: list[str]) -> Proc:
    p = Proc(argv)
    wait_listening(p.pid)
    return p


def test_a_patch_object_for_a_library(built):
    r = klpcc("build", str(built.tmp / "b1"), "--library", str(built.lib), "-o", str(built.tmp / "x.so"),
              "--format", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    [obj] = doc["objects"]
    assert (obj["kind"], obj["name"]) == ("library", "libtax.so")
    assert [(f["name"], f["object"]) for f in doc["functions"]] == [("tax", "libtax.so")]
    assert [(x["name"], x["object"]) for x in doc["refs"]] == [("calls", 0)]
    # the library's code is not the program's: a unit of the library is in none of its objects
    r = klpcc("build", str(built.tmp / "b1"), "--binary", str(built.taxd), "-o", str(built.tmp / "y.so"))
    assert r.returncode == 2 and "lib/tax.c: is in none of the objects" in r.stderr, r.stderr
    assert not (built.tmp / "y.so").exists()
    r = klpcc("build", str(built.tmp / "b1"), "--library", str(built.lib), "--library", str(built.lib),
              "-o", str(built.tmp / "z.so"))
    assert r.returncode == 2 and "the same object given twice" in r.stderr


def test_every_process_mapping_the_library(built, store):
    a, b = _started([str(built.taxd)]), _started([str(built.taxd)])
    plain = Proc([str(built.plain)])
    other = _started([str(built.other)])
    try:
        before = a.taxes()
        r = klpcc("apply", str(built.r1), "--all-mapping", str(built.lib), "--format", "json")
        # a process that maps the build without the runtime is reported, not a failure
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        results = {p["pid"]: p["result"] for p in doc["processes"]}
        assert results == {a.pid: "applied", b.pid: "applied", plain.pid: "no-runtime",
                           other.pid: "different-build"}, doc
        assert doc["library"]["build_id"] and doc["patch"] == str(built.r1)
        for p in (a, b):
            assert p.taxes() == built.expected != before
        assert other.taxes() == before and plain.taxes() == before
        # every process that runs the runtime says what it has
        r = klpcc("status", "--all", "--format", "json")
        assert r.returncode == 0, r.stderr
        st = {p["pid"]: p for p in json.loads(r.stdout)["processes"]}
        assert {a.pid, b.pid, other.pid} <= set(st) and plain.pid not in st
        assert [x["name"] for x in st[a.pid]["answer"]["patches"]] == ["0001-release-1"]
        assert st[other.pid]["answer"]["patches"] == []
        text = klpcc("apply", str(built.r1), "--all-mapping", str(built.lib)).stdout
        assert f"process {plain.pid} (taxd-plain): not patchable: it maps libtax.so but runs no klpcc" in text
        assert f"process {other.pid} (taxd-other): not patchable: it maps another build of libtax" in text
        r = klpcc("disable", "--pid", str(a.pid), "--pid", str(b.pid), "--format", "json")
        assert r.returncode == 0, r.stderr
        assert [p["result"] for p in json.loads(r.stdout)["processes"]] == ["disabled", "disabled"]
        assert a.taxes() == before == b.taxes()
    finally:
        for p in (a, b, plain, other):
            p.stop()


def test_a_library_loaded_after_the_apply(built):
    p = _started([str(built.taxdl), str(built.lib)])
    try:
        r = klpcc("apply", "--pid", str(p.pid), str(built.r1), "--format", "json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["pending"] == ["tax"]
        assert "switched when their library loads: tax" in klpcc("apply", "--pid", str(p.pid),
                                                                 str(built.r1)).stdout
        assert p.ask("load") == "loaded"
        assert p.taxes() == built.expected  # patched before dlopen returned
        [patch] = json.loads(klpcc("status", "--pid", str(p.pid), "--format", "json").stdout)["patches"]
        assert patch["objects"][0]["loaded"] and not patch["functions"][0]["pending"]
        assert p.ask("unload") == "0"
        [patch] = json.loads(klpcc("status", "--pid", str(p.pid), "--format", "json").stdout)["patches"]
        assert not patch["objects"][0]["loaded"] and patch["functions"][0]["pending"]
        assert p.ask("load") == "loaded"
        assert p.taxes() == built.expected  # loaded again: patched again
        assert klpcc("disable", "--pid", str(p.pid)).returncode == 0
        assert p.taxes() != built.expected
    finally:
        assert "klpcc:" not in p.stop()


def test_program_and_library_in_one_patch_and_side_by_side(built):
    p = _started([str(built.taxd)])
    try:
        before = p.taxes()
        assert klpcc("apply", "--pid", str(p.pid), str(built.r2)).returncode == 0
        assert p.taxes() == built.expected and p.ask("banner") == "taxd 2"
        st = json.loads(klpcc("status", "--pid", str(p.pid), "--format", "json").stdout)
        assert {o["name"] for o in st["patches"][0]["objects"]} == {"taxd", "libtax.so"}
        # the library's own patch replaces r2 (they share the library): the program's
        # function goes back (a nop)
        r = json.loads(klpcc("apply", "--pid", str(p.pid), str(built.r1), "--format", "json").stdout)
        assert (r["replaced"], r["nops"]) == (["0002-release-2"], ["banner"]), r
        assert p.ask("banner") == "taxd 1" and p.taxes() == built.expected
        # a program patch of another series changes other objects: installed beside it
        r = json.loads(klpcc("apply", "--pid", str(p.pid), str(built.prog3), "--format", "json").stdout)
        assert r["ok"] and r["replaced"] == [], r
        assert p.ask("banner") == "taxd 3" and p.taxes() == built.expected
        st = json.loads(klpcc("status", "--pid", str(p.pid), "--format", "json").stdout)
        assert [x["state"] for x in st["patches"]] == ["installed", "installed"]
        r = klpcc("disable", "--pid", str(p.pid))
        assert r.returncode == 1 and "2 patches are installed" in r.stderr and "name the one" in r.stderr
        assert klpcc("disable", "--pid", str(p.pid), "--patch", "0001-banner").returncode == 0
        assert p.ask("banner") == "taxd 1" and p.taxes() == built.expected
        r = klpcc("disable", "--pid", str(p.pid), "--patch", "nothing-such")
        assert r.returncode == 1 and "no installed patch is called nothing-such" in r.stderr
        assert klpcc("disable", "--pid", str(p.pid)).returncode == 0
        assert p.taxes() == before
    finally:
        p.stop()


def test_installed_patches_come_back_after_a_restart(built, store):
    plain = _started([str(built.taxd)])
    unpatched = plain.first
    plain.stop()
    r = klpcc("install", str(built.r1), "--format", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [(x["object"], x["action"]) for x in doc["records"]] == [("libtax.so", "installed")]
    assert klpcc("install", str(built.r1)).stdout.startswith("unchanged 0001-release-1 for libtax.so")
    # applied before main: the first thing the program computes is patched
    p = _started([str(built.taxd)])
    try:
        assert p.first == f"start {built.expected[2000]}" != unpatched
        assert p.taxes() == built.expected
        st = json.loads(klpcc("status", "--pid", str(p.pid), "--format", "json").stdout)
        assert st["patches"][0]["path"] == str(store / "userspace" / f"{_bid(built.lib)}.so")
    finally:
        assert "applied 0001-release-1, installed for" in p.stop()
    # a library loaded later: patched from the store as it loads
    q = _started([str(built.taxdl), str(built.lib)])
    try:
        assert q.ask("load") == "loaded" and q.taxes() == built.expected
    finally:
        q.stop()
    # a patch of the program and the library is recorded for the program alone: it
    # covers the library when taxd runs; other programs keep the library's own record
    r = json.loads(klpcc("install", str(built.r2), "--format", "json").stdout)
    assert [(x["object"], x["action"]) for x in r["records"]] == [("taxd", "installed")]
    p = _started([str(built.taxd)])
    try:
        assert p.ask("banner") == "taxd 2" and p.taxes() == built.expected
    finally:
        assert "applied 0002-release-2, installed for the program" in p.stop()
    q = _started([str(built.taxdl), str(built.lib)])
    try:
        assert q.ask("load") == "loaded" and q.taxes() == built.expected
    finally:
        assert "applied 0001-release-1" in q.stop()
    # an older release of the series for the program is refused without --force
    older = built.tmp / "r1-both.so"
    if not older.exists():
        assert klpcc("build", str(built.tmp / "b1"), "--binary", str(built.taxd), "--library",
                     str(built.lib), "-o", str(older)).returncode == 0
    r = klpcc("install", str(older))
    assert r.returncode == 2, r.stderr
    assert "a newer release (0002-release-2) is installed for taxd" in r.stderr
    assert klpcc("install", str(older), "--force").returncode == 0
    listed = json.loads(klpcc("status", "--all", "--format", "json").stdout)["installed"]
    assert {(x["object"], x["release"], x["trusted"]) for x in listed} == {
        ("libtax.so", "0001-release-1", True), ("taxd", "0001-release-1", True)}
    # objects no record points at are gone (r2's)
    assert len(list((store / "userspace" / "objects").iterdir())) == 2
    r = klpcc("uninstall", str(built.lib))
    assert r.returncode == 0 and r.stdout.startswith("removed 0001-release-1 for libtax.so")
    assert "nothing was installed" in klpcc("uninstall", str(built.lib)).stdout
    assert "nothing was installed" in klpcc("uninstall", str(built.r2)).stdout  # not the one in force
    assert klpcc("uninstall", str(built.taxd)).stdout.startswith("removed 0001-release-1 for taxd")
    p = _started([str(built.taxd)])
    try:
        assert p.first == unpatched
    finally:
        assert "klpcc:" not in p.stop()


def test_a_store_others_may_write_is_not_trusted(built, store):
    assert klpcc("install", str(built.r1)).returncode == 0
    os.chmod(store / "userspace", 0o777)
    p = _started([str(built.taxd)])
    try:
        assert p.taxes() != built.expected
    finally:
        err = p.stop()
    assert "is not a directory of uid 0 or root that only its owner may write" in err or \
        "only its owner may write; its patches are not applied" in err, err


def _bid(path: Path) -> str:
    from klpcc.elfinfo import build_id

    return build_id(str(path)) or ""


def test_bad_inputs(built, store, tmp_path):
    junk = write_tree(tmp_path / "j", {"junk.so": "not an ELF file\n"}) / "junk.so"
    for args, words in [
        (["install", str(junk)], f"{junk}: is not an ELF file klpcc can read"),
        (["install", str(built.lib)], "is not a klpcc patch object (no .klpcc.manifest section)"),
        (["install", str(tmp_path / "none.so")], "none.so: no such file"),
        (["uninstall", str(junk)], "is not an ELF file"),
        (["install", "--kernel", str(built.r1)], "is not a kernel module (no .modinfo section)"),
        (["apply", str(built.r1), "--all-mapping", str(built.lib), "--pid", "1"],
         "--all-mapping and --tree find"),
        (["apply", str(built.r1), "--all-mapping", str(junk)], "has no GNU build-id"),
        (["apply", str(built.r1), "--all-mapping", str(built.other_lib)], "is for libtax.so"),
        (["install", "--kernel", str(tmp_path)], "is a directory"),
        (["uninstall", "--kernel", ".."], "neither a livepatch module nor a kernel release"),
        (["apply", str(built.r1)], "say which processes"),
        (["apply", str(built.r1), "--pid", "1", "--pid", "2", "--socket", "/x"], "--socket names one"),
        (["status"], "say which process: --pid PID, or --all"),
        (["status", "--all", "--pid", "1"], "--all asks every process"),
        (["build", str(built.tmp / "b1"), "-o", str(tmp_path / "o.so")], "--library LIB.so"),
    ]:
        r = klpcc(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert words in r.stderr and r.stderr.count("\n") == 1, (args, r.stderr)
    assert not (store / "userspace").exists()
    # processes named that are not there: the command fails
    r = klpcc("apply", str(built.r1), "--pid", "999999990", "--pid", "999999991")
    assert r.returncode == 1 and "2 gone" in r.stdout, r.stdout + r.stderr
    env = {**os.environ, "KLPCC_STATE_DIR": "relative/state"}
    r = subprocess.run([sys.executable, "-m", "klpcc", "install", str(built.r1)], capture_output=True,
                       text=True, env=env, check=False)
    assert r.returncode == 2 and "KLPCC_STATE_DIR=relative/state is not an absolute path" in r.stderr
    env = {**os.environ, "KLPCC_STATE_DIR": ""}
    r = subprocess.run([sys.executable, "-m", "klpcc", "install", str(built.r1)], capture_output=True,
                       text=True, env=env, check=False)
    assert r.returncode == 2 and "KLPCC_STATE_DIR is set and empty" in r.stderr


# ---- a real library: markupsafe's C accelerator in Python processes --------------------------

# MarkupSafe 3.0.2 fixed escaping a str subclass (PyUnicode_CheckExact -> PyUnicode_Check in
# escape_unicode); 3.0.1's accelerator fails with SystemError.  The extension module is a
# shared library CPython dlopens; the processes run the runtime with LD_PRELOAD.
APP = """\
import sys, threading
sys.path.insert(0, sys.argv[1])

class Sub(str):
    pass

def esc(x):
    import _speedups
    try:
        return repr(_speedups._escape_inner(x))
    except Exception as e:
        return type(e).__name__

def work():
    while True:
        esc("<a href='x'>"); esc(Sub("<b>"))

if sys.argv[2] == "now":
    import _speedups
    for _ in range(3):
        threading.Thread(target=work, daemon=True).start()
print("start " + (esc(Sub("<i>")) if sys.argv[2] == "now" else "-"), flush=True)
for line in sys.stdin:
    if line.strip() == "import":
        import _speedups
        print("imported", flush=True)
    else:
        print(esc("<a&'\\">") + " " + esc(Sub("<b>")) + " " + esc(Sub("")), flush=True)
"""


@pytest.fixture(scope="module")
def speedups(tmp_path_factory):
    import sysconfig

    from .test_real_sources import fetch_sdists, write_series

    tmp = tmp_path_factory.mktemp("markupsafe")
    old, new = fetch_sdists("markupsafe", ("3.0.1", "3.0.2"), "src/markupsafe")
    patches = write_series(tmp, [old, new], ["0001-markupsafe-3.0.2"], ["src/markupsafe"])
    include = sysconfig.get_paths()["include"]
    assert (Path(include) / "Python.h").exists(), (
        f"{include}/Python.h is missing (apt-get install python3-dev)")
    cflags = klpcc("config", "--cflags").stdout.split()
    ext, fresh = tmp / "ext", tmp / "fresh"
    for out, src, flags in ((ext, old, cflags), (fresh, new, [])):
        out.mkdir()
        _cc("-O2", *flags, f"-I{include}", "-fPIC", "-shared", "-Wl,--build-id", "-o", out / "_speedups.so",
            src / "src" / "markupsafe" / "_speedups.c")
    r = klpcc("compile", str(patches), "--source", str(old), "-o", str(tmp / "bundle"))
    assert r.returncode == 0, r.stderr
    fix = tmp / "fix.so"
    r = klpcc("build", str(tmp / "bundle"), "--library", str(ext / "_speedups.so"),
              "--cflags", f"-I{include}", "-o", str(fix))
    assert r.returncode == 0, r.stderr
    app = tmp / "app.py"
    app.write_text(APP)
    expected = Proc([sys.executable, str(app), str(fresh), "now"])
    answer = expected.ask("ask")
    expected.stop()
    return tmp, app, ext, fix, answer, expected.first


def _python(app: Path, ext: Path, when: str) -> Proc:
    env = {**os.environ, "LD_PRELOAD": klpcc("config", "--preload").stdout.strip()}
    p = Proc([sys.executable, str(app), str(ext), when], env=env)
    wait_listening(p.pid)
    return p


def test_a_real_library_fix_in_running_python_processes(speedups, store):
    tmp, app, ext, fix, expected, first = speedups
    assert "SystemError" not in expected and expected.endswith("'&lt;b&gt;' ''")
    running = [_python(app, ext, "now") for _ in range(3)]
    later = _python(app, ext, "later")
    try:
        assert all(p.ask("ask") != expected for p in running)  # 3.0.1: SystemError
        r = klpcc("apply", str(fix), "--all-mapping", str(ext / "_speedups.so"), "--format", "json")
        assert r.returncode == 0, r.stdout + r.stderr
        done = {p["pid"]: p["result"] for p in json.loads(r.stdout)["processes"]}
        assert done == {p.pid: "applied" for p in running}  # `later` does not map it yet
        assert all(p.ask("ask") == expected for p in running)
        # applied before the import: patched as CPython loads it
        r = klpcc("apply", "--pid", str(later.pid), str(fix), "--format", "json")
        assert json.loads(r.stdout)["pending"] == ["escape_unicode"], r.stdout
        assert later.ask("import") == "imported" and later.ask("ask") == expected
        # installed: a process started later comes up patched
        assert klpcc("install", str(fix)).returncode == 0
        again = _python(app, ext, "now")
        try:
            assert again.first == first and again.ask("ask") == expected
        finally:
            assert "applied 0001-markupsafe-3.0.2, installed for" in again.stop()
    finally:
        for p in (*running, later):
            p.stop()


PLUGIN_HOST_C = """\
#include <dlfcn.h>
#include <stdio.h>
int main(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		void *h = dlopen(argv[i], RTLD_NOW);
		printf("%s: %s\\n", argv[i], h ? "found" : dlerror());
	}
	return 0;
}
"""


@pytest.mark.parametrize("how", ["linked", "preloaded"])
@pytest.mark.parametrize("tag", ["runpath", "rpath"])
def test_dlopen_searches_as_its_caller(built, tmp_path, how, tag):
    """The runtime's dlopen finds what the C library's finds for the program: a name
    without a slash in the program's RUNPATH or RPATH ($ORIGIN/plugins), a path with
    $ORIGIN, LD_LIBRARY_PATH before RUNPATH."""
    (tmp_path / "plugins").mkdir()
    (tmp_path / "other").mkdir()
    for d in ("plugins", "other"):
        src = tmp_path / f"{d}.c"
        src.write_text(f'const char *where(void) {{ return "{d}"; }}\n')
        _cc("-fPIC", "-shared", "-o", tmp_path / d / "libplug.so", src)
    host = tmp_path / "host.c"
    host.write_text(PLUGIN_HOST_C)
    flag = "--enable-new-dtags" if tag == "runpath" else "--disable-new-dtags"
    libs = built.libs if how == "linked" else []
    _cc("-o", tmp_path / "host", host, f"-Wl,{flag},-rpath,$ORIGIN/plugins", *libs)
    env = dict(os.environ)
    if how == "preloaded":
        env["LD_PRELOAD"] = klpcc("config", "--preload").stdout.strip()
    names = ["libplug.so", "$ORIGIN/plugins/libplug.so", "libnothing.so"]
    out = subprocess.run([str(tmp_path / "host"), *names], capture_output=True, text=True, env=env,
                         check=True).stdout.splitlines()
    assert out[:2] == ["libplug.so: found", "$ORIGIN/plugins/libplug.so: found"], out
    assert out[2].startswith("libnothing.so: libnothing.so: cannot open shared object file"), out
    if tag == "runpath":  # LD_LIBRARY_PATH comes first; with RPATH, the RPATH does
        env["LD_LIBRARY_PATH"] = str(tmp_path / "other")
        code = 'const char *(*w)(void) = dlsym(h, "where"); printf("%s\\n", w());'
        host.write_text(PLUGIN_HOST_C.replace('printf("%s: %s\\n", argv[i], h ? "found" : dlerror());',
                                              code))
        _cc("-o", tmp_path / "host", host, f"-Wl,{flag},-rpath,$ORIGIN/plugins", *libs)
        out = subprocess.run([str(tmp_path / "host"), "libplug.so"], capture_output=True, text=True, env=env,
                             check=True).stdout
        assert out == "other\n"


def test_patches_side_by_side_may_not_share_a_state_id(built, tmp_path):
    """klpcc_get_state answers from every patch installed: a state id has one owner."""
    lib_state = {"lib/tax.c": LIB_FIX["lib/tax.c"] + "\nKLPCC_STATE(5, 1);\n"}
    prog_state = {"main.c": PROGRAM_ONLY["main.c"] + "\nKLPCC_STATE(5, 1);\n"}
    objects = {}
    for name, release, target in (("lib", lib_state, ["--library", built.lib]),
                                  ("prog", prog_state, ["--binary", built.taxd])):
        patches, src = make_series(tmp_path / name, BASE, [release], names=[f"0001-{name}-state"])
        bundle = tmp_path / f"b-{name}"
        assert klpcc("compile", str(patches), "--source", str(src), "-o", str(bundle)).returncode == 0
        objects[name] = tmp_path / f"{name}.so"
        r = klpcc("build", str(bundle), *map(str, target), "-o", str(objects[name]))
        assert r.returncode == 0, r.stderr
    p = _started([str(built.taxd)])
    try:
        assert klpcc("apply", "--pid", str(p.pid), str(objects["lib"])).returncode == 0
        r = klpcc("apply", "--pid", str(p.pid), str(objects["prog"]))
        assert r.returncode == 1, r.stdout
        assert ("apply failed at state: 0001-prog-state declares state 5, which 0001-lib-state (installed "
                "beside it, for other objects) declares too") in r.stderr
        assert p.ask("banner") == "taxd 1" and p.taxes() == built.expected
    finally:
        p.stop()


def _entry_offset(lib: Path, name: str) -> int:
    """The file offset of function ``name``'s entry in ``lib``."""
    from elftools.elf.elffile import ELFFile

    with open(lib, "rb") as fh:
        elf = ELFFile(fh)
        sym = next(s for s in elf.get_section_by_name(".symtab").iter_symbols() if s.name == name)
        seg = next(g for g in elf.iter_segments() if g["p_type"] == "PT_LOAD"
                   and g["p_vaddr"] <= sym["st_value"] < g["p_vaddr"] + g["p_filesz"])
        return sym["st_value"] - seg["p_vaddr"] + seg["p_offset"]


def test_a_library_that_failed_to_patch_is_patched_when_loaded_again(built, tmp_path):
    """A copy of the build whose entry is not the five NOPs cannot be patched as it loads:
    said once, in status too; unloaded and the right file loaded at that path, it is."""
    deep = tmp_path / ("d" * 120) / ("e" * 120)  # a path longer than 256 characters
    deep.mkdir(parents=True)
    lib = deep / "libtax.so"
    data = bytearray(built.lib.read_bytes())
    data[_entry_offset(built.lib, "tax")] = 0xCC  # a breakpoint, same build-id
    lib.write_bytes(bytes(data))
    p = _started([str(built.taxdl), str(lib)])
    try:
        assert klpcc("apply", "--pid", str(p.pid), str(built.r1)).returncode == 0
        assert p.ask("load") == "loaded"
        [patch] = json.loads(klpcc("status", "--pid", str(p.pid), "--format", "json").stdout)["patches"]
        [obj] = patch["objects"]
        assert not obj["loaded"] and "five NOPs" in obj["error"], obj
        assert p.ask("unload") == "0"
        tmp = deep / "new.so"
        tmp.write_bytes(built.lib.read_bytes())
        tmp.rename(lib)
        assert p.ask("load") == "loaded"
        assert p.taxes() == built.expected  # patched as it loaded, at a path of 260 characters
        [patch] = json.loads(klpcc("status", "--pid", str(p.pid), "--format", "json").stdout)["patches"]
        assert patch["objects"][0]["loaded"] and "error" not in patch["objects"][0]
    finally:
        err = p.stop()
    assert err.count("cannot patch") == 1, err
