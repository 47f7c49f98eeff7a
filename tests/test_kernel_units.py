"""Kernel units of files in the shapes real kernel files take, built against the
installed kernel's headers: a syscall, definitions written with macros (a notifier
head, a static key, device attributes), statics with attributes, several variables in
one declaration, a header with ``#ifdef`` versions, an array sized by its initializer,
a ``STATIC`` specifier macro, an ``asm`` block opened and closed by macros, an
initcall without its ``;`` -- and a changed function whose messages print
``__func__``.  The file is ours, written in kernel style under ``kernel/shapes/`` with
its own Kbuild makefile."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from .test_kernel_build import _edit, assert_refused, build, bundle_of, code_of, kernel_dir

pytestmark = pytest.mark.slow

SHAPES = "kernel/shapes/shapes.c"
MAKEFILE = "kernel/shapes/Makefile"

SHAPES_C = r"""// SPDX-License-Identifier: GPL-2.0
#include <linux/kernel.h>
#include <linux/init.h>
#include <linux/module.h>
#include <linux/syscalls.h>
#include <linux/notifier.h>
#include <linux/jump_label.h>
#include <linux/device.h>
#include <linux/cache.h>

#define STATIC static noinline

static ATOMIC_NOTIFIER_HEAD(shapes_chain);
static ATOMIC_NOTIFIER_HEAD(shapes_unused_chain);
DEFINE_STATIC_KEY_FALSE(shapes_key);
static unsigned long shapes_seq ____cacheline_aligned;
static int shapes_a, shapes_b, shapes_c;

static const char *const shapes_names[] = { "circle", "square", "triangle" };
const int shapes_sides[] = { 0, 4, 3, 5 };

#define SHAPES_START(name) asm(".pushsection .text, \"ax\"\n\t.globl " #name "\n\t" #name ":\n\t"
#define SHAPES_INSN(insn) #insn "\n\t"
#define SHAPES_END ".popsection")

SHAPES_START(shapes_stub)
SHAPES_INSN(ret)
SHAPES_END;

static ssize_t sides_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%d\n", shapes_sides[1]);
}
static DEVICE_ATTR_RO(sides);

#ifdef CONFIG_64BIT
int shapes_pick(int i, long extra)
#else
int shapes_pick(int i)
#endif
{
	return (i + shapes_c) % 3;
}

STATIC int shapes_area(int side)
{
	return side * side + shapes_b;
}

static noinline int shapes_count(void)
{
	shapes_a++;
	shapes_seq++;
	return shapes_a + shapes_b;
}

int shapes_notify(unsigned long what)
{
	if (static_branch_unlikely(&shapes_key))
		return atomic_notifier_call_chain(&shapes_chain, what, NULL);
	return shapes_area((int)what) + shapes_count();
}

SYSCALL_DEFINE1(shapes_demo, int, which)
{
	if (which < 0)
		return -EINVAL;
	pr_info("shapes: %s\n", shapes_names[which % ARRAY_SIZE(shapes_names)]);
	return shapes_pick(which, 0);
}

umode_t shapes_attr_mode(struct device *dev)
{
	return dev_attr_sides.attr.mode;
}

static int __init shapes_init(void)
{
	return shapes_notify(0);
}
module_init(shapes_init)
"""

# release 1: the syscall, a function printing __func__ and using the global array's
# size, the function with #ifdef headers, the STATIC function, and the user of the
# attribute and notifier head
RELEASE = {SHAPES: _edit(_edit(_edit(_edit(_edit(
    SHAPES_C,
    "\tpr_info(\"shapes: %s\\n\"",
    "\tpr_info(\"shapes %s: %s\\n\", __func__"),
    "\tshapes_seq++;\n",
    "\tshapes_seq += ARRAY_SIZE(shapes_sides);\n\tpr_debug(\"%s: %lu\\n\", __func__, shapes_seq);\n"),
    "\treturn (i + shapes_c) % 3;", "\treturn (i + shapes_c + 1) % 3;"),
    "\treturn side * side + shapes_b;", "\treturn side * side + shapes_b + 1;"),
    "\treturn dev_attr_sides.attr.mode;", "\treturn dev_attr_sides.attr.mode | 0200;"),
    MAKEFILE: "obj-y += shapes.o\n"}
BASE = {SHAPES: SHAPES_C, MAKEFILE: "obj-y += shapes.o\n"}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shapes")
    bundle = bundle_of(tmp, [RELEASE], BASE)
    out = tmp / "ko"
    proc = build(bundle, out, "--kernel", str(kernel_dir()), "--name", "klpcc_shapes")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((out / "build.json").read_text())
    return out, doc, (out / "src" / SHAPES).read_text()


def test_every_changed_function_is_patched_the_syscall_through_its_stubs(built):
    _, doc, _ = built
    names = {f["name"] for f in doc["functions"]}
    assert {"shapes_count", "shapes_pick", "shapes_area", "shapes_attr_mode"} <= names, names
    stubs = {n for n in names if n.endswith("sys_shapes_demo")}
    assert "__x64_sys_shapes_demo" in stubs, names
    assert {f["object"] for f in doc["functions"]} == {"vmlinux"}  # obj-y, from the makefile


def test_macro_made_definitions_are_declared_when_used_and_left_out_when_not(built):
    _, doc, unit = built
    code = code_of(unit)
    assert re.search(r'extern struct device_attribute dev_attr_sides __asm__\("[^"]+"\);', code), code
    assert "DEVICE_ATTR_RO" not in code and "ATOMIC_NOTIFIER_HEAD" not in code
    assert "shapes_unused_chain" not in code
    left = " ".join(x["what"] for x in doc["left_out"])
    assert "shapes_unused_chain" in left
    # the asm block opened and closed by macros is the running kernel's, never a copy
    assert "SHAPES_START(shapes_stub)" not in code
    assert "SHAPES_END" not in code.split("#define SHAPES_END")[-1]
    # the initcall without its ';' is the kernel's
    assert "module_init(shapes_init)" not in code


def test_declarations_keep_the_shapes_c_needs(built):
    _, doc, unit = built
    code = code_of(unit)
    # `static int a, b, c;`: one declaration per variable the patch uses; the two the
    # running code has no storage for (never written: folded into its code) are copies
    assert re.search(r'extern int shapes_a __asm__\("[^"]+"\);', code)
    assert "static int shapes_b; static int shapes_c;" in code
    copied = " ".join(x["what"] for x in doc["copied"])
    assert "shapes_b (line 17): the running vmlinux has no storage for it" in copied
    # an array sized by its initializer whose size the patch takes: a sized declaration
    assert "extern const int shapes_sides[sizeof(" in code
    # the header with #ifdef versions became one declaration per version, directives kept
    assert re.search(r"#ifdef CONFIG_64BIT\nextern int shapes_pick\(int i, long extra\)\n#else\n"
                     r"extern int shapes_pick\(int i\)\n#endif\n;", unit), unit


def test_a_renamed_function_prints_its_running_name(built):
    out, _, _ = built
    with open(out / "klpcc_shapes.ko", "rb") as fh:
        elf = ELFFile(fh)
        rodata = b"".join(s.data() for s in elf.iter_sections() if s.name.startswith(".rodata"))
    assert b"shapes_count\0" in rodata and b"__do_sys_shapes_demo\0" in rodata or b"shapes_demo" in rodata
    assert b"klpcc_new_" not in rodata


def test_the_module_is_a_livepatch_of_the_running_symbols(built):
    _, doc, _ = built
    syms = doc["livepatch_symbols"]
    assert any(v.startswith(".klp.sym.vmlinux.shapes_seq,") for v in syms.values()), syms
    assert any(v.startswith(".klp.sym.vmlinux.dev_attr_sides,") for v in syms.values()), syms


@pytest.mark.parametrize("makefile,needles", [
    ("obj-y += shapes.o\nCFLAGS_REMOVE_shapes.o = $(CC_FLAGS_FTRACE)\n",  # built without ftrace's hook
     ("kernel/shapes/Makefile builds kernel/shapes/", "(ftrace's entry hook)")),
    ("obj-$(CONFIG_KLPCC_NO_SUCH_OPTION) += shapes.o\n",  # not built by this configuration
     ("configuration does not build", "kernel/shapes/Makefile")),
], ids=["without-ftrace", "not-built"])
def test_what_the_makefile_says_can_refuse_the_file(tmp_path: Path, makefile: str, needles: tuple[str, ...]):
    bundle = bundle_of(tmp_path, [{**RELEASE, MAKEFILE: makefile}], {**BASE, MAKEFILE: makefile})
    out = tmp_path / "ko"
    assert_refused(build(bundle, out, "--kernel", str(kernel_dir())), out, SHAPES, *needles)


def test_a_notrace_function_under_another_name_is_refused(tmp_path: Path):
    base = {**BASE, SHAPES: _edit(SHAPES_C, "static noinline int shapes_count(void)",
                                  "static noinline __meminit int shapes_count(void)")}
    rel = {**base, SHAPES: _edit(base[SHAPES], "\tshapes_seq++;\n", "\tshapes_seq += 2;\n")}
    bundle = bundle_of(tmp_path, [rel], base)
    out = tmp_path / "ko"
    assert_refused(build(bundle, out, "--kernel", str(kernel_dir())), out, SHAPES,
                   "cannot patch shapes_count", "without ftrace's entry hook")
