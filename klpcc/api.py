"""The library API a release pipeline imports; the CLI is a thin shell over it.

Every command has its call here: :func:`analyze` (and :func:`analyze_objects`),
:func:`compile_bundle`, :func:`lint`, :func:`build_kernel` and :func:`build_program`
(the two targets), :func:`config`, :func:`apply`, :func:`status`, :func:`disable`
(a running program's runtime) and their forms for many processes (:func:`apply_all`,
:func:`status_all`, :func:`disable_all`), and :func:`install` and :func:`uninstall`
(patches kept across restarts and reboots).  Errors are raised as :class:`klpcc.errors.KlpccError`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import HEADER_UNITS
from .errors import KlpccError
from .history import Analysis, Replay, analyse, replay
from .series import Series, load
from .trees import BaseTree, DirectoryTree

if TYPE_CHECKING:
    from .atomic import Inputs
    from .compdb import CompileCommands
    from .emit.kernel import KernelBuild, KernelOptions, build_kernel
    from .emit.userspace import Answer, ProgramBuild, ProgramOptions, build_program
    from .emit.userspace.processes import Fleet
    from .lint import LintResult
    from .lint.config import Config
    from .objects import ObjectReport
    from .review import Review
    from .store import Installed

# the targets' names, imported on first use: analyze needs neither target, nor the ELF,
# DWARF and C-type readers they bring
_LAZY = {"KernelBuild": ".emit.kernel", "KernelOptions": ".emit.kernel", "build_kernel": ".emit.kernel",
         "Answer": ".emit.userspace", "ProgramBuild": ".emit.userspace", "ProgramOptions": ".emit.userspace",
         "build_program": ".emit.userspace", "Fleet": ".emit.userspace.processes", "Installed": ".store"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __package__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class AnalyzeOptions:
    """Where the series and its base come from, and which releases to look at."""

    series: Sequence[str] = ()
    source: str | None = None
    git: tuple[str, str] | None = None  # (repository, "BASE..TIP")
    release: str | int | None = None  # name or 1-based position; default: the last
    installed: str | int | None = None  # --from
    fuzz: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.series, (str, Path)):
            object.__setattr__(self, "series", (str(self.series),))
        if not isinstance(self.fuzz, int) or not 0 <= self.fuzz <= 3:
            raise KlpccError(f"fuzz must be 0 to 3, not {self.fuzz!r}")


def _load(opts: AnalyzeOptions) -> tuple[Series, BaseTree, int, int | None]:
    """The series, its base, and the positions of the release and of ``--from``."""
    series, base = load(opts.series, opts.git, opts.source)
    release = series.index(opts.release, "release")
    installed = None if opts.installed is None else series.index(opts.installed, "release (--from)")
    return series, base, release, installed


def inputs(opts: AnalyzeOptions, series: Series, base: BaseTree, *more: str | Path | None,
           trees: Sequence[str | Path | None] = (), touched: Iterable[str] = ()) -> Inputs:
    """What a run on ``opts`` reads, so that an output can be refused that would land on
    it (:meth:`klpcc.atomic.Inputs.check_file`, ``check_dir``): the series' files and
    patches, the ``klpcc.toml`` beside it and the files ``more`` names; the directories
    ``trees`` read whole and a git repository's store; the base tree (or the git
    repository's work tree), of which its C files and ``touched`` (the paths the series
    changes) are read."""
    from .atomic import Inputs
    from .lint.config import find_config
    from .trees import GitTree

    files: list[str | Path | None] = [*opts.series, *more, find_config(list(opts.series),
                                                                      opts.git[0] if opts.git else None)]
    if Path(series.origin).is_file():
        files.append(series.origin)  # the series file read (DIR/series or DIR/patches/series)
    files += [p.path for p in series.patches]
    sources: list[str | Path | None] = [opts.source]
    stores: list[str | Path | None] = list(trees)
    if isinstance(base, DirectoryTree):
        sources.append(base.root)
    if isinstance(base, GitTree) or opts.git:
        repo = base.repo if isinstance(base, GitTree) else opts.git[0]  # type: ignore[index]
        top, store = _git_dirs(repo)
        sources.append(top)
        stores.append(store)
    return Inputs.of(files, stores, sources, touched)


def _git_dirs(repo: str) -> tuple[str | None, str | None]:
    """The work tree and the git directory of ``repo`` (a subdirectory of a work tree,
    a linked work tree or a bare repository too)."""
    import subprocess

    proc = subprocess.run(["git", "-C", repo, "rev-parse", "--show-toplevel", "--absolute-git-dir"],
                          capture_output=True, text=True, check=False)
    lines = proc.stdout.splitlines() if proc.returncode == 0 else []
    if len(lines) == 2:
        return lines[0], lines[1]
    return None, lines[-1] if lines else repo  # bare: no work tree


def analyze(opts: AnalyzeOptions) -> Analysis:
    """Net change of the selected release against the base (and the transition from
    an installed release)."""
    return _analysis(opts, *_load(opts))


def _analysis(opts: AnalyzeOptions, series: Series, base: BaseTree, release: int,
              installed: int | None) -> Analysis:
    keep = {release} | ({installed} if installed else set())
    rep = replay(series, base, fuzz=opts.fuzz, keep=keep)
    return analyse(rep, release, installed)


def _config(opts: AnalyzeOptions, series: Series, config: str | Path | None) -> Config | None:
    from .lint.config import find_config, load_config

    if config is None:
        found = find_config(list(opts.series), opts.git[0] if opts.git else None)
    else:
        found = Path(config)
        if not found.is_file():
            raise KlpccError("no such configuration file", patch=str(config))
    return load_config(found, series) if found is not None else None


@dataclass(frozen=True)
class ObjectOptions:
    """The object-level check: the base tree's compilation database, parallel jobs
    (default: the number of cores), the object cache (default: ~/.cache/klpcc/objects;
    None with ``no_cache``), and whether functions whose code did not change stay in
    the patch."""

    commands: str
    jobs: int | None = None
    cache: str | None = None
    no_cache: bool = False
    keep_source_only: bool = False
    progress: Callable[[int, int], None] | None = None
    binary: str | None = None  # the running program built with -g: cross-check its DWARF inlining

    def __post_init__(self) -> None:
        if self.jobs is not None and (not isinstance(self.jobs, int) or self.jobs < 1):
            raise KlpccError(f"jobs must be a positive number, not {self.jobs!r}")

    def runner(self, base: BaseTree) -> Callable[[Analysis], ObjectReport]:
        """The check with these options, for a base tree (its database read now, so a
        bad one fails before any replay)."""
        from . import objects as _objects

        commands = _commands(self.commands, base)
        assert commands is not None
        return lambda analysis: _objects.check(analysis, commands, jobs=self.jobs, cache=self.cache_dir,
                                               progress=self.progress, binary=self.binary)

    @property
    def cache_dir(self) -> Path | None:
        if self.no_cache:
            return None
        from . import objects as _objects

        return Path(self.cache) if self.cache else _objects.default_cache()


def analyze_objects(opts: AnalyzeOptions, objects: ObjectOptions) -> tuple[Analysis, ObjectReport]:
    """:func:`analyze`, and what the compiled code of the release says changed."""
    series, base, release, installed = _load(opts)
    run = objects.runner(base)
    analysis = _analysis(opts, series, base, release, installed)
    return analysis, run(analysis)


def _commands(path: str | Path | None, base: BaseTree) -> CompileCommands | None:
    from .compdb import CompileCommands

    if path is None:
        return None
    if not isinstance(base, DirectoryTree):
        raise KlpccError("a compilation database needs the base as a directory (--source BASE): "
                         "its compile commands name files on disk")
    return CompileCommands(path, base.root)


def lint(opts: AnalyzeOptions, config: str | Path | None = None,
         compile_commands: str | Path | None = None, objects: ObjectOptions | None = None,
         kernel: str | Path | None = None, output: str | Path | None = None) -> LintResult:
    """Check that release R can replace every earlier release (or ``--from`` K) by
    the rules of atomic replace.  ``config`` is a ``klpcc.toml``; by default the one
    beside the series is used when there is one.  With ``compile_commands`` (a
    ``compile_commands.json`` for the base tree), struct layouts are the compiler's;
    with ``objects``, the object-level check finds data the compiled release changes.
    ``kernel`` is a kernel build directory: its ``.config`` is what the Kbuild makefiles
    are read with (which files are built without ftrace's entry hook).  ``output``, the
    file the caller will write the result to, is refused when it is one of the run's
    inputs (:func:`inputs`)."""
    from .lint import check

    kconfig = _kernel_config(kernel) if kernel is not None else None
    series, base, release, installed = _load(opts)
    cfg = _config(opts, series, config)
    commands = _commands(compile_commands, base)
    run = objects.runner(base) if objects is not None else None
    upto = max(release, installed or 0)
    rep = replay(series, base, fuzz=opts.fuzz, keep=range(0, upto + 1))
    _check_output(output, opts, series, base, rep, config, compile_commands, objects, kernel)
    report = run(analyse(rep, release)) if run is not None else None
    return check(rep, release, installed, cfg, commands, report, kconfig)


def _check_output(output: str | Path | None, opts: AnalyzeOptions, series: Series, base: BaseTree,
                  rep: Replay, config: str | Path | None, compile_commands: str | Path | None,
                  objects: ObjectOptions | None, kernel: str | Path | None) -> None:
    """Refuse ``output`` when it would be written over an input of the run."""
    if output is None:
        return
    more = (objects.commands, objects.binary) if objects is not None else ()
    stores = [kernel, objects.cache if objects is not None else None]
    inputs(opts, series, base, config, compile_commands, *more, trees=stores,
           touched={p for paths in rep.files_touched.values() for p in paths}).check_file(output)


def _kernel_config(kdir: str | Path) -> dict[str, str]:
    """The ``.config`` of kernel build directory ``kdir``, read."""
    from . import kbuild

    path = Path(kdir) / ".config"
    if not Path(kdir).is_dir():
        raise KlpccError(f"{kdir}: no such kernel build directory")
    try:
        return kbuild.read_config(path.read_text(errors="replace"))
    except OSError as exc:
        raise KlpccError(f"{path}: cannot read the kernel's configuration: {exc.strerror or exc}") from None


def review(opts: AnalyzeOptions, *, config: str | Path | None = None,
           compile_commands: str | Path | None = None, objects: ObjectOptions | None = None,
           kernel: str | Path | None = None, lint: bool = True, output: str | Path | None = None) -> Review:
    """The review report of the selected release (render it with
    :func:`klpcc.review.render`): the function x release matrix, the transition from
    ``--from``, the lint of the release (as :func:`lint` runs it; none with ``lint``
    false), what the compiled code says (with ``objects``), the release graph and the
    diff of each function.  ``output`` (the page's file) is refused when it is one of the
    run's inputs, as in :func:`lint`."""
    from . import review as _review
    from .lint import check

    kconfig = _kernel_config(kernel) if kernel is not None else None
    series, base, release, installed = _load(opts)
    cfg = _config(opts, series, config) if lint else None
    commands = _commands(compile_commands, base) if lint else None
    run = objects.runner(base) if objects is not None else None
    upto = max(release, installed or 0)
    rep = replay(series, base, fuzz=opts.fuzz, keep=range(0, upto + 1))
    _check_output(output, opts, series, base, rep, config, compile_commands, objects, kernel)
    analysis = analyse(rep, release, installed)
    report = run(analysis) if run is not None else None
    found = check(rep, release, installed, cfg, commands, report, kconfig) if lint else None
    return _review.from_series(analysis, found, report)


def review_bundle(bundle: str | Path) -> Review:
    """The review report of a bundle ``klpcc compile`` wrote: what its manifest records
    (matrix, lint, object-level report), the diff of each function from ``base/`` and
    ``sources/``, and the hunks of the series where its patch files can still be read."""
    from . import review as _review
    from .manifest import read

    return _review.from_bundle(read(bundle))


def write_review(rv: Review, output: str | Path) -> Path:
    """Write the report as one HTML file (atomically: a failure leaves no part of it)."""
    from .atomic import write_atomic
    from .report import readable
    from .review import render

    write_atomic(output, readable(render(rv)).encode("utf-8"))  # bytes not UTF-8 in a source: U+FFFD
    return Path(output)


def compile_bundle(opts: AnalyzeOptions, outdir: str | Path, *, force: bool = False,
                   config: str | Path | None = None, compile_commands: str | Path | None = None,
                   objects: ObjectOptions | None = None, header_units: int = HEADER_UNITS
                   ) -> tuple[Analysis, LintResult]:
    """Write the cumulative patch bundle of the selected release to ``outdir``: the
    manifest carries the release's states, callbacks and shadow variables and the
    lint findings against every earlier release, and the bundle the release's changed
    files and the unchanged units that read a header it changes (at most
    ``header_units`` of them: more is refused)."""
    from . import bundle as _bundle
    from .atomic import check_target
    from .lint import check

    check_target(outdir, force)
    series, base, release, _ = _load(opts)
    more = (objects.commands, objects.binary) if objects is not None else ()
    inputs(opts, series, base, config, compile_commands, *more,
           trees=[objects.cache] if objects is not None else ()).check_dir(outdir)
    cfg = _config(opts, series, config)
    commands = _commands(compile_commands, base)
    run = objects.runner(base) if objects is not None else None
    rep = replay(series, base, fuzz=opts.fuzz, keep=range(0, release + 1))
    analysis = analyse(rep, release)
    report = run(analysis) if run is not None else None
    findings = check(rep, release, None, cfg, commands, report)
    _bundle.write(analysis, Path(outdir), force=force, lint=findings, objects=report,
                  keep_source_only=bool(objects and objects.keep_source_only),
                  immediate=cfg.immediate(release) if cfg is not None else (), header_limit=header_units)
    return analysis, findings


def config(*, cflags: bool = False, libs: bool = False, preload: bool = False, loader: bool = False,
           cc: str = "cc") -> str:
    """Like pkg-config: the compiler options a patchable program needs (``cflags``),
    the linker options of the runtime (``libs``, building it on demand), the runtime
    library's path for ``LD_PRELOAD`` (``preload``), the kernel loader's path
    (``loader``: ``klpcc-load``, as installed with klpcc); one line, in that order."""
    from . import runtime
    from .emit.userspace import library as _library

    if not (cflags or libs or preload or loader):
        raise KlpccError("say what to print: --cflags, --libs, --preload or --loader")
    parts = []
    if cflags:
        parts.append(_library.cflags())
    if libs:
        parts.append(_library.libs(cc))
    if preload:
        parts.append(str(_library.runtime_library(cc)))
    if loader:
        parts.append(str(runtime.kernel() / "klpcc-load"))
    return " ".join(parts)


def apply(pid: int, patch: str | Path, timeout: float = 10.0, socket: str | None = None) -> Answer:
    """Install the patch object ``patch`` in process ``pid`` (an atomic replace of
    whatever is installed), waiting up to ``timeout`` seconds for its threads to leave
    the functions being switched.  A refusal is an answer with ``ok`` false."""
    from .emit.userspace import client as _client

    return _client.apply(pid, str(patch), timeout, socket)


def status(pid: int, socket: str | None = None) -> Answer:
    """The patches installed in process ``pid``, their functions and states."""
    from .emit.userspace import client as _client

    return _client.status(pid, socket)


def inspect(path: str | Path) -> dict:
    """What the patch object or livepatch module ``path`` is (``klpcc.inspect/1``): its
    kind, the name it has once loaded, its release in its series, the objects it
    patches, its sha256."""
    from .elfinfo import describe

    return describe(str(path))


def disable(pid: int, timeout: float = 10.0, socket: str | None = None, name: str | None = None) -> Answer:
    """Back to the original code in process ``pid``: the installed patch called ``name``,
    or the only one installed."""
    from .emit.userspace import client as _client

    return _client.disable(pid, timeout, socket, name)


def apply_all(patch: str | Path, timeout: float = 10.0, *, pids: list[int] | None = None,
              library: str | None = None, tree: int | None = None) -> Fleet:
    """Install the patch object in every process of ``pids`` (and of ``tree``: a process
    and its descendants), or in every process of this user (every process, for root)
    that maps the exact build of ``library``; each
    process answers (``klpcc.processes/1``).  Processes that map the library without the
    runtime, or another build of it, are listed as not patchable."""
    from .emit.userspace import processes as _processes

    if not Path(patch).is_file():
        raise KlpccError(f"no patch object {patch}")
    lib = _processes.library(library) if library else None
    named = list(pids or []) + (_processes.tree(tree) if tree else [])
    return _processes.apply_many(str(patch), timeout, named, lib)


def disable_all(pids: list[int], timeout: float = 10.0, name: str | None = None, *,
                tree: int | None = None) -> Fleet:
    """:func:`disable` in every process of ``pids``, or of ``tree`` (a process and its
    descendants); each answers."""
    from .emit.userspace import processes as _processes

    return _processes.disable_many(list(pids) + (_processes.tree(tree) if tree else []), timeout, name)


def status_all() -> Fleet:
    """Every process of this user (every process, for root) that runs the runtime, with
    its status, and every patch installed in the stores (:func:`install`)."""
    from . import store as _store
    from .emit.userspace import processes as _processes

    return _processes.status_all(_store.records())


def install(path: str | Path, *, state_dir: str | None = None, force: bool = False,
            kernel: bool = False) -> Installed:
    """Record a patch object (applied when a process of its program or libraries starts)
    or, with ``kernel``, a livepatch module (loaded at boot by ``klpcc-load --all``) in
    the store; see :mod:`klpcc.store`."""
    from . import store as _store

    return _store.install(str(path), state_dir, force, kernel)


def uninstall(target: str | Path, *, state_dir: str | None = None, kernel: bool = False) -> Installed:
    """Remove from the store what :func:`install` recorded for ``target``."""
    from . import store as _store

    return _store.uninstall(str(target), state_dir, kernel)


__all__ = ["AnalyzeOptions", "Answer", "Fleet", "Installed", "KernelBuild", "KernelOptions", "ObjectOptions",
           "ProgramBuild", "ProgramOptions", "analyze", "analyze_objects", "apply", "apply_all",
           "build_kernel",
           "build_program", "compile_bundle", "config", "disable", "disable_all", "install", "lint", "review",
           "review_bundle", "status", "status_all", "uninstall", "write_review"]
