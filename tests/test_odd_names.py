"""File names with any bytes -- a tab, a newline, a byte that is not UTF-8, quotes --
carried exactly through a series: the bundle's ``cumulative.diff`` gives them back the
way git quotes them (``git apply`` makes exactly the release's files), JSON carries
them quoted the same way (valid UTF-8, read back byte for byte), SARIF as
percent-encoded bytes, and a userspace patch built from those files (C's ``#line``
names them) switches a running program."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote_to_bytes

import pytest

from klpcc.names import decoded

from .helpers import klpcc, make_series
from .userspace_helpers import wait_listening

# each file holds one function; the program calls them all
ODD = [b"tab\there.c", b"new\nline.c", b"latin\xe9.c", b'"quoted".c', b"back\\slash.c", b"caf\xc3\xa9.c",
       b"odd*/star.c"]
FUNCS = [f"f{i}" for i in range(len(ODD))]
MAIN = ('#include <stdio.h>\n#include <unistd.h>\n\n' + "".join(f"int {f}(int);\n" for f in FUNCS)
        + "\nint main(void)\n{\n\tfor (int i = 0;; i++) {\n\t\tprintf(\"tick %d:"
        + "".join(" %d" for _ in FUNCS) + '\\n", i, ' + ", ".join(f"{f}(1)" for f in FUNCS)
        + ");\n\t\tfflush(stdout);\n\t\tusleep(20000);\n\t}\n}\n")


def _body(i: int, k: int) -> bytes:
    # a static made by a macro: the unit writer reads its declaration from the compiler's
    # output, whose line markers escape the file's name
    return (f"#define COUNTER(n) static int n\nCOUNTER(hits{i});\n\n"
            f"int f{i}(int x)\n{{\n\thits{i}++;\n\treturn x * {k} + {i};\n}}\n").encode()


def _git(repo: Path, *args: str | bytes) -> bytes:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org",
                           *args], capture_output=True, check=True).stdout


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("odd")
    repo = tmp / "repo"
    repo.mkdir()
    (repo / "main.c").write_text(MAIN)
    for i, name in enumerate(ODD):
        (repo / os.fsdecode(name)).parent.mkdir(exist_ok=True)
        (repo / os.fsdecode(name)).write_bytes(_body(i, 1))
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "base")
    base = _git(repo, "rev-parse", "HEAD").decode().strip()
    for i, name in enumerate(ODD):
        (repo / os.fsdecode(name)).write_bytes(_body(i, 10))
    _git(repo, "commit", "-qam", "release")
    bundle = tmp / "bundle"
    res = klpcc("compile", "--git", str(repo), f"{base}..HEAD", "-o", str(bundle))
    assert res.returncode == 0, res.stderr
    return tmp, repo, base, bundle


def test_the_cumulative_diff_gives_the_names_back_to_git(series):
    tmp, repo, base, bundle = series
    check = tmp / "check"
    subprocess.run(["git", "clone", "-q", str(repo), str(check)], check=True)
    _git(check, "checkout", "-q", base)
    applied = subprocess.run(["git", "-C", str(check), "apply", str(bundle / "cumulative.diff")],
                             capture_output=True, text=True, check=False)
    assert applied.returncode == 0, applied.stderr
    for i, name in enumerate(ODD):
        assert (check / os.fsdecode(name)).read_bytes() == _body(i, 10), name


def test_json_carries_the_names_exactly(series):
    _, _, _, bundle = series
    text = (bundle / "manifest.json").read_bytes().decode("utf-8")  # strict: valid UTF-8
    doc = json.loads(text)
    shown = {s["path"] for s in doc["sources"]}
    assert '"latin\\351.c"' in shown, shown  # bytes that are not UTF-8: quoted as git quotes them
    assert '"quoted".c' in shown, shown  # a quote is a character like any other
    assert "caf\u00e9.c" in shown and "tab\there.c" in shown, shown  # JSON holds these as they are
    paths = {os.fsencode(s["path"]) for s in decoded(doc)["sources"]}
    assert paths == set(ODD), paths
    for name in ODD:  # the bundle's files carry the same bytes
        assert (bundle / "sources" / os.fsdecode(name)).is_file(), name
    analysis = subprocess.run([sys.executable, "-m", "klpcc", "analyze", "--git", str(series[1]),
                               f"{series[2]}..HEAD", "--format", "json"], capture_output=True, check=False)
    assert analysis.returncode == 0, analysis.stderr
    doc = decoded(json.loads(analysis.stdout.decode("utf-8")))
    files = {os.fsencode(f["file"]) for f in doc["functions"]}
    assert files == set(ODD), files


def test_sarif_locations_are_the_bytes_percent_encoded(tmp_path):
    base = {"latin\udce9.c": "struct s {\n\tint a;\n};\nint f(struct s *p)\n{\n\treturn p->a;\n}\n"}
    repo = tmp_path / "repo"
    repo.mkdir()
    for name, text in base.items():
        (repo / name).write_text(text, errors="surrogateescape")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "base")
    (repo / "latin\udce9.c").write_text(base["latin\udce9.c"].replace("int a;", "long a;\n\tint b;")
                                        .replace("return p->a;", "return p->b;"), errors="surrogateescape")
    _git(repo, "commit", "-qam", "release")
    res = klpcc("lint", "--git", str(repo), "HEAD~1..HEAD", "--format", "sarif")
    assert res.returncode in (0, 1), res.stdout + res.stderr
    uris = {loc["physicalLocation"]["artifactLocation"]["uri"]
            for r in json.loads(res.stdout)["runs"][0]["results"] for loc in r["locations"]}
    # the file's location (the other is the patch's, a git commit)
    assert {unquote_to_bytes(u) for u in uris if not u.startswith("/")} == {b"latin\xe9.c"}, uris


def test_a_program_built_from_odd_names_is_patched_while_it_runs(series):
    tmp, repo, base, bundle = series
    src = tmp / "base-tree"
    subprocess.run(["git", "clone", "-q", str(repo), str(src)], check=True)
    _git(src, "checkout", "-q", base)
    flags = klpcc("config", "--cflags").stdout.split()
    libs = klpcc("config", "--libs").stdout.split()
    exe = tmp / "prog"
    # built in the tree, as a project's make would: the DWARF names each file as it is
    subprocess.run(["cc", "-O2", *flags, "-o", str(exe), "main.c", *(os.fsdecode(n) for n in ODD), *libs],
                   cwd=src, check=True)
    built = subprocess.run([sys.executable, "-m", "klpcc", "build", str(bundle), "--binary", str(exe), "-o",
                            str(tmp / "r1.so"), "--format", "json"], capture_output=True, check=False)
    assert built.returncode == 0, built.stderr
    got = decoded(json.loads(built.stdout.decode("utf-8")))
    assert {os.fsencode(f["file"]) for f in got["functions"]} == set(ODD)
    log = tmp / "log"
    tick = re.compile(r"^tick \d+:((?: \d+)+)$")

    def rows() -> list[str]:
        return [m[1] for ln in log.read_text().splitlines() if (m := tick.match(ln))]

    def next_tick() -> list[int]:
        """The second tick from now: wholly printed after this call."""
        start = len(rows())
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if len(got := rows()) >= start + 2:
                return [int(v) for v in got[start + 1].split()]
            time.sleep(0.02)
        raise AssertionError(log.read_text()[-300:])

    with open(log, "w") as out:
        proc = subprocess.Popen([str(exe)], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_listening(proc.pid)
        assert next_tick() == [1 + i for i in range(len(ODD))]
        res = klpcc("apply", "--pid", str(proc.pid), str(tmp / "r1.so"))
        assert res.returncode == 0, res.stdout + res.stderr
        assert next_tick() == [10 + i for i in range(len(ODD))]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.mark.parametrize("text", ["plain.c", '"proto.h"', 'caf\u00e9.c', "latin\udce9.c", '"x\\101"',
                                  '"\\"a\\101\\""', "tab\tand\nnewline", '"', '""', '"\\377"'])
def test_every_string_comes_back_from_json_exactly(text):
    """What dump_json writes, decoded() reads back, whatever the string: a string that
    would read as quoted is quoted itself."""
    from klpcc.report import dump_json

    out = dump_json({"functions": [], "s": text, text: [text]})
    out.encode("utf-8")  # valid Unicode
    assert decoded(json.loads(out)) == {"functions": [], "s": text, text: [text]}


def test_the_kernel_target_refuses_a_unit_kbuild_cannot_name(tmp_path):
    unit = "kernel/odd name.c"
    base = {unit: "int odd_fn(int x)\n{\n\treturn x;\n}\n", "kernel/Makefile": "obj-y += x.o\n"}
    patches, src = make_series(tmp_path, base, [{unit: "int odd_fn(int x)\n{\n\treturn x + 1;\n}\n"}])
    bundle = tmp_path / "bundle"
    assert klpcc("compile", str(patches), "--source", str(src), "-o", str(bundle)).returncode == 0
    out = tmp_path / "ko"
    res = klpcc("build", str(bundle), "--source-only", "--object", f"{unit}=vmlinux", "-o", str(out))
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "kernel/odd name.c: Kbuild cannot build a file of this name" in res.stderr, res.stderr
    assert not out.exists()


def test_a_header_whose_name_the_compiler_escapes(tmp_path):
    """A changed header named with a backslash: the compiler's line markers write it
    escaped, and the unit that reads it is still found to change."""
    header = "back\\slash.h"
    base = {header: "static inline int cut(int a)\n{\n\treturn a / 2;\n}\n",
            "fees.c": '#include "back\\slash.h"\n\nint fee(int a)\n{\n\treturn cut(a) + 1;\n}\n',
            "main.c": "#include <unistd.h>\nint fee(int);\n"
                      "int main(void)\n{\n\tsleep(1);\n\treturn fee(3);\n}\n"}
    patches, src = make_series(tmp_path, base, [{header: base[header].replace("/ 2", "/ 3")}])
    bundle = tmp_path / "b"
    assert klpcc("compile", str(patches), "--source", str(src), "-o", str(bundle)).returncode == 0
    flags, libs = klpcc("config", "--cflags").stdout.split(), klpcc("config", "--libs").stdout.split()
    subprocess.run(["cc", "-O2", *flags, "-o", str(tmp_path / "prog"), "fees.c", "main.c", *libs], cwd=src,
                   check=True)
    res = klpcc("build", str(bundle), "--binary", str(tmp_path / "prog"), "-o", str(tmp_path / "x.so"),
                "--format", "json")
    assert res.returncode == 0, res.stderr
    assert [f["name"] for f in json.loads(res.stdout)["functions"]] == ["fee"]


def test_sarif_keeps_a_backslash_and_a_colon_in_a_name(tmp_path):
    from klpcc.lint.output import _uri

    assert _uri("back\\slash.c") == "back%5Cslash.c"
    assert _uri("a:b.c") == "a%3Ab.c"  # not a URI scheme
    assert _uri("dir/caf\u00e9.c") == "dir/caf%C3%A9.c"
