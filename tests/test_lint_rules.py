"""``klpcc lint``, one rule at a time.

For every rule a small series (built inline with ``make_series``) must trigger it, and a
close variant of the same series must not.  The expectations are written from the rule
descriptions (rule id, name, severity, what counts as carried code), not from klpcc's
output: a finding must name the release, and where the offending code is a line the
release's cumulative patch carries, its ``file``/``line`` must point at that line of the
release's tree and ``patch``/``patch_line`` at the ``+``/``-`` line of the patch that
wrote it.

Two small bases are used: a kernel-style driver (``kernel/foo.c``, ``kernel/foo.h``,
``kernel/foo_sysfs.c``) and a userspace service (``src/sessd.c``, ``src/sessd.h``) for the
klpcc runtime API.  Releases are named ``0001-release-1``, ``0002-release-2``, ...
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from .helpers import LINT_RULES, klpcc, make_series

RULES = LINT_RULES

FINDING_KEYS = {"rule", "name", "severity", "message", "hint", "release", "against", "function",
                "file", "line", "patch", "patch_line"}
SEVERITY_RANK = {"note": 0, "warning": 1, "error": 2}


def rel(n: int) -> str:
    return f"{n:04d}-release-{n}"


# =========================================================================== running lint


@dataclass
class Lint:
    """One ``klpcc lint --format json`` run, checked for the shape every run must have."""

    series: Series
    args: tuple[str, ...]
    exit: int
    data: dict
    stderr: str

    def __post_init__(self) -> None:
        d = self.data
        assert d["schema"] == "klpcc.lint/1"
        counts = {"error": 0, "warning": 0, "note": 0}
        for f in d["findings"]:
            assert set(f) >= FINDING_KEYS, f"finding lacks {FINDING_KEYS - set(f)}: {f}"
            assert f["severity"] in counts, f
            counts[f["severity"]] += 1
            if f["rule"] in RULES:
                assert (f["name"], f["severity"]) == RULES[f["rule"]], f
            assert f["release"] == d["release"], f
            assert isinstance(f["message"], str) and f["message"].strip(), f
            assert isinstance(f["hint"], str) and f["hint"].strip(), f
            assert set(f["against"]) <= set(d["against"]), f
            if f["patch"] is not None:  # a line the patch adds or removes
                _, pl = self.series.patch_line(f)
                assert pl[:1] in ("+", "-") and not pl.startswith(("+++ ", "--- ")), (pl, f)
        assert d["summary"] == counts, (d["summary"], counts)
        # the exit code follows --error-on (default: error)
        level = self.args[self.args.index("--error-on") + 1] if "--error-on" in self.args else "error"
        failing = any(SEVERITY_RANK[f["severity"]] >= SEVERITY_RANK[level] for f in d["findings"])
        assert self.exit == (1 if failing else 0), (self.exit, d["summary"], self.stderr)
        assert d["release"] in d["facts"]
        for k in d["against"]:
            assert k in d["facts"], f"no facts for {k}"

    @property
    def rules(self) -> set[str]:
        return {f["rule"] for f in self.data["findings"]}

    def find(self, rule: str) -> list[dict]:
        found = [f for f in self.data["findings"] if f["rule"] == rule]
        assert found, f"no {rule} in {self.summary()}"
        return found

    def one(self, rule: str) -> dict:
        found = self.find(rule)
        assert len(found) == 1, f"{len(found)} {rule} findings: {found}"
        return found[0]

    def summary(self) -> str:
        return "; ".join(f"{f['rule']} {f['file']}:{f['line']} {f['message']}" for f in self.data["findings"])

    def facts(self, n: int) -> dict:
        return self.data["facts"][rel(n)]


class Series:
    """A series made with ``make_series``, with every release's tree kept for checks."""

    def __init__(self, tmp: Path, base: dict[str, str], releases: list[dict[str, str | None]]):
        self.tmp = tmp
        self.patches, self.src = make_series(tmp, base, releases)
        self.trees: list[dict[str, str]] = [dict(base)]
        for r in releases:
            tree = {**self.trees[-1], **r}
            self.trees.append({k: v for k, v in tree.items() if v is not None})

    def run(self, *args: str) -> tuple[int, str, str]:
        proc = klpcc("lint", str(self.patches / "series"), "--source", str(self.src), *args, cwd=self.tmp)
        return proc.returncode, proc.stdout, proc.stderr

    def lint(self, *args: str) -> Lint:
        code, out, err = self.run("--format", "json", *args)
        assert code in (0, 1), f"exit {code}: {err}"
        return Lint(self, args, code, json.loads(out), err)

    # -- locations -----------------------------------------------------------------

    def patch_line(self, f: dict) -> tuple[Path, str]:
        assert f["patch"] is not None and f["patch_line"] is not None, f"no patch location: {f}"
        p = Path(f["patch"])
        cands = [p] if p.is_absolute() else [self.tmp / p, self.patches / p, Path.cwd() / p]
        path = next((c for c in cands if c.is_file()), None)
        assert path is not None, f"patch {f['patch']} not found"
        lines = path.read_text().splitlines()
        assert 1 <= f["patch_line"] <= len(lines), f
        return path, lines[f["patch_line"] - 1]

    def at(self, f: dict, n: int, path: str, needle: str) -> None:
        """``f`` points at the one line of ``path`` in release ``n`` holding ``needle``,
        and at the ``+`` line of release ``n``'s patch that wrote it."""
        text = self.trees[n][path]
        line = line_of(text, needle)
        assert (f["file"], f["line"]) == (path, line), f"{f['file']}:{f['line']} is not {path}:{line}: {f}"
        ppath, pl = self.patch_line(f)
        assert ppath.name == f"{rel(n)}.patch", f
        assert pl == "+" + text.splitlines()[line - 1], f"patch line {pl!r}"

    def at_earlier(self, f: dict, k: int, path: str, needle: str) -> None:
        """``f`` (about something an earlier release ``k`` has and the release lacks)
        points at the line of ``path`` in release ``k`` holding ``needle``, and at a patch
        line that adds or removes that very line."""
        text = self.trees[k][path]
        line = line_of(text, needle)
        assert (f["file"], f["line"]) == (path, line), f"{f['file']}:{f['line']} is not {path}:{line}: {f}"
        _, pl = self.patch_line(f)
        assert pl[:1] in ("+", "-") and pl[1:] == text.splitlines()[line - 1], f"patch line {pl!r}"

    def within(self, f: dict, n: int, path: str, first: str) -> None:
        """``f`` points into the item of ``path`` (release ``n``) that starts at the line
        holding ``first``, and at a ``+``/``-`` line of release ``n``'s patch in that item."""
        text = self.trees[n][path]
        lo, hi = item_span(text, first)
        assert f["file"] == path and lo <= f["line"] <= hi, f"{f['file']}:{f['line']} not in {path}:{lo}-{hi}"
        ppath, pl = self.patch_line(f)
        assert ppath.name == f"{rel(n)}.patch", f
        assert pl[:1] in ("+", "-") and pl[1:].strip(), f"patch line {pl!r}"
        if pl[0] == "+":
            assert pl[1:] in text.splitlines()[lo - 1:hi], f"patch line {pl!r} not in {path}:{lo}-{hi}"
        else:
            old = self.trees[n - 1][path]
            olo, ohi = item_span(old, first) if first in old else (1, len(old.splitlines()))
            assert pl[1:] in old.splitlines()[olo - 1:ohi], f"patch line {pl!r}"


def line_of(text: str, needle: str) -> int:
    hits = [i for i, ln in enumerate(text.splitlines(), 1) if needle in ln]
    assert len(hits) == 1, f"{needle!r} on lines {hits}"
    return hits[0]


def item_span(text: str, first: str) -> tuple[int, int]:
    """Lines of the item starting at the line holding ``first``, to its closing ``}``."""
    lo = line_of(text, first)
    lines = text.splitlines()
    for i in range(lo, len(lines) + 1):
        if lines[i - 1] in ("}", "};"):
            return lo, i
    raise AssertionError(f"no end for {first!r}")


def edit(text: str, *pairs: tuple[str, str]) -> str:
    for old, new in pairs:
        assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times"
        text = text.replace(old, new)
    return text


# =========================================================================== kernel base

FOO_H = """\
/* SPDX-License-Identifier: GPL-2.0 */
#ifndef _KERNEL_FOO_H
#define _KERNEL_FOO_H

#define FOO_STATE_LIMIT\t\t7
#define FOO_SHADOW_EXT\t\t3

enum foo_state_ids {
\tFOO_STATE_QUEUE = 20,
\tFOO_STATE_WAKE,
};

struct foo_dev {
\tint id;
\tint users;
\tunsigned long flags;
};

static inline int foo_valid(struct foo_dev *d)
{
\treturn d->id >= 0;
}

#endif /* _KERNEL_FOO_H */
"""

FOO_SYSFS_C = """\
// SPDX-License-Identifier: GPL-2.0
#include <linux/kobject.h>
#include <linux/sysfs.h>
#include "foo.h"

static struct foo_dev *foo_sysfs_dev;

ssize_t foo_valid_show(struct kobject *kobj, struct kobj_attribute *attr, char *buf)
{
\treturn sysfs_emit(buf, "%d\\n", foo_valid(foo_sysfs_dev));
}
"""

FOO_C = """\
// SPDX-License-Identifier: GPL-2.0
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/livepatch.h>
#include "foo.h"

static int foo_limit = 16;

{types}static inline unsigned int foo_hash(unsigned int x)
{{
\treturn x * 2654435761U;
}}

static __always_inline int foo_clamp(int v)
{{
\treturn v < 0 ? 0 : v;
}}

int foo_count(struct foo_dev *d)
{{
{count}\treturn foo_clamp(d->users);
}}

int foo_open(struct foo_dev *d)
{{
{open_decl}\tif (!foo_valid(d))
\t\treturn -ENODEV;
\tif (foo_count(d) >= foo_limit)
\t\treturn -EBUSY;
{open}\td->flags = foo_hash(d->id);
\td->users++;
\treturn 0;
}}

void foo_release(struct foo_dev *d)
{{
{release_decl}\tif (foo_valid(d))
\t\td->users--;
{release}}}

static notrace int foo_trace_id(struct foo_dev *d)
{{
\treturn d->id;
}}

noinstr void foo_irq_enter(struct foo_dev *d)
{{
\td->flags |= 1;
}}

static int __init foo_init(void)
{{
\tpr_info("foo: ready\\n");
\treturn 0;
}}

static void __exit foo_exit(void)
{{
\tpr_info("foo: gone\\n");
}}

module_init(foo_init);
module_exit(foo_exit);
MODULE_LICENSE("GPL");
{glue}"""

MARK = '\tpr_debug("foo: count of %d\\n", d->id);\n'  # a harmless fix to foo_count


def foo_c(*, types: str = "", count: str = "", open_decl: str = "", open: str = "", release_decl: str = "",
          release: str = "", glue: str = "") -> str:
    return FOO_C.format(types=types, count=count, open_decl=open_decl, open=open,
                        release_decl=release_decl, release=release, glue="\n" + glue if glue else "")


KBASE = {"kernel/foo.c": foo_c(), "kernel/foo.h": FOO_H, "kernel/foo_sysfs.c": FOO_SYSFS_C}

EXT = "struct foo_ext {\n\tunsigned long stamp;\n\tint hits;\n};\n\n"
EXT_WIDER = "struct foo_ext {\n\tunsigned long stamp;\n\tint hits;\n\tint misses;\n};\n\n"
BIG = "struct foo_big {\n\tunsigned long stamp;\n\tint hits;\n\tint misses[4];\n};\n\n"
DTORS = ("static void foo_ext_dtor(void *obj, void *shadow_data)\n{\n"
         "\tstruct foo_ext *ext = shadow_data;\n\n\text->hits = 0;\n}\n\n"
         "static void foo_ext_put(void *obj, void *shadow_data)\n{\n\tkfree(obj);\n}\n\n")

OPEN_DECL = "\tstruct foo_ext *ext;\n\n"
OPEN_ALLOC = ("\text = klp_shadow_alloc(d, FOO_SHADOW_EXT, sizeof(struct foo_ext), GFP_KERNEL, NULL, NULL);\n"
              "\tif (!ext)\n\t\treturn -ENOMEM;\n")
OPEN_GET_OR_ALLOC = ("\text = klp_shadow_get_or_alloc(d, FOO_SHADOW_EXT, sizeof(*ext), GFP_KERNEL,\n"
                     "\t\t\t\t     NULL, NULL);\n"
                     "\tif (!ext)\n\t\treturn -ENOMEM;\n")
RELEASE_DECL_GET = "\tstruct foo_ext *ext = klp_shadow_get(d, FOO_SHADOW_EXT);\n\n"
RELEASE_USE = "\tif (ext)\n\t\text->hits--;\n"


def kfile(**kw: str) -> dict[str, str]:
    return {"kernel/foo.c": foo_c(**kw)}


# =========================================================================== userspace base

SESSD_H = """\
#ifndef SESSD_H
#define SESSD_H

#include <stddef.h>

#define SESS_SHADOW_STATS\t0x51
#define SESS_STATE_BACKLOG\t4

struct session {
\tint fd;
\tunsigned int nr;
};

#endif
"""

SESSD_C = """\
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include "klpcc.h"
#include "sessd.h"

static unsigned int max_sessions = 64;

{types}int sess_open(struct session *s, int fd)
{{
{open_decl}\tif (s->nr >= max_sessions)
\t\treturn -1;
{open}\ts->fd = fd;
\ts->nr++;
\treturn 0;
}}

long sess_recv(struct session *s, char *buf, size_t len)
{{
{recv}\tif (s->fd < 0)
\t\treturn -1;
\treturn read(s->fd, buf, len);
}}

void sess_close(struct session *s)
{{
{close_decl}\tclose(s->fd);
\ts->fd = -1;
\ts->nr--;
{close}}}
{glue}"""

UMARK = "\tif (!buf)\n\t\treturn -1;\n"  # a harmless fix to sess_recv

STATS = "struct sess_stats {\n\tunsigned long bytes;\n\tunsigned int reads;\n};\n\n"
STATS_BIG = ("struct sess_stats_v2 {\n\tunsigned long bytes;\n\tunsigned int reads;\n"
             "\tunsigned int errs;\n};\n\n")
UOPEN_DECL = "\tstruct sess_stats *st;\n\n"
UOPEN_ALLOC = ("\tst = klpcc_shadow_alloc(s, SESS_SHADOW_STATS, sizeof(*st), NULL, NULL);\n"
               "\tif (!st)\n\t\treturn -1;\n")


def sessd_c(*, types: str = "", open_decl: str = "", open: str = "", recv: str = "", close_decl: str = "",
            close: str = "", glue: str = "") -> str:
    return SESSD_C.format(types=types, open_decl=open_decl, open=open, recv=recv, close_decl=close_decl,
                          close=close, glue="\n" + glue if glue else "")


UBASE = {"src/sessd.c": sessd_c(), "src/sessd.h": SESSD_H}


def ufile(**kw: str) -> dict[str, str]:
    return {"src/sessd.c": sessd_c(**kw)}


# =========================================================================== glue


LOG = '\tpr_info("%s\\n", __func__);\n'
ULOG = '\tfprintf(stderr, "%s\\n", __func__);\n'


def callbacks(form: str, cbs: dict[str, tuple[str, str]]) -> str:
    """Callback functions (kind -> (name, body)) and their registration: ``klp_object``
    (designated initialisers, as the kernel selftests do), ``kpatch``, ``klp`` (klp-build)
    or ``klpcc`` (the userspace runtime)."""
    params = {"klpcc": "void", "kpatch": "patch_object *obj"}.get(form, "struct klp_object *obj")
    out = []
    for kind, (fn, body) in cbs.items():
        if kind == "pre_patch":
            out.append(f"static int {fn}({params})\n{{\n{body}\treturn 0;\n}}\n\n")
        else:
            out.append(f"static void {fn}({params})\n{{\n{body}}}\n\n")
    if form == "klp_object":
        inits = "".join(f"\t\t\t.{kind} = {fn},\n" for kind, (fn, _) in cbs.items())
        out.append("static struct klp_object foo_lp_objs[] = {\n\t{\n\t\t.name = NULL,\n"
                   f"\t\t.callbacks = {{\n{inits}\t\t}},\n\t}},\n\t{{ }}\n}};\n")
    else:
        for kind, (fn, _) in cbs.items():
            when, what = kind.upper().split("_")
            macro = {"kpatch": f"KPATCH_{when}_{what}_CALLBACK", "klp": f"KLP_{when}_{what}_CALLBACK",
                     "klpcc": f"KLPCC_{when}_{what}"}[form]
            out.append(f"{macro}({fn});\n")
    return "".join(out)


def cb_needle(form: str, fn: str) -> str:
    """Text of the line that registers callback ``fn``."""
    return f"= {fn}," if form == "klp_object" else f"({fn});"


def state_entry(form: str, sid: object, version: object) -> str:
    if form == "klpcc":
        return f"KLPCC_STATE({sid}, {version});"
    if form == "positional":
        return f"{{ {sid}, {version} }},"
    return f"{{ .id = {sid}, .version = {version} }},"


def states(form: str, *entries: tuple[object, object]) -> str:
    """A state declaration: ``designated`` or ``positional`` ``struct klp_state`` array, a
    ``compound`` literal in a ``struct klp_patch``, or ``klpcc`` (``KLPCC_STATE``)."""
    if form == "klpcc":
        return "".join(state_entry(form, i, v) + "\n" for i, v in entries)
    if form == "compound":
        rows = "".join(f"\t\t{state_entry(form, i, v)}\n" for i, v in entries)
        return ("static struct klp_patch foo_lp_patch = {\n\t.mod = THIS_MODULE,\n"
                f"\t.states = (struct klp_state[]) {{\n{rows}\t\t{{ }}\n\t}},\n\t.replace = true,\n}};\n")
    rows = "".join(f"\t{state_entry(form, i, v)}\n" for i, v in entries)
    return f"static struct klp_state foo_lp_states[] = {{\n{rows}\t{{ }}\n}};\n"


@dataclass(frozen=True)
class Flavour:
    """Where glue goes: the kernel base (callbacks in ``form``) or the userspace one."""

    form: str

    @property
    def user(self) -> bool:
        return self.form == "klpcc"

    @property
    def base(self) -> dict[str, str]:
        return UBASE if self.user else KBASE

    @property
    def path(self) -> str:
        return "src/sessd.c" if self.user else "kernel/foo.c"

    @property
    def log(self) -> str:
        return ULOG if self.user else LOG

    @property
    def state_form(self) -> str:
        return "klpcc" if self.user else "designated"

    def release(self, glue: str = "") -> dict[str, str]:
        """A release that fixes one function and carries ``glue``."""
        return ufile(recv=UMARK, glue=glue) if self.user else kfile(count=MARK, glue=glue)

    def cbs(self, **kinds: str) -> str:
        """Callbacks of the given kinds, each only logging, named PREFIX_KIND."""
        return callbacks(self.form, {k: (f"{prefix}_{k}", self.log) for k, prefix in kinds.items()})

    def states(self, *entries: tuple[object, object]) -> str:
        return states(self.state_form, *entries)


CB_FORMS = [Flavour("klp_object"), Flavour("kpatch"), Flavour("klp"), Flavour("klpcc")]
CB_IDS = [f.form for f in CB_FORMS]
KERNEL = Flavour("klp_object")


# =========================================================================== S001, S002

STATE_FORMS = ["designated", "positional", "compound", "klpcc"]


def _state_series(tmp_path: Path, form: str, first: list, second: list) -> Series:
    fl = Flavour("klpcc") if form == "klpcc" else KERNEL
    mk = (lambda g: ufile(recv=UMARK, glue=g)) if fl.user else (lambda g: kfile(count=MARK, glue=g))
    r2 = mk(states(form, *second)) if second else fl.release()
    return Series(tmp_path, fl.base, [mk(states(form, *first)), r2])


@pytest.mark.parametrize("form", STATE_FORMS)
def test_s001_state_dropped(tmp_path, form):
    s = _state_series(tmp_path, form, [(1, 1)], [])
    lint = s.lint()
    assert lint.exit == 1
    f = lint.one("S001")
    assert f["release"] == rel(2) and rel(1) in f["against"]
    assert "klp_is_patch_compatible" in f["message"] or "-EINVAL" in f["message"]
    s.at_earlier(f, 1, "src/sessd.c" if form == "klpcc" else "kernel/foo.c", state_entry(form, 1, 1))
    assert lint.data["against"] == [rel(1)]
    assert lint.facts(2)["states"] == []
    assert [(st["id"], st["version"]) for st in lint.facts(1)["states"]] == [(1, 1)]


@pytest.mark.parametrize("form", STATE_FORMS)
@pytest.mark.parametrize("kept", [(1, 1), (1, 2)], ids=["same-version", "higher-version"])
def test_s001_s002_state_kept_is_clean(tmp_path, form, kept):
    s = _state_series(tmp_path, form, [(1, 1)], [kept])
    lint = s.lint()
    assert lint.exit == 0
    assert not lint.rules & {"S001", "S002"}, lint.summary()
    assert [(st["id"], st["version"]) for st in lint.facts(2)["states"]] == [kept]


@pytest.mark.parametrize("form", STATE_FORMS)
def test_s002_state_version_lowered(tmp_path, form):
    s = _state_series(tmp_path, form, [(1, 2)], [(1, 1)])
    lint = s.lint()
    assert lint.exit == 1
    f = lint.one("S002")
    assert rel(1) in f["against"]
    assert "S001" not in lint.rules
    path = "src/sessd.c" if form == "klpcc" else "kernel/foo.c"
    s.at(f, 2, path, state_entry(form, 1, 1))
    assert f["function"] is None


def test_s001_only_the_dropped_id(tmp_path):
    s = _state_series(tmp_path, "designated", [(1, 1), (2, 1)], [(2, 1)])
    lint = s.lint()
    assert len(lint.find("S001")) == 1
    assert "S002" not in lint.rules


# --- ids from macros and enums in a quoted #include header


@pytest.mark.parametrize(("first", "second", "value"), [
    ("FOO_STATE_LIMIT", "7", 7),
    ("FOO_STATE_WAKE", "21", 21),
    ("20", "FOO_STATE_QUEUE", 20),
])
def test_state_ids_from_header_macros_and_enums(tmp_path, first, second, value):
    s = _state_series(tmp_path, "designated", [(first, 1)], [(second, 1)])
    lint = s.lint()
    assert not lint.rules & {"S001", "S002"}, lint.summary()
    assert lint.exit == 0
    assert [st["id"] for st in lint.facts(1)["states"]] == [value]
    assert [st["id"] for st in lint.facts(2)["states"]] == [value]


def test_state_id_from_other_enum_constant_is_dropped(tmp_path):
    s = _state_series(tmp_path, "designated", [("FOO_STATE_WAKE", 1)], [("FOO_STATE_QUEUE", 1)])
    lint = s.lint()
    assert lint.one("S001")["severity"] == RULES["S001"][1]
    assert [st["id"] for st in lint.facts(2)["states"]] == [20]


def test_state_version_from_macro_is_lowered(tmp_path):
    first = "#define FOO_LP_VERSION\t3\n\n" + states("designated", ("FOO_STATE_LIMIT", "FOO_LP_VERSION"))
    s = Series(tmp_path, KBASE, [kfile(count=MARK, glue=first),
                                 kfile(count=MARK, glue=states("designated", (7, 2)))])
    lint = s.lint()
    assert lint.one("S002")["severity"] == RULES["S002"][1]
    assert [(st["id"], st["version"]) for st in lint.facts(1)["states"]] == [(7, 3)]


# =========================================================================== --from, downgrades, exit codes


def _three_states(tmp_path: Path) -> Series:
    return Series(tmp_path, KBASE, [
        kfile(count=MARK, glue=states("designated", (1, 1), (2, 1))),
        kfile(count=MARK, glue=states("designated", (2, 1))),
        kfile(count=MARK, open='\tpr_debug("foo: open\\n");\n', glue=states("designated", (2, 1))),
    ])


def test_without_from_every_earlier_release_counts(tmp_path):
    s = _three_states(tmp_path)
    lint = s.lint()
    assert lint.data["release"] == rel(3)
    assert lint.data["against"] == [rel(1), rel(2)]
    f = lint.one("S001")
    assert f["against"] == [rel(1)]
    assert lint.exit == 1


@pytest.mark.parametrize("k", ["2", rel(2)])
def test_from_restricts_the_comparison(tmp_path, k):
    s = _three_states(tmp_path)
    lint = s.lint("--from", k)
    assert lint.data["release"] == rel(3)
    assert lint.data["against"] == [rel(2)]
    assert "S001" not in lint.rules, lint.summary()
    assert lint.exit == 0
    # and --from 1 does see the dropped state
    lint = s.lint("--from", "1")
    assert lint.data["against"] == [rel(1)]
    assert lint.one("S001")["against"] == [rel(1)]


@pytest.mark.parametrize("r", ["2", rel(2)])
def test_release_by_number_or_name(tmp_path, r):
    s = _three_states(tmp_path)
    lint = s.lint("--release", r)
    assert lint.data["release"] == rel(2)
    assert lint.data["against"] == [rel(1)]
    assert lint.one("S001")["release"] == rel(2)


def test_downgrade_is_judged_by_states(tmp_path):
    s = Series(tmp_path, KBASE, [
        kfile(count=MARK, glue=states("designated", (1, 1))),
        kfile(count=MARK, glue=states("designated", (1, 2), (2, 1))),
    ])
    assert s.lint().exit == 0  # the upgrade is fine
    assert s.lint("--release", "1").data["against"] == []
    lint = s.lint("--release", "1", "--from", "2")
    assert (lint.data["release"], lint.data["against"]) == (rel(1), [rel(2)])
    assert lint.exit == 1
    f = lint.one("S002")
    assert (f["release"], f["against"]) == (rel(1), [rel(2)])
    s.at(f, 1, "kernel/foo.c", state_entry("designated", 1, 1))
    dropped = lint.one("S001")
    assert dropped["against"] == [rel(2)]


def test_error_on_warning(tmp_path):
    """A run with warnings only exits 0, and 1 with --error-on warning."""
    s = Series(tmp_path, KBASE, [KERNEL.release(KERNEL.cbs(pre_unpatch="foo_lp")),
                                 KERNEL.release(KERNEL.cbs(post_patch="foo_lp2"))])
    lint = s.lint()
    assert lint.data["summary"]["error"] == 0 and lint.data["summary"]["warning"] >= 1
    assert lint.exit == 0
    assert s.lint("--error-on", "error").exit == 0
    assert s.lint("--error-on", "warning").exit == 1


def test_clean_series_exits_0_with_error_on_warning(tmp_path):
    s = Series(tmp_path, KBASE, [kfile(count=MARK), kfile(count=MARK, open='\tpr_debug("o\\n");\n')])
    lint = s.lint("--error-on", "warning")
    assert lint.exit == 0
    assert lint.data["findings"] == [] or {f["severity"] for f in lint.data["findings"]} == {"note"}


@pytest.mark.parametrize("args", [
    ("--release", "7"),
    ("--release", "no-such-release"),
    ("--from", "0009-nope"),
    ("--format", "xml"),
    ("--error-on", "note-ish"),
])
def test_bad_input_exits_2(tmp_path, args):
    s = _three_states(tmp_path)
    code, out, err = s.run(*args)
    assert code == 2, (code, out, err)
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("klpcc: error:"), err


@pytest.mark.parametrize("how", ["directory", "files"])
def test_series_as_directory_or_patch_files(tmp_path, how):
    s = _three_states(tmp_path)
    files = [str(s.patches / f"{rel(n)}.patch") for n in (1, 2, 3)]
    given = [str(s.patches)] if how == "directory" else files
    proc = klpcc("lint", *given, "--source", str(s.src), "--format", "json", "--release", "2")
    assert proc.returncode == 1, proc.stderr
    data = json.loads(proc.stdout)
    assert (data["release"], data["against"]) == (rel(2), [rel(1)])
    assert [f["rule"] for f in data["findings"]] == ["S001"]


def test_missing_config_exits_2(tmp_path):
    s = _three_states(tmp_path)
    code, _, err = s.run("--config", str(tmp_path / "nowhere.toml"))
    assert code == 2
    assert err.startswith("klpcc: error:") and len(err.strip().splitlines()) == 1, err


def test_source_missing_exits_2(tmp_path):
    s = _three_states(tmp_path)
    proc = klpcc("lint", str(s.patches / "series"), "--source", str(tmp_path / "nowhere"), "--format", "json")
    assert proc.returncode == 2
    assert proc.stderr.startswith("klpcc: error:") and len(proc.stderr.strip().splitlines()) == 1


# =========================================================================== output formats


def test_text_sarif_and_output_file(tmp_path):
    s = _three_states(tmp_path)
    code, out, _ = s.run()
    assert code == 1
    assert "S001" in out and "state-dropped" in out and rel(3) in out
    code, out, _ = s.run("--format", "sarif")
    assert code == 1
    sarif = json.loads(out)
    assert sarif["version"] == "2.1.0"
    results = sarif["runs"][0]["results"]
    assert any(r["ruleId"] == "S001" and r["level"] == "error" for r in results)
    dest = tmp_path / "out" / "lint.json"
    dest.parent.mkdir()
    code, out, _ = s.run("--format", "json", "-o", str(dest))
    assert code == 1
    assert out.strip() == ""
    assert json.loads(dest.read_text())["findings"][0]["rule"] == "S001"


# =========================================================================== C001, C002, C003


@pytest.mark.parametrize("kind", ["pre_unpatch", "post_unpatch"])
@pytest.mark.parametrize("fl", CB_FORMS, ids=CB_IDS)
def test_c001_unpatch_callbacks_lost(tmp_path, fl, kind):
    s = Series(tmp_path, fl.base, [fl.release(fl.cbs(**{kind: "lp_one"})), fl.release()])
    lint = s.lint()
    assert lint.exit == 1
    f = lint.one("C001")
    assert rel(1) in f["against"]
    s.at_earlier(f, 1, fl.path, cb_needle(fl.form, f"lp_one_{kind}"))
    cbs = lint.facts(1)["callbacks"]
    assert [(c["kind"], c["callback"]) for c in cbs] == [(kind, f"lp_one_{kind}")]
    assert lint.facts(2)["callbacks"] == []


@pytest.mark.parametrize("fl", CB_FORMS, ids=CB_IDS)
def test_c001_not_when_release_has_own_callbacks(tmp_path, fl):
    s = Series(tmp_path, fl.base, [fl.release(fl.cbs(pre_unpatch="lp_one", post_unpatch="lp_one")),
                                   fl.release(fl.cbs(pre_unpatch="lp_two", post_unpatch="lp_two"))])
    lint = s.lint()
    assert not lint.rules & {"C001", "C002", "C003"}, lint.summary()
    assert lint.exit == 0


@pytest.mark.parametrize("fl", CB_FORMS, ids=CB_IDS)
def test_c001_not_when_state_is_taken_over(tmp_path, fl):
    s = Series(tmp_path, fl.base, [fl.release(fl.cbs(pre_unpatch="lp_one") + fl.states((5, 1))),
                                   fl.release(fl.states((5, 1)))])
    lint = s.lint()
    assert not lint.rules & {"C001", "C002", "C003", "S001"}, lint.summary()
    assert lint.exit == 0


@pytest.mark.parametrize(("had", "has"), [("pre_unpatch", "post_patch"), ("post_unpatch", "pre_unpatch"),
                                          ("pre_unpatch", "post_unpatch")])
@pytest.mark.parametrize("fl", CB_FORMS, ids=CB_IDS)
def test_c002_unpatch_callback_not_taken_over(tmp_path, fl, had, has):
    s = Series(tmp_path, fl.base, [fl.release(fl.cbs(**{had: "lp_one"})),
                                   fl.release(fl.cbs(**{has: "lp_two"}))])
    lint = s.lint()
    f = lint.one("C002")
    assert had in f["message"]
    assert rel(1) in f["against"]
    s.at_earlier(f, 1, fl.path, cb_needle(fl.form, f"lp_one_{had}"))
    assert "C001" not in lint.rules
    assert lint.exit == 0
    assert s.lint("--error-on", "warning").exit == 1


@pytest.mark.parametrize("fl", CB_FORMS, ids=CB_IDS)
def test_c002_not_when_same_kind_is_there(tmp_path, fl):
    s = Series(tmp_path, fl.base, [fl.release(fl.cbs(pre_unpatch="lp_one", post_patch="lp_one")),
                                   fl.release(fl.cbs(pre_unpatch="lp_two"))])
    lint = s.lint()
    assert not lint.rules & {"C001", "C002"}, lint.summary()


def test_c002_not_when_state_is_shared(tmp_path):
    s = Series(tmp_path, KBASE, [
        KERNEL.release(KERNEL.cbs(pre_unpatch="lp_one") + KERNEL.states((1, 1))),
        KERNEL.release(KERNEL.cbs(post_patch="lp_two") + KERNEL.states((1, 2))),
    ])
    assert not s.lint().rules & {"C001", "C002", "C003", "S001", "S002"}


EFFECTS = {
    "assigns": "\tfoo_limit = 64;\n" + LOG,
    "calls": LOG + "\tflush_workqueue(system_long_wq);\n",
}


@pytest.mark.parametrize("effect", EFFECTS)
@pytest.mark.parametrize("form", ["klp_object", "kpatch", "klp"])
def test_c003_post_patch_effects_lost(tmp_path, form, effect):
    glue = callbacks(form, {"post_patch": ("lp_one_post_patch", EFFECTS[effect])})
    s = Series(tmp_path, KBASE, [kfile(count=MARK, glue=glue), kfile(count=MARK)])
    lint = s.lint()
    f = lint.one("C003")
    assert rel(1) in f["against"]
    s.at_earlier(f, 1, "kernel/foo.c", cb_needle(form, "lp_one_post_patch"))
    assert "C001" not in lint.rules and "C002" not in lint.rules
    assert lint.exit == 0
    assert s.lint("--error-on", "warning").exit == 1
    (cb,) = lint.facts(1)["callbacks"]
    assert (cb["kind"], cb["callback"]) == ("post_patch", "lp_one_post_patch")
    assert cb["effects"], cb


def test_c003_userspace(tmp_path):
    glue = callbacks("klpcc", {"post_patch": ("lp_one_post_patch", "\tmax_sessions = 128;\n")})
    s = Series(tmp_path, UBASE, [ufile(recv=UMARK, glue=glue), ufile(recv=UMARK)])
    assert s.lint().one("C003")["severity"] == RULES["C003"][1]


def test_c003_not_when_post_patch_only_logs(tmp_path):
    glue = callbacks("klp_object", {"post_patch": ("lp_one_post_patch", LOG + LOG)})
    s = Series(tmp_path, KBASE, [kfile(count=MARK, glue=glue), kfile(count=MARK)])
    lint = s.lint()
    assert not lint.rules & {"C001", "C002", "C003"}, lint.summary()
    assert lint.facts(1)["callbacks"][0]["effects"] == []


def test_c003_not_when_release_has_callbacks(tmp_path):
    s = Series(tmp_path, KBASE, [
        kfile(count=MARK, glue=callbacks("klp_object",
                                         {"post_patch": ("lp_one_post_patch", EFFECTS["assigns"])})),
        kfile(count=MARK, glue=callbacks("klp_object", {"post_patch": ("lp_two_post_patch", LOG)})),
    ])
    assert "C003" not in s.lint().rules


def test_c003_not_when_state_is_shared(tmp_path):
    s = Series(tmp_path, KBASE, [
        kfile(count=MARK, glue=callbacks("klp_object",
                                         {"post_patch": ("lp_one_post_patch", EFFECTS["calls"])})
              + states("designated", (4, 1))),
        kfile(count=MARK, glue=states("designated", (4, 1))),
    ])
    assert "C003" not in s.lint().rules


# =========================================================================== H001

# how release 2 gets (or allocates) the shadow variable in foo_release, typed T
H001_FORMS = {
    "cast": ("", '\tpr_debug("foo: %d\\n", ((struct {T} *)klp_shadow_get(d, FOO_SHADOW_EXT))->hits);\n'),
    "declaration": ("\tstruct {T} *x = klp_shadow_get(d, FOO_SHADOW_EXT);\n\n", "\tif (x)\n\t\tx->hits--;\n"),
    "assignment": ("\tstruct {T} *x;\n\n",
                   "\tx = klp_shadow_get(d, FOO_SHADOW_EXT);\n\tif (x)\n\t\tx->hits--;\n"),
    "sizeof-type": ("", "\tklp_shadow_get_or_alloc(d, 3, sizeof(struct {T}), GFP_ATOMIC, NULL, NULL);\n"),
    "sizeof-deref": ("\tstruct {T} *x;\n\n",
                     "\tx = klp_shadow_get_or_alloc(d, 3, sizeof(*x), GFP_ATOMIC, NULL, NULL);\n"
                     "\tif (x)\n\t\tx->hits--;\n"),
}


def _h001_series(tmp_path: Path, form: str, typ: str) -> Series:
    decl, use = (t.replace("{T}", typ) for t in H001_FORMS[form])
    r1 = kfile(types=EXT, open_decl=OPEN_DECL, open=OPEN_ALLOC)
    r2 = kfile(types=EXT + BIG, open_decl=OPEN_DECL, open=OPEN_ALLOC, release_decl=decl, release=use)
    return Series(tmp_path, KBASE, [r1, r2])


@pytest.mark.parametrize("form", H001_FORMS)
def test_h001_shadow_type_mismatch(tmp_path, form):
    s = _h001_series(tmp_path, form, "foo_big")
    lint = s.lint()
    assert lint.exit == 1
    f = lint.one("H001")
    s.at(f, 2, "kernel/foo.c", "klp_shadow_get")
    assert f["function"].endswith("foo_release")
    uses = [u for u in lint.facts(2)["shadow"] if u["function"] and u["function"].endswith("foo_release")]
    assert [(u["id"], u["type"]) for u in uses] == [(3, "struct foo_big")]
    alloc = [u for u in lint.facts(1)["shadow"] if u["op"] == "alloc"]
    assert [(u["id"], u["type"]) for u in alloc] == [(3, "struct foo_ext")]


@pytest.mark.parametrize("form", H001_FORMS)
def test_h001_same_type_is_clean(tmp_path, form):
    s = _h001_series(tmp_path, form, "foo_ext")
    lint = s.lint()
    assert not lint.rules & {"H001", "H002"}, lint.summary()
    assert lint.exit == 0


@pytest.mark.parametrize(("size", "bad"), [("32", True), ("16", False)])
def test_h001_sizes(tmp_path, size, bad):
    alloc = "\tif (!klp_shadow_alloc(d, FOO_SHADOW_EXT, 16, GFP_KERNEL, NULL, NULL))\n\t\treturn -ENOMEM;\n"
    r1 = kfile(open=alloc)
    r2 = kfile(open=alloc,
               release=f"\tklp_shadow_get_or_alloc(d, FOO_SHADOW_EXT, {size}, GFP_ATOMIC, NULL, NULL);\n")
    s = Series(tmp_path, KBASE, [r1, r2])
    lint = s.lint()
    if bad:
        s.at(lint.one("H001"), 2, "kernel/foo.c", "klp_shadow_get_or_alloc")
    else:
        assert "H001" not in lint.rules, lint.summary()


@pytest.mark.parametrize(("ext", "bad"), [(EXT_WIDER, True), (EXT, False)])
def test_h001_same_name_different_definition(tmp_path, ext, bad):
    r1 = kfile(types=EXT, open_decl=OPEN_DECL, open=OPEN_ALLOC)
    r2 = kfile(types=ext, count=MARK, open_decl=OPEN_DECL, open=OPEN_ALLOC, release_decl=RELEASE_DECL_GET,
               release=RELEASE_USE)
    s = Series(tmp_path, KBASE, [r1, r2])
    lint = s.lint()
    if not bad:
        assert "H001" not in lint.rules, lint.summary()
        return
    f = lint.one("H001")
    text = s.trees[2]["kernel/foo.c"]
    lo, hi = item_span(text, "struct foo_ext {")
    allowed = set(range(lo, hi + 1)) | {line_of(text, "klp_shadow_alloc"), line_of(text, "klp_shadow_get(")}
    assert f["file"] == "kernel/foo.c" and f["line"] in allowed, f
    _, pl = s.patch_line(f)
    assert pl[:1] in ("+", "-") and any(w in pl for w in ("foo_ext", "klp_shadow", "misses", "hits")), pl


def test_h001_userspace(tmp_path):
    r1 = ufile(types=STATS, open_decl=UOPEN_DECL, open=UOPEN_ALLOC)
    r2 = ufile(types=STATS + STATS_BIG, open_decl=UOPEN_DECL, open=UOPEN_ALLOC,
               close_decl="\tstruct sess_stats_v2 *st = klpcc_shadow_get(s, SESS_SHADOW_STATS);\n\n",
               close="\tif (st)\n\t\tst->errs = 0;\n")
    s = Series(tmp_path, UBASE, [r1, r2])
    lint = s.lint()
    s.at(lint.one("H001"), 2, "src/sessd.c", "klpcc_shadow_get(")
    alloc = [u for u in lint.facts(1)["shadow"] if u["op"] == "alloc"]
    assert [(u["id"], u["type"]) for u in alloc] == [(0x51, "struct sess_stats")]


# =========================================================================== H002


@pytest.mark.parametrize(("decl", "use", "needle"), [
    (RELEASE_DECL_GET, RELEASE_USE, "klp_shadow_get("),
    ("", "\tklp_shadow_free(d, FOO_SHADOW_EXT, NULL);\n", "klp_shadow_free("),
], ids=["get", "free"])
def test_h002_shadow_get_unallocated(tmp_path, decl, use, needle):
    s = Series(tmp_path, KBASE, [kfile(types=EXT, release_decl=decl, release=use)])
    lint = s.lint()
    assert lint.data["against"] == []
    assert lint.exit == 1
    f = lint.one("H002")
    s.at(f, 1, "kernel/foo.c", needle)
    assert f["function"].endswith("foo_release")


def test_h002_userspace(tmp_path):
    s = Series(tmp_path, UBASE, [ufile(close="\tklpcc_shadow_free(s, SESS_SHADOW_STATS, NULL);\n")])
    s.at(s.lint().one("H002"), 1, "src/sessd.c", "klpcc_shadow_free(")


@pytest.mark.parametrize("alloc", [OPEN_ALLOC, OPEN_GET_OR_ALLOC], ids=["alloc", "get_or_alloc"])
def test_h002_allocated_in_same_release_is_clean(tmp_path, alloc):
    s = Series(tmp_path, KBASE, [kfile(types=EXT, open_decl=OPEN_DECL, open=alloc,
                                       release_decl=RELEASE_DECL_GET, release=RELEASE_USE)])
    lint = s.lint()
    assert "H002" not in lint.rules, lint.summary()
    assert lint.exit == 0


def test_h002_allocated_by_earlier_release_is_clean(tmp_path):
    """Release 1 allocates (with the macro id), release 2 no longer does but gets the
    variables release 1 made (with the literal id)."""
    s = Series(tmp_path, KBASE, [
        kfile(types=EXT, open_decl=OPEN_DECL, open=OPEN_GET_OR_ALLOC),
        kfile(types=EXT, release_decl="\tstruct foo_ext *ext = klp_shadow_get(d, 3);\n\n",
              release=RELEASE_USE),
    ])
    lint = s.lint()
    assert not lint.rules & {"H002", "H003"}, lint.summary()
    assert [(u["op"], u["id"]) for u in lint.facts(1)["shadow"]] == [("get_or_alloc", 3)]
    assert [(u["op"], u["id"]) for u in lint.facts(2)["shadow"]] == [("get", 3)]


def test_unchanged_base_code_is_not_the_patch(tmp_path):
    """Base code that declares states, callbacks and shadow gets is the running program:
    a release that fixes something else carries none of it."""
    base_glue = (states("designated", (9, 1)) + "\n"
                 + callbacks("klp_object", {"pre_unpatch": ("old_pre_unpatch", LOG)}) + "\n"
                 + "static void foo_peek(struct foo_dev *d)\n{\n"
                 + "\tstruct foo_ext *e = klp_shadow_get(d, 9);\n\n\tif (e)\n\t\te->hits++;\n}\n")
    base = {**KBASE, "kernel/foo.c": foo_c(types=EXT, glue=base_glue)}
    s = Series(tmp_path, base, [{"kernel/foo.c": foo_c(types=EXT, count=MARK, glue=base_glue)}])
    lint = s.lint()
    assert lint.data["findings"] == [], lint.summary()
    assert lint.facts(1) == {"states": [], "callbacks": [], "shadow": []}


# =========================================================================== H003


FREE = "\tklp_shadow_free(d, FOO_SHADOW_EXT, NULL);\n"


@pytest.mark.parametrize(("keep", "bad"), [("", True), (FREE, False), (RELEASE_USE, False)],
                         ids=["unused", "freed", "got"])
def test_h003_shadow_leak(tmp_path, keep, bad):
    r1 = kfile(types=EXT, open_decl=OPEN_DECL, open=OPEN_ALLOC, release_decl=RELEASE_DECL_GET,
               release=RELEASE_USE + FREE)
    r2 = kfile(types=EXT, count=MARK, release_decl=RELEASE_DECL_GET if keep == RELEASE_USE else "",
               release=keep)
    s = Series(tmp_path, KBASE, [r1, r2])
    lint = s.lint()
    if not bad:
        assert not lint.rules & {"H002", "H003"}, lint.summary()
        assert lint.exit == 0
        return
    f = lint.one("H003")
    assert rel(1) in f["against"]
    s.at_earlier(f, 1, "kernel/foo.c", "klp_shadow_alloc(")
    assert lint.exit == 0
    assert s.lint("--error-on", "warning").exit == 1


# =========================================================================== H004


@pytest.mark.parametrize(("first", "second", "bad"), [
    ("foo_ext_dtor", "NULL", True),
    ("NULL", "foo_ext_dtor", True),
    ("foo_ext_dtor", "foo_ext_put", True),
    ("foo_ext_dtor", "foo_ext_dtor", False),
    ("NULL", "NULL", False),
])
def test_h004_free_destructor_mismatch(tmp_path, first, second, bad):
    def release(dtor: str, extra: str = "") -> dict[str, str]:
        return kfile(types=EXT + DTORS, count=extra, open_decl=OPEN_DECL, open=OPEN_ALLOC,
                     release=f"\tklp_shadow_free(d, FOO_SHADOW_EXT, {dtor});\n")
    s = Series(tmp_path, KBASE, [release(first), release(second, MARK)])
    lint = s.lint()
    if not bad:
        assert "H004" not in lint.rules, lint.summary()
        return
    f = lint.one("H004")
    s.at(f, 2, "kernel/foo.c", "klp_shadow_free(")
    assert rel(1) in f["against"]
    assert lint.exit == 0


@pytest.mark.parametrize(("second", "bad"), [("foo_ext_put", True), ("foo_ext_dtor", False)])
def test_h004_free_all_destructor_mismatch(tmp_path, second, bad):
    def release(dtor: str, name: str) -> dict[str, str]:
        cb = callbacks("klp", {"post_unpatch": (name, f"\tklp_shadow_free_all(FOO_SHADOW_EXT, {dtor});\n")})
        return kfile(types=EXT + DTORS, open_decl=OPEN_DECL, open=OPEN_ALLOC, glue=cb)
    s = Series(tmp_path, KBASE, [release("foo_ext_dtor", "lp_one_post_unpatch"),
                                 release(second, "lp_two_post_unpatch")])
    lint = s.lint()
    if not bad:
        assert "H004" not in lint.rules, lint.summary()
        return
    f = lint.one("H004")
    s.at(f, 2, "kernel/foo.c", "klp_shadow_free_all(")
    assert f["function"].endswith("lp_two_post_unpatch")
    frees = [u for u in lint.facts(1)["shadow"] if u["op"] == "free_all"]
    assert [(u["id"], u["dtor"]) for u in frees] == [(3, "foo_ext_dtor")]


# =========================================================================== H005

LP_HEAD = ('// SPDX-License-Identifier: GPL-2.0\n#include <linux/module.h>\n#include <linux/livepatch.h>\n'
           '#include "foo.h"\n\n')
TEARDOWNS = {
    "module_exit": ("static void foo_lp_exit(void)\n{\n\tklp_shadow_free_all(FOO_SHADOW_EXT, NULL);\n}\n"
                    "module_exit(foo_lp_exit);\n"),
    "__exit": "static void __exit foo_lp_cleanup(void)\n{\n\tklp_shadow_free_all(FOO_SHADOW_EXT, NULL);\n}\n",
}


@pytest.mark.parametrize("how", TEARDOWNS)
def test_h005_shadow_free_in_teardown(tmp_path, how):
    r1 = {**kfile(types=EXT, open_decl=OPEN_DECL, open=OPEN_ALLOC),
          "kernel/foo_lp.c": LP_HEAD + TEARDOWNS[how]}
    s = Series(tmp_path, KBASE, [r1])
    lint = s.lint()
    f = lint.one("H005")
    s.at(f, 1, "kernel/foo_lp.c", "klp_shadow_free_all(")
    assert lint.exit == 0
    (use,) = [u for u in lint.facts(1)["shadow"] if u["op"] == "free_all"]
    assert use["teardown"] is True


def test_h005_userspace_destructor(tmp_path):
    glue = ("static void __attribute__((destructor)) sessd_lp_fini(void)\n{\n"
            "\tklpcc_shadow_free_all(SESS_SHADOW_STATS, NULL);\n}\n")
    s = Series(tmp_path, UBASE, [ufile(types=STATS, open_decl=UOPEN_DECL, open=UOPEN_ALLOC, glue=glue)])
    lint = s.lint()
    f = lint.one("H005")
    s.at(f, 1, "src/sessd.c", "klpcc_shadow_free_all(")
    assert f["function"].endswith("sessd_lp_fini")


@pytest.mark.parametrize("form", ["klp", "kpatch", "klp_object"])
def test_h005_free_in_callback_is_clean(tmp_path, form):
    cb = callbacks(form, {"post_unpatch": ("foo_lp_post_unpatch",
                                           "\tklp_shadow_free_all(FOO_SHADOW_EXT, NULL);\n")})
    r1 = {**kfile(types=EXT, open_decl=OPEN_DECL, open=OPEN_ALLOC), "kernel/foo_lp.c": LP_HEAD + cb}
    lint = Series(tmp_path, KBASE, [r1]).lint()
    assert not lint.rules & {"H005", "H002"}, lint.summary()
    (use,) = [u for u in lint.facts(1)["shadow"] if u["op"] == "free_all"]
    assert use["teardown"] is False
    assert lint.exit == 0


# =========================================================================== U001


def test_u001_struct_layout_changed(tmp_path):
    header = edit(FOO_H, ("\tunsigned long flags;\n", "\tunsigned long flags;\n\tunsigned int gen;\n"))
    s = Series(tmp_path, KBASE, [{"kernel/foo.h": header, **kfile(count=MARK)}])
    lint = s.lint()
    assert lint.exit == 1
    f = lint.one("U001")
    s.within(f, 1, "kernel/foo.h", "struct foo_dev {")
    assert "foo_open" in f["message"] and "foo_release" in f["message"]
    assert "shadow" in (f["message"] + f["hint"]).lower()


def test_u001_new_struct_is_clean(tmp_path):
    header = edit(FOO_H, ("struct foo_dev {",
                          "struct foo_stats {\n\tunsigned long opens;\n};\n\nstruct foo_dev {"))
    lint = Series(tmp_path, KBASE, [{"kernel/foo.h": header, **kfile(count=MARK)}]).lint()
    assert "U001" not in lint.rules, lint.summary()
    assert lint.exit == 0


# =========================================================================== U002


@pytest.mark.parametrize("new", ["static int foo_limit = 32;", "static unsigned int foo_limit = 16;"],
                         ids=["initialiser", "type"])
def test_u002_global_initializer_changed(tmp_path, new):
    text = edit(foo_c(count=MARK), ("static int foo_limit = 16;", new))
    s = Series(tmp_path, KBASE, [{"kernel/foo.c": text}])
    lint = s.lint()
    assert lint.exit == 1
    s.at(lint.one("U002"), 1, "kernel/foo.c", new)


def test_u002_new_global_is_clean(tmp_path):
    text = edit(foo_c(count=MARK), ("static int foo_limit = 16;\n",
                                    "static int foo_limit = 16;\nstatic int foo_grace = 2;\n"))
    lint = Series(tmp_path, KBASE, [{"kernel/foo.c": text}]).lint()
    assert "U002" not in lint.rules, lint.summary()
    assert lint.exit == 0


# =========================================================================== U009

KMAKE = "obj-y += foo.o foo_sysfs.o\n"


@pytest.mark.parametrize(("path", "before", "after", "needle", "verb"), [
    ("kernel/Makefile", KMAKE, KMAKE + "obj-y += foo_extra.o\n", "foo_extra.o", "changes"),
    ("kernel/Kconfig.foo", "config FOO\n\tbool \"foo\"\n", "config FOO\n\tbool \"foo\"\n\tdefault y\n",
     "default y", "changes"),
    ("kernel/foo_entry.S", None, "\t.text\n\t.globl foo_entry\nfoo_entry:\n\tret\n", ".text", "adds"),
    ("kernel/foo.lds", "SECTIONS { .foo : { *(.foo) } }\n", "SECTIONS { .foo : { *(.foo*) } }\n", "SECTIONS",
     "changes"),
])
def test_u009_change_not_carried(tmp_path, path, before, after, needle, verb):
    base = {**KBASE, **({path: before} if before is not None else {})}
    s = Series(tmp_path, base, [{path: after}])
    lint = s.lint()
    f = lint.one("U009")
    assert f["severity"] == "warning" and lint.exit == 0  # a warning: the exit code stays 0
    assert f"{verb} {path}" in f["message"] and rel(1) in f["message"]
    s.at(f, 1, path, needle)


def test_u009_removed_build_file_and_clean_variants(tmp_path):
    # removing a build file is named (without a line: the release has no such file)
    lint = Series(tmp_path / "rm", {**KBASE, "kernel/Makefile": KMAKE}, [{"kernel/Makefile": None}]).lint()
    f = lint.one("U009")
    assert "removes kernel/Makefile" in f["message"] and f["line"] is None
    # documentation, C files and data a build reads are none of U009's business
    lint = Series(tmp_path / "doc", {**KBASE, "kernel/README": "foo\n", "kernel/foo.txt": "a\n"},
                  [{"kernel/README": "foo, now documented\n", "kernel/foo.txt": "b\n",
                    "kernel/foo.c": foo_c(count=MARK)}]).lint()
    assert "U009" not in lint.rules, lint.summary()


def test_u009_a_makefile_that_only_builds_a_new_c_file_is_carried(tmp_path):
    """obj-y += foo_extra.o beside a new foo_extra.c: the new file's functions are in the
    patch (added), so the makefile's change has nothing more to carry; dropping an object
    too is a change the patch cannot make."""
    extra = "int foo_extra(void)\n{\n\treturn 1;\n}\n"
    base = {**KBASE, "kernel/Makefile": KMAKE}
    lint = Series(tmp_path / "new", base, [{"kernel/Makefile": KMAKE + "obj-y += foo_extra.o\n",
                                             "kernel/foo_extra.c": extra}]).lint()
    assert "U009" not in lint.rules, lint.summary()
    lint = Series(tmp_path / "swap", base, [{"kernel/Makefile": "obj-y += foo.o foo_extra.o\n",
                                              "kernel/foo_extra.c": extra}]).lint()
    assert "changes kernel/Makefile" in lint.one("U009")["message"]


# =========================================================================== U003


@pytest.mark.parametrize(("sig", "body"), [
    ("int foo_count(struct foo_dev *d, int extra)", "\treturn foo_clamp(d->users + extra);\n"),
    ("long foo_count(struct foo_dev *d)", "\treturn (long)foo_clamp(d->users);\n"),
], ids=["parameter-added", "return-type"])
def test_u003_signature_changed(tmp_path, sig, body):
    text = edit(foo_c(), ("int foo_count(struct foo_dev *d)\n{\n\treturn foo_clamp(d->users);\n",
                          f"{sig}\n{{\n{body}"))
    s = Series(tmp_path, KBASE, [{"kernel/foo.c": text}])
    lint = s.lint()
    assert lint.exit == 1
    f = lint.one("U003")
    s.at(f, 1, "kernel/foo.c", sig)
    assert "foo_open" in f["message"]
    assert f["function"].endswith("foo_count")


def test_u003_parameter_renamed_is_clean(tmp_path):
    text = edit(foo_c(), ("int foo_count(struct foo_dev *d)\n{\n\treturn foo_clamp(d->users);\n",
                          "int foo_count(struct foo_dev *dev)\n{\n\treturn foo_clamp(dev->users);\n"))
    lint = Series(tmp_path, KBASE, [{"kernel/foo.c": text}]).lint()
    assert "U003" not in lint.rules, lint.summary()
    assert lint.exit == 0


def test_u003_callers_patched_too_is_clean(tmp_path):
    text = edit(foo_c(), ("int foo_count(struct foo_dev *d)\n{\n\treturn foo_clamp(d->users);\n",
                          "int foo_count(struct foo_dev *d, int extra)\n{\n"
                          "\treturn foo_clamp(d->users + extra);\n"),
                ("foo_count(d) >= foo_limit", "foo_count(d, 1) > foo_limit"))
    lint = Series(tmp_path, KBASE, [{"kernel/foo.c": text}]).lint()
    assert "U003" not in lint.rules, lint.summary()


# =========================================================================== U004


@pytest.mark.parametrize(("first", "old", "new"), [
    ("static int __init foo_init(void)", 'pr_info("foo: ready\\n");',
     'pr_info("foo: ready, limit %d\\n", foo_limit);'),
    ("static void __exit foo_exit(void)", 'pr_info("foo: gone\\n");', 'pr_info("foo: gone for good\\n");'),
    ("static notrace int foo_trace_id(struct foo_dev *d)", "\treturn d->id;\n", "\treturn d->id & 0xffff;\n"),
    ("noinstr void foo_irq_enter(struct foo_dev *d)", "\td->flags |= 1;\n", "\td->flags |= 3;\n"),
], ids=["__init", "__exit", "notrace", "noinstr"])
def test_u004_unpatchable_function(tmp_path, first, old, new):
    s = Series(tmp_path, KBASE, [{"kernel/foo.c": edit(foo_c(), (old, new))}])
    lint = s.lint()
    assert lint.exit == 1
    f = lint.one("U004")
    s.within(f, 1, "kernel/foo.c", first)
    name = re.search(r"(\w+)\(", first).group(1)
    assert f["function"].endswith(name)


def test_u004_ordinary_function_is_clean(tmp_path):
    lint = Series(tmp_path, KBASE, [kfile(count=MARK)]).lint()
    assert lint.data["findings"] == [], lint.summary()
    assert lint.exit == 0


# =========================================================================== U005, U006

VALID_OLD = "\treturn d->id >= 0;\n"
VALID_NEW = "\treturn d->id >= 0 && d->users >= 0;\n"
OPEN_MARK = '\tpr_debug("foo: open %d\\n", d->id);\n'
RELEASE_MARK = '\tpr_debug("foo: release %d\\n", d->id);\n'


def test_u005_header_inline_changed(tmp_path):
    s = Series(tmp_path, KBASE, [{"kernel/foo.h": edit(FOO_H, (VALID_OLD, VALID_NEW)), **kfile(count=MARK)}])
    lint = s.lint()
    assert lint.exit == 1
    f = lint.one("U005")
    s.within(f, 1, "kernel/foo.h", "static inline int foo_valid(")
    assert "foo_open" in f["message"] and "foo_release" in f["message"]
    assert "foo_count" not in f["message"]
    assert "U006" not in lint.rules


def test_u005_caller_in_file_the_series_does_not_touch(tmp_path):
    """foo_valid_show (kernel/foo_sysfs.c, never touched by the series) holds an inlined
    copy of foo_valid too."""
    s = Series(tmp_path, KBASE, [{"kernel/foo.h": edit(FOO_H, (VALID_OLD, VALID_NEW)),
                                  **kfile(open=OPEN_MARK, release=RELEASE_MARK)}])
    f = s.lint().one("U005")
    assert "foo_valid_show" in f["message"] or "kernel/foo_sysfs.c" in f["message"], f["message"]
    assert "foo_open" not in f["message"]


def test_u005_every_caller_patched_is_clean(tmp_path):
    sysfs = edit(FOO_SYSFS_C, ("\treturn sysfs_emit", '\tpr_debug("foo: show\\n");\n\treturn sysfs_emit'))
    r1 = {"kernel/foo.h": edit(FOO_H, (VALID_OLD, VALID_NEW)), "kernel/foo_sysfs.c": sysfs,
          **kfile(open=OPEN_MARK, release=RELEASE_MARK)}
    s = Series(tmp_path, KBASE, [r1])
    lint = s.lint()
    assert "U005" not in lint.rules, lint.summary()


@pytest.mark.parametrize(("first", "old", "new"), [
    ("static inline unsigned int foo_hash(", "\treturn x * 2654435761U;\n",
     "\treturn (x ^ (x >> 16)) * 2654435761U;\n"),
    ("static __always_inline int foo_clamp(", "\treturn v < 0 ? 0 : v;\n",
     "\treturn v < 0 ? 0 : min(v, 1024);\n"),
], ids=["inline", "__always_inline"])
def test_u006_inline_function_changed(tmp_path, first, old, new):
    s = Series(tmp_path, KBASE, [{"kernel/foo.c": edit(foo_c(), (old, new))}])
    lint = s.lint()
    f = lint.one("U006")
    s.within(f, 1, "kernel/foo.c", first)
    assert "U005" not in lint.rules
    assert lint.exit == 0
    assert s.lint("--error-on", "warning").exit == 1


def test_u006_not_for_functions_that_are_not_inline(tmp_path):
    lint = Series(tmp_path, KBASE, [kfile(count=MARK, open=OPEN_MARK)]).lint()
    assert not lint.rules & {"U005", "U006"}, lint.summary()


# =========================================================================== klpcc.toml


def _dropped_state(tmp_path: Path) -> Series:
    return Series(tmp_path, KBASE, [KERNEL.release(KERNEL.states((1, 1))), KERNEL.release()])


@pytest.mark.parametrize("key", ["2", rel(2)])
def test_toml_state_counts(tmp_path, key):
    s = _dropped_state(tmp_path)
    assert s.lint().one("S001")["severity"] == RULES["S001"][1]
    (s.patches / "klpcc.toml").write_text(f'[releases."{key}"]\nstates = [{{ id = 1, version = 1 }}]\n')
    lint = s.lint()
    assert "S001" not in lint.rules, lint.summary()
    assert lint.exit == 0
    (st,) = lint.facts(2)["states"]
    assert (st["id"], st["version"], st["origin"]) == (1, 1, "klpcc.toml")


def test_toml_state_version_lowered(tmp_path):
    s = _dropped_state(tmp_path)
    (s.patches / "klpcc.toml").write_text('[releases."2"]\nstates = [{ id = 1, version = 0 }]\n')
    lint = s.lint()
    assert lint.one("S002")["severity"] == RULES["S002"][1]
    assert "S001" not in lint.rules


def test_toml_given_with_config(tmp_path):
    s = _dropped_state(tmp_path)
    cfg = tmp_path / "elsewhere" / "lp.toml"
    cfg.parent.mkdir()
    cfg.write_text('[releases."2"]\nstates = [{ id = 1, version = 1 }]\n')
    assert "S001" not in s.lint("--config", str(cfg)).rules


def test_toml_callbacks_count(tmp_path):
    s = Series(tmp_path, KBASE, [KERNEL.release(KERNEL.cbs(pre_unpatch="lp_one")), KERNEL.release()])
    assert s.lint().one("C001")["severity"] == RULES["C001"][1]
    (s.patches / "klpcc.toml").write_text('[releases."2"]\ncallbacks = { pre_unpatch = "foo_lp_undo" }\n')
    lint = s.lint()
    assert not lint.rules & {"C001", "C002"}, lint.summary()
    (cb,) = lint.facts(2)["callbacks"]
    assert (cb["kind"], cb["callback"], cb["origin"]) == ("pre_unpatch", "foo_lp_undo", "klpcc.toml")


def test_toml_shadow_allocation_counts(tmp_path):
    s = Series(tmp_path, KBASE, [kfile(count=MARK),
                                 kfile(types=EXT, release_decl=RELEASE_DECL_GET, release=RELEASE_USE)])
    assert s.lint().one("H002")["severity"] == RULES["H002"][1]
    (s.patches / "klpcc.toml").write_text(
        '[releases."1"]\nshadow = [{ id = 3, type = "struct foo_ext", ops = ["alloc", "get", "free"] }]\n')
    lint = s.lint()
    assert "H002" not in lint.rules, lint.summary()
    assert any(u["id"] == 3 and u["origin"] == "klpcc.toml" for u in lint.facts(1)["shadow"])


@pytest.mark.parametrize("text", [
    '[releases."2"\nstates = [{ id = 1, version = 1 }]\n',
    '[releases."2"]\nstates = [{ id = 1, version = "two" }]\n',
    '[releases."2"]\nstates = 5\n',
    '[releases."2"]\ncallbacks = { on_load = "foo_lp_undo" }\n',
], ids=["syntax", "version-type", "states-type", "callback-kind"])
def test_bad_toml_exits_2(tmp_path, text):
    s = _dropped_state(tmp_path)
    (s.patches / "klpcc.toml").write_text(text)
    code, out, err = s.run("--format", "json")
    assert code == 2, (code, out, err)
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("klpcc: error:") and "klpcc.toml" in err


def test_u006_follows_a_patched_caller_that_is_inline_itself(tmp_path):
    base = ("static inline int helper(int x)\n{\n\treturn x + 1;\n}\n\n"
            "static inline int mid(int x)\n{\n\treturn helper(x) * 2;\n}\n\n"
            "int top(int x)\n{\n\treturn mid(x);\n}\n")
    rel = base.replace("return x + 1;", "return x + 2;")
    rel = rel.replace("return helper(x) * 2;", "return helper(x) * 3;")
    patches, src = make_series(tmp_path, {"a.c": base}, [{"a.c": rel}])
    doc = json.loads(klpcc("lint", str(patches), "--source", str(src), "--format", "json").stdout)
    u006 = {f["function"]: f["message"] for f in doc["findings"] if f["rule"] == "U006"}
    assert "top (via inline mid)" in u006["helper"]
    assert "top (a.c)" in u006["mid"]
    # top patched too: every inlined copy is replaced, nothing to say
    rel2 = rel.replace("return mid(x);", "return mid(x) + 0;")
    patches, src = make_series(tmp_path / "b", {"a.c": base}, [{"a.c": rel2}])
    doc = json.loads(klpcc("lint", str(patches), "--source", str(src), "--format", "json").stdout)
    assert [f for f in doc["findings"] if f["rule"] == "U006"] == []
