"""The running program a userspace patch is built for, as its ELF file says: its
build-id, its functions and data (statics told apart by the file that defines them,
as the symbol table's ``STT_FILE`` entries group them, with symbol positions for
names defined twice), and which functions gcc inlined where (DWARF)."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import KlpccError


@dataclass(frozen=True)
class Symbol:
    name: str
    offset: int  # st_value
    size: int
    function: bool
    file: str | None  # the STT_FILE a local belongs to; None for globals


@dataclass
class Program:
    path: str
    build_id: str
    pie: bool
    locals: dict[tuple[str, str], list[Symbol]] = field(default_factory=dict)  # (file basename, name)
    globals: dict[str, Symbol] = field(default_factory=dict)
    inlined: dict[str, set[str]] = field(default_factory=dict)  # function -> functions inlined into it
    units: dict[str, set[str]] = field(default_factory=dict)  # function -> compile units defining it
    producers: dict[str, str] = field(default_factory=dict)  # compile unit -> DW_AT_producer

    def find(self, path: str, name: str, sympos: int = 0) -> Symbol | None:
        """The program's symbol for ``name`` as the source file ``path`` sees it: its
        own static, else a global."""
        found = self.locals.get((posixpath.basename(path), name), [])
        if len(found) > 1 and not sympos:
            raise KlpccError(f"the program defines the static {name} {len(found)} times in files named "
                             f"{posixpath.basename(path)}; say which with --sympos {path}:{name}=N",
                             file=path)
        if found:
            if sympos > len(found):
                raise KlpccError(f"--sympos {path}:{name}={sympos}: the program has {len(found)}", file=path)
            return found[sympos - 1 if sympos else 0]
        return self.globals.get(name)

    def inlined_into(self, name: str) -> set[str]:
        """The functions with an inlined copy of ``name``, directly or through another
        inlined function."""
        callers = {c for c, callees in self.inlined.items() if name in callees}
        out: set[str] = set()
        while callers:
            c = callers.pop()
            if c not in out:
                out.add(c)
                callers |= {d for d, callees in self.inlined.items() if c in callees} - out
        return out


@dataclass
class Targets:
    """The objects one patch object changes: the program and shared libraries, each
    matched by the runtime by its build-id (the kernel's ``klp_object``).  Each unit of
    the bundle belongs to the one object whose symbol table or DWARF has a file of its
    name."""

    objects: list[Program]
    kinds: list[str]  # "program" or "library"

    def index(self, path: str) -> int:
        base = posixpath.basename(path)
        found = [i for i, o in enumerate(self.objects)
                 if any(f == base for f, _ in o.locals) or any(posixpath.basename(u) == base
                                                              for u in o.producers)]
        if len(found) == 1:
            return found[0]
        if len(self.objects) == 1 and not self.objects[0].producers:
            return 0  # no DWARF to tell: the one object it is
        if found:
            names = ", ".join(self.objects[i].path for i in found)
            raise KlpccError(f"is compiled into more than one of the objects the patch is built for "
                             f"({names}): "
                             "build one patch object per object", file=path)
        names = ", ".join(o.path for o in self.objects)
        raise KlpccError(f"is in none of the objects the patch is built for ({names}): none has a file of "
                         "that name in its symbols or DWARF", file=path)

    def of(self, path: str) -> Program:
        return self.objects[self.index(path)]


def read_targets(binary: str | None, libraries: tuple[str, ...]) -> Targets:
    paths = ([binary] if binary else []) + list(libraries)
    objects = [read_program(p) for p in paths]
    seen: dict[str, str] = {}
    for o in objects:
        if o.build_id in seen:
            raise KlpccError(f"has the build-id of {seen[o.build_id]}: the same object given twice",
                             patch=o.path)
        seen[o.build_id] = o.path
    kinds = (["program"] if binary else []) + ["library"] * len(libraries)
    for o, kind in zip(objects, kinds, strict=True):
        if kind == "library" and not o.pie:
            raise KlpccError("is not a shared library (ELF type ET_EXEC)", patch=o.path)
    return Targets(objects, kinds)


def read_program(path: str | Path) -> Program:
    from elftools.common.exceptions import DWARFError, ELFError, ELFParseError
    from elftools.elf.elffile import ELFFile

    shown = str(path)
    try:
        fh = open(path, "rb")  # noqa: SIM115 (closed by the with below)
    except OSError as exc:
        raise KlpccError(f"cannot read the program: {exc.strerror}", patch=shown) from None
    with fh:
        try:
            elf = ELFFile(fh)
            prog = Program(shown, _build_id(elf, shown), elf["e_type"] == "ET_DYN")
            _symbols(elf, prog, shown)
            _dwarf(elf, prog)
        except (ELFError, ELFParseError, DWARFError, ValueError, KeyError, EOFError) as exc:
            raise KlpccError(f"is not an ELF program klpcc can read: {exc}", patch=shown) from None
    return prog


def _build_id(elf, shown: str) -> str:
    from ...elfinfo import build_id_of

    found = build_id_of(elf)
    if found:
        return found
    raise KlpccError("has no GNU build-id: link it with -Wl,--build-id (klpcc config --libs does)",
                     patch=shown)


def _symbols(elf, prog: Program, shown: str) -> None:
    symtab = elf.get_section_by_name(".symtab")
    if symtab is None:
        raise KlpccError("has no symbol table (stripped?): klpcc needs the program's symbols", patch=shown)
    current: str | None = None
    strings = symtab.stringtable.data()
    for sym in symtab.iter_symbols():
        kind, bind = sym["st_info"]["type"], sym["st_info"]["bind"]
        if kind == "STT_FILE":  # the file's name, byte for byte (pyelftools replaces bytes not UTF-8)
            at = sym["st_name"]
            current = strings[at:strings.find(b"\0", at)].decode("utf-8", "surrogateescape")
            continue
        if kind not in ("STT_FUNC", "STT_OBJECT") or sym["st_shndx"] == "SHN_UNDEF" or not sym.name:
            continue
        name = sym.name
        entry = Symbol(sym.name, sym["st_value"], sym["st_size"], kind == "STT_FUNC",
                       current if bind == "STB_LOCAL" else None)
        if bind == "STB_LOCAL":
            if current is None:
                continue
            prog.locals.setdefault((current, name), []).append(entry)
        else:
            prog.globals[sym.name] = entry


def _dwarf(elf, prog: Program) -> None:
    from ...objects.dwarf import dwarf_of

    if elf.get_section_by_name(".debug_info") is None:
        return  # no -g: inlined copies cannot be found (said in the build's notes)
    dwarf = dwarf_of(elf, prog.path)
    prog.inlined, prog.units, prog.producers = dwarf.inlined, dwarf.units, dwarf.producers
