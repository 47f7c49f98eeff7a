"""The kernel sweep: (file, function) picks drawn from Debian's linux-source-6.1, a
one-line change in each (a ``pr_debug`` as the body's first statement), and
``klpcc compile`` + ``klpcc build --kernel`` against the installed kernel's build
directory, without the target's kallsyms (the compiled units predict its statics).

Each pick ends in one of:

* ``built``: a livepatch module was written;
* ``refused``: klpcc exited non-zero with one line naming the file and a reason that
  ``REASONS`` (the list in docs/kernel.md) documents;
* ``undocumented``: refused for a reason the list does not have;
* ``broken``: the unit klpcc wrote did not compile (a defect, whatever the reason);
* ``crashed``: a traceback, or an exit status of 0 without a module.

Used by tests/test_kernel_sweep.py (a bounded sample, in CI) and
bench/bench_kernel_sweep.py (the full sweep, with figures).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from klpcc import kbuild
from klpcc.c import CSource, split_lines
from klpcc.c.language import parser

# What is extracted from linux-source (with the makefiles that decide objects and flags)
SUBSET = ("fs", "kernel", "mm", "net/core", "drivers/base", "arch/x86/kvm", "virt/kvm",
          # what their files include from elsewhere ("../../io_uring/io-wq.h")
          "tools/lib/bpf", "io_uring", "block", "lib/kstrtox.h",
          "Kbuild", "net/Makefile", "drivers/Makefile", "arch/x86/Makefile", "virt/Makefile")
# Subsystems and their share of the picks (fs/xfs and arch/x86/kvm are modules)
QUOTAS = {"fs": 70, "kernel": 70, "mm": 45, "net/core": 35, "drivers/base": 25, "fs/xfs": 30,
          "arch/x86/kvm": 25}
EXCLUDED = {"fs": ("fs/xfs/",)}  # counted under their own subsystem
MESSAGE = 'pr_debug("klpcc sweep: %s\\n", __func__);'

# Every reason klpcc may refuse a pick for, as docs/kernel.md lists them: name -> pattern
REASONS: dict[str, re.Pattern[str]] = {name: re.compile(p) for name, p in {
    "__init/__exit": r"cannot patch \w+ \(line \d+\): it is (__init|__exit)\b"
                     r"|\(\) is (__init|__exit): a live patch cannot redirect it",
    "notrace/noinstr": r"cannot patch \w+ \(line \d+\): it is (notrace|noinstr|__kprobes|__noinstr_section|"
                       r"__cpuidle|__irq_entry|__softirq_entry)\b"
                       r"|cannot patch \w+ \(line \d+\): the kernel compiled it without ftrace's entry hook"
                       r"|\(\) is (notrace|noinstr|__kprobes): a live patch cannot redirect it",
    "always-inline": r"cannot patch \w+ \(line \d+\): it is __always_inline",
    "static inline": r"it is static inline, so its callers carry its code"
                     r"|a static inline the kernel kept out of line .* holds its address",
    "built without ftrace": r"builds \S+ without .*\(ftrace's entry hook\)",
    "not built": r"this kernel's configuration does not build",
    "no code change": r"changes no function|changes nothing|no function's code",
    "inlined everywhere": r"has no symbol \w+ \(inlined everywhere",
    "macro-defined": r"defined with the macro \w+, and the running \w+ has no symbol"
                     r"|only through a macro klpcc cannot rewrite on its own",
    "includes data": r"cannot patch a file that includes data",
    "undeclarable macro data": r"cannot declare \w+ \(line \d+\): it is defined with a macro",
    "never returns": r"never returns|stays on the stack",
    "data change": r"changes the (type|layout|initial value)|changes data|a global variable"
                   r"|has no storage in the running \w+ .*and the patch writes it",
    "module's static key": r"reads when the module loads, before livepatch can relocate it",
}.items()}

_TRACEBACK = re.compile(r"Traceback \(most recent call last\)")
_UNIT_ERROR = re.compile(r"(error:|Error \d)")


@dataclass(frozen=True)
class Pick:
    subsystem: str
    path: str
    function: str
    line: int  # the function's first line
    object: str  # what the makefiles say it is built into


@dataclass
class Outcome:
    pick: Pick
    status: str  # built, refused, undocumented, broken, crashed
    reason: str = ""  # the REASONS name, for refused
    message: str = ""
    compile_seconds: float = 0.0
    build_seconds: float = 0.0
    module: str | None = None
    functions: list[str] = field(default_factory=list)  # what the module patches
    notes: list[str] = field(default_factory=list)  # why functions joined or left the set

    def to_json(self) -> dict:
        d = asdict(self)
        d["pick"] = asdict(self.pick)
        return d


def config(kdir: Path) -> dict[str, str]:
    return kbuild.read_config((kdir / ".config").read_text(errors="replace"))


def _reader(root: Path):
    def read(p: str) -> bytes | None:
        f = root / p
        return f.read_bytes() if f.is_file() else None
    return read


def built_files(root: Path, subsystem: str, cfg: dict[str, str]) -> list[tuple[str, str]]:
    """(path, object) of the C files under ``subsystem`` the configuration builds."""
    read = _reader(root)
    out = []
    for f in sorted((root / subsystem).rglob("*.c")):
        rel = f.relative_to(root).as_posix()
        if any(rel.startswith(x) for x in EXCLUDED.get(subsystem, ())):
            continue
        r = kbuild.rules(read, rel, cfg)
        if r.object is not None:
            out.append((rel, r.object))
    return out


def insertion(data: bytes, body_at: int) -> int | None:
    """Where the one-line change goes in the body opening at ``body_at``: before its
    first statement, after the declarations (None: declarations inside a conditional
    block come first, and a statement before them would be a warning)."""
    tree = parser().parse(data)
    node = tree.root_node.descendant_for_byte_range(body_at, body_at + 1)
    while node is not None and not (node.type == "compound_statement" and node.start_byte == body_at):
        node = node.parent
    if node is None:
        return None
    for child in node.children[1:]:
        if child.type in ("comment", "declaration", "type_definition", "struct_specifier", ";"):
            continue
        if child.type.startswith("preproc"):
            if _has_declaration(child):
                return None
            continue
        return child.start_byte
    return None


def _has_declaration(node) -> bool:
    stack = [node]
    while stack:
        n = stack.pop()
        if n.type == "declaration":
            return True
        stack.extend(n.children)
    return False


def edit(data: bytes, at: int) -> bytes:
    """``data`` with the change inserted at byte ``at`` (on its own line when ``at``
    starts one)."""
    line_start = data.rfind(b"\n", 0, at) + 1
    indent = data[line_start:at]
    if indent.strip():
        return data[:at] + MESSAGE.encode() + b" " + data[at:]
    return data[:line_start] + indent + MESSAGE.encode() + b"\n" + data[line_start:]


def candidates(root: Path, path: str) -> list[tuple[str, int, int]]:
    """(function, first line, insertion byte) of every function of ``path`` that can
    take the change."""
    data = (root / path).read_bytes()
    out = []
    src = CSource(path, split_lines(data))
    seen: set[str] = set()
    for it in src.items():
        if it.kind != "function" or it.name in seen:
            continue
        seen.add(it.name)
        text = data[it.start_byte:it.end_byte]
        brace = _body_brace(text)
        if brace is None:
            continue
        at = insertion(data, it.start_byte + brace)
        if at is not None:
            out.append((it.name, it.start_line, at))
    return out


def _body_brace(text: bytes) -> int | None:
    from klpcc.c.text import scan

    at = scan(text.decode("utf-8", "surrogateescape"), "{")
    if at < 0:
        return None
    return len(text.decode("utf-8", "surrogateescape")[:at].encode("utf-8", "surrogateescape"))


def draw(root: Path, cfg: dict[str, str], quotas: dict[str, int], seed: int) -> list[Pick]:
    """``quotas[s]`` picks from subsystem ``s``: a random built file, then a random
    function of it that can take the change (files are drawn again until one has)."""
    rng = random.Random(seed)
    picks: list[Pick] = []
    for sub, n in quotas.items():
        files = built_files(root, sub, cfg)
        rng.shuffle(files)
        chosen: set[tuple[str, str]] = set()
        for path, obj in files * 3:  # a file may give more than one pick
            if sum(1 for p in picks if p.subsystem == sub) >= n:
                break
            funcs = [c for c in candidates(root, path) if (path, c[0]) not in chosen]
            if not funcs:
                continue
            name, line, _ = rng.choice(funcs)
            chosen.add((path, name))
            picks.append(Pick(sub, path, name, line, obj))
    return picks


def series_for(root: Path, pick: Pick, work: Path) -> Path:
    """A one-patch quilt series changing ``pick``'s function."""
    data = (root / pick.path).read_bytes()
    at = {c[0]: c[2] for c in candidates(root, pick.path)}[pick.function]
    new = edit(data, at)
    import difflib

    diff = difflib.unified_diff(data.decode("utf-8", "surrogateescape").splitlines(keepends=True),
                                new.decode("utf-8", "surrogateescape").splitlines(keepends=True),
                                f"a/{pick.path}", f"b/{pick.path}")
    patches = work / "patches"
    patches.mkdir(parents=True, exist_ok=True)
    (patches / "0001-sweep.patch").write_text(
        f"Subject: [PATCH] {pick.path}: pr_debug in {pick.function}\n\n---\n" + "".join(diff),
        encoding="utf-8", errors="surrogateescape")
    (patches / "series").write_text("0001-sweep.patch\n")
    return patches


def _klpcc(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "klpcc", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)


def classify(proc: subprocess.CompletedProcess) -> tuple[str, str, str]:
    """(status, reason, message) of a failed klpcc run."""
    err = (proc.stderr or "") + (proc.stdout or "")
    if _TRACEBACK.search(err):
        return "crashed", "", err[-3000:]
    line = next((ln for ln in err.splitlines() if ln.startswith("klpcc: error:")), err.strip()[:400])
    if "does not compile" in err or "building the module against" in err or (
            _UNIT_ERROR.search(err) and "src/" in err):
        return "broken", "", err[-3000:]
    for name, pat in REASONS.items():
        if pat.search(line):
            return "refused", name, line
    return "undocumented", "", line


def run_pick(root: Path, kdir: Path, pick: Pick, work: Path, jobs: int = 1) -> Outcome:
    """``klpcc compile`` and ``klpcc build --kernel`` of one pick, in ``work``."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    patches = series_for(root, pick, work)
    out = Outcome(pick, "built")
    start = time.perf_counter()
    proc = _klpcc("compile", "--source", str(root), str(patches), "-o", str(work / "bundle"))
    out.compile_seconds = time.perf_counter() - start
    if proc.returncode != 0:
        out.status, out.reason, out.message = classify(proc)
        return out
    name = "klpcc_sweep_" + re.sub(r"\W", "_", f"{Path(pick.path).stem}_{pick.function}")[:40]
    start = time.perf_counter()
    proc = _klpcc("build", str(work / "bundle"), "--kernel", str(kdir), "--name", name, "-j", str(jobs),
                  "-o", str(work / "module"), "--format", "json")
    out.build_seconds = time.perf_counter() - start
    if proc.returncode != 0:
        out.status, out.reason, out.message = classify(proc)
        return out
    ko = work / "module" / f"{name}.ko"
    if not ko.is_file():
        out.status, out.message = "crashed", f"exit 0 without {ko}: {proc.stdout[-500:]}"
        return out
    built = json.loads((work / "module" / "build.json").read_text())
    out.module = str(ko)
    out.functions = [f"{f['object']}:{f['name']}" for f in built["functions"]]
    out.notes = list(built.get("function_set", {}).get("notes", []))
    return out


def baseline_seconds(root: Path, kdir: Path, pick: Pick, work: Path) -> float:
    """The time of compiling ``pick``'s file once, unchanged, with the flags Kbuild
    gives it (what ``make`` of that one object costs): the baseline of a pick's build."""
    from klpcc.emit.kernel import module
    from klpcc.emit.kernel.kbuild import template
    from klpcc.emit.kernel.layout import Layout

    args = template(kdir)
    layout = Layout.of(_reader(root), kdir, (), args)
    cmd = module._command(kdir, args, layout)(pick.path, root)
    argv = list(cmd.args)
    at = argv.index("-include", len(argv) - 2)  # klpcc's own header and mark: not Kbuild's
    argv = [a for a in argv[:at] + argv[at + 2:] if a != "-DKLPCC_UNIT=1"]
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    proc = subprocess.run([*argv, "-c", str(root / pick.path), "-o", str(work / "base.o")],
                          cwd=cmd.directory, capture_output=True, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{pick.path} does not compile with Kbuild's flags: {proc.stderr[-400:]!r}")
    return seconds


def shares(outcomes: Iterable[Outcome]) -> dict:
    """Counts by status, by subsystem and by refusal reason."""
    outcomes = list(outcomes)
    by_sub: dict[str, dict[str, int]] = {}
    reasons: dict[str, int] = {}
    for o in outcomes:
        s = by_sub.setdefault(o.pick.subsystem, {})
        s[o.status] = s.get(o.status, 0) + 1
        if o.status == "refused":
            reasons[o.reason] = reasons.get(o.reason, 0) + 1
    total = {st: sum(1 for o in outcomes if o.status == st)
             for st in ("built", "refused", "undocumented", "broken", "crashed")}
    return {"picks": len(outcomes), "total": total, "by_subsystem": by_sub, "reasons": reasons}


# ------------------------------------------------------------------ in the guest

LOADER = Path(__file__).resolve().parents[1] / "runtime" / "kernel" / "klpcc-load"
_UNLOADABLE = {"kvm_intel", "kvm_amd"}  # need hardware virtualisation the TCG guest has not


def module_deps(release: str, name: str) -> list[Path]:
    """``name``'s module file and those it needs, in load order (from modules.dep)."""
    base = Path("/lib/modules") / release
    deps: dict[str, list[str]] = {}
    for line in (base / "modules.dep").read_text().splitlines():
        mod, _, rest = line.partition(":")
        deps[Path(mod).name.split(".ko")[0].replace("-", "_")] = [mod, *rest.split()]
    if name not in deps:
        raise LookupError(f"{name} is not in {base}/modules.dep")
    # soft dependencies (libcrc32c: "pre: crc32c"), by the modules their aliases name;
    # each is tried in turn in the guest (crc32c_intel needs SSE4.2, crc32c_generic not)
    pre: dict[str, list[str]] = {}
    for line in (base / "modules.softdep").read_text().splitlines():
        words = line.split()
        if len(words) > 2 and words[0] == "softdep":
            wanted = words[words.index("pre:") + 1:] if "pre:" in words else []
            pre[words[1].replace("-", "_")] = [w for w in wanted if not w.endswith(":")]
    aliases: dict[str, list[str]] = {}
    for line in (base / "modules.alias").read_text().splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == "alias":
            aliases.setdefault(words[1], []).append(words[2].replace("-", "_"))
    order: list[str] = []

    def visit(n: str) -> None:
        for soft in pre.get(n, ()):
            for m in aliases.get(soft, [soft.replace("-", "_")]):
                if m in deps and m not in order:
                    visit(m)
        for d in deps[n][1:]:
            key = Path(d).name.split(".ko")[0].replace("-", "_")
            if key not in order:
                visit(key)
        if n not in order:
            order.append(n)

    visit(name)
    return [base / deps[n][0] for n in order]


def loadable(o: Outcome) -> bool:
    """A built module whose objects the guest can load (vmlinux, or modules that load
    without hardware the TCG guest lacks)."""
    return o.status == "built" and not {f.split(":")[0] for f in o.functions} & _UNLOADABLE


def guest_sample(outcomes: list[Outcome], n: int) -> list[Outcome]:
    """Up to ``n`` loadable modules, taken from the subsystems in turn."""
    by_sub: dict[str, list[Outcome]] = {}
    for o in outcomes:
        if loadable(o):
            by_sub.setdefault(o.pick.subsystem, []).append(o)
    out: list[Outcome] = []
    while len(out) < n and any(by_sub.values()):
        for sub in list(by_sub):
            if by_sub[sub] and len(out) < n:
                out.append(by_sub[sub].pop(0))
    return out


def guest_files_and_script(release: str, sample: list[Outcome]) -> tuple[dict[str, Path], str]:
    """What the guest needs and the script that loads, checks and disables each module:
    the objects it patches are loaded first; then, after the load, the patch must be
    enabled with its transition complete and every patched function must have ftrace's
    handler (``enabled_functions``); then it is disabled and removed."""
    files: dict[str, Path] = {"/bin/klpcc-load": LOADER}
    lines = ["mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null"]
    for o in sample:
        name = Path(o.module).stem
        files[f"/lib/klpcc/{name}.ko"] = Path(o.module)
        objects = sorted({f.split(":")[0] for f in o.functions} - {"vmlinux"})
        for obj in objects:
            for dep in module_deps(release, obj):
                files[f"/lib/mods/{dep.name}"] = dep
                lines.append(f"grep -q '^{dep.name.split('.ko')[0].replace('-', '_')} ' /proc/modules || "
                             f"insmod /lib/mods/{dep.name} 2>/dev/null")
        for obj in objects:
            lines.append(f'echo "OBJ {name} {obj} $(grep -c "^{obj} " /proc/modules)"')
        lines.append(f'out=$(/bin/klpcc-load /lib/klpcc/{name}.ko 2>&1); echo "RC {name} $?"; '
                     f'echo "$out" | sed "s/^/LOAD {name} /"')
        lines.append(f'echo "STATE {name} $(cat /sys/kernel/livepatch/{name}/enabled 2>/dev/null)'
                     f' $(cat /sys/kernel/livepatch/{name}/transition 2>/dev/null)"')
        for f in o.functions:
            fn = f.split(":")[1]
            lines.append(f'echo "FN {name} {fn} $(grep -c "^{fn} " /sys/kernel/tracing/enabled_functions)"')
        lines.append(f'out=$(/bin/klpcc-load --disable {name} 2>&1); echo "OFF {name} $?"; '
                     f'echo "$out" | sed "s/^/LOAD {name} /"')
        lines.append(f'echo "GONE {name} $(ls /sys/kernel/livepatch | grep -c "^{name}$")'
                     f' $(grep -c "^{name} " /proc/modules)"')
    lines.append('dmesg | grep -iE "livepatch|klpcc|BUG|WARNING|Oops" | sed "s/^/DMESG /"')
    return files, "\n".join(lines) + "\n"


@dataclass
class GuestResult:
    name: str
    loaded: bool  # klpcc-load exited 0
    enabled: bool  # enabled 1, transition 0
    functions: dict[str, int]  # patched function -> ftrace entries found for it
    disabled: bool  # --disable exited 0, and neither the patch nor the module is left
    log: list[str]
    objects: dict[str, bool] = field(default_factory=dict)  # module patched -> loaded before the patch

    @property
    def ok(self) -> bool:
        return (self.loaded and self.enabled and self.disabled and all(self.functions.values())
                and all(self.objects.values()))


def guest_results(output: str, sample: list[Outcome]) -> list[GuestResult]:
    lines = output.splitlines()

    def get(prefix: str) -> list[str]:
        return [ln[len(prefix):].strip() for ln in lines if ln.startswith(prefix)]

    out = []
    for o in sample:
        name = Path(o.module).stem
        rc = get(f"RC {name} ")
        state = get(f"STATE {name} ")
        off = get(f"OFF {name} ")
        gone = get(f"GONE {name} ")
        fns = {}
        for ln in get(f"FN {name} "):
            fn, _, count = ln.partition(" ")
            fns[fn] = int(count or 0)
        objects = {}
        for ln in get(f"OBJ {name} "):
            obj, _, count = ln.partition(" ")
            objects[obj] = count.strip() == "1"
        out.append(GuestResult(name, rc == ["0"], state == ["1 0"], fns,
                               off == ["0"] and gone == ["0 0"], get(f"LOAD {name} "), objects))
    return out
