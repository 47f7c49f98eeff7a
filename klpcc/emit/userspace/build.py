"""Userspace target: a bundle becomes a patch object (a shared object) for exact builds
of a program and of shared libraries (its objects, each matched by build-id), which the
runtime in the processes running them (``runtime/userspace``) installs with an atomic
replace.

1. each object's ELF: build-id, symbols (statics per file), DWARF inlining;
2. the functions to patch: the release's modified functions, and every function of
   the program into which one of them was inlined (it carries the old code);
3. :mod:`.source` writes the units; this module writes the descriptor unit
   (``klpcc_patch_descriptor``: functions with the program's offsets, references,
   states, callbacks, the manifest) and compiles everything with the program's own
   options (from its DWARF ``DW_AT_producer``) into a shared object.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ... import atomic, manifest, runtime, toolchain
from ...compdb import Command
from ...errors import KlpccError
from ...objects import default_cache
from ...report import clean
from .. import policy
from ..cgen import c_literal, c_string, callback_trampoline
from ..compiled import CompiledSet, compare_bundle, decide, not_redirected, stuck
from ..units import CALLBACK_KINDS, Unit, refuse_carried_code
from .program import Program, Targets, read_targets
from .source import HEADER, ProgramResolver, ProgramUnitWriter

MANIFEST_SECTION = ".klpcc.manifest"
_IMMEDIATE = re.compile(r"\bKLPCC_IMMEDIATE\s*\(\s*(\w+)\s*\)")
# options of the program's units that the patch object is compiled with too
_KEPT = re.compile(r"^-(O[0-3sgz]?|m\S+|std=\S+|f(?!PIE|pie|PIC|pic|patchable-function-entry)\S+|g\S*)$")


@dataclass(frozen=True)
class ProgramOptions:
    """``klpcc build --binary/--library``: the bundle, the program and the shared
    libraries it is for (its objects), the patch object to write; extra compiler options
    (``-I``, ``-D`` the objects were built with), the compiler, and ``(file, name, pos)``
    positions of statics defined twice."""

    bundle: str
    binary: str | None
    output: str
    cflags: str = ""
    cc: str = "cc"
    sympos: tuple[tuple[str, str, int], ...] = ()
    force: bool = False
    immediate: tuple[str, ...] = ()  # functions that may switch while threads run in them
    source_level: bool = False  # decide the function set from the source alone (no compiled comparison)
    libraries: tuple[str, ...] = ()  # shared libraries the patch changes


@dataclass(frozen=True)
class PatchObjectTarget:
    """One object the patch changes."""

    kind: str  # "program" or "library"
    path: str
    name: str  # the file's name, as status shows it
    build_id: str


@dataclass
class PatchFunction:
    name: str
    file: str
    offset: int
    size: int
    new: str
    why: str
    immediate: bool = False
    object: int = 0  # index in ProgramBuild.objects


@dataclass
class ProgramBuild:
    release: str
    output: Path
    objects: list[PatchObjectTarget]
    functions: list[PatchFunction] = field(default_factory=list)
    inlining: list[dict] = field(default_factory=list)  # functions added because of inlining
    refs: list[dict] = field(default_factory=list)
    nops: list[str] = field(default_factory=list)
    states: list[tuple[int, int]] = field(default_factory=list)
    callbacks: list[dict] = field(default_factory=list)
    copied: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    decided_by: str = "source"  # "objects" (the program's flags), "bundle" (compile --objects) or "source"
    compare: dict = field(default_factory=dict)  # units, compiled, cached, seconds

    @property
    def build_id(self) -> str:
        return self.objects[0].build_id

    def to_json(self) -> dict:
        return {
            "schema": "klpcc.patch-object/1",
            "release": self.release,
            "output": str(self.output),
            "binary_build_id": self.build_id,
            "objects": [{"kind": o.kind, "path": o.path, "name": o.name, "build_id": o.build_id}
                        for o in self.objects],
            "functions": [{"name": f.name, "file": f.file, "offset": f.offset, "size": f.size, "new": f.new,
                           "why": f.why, "immediate": f.immediate, "object": self.objects[f.object].name}
                          for f in self.functions],
            "added_by_inlining": self.inlining,
            "refs": self.refs,
            "nops": self.nops,
            "states": [{"id": i, "version": v} for i, v in self.states],
            "callbacks": self.callbacks,
            "copied": self.copied,
            "notes": self.notes,
            "function_set": {"decided_by": self.decided_by,
                             "notes": [n for n in self.notes if " the patch" in n], **self.compare},
        }

    def text(self) -> str:
        """What ``klpcc build --binary/--library`` prints (its notes go to standard error)."""
        what = ", ".join(f"{o.path} (build-id {o.build_id[:12]})" for o in self.objects)
        lines = [f"{self.output}: patch object for {what}, release {self.release}"]
        for f in self.functions:
            flag = ", immediate" if f.immediate else ""
            where = f"{self.objects[f.object].name}: " if len(self.objects) > 1 else ""
            lines.append(f"  patch  {f.name}  ({where}{f.file}; {f.why}{flag})")
        for r in self.refs:
            o = self.objects[r["object"]]
            whose = "the program's" if o.kind == "program" else f"{o.name}'s"
            lines.append(f"  uses {whose}  {r['name']}  ({r['file']})")
        for c in self.copied:
            lines.append(f"  copied  {c['what']}")
        for i, v in self.states:
            lines.append(f"  state  id {i} version {v}")
        for c in self.callbacks:
            lines.append(f"  callback  {c['kind']} = {c['callback']}  ({c['file']})")
        if self.nops:
            lines.append("  reverted by the runtime (nop): " + ", ".join(self.nops))
        return "\n".join(lines) + "\n"


def _file_flags(prog: Program, path: str) -> list[str]:
    """The options the program's unit for ``path`` was compiled with (DW_AT_producer)."""
    base = os.path.basename(path)
    producer = next((p for u, p in prog.producers.items() if os.path.basename(u) == base), None)
    if producer is None:
        return []
    return [t for t in producer.split() if _KEPT.match(t)]


def _compared(b: manifest.Bundle, targets: Targets, opts: ProgramOptions) -> CompiledSet | None:
    """Both sides of every unit compiled with its object's own options (its DWARF's
    ``DW_AT_producer``, plus ``--cflags``), where they can be."""
    if opts.source_level or b.manifest.objects is not None or not all(o.producers for o in targets.objects):
        return None
    extra = shlex.split(opts.cflags)
    include = runtime.userspace()

    def command(path: str, root: Path) -> Command:
        # klpcc.h first, as every unit of the patch has it: KLPCC_STATE and the like expand
        flags = (opts.cc, *_file_flags(targets.of(path), path), *extra, f"-I{include}", "-include",
                 str(include / HEADER))
        return Command(str(root), flags, str(root / path))

    return compare_bundle(b, command, cache=default_cache())


def _plan(b: manifest.Bundle, targets: Targets, opts: ProgramOptions, compiled: CompiledSet | None
          ) -> tuple[policy.Plan, list[str]]:
    """The release's plan: the compiled code's function set, with every function the
    object's DWARF says holds an inlined copy of a changed one; notes."""
    p = policy.plan(b.manifest)
    changed = [(path, name) for path, fns in p.functions.items() for name, ch in fns.items()
               if ch == "modified"]
    notes: list[str] = decide(p, compiled) if compiled is not None else []
    sympos = {(f, n): pos for f, n, pos in opts.sympos}
    for path, name in changed:  # what the source changed: the object's DWARF says where it was inlined
        prog = targets.of(path)
        for caller in sorted(prog.inlined_into(name)):
            units = prog.units.get(caller, set())
            home = next((s for s in b.source_paths if s.endswith(".c")
                         and any(os.path.basename(u) == os.path.basename(s) for u in units)), None)
            if home is None:
                where = ", ".join(sorted(units)) or "?"
                raise KlpccError(f"{name} is inlined into {caller} ({where}), whose source the bundle "
                                 "does not carry; compile the bundle with --objects", file=path)
            if p.functions.setdefault(home, {}).get(caller) is None:
                p.add(home, caller, f"inlined {name} (the program's DWARF)")
                notes.append(f"{caller} ({home}) joins the patch: the program's DWARF says it inlined "
                             f"{name}")
            elif p.functions[home][caller] == "modified" and name not in p.why.get((home, caller), ""):
                p.why[(home, caller)] = p.why.get((home, caller), "modified") + f"; inlined {name}"

    def present(path: str, name: str) -> bool:
        return targets.of(path).find(path, name, sympos.get((path, name), 0)) is not None

    notes += not_redirected(p, present, compiled)
    if compiled is None:  # from the source alone: the program's DWARF is the evidence
        for path, name in changed:
            into = sorted(targets.of(path).inlined_into(name))
            if p.functions[path].get(name) == "modified" and not present(path, name) and into:
                p.functions[path][name] = "added"
                notes.append(f"{name} ({path}) has no symbol of its own in the program; its DWARF says it "
                             f"was inlined into {', '.join(into)}, which are patched")
    for o in targets.objects:
        if not o.producers:
            notes.append(f"{o.path} has no DWARF (-g): the function set is the source's, and functions a "
                         "changed function was inlined into cannot be found; build it with klpcc config "
                         "--cflags")
    return p, notes


def descriptor_unit(build: ProgramBuild, units: list[Unit], manifest: str) -> str:
    out = ["/* generated by klpcc build: the patch object's descriptor */", f'#include "{HEADER}"', ""]
    for f in build.functions:
        out.append(f"extern void {f.new}(void);")
    for r in build.refs:
        out.append(f"extern void *{r['slot']};")
    for u in units:
        for kind in u.callbacks:
            ret = "int" if kind == "pre_patch" else "void"
            out.append(f"extern {ret} (*const klpcc_cb_{kind}_{u.index})(void);")
    out += ["", "static const struct klpcc_object klpcc_objects[] = {"]
    for o in build.objects:
        out.append(f'\t{{ "{c_string(o.name)}", "{o.build_id}", {int(o.kind == "library")} }},')
    out += ["};", "", "static const struct klpcc_func klpcc_funcs[] = {"]
    for f in build.functions:
        out.append(f'\t{{ "{f.name}", {f.offset:#x}UL, {f.size}UL, (void *){f.new}, {int(f.immediate)}, '
                   f'"{c_string(f.why)}", {f.object} }},')
    out += ["\t{ 0 }", "};", "", "static const struct klpcc_ref klpcc_refs[] = {"]
    for r in build.refs:
        out.append(f'\t{{ "{r["name"]}", {r["offset"]:#x}UL, &{r["slot"]}, {r["object"]} }},')
    out += ["\t{ 0 }", "};", "", "static const struct klpcc_state_decl klpcc_states[] = {"]
    out += [f"\t{{ {i}UL, {v} }}," for i, v in build.states]
    out += ["\t{ 0 }", "};"]
    hooks = {}
    for kind in CALLBACK_KINDS:
        having = [u for u in units if kind in u.callbacks]
        if not having:
            hooks[kind] = "0"
            continue
        fn = f"klpcc_{kind}"
        hooks[kind] = fn
        out += callback_trampoline(kind, fn, [u.index for u in having], "void", "")
    out += ["", '__attribute__((visibility("default")))',
            "const struct klpcc_patch klpcc_patch_descriptor = {",
            "\t.abi = KLPCC_ABI,", f'\t.name = "{c_string(build.release)}",',
            f"\t.objects = klpcc_objects, .nobjects = {len(build.objects)},",
            f"\t.funcs = klpcc_funcs, .nfuncs = {len(build.functions)},",
            f"\t.refs = klpcc_refs, .nrefs = {len(build.refs)},",
            f"\t.states = klpcc_states, .nstates = {len(build.states)},",
            *[f"\t.{k} = {v}," for k, v in hooks.items()],
            "\t.manifest = " + c_literal(manifest) + ",", "};", "",
            "/* the same manifest where `klpcc install` reads it, without loading the object */",
            f'__attribute__((used, section("{MANIFEST_SECTION}")))',
            "static const char klpcc_manifest_note[] = " + c_literal(manifest) + ";", ""]
    return "\n".join(out)


def build_program(opts: ProgramOptions) -> ProgramBuild:
    """Write the patch object of a bundle for the program ``opts.binary`` and the shared
    libraries ``opts.libraries``."""
    b = manifest.read(opts.bundle)
    m = b.manifest
    states = policy.check(m)
    atomic.check_file_target(opts.output, opts.force)
    atomic.Inputs.of(files=[opts.binary, *opts.libraries], trees=[opts.bundle]).check_file(opts.output)
    if not opts.binary and not opts.libraries:
        raise KlpccError("say which objects the patch changes: --binary PROG, --library LIB.so, or both")
    targets = read_targets(opts.binary, opts.libraries)
    sympos = {(f, n): p for f, n, p in opts.sympos}
    compiled = _compared(b, targets, opts)
    p, notes = _plan(b, targets, opts, compiled)
    in_source = {n for path in p.functions
                 for n in _IMMEDIATE.findall(b.source(path).decode("utf-8", "replace"))}
    stuck(p, compiled, in_source | set(m.immediate), opts.immediate,
          "Build it with --immediate {name} to switch it while threads run in it (their running frames keep "
          "the old code, new calls get the new)")
    decided = "objects" if compiled else "bundle" if m.objects is not None else "source"
    objects = [PatchObjectTarget(kind, o.path, os.path.basename(o.path), o.build_id)
               for kind, o in zip(targets.kinds, targets.objects, strict=True)]
    build = ProgramBuild(m.release, atomic.absolute(opts.output), objects, nops=list(m.nops),
                         states=states, notes=notes, decided_by=decided)
    if compiled is not None:
        build.compare = compiled.summary()
        build.notes += [f"note: {n}" for n in compiled.notes]
    units: list[Unit] = []
    refs: dict[str, dict] = {}
    sources = set(b.source_paths)
    for i, path in enumerate(sorted(p.functions), 1):
        home = targets.index(path)
        prog = targets.objects[home]
        unit = Unit(i, path, "program" if targets.kinds[home] == "program" else os.path.basename(prog.path))
        seen = compiled.unit(path) if compiled else None
        writer = ProgramUnitWriter(unit, b.source(path), p.functions[path], p.added.get(path, set()),
                                   ProgramResolver(prog, sympos, path), seen)
        refuse_carried_code(path, b.source(path), lambda q: b.source(q) if q in sources else None, seen,
                            compiled.symbols.get(path) if compiled else None)
        writer.write()
        units.append(unit)
        immediate = set(_IMMEDIATE.findall(unit.text)) | set(opts.immediate) | set(m.immediate)
        for old, new, _ in unit.patched:
            sym = prog.find(path, old, sympos.get((path, old), 0))
            if sym is None or not sym.function:
                raise KlpccError(f"{prog.path} has no function {old}", file=path)
            reason = p.why.get((path, old), "modified")
            build.functions.append(PatchFunction(old, path, sym.offset, sym.size, new, reason,
                                                 old in immediate, home))
            if "inlined " in reason or "may have inlined" in reason:
                build.inlining.append({"function": old, "file": path, "why": reason})
        for slot, sym in writer.refs.items():
            refs[slot] = {"name": sym.name, "offset": sym.offset, "slot": slot, "file": path, "object": home}
        build.copied += [{"file": path, "what": c} for c in unit.copied]
        build.callbacks += [{"file": path, "kind": k, "callback": fn} for k, fn in unit.callbacks.items()]
    policy.check_units(m, units)
    build.refs = sorted(refs.values(), key=lambda r: r["slot"])
    embedded = {**m.to_json(), "patch_object": build.to_json()}
    out = atomic.absolute(opts.output)
    scratch = out.parent if out.parent.exists() else None
    with tempfile.TemporaryDirectory(prefix=".klpcc-build-", dir=scratch) as t:
        data = _compile_object(Path(t), b, units, build, targets, opts, embedded, p.added)
    if not out.parent.is_dir():
        raise KlpccError(f"cannot write {out}: its directory does not exist")
    atomic.write_atomic(out, data, 0o755)
    return build


def _compile_object(tmp: Path, b: manifest.Bundle, units: list[Unit], build: ProgramBuild, targets: Targets,
                    opts: ProgramOptions, embedded: dict, added: dict[str, set[str]]) -> bytes:
    """The patch object's bytes, compiled and linked in ``tmp``."""
    include = runtime.userspace()
    for path in b.source_paths:
        dest = atomic.inside(tmp / "src", path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(b.source(path))
    objects = []
    paths = set(b.source_paths) | {"klpcc_patch.c"}
    extra = shlex.split(opts.cflags)

    def cc(args: list[str], what: str, cwd: Path | None = None) -> None:
        toolchain.run([opts.cc, *args], subject="the patch", action=what, paths=paths, cwd=cwd)

    for u in units:
        src = atomic.inside(tmp / "src", u.path)
        src.write_text(u.text, encoding="utf-8", errors="surrogateescape")
        obj = tmp / f"unit{u.index}.o"
        cc([*_file_flags(targets.of(u.path), u.path), *extra, "-fPIC", "-fno-semantic-interposition",
            "-Wno-unused-function", "-Wno-unused-variable", f"-I{include}", f"-I{src.parent}", "-c", u.path,
            "-o", str(obj)], "compiling the patch", cwd=tmp / "src")
        objects.append(str(obj))
    (tmp / "klpcc_patch.c").write_text(descriptor_unit(build, units, json.dumps(clean(embedded))))
    cc(["-fPIC", f"-I{include}", "-c", str(tmp / "klpcc_patch.c"), "-o", str(tmp / "desc.o")],
       "compiling the descriptor")
    so = tmp / "patch.so"
    cc(["-shared", "-Wl,-Bsymbolic-functions", "-Wl,--build-id", "-o", str(so), str(tmp / "desc.o"),
        *objects], "linking the patch object")
    _check_object(so, targets, units, added)
    return so.read_bytes()


def _check_object(so: Path, targets: Targets, units: list[Unit], added: dict[str, set[str]]) -> None:
    """The patch object must not carry its own copy of its objects' data it should share."""
    from elftools.elf.constants import SH_FLAGS
    from elftools.elf.elffile import ELFFile

    with open(so, "rb") as fh:
        elf = ELFFile(fh)
        dynsym = elf.get_section_by_name(".dynsym")
        for sym in dynsym.iter_symbols() if dynsym else ():
            if sym["st_shndx"] != "SHN_UNDEF" or not sym.name:
                continue
            mine = next((u.path for u in units
                         if (os.path.basename(u.path), sym.name) in targets.of(u.path).locals), None)
            # a library's exported symbol is the dynamic linker's to resolve; a program
            # exports nothing
            owner = targets.of(mine) if mine else next(
                (o for o, kind in zip(targets.objects, targets.kinds, strict=True)
                 if kind == "program" and sym.name in o.globals), None)
            if owner is not None:
                raise KlpccError(f"the patch refers to {os.path.basename(owner.path)}'s {sym.name} directly "
                                 "(through a macro?), which a patch object cannot link against; use it in "
                                 "the function's code", file=mine)
        symtab = elf.get_section_by_name(".symtab")
        for sym in symtab.iter_symbols() if symtab else ():
            if sym["st_info"]["type"] != "STT_OBJECT" or not isinstance(sym["st_shndx"], int):
                continue
            if not elf.get_section(sym["st_shndx"])["sh_flags"] & SH_FLAGS.SHF_WRITE:
                continue  # read-only data (a __func__ string, a table): a copy is the same
            for u in units:
                owner = targets.of(u.path)
                own = owner.locals.get((os.path.basename(u.path), sym.name))
                if own and not own[0].function and sym.name not in added.get(u.path, set()):
                    raise KlpccError(f"the patch object has its own copy of {os.path.basename(owner.path)}'s "
                                     f"static {sym.name} (used through a macro?); the patched code must use "
                                     "the original", file=u.path)
