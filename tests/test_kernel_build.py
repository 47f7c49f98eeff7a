"""``klpcc build --kernel``: a bundle becomes a livepatch module.

The series here are small files written in kernel style, under ``fs/demo``:

* ``fs/demo/demo.c``: a static variable ``demo_hits`` (with a trailing comment), a
  global ``demo_level``, a ``static DEFINE_SPINLOCK(demo_lock)``, a static struct
  ``demo_default`` with a multi-line initializer, a ``static inline`` helper
  ``demo_scale``, the statics ``demo_count`` and ``demo_show`` (a seq_file show
  function), the exported ``demo_value``, an ``__init`` function with its
  ``fs_initcall`` and a ``notrace`` function;
* ``fs/demo/util.c``: a static counter and the global ``demo_util_len``;
* ``fs/demo/demo.h``: ``struct demo_item`` (included with quotes: the bundle carries it).

The main series has two releases:

 1  ``demo_show`` prints more and calls the new static ``demo_extra``; ``demo_count``
    adds one; ``demo_util_len`` uses ``strnlen``.
 2  ``demo_count`` is back to the base (a nop); a ``pre_patch`` and a ``post_unpatch``
    callback and the state 42 at version 2 are declared with the klpcc macros.

So release 2 patches ``demo_show`` (unit 1, ``fs/demo/demo.c``) and ``demo_util_len``
(unit 2, ``fs/demo/util.c``).  Everything expected below comes from reading the
releases.  The tests that run the kernel's ``make`` are marked slow.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from klpcc.emit.kernel.elf import Target, convert
from klpcc.errors import KlpccError

from .helpers import klpcc, make_series
from .qemu_guest import ensure_kernel_packages

DEMO = "fs/demo/demo.c"
UTIL = "fs/demo/util.c"
HEADER = "fs/demo/demo.h"

SHN_LIVEPATCH = 0xFF20
SHF_ALLOC = 0x2
SHF_RELA_LIVEPATCH = 0x00100000

DEMO_H = """\
/* SPDX-License-Identifier: GPL-2.0 */
#ifndef _FS_DEMO_DEMO_H
#define _FS_DEMO_DEMO_H

struct demo_item {
	int a;
	int b;
};

int demo_value(struct demo_item *it);
int demo_util_len(const char *s);

#endif
"""

DEMO_C = """\
// SPDX-License-Identifier: GPL-2.0
/* demo: a small /proc file written in kernel style */
#include <linux/init.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/proc_fs.h>
#include <linux/seq_file.h>
#include <linux/spinlock.h>
#include "demo.h"

static unsigned long demo_hits = 7; /* reads so far */
int demo_level = 3;
static DEFINE_SPINLOCK(demo_lock);

static struct demo_item demo_default = {
	.a = 1,
	.b = 2,
};

static inline int demo_scale(int v)
{
	return v * 2;
}

static int demo_count(void)
{
	return demo_scale(demo_level);
}

static notrace int demo_fast(void)
{
	return 1;
}

static int demo_show(struct seq_file *m,
\t\t     void *v)
{
	spin_lock(&demo_lock);
	demo_hits++;
	spin_unlock(&demo_lock);
	seq_printf(m, "hits %lu count %d %s\\n", demo_hits, demo_count(),
\t\t   demo_default.a ? "on" : "off");
	return 0;
}

int demo_value(struct demo_item *it)
{
	return it->a + it->b + demo_fast();
}
EXPORT_SYMBOL(demo_value);

static int __init demo_init(void)
{
	proc_create_single("demo", 0444, NULL, demo_show);
	return 0;
}
fs_initcall(demo_init);
"""

UTIL_C = """\
// SPDX-License-Identifier: GPL-2.0
#include <linux/kernel.h>
#include <linux/string.h>
#include "demo.h"

static int util_calls;

int demo_util_len(const char *s)
{
	util_calls++;
	return strlen(s);
}
"""

BASE = {DEMO: DEMO_C, UTIL: UTIL_C, HEADER: DEMO_H}

DEMO_EXTRA = """\
static int demo_extra(void)
{
	return demo_level + 1;
}

"""

CALLBACKS = """
static int demo_pre(struct klp_object *obj)
{
	pr_info("demo: patching\\n");
	return 0;
}

static void demo_post(struct klp_object *obj)
{
	pr_info("demo: unpatched\\n");
}

KLPCC_STATE(42, 2);
KLPCC_PRE_PATCH(demo_pre);
KLPCC_POST_UNPATCH(demo_post);
"""


def _edit(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def _release1() -> dict[str, str]:
    demo = _edit(DEMO_C, '"hits %lu count %d %s\\n", demo_hits, demo_count(),',
                 '"hits=%lu count=%d extra=%d %s\\n", demo_hits, demo_count(), demo_extra(),')
    demo = _edit(demo, "static int demo_show(", DEMO_EXTRA + "static int demo_show(")
    demo = _edit(demo, "return demo_scale(demo_level);", "return demo_scale(demo_level) + 1;")
    util = _edit(UTIL_C, "return strlen(s);", "return strnlen(s, 64);")
    return {DEMO: demo, UTIL: util}


def _release2() -> dict[str, str]:
    r1 = _release1()
    demo = _edit(r1[DEMO], "return demo_scale(demo_level) + 1;", "return demo_scale(demo_level);")
    return {DEMO: demo + CALLBACKS, UTIL: r1[UTIL]}


RELEASE2 = {**BASE, **_release2()}

# what the target kernel's /proc/kallsyms says of the demo files (addresses may read as 0)
KALLSYMS = {
    "demo_hits": "d", "demo_level": "D", "demo_lock": "d", "demo_default": "d", "demo_count": "t",
    "demo_fast": "t", "demo_show": "t", "demo_value": "T", "demo_init": "t", "util_calls": "b",
    "demo_util_len": "T",
}


def kallsyms(tmp: Path, *, twice: tuple[str, ...] = (), without: tuple[str, ...] = ()) -> Path:
    """A kallsyms file of the demo statics, listing ``twice`` names twice (two files of
    the kernel with a static of that name) and leaving ``without`` out (inlined)."""
    lines = ["ffffffff81000000 T _stext"]
    for n, (name, kind) in enumerate(KALLSYMS.items()):
        if name in without:
            continue
        lines.append(f"ffffffff81{n:03x}000 {kind} {name}")
        if name in twice:
            lines.append(f"ffffffff82{n:03x}000 {kind} {name}")
    lines.append("ffffffffc0000000 t ext4_helper\t[ext4]")
    path = tmp / f"kallsyms-{'-'.join(twice) or 'x'}-{'-'.join(without) or 'x'}"
    path.write_text("\n".join(lines) + "\n")
    return path


def _line_of(text: str, needle: str) -> int:
    """The 1-based line of the only line of ``text`` holding ``needle``."""
    found = [n for n, ln in enumerate(text.splitlines(), 1) if needle in ln]
    assert len(found) == 1, (needle, found)
    return found[0]


def bundle_of(tmp: Path, releases: list[dict[str, str]], base: dict[str, str] | None = None) -> Path:
    """The bundle of the last release of a series over ``base`` (default: the demo files)."""
    patches, src = make_series(tmp, base or BASE, releases)
    out = tmp / "bundle"
    proc = klpcc("compile", str(patches / "series"), "--source", str(src), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


def build(bundle: Path, outdir: Path, *args: str) -> subprocess.CompletedProcess:
    return klpcc("build", str(bundle), "-o", str(outdir), *args)


def assert_refused(proc: subprocess.CompletedProcess, outdir: Path, *needles: str) -> str:
    """One ``klpcc: error:`` line, exit code 2, no OUTDIR and no scratch directory left."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("klpcc: error: "), proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not outdir.exists()
    if outdir.parent.is_dir():
        assert not [p.name for p in outdir.parent.iterdir() if p.name.startswith(f".{outdir.name}.")]
    return lines[0]


def without_lint(bundle: Path) -> Path:
    """The bundle with its lint findings removed: what the unit writer decides alone."""
    path = bundle / "manifest.json"
    doc = json.loads(path.read_text())
    assert doc["lint"]["findings"], "the series was meant to have a lint finding"
    doc["lint"]["findings"] = []
    path.write_text(json.dumps(doc))
    return bundle


def code_of(text: str) -> str:
    """C text without comments and preprocessor lines."""
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    return "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))


def kernel_dir() -> Path:
    """The build directory of the kernel the qemu tests boot (its packages installed
    when missing, whichever test asks first)."""
    return ensure_kernel_packages().kdir


# =========================================================================== source generation


@pytest.fixture(scope="module")
def main_bundle(tmp_path_factory) -> Path:
    return bundle_of(tmp_path_factory.mktemp("main"), [_release1(), _release2()])


@pytest.fixture(scope="module")
def source_only(main_bundle: Path, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("src") / "out"
    proc = build(main_bundle, out, "--source-only")
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_bundle_is_what_the_tests_assume(main_bundle: Path):
    doc = json.loads((main_bundle / "manifest.json").read_text())
    changes = {f["key"]: f["change"] for f in doc["functions"]}
    assert changes == {f"{DEMO}:demo_show": "modified", "demo_util_len": "modified",
                       f"{DEMO}:demo_count": "nop", f"{DEMO}:demo_extra": "added",
                       f"{DEMO}:demo_pre": "added", f"{DEMO}:demo_post": "added"}
    assert (main_bundle / "sources" / HEADER).read_text() == DEMO_H
    assert not [f for f in doc["lint"]["findings"] if f["severity"] == "error"]


def test_unit_renames_the_modified_static_and_declares_the_original(source_only):
    out, _ = source_only
    unit = (out / "src" / DEMO).read_text()
    assert unit.startswith("/* generated by klpcc build from fs/demo/demo.c")
    assert "#define KLPCC_UNIT 1\n" in unit
    assert '#include "klpcc_livepatch.h"' in unit
    # the new body under the new name, not static (klpcc_patch.c refers to it)
    m = re.search(r"^int klpcc_new_1_demo_show\(struct seq_file \*m,\n\t\t     void \*v\)\n\{\n"
                  r"(?P<body>.*?)^\}", unit, re.S | re.M)
    assert m, unit
    assert "demo_extra()" in m["body"] and '"hits=%lu count=%d extra=%d %s\\n"' in m["body"]
    # the running kernel's function: one declaration, by its label
    decls = [ln for ln in unit.splitlines() if re.search(r"\bdemo_show\s*\(", ln)]
    assert decls == ['extern int demo_show(struct seq_file *m, void *v) '
                     '__asm__("__klpcc_sym_1_demo_show");'], decls
    assert not re.search(r"\bstatic\s+int\s+(klpcc_new_1_)?demo_show\b", unit)


def test_unit_turns_the_files_data_into_declarations(source_only):
    out, _ = source_only
    unit = (out / "src" / DEMO).read_text()
    assert 'extern unsigned long demo_hits __asm__("__klpcc_sym_1_demo_hits");' in unit
    assert "demo_hits = 7" not in unit
    assert "extern int demo_level;" in unit and "demo_level = 3" not in unit
    assert 'extern spinlock_t demo_lock __asm__("__klpcc_sym_1_demo_lock");' in unit
    assert "DEFINE_SPINLOCK" not in code_of(unit)
    assert 'extern struct demo_item demo_default __asm__("__klpcc_sym_1_demo_default");' in unit
    assert ".a = 1" not in unit and ".b = 2" not in unit
    # unchanged functions: declarations of the kernel's (static ones by label); the nop too
    assert 'extern int demo_count(void) __asm__("__klpcc_sym_1_demo_count");' in unit
    assert "return demo_scale(demo_level)" not in unit
    assert "extern int demo_value(struct demo_item *it);" in unit
    assert "return it->a + it->b" not in unit
    # the inline helper only the unchanged demo_count calls: not compiled into the module
    assert "/* klpcc: demo_scale (static inline) is not used by the patch */" in unit
    assert "return v * 2;" not in unit


def test_unit_drops_init_code_initcalls_and_exports(source_only):
    out, _ = source_only
    code = code_of((out / "src" / DEMO).read_text())
    assert "fs_initcall" not in code
    assert "EXPORT_SYMBOL" not in code
    assert "__init" not in code
    assert not re.search(r"\bdemo_init\b", code)
    assert "proc_create_single" not in code


def test_unit_keeps_added_code_verbatim(source_only):
    out, _ = source_only
    unit = (out / "src" / DEMO).read_text()
    assert DEMO_EXTRA in unit
    assert CALLBACKS.strip() in unit
    util = (out / "src" / UTIL).read_text()
    assert "#define KLPCC_UNIT 2\n" in util
    assert "int klpcc_new_2_demo_util_len(const char *s)\n{\n\tutil_calls++;\n\treturn strnlen(s, 64);" \
        in util
    assert "extern int demo_util_len(const char *s);" in util
    assert 'extern int util_calls __asm__("__klpcc_sym_2_util_calls");' in util


_LINE = re.compile(r'^#line (\d+) "([^"]*)"$')


def _named(generated: str) -> str:
    """What a line klpcc wrote in place of an item names: the declared function or
    variable of an ``extern`` line, the first word of a ``/* klpcc: ...`` note."""
    if generated.startswith("/* klpcc: "):
        return generated[len("/* klpcc: "):].split()[0]
    decl = re.sub(r'\s*__asm__\("[^"]*"\)', "", generated).rstrip(";")
    if "(" in decl:
        return re.findall(r"(\w+)\s*\(", decl)[0]
    return re.findall(r"(\w+)\s*(?:\[[^\]]*\])?$", decl)[0]


_KEEPS_NAME = re.compile(r'#(define __func__ "\w+"|define __FUNCTION__ "\w+"|undef __func__'
                         r'|undef __FUNCTION__)$')


def _check_line_map(unit: str, path: str, release: str, renamed: dict[str, str]) -> int:
    """Follow the ``#line`` directives through ``unit``: every line after the first one is
    mapped to a line of the release's file, and is either that line (or its end, after an
    item replaced on it), or the line klpcc wrote for the item starting there: an
    ``extern`` declaration or a ``/* klpcc: ...`` note naming what that line of the
    release defines, or the renamed header of a patched function.  Returns the number
    of directives; the first line after each one is checked like the others."""
    rel = release.splitlines()
    current: int | None = None
    directives = 0
    after_directive = False
    for n, text in enumerate(unit.splitlines(), 1):
        m = _LINE.match(text)
        if m:
            assert m[2] == path, (n, text)
            current, after_directive = int(m[1]), True
            directives += 1
            assert 1 <= current <= len(rel) + 1, (n, text)
            continue
        if current is None or _KEEPS_NAME.match(text):
            continue  # klpcc's own lines around a renamed function: __func__ keeps its name
        want = rel[current - 1] if current <= len(rel) else ""
        where = f"unit line {n} ({text!r}) is mapped to {path}:{current}, which reads {want!r}"
        if text.startswith(("extern ", "/* klpcc: ")) and text != want:
            assert text.endswith((";", "*/")), where
            assert re.search(rf"(?<!\w){re.escape(_named(text))}(?!\w)", want), where
        elif any(new in text for new in renamed.values()):
            old = next(o for o, new in renamed.items() if new in text)
            assert re.sub(r"^static\s+", "", want).replace(old, renamed[old], 1) == text, where
        else:
            assert text == want or (after_directive and text and want.endswith(text)), where
        current += 1
        after_directive = False
    return directives


def test_line_directives_map_back_to_the_release(source_only):
    out, _ = source_only
    for path, renamed in ((DEMO, {"demo_show": "klpcc_new_1_demo_show"}),
                          (UTIL, {"demo_util_len": "klpcc_new_2_demo_util_len"})):
        unit = (out / "src" / path).read_text()
        first = unit.splitlines().index(f'#line 1 "{path}"')  # after klpcc's header lines
        assert first < 30 and all(ln.startswith(("#", "/*", "extern struct module")) for ln in
                                  unit.splitlines()[:first]), unit[:2000]
        directives = _check_line_map(unit, path, RELEASE2[path], renamed)
        assert directives >= (10 if path == DEMO else 4), unit
        # the check is not vacuous: any directive off by one (with lines after it) is caught
        lines = unit.splitlines()
        for i, text in enumerate(lines[:-1]):
            if (m := _LINE.match(text)) and i > first:
                for delta in (1, -1):
                    wrong = [*lines[:i], f'#line {int(m[1]) + delta} "{path}"', *lines[i + 1:]]
                    with pytest.raises(AssertionError):
                        _check_line_map("\n".join(wrong), path, RELEASE2[path], renamed)



def test_patch_unit_lists_each_modified_function(source_only):
    out, _ = source_only
    patch = (out / "klpcc_patch.c").read_text()
    funcs = re.findall(r'\{ \.old_name = "(\w+)", \.new_func = (\w+), \.old_sympos = (\d+) \}', patch)
    assert sorted(funcs) == [("demo_show", "klpcc_new_1_demo_show", "0"),
                             ("demo_util_len", "klpcc_new_2_demo_util_len", "0")]
    for nop_or_added in ("demo_count", "demo_extra", "demo_pre", "demo_post"):
        assert f'"{nop_or_added}"' not in patch
    assert "\t.replace = true,\n" in patch
    assert "{ .id = 42, .version = 2 }," in patch and "\t.states = klpcc_states,\n" in patch
    assert "extern int (*const klpcc_cb_pre_patch_1)(struct klp_object *);" in patch
    assert "extern void (*const klpcc_cb_post_unpatch_1)(struct klp_object *);" in patch
    obj = re.search(r"\{ \.name = NULL, \.funcs = klpcc_funcs_0, \.callbacks = \{ (.*?) \} \},", patch)
    assert obj and obj[1] == ".pre_patch = klpcc_pre_patch_0, .post_unpatch = klpcc_post_unpatch_0"
    assert "ret = klpcc_cb_pre_patch_1(obj);" in patch
    assert "klpcc_cb_post_unpatch_1(obj);" in patch
    assert "post_patch" not in patch and "pre_unpatch" not in patch
    assert 'MODULE_INFO(livepatch, "Y");' in patch
    assert "return klp_enable_patch(&klpcc_patch);" in patch
    # the macros in the unit really define the pointers klpcc_patch.c calls through
    header = (out / "klpcc_livepatch.h").read_text()
    assert "#define KLPCC_PRE_PATCH(fn) __KLPCC_CB(int, pre_patch, fn)" in header


def test_kbuild_names_every_unit(source_only):
    out, _ = source_only
    kbuild = (out / "Kbuild").read_text()
    units = sorted(p.relative_to(out).as_posix() for p in (out / "src").rglob("*.c"))
    assert units == [f"src/{DEMO}", f"src/{UTIL}"]
    m = re.search(r"^obj-m := (\w+)\.o$", kbuild, re.M)
    assert m and m[1] == "klpcc_0002_release_2"
    objs = re.search(rf"^{m[1]}-y := (.*)$", kbuild, re.M)
    assert objs and objs[1].split() == ["klpcc_patch.o"] + [u[:-2] + ".o" for u in units]
    assert "-ffunction-sections" in kbuild
    # the header the release's file includes is there, as the release has it, and is no unit
    assert (out / "src" / HEADER).read_text() == DEMO_H


def _parse_text(stdout: str) -> dict:
    lines = stdout.splitlines()
    head = re.fullmatch(r"(.*): livepatch (\w+), release (\S+), (replace|no replace)", lines[0])
    assert head, lines[0]
    out: dict = {"what": head[1], "name": head[2], "release": head[3], "replace": head[4] == "replace",
                 "functions": set(), "callbacks": set(), "states": set(), "nops": [], "symbols": set(),
                 "copied": [], "notes": [], "set_from": None}
    for ln in lines[1:]:
        if m := re.fullmatch(r"  patch  (\w+):(\w+)(?:,(\d+))?  \((.*)\)", ln):
            out["functions"].add((m[1], m[4], m[2], int(m[3] or 0)))
        elif m := re.fullmatch(r"  callback  (\w+) = (\w+)  \((.*)\)", ln):
            out["callbacks"].add((m[3], m[1], m[2]))
        elif m := re.fullmatch(r"  state  id (\d+) version (\d+)", ln):
            out["states"].add((int(m[1]), int(m[2])))
        elif ln.startswith("  the kernel reverts (nop): "):
            out["nops"] = ln.split(": ", 1)[1].split(", ")
        elif m := re.fullmatch(r"  livepatch symbol  (\S+)(?:  \(for (\w+)\))?", ln):
            out["symbols"].add(m[1])
        elif ln.startswith("  copied  "):
            out["copied"].append(ln[len("  copied  "):])
        elif m := re.match(r"  function set from (\w+), statics from (\w+)", ln):
            out["set_from"] = (m[1], m[2])
        elif re.match(r"  (\w+ \(.*\) (joins|leaves) the patch: |\w+ \(.*\) has no symbol|note: )", ln):
            out["notes"].append(ln[2:])
        elif not ln.startswith("  built in "):
            raise AssertionError(f"unexpected line {ln!r}")
    return out


def _assert_text_agrees(text: dict, doc: dict) -> None:
    assert doc["schema"] == "klpcc.kernel-build/1"
    assert (text["name"], text["release"], text["replace"]) == (doc["name"], doc["release"], doc["replace"])
    assert text["functions"] == {(f["object"], f["file"], f["name"], f["sympos"]) for f in doc["functions"]}
    assert text["callbacks"] == {(c["file"], c["kind"], c["callback"]) for c in doc["callbacks"]}
    assert text["states"] == {(s["id"], s["version"]) for s in doc["states"]}
    assert text["nops"] == doc["nops"]
    assert text["symbols"] == set(doc["livepatch_symbols"].values())
    assert text["copied"] == [c["what"] for c in doc["copied"]]
    fs = doc["function_set"]
    assert text["set_from"] == (fs["decided_by"], fs["symbols_from"]) and text["notes"] == fs["notes"]


def test_build_json_agrees_with_the_text_output(source_only, main_bundle: Path, tmp_path: Path):
    out, proc = source_only
    doc = json.loads((out / "build.json").read_text())
    text = _parse_text(proc.stdout)
    assert text["what"] == f"{out} (source only)"
    _assert_text_agrees(text, doc)
    assert doc["name"] == "klpcc_0002_release_2" and doc["release"] == "0002-release-2"
    assert doc["module"] is None and doc["replace"] is True
    assert doc["objects"] == ["vmlinux"]
    assert text["functions"] == {("vmlinux", DEMO, "demo_show", 0), ("vmlinux", UTIL, "demo_util_len", 0)}
    assert {f["name"]: f["new"] for f in doc["functions"]} == {
        "demo_show": "klpcc_new_1_demo_show", "demo_util_len": "klpcc_new_2_demo_util_len"}
    assert text["callbacks"] == {(DEMO, "pre_patch", "demo_pre"), (DEMO, "post_unpatch", "demo_post")}
    assert text["states"] == {(42, 2)}
    assert "  the kernel reverts (nop): fs/demo/demo.c:demo_count" in proc.stdout.splitlines()
    assert doc["livepatch_symbols"] == {} and doc["livepatch_relocations"] == []
    # --format json prints the document build.json holds
    other = tmp_path / "json"
    as_json = build(main_bundle, other, "--source-only", "--format", "json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == json.loads((other / "build.json").read_text()) == doc


def test_no_replace_and_name_and_object(main_bundle: Path, tmp_path: Path):
    out = tmp_path / "out"
    proc = build(main_bundle, out, "--source-only", "--no-replace", "--name", "demo_fix",
                 "--object", "fs/demo/util.c=demo_util")
    assert proc.returncode == 0, proc.stderr
    patch = (out / "klpcc_patch.c").read_text()
    assert "\t.replace = false,\n" in patch and ".replace = true" not in patch
    # vmlinux first, then the module util.c belongs to, each with its own functions
    objs = re.findall(r"\{ \.name = (NULL|\"\w+\"), \.funcs = (klpcc_funcs_\d+)", patch)
    assert objs == [("NULL", "klpcc_funcs_0"), ('"demo_util"', "klpcc_funcs_1")]
    f1 = re.search(r"klpcc_funcs_1\[\] = \{\n(.*?)\n\t\{ \}", patch, re.S)
    assert f1 and '.old_name = "demo_util_len"' in f1[1] and "demo_show" not in f1[1]
    doc = json.loads((out / "build.json").read_text())
    assert doc["replace"] is False and doc["name"] == "demo_fix"
    assert doc["objects"] == ["demo_util", "vmlinux"]
    assert {(f["object"], f["name"]) for f in doc["functions"]} == {("vmlinux", "demo_show"),
                                                                     ("demo_util", "demo_util_len")}
    assert (out / "Kbuild").read_text().startswith("# generated by klpcc build\nobj-m := demo_fix.o\n")
    text = _parse_text(proc.stdout)
    assert text["replace"] is False and text["name"] == "demo_fix"
    _assert_text_agrees(text, doc)
    bad = build(main_bundle, tmp_path / "bad", "--source-only", "--name", "demo-fix")
    assert_refused(bad, tmp_path / "bad", "demo-fix")


def test_library_call_reports_the_replace_flag(main_bundle: Path, tmp_path: Path):
    from klpcc.api import KernelOptions, build_kernel

    for replace in (True, False):
        res = build_kernel(KernelOptions(str(main_bundle), str(tmp_path / f"out-{replace}"), replace=replace,
                                         source_only=True))
        assert res.to_json()["replace"] is replace
        assert json.loads((tmp_path / f"out-{replace}" / "build.json").read_text()) == res.to_json()


def test_sympos_of_a_patched_function_from_kallsyms(main_bundle: Path, tmp_path: Path):
    syms = kallsyms(tmp_path, twice=("demo_show",))
    out = tmp_path / "out"
    msg = assert_refused(build(main_bundle, out, "--source-only", "--kallsyms", str(syms)), out,
                         "demo_show", "2 times", "--sympos fs/demo/demo.c:demo_show=N")
    assert msg.count("klpcc: error:") == 1
    proc = build(main_bundle, out, "--source-only", "--kallsyms", str(syms),
                 "--sympos", "fs/demo/demo.c:demo_show=2")
    assert proc.returncode == 0, proc.stderr
    assert '{ .old_name = "demo_show", .new_func = klpcc_new_1_demo_show, .old_sympos = 2 },' \
        in (out / "klpcc_patch.c").read_text()
    doc = json.loads((out / "build.json").read_text())
    assert {f["name"]: f["sympos"] for f in doc["functions"]} == {"demo_show": 2, "demo_util_len": 0}
    assert "  patch  vmlinux:demo_show,2  (fs/demo/demo.c)" in proc.stdout.splitlines()


def test_static_absent_from_kallsyms_is_copied(main_bundle: Path, tmp_path: Path):
    out = tmp_path / "out"
    syms = kallsyms(tmp_path, without=("demo_count",))
    proc = build(main_bundle, out, "--source-only", "--kallsyms", str(syms))
    assert proc.returncode == 0, proc.stderr
    unit = (out / "src" / DEMO).read_text()
    assert "static int demo_count(void)\n{\n\treturn demo_scale(demo_level);\n}\n" in unit
    assert "__klpcc_sym_1_demo_count" not in unit
    doc = json.loads((out / "build.json").read_text())
    assert len(doc["copied"]) == 1 and doc["copied"][0]["file"] == DEMO
    line = _line_of(RELEASE2[DEMO], "static int demo_count(void)")
    assert doc["copied"][0]["what"].startswith(f"demo_count (line {line})")
    assert "inlined" in doc["copied"][0]["what"]
    _assert_text_agrees(_parse_text(proc.stdout), doc)


def test_static_define_macro_becomes_a_typed_declaration(tmp_path: Path):
    """``static DEFINE_SPINLOCK(x);`` defines a spinlock_t of the kernel: the unit must
    declare ``extern spinlock_t x`` by its label, not keep the defining macro."""
    base = {**BASE, DEMO: _edit(DEMO_C, "static DEFINE_SPINLOCK(demo_lock);\n",
                                "static DEFINE_SPINLOCK(demo_lock);\nstatic DEFINE_MUTEX(demo_mutex);\n")}
    rel = _edit(base[DEMO], "\tspin_lock(&demo_lock);\n",
                "\tmutex_lock(&demo_mutex);\n\tspin_lock(&demo_lock);\n")
    rel = _edit(rel, "\tspin_unlock(&demo_lock);\n",
                "\tspin_unlock(&demo_lock);\n\tmutex_unlock(&demo_mutex);\n")
    bundle = bundle_of(tmp_path, [{DEMO: rel}], base)
    out = tmp_path / "out"
    proc = build(bundle, out, "--source-only")
    assert proc.returncode == 0, proc.stderr
    unit = (out / "src" / DEMO).read_text()
    decls = [ln for ln in unit.splitlines() if re.search(r"\bdemo_(lock|mutex)\b", ln) and "lock(" not in ln]
    assert decls == ['extern spinlock_t demo_lock __asm__("__klpcc_sym_1_demo_lock");',
                     'extern struct mutex demo_mutex __asm__("__klpcc_sym_1_demo_mutex");'], decls
    assert "DEFINE_SPINLOCK" not in code_of(unit) and "DEFINE_MUTEX" not in code_of(unit)


# =========================================================================== refusals


def test_refuses_patching_init_and_notrace_functions(tmp_path: Path):
    cases = {
        "init": (_edit(DEMO_C, "0444", "0400"), "demo_init", "__init"),
        "notrace": (_edit(DEMO_C, "return 1;", "return 2;"), "demo_fast", "notrace"),
    }
    for name, (text, fn, why) in cases.items():
        bundle = bundle_of(tmp_path / name, [{DEMO: text}])
        out = tmp_path / name / "out"
        assert_refused(build(bundle, out, "--source-only"), out, fn, why, "U004")
        # without the lint's finding the unit writer refuses it by itself
        msg = assert_refused(build(without_lint(bundle), out, "--source-only"), out, fn, why)
        line = _line_of(text, f" {fn}(void)")
        assert f"cannot patch {fn} (line {line})" in msg, msg


def test_refuses_a_struct_layout_change(tmp_path: Path):
    header = _edit(DEMO_H, "\tint b;\n", "\tint b;\n\tint c;\n")
    demo = _edit(DEMO_C, "return it->a + it->b + demo_fast();", "return it->a + it->b + it->c;")
    patches, src = make_series(tmp_path, BASE, [{HEADER: header, DEMO: demo}])
    lint = klpcc("lint", str(patches / "series"), "--source", str(src))
    assert lint.returncode == 1, lint.stdout + lint.stderr
    assert re.search(r"error: U001 struct-layout-changed: .*struct demo_item", lint.stdout), lint.stdout
    bundle = tmp_path / "bundle"
    assert klpcc("compile", str(patches / "series"), "--source", str(src), "-o", str(bundle)).returncode == 0
    out = tmp_path / "out"
    msg = assert_refused(build(bundle, out, "--source-only"), out, "U001", "struct demo_item")
    m = re.match(r"klpcc: error: fs/demo/demo\.h:(\d+): refusing to build", msg)
    assert m and _line_of(header, "struct demo_item {") <= int(m[1]) <= _line_of(header, "int c;") + 1, msg


def test_refuses_a_static_inline_function(tmp_path: Path):
    release = _edit(DEMO_C, "return v * 2;", "return v * 3;")
    bundle = bundle_of(tmp_path, [{DEMO: release}])
    out = tmp_path / "out"
    line = _line_of(release, "static inline int demo_scale(")
    assert_refused(build(bundle, out, "--source-only"), out,
                   f"fs/demo/demo.c: cannot patch demo_scale (line {line}): it is static inline")


def test_refuses_a_missing_or_invalid_bundle(tmp_path: Path):
    out = tmp_path / "out"
    assert_refused(build(tmp_path / "nowhere", out, "--source-only"), out, "nowhere", "not a klpcc bundle")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text("{ not json")
    assert_refused(build(bad, out, "--source-only"), out, "manifest.json", "unreadable manifest")
    (bad / "manifest.json").write_text(json.dumps({"schema": "klpcc.lint/1"}))
    assert_refused(build(bad, out, "--source-only"), out, "manifest.json", "not a klpcc.manifest/2 manifest")


def test_refuses_a_kernel_directory_without_makefile(main_bundle: Path, tmp_path: Path):
    kdir = tmp_path / "kdir"
    kdir.mkdir()
    out = tmp_path / "out"
    assert_refused(build(main_bundle, out, "--kernel", str(kdir)), out,
                   f"{kdir} is not a kernel build directory (no Makefile)")
    assert_refused(build(main_bundle, out), out, "--kernel KDIR")


def test_refuses_a_malformed_kallsyms(main_bundle: Path, tmp_path: Path):
    syms = tmp_path / "kallsyms"
    syms.write_text("ffffffff81000000 T _stext\nffffffff81000010 demo_show\n")
    out = tmp_path / "out"
    assert_refused(build(main_bundle, out, "--source-only", "--kallsyms", str(syms)), out,
                   f"{syms}:2: not a kallsyms line")
    syms.write_text("")
    assert_refused(build(main_bundle, out, "--source-only", "--kallsyms", str(syms)), out, str(syms))
    missing = tmp_path / "no-kallsyms"
    assert_refused(build(main_bundle, out, "--source-only", "--kallsyms", str(missing)), out,
                   f"cannot read {missing}")
    assert_refused(build(main_bundle, out, "--source-only", "--sympos", "demo_show=2"), out,
                   "--sympos", "FILE:NAME=N")


def test_refuses_a_patched_function_the_kernel_inlined(main_bundle: Path, tmp_path: Path):
    out = tmp_path / "out"
    syms = kallsyms(tmp_path, without=("demo_show",))
    assert_refused(build(main_bundle, out, "--source-only", "--kallsyms", str(syms)), out,
                   "fs/demo/demo.c: cannot patch demo_show", "no symbol demo_show")


def test_refuses_an_existing_outdir_without_force(main_bundle: Path, tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine\n")
    proc = build(main_bundle, out, "--source-only")
    assert proc.returncode == 2 and proc.stderr == f"klpcc: error: {out} exists; use --force to replace it\n"
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    # --force replaces a directory klpcc built, never one of someone else's
    proc = build(main_bundle, out, "--source-only", "--force")
    assert proc.returncode == 2 and "not a directory klpcc wrote" in proc.stderr, proc.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    (out / "keep.txt").unlink()
    proc = build(main_bundle, out, "--source-only", "--force")
    assert proc.returncode == 0, proc.stderr
    (out / "stale.txt").write_text("from the last build\n")
    proc = build(main_bundle, out, "--source-only", "--force")
    assert proc.returncode == 0, proc.stderr
    assert not (out / "stale.txt").exists() and (out / "build.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# =========================================================================== ELF conversion

ELF_C = """\
extern int foo(int);
extern int bar(int);
extern int baz;

int use_foo(int x)
{
	return foo(x) + baz;
}

int use_bar(int x)
{
	return bar(x) * foo(x + 1);
}
"""

JUMP_C = """\
extern int foo(int);

int use_key(int x)
{
	asm volatile(".pushsection __jump_table, \\"aw\\"\\n\\t.quad foo\\n\\t.popsection");
	return x + 1;
}
"""


def _gcc(tmp: Path, name: str, text: str) -> bytes:
    src = tmp / f"{name}.c"
    src.write_text(text)
    obj = tmp / f"{name}.o"
    proc = subprocess.run(["gcc", "-c", "-O2", "-ffunction-sections", str(src), "-o", str(obj)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return obj.read_bytes()


def _relocs(elf: ELFFile, section) -> list[tuple[int, int, int, str]]:
    symtab = elf.get_section(section["sh_link"])
    return [(r["r_offset"], r["r_info_type"], r["r_addend"], symtab.get_symbol(r["r_info_sym"]).name)
            for r in section.iter_relocations()]


def _resolve(name: str) -> Target | None:
    return Target("vmlinux", name, 0) if name in ("foo", "baz") else None


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> tuple[bytes, bytes, object, Path]:
    tmp = tmp_path_factory.mktemp("elf")
    data = _gcc(tmp, "calls", ELF_C)
    out, conv = convert(data, _resolve)
    path = tmp / "calls.klp.o"
    path.write_bytes(out)
    return data, out, conv, path


def test_convert_renames_resolved_symbols(converted):
    data, out, conv, _ = converted
    assert conv.symbols == {"foo": ".klp.sym.vmlinux.foo,0", "baz": ".klp.sym.vmlinux.baz,0"}
    before = ELFFile(io.BytesIO(data)).get_section_by_name(".symtab")
    after = ELFFile(io.BytesIO(out)).get_section_by_name(".symtab")
    assert after.num_symbols() == before.num_symbols()  # relocations name symbols by index
    syms = {s.name: s for s in after.iter_symbols()}
    for name in ("foo", "baz"):
        sym = syms[f".klp.sym.vmlinux.{name},0"]
        assert sym["st_shndx"] == SHN_LIVEPATCH
        assert sym["st_info"]["bind"] == "STB_GLOBAL"
        assert name not in syms
    assert syms["bar"]["st_shndx"] == "SHN_UNDEF"
    # the symbols keep their index
    for i, (old, new) in enumerate(zip(before.iter_symbols(), after.iter_symbols())):
        assert conv.symbols.get(old.name, old.name) == new.name, i


def test_convert_moves_the_relocations_to_klp_rela_sections(converted):
    data, out, conv, _ = converted
    orig = ELFFile(io.BytesIO(data))
    elf = ELFFile(io.BytesIO(out))
    symtab_index = elf.get_section_index(".symtab")
    moved_total = 0
    for fn in ("use_foo", "use_bar"):
        text = f".text.{fn}"
        original = _relocs(orig, orig.get_section_by_name(f".rela{text}"))
        assert original, f"gcc made no relocations for {fn}"
        klp = elf.get_section_by_name(f".klp.rela.vmlinux.{text}")
        assert klp is not None, [s.name for s in elf.iter_sections()]
        assert klp["sh_type"] == "SHT_RELA"
        assert klp["sh_flags"] & SHF_ALLOC and klp["sh_flags"] & SHF_RELA_LIVEPATCH
        assert klp["sh_info"] == elf.get_section_index(text)
        assert klp["sh_link"] == symtab_index
        assert klp["sh_entsize"] == 24
        klp_name = {"foo": ".klp.sym.vmlinux.foo,0", "baz": ".klp.sym.vmlinux.baz,0"}
        want_moved = [(o, t, a, klp_name[s]) for o, t, a, s in original if s in klp_name]
        want_kept = [r for r in original if r[3] not in klp_name]
        assert _relocs(elf, klp) == want_moved
        kept = elf.get_section_by_name(f".rela{text}")
        assert _relocs(elf, kept) == want_kept
        assert kept["sh_info"] == elf.get_section_index(text)
        assert all(r[3] == "bar" for r in want_kept)
        moved_total += len(want_moved)
    # use_foo: foo and baz; use_bar: foo (bar stays with the module loader)
    assert sorted(conv.sections) == [(".klp.rela.vmlinux..text.use_bar", 1),
                                     (".klp.rela.vmlinux..text.use_foo", 2)]
    assert moved_total == 3
    # the code and the other sections are as they were
    for sec in orig.iter_sections():
        if sec["sh_type"] not in ("SHT_RELA", "SHT_SYMTAB", "SHT_STRTAB", "SHT_NOBITS", "SHT_NULL"):
            assert elf.get_section_by_name(sec.name).data() == sec.data(), sec.name


def test_converted_object_reads_cleanly(converted):
    _, _, _, path = converted
    proc = subprocess.run(["readelf", "-a", "-W", str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert ".klp.sym.vmlinux.foo,0" in proc.stdout
    assert "Relocation section '.klp.rela.vmlinux..text.use_foo'" in proc.stdout
    # and the result is still an object file the linker takes
    linked = path.with_suffix(".r.o")
    ld = subprocess.run(["ld", "-r", str(path), "-o", str(linked)], capture_output=True, text=True,
                        check=False)
    assert ld.returncode == 0, ld.stderr


def test_convert_leaves_an_object_without_targets_alone(converted):
    data, _, _, _ = converted
    out, conv = convert(data, lambda name: None)
    assert conv.symbols == {} and conv.sections == []
    elf, orig = ELFFile(io.BytesIO(out)), ELFFile(io.BytesIO(data))
    assert [s.name for s in elf.iter_sections()] == [s.name for s in orig.iter_sections()]
    for sec in orig.iter_sections():
        if sec["sh_type"] != "SHT_NOBITS":
            assert elf.get_section_by_name(sec.name).data() == sec.data(), sec.name


def test_convert_keeps_each_objects_symbols_in_its_own_sections(converted):
    """A function of a module's unit that uses a static of its module (foo) and a
    non-exported symbol of vmlinux (baz).  The kernel applies a ``.klp.rela.<obj>``
    section when ``obj`` loads and refuses a module's section that names a vmlinux
    symbol (klp_resolve_symbols: "invalid access to vmlinux symbol ... from
    module-specific livepatch relocation section"), so each object's relocations go
    to a section of that object."""
    data = converted[0]
    targets = {"foo": Target("demo_mod", "foo", 0), "baz": Target("vmlinux", "baz", 0)}
    out, conv = convert(data, targets.get)
    assert conv.symbols == {"foo": ".klp.sym.demo_mod.foo,0", "baz": ".klp.sym.vmlinux.baz,0"}
    orig, elf = ELFFile(io.BytesIO(data)), ELFFile(io.BytesIO(out))
    moved: dict[str, list] = {}
    for sec in elf.iter_sections():
        if not sec.name.startswith(".klp.rela."):
            continue
        obj = sec.name.split(".")[3]
        relocs = _relocs(elf, sec)
        assert all(r[3].startswith(f".klp.sym.{obj}.") for r in relocs), (sec.name, relocs)
        target = elf.get_section(sec["sh_info"]).name
        assert sec.name == f".klp.rela.{obj}.{target}"
        moved.setdefault(target, []).extend(relocs)
    for text in (".text.use_foo", ".text.use_bar"):
        original = _relocs(orig, orig.get_section_by_name(f".rela{text}"))
        want = sorted((o, t, a, targets[s].klp_name) for o, t, a, s in original if s in targets)
        assert sorted(moved.get(text, [])) == want, text


def test_convert_refuses_livepatch_relocations_in_early_sections(tmp_path: Path):
    data = _gcc(tmp_path, "jump", JUMP_C)
    orig = ELFFile(io.BytesIO(data))
    jt = orig.get_section_by_name(".rela__jump_table")
    assert jt is not None and [r[3] for r in _relocs(orig, jt)] == ["foo"]
    with pytest.raises(KlpccError, match=r"refers to foo from __jump_table, which the kernel reads when"):
        convert(data, _resolve)
    # an export there is fine: the module loader relocates it
    out, conv = convert(data, lambda name: None)
    assert conv.sections == []


# =========================================================================== real builds


def _undefined(elf: ELFFile) -> list[str]:
    return [s.name for s in elf.get_section_by_name(".symtab").iter_symbols()
            if s.name and s["st_shndx"] == "SHN_UNDEF"]


def _exports(kdir: Path) -> set[str]:
    return {ln.split("\t")[1] for ln in (kdir / "Module.symvers").read_text().splitlines() if ln}


@pytest.mark.slow
def test_real_build(main_bundle: Path, tmp_path: Path):
    kdir = kernel_dir()
    out = tmp_path / "ko"
    syms = kallsyms(tmp_path, twice=("demo_hits",))
    proc = build(main_bundle, out, "--kernel", str(kdir), "--kallsyms", str(syms),
                 "--sympos", "fs/demo/demo.c:demo_hits=2")
    assert proc.returncode == 0, proc.stderr
    ko = out / "klpcc_0002_release_2.ko"
    assert ko.is_file()
    doc = json.loads((out / "build.json").read_text())
    assert doc["module"] == str(ko) and doc["build_seconds"] > 0
    text = _parse_text(proc.stdout)
    assert text["what"] == str(ko)
    _assert_text_agrees(text, doc)
    # what the patched code uses of the kernel, and nothing else it merely declares
    assert doc["livepatch_symbols"] == {
        "__klpcc_sym_1_demo_hits": ".klp.sym.vmlinux.demo_hits,2",
        "__klpcc_sym_1_demo_lock": ".klp.sym.vmlinux.demo_lock,0",
        "__klpcc_sym_1_demo_count": ".klp.sym.vmlinux.demo_count,0",
        "__klpcc_sym_1_demo_default": ".klp.sym.vmlinux.demo_default,0",
        "demo_level": ".klp.sym.vmlinux.demo_level,0",
        "__klpcc_sym_2_util_calls": ".klp.sym.vmlinux.util_calls,0",
    }
    sections = {s["section"]: s["count"] for s in doc["livepatch_relocations"]}
    assert set(sections) >= {".klp.rela.vmlinux..text.klpcc_new_1_demo_show",
                             ".klp.rela.vmlinux..text.klpcc_new_2_demo_util_len"}

    if shutil.which("modinfo"):
        mi = subprocess.run(["modinfo", "-F", "livepatch", str(ko)], capture_output=True, text=True,
                            check=False)
        assert mi.returncode == 0 and mi.stdout.strip() == "Y", mi.stderr
    elf = ELFFile(io.BytesIO(ko.read_bytes()))
    modinfo = elf.get_section_by_name(".modinfo").data().split(b"\0")
    assert b"livepatch=Y" in modinfo and b"license=GPL" in modinfo
    klp_syms = {s.name: s for s in elf.get_section_by_name(".symtab").iter_symbols()
                if s.name.startswith(".klp.sym.")}
    assert set(klp_syms) == set(doc["livepatch_symbols"].values())
    assert all(s["st_shndx"] == SHN_LIVEPATCH for s in klp_syms.values())
    symtab_index = elf.get_section_index(".symtab")
    seen: dict[str, set[str]] = {}
    for sec in elf.iter_sections():
        if sec.name.startswith(".klp.rela."):
            assert sec["sh_flags"] & SHF_ALLOC and sec["sh_flags"] & SHF_RELA_LIVEPATCH, sec.name
            assert sec["sh_link"] == symtab_index
            target = elf.get_section(sec["sh_info"]).name
            assert sec.name == f".klp.rela.vmlinux.{target}"
            seen[target] = {r[3] for r in _relocs(elf, sec)}
            assert sections[sec.name] == sec.num_relocations()
        elif sec["sh_type"] == "SHT_RELA":
            assert not any(r[3].startswith(".klp.sym.") for r in _relocs(elf, sec)), sec.name
    assert {".klp.sym.vmlinux.demo_hits,2", ".klp.sym.vmlinux.demo_lock,0", ".klp.sym.vmlinux.demo_count,0",
            ".klp.sym.vmlinux.demo_default,0", ".klp.sym.vmlinux.demo_level,0"} \
        <= seen[".text.klpcc_new_1_demo_show"]
    assert seen[".text.klpcc_new_2_demo_util_len"] == {".klp.sym.vmlinux.util_calls,0"}
    readelf = subprocess.run(["readelf", "-a", "-W", str(ko)], capture_output=True, text=True, check=False)
    assert readelf.returncode == 0 and readelf.stderr == "", readelf.stderr
    exports = _exports(kdir)
    left = [n for n in _undefined(elf) if n not in exports]
    assert left == [], left
    assert {"seq_printf", "klp_enable_patch", "strnlen"} <= set(_undefined(elf))
    # the new functions are in the module under the names klpcc_patch.c uses
    defined = {s.name for s in elf.get_section_by_name(".symtab").iter_symbols()
               if s.name and s["st_shndx"] not in ("SHN_UNDEF", SHN_LIVEPATCH)}
    assert {"klpcc_new_1_demo_show", "klpcc_new_2_demo_util_len", "klpcc_patch"} <= defined


@pytest.mark.slow
def test_real_build_refuses_an_ambiguous_static(main_bundle: Path, tmp_path: Path):
    """demo_hits is used by the patched code only: which one of the kernel's two it is
    comes out once the module is built, and klpcc asks for --sympos."""
    kdir = kernel_dir()
    out = tmp_path / "ko"
    syms = kallsyms(tmp_path, twice=("demo_hits",))
    assert_refused(build(main_bundle, out, "--kernel", str(kdir), "--kallsyms", str(syms)), out,
                   "fs/demo/demo.c: static variable demo_hits is defined 2 times in vmlinux",
                   "--sympos fs/demo/demo.c:demo_hits=N")


@pytest.mark.slow
def test_real_build_reports_compile_errors_on_the_release_file(tmp_path: Path):
    bad = _edit(DEMO_C, "\tdemo_hits++;\n", "\tdemo_hits += demo_no_such_counter;\n")
    line = _line_of(bad, "demo_hits += demo_no_such_counter;")
    bundle = bundle_of(tmp_path, [{DEMO: bad}])
    out = tmp_path / "ko"
    msg = assert_refused(build(bundle, out, "--kernel", str(kernel_dir())), out)
    # said by the comparison, which compiles the release with the kernel's flags first
    said = f"klpcc: error: the release does not compile with the kernel's flags: {DEMO}:{line}: "
    assert msg.startswith(said), msg
    assert "demo_no_such_counter" in msg and "undeclared" in msg


def test_refuses_an_outdir_that_is_or_holds_the_bundle(main_bundle: Path, tmp_path: Path):
    before = sorted(p.relative_to(main_bundle) for p in main_bundle.rglob("*"))
    for out in (main_bundle, main_bundle.parent):
        proc = build(main_bundle, out, "--source-only", "--force")
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert "which this run reads" in proc.stderr or "holds the current directory" in proc.stderr \
            or "not a directory klpcc wrote" in proc.stderr, proc.stderr
    assert sorted(p.relative_to(main_bundle) for p in main_bundle.rglob("*")) == before
