"""Exact struct layouts, where the build flags are known (``compile_commands.json``).

For a type used in file F of release X: F and every file the series touches are
written as X has them into an overlay directory; F is preprocessed with its own
flags (GNU extensions masked) and parsed with pycparser to list the members of the
type; then a probe translation unit -- F itself followed by ``sizeof``, ``_Alignof``
and ``offsetof`` of each member -- is compiled with F's real flags, and the numbers
are read back from the object with pyelftools.  So the layout is the compiler's
own, for the target's ABI and configuration.  Where any step fails (no entry for
F, code pycparser cannot read, a compile error) the caller falls back to comparing
the type's definition text.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..compdb import BuildFailed, Command, CompileCommands, Overlay
from ..history import Replay
from ..toolchain import first_error

# the preprocessing pycparser reads: GNU syntax masked out (the layout itself comes
# from the real compile)
_PYCPARSER_DEFINES = ("-U__GNUC__", "-D__attribute__(x)=", "-D__extension__=", "-D__restrict=",
                      "-D__inline=inline", "-D__asm__(x)=", "-D__builtin_va_list=int",
                      "-D__THROW=", "-D__wur=")


@dataclass(frozen=True, slots=True)
class Layout:
    size: int
    align: int
    members: tuple[tuple[str, int | None, int | None], ...]  # (name, offset, size); bitfields: None

    def key(self) -> str:
        parts = [f"size {self.size}", f"align {self.align}"]
        parts += [f"{n}@{o}:{s}" if o is not None else f"{n}:bits" for n, o, s in self.members]
        return ", ".join(parts)

    def differs(self, other: Layout) -> str:
        """A short account of how ``other`` differs from this layout."""
        if self.size != other.size:
            return f"size {self.size} -> {other.size} bytes"
        mine = {n: (o, s) for n, o, s in self.members}
        theirs = {n: (o, s) for n, o, s in other.members}
        for n, where in theirs.items():
            if n not in mine:
                return f"member {n} added"
            if mine[n] != where:
                return f"member {n} moved or resized"
        for n in mine:
            if n not in theirs:
                return f"member {n} removed"
        return f"alignment {self.align} -> {other.align}"


class Layouts:
    """Layouts of types as each release has them, computed on demand and cached."""

    def __init__(self, rep: Replay, commands: CompileCommands):
        self.rep = rep
        self.commands = commands
        self.overlay = Overlay(rep, commands)
        self._cache: dict[tuple, Layout | None] = {}
        self.failures: list[str] = []

    def close(self) -> None:
        self.overlay.close()

    def layout(self, release: int, path: str, type_name: str, key: tuple = ()) -> Layout | None:
        """The layout of ``type_name`` as translation unit ``path`` sees it in
        ``release`` (None: no compile command, or a step failed)."""
        cache_key = (path, type_name, key or release)
        if cache_key in self._cache:
            return self._cache[cache_key]
        cmd = self.commands.get(path)
        result = None
        if cmd is not None and self.commands.root is not None:
            try:
                result = self._compute(release, path, type_name, cmd)
            except BuildFailed as exc:
                self.failures.append(f"{path}: {type_name}: {exc}")
            except (OSError, ValueError, subprocess.SubprocessError) as exc:  # no compiler, bad entry
                self.failures.append(f"{path}: {type_name}: cannot run the compile command: {exc}")
        self._cache[cache_key] = result
        return result

    def _compute(self, release: int, path: str, type_name: str, cmd: Command) -> Layout:
        argv, src = self.overlay.argv(release, path, cmd)
        members = self._members(argv, src, type_name, cmd.directory)
        work = Path(tempfile.mkdtemp(prefix="probe-", dir=self.overlay.scratch))
        probe = work / "probe.c"
        exprs = [f"sizeof({type_name})", f"_Alignof({type_name})"]
        for name, is_bits in members:
            if not is_bits:
                exprs += [f"__builtin_offsetof({type_name}, {name})",
                          f"sizeof((({type_name} *)0)->{name})"]
        probe.write_text(f'#include "{src}"\n'
                         "const unsigned long long klpcc_layout_probe[] = {\n\t"
                         + ",\n\t".join(f"(unsigned long long)({e})" for e in exprs) + "\n};\n")
        obj = work / "probe.o"
        proc = subprocess.run([*argv, "-w", "-c", str(probe), "-o", str(obj)], cwd=cmd.directory,
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise BuildFailed(f"the probe does not compile: {first_error(proc.stderr)}")
        values = _read_probe(obj, len(exprs))
        shutil.rmtree(work, ignore_errors=True)
        out: list[tuple[str, int | None, int | None]] = []
        i = 2
        for name, is_bits in members:
            if is_bits:
                out.append((name, None, None))
            else:
                out.append((name, values[i], values[i + 1]))
                i += 2
        return Layout(values[0], values[1], tuple(out))

    def _members(self, argv: list[str], src: Path, type_name: str, cwd: str) -> list[tuple[str, bool]]:
        import pycparser
        from pycparser import c_ast

        proc = subprocess.run([*argv, "-E", *_PYCPARSER_DEFINES, str(src)], cwd=cwd,
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise BuildFailed(f"cannot preprocess: {first_error(proc.stderr)}")
        try:
            ast = pycparser.CParser().parse(proc.stdout, str(src))
        except Exception as exc:  # pycparser raises its own ParseError and others
            raise BuildFailed(f"pycparser cannot read it: {str(exc).splitlines()[0][:120]}") from None
        try:
            struct = _find_struct(ast, type_name, c_ast)
            if struct is None:
                raise BuildFailed("no definition of the type")
            return list(_member_names(struct, c_ast, ast))
        except RecursionError:  # pycparser's visitor recurses: a very deep expression somewhere
            raise BuildFailed("the unit nests too deeply for pycparser") from None


def _find_struct(ast, type_name: str, c_ast):
    """The complete Struct/Union node ``type_name`` (``struct foo`` or a typedef) names."""
    words = type_name.split()
    typedefs = {}
    found = None

    class V(c_ast.NodeVisitor):
        def _tagged(self, node, keyword: str) -> None:
            nonlocal found
            if found is None and node.decls is not None and words == [keyword, node.name]:
                found = node
            self.generic_visit(node)

        def visit_Struct(self, node):  # noqa: N802 (pycparser's visitor naming)
            self._tagged(node, "struct")

        def visit_Union(self, node):  # noqa: N802
            self._tagged(node, "union")

        def visit_Typedef(self, node):  # noqa: N802
            typedefs[node.name] = node.type
            self.generic_visit(node)

    V().visit(ast)
    if found is None and len(words) == 1 and words[0] in typedefs:
        t = typedefs[words[0]]
        inner = getattr(t, "type", None)
        if isinstance(inner, (c_ast.Struct, c_ast.Union)):
            if inner.decls is not None:
                return inner
            return _find_struct(ast, f"{'struct' if isinstance(inner, c_ast.Struct) else 'union'} "
                                     f"{inner.name}", c_ast)
    return found


def _member_names(node, c_ast, ast=None, prefix: str = "", depth: int = 0):
    """(member designator, is a bitfield) for each member: anonymous members
    flattened, members of struct type followed into (``inner.x``) a few levels deep."""
    for d in node.decls or []:
        inner = d.type
        if d.name is None and isinstance(inner, (c_ast.Struct, c_ast.Union)):
            yield from _member_names(inner, c_ast, ast, prefix, depth)
            continue
        if d.name is None:
            continue
        name = prefix + d.name
        yield name, d.bitsize is not None
        target = inner.type if isinstance(inner, c_ast.TypeDecl) else None
        if depth >= 3 or not isinstance(target, (c_ast.Struct, c_ast.Union)):
            continue
        if target.decls is None and ast is not None and target.name:
            keyword = "struct" if isinstance(target, c_ast.Struct) else "union"
            target = _find_struct(ast, f"{keyword} {target.name}", c_ast)
        if target is not None and target.decls is not None:
            yield from _member_names(target, c_ast, ast, name + ".", depth + 1)


def _read_probe(obj: Path, count: int) -> list[int]:
    from elftools.elf.elffile import ELFFile

    with open(obj, "rb") as fh:
        elf = ELFFile(fh)
        symtab = elf.get_section_by_name(".symtab")
        if symtab is None:
            raise BuildFailed("the probe object has no symbol table")
        syms = symtab.get_symbol_by_name("klpcc_layout_probe")
        if not syms:
            raise BuildFailed("the probe object lacks its table")
        sym = syms[0]
        section = elf.get_section(sym["st_shndx"])
        data = section.data()[sym["st_value"]:sym["st_value"] + 8 * count]
        order = "little" if elf.little_endian else "big"
        if len(data) != 8 * count:
            raise BuildFailed("the probe table is short")
        return [int.from_bytes(data[i:i + 8], order) for i in range(0, len(data), 8)]
