"""The C units of a live patch, written from the release's own files: what every
target shares.

Each changed C file of the release becomes one unit, written from the file itself so
that every type, macro and include the patched code needs is there:

* modified functions keep their new body under a new name (``klpcc_new_<unit>_<name>``),
  which the target's descriptor points at (a ``klp_func``, a runtime entry);
* added functions and variables are the patch's own and are kept as written;
* every other function and variable of the file becomes a declaration: the patched
  code must use the running code's copy, not a duplicate;
* a static the running code has no symbol for (it was inlined) is copied when the
  patch's code uses it, directly or through another copy;
* top-level macro invocations that define the running code's own functions or data
  are left out; ``static inline`` helpers are kept (they have no symbol to refer to).

``#line`` directives keep compiler messages on the release's own file and line.

A target extends :class:`UnitWriter` (``klpcc.emit.kernel.source``,
``klpcc.emit.userspace.source``) through these, and nothing else:

* ``header``: the file every unit includes first (the target's API for patch code);
* ``load_only``: annotations of code and data that only run while loading (never
  patched, copied or declared); ``unpatchable``: annotations that forbid patching;
  ``define_types``: macros that define one variable, and its type;
* :meth:`UnitWriter.statement`: the unit's text for a top-level statement;
* :meth:`UnitWriter.label`: the assembler name a declaration of a running static gets;
* :meth:`UnitWriter.rewrite`: code the unit keeps, as the target needs it;
* :meth:`UnitWriter.preamble`: text after the header, once the unit is written;
* a resolver (:class:`SymbolResolver`): does the running code have a symbol, and at
  which position.
"""

from __future__ import annotations

import functools
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

from ..c import CSource, Item, scan, split_lines, strip_comments
from ..c.declarations import PreprocessedUnit, split_declaration, strip_calls
from ..errors import KlpccError
from ..names import quote

CALLBACK_KINDS = ("pre_patch", "post_patch", "pre_unpatch", "post_unpatch")

_INLINE = re.compile(r"\b(inline|__inline__|__inline|__always_inline)\b")
# attributes that may follow a variable's declarator; a declaration does not need them
_VAR_ATTRS = re.compile(r"\b(__read_mostly|__ro_after_init|__initdata|__initconst|__exitdata|__refdata|"
                        r"__maybe_unused|__used|_*cacheline_aligned\w*|__page_aligned_\w+|"
                        r"__percpu|__always_unused)\b")
_PAREN_ATTR = re.compile(r"\b(__attribute__|__aligned|__section|__designated_init)\s*\(")
# klpcc's own declarations (states, callbacks), kpatch's and klp-build's: the patch's
_OWN_MACRO = re.compile(r"\s*(KLPCC|KPATCH|KLP)_[A-Z_]+\s*\(")
_CALLBACK_MACRO = re.compile(r"\b(?:KLPCC_(PRE|POST)_(PATCH|UNPATCH)|"
                             r"(?:KPATCH|KLP)_(PRE|POST)_(PATCH|UNPATCH)_CALLBACK)\s*\(\s*(\w+)\s*\)")
_GNU_ATTRIBUTE = re.compile(r"\b__attribute__\s*\(")
_MACRO_STATEMENT = re.compile(r"\s*(static\s+)?[A-Za-z_]\w*\s*\(")
# an object-like macro as a statement (``FOP_END;``, closing what other macros opened)
_BARE_MACRO = re.compile(r"\s*[A-Za-z_]\w*\s*;\s*")
# a variable defined by a macro call: [static] MACRO(...) [attributes] [= ...];
_MACRO_DECL = re.compile(r"\s*(?:static\s+)?(?:const\s+)?[A-Z_][A-Z0-9_]*\s*\(")
_C_WORDS = frozenset({"struct", "union", "enum", "const", "volatile", "static", "unsigned", "signed", "int",
                      "long", "short", "char", "void", "bool", "u8", "u16", "u32", "u64", "s8", "s16", "s32",
                      "s64", "size_t", "NULL", "true", "false", "sizeof"})


@dataclass(frozen=True)
class Reference:
    """A function or variable of the running code the unit refers to by an assembler
    label; the target resolves the labels the patch really uses."""

    object: str
    name: str
    path: str  # the file that defines it
    what: str  # "static function", "static variable"


@dataclass
class Unit:
    index: int
    path: str  # the release file, relative to the tree
    object: str  # what the file is built into: vmlinux, a module, the program
    text: str = ""
    patched: list[tuple[str, str, int]] = field(default_factory=list)  # (old name, new name, sympos)
    callbacks: dict[str, str] = field(default_factory=dict)  # kind -> callback function
    labels: dict[str, Reference] = field(default_factory=dict)  # asm label -> what it names
    copied: list[str] = field(default_factory=list)  # what the unit carries a copy of, and why
    left_out: list[str] = field(default_factory=list)  # macro-made definitions of the running code
    written: set[str] = field(default_factory=set)  # the changed functions of the source the unit patches


class SymbolResolver(Protocol):
    def present(self, obj: str, name: str) -> bool | None:
        """Whether the running ``obj`` has a symbol ``name`` (None: unknown)."""

    def position(self, obj: str, name: str, path: str, what: str) -> int:
        """The symbol position of ``name`` (0: the only one)."""


def _strip_paren_attrs(text: str) -> str:
    return strip_calls(text, _PAREN_ATTR)


def one_line(text: str) -> str:
    """C text on one line, comments dropped."""
    return " ".join(strip_comments(text).split())


def function_header(text: str) -> str:
    """A function definition's text up to its body."""
    at = scan(text, "{")
    if at < 0:
        raise ValueError("no body")
    return text[:at].rstrip()


def _declaration(header: str, label: str | None) -> str:
    """An ``extern`` declaration from a definition's header (function or variable)."""
    if re.search(r"^[ \t]*#", header, re.M):
        return _conditional_declaration(header, label)
    decl = re.sub(r"\bstatic\b", "extern", one_line(header), count=1)
    if not decl.startswith("extern") and " extern " not in f" {decl} ":
        decl = "extern " + decl
    decl = _INLINE.sub("", decl)
    decl = _strip_paren_attrs(_VAR_ATTRS.sub("", decl))
    decl = " ".join(decl.split())
    if label:
        decl += f' __asm__("{label}")'
    return decl + ";"


def _unbalanced(header: str) -> bool:
    """Does ``header`` close a conditional it does not open (``#else``/``#endif`` of an
    ``#if`` before it)?"""
    return bool(_closing_directives(header))


def _closing_directives(text: str) -> list[str]:
    """The ``#elif``/``#else``/``#endif`` lines of ``text`` that belong to an ``#if``
    opened before it (with their continuation lines)."""
    out: list[str] = []
    depth = 0
    lines = text.split("\n")
    for i, line in enumerate(lines):
        m = re.match(r"[ \t]*#[ \t]*(if|ifdef|ifndef|elif|else|endif)\b", line)
        if m is None:
            continue
        kind = m.group(1)
        if kind in ("if", "ifdef", "ifndef"):
            depth += 1
        elif kind == "endif" and depth > 0:
            depth -= 1
        elif depth == 0:
            j = i
            out.append(line.strip())
            while lines[j].rstrip().endswith("\\") and j + 1 < len(lines):
                j += 1
                out.append(lines[j])
    return out


def _conditional_declaration(header: str, label: str | None) -> str:
    """The declaration of a header written with preprocessor conditionals in it (one
    header per configuration, or parameters under ``#ifdef``): the directives stay on
    lines of their own, every version becomes ``extern``, and the label and ``;`` come
    after them all."""
    out: list[str] = []
    code: list[str] = []

    def flush() -> None:
        if code:
            text = one_line("\n".join(code))
            text = _INLINE.sub("", re.sub(r"\bstatic\b", "extern", text))
            out.append(" ".join(_strip_paren_attrs(_VAR_ATTRS.sub("", text)).split()))
            code.clear()

    continued = False
    for line in strip_comments(header).split("\n"):
        if continued:  # a directive's continuation line: part of it
            out[-1] += "\n" + line
            continued = line.rstrip().endswith("\\")
        elif re.match(r"[ \t]*#", line):
            flush()
            out.append(line.strip())
            continued = line.rstrip().endswith("\\")
        else:
            code.append(line)
    flush()
    # each version that starts a declaration (outside parentheses) is ``extern``
    depth = 0
    for i, x in enumerate(out):
        if x.startswith("#") or not x:
            continue
        if depth == 0 and not re.match(r"extern\b", x):
            out[i] = "extern " + x
        depth += x.count("(") + x.count("{") - x.count(")") - x.count("}")
    tail = (f' __asm__("{label}")' if label else "") + ";"
    return "\n".join(out) + ("\n" + tail.lstrip() if out and out[-1].startswith("#") else tail)


def _rename(header: str, name: str, new: str, keep_static: bool = False) -> str:
    """The header with the function's name ``new`` (in each ``#if`` version of it), and
    without ``static`` unless ``keep_static``."""
    pattern = re.compile(rf"\b{re.escape(name)}(?=\s*\()")
    if pattern.search(header) is None:
        raise ValueError(name)
    versions = len(re.findall(r"^[ \t]*#[ \t]*(else|elif)\b", header, re.M)) + 1
    renamed = pattern.sub(new, header, count=versions)
    return renamed if keep_static else re.sub(r"\bstatic\s+", "", renamed, count=versions)


def _opened_before(text: str, at: int) -> str | None:
    """The ``#if`` line, before ``at``, of the conditional a header closes (None: none
    open)."""
    depth = 0
    for line in reversed(text[:at].split("\n")):
        m = re.match(r"[ \t]*#[ \t]*(if|ifdef|ifndef|endif)\b", line)
        if m is None:
            continue
        if m.group(1) == "endif":
            depth += 1
        elif depth == 0:
            return line.strip()
        else:
            depth -= 1
    return None


def _named(name: str) -> str:
    """The new definition of ``name`` keeps its ``__func__`` (messages name the function
    as the running code does, not by the unit's name for it)."""
    return f'#define __func__ "{name}"\n#define __FUNCTION__ "{name}"\n'


_UNNAMED = "\n#undef __func__\n#undef __FUNCTION__"


# a word in a function's specifiers that is followed by another word: a macro (the
# type is the last word), e.g. ``STATIC`` in ``STATIC struct buf *f(...)``
_OPAQUE_WORD = re.compile(r"\b([A-Z][A-Z0-9_]+)\s+(?=[A-Za-z_])")


def _opaque(header: str, name: str) -> str | None:
    """The macro among a function header's specifiers (None: none)."""
    m = re.search(rf"\b{re.escape(name)}\s*\(", header)
    if m is None:
        return None
    spec = strip_comments(header[:m.start()])
    found = _OPAQUE_WORD.search(spec)
    return found.group(1) if found else None


_LOCAL_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"([^"\n]+)"', re.M)


def refuse_carried_code(path: str, data: bytes, read: Callable[[str], bytes | None],
                        compiled: PreprocessedUnit | None, symbols: set[str] | None = None) -> None:
    """Refuse a file that includes, with ``#include "..."``, a file defining data its
    code uses (``static bool x;`` in a header): a unit would compile a second copy of
    that data, which the copied code would use instead of the running code's.  What
    the compiled unit saw decides where there is one; else the source.  A static the
    compiled base unit has no symbol for (``symbols``: what it defines) has no storage
    in the running code -- never written, its value folded into the code -- so a copy
    is the same."""
    text = data.decode("utf-8", "surrogateescape")
    for name in _local_includes(path, text):
        included = read(name)
        if included is None or re.search(rb"^[ \t]*#[ \t]*define[ \t]+TRACE_SYSTEM\b", included, re.M):
            continue  # (a trace header: its data is the tracepoints' instances, which no unit makes)
        found = _compiled_data(compiled, name, symbols) if compiled else _source_data(name, included, text)
        if found is not None:
            raise KlpccError(f"{path} includes {name}, which defines {found[0]} (line {found[1]}) and the "
                             "file's code uses it: a unit of this file would have a second copy of that "
                             "data; klpcc cannot patch a file that includes data", file=path)


def _local_includes(path: str, text: str) -> list[str]:
    return [posixpath.normpath(posixpath.join(posixpath.dirname(path), m.group(1)))
            for m in _LOCAL_INCLUDE.finditer(text)]


def included_words(path: str, data: bytes, compiled: PreprocessedUnit | None) -> set[str]:
    """The words of the code the files ``path`` includes with ``#include "..."`` give
    the compiler (their functions are compiled into the unit as they are)."""
    if compiled is None:
        return set()
    words: set[str] = set()
    for name in _local_includes(path, data.decode("utf-8", "surrogateescape")):
        for raws in compiled.lines(name).values():
            for raw in raws:
                words.update(w.decode() for w in re.findall(rb"[A-Za-z_]\w*", raw))
    return words


def _compiled_data(compiled: PreprocessedUnit, name: str, symbols: set[str] | None) -> tuple[str, int] | None:
    lines = compiled.lines(name)
    for n, d in compiled.definitions(min(lines, default=0), max(lines, default=-1), name).items():
        if not d.defines or d.function or n.startswith("__UNIQUE_ID_") or _read_only(d.text, n):
            continue
        if d.static and symbols is not None and n not in symbols:
            continue
        uses = len(re.findall(rb"\b" + re.escape(n.encode()) + rb"\b", compiled.text))
        if uses > 1:  # used beyond its definition
            at = next((ln for ln, raws in sorted(lines.items())
                       if any(re.search(rb"\b" + re.escape(n.encode()) + rb"\b", r) for r in raws)), 0)
            return n, at
    return None


def _read_only(decl: str, name: str) -> bool:
    """Is the declared object constant (a copy of it is as good as the original)?"""
    before = decl.split(name)[0]
    return bool(re.search(r"\bconst\b", before)) and "*" not in before


def _source_data(name: str, included: bytes, text: str) -> tuple[str, int] | None:
    for it in CSource(name, split_lines(included)).items():
        body = included[it.start_byte:it.end_byte].decode("utf-8", "surrogateescape")
        if it.kind == "variable" and not re.match(r"\s*extern\b", body) and not _read_only(body, it.name) \
                and re.search(rf"\b{re.escape(it.name)}\b", text):
            return it.name, it.start_line
    return None


class UnitWriter:
    """Writes one unit; ``patched`` maps function name -> change (modified/added) and
    ``added`` names the other top-level items the release added (kept as written)."""

    header: ClassVar[str]
    load_only: ClassVar[re.Pattern[str] | None] = None
    unpatchable: ClassVar[re.Pattern[str] | None] = None
    define_types: ClassVar[dict[str, str]] = {}

    def __init__(self, unit: Unit, data: bytes, patched: dict[str, str], added: set[str],
                 resolver: SymbolResolver, compiled: PreprocessedUnit | None = None,
                 joined: frozenset[str] = frozenset()):
        self.compiled = compiled  # the base unit as the compiler saw it (None: not compiled)
        self.joined = joined  # functions in the patch for their compiled code alone
        self._statics: set[str] | None = None
        self.unit = unit
        self.data = data
        self.patched = patched
        self.added = added
        self.resolver = resolver
        self.text = data.decode("utf-8", "surrogateescape")
        self.items = CSource(unit.path, split_lines(data)).items()
        self.ascii = data.isascii()
        self.copied: dict[str, str] = {}  # name -> why, of running code the unit copies
        self._define_call = (re.compile(r"^\s*(static\s+)?(" + "|".join(self.define_types)
                                        + r")\s*\(\s*(\w+)\s*\)\s*;\s*$", re.S)
                             if self.define_types else None)
        self._inline_defined = {it.name for it in self.items if it.kind == "function" and it.static
                                and _INLINE.search(self._item_text(it).split("{", 1)[0])}
        self.new_words, self.needed, self.used_words = self._needs()

    # ---------------------------------------------------------------- target hooks

    def label(self, name: str, what: str) -> str | None:
        """The assembler name of a declaration of the running code's static ``name``
        (None: a plain declaration)."""
        label = f"__klpcc_sym_{self.unit.index}_{name}"
        self.unit.labels.setdefault(label, Reference(self.unit.object, name, self.unit.path, what))
        return label

    def rewrite(self, text: str) -> str:
        """Code the unit keeps, as the target needs it (by default: as written)."""
        return text

    def preamble(self) -> str:
        """Text after the header, once every item is written."""
        return ""

    def prologue(self) -> list[str]:
        """Lines before the header: the unit's first lines."""
        return []

    def statement(self, it: Item, text: str) -> str | None:
        """The unit's text for a top-level statement; None keeps it as written."""
        if (defined := self._defined_variable(it, text)) is not None:
            return defined
        if it.name not in self.added and _MACRO_STATEMENT.match(text) and not _OWN_MACRO.match(text):
            return self._macro_statement(it, text)
        return None

    def _macro_statement(self, it: Item, text: str) -> str:
        """A macro call at the top level (``DEFINE_SHOW_ATTRIBUTE(x);``,
        ``define_netdev_printk_level(netdev_emerg, ...);``): it defines functions or data
        of the running code, of which the patch must not have copies.  What the
        compiled unit says it defines is declared where the patch uses it; the rest is
        left out."""
        u = self.unit
        note = f"/* klpcc: {one_line(text)[:60]} defines the running {u.object}'s own code or data */"
        u.left_out.append(f"{one_line(text)[:60]} (line {it.start_line})")
        if self.compiled is None:
            args = set(re.findall(r"\b[A-Za-z_]\w*\b", text[text.find("(") + 1:])) - _C_WORDS
            used = sorted(args & self.new_words)
            if used:
                raise KlpccError(f"cannot declare {used[0]} (line {it.start_line}): {one_line(text)[:50]} "
                                 "defines it and the patch uses it; klpcc reads what such a macro defines "
                                 "from the unit compiled with the target's flags, which this build does not "
                                 "compile", file=u.path)
            return note
        defs = self.compiled.definitions(it.start_line, it.end_line)
        out = [note]
        for n in sorted(n for n in defs if n in self.used_words):
            d = defs[n]
            label = self.label(n, "static symbol") if d.static else None
            out.append(d.text[:-1] + (f' __asm__("{label}");' if label else ";"))
        return " ".join(out)

    # ---------------------------------------------------------------- the unit

    def _is_load_only(self, text: str) -> bool:
        return self.load_only is not None and bool(self.load_only.search(text))

    def _item_text(self, it: Item) -> str:
        return self.text[self._char(it.start_byte):self._char(it.end_byte)]

    def _is_new(self, it: Item) -> bool:
        return (it.kind == "function" and it.name in self.patched) or it.name in self.added

    def _copyable(self, it: Item, text: str) -> bool:
        """Running code or data the patch may need a copy of: a static function the
        running code has no symbol for (inlined), constant data it has no symbol for,
        a constant array sized by its initializer (a declaration would have no size)."""
        if self._is_new(it) or it.macro:
            return False
        if it.kind == "function":
            try:
                header = function_header(text)
            except ValueError:
                return False
            if not it.static and not (_opaque(header, it.name) and it.name in self._compiled_statics()):
                return False  # (``STATIC int f(...)``: static when the compiled unit says so)
            return (not _INLINE.search(header) and not self._is_load_only(header)
                    and self.resolver.present(self.unit.object, it.name) is False)
        if it.kind == "variable":
            if not it.static:
                return False
            eq = scan(text, "=;")
            decl = text[:eq] if eq >= 0 else text
            if not re.search(r"\bconst\b", decl.split(it.name)[0]):
                return False
            unsized = eq >= 0 and text[eq] == "=" and bool(re.search(r"\[\s*\]", decl))
            return unsized or self.resolver.present(self.unit.object, it.name) is False
        return False

    def _compiled_statics(self) -> set[str]:
        """The names the compiled unit declares ``static`` (none when not compiled)."""
        if self._statics is None:
            self._statics = set() if self.compiled is None else {
                n for n, d in self.compiled.declarations_all().items() if d.static}
        return self._statics

    def _needs(self) -> tuple[set[str], set[str], set[str]]:
        """The words of the patch's own code, and the copyable items it uses, directly or
        through another one -- a copy, or a ``static inline`` helper the unit keeps as
        written (only those are copied; the others stay declarations)."""
        roots: list[str] = []
        kept: list[str] = []  # what else the compiler reads: types, and the sizes of arrays declared
        reached: dict[str, str] = {}  # copyable items and kept inline helpers, by name
        copyable: set[str] = set()
        for it in self.items:
            text = self._item_text(it)
            if self._is_new(it):
                roots.append(text)
                continue
            if it.kind == "type":
                kept.append(text)
            elif it.kind == "variable" and not it.macro:
                eq = scan(text, "=;")
                decl = text[:eq] if eq >= 0 else text
                if "[" in decl or "typeof" in decl:
                    kept.append(decl)
            if self._copyable(it, text):
                reached[it.name] = text
                copyable.add(it.name)
            elif (it.kind == "function" and it.static and _INLINE.search(text.split("{", 1)[0])
                  or it.kind == "macro"):  # an inline helper the unit compiles, or a macro
                reached.setdefault(it.name, text)
        words = set(re.findall(r"\w+", "\n".join(roots)))
        seen: set[str] = set()
        # every word of the code the unit compiles: the patch's and what it reaches
        used = words | set(re.findall(r"\w+", "\n".join(kept))) | included_words(self.unit.path, self.data,
                                                                                self.compiled)
        def reach(todo: list[str]) -> None:
            nonlocal used
            while todo:
                name = todo.pop()
                if name not in seen:
                    seen.add(name)
                    more = set(re.findall(r"\w+", reached[name]))
                    used |= more
                    todo += [n for n in reached if n in more and n not in seen]

        reach([n for n in reached if n in used])
        # a reached macro that pastes tokens may name any helper: every one is kept then,
        # and what those use is used
        self._pasting = any("##" in reached[n] for n in seen)
        if self._pasting:
            reach([n for n in reached if n not in copyable])
        self._code = "\n".join([*roots, *(reached[n] for n in seen)])  # the code the unit compiles
        self._reached = seen
        return words, seen & copyable, used

    def _copy(self, it: Item, text: str, why: str) -> None:
        if it.kind == "function" and re.search(r"\{[^}]*\n\s+static\b", text, re.S):
            why += f" (with static locals: the copy's are not the {self.unit.object}'s)"
        self.copied[it.name] = f"{it.name} (line {it.start_line}): {why}"

    def write(self) -> Unit:
        u = self.unit
        pos = 0
        chunks: list[str] = []
        for it in self.items:
            start, end = self._char(it.start_byte), self._char(it.end_byte)
            if start < pos:
                continue  # nested in an item already replaced
            text = self.text[start:end]
            replacement = self.replace(it, text)
            if replacement is None and it.kind == "function" and (kept := self.rewrite(text)) != text:
                replacement = kept  # code the unit keeps, its references rewritten
            if replacement is None:
                continue
            if _unbalanced(text) and not re.search(r"^[ \t]*#", replacement, re.M):
                # the item closes an #if opened before it (a header per configuration): the
                # directives stay, closing it with empty branches, and the replacement follows
                replacement = "\n".join(_closing_directives(text)) + "\n" + replacement
            nl = self.text.find("\n", end)
            tail = self.text[end:nl + 1 if nl >= 0 else len(self.text)]
            chunks.append(self.text[pos:start])
            chunks.append(replacement)
            if tail.strip():  # something after the item on its last line: keep it there
                chunks.append(f'\n#line {it.end_line} {quote(u.path)}\n{tail}')
            else:
                chunks.append("\n")
            chunks.append(f'#line {it.end_line + 1} {quote(u.path)}\n')
            pos = end + len(tail)
        chunks.append(self.text[pos:])
        shown = u.path.replace("*/", "*\\/")  # a name may hold what ends a comment
        head = [f"/* generated by klpcc build from {shown}: unit {u.index} of the patch */",
                *self.prologue(), f"#define KLPCC_UNIT {u.index}", f'#include "{self.header}"']
        head.append(self.preamble() + f'#line 1 {quote(u.path)}')
        u.text = "\n".join(head) + "\n" + "".join(chunks)
        u.copied += list(self.copied.values())
        for m in _CALLBACK_MACRO.finditer(u.text):
            kind = f"{(m.group(1) or m.group(3)).lower()}_{(m.group(2) or m.group(4)).lower()}"
            if kind in u.callbacks and u.callbacks[kind] != m.group(5):
                raise KlpccError(f"two {kind} callbacks ({u.callbacks[kind]}, {m.group(5)}) in one file",
                                 file=u.path)
            u.callbacks[kind] = m.group(5)
        return u

    def _char(self, byte: int) -> int:
        if self.ascii:
            return byte
        return len(self.data[:byte].decode("utf-8", "surrogateescape"))

    def replace(self, it: Item, text: str) -> str | None:
        """The unit's text for one top-level item; None keeps it as written."""
        u = self.unit
        if it.kind == "function":
            return self._function(it, text)
        if it.kind == "prototype" and re.search(r"\balias\s*\(", text) and it.name not in self.added:
            # ``int f(...) __attribute__((weak, alias("g")));``: the running code's f, declared
            label = self.label(it.name, "static function") if it.static else None
            return _declaration(strip_calls(text.rstrip().rstrip(";"), _GNU_ATTRIBUTE), label)
        if it.kind == "prototype" and it.static and self.patched.get(it.name) != "added":
            if (_INLINE.search(text.split("(")[0]) or it.name in self._inline_defined
                    or it.name not in self._defined_names  # defined by a file it includes: compiled there
                    or self.resolver.present(u.object, it.name) is False):
                return None
            return _declaration(text.rstrip().rstrip(";"), self.label(it.name, "static function"))
        if it.kind in ("variable", "statement") and it.name not in self.added and _BARE_MACRO.fullmatch(text):
            return self._macro_statement(it, text)
        if it.kind == "other" and _MACRO_STATEMENT.match(text) and text.rstrip().endswith(")"):
            return self.statement(it, text)  # a macro call with no ';' (``module_init(f)`` at the end)
        if it.kind == "variable":
            return self._variable(it, text)
        if it.kind == "statement":
            return self.statement(it, text)
        return None

    def _function(self, it: Item, text: str) -> str | None:
        u = self.unit
        change = self.patched.get(it.name)
        try:
            header = function_header(text)
        except ValueError:
            return None
        if change == "added":
            return None
        if change == "modified":
            u.written.add(it.name)
            if self.unpatchable is not None and (m := self.unpatchable.search(header)):
                if it.name in self.joined and m.group(1) in ("__init", "__exit"):
                    # joined for the compiled code (an inlined callee changed): that code
                    # ran at boot or runs at unload, never again while the patch is in force
                    u.left_out.append(f"{it.name} (line {it.start_line}): {m.group(1)}, its compiled code "
                                      "changed with a function it inlines; it never runs while the patch is "
                                      "in force")
                    return f"/* klpcc: {it.name} is {m.group(1)}: the running {u.object}'s */"
                raise KlpccError(f"cannot patch {it.name} (line {it.start_line}): it is {m.group(1)}, "
                                 "which a live patch cannot redirect", file=u.path)
            if it.macro:
                return self.macro_function(it, header, text)
            if it.static and _INLINE.search(header):
                raise KlpccError(f"cannot patch {it.name} (line {it.start_line}): it is static inline, "
                                 "so its callers carry its code; patch the callers", file=u.path)
            if self.resolver.present(u.object, it.name) is False:
                raise KlpccError(f"cannot patch {it.name} (line {it.start_line}): the running {u.object} has "
                                 f"no symbol {it.name} (inlined everywhere or removed by the compiler)",
                                 file=u.path)
            new = f"klpcc_new_{u.index}_{it.name}"
            pos = self.resolver.position(u.object, it.name, u.path, "function")
            u.patched.append((it.name, new, pos))
            if (word := _opaque(header, it.name)) is not None:
                return self._opaque_patched(it, header, text, new, word)
            label = self.label(it.name, "static function") if it.static else None
            decl = _declaration(header, label)
            body_at = len(header)
            if _unbalanced(header) and (opened := _opened_before(self.text, self._char(it.start_byte))):
                decl += f"\n{opened}"  # the declaration closed the #if the header is in: open it again
            return (f"{decl}\n{_named(it.name)}#line {it.start_line} {quote(u.path)}\n"
                    + self.rewrite(_rename(header, it.name, new) + text[body_at:]) + _UNNAMED)
        # a function of the running code the patch does not change
        if it.macro:
            return self._macro_made(it, text)
        if (word := _opaque(header, it.name)) is not None:
            return self._opaque_unchanged(it, text, word)
        if self._is_load_only(header):
            return f"/* klpcc: {it.name} only runs while the {u.object} loads */"
        if it.static and _INLINE.search(header):
            if it.name in self._reached or self._pasting:
                return None  # an inline helper: no symbol to refer to, the unit compiles its own
            return f"/* klpcc: {it.name} (static inline) is not used by the patch */"
        if it.static:
            if self.resolver.present(u.object, it.name) is False:
                if it.name not in self.needed:  # unused: a declaration keeps other code compiling
                    return f"static {_declaration(header, None)[len('extern '):]}"
                self._copy(it, text, f"the running {u.object} has no such symbol (inlined), so the patch "
                           "has its own copy")
                return None
            return _declaration(header, self.label(it.name, "static function"))
        return _declaration(header, None)

    def _opaque_patched(self, it: Item, header: str, text: str, new: str, word: str) -> str:
        """A changed function whose specifiers hold a macro (``STATIC struct buf *f(...)``,
        where ``STATIC`` may be ``static``): its new definition keeps them, whatever
        linkage they give, and a global alias gives the patch a name to refer to."""
        u = self.unit
        decl = ""
        if it.name in self._words_outside(it):
            decl = self._compiler_declaration(it, f"its specifiers hold the macro {word}") + "\n"
        body = self.rewrite(_rename(header, it.name, f"{new}__def", keep_static=True) + text[len(header):])
        return (f"{decl}{_named(it.name)}#line {it.start_line} {quote(u.path)}\n{body}{_UNNAMED}\n"
                f'extern __typeof__({new}__def) {new} __attribute__((alias("{new}__def")));')

    def _opaque_unchanged(self, it: Item, text: str, word: str) -> str | None:
        """An unchanged function whose specifiers hold a macro: left out when the patch
        does not use it, declared as the compiled unit has it when it does."""
        u = self.unit
        if it.name not in self.used_words:
            first = one_line(text.split("{", 1)[0])[:60]
            u.left_out.append(f"{first} (line {it.start_line})")
            return f"/* klpcc: {first} is the running {u.object}'s: the patch does not use it */"
        known = self.compiled.declarations({it.name}) if self.compiled is not None else {}
        d = known.get(it.name)
        if d is not None and d.static and self.resolver.present(u.object, it.name) is False:
            self._copy(it, text, f"the running {u.object} has no such symbol (inlined), so the patch has its "
                       "own copy")
            return None
        return self._compiler_declaration(it, f"its specifiers hold the macro {word}")

    def _words_outside(self, it: Item) -> set[str]:
        """The words of the unit's compiled code outside ``it``'s own definition."""
        words: set[str] = set()
        for other in self.items:
            if other is not it and (self._is_new(other) or other.name in self.used_words):
                words |= set(re.findall(r"\w+", self._item_text(other)))
        body = self._item_text(it)
        words |= set(re.findall(r"\w+", body[len(function_header(body)):]))  # a recursive call
        return words

    def macro_function(self, it: Item, header: str, text: str) -> str:
        """The unit's text for a changed function written with a macro
        (``BPF_CALL_2(name, ...) { ... }``).  Where the running code has a symbol of the
        function's name, the macro defines it again under a new name: a ``#define`` of
        the name renames what the macro makes of its argument (what it pastes onto it,
        ``____name``, stays the macro's), and a global alias gives the patch a name to
        refer to whatever linkage the macro gives.  Targets with other conventions
        (syscalls) say how."""
        u = self.unit
        if self.resolver.present(u.object, it.name) is not True:
            raise KlpccError(f"cannot patch {it.name} (line {it.start_line}): it is defined with the macro "
                             f"{it.macro}, and the running {u.object} has no symbol {it.name} klpcc knows of",
                             file=u.path)
        new = f"klpcc_new_{u.index}_{it.name}"
        u.patched.append((it.name, new, self.resolver.position(u.object, it.name, u.path, "function")))
        return (f"#define {it.name} {new}__def\n#line {it.start_line} {quote(u.path)}\n{self.rewrite(text)}\n"
                f"#undef {it.name}\n"
                f'extern __typeof__({new}__def) {new} __attribute__((alias("{new}__def")));')

    def _macro_made(self, it: Item, text: str) -> str:
        """An unchanged function written with a macro: its declaration would be the macro
        again (a second definition, or ``extern SYSCALL_DEFINE3(...)``).  Left out when
        the patch does not use its name; declared as the compiled unit has it when it does."""
        u = self.unit
        first = one_line(text.split("{", 1)[0])[:60]
        if it.name not in self.used_words:
            u.left_out.append(f"{first} (line {it.start_line})")
            return f"/* klpcc: {first} is the running {u.object}'s: the patch does not use it */"
        return self._compiler_declaration(it, f"it is defined with the macro {it.macro}")

    def _compiler_declaration(self, it: Item, why: str) -> str:
        """The declaration of ``it`` as the compiled unit has it (its linkage too);
        refused by name when klpcc has no compiled unit."""
        u = self.unit
        known = self.compiled.declarations({it.name}) if self.compiled is not None else {}
        if it.name not in known:
            raise KlpccError(f"cannot declare {it.name} (line {it.start_line}): {why} and the patch uses it; "
                             "klpcc reads such declarations from the unit compiled with the target's flags, "
                             "which it has not", file=u.path)
        d = known[it.name]
        label = self.label(it.name, "static function" if it.kind == "function" else "static variable") \
            if d.static else None
        return d.text[:-1] + (f' __asm__("{label}");' if label else ";")

    def _macro_variable(self, it: Item, text: str) -> str | None:
        """A definition written with a macro (``static ATOMIC_NOTIFIER_HEAD(list);``,
        ``DECLARE_WORK(w, fn);``): the source does not say its type.  Left out when the
        patch does not use it; declared as the compiler sees it when it does; refused
        by name when that is unknown -- never a copy, never a broken declaration."""
        u = self.unit
        args = text[text.find("(") + 1:] if "(" in text else ""
        names = ({it.name} | set(re.findall(r"\b[A-Za-z_]\w*\b", args))) - _C_WORDS
        defs = self.compiled.definitions(it.start_line, it.end_line) if self.compiled else {}
        defined = set(defs)
        names |= defined  # and the names it pastes (DEVICE_ATTR_RO(x) defines dev_attr_x)
        used = sorted(n for n in names if n in self.used_words)
        if not used:
            u.left_out.append(f"{one_line(text)[:60]} (line {it.start_line})")
            return (f"/* klpcc: {one_line(text)[:60]} is the running {u.object}'s: the patch does not "
                    "use it */")
        # (a name the file also gives a type: DEFINE_PER_CPU(struct x, x) defines the variable x)
        wanted = {n for n in used if n == it.name or n in defined or n not in self._defined_names}
        if self.compiled is None:
            raise KlpccError(f"cannot declare {sorted(wanted)[0]} (line {it.start_line}): it is defined with "
                             f"a macro ({one_line(text)[:50]}) and the patch uses it; klpcc reads such "
                             "definitions from the unit compiled with the target's flags, which this build "
                             "does not compile", file=u.path)
        # the compiled unit says which of the macro's words are variables it defines (the
        # others are types, functions or constants the patch may use for themselves)
        # (what its own lines define first: a parse of the whole unit may recover differently)
        known = {n: defs[n] for n in wanted if n in defs}
        known |= self.compiled.declarations(wanted - set(known))
        if not known:
            u.left_out.append(f"{one_line(text)[:60]} (line {it.start_line})")
            return (f"/* klpcc: {one_line(text)[:60]} is the running {u.object}'s: the patch does not "
                    "use it */")
        out = []
        for n in sorted(known):
            d = known[n]
            label = self.label(n, "static variable") if d.static else None
            out.append(d.text[:-1] + (f' __asm__("{label}");' if label else ";"))
        return " ".join(out)

    def _several(self, it: Item, text: str, specs: str, declarators: list[tuple[str, str]]) -> str:
        """``static struct k_clock a, b;``: one declaration per variable the patch uses."""
        u = self.unit
        used = [(n, d) for n, d in declarators if n in self.used_words]
        if not used:
            u.left_out.append(f"{one_line(text)[:60]} (line {it.start_line})")
            return (f"/* klpcc: {one_line(text)[:60]} is the running {u.object}'s: the patch does not "
                    "use it */")
        if any(n in self.needed for n, _ in used):
            raise KlpccError(f"line {it.start_line}: several variables in one declaration "
                             f"({one_line(text)[:60]}) hold data the patch needs its own copy of; the patch "
                             "needs each of them on its own", file=u.path)
        out = []
        for n, d in used:
            if it.static and self.resolver.present(u.object, n) is False and n in self.new_words:
                self._unstored(it, n)
                if "=" in text:
                    raise KlpccError(f"line {it.start_line}: several variables in one declaration "
                                     f"({one_line(text)[:60]}) with initializers, and the patch needs its "
                                     f"own copy of {n}; the patch needs each of them on its own", file=u.path)
                out.append(f"{' '.join(specs.split())} {d};")
                continue
            label = self.label(n, "static variable") if it.static else None
            out.append(_declaration(f"{specs} {d}", label))
        return " ".join(out)

    def _unstored(self, it: Item, name: str) -> None:
        """A static the patch uses that the running code has no storage for: never
        written there, its value folded into the code.  A copy is the same as long as
        the patch does not write it (noted); else refused."""
        n = re.escape(name)
        if re.search(rf"(\+\+|--)\s*{n}\b|\b{n}\s*(\+\+|--|(?:[-+*/%&|^]|<<|>>)?=(?!=))|&\s*{n}\b",
                     self._code):
            raise KlpccError(f"static variable {name} (line {it.start_line}) has no storage in the running "
                             f"{self.unit.object} (never written there: its value is folded into the code), "
                             "and the patch writes it", file=self.unit.path)
        self.copied[name] = (f"{name} (line {it.start_line}): the running {self.unit.object} has no storage "
                             "for it (never written: its value is folded into the code), so the patch's own "
                             "copy holds the same value")

    @functools.cached_property
    def _defined_names(self) -> set[str]:
        """The names the file's own items define (a macro's other arguments may be functions)."""
        return {it.name for it in self.items if it.kind == "function"}

    def _defined_variable(self, it: Item, text: str) -> str | None:
        """``static DEFINE_MUTEX(x);`` and the like: a declaration of the running ``x``."""
        m = self._define_call.match(text) if self._define_call is not None else None
        if m is None or it.name in self.added:
            return None
        label = self.label(m.group(3), "static variable") if m.group(1) else None
        asm = f' __asm__("{label}")' if label else ""
        return f"extern {self.define_types[m.group(2)]} {m.group(3)}{asm};"

    def _variable(self, it: Item, text: str) -> str | None:
        u = self.unit
        if (defined := self._defined_variable(it, text)) is not None:
            return defined
        if it.name in self.added:
            return None
        if it.macro or _MACRO_DECL.match(text):
            return self._macro_variable(it, text)
        if re.match(r"\s*extern\b", text):
            return None
        if self._is_load_only(text.split("=", 1)[0]):
            return f"/* klpcc: {it.name} only exists while the {u.object} loads */"
        eq = scan(text, "=;")
        decl = text[:eq] if eq >= 0 else text.rstrip().rstrip(";")
        several = split_declaration(text)
        if several is not None and len(several[1]) > 1:
            return self._several(it, text, *several)
        if several is None and scan(decl, ",") >= 0:
            raise KlpccError(f"line {it.start_line}: several variables in one declaration "
                             f"({one_line(decl)[:60]}) that klpcc cannot tell apart; the patch needs each of "
                             "them on its own", file=u.path)
        if it.name in self.needed:
            unsized = self.resolver.present(u.object, it.name) is not False
            self._copy(it, text, "a constant array sized by its initializer (a declaration would have no "
                       "size); read-only data, the patch has its own copy" if unsized else
                       f"constant data the running {u.object} has no symbol for; the patch has its own copy")
            return None
        if it.static:
            if self.resolver.present(u.object, it.name) is False and it.name in self.new_words:
                self._unstored(it, it.name)
                return None  # the definition as written: the patch's own copy
            return _declaration(decl, self.label(it.name, "static variable")) + self._sized(it, text, eq)
        return _declaration(decl, None) + self._sized(it, text, eq)

    def _sized(self, it: Item, text: str, eq: int) -> str:
        """For an array sized by its initializer (``T name[] = {...};``) the patch uses, a
        second declaration with its size, computed from that initializer as the compiler
        would (``sizeof``/``ARRAY_SIZE`` of it then work); else nothing."""
        if eq < 0 or text[eq] != "=" or it.name not in self.used_words or not re.search(
                rf"\b(ARRAY_SIZE|sizeof)\s*\(?\s*{re.escape(it.name)}\b", self._code):
            return ""
        decl = text[:eq]
        m = re.search(rf"\b{re.escape(it.name)}\s*\[\s*\]", decl)
        init = text[eq + 1:].strip().rstrip(";").strip()
        if m is None or not init.startswith(("{", '"', "L\"")) or re.search(r"^\s*#", init, re.M):
            return ""  # (an initializer with #if in it: left to a declaration without size)
        n = it.name
        size = (f"sizeof({init}) / sizeof({n}[0])" if not init.startswith("{") else
                f"sizeof((__typeof__({n}[0])[]){init}) / sizeof({n}[0])")
        sized = decl[:m.start()] + f"{n}[{size}]" + decl[m.end():]
        return " " + _declaration(re.sub(r"\bstatic\b", "", sized, count=1), None)
