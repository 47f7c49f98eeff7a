"""Userspace target, step 1: the C source of a patch object for one running program.

The units are written by the shared unit writer (:mod:`klpcc.emit.units`): from the
release's own file, modified functions renamed ``klpcc_new_<unit>_<name>``, the rest of the file's
functions and data reduced to declarations.  What differs is how patched code reaches
the program's own functions and data (its statics above all): a patch object is a
shared object loaded beside the program, which exports nothing.  Every reference the
kept code makes to something the program defines is rewritten to go through a slot
the runtime fills with the program's address before the patch runs::

    counter++   ->   (*(__typeof__(counter) *)__klpcc_ref_1_counter)++

so a patched function that bumps a static counter bumps the program's counter, not a
copy.  The declarations the file already has give ``__typeof__`` its type.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from tree_sitter import Node

from ...c import parse
from ..units import Unit, UnitWriter
from .program import Program, Symbol

HEADER = "klpcc.h"

_DECLARATORS = ("init_declarator", "pointer_declarator", "array_declarator", "function_declarator",
                "parenthesized_declarator", "attributed_declarator")


@dataclass(frozen=True)
class ProgramResolver:
    """The unit writer's questions about one file, answered from the program's symbol
    table: does the program have this static (else the patch copies it)?"""

    program: Program
    sympos: dict[tuple[str, str], int]
    path: str

    def symbol(self, path: str, name: str) -> Symbol | None:
        return self.program.find(path, name, self.sympos.get((path, name), 0))

    def present(self, obj: str, name: str) -> bool | None:
        return self.symbol(self.path, name) is not None

    def position(self, obj: str, name: str, path: str, what: str) -> int:
        return self.sympos.get((path, name), 0)


def _nodes(node: Node) -> Iterator[Node]:
    """``node`` and everything under it, in source order, without recursion (a long
    expression makes a deep tree)."""
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        stack.extend(reversed(n.children))


def _declared_names(node: Node, out: set[str]) -> None:
    """Names a function declares itself (parameters, locals): never the program's."""
    for n in _nodes(node):
        if n.type in ("parameter_declaration", "declaration"):
            for child in n.children:
                _declarator_names(child, out)


def _declarator_names(node: Node | None, out: set[str]) -> None:
    while node is not None:
        if node.type == "identifier":
            out.add(node.text.decode("utf-8", "surrogateescape"))
            return
        if node.type not in _DECLARATORS:
            return
        node = node.child_by_field_name("declarator")


def _identifiers(node: Node, out: list[Node]) -> None:
    out.extend(n for n in _nodes(node) if n.type == "identifier")


class ProgramUnitWriter(UnitWriter):
    """A unit of a userspace patch object."""

    resolver: ProgramResolver
    header = HEADER

    def __init__(self, unit: Unit, data: bytes, patched: dict[str, str], added: set[str],
                 resolver: ProgramResolver, compiled=None):
        self.refs: dict[str, Symbol] = {}  # slot -> the program's symbol
        super().__init__(unit, data, patched, added, resolver, compiled)  # type: ignore[arg-type]

    def label(self, name: str, what: str) -> str | None:
        return None  # declarations stay plain: references are rewritten instead

    def rewrite(self, text: str) -> str:
        data = text.encode("utf-8", "surrogateescape")
        tree = parse(data)
        body = None
        stack = [tree.root_node]
        while stack:
            node = stack.pop()
            if node.type == "function_definition":
                body = node
                break
            stack.extend(node.children)
        if body is None:
            return text
        declared: set[str] = set()
        _declared_names(body, declared)
        found: list[Node] = []
        block = body.child_by_field_name("body")
        if block is None:
            return text
        _identifiers(block, found)
        edits: list[tuple[int, int, str]] = []
        for node in found:
            name = node.text.decode("utf-8", "surrogateescape")
            if name in declared or name in self.new_names:
                continue
            sym = self.resolver.symbol(self.unit.path, name)
            if sym is None:
                continue
            slot = f"__klpcc_ref_{self.unit.index}_{name}"
            self.refs[slot] = sym
            edits.append((node.start_byte, node.end_byte, f"(*(__typeof__({name}) *){slot})"))
        for start, end, new in sorted(edits, reverse=True):
            data = data[:start] + new.encode() + data[end:]
        return data.decode("utf-8", "surrogateescape")

    @property
    def new_names(self) -> set[str]:
        """Names the patch defines itself (added functions and data): used directly."""
        return {n for n, change in self.patched.items() if change == "added"} | self.added

    def preamble(self) -> str:
        """The slots the runtime fills with the program's addresses."""
        return "".join(f'void *{slot} __attribute__((visibility("hidden")));\n' for slot in sorted(self.refs))
