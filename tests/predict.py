"""How well the compiled base unit predicts which statics the running kernel has.

Without ``--kallsyms``, ``klpcc build --kernel`` decides whether the kernel kept a
static function (a symbol to redirect, to refer to) or inlined it away (its callers
carry it, the module needs its own copy) from the unit compiled with the kernel's own
flags.  This module measures that prediction against a real kernel's
``/proc/kallsyms``: for every static function of a unit built into vmlinux, is it in
the compiled unit's symbols exactly when it is in kallsyms?  Names defined by more
than one unit of the sample, or more than once in kallsyms, are left out (kallsyms
does not say which file a static comes from).  Used by ``tests/test_kernel_e2e.py``
(the units the fixtures touch) and ``bench/bench_predict.py`` (100+ units)."""

from __future__ import annotations

import collections
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from klpcc.c import CSource, split_lines
from klpcc.emit.kernel.kbuild import template, unit_command


@dataclass
class Prediction:
    units: list[str] = field(default_factory=list)  # compared
    skipped: dict[str, str] = field(default_factory=dict)  # unit -> why
    agree: int = 0
    compared: int = 0
    wrong: list[str] = field(default_factory=list)  # "unit: name predicted X, kallsyms Y"

    @property
    def rate(self) -> float:
        return self.agree / self.compared if self.compared else 1.0


def kallsyms_names(path: Path) -> collections.Counter:
    """vmlinux's function symbols (text, ``t``/``T``), counted."""
    names: collections.Counter = collections.Counter()
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "tT":
            names[parts[2]] += 1
    return names


def _defined(obj: Path) -> set[str]:
    from elftools.elf.elffile import ELFFile

    with open(obj, "rb") as fh:
        tab = ELFFile(fh).get_section_by_name(".symtab")
        return {s.name for s in tab.iter_symbols()
                if s["st_info"]["type"] == "STT_FUNC" and s["st_shndx"] != "SHN_UNDEF"}


def predict(kdir: Path, tree: Path, units: list[str], kallsyms: Path) -> Prediction:
    args = template(kdir)
    syms = kallsyms_names(kallsyms)
    out = Prediction()
    statics: dict[str, list[str]] = {}
    globals_: dict[str, list[str]] = {}
    for unit in units:
        data = (tree / unit).read_bytes()
        items = [it for it in CSource(unit, split_lines(data)).items()
                 if it.kind == "function" and not it.macro]
        statics[unit] = sorted({it.name for it in items if it.static})
        globals_[unit] = sorted({it.name for it in items if not it.static})
    owners = collections.Counter(n for names in statics.values() for n in set(names))
    with tempfile.TemporaryDirectory(prefix="klpcc-predict-") as t:
        for unit in units:
            unique = [n for n in statics[unit] if owners[n] == 1 and syms[n] == 1]
            if not any(syms[g] for g in globals_[unit]) and not unique:
                out.skipped[unit] = "not built into vmlinux (none of its functions is in kallsyms)"
                continue
            cmd = unit_command(args, kdir, unit, tree, None)
            obj = Path(t) / "unit.o"
            argv = [*cmd.args, "-iquote", str((tree / unit).parent), "-c", str(tree / unit), "-o", str(obj)]
            proc = subprocess.run(argv, cwd=cmd.directory, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                first = next((ln for ln in proc.stderr.splitlines() if "error" in ln), "?")
                out.skipped[unit] = f"does not compile here: {first.strip()[:120]}"
                continue
            defined = _defined(obj)
            out.units.append(unit)
            for name in statics[unit]:
                if owners[name] > 1 or syms[name] > 1:
                    continue
                predicted, actual = name in defined, syms[name] == 1
                out.compared += 1
                if predicted == actual:
                    out.agree += 1
                else:
                    out.wrong.append(f"{unit}: {name}: compiled unit {'has' if predicted else 'inlines'} it, "
                                     f"the kernel {'has' if actual else 'does not'}")
    return out
