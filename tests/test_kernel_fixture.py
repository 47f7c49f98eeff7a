"""The kernel-flavoured fixture (fixtures/kernel): a small kvd subsystem written in
kernel style and a nine-release quilt series against it.

Every expectation below was written down from reading the patches, not from
klpcc's output.  What each release does:

 1  0001 (format-patch)  fs/proc/kvd_stat.c: kvd_stat_show printed the lookups
                         counter as "misses"                  -> kvd_stat_show
 2  0002 (format-patch)  kernel/kvd_core.c: SYSCALL_DEFINE2(kvd_get) ignores dead
                         entries                              -> sys_kvd_get
 3  0003 (diff -u)       kernel/kvd_core.c: kvd_check, only its CONFIG_KVD_DEBUG
                         variant (the #else stub is untouched) -> kvd_check
 4  0004 (diff -u)       comments and line wrapping only in kvd_insert,
                         kvd_for_each, proc's show_one and the header's
                         kvd_entry_live                       -> no change at all
 5  0005 (format-patch)  kernel/kvd_debug.c: one hunk across the end of show_one
                         and the start of kvd_dump_show        -> both (the debugfs
                         show_one, not the /proc one)
 6  0006 (format-patch)  header: kvd_entry_live reads flags with READ_ONCE, struct
                         kvd_stats gains a field, kvd_remove prototype; core: new
                         kvd_remove + EXPORT_SYMBOL_GPL, new SYSCALL_DEFINE1(kvd_del);
                         kvd_stat_show prints removals
 7  0007 (format-patch, new file)  kvd_hash moves unchanged to the new kernel/kvd_hash.c;
                         kvd_max_entries 1024 -> 4096; kvd_ctl_fops gains .llseek;
                         /proc: kvd_entries_open and kvd_entries_proc_ops removed,
                         proc_kvd_init uses proc_create_single; kernel/Makefile
 8  0008 (format-patch)  reverts 0003                         -> kvd_check is a nop
 9  0009 (diff -u)       removes SYSCALL_DEFINE1(kvd_del)     -> sys_kvd_del dropped
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest

from klpcc.api import AnalyzeOptions, analyze, compile_bundle
from klpcc.c import CSource
from klpcc.history import Analysis

from .conftest import FIXTURES
from .helpers import klpcc

KERNEL = FIXTURES / "kernel"
PATCHES = KERNEL / "patches"
SRC = KERNEL / "src"

RELEASES = [
    "0001-proc-kvd_stat-report-misses",
    "0002-kvd-kvd_get-ignore-dead-entries",
    "0003-kvd-debug-warn-dead-entries",
    "0004-kvd-tidy-comments",
    "0005-kvd-debugfs-show-flags",
    "0006-kvd-add-removal",
    "0007-kvd-split-hash-raise-limit",
    "0008-revert-kvd-debug-warn-dead-entries",
    "0009-kvd-drop-kvd_del-syscall",
]

# function keys: static functions are file:name, the others just their name
KVD_STAT_SHOW = "fs/proc/kvd_stat.c:kvd_stat_show"
PROC_SHOW_ONE = "fs/proc/kvd_stat.c:show_one"
PROC_INIT = "fs/proc/kvd_stat.c:proc_kvd_init"
ENTRIES_OPEN = "fs/proc/kvd_stat.c:kvd_entries_open"
SYS_KVD_GET = "sys_kvd_get"
SYS_KVD_DEL = "sys_kvd_del"
KVD_CHECK = "kernel/kvd_core.c:kvd_check"
KVD_REMOVE = "kvd_remove"
DEBUG_SHOW_ONE = "kernel/kvd_debug.c:show_one"
DUMP_SHOW = "kernel/kvd_debug.c:kvd_dump_show"
ENTRY_LIVE = "include/linux/kvd.h:kvd_entry_live"

ALL_LISTED = {KVD_STAT_SHOW, PROC_INIT, ENTRIES_OPEN, SYS_KVD_GET, SYS_KVD_DEL, KVD_CHECK,
              KVD_REMOVE, DEBUG_SHOW_ONE, DUMP_SHOW, ENTRY_LIVE}

CHANGES = ("modified", "added", "removed", "nop", "dropped")


def _net(modified=(), added=(), removed=(), nop=(), dropped=()) -> dict[str, set[str]]:
    return {"modified": set(modified), "added": set(added), "removed": set(removed),
            "nop": set(nop), "dropped": set(dropped)}


_M3 = {KVD_STAT_SHOW, SYS_KVD_GET, KVD_CHECK}
_M5 = _M3 | {DEBUG_SHOW_ONE, DUMP_SHOW}
_M6 = _M5 | {ENTRY_LIVE}
_M7 = _M6 | {PROC_INIT}
_M8 = _M7 - {KVD_CHECK}

# net change of each release against the base
EXPECTED_NET = {
    1: _net(modified={KVD_STAT_SHOW}),
    2: _net(modified={KVD_STAT_SHOW, SYS_KVD_GET}),
    3: _net(modified=_M3),
    4: _net(modified=_M3),  # comment-only release: nothing new
    5: _net(modified=_M5),
    6: _net(modified=_M6, added={KVD_REMOVE, SYS_KVD_DEL}),
    7: _net(modified=_M7, added={KVD_REMOVE, SYS_KVD_DEL}, removed={ENTRIES_OPEN}),
    8: _net(modified=_M8, added={KVD_REMOVE, SYS_KVD_DEL}, removed={ENTRIES_OPEN},
            nop={KVD_CHECK}),
    9: _net(modified=_M8, added={KVD_REMOVE}, removed={ENTRIES_OPEN}, nop={KVD_CHECK},
            dropped={SYS_KVD_DEL}),
}


@cache
def run(release: int | str | None = None, installed: int | str | None = None) -> Analysis:
    return analyze(AnalyzeOptions(series=[str(PATCHES / "series")], source=str(SRC),
                                  release=release, installed=installed))


def net(a: Analysis) -> dict[str, set[str]]:
    return {c: {e.key for e in a.functions if e.change == c} for c in CHANGES}


def entry(a: Analysis, key: str, outside: bool = False):
    found = [e for e in (a.outside if outside else a.functions) if e.key == key]
    assert len(found) == 1, f"{key}: {len(found)} entries"
    return found[0]


# --------------------------------------------------------------------------- trees


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _git_apply(patch: Path, cwd: Path, *, check: bool = False) -> None:
    # GIT_CEILING_DIRECTORIES: apply to this plain directory, never to a repository above
    env = {**os.environ, "GIT_CEILING_DIRECTORIES": str(cwd.parent)}
    args = ["git", "apply", "-p1", *(["--check"] if check else []), str(patch)]
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"git apply {' '.join(args[2:])} in {cwd}: {proc.stderr}"


def _series_patches() -> list[str]:
    lines = (PATCHES / "series").read_text().splitlines()
    return [ln.split()[0] for ln in lines if ln.strip() and not ln.startswith("#")]


@pytest.fixture(scope="module")
def release_trees(tmp_path_factory) -> dict[int, dict[str, bytes]]:
    """The tree of every release, made by applying the series with git apply."""
    work = tmp_path_factory.mktemp("kernel-series") / "tree"
    shutil.copytree(SRC, work)
    trees = {0: _files(work)}
    for i, name in enumerate(_series_patches(), 1):
        _git_apply(PATCHES / name, work, check=True)
        _git_apply(PATCHES / name, work)
        trees[i] = _files(work)
    return trees


def test_series_is_the_nine_releases_and_applies_with_git(release_trees):
    assert [Path(p).stem for p in _series_patches()] == RELEASES
    assert run().replay.releases == RELEASES
    # each release really changes the tree, and 0007 creates kernel/kvd_hash.c
    for i in range(1, 10):
        assert release_trees[i] != release_trees[i - 1]
    assert "kernel/kvd_hash.c" not in release_trees[6]
    assert "kernel/kvd_hash.c" in release_trees[7]
    # mail-format patches from git format-patch, and plain diff -ruN ones
    data = {Path(n).stem: (PATCHES / n).read_bytes() for n in _series_patches()}
    mail = [n for n, d in data.items() if d.startswith(b"From 0000") and b"\nSubject: [PATCH] " in d]
    assert mail == [RELEASES[i - 1] for i in (1, 2, 5, 6, 7, 8)]
    plain = [n for n, d in data.items() if b"\ndiff -ruN a/" in b"\n" + d and b"diff --git" not in d]
    assert plain == [RELEASES[i - 1] for i in (3, 4, 9)]
    # 0005 is one hunk, across the end of show_one and the start of kvd_dump_show
    assert data[RELEASES[4]].count(b"\n@@ ") == 1
    # the revert restores the CONFIG_KVD_DEBUG branch of release 2
    assert release_trees[8]["kernel/kvd_core.c"].count(b"dead entry still hashed") == 0
    assert release_trees[3]["kernel/kvd_core.c"].count(b"dead entry still hashed") == 1


# --------------------------------------------------------------------------- base


def test_base_functions_are_found_and_named():
    """Every function of the base tree, as read from the sources by hand."""
    expected = {
        "include/linux/kvd.h": [("kvd_entry_live", True)],
        "kernel/kvd_core.c": [
            ("kvd_warn", True), ("kvd_hash", False), ("kvd_check", True), ("kvd_check", True),
            ("kvd_lookup", False), ("kvd_insert", False), ("kvd_for_each", False),
            ("sys_kvd_get", False), ("sys_kvd_set", False), ("kvd_init", True),
            ("kvd_exit", True),
        ],
        "kernel/kvd_debug.c": [
            ("show_one", True), ("kvd_dump_show", True), ("kvd_ctl_write", True),
            ("kvd_debug_init", True), ("kvd_debug_exit", True),
        ],
        "fs/proc/kvd_stat.c": [
            ("show_one", True), ("kvd_stat_show", True), ("kvd_entry_emit", True),
            ("kvd_entries_show", True), ("kvd_entries_open", True), ("proc_kvd_init", True),
        ],
    }
    for path, want in expected.items():
        src = CSource(path, (SRC / path).read_bytes().splitlines(keepends=True))
        got = [(f.name, f.static) for f in src.functions()]
        assert got == want, path
        assert not [it for it in src.items() if it.kind == "unparsed"], path
    core = CSource("kernel/kvd_core.c", (SRC / "kernel/kvd_core.c").read_bytes().splitlines(True))
    macros = {f.name: f.macro for f in core.functions() if f.macro}
    assert macros == {"sys_kvd_get": "SYSCALL_DEFINE2", "sys_kvd_set": "SYSCALL_DEFINE2"}


# --------------------------------------------------------------------------- net change


@pytest.mark.parametrize("release", range(1, 10))
def test_net_change_of_each_release(release):
    a = run(release)
    assert a.release_name == RELEASES[release - 1]
    assert net(a) == EXPECTED_NET[release]
    assert a.installed is None
    assert all(e.transition is None for e in a.functions)


def test_release_by_name_is_the_same_as_by_position():
    a = run("0008-revert-kvd-debug-warn-dead-entries")
    assert a.release == 8
    assert net(a) == EXPECTED_NET[8]


def test_histories_across_the_series():
    a = run(9)
    # per release: the change of the cumulative patch, and whether that release
    # touched the function's code
    want = {
        KVD_STAT_SHOW: (["modified"] * 9, {1, 6}),
        SYS_KVD_GET: (["unchanged"] + ["modified"] * 8, {2}),
        KVD_CHECK: (["unchanged"] * 2 + ["modified"] * 5 + ["nop"] * 2, {3, 8}),
        DEBUG_SHOW_ONE: (["unchanged"] * 4 + ["modified"] * 5, {5}),
        DUMP_SHOW: (["unchanged"] * 4 + ["modified"] * 5, {5}),
        ENTRY_LIVE: (["unchanged"] * 5 + ["modified"] * 4, {6}),
        KVD_REMOVE: (["absent"] * 5 + ["added"] * 4, {6}),
        SYS_KVD_DEL: (["absent"] * 5 + ["added"] * 3 + ["dropped"], {6, 9}),
        PROC_INIT: (["unchanged"] * 6 + ["modified"] * 3, {7}),
        ENTRIES_OPEN: (["unchanged"] * 6 + ["removed"] * 3, {7}),
    }
    assert {e.key for e in a.functions} == set(want)
    for key, (states, touched) in want.items():
        e = entry(a, key)
        assert list(e.history) == states, key
        assert set(e.touched) == touched, key
        assert e.change == states[-1], key


def test_revert_brings_back_the_base_fingerprint():
    e = entry(run(9), KVD_CHECK)
    assert e.change == "nop"
    assert e.fingerprint == e.base_fingerprint
    assert sorted(e.touched) == [3, 8]
    assert e.fingerprints[3] != e.base_fingerprint  # 0003 changed the CONFIG_KVD_DEBUG variant
    assert e.fingerprints[8] == e.base_fingerprint  # 0008 put it back
    assert entry(run(7), KVD_CHECK).fingerprint == e.fingerprints[3]
    # a nop is listed as such, and where the patch that reverted it is
    assert [x.key for x in run(9).by_change("nop")] == [KVD_CHECK]
    assert e.origin is not None and e.origin[0].endswith("0008-revert-kvd-debug-warn-dead-entries.patch")


def test_comment_only_and_reformatting_edits_are_not_changes():
    a3, a4 = run(3), run(4)
    assert net(a4) == net(a3)
    assert {e.key: e.fingerprint for e in a4.functions} == {e.key: e.fingerprint for e in a3.functions}
    assert not [e.key for e in a4.functions if 4 in e.touched]
    assert a4.outside == ()
    # the functions 0004 reformatted are never listed; kvd_entry_live only from 0006 on
    for release in range(1, 10):
        keys = {e.key for e in run(release).functions}
        assert not keys & {"kvd_insert", "kvd_for_each", PROC_SHOW_ONE}, release
        assert (ENTRY_LIVE in keys) == (release >= 6), release


def test_static_functions_of_the_same_name_are_told_apart():
    a = run(5)
    keys = {e.key for e in a.functions}
    assert DEBUG_SHOW_ONE in keys
    assert PROC_SHOW_ONE not in keys  # only comments and wrapping changed there (0004)
    assert "show_one" not in keys
    e = entry(a, DEBUG_SHOW_ONE)
    assert (e.name, e.file, e.static, e.change) == ("show_one", "kernel/kvd_debug.c", True, "modified")
    # one hunk changed both show_one and kvd_dump_show
    assert entry(a, DUMP_SHOW).change == "modified"
    assert entry(a, DUMP_SHOW).touched == (5,) and e.touched == (5,)


def test_syscall_bodies_are_named_sys_name():
    a = run(8)
    get, delete = entry(a, SYS_KVD_GET), entry(a, SYS_KVD_DEL)
    assert (get.name, get.macro, get.static, get.file) == (
        "sys_kvd_get", "SYSCALL_DEFINE2", False, "kernel/kvd_core.c")
    assert (delete.name, delete.macro, delete.change) == ("sys_kvd_del", "SYSCALL_DEFINE1", "added")
    keys = {e.key for e in a.functions}
    assert not keys & {"kvd_get", "kvd_del", "SYSCALL_DEFINE1", "SYSCALL_DEFINE2", "sys_kvd_set"}
    assert entry(run(9), SYS_KVD_DEL).change == "dropped"


def test_line_spans():
    a = run(9)
    # base 126-143; lines added above it: 0003 +2, 0004 +11, 0006 +20, 0007 -7, 0008 -2
    assert entry(a, SYS_KVD_GET).lines == (150, 167)
    # 0004 turned a one-line comment above it into four, 0006 added a struct field
    assert entry(a, ENTRY_LIVE).lines == (35, 38)
    # a removed function: where it was in the base
    assert entry(a, ENTRIES_OPEN).lines == (40, 43)


def test_ifdef_variants_are_one_function():
    a = run(3)
    checks = [e for e in a.functions if e.name == "kvd_check"]
    assert len(checks) == 1
    assert checks[0].key == KVD_CHECK and checks[0].static


def test_a_non_static_function_moved_to_a_new_file_is_unchanged():
    for release in (7, 8, 9):
        a = run(release)
        assert "kvd_hash" not in {e.key for e in a.functions}
        assert not [e for e in a.functions if e.name == "kvd_hash"]


def test_header_static_inline_helper():
    e = entry(run(9), ENTRY_LIVE)
    assert (e.name, e.file, e.static, e.change) == ("kvd_entry_live", "include/linux/kvd.h", True,
                                                    "modified")


# --------------------------------------------------------------------------- outside


def test_outside_changes():
    want9 = {
        "include/linux/kvd.h:type:struct kvd_stats": "modified",  # 0006: new field
        "include/linux/kvd.h:prototype:kvd_remove": "added",
        "kernel/kvd_core.c:statement:EXPORT_SYMBOL_GPL(kvd_remove);": "added",
        "kernel/kvd_core.c:include:<linux/hash.h>": "removed",  # 0007
        "kernel/kvd_core.c:variable:kvd_max_entries": "modified",
        "kernel/kvd_core.c:statement:EXPORT_SYMBOL_GPL(kvd_hash);": "removed",
        "kernel/kvd_hash.c:include:<linux/export.h>": "added",
        "kernel/kvd_hash.c:include:<linux/hash.h>": "added",
        "kernel/kvd_hash.c:include:<linux/kvd.h>": "added",
        "kernel/kvd_hash.c:statement:EXPORT_SYMBOL_GPL(kvd_hash);": "added",
        "kernel/kvd_debug.c:variable:kvd_ctl_fops": "modified",
        "fs/proc/kvd_stat.c:variable:kvd_entries_proc_ops": "removed",
        # 0007 adds kvd_hash.o to the build: non-C files are outside changes of kind "file"
        "kernel/Makefile:file:kernel/Makefile": "modified",
    }
    a = run(9)
    assert {e.key: e.change for e in a.outside} == want9
    kinds = {(e.kind, e.name, e.file) for e in a.outside}
    assert ("type", "struct kvd_stats", "include/linux/kvd.h") in kinds
    assert ("variable", "kvd_max_entries", "kernel/kvd_core.c") in kinds
    assert ("variable", "kvd_ctl_fops", "kernel/kvd_debug.c") in kinds
    # release 6 only has the 0006 part of it; releases 1-5 change nothing outside functions
    from_6 = {k for k in want9 if "kvd_remove" in k or "kvd_stats" in k}
    assert {e.key: e.change for e in run(6).outside} == {k: want9[k] for k in from_6}
    for release in range(1, 6):
        assert run(release).outside == (), release


# --------------------------------------------------------------------------- transitions


TRANSITIONS = {
    # (installed K, release N): key -> transition (None: no live patch code in K nor N)
    (3, 9): {
        KVD_STAT_SHOW: "update", SYS_KVD_GET: "keep", KVD_CHECK: "nop", DEBUG_SHOW_ONE: "add",
        DUMP_SHOW: "add", ENTRY_LIVE: "add", PROC_INIT: "add", KVD_REMOVE: "add",
        SYS_KVD_DEL: None, ENTRIES_OPEN: None,
    },
    (7, 9): {
        KVD_STAT_SHOW: "keep", SYS_KVD_GET: "keep", KVD_CHECK: "nop", DEBUG_SHOW_ONE: "keep",
        DUMP_SHOW: "keep", ENTRY_LIVE: "keep", PROC_INIT: "keep", KVD_REMOVE: "keep",
        SYS_KVD_DEL: "drop", ENTRIES_OPEN: None,
    },
    (6, 8): {
        KVD_STAT_SHOW: "keep", SYS_KVD_GET: "keep", KVD_CHECK: "nop", DEBUG_SHOW_ONE: "keep",
        DUMP_SHOW: "keep", ENTRY_LIVE: "keep", PROC_INIT: "add", KVD_REMOVE: "keep",
        SYS_KVD_DEL: "keep", ENTRIES_OPEN: None,
    },
    # downgrades
    (9, 5): {
        KVD_STAT_SHOW: "update", SYS_KVD_GET: "keep", KVD_CHECK: "add", DEBUG_SHOW_ONE: "keep",
        DUMP_SHOW: "keep", ENTRY_LIVE: "nop", PROC_INIT: "nop", KVD_REMOVE: "drop",
        SYS_KVD_DEL: None, ENTRIES_OPEN: None,
    },
    (4, 3): {KVD_STAT_SHOW: "keep", SYS_KVD_GET: "keep", KVD_CHECK: "keep"},
    (2, 1): {KVD_STAT_SHOW: "keep", SYS_KVD_GET: "nop"},
}


@pytest.mark.parametrize(("installed", "release"), list(TRANSITIONS))
def test_transitions(installed, release):
    a = run(release, installed)
    assert (a.release, a.installed) == (release, installed)
    assert {e.key: e.transition for e in a.functions} == TRANSITIONS[(installed, release)]
    # the net change is that of the release, whatever is installed
    assert net(a) == EXPECTED_NET[release]


def test_downgrade_lists_what_only_the_installed_release_changed():
    a = run(5, 9)
    assert {e.key for e in a.functions} == ALL_LISTED
    assert entry(a, KVD_REMOVE).change == "absent"
    assert entry(a, ENTRY_LIVE).change == "unchanged"
    assert entry(a, KVD_CHECK).change == "modified"


# --------------------------------------------------------------------------- CLI


def test_cli_json_with_from():
    proc = klpcc("analyze", str(PATCHES), "--source", str(SRC), "--from", "3", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["releases"] == RELEASES
    assert (doc["release"], doc["release_index"], doc["from"]) == (RELEASES[8], 9, RELEASES[2])
    assert doc["summary"] == {c: len(EXPECTED_NET[9][c]) for c in CHANGES}
    assert doc["nops"] == [KVD_CHECK]
    want = TRANSITIONS[(3, 9)]
    assert {k: sorted(v) for k, v in doc["transitions"].items()} == {
        t: sorted(k for k, v in want.items() if v == t) for t in set(want.values()) if t}
    by_key = {f["key"]: f for f in doc["functions"]}
    assert {c: {k for k, f in by_key.items() if f["change"] == c} for c in CHANGES} == EXPECTED_NET[9]
    assert by_key[SYS_KVD_GET]["name"] == "sys_kvd_get"
    assert by_key[SYS_KVD_GET]["macro"] == "SYSCALL_DEFINE2"
    assert by_key[DEBUG_SHOW_ONE]["file"] == "kernel/kvd_debug.c"
    assert by_key[DEBUG_SHOW_ONE]["static"] is True
    assert by_key[KVD_CHECK]["history"] == ["unchanged"] * 2 + ["modified"] * 5 + ["nop"] * 2
    assert by_key[KVD_CHECK]["touched"] == [RELEASES[2], RELEASES[7]]
    assert doc["warnings"] == []


def test_cli_text_comment_only_release():
    proc = klpcc("analyze", str(PATCHES / "series"), "--source", str(SRC), "-r", "4")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"release 4/9: {RELEASES[3]}\n")
    assert "summary: 3 modified, 0 added, 0 removed, 0 nop\n" in proc.stdout
    assert "changes outside functions" not in proc.stdout
    assert proc.stderr == ""


def _apply_cumulative(diff: Path, tmp: Path) -> dict[str, bytes]:
    work = tmp / "applied"
    shutil.copytree(SRC, work)
    _git_apply(diff, work, check=True)
    _git_apply(diff, work)
    return _files(work)


def test_cli_compile_reproduces_the_last_release(tmp_path, release_trees):
    out = tmp_path / "bundle"
    proc = klpcc("compile", str(PATCHES), "--source", str(SRC), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert f"release {RELEASES[8]}: 6 modified, 1 added, 1 removed, 1 nop" in proc.stdout
    assert _apply_cumulative(out / "cumulative.diff", tmp_path) == release_trees[9]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["release"] == {"name": RELEASES[8], "index": 9}
    assert manifest["nops"] == [KVD_CHECK]
    files = {f["path"]: f["status"] for f in manifest["files"]}
    assert files == {
        "fs/proc/kvd_stat.c": "modified", "include/linux/kvd.h": "modified",
        "kernel/Makefile": "modified", "kernel/kvd_core.c": "modified",
        "kernel/kvd_debug.c": "modified", "kernel/kvd_hash.c": "added",
    }


@pytest.mark.parametrize("release", [4, 7])
def test_compiled_earlier_release_reproduces_its_tree(tmp_path, release_trees, release):
    opts = AnalyzeOptions(series=[str(PATCHES)], source=str(SRC), release=release)
    a, _ = compile_bundle(opts, tmp_path / "bundle")
    assert net(a) == EXPECTED_NET[release]
    assert _apply_cumulative(tmp_path / "bundle" / "cumulative.diff", tmp_path) == release_trees[release]


# --------------------------------------------------------------------------- diff -N


def _diff_ruN(old: dict[str, bytes], new: dict[str, bytes], tmp: Path) -> bytes:
    """``diff -ruN a b`` between two trees: how hand-made patches often come.  A file
    one side lacks is shown as an empty file dated 1970-01-01, not as /dev/null."""
    for side, files in (("a", old), ("b", new)):
        for path, data in files.items():
            p = tmp / side / path
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
    proc = subprocess.run(["diff", "-ruN", "a", "b"], cwd=tmp, capture_output=True, check=False)
    assert proc.returncode == 1, proc.stderr
    return proc.stdout


def _variant_series(tmp: Path, upto: int, extra: bytes, name: str) -> Path:
    """The fixture's first ``upto`` patches, then ``extra`` as release ``name``."""
    out = tmp / "patches"
    out.mkdir()
    names = _series_patches()[:upto]
    for n in names:
        shutil.copy(PATCHES / n, out / n)
    (out / f"{name}.patch").write_bytes(extra)
    (out / "series").write_text("".join(f"{n}\n" for n in [*names, f"{name}.patch"]))
    return out


def test_plain_diff_creating_a_file(tmp_path, release_trees):
    """0007 as ``diff -ruN`` makes it (git apply and GNU patch take it as a creation)."""
    patch = _diff_ruN(release_trees[6], release_trees[7], tmp_path / "d")
    assert b"\n--- a/kernel/kvd_hash.c\t1970-01-01 00:00:00" in patch
    assert b"\n@@ -0,0 +1,20 @@\n" in patch
    patches = _variant_series(tmp_path, 6, patch, "0007-kvd-split-hash-raise-limit")
    a = analyze(AnalyzeOptions(series=[str(patches)], source=str(SRC)))
    assert a.release == 7
    assert net(a) == EXPECTED_NET[7]
    assert {e.key for e in a.outside if e.file == "kernel/kvd_hash.c"} == {
        "kernel/kvd_hash.c:include:<linux/export.h>", "kernel/kvd_hash.c:include:<linux/hash.h>",
        "kernel/kvd_hash.c:include:<linux/kvd.h>",
        "kernel/kvd_hash.c:statement:EXPORT_SYMBOL_GPL(kvd_hash);"}


def test_plain_diff_deleting_a_file(tmp_path, release_trees):
    """A tenth release, as ``diff -ruN`` makes it, deletes kernel/kvd_debug.c."""
    new = {p: d for p, d in release_trees[9].items() if p != "kernel/kvd_debug.c"}
    new["kernel/Makefile"] = new["kernel/Makefile"].replace(
        b"obj-$(CONFIG_KVD_DEBUGFS)\t+= kvd_debug.o\n", b"")
    assert new["kernel/Makefile"] != release_trees[9]["kernel/Makefile"]
    patch = _diff_ruN(release_trees[9], new, tmp_path / "d")
    assert b"\n+++ b/kernel/kvd_debug.c\t1970-01-01 00:00:00" in patch
    patches = _variant_series(tmp_path, 9, patch, "0010-kvd-remove-debugfs")
    check = tmp_path / "check"
    for path, data in release_trees[9].items():
        (check / path).parent.mkdir(parents=True, exist_ok=True)
        (check / path).write_bytes(data)
    _git_apply(patches / "0010-kvd-remove-debugfs.patch", check)
    assert _files(check) == new  # git apply deletes the file

    opts = AnalyzeOptions(series=[str(patches)], source=str(SRC))
    a, _ = compile_bundle(opts, tmp_path / "bundle")
    debug = {f"kernel/kvd_debug.c:{n}" for n in ("kvd_ctl_write", "kvd_debug_init", "kvd_debug_exit")}
    assert net(a) == _net(modified=_M8 - {DEBUG_SHOW_ONE, DUMP_SHOW}, added={KVD_REMOVE},
                          removed={ENTRIES_OPEN, DEBUG_SHOW_ONE, DUMP_SHOW} | debug,
                          nop={KVD_CHECK}, dropped={SYS_KVD_DEL})
    files = {f["path"]: f["status"]
             for f in json.loads((tmp_path / "bundle" / "manifest.json").read_text())["files"]}
    assert files["kernel/kvd_debug.c"] == "deleted"
    assert _apply_cumulative(tmp_path / "bundle" / "cumulative.diff", tmp_path) == new
