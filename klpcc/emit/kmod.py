"""Kernel target: a bundle becomes a cumulative livepatch module (``replace = true``).

1. :mod:`.ksource` writes one unit per changed C file, from the release's file;
2. this module writes the unit holding the ``klp_patch`` (functions per object,
   callbacks, states) and the ``Kbuild`` file, and builds against a kernel build
   directory with the kernel's own build system;
3. :mod:`.klpelf` turns references the module loader cannot resolve into livepatch
   relocations.

Everything is written in a temporary directory that replaces OUTDIR only when the
whole build succeeded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import bundle as _bundle
from ..errors import KlpccError
from . import klpelf
from .ksource import CALLBACK_KINDS, Resolver, Unit, UnitWriter, object_of
from .ksyms import VMLINUX, Kallsyms, exported, read_kallsyms

HEADER = "klpcc_livepatch.h"
# lint rules whose errors name changes no livepatch can carry
_REFUSED_RULES = {"U001": "a data layout changes", "U002": "a global's initial value changes",
                  "U004": "the function cannot be live patched", "U007": "data the running code uses changes"}
_NAME_MAX = 55  # MODULE_NAME_LEN - 1


def runtime_dir() -> Path:
    """``runtime/kernel`` of this klpcc (beside the package)."""
    here = Path(__file__).resolve().parents[2] / "runtime" / "kernel"
    if not (here / HEADER).is_file():
        raise KlpccError(f"klpcc's kernel runtime is missing ({here / HEADER}); "
                         "reinstall klpcc from its sources")
    return here


@dataclass(frozen=True)
class KernelOptions:
    """``klpcc build --kernel``: the bundle, the kernel build directory (not needed with
    ``source_only``), which source paths belong to which module (default: vmlinux),
    the target's ``/proc/kallsyms`` (symbol positions, inlined functions) and explicit
    ``(file, name, pos)`` symbol positions."""

    bundle: str
    outdir: str
    kdir: str | None = None
    objects: tuple[tuple[str, str], ...] = ()
    replace: bool = True
    source_only: bool = False
    name: str | None = None
    kallsyms: str | None = None
    sympos: tuple[tuple[str, str, int], ...] = ()
    force: bool = False
    jobs: int | None = None


@dataclass
class KernelBuild:
    name: str
    release: str
    outdir: Path
    module: Path | None  # None with source_only
    units: list[Unit]
    nops: list[str]
    states: list[tuple[int, int]]
    replace: bool = True
    symbols: dict[str, str] = field(default_factory=dict)  # undefined name -> livepatch symbol
    klp_sections: list[tuple[str, int]] = field(default_factory=list)
    build_seconds: float = 0.0

    def to_json(self) -> dict:
        return {
            "schema": "klpcc.kernel-build/1",
            "name": self.name,
            "release": self.release,
            "module": None if self.module is None else str(self.module),
            "replace": self.replace,
            "objects": sorted({u.object for u in self.units}),
            "functions": [{"object": u.object, "file": u.path, "name": old, "new": new, "sympos": pos}
                          for u in self.units for old, new, pos in u.patched],
            "nops": self.nops,
            "states": [{"id": i, "version": v} for i, v in self.states],
            "callbacks": [{"object": u.object, "file": u.path, "kind": k, "callback": fn}
                          for u in self.units for k, fn in u.callbacks.items()],
            "livepatch_symbols": self.symbols,
            "livepatch_relocations": [{"section": s, "count": n} for s, n in self.klp_sections],
            "copied": [{"file": u.path, "what": c} for u in self.units for c in u.copied],
            "left_out": [{"file": u.path, "what": c} for u in self.units for c in u.left_out],
            "build_seconds": round(self.build_seconds, 3),
        }


def _manifest(bundle: Path) -> dict:
    path = bundle / "manifest.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KlpccError(f"{bundle} is not a klpcc bundle (no manifest.json); make one with klpcc compile") \
            from None
    except (OSError, ValueError) as exc:
        raise KlpccError(f"{path}: unreadable manifest: {exc}") from None
    if not isinstance(doc, dict) or doc.get("schema") != _bundle.MANIFEST_SCHEMA:
        raise KlpccError(f"{path}: not a {_bundle.MANIFEST_SCHEMA} manifest")
    if "sources" not in doc or not (bundle / "sources").is_dir() and doc["sources"]:
        raise KlpccError(f"{bundle} has no sources/ (made by an older klpcc); compile the bundle again")
    return doc


def _module_name(opts: KernelOptions, release: str) -> str:
    name = opts.name or "klpcc_" + release
    name = re.sub(r"[^A-Za-z0-9_]", "_", name)
    if opts.name and name != opts.name:
        raise KlpccError(f"module name {opts.name!r}: use letters, digits and underscores")
    return name[:_NAME_MAX]


def _refuse(doc: dict) -> None:
    for f in doc.get("lint", {}).get("findings", []):
        why = _REFUSED_RULES.get(f.get("rule"))
        if why and f.get("severity") == "error":
            raise KlpccError(f"{f['file']}:{f['line']}: refusing to build: {why} "
                             f"({f['rule']}: {f['message']})")


def _read_source(bundle: Path, path: str) -> bytes:
    try:
        return (bundle / "sources" / path).read_bytes()
    except OSError as exc:
        raise KlpccError(f"{bundle}/sources/{path}: {exc.strerror}") from None


def release_changes(doc: dict) -> tuple[dict[str, dict[str, str]], dict[str, set[str]]]:
    """What a bundle's release compiles, per C file: its functions (name -> modified or
    added), and the other items it adds (kept as written).  Files that only declare
    callbacks or states count too."""
    by_file: dict[str, dict[str, str]] = {}
    added: dict[str, set[str]] = {}
    for f in [*doc["functions"], *doc.get("outside", [])]:
        kind, change, path = f.get("kind", "function"), f["change"], f["file"]
        if change not in ("modified", "added"):
            continue
        if kind != "function":
            if change == "added":
                added.setdefault(path, set()).add(f["name"])
            continue
        if not path.endswith(".c"):
            if change == "modified" and not f.get("static"):
                raise KlpccError(f"cannot patch {f['name']}: a function defined in a header is compiled into "
                                 "every file that includes it; move the change to a .c file", file=path)
            continue  # a static inline of a header: its callers carry it (compile --objects finds them)
        by_file.setdefault(path, {})[f["name"]] = change
    for c in [*doc.get("callbacks", []), *doc.get("states", [])]:
        if c["file"].endswith(".c"):
            by_file.setdefault(c["file"], {})
    return by_file, added


def _units(doc: dict, bundle: Path, opts: KernelOptions, resolver: Resolver) -> list[Unit]:
    by_file, added = release_changes(doc)
    units: list[Unit] = []
    for i, path in enumerate(sorted(by_file), 1):
        unit = Unit(i, path, object_of(path, list(opts.objects)))
        UnitWriter(unit, _read_source(bundle, path), by_file[path], added.get(path, set()), resolver).write()
        units.append(unit)
    if not any(u.patched for u in units) and not doc.get("nops"):
        raise KlpccError(f"release {doc['release']['name']} changes no function: there is nothing to patch")
    declared = {(c["file"], c["kind"]) for c in doc.get("callbacks", [])}
    found = {(u.path, k) for u in units for k in u.callbacks}
    for path, kind in sorted(declared - found):
        raise KlpccError(f"the {kind} callback is set with an initializer; the module needs it declared with "
                         f"KLPCC_{kind.upper()}(fn)", file=path)
    return units


def _states(doc: dict) -> list[tuple[int, int]]:
    out: dict[int, int] = {}
    for s in doc.get("states", []):
        if not isinstance(s.get("id"), int):
            raise KlpccError(f"{s['file']}:{s['line']}: state id {s.get('id')!r} is not a constant klpcc can "
                             "compute; the module needs a number")
        if s["id"] in out and out[s["id"]] != s["version"]:
            raise KlpccError(f"{s['file']}:{s['line']}: state {s['id']} declared with two versions")
        out[s["id"]] = s["version"]
    return sorted(out.items())


def callback_trampoline(kind: str, fn: str, units: list[int], params: str, args: str) -> list[str]:
    """C lines of ``fn``, the callback of ``kind`` that calls every unit's (a pre_patch
    stops at the first error)."""
    if kind == "pre_patch":
        out = ["", f"static int {fn}({params})", "{", "\tint ret;", ""]
        for i in units:
            out += [f"\tret = klpcc_cb_pre_patch_{i}({args});", "\tif (ret)", "\t\treturn ret;"]
        return out + ["\treturn 0;", "}"]
    return ["", f"static void {fn}({params})", "{", *[f"\tklpcc_cb_{kind}_{i}({args});" for i in units], "}"]


def patch_unit(name: str, release: str, units: list[Unit], states: list[tuple[int, int]],
               replace: bool) -> str:
    """The C unit holding the module's ``klp_patch``."""
    objects: dict[str, list[Unit]] = {}
    for u in units:
        objects.setdefault(u.object, []).append(u)
    out = [f"/* generated by klpcc build: the cumulative live patch of release {release} */",
           "#include <linux/module.h>", "#include <linux/kernel.h>", "#include <linux/livepatch.h>", ""]
    for u in units:
        for _, new, _ in u.patched:
            out.append(f"extern void {new}(void);")
        for kind in u.callbacks:
            ret = "int" if kind == "pre_patch" else "void"
            out.append(f"extern {ret} (*const klpcc_cb_{kind}_{u.index})(struct klp_object *);")
    obj_entries = []
    for n, (obj, us) in enumerate(sorted(objects.items(), key=lambda kv: kv[0] != VMLINUX)):
        out += ["", f"static struct klp_func klpcc_funcs_{n}[] = {{"]
        for u in us:
            for old, new, pos in u.patched:
                out.append(f'\t{{ .old_name = "{old}", .new_func = {new}, .old_sympos = {pos} }},')
        out += ["\t{ }", "};"]
        cbs = []
        for kind in CALLBACK_KINDS:
            having = [u for u in us if kind in u.callbacks]
            if not having:
                continue
            fn = f"klpcc_{kind}_{n}"
            out += callback_trampoline(kind, fn, [u.index for u in having], "struct klp_object *obj", "obj")
            cbs.append(f".{kind} = {fn}")
        label = "NULL" if obj == VMLINUX else f'"{obj}"'
        callbacks = f", .callbacks = {{ {', '.join(cbs)} }}" if cbs else ""
        obj_entries.append(f"\t{{ .name = {label}, .funcs = klpcc_funcs_{n}{callbacks} }},")
    out += ["", "static struct klp_object klpcc_objs[] = {", *obj_entries, "\t{ }", "};"]
    if states:
        out += ["", "static struct klp_state klpcc_states[] = {"]
        out += [f"\t{{ .id = {i}, .version = {v} }}," for i, v in states]
        out += ["\t{ }", "};"]
    out += ["", "struct klp_patch klpcc_patch = {", "\t.mod = THIS_MODULE,", "\t.objs = klpcc_objs,"]
    if states:
        out.append("\t.states = klpcc_states,")
    out += [f"\t.replace = {'true' if replace else 'false'},", "};", "",
            "static int __init klpcc_init(void)", "{", "\treturn klp_enable_patch(&klpcc_patch);", "}", "",
            "static void __exit klpcc_exit(void)", "{", "}", "",
            "module_init(klpcc_init);", "module_exit(klpcc_exit);", 'MODULE_LICENSE("GPL");',
            'MODULE_INFO(livepatch, "Y");',
            f'MODULE_DESCRIPTION("klpcc cumulative live patch, release {_c_string(release)}");', ""]
    return "\n".join(out)


def _c_string(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def kbuild(name: str, units: list[Unit]) -> str:
    objs = " ".join(["klpcc_patch.o"] + [f"src/{u.path[:-2]}.o" for u in units])
    return (f"# generated by klpcc build\nobj-m := {name}.o\n{name}-y := {objs}\n"
            # one section per function: livepatch relocations are kept per function
            "ccflags-y += -I$(src) -ffunction-sections -fdata-sections\n")


_DIAG = re.compile(r"^(?P<file>[^:\s]+):(?P<line>\d+):(?:\d+:)? (?P<kind>fatal error|error|note|warning): "
                   r"(?P<msg>.*)$")


def compile_error(text: str, paths: set[str]) -> str | None:
    """The compiler's first error, placed on a line of the release's own files: an error
    inside a kernel header is reported where the unit's code led to it."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = _DIAG.match(line.strip())
        if not m or "error" not in m["kind"]:
            continue
        if m["file"] in paths:
            return f"{m['file']}:{m['line']}: {m['msg']}"
        for later in lines[i + 1:]:
            n = _DIAG.match(later.strip())
            if n and n["file"] in paths:
                return f"{n['file']}:{n['line']}: {m['msg']} (in {m['file']}:{m['line']})"
            if n and "error" in n["kind"]:
                break
        return f"{m['file']}:{m['line']}: {m['msg']}"
    return None


def _make(kdir: Path, outdir: Path, jobs: int | None, paths: set[str]) -> str:
    cmd = ["make", "-C", str(kdir), f"M={outdir}", f"-j{jobs or os.cpu_count() or 1}", "modules",
           "KBUILD_MODPOST_WARN=1"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", check=False)
    except FileNotFoundError:
        raise KlpccError("make is not installed (the kernel's build system needs it)") from None
    if proc.returncode != 0:
        text = proc.stdout + proc.stderr
        where = compile_error(text, paths)
        if where:
            raise KlpccError(f"the module does not compile: {where}")
        lines = [ln for ln in text.splitlines() if "rror" in ln] or text.strip().splitlines()[-1:]
        raise KlpccError(f"building the module against {kdir} failed: {(lines or ['?'])[0].strip()[:300]}")
    return proc.stdout + proc.stderr


def build_kernel(opts: KernelOptions) -> KernelBuild:
    """Write (and unless ``source_only`` build) the livepatch module of a bundle."""
    bundle = Path(opts.bundle)
    doc = _manifest(bundle)
    release = doc["release"]["name"]
    name = _module_name(opts, release)
    _refuse(doc)
    kdir = None
    if not opts.source_only:
        if not opts.kdir:
            raise KlpccError("--kernel KDIR is needed to build the module (or use --source-only)")
        kdir = Path(opts.kdir)
        if not (kdir / "Makefile").is_file():
            raise KlpccError(f"{kdir} is not a kernel build directory (no Makefile)")
    _bundle.check_target(Path(opts.outdir), opts.force)
    syms: Kallsyms | None = read_kallsyms(opts.kallsyms) if opts.kallsyms else None
    resolver = Resolver(syms, {(f, n): p for f, n, p in opts.sympos})
    exports = exported(kdir) if kdir is not None else set()
    units = _units(doc, bundle, opts, resolver)
    states = _states(doc)
    result = KernelBuild(name, release, Path(os.path.abspath(opts.outdir)), None, units,
                         list(doc.get("nops", [])), states, opts.replace)
    with _bundle.staged(Path(opts.outdir)) as tmp:
        shutil.copy(runtime_dir() / HEADER, tmp / HEADER)
        (tmp / "Kbuild").write_text(kbuild(name, units))
        (tmp / "klpcc_patch.c").write_text(patch_unit(name, release, units, states, opts.replace))
        for s in doc["sources"]:
            if not s["path"].endswith(".c"):
                dest = tmp / "src" / s["path"]
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(_read_source(bundle, s["path"]))
        for u in units:
            dest = tmp / "src" / u.path
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(u.text, encoding="utf-8", errors="surrogateescape")
        if kdir is not None:
            start = time.perf_counter()
            _make(kdir, tmp, opts.jobs, {s["path"] for s in doc["sources"]} | {"klpcc_patch.c"})
            ko = tmp / f"{name}.ko"
            data, conv = klpelf.convert(ko.read_bytes(), _symbol_resolver(units, exports, resolver, syms))
            ko.write_bytes(data)
            result.build_seconds = time.perf_counter() - start
            result.symbols, result.klp_sections = conv.symbols, conv.sections
            result.module = result.outdir / ko.name
        (tmp / "build.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return result


def _symbol_resolver(units: list[Unit], exports: set[str], resolver: Resolver, syms: Kallsyms | None):
    labels = {label: ref for u in units for label, ref in u.labels.items()}
    defined_objects = {u.object for u in units} - {VMLINUX}

    def resolve(name: str) -> klpelf.Target | None:
        ref = labels.get(name)
        if ref is not None:
            pos = resolver.position(ref.object, ref.name, ref.path, ref.what)
            return klpelf.Target(ref.object, ref.name, pos)
        if name in exports:
            return None
        if name.startswith(("__klpcc_sym_", "klpcc_")):
            raise KlpccError(f"the module refers to {name}, which no unit defines")
        owners = sorted(syms.owner.get(name, ())) if syms is not None else []
        unseen = sorted(o for o in defined_objects if syms is not None and not syms.has_object(o))
        if syms is not None and not owners:
            if len(unseen) != 1:  # a module the kallsyms was taken without: its own symbol
                raise KlpccError(f"the patch uses {name}, which the kernel neither exports nor has in its "
                                 f"symbol table ({syms.source})")
            owners = unseen
        obj = VMLINUX if not owners or VMLINUX in owners else next(
            (o for o in owners if o in defined_objects), owners[0])
        return klpelf.Target(obj, name, resolver.position(obj, name, "(global)", "global"))

    return resolve
