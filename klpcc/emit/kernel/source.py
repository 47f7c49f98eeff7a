"""Kernel target, step 1: the C units of a cumulative livepatch module.

The units are written by the shared unit writer (:mod:`klpcc.emit.units`); what is the
kernel's own:

* a running static is declared under an assembler name (``__klpcc_sym_<unit>_<name>``)
  that the ELF step turns into a livepatch symbol ``.klp.sym.<object>.<name>,<pos>``;
* initcalls, exports and module parameters are dropped (they would run or register
  twice); ``__init``/``__exit`` code and data are left out; ``notrace``, ``noinstr``
  and the like cannot be patched;
* ``static DEFINE_MUTEX(x);`` and its kin become typed declarations of the kernel's ``x``;
* symbol positions come from ``--sympos`` or the target's kallsyms.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from ...c import Item
from ...errors import KlpccError
from ...names import quote
from ..units import UnitWriter, one_line
from .symbols import VMLINUX, Kallsyms

HEADER = "klpcc_livepatch.h"

# top-level statements that register something at boot or export a symbol: the
# module must not do it a second time
_DROPPED = re.compile(
    r"\s*(EXPORT_SYMBOL\w*|EXPORT_TRACEPOINT_SYMBOL\w*|\w*initcall\w*|module_init|module_exit|"
    r"__setup|early_param|core_param\w*|module_param\w*|MODULE_\w+|ALLOW_ERROR_INJECTION|"
    r"NOKPROBE_SYMBOL|STACK_FRAME_NON_STANDARD\w*|late_initcall\w*|__exitcall|"
    r"console_initcall|security_initcall)\s*\(")


_SYSCALL = re.compile(r"(COMPAT_)?SYSCALL_DEFINE\d$")
# the prefixes of the entry stubs architectures with syscall wrappers give a syscall
_SYSCALL_ABIS = ("x64", "ia32", "x32", "arm64", "s390x", "s390", "riscv", "powerpc")


_STUB = re.compile(r"__(?:" + "|".join(_SYSCALL_ABIS) + r"|se|do)_((?:compat_)?sys_\w+)$")


def modname(path: str, obj: str) -> str:
    """``KBUILD_MODNAME`` of a file built into ``obj``: the module, or the file's stem."""
    return (PurePosixPath(path).stem if obj == VMLINUX else obj).replace("-", "_")


def syscall_stubs(name: str) -> list[str]:
    """The entry stubs of syscall ``sys_NAME`` (or ``compat_sys_NAME``), and the name itself."""
    return [f"__{abi}_{name}" for abi in _SYSCALL_ABIS] + [name]


def syscall_owner(symbol: str) -> str | None:
    """The syscall (``sys_NAME``) an entry stub or its inner function belongs to."""
    m = _STUB.match(symbol)
    return m.group(1) if m else None


@dataclass(frozen=True)
class Resolver:
    """Symbol positions: from ``--sympos`` first, else from the target's kallsyms.
    Without kallsyms, whether the running kernel has a static is predicted from the
    symbols of the unit compiled with the kernel's flags (``predicted``)."""

    kallsyms: Kallsyms | None
    sympos: dict[tuple[str, str], int]  # (file, name) -> pos
    predicted: frozenset[str] | None = None  # the symbols of the compiled base unit

    def position(self, obj: str, name: str, path: str, what: str) -> int:
        pos = self.sympos.get((path, name))
        if pos is not None:
            return pos
        if self.kallsyms is None or not self.kallsyms.has_object(obj):
            return 0
        n = self.kallsyms.count(obj, name)
        if n == 0:
            raise KlpccError(f"{what} {name} is not in the symbol table of {obj} ({self.kallsyms.source}): "
                             "it was inlined or removed by the compiler", file=path)
        if n > 1:
            raise KlpccError(f"{what} {name} is defined {n} times in {obj}; say which one with "
                             f"--sympos {path}:{name}=N (1 to {n}, in kallsyms order)", file=path)
        return 0

    def present(self, obj: str, name: str) -> bool | None:
        """Whether the running kernel has a symbol ``name`` in ``obj`` (None: unknown)."""
        if self.kallsyms is None or not self.kallsyms.has_object(obj):
            return None if self.predicted is None else name in self.predicted
        return self.kallsyms.count(obj, name) > 0

    def for_unit(self, predicted: set[str] | None) -> Resolver:
        return Resolver(self.kallsyms, self.sympos, None if predicted is None else frozenset(predicted))


class KernelUnitWriter(UnitWriter):
    """A unit of a livepatch module."""

    header = HEADER
    load_only = re.compile(r"\b(__init|__exit|__initdata|__initconst|__exitdata)\b")
    unpatchable = re.compile(r"\b(__init|__exit|notrace|noinstr|__always_inline|__kprobes|"
                             r"__noinstr_section|__cpuidle|__irq_entry|__softirq_entry)\b")
    # macros that define one variable: the type it has
    define_types = {
        "DEFINE_SPINLOCK": "spinlock_t", "DEFINE_RAW_SPINLOCK": "raw_spinlock_t",
        "DEFINE_RWLOCK": "rwlock_t", "DEFINE_MUTEX": "struct mutex", "LIST_HEAD": "struct list_head",
        "DEFINE_IDR": "struct idr", "DEFINE_IDA": "struct ida", "DECLARE_RWSEM": "struct rw_semaphore",
        "DECLARE_WAIT_QUEUE_HEAD": "wait_queue_head_t", "DEFINE_SEMAPHORE": "struct semaphore",
        "DEFINE_SEQLOCK": "seqlock_t", "DEFINE_XARRAY": "struct xarray", "HLIST_HEAD": "struct hlist_head",
    }

    def prologue(self) -> list[str]:
        """The unit is compiled as the kernel compiled its file: vmlinux's code without
        ``MODULE`` (a header may hide what modules must not call), and under the
        ``KBUILD_MODNAME`` of its object (messages keep their prefix)."""
        u = self.unit
        name = modname(u.path, u.object)
        # (vmlinux's code names its would-be module file: MODULE_INFO(file, KBUILD_MODFILE))
        return (["#undef MODULE", "#ifndef KBUILD_MODFILE", f'#define KBUILD_MODFILE {quote(u.path[:-2])}',
                 "#endif"] if u.object == VMLINUX else []) + [
            "#undef KBUILD_MODNAME", f'#define KBUILD_MODNAME "{name}"']

    def preamble(self) -> str:
        """Code that the kernel reads while the module loads must not refer to what the
        module cannot link (livepatch relocates a module's symbols only once that module
        is loaded): static branches read their key instead of being jump labels, a
        tracepoint calls its iterator instead of a static call, ``THIS_MODULE`` of a
        module's code is that module, and exports (of a file the unit includes) are none.
        Defined before the file's own headers, so their inline functions are compiled
        the same way."""
        out = ["#include <linux/jump_label.h>", "#include <linux/tracepoint.h>",
               "#undef static_branch_likely",
               "#define static_branch_likely(x) likely_notrace(static_key_enabled(&(x)->key))",
               "#undef static_branch_unlikely",
               "#define static_branch_unlikely(x) unlikely_notrace(static_key_enabled(&(x)->key))",
               "#define static_key_false(x) unlikely_notrace(static_key_enabled(x))",
               "#define static_key_true(x) likely_notrace(static_key_enabled(x))",
               "#undef __DO_TRACE_CALL",
               "#define __DO_TRACE_CALL(name, args) __traceiter_##name(NULL, args)",
               # the running code exports its symbols: the module exports none of them again
               "#undef __EXPORT_SYMBOL", "#define __EXPORT_SYMBOL(sym, sec, ns)"]
        if self.unit.object != VMLINUX:
            label = self.label("__this_module", "module")
            out += [f'extern struct module __klpcc_this_module __asm__("{label}");', "#undef THIS_MODULE",
                    "#define THIS_MODULE (&__klpcc_this_module)"]
        return "".join(line + "\n" for line in out)

    def macro_function(self, it: Item, header: str, text: str) -> str:
        """A changed syscall: the kernel reaches it through its entry stubs
        (``__x64_sys_NAME``, ``__ia32_sys_NAME``, ... or ``sys_NAME`` itself where the
        architecture has no wrappers), which the macro defines with the body.  The unit
        defines them again under new names (a ``#define`` of each stub's name, which
        the macro's token pasting forms) and the patch redirects every one the running
        kernel has; the syscall's ftrace metadata is not made a second time."""
        u = self.unit
        m = _SYSCALL.match(it.macro or "")
        if m is None:
            return super().macro_function(it, header, text)
        stubs = syscall_stubs(it.name)
        present = {s: self.resolver.present(u.object, s) for s in stubs}
        if any(v is None for v in present.values()):
            raise KlpccError(f"cannot patch {it.name} (line {it.start_line}): which entry stubs of the "
                             "syscall the kernel has (__x64_sys_..., __ia32_sys_...) is known from the unit "
                             "compiled with the kernel's flags or from its kallsyms, and klpcc has neither",
                             file=u.path)
        found = [s for s, v in present.items() if v]
        if not found:
            raise KlpccError(f"cannot patch {it.name} (line {it.start_line}): the running {u.object} has "
                             f"none of its entry stubs ({', '.join(stubs)})", file=u.path)
        lines = ["#undef SYSCALL_METADATA", "#define SYSCALL_METADATA(sname, nb, ...)"]
        for stub in found:
            new = f"klpcc_new_{u.index}_{stub}"
            u.patched.append((stub, new, self.resolver.position(u.object, stub, u.path, "function")))
            lines.append(f"#define {stub} {new}")
        lines.append(f'#line {it.start_line} {quote(u.path)}')
        lines.append(self.rewrite(text))
        lines += [f"#undef {stub}" for stub in found]
        return "\n".join(lines)

    def replace(self, it: Item, text: str) -> str | None:
        if it.kind == "macro" and it.name == "CREATE_TRACE_POINTS":
            return ("/* klpcc: CREATE_TRACE_POINTS: the tracepoints are the running kernel's, the module "
                    "does not make them again */")
        return super().replace(it, text)

    def statement(self, it: Item, text: str) -> str | None:
        if _DROPPED.match(text):
            return f"/* klpcc: {one_line(text)[:60]} is the kernel's, not the module's */"
        return super().statement(it, text)
