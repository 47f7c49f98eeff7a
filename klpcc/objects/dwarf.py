"""What a binary's DWARF says (the functions inlined into each function, the options
each unit was built with), and the object check's cross-check against it."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..compdb import CompileCommands
from ..errors import KlpccError
from ..history import Analysis
from .compare import source_changes
from .report import ObjectReport


@dataclass
class Dwarf:
    """What a binary's DWARF says: the functions inlined into each function, and the
    options each unit was compiled with."""

    inlined: dict[str, set[str]] = field(default_factory=dict)  # caller -> callees inlined into it
    producers: dict[str, str] = field(default_factory=dict)  # unit name -> DW_AT_producer
    units: dict[str, set[str]] = field(default_factory=dict)  # function -> units defining it


def read_dwarf(path: str | Path) -> Dwarf:
    """Inlining records (``DW_TAG_inlined_subroutine`` and its abstract origin) and
    producers of a binary built with ``-g``."""
    from elftools.common.exceptions import DWARFError, ELFError, ELFParseError
    from elftools.elf.elffile import ELFFile

    shown = str(path)
    try:
        fh = open(path, "rb")  # noqa: SIM115 (closed by the with below; open errors are ours)
    except OSError as exc:
        raise KlpccError(f"cannot read the binary: {exc.strerror}", patch=shown) from None
    with fh:
        try:
            elf = ELFFile(fh)
        except ELFError as exc:
            raise KlpccError(f"is not an ELF binary: {exc}", patch=shown) from None
        try:
            return dwarf_of(elf, shown)
        except (ELFError, ELFParseError, DWARFError, ValueError, KeyError, EOFError) as exc:
            raise KlpccError(f"its DWARF cannot be read: {exc}", patch=shown) from None


def dwarf_of(elf, shown: str) -> Dwarf:
    """What the DWARF of an open ``ELFFile`` says; ``shown`` names the binary in errors."""
    out = Dwarf()
    if elf.get_section_by_name(".debug_info") is None and elf.get_section_by_name(".zdebug_info") is None:
        raise KlpccError("has no DWARF: build it with -g to cross-check inlining", patch=shown)
    dwarf = elf.get_dwarf_info()

    def name_of(die) -> str | None:
        for _ in range(4):
            if "DW_AT_name" in die.attributes:
                return die.attributes["DW_AT_name"].value.decode("utf-8", "surrogateescape")
            for ref in ("DW_AT_abstract_origin", "DW_AT_specification"):
                if ref in die.attributes:
                    die = die.get_DIE_from_attribute(ref)
                    break
            else:
                return None
        return None

    def inlined_in(die, into: set[str]) -> None:
        stack = [die]
        while stack:
            for child in stack.pop().iter_children():
                if child.tag == "DW_TAG_inlined_subroutine":
                    callee = name_of(child)
                    if callee:
                        into.add(callee)
                if child.has_children:
                    stack.append(child)

    for cu in dwarf.iter_CUs():
        top = cu.get_top_DIE()
        unit = top.attributes.get("DW_AT_name")
        producer = top.attributes.get("DW_AT_producer")
        if unit is not None and producer is not None:
            out.producers[unit.value.decode("utf-8", "surrogateescape")] = \
                producer.value.decode("utf-8", "replace")
        unit_name = unit.value.decode("utf-8", "surrogateescape") if unit is not None else "?"
        for die in top.iter_children():
            if die.tag != "DW_TAG_subprogram" or "DW_AT_low_pc" not in die.attributes:
                continue
            caller = name_of(die)
            if not caller:
                continue
            out.units.setdefault(caller, set()).add(unit_name)
            callees: set[str] = set()
            inlined_in(die, callees)
            if callees:
                out.inlined.setdefault(caller, set()).update(callees)
    return out


_OPT = re.compile(r"(?:^|\s)(-O[0-3sgz]?|-flive-patching=\S+)")


def cross_check(report: ObjectReport, analysis: Analysis, commands: CompileCommands, dwarf: Dwarf) -> None:
    """Every changed function the binary inlines somewhere: are its callers in the
    patch?  And were the units built with the options the compile commands give?"""
    changed = source_changes(analysis)
    carried = {f.function for f in report.functions if f.what in ("both", "code-only")}
    for callee in sorted(changed):
        callers = sorted(c for c, inl in dwarf.inlined.items() if callee in inl and c != callee)
        if not callers:
            continue
        missing = [c for c in callers if c not in carried]
        report.dwarf.append({"function": callee, "inlined_into": callers, "not_in_patch": missing})
        if missing:
            report.notes.append(
                f"the binary inlines `{callee}` (changed) into {', '.join(missing)}, which the object "
                "comparison did not find changed: are the compile commands those the binary was built with?")
    for unit in report.units:
        cmd = commands.entries.get(unit["path"])
        producer = next((p for n, p in dwarf.producers.items()
                         if n == unit["path"] or n.endswith("/" + unit["path"]) or
                         os.path.basename(n) == os.path.basename(unit["path"])), None)
        if cmd is None or producer is None:
            continue
        built = _OPT.findall(producer)
        given = _OPT.findall(" ".join(cmd.args))
        if built and given and built[-1:] != given[-1:]:
            report.notes.append(f"{unit['path']}: the binary was built with {' '.join(built)}, the compile "
                                f"command says {' '.join(given)}: object-level answers may differ from it")
