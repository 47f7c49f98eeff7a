"""A release that changes only a header: the unchanged C files that read it (directly
or through another header) travel in the bundle, and their compiled code decides what
is patched -- a changed ``static inline`` patches its callers in files the release does
not touch, a changed macro the functions that expand it, and nothing else joins.

The program (written here): ``fees.c`` calls ``surcharge`` from ``rates.h``; ``tax.c``
reaches it through ``money.h``; ``other.c`` and ``flat`` read neither;
``tools/probe.c`` includes ``rates.h`` but is not part of the program.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .helpers import klpcc, make_series
from .userspace_helpers import wait_listening

RATES = """#ifndef RATES_H
#define RATES_H
#define MIN_FEE {min_fee}
static inline int surcharge(int amount)
{{
\treturn amount / {div};
}}
#endif
"""

BASE = {
    "rates.h": RATES.format(min_fee=2, div=10),
    "money.h": '#include "rates.h"\nstatic inline int total(int a)\n{\n\treturn a + surcharge(a);\n}\n',
    "api.h": "int fee(int amount);\nint flat(int amount);\nint tax(int amount);\nint other(int amount);\n",
    "fees.c": '#include "api.h"\n#include "rates.h"\n\nint fee(int amount)\n{\n'
              "\tint s = surcharge(amount);\n\n\treturn s < MIN_FEE ? MIN_FEE : s;\n}\n\n"
              "int flat(int amount)\n{\n\treturn amount + 1;\n}\n",
    "tax.c": '#include "api.h"\n#include "money.h"\n\n'
             "int tax(int amount)\n{\n\treturn total(amount) / 5;\n}\n",
    "other.c": '#include "api.h"\n\nint other(int amount)\n{\n\treturn amount * 3;\n}\n',
    "main.c": '#include <stdio.h>\n#include <stdlib.h>\n#include <unistd.h>\n#include "api.h"\n\n'
              "int main(int argc, char **argv)\n{\n\tint n = argc > 1 ? atoi(argv[1]) : -1;\n\n"
              "\tfor (int i = 0; n < 0 || i < n; i++) {\n"
              '\t\tprintf("tick %d: fee=%d tax=%d flat=%d other=%d\\n", i, fee(40), tax(100), flat(100),'
              " other(100));\n\t\tfflush(stdout);\n\t\tusleep(20000);\n\t}\n\treturn 0;\n}\n",
    "tools/probe.c": '#include "../rates.h"\n\nint probe(void)\n{\n\treturn surcharge(7);\n}\n',
}
RELEASES = [
    {"rates.h": RATES.format(min_fee=2, div=5)},  # surcharge changes: fee and tax
    {"rates.h": RATES.format(min_fee=9, div=10)},  # surcharge back, MIN_FEE up: fee only; tax a nop
]
UNITS = ("fees.c", "tax.c", "other.c", "main.c")
TICK = re.compile(r"^tick (\d+): (fee=.*)$")


def _build(src: Path, exe: Path) -> Path:
    flags = klpcc("config", "--cflags").stdout.split()
    libs = klpcc("config", "--libs").stdout.split()
    exe.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cc", "-O2", *flags, "-o", str(exe), *(str(src / u) for u in UNITS), *libs], check=True)
    return exe


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("headers")
    patches, base = make_series(tmp, BASE, RELEASES)
    exe = _build(base, tmp / "live" / "prog")
    bundles = {}
    for r in (1, 2):
        bundles[r] = tmp / f"b{r}"
        res = klpcc("compile", str(patches), "--source", str(base), "-r", str(r), "-o", str(bundles[r]))
        assert res.returncode == 0, res.stderr
    return tmp, patches, base, exe, bundles


def _built(program, release: int) -> dict:
    tmp, _, _, exe, bundles = program
    res = klpcc("build", str(bundles[release]), "--binary", str(exe), "-o", str(tmp / f"r{release}.so"),
                "--force", "--format", "json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_the_bundle_carries_the_units_that_read_a_changed_header(program):
    _, _, _, _, bundles = program
    m = json.loads((bundles[1] / "manifest.json").read_text())
    assert m["header_units"] == [{"path": "fees.c", "headers": ["rates.h"]},
                                 {"path": "tax.c", "headers": ["rates.h"]},
                                 {"path": "tools/probe.c", "headers": ["rates.h"]}], m["header_units"]
    carried = {s["path"] for s in m["sources"]}
    assert {"rates.h", "money.h", "api.h", "fees.c", "tax.c", "tools/probe.c"} <= carried
    assert not carried & {"other.c", "main.c"}  # they read no changed header
    for unit in ("fees.c", "tax.c"):
        assert (bundles[1] / "sources" / unit).read_text() == BASE[unit]
    # only what the release changed has a base/ copy; the unchanged units are their own base
    assert [s["path"] for s in m["base_sources"]] == ["rates.h"]


def test_the_compiled_code_of_the_unchanged_units_decides(program):
    r1 = _built(program, 1)
    got = {f["name"]: f["why"] for f in r1["functions"]}
    assert set(got) == {"fee", "tax"}, got
    assert got["fee"] == "inlined `surcharge` changed", got
    assert "surcharge" in got["tax"] or "rates.h" in got["tax"], got
    notes = " ".join(r1["function_set"]["notes"])
    assert "fee (fees.c) joins the patch" in notes and "tax (tax.c) joins the patch" in notes, notes
    assert r1["function_set"]["decided_by"] == "objects"
    assert r1["function_set"]["units"] >= 2
    # a file of the tree that is not part of the program is said, and left out
    assert any("tools/probe.c reads rates.h but is not compared" in n for n in r1["notes"]), r1["notes"]
    r2 = _built(program, 2)
    got2 = {f["name"]: f["why"] for f in r2["functions"]}
    assert set(got2) == {"fee"}, got2
    assert "MIN_FEE" in got2["fee"] or "constant" in got2["fee"] or "macro" in got2["fee"], got2


def _fresh(tmp: Path, base: Path, patches: Path, release: int) -> str:
    src = tmp / f"fresh-src{release}"
    shutil.copytree(base, src)
    if release:
        subprocess.run(["git", "init", "-q", str(src)], check=True)
        names = (patches / "series").read_text().split()[:release]
        subprocess.run(["git", "-C", str(src), "apply", *(str(patches / n) for n in names)], check=True)
    exe = _build(src, tmp / f"fresh{release}" / "prog")
    out = subprocess.run([str(exe), "1"], capture_output=True, text=True, check=True, timeout=60).stdout
    m = TICK.match(out.splitlines()[-1])
    assert m, out
    return m[2]


def _after(log: Path, count: int = 2, timeout: float = 20) -> str:
    """The ``count``-th tick printed from now on."""
    start = len(log.read_text().splitlines())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = log.read_text().splitlines()
        ticks = [m[2] for ln in lines[start:] if (m := TICK.match(ln))]
        if len(ticks) >= count:
            return ticks[count - 1]
        time.sleep(0.02)
    raise AssertionError(f"no tick: {log.read_text()[-300:]}")


def test_a_running_program_answers_as_a_fresh_build_of_each_release(program):
    tmp, patches, base, exe, _ = program
    for r in (1, 2):
        _built(program, r)
    fresh = {r: _fresh(tmp, base, patches, r) for r in (0, 1, 2)}
    assert len(set(fresh.values())) == 3, fresh
    log = tmp / "live.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(exe)], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_listening(proc.pid)
        assert _after(log) == fresh[0]
        for step, release in (("apply", 1), ("apply", 2), ("downgrade", 1), ("disable", 0)):
            if step == "disable":
                res = klpcc("disable", "--pid", str(proc.pid))
            else:
                res = klpcc("apply", "--pid", str(proc.pid), str(tmp / f"r{release}.so"))
            assert res.returncode == 0, (step, res.stdout + res.stderr)
            assert _after(log) == fresh[release], (step, release)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)


def test_includes_through_an_include_directory(tmp_path):
    """``<dir/name.h>`` from a -I directory, and a header reached through another
    directory's header: found by the path's end, and only there."""
    base = {
        "include/shop/rates.h": "static inline int cut(int a)\n{\n\treturn a / 2;\n}\n",
        "lib/rates.h": "static inline int cut(int a)\n{\n\treturn a / 3;\n}\n",  # same name, not changed
        "lib/uses_lib.c": '#include "rates.h"\nint g(int a)\n{\n\treturn cut(a);\n}\n',
        "src/uses_shop.c": "#include <shop/rates.h>\nint f(int a)\n{\n\treturn cut(a);\n}\n",
    }
    patches, src = make_series(tmp_path, base, [
        {"include/shop/rates.h": "static inline int cut(int a)\n{\n\treturn a / 4;\n}\n"}])
    res = klpcc("compile", str(patches), "--source", str(src), "-o", str(tmp_path / "b"))
    assert res.returncode == 0, res.stderr
    m = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert m["header_units"] == [{"path": "src/uses_shop.c", "headers": ["include/shop/rates.h"]}]


def test_too_many_units_is_refused_and_nothing_is_written(program, tmp_path):
    _, patches, base, _, _ = program
    out = tmp_path / "b"
    args = ("compile", str(patches), "--source", str(base), "-r", "1", "-o", str(out), "--header-units")
    res = klpcc(*args, "2")
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.count("\n") == 1 and "rates.h" in res.stderr and "--header-units 2" in res.stderr
    assert "at least 3 unchanged C files" in res.stderr, res.stderr
    assert not out.exists()
    same = klpcc(*args, "3")
    assert same.returncode == 0, same.stderr


def test_a_git_base_finds_the_same_units(program, tmp_path):
    _, patches, base, _, bundles = program
    repo = tmp_path / "repo"
    shutil.copytree(base, repo)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git[:3], "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "base"], check=True)
    for name in (patches / "series").read_text().split():
        subprocess.run([*git, "apply", "--index", str(patches / name)], check=True)
        subprocess.run([*git, "commit", "-qm", name], check=True)
    res = klpcc("compile", "--git", str(repo), "HEAD~2..HEAD", "-r", "1", "-o", str(tmp_path / "g1"))
    assert res.returncode == 0, res.stderr
    got = json.loads((tmp_path / "g1" / "manifest.json").read_text())["header_units"]
    want = json.loads((bundles[1] / "manifest.json").read_text())["header_units"]
    assert got == want


def test_the_base_tree_is_read_never_written(program):
    _, _, base, _, _ = program
    for path, text in BASE.items():
        assert (base / path).read_text() == text, path


# --------------------------------------------------------------------------- the kernel target

KHDR = """/* SPDX-License-Identifier: GPL-2.0 */
#ifndef _KERNEL_HDRS_H
#define _KERNEL_HDRS_H
#define HDRS_STEP {step}
static inline unsigned long hdrs_scale(unsigned long v)
{{
\treturn v * {mul} + HDRS_STEP;
}}
#endif
"""
KBASE = {
    "kernel/hdrs/hdrs.h": KHDR.format(step=1, mul=3),
    "kernel/hdrs/Makefile": "obj-y += reader.o quiet.o\n",
    "kernel/hdrs/reader.c": "// SPDX-License-Identifier: GPL-2.0\n#include <linux/kernel.h>\n"
                            "#include \"hdrs.h\"\n\nnoinline unsigned long hdrs_read(unsigned long v)\n{\n"
                            "\treturn hdrs_scale(v) + 1;\n}\n\n"
                            "noinline unsigned long hdrs_other(unsigned long v)\n{\n\treturn v + 2;\n}\n",
    "kernel/hdrs/quiet.c": "// SPDX-License-Identifier: GPL-2.0\n#include <linux/kernel.h>\n"
                           "#include \"hdrs.h\"\n\n"
                           "noinline unsigned long hdrs_quiet(unsigned long v)\n{\n\treturn v - 1;\n}\n",
    # includes the header but the configuration does not build it
    "kernel/hdrs/unbuilt.c": "#include \"hdrs.h\"\nunsigned long hdrs_unbuilt(unsigned long v)\n{\n"
                             "\treturn hdrs_scale(v);\n}\n",
}


@pytest.mark.slow
def test_kernel_a_changed_header_patches_the_callers_in_unchanged_files(tmp_path):
    from .test_kernel_build import build, kernel_dir

    patches, src = make_series(tmp_path, KBASE, [{"kernel/hdrs/hdrs.h": KHDR.format(step=1, mul=5)}])
    bundle = tmp_path / "bundle"
    res = klpcc("compile", str(patches), "--source", str(src), "-o", str(bundle))
    assert res.returncode == 0, res.stderr
    units = json.loads((bundle / "manifest.json").read_text())["header_units"]
    assert [u["path"] for u in units] == [f"kernel/hdrs/{f}.c" for f in ("quiet", "reader", "unbuilt")]
    out = tmp_path / "ko"
    proc = build(bundle, out, "--kernel", str(kernel_dir()), "--name", "klpcc_hdrs", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert {f["name"] for f in doc["functions"]} == {"hdrs_read"}, doc["functions"]
    notes = doc["function_set"]["notes"]
    assert "hdrs_read (kernel/hdrs/reader.c) joins the patch: inlined `hdrs_scale` changed" in notes, notes
    assert any("unbuilt.c reads kernel/hdrs/hdrs.h but is not compared: this kernel's configuration does "
               "not build" in n for n in notes), notes
    assert doc["function_set"]["units"] == 2  # reader.c and quiet.c: both sides compiled
    assert (out / "klpcc_hdrs.ko").is_file()
    # the patched function's new code is in the module: its unit is the unchanged reader.c
    assert "hdrs_read" in (out / "src" / "kernel/hdrs/reader.c").read_text()


@pytest.mark.slow
def test_kernel_a_changed_static_inline_of_fs_proc_internal_h(tmp_path):
    """Debian's linux-source: a change to ``is_empty_pde`` in fs/proc/internal.h, a
    header no C file of the release touches.  The files of fs/proc that read it are
    compiled with Kbuild's flags; exactly its two callers join, from files the series
    never changed."""
    from .qemu_guest import ensure_kernel_packages
    from .test_real_sources import fetch_kernel

    kernel = ensure_kernel_packages()
    src = fetch_kernel(kernel.source_version)
    header = "fs/proc/internal.h"
    old = (src / header).read_text()
    line = "\treturn S_ISDIR(pde->mode) && !pde->proc_iops;\n"
    assert old.count(line) == 1
    patches = tmp_path / "patches"
    patches.mkdir()
    new = old.replace(line, "\treturn S_ISDIR(pde->mode) && !pde->proc_iops && !pde->proc_dir_ops;\n")
    labels = ("--label", f"a/{header}", "--label", f"b/{header}")
    diff = subprocess.run(["diff", "-u", *labels, str(src / header), "-"], input=new, capture_output=True,
                          text=True, check=False).stdout
    (patches / "0001-proc-empty-pde.patch").write_text(diff)
    (patches / "series").write_text("0001-proc-empty-pde.patch\n")
    bundle = tmp_path / "bundle"
    res = klpcc("compile", str(patches), "--source", str(src), "-o", str(bundle))
    assert res.returncode == 0, res.stderr
    units = {u["path"] for u in json.loads((bundle / "manifest.json").read_text())["header_units"]}
    assert {"fs/proc/generic.c", "fs/proc/inode.c", "fs/proc/base.c"} <= units, units
    # the extracted subset has no fs/internal.h: fs/open.c's "internal.h" may be fs/proc's,
    # found through an include directory; it is listed, and said not to compile
    assert all(u.startswith("fs/proc/") for u in units - {"fs/open.c"}), units
    out = tmp_path / "ko"
    proc = klpcc("build", str(bundle), "--kernel", str(kernel.kdir), "-o", str(out), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert {(f["file"], f["name"]) for f in doc["functions"]} == {
        ("fs/proc/generic.c", "__proc_create"), ("fs/proc/inode.c", "proc_get_inode")}, doc["functions"]
    notes = doc["function_set"]["notes"]
    assert any(n.startswith("note: fs/proc/nommu.c reads fs/proc/internal.h but is not compared")
               for n in notes), notes
    said = "note: not compared (it may read a header the release changes): fs/open.c: cannot preprocess"
    assert any(n.startswith(said) for n in notes), notes
    assert doc["function_set"]["units"] >= 20


# --------------------------------------------------------------------------- how includes are found


def _units(tmp_path: Path, base: dict[str, str], release: dict[str, str]) -> dict[str, list[str]]:
    patches, src = make_series(tmp_path, base, [release])
    res = klpcc("compile", str(patches), "--source", str(src), "-o", str(tmp_path / "b"))
    assert res.returncode == 0, res.stderr
    doc = json.loads((tmp_path / "b" / "manifest.json").read_text())
    return {u["path"]: u["headers"] for u in doc.get("header_units", [])}


FN = "int {n}(int a)\n{{\n\treturn cut(a);\n}}\n"
CUT = "static inline int cut(int a)\n{{\n\treturn a / {d};\n}}\n"


def test_a_quoted_include_not_beside_the_file_is_found_in_an_include_directory(tmp_path):
    base = {"include/util.h": CUT.format(d=2), "src/fees.c": '#include "util.h"\n' + FN.format(n="fee"),
            "src/other.h": '#include "util.h"\n', "src/lat.c": '#include "other.h"\n' + FN.format(n="lat")}
    got = _units(tmp_path, base, {"include/util.h": CUT.format(d=3)})
    assert got == {"src/fees.c": ["include/util.h"], "src/lat.c": ["include/util.h"]}, got


def test_a_c_file_included_by_another_passes_the_header_on(tmp_path):
    base = {"x.h": CUT.format(d=2), "impl.c": '#include "x.h"\n' + FN.format(n="f"),
            "all.c": '#include "impl.c"\n'}
    got = _units(tmp_path, base, {"x.h": CUT.format(d=3)})
    assert got == {"all.c": ["x.h"], "impl.c": ["x.h"]}, got


def test_the_kernel_s_own_header_comes_before_its_copies(tmp_path):
    """<linux/list.h> is include/linux/list.h for the kernel; tools/ has a copy for its
    own programs, and include/uapi another name for user space."""
    base = {"include/linux/list.h": CUT.format(d=2), "tools/include/linux/list.h": CUT.format(d=2),
            "include/uapi/linux/list.h": "#define X 1\n",
            "kernel/a.c": "#include <linux/list.h>\n" + FN.format(n="a"),
            "tools/perf/b.c": "#include <linux/list.h>\n" + FN.format(n="b")}
    assert _units(tmp_path / "t", base, {"tools/include/linux/list.h": CUT.format(d=3)}) == {
        "tools/perf/b.c": ["tools/include/linux/list.h"]}
    assert _units(tmp_path / "u", base, {"include/uapi/linux/list.h": "#define X 2\n"}) == {}
    assert _units(tmp_path / "k", base, {"include/linux/list.h": CUT.format(d=3)}) == {
        "kernel/a.c": ["include/linux/list.h"]}


def test_many_headers_do_not_break_the_search(tmp_path):
    """A release changing 3,000 headers: their names do not fit on a command line."""
    base = {f"h/h{i:04d}_{'x' * 40}.h": f"#define H{i} 1\n" for i in range(3000)}
    release = {f"h/h{i:04d}_{'x' * 40}.h": f"#define H{i} 2\n" for i in range(3000)}
    base["b.c"] = f'#include "h/h2999_{"x" * 40}.h"\nint b = H2999;\n'
    assert _units(tmp_path, base, release) == {"b.c": [f"h/h2999_{'x' * 40}.h"]}


def test_a_header_with_a_newline_in_its_name(tmp_path):
    """Nothing can #include it, and nothing breaks on it (a git base and a directory)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "new\nline.h").write_text("#define A 1\n")
    (repo / "a.c").write_text('#include "a.h"\nint a = A;\n')
    (repo / "a.h").write_text("#define A 1\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "base"], check=True)
    (repo / "new\nline.h").write_text("#define A 2\n")
    (repo / "a.h").write_text("#define A 2\n")
    subprocess.run([*git, "commit", "-qam", "release"], check=True)
    res = klpcc("compile", "--git", str(repo), "HEAD~1..HEAD", "-o", str(tmp_path / "b"))
    assert res.returncode == 0, res.stderr
    doc = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert doc["header_units"] == [{"path": "a.c", "headers": ["a.h"]}]
