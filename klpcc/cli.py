"""Command line: a thin shell over :mod:`klpcc.api`."""

from __future__ import annotations

import importlib
import os
import re
import signal
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from . import HEADER_UNITS, __version__
from .atomic import Inputs, write_atomic
from .errors import KlpccError

if TYPE_CHECKING:
    from .api import Answer, ObjectOptions


class _Lazy:
    """A module imported on first use: ``klpcc --version`` and ``--help`` start without
    the pipeline (tree-sitter, networkx, pyelftools, pycparser)."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name, __package__), attr)


api = _Lazy(".api")
_object_report = _Lazy(".objects")
_report = _Lazy(".report")

EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3


def _fail(message: str, code: int) -> None:
    click.echo(f"klpcc: error: {message}", err=True)
    sys.exit(code)


def _guard(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn every error into one line on stderr and an exit code; no tracebacks."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KlpccError as exc:
            _fail(str(exc), EXIT_BAD_INPUT)
        except (KeyboardInterrupt, BrokenPipeError):
            sys.exit(130)
        except OSError as exc:
            _fail(f"{exc.filename or ''}: {exc.strerror}".lstrip(": "), EXIT_BAD_INPUT)
        except Exception as exc:  # a bug: say so in one line, details on request
            if os.environ.get("KLPCC_DEBUG"):
                raise
            _fail(f"internal error: {type(exc).__name__}: {exc} "
                  "(set KLPCC_DEBUG=1 for a traceback)", EXIT_INTERNAL)

    return wrapper


def _series_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.argument("series", nargs=-1, type=click.Path())(fn)
    fn = click.option("--source", "source", metavar="BASE", type=click.Path(),
                      help="Base source tree the series applies to (the running code).")(fn)
    fn = click.option("--git", "git", nargs=2, metavar="REPO BASE..TIP",
                      help="Take the series from a git range: each commit is a release.")(fn)
    fn = click.option("--release", "-r", "release", metavar="R",
                      help="Release to build, by name or 1-based position (default: the last).")(fn)
    fn = click.option("--fuzz", type=click.IntRange(0, 3), default=0, show_default=True,
                      help="Context lines a hunk may ignore to apply.")(fn)
    return fn


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="klpcc")
def main() -> None:
    """klpcc compiles a series of C source patches into one cumulative live patch."""


def _object_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--objects", "objects", metavar="JSON", type=click.Path(),
                      help="compile_commands.json of the base tree: compile the units R touches "
                           "and compare their code.")(fn)
    fn = click.option("--jobs", "-j", type=click.IntRange(1, None), default=None,
                      help="Units compiled at once (default: the number of cores).")(fn)
    fn = click.option("--cache", "cache", metavar="DIR", type=click.Path(),
                      help="Object cache (default: ~/.cache/klpcc/objects).")(fn)
    fn = click.option("--no-cache", is_flag=True, help="Compile everything afresh.")(fn)
    fn = click.option("--binary", "binary", metavar="FILE", type=click.Path(),
                      help="With --objects: the running program (built with -g); cross-check the "
                           "inlining its DWARF records.")(fn)
    return fn


class _Progress:
    """A progress bar on a terminal; nothing otherwise."""

    def __init__(self) -> None:
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        if not sys.stderr.isatty():
            return
        if self.bar is None:
            self.bar = click.progressbar(length=total, label="compiling", file=sys.stderr)
            self.bar.__enter__()
        self.bar.update(done - self.bar.pos)
        if done >= total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


def _objects(objects: str | None, jobs: int | None, cache: str | None, no_cache: bool,
             binary: str | None, keep_source_only: bool = False) -> ObjectOptions | None:
    if objects is None:
        for name, value in (("--jobs", jobs), ("--cache", cache), ("--no-cache", no_cache or None),
                            ("--binary", binary), ("--keep-source-only", keep_source_only or None)):
            if value is not None:
                raise KlpccError(f"{name} goes with --objects")
        return None
    return api.ObjectOptions(objects, jobs, cache, no_cache, keep_source_only, _Progress(), binary)


@main.command("analyze")
@_series_options
@click.option("--from", "installed", metavar="K",
              help="Installed release: show the transition from it to R.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
@_object_options
@_guard
def analyze_cmd(series: tuple[str, ...], source: str | None, git: tuple[str, str] | None,
                release: str | None, fuzz: int, installed: str | None, fmt: str, objects: str | None,
                jobs: int | None, cache: str | None, no_cache: bool, binary: str | None) -> None:
    """Per-function net change of release R against the base: modified, added,
    removed, and nops (earlier fixes R reverts); with --objects, what the compiled
    code says changed."""
    opts = api.AnalyzeOptions(series, source, git, release, installed, fuzz)
    obj = _objects(objects, jobs, cache, no_cache, binary)
    report = None
    if obj is not None:
        a, report = api.analyze_objects(opts, obj)
    else:
        a = api.analyze(opts)
    if fmt == "json":
        doc = _report.analysis_json(a)
        if report is not None:
            doc["objects"] = _object_report.to_json(report)
        click.echo(_report.dump_json(doc))
    else:
        click.echo(_report.analysis_text(a), nl=False)
        if report is not None:
            click.echo(_object_report.text(report), nl=False)
    for w in a.warnings:
        click.echo(f"klpcc: warning: {w}", err=True)


@main.command("compile")
@_series_options
@click.option("-o", "--output", "outdir", required=True, type=click.Path(),
              help="Bundle directory to write (manifest.json, cumulative.diff).")
@click.option("--force", is_flag=True, help="Replace OUTDIR if it exists.")
@click.option("--config", "config", metavar="TOML", type=click.Path(),
              help="klpcc.toml with states, callbacks and shadow variables (default: beside the series).")
@click.option("--compile-commands", "commands", metavar="JSON", type=click.Path(),
              help="compile_commands.json of the base tree: compare struct layouts as compiled.")
@_object_options
@click.option("--keep-source-only", is_flag=True,
              help="With --objects: keep functions whose source changed but whose code did not.")
@click.option("--header-units", "header_units", type=click.IntRange(0), default=HEADER_UNITS,
              show_default=True, metavar="N",
              help="The most unchanged C files the release's changed headers may bring in (their code is "
                   "compared as the changed files' is).")
@_guard
def compile_cmd(series: tuple[str, ...], source: str | None, git: tuple[str, str] | None,
                release: str | None, fuzz: int, outdir: str, force: bool, config: str | None,
                commands: str | None, objects: str | None, jobs: int | None, cache: str | None,
                no_cache: bool, binary: str | None, keep_source_only: bool, header_units: int) -> None:
    """Write the cumulative patch bundle of release R to OUTDIR."""
    a, res = api.compile_bundle(api.AnalyzeOptions(series, source, git, release, None, fuzz), outdir,
                            force=force, config=config, compile_commands=commands,
                            objects=_objects(objects, jobs, cache, no_cache, binary, keep_source_only),
                            header_units=header_units)
    counts = {k: len(a.by_change(k)) for k in ("modified", "added", "removed", "nop", "dropped")}
    click.echo(f"{outdir}: release {a.release_name}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    for w in a.warnings:
        click.echo(f"klpcc: warning: {w}", err=True)
    if res.findings:
        click.echo(f"klpcc: lint: {res.count('error')} error(s), {res.count('warning')} warning(s) "
                   "recorded in the manifest; `klpcc lint` explains them", err=True)


EXIT_FINDINGS = 1


@main.command("lint")
@_series_options
@click.option("--from", "installed", metavar="K",
              help="Check against installed release K only (K may be later than R: a downgrade).")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "sarif"]), default="text",
              show_default=True)
@click.option("--error-on", type=click.Choice(["error", "warning"]), default="error", show_default=True,
              help="Lowest severity that makes the exit code 1.")
@click.option("--config", "config", metavar="TOML", type=click.Path(),
              help="States, callbacks and shadow variables kept outside the diff "
                   "(default: klpcc.toml beside the series).")
@click.option("--compile-commands", "commands", metavar="JSON", type=click.Path(),
              help="compile_commands.json of the base tree: compare struct layouts as compiled.")
@click.option("--kernel", "kdir", metavar="KDIR", type=click.Path(),
              help="Kernel build directory whose .config the Kbuild makefiles are read with "
                   "(default: a configuration with ftrace and livepatch on).")
@click.option("-o", "--output", "output", metavar="FILE", type=click.Path(),
              help="Write the report to FILE instead of standard output.")
@_object_options
@_guard
def lint_cmd(series: tuple[str, ...], source: str | None, git: tuple[str, str] | None,
             release: str | None, fuzz: int, installed: str | None, fmt: str, error_on: str,
             config: str | None, commands: str | None, kdir: str | None, output: str | None,
             objects: str | None, jobs: int | None, cache: str | None, no_cache: bool,
             binary: str | None) -> None:
    """Check that release R can safely replace every earlier release (or K): system
    states, callbacks, shadow variables and changes a live patch cannot carry."""
    from .lint.output import lint_json, lint_sarif, lint_text

    res = api.lint(api.AnalyzeOptions(series, source, git, release, installed, fuzz), config, commands,
                   _objects(objects, jobs, cache, no_cache, binary), kernel=kdir, output=output or None)
    if fmt == "json":
        text = _report.dump_json(lint_json(res)) + "\n"
    elif fmt == "sarif":
        text = _report.dump_json(lint_sarif(res)) + "\n"
    else:
        text = lint_text(res)
    if output:
        write_atomic(output, text)
    else:
        click.echo(text, nl=False)
    sys.exit(EXIT_FINDINGS if res.fails(error_on) else 0)


@main.command("report")
@_series_options
@click.option("--from", "installed", metavar="K",
              help="Installed release: show the transition from it to R.")
@click.option("--config", "config", metavar="TOML", type=click.Path(),
              help="klpcc.toml for the lint (default: the one beside the series).")
@click.option("--compile-commands", "commands", metavar="JSON", type=click.Path(),
              help="The lint compares struct layouts as this compilation database builds them.")
@click.option("--kernel", "kdir", metavar="KDIR", type=click.Path(),
              help="The lint reads Kbuild makefiles with this kernel build's .config.")
@click.option("--no-lint", is_flag=True, help="Leave the lint out of the report.")
@click.option("-o", "--output", "output", metavar="FILE", required=True, type=click.Path(),
              help="The HTML file to write.")
@_object_options
@_guard
def report_cmd(series: tuple[str, ...], source: str | None, git: tuple[str, str] | None,
               release: str | None, fuzz: int, installed: str | None, config: str | None,
               commands: str | None, kdir: str | None, no_lint: bool, output: str, objects: str | None,
               jobs: int | None, cache: str | None, no_cache: bool, binary: str | None) -> None:
    """One self-contained HTML page for reviewing release R: the function x release
    matrix, what it backs out, the transition from K, the lint findings, what the
    compiled code says, the release graph and the diff of each function.  Also from a
    bundle: klpcc report BUNDLE -o FILE."""
    if not output:
        raise KlpccError("-o needs a file name")
    bundle = series[0] if len(series) == 1 and (Path(series[0]) / "manifest.json").is_file() else None
    if no_lint:
        for name, value in (("--config", config), ("--compile-commands", commands), ("--kernel", kdir)):
            if value is not None:
                raise KlpccError(f"{name} is for the lint, and --no-lint leaves it out")
    if bundle is not None:
        given = (("--source", source), ("--git", git), ("--release", release), ("--from", installed),
                 ("--config", config), ("--compile-commands", commands), ("--kernel", kdir),
                 ("--objects", objects), ("--jobs", jobs), ("--cache", cache),
                 ("--no-cache", no_cache or None), ("--binary", binary), ("--fuzz", fuzz or None),
                 ("--no-lint", no_lint or None))
        for name, value in given:
            if value is not None:
                raise KlpccError(f"{bundle} is a bundle: it records one release as compiled, so {name} "
                                 "does not apply (report on the series for that)")
        Inputs.of(trees=[bundle]).check_file(output)
        rv = api.review_bundle(bundle)
    else:
        opts = api.AnalyzeOptions(series, source, git, release, installed, fuzz)
        rv = api.review(opts, config=config, compile_commands=commands, kernel=kdir,
                        objects=_objects(objects, jobs, cache, no_cache, binary), lint=not no_lint,
                        output=output)
    api.write_review(rv, output)
    for w in rv.warnings:
        click.echo(f"klpcc: warning: {w}", err=True)
    found = "not linted" if rv.findings is None else f"{len(rv.findings)} lint finding(s)"
    click.echo(f"{output}: release {rv.release}/{len(rv.releases)} {rv.release_name}: "
               f"{len(rv.functions)} function(s), {found}")


def _object_map(values: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    out = []
    for v in values:
        path, sep, mod = v.partition("=")
        if not sep or not path or not re.fullmatch(r"[A-Za-z0-9_-]+", mod):
            raise KlpccError(f"--object {v!r}: expected PATH=MODNAME (a source directory and the module "
                             "it is built into)")
        out.append((path.strip("/"), mod.replace("-", "_")))
    return tuple(out)


def _sympos(values: tuple[str, ...]) -> tuple[tuple[str, str, int], ...]:
    out = []
    for v in values:
        m = re.fullmatch(r"([^:=]+):(\w+)=(\d+)", v)
        if not m:
            raise KlpccError(f"--sympos {v!r}: expected FILE:NAME=N (N: 1-based position in kallsyms)")
        out.append((m[1], m[2], int(m[3])))
    return tuple(out)


@main.command("build")
@click.argument("bundle", type=click.Path())
@click.option("--kernel", "kdir", metavar="KDIR", type=click.Path(),
              help="Kernel build directory to build the livepatch module against "
                   "(e.g. /lib/modules/$(uname -r)/build).")
@click.option("--object", "objects", metavar="PATH=MODNAME", multiple=True,
              help="Source files under PATH belong to module MODNAME (default: what the kernel's "
                   "makefiles say, else vmlinux). Repeatable.")
@click.option("--no-replace", is_flag=True,
              help="Build a patch that stacks instead of replacing (replace=false).")
@click.option("--source-only", is_flag=True, help="Write the module source and Kbuild, do not build.")
@click.option("--name", metavar="NAME", help="Module and patch name (default: klpcc_<release>).")
@click.option("--kallsyms", metavar="FILE", type=click.Path(),
              help="The target's /proc/kallsyms (or System.map): symbol positions and inlined functions.")
@click.option("--binary", "binary", metavar="PROG", type=click.Path(),
              help="Build a userspace patch object for this exact program (its build-id, symbols, DWARF).")
@click.option("--library", "libraries", metavar="LIB.so", type=click.Path(), multiple=True,
              help="Build a userspace patch object for this exact shared library (its build-id, symbols, "
                   "DWARF); with --binary or repeated, one patch object changes them all. Repeatable.")
@click.option("--cflags", "extra_cflags", metavar="FLAGS", default="",
              help="--binary/--library: options the sources need beyond what the DWARF records (-I, -D).")
@click.option("--cc", "cc", metavar="CC", default="cc", show_default=True,
              help="--binary/--library: the C compiler.")
@click.option("--sympos", metavar="FILE:NAME=N", multiple=True,
              help="Position of a static symbol whose name is defined several times. Repeatable.")
@click.option("--immediate", metavar="FUNC", multiple=True,
              help="--binary: switch FUNC without waiting for threads to leave it (a function that never "
                   "returns: running frames keep the old code). Repeatable.")
@click.option("--source-level", is_flag=True,
              help="Decide the function set from the source alone, without compiling both sides of each "
                   "unit with the target's flags.")
@click.option("-o", "--output", "outdir", required=True, type=click.Path(),
              help="Directory to write (--kernel), or the patch object (--binary).")
@click.option("--force", is_flag=True, help="Replace the output if it exists.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), help="Parallel make jobs (default: cores).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@_guard
def build_cmd(bundle: str, kdir: str | None, objects: tuple[str, ...], no_replace: bool, source_only: bool,
              name: str | None, kallsyms: str | None, binary: str | None, libraries: tuple[str, ...],
              extra_cflags: str, cc: str, sympos: tuple[str, ...], immediate: tuple[str, ...],
              source_level: bool, outdir: str, force: bool, jobs: int | None, fmt: str) -> None:
    """Build the live patch of a bundle: a kernel livepatch module (--kernel) or a
    patch object for running programs and shared libraries (--binary, --library)."""
    if binary or libraries:
        if kdir or source_only or objects or kallsyms or no_replace:
            raise KlpccError("--binary and --library build a userspace patch object: --kernel, --object, "
                             "--kallsyms, --source-only and --no-replace are for the kernel")
        options = api.ProgramOptions
        built = api.build_program(options(bundle, binary, outdir, extra_cflags, cc, _sympos(sympos),
                                          force, immediate, source_level, libraries))
        if fmt == "json":
            click.echo(_report.dump_json(built.to_json()))
            return
        click.echo(built.text(), nl=False)
        for n in built.notes:
            click.echo(f"klpcc: note: {n}", err=True)
        return
    if not kdir and not source_only:
        raise KlpccError("say what to build for: --kernel KDIR (or --source-only), or --binary PROG "
                         "and/or --library LIB.so")
    if immediate:
        raise KlpccError("--immediate is for --binary and --library: the kernel's livepatch has no immediate "
                         "functions")
    res = api.build_kernel(api.KernelOptions(bundle, outdir, kdir, _object_map(objects), not no_replace,
                                         source_only, name, kallsyms, _sympos(sympos), force, jobs,
                                         source_level))
    click.echo(_report.dump_json(res.to_json()) if fmt == "json" else res.text(), nl=fmt != "text")


@main.command("config")
@click.option("--cflags", "want_cflags", is_flag=True, help="Compiler options a patchable program needs.")
@click.option("--libs", "want_libs", is_flag=True,
              help="Linker options: the klpcc runtime (built on demand).")
@click.option("--preload", is_flag=True, help="The runtime library's path, for LD_PRELOAD.")
@click.option("--loader", is_flag=True, help="The kernel loader's path (klpcc-load).")
@click.option("--cc", "cc", metavar="CC", default="cc", show_default=True, help="The C compiler.")
@_guard
def config_cmd(want_cflags: bool, want_libs: bool, preload: bool, loader: bool, cc: str) -> None:
    """Like pkg-config: how to build a program the userspace runtime can patch."""
    click.echo(api.config(cflags=want_cflags, libs=want_libs, preload=preload, loader=loader, cc=cc))


def _answer(ans: Answer, fmt: str) -> None:
    """Print the runtime's answer; a refusal exits 1 (in text, with the step that refused)."""
    if fmt == "json":
        click.echo(_report.dump_json(ans.doc))
    elif ans.ok:
        click.echo(ans.text(), nl=False)
    else:
        click.echo(f"klpcc: error: {ans.failure}", err=True)
    if not ans.ok:
        sys.exit(EXIT_FINDINGS)


def _fleet(fleet: Any, fmt: str) -> None:
    """Print the answers of many processes; exit 1 when a process the patch was for did
    not get it (refused, no runtime, not reachable)."""
    click.echo(_report.dump_json(fleet.to_json()) if fmt == "json" else fleet.text(), nl=fmt == "json")
    if fleet.failed:
        sys.exit(EXIT_FINDINGS)


_SOCKET = click.option("--socket", "sock", metavar="PATH", type=click.Path(),
                       help="The runtime's socket (default: the one the process listens on, found from "
                            "its own "
                            "view of the filesystem); with one --pid.")
_FORMAT = click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
                       show_default=True)


def _one_pid(pids: tuple[int, ...], sock: str | None, what: str) -> int | None:
    if not pids:
        raise KlpccError(f"say which processes: --pid PID (repeatable){what}")
    if sock and len(pids) > 1:
        raise KlpccError("--socket names one process's socket: give one --pid with it")
    return pids[0] if len(pids) == 1 else None


@main.command("apply")
@click.argument("patch", type=click.Path())
@click.option("--pid", "pids", multiple=True, type=click.IntRange(min=1),
              help="A process to install the patch in. Repeatable: each process answers.")
@click.option("--all-mapping", "all_mapping", metavar="LIB.so", type=click.Path(),
              help="Every process of this user (every process, for root) that maps this exact library build.")
@click.option("--tree", "tree", metavar="PID", type=click.IntRange(min=1),
              help="Process PID and its descendants (a pre-fork server and its workers); each answers.")
@_SOCKET
@click.option("--timeout", type=click.FloatRange(min=0.001), default=10.0, show_default=True,
              help="Seconds to wait for the threads to leave the functions being switched.")
@_FORMAT
@_guard
def apply_cmd(patch: str, pids: tuple[int, ...], all_mapping: str | None, tree: int | None,
              sock: str | None, timeout: float, fmt: str) -> None:
    """Install PATCH in processes: an atomic replace of the patch installed for its objects."""
    if all_mapping or tree:
        if pids or sock or (all_mapping and tree):
            raise KlpccError("--all-mapping and --tree find the processes themselves: give one, without "
                             "--pid and --socket")
        _fleet(api.apply_all(patch, timeout, library=all_mapping, tree=tree), fmt)
        return
    pid = _one_pid(pids, sock, ", --all-mapping LIB.so or --tree PID")
    if pid is None:
        _fleet(api.apply_all(patch, timeout, pids=list(pids)), fmt)
        return
    _answer(api.apply(pid, patch, timeout, sock), fmt)


@main.command("disable")
@click.option("--pid", "pids", multiple=True, type=click.IntRange(min=1),
              help="A process to disable the patch in. Repeatable: each process answers.")
@click.option("--patch", "name", metavar="NAME",
              help="The installed patch to disable (needed when a process has several: a program's and a "
                   "library's).")
@click.option("--tree", "tree", metavar="PID", type=click.IntRange(min=1),
              help="Process PID and its descendants; each answers.")
@_SOCKET
@click.option("--timeout", type=click.FloatRange(min=0.001), default=10.0, show_default=True)
@_FORMAT
@_guard
def disable_cmd(pids: tuple[int, ...], name: str | None, tree: int | None, sock: str | None, timeout: float,
                fmt: str) -> None:
    """Back to the original code in processes."""
    if tree:
        if pids or sock:
            raise KlpccError("--tree finds the processes itself: leave out --pid and --socket")
        _fleet(api.disable_all([], timeout, name, tree=tree), fmt)
        return
    pid = _one_pid(pids, sock, "")
    if pid is None:
        _fleet(api.disable_all(list(pids), timeout, name), fmt)
        return
    _answer(api.disable(pid, timeout, sock, name), fmt)


@main.command("status")
@click.option("--pid", "pid", type=click.IntRange(min=1), help="The process to ask.")
@click.option("--all", "everything", is_flag=True,
              help="Every process of this user (every process, for root) that runs the runtime, and what is "
                   "installed (klpcc install).")
@_SOCKET
@_FORMAT
@_guard
def status_cmd(pid: int | None, everything: bool, sock: str | None, fmt: str) -> None:
    """The patches installed in a process, their functions and states."""
    if everything:
        if pid or sock:
            raise KlpccError("--all asks every process: leave out --pid and --socket")
        _fleet(api.status_all(), fmt)
        return
    if not pid:
        raise KlpccError("say which process: --pid PID, or --all")
    _answer(api.status(pid, sock), fmt)


@main.command("inspect")
@click.argument("patch", type=click.Path())
@_FORMAT
@_guard
def inspect_cmd(patch: str, fmt: str) -> None:
    """What PATCH is (a patch object or a livepatch module): the name it has once loaded,
    its release in its series, what it patches."""
    doc = api.inspect(patch)
    if fmt == "json":
        click.echo(_report.dump_json(doc))
        return
    where = f"for kernel {doc['kernel_release']}" if doc["kind"] == "kernel-module" else "for " + ", ".join(
        f"{o['name']} (build-id {o['build_id'][:12]})" for o in doc["objects"])
    click.echo(f"{doc['path']}: {doc['kind']} {doc['name']}, release {doc['release']} "
               f"(#{doc['release_index']} of series {doc['series'] or '?'}) {where}")


@main.command("install")
@click.argument("patch", type=click.Path())
@click.option("--kernel", is_flag=True,
              help="PATCH is a livepatch module, loaded at boot by klpcc-load --all.")
@click.option("--state-dir", metavar="DIR", type=click.Path(),
              help="The store (default: $KLPCC_STATE_DIR, else ~/.local/state/klpcc, or /var/lib/klpcc "
                   "for root).")
@click.option("--force", is_flag=True, help="Install an older release of the series than the one installed.")
@_FORMAT
@_guard
def install_cmd(patch: str, kernel: bool, state_dir: str | None, force: bool, fmt: str) -> None:
    """Keep PATCH in force across restarts (a patch object: applied when a process of its
    program or library starts) or reboots (--kernel: a livepatch module)."""
    done = api.install(patch, state_dir=state_dir, force=force, kernel=kernel)
    click.echo(_report.dump_json(done.to_json()) if fmt == "json" else done.text(), nl=fmt == "json")


@main.command("uninstall")
@click.argument("target", type=click.Path())
@click.option("--kernel", is_flag=True, help="TARGET is a livepatch module or a kernel release.")
@click.option("--state-dir", metavar="DIR", type=click.Path(), help="The store (as for install).")
@_FORMAT
@_guard
def uninstall_cmd(target: str, kernel: bool, state_dir: str | None, fmt: str) -> None:
    """Stop applying a patch at start (TARGET: the patch object, or the program or library
    it is for) or at boot (--kernel). Processes running keep what they have: klpcc disable."""
    done = api.uninstall(target, state_dir=state_dir, kernel=kernel)
    if fmt == "json":
        click.echo(_report.dump_json(done.to_json()))
    elif done.changes:
        click.echo(done.text(), nl=False)
    else:
        click.echo(f"nothing was installed for {target} in {done.store}")


def _terminated(signum: int, frame: object) -> None:
    sys.exit(128 + signum)  # unwinds, so scratch directories are removed


def _streams() -> None:
    """Names and source text that are not UTF-8 (carried as lone surrogates) go out as
    the bytes they were on a UTF-8 terminal, escaped on any other, never as a crash."""
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        errors = "surrogateescape" if encoding == "utf8" else "backslashreplace"
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors=errors)


def run() -> None:
    """Entry point: like :func:`main`, with usage errors on one line too."""
    signal.signal(signal.SIGTERM, _terminated)
    _streams()
    try:
        code = main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.exceptions.ClickException as exc:
        _fail(" ".join(exc.format_message().split()), EXIT_BAD_INPUT)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    run()
