"""Kernel target, step 3: turn the built module into a livepatch module as the kernel's
"Livepatch module ELF format" prescribes.

Every undefined symbol the module loader could not resolve (a static of the kernel,
named by the assembler label the source step gave it, or a global the kernel does not
export) becomes a livepatch symbol ``.klp.sym.<object>.<name>,<pos>`` with section
index ``SHN_LIVEPATCH``; the relocations that use one move from ``.rela<sec>`` to a
``.klp.rela.<object>.<sec>`` section flagged ``SHF_ALLOC | SHF_RELA_LIVEPATCH``, which
the livepatch core applies once the object is loaded.  The rest of the file is left
as it is: the symbol table keeps its order (relocations name symbols by index).

pyelftools reads the file; the rewrite is a plain ELF64 little-endian writer.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from dataclasses import dataclass

from elftools.elf.elffile import ELFFile

from ...errors import KlpccError

SHN_UNDEF = 0
SHN_LIVEPATCH = 0xFF20
SHF_ALLOC = 0x2
SHF_INFO_LINK = 0x40
SHF_RELA_LIVEPATCH = 0x00100000
SHT_RELA = 4
SHT_NOBITS = 8
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")
_RELA = struct.Struct("<QQq")
# sections whose relocations the livepatch core cannot apply later (their contents are
# read by the module loader or other subsystems when the module loads)
_EARLY = (".rela__jump_table", ".rela.static_call_sites", ".rela.altinstructions", ".rela__ex_table",
          ".rela.parainstructions", ".rela__bug_table", ".rela.smp_locks", ".rela.init.", ".rela.exit.",
          ".rela__mcount_loc", ".rela.orc_unwind_ip", ".rela__tracepoints", ".rela_ftrace_events")


@dataclass(frozen=True)
class Target:
    """Where an undefined symbol goes: the object that has it and its position."""

    object: str
    name: str
    pos: int

    @property
    def klp_name(self) -> str:
        return f".klp.sym.{self.object}.{self.name},{self.pos}"


@dataclass(frozen=True)
class Conversion:
    symbols: dict[str, str]  # undefined name in the built module -> livepatch symbol
    sections: list[tuple[str, int]]  # (.klp.rela section, relocations in it)


def undefined_symbols(data: bytes) -> list[str]:
    elf = ELFFile(io.BytesIO(data))
    symtab = elf.get_section_by_name(".symtab")
    if symtab is None:
        raise KlpccError("the built module has no symbol table")
    return [s.name for s in symtab.iter_symbols() if s.name and s["st_shndx"] == "SHN_UNDEF"]


def convert(data: bytes, resolve: Callable[[str], Target | None], *, early_vmlinux: bool = False
            ) -> tuple[bytes, Conversion]:
    """The module with livepatch symbols and relocation sections; ``resolve`` says what
    an undefined symbol becomes (None: the module loader resolves it, an export).
    ``early_vmlinux``: the kernel applies the livepatch relocations of vmlinux's symbols
    while it loads the module (Linux 5.8 and later), before it reads the sections the
    loader reads (jump labels, static calls, exception tables)."""
    elf = ELFFile(io.BytesIO(data))
    if elf.elfclass != 64 or not elf.little_endian or elf["e_type"] != "ET_REL":
        raise KlpccError("the built module is not a 64-bit little-endian relocatable ELF file")
    hdr = bytearray(data[:64])
    shoff, shentsize, shnum, shstrndx = (elf["e_shoff"], elf["e_shentsize"], elf["e_shnum"],
                                         elf["e_shstrndx"])
    heads = [list(_SHDR.unpack_from(data, shoff + i * shentsize)) for i in range(shnum)]
    bodies = [b"" if h[1] == SHT_NOBITS else data[h[4]:h[4] + h[5]] for h in heads]
    names = [elf.get_section(i).name for i in range(shnum)]
    symtab_index = names.index(".symtab")
    strtab_index = heads[symtab_index][6]

    symtab = bytearray(bodies[symtab_index])
    strtab = bytearray(bodies[strtab_index])
    klp: dict[int, Target] = {}
    renamed: dict[str, str] = {}
    for i in range(len(symtab) // _SYM.size):
        st_name, info, other, shndx, value, size = _SYM.unpack_from(symtab, i * _SYM.size)
        if shndx != SHN_UNDEF or st_name == 0:
            continue
        name = _cstr(bodies[strtab_index], st_name)
        target = resolve(name)
        if target is None:
            continue
        klp[i] = target
        new_name = target.klp_name
        renamed[name] = new_name
        at = len(strtab)
        strtab += new_name.encode() + b"\0"
        _SYM.pack_into(symtab, i * _SYM.size, at, info, other, SHN_LIVEPATCH, value, size)
    bodies[symtab_index] = bytes(symtab)
    bodies[strtab_index] = bytes(strtab)

    shstrtab = bytearray(bodies[shstrndx])
    added_heads: list[list[int]] = []
    added_bodies: list[bytes] = []
    made: list[tuple[str, int]] = []
    for idx, (h, name) in enumerate(zip(heads, names)):
        if h[1] != SHT_RELA or h[6] != symtab_index:
            continue
        keep = bytearray()
        moved: dict[str, bytearray] = {}  # object -> its relocations
        for off in range(0, len(bodies[idx]), _RELA.size):
            entry = bodies[idx][off:off + _RELA.size]
            sym = _RELA.unpack(entry)[1] >> 32
            if sym in klp:
                moved.setdefault(klp[sym].object, bytearray()).extend(entry)
            else:
                keep += entry
        if not moved:
            continue
        target_name = names[h[7]]
        late = {o: rel for o, rel in moved.items() if not (early_vmlinux and o == "vmlinux")}
        if late and name.startswith(_EARLY) or not heads[h[7]][2] & SHF_ALLOC:
            used = sorted({klp[_RELA.unpack_from(rel, o)[1] >> 32].name
                           for rel in (late or moved).values() for o in range(0, len(rel), _RELA.size)})
            raise KlpccError(f"the patch refers to {', '.join(used)} from {target_name}, which the kernel "
                             "reads when the module loads, before livepatch can relocate it (a static key, "
                             "static call or exception table entry on a symbol of "
                             + ("a module" if early_vmlinux else "vmlinux or a module")
                             + " the livepatch module cannot link)")
        bodies[idx] = bytes(keep)
        heads[idx][5] = len(keep)
        # one section per object the symbols belong to: the kernel applies vmlinux's
        # when it loads the module (5.8 and later; earlier when the patch is enabled) and
        # a module's when that module is loaded, and
        # refuses vmlinux symbols in a module's section
        for obj, rel in sorted(moved.items()):
            klp_name = f".klp.rela.{obj}.{target_name}"
            at = len(shstrtab)
            shstrtab += klp_name.encode() + b"\0"
            added_heads.append([at, SHT_RELA, SHF_ALLOC | SHF_INFO_LINK | SHF_RELA_LIVEPATCH, 0, 0, len(rel),
                                symtab_index, h[7], 8, _RELA.size])
            added_bodies.append(bytes(rel))
            made.append((klp_name, len(rel) // _RELA.size))
    bodies[shstrndx] = bytes(shstrtab)
    heads += added_heads
    bodies += added_bodies

    out = bytearray(hdr)
    for i, (h, body) in enumerate(zip(heads, bodies)):
        if i == 0:
            continue
        if h[1] == SHT_NOBITS:
            h[4] = len(out)
            continue
        align = max(h[8], 1)
        out += b"\0" * (-len(out) % align)
        h[4] = len(out)
        h[5] = len(body)
        out += body
    out += b"\0" * (-len(out) % 8)
    new_shoff = len(out)
    for h in heads:
        out += _SHDR.pack(*h)
    struct.pack_into("<Q", out, 0x28, new_shoff)
    struct.pack_into("<H", out, 0x3A, _SHDR.size)
    struct.pack_into("<H", out, 0x3C, len(heads))
    return bytes(out), Conversion(renamed, made)


def _cstr(blob: bytes, at: int) -> str:
    end = blob.index(b"\0", at)
    return blob[at:end].decode("utf-8", "replace")
