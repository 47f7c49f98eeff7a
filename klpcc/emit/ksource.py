"""Kernel target, step 1: the C source of a cumulative livepatch module.

Each changed C file of the release becomes one unit of the module, written from the
file itself so that every type, macro and include the patched code needs is there:

* modified functions keep their new body under a new name (``klpcc_new_<unit>_<name>``),
  which the module's ``klp_func`` entries point at;
* added functions and variables are the patch's own and are kept as written;
* every other function and variable of the file becomes a declaration: the patched
  code must use the running kernel's copy, not a duplicate.  Static ones get an
  assembler name (``__klpcc_sym_<unit>_<name>``) that the ELF step turns into a
  livepatch symbol ``.klp.sym.<object>.<name>,<pos>``;
* initcalls, exports and module parameters are dropped (they would run or register
  twice); ``static inline`` helpers are kept (they have no symbol to refer to).

``#line`` directives keep compiler messages on the release's own file and line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import KlpccError
from ..functions import CSource, Item, split_lines
from .ksyms import VMLINUX, Kallsyms

CALLBACK_KINDS = ("pre_patch", "post_patch", "pre_unpatch", "post_unpatch")

# top-level statements that register something at boot or export a symbol: the
# module must not do it a second time
_DROPPED = re.compile(
    r"\s*(EXPORT_SYMBOL\w*|EXPORT_TRACEPOINT_SYMBOL\w*|\w*initcall\w*|module_init|module_exit|"
    r"__setup|early_param|core_param\w*|module_param\w*|MODULE_\w+|ALLOW_ERROR_INJECTION|"
    r"NOKPROBE_SYMBOL|STACK_FRAME_NON_STANDARD\w*|late_initcall\w*|__exitcall|"
    r"console_initcall|security_initcall)\s*\(")
# macros that define one variable: the type it has
_DEFINE_TYPES = {
    "DEFINE_SPINLOCK": "spinlock_t", "DEFINE_RAW_SPINLOCK": "raw_spinlock_t",
    "DEFINE_RWLOCK": "rwlock_t", "DEFINE_MUTEX": "struct mutex", "LIST_HEAD": "struct list_head",
    "DEFINE_IDR": "struct idr", "DEFINE_IDA": "struct ida", "DECLARE_RWSEM": "struct rw_semaphore",
    "DECLARE_WAIT_QUEUE_HEAD": "wait_queue_head_t", "DEFINE_SEMAPHORE": "struct semaphore",
    "DEFINE_SEQLOCK": "seqlock_t", "DEFINE_XARRAY": "struct xarray", "HLIST_HEAD": "struct hlist_head",
}
_DEFINE_CALL = re.compile(r"^\s*(static\s+)?(" + "|".join(_DEFINE_TYPES) + r")\s*\(\s*(\w+)\s*\)\s*;\s*$",
                          re.S)
_UNPATCHABLE = re.compile(r"\b(__init|__exit|notrace|noinstr|__always_inline|__kprobes|"
                          r"__noinstr_section|__cpuidle|__irq_entry|__softirq_entry)\b")
_INLINE = re.compile(r"\b(inline|__inline__|__inline|__always_inline)\b")
# attributes that may follow a variable's declarator; a declaration does not need them
_VAR_ATTRS = re.compile(r"\b(__read_mostly|__ro_after_init|__initdata|__initconst|__exitdata|__refdata|"
                        r"__maybe_unused|__used|__cacheline_aligned\w*|__page_aligned_\w+|"
                        r"__percpu|__always_unused)\b")
_PAREN_ATTR = re.compile(r"\b(__attribute__|__aligned|__section|__designated_init)\s*\(")
# klpcc's own declarations (states, callbacks), kpatch's and klp-build's: the patch's
_OWN_MACRO = re.compile(r"\s*(KLPCC|KPATCH|KLP)_[A-Z_]+\s*\(")
_CALLBACK_MACRO = re.compile(r"\b(?:KLPCC_(PRE|POST)_(PATCH|UNPATCH)|"
                             r"(?:KPATCH|KLP)_(PRE|POST)_(PATCH|UNPATCH)_CALLBACK)\s*\(\s*(\w+)\s*\)")


@dataclass(frozen=True)
class Reference:
    """A function or variable of the running kernel the unit refers to by an assembler
    label; the ELF step resolves the labels the module really uses."""

    object: str
    name: str
    path: str  # the file that defines it
    what: str  # "static function", "static variable"


@dataclass
class Unit:
    index: int
    path: str  # the release file, relative to the tree
    object: str  # vmlinux or a module name
    text: str = ""
    patched: list[tuple[str, str, int]] = field(default_factory=list)  # (old name, new name, sympos)
    callbacks: dict[str, str] = field(default_factory=dict)  # kind -> callback function
    labels: dict[str, Reference] = field(default_factory=dict)  # asm label -> what it names
    copied: list[str] = field(default_factory=list)  # what the unit carries a copy of, and why
    left_out: list[str] = field(default_factory=list)  # macro-made definitions of the kernel left out


@dataclass(frozen=True)
class Resolver:
    """Symbol positions: from ``--sympos`` first, else from the target's kallsyms."""

    kallsyms: Kallsyms | None
    sympos: dict[tuple[str, str], int]  # (file, name) -> pos

    def position(self, obj: str, name: str, path: str, what: str) -> int:
        pos = self.sympos.get((path, name))
        if pos is not None:
            return pos
        if self.kallsyms is None or not self.kallsyms.has_object(obj):
            return 0
        n = self.kallsyms.count(obj, name)
        if n == 0:
            raise KlpccError(f"{what} {name} is not in the symbol table of {obj} ({self.kallsyms.source}): "
                             "it was inlined or removed by the compiler", file=path)
        if n > 1:
            raise KlpccError(f"{what} {name} is defined {n} times in {obj}; say which one with "
                             f"--sympos {path}:{name}=N (1 to {n}, in kallsyms order)", file=path)
        return 0

    def present(self, obj: str, name: str) -> bool | None:
        """Whether the running kernel has a symbol ``name`` in ``obj`` (None: unknown)."""
        if self.kallsyms is None or not self.kallsyms.has_object(obj):
            return None
        return self.kallsyms.count(obj, name) > 0


def _skip_comment_or_string(text: str, i: int) -> int:
    if text.startswith("/*", i):
        j = text.find("*/", i + 2)
        return len(text) if j < 0 else j + 2
    if text.startswith("//", i):
        j = text.find("\n", i)
        return len(text) if j < 0 else j
    quote = text[i]
    j = i + 1
    while j < len(text) and text[j] != quote:
        j += 2 if text[j] == "\\" else 1
    return j + 1


def _scan(text: str, stops: str) -> int:
    """Index of the first character of ``stops`` outside brackets, comments and strings."""
    depth = 0
    i = 0
    while i < len(text):
        c = text[i]
        if text.startswith(("/*", "//"), i) or c in "\"'":
            i = _skip_comment_or_string(text, i)
            continue
        if depth == 0 and c in stops:
            return i
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        i += 1
    return -1


def _strip_paren_attrs(text: str) -> str:
    while m := _PAREN_ATTR.search(text):
        depth, j = 0, m.end() - 1
        while j < len(text):
            depth += {"(": 1, ")": -1}.get(text[j], 0)
            j += 1
            if depth == 0:
                break
        text = text[:m.start()] + text[j:]
    return text


def _one_line(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    return " ".join(text.split())


def function_header(text: str) -> str:
    """A function definition's text up to its body."""
    at = _scan(text, "{")
    if at < 0:
        raise ValueError("no body")
    return text[:at].rstrip()


def _declaration(header: str, label: str | None) -> str:
    """An ``extern`` declaration from a definition's header (function or variable)."""
    decl = re.sub(r"\bstatic\b", "extern", _one_line(header), count=1)
    if not decl.startswith("extern") and " extern " not in f" {decl} ":
        decl = "extern " + decl
    decl = _INLINE.sub("", decl)
    decl = _strip_paren_attrs(_VAR_ATTRS.sub("", decl))
    decl = " ".join(decl.split())
    if label:
        decl += f' __asm__("{label}")'
    return decl + ";"


def _rename(header: str, name: str, new: str) -> str:
    m = re.search(rf"\b{re.escape(name)}\s*\(", header)
    if m is None:
        raise ValueError(name)
    renamed = header[:m.start()] + new + header[m.start() + len(name):]
    return re.sub(r"\bstatic\s+", "", renamed, count=1)


class UnitWriter:
    """Writes one unit; ``patched`` maps function name -> change (modified/added) and
    ``added`` names the other top-level items the release added (kept as written)."""

    header = "klpcc_livepatch.h"  # what every unit includes first

    def __init__(self, unit: Unit, data: bytes, patched: dict[str, str], added: set[str],
                 resolver: Resolver):
        self.unit = unit
        self.data = data
        self.patched = patched
        self.added = added
        self.resolver = resolver
        self.text = data.decode("utf-8", "surrogateescape")
        self.items = CSource(unit.path, split_lines(data)).items()
        self.ascii = data.isascii()
        self.copied: dict[str, str] = {}  # name -> why, of kernel code the module copies
        self.new_words, self.needed = self._needs()

    def _item_text(self, it: Item) -> str:
        return self.text[self._char(it.start_byte):self._char(it.end_byte)]

    def _is_new(self, it: Item) -> bool:
        return (it.kind == "function" and it.name in self.patched) or it.name in self.added

    def _copyable(self, it: Item, text: str) -> bool:
        """Kernel code or data the module may need a copy of: a static function the
        running kernel has no symbol for (inlined), constant data it has no symbol for,
        a constant array sized by its initializer (a declaration would have no size)."""
        if not it.static or self._is_new(it) or it.macro:
            return False
        if it.kind == "function":
            try:
                header = function_header(text)
            except ValueError:
                return False
            return (not _INLINE.search(header) and not re.search(r"\b(__init|__exit)\b", header)
                    and self.resolver.present(self.unit.object, it.name) is False)
        if it.kind == "variable":
            eq = _scan(text, "=;")
            decl = text[:eq] if eq >= 0 else text
            if not re.search(r"\bconst\b", decl.split(it.name)[0]):
                return False
            unsized = eq >= 0 and text[eq] == "=" and bool(re.search(r"\[\s*\]", decl))
            return unsized or self.resolver.present(self.unit.object, it.name) is False
        return False

    def _needs(self) -> tuple[set[str], set[str]]:
        """The words of the patch's own code, and the copyable items it uses, directly or
        through another one (only those are copied; the others stay declarations)."""
        roots: list[str] = []
        copyable: dict[str, str] = {}
        for it in self.items:
            text = self._item_text(it)
            if self._is_new(it):
                roots.append(text)
            elif self._copyable(it, text):
                copyable[it.name] = text
        words = set(re.findall(r"\w+", "\n".join(roots)))
        needed: set[str] = set()
        todo = [n for n in copyable if n in words]
        while todo:
            name = todo.pop()
            if name not in needed:
                needed.add(name)
                used = set(re.findall(r"\w+", copyable[name]))
                todo += [n for n in copyable if n in used and n not in needed]
        return words, needed

    def _copy(self, it: Item, text: str, why: str) -> None:
        if it.kind == "function" and re.search(r"\{[^}]*\n\s+static\b", text, re.S):
            why += " (with static locals: the copy's are not the kernel's)"
        self.copied[it.name] = f"{it.name} (line {it.start_line}): {why}"

    def rewrite(self, text: str) -> str:
        """Code the unit keeps, as the target needs it (the kernel: as written)."""
        return text

    def label(self, name: str, what: str) -> str | None:
        label = f"__klpcc_sym_{self.unit.index}_{name}"
        self.unit.labels.setdefault(label, Reference(self.unit.object, name, self.unit.path, what))
        return label

    def write(self) -> Unit:
        u = self.unit
        head = [f"/* generated by klpcc build from {u.path}: unit {u.index} of the module */",
                f"#define KLPCC_UNIT {u.index}", f'#include "{self.header}"', f'#line 1 "{u.path}"', ""]
        pos = 0
        chunks: list[str] = []
        for it in self.items:
            start, end = self._char(it.start_byte), self._char(it.end_byte)
            if start < pos:
                continue  # nested in an item already replaced
            text = self.text[start:end]
            replacement = self.replace(it, text)
            if replacement is None and it.kind == "function" and (kept := self.rewrite(text)) != text:
                replacement = kept  # code the unit keeps, its references to the program rewritten
            if replacement is None:
                continue
            nl = self.text.find("\n", end)
            tail = self.text[end:nl + 1 if nl >= 0 else len(self.text)]
            chunks.append(self.text[pos:start])
            chunks.append(replacement)
            if tail.strip():  # something after the item on its last line: keep it there
                chunks.append(f'\n#line {it.end_line} "{u.path}"\n{tail}')
            else:
                chunks.append("\n")
            chunks.append(f'#line {it.end_line + 1} "{u.path}"\n')
            pos = end + len(tail)
        chunks.append(self.text[pos:])
        u.text = "\n".join(head) + "".join(chunks)
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
        if it.kind == "prototype" and it.static and self.patched.get(it.name) != "added":
            if _INLINE.search(text.split("(")[0]) or self.resolver.present(u.object, it.name) is False:
                return None
            return _declaration(text.rstrip().rstrip(";"), self.label(it.name, "static function"))
        if it.kind == "variable":
            return self._variable(it, text)
        if it.kind == "statement":
            if _DROPPED.match(text):
                return f"/* klpcc: {_one_line(text)[:60]} is the kernel's, not the module's */"
            if (defined := self._defined_variable(it, text)) is not None:
                return defined
            if (it.name not in self.added and re.match(r"\s*(static\s+)?[A-Z_][A-Z0-9_]*\s*\(", text)
                    and not _OWN_MACRO.match(text)):
                # a macro that defines functions or data of the kernel (LSM_DIR_OPS(x),
                # DEFINE_SHOW_ATTRIBUTE(x), ...): the module must not have copies
                u.left_out.append(f"{_one_line(text)[:60]} (line {it.start_line})")
                return f"/* klpcc: {_one_line(text)[:60]} defines the kernel's own code or data */"
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
            if it.macro:
                raise KlpccError(f"cannot patch {it.name} (line {it.start_line}): it is defined with "
                                 f"the macro {it.macro}, whose symbol klpcc cannot name", file=u.path)
            if m := _UNPATCHABLE.search(header):
                raise KlpccError(f"cannot patch {it.name} (line {it.start_line}): it is {m.group(1)}, "
                                 "which the kernel cannot live patch", file=u.path)
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
            label = self.label(it.name, "static function") if it.static else None
            decl = _declaration(header, label)
            body_at = len(header)
            return (f"{decl}\n#line {it.start_line} \"{u.path}\"\n"
                    + self.rewrite(_rename(header, it.name, new) + text[body_at:]))
        # a function of the kernel the patch does not change
        if re.search(r"\b(__init|__exit)\b", header):
            return f"/* klpcc: {it.name} is init or exit code of the kernel */"
        if it.static and _INLINE.search(header):
            return None  # an inline helper: no symbol to refer to, the module compiles its own
        if it.static:
            if self.resolver.present(u.object, it.name) is False:
                if it.name not in self.needed:  # unused: a declaration keeps other code compiling
                    return f"static {_declaration(header, None)[len('extern '):]}"
                self._copy(it, text, f"the running {u.object} has no such symbol (inlined), so the module "
                           "has its own copy")
                return None
            return _declaration(header, self.label(it.name, "static function"))
        return _declaration(header, None)

    def _defined_variable(self, it: Item, text: str) -> str | None:
        """``static DEFINE_MUTEX(x);`` and the like: a declaration of the kernel's ``x``."""
        m = _DEFINE_CALL.match(text)
        if m is None or it.name in self.added:
            return None
        label = self.label(m.group(3), "static variable") if m.group(1) else None
        asm = f' __asm__("{label}")' if label else ""
        return f"extern {_DEFINE_TYPES[m.group(2)]} {m.group(3)}{asm};"

    def _variable(self, it: Item, text: str) -> str | None:
        u = self.unit
        if (defined := self._defined_variable(it, text)) is not None:
            return defined
        if it.name in self.added or it.macro:
            if it.macro and it.name not in self.added:
                u.copied.append(f"{_one_line(text)[:60]} (line {it.start_line}): a definition klpcc "
                                "cannot turn into a reference; the module has its own copy")
            return None
        if re.match(r"\s*extern\b", text) or re.search(r"\b(__initdata|__initconst|__exitdata)\b", text):
            return None if re.match(r"\s*extern\b", text) else f"/* klpcc: {it.name} is init data */"
        eq = _scan(text, "=;")
        decl = text[:eq] if eq >= 0 else text.rstrip().rstrip(";")
        if _scan(decl, ",") >= 0:
            raise KlpccError(f"line {it.start_line}: several variables in one declaration "
                             f"({_one_line(decl)[:60]}); the patch needs each of them on its own",
                             file=u.path)
        if it.name in self.needed:
            unsized = self.resolver.present(u.object, it.name) is not False
            self._copy(it, text, "a constant array sized by its initializer (a declaration would have no "
                       "size); read-only data, the module has its own copy" if unsized else
                       f"constant data the running {u.object} has no symbol for; the module has its own copy")
            return None
        if it.static:
            if self.resolver.present(u.object, it.name) is False and it.name in self.new_words:
                raise KlpccError(f"static variable {it.name} (line {it.start_line}) is not in the symbol "
                                 f"table of the running {u.object}", file=u.path)
            return _declaration(decl, self.label(it.name, "static variable"))
        return _declaration(decl, None)


def object_of(path: str, objects: list[tuple[str, str]]) -> str:
    """The object a source file is built into: the longest ``--object`` prefix, else vmlinux."""
    best = (VMLINUX, -1)
    for prefix, name in objects:
        p = prefix.rstrip("/")
        if (path == p or path.startswith(p + "/")) and len(p) > best[1]:
            best = (name, len(p))
    return best[0]
