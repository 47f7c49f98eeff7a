"""klpcc.kbuild: what Kbuild's makefiles say about a source file (its object, the flags
its directory adds and removes), on made-up makefiles in the shapes the kernel uses, and
on the real makefiles of Debian's linux-source checked against the installed kernel's
own list of modules."""

from __future__ import annotations

from pathlib import Path

import pytest

from klpcc import kbuild
from klpcc.emit.kernel.layout import Layout

CFG = {"CONFIG_FOO": "y", "CONFIG_BAR": "m", "CONFIG_FUNCTION_TRACER": "y", "CONFIG_VAL": '"x"'}
FTRACE = {"CC_FLAGS_FTRACE": "-pg -mfentry -mrecord-mcount"}


def tree(files: dict[str, str]):
    data = {k: v.encode() for k, v in files.items()}
    return lambda p: data.get(p)


def test_obj_y_obj_m_and_a_config_symbol_decide_the_object():
    read = tree({"drv/Makefile": "obj-y += core.o\nobj-$(CONFIG_FOO) += foo.o\nobj-$(CONFIG_BAR) += bar.o\n"
                                 "obj-$(CONFIG_NONE) += none.o\n"})
    assert kbuild.rules(read, "drv/core.c", CFG).object == "vmlinux"
    assert kbuild.rules(read, "drv/foo.c", CFG).object == "vmlinux"
    bar = kbuild.rules(read, "drv/bar.c", CFG)
    assert bar.object == "bar" and bar.makefile == "drv/Makefile" and "obj-m" in bar.why
    none = kbuild.rules(read, "drv/none.c", CFG)
    assert none.object is None and "drv/Makefile" in none.why and "none.o" in none.why


def test_composite_objects_name_the_module_they_are_linked_into():
    read = tree({"fs/ab/Makefile": "obj-$(CONFIG_BAR) += my-fs.o\nmy-fs-y := super.o inode.o\n"
                                   "my-fs-$(CONFIG_FOO) += extra.o\nmy-fs-$(CONFIG_NONE) += gone.o\n"
                                   "old-objs := legacy.o\nobj-y += old.o\n"})
    assert kbuild.rules(read, "fs/ab/super.c", CFG).object == "my_fs"  # '-' becomes '_', as modules name it
    assert kbuild.rules(read, "fs/ab/extra.c", CFG).object == "my_fs"
    assert kbuild.rules(read, "fs/ab/gone.c", CFG).object is None
    assert kbuild.rules(read, "fs/ab/legacy.c", CFG).object == "vmlinux"


def test_conditionals_and_make_functions_are_evaluated():
    read = tree({"k/Makefile": """
ifdef CONFIG_FOO
obj-y += a.o
else
obj-y += b.o
endif
ifeq ($(CONFIG_BAR),m)
obj-m += c.o
endif
ifneq ($(CONFIG_VAL),"x")
obj-y += d.o
else ifeq ($(CONFIG_FOO),y)
obj-y += e.o
endif
names := f g
obj-y += $(addsuffix .o,$(names)) $(patsubst %.c,%.o,h.c) $(subst X,i,X.o)
obj-y += $(if $(CONFIG_NONE),j.o,k.o) $(call some-func,l.o) \\
         m.o # a comment m2.o
"""})
    built = {n: kbuild.rules(read, f"k/{n}.c", CFG).object for n in "abcdefghijklm"}
    assert built == {"a": "vmlinux", "b": None, "c": "c", "d": None, "e": "vmlinux", "f": "vmlinux",
                     "g": "vmlinux", "h": "vmlinux", "i": "vmlinux", "j": None, "k": "vmlinux",
                     "l": None,  # $(call ...) is not known without Kbuild: nothing
                     "m": "vmlinux"}


def test_kbuild_wins_over_makefile_and_included_makefiles_are_read():
    read = tree({"d/Kbuild": "include $(srctree)/d/common.mk\nobj-y += k.o\n",
                 "d/Makefile": "obj-y += mk.o\n",
                 "d/common.mk": "obj-m += shared.o\n"})
    assert kbuild.rules(read, "d/k.c", CFG).object == "vmlinux"
    assert kbuild.rules(read, "d/mk.c", CFG).object is None
    assert kbuild.rules(read, "d/shared.c", CFG).object == "shared"
    assert set(kbuild.makefiles(read, "d/k.c")) == {"d/Kbuild", "d/common.mk"}


def test_a_directory_the_parent_does_not_enter_builds_nothing():
    read = tree({"top/Makefile": "obj-$(CONFIG_FOO) += on/\nobj-$(CONFIG_NONE) += off/\n",
                 "top/on/Makefile": "obj-y += x.o\n", "top/off/Makefile": "obj-y += y.o\n"})
    assert kbuild.rules(read, "top/on/x.c", CFG).object == "vmlinux"
    off = kbuild.rules(read, "top/off/y.c", CFG)
    assert off.object is None and off.why == "top/Makefile does not enter off/ with this configuration"


def test_flags_added_and_removed_as_kbuild_computes_them():
    read = tree({
        "sub/Makefile": "obj-y += dir/\nsubdir-ccflags-y += -DFROM_ABOVE\n",
        "sub/dir/Makefile": """
obj-y += plain.o traced.o untraced.o
ccflags-y += -I$(src)/include -I $(srctree)/sub/other -DDIR -I/abs/outside
ccflags-remove-$(CONFIG_FUNCTION_TRACER) += $(CC_FLAGS_FTRACE)
CFLAGS_traced.o = $(CC_FLAGS_FTRACE)
CFLAGS_REMOVE_untraced.o = -DDIR
""",
    })
    plain = kbuild.rules(read, "sub/dir/plain.c", CFG, FTRACE)
    assert plain.flags == ("-DFROM_ABOVE", "-Isub/dir/include", "-Isub/other", "-DDIR")
    assert plain.include_dirs == ("sub/dir/include", "sub/other")
    assert set(plain.removed) == {"-pg", "-mfentry", "-mrecord-mcount"}
    traced = kbuild.rules(read, "sub/dir/traced.c", CFG, FTRACE)
    assert traced.flags[-3:] == ("-pg", "-mfentry", "-mrecord-mcount")  # CFLAGS_file.o adds them back
    untraced = kbuild.rules(read, "sub/dir/untraced.c", CFG, FTRACE)
    assert "-DDIR" not in untraced.flags and "-DDIR" in untraced.removed
    assert kbuild.include_dirs(read, "sub/dir/plain.c") == ["sub/dir/include", "sub/other"]

    layout = Layout(read, CFG, (), FTRACE["CC_FLAGS_FTRACE"])
    why = layout.untraced("sub/dir/plain.c")
    assert why == ("sub/dir/Makefile builds sub/dir/plain.c without -mfentry -mrecord-mcount -pg "
                   "(ftrace's entry hook)")
    assert layout.untraced("sub/dir/traced.c") is None


def test_files_with_no_makefile_are_vmlinux_unless_told_and_objects_can_be_given():
    read = tree({})
    r = kbuild.rules(read, "loose/file.c", CFG)
    assert r.object == "vmlinux" and "no Kbuild makefile" in r.why
    layout = Layout(read, CFG, (("loose", "mymod"),))
    assert layout.object("loose/file.c") == "mymod"


def test_odd_makefiles_do_not_break_the_reader():
    read = tree({"x/Makefile": "obj-y += ok.o\nobj-y += $(\nendif\nelse\n$(foo $(bar)\n"
                               "include $(srctree)/x/Makefile\n"  # includes itself
                               "ifeq (a\nobj-y += never.o\n"})  # a condition make could not read
    assert kbuild.rules(read, "x/ok.c", CFG).object == "vmlinux"
    assert kbuild.rules(read, "x/never.c", CFG).object is None
    with pytest.raises(Exception, match="not a C file"):
        kbuild.rules(read, "x/ok.h", CFG)


# ------------------------------------------------------------------ real makefiles

@pytest.mark.slow
def test_real_makefiles_name_the_modules_the_installed_kernel_has():
    """Every .c file of the sweep's subsystems the makefiles build into a module names
    a module of /lib/modules/<release>; none of them names a module the kernel has
    built in; the modules the kernel has of these directories are all found."""
    from . import kernel_sweep as ks
    from .qemu_guest import ensure_kernel_packages
    from .test_real_sources import fetch_kernel

    kut = ensure_kernel_packages()
    root = fetch_kernel(kut.source_version, ks.SUBSET)
    cfg = ks.config(kut.kdir)
    base = Path("/lib/modules") / kut.release
    modules = {Path(line.split(":")[0]).name.split(".ko")[0].replace("-", "_"): line.split(":")[0]
               for line in (base / "modules.dep").read_text().splitlines()}
    builtin = {Path(line).name.split(".ko")[0].replace("-", "_")
               for line in (base / "modules.builtin").read_text().splitlines()}
    dirs = ("fs", "fs/xfs", "kernel", "mm", "net/core", "drivers/base", "arch/x86/kvm")
    found: dict[str, str] = {}
    vmlinux = 0
    for d in dirs:
        for rel, obj in ks.built_files(root, d, cfg):
            if obj == "vmlinux":
                vmlinux += 1
                continue
            assert obj in modules, f"{rel}: the makefiles say module {obj}, which {base} has not"
            assert obj not in builtin, f"{rel}: the makefiles say module {obj}, which the kernel has built in"
            found[obj] = rel
    expected = {m for m, p in modules.items() if p.startswith(tuple(f"kernel/{d}/" for d in dirs))}
    missing = expected - set(found)
    assert not missing, f"modules of these directories no file was found to build: {sorted(missing)[:20]}"
    assert vmlinux > 500 and len(found) > 50
    xfs = kbuild.rules(lambda p: (root / p).read_bytes() if (root / p).is_file() else None,
                       "fs/xfs/xfs_super.c", cfg)
    assert xfs.object == "xfs" and "fs/xfs/libxfs" in xfs.include_dirs
