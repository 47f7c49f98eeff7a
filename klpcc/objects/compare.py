"""Comparing a unit's objects of the base and of a release, function by function,
and saying why each function's code changed (an inlined callee, a macro, data it
reads, a compiler clone, ``__LINE__`` constants) or why its source change left its
code alone."""

from __future__ import annotations

import re

from ..history import ADDED, MODIFIED, REMOVED, Analysis
from .elf import UnitObject, is_clone, source_name
from .report import DataFinding, FunctionFinding, ObjectReport


def source_changes(analysis: Analysis, files: set[str] | None = None) -> dict[str, str]:
    """Function name -> its source change in the release (modified, added, removed);
    with ``files``, only the functions a unit reading those files can define (a
    ``static`` function belongs to its file)."""
    out: dict[str, str] = {}
    for e in analysis.functions:
        if e.change not in (MODIFIED, ADDED, REMOVED):
            continue
        if files is not None and e.static and not (set(e.files) & files or e.file in files):
            continue
        out[e.name] = e.change
    return out


def compare(path: str, base: UnitObject, new: UnitObject, headers: set[str], analysis: Analysis,
             report: ObjectReport, reads: set[str] | None = None) -> None:
    sources = source_changes(analysis, {path} | set(reads or ()))
    macros = {e.name for e in analysis.outside
              if e.kind == "macro" and e.change in (MODIFIED, ADDED, REMOVED)}
    texts: dict[str, str] = {}
    where: dict[str, str] = {}
    moved: dict[str, tuple[int, int]] = {}  # function -> (line in the base, line in the release)
    for f in sorted(headers) + [path]:  # the unit's functions win over a header's of the same name
        now = _function_texts(analysis, f, analysis.release)
        before = _function_texts(analysis, f, 0)
        for name, (line, body) in now.items():
            texts[name], where[name] = body, f
            if name in before and before[name][0] != line:
                moved[name] = (before[name][0], line)
    deltas = {b - a for a, b in moved.values()}  # inlined functions carry their own lines
    changed_data = set()
    for name in sorted(set(base.code) | set(new.code)):
        a, b = base.code.get(name), new.code.get(name)
        kind = (a or b).kind
        if kind != "data":
            continue
        if a is not None and b is not None and a.digest != b.digest \
                and _only_constants({name}, base, new, deltas):
            continue  # a record of a line (a dynamic debug descriptor) that moved: no behaviour change
        if a is None or b is None or a.digest != b.digest:
            changed_data.add(name)
            symbol, _, owner = name.partition("@")
            report.data.append(DataFinding(symbol, path, "added" if a is None else "removed" if b is None
                                           else "changed", (b or a).section, bool(owner), owner or None))
    # functions, grouped by source function (a function and its clones)
    groups: dict[str, set[str]] = {}
    for name in set(base.code) | set(new.code):
        if (base.code.get(name) or new.code.get(name)).kind == "function":
            groups.setdefault(source_name(name), set()).add(name)
    for clone, origin in {**base.clones, **new.clones}.items():
        report.clones[clone] = origin
    code_changed = {fn for fn, names in groups.items()
                    if any(_digest(base, n) != _digest(new, n) for n in names)}
    # read-only data (a const table, a switch's lookup table) travels with the code that
    # reads it: a function whose read-only data changed is changed
    readonly = {d for d in changed_data if is_readonly((new.code.get(d) or base.code.get(d)).section)}
    reads_readonly: dict[str, list[str]] = {}
    for fn, names in groups.items():
        targets = {_ref_target(r) for n in names for c in (base.code.get(n), new.code.get(n)) if c
                   for r in c.refs}
        hit = sorted(targets & readonly)
        if hit:
            reads_readonly[fn] = hit
            code_changed.add(fn)
    inlined_into: dict[str, set[str]] = {}
    for caller, callees in new.inlined.items():
        for callee in callees:
            inlined_into.setdefault(callee, set()).add(caller)
    first = len(report.functions)
    for fn in sorted(code_changed | {f for f in sources if f in texts or f in groups}):
        in_code = fn in code_changed
        in_source = fn in sources
        symbols = tuple(sorted(groups.get(fn, ())))
        file = where.get(fn, path)
        if in_code and in_source:
            report.functions.append(FunctionFinding(fn, path, file, "both", f"source {sources[fn]}", symbols))
        elif in_code and fn in reads_readonly and all(_digest(base, n) == _digest(new, n)
                                                      for n in groups.get(fn, ())):
            report.functions.append(FunctionFinding(
                fn, path, file, "code-only" if not in_source else "both",
                "its read-only data " + ", ".join(f"`{d.split('@')[0]}`" for d in reads_readonly[fn])
                + " changed (it travels with the patched function)", symbols))
        elif in_code:
            why = _why(fn, base, new, sources, macros, changed_data, texts)
            names = groups.get(fn, set())
            if why is None and fn in moved and _only_constants(names, base, new, deltas):
                report.functions.append(FunctionFinding(
                    fn, path, file, "line-only",
                    f"only constants in its code differ and it moved from line {moved[fn][0]} to "
                    f"{moved[fn][1]}: `__LINE__` values (asserts, warnings); no behaviour change", symbols))
                continue
            why = why or _clone_reason(fn, names, base, new) or (
                "header " + ", ".join(f"`{h}`" for h in sorted(headers)) + " changed" if headers
                else "its code changed with no source change found (a compiler decision)")
            report.functions.append(FunctionFinding(fn, path, file, "code-only", why, symbols))
        elif in_source and fn in texts:
            statics = sorted(d for d in changed_data if d.endswith("@" + fn))
            if fn in groups and statics:
                why = ("its code did not change; its static local " + ", ".join(
                    f"`{d.split('@')[0]}`" for d in statics) + " did (data: a live patch cannot change it)")
            elif fn in groups:
                why = "its source changed but its code did not (comments, formatting or equivalent code)"
            elif sources[fn] == REMOVED:
                continue
            elif fn in inlined_into:
                why = ("no code of its own: inlined into " + ", ".join(sorted(inlined_into[fn]))
                       + " (its code is theirs)")
            else:
                why = "not compiled in this configuration (preprocessed away, or unused)"
            report.functions.append(FunctionFinding(fn, path, file, "source-only", why, symbols))

    _clone_users(path, base, new, groups, code_changed, sources, where, report, first)


def _clone_users(path: str, base: UnitObject, new: UnitObject, groups: dict[str, set[str]],
                 code_changed: set[str], sources: dict[str, str], where: dict[str, str], report: ObjectReport,
                 first: int) -> None:
    """A caller of a compiler clone calls the clone itself: when the clone's code changed
    (not only in ``__LINE__`` constants), the caller is patched too (its new code calls
    the new clone), whatever its own code says."""
    mine = report.functions[first:]
    line_only = {f.function for f in mine if f.what == "line-only"}
    changed_clones = {n for fn in code_changed - line_only for n in groups.get(fn, ())
                      if is_clone(n) and _digest(base, n) != _digest(new, n)}
    users: dict[str, set[str]] = {}
    for c in new.code.values():
        owner = source_name(c.symbol)
        if c.kind == "function" and owner not in code_changed:
            hit = {_ref_target(r) for r in c.refs} & changed_clones - groups.get(owner, set())
            if hit:
                users.setdefault(owner, set()).update(hit)
    for owner, hit in sorted(users.items()):
        calls = ", ".join(f"`{c}`" for c in sorted(hit))
        in_source = owner in sources
        why = (f"source {sources[owner]}; " if in_source else "") + \
            f"it calls the compiler clone {calls}, which changed (patched through it)"
        what = "both" if in_source else "code-only"
        finding = FunctionFinding(owner, path, where.get(owner, path), what, why,
                                  tuple(sorted(groups.get(owner, ()))))
        at = next((i for i in range(first, len(report.functions)) if report.functions[i].function == owner),
                  None)
        if at is None:
            report.functions.append(finding)
        else:
            report.functions[at] = finding


def _digest(unit: UnitObject, name: str) -> str | None:
    code = unit.code.get(name)
    return code.digest if code is not None else None


def _function_texts(analysis: Analysis, path: str, release: int) -> dict[str, tuple[int, str]]:
    """(first line, source text) of every function of file ``path`` in ``release``."""
    from ..c import CSource, split_lines

    try:
        data = analysis.replay.snapshots.read(path, release)
    except KeyError:
        data = analysis.replay.base.read(path)
    if data is None:
        return {}
    out = {}
    for it in CSource(path, split_lines(data)).items():
        if it.kind == "function":
            out[it.name] = (it.start_line, data[it.start_byte:it.end_byte].decode("utf-8", "replace"))
    return out


def _ref_target(ref: str) -> str:
    """The symbol a normalised relocation names, without its addend."""
    return re.sub(r"[+-]\d+$", "", ref)


def _clone_reason(fn: str, names: set[str], base: UnitObject, new: UnitObject) -> str | None:
    """When only compiler clones of ``fn`` changed: which, and for which callers."""
    changed = sorted(n for n in names if _digest(base, n) != _digest(new, n))
    if not changed or any(n == fn for n in changed):
        return None
    callers = sorted({source_name(c.symbol) for c in new.code.values()
                      if c.kind == "function" and any(_ref_target(r) in changed for r in c.refs)
                      and source_name(c.symbol) != fn})
    who = f" (specialised for its callers: {', '.join(callers)})" if callers else ""
    return "its compiler clone " + ", ".join(f"`{n}`" for n in changed) + f" changed{who}"


def _why(fn: str, base: UnitObject, new: UnitObject, sources: dict[str, str], macros: set[str],
         changed_data: set[str], texts: dict[str, str]) -> str | None:
    """Why the code of ``fn`` changed though its source did not, where the evidence
    says: an inlined function, a macro it expands, data it reads."""
    inlined = sorted((new.inlined.get(fn, set()) | base.inlined.get(fn, set())) & set(sources))
    if inlined:
        return "inlined " + ", ".join(f"`{g}`" for g in inlined) + " changed"
    text = texts.get(fn, "")
    used = sorted(m for m in macros if re.search(r"\b" + re.escape(m) + r"\b", text))
    if used:
        return "macro " + ", ".join(f"`{m}`" for m in used) + " changed"
    code = new.code.get(fn) or base.code.get(fn)
    reads = sorted({_ref_target(r) for r in (code.refs if code else ())} & changed_data)
    if reads:
        return "data " + ", ".join(f"`{d.split('@')[0]}`" for d in reads) + " changed"
    return None


def is_readonly(section: str) -> bool:
    """Is this a section of read-only data (which travels with the code that reads it)?"""
    return section.startswith((".rodata", ".data.rel.ro"))


def _only_constants(names: set[str], base: UnitObject, new: UnitObject, deltas: set[int]) -> bool:
    """Do the changed symbols differ only in constants that grew by one of ``deltas``
    -- the lines the unit's functions moved (``__LINE__``) -- with the same size and
    relocations?"""
    changed = [n for n in names if _digest(base, n) != _digest(new, n)]
    for n in changed:
        a, b = base.code.get(n), new.code.get(n)
        if a is None or b is None or len(a.body) != len(b.body) or not _same_refs(a.refs, b.refs, deltas):
            return False
        if not _differs_by(a.body, b.body, deltas):
            return False
    return bool(changed)


def _same_refs(old: tuple[str, ...], new: tuple[str, ...], deltas: set[int]) -> bool:
    """Do two relocation lists name the same things, strings aside whose only
    differences are numbers that grew by one of ``deltas`` (``"... at dev.c:10273"``)?"""
    if len(old) != len(new):
        return False
    for a, b in zip(old, new):
        if a == b:
            continue
        if not (a.startswith("str:") and b.startswith("str:")):
            return False
        na, nb = re.findall(r"\d+", a), re.findall(r"\d+", b)
        if re.sub(r"\d+", "#", a) != re.sub(r"\d+", "#", b) or len(na) != len(nb):
            return False
        if any(x != y and int(y) - int(x) not in deltas for x, y in zip(na, nb)):
            return False
    return True


def _differs_by(old: bytes, new: bytes, deltas: set[int]) -> bool:
    """Is every difference between ``old`` and ``new`` inside a little-endian 32-bit
    field whose value grew by one of ``deltas``?"""
    wanted = {d & 0xFFFFFFFF for d in deltas}
    i, n = 0, len(old)
    while i < n:
        if old[i] == new[i]:
            i += 1
            continue
        for start in range(max(0, i - 3), i + 1):
            if start + 4 <= n:
                a = int.from_bytes(old[start:start + 4], "little")
                b = int.from_bytes(new[start:start + 4], "little")
                if (b - a) & 0xFFFFFFFF in wanted:
                    i = start + 4
                    break
        else:
            return False
    return True
