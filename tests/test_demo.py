"""The bundled demo (a small multi-file C service and a five-release quilt series):
what each release's cumulative patch must carry, worked out from the patches.

0001 (format-patch mail)  store_put bounds the value copy, store_del frees the key;
                          store.c includes <stdio.h>
0002 (quilt -p1 diff)     log_line gets a rate limit via a new static ratelimit_ok,
                          two new statics and a LOG_BURST macro
0003 (git diff)           parse_request checks lengths; next_word gets a comment and
                          format_reply a comment and a reformat (no code change);
                          proto.h: PROTO_KEY_MAX, struct request uses it
0004 (format-patch mail)  reverts 0002; format_reply moves to a new reply.c unchanged;
                          Makefile builds reply.o
0005 (plain -p0 diff)     store_count takes the lock
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from klpcc.api import AnalyzeOptions, analyze

from .helpers import klpcc

EXPECTED = {
    1: {"store_put": "modified", "store_del": "modified"},
    2: {"store_put": "modified", "store_del": "modified", "log_line": "modified",
        "log.c:ratelimit_ok": "added"},
    3: {"store_put": "modified", "store_del": "modified", "log_line": "modified",
        "log.c:ratelimit_ok": "added", "parse_request": "modified"},
    4: {"store_put": "modified", "store_del": "modified", "log_line": "nop",
        "log.c:ratelimit_ok": "dropped", "parse_request": "modified"},
    5: {"store_put": "modified", "store_del": "modified", "log_line": "nop",
        "log.c:ratelimit_ok": "dropped", "parse_request": "modified", "store_count": "modified"},
}


@pytest.mark.parametrize("release", sorted(EXPECTED))
def test_net_change_per_release(demo, release):
    patches, src = demo
    a = analyze(AnalyzeOptions(series=[str(patches)], source=str(src), release=release))
    assert {e.key: e.change for e in a.functions} == EXPECTED[release]


def test_outside_changes_of_the_last_release(demo):
    patches, src = demo
    a = analyze(AnalyzeOptions(series=[str(patches)], source=str(src)))
    assert {e.key: e.change for e in a.outside} == {
        "store.c:include:<stdio.h>": "added",
        "log.c:variable:window_start": "dropped",
        "log.c:variable:window_lines": "dropped",
        "log.c:macro:LOG_BURST": "dropped",
        "proto.h:macro:PROTO_KEY_MAX": "added",
        "proto.h:type:struct request": "modified",
        "reply.c:include:<stdio.h>": "added",
        'reply.c:include:"proto.h"': "added",
        "Makefile:file:Makefile": "modified",
    }


def test_transitions(demo):
    patches, src = demo
    up = analyze(AnalyzeOptions(series=[str(patches)], source=str(src), release=4, installed=2))
    assert {e.key: e.transition for e in up.functions} == {
        "store_put": "keep", "store_del": "keep", "log_line": "nop",
        "log.c:ratelimit_ok": "drop", "parse_request": "add"}
    down = analyze(AnalyzeOptions(series=[str(patches)], source=str(src), release=1,
                                  installed="0005-store-count-locked"))
    assert {e.key: e.transition for e in down.functions} == {
        "store_put": "keep", "store_del": "keep", "parse_request": "nop", "store_count": "nop",
        "log_line": None, "log.c:ratelimit_ok": None}


def test_text_matrix(demo):
    patches, src = demo
    proc = klpcc("analyze", str(patches), "--source", str(src))
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines() if line.strip()}
    assert rows["log_line"][-6:] == [".", "M*", "M", "N*", "N", "nop"]
    assert rows["store_count"][-6:] == [".", ".", ".", ".", "M*", "modified"]
    assert "nops (reverted to the original by this release): log_line" in proc.stdout


def test_json_contract(demo):
    patches, src = demo
    proc = klpcc("analyze", str(patches), "--source", str(src), "--from", "2", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["schema"] == "klpcc.analysis/1"
    assert doc["releases"] == ["0001-store-bound-value-copy", "0002-log-ratelimit",
                               "0003-proto-bounds", "0004-revert-log-ratelimit",
                               "0005-store-count-locked"]
    assert doc["release"] == "0005-store-count-locked"
    assert doc["from"] == "0002-log-ratelimit"
    by = {f["key"]: f for f in doc["functions"]}
    assert by["log_line"]["history"] == ["unchanged", "modified", "modified", "nop", "nop"]
    assert by["log_line"]["touched"] == ["0002-log-ratelimit", "0004-revert-log-ratelimit"]
    assert by["log_line"]["transition"] == "nop"
    assert by["log.c:ratelimit_ok"]["static"] is True
    assert by["store_count"]["file"] == "store.c"
    assert doc["nops"] == ["log_line"]
    assert doc["dependencies"]["0004-revert-log-ratelimit"] == ["0002-log-ratelimit"]


def test_compile_bundle_reproduces_the_release(demo, tmp_path):
    patches, src = demo
    out = tmp_path / "bundle"
    proc = klpcc("compile", str(patches), "--source", str(src), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["schema"] == "klpcc.manifest/2"
    assert manifest["release"] == {"name": "0005-store-count-locked", "index": 5}
    assert {f["path"]: f["status"] for f in manifest["files"]} == {
        "Makefile": "modified", "proto.c": "modified", "proto.h": "modified",
        "reply.c": "added", "store.c": "modified"}

    # the release's tree, built independently by applying each patch with patch(1)
    expected = tmp_path / "expected"
    shutil.copytree(src, expected)
    for line in (patches / "series").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, *opts = line.split()
        strip = opts[0] if opts else "-p1"
        subprocess.run(["patch", "-s", strip, "-i", str(patches / name)], cwd=expected, check=True)
    got = tmp_path / "got"
    shutil.copytree(src, got)
    subprocess.run(["git", "apply", str(out / "cumulative.diff")], cwd=got, check=True)
    diff = subprocess.run(["diff", "-r", str(expected), str(got)], capture_output=True, text=True)
    assert diff.returncode == 0, diff.stdout


def test_demo_builds_and_runs(demo, tmp_path):
    """The demo is real C: the base and the last release both build and serve."""
    _, src = demo
    work = tmp_path / "kvd"
    shutil.copytree(src, work)
    subprocess.run(["make", "-s", "CFLAGS=-O2 -Wall -Wextra -Werror"], cwd=work, check=True)
    proc = subprocess.run([str(work / "kvd")], input="put a 1\nget a\ncount\nquit\n",
                          capture_output=True, text=True, check=True)
    assert proc.stdout == "OK\nOK 1\nOK 1\n"
