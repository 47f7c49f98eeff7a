"""What each release's live patch declares and does: system states, callbacks and
shadow variables, found in the code the release's cumulative patch carries.

The code a release carries is every top-level item (function, declaration) whose
text differs from the base in that release: the functions the patch replaces or
adds, and the declarations (a ``struct klp_state`` array, a callback macro) it adds.
Unchanged base code is the running program, not the patch.

Recognised APIs:

* the kernel's: ``klp_shadow_alloc``, ``klp_shadow_get``, ``klp_shadow_get_or_alloc``,
  ``klp_shadow_free``, ``klp_shadow_free_all``; ``struct klp_state`` initialisers with
  ``.id``/``.version``; ``.pre_patch``/``.post_patch``/``.pre_unpatch``/``.post_unpatch``
  callback initialisers; ``klp_get_state``/``klp_get_prev_state``;
* kpatch's ``KPATCH_PRE_PATCH_CALLBACK(fn)`` ... and klp-build's
  ``KLP_PRE_PATCH_CALLBACK(fn)`` ...;
* klpcc's userspace runtime: ``klpcc_shadow_alloc(obj, id, size, ctor, ctor_data)``,
  ``klpcc_shadow_get_or_alloc`` (same arguments), ``klpcc_shadow_get(obj, id)``,
  ``klpcc_shadow_free(obj, id, dtor)``, ``klpcc_shadow_free_all(id, dtor)``,
  ``KLPCC_STATE(id, version)``, ``KLPCC_PRE_PATCH(fn)`` ... ``KLPCC_POST_UNPATCH(fn)``,
  ``klpcc_get_state(id)``, ``klpcc_get_prev_state(id)``.
"""

from __future__ import annotations

import ast
import operator
import posixpath
import re
from bisect import bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from ..c import CSource, Item, fingerprint, is_c_file, mask, split_lines
from ..history import ADDED, MODIFIED, Replay, item_key
from ..trees import blob_id

if TYPE_CHECKING:
    from .layout import Layouts

CALLBACK_KINDS = ("pre_patch", "post_patch", "pre_unpatch", "post_unpatch")
ALLOCATING = ("alloc", "get_or_alloc")

Id = int | str  # a resolved number, or the normalised text when it cannot be resolved


@dataclass(frozen=True, slots=True)
class Site:
    """A place in the source of a release."""

    release: int  # 1-based
    file: str
    line: int
    function: str | None = None
    in_tree: bool = True  # a file of the source tree (not klpcc.toml)


@dataclass(frozen=True, slots=True)
class StateDecl:
    id: Id
    version: int
    site: Site
    origin: str = "code"  # or "klpcc.toml"
    label: str = ""  # the id as written, when it is not a plain number

    @property
    def shown(self) -> str:
        return show_id(self.id, self.label)


@dataclass(frozen=True, slots=True)
class CallbackDecl:
    kind: str  # one of CALLBACK_KINDS
    function: str
    site: Site
    effects: tuple[str, ...] = ()  # what the callback does beyond logging (for post_patch)
    fingerprint: str | None = None
    origin: str = "code"


@dataclass(frozen=True, slots=True)
class ShadowUse:
    op: str  # alloc, get_or_alloc, get, free, free_all
    id: Id
    site: Site
    type: str | None = None  # "struct foo", "int", ...
    layout: str | None = None  # the type's definition, reduced (text comparison)
    size: str | None = None  # the size argument as written
    ctor: str | None = None
    dtor: str | None = None
    teardown: bool = False  # in module_exit/__exit/destructor code
    origin: str = "code"
    label: str = ""  # the id as written, when it is not a plain number
    exact: str | None = None  # the type's layout from the compiler, where build flags are known

    @property
    def shown(self) -> str:
        return show_id(self.id, self.label)


def show_id(value: Id, label: str) -> str:
    if label and label != str(value) and isinstance(value, int):
        return f"{label} ({value})"
    return str(value)


@dataclass
class ReleaseFacts:
    release: int
    name: str
    states: list[StateDecl] = field(default_factory=list)
    callbacks: list[CallbackDecl] = field(default_factory=list)
    shadows: list[ShadowUse] = field(default_factory=list)
    state_queries: list[tuple[str, Id, Site]] = field(default_factory=list)  # (get|get_prev, id, site)

    def state(self, sid: Id) -> StateDecl | None:
        return next((s for s in self.states if s.id == sid), None)

    def has_callbacks(self) -> bool:
        return bool(self.callbacks)

    def to_json(self) -> dict:
        def where(site: Site) -> dict:
            return {"file": site.file, "line": site.line, "function": site.function}

        return {
            "states": [{"id": s.id, "version": s.version, **where(s.site), "origin": s.origin}
                       for s in self.states],
            "callbacks": [{"kind": c.kind, "callback": c.function, **where(c.site),
                           "effects": list(c.effects), "origin": c.origin} for c in self.callbacks],
            "shadow": [{"op": u.op, "id": u.id, "type": u.type, "size": u.size, "ctor": u.ctor,
                        "dtor": u.dtor, "teardown": u.teardown, "layout": u.exact,
                        **where(u.site), "origin": u.origin}
                       for u in self.shadows],
        }


# --------------------------------------------------------------------------- text helpers


def balanced(text: str, open_at: int) -> int:
    """Index just past the bracket that closes the one at ``open_at``, or -1."""
    pairs = {"(": ")", "[": "]", "{": "}"}
    stack: list[str] = []
    for i in range(open_at, len(text)):
        c = text[i]
        if c in pairs:
            stack.append(pairs[c])
        elif stack and c == stack[-1]:
            stack.pop()
            if not stack:
                return i + 1
    return -1


def split_args(text: str, sep: str = ",") -> list[str]:
    """Top-level ``sep``-separated parts of ``text`` (an argument or initialiser list;
    with ``;``, the members of a struct body)."""
    out, depth, cur = [], 0, []
    for c in text:
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        if c == sep and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(c)
    last = "".join(cur).strip()
    if last or out:
        out.append(last)
    return out


def norm(text: str) -> str:
    """Whitespace-normalised C text: ``struct  foo *`` and ``struct foo*`` agree."""
    text = re.sub(r"\s+", " ", text.strip())
    text = re.sub(r"\s*([*()\[\],])\s*", r"\1", text)
    return text


# --------------------------------------------------------------------------- constants

_BINOPS: dict[type, Callable[[int, int], int]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
    ast.LShift: lambda a, b: a << _small(b),
    ast.RShift: operator.rshift, ast.BitOr: operator.or_, ast.BitAnd: operator.and_,
    ast.BitXor: operator.xor,
}
_INT = re.compile(r"\b(0[xX][0-9a-fA-F]+|[0-9]+)[uUlL]*\b")
_DEFINE = re.compile(r"^[ \t]*#[ \t]*define[ \t]+([A-Za-z_]\w*)(?![(\w])[ \t]*(.*?)[ \t]*$", re.M)
_ENUM = re.compile(r"\benum\b[^{;()]*\{([^{}]*)\}")
_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"([^"]+)"', re.M)


def _small(shift: int) -> int:
    if not 0 <= shift < 128:
        raise ValueError("shift out of range")
    return shift


def _c_int(lit: str) -> int:
    if len(lit) > 40:
        raise ValueError("literal too long")
    if lit[:2].lower() == "0x":
        return int(lit, 16)
    if len(lit) > 1 and lit[0] == "0":
        return int(lit, 8) if set(lit) <= set("01234567") else int(lit)
    return int(lit)


def _eval_int(expr: str) -> int | None:
    """Value of an integer constant expression with only numbers and operators."""
    if len(expr) > 2000:
        return None
    try:
        expr = _INT.sub(lambda m: str(_c_int(m.group(1))), expr)
    except ValueError:
        return None
    expr = re.sub(r"\(\s*(?:unsigned\s+)?(?:long\s+)*(?:int|long|short|char)?\s*\)", "", expr)
    expr = expr.replace("/", "//").replace("////", "//")
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None

    def ev(node: ast.AST) -> int:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd, ast.Invert)):
            v = ev(node.operand)
            return -v if isinstance(node.op, ast.USub) else (~v if isinstance(node.op, ast.Invert) else v)
        raise ValueError
    try:
        value = ev(tree)
    except (ValueError, ZeroDivisionError, OverflowError, RecursionError):
        return None
    return value if -(1 << 64) < value < (1 << 64) else None  # ids are unsigned long


class Constants:
    """Object-like macros and enum constants visible in one file of one release: its
    own, and those of the headers it includes with quotes (looked up beside it and
    under ``include/``)."""

    def __init__(self, texts: list[str]):
        self.values: dict[str, str] = {}
        self._memo: dict[str, str] = {}
        for text in texts:
            for m in _DEFINE.finditer(text):
                self.values.setdefault(m.group(1), m.group(2))
        for text in texts:
            for m in _ENUM.finditer(text):
                nxt: int | None = 0
                for part in split_args(m.group(1)):
                    lines = part.splitlines()
                    code = [ln for ln in lines if not ln.lstrip().startswith("#")]
                    if len(code) != len(lines):
                        nxt = None  # an #if inside the enum: later implicit values are unknown
                    name, _, value = "\n".join(code).partition("=")
                    name = name.strip()
                    if not re.fullmatch(r"[A-Za-z_]\w*", name):
                        continue
                    if value.strip():
                        self.values.setdefault(name, value.strip())
                        v = self.resolve(value.strip())
                        nxt = v + 1 if isinstance(v, int) else 0
                    elif nxt is not None:
                        self.values.setdefault(name, str(nxt))
                        nxt += 1
        self._memo.clear()  # enum constants were resolved while others were still coming

    def resolve(self, text: str) -> Id:
        """The value of ``text``: a number where it can be computed from literals,
        macros and enum constants, else its normalised text as written."""
        text = norm(text)
        value = _eval_int(self._expand(text, 0))
        return value if value is not None else text

    def _expand(self, text: str, depth: int) -> str:
        """``text`` with the macros it names replaced by their expansions; cycles and
        runaway growth leave the name unexpanded."""
        def one(m: re.Match[str]) -> str:
            name = m.group(0)
            if name not in self.values or depth > 16:
                return name
            if name not in self._memo:
                self._memo[name] = name  # while expanding: a cycle stays a name
                full = self._expand(self.values[name], depth + 1)
                self._memo[name] = f"({full})" if len(full) <= 4096 else name
            return self._memo[name]
        return re.sub(r"\b[A-Za-z_]\w*\b", one, text)


# --------------------------------------------------------------------------- extraction

_SHADOW = re.compile(r"\b(klp|klpcc)_shadow_(alloc|get_or_alloc|get|free_all|free)\s*\(")
_STATE_QUERY = re.compile(r"\b(klp|klpcc)_get_(prev_)?state\s*\(")
_STATE_ARRAY = re.compile(r"\bstruct\s+klp_state\b[^;={]*?(?:\[[^\]]*\])?\s*(?:\)\s*)?=?\s*\{")
_STATE_MACRO = re.compile(r"\bKLPCC_STATE\s*\(")
_NO_FUNCTION = frozenset({"NULL", "nullptr", "0"})
_DESIGNATED_CB = re.compile(r"\.(pre_patch|post_patch|pre_unpatch|post_unpatch)\s*=\s*&?\s*(\w+)")
_CB_MACRO = re.compile(r"\b(?:KPATCH|KLP|KLPCC)_(PRE|POST)_(UNPATCH|PATCH)(?:_CALLBACK)?"
                       r"\s*\(\s*&?\s*(\w+)")
_SCALAR_START = ("char", "short", "int", "long", "unsigned", "signed", "float", "double", "void",
                 "_Bool", "bool", "const char", "u8", "u16", "u32", "u64", "s8", "s16", "s32", "s64")
_INTERESTING = re.compile(r"klp|KLP|KPATCH|_patch\b|_unpatch\b")
_INTERESTING_BYTES = re.compile(_INTERESTING.pattern.encode())
_MODULE_EXIT = re.compile(r"\bmodule_exit\s*\(\s*([A-Za-z_]\w*)\s*\)")
_TEARDOWN_ATTR = re.compile(r"\b__exit\b|__attribute__\s*\(\(\s*destructor\b")
_LOGGING = re.compile(r"^(?:pr_\w+|printk|printf|fprintf|dprintf|syslog|dev_\w+|klpcc_log\w*|"
                      r"puts|fputs|WARN\w*|BUG_ON)$")
_TYPE_WORDS = r"(?:(?:const|volatile|unsigned|signed|struct|union|enum)\s++)*+[A-Za-z_]\w*+"


def _line_at(text: str, pos: int) -> int:
    return text.count("\n", 0, pos)


_C_TYPES = frozenset("char short int long float double _Bool bool unsigned signed".split())
_QUALIFIERS = re.compile(r"\b(?:const|volatile|restrict|__restrict)\b\s*")
_NOT_TYPES = frozenset({"return", "sizeof", "else", "case", "goto", "do"})


def _clean_type(t: str | None) -> str | None:
    """A type name without qualifiers; None for no type or ``void`` (unknown)."""
    if t is None:
        return None
    t = norm(_QUALIFIERS.sub("", t))
    if not t or t == "void" or t.split()[-1] in _NOT_TYPES:
        return None
    return t


def _sizeof_type(size: str, body: str) -> str | None:
    """The type ``sizeof(...)`` measures: a type named, the type of a variable, or
    the pointee of ``*p``."""
    m = re.fullmatch(r"sizeof\s*\(?\s*\*\s*([A-Za-z_]\w*)\s*\)?", size.strip())
    if m:
        return _declared_type(m.group(1), body, pointer=True)
    m = re.fullmatch(r"sizeof\s*\(\s*(" + _TYPE_WORDS + r")\s*\)", size.strip())
    if m:
        word = m.group(1)
        if " " not in word and word not in _C_TYPES:  # a lone word: a variable, or a typedef
            declared = _declared_type(word, body, pointer=False)
            if declared is not None or re.search(r"\b" + re.escape(word) + r"\s*[;=,\[]", body):
                return declared
        return _clean_type(word)
    return None


def _declared_type(var: str, body: str, pointer: bool = True) -> str | None:
    """The type ``var`` is declared with in ``body``: the pointee type of ``T *var``
    (``pointer``), or ``T`` of ``T var``."""
    star = r"\s*\*\s*" if pointer else r"\s+"
    for m in re.finditer(star + re.escape(var) + r"\b(?!\s*\()", body):
        # the type words just before: looked for in a short window, so the cost stays linear
        window = body[max(0, m.start() - 120):m.start()]
        t = re.search(r"(?<![\w.>])(" + _TYPE_WORDS + r")$", window)
        if t is not None:
            return _clean_type(t.group(1))
    return None


def _get_type(text: str, call_at: int, body: str) -> str | None:
    """Type the result of a shadow get/alloc at ``call_at`` is used as: a cast, a
    declaration it initialises, or the declared type of the variable it is assigned to."""
    before = text[max(0, call_at - 200):call_at]
    m = re.search(r"\(\s*(" + _TYPE_WORDS + r")\s*\*\s*\)\s*$", before)
    if m:
        return _clean_type(m.group(1))
    m = re.search(r"(" + _TYPE_WORDS + r")\s*\*\s*[A-Za-z_]\w*\s*=\s*$", before)
    if m:
        return _clean_type(m.group(1))
    m = re.search(r"(?<![\w.>])([A-Za-z_]\w*)\s*=\s*$", before)
    if m:
        return _declared_type(m.group(1), body)
    return None


class _Local:
    """One version of one file on its own; its C items are parsed on first use."""

    def __init__(self, x: Extractor, path: str, data: bytes, blob: str):
        self._x = x
        self.path = path
        self.data = data
        self.blob = blob
        self.text = data.decode("utf-8", "surrogateescape")
        self.masked = mask(self.text)
        self.ascii = self.text.isascii()
        self.includes = [m.group(1) for m in _INCLUDE.finditer(self.text)]
        self.exits = frozenset(_MODULE_EXIT.findall(self.masked))
        self.mentions_api = _INTERESTING.search(self.masked) is not None

    @cached_property
    def items(self) -> list[Item]:
        return self._x.items(self.path, self.data)

    @cached_property
    def api_items(self) -> list[Item]:
        """The items whose code names a livepatch API at all."""
        if not self.mentions_api:
            return []
        return [it for it in self.items if _INTERESTING.search(self.masked[slice(*self.span(it))])]

    @cached_property
    def _extra(self) -> tuple[list[int], list[int]]:
        """For a non-ASCII file: byte offsets just past each multi-byte character, and
        how many bytes more than characters the text has up to there."""
        ends: list[int] = []
        extra: list[int] = []
        pos = total = 0
        for ch in self.text:
            n = len(ch.encode("utf-8", "surrogateescape")) if ch > "\x7f" else 1
            pos += n
            if n > 1:
                total += n - 1
                ends.append(pos)
                extra.append(total)
        return ends, extra

    def span(self, it: Item) -> tuple[int, int]:
        """The item's byte offsets as offsets into the decoded text."""
        if self.ascii:
            return it.start_byte, it.end_byte
        ends, extra = self._extra

        def char(b: int) -> int:
            i = bisect_right(ends, b) - 1
            return b - (extra[i] if i >= 0 else 0)
        return char(it.start_byte), char(it.end_byte)


class _FileView:
    """A file as one release has it, with the constants and types of the headers it
    includes (computed on first use)."""

    def __init__(self, loc: _Local, headers: list[_Local]):
        self.key = (loc.path, loc.blob, tuple((h.path, h.blob) for h in headers))
        self.loc = loc
        self.headers = headers
        self.path = loc.path
        self.text = loc.text
        self.masked = loc.masked
        self.ascii = loc.ascii
        self.exits = loc.exits

    @property
    def items(self) -> list[Item]:
        return self.loc.items

    @property
    def api_items(self) -> list[Item]:
        return self.loc.api_items

    @cached_property
    def constants(self) -> Constants:
        return Constants([self.loc.masked, *(h.masked for h in self.headers)])

    @cached_property
    def _types(self) -> tuple[dict[str, str], dict[str, str]]:
        types: dict[str, str] = {}
        aliases: dict[str, str] = {}
        _collect_types(self.loc.items, self.loc.data, types, self.constants, aliases)
        for h in self.headers:
            if is_c_file(h.path):
                _collect_types(h.items, h.data, types, self.constants, aliases)
        return types, aliases

    @property
    def types(self) -> dict[str, str]:
        """"struct foo" / typedef name -> layout key of its definition."""
        return self._types[0]

    @property
    def aliases(self) -> dict[str, str]:
        """typedef name -> the tagged type it stands for (``foo_t`` -> ``struct foo``)."""
        return self._types[1]


class Extractor:
    """Facts of every release of a replay (all releases must have been kept)."""

    def __init__(self, rep: Replay, layouts: Layouts | None = None):
        self.rep = rep
        self.layouts = layouts
        self._views: dict[tuple[str, int], _FileView | None] = {}
        self._items: dict[tuple[str, str], list[Item]] = {}
        self._locals: dict[tuple[str, str], _Local] = {}
        self._combined: dict[tuple, _FileView] = {}
        self._base: dict[str, bytes | None] = {}
        self._mentions_api: dict[tuple[str, str | None], bool] = {}

    def items(self, path: str, data: bytes) -> list[Item]:
        """The C items of one version of a file (parsed once per content)."""
        key = (path, blob_id(data))
        if key not in self._items:
            src = self.rep.sources.get(path)  # the replay's parse of the last release
            if src is not None and src.data == data:
                self._items[key] = src.items()
            else:
                self._items[key] = CSource(path, split_lines(data)).items()
        return self._items[key]

    # -- files -----------------------------------------------------------------

    def read(self, path: str, release: int) -> bytes | None:
        try:
            return self.rep.snapshots.read(path, release)
        except KeyError:
            if path not in self._base:
                self._base[path] = self.rep.base.read(path)
            return self._base[path]

    def _header(self, including: str, name: str, release: int) -> tuple[str, bytes] | None:
        for cand in (posixpath.normpath(posixpath.join(posixpath.dirname(including), name)),
                     posixpath.normpath(posixpath.join("include", name)), posixpath.normpath(name)):
            if cand.startswith(".."):
                continue
            data = self.read(cand, release)
            if data is not None:
                return cand, data
        return None

    def _local(self, path: str, data: bytes) -> _Local:
        """What one version of one file says on its own (once per content)."""
        key = (path, blob_id(data))
        loc = self._locals.get(key)
        if loc is None:
            loc = _Local(self, path, data, key[1])
            self._locals[key] = loc
        return loc

    def view(self, path: str, release: int) -> _FileView | None:
        """The file as ``release`` has it, with the headers it includes (cached per
        combination of contents)."""
        key = (path, release)
        if key in self._views:
            return self._views[key]
        data = self.read(path, release)
        if data is None:
            self._views[key] = None
            return None
        loc = self._local(path, data)
        headers: list[_Local] = []
        seen = {path}
        queue = list(loc.includes)
        while queue and len(seen) < 40:
            found = self._header(path, queue.pop(0), release)
            if found is None or found[0] in seen:
                continue
            seen.add(found[0])
            hloc = self._local(found[0], found[1])
            headers.append(hloc)
            queue.extend(hloc.includes)
        combined = (path, loc.blob, tuple((h.path, h.blob) for h in headers))
        v = self._combined.get(combined)
        if v is None:
            v = _FileView(loc, headers)
            self._combined[combined] = v
        self._views[key] = v
        return v

    # -- the patch's code ------------------------------------------------------

    def patched_items(self, release: int, only_api: bool = False) -> Iterator[tuple[_FileView, Item]]:
        """Every item the cumulative patch of ``release`` carries, with its file (with
        ``only_api``, those whose code names a livepatch API at all)."""
        for path in self.rep.snapshots.paths():
            if not is_c_file(path):
                continue
            try:
                blob = self.rep.snapshots.blob_at(path, release)
                if blob == self.rep.snapshots.blob_at(path, 0):
                    continue
            except KeyError:
                continue
            if only_api:
                mentions = self._mentions_api.get((path, blob))
                if mentions is None:
                    data = self.read(path, release)
                    mentions = data is not None and _INTERESTING_BYTES.search(data) is not None
                    self._mentions_api[(path, blob)] = mentions
                if not mentions:
                    continue
            v = self.view(path, release)
            if v is None:
                continue
            for it in (v.api_items if only_api else v.items):
                key = item_key(path, it)
                track = self.rep.functions.get(key) if it.kind == "function" else self.rep.outside.get(key)
                if track is not None and track.state(release) in (MODIFIED, ADDED):
                    yield v, it

    def facts(self, release: int) -> ReleaseFacts:
        rf = ReleaseFacts(release, self.rep.releases[release - 1])
        for v, it in self.patched_items(release, only_api=True):
            self._scan(v, it, release, rf)
        return rf

    def _scan(self, v: _FileView, it: Item, release: int, rf: ReleaseFacts) -> None:
        text = v.masked
        lo, hi = char_span(v, it)
        body = text[lo:hi]
        if it.kind in ("prototype", "macro"):
            return  # a declaration of the API, or a wrapper macro: not a use
        fn = it.name if it.kind == "function" else None
        whole = body
        teardown = fn is not None and (fn in v.exits or bool(_TEARDOWN_ATTR.search(body[:body.find("{")])))
        params: set[str] = set()
        if fn is not None:  # the body only: the head declares, it does not call
            brace = body.find("{")
            params = set(re.findall(r"([A-Za-z_]\w*)\s*[,)]", body[:brace] if brace >= 0 else body))
            lo, body = (lo + brace, body[brace:]) if brace >= 0 else (lo, "")

        def site(pos: int) -> Site:
            return Site(release, v.path, _line_at(text, lo + pos) + 1, fn)

        for m in _SHADOW.finditer(body):
            end = balanced(body, m.end() - 1)
            if end < 0:
                continue
            args = split_args(body[m.end():end - 1])
            api, op = m.group(1), m.group(2)
            use = self._shadow_use(api, op, args, body, m.start(), whole, v, site(m.start()), teardown)
            if use is not None and not (isinstance(use.id, str) and use.id in params):
                rf.shadows.append(use)  # (an id that is a parameter: a wrapper, not a use)
        for m in _STATE_QUERY.finditer(body):
            end = balanced(body, m.end() - 1)
            args = split_args(body[m.end():end - 1]) if end > 0 else []
            # klp_get_state(patch, id); klp_get_prev_state(id); klpcc_get_*state(id)
            at = 1 if m.group(1) == "klp" and not m.group(2) else 0
            if len(args) > at:
                rf.state_queries.append(("get_prev" if m.group(2) else "get",
                                         v.constants.resolve(args[at]), site(m.start())))
        for m in _STATE_ARRAY.finditer(body):
            end = balanced(body, m.end() - 1)
            if end > 0:
                self._states(body[m.end():end - 1], m.end(), v, site, rf)
        for m in _STATE_MACRO.finditer(body):
            end = balanced(body, m.end() - 1)
            args = split_args(body[m.end():end - 1]) if end > 0 else []
            if len(args) == 2:
                version = v.constants.resolve(args[1])
                if isinstance(version, int):
                    rf.states.append(StateDecl(v.constants.resolve(args[0]), version, site(m.start()),
                                               label=norm(args[0])))
        for m in _DESIGNATED_CB.finditer(body):
            if m.group(2) not in _NO_FUNCTION:
                rf.callbacks.append(self._callback(m.group(1), m.group(2), v, site(m.start())))
        for m in _CB_MACRO.finditer(body):
            kind = f"{m.group(1).lower()}_{m.group(2).lower()}"
            if m.group(3) not in _NO_FUNCTION:
                rf.callbacks.append(self._callback(kind, m.group(3), v, site(m.start())))

    def _states(self, inner: str, offset: int, v: _FileView, site: Callable[[int], Site],
                rf: ReleaseFacts) -> None:
        pos = 0
        for part in split_args(inner):
            at = inner.find(part, pos)
            pos = at + len(part)
            if not part.startswith("{"):
                continue
            fields = split_args(part.strip()[1:-1])
            sid = version = None
            label = ""
            positional = [f for f in fields if f and not f.startswith(".")]
            for f in fields:
                m = re.match(r"\.(id|version)\s*=\s*(.+)$", f, re.S)
                if m and m.group(1) == "id":
                    sid = v.constants.resolve(m.group(2))
                    label = norm(m.group(2))
                elif m:
                    version = v.constants.resolve(m.group(2))
            if sid is None and positional:
                sid = v.constants.resolve(positional[0])
                label = norm(positional[0])
                if len(positional) > 1:
                    version = v.constants.resolve(positional[1])
            if sid is None:
                continue  # the {} terminator
            rf.states.append(StateDecl(sid, version if isinstance(version, int) else 0,
                                       site(offset + at), label=label))

    def _callback(self, kind: str, function: str, v: _FileView, where: Site) -> CallbackDecl:
        effects: list[str] = []
        fp = None
        for it in v.items:
            if it.kind == "function" and it.name == function:
                lo, hi = char_span(v, it)
                body = v.masked[lo:hi]
                fp = it.fingerprint
                effects = _effects(body[body.find("{") + 1:body.rfind("}")])
                break
        return CallbackDecl(kind, function, where, tuple(effects), fp)

    def _shadow_use(self, api: str, op: str, args: list[str], body: str, at: int, whole: str,
                    v: _FileView,
                    where: Site, teardown: bool) -> ShadowUse | None:
        if op == "free_all":
            if len(args) < 1:
                return None
            return ShadowUse(op, v.constants.resolve(args[0]), where,
                             dtor=_fn_arg(args[1]) if len(args) > 1 else None, teardown=teardown,
                             label=norm(args[0]))
        if len(args) < 2:
            return None
        sid = v.constants.resolve(args[1])
        if op == "free":
            return ShadowUse(op, sid, where, dtor=_fn_arg(args[2]) if len(args) > 2 else None,
                             teardown=teardown, label=norm(args[1]))
        typ = _get_type(body, at, whole)
        size = None
        ctor = None
        if op in ALLOCATING and len(args) >= 3:
            size = norm(args[2])
            typ = _sizeof_type(args[2], whole) or typ
            ctor_at = 4 if api == "klp" else 3
            ctor = _fn_arg(args[ctor_at]) if len(args) > ctor_at else None
        if typ is not None:
            typ = v.aliases.get(typ, typ)
        layout = v.types.get(typ) if typ else None
        exact = None
        if typ and self.layouts is not None and not typ.startswith(_SCALAR_START):
            found = self.layouts.layout(where.release, v.path, typ, key=v.key)
            exact = found.key() if found is not None else None
        return ShadowUse(op, sid, where, typ, layout, size, ctor, None, teardown, label=norm(args[1]),
                         exact=exact)


def layout_key(text: str, constants: Constants) -> str:
    """A type definition reduced to what decides its layout: tokens without comments,
    with integer constants (``char key[KEY_MAX]``) replaced by their values."""
    def value(m: re.Match[str]) -> str:
        word = m.group(0)
        if word in constants.values:
            v = constants.resolve(word)
            if isinstance(v, int):
                return str(v)
        return word
    expanded = re.sub(r"\b[A-Za-z_]\w*\b", value, mask(text))
    open_at, close_at = expanded.find("{"), expanded.rfind("}")
    if open_at < 0 or close_at < open_at or \
            not re.match(r"\s*(?:typedef\s+)?(?:struct|union)\b", expanded):
        return type_fingerprint(expanded)
    members = _members(expanded[open_at + 1:close_at])
    return type_fingerprint(expanded[:open_at].split()[0] + "{" + members + "}")


# integer types by size (x86_64): a member whose type changes within one of these
# groups (u8 for unsigned char, s16 for u16) keeps the layout
_INT_SIZES = {
    **dict.fromkeys("char signed_char unsigned_char u8 s8 __u8 __s8 uint8_t int8_t".split(), "i1"),
    **dict.fromkeys("short unsigned_short signed_short short_int unsigned_short_int u16 s16 __u16 __s16 "
                    "__le16 __be16 uint16_t int16_t".split(), "i2"),
    **dict.fromkeys("int unsigned signed unsigned_int signed_int u32 s32 __u32 __s32 __le32 __be32 "
                    "uint32_t int32_t".split(), "i4"),
    **dict.fromkeys("long unsigned_long signed_long long_int unsigned_long_int long_long unsigned_long_long "
                    "u64 s64 __u64 __s64 __le64 __be64 uint64_t int64_t size_t ssize_t loff_t ktime_t "
                    "uintptr_t".split(), "i8"),
}
_MEMBER_QUALIFIERS = frozenset({"const", "volatile", "__rcu", "__iomem", "__user", "__percpu", "__force",
                                "register",
                         "restrict", "__restrict"})


def _members(body: str) -> str:
    """The members of a struct or union body, each reduced to what decides its place
    and size: names dropped, any pointer a pointer (function pointers too), qualifiers
    dropped, integer types by size; array bounds, bit-field widths and attributes kept."""
    return ";".join(x for x in map(_member, split_args(body, ";")) if x)


def _member(decl: str) -> str:
    decl = decl.strip()
    if not decl:
        return ""
    if "{" in decl:  # a nested struct or union: its members, then its declarators' shapes
        o, c = decl.find("{"), decl.rfind("}")
        rest = re.sub(r"[A-Za-z_]\w*", "", decl[c + 1:])
        return decl[:o].split()[0] + "{" + _members(decl[o + 1:c]) + "}" + "".join(rest.split())
    toks = [t for t in re.findall(r"[A-Za-z_]\w*|\d+|\S", decl) if t not in _MEMBER_QUALIFIERS]
    if "(" in toks and "*" in toks[toks.index("("):]:  # int (*fn)(void)
        return "ptr"
    # declarators: split at top-level commas; the base type is what the first one starts with
    parts, depth, cur = [], 0, []
    for t in toks:
        depth += t in "([" and 1 or 0
        depth -= t in ")]" and 1 or 0
        if t == "," and depth == 0:
            parts.append(cur)
            cur = []
        else:
            cur.append(t)
    parts.append(cur)
    first = parts[0]
    stop = next((i for i, t in enumerate(first) if t in ("*", "[", ":")), len(first))
    words = [t for t in first[:stop] if re.fullmatch(r"[A-Za-z_]\w*", t)
             and (not t.startswith("__") or t in _INT_SIZES)]
    base_words = words[:-1] if len(words) > 1 else words
    base = "_".join(w for w in base_words if w not in ("struct", "union", "enum")) or "?"
    if base_words and base_words[0] in ("struct", "union", "enum"):
        base = base_words[0] + " " + base
    base = _INT_SIZES.get(base.replace("_int", "") if base not in _INT_SIZES else base, base)
    if base in ("bool", "_Bool"):
        base = "b1"
    shapes = []
    for i, part in enumerate(parts):
        tail = part[stop:] if i == 0 else part
        shape = "ptr" if "*" in tail[: tail.index("[") if "[" in tail else len(tail)] else base
        dims = re.findall(r"\[[^\]]*\]", " ".join(tail).replace(" ", ""))
        width = "".join(tail[tail.index(":"):]) if ":" in tail else ""
        attrs = [t for t in part if t.startswith("__") and t not in _MEMBER_QUALIFIERS
                 and t != "__attribute__"
                 and not t.startswith("__u") and not t.startswith("__s") and not t.startswith("__le")
                 and not t.startswith("__be")]
        shapes.append(shape + "".join(dims) + width + "".join(f"@{a}" for a in attrs))
    return ",".join(shapes)


def _collect_types(items: list[Item], data: bytes, types: dict[str, str], constants: Constants,
                   aliases: dict[str, str]) -> None:
    for it in items:
        body = data[it.start_byte:it.end_byte].decode("utf-8", "surrogateescape")
        if it.kind == "type":
            if "{" in body:  # not a forward declaration
                types.setdefault(it.name, layout_key(body, constants))
        elif it.kind == "typedef":
            key = layout_key(body, constants)
            for name in it.name.split(", "):
                types.setdefault(name, key)
            m = re.match(r"\s*typedef\s+(struct|union|enum)\s+([A-Za-z_]\w*)\s*\{", body)
            if m:
                types.setdefault(f"{m.group(1)} {m.group(2)}", key)
            m = re.match(r"\s*typedef\s+(struct|union|enum)\s+([A-Za-z_]\w*)\b", mask(body))
            if m:  # the typedef names stand for the tagged type
                for name in it.name.split(", "):
                    if re.fullmatch(r"[A-Za-z_]\w*", name) and not re.search(
                            r"\*\s*" + re.escape(name) + r"\b", body):
                        aliases.setdefault(name, f"{m.group(1)} {m.group(2)}")


def _fn_arg(text: str) -> str | None:
    t = norm(text).lstrip("&")
    if t in ("NULL", "0", "((void*)0)", "nullptr"):
        return None
    return t


def char_span(v: _FileView, it: Item) -> tuple[int, int]:
    """Item byte offsets as offsets into the decoded text."""
    return v.loc.span(it)


_DECLARATION = re.compile(r"(?:(?:const|volatile|static|unsigned|signed|struct|union|enum|long|short)\s+)*"
                          r"[A-Za-z_]\w*(?:\s+|\s*\*+\s*)[A-Za-z_]\w*\s*(?:\[[^\]]*\])?\s*(?:=.*)?")


def _effects(body: str) -> list[str]:
    """Statements of a callback body that do more than log, return or declare locals."""
    out = []
    for stmt in re.split(r"[;{}]", body):
        s = norm(stmt)
        if not s:
            continue
        call = re.match(r"([A-Za-z_]\w*)\s*\(", s)
        if call and (_LOGGING.match(call.group(1)) or call.group(1) in ("if", "while", "for", "switch")):
            continue
        if re.fullmatch(r"(?:return\b.*|break|continue|else|default:?|case\b.*)", s):
            continue
        if _DECLARATION.fullmatch(s) and not s.startswith(("return", "goto")):
            continue  # a local variable, initialised or not
        s = re.sub(r"\"\s*\"", '"..."', s)
        out.append(s if len(s) <= 60 else s[:57] + "...")
    return out


def type_fingerprint(text: str) -> str:
    return fingerprint(text.encode())
