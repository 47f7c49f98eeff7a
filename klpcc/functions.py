"""Stage 4: locate C functions and other top-level items, and fingerprint them.

Source is parsed without preprocessing by tree-sitter-c.  Each top-level *item*
(a function definition, a macro, a type, a global, an include, a conditional
directive, ...) gets a kind, a name, a span and a fingerprint of its tokens that
ignores comments and whitespace.  Items inside ``#if``/``#ifdef`` branches are
found too: a function defined once per branch is one function with several
variants.

A :class:`CSource` is parsed once and then kept in step with line edits through
tree-sitter's incremental parser; :meth:`CSource.edit` returns only the items an
edit can have changed, before and after, so the cost of following a series grows
with the size of its diffs rather than with the size of the files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from bisect import bisect_right
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate

import tree_sitter_c
from tree_sitter import Language, Node, Parser, Tree

C_LANGUAGE = Language(tree_sitter_c.language())

#: File suffixes treated as C source.
C_SUFFIXES = (".c", ".h")

# Annotations that sit between the specifiers and the declarator of real kernel and
# userspace definitions (section placement, sparse and compiler attributes).  Without
# a preprocessor tree-sitter cannot know they expand to nothing, and they derail its
# parse of the definition around them; they are blanked out (same length, so every
# byte offset stays valid) before parsing.  Fingerprints are taken from the original
# bytes, so changing an annotation still changes the fingerprint.
ANNOTATION_WORDS = (
    "__init", "__exit", "__initdata", "__exitdata", "__initconst", "__ref", "__refdata",
    "__meminit", "__meminitdata", "__init_or_module", "__initdata_or_module",
    "__net_init", "__net_exit", "__net_initdata", "__cold", "__hot", "__weak", "__pure",
    "__noreturn", "__always_inline", "noinline", "__noinline", "__maybe_unused",
    "__always_unused", "__used", "__visible", "asmlinkage", "notrace", "noinstr",
    "__sched", "__kprobes", "nokprobe_inline", "__latent_entropy", "__must_check",
    "__user", "__kernel", "__iomem", "__rcu", "__percpu", "__force", "__bitwise",
    "__read_mostly", "__ro_after_init", "__cacheline_aligned",
    "__cacheline_aligned_in_smp", "____cacheline_aligned",
    "____cacheline_aligned_in_smp", "__packed", "__naked", "__flatten", "__cpuidle",
    "__irq_entry", "__softirq_entry", "__no_kcsan", "__no_sanitize_address", "__nocfi",
    "__randomize_layout", "__nonstring", "__deprecated", "__gnu_inline", "__malloc",
    "__attribute_const__", "__lockfunc", "__always_used", "__init_memblock",
    "__initdata_memblock", "fastcall", "__safe", "__noclone", "__no_stack_protector",
    "__noinstr_section", "__nostackprotector",
)
ANNOTATION_CALLS = (
    "__printf", "__scanf", "__acquires", "__releases", "__must_hold", "__section",
    "__aligned", "__alloc_size", "__cond_acquires", "__cond_releases",
    "__assume_aligned", "__counted_by", "__nonnull", "__diag_ignore", "__free",
    "__guarded_by", "__no_sanitize_or_inline", "__realloc_size", "TARGET_ATTRIBUTE",
)

_WORD_RE = "|".join(re.escape(w) for w in ANNOTATION_WORDS)
_CALL_RE = "|".join(re.escape(w) for w in ANNOTATION_CALLS)
_MASK = re.compile(
    rf"\b(?:{_CALL_RE})[ \t]*\((?:[^()\n]|\([^()\n]*\))*\)|\b(?:{_WORD_RE})\b".encode()
)


def mask_annotations(data: bytes) -> bytes:
    """Blank out well-known annotation macros, keeping every byte offset."""
    return _MASK.sub(lambda m: b" " * len(m.group()), data)


# Function-defining macros whose symbol name follows a known convention.
_MACRO_NAMES = (
    (re.compile(r"COMPAT_SYSCALL_DEFINE\d$"), "compat_sys_{}"),
    (re.compile(r"SYSCALL_DEFINE\d$"), "sys_{}"),
)

_CONTAINERS = frozenset(
    {"preproc_if", "preproc_ifdef", "preproc_else", "preproc_elif", "preproc_elifdef"}
)
_CONDITION_FIELDS = frozenset({"name", "condition"})
_SKIP = frozenset({"comment", ";"})
_COMMENTS = re.compile(rb"/\*.*?\*/|//[^\n]*", re.S)
_SPACE = re.compile(rb"\s+")
_CONTINUATION = re.compile(rb"\\\r?\n")


@dataclass(frozen=True, slots=True)
class Item:
    """One top-level item of a C file."""

    kind: str  # "function", "macro", "include", "type", "variable", "prototype", ...
    name: str
    static: bool
    start_byte: int
    end_byte: int
    start_line: int  # 1-based
    end_line: int  # 1-based, inclusive
    fingerprint: str
    macro: str | None = None  # the macro a macro-defined function is written with



def is_c_file(path: str) -> bool:
    return path.endswith(C_SUFFIXES)


# --------------------------------------------------------------------------- tokens


def _leaves(node: Node) -> Iterator[Node]:
    cursor = node.walk()
    depth = 0
    while True:
        current = cursor.node
        assert current is not None
        if current.child_count == 0 or current.type == "comment":
            yield current
        elif cursor.goto_first_child():
            depth += 1
            continue
        while not cursor.goto_next_sibling():
            if depth == 0:
                return
            cursor.goto_parent()
            depth -= 1


def _normalise_raw(text: bytes) -> bytes:
    text = _CONTINUATION.sub(b" ", text)
    text = _COMMENTS.sub(b" ", text)
    return _SPACE.sub(b" ", text).strip()


_PUNCTUATORS = sorted(
    "... <<= >>= -> ++ -- << >> <= >= == != && || *= /= %= += -= &= ^= |= ## <: :> <% %>".split(),
    key=len, reverse=True,
)
_TOKEN = re.compile(
    rb"//[^\n]*|/\*.*?(?:\*/|\Z)|("
    rb'"(?:\\.|[^"\\\n])*"?'  # string literal
    rb"|'(?:\\.|[^'\\\n])*'?"  # character literal
    rb"|\.?[0-9](?:[eEpP][+-]|[A-Za-z0-9_.])*"  # preprocessing number
    rb"|[A-Za-z_][A-Za-z0-9_]*"  # identifier or keyword
    + b"|" + b"|".join(re.escape(p.encode()) for p in _PUNCTUATORS)
    + rb"|\S)",
    re.S,
)


def tokens(text: bytes) -> list[bytes]:
    """C tokens of ``text`` (maximal munch), comments and whitespace dropped."""
    text = _CONTINUATION.sub(b" ", text)
    return [m for m in _TOKEN.findall(text) if m]


_FUNCTION_LIKE = re.compile(rb"\s*#\s*define\s+\w+\(")


def fingerprint(text: bytes) -> str:
    """Fingerprint of a piece of C that ignores comments and whitespace (except the
    one that tells ``#define F(x)`` from ``#define F (x)``)."""
    toks = tokens(text)
    if _FUNCTION_LIKE.match(text):
        toks.append(b"#function-like")
    return hashlib.blake2b(b"\x1f".join(toks), digest_size=12).hexdigest()


# --------------------------------------------------------------------------- naming


def _text(node: Node | None, src: bytes) -> str:
    if node is None:
        return ""
    return src[node.start_byte : node.end_byte].decode("utf-8", "replace")


def _declarator_name(node: Node | None, src: bytes) -> str | None:
    """The identifier a (possibly nested) declarator declares."""
    while node is not None:
        if node.type in ("identifier", "field_identifier", "type_identifier"):
            return _text(node, src)
        inner = node.child_by_field_name("declarator")
        if inner is None:
            # parenthesized_declarator, attributed_declarator and friends
            inner = next(
                (c for c in node.named_children if c.type not in ("attribute_specifier", "ms_call_modifier")),
                None,
            )
        node = inner
    return None


def _is_function_declarator(node: Node | None) -> bool:
    while node is not None:
        if node.type == "function_declarator":
            return True
        if node.type in ("identifier", "init_declarator"):
            return False
        node = node.child_by_field_name("declarator") or (
            node.named_children[0] if node.named_children else None
        )
    return False


def _has_static(nodes: Iterable[Node], stop_byte: int) -> bool:
    for node in nodes:
        for child in node.children:
            if child.start_byte >= stop_byte:
                break
            if child.type == "storage_class_specifier" and child.text == b"static":
                return True
            if child.type == "ERROR" and any(
                leaf.type == "static" for leaf in _leaves(child)
            ):
                return True
    return False


def _missing_semicolon(node: Node) -> bool:
    last = node.child(node.child_count - 1) if node.child_count else None
    return last is not None and last.type == ";" and last.is_missing


def _is_broken_header(node: Node) -> bool:
    """A declaration or macro call with no ``;`` of its own, which tree-sitter split
    off the definition that follows it (an unknown annotation, or a function-defining
    macro such as ``SYSCALL_DEFINE3(...)``)."""
    if node.type == "declaration":
        return _missing_semicolon(node)
    if node.type == "expression_statement":
        first = node.named_children[0] if node.named_child_count else None
        return first is not None and first.type == "call_expression" and _missing_semicolon(node)
    return False


def _macro_name(macro: str, arg: str) -> str:
    """Name of a function defined by ``macro(arg, ...) { ... }``."""
    for pattern, template in _MACRO_NAMES:
        if arg and pattern.match(macro):
            return template.format(arg)
    return arg or macro


def _macro_function_name(call: Node, src: bytes) -> tuple[str, str]:
    func = call.child_by_field_name("function")
    macro = _text(func, src)
    args = call.child_by_field_name("arguments")
    first = args.named_children[0] if args is not None and args.named_child_count else None
    arg = _text(first, src) if first is not None and first.type == "identifier" else ""
    return _macro_name(macro, arg), macro


# --------------------------------------------------------------------------- items


def _lines(nodes: Sequence[Node]) -> tuple[int, int]:
    start = nodes[0].start_point.row + 1
    end_point = nodes[-1].end_point
    end = end_point.row + (1 if end_point.column > 0 else 0)
    return start, max(start, end)


def _make(kind: str, name: str, static: bool, nodes: Sequence[Node], src: bytes,
          macro: str | None = None) -> Item:
    start, end = _lines(nodes)
    return Item(
        kind=kind,
        name=name,
        static=static,
        start_byte=nodes[0].start_byte,
        end_byte=nodes[-1].end_byte,
        start_line=start,
        end_line=end,
        fingerprint=fingerprint(src[nodes[0].start_byte : nodes[-1].end_byte]),
        macro=macro,
    )


def _function_item(headers: list[Node], fn: Node, src: bytes) -> Item:
    declarator = fn.child_by_field_name("declarator")
    type_node = fn.child_by_field_name("type")
    if (declarator is not None and declarator.type == "parenthesized_declarator"
            and type_node is not None and type_node.type == "type_identifier"):
        # SYSCALL_DEFINE0(name) { ... }: a function-defining macro with one argument
        macro = _text(type_node, src)
        arg = _declarator_name(declarator, src) or ""
        static = _has_static(headers + [fn], type_node.start_byte)
        return _make("function", _macro_name(macro, arg), static, headers + [fn], src, macro=macro)
    name = _declarator_name(declarator, src)
    if name is None:
        name = f"<unnamed@{fn.start_point.row + 1}>"
    stop = declarator.start_byte if declarator is not None else fn.start_byte
    static = _has_static(headers + [fn], stop)
    return _make("function", name, static, headers + [fn], src)


def _macro_function_item(headers: list[Node], body: Node, src: bytes) -> Item:
    call = headers[-1].named_children[0]
    name, macro = _macro_function_name(call, src)
    static = _has_static(headers[:-1], headers[-1].start_byte)
    return _make("function", name, static, headers + [body], src, macro=macro)


def _declaration_item(node: Node, src: bytes) -> Item:
    declarators = node.children_by_field_name("declarator")
    static = _has_static([node], declarators[0].start_byte if declarators else node.end_byte)
    if not declarators:
        type_node = node.child_by_field_name("type")
        if type_node is not None and type_node.type in (
            "struct_specifier", "union_specifier", "enum_specifier"
        ):
            tag = type_node.child_by_field_name("name")
            keyword = type_node.type.split("_")[0]
            return _make("type", f"{keyword} {_text(tag, src) or '<anonymous>'}", False, [node], src)
        return _make("declaration", _normalised_name(node, src), static, [node], src)
    names = [_declarator_name(d, src) or "?" for d in declarators]
    kind = "prototype" if all(_is_function_declarator(d) for d in declarators) else "variable"
    if kind == "prototype" and len(declarators) == 1 and _is_macro_name(names[0]):
        # static DEFINE_HASHTABLE(table, 6); defines a variable through a macro
        first = _first_parameter_identifier(declarators[0], src)
        if first is not None:
            return _make("variable", first, static, [node], src, macro=names[0])
    return _make(kind, ", ".join(names), static, [node], src)


def _is_macro_name(name: str) -> bool:
    return len(name) > 1 and name.upper() == name and any(c.isalpha() for c in name)


def _first_parameter_identifier(declarator: Node, src: bytes) -> str | None:
    node: Node | None = declarator
    while node is not None and node.type != "function_declarator":
        node = node.child_by_field_name("declarator")
    params = node.child_by_field_name("parameters") if node is not None else None
    if params is None or not params.named_child_count:
        return None
    first = params.named_children[0]
    text = _text(first, src).strip()
    return text if re.fullmatch(r"[A-Za-z_]\w*", text) else None


def _normalised_name(node: Node, src: bytes, limit: int = 60) -> str:
    text = _normalise_raw(src[node.start_byte : node.end_byte]).decode("utf-8", "replace")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _simple_item(node: Node, src: bytes) -> Item | None:
    kind = node.type
    if kind in ("preproc_def", "preproc_function_def"):
        return _make("macro", _text(node.child_by_field_name("name"), src), False, [node], src)
    if kind == "preproc_include":
        return _make("include", _text(node.child_by_field_name("path"), src), False, [node], src)
    if kind == "preproc_call":
        return _make("directive", _normalised_name(node, src), False, [node], src)
    if kind == "type_definition":
        names = [_declarator_name(d, src) or "?" for d in node.children_by_field_name("declarator")]
        return _make("typedef", ", ".join(names), False, [node], src)
    if kind == "declaration":
        return _declaration_item(node, src)
    if kind in ("struct_specifier", "union_specifier", "enum_specifier"):
        tag = node.child_by_field_name("name")
        keyword = kind.split("_")[0]
        return _make("type", f"{keyword} {_text(tag, src) or '<anonymous>'}", False, [node], src)
    if kind == "expression_statement":
        return _make("statement", _normalised_name(node, src), False, [node], src)
    if kind == "ERROR":
        return _make("unparsed", "", False, [node], src)
    return _make("other", _normalised_name(node, src), False, [node], src)


def _condition_item(container: Node, src: bytes) -> Item | None:
    """The directive line of an ``#if``/``#ifdef``/``#elif`` branch, as an item."""
    parts: list[Node] = []
    for i, child in enumerate(container.children):
        field = container.field_name_for_child(i)
        directive = not child.is_named and child.type.startswith("#") and child.type != "#endif"
        if directive or field in _CONDITION_FIELDS:
            parts.append(child)
        elif child.is_named:
            break
    if not parts:
        return None
    text = " ".join(_normalise_raw(src[p.start_byte : p.end_byte]).decode("utf-8", "replace")
                    for p in parts)
    return _make("conditional", text, False, parts, src)


_NESTING = frozenset({"linkage_specification", "declaration_list"}) | _CONTAINERS

# A plan is what a run of sibling nodes becomes: ("function", headers, node),
# ("macro-function", headers, body), ("branched-function", (container,), body),
# ("type-decl", (specifier,), semicolon), ("simple", node) or ("nest", container).
_Plan = tuple


def _plan(children: Sequence[Node]) -> list[_Plan]:
    """Decide which sibling nodes form which item, merging split definitions."""
    plans: list[_Plan] = []
    pending: list[Node] = []

    def flush() -> None:
        plans.extend(("simple", node) for node in pending)
        pending.clear()

    for node in children:
        kind = node.type
        if kind == ";" and not pending and plans and plans[-1][0] == "simple" \
                and plans[-1][1].type in _SPECIFIERS:
            # struct s { ... } and its ';', which the parser may leave apart
            plans[-1] = ("type-decl", (plans[-1][1],), node)
        elif kind in _SKIP:
            flush()
        elif kind in _NESTING:
            flush()
            plans.append(("nest", node))
        elif _is_broken_header(node):
            pending.append(node)
        elif kind == "function_definition":
            plans.append(("function", tuple(pending), node))
            pending.clear()
        elif kind == "compound_statement" and pending and pending[-1].type == "expression_statement":
            plans.append(("macro-function", tuple(pending), node))
            pending.clear()
        elif (kind == "compound_statement" and not pending and plans and plans[-1][0] == "nest"
              and _branch_header(plans[-1][1]) is not None):
            # #ifdef A / HEADER_A(...) / #else / HEADER_B(...) / #endif / { body }
            plans[-1] = ("branched-function", (plans[-1][1],), node)
        else:
            flush()
            plans.append(("simple", node))
    flush()
    return plans


def _branch_header(container: Node) -> Node | None:
    """The macro call that ends the first branch of a conditional, when the branch
    is nothing but a function header (a call with no ';')."""
    if container.type not in ("preproc_if", "preproc_ifdef"):
        return None
    body = [c for c in container.named_children
            if c.type != "comment" and not _is_condition(container, c) and c.type not in _CONTAINERS]
    if len(body) == 1 and _is_broken_header(body[0]) and body[0].type == "expression_statement":
        return body[0]
    return None


def _make_plan(plan: _Plan, src: bytes) -> Item:
    kind = plan[0]
    if kind == "type-decl":
        spec = _simple_item(plan[1][0], src)
        return _make(spec.kind, spec.name, False, [plan[1][0], plan[2]], src)
    if kind == "branched-function":
        container, body = plan[1][0], plan[2]
        header = _branch_header(container)
        assert header is not None
        name, macro = _macro_function_name(header.named_children[0], src)
        return _make("function", name, False, [container, body], src, macro=macro)
    if kind == "function":
        return _function_item(list(plan[1]), plan[2], src)
    if kind == "macro-function":
        return _macro_function_item(list(plan[1]), plan[2], src)
    item = _simple_item(plan[1], src)
    assert item is not None
    return item


def _plan_span(plan: _Plan) -> tuple[int, int]:
    kind = plan[0]
    if kind in ("simple", "nest"):
        return plan[1].start_byte, plan[1].end_byte
    if kind in ("function", "macro-function", "branched-function", "type-decl"):
        first = plan[1][0] if plan[1] else plan[2]
        return first.start_byte, plan[2].end_byte
    raise AssertionError(kind)


def _plan_nodes(plan: _Plan) -> tuple[Node, ...]:
    if plan[0] in ("simple", "nest"):
        return (plan[1],)
    return (*plan[1], plan[2])


def _first_child_ending_after(container: Node, byte: int) -> Node | None:
    """The first child of ``container`` whose end is past ``byte`` (a binary search;
    ``Node.first_child_for_byte`` has crashed on edited trees)."""
    lo, hi = 0, container.child_count
    while lo < hi:
        mid = (lo + hi) // 2
        child = container.child(mid)
        assert child is not None
        if child.end_byte > byte:
            hi = mid
        else:
            lo = mid + 1
    return container.child(lo) if lo < container.child_count else None


def _overlapping(container: Node, lo: int, hi: int) -> list[Node]:
    """Children of a well-formed ``container`` touching [lo, hi], widened over the
    split headers of definitions in range."""
    first = _first_child_ending_after(container, lo - 1) if lo > 0 else container.child(0)
    if first is None:
        return []
    while (prev := first.prev_sibling) is not None and (
            _is_broken_header(prev) or (first.type == ";" and prev.type in _SPECIFIERS)):
        first = prev
    nodes: list[Node] = []
    node: Node | None = first
    while node is not None and (node.start_byte <= hi or (nodes and (
            _is_broken_header(nodes[-1]) or (nodes[-1].type in _SPECIFIERS and node.type == ";")))):
        nodes.append(node)
        node = node.next_sibling
    return nodes


_SPECIFIERS = frozenset({"struct_specifier", "union_specifier", "enum_specifier"})


class _Lexed:
    """Lexical scans of the regions of one text, remembered; scans of regions whose
    text was seen before (in an earlier version of the file) are reused."""

    _shared: OrderedDict[bytes, tuple[list[tuple], bool]] = OrderedDict()
    _limit = 4096

    def __init__(self, offsets: list[int]):
        self.offsets = offsets  # where each line starts
        self.local: dict[tuple[int, int], tuple[list[Item], bool]] = {}

    def __call__(self, src: bytes, start: int, end: int) -> tuple[list[Item], bool]:
        got = self.local.get((start, end))
        if got is not None:
            return got
        region = src[start:end]
        key = hashlib.blake2b(region, digest_size=16).digest()
        shared = self._shared.get(key)
        if shared is None:
            items, clean = _lexical_items(region, 0, len(region))
            shared = ([(it.kind, it.name, it.static, it.start_byte, it.end_byte, it.start_line,
                        it.end_line, it.fingerprint, it.macro) for it in items], clean)
            self._shared[key] = shared
            if len(self._shared) > self._limit:
                self._shared.popitem(last=False)
        else:
            self._shared.move_to_end(key)
        shift = bisect_right(self.offsets, start) - 1  # lines before the region's line
        got = ([Item(k, n, st, a + start, b + start, l1 + shift, l2 + shift, fp, m)
                for k, n, st, a, b, l1, l2, fp, m in shared[0]], shared[1])
        self.local[(start, end)] = got
        return got


def in_context(fp: str, context: Sequence[str]) -> str:
    """A fingerprint that also says under which conditional branches (outermost
    first) an item stands: moving an ``#endif`` changes what is compiled."""
    for cond in reversed(context):
        fp = hashlib.blake2b(f"{cond}\x1e{fp}".encode(), digest_size=12).hexdigest()
    return fp


def _placed(items: Iterable[Item], context: tuple[str, ...], lo: int, hi: int) -> Iterator[Item]:
    for it in items:
        if it.start_byte <= hi and it.end_byte >= lo:
            yield it if not context else dataclasses.replace(
                it, fingerprint=in_context(it.fingerprint, context))


def _is_dead(container: Node, src: bytes) -> bool:
    """Is this the '#if 0' branch of a conditional (code never compiled)?"""
    if container.type != "preproc_if":
        return False
    cond = container.child_by_field_name("condition")
    return cond is not None and _text(cond, src).strip() == "0"


def _collect(container: Node, src: bytes, lo: int, hi: int, out: list[Item],
             lexed: _Lexed, context: tuple[str, ...] = (), chain: str | None = None) -> None:
    """Items of ``container`` touching [lo, hi].  ``context`` lists the conditional
    branches around it; ``chain`` names the '#if' that a '#else'/'#elif' belongs to."""
    if container.type in _CONTAINERS:
        cond = _condition_item(container, src)
        if cond is not None:
            out.extend(_placed([cond], context, lo, hi))
            if chain is None:
                chain = cond.name
            context = (*context, chain if cond.name == chain else f"{chain}/{cond.name}")
    if container.type == "linkage_specification":
        body = container.child_by_field_name("body")
        if body is not None:
            _collect(body, src, lo, hi, out, lexed, context)
        return
    if container.type == "ERROR":
        items, _ = lexed(src, container.start_byte, container.end_byte)
        out.extend(_placed(items, context, lo, hi))
        return
    dead = _is_dead(container, src)
    if container.has_error or (lo <= container.start_byte and container.end_byte <= hi):
        # where the parser recovered from errors, what belongs together can only be
        # told from the start: read every child (items are made only for the range)
        children = list(container.children)
    else:
        children = _overlapping(container, lo, hi)
    children = [c for c in children
                if (c.is_named or c.type == ";") and not _is_condition(container, c)]
    plans = _plan(children)
    i = 0
    while i < len(plans):
        plan = plans[i]
        start, end = _plan_span(plan)
        alternative = plan[0] == "nest" and plan[1].type in ("preproc_else", "preproc_elif",
                                                              "preproc_elifdef")
        if dead and not alternative:
            i += 1
            continue
        if plan[0] != "nest" and any(node.has_error for node in _plan_nodes(plan)):
            # tree-sitter recovered from an error here: its idea of where items end
            # may be wrong (a missing brace can swallow the rest of the file).  Read
            # the region lexically, with as many following siblings as it takes for
            # its braces to balance.
            j = i
            while True:
                items, clean = lexed(src, start, end)
                if clean or j + 1 >= len(plans):
                    break
                j = min(len(plans) - 1, j + max(1, (j - i) * 2))
                end = _plan_span(plans[j])[1]
            out.extend(_placed(items, context, lo, hi))
            i = j + 1
            continue
        i += 1
        if start > hi or end < lo:
            continue
        if alternative:
            # the other branches of this conditional: same surroundings, same chain
            _collect(plan[1], src, lo, hi, out, lexed, context[:-1], chain)
        elif plan[0] == "nest":
            _collect(plan[1], src, lo, hi, out, lexed, context)
        else:
            out.extend(_placed([_make_plan(plan, src)], context, lo, hi))


def _is_condition(container: Node, child: Node) -> bool:
    if container.type not in _CONTAINERS:
        return False
    return any(container.child_by_field_name(f) == child for f in _CONDITION_FIELDS)


# --------------------------------------------------------------------------- fallback

# Where tree-sitter gives up (an ERROR node, typically after a conditional directive
# inside an initializer, or a statement-like macro), items are found by a lexical
# scan instead, the way tag generators do it: balanced braces, with only the first
# branch of a conditional counted.  Spans come out as the parser would give them, and
# fingerprints are taken from the text, so an item reads the same either way.
_SCAN = re.compile(
    rb"""(?P<comment>//[^\n]*|/\*.*?(?:\*/|\Z))"""
    rb"""|(?P<pp>^[ \t]*\#(?:\\\r?\n|/\*.*?\*/|[^\n])*)"""
    rb"""|(?P<str>"(?:\\.|[^"\\\n])*"?|'(?:\\.|[^'\\\n])*'?)"""
    rb"""|(?P<word>[A-Za-z_0-9]+)"""
    rb"""|(?P<punct>\S)""",
    re.S | re.M,
)
_TYPE_KEYWORDS = frozenset({b"struct", b"union", b"enum"})
_C_KEYWORDS = frozenset(
    b"""auto break case char const continue default do double else enum extern float for
    goto if inline int long register restrict return short signed sizeof static struct
    switch typedef union unsigned void volatile while _Bool""".split()
)
_DIRECTIVE = re.compile(rb"#\s*([a-z_]+)\s*(.*)", re.S)


def _is_word(tok: bytes) -> bool:
    return bool(tok) and (tok[0:1].isalpha() or tok[0:1] == b"_")


def _lexical_items(data: bytes, start: int, end: int) -> tuple[list[Item], bool]:
    """Items of ``data[start:end]`` found by a lexical scan, and whether the region
    ends cleanly (braces balanced, no item left open)."""
    masked = mask_annotations(data[start:end])
    items: list[Item] = []
    depth = 0  # braces
    paren = 0  # parentheses, at brace depth 0
    stmt: list[tuple[bytes, int, int]] = []  # depth-0 tokens of the current item
    stmt_start = -1
    skip: list[bool] = []  # per open conditional: is this branch left unread?
    dead_if: list[bool] = []  # per open conditional: is it '#if 0'?
    call_end = -1  # end of a leading MACRO(...) call that may lack its ';'
    conds: list[tuple[str, str]] = []  # per open conditional: (its '#if', the branch)
    stmt_ctx: tuple[str, ...] = ()  # the branches around the current item
    first_line = data.count(b"\n", 0, start) + 1
    newlines = [m.start() + start for m in re.finditer(b"\n", masked)]

    def line_of(pos: int) -> int:
        return first_line + bisect_right(newlines, pos - 1)

    def context() -> tuple[str, ...]:
        return tuple(branch for _, branch in conds)

    def emit(kind: str, name: str, static: bool, lo: int, hi: int, macro: str | None = None,
             ctx: tuple[str, ...] | None = None) -> None:
        end_line = line_of(hi - 1) if hi > lo else line_of(lo)
        fp = in_context(fingerprint(data[lo:hi]), stmt_ctx if ctx is None else ctx)
        items.append(Item(kind, name, static, lo, hi, line_of(lo), end_line, fp, macro))

    for m in _SCAN.finditer(masked):
        group = m.lastgroup
        if group == "comment":
            continue
        lo, hi = start + m.start(), start + m.end()
        tok = m.group()
        if group == "pp":
            text = tok.strip()
            d = _DIRECTIVE.match(text)
            directive = d.group(1) if d else b""
            name = _normalise_raw(text).decode("utf-8", "replace")
            around = context()  # the branches around this directive
            if directive in (b"if", b"ifdef", b"ifndef"):
                # code under '#if 0' is dead: not read at all
                dead = directive == b"if" and _normalise_raw(d.group(2) if d else b"") == b"0"
                skip.append(dead)
                dead_if.append(dead)
                conds.append((name, name))
            elif directive in (b"elif", b"else") and skip:
                # a branch holding whole items is read; a branch inside an item is not
                skip[-1] = (depth > 0 or bool(stmt)) and not dead_if[-1]
                dead_if[-1] = False
                around = around[:-1]
                conds[-1] = (conds[-1][0], f"{conds[-1][0]}/{name}")
            elif directive == b"endif" and skip:
                skip.pop()
                dead_if.pop()
                conds.pop()
            if depth == 0 and stmt and directive in (b"define", b"undef", b"include"):
                # a statement-like macro call without ';' ends before such a line
                if call_end >= 0:
                    emit("statement", _short(data, stmt_start, call_end), False, stmt_start, call_end)
                else:
                    emit("unparsed", "", False, stmt_start, stmt[-1][2])
                stmt, stmt_start, paren, call_end = [], -1, 0, -1
            if depth == 0 and not stmt and directive != b"endif" and not any(skip[:-1]) \
                    and not (skip and skip[-1] and directive not in (b"if", b"ifdef", b"ifndef",
                                                                     b"elif", b"else")):
                lo += len(tok) - len(tok.lstrip())
                rest = _normalise_raw(d.group(2)).decode("utf-8", "replace") if d else ""
                if directive == b"define":
                    emit("macro", re.split(r"[\s(]", rest, maxsplit=1)[0], False, lo, hi, ctx=around)
                elif directive == b"include":
                    emit("include", rest, False, lo, hi, ctx=around)
                elif directive in (b"if", b"ifdef", b"ifndef", b"elif", b"else"):
                    emit("conditional", name, False, lo, hi, ctx=around)
                else:
                    emit("directive", name, False, lo, hi, ctx=around)
            continue
        if any(skip):
            continue
        if call_end >= 0 and depth == 0:
            # MACRO(...) then, on a later line, something that cannot continue it:
            # the call was a statement of its own, written without ';'
            if data.count(b"\n", call_end, lo) and tok not in (b"{", b";", b",", b"=", b"(", b")"):
                emit("statement", _short(data, stmt_start, call_end), False, stmt_start, call_end)
                stmt, stmt_start, paren = [], -1, 0
            call_end = -1
        if tok == b"{":
            if depth == 0 and not stmt:
                stmt_start, stmt_ctx = lo, context()
            depth += 1
            if depth == 1:
                stmt.append((tok, lo, hi))
            continue
        if tok == b"}":
            depth = max(depth - 1, 0)
            if depth == 0:
                if not stmt:  # a stray closing brace
                    stmt_start, stmt_ctx = lo, context()
                stmt.append((tok, lo, hi))
                if _is_function_header(stmt):
                    _emit_function(stmt, stmt_start, hi, emit)
                    stmt, stmt_start, paren = [], -1, 0
            continue
        if depth > 0:
            continue
        if not stmt:
            stmt_start, stmt_ctx = lo, context()
        stmt.append((tok, lo, hi))
        if tok == b"(":
            paren += 1
        elif tok == b")":
            paren = max(paren - 1, 0)
            if paren == 0 and len(stmt) > 2 and _is_word(stmt[0][0]) and stmt[1][0] == b"(" \
                    and _closes_first_group(stmt):
                call_end = hi
        elif tok == b";" and paren == 0:
            _emit_declaration(stmt, stmt_start, hi, data, emit)
            stmt, stmt_start = [], -1
    clean = depth == 0 and (not stmt or call_end >= 0)
    if stmt:
        if call_end >= 0:
            emit("statement", _short(data, stmt_start, call_end), False, stmt_start, call_end)
        else:  # what is left open runs to the end of the region
            emit("unparsed", "", False, stmt_start, end if depth else stmt[-1][2])
    return items, clean


def _short(data: bytes, lo: int, hi: int) -> str:
    text = _normalise_raw(data[lo:hi]).decode("utf-8", "replace")
    return text if len(text) <= 60 else text[:57] + "..."


def _closes_first_group(stmt: list[tuple[bytes, int, int]]) -> bool:
    """Does the last token of ``stmt`` close the parenthesis its second token opens?"""
    level = 0
    for i, (tok, _, _) in enumerate(stmt[1:], 1):
        if tok == b"(":
            level += 1
        elif tok == b")":
            level -= 1
            if level == 0:
                return i == len(stmt) - 1
    return False


def _groups(head: list[bytes]) -> list[tuple[int, int]]:
    """(open, close) indexes of the top-level parenthesised groups of ``head``."""
    out = []
    level = 0
    open_at = 0
    for i, tok in enumerate(head):
        if tok == b"(":
            if level == 0:
                open_at = i
            level += 1
        elif tok == b")" and level:
            level -= 1
            if level == 0:
                out.append((open_at, i))
    return out


def _is_function_header(stmt: list[tuple[bytes, int, int]]) -> bool:
    """Is ``stmt`` (depth-0 tokens ending in a brace block) a function definition?"""
    toks = [t for t, _, _ in stmt]
    if b"{" not in toks:
        return False
    head = toks[: toks.index(b"{")]
    if not head or head[-1] != b")" or not _groups(head):
        return False
    level = 0
    for tok in head:  # an initialiser has '=' outside parentheses
        level += (tok == b"(") - (tok == b")")
        if tok == b"=" and level == 0:
            return False
    return not (head[0] in _TYPE_KEYWORDS and len(head) > 1 and head[2:3] == [b"{"])


def _emit_function(stmt, lo: int, hi: int, emit) -> None:
    toks = [t for t, _, _ in stmt]
    head = toks[: toks.index(b"{")]
    groups = _groups(head)
    first_open = groups[0][0]
    words_before = [t for t in head[:first_open] if _is_word(t)]
    callee = head[first_open - 1].decode("utf-8", "replace") if first_open > 0 else "?"
    if len(groups) == 1 and (first_open == 1 or (
            _is_macro_name(callee) and len(words_before) == len(head[:first_open]))):
        # MACRO(name, ...) { ... }
        arg = head[first_open + 1] if _is_word(head[first_open + 1]) else b""
        name = _macro_name(callee, arg.decode("utf-8", "replace"))
        emit("function", name, b"static" in head[:first_open], lo, hi, callee)
        return
    open_at = groups[-1][0]
    if open_at > 0 and _is_word(head[open_at - 1]):
        at = open_at - 1
    else:  # int (*getfn(void))(int): the name is inside the first group
        at = next((i for i in range(first_open + 1, len(head) - 1)
                   if _is_word(head[i]) and head[i + 1] == b"("), first_open - 1)
    name = head[at].decode("utf-8", "replace") if at >= 0 else "?"
    emit("function", name, b"static" in head[:at], lo, hi)


def _emit_declaration(stmt, lo: int, hi: int, data: bytes, emit) -> None:
    toks = [t for t, _, _ in stmt]
    text = _normalise_raw(data[lo:hi]).decode("utf-8", "replace")
    short = text if len(text) <= 60 else text[:57] + "..."
    static = b"static" in toks
    if toks[0] == b"typedef":
        words = [t for t in toks if _is_word(t) and t not in _C_KEYWORDS]
        emit("typedef", words[-1].decode() if words else "?", False, lo, hi)
        return
    if len(toks) > 2 and toks[0] in _TYPE_KEYWORDS and b"{" in toks[1:3] and toks[-2] == b"}":
        tag = toks[1].decode() if toks[1] != b"{" else "<anonymous>"
        emit("type", f"{toks[0].decode()} {tag}", False, lo, hi)
        return
    if len(toks) > 1 and _is_word(toks[0]) and toks[1] == b"(":
        emit("statement", short, False, lo, hi)
        return
    stop = len(toks)
    for i, t in enumerate(toks):
        if t in (b"=", b"[", b";", b","):
            stop = i
            break
    head = toks[:stop]
    if b"(" in head and b"=" not in toks:
        paren = head.index(b"(")
        name = head[paren - 1] if paren > 0 and _is_word(head[paren - 1]) else b"?"
        text_name = name.decode("utf-8", "replace")
        arg = toks[paren + 1] if paren + 1 < len(toks) else b""
        if _is_macro_name(text_name) and _is_word(arg):
            # static DEFINE_HASHTABLE(table, 6); defines a variable through a macro
            emit("variable", arg.decode("utf-8", "replace"), static, lo, hi, text_name)
            return
        emit("prototype", text_name, static, lo, hi)
        return
    words = [t for t in head if _is_word(t)]
    emit("variable", words[-1].decode("utf-8", "replace") if words else short, static, lo, hi)


# --------------------------------------------------------------------------- source


_PARSER = Parser(C_LANGUAGE)


@dataclass(frozen=True, slots=True)
class LineEdit:
    """Lines ``old_start .. old_start+old_count`` replaced by ``new_count`` lines that
    start at ``new_start`` (0-based line indexes in the old and in the new file)."""

    old_start: int
    old_count: int
    new_start: int
    new_count: int


def split_lines(data: bytes) -> list[bytes]:
    """Lines of ``data``, each with its ``\n``; only ``\n`` ends a line (as in diffs)."""
    parts = data.split(b"\n")
    lines = [p + b"\n" for p in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def line_offsets(lines: Sequence[bytes]) -> list[int]:
    return list(accumulate(map(len, lines), initial=0))


class CSource:
    """A C file parsed once and kept in step with its edits."""

    __slots__ = ("path", "data", "tree", "_offsets", "_masked", "_all", "_lexed")

    def __init__(self, path: str, lines: Sequence[bytes]):
        self.path = path
        self.data = b"".join(lines)
        masked = mask_annotations(self.data)
        self.tree: Tree = _PARSER.parse(masked)
        self._offsets = line_offsets(lines)
        # masking never crosses a line, so it can follow line edits line by line
        self._masked: list[bytes] = split_lines(masked)
        self._all: list[Item] | None = None  # every item, once computed
        self._lexed = _Lexed(self._offsets)

    # -- queries ---------------------------------------------------------------

    def items(self, ranges: Sequence[tuple[int, int]] | None = None) -> list[Item]:
        """Items touching any of the byte ranges (inclusive ends), or all items."""
        root = self.tree.root_node
        out: list[Item] = []
        if ranges is None:
            if self._all is None:
                _collect(root, self.data, 0, len(self.data), out, self._lexed)
                self._all = out
            return list(self._all)
        seen: set[int] = set()
        for lo, hi in _merge(ranges):
            found: list[Item] = []
            _collect(root, self.data, lo, hi, found, self._lexed)
            for item in found:
                if item.start_byte not in seen:
                    seen.add(item.start_byte)
                    out.append(item)
        out.sort(key=lambda it: it.start_byte)
        return out

    def functions(self) -> list[Item]:
        return [it for it in self.items() if it.kind == "function"]

    # -- edits -----------------------------------------------------------------

    def edit(self, new_lines: Sequence[bytes], edits: Sequence[LineEdit]) -> tuple[list[Item], list[Item]]:
        """Move to ``new_lines``; return (items before, items after) of the region
        the edits can have changed.  Items outside both lists are unchanged."""
        old_data, old_offsets = self.data, self._offsets
        new_data = b"".join(new_lines)
        new_offsets = line_offsets(new_lines)
        blocks = [
            (
                old_offsets[e.old_start],
                old_offsets[e.old_start + e.old_count],
                new_offsets[e.new_start],
                new_offsets[e.new_start + e.new_count],
            )
            for e in edits
        ]
        old_tree = self.tree
        edited = old_tree.copy()
        for (o0, o1, n0, n1), e in zip(blocks, edits):
            edited.edit(
                start_byte=n0,
                old_end_byte=n0 + (o1 - o0),
                new_end_byte=n1,
                start_point=(e.new_start, 0),
                old_end_point=_point(old_data, old_offsets, e.old_start + e.old_count,
                                     row_shift=e.new_start - e.old_start),
                new_end_point=_point(new_data, new_offsets, e.new_start + e.new_count),
            )
        masked = _follow(self._masked, new_lines, edits)
        masked_data = b"".join(masked)
        new_tree = _PARSER.parse(masked_data, edited)
        changed = [(r.start_byte, r.end_byte) for r in edited.changed_ranges(new_tree)]
        old_edits = [(o0, o1) for o0, o1, _, _ in blocks]
        new_edits = [(n0, n1) for _, _, n0, n1 in blocks] + changed

        old_src = CSource.__new__(CSource)
        old_src.path, old_src.data, old_src.tree = self.path, old_data, old_tree
        old_src._offsets, old_src._masked = old_offsets, self._masked
        old_src._all, old_src._lexed = self._all, self._lexed
        self.data, self._offsets, self._masked = new_data, new_offsets, masked
        self._all, self._lexed = None, _Lexed(new_offsets)

        if _errors_near(old_tree, old_edits) or _errors_near(new_tree, new_edits):
            # Error recovery is not the same in an incremental parse as in a fresh
            # one.  Where the parser recovers from errors near an edit, parse afresh
            # and compare every item, so that what is found never depends on the
            # history of edits.
            self.tree = _PARSER.parse(masked_data)
            return _difference(old_src.items(), self.items())

        self.tree = new_tree
        mapper = _Mapper(blocks)
        old_ranges = old_edits + [mapper.to_old(a, b) for a, b in changed]
        while True:
            before = old_src.items(old_ranges)
            widened_old = old_ranges + [(it.start_byte, it.end_byte) for it in before]
            new_ranges = new_edits + [mapper.to_new(a, b) for a, b in widened_old]
            after = self.items(new_ranges)
            back = [mapper.to_old(it.start_byte, it.end_byte) for it in after]
            if _covered(back, widened_old):
                return before, after
            old_ranges = widened_old + back


def _errors_near(tree: Tree, ranges: Sequence[tuple[int, int]]) -> bool:
    """Does any top-level node touching the ranges hold a parse error?"""
    root = tree.root_node
    if not root.has_error:
        return False
    for lo, hi in _merge(ranges):
        node = _first_child_ending_after(root, lo - 1) if lo > 0 else root.child(0)
        while node is not None and node.start_byte <= hi:
            if node.has_error:
                return True
            node = node.next_sibling
    return False


def _difference(old: list[Item], new: list[Item]) -> tuple[list[Item], list[Item]]:
    """The items of ``old`` and of ``new`` that the other has not (as multisets of
    kind, name, storage and fingerprint)."""
    return _missing_from(old, new), _missing_from(new, old)


def _missing_from(items: list[Item], other: list[Item]) -> list[Item]:
    def key(it: Item) -> tuple:
        return (it.kind, it.name, it.static, it.fingerprint)

    left = Counter(key(it) for it in other)
    out = []
    for it in items:
        k = key(it)
        if left[k]:
            left[k] -= 1
        else:
            out.append(it)
    return out


def _follow(old_masked: list[bytes], new_lines: Sequence[bytes], edits: Sequence[LineEdit]) -> list[bytes]:
    """The masked lines of the new text: unchanged lines keep their masked form, the
    lines the edits bring in are masked afresh."""
    out: list[bytes] = []
    pos = 0
    for e in edits:
        out.extend(old_masked[pos:e.old_start])
        out.extend(mask_annotations(ln) for ln in new_lines[e.new_start:e.new_start + e.new_count])
        pos = e.old_start + e.old_count
    out.extend(old_masked[pos:])
    return out


def _point(data: bytes, offsets: list[int], line: int, row_shift: int = 0) -> tuple[int, int]:
    """(row, column) of the start of ``line``, or of the end of an unterminated last line."""
    if line < len(offsets) - 1 or not data or data.endswith(b"\n"):
        return (line + row_shift, 0)
    # end of a last line with no newline
    last_start = offsets[line - 1]
    return (line - 1 + row_shift, len(data) - last_start)


def _merge(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def _covered(ranges: Iterable[tuple[int, int]], by: Iterable[tuple[int, int]]) -> bool:
    cover = _merge(by)
    starts = [lo for lo, _ in cover]
    for lo, hi in ranges:
        i = bisect_right(starts, lo) - 1
        if i < 0 or cover[i][1] < hi:
            return False
    return True


class _Mapper:
    """Maps byte positions between the old and the new text of a set of line edits."""

    def __init__(self, blocks: Sequence[tuple[int, int, int, int]]):
        self.blocks = list(blocks)
        self.old_starts = [b[0] for b in self.blocks]
        self.new_starts = [b[2] for b in self.blocks]

    def _map(self, pos: int, starts: list[int], src: int, dst: int, end: bool) -> int:
        i = bisect_right(starts, pos) - 1
        if i < 0:
            return pos
        block = self.blocks[i]
        s0, s1 = block[src], block[src + 1]
        d0, d1 = block[dst], block[dst + 1]
        if pos < s1 or (pos == s1 and not end and s0 == s1):
            return d1 if end else d0
        return pos - s1 + d1

    def to_new(self, lo: int, hi: int) -> tuple[int, int]:
        return self._map(lo, self.old_starts, 0, 2, False), self._map(hi, self.old_starts, 0, 2, True)

    def to_old(self, lo: int, hi: int) -> tuple[int, int]:
        return self._map(lo, self.new_starts, 2, 0, False), self._map(hi, self.new_starts, 2, 0, True)
