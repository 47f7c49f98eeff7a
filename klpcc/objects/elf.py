"""Reading compiled objects: each function's and data object's code with its
relocations normalised to what they name (a symbol, a string's text) rather than to
offsets, and gcc's record of inlining and cloning (``-fdump-ipa-clones``)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

_CLONE = re.compile(r"\.(constprop|isra|part|cold|lto_priv|localalias)(?:\.\d+)?")
_LOCAL_SUFFIX = re.compile(r"\.\d+$")
# a name the preprocessor's __COUNTER__ numbers (dynamic debug descriptors and the like):
# every such name after a new one shifts, so the number is not part of its identity
_UNIQUE = re.compile(r"^(__UNIQUE_ID_\w*?)\d+$")
# relocation types whose field is 8 bytes; others patch 4 (x86-64 and AArch64 cover what is used)
_WIDE = {"R_X86_64_64", "R_AARCH64_ABS64", "R_X86_64_PC64"}
_PC_RELATIVE = re.compile(r"R_X86_64_(PC32|PLT32|GOTPCREL|GOTPCRELX|REX_GOTPCRELX)$")


def source_name(symbol: str) -> str:
    """The source function or variable a symbol comes from: ``foo.isra.0`` and
    ``foo.cold`` are ``foo``; a static local ``count.3`` is ``count``."""
    return symbol.split(".")[0] if "." in symbol else symbol


def _normal(symbol: str) -> str:
    """A symbol name without the numbers gcc appends (``x.constprop.0`` ->
    ``x.constprop``, ``count.3`` -> ``count``)."""
    return _UNIQUE.sub(r"\1", _LOCAL_SUFFIX.sub("", _CLONE.sub(lambda m: "." + m.group(1), symbol)))


def is_clone(symbol: str) -> bool:
    """Is ``symbol`` a compiler clone (``.isra``, ``.constprop``, ``.part``, ``.cold``...)?"""
    return _CLONE.search(symbol) is not None


@dataclass(frozen=True, slots=True)
class Code:
    """One function's or data object's contents, normalised."""

    symbol: str
    kind: str  # "function" or "data"
    section: str
    digest: str
    refs: tuple[str, ...]  # what its relocations name, in order
    body: bytes = b""  # the bytes, relocated fields zeroed


@dataclass
class UnitObject:
    """One compiled unit: its functions and data, and gcc's inlining record."""

    code: dict[str, Code] = field(default_factory=dict)  # normalised symbol -> code
    inlined: dict[str, set[str]] = field(default_factory=dict)  # caller -> callees inlined into it
    clones: dict[str, str] = field(default_factory=dict)  # clone symbol -> function
    files: set[str] = field(default_factory=set)  # every file the unit reads (root-relative)


def read_object(obj: Path, ipa_clones: bytes) -> UnitObject:
    """Functions and data of an object, normalised; inlining and clones from the
    ipa-clones dump."""
    from elftools.elf.elffile import ELFFile
    from elftools.elf.relocation import RelocationSection
    from elftools.elf.sections import SymbolTableSection

    unit = UnitObject()
    with open(obj, "rb") as fh:
        elf = ELFFile(fh)
        symtab = next((s for s in elf.iter_sections() if isinstance(s, SymbolTableSection)), None)
        if symtab is None:
            return unit
        symbols = list(symtab.iter_symbols())
        sections = list(elf.iter_sections())
        by_section: dict[int, list] = {}
        for sym in symbols:
            if sym["st_info"]["type"] in ("STT_FUNC", "STT_OBJECT") and isinstance(sym["st_shndx"], int):
                by_section.setdefault(sym["st_shndx"], []).append(sym)
        relocs: dict[int, list] = {}
        for sec in sections:
            if isinstance(sec, RelocationSection) and sec["sh_info"] in by_section:
                relocs[sec["sh_info"]] = list(sec.iter_relocations())
        data_cache: dict[int, bytes] = {}

        def data_of(index: int) -> bytes:
            if index not in data_cache:
                sec = sections[index]
                data_cache[index] = b"" if sec["sh_type"] == "SHT_NOBITS" else sec.data()
            return data_cache[index]

        def describe(rel) -> tuple[str, str, int]:
            """("sym", raw symbol name, addend) or ("text", what the bytes hold, 0)."""
            sym = symbols[rel["r_info_sym"]]
            addend = rel["r_addend"] if "r_addend" in rel.entry else 0
            rtype = _reloc_name(elf, rel["r_info_type"])
            stype = sym["st_info"]["type"]
            label = stype == "STT_NOTYPE" and sym.name.startswith(".L") and isinstance(sym["st_shndx"], int)
            if stype != "STT_SECTION" and not label:
                return ("sym", sym.name, addend)
            index = sym["st_shndx"]
            sec = sections[index]
            at = addend + (4 if _PC_RELATIVE.match(rtype) else 0) + (sym["st_value"] if label else 0)
            for other in by_section.get(index, ()):
                if other["st_value"] == at:
                    return ("sym", other.name, 0)
            if ".str" in sec.name:  # .rodata.str1.1, .rodata.<fn>.str1.8: a string, by its text
                data = data_of(index)
                end = data.find(b"\0", max(at, 0))
                return ("text", "str:" + data[max(at, 0):end if end >= 0 else len(data)]
                        .decode("utf-8", "replace"), 0)
            if ".cst" in sec.name:
                width = int(re.sub(r"\D", "", sec.name.split(".")[-1]) or "8")
                return ("text", "cst:" + data_of(index)[max(at, 0):max(at, 0) + width].hex(), 0)
            return ("text", f"{_LOCAL_SUFFIX.sub('', sec.name)}{addend:+d}", 0)

        raw = []
        for index, syms in by_section.items():
            sec = sections[index]
            data = data_of(index)
            for sym in syms:
                start, size = sym["st_value"], sym["st_size"]
                body = bytearray(data[start:start + size])
                refs = []
                for rel in sorted(relocs.get(index, ()), key=lambda r: r["r_offset"]):
                    off = rel["r_offset"] - start
                    if not 0 <= off < max(size, 1):
                        continue
                    width = 8 if _reloc_name(elf, rel["r_info_type"]) in _WIDE else 4
                    body[off:off + width] = bytes(min(width, len(body) - off))
                    refs.append((off, describe(rel)))
                kind = "function" if sym["st_info"]["type"] == "STT_FUNC" else "data"
                raw.append((sym.name, kind, sec.name, bytes(body), refs))
        # a static local (``kwlist.3``) is known by the function that uses it: the
        # numbers gcc gives change as soon as another one is added
        owners: dict[str, set[str]] = {}
        for name, kind, _, _, refs in raw:
            if kind == "function":
                for _, (what, target, _) in refs:
                    if what == "sym" and (_LOCAL_SUFFIX.search(target) and not _CLONE.search(target)
                                          or _UNIQUE.match(target)):
                        owners.setdefault(target, set()).add(source_name(name))

        keys: dict[str, str] = {}
        taken: set[str] = set()
        for name, *_ in raw:  # symbol-table order: declaration order within a function
            plain = _UNIQUE.sub(r"\1", _LOCAL_SUFFIX.sub("", name))
            owner = sorted(owners[name])[0] if name in owners else None
            k = f"{plain}@{owner}" if owner else _normal(name)
            n = 1
            while k in taken and (owner or _UNIQUE.match(name)):  # two `static int n` in one function
                n += 1
                k = f"{plain}#{n}@{owner}" if owner else f"{_normal(name)}#{n}"
            taken.add(k)
            keys[name] = k

        def key(name: str) -> str:
            return keys.get(name) or _normal(name)

        for name, kind, secname, body, refs in raw:
            shown = tuple(f"{key(t)}{a:+d}" if what == "sym" else t for _, (what, t, a) in refs)
            digest = hashlib.blake2b(body + "\n".join(f"{o}:{r}" for (o, _), r in zip(refs, shown)).encode()
                                     + str(len(body)).encode(), digest_size=12).hexdigest()
            unit.code[key(name)] = Code(name, kind, secname, digest, shown, body)
    for line in ipa_clones.decode("utf-8", "replace").splitlines():
        parts = line.split(";")
        if len(parts) >= 12 and parts[0] == "Callgraph clone":
            callee, clone, reason = parts[1], parts[6], parts[11]
            if reason.startswith("inlining to"):
                unit.inlined.setdefault(source_name(clone), set()).add(source_name(callee))
            else:
                unit.clones[clone] = callee
    return unit


def _reloc_name(elf, rtype: int) -> str:
    from elftools.elf.descriptions import describe_reloc_type

    return describe_reloc_type(rtype, elf)


_FUNCTION = re.compile(r"^[0-9a-f]+ <(.+)>:$")
_RELOC_LINE = re.compile(r"^\s+[0-9a-f]+: R_\S+\s+(\S+)")
_INSN = re.compile(r"^\s+[0-9a-f]+:\s+(?:(?:rep|repz|repnz|notrack|bnd|lock|data16|cs|ds)\s+)*(\S+)\s*(.*)$")


def never_returning(obj: Path) -> set[str]:
    """The functions of an object that have no way out: no return instruction, no jump
    that leaves them (a tail call, a return thunk, an indirect jump).  A thread inside
    one never leaves it, so a live patch can never switch it consistently.  A function
    leaves when any of its parts (``foo.cold``) does.  Read with ``objdump`` (x86-64 and
    AArch64 mnemonics); empty when objdump is missing."""
    import shutil
    import subprocess

    tool = shutil.which("objdump")
    if tool is None:
        return set()
    proc = subprocess.run([tool, "-d", "-r", "--no-show-raw-insn", str(obj)], capture_output=True,
                          text=True, errors="replace", check=False)
    if proc.returncode != 0:
        return set()
    leaves: dict[str, bool] = {}
    current: str | None = None
    pending_jump = False
    for line in proc.stdout.splitlines():
        m = _FUNCTION.match(line)
        if m:
            current, pending_jump = m.group(1), False
            leaves.setdefault(source_name(current), False)
            continue
        if current is None:
            continue
        if _RELOC_LINE.match(line):
            if pending_jump:  # a jump to a symbol: another function (a tail call, a return thunk)
                leaves[source_name(current)] = True
            pending_jump = False
            continue
        i = _INSN.match(line)
        if not i:
            continue
        op, arg = i.group(1), i.group(2)
        pending_jump = False
        if "\t" in arg and " R_" in arg.replace("\t", " "):  # a relocation printed on the same line
            arg, _, reloc = arg.partition("\t")
            if (op.startswith("j") or op == "b") and _RELOC_LINE.match("\t" + reloc.strip()):
                leaves[source_name(current)] = True
                continue
        if op.startswith(("ret", "eret")) or op in ("br", "blr"):  # x86 ret; AArch64 ret, br xN
            leaves[source_name(current)] = True
        elif op.startswith("j") or op == "b" or op.startswith("b."):
            if "*" in arg or (current + "+") not in arg and f"<{current}>" not in arg:
                leaves[source_name(current)] = True  # indirect, or to another symbol
            else:
                pending_jump = True  # within itself, unless a relocation names another symbol
    return {f for f, out in leaves.items() if not out}
