"""C items from tree-sitter's tree: functions (macro-defined ones too), macros,
types, globals, includes, conditional directives, ...

Each top-level *item* gets a kind, a name, a span and a fingerprint of its tokens.
Items inside ``#if``/``#ifdef`` branches are found too: a function defined once per
branch is one function with several variants.  Where tree-sitter recovered from an
error, the region is read by the lexical scanner of :mod:`.lexical` instead.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tree_sitter import Node

from .language import macro_variable
from .tokens import fingerprint, in_context, normalise, short_text

if TYPE_CHECKING:
    from .lexical import Lexed

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
    code: str = ""  # the fingerprint of its tokens alone, without the #if branches around it ("": the same)
    within: tuple[str, ...] = ()  # the #if branches around it, outermost first


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
    made = macro_variable(src[node.start_byte:node.end_byte])
    if made is not None:  # static DEFINE_PER_CPU(struct rq, runqueues);
        return _make(made[0], made[1], made[2], [node], src, macro=made[3])
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


def _normalised_name(node: Node, src: bytes) -> str:
    return short_text(src[node.start_byte : node.end_byte])


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
        made = macro_variable(src[node.start_byte:node.end_byte])
        if made is not None:  # DEFINE_PER_CPU(struct rq, runqueues);
            return _make(made[0], made[1], made[2], [node], src, macro=made[3])
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
    text = " ".join(normalise(src[p.start_byte : p.end_byte]).decode("utf-8", "replace")
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


def _placed(items: Iterable[Item], context: tuple[str, ...], lo: int, hi: int) -> Iterator[Item]:
    for it in items:
        if it.start_byte <= hi and it.end_byte >= lo:
            yield it if not context else dataclasses.replace(
                it, fingerprint=in_context(it.fingerprint, context), code=it.code or it.fingerprint,
                within=(*context, *it.within))


def _is_dead(container: Node, src: bytes) -> bool:
    """Is this the '#if 0' branch of a conditional (code never compiled)?"""
    if container.type != "preproc_if":
        return False
    cond = container.child_by_field_name("condition")
    return cond is not None and _text(cond, src).strip() == "0"


# conditionals nested deeper than this are read by the lexical scanner, which does
# not recurse: the parse tree is followed only as deep as the interpreter's stack allows
MAX_NESTING = 64


def _collect(container: Node, src: bytes, lo: int, hi: int, out: list[Item],
             lexed: Lexed, context: tuple[str, ...] = (), chain: str | None = None, depth: int = 0) -> None:
    """Items of ``container`` touching [lo, hi].  ``context`` lists the conditional
    branches around it; ``chain`` names the '#if' that a '#else'/'#elif' belongs to."""
    if depth > MAX_NESTING:
        items, _ = lexed(src, container.start_byte, container.end_byte)
        out.extend(_placed(items, context, lo, hi))
        return
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
            _collect(body, src, lo, hi, out, lexed, context, depth=depth + 1)
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
            _collect(plan[1], src, lo, hi, out, lexed, context[:-1], chain, depth + 1)
        elif plan[0] == "nest":
            _collect(plan[1], src, lo, hi, out, lexed, context, depth=depth + 1)
        else:
            out.extend(_placed([_make_plan(plan, src)], context, lo, hi))


def _is_condition(container: Node, child: Node) -> bool:
    if container.type not in _CONTAINERS:
        return False
    return any(container.child_by_field_name(f) == child for f in _CONDITION_FIELDS)

