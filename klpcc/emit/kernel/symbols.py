"""What the target kernel's symbol tables say: the exported symbols of a kernel build
directory (``Module.symvers``) and, optionally, the running kernel's ``/proc/kallsyms``
(or a ``System.map``) for symbol positions of duplicate local names."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import KlpccError

VMLINUX = "vmlinux"


def namespaces(kdir: Path) -> dict[str, str]:
    """Exported symbol -> the namespace it is exported in (``EXPORT_SYMBOL_NS``), from
    ``Module.symvers`` (its fifth column); a module using one must import it."""
    out: dict[str, str] = {}
    try:
        text = (kdir / "Module.symvers").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) >= 5 and parts[4].strip():
            out[parts[1]] = parts[4].strip()
    return out


def exported(kdir: Path) -> set[str]:
    """Every symbol ``Module.symvers`` lists (vmlinux's and in-tree modules' exports)."""
    path = kdir / "Module.symvers"
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise KlpccError(f"cannot read {path}: {exc.strerror} "
                         f"(is {kdir} a kernel build directory?)") from None
    names: set[str] = set()
    for n, line in enumerate(text.splitlines(), 1):
        parts = line.split("\t")
        if len(parts) < 3:
            raise KlpccError(f"{path}:{n}: not a Module.symvers line (crc, symbol, module, ...)")
        names.add(parts[1])
    return names


@dataclass
class Kallsyms:
    """Symbol names of each object (``vmlinux`` or a module) in kallsyms order."""

    source: str
    order: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    owner: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # name -> objects

    def count(self, obj: str, name: str) -> int:
        return self.order.get(obj, []).count(name) if obj in self.order else 0

    def has_object(self, obj: str) -> bool:
        return obj in self.order


def read_kallsyms(path: str | Path) -> Kallsyms:
    """``/proc/kallsyms`` of the target (``ADDR TYPE NAME [MODULE]``) or a ``System.map``
    (``ADDR TYPE NAME``).  Addresses are ignored (they may read as zero)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise KlpccError(f"cannot read {path}: {exc.strerror}") from None
    syms = Kallsyms(str(path))
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) not in (3, 4) or len(parts[1]) != 1:
            raise KlpccError(f"{path}:{n}: not a kallsyms line (ADDRESS TYPE NAME [MODULE])")
        obj = parts[3].strip("[]") if len(parts) == 4 else VMLINUX
        syms.order[obj].append(parts[2])
        syms.owner[parts[2]].add(obj)
    if not syms.order:
        raise KlpccError(f"{path}: no symbols (reading /proc/kallsyms as a user other than root "
                         "gives zero addresses, which is fine, but not an empty file)")
    if len(syms.order.get(VMLINUX, ())) == 1 and "System.map" in syms.order[VMLINUX][0]:
        raise KlpccError(f"{path} is a placeholder, not a symbol table")
    return syms
