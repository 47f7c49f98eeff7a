"""Kernel target: a bundle becomes a cumulative livepatch module (``replace = true``).

1. :mod:`.source` writes one unit per changed C file, from the release's file;
2. this module writes the unit holding the ``klp_patch`` (functions per object,
   callbacks, states) and the ``Kbuild`` file, and builds against a kernel build
   directory with the kernel's own build system;
3. :mod:`.elf` turns references the module loader cannot resolve into livepatch
   relocations.

Everything is written in a temporary directory that replaces OUTDIR only when the
whole build succeeded.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from ... import atomic, manifest, runtime, toolchain
from ...c.declarations import PreprocessedUnit
from ...elfinfo import series_id
from ...errors import KlpccError
from ...objects import default_cache
from ...report import dump_json
from .. import policy
from ..cgen import c_string, callback_trampoline
from ..compiled import (
    CompiledSet,
    compare_bundle,
    decide,
    not_redirected,
    preprocess_bundle,
    stuck,
    through_callers,
)
from ..units import CALLBACK_KINDS, Unit, refuse_carried_code
from . import elf as klpelf
from .kbuild import template as kbuild_template
from .kbuild import unit_command
from .layout import Layout
from .source import HEADER, KernelUnitWriter, Resolver, syscall_owner, syscall_stubs
from .symbols import VMLINUX, Kallsyms, exported, namespaces, read_kallsyms

_NAME_MAX = 55  # MODULE_NAME_LEN - 1
# directories 1 to 3 levels below a tree's root: code or a header of the kernel's
# include/ that names a source file as "../x" (from include/), "../../x" or "../../../x"
# (trace/events/dlm.h) finds it from one of these
UP_DIRS = (".klpcc-up", ".klpcc-up/1", ".klpcc-up/1/2")


@dataclass(frozen=True)
class KernelOptions:
    """``klpcc build --kernel``: the bundle, the kernel build directory (not needed with
    ``source_only``), which source paths belong to which module (default: vmlinux),
    the target's ``/proc/kallsyms`` (symbol positions, inlined functions) and explicit
    ``(file, name, pos)`` symbol positions."""

    bundle: str
    outdir: str
    kdir: str | None = None
    objects: tuple[tuple[str, str], ...] = ()
    replace: bool = True
    source_only: bool = False
    name: str | None = None
    kallsyms: str | None = None
    sympos: tuple[tuple[str, str, int], ...] = ()
    force: bool = False
    jobs: int | None = None
    source_level: bool = False  # decide the function set from the source alone (no compiled comparison)


@dataclass
class KernelBuild:
    name: str
    release: str
    outdir: Path
    module: Path | None  # None with source_only
    units: list[Unit]
    nops: list[str]
    states: list[tuple[int, int]]
    replace: bool = True
    symbols: dict[str, str] = field(default_factory=dict)  # undefined name -> livepatch symbol
    klp_sections: list[tuple[str, int]] = field(default_factory=list)
    build_seconds: float = 0.0
    decided_by: str = "source"  # "objects" (the kernel's flags), "bundle" (compile --objects) or "source"
    symbols_from: str = "unknown"  # "kallsyms", "predicted" (the compiled base units) or "unknown"
    notes: list[str] = field(default_factory=list)  # what joined and left the patch, and why
    compare: dict = field(default_factory=dict)  # units, compiled, cached, seconds

    def to_json(self) -> dict:
        return {
            "schema": "klpcc.kernel-build/1",
            "name": self.name,
            "release": self.release,
            "module": None if self.module is None else str(self.module),
            "replace": self.replace,
            "objects": sorted({u.object for u in self.units}),
            "functions": [{"object": u.object, "file": u.path, "name": old, "new": new, "sympos": pos}
                          for u in self.units for old, new, pos in u.patched],
            "nops": self.nops,
            "states": [{"id": i, "version": v} for i, v in self.states],
            "callbacks": [{"object": u.object, "file": u.path, "kind": k, "callback": fn}
                          for u in self.units for k, fn in u.callbacks.items()],
            "livepatch_symbols": self.symbols,
            "livepatch_relocations": [{"section": s, "count": n} for s, n in self.klp_sections],
            "copied": [{"file": u.path, "what": c} for u in self.units for c in u.copied],
            "left_out": [{"file": u.path, "what": c} for u in self.units for c in u.left_out],
            "build_seconds": round(self.build_seconds, 3),
            "function_set": {"decided_by": self.decided_by, "symbols_from": self.symbols_from,
                             "notes": self.notes, **self.compare},
        }

    def text(self) -> str:
        """What ``klpcc build --kernel`` prints."""
        what = self.module if self.module is not None else f"{self.outdir} (source only)"
        lines = [f"{what}: livepatch {self.name}, release {self.release}, "
                 f"{'replace' if self.replace else 'no replace'}"]
        for u in self.units:
            for old, _, pos in u.patched:
                lines.append(f"  patch  {u.object}:{old}" + (f",{pos}" if pos else "") + f"  ({u.path})")
            for kind, fn in u.callbacks.items():
                lines.append(f"  callback  {kind} = {fn}  ({u.path})")
            for c in u.copied:
                lines.append(f"  copied  {c}")
        for i, v in self.states:
            lines.append(f"  state  id {i} version {v}")
        if self.nops:
            lines.append("  the kernel reverts (nop): " + ", ".join(self.nops))
        for old, new in sorted(self.symbols.items()):
            note = "" if old.startswith("__klpcc_sym_") else f"  (for {old})"
            lines.append(f"  livepatch symbol  {new}{note}")
        for n in self.notes:
            lines.append(f"  {n}")
        lines.append(f"  function set from {self.decided_by}, statics from {self.symbols_from}"
                     + (f" ({self.compare['units']} unit(s) compared in {self.compare['seconds']:.1f} s, "
                        f"{self.compare['cached']} object(s) from the cache)" if self.compare else ""))
        if self.module is not None:
            lines.append(f"  built in {self.build_seconds:.1f} s")
        return "\n".join(lines) + "\n"


_KBUILD_NAME = re.compile(r"[A-Za-z0-9_./+,=@%~-]+")


def _module_name(opts: KernelOptions, release: str) -> str:
    name = opts.name or "klpcc_" + release
    name = re.sub(r"[^A-Za-z0-9_]", "_", name)
    if opts.name and name != opts.name:
        raise KlpccError(f"module name {opts.name!r}: use letters, digits and underscores")
    return name[:_NAME_MAX]


def _command(kdir: Path, args: list[str], layout: Layout):
    """The compile command of a unit under a root, as Kbuild builds it for its object."""
    header = runtime.kernel() / HEADER  # as every unit of the module has it: KLPCC_STATE and the like

    def command(path: str, root: Path):
        obj = layout.object(path)
        cmd = unit_command(args, kdir, path, root, None if obj == VMLINUX else obj)
        added, removed = layout.flags(path)
        extra = [f"-I{root / a[2:]}" if a.startswith("-I") else a for a in added]
        for d in UP_DIRS:
            (root / d).mkdir(parents=True, exist_ok=True)
            extra.append(f"-I{root / d}")
        kept = tuple(a for a in cmd.args if a not in removed)
        return replace(cmd, args=(*kept, *extra, "-DKLPCC_UNIT=1", "-include", str(header)))

    return command


def _compared(b: manifest.Bundle, opts: KernelOptions, kdir: Path | None, args: list[str] | None,
              layout: Layout) -> tuple[CompiledSet | None, dict[str, PreprocessedUnit]]:
    """Both sides of every unit compiled with the kernel's own flags, where they can be;
    with ``--source-level``, the base units preprocessed only (what the unit writer
    reads of the compiled code)."""
    if b.manifest.objects is not None or kdir is None or args is None:
        return None, {}
    if opts.source_level:
        command = _command(kdir, args, layout)
        seen, notes = preprocess_bundle(b, command, cache=default_cache(), jobs=opts.jobs)
        if notes:
            raise KlpccError(f"the unit does not compile with the kernel's flags: {notes[0]}")
        return None, seen
    compiled = compare_bundle(b, _command(kdir, args, layout), cache=default_cache(), jobs=opts.jobs)
    for note in compiled.notes:  # a release unit that does not compile: the patch's own error, said first
        m = re.match(r"(\S+\.c): (?:does not compile|cannot preprocess): (.*)", note)
        if m is not None:
            where = re.sub(rf"\S*/r\d+/{re.escape(m[1])}", m[1], m[2])
            where = re.sub(r"^(\S+?:\d+):\d+: (?:fatal )?error: ", r"\1: ", where)
            raise KlpccError(f"the release does not compile with the kernel's flags: {where}")
    return compiled, {}


def _static_inline(b: manifest.Bundle) -> Callable[[str], set[str]]:
    """The ``static inline`` functions of a release file (the kernel compiles them
    ``notrace``: a copy kept out of line has no ftrace hook)."""
    from ...c import CSource, split_lines

    cache: dict[str, set[str]] = {}

    def of(path: str) -> set[str]:
        if path not in cache:
            data = b.source(path)
            found = set()
            for it in CSource(path, split_lines(data)).items():
                if it.kind == "function" and it.static:
                    head = data[it.start_byte:it.end_byte].split(b"{", 1)[0]
                    if re.search(rb"\b(inline|__inline__|__inline|__always_inline)\b", head):
                        found.add(it.name)
            cache[path] = found
        return cache[path]

    return of


def _units(b: manifest.Bundle, layout: Layout, resolver: Resolver, compiled: CompiledSet | None,
           preprocessed: dict[str, PreprocessedUnit], result: KernelBuild) -> list[Unit]:
    p = policy.plan(b.manifest)
    if compiled is not None:
        result.notes += decide(p, compiled, owner=syscall_owner)

    def present(path: str, name: str) -> bool | None:
        r = resolver.for_unit(compiled.symbols.get(path) if compiled else None)
        obj = layout.object(path)
        if syscall_owner(f"__se_{name}") is not None:  # a syscall: present where one of its stubs is
            found = [r.present(obj, s) for s in syscall_stubs(name)]
            return True if any(found) else None if None in found else False
        return r.present(obj, name)

    result.notes += not_redirected(p, present, compiled)
    if compiled is not None:
        inline = _static_inline(b)
        result.notes += through_callers(p, compiled, lambda path, name: name in inline(path))
    stuck(p, compiled, (), (), "The kernel's livepatch has no immediate functions: change what {name} calls "
          "instead, or stop the thread that runs it")
    units: list[Unit] = []
    changed = {(f.file, f.name) for f in b.manifest.functions}  # what the source changed
    for i, path in enumerate(sorted(p.functions), 1):
        unit = Unit(i, path, layout.object(path))
        unit_resolver = resolver.for_unit(compiled.symbols.get(path) if compiled else None)
        seen = compiled.unit(path) if compiled else preprocessed.get(path)
        writer = KernelUnitWriter(unit, b.source(path), p.functions[path], p.added.get(path, set()),
                                  unit_resolver, seen,
                                  frozenset(n for n in p.functions[path] if (path, n) not in changed))
        modified = sorted(n for n, c in p.functions[path].items() if c == "modified")
        if modified and (why := layout.untraced(path)) is not None:
            raise KlpccError(f"cannot patch {modified[0]}: {why}, so a live patch cannot redirect the "
                             "functions of this file", file=path)
        refuse_carried_code(path, b.source(path), layout.read, seen,
                            compiled.symbols.get(path) if compiled else None)
        writer.write()
        if compiled is not None:
            _check_traced(unit, compiled)
        units.append(unit)
    policy.check_units(b.manifest, units, p)
    return units


def _check_traced(unit: Unit, compiled: CompiledSet) -> None:
    """Refuse a function the kernel compiled without ftrace's entry hook (a ``notrace``
    under another name: ``__meminit`` and the other section macros imply it), as its
    compiled base unit shows: the kernel could not redirect it."""
    objects = compiled.report.objects.get(unit.path)  # type: ignore[attr-defined]
    if objects is None:
        return
    base = objects[0].code
    for old, new, _ in unit.patched:
        code = base.get(old)
        if code is None or code.kind != "function" or any(r.startswith("__fentry__") for r in code.refs[:2]):
            continue
        at = unit.text.find(f"{new}(")
        lines = re.findall(r"^#line (\d+) ", unit.text[:at], re.M) if at >= 0 else []
        where = f" (line {lines[-1]})" if lines else ""
        raise KlpccError(f"cannot patch {old}{where}: the kernel compiled it without ftrace's entry hook "
                         "(__fentry__; notrace, or a section macro such as __meminit that implies it), so a "
                         "live patch cannot redirect it", file=unit.path)


def patch_unit(name: str, release: str, units: list[Unit], states: list[tuple[int, int]],
               replace: bool, imports: tuple[str, ...] = (), index: int = 0, series: str = "") -> str:
    """The C unit holding the module's ``klp_patch``."""
    objects: dict[str, list[Unit]] = {}
    for u in units:
        objects.setdefault(u.object, []).append(u)
    if not objects:  # a release of states alone (or of nops): vmlinux, with no function of its own
        objects[VMLINUX] = []
    out = [f"/* generated by klpcc build: the cumulative live patch of release {release} */",
           "#include <linux/module.h>", "#include <linux/kernel.h>", "#include <linux/livepatch.h>", ""]
    for u in units:
        for _, new, _ in u.patched:
            out.append(f"extern void {new}(void);")
        for kind in u.callbacks:
            ret = "int" if kind == "pre_patch" else "void"
            out.append(f"extern {ret} (*const klpcc_cb_{kind}_{u.index})(struct klp_object *);")
    obj_entries = []
    for n, (obj, us) in enumerate(sorted(objects.items(), key=lambda kv: kv[0] != VMLINUX)):
        out += ["", f"static struct klp_func klpcc_funcs_{n}[] = {{"]
        for u in us:
            for old, new, pos in u.patched:
                out.append(f'\t{{ .old_name = "{old}", .new_func = {new}, .old_sympos = {pos} }},')
        out += ["\t{ }", "};"]
        cbs = []
        for kind in CALLBACK_KINDS:
            having = [u for u in us if kind in u.callbacks]
            if not having:
                continue
            fn = f"klpcc_{kind}_{n}"
            out += callback_trampoline(kind, fn, [u.index for u in having], "struct klp_object *obj", "obj")
            cbs.append(f".{kind} = {fn}")
        label = "NULL" if obj == VMLINUX else f'"{obj}"'
        callbacks = f", .callbacks = {{ {', '.join(cbs)} }}" if cbs else ""
        obj_entries.append(f"\t{{ .name = {label}, .funcs = klpcc_funcs_{n}{callbacks} }},")
    out += ["", "static struct klp_object klpcc_objs[] = {", *obj_entries, "\t{ }", "};"]
    if states:
        out += ["", "static struct klp_state klpcc_states[] = {"]
        out += [f"\t{{ .id = {i}, .version = {v} }}," for i, v in states]
        out += ["\t{ }", "};"]
    out += ["", "struct klp_patch klpcc_patch = {", "\t.mod = THIS_MODULE,", "\t.objs = klpcc_objs,"]
    if states:
        out.append("\t.states = klpcc_states,")
    out += [f"\t.replace = {'true' if replace else 'false'},", "};", "",
            "static int __init klpcc_init(void)", "{", "\treturn klp_enable_patch(&klpcc_patch);", "}", "",
            "static void __exit klpcc_exit(void)", "{", "}", "",
            "module_init(klpcc_init);", "module_exit(klpcc_exit);", 'MODULE_LICENSE("GPL");',
            *(f"MODULE_IMPORT_NS({ns});" for ns in imports),
            'MODULE_INFO(livepatch, "Y");',
            f'MODULE_DESCRIPTION("klpcc cumulative live patch, release {c_string(release)}");',
            *([f'MODULE_INFO(klpcc_release, "{c_string(release)}");',
               f'MODULE_INFO(klpcc_release_index, "{index}");',
               f'MODULE_INFO(klpcc_series, "{series}");'] if index else []), ""]
    return "\n".join(out)


def kbuild(name: str, units: list[Unit], layout: Layout | None = None) -> str:
    objs = " ".join(["klpcc_patch.o"] + [f"src/{u.path[:-2]}.o" for u in units])
    out = (f"# generated by klpcc build\nobj-m := {name}.o\n{name}-y := {objs}\n"
           # one section per function: livepatch relocations are kept per function
           "ccflags-y += -I$(src) -ffunction-sections -fdata-sections\n"
           # kernel headers that include source files by a relative path from the
           # headers' tree (trace/events/dlm.h: "../../../fs/dlm/dlm_internal.h") find them in src/
           f"ccflags-y += {' '.join(f'-I$(src)/src/{d}' for d in UP_DIRS)}\n")
    for u in units:  # what the unit's own makefiles add and remove (-Werror aside: the unit is generated)
        added, removed = layout.flags(u.path) if layout is not None else ([], [])
        added = [f"-I$(src)/src/{a[2:]}" if a.startswith("-I") else a for a in added if a != "-Werror"]
        if added:
            out += f"CFLAGS_src/{u.path[:-2]}.o := {' '.join(added)}\n"
        removed = [a for a in removed if a not in added]  # CFLAGS_REMOVE_ would take them out again
        if removed:
            out += f"CFLAGS_REMOVE_src/{u.path[:-2]}.o := {' '.join(removed)}\n"
    return out


def _make(kdir: Path, outdir: Path, jobs: int | None, paths: set[str]) -> str:
    if shutil.which("make") is None:
        raise KlpccError("make is not installed (the kernel's build system needs it)")
    cmd = ["make", "-C", str(kdir), f"M={outdir}", f"-j{jobs or os.cpu_count() or 1}", "modules",
           "KBUILD_MODPOST_WARN=1"]
    return toolchain.run(cmd, subject="the module", action=f"building the module against {kdir}", paths=paths)


def build_kernel(opts: KernelOptions) -> KernelBuild:
    """Write (and unless ``source_only`` build) the livepatch module of a bundle."""
    b = manifest.read(opts.bundle)
    m = b.manifest
    name = _module_name(opts, m.release)
    states = policy.check(m)
    kdir = None
    if not opts.source_only and not opts.kdir:
        raise KlpccError("--kernel KDIR is needed to build the module (or use --source-only)")
    if opts.kdir:
        flags_dir = Path(opts.kdir)
        if not (flags_dir / "Makefile").is_file():
            raise KlpccError(f"{flags_dir} is not a kernel build directory (no Makefile)")
        kdir = None if opts.source_only else flags_dir
    atomic.check_target(opts.outdir, opts.force, marks=(HEADER,))
    atomic.Inputs.of(files=[opts.kallsyms], trees=[opts.bundle, opts.kdir]).check_dir(opts.outdir)
    syms: Kallsyms | None = read_kallsyms(opts.kallsyms) if opts.kallsyms else None
    resolver = Resolver(syms, {(f, n): p for f, n, p in opts.sympos})
    exports = exported(kdir) if kdir is not None else set()
    result = KernelBuild(name, m.release, atomic.absolute(opts.outdir), None, [], list(m.nops), states,
                         opts.replace)
    sources = set(b.source_paths)
    flags_kdir = Path(opts.kdir) if opts.kdir else None
    compile_units = flags_kdir is not None and m.objects is None
    args = kbuild_template(flags_kdir, opts.jobs) if compile_units and flags_kdir is not None else None
    layout = Layout.of(lambda p: b.source(p) if p in sources else None, flags_kdir, tuple(opts.objects), args)
    compiled, preprocessed = _compared(b, opts, flags_kdir, args, layout)
    result.decided_by = "objects" if compiled else "bundle" if m.objects is not None else "source"
    result.symbols_from = "kallsyms" if syms else "predicted" if compiled else "unknown"
    if compiled is not None:
        result.compare = compiled.summary()
        result.notes += [f"note: {n}" for n in compiled.notes]
    units = _units(b, layout, resolver, compiled, preprocessed, result)
    for u in units:
        if not _KBUILD_NAME.fullmatch(u.path):
            raise KlpccError("Kbuild cannot build a file of this name (make splits names at blanks and "
                             "reads quotes, $, : and # itself): the module needs its units named plainly",
                             file=u.path)
    result.units = units
    with atomic.staged(opts.outdir) as tmp:
        shutil.copy(runtime.kernel() / HEADER, tmp / HEADER)
        for d in UP_DIRS:
            (tmp / "src" / d).mkdir(parents=True, exist_ok=True)
        (tmp / "Kbuild").write_text(kbuild(name, units, layout))
        # the symbol namespaces of the exports the units name (EXPORT_SYMBOL_NS): imported
        ns = namespaces(flags_kdir) if flags_kdir is not None else {}
        imports = tuple(sorted({ns[w] for u in units for w in set(re.findall(r"\w+", u.text)) if w in ns}))
        (tmp / "klpcc_patch.c").write_text(patch_unit(name, m.release, units, states, opts.replace, imports,
                                                                 m.release_index, series_id(m.releases)))
        unit_paths = {u.path for u in units}
        for path in b.source_paths:  # headers, and C files a unit includes
            if path not in unit_paths:
                dest = atomic.inside(tmp / "src", path)
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(b.source(path))
        for u in units:
            dest = atomic.inside(tmp / "src", u.path)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(u.text, encoding="utf-8", errors="surrogateescape")
        if kdir is not None:
            start = time.perf_counter()
            _make(kdir, tmp, opts.jobs, set(b.source_paths) | {"klpcc_patch.c"})
            ko = tmp / f"{name}.ko"
            data, conv = klpelf.convert(ko.read_bytes(), _symbol_resolver(units, exports, resolver, syms),
                                        early_vmlinux=_version(kdir) >= (5, 8))
            ko.write_bytes(data)
            result.build_seconds = time.perf_counter() - start
            result.symbols, result.klp_sections = conv.symbols, conv.sections
            result.module = result.outdir / ko.name
        (tmp / "build.json").write_text(dump_json(result.to_json()) + "\n")
    return result


def _version(kdir: Path) -> tuple[int, int]:
    """The kernel's version (major, minor) as its build directory says it."""
    try:
        release = (kdir / "include" / "config" / "kernel.release").read_text()
    except OSError:
        release = ""
    m = re.match(r"(\d+)\.(\d+)", release.strip())
    if m is None:
        raise KlpccError(f"{kdir}: include/config/kernel.release does not say the kernel's version")
    return int(m.group(1)), int(m.group(2))


def _symbol_resolver(units: list[Unit], exports: set[str], resolver: Resolver, syms: Kallsyms | None):
    labels = {label: ref for u in units for label, ref in u.labels.items()}
    defined_objects = {u.object for u in units} - {VMLINUX}
    words = [(u.object, set(re.findall(r"\w+", u.text))) for u in units]  # read once, not per symbol

    def resolve(name: str) -> klpelf.Target | None:
        ref = labels.get(name)
        if ref is not None:
            pos = resolver.position(ref.object, ref.name, ref.path, ref.what)
            return klpelf.Target(ref.object, ref.name, pos)
        if name in exports:
            return None
        if name.startswith(("__klpcc_sym_", "klpcc_")):
            raise KlpccError(f"the module refers to {name}, which no unit defines")
        owners = sorted(syms.owner.get(name, ())) if syms is not None else []
        unseen = sorted(o for o in defined_objects if syms is not None and not syms.has_object(o))
        if syms is not None and not owners:
            if len(unseen) != 1:  # a module the kallsyms was taken without: its own symbol
                raise KlpccError(f"the patch uses {name}, which the kernel neither exports nor has in its "
                                 f"symbol table ({syms.source})")
            owners = unseen
        if not owners:
            # no kallsyms: a module's code links only against exports and its own module,
            # so a global it uses that nothing exports is its module's (vmlinux code: vmlinux's)
            users = {obj for obj, named in words if name in named}
            if not users:  # named through a header's macro: the module's when every unit is a module's
                users = {u.object for u in units} if VMLINUX not in {u.object for u in units} else {VMLINUX}
            owners = [VMLINUX] if not users or VMLINUX in users else sorted(users)
        obj = VMLINUX if VMLINUX in owners else next((o for o in owners if o in defined_objects), owners[0])
        return klpelf.Target(obj, name, resolver.position(obj, name, "(global)", "global"))

    return resolve
