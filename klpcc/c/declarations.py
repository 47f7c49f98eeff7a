"""Declarations as the compiler sees them: from a unit's preprocessed text, an
``extern`` declaration of each top-level variable or function asked for.

Kernel and userspace code define data with macros (``static
ATOMIC_NOTIFIER_HEAD(list);``, ``DEFINE_PER_CPU(struct base, bases[2]);``,
``DECLARE_WORK(w, fn);``) and decorate it with attributes (``____cacheline_aligned``):
the source does not say the type.  The preprocessed unit does; the declaration is
taken from it, its storage class, attributes and initializer left out."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..names import raw as raw_name
from ..names import unquote
from .language import parse, parser

_LINE_MARKER = re.compile(rb"^#[^\n]*", re.M)
_DECLARATORS = ("init_declarator", "pointer_declarator", "array_declarator", "function_declarator",
                "parenthesized_declarator", "attributed_declarator")
_STORAGE = re.compile(r"\b(static|extern|inline|__inline__|__inline|register|_Thread_local|__thread)\b")
_ATTRIBUTE = re.compile(r"\b(__attribute__|__attribute|__declspec|__asm__|__asm|asm)\s*\(")


def strip_calls(text: str, pattern: re.Pattern[str]) -> str:
    """``text`` without the calls ``pattern`` starts (``__attribute__((...))``), brackets balanced."""
    while m := pattern.search(text):
        depth, j = 0, m.end() - 1
        while j < len(text):
            depth += {"(": 1, ")": -1}.get(text[j], 0)
            j += 1
            if depth == 0:
                break
        text = text[:m.start()] + " " + text[j:]
    return text


def _name(node) -> str | None:
    """The identifier a declarator declares."""
    while node is not None:
        if node.type in ("identifier", "field_identifier"):
            return node.text.decode("utf-8", "replace")
        if node.type == "parenthesized_declarator":
            node = next((c for c in node.named_children if c.type != "attribute_specifier"), None)
        elif node.type in _DECLARATORS:
            node = node.child_by_field_name("declarator")
        else:
            return None
    return None


@dataclass(frozen=True)
class Declaration:
    text: str  # "extern TYPE DECLARATOR;"
    static: bool  # internal linkage, as the compiler sees it
    defines: bool = False  # a definition (of a function, or of data), not a declaration
    function: bool = False


def _is_function(node) -> bool:
    """Does a declarator declare a function (not a pointer to one)?"""
    while node is not None:
        if node.type == "function_declarator":
            inner = node.child_by_field_name("declarator")
            return inner is None or inner.type != "parenthesized_declarator"
        if node.type == "array_declarator":
            return False
        node = node.child_by_field_name("declarator") if node.type in _DECLARATORS else None
    return False


def declarations(preprocessed: bytes, names: set[str] | None) -> dict[str, Declaration]:
    """``name -> Declaration`` for the top-level declarations and definitions of
    ``names`` (None: of every name) found in ``preprocessed`` (the first of each)."""
    text = _LINE_MARKER.sub(lambda m: b" " * len(m.group()), preprocessed)
    tree = parser().parse(text)
    out: dict[str, str] = {}
    prev = None
    for node in tree.root_node.children:
        before, prev = prev, node
        if node.type not in ("declaration", "function_definition"):
            continue
        if before is not None and before.type == "type_definition" and not text[
                before.start_byte:before.end_byte].rstrip().endswith(b";"):
            continue  # the rest of a typedef an attribute cut in two: a type, not a declaration
        declarators = node.children_by_field_name("declarator")
        for d in declarators:
            name = _name(d)
            if name is None or names is not None and name not in names or name in out:
                continue
            inner = d.child_by_field_name("declarator") if d.type == "init_declarator" else d
            specs = text[node.start_byte:declarators[0].start_byte].decode("utf-8", "replace")
            if not name or not strip_calls(specs, _ATTRIBUTE).strip() or re.search(
                    r"=", strip_calls(specs, _ATTRIBUTE)):
                continue  # (what a parse recovered from an error is no declaration to copy)
            if re.search(r"\btypedef\b", specs):
                continue  # a type (read as a declaration where an attribute precedes its type)
            decl = text[inner.start_byte:inner.end_byte].decode("utf-8", "replace")
            static = re.search(r"\bstatic\b", specs) is not None
            function = _is_function(inner)
            defines = node.type == "function_definition" or (
                not function and re.search(r"\bextern\b", specs) is None)
            specs = strip_calls(_STORAGE.sub(" ", specs), _ATTRIBUTE)
            decl = strip_calls(decl, _ATTRIBUTE)
            out[name] = Declaration("extern " + " ".join(f"{specs} {decl}".split()) + ";", static, defines,
                                    function)
    return out


def split_declaration(text: str) -> tuple[str, list[tuple[str, str]]] | None:
    """``static int a = 1, *b;`` -> ``("static int ", [("a", "a"), ("b", "*b")])``: the
    specifiers and each declarator without its initializer (None: not one declaration
    tree-sitter can read, with annotations masked)."""
    data = text.encode("utf-8", "surrogateescape")
    tree = parse(data)
    nodes = [n for n in tree.root_node.children if n.type not in ("comment", ";")]
    if len(nodes) != 1 or nodes[0].type != "declaration" or nodes[0].has_error:
        return None
    node = nodes[0]
    declarators = node.children_by_field_name("declarator")
    if not declarators:
        return None
    specs = data[node.start_byte:declarators[0].start_byte].decode("utf-8", "surrogateescape")
    out = []
    for d in declarators:
        name = _name(d)
        if name is None:
            return None
        inner = d.child_by_field_name("declarator") if d.type == "init_declarator" else d
        out.append((name, data[inner.start_byte:inner.end_byte].decode("utf-8", "surrogateescape")))
    return specs, out


_MARKER = re.compile(rb'^# (\d+) "((?:[^"\\]|\\.)*)"')


class PreprocessedUnit:
    """A unit as the compiler saw it: its preprocessed text (with line markers)."""

    def __init__(self, path: str, text: bytes):
        self.path = path
        self.text = text
        self._lines: dict[bytes, dict[int, list[bytes]]] | None = None
        self._all: dict[str, Declaration] | None = None

    def declarations(self, names: set[str]) -> dict[str, Declaration]:
        """How the unit declares ``names``."""
        if not names:
            return {}
        if self._all is not None:
            return {n: self._all[n] for n in names if n in self._all}
        return declarations(self.text, names)

    def declarations_all(self) -> dict[str, Declaration]:
        """How the unit declares every name it declares (read once)."""
        if self._all is None:
            self._all = declarations(self.text, None)
        return self._all

    def definitions(self, first: int, last: int, path: str | None = None) -> dict[str, Declaration]:
        """What lines ``first`` to ``last`` of the unit's file (or of ``path``, a file it
        includes) declare or define once their macros are expanded
        (``define_netdev_printk_level(netdev_emerg, ...);`` defines ``netdev_emerg``)."""
        lines = self.lines(path or self.path)
        text = b"\n".join(raw for n in range(first, last + 1) for raw in lines.get(n, ()))
        return declarations(text, None) if text.strip() else {}

    def lines(self, path: str) -> dict[int, list[bytes]]:
        """The preprocessed output of each line of ``path`` (tree-relative) that gave any."""
        if self._lines is None:
            by_file: dict[bytes, dict[int, list[bytes]]] = {}
            out: dict[int, list[bytes]] = {}
            line = 0
            for raw in self.text.split(b"\n"):
                m = _MARKER.match(raw)
                if m is not None:  # the compiler escapes a quote, a backslash and control characters
                    name = raw_name(unquote('"' + m.group(2).decode("utf-8", "surrogateescape") + '"'))
                    line, out = int(m.group(1)), by_file.setdefault(name, {})
                    continue
                if raw.strip():
                    out.setdefault(line, []).append(raw)
                line += 1
            self._lines = by_file
        exact = path.encode("utf-8", "surrogateescape")
        return next((v for k, v in self._lines.items() if k.endswith(b"/" + exact) or k == exact), {})
