"""Kernel target: which object each unit belongs to and the flags its directory's
makefiles give it, from the Kbuild makefiles that travel in the bundle and the kernel
build directory's ``.config`` (:mod:`klpcc.kbuild`).  ``--object PREFIX=NAME`` overrides
the makefiles; without makefiles (a bundle of loose files) a unit is vmlinux's."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ... import kbuild
from ...errors import KlpccError
from .symbols import VMLINUX

# the flags that give a function ftrace's entry hook: a file built without them
# cannot be live patched
_FTRACE = ("-pg", "-mfentry", "-mrecord-mcount", "-mnop-mcount", "-DCC_USING_FENTRY", "-DCC_USING_NOP_MCOUNT")
_DEFAULT_FTRACE = kbuild.CC_FLAGS_FTRACE


def ftrace_flags(template: list[str] | None) -> str:
    """``$(CC_FLAGS_FTRACE)`` as the kernel's compile command has it."""
    if not template:
        return _DEFAULT_FTRACE
    found = [a for a in template if a in _FTRACE[:4] or a.startswith("-fpatchable-function-entry")]
    return " ".join(found) or _DEFAULT_FTRACE


def explicit_object(path: str, objects: list[tuple[str, str]] | tuple[tuple[str, str], ...]) -> str | None:
    """The object ``--object`` gives ``path``: the longest matching prefix (None: none)."""
    best: tuple[str | None, int] = (None, -1)
    for prefix, name in objects:
        p = prefix.rstrip("/")
        if (path == p or path.startswith(p + "/")) and len(p) > best[1]:
            best = (name, len(p))
    return best[0]


@dataclass
class Layout:
    read: Callable[[str], bytes | None]  # the bundle's release sources
    config: dict[str, str] | None  # the kernel's .config (None: no build directory)
    objects: tuple[tuple[str, str], ...] = ()
    ftrace: str = _DEFAULT_FTRACE
    _rules: dict[str, kbuild.Rules | None] = field(default_factory=dict)

    @classmethod
    def of(cls, read: Callable[[str], bytes | None], kdir: Path | None, objects: tuple[tuple[str, str], ...],
           template: list[str] | None) -> Layout:
        config = None
        if kdir is not None:
            try:
                config = kbuild.read_config((kdir / ".config").read_text(errors="replace"))
            except OSError:
                config = None
        return cls(read, config, objects, ftrace_flags(template))

    def rules(self, path: str) -> kbuild.Rules | None:
        """What the makefiles say about ``path`` (None: no configuration to read them with)."""
        if self.config is None or not path.endswith(".c"):
            return None
        if path not in self._rules:
            self._rules[path] = kbuild.rules(self.read, path, self.config, {"CC_FLAGS_FTRACE": self.ftrace})
        return self._rules[path]

    def object(self, path: str) -> str:
        """The object ``path`` is built into; refused when the configuration does not build it."""
        given = explicit_object(path, self.objects)
        if given is not None:
            return given
        r = self.rules(path)
        if r is None:
            return VMLINUX
        if r.object is None:
            raise KlpccError(f"this kernel's configuration does not build {path}: {r.why} (give --object "
                             f"{path}=MODULE if the makefiles are wrong)", file=path)
        return r.object

    def flags(self, path: str) -> tuple[list[str], list[str]]:
        """The flags ``path``'s makefiles add (``-I`` tree-relative) and remove."""
        r = self.rules(path)
        if r is None:
            return [], []
        return list(r.flags), list(r.removed)

    def untraced(self, path: str) -> str | None:
        """Why the running functions of ``path`` have no ftrace entry hook (None: they do)."""
        r = self.rules(path)
        return None if r is None else kbuild.untraced(r, self.ftrace)
