"""What every target builds from a bundle, and what it refuses to build.

One policy for all targets: a bundle whose lint found a change no live patch can carry
is refused (the kernel would refuse the module, the runtime would switch code that
reads data of another shape); states must be numbers with one version each; a
callback must be declared with the macros the targets recognise; a release must
change something.  :func:`plan` says, per C file, which functions a release compiles.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ..errors import KlpccError
from ..manifest import Manifest
from .units import Unit

# lint rules whose errors name changes no live patch can carry
REFUSED_RULES = {"U001": "a data layout changes", "U002": "a global's initial value changes",
                 "U004": "the function cannot be live patched", "U007": "data the running code uses changes"}


def check(m: Manifest) -> list[tuple[int, int]]:
    """What every target checks first, before it reads anything else: the lint's
    refusals, and the states (returned as ``(id, version)``)."""
    refuse_lint(m)
    return states(m)


def refuse_lint(m: Manifest) -> None:
    """Refuse a bundle whose lint found an error no target can build around."""
    for f in m.findings:
        why = REFUSED_RULES.get(f.rule)
        if why and f.severity == "error":
            raise KlpccError(f"{f.file}:{f.line}: refusing to build: {why} ({f.rule}: {f.message})")


def states(m: Manifest) -> list[tuple[int, int]]:
    """The release's states as ``(id, version)``, each id a number with one version."""
    out: dict[int, int] = {}
    for s in m.states or ():
        if not isinstance(s.id, int):
            raise KlpccError(f"{s.site.file}:{s.site.line}: state id {s.id!r} is not a constant klpcc can "
                             "compute; the patch needs a number")
        if s.id in out and out[s.id] != s.version:
            raise KlpccError(f"{s.site.file}:{s.site.line}: state {s.id} declared with two versions")
        out[s.id] = s.version
    return sorted(out.items())


@dataclass
class Plan:
    """Per C file of the release: the functions to compile (name -> ``modified`` or
    ``added``), the other items the release adds (kept as written), and why each
    function is in the patch."""

    functions: dict[str, dict[str, str]] = field(default_factory=dict)
    added: dict[str, set[str]] = field(default_factory=dict)
    why: dict[tuple[str, str], str] = field(default_factory=dict)  # (file, function) -> reason
    left: dict[tuple[str, str], str] = field(default_factory=dict)  # changed in source, not in code: why

    def add(self, path: str, name: str, why: str) -> None:
        """``name`` of ``path`` joins the patch as a modified function, for ``why``."""
        self.functions.setdefault(path, {})[name] = "modified"
        self.why[(path, name)] = why


def plan(m: Manifest) -> Plan:
    """What the release compiles.  Files that only declare callbacks or states count
    too; a function a header defines cannot be patched on its own."""
    p = Plan()
    for f in [*m.functions, *m.outside]:
        if f.change not in ("modified", "added"):
            continue
        if f.kind != "function":
            if f.change == "added":
                p.added.setdefault(f.file, set()).add(f.name)
            continue
        if not f.file.endswith(".c"):
            if f.change == "modified" and not f.static:
                raise KlpccError(f"cannot patch {f.name}: a function defined in a header is compiled into "
                                 "every file that includes it; move the change to a .c file", file=f.file)
            continue  # a static inline of a header: its callers carry it (compile --objects finds them)
        p.functions.setdefault(f.file, {})[f.name] = f.change
        p.why[(f.file, f.name)] = f.reason or f.change
    for c in [*(m.callbacks or ()), *(m.states or ())]:
        if c.site.file.endswith(".c"):
            p.functions.setdefault(c.site.file, {})
    return p


def check_units(m: Manifest, units: Iterable[Unit], p: Plan | None = None) -> None:
    """Refuse a release whose units patch nothing (no function, no nop, no callback, no
    state: a release of callbacks alone is a patch, as the kernel and kpatch take it),
    whose callbacks the units do not declare with the callback macros (an initializer
    names no callback of the patch), or a function of the plan ``p`` no unit wrote (the
    compiled code changed a function the source defines only through a macro)."""
    units = list(units)
    if p is not None:
        written = {(u.path, n) for u in units for n in u.written}
        for path, fns in sorted(p.functions.items()):
            for name, change in sorted(fns.items()):
                if change == "modified" and (path, name) not in written:
                    why = p.why.get((path, name), change)
                    raise KlpccError(f"the compiled code of {name} changed ({why}), but {path} defines "
                                     f"{name} only through a macro klpcc cannot rewrite on its own; change "
                                     "the function it calls instead", file=path)
    if not any(u.patched or u.callbacks for u in units) and not m.nops and not m.states:
        gone = "".join(f"; {name} ({path}) left: {why}" for (path, name), why in
                       sorted((p.left if p is not None else {}).items())[:3])
        gone += "".join(f"; left out: {x}" for u in units for x in u.left_out
                        if "never runs while the patch is in force" in x)
        raise KlpccError(f"release {m.release} changes no function and declares no callback or state: there "
                         f"is nothing to patch{gone}")
    declared = {(c.site.file, c.kind) for c in m.callbacks or ()}
    found = {(u.path, k) for u in units for k in u.callbacks}
    for path, kind in sorted(declared - found):
        raise KlpccError(f"the {kind} callback is set with an initializer; the patch needs it declared with "
                         f"KLPCC_{kind.upper()}(fn)", file=path)
