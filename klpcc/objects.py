"""Stage 6 (optional): what the compiled code says changed, explained.

With a ``compile_commands.json``, every translation unit a release touches -- its
own file, or a header it includes -- is compiled for the base and for the release
with its own flags plus ``-ffunction-sections -fdata-sections -fdump-ipa-clones``,
and the code of every function is compared section by section with pyelftools,
after normalising relocations to what they name (a symbol, a string's text) rather
than to offsets.  gcc's own record of inlining and cloning (``ipa-clones``) and the
source-level answer explain each difference:

* code that changed though its source did not: an inlined function changed, a macro
  it expands changed, a header it includes changed, data it reads changed;
* source that changed though its code did not (comments, formatting, a dead branch);
* compiler clones (``.isra``, ``.constprop``, ``.part``, ``.cold``) mapped to their
  function; changed data (``.data``, ``.rodata``, static locals) reported, never
  patched.

Objects are cached by the hash of the preprocessed unit and its flags, so a longer
series compiles only what its new release touched; units compile in parallel.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .compdb import BuildFailed, Command, CompileCommands, Overlay, first_error
from .errors import KlpccError
from .history import ADDED, MODIFIED, REMOVED, Analysis, Replay

OBJECTS_FLAGS = ("-ffunction-sections", "-fdata-sections", "-fdump-ipa-clones")
_CLONE = re.compile(r"\.(constprop|isra|part|cold|lto_priv|localalias)(?:\.\d+)?")
_LOCAL_SUFFIX = re.compile(r"\.\d+$")
_LINE_MARKER = re.compile(rb'^# \d+ "([^"]+)"', re.M)
# relocation types whose field is 8 bytes; others patch 4 (x86-64 and AArch64 cover what is used)
_WIDE = {"R_X86_64_64", "R_AARCH64_ABS64", "R_X86_64_PC64"}
_PC_RELATIVE = re.compile(r"R_X86_64_(PC32|PLT32|GOTPCREL|GOTPCRELX|REX_GOTPCRELX)$")


def source_name(symbol: str) -> str:
    """The source function or variable a symbol comes from: ``foo.isra.0`` and
    ``foo.cold`` are ``foo``; a static local ``count.3`` is ``count``."""
    return symbol.split(".")[0] if "." in symbol else symbol


def _normal(symbol: str) -> str:
    """A symbol name without the numbers gcc appends (``x.constprop.0`` ->
    ``x.constprop``, ``count.3`` -> ``count``)."""
    return _LOCAL_SUFFIX.sub("", _CLONE.sub(lambda m: "." + m.group(1), symbol))


@dataclass(frozen=True, slots=True)
class Code:
    """One function's or data object's contents, normalised."""

    symbol: str
    kind: str  # "function" or "data"
    section: str
    digest: str
    refs: tuple[str, ...]  # what its relocations name, in order
    body: bytes = b""  # the bytes, relocated fields zeroed


@dataclass
class UnitObject:
    """One compiled unit: its functions and data, and gcc's inlining record."""

    code: dict[str, Code] = field(default_factory=dict)  # normalised symbol -> code
    inlined: dict[str, set[str]] = field(default_factory=dict)  # caller -> callees inlined into it
    clones: dict[str, str] = field(default_factory=dict)  # clone symbol -> function
    files: set[str] = field(default_factory=set)  # every file the unit reads (root-relative)


@dataclass(frozen=True, slots=True)
class FunctionFinding:
    function: str
    unit: str  # the unit compiled
    file: str  # the file that defines the function (the unit, or a header)
    what: str  # "code-only", "source-only", "line-only", "both"
    reason: str
    symbols: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DataFinding:
    symbol: str
    unit: str
    change: str  # "changed", "added", "removed"
    section: str
    static_local: bool
    function: str | None = None  # the function a static local belongs to


@dataclass
class ObjectReport:
    release: str
    units: list[dict] = field(default_factory=list)  # path, compiled, cached, seconds
    functions: list[FunctionFinding] = field(default_factory=list)
    data: list[DataFinding] = field(default_factory=list)
    clones: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    dwarf: list[dict] = field(default_factory=list)  # changed functions the running binary inlines

    def by(self, what: str) -> list[FunctionFinding]:
        return [f for f in self.functions if f.what == what]

    @property
    def compiled(self) -> int:
        return sum(u["compiled"] for u in self.units)

    @property
    def cache_hits(self) -> int:
        return sum(u["cached"] for u in self.units)


# --------------------------------------------------------------------------- compile


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base, "klpcc", "objects")


class Compiler:
    """Compiles units of the base or of a release, once per preprocessed content."""

    def __init__(self, overlay: Overlay, cache: Path | None):
        self.overlay = overlay
        self.cache = cache
        self._identities: dict[tuple[str, str], str] = {}

    def identity(self, compiler: str, cwd: str) -> str:
        """The compiler as the cache knows it: its path, version and target."""
        key = (compiler, cwd)
        if key not in self._identities:
            path = shutil.which(compiler, path=os.environ.get("PATH")) or compiler
            proc = self._run([compiler, "-dumpfullversion", "-dumpmachine"], cwd)
            self._identities[key] = f"{os.path.realpath(path)} {proc.stdout.decode(errors='replace').split()}"
        return self._identities[key]

    def _run(self, argv: list[str], cwd: str) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(argv, cwd=cwd, capture_output=True, check=False)
        except (OSError, ValueError) as exc:
            raise BuildFailed(f"cannot run {argv[0]}: {exc}") from None

    def compile(self, release: int, path: str, cmd: Command, deps_only: bool = False
                ) -> tuple[Path | None, bytes, bool, set[str]]:
        """(object file, ipa-clones text, from the cache, files the unit reads); with
        ``deps_only``, only the files (the unit is preprocessed, not compiled)."""
        argv, src = self.overlay.argv(release, path, cmd)
        overlay_dir = str(self.overlay.directory(release))
        prefix_map = f"-ffile-prefix-map={overlay_dir}={self.overlay.root}"
        pre = self._run([*argv, prefix_map, "-E", str(src)], cmd.directory)
        if pre.returncode != 0:
            raise BuildFailed(f"cannot preprocess: {first_error(pre.stderr)}")
        text = pre.stdout.replace(overlay_dir.encode(), str(self.overlay.root).encode())
        files = set()
        for m in _LINE_MARKER.finditer(text):
            name = m.group(1).decode("utf-8", "surrogateescape")
            try:
                files.add(Path(cmd.directory, name).resolve().relative_to(self.overlay.root).as_posix())
            except (ValueError, OSError):
                continue
        if deps_only:
            return None, b"", False, files
        flags = [a.replace(overlay_dir, "<overlay>") for a in argv]
        key = hashlib.sha256("\0".join([self.identity(argv[0], cmd.directory), *flags, *OBJECTS_FLAGS])
                             .encode() + b"\0" + text).hexdigest()
        if self.cache is not None:
            obj, ipa = self.cache / f"{key}.o", self.cache / f"{key}.ipa-clones"
            if obj.exists() and ipa.exists():
                if _readable(obj):
                    return obj, ipa.read_bytes(), True, files
                obj.unlink(missing_ok=True)  # a damaged entry: compile again
        work = Path(tempfile.mkdtemp(prefix="unit-", dir=self.overlay.scratch))
        out = work / "unit.o"
        proc = self._run([*argv, prefix_map, *OBJECTS_FLAGS, "-c", str(src), "-o", str(out)], cmd.directory)
        if proc.returncode != 0:
            raise BuildFailed(f"does not compile: {first_error(proc.stderr)}")
        dumps = list(work.glob("*.ipa-clones"))
        ipa_text = dumps[0].read_bytes() if dumps else b""
        if self.cache is None:
            return out, ipa_text, False, files
        self.cache.mkdir(parents=True, exist_ok=True)
        for data, target in ((ipa_text, self.cache / f"{key}.ipa-clones"),
                             (out.read_bytes(), self.cache / f"{key}.o")):
            fd, tmp = tempfile.mkstemp(dir=self.cache, prefix=".tmp-")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, target)
        return self.cache / f"{key}.o", ipa_text, False, files


def _readable(obj: Path) -> bool:
    """Is ``obj`` a whole ELF object (every section's data within the file)?"""
    from elftools.elf.elffile import ELFFile

    try:
        with open(obj, "rb") as fh:
            elf = ELFFile(fh)
            for sec in elf.iter_sections():
                if sec["sh_type"] != "SHT_NOBITS":
                    sec.data()
        return True
    except Exception:  # pyelftools raises several kinds on a damaged file
        return False


def _check_cache(cache: Path) -> None:
    try:
        cache.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=cache, prefix=".probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise KlpccError(f"cannot use the object cache {cache}: {exc.strerror or exc} "
                         "(give another --cache, or --no-cache)") from None


# --------------------------------------------------------------------------- read objects


def read_object(obj: Path, ipa_clones: bytes) -> UnitObject:
    """Functions and data of an object, normalised; inlining and clones from the
    ipa-clones dump."""
    from elftools.elf.elffile import ELFFile
    from elftools.elf.relocation import RelocationSection
    from elftools.elf.sections import SymbolTableSection

    unit = UnitObject()
    with open(obj, "rb") as fh:
        elf = ELFFile(fh)
        symtab = next((s for s in elf.iter_sections() if isinstance(s, SymbolTableSection)), None)
        if symtab is None:
            return unit
        symbols = list(symtab.iter_symbols())
        sections = list(elf.iter_sections())
        by_section: dict[int, list] = {}
        for sym in symbols:
            if sym["st_info"]["type"] in ("STT_FUNC", "STT_OBJECT") and isinstance(sym["st_shndx"], int):
                by_section.setdefault(sym["st_shndx"], []).append(sym)
        relocs: dict[int, list] = {}
        for sec in sections:
            if isinstance(sec, RelocationSection) and sec["sh_info"] in by_section:
                relocs[sec["sh_info"]] = list(sec.iter_relocations())
        data_cache: dict[int, bytes] = {}

        def data_of(index: int) -> bytes:
            if index not in data_cache:
                sec = sections[index]
                data_cache[index] = b"" if sec["sh_type"] == "SHT_NOBITS" else sec.data()
            return data_cache[index]

        def describe(rel) -> tuple[str, str, int]:
            """("sym", raw symbol name, addend) or ("text", what the bytes hold, 0)."""
            sym = symbols[rel["r_info_sym"]]
            addend = rel["r_addend"] if "r_addend" in rel.entry else 0
            rtype = _reloc_name(elf, rel["r_info_type"])
            stype = sym["st_info"]["type"]
            label = stype == "STT_NOTYPE" and sym.name.startswith(".L") and isinstance(sym["st_shndx"], int)
            if stype != "STT_SECTION" and not label:
                return ("sym", sym.name, addend)
            index = sym["st_shndx"]
            sec = sections[index]
            at = addend + (4 if _PC_RELATIVE.match(rtype) else 0) + (sym["st_value"] if label else 0)
            for other in by_section.get(index, ()):
                if other["st_value"] == at:
                    return ("sym", other.name, 0)
            if ".str" in sec.name:  # .rodata.str1.1, .rodata.<fn>.str1.8: a string, by its text
                data = data_of(index)
                end = data.find(b"\0", max(at, 0))
                return ("text", "str:" + data[max(at, 0):end if end >= 0 else len(data)]
                        .decode("utf-8", "replace"), 0)
            if ".cst" in sec.name:
                width = int(re.sub(r"\D", "", sec.name.split(".")[-1]) or "8")
                return ("text", "cst:" + data_of(index)[max(at, 0):max(at, 0) + width].hex(), 0)
            return ("text", f"{_LOCAL_SUFFIX.sub('', sec.name)}{addend:+d}", 0)

        raw = []
        for index, syms in by_section.items():
            sec = sections[index]
            data = data_of(index)
            for sym in syms:
                start, size = sym["st_value"], sym["st_size"]
                body = bytearray(data[start:start + size])
                refs = []
                for rel in sorted(relocs.get(index, ()), key=lambda r: r["r_offset"]):
                    off = rel["r_offset"] - start
                    if not 0 <= off < max(size, 1):
                        continue
                    width = 8 if _reloc_name(elf, rel["r_info_type"]) in _WIDE else 4
                    body[off:off + width] = bytes(min(width, len(body) - off))
                    refs.append((off, describe(rel)))
                kind = "function" if sym["st_info"]["type"] == "STT_FUNC" else "data"
                raw.append((sym.name, kind, sec.name, bytes(body), refs))
        # a static local (``kwlist.3``) is known by the function that uses it: the
        # numbers gcc gives change as soon as another one is added
        owners: dict[str, set[str]] = {}
        for name, kind, _, _, refs in raw:
            if kind == "function":
                for _, (what, target, _) in refs:
                    if what == "sym" and _LOCAL_SUFFIX.search(target) and not _CLONE.search(target):
                        owners.setdefault(target, set()).add(source_name(name))

        keys: dict[str, str] = {}
        taken: set[str] = set()
        for name, *_ in raw:  # symbol-table order: declaration order within a function
            plain = _LOCAL_SUFFIX.sub("", name)
            owner = sorted(owners[name])[0] if name in owners else None
            k = f"{plain}@{owner}" if owner else _normal(name)
            n = 1
            while k in taken and owner:  # two `static int n` in one function
                n += 1
                k = f"{plain}#{n}@{owner}"
            taken.add(k)
            keys[name] = k

        def key(name: str) -> str:
            return keys.get(name) or _normal(name)

        for name, kind, secname, body, refs in raw:
            shown = tuple(f"{key(t)}{a:+d}" if what == "sym" else t for _, (what, t, a) in refs)
            digest = hashlib.blake2b(body + "\n".join(f"{o}:{r}" for (o, _), r in zip(refs, shown)).encode()
                                     + str(len(body)).encode(), digest_size=12).hexdigest()
            unit.code[key(name)] = Code(name, kind, secname, digest, shown, body)
    for line in ipa_clones.decode("utf-8", "replace").splitlines():
        parts = line.split(";")
        if len(parts) >= 12 and parts[0] == "Callgraph clone":
            callee, clone, reason = parts[1], parts[6], parts[11]
            if reason.startswith("inlining to"):
                unit.inlined.setdefault(source_name(clone), set()).add(source_name(callee))
            else:
                unit.clones[clone] = callee
    return unit


def _reloc_name(elf, rtype: int) -> str:
    from elftools.elf.descriptions import describe_reloc_type

    return describe_reloc_type(rtype, elf)


# --------------------------------------------------------------------------- compare


def _units_touched(rep: Replay, release: int, commands: CompileCommands,
                   report: ObjectReport) -> tuple[list[str], set[str]]:
    changed = set(rep.snapshots.changed_paths(release))
    units = []
    for p in sorted(changed):
        if not p.endswith((".c", ".cc", ".cpp", ".cxx")):
            continue
        if p not in commands.entries:
            report.notes.append(f"{p}: the release changes it but the compilation database has no "
                                "entry for it: not compared")
        elif rep.snapshots.read(p, release) is None:
            report.notes.append(f"{p}: deleted by the release: its functions are removed, nothing to compile")
        elif rep.snapshots.read(p, 0) is None:
            report.notes.append(f"{p}: added by the release: all its functions are new")
        else:
            units.append(p)
    return units, changed


def check(analysis: Analysis, commands: CompileCommands, *, jobs: int | None = None,
          cache: Path | None = None, progress: Callable[[int, int], None] | None = None,
          binary: str | Path | None = None) -> ObjectReport:
    """Compile the units release R touches, for the base and for R, and compare;
    with ``binary`` (the running program, built with ``-g``), cross-check with the
    inlining its DWARF records."""
    rep = analysis.replay
    release = analysis.release
    report = ObjectReport(analysis.release_name)
    dwarf = read_dwarf(binary) if binary is not None else None  # a bad binary fails before compiling
    if cache is not None:
        _check_cache(cache)
    overlay = Overlay(rep, commands)
    compiler = Compiler(overlay, cache)
    try:
        units, changed = _units_touched(rep, release, commands, report)
        headers = sorted(p for p in changed if p not in commands.entries)
        others = [p for p in commands.entries if p not in units] if headers else []
        jobs = max(1, jobs or os.cpu_count() or 1)
        tasks = [(r, p) for p in units for r in (0, release)] + [(0, p) for p in others]
        results: dict[tuple[int, str], tuple[Path, bytes, bool, set[str]] | str] = {}
        done = 0

        def run(task: tuple[int, str], deps_only: bool = False):
            r, p = task
            try:
                return task, compiler.compile(r, p, commands.entries[p], deps_only)
            except (BuildFailed, OSError, ValueError) as exc:
                return task, f"{p}: {exc}"

        with ThreadPoolExecutor(max_workers=jobs) as pool:
            pending = list(pool.map(run, tasks[:len(units) * 2]))
            for task, res in pending:
                results[task] = res
                done += 1
                if progress:
                    progress(done, len(tasks))
            # units reading a touched header: found from the base's preprocessing
            extra = []
            for task, res in pool.map(lambda t: run(t, True), tasks[len(units) * 2:]):
                done += 1
                if progress:
                    progress(done, len(tasks))
                if isinstance(res, tuple) and res[3] & set(headers):
                    extra.append(task[1])
            for task, res in pool.map(run, [(r, p) for p in extra for r in (0, release)]):
                results[task] = res
        for p in sorted([*units, *extra]):
            base, new = results.get((0, p)), results.get((release, p))
            if isinstance(base, str) or isinstance(new, str) or base is None or new is None:
                report.notes.append(next(x for x in (base, new) if isinstance(x, str)) if
                                    isinstance(base, str) or isinstance(new, str) else f"{p}: not compiled")
                continue
            report.units.append({"path": p, "compiled": int(not base[2]) + int(not new[2]),
                                 "cached": int(base[2]) + int(new[2]),
                                 "headers": sorted(new[3] & changed - {p})})
            assert base[0] is not None and new[0] is not None
            try:
                before, after = read_object(base[0], base[1]), read_object(new[0], new[1])
            except Exception as exc:  # pyelftools' own errors on a damaged object
                report.notes.append(f"{p}: cannot read its object: {type(exc).__name__}: {exc}")
                continue
            _compare(p, before, after, new[3] & changed - {p}, analysis, report, reads=new[3])
    finally:
        overlay.close()
    report.functions.sort(key=lambda f: (f.unit, f.function))
    if dwarf is not None:
        _cross_check(report, analysis, commands, dwarf)
    return report


def _source_changes(analysis: Analysis, files: set[str] | None = None) -> dict[str, str]:
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


def _compare(path: str, base: UnitObject, new: UnitObject, headers: set[str], analysis: Analysis,
             report: ObjectReport, reads: set[str] | None = None) -> None:
    sources = _source_changes(analysis, {path} | set(reads or ()))
    macros = {e.name for e in analysis.outside
              if e.kind == "macro" and e.change in (MODIFIED, ADDED, REMOVED)}
    changed_data = set()
    for name in sorted(set(base.code) | set(new.code)):
        a, b = base.code.get(name), new.code.get(name)
        kind = (a or b).kind
        if kind != "data":
            continue
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
    inlined_into: dict[str, set[str]] = {}
    for caller, callees in new.inlined.items():
        for callee in callees:
            inlined_into.setdefault(callee, set()).add(caller)
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
            deltas = {b - a for a, b in moved.values()}  # inlined functions carry their own lines
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
            code = new.code.get(fn)
            clones = sorted({_ref_target(r) for r in (code.refs if code else ())
                             if _CLONE.search(_ref_target(r)) and _ref_target(r) in new.code
                             and _digest(base, _ref_target(r)) != _digest(new, _ref_target(r))})
            if fn in groups and clones:
                why = ("its own code did not change: the change went into the compiler clone "
                       + ", ".join(f"`{c}`" for c in clones) + " it calls, which changed")
            elif fn in groups and statics:
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


def _digest(unit: UnitObject, name: str) -> str | None:
    code = unit.code.get(name)
    return code.digest if code is not None else None


def _function_texts(analysis: Analysis, path: str, release: int) -> dict[str, tuple[int, str]]:
    """(first line, source text) of every function of file ``path`` in ``release``."""
    from .functions import CSource, split_lines

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
        if a is None or b is None or len(a.body) != len(b.body) or a.refs != b.refs:
            return False
        if not _differs_by(a.body, b.body, deltas):
            return False
    return bool(changed)


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


@dataclass
class Dwarf:
    """What a binary's DWARF says: the functions inlined into each function, and the
    options each unit was compiled with."""

    inlined: dict[str, set[str]] = field(default_factory=dict)  # caller -> callees inlined into it
    producers: dict[str, str] = field(default_factory=dict)  # unit name -> DW_AT_producer
    units: dict[str, set[str]] = field(default_factory=dict)  # function -> units defining it


def read_dwarf(path: str | Path) -> Dwarf:
    """Inlining records (``DW_TAG_inlined_subroutine`` and its abstract origin) and
    producers of a binary built with ``-g``."""
    from elftools.common.exceptions import DWARFError, ELFError, ELFParseError
    from elftools.elf.elffile import ELFFile

    shown = str(path)
    try:
        fh = open(path, "rb")  # noqa: SIM115 (closed by the with below; open errors are ours)
    except OSError as exc:
        raise KlpccError(f"cannot read the binary: {exc.strerror}", patch=shown) from None
    with fh:
        try:
            elf = ELFFile(fh)
        except ELFError as exc:
            raise KlpccError(f"is not an ELF binary: {exc}", patch=shown) from None
        try:
            return _read_dwarf(elf, shown)
        except (ELFError, ELFParseError, DWARFError, ValueError, KeyError, EOFError) as exc:
            raise KlpccError(f"its DWARF cannot be read: {exc}", patch=shown) from None


def _read_dwarf(elf, shown: str) -> Dwarf:
    out = Dwarf()
    if elf.get_section_by_name(".debug_info") is None and elf.get_section_by_name(".zdebug_info") is None:
        raise KlpccError("has no DWARF: build it with -g to cross-check inlining", patch=shown)
    dwarf = elf.get_dwarf_info()

    def name_of(die) -> str | None:
        for _ in range(4):
            if "DW_AT_name" in die.attributes:
                return die.attributes["DW_AT_name"].value.decode("utf-8", "replace")
            for ref in ("DW_AT_abstract_origin", "DW_AT_specification"):
                if ref in die.attributes:
                    die = die.get_DIE_from_attribute(ref)
                    break
            else:
                return None
        return None

    def inlined_in(die, into: set[str]) -> None:
        for child in die.iter_children():
            if child.tag == "DW_TAG_inlined_subroutine":
                callee = name_of(child)
                if callee:
                    into.add(callee)
            if child.has_children:
                inlined_in(child, into)

    for cu in dwarf.iter_CUs():
        top = cu.get_top_DIE()
        unit = top.attributes.get("DW_AT_name")
        producer = top.attributes.get("DW_AT_producer")
        if unit is not None and producer is not None:
            out.producers[unit.value.decode("utf-8", "replace")] = \
                producer.value.decode("utf-8", "replace")
        unit_name = unit.value.decode("utf-8", "replace") if unit is not None else "?"
        for die in top.iter_children():
            if die.tag != "DW_TAG_subprogram" or "DW_AT_low_pc" not in die.attributes:
                continue
            caller = name_of(die)
            if not caller:
                continue
            out.units.setdefault(caller, set()).add(unit_name)
            callees: set[str] = set()
            inlined_in(die, callees)
            if callees:
                out.inlined.setdefault(caller, set()).update(callees)
    return out


_OPT = re.compile(r"(?:^|\s)(-O[0-3sgz]?|-flive-patching=\S+)")


def _cross_check(report: ObjectReport, analysis: Analysis, commands: CompileCommands, dwarf: Dwarf) -> None:
    """Every changed function the binary inlines somewhere: are its callers in the
    patch?  And were the units built with the options the compile commands give?"""
    changed = _source_changes(analysis)
    carried = {f.function for f in report.functions if f.what in ("both", "code-only")}
    for callee in sorted(changed):
        callers = sorted(c for c, inl in dwarf.inlined.items() if callee in inl and c != callee)
        if not callers:
            continue
        missing = [c for c in callers if c not in carried]
        report.dwarf.append({"function": callee, "inlined_into": callers, "not_in_patch": missing})
        if missing:
            report.notes.append(
                f"the binary inlines `{callee}` (changed) into {', '.join(missing)}, which the object "
                "comparison did not find changed: are the compile commands those the binary was built with?")
    for unit in report.units:
        cmd = commands.entries.get(unit["path"])
        producer = next((p for n, p in dwarf.producers.items()
                         if n == unit["path"] or n.endswith("/" + unit["path"]) or
                         os.path.basename(n) == os.path.basename(unit["path"])), None)
        if cmd is None or producer is None:
            continue
        built = _OPT.findall(producer)
        given = _OPT.findall(" ".join(cmd.args))
        if built and given and built[-1:] != given[-1:]:
            report.notes.append(f"{unit['path']}: the binary was built with {' '.join(built)}, the compile "
                                f"command says {' '.join(given)}: object-level answers may differ from it")


def summary(report: ObjectReport) -> dict:
    return {
        "both": len(report.by("both")),
        "code_only": len(report.by("code-only")),
        "source_only": len(report.by("source-only")),
        "line_only": len(report.by("line-only")),
        "units": len(report.units),
        "compiled": report.compiled,
        "cache_hits": report.cache_hits,
    }


def to_json(report: ObjectReport) -> dict:
    return {
        "release": report.release,
        "summary": summary(report),
        "units": report.units,
        "functions": [{"function": f.function, "file": f.file, "unit": f.unit, "what": f.what,
                       "reason": f.reason, "symbols": list(f.symbols)} for f in report.functions],
        "data": [{"symbol": d.symbol, "unit": d.unit, "change": d.change, "section": d.section,
                  "static_local": d.static_local, "function": d.function} for d in report.data],
        "clones": dict(sorted(report.clones.items())),
        "dwarf": report.dwarf,
        "notes": report.notes,
    }


def text(report: ObjectReport) -> str:
    s = summary(report)
    lines = [f"object-level check of release {report.release}: {s['units']} unit(s), "
             f"{s['compiled']} compiled, {s['cache_hits']} from the cache"]
    for what, title in (("code-only", "code changed, source did not (joins the patch)"),
                        ("source-only", "source changed, code did not (dropped from the patch)"),
                        ("line-only", "only line numbers in the code changed (not patched)"),
                        ("both", "source and code changed")):
        found = report.by(what)
        if found:
            lines.append(f"  {title}:")
            lines += [f"    {f.function} ({f.file}{'' if f.file == f.unit else ', in ' + f.unit}): {f.reason}"
                      for f in found]
    if report.data:
        lines.append("  data changed (not patched; for the lint to judge):")
        lines += [f"    {d.symbol} ({d.unit}, {d.section}): {d.change}"
                  + (f" [static local of {d.function}]" if d.static_local else "") for d in report.data]
    for d in report.dwarf:
        missing = f" (not in the patch: {', '.join(d['not_in_patch'])})" if d["not_in_patch"] else ""
        lines.append(f"  the binary inlines `{d['function']}` into {', '.join(d['inlined_into'])}{missing}")
    lines += [f"  note: {n}" for n in report.notes]
    return "\n".join(lines) + "\n"

