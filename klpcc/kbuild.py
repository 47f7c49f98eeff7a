"""What the kernel's Kbuild makefiles say about one source file: the object it is built
into (``vmlinux`` or a module), the compiler flags its directory adds (``ccflags-y``,
``subdir-ccflags-y``, ``CFLAGS_file.o``) and removes (``CFLAGS_REMOVE_file.o``,
``ccflags-remove-y``), evaluated against the target's ``.config``.

Kbuild makefiles are GNU make, but the part that decides objects and flags is a small
language: assignments whose names hold ``$(CONFIG_...)``, conditionals on the
configuration, and a handful of functions (``addprefix``, ``subst``, ...).  That part
is evaluated here; a ``$(shell ...)``, ``$(call ...)`` or a variable Kbuild defines
elsewhere expands to nothing, as it would for a flag this tool cannot know.

At ``klpcc compile`` time no configuration is known: :func:`include_dirs` lists every
``-I`` directory the makefiles name under any condition (the headers a unit may reach
through them travel in the bundle), and :func:`makefiles` lists the makefiles that
travel with a source file.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .errors import KlpccError

Read = Callable[[str], "bytes | None"]  # tree-relative path -> contents (None: no such file)

VMLINUX = "vmlinux"
CC_FLAGS_FTRACE = "-pg -mfentry -mrecord-mcount"  # $(CC_FLAGS_FTRACE) on x86_64
_MAX_INCLUDES = 16  # makefiles one makefile may include (transitively)
_MAX_DEPTH = 8  # directories above a source file whose makefiles are read
_KBUILD_SYNTAX = re.compile(rb"^[ \t]*(obj|lib|ccflags|subdir-ccflags|asflags)-[\w$()]*\s*[:+?]?=", re.M)
_ASSIGN = re.compile(r"^(?:override\s+|export\s+)*([^\s:+?=#]+)\s*(:=|::=|\+=|\?=|=)\s*(.*)$", re.S)
_CONDITIONAL = re.compile(r"^(ifeq|ifneq|ifdef|ifndef)\b\s*(.*)$")
_INCLUDE = re.compile(r"^-?include\s+(.+)$|^sinclude\s+(.+)$")
_NOT_COMPOSITE = re.compile(r"^(obj|lib|subdir|ccflags|asflags|ldflags|always|targets|hostprogs|userprogs|"
                            r"extra|clean|head|core|drivers|libs|subdir-ccflags|ccflags-remove|"
                            r"asflags-remove)-")


def kbuild_file(read: Read, directory: str) -> tuple[str, bytes] | None:
    """The makefile Kbuild reads in ``directory``: ``Kbuild`` before ``Makefile``."""
    for name in ("Kbuild", "Makefile"):
        path = posixpath.join(directory, name) if directory else name
        data = read(path)
        if data is not None and _KBUILD_SYNTAX.search(data):
            return path, data
    return None


def _directories(path: str) -> list[str]:
    """``path``'s directory and those above it, nearest first, short of the tree's root
    (whose directories the top-level Makefile lists, in its own language)."""
    out = []
    d = posixpath.dirname(path)
    while d and len(out) < _MAX_DEPTH:
        out.append(d)
        d = posixpath.dirname(d)
    return out


def makefiles(read: Read, path: str) -> dict[str, bytes]:
    """The Kbuild makefiles that decide how ``path`` is built (its directory's and those
    above it, the files they include): what travels with it in a bundle."""
    out: dict[str, bytes] = {}
    for d in _directories(path):
        found = kbuild_file(read, d)
        if found is None:
            continue
        out[found[0]] = found[1]
        for inc in _included(found[1], d):
            if (data := read(inc)) is not None:
                out[inc] = data
    return out


def _included(data: bytes, directory: str) -> list[str]:
    """Tree-relative names of the makefiles ``include $(srctree)/...`` names."""
    out = []
    for line in _logical_lines(data.decode("utf-8", "replace")):
        m = _INCLUDE.match(line)
        if m is None:
            continue
        for word in (m.group(1) or m.group(2)).split():
            word = word.replace("$(srctree)/", "").replace("$(src)", directory).replace("$(obj)", directory)
            if "$" not in word:
                name = posixpath.normpath(word)
                if not name.startswith(("../", "/")) and name != "..":
                    out.append(name)
    return out[:_MAX_INCLUDES]


def include_dirs(read: Read, path: str) -> list[str]:
    """Every directory a ``-I`` of the makefiles above ``path`` names, under any
    condition, as a tree-relative path (the headers a unit can reach through them)."""
    out: list[str] = []
    for name, data in makefiles(read, path).items():
        d = posixpath.dirname(name)
        for line in _logical_lines(data.decode("utf-8", "replace")):
            if not re.match(r"^\s*(ccflags|subdir-ccflags|CFLAGS_|EXTRA_CFLAGS|KBUILD_CFLAGS)", line):
                continue
            for m in re.finditer(r"-I\s*(\S+)", line):
                p = _tree_path(m.group(1), d)
                if p is not None and p not in out:
                    out.append(p)
    return out


def _tree_path(word: str, directory: str) -> str | None:
    """A directory as a makefile of ``directory`` names it, relative to the tree (None:
    outside the tree, or not known without Kbuild)."""
    word = word.replace("$(srctree)/", "").replace("$(srctree)", ".")
    word = word.replace("$(src)", directory or ".").replace("$(obj)", directory or ".")
    if "$" in word or word.startswith("/"):
        return None
    p = posixpath.normpath(word)
    return None if p == ".." or p.startswith("../") else p


def _logical_lines(text: str) -> list[str]:
    """Lines with their continuations joined and comments removed."""
    out: list[str] = []
    pending = ""
    for raw in text.splitlines():
        if raw.startswith("\t") and not pending and out and out[-1].endswith(":"):
            continue  # a recipe line
        line = re.sub(r"(?<!\\)#.*$", "", raw)
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = (pending + line).strip()
        pending = ""
        if line:
            out.append(line)
    if pending.strip():
        out.append(pending.strip())
    return out


# ----------------------------------------------------------------- evaluation


class _Make:
    """The assignments and conditionals of one makefile, evaluated."""

    def __init__(self, read: Read, config: Mapping[str, str], predefined: Mapping[str, str], directory: str):
        self.read = read
        self.config = config
        self.directory = directory
        self.vars: dict[str, str] = {"srctree": ".", "src": directory or ".", "obj": directory or ".",
                                     **predefined}
        self.included = 0

    # ------------------------------------------------------------ expansion

    def expand(self, text: str, depth: int = 0) -> str:
        if "$" not in text or depth > 32:
            return text
        out: list[str] = []
        i = 0
        while i < len(text):
            c = text[i]
            if c != "$" or i + 1 >= len(text):
                out.append(c)
                i += 1
                continue
            nxt = text[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
            elif nxt in "({":
                close = ")" if nxt == "(" else "}"
                end = _matching(text, i + 1, nxt, close)
                inner = text[i + 2:end]
                out.append(self._reference(inner, depth))
                i = end + 1
            else:
                out.append(self.vars.get(nxt, ""))
                i += 2
        return "".join(out)

    def _reference(self, inner: str, depth: int) -> str:
        m = re.match(r"([a-z-]+)[ \t]+(.*)$", inner, re.S)
        if m is None:
            name = self.expand(inner, depth + 1)
            if name.startswith("CONFIG_"):
                return self.config.get(name, "")
            return self.expand(self.vars.get(name, ""), depth + 1)
        fn, rest = m.group(1), m.group(2)
        args = _split_args(rest)
        ex = [self.expand(a, depth + 1) for a in args]
        if fn == "addprefix" and len(ex) == 2:
            return " ".join(ex[0] + w for w in ex[1].split())
        if fn == "addsuffix" and len(ex) == 2:
            return " ".join(w + ex[0] for w in ex[1].split())
        if fn == "subst" and len(ex) == 3:
            return ex[2].replace(ex[0], ex[1]) if ex[0] else ex[2]
        if fn == "patsubst" and len(ex) == 3:
            return " ".join(_patsubst(ex[0], ex[1], w) for w in ex[2].split())
        if fn == "strip" and ex:
            return " ".join(ex[0].split())
        if fn in ("filter", "filter-out") and len(ex) == 2:
            pats = ex[0].split()
            keep = fn == "filter"
            return " ".join(w for w in ex[1].split() if any(_matches(p, w) for p in pats) == keep)
        if fn == "if" and len(ex) >= 2:
            return ex[1] if ex[0].strip() else (ex[2] if len(ex) > 2 else "")
        if fn == "or":
            return next((e for e in ex if e.strip()), "")
        if fn == "and":
            return ex[-1] if all(e.strip() for e in ex) else ""
        if fn in ("sort",) and ex:
            return " ".join(sorted(set(ex[0].split())))
        if fn in ("firstword",) and ex:
            return (ex[0].split() or [""])[0]
        if fn == "notdir" and ex:
            return " ".join(posixpath.basename(w) for w in ex[0].split())
        if fn == "dir" and ex:
            return " ".join(posixpath.dirname(w) + "/" for w in ex[0].split())
        if fn == "basename" and ex:
            return " ".join(posixpath.splitext(w)[0] for w in ex[0].split())
        return ""  # $(call ...), $(shell ...), $(wildcard ...): not known without Kbuild

    # ------------------------------------------------------------ statements

    def run(self, data: bytes) -> None:
        stack: list[tuple[bool, bool]] = []  # (this branch is taken, a branch was taken)
        for line in _logical_lines(data.decode("utf-8", "replace")):
            active = all(taken for taken, _ in stack)
            word = line.split(None, 1)[0]
            if word in ("ifeq", "ifneq", "ifdef", "ifndef"):
                cond = self._condition(line) if active else False
                stack.append((cond, cond))
                continue
            if word == "else":
                if not stack:
                    continue
                _, done = stack.pop()
                rest = line[4:].strip()
                outer = all(taken for taken, _ in stack)
                if rest and _CONDITIONAL.match(rest):
                    cond = not done and outer and self._condition(rest)
                else:
                    cond = not done
                stack.append((cond, done or cond))
                continue
            if word == "endif":
                if stack:
                    stack.pop()
                continue
            if not active:
                continue
            if (m := _INCLUDE.match(line)) is not None:
                self._include(m.group(1) or m.group(2))
                continue
            if (m := _ASSIGN.match(line)) is not None:
                self._assign(m.group(1), m.group(2), m.group(3))

    def _condition(self, line: str) -> bool:
        m = _CONDITIONAL.match(line)
        if m is None:
            return False
        kind, rest = m.group(1), m.group(2).strip()
        if kind in ("ifdef", "ifndef"):
            name = self.expand(rest).strip()
            value = self.config.get(name, "") if name.startswith("CONFIG_") else self.vars.get(name, "")
            return bool(value) == (kind == "ifdef")
        if rest.startswith("(") and rest.endswith(")"):
            parts = _split_args(rest[1:-1])
        else:
            parts = [p[1:-1] for p in re.findall(r"\"[^\"]*\"|'[^']*'", rest)]
        if len(parts) != 2:
            return False
        a, b = (self.expand(p).strip() for p in parts)
        return (a == b) == (kind == "ifeq")

    def _assign(self, name: str, op: str, value: str) -> None:
        name = self.expand(name).strip()
        if not name or " " in name:
            return
        value = self.expand(value.strip())
        if op == "+=":
            old = self.vars.get(name, "")
            self.vars[name] = f"{old} {value}".strip()
        elif op == "?=":
            self.vars.setdefault(name, value)
        else:
            self.vars[name] = value

    def _include(self, words: str) -> None:
        for word in self.expand(words).split():
            p = _tree_path(word, self.directory)
            if p is None or self.included >= _MAX_INCLUDES:
                continue
            data = self.read(p)
            if data is not None:
                self.included += 1
                self.run(data)

    def words(self, name: str) -> list[str]:
        return self.vars.get(name, "").split()


def _matching(text: str, at: int, open_: str, close: str) -> int:
    level = 0
    for j in range(at, len(text)):
        if text[j] == open_:
            level += 1
        elif text[j] == close:
            level -= 1
            if level == 0:
                return j
    return len(text) - 1


def _split_args(text: str) -> list[str]:
    """A function's arguments: split at the commas outside parentheses."""
    out, level, start = [], 0, 0
    for j, c in enumerate(text):
        if c in "({":
            level += 1
        elif c in ")}":
            level -= 1
        elif c == "," and level == 0:
            out.append(text[start:j])
            start = j + 1
    out.append(text[start:])
    return out


def _matches(pattern: str, word: str) -> bool:
    if "%" not in pattern:
        return pattern == word
    pre, post = pattern.split("%", 1)
    return word.startswith(pre) and word.endswith(post) and len(word) >= len(pre) + len(post)


def _patsubst(pattern: str, replacement: str, word: str) -> str:
    if not _matches(pattern, word):
        return word
    if "%" not in pattern:
        return replacement
    pre, post = pattern.split("%", 1)
    stem = word[len(pre):len(word) - len(post) if post else len(word)]
    return replacement.replace("%", stem, 1)


# ----------------------------------------------------------------- a file's rules


@dataclass(frozen=True)
class Rules:
    """How Kbuild builds one source file under a configuration."""

    path: str
    object: str | None  # "vmlinux", a module's name; None: not built under this configuration
    why: str  # the makefile and the rule that decide it
    makefile: str | None = None  # the makefile that builds the file (None: no makefile was found)
    flags: tuple[str, ...] = ()  # flags its makefiles add; -I directories are tree-relative
    removed: tuple[str, ...] = ()  # flags its makefiles remove
    include_dirs: tuple[str, ...] = field(default=())  # the tree-relative -I directories of ``flags``


def read_config(text: str) -> dict[str, str]:
    """``CONFIG_X=value`` lines of a ``.config`` (quotes kept, as make sees them)."""
    out = {}
    for line in text.splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            k, _, v = line.partition("=")
            out[k.strip()] = v.strip()
    return out


def rules(read: Read, path: str, config: Mapping[str, str], predefined: Mapping[str, str] | None = None
          ) -> Rules:
    """How ``path`` (tree-relative, a ``.c`` file) is built under ``config``."""
    if not path.endswith(".c"):
        raise KlpccError(f"{path}: not a C file")
    pre = dict(predefined or {})
    target = posixpath.splitext(path)[0] + ".o"
    seen_makefile = None
    for d in _directories(path):
        found = kbuild_file(read, d)
        if found is None:
            continue
        name, data = found
        seen_makefile = seen_makefile or name
        make = _Make(read, config, pre, d)
        make.run(data)
        rel = posixpath.relpath(target, d) if d else target
        obj, why = _object(make, rel, name)
        if obj is None:
            continue
        if (cut := _descended(read, d, config, pre)) is not None:
            return Rules(path, None, cut, name)
        flags, removed = _flags(read, make, path, d, rel, config, pre)
        dirs = tuple(a[2:] for a in flags if a.startswith("-I"))
        return Rules(path, obj, why, name, flags, removed, dirs)
    if seen_makefile is None:
        return Rules(path, VMLINUX, "no Kbuild makefile travels with it: vmlinux unless --object "
                     "says otherwise")
    return Rules(path, None, f"no rule of {seen_makefile} or the makefiles above it builds "
                 f"{posixpath.basename(target)} with this configuration", seen_makefile)


# What every kernel a live patch can load into is configured with: the configuration
# ``klpcc lint`` reads the makefiles with when it is given no kernel build directory.
LIVEPATCH_CONFIG = {
    "CONFIG_FTRACE": "y", "CONFIG_FUNCTION_TRACER": "y", "CONFIG_DYNAMIC_FTRACE": "y",
    "CONFIG_DYNAMIC_FTRACE_WITH_REGS": "y", "CONFIG_HAVE_FENTRY": "y", "CONFIG_LIVEPATCH": "y",
    "CONFIG_KALLSYMS": "y", "CONFIG_KALLSYMS_ALL": "y", "CONFIG_MODULES": "y", "CONFIG_SYSFS": "y",
}


def build_flags(read: Read, path: str, config: Mapping[str, str], predefined: Mapping[str, str] | None = None
                ) -> Rules:
    """The flags Kbuild compiles ``path`` with, also where ``config`` does not say that
    the file is built at all (a partial configuration): the makefile that names its
    object under any variable, else the nearest one, decides them."""
    found = rules(read, path, config, predefined)
    if found.object is not None or found.makefile is None:
        return found
    pre = dict(predefined or {})
    target = posixpath.splitext(path)[0] + ".o"
    chosen: tuple[str, _Make, str, str] | None = None
    for d in _directories(path):
        kb = kbuild_file(read, d)
        if kb is None:
            continue
        make = _Make(read, config, pre, d)
        make.run(kb[1])
        rel = posixpath.relpath(target, d)
        named = any(rel in {posixpath.normpath(w) for w in make.words(v)} for v in list(make.vars))
        if chosen is None or named:
            chosen = (kb[0], make, d, rel)
        if named:
            break
    if chosen is None:
        return found
    name, make, d, rel = chosen
    flags, removed = _flags(read, make, path, d, rel, config, pre)
    dirs = tuple(a[2:] for a in flags if a.startswith("-I"))
    return Rules(path, None, found.why, name, flags, removed, dirs)


def untraced(r: Rules, ftrace: str) -> str | None:
    """Why Kbuild builds ``r``'s file without ftrace's entry hook (``ftrace``: the
    words of ``$(CC_FLAGS_FTRACE)``), None when it does not: removed by
    ``ccflags-remove-y`` or ``CFLAGS_REMOVE_file.o`` and not added back by
    ``CFLAGS_file.o``."""
    gone = set(r.removed) & set(ftrace.split()) - set(r.flags)
    if not gone:
        return None
    return f"{r.makefile} builds {r.path} without {' '.join(sorted(gone))} (ftrace's entry hook)"


def _descended(read: Read, directory: str, config: Mapping[str, str], pre: Mapping[str, str]) -> str | None:
    """Why Kbuild never enters ``directory`` under ``config`` (None: it does, or the
    makefiles above it do not travel with the file)."""
    child = directory
    for above in _directories(directory):  # the directories above ``directory``
        found = kbuild_file(read, above)
        if found is None:
            return None
        make = _Make(read, config, pre, above)
        make.run(found[1])
        entry = posixpath.relpath(child, above) + "/"
        listed = {posixpath.normpath(w) + "/" for v in ("obj-y", "obj-m", "subdir-y", "subdir-m")
                  for w in make.words(v) if w.endswith("/")}
        if entry not in listed:
            return f"{found[0]} does not enter {entry} with this configuration"
        child = above
    return None


def _object(make: _Make, rel: str, makefile: str) -> tuple[str | None, str]:
    """The object ``rel`` (an object name relative to the makefile's directory) is linked
    into, from the makefile's ``obj-y``/``obj-m``/``lib-y`` and composite lists."""
    def norm(words: list[str]) -> set[str]:
        return {posixpath.normpath(w) for w in words}

    objs_y, objs_m = norm(make.words("obj-y") + make.words("lib-y")), norm(make.words("obj-m"))
    if rel in objs_y:
        return VMLINUX, f"{makefile}: obj-y += {rel}"
    if rel in objs_m:
        return posixpath.basename(rel)[:-2].replace("-", "_"), f"{makefile}: obj-m += {rel}"
    for var in list(make.vars):
        m = re.fullmatch(r"(.+?)-(y|objs)", var)
        if m is None or _NOT_COMPOSITE.match(var):
            continue
        if rel not in norm(make.words(var)):
            continue
        composite = m.group(1) + ".o"
        if composite in objs_y:
            return VMLINUX, f"{makefile}: {var} += {rel}, obj-y += {composite}"
        if composite in objs_m:
            return m.group(1).replace("-", "_"), f"{makefile}: {var} += {rel}, obj-m += {composite}"
    return None, ""


def _flags(read: Read, make: _Make, path: str, directory: str, rel: str, config: Mapping[str, str],
           pre: Mapping[str, str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(flags added, flags removed) as Kbuild's ``_c_flags`` has them: the directory's
    flags (``subdir-ccflags-y`` above, ``ccflags-y``) without ``ccflags-remove-y``, then
    the file's own ``CFLAGS_file.o`` (which can add a removed flag back), all without
    ``CFLAGS_REMOVE_file.o``."""
    stem = posixpath.splitext(rel)[0]
    base = posixpath.basename(stem)
    own: list[str] = []
    for key in (f"CFLAGS_{stem}.o", f"CFLAGS_{base}.o"):
        if key in make.vars:
            own = make.words(key)
            break
    dir_removed = make.words("ccflags-remove-y")
    file_removed: list[str] = []
    for key in (f"CFLAGS_REMOVE_{stem}.o", f"CFLAGS_REMOVE_{base}.o"):
        if key in make.vars:
            file_removed = make.words(key)
            break
    inherited: list[str] = make.words("subdir-ccflags-y")
    for d in _directories(path):  # subdir-ccflags-y of the directories above the makefile's
        if not directory or d == directory or not directory.startswith(d + "/" if d else ""):
            continue
        found = kbuild_file(read, d)
        if found is None:
            continue
        above = _Make(read, config, pre, d)
        above.run(found[1])
        inherited = above.words("subdir-ccflags-y") + inherited
    words = [w for w in inherited + make.words("ccflags-y") + make.words("EXTRA_CFLAGS")
             if w not in dir_removed]
    words = [w for w in words + own if w not in file_removed]
    return tuple(_normalise(words, directory)), tuple(dict.fromkeys(dir_removed + file_removed))


def _normalise(words: list[str], directory: str) -> list[str]:
    """Flags with every ``-I DIR`` as one ``-I<tree-relative DIR>`` (a directory outside
    the tree, or one Kbuild would have to name, is dropped)."""
    out: list[str] = []
    i = 0
    while i < len(words):
        w = words[i]
        if w == "-I" and i + 1 < len(words):
            w, i = "-I" + words[i + 1], i + 1
        if w.startswith("-I"):
            p = _tree_path(w[2:], directory)
            if p is not None:
                out.append("-I" + p)
        elif w:
            out.append(w)
        i += 1
    return out
