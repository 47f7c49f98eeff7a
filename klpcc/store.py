"""Patches that survive restarts and reboots: ``klpcc install`` and ``uninstall``.

A *store* is a directory.  ``<store>/userspace/<build-id>.so`` is the patch object in
force for the program or library with that build-id: a link to a file of
``<store>/userspace/objects/`` (named by its content), which the userspace runtime
applies when a process starts (before ``main``) and when a library loads
(runtime/userspace/store.c).  ``<store>/kernel/<kernel release>/<module>.ko`` is the
one cumulative livepatch module for that kernel, which ``klpcc-load --all`` loads at
boot (the ``klpcc-load.service`` unit).

The stores are ``$KLPCC_STATE_DIR`` alone when it is set (set and empty: none);
otherwise, for a user other than root, ``$XDG_STATE_HOME/klpcc`` (else
``~/.local/state/klpcc``) and then ``/var/lib/klpcc``; for root, ``/var/lib/klpcc``.
``install`` writes to the first; the runtime reads them in order (the first record for
an object wins).  A record is cumulative: installing a release replaces the one in
force for each of its objects, and an older release of the same series than the one
installed is refused without ``force``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from . import atomic, elfinfo
from .errors import KlpccError

USERSPACE, KERNEL, OBJECTS = "userspace", "kernel", "objects"
_KREL = re.compile(r"^[A-Za-z0-9._+~-]+$")


def stores() -> list[Path]:
    env = os.environ.get("KLPCC_STATE_DIR")
    if env is not None:
        if env and not env.startswith("/"):
            raise KlpccError(f"KLPCC_STATE_DIR={env} is not an absolute path (the runtime would ignore it)")
        return [Path(env)] if env else []
    out = []
    if os.geteuid() != 0:
        xdg = os.environ.get("XDG_STATE_HOME", "")
        home = os.environ.get("HOME", "")
        if xdg.startswith("/"):
            out.append(Path(xdg) / "klpcc")
        elif home.startswith("/"):
            out.append(Path(home) / ".local" / "state" / "klpcc")
    out.append(Path("/var/lib/klpcc"))
    return out


def primary(state_dir: str | None) -> Path:
    if state_dir:
        return Path(state_dir).absolute()
    found = stores()
    if not found:
        raise KlpccError("KLPCC_STATE_DIR is set and empty: there is no store to install in "
                         "(--state-dir DIR)")
    return found[0]


def _trusted(st: os.stat_result) -> bool:
    """The runtime's rule for a store's directory and files (runtime/userspace/store.c):
    the euid's or root's, and nobody else may write."""
    return st.st_uid in (os.geteuid(), 0) and not st.st_mode & 0o022


def _mkdirs(area: Path) -> None:
    """``area`` (``<store>/userspace`` or a kernel release's directory) and ``objects/``
    under a userspace one, created 0755 whatever the umask, and checked with the
    runtime's rule: a store it would not trust is refused, not filled."""
    created = []
    for d in reversed([area, *area.parents]):
        if not d.exists():
            created.append(d)
    try:
        area.mkdir(parents=True, exist_ok=True)
        for d in created:
            os.chmod(d, 0o755)
    except OSError as exc:
        raise KlpccError(f"cannot create {area}: {exc.strerror}") from None
    _check_dir(area)


def _check_dir(d: Path) -> None:
    st = os.lstat(d)
    if not stat.S_ISDIR(st.st_mode) or not _trusted(st):
        raise KlpccError(f"{d} is not a directory of uid {os.geteuid()} or root that only its owner may "
                         "write (a link, or group- or world-writable): it would not be trusted")


@contextlib.contextmanager
def _locked(area: Path) -> Iterator[None]:
    """One install or uninstall at a time in a store (``_collect`` would remove what a
    concurrent install has not linked yet)."""
    fd = os.open(area / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _link(record: Path, target: str) -> None:
    """Point ``record`` at ``target`` (relative), atomically."""
    tmp = record.with_name(f".{record.name}.tmp-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    try:
        os.replace(tmp, record)
    except OSError:
        tmp.unlink()
        raise


def _collect(area: Path) -> None:
    """Remove the objects no record points at any more."""
    objects = area / OBJECTS
    if not objects.is_dir():
        return
    used = {os.path.realpath(r) for r in area.rglob("*") if r.is_symlink()}
    for f in objects.iterdir():
        if os.path.realpath(f) not in used:
            with contextlib.suppress(OSError):
                f.unlink()


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise KlpccError("no such file", patch=path) from None
    except IsADirectoryError:
        raise KlpccError("is a directory", patch=path) from None
    except OSError as exc:
        raise KlpccError(f"cannot read it: {exc.strerror}", patch=path) from None


@dataclass
class Change:
    object: str  # what the record is for: a program or library (name), or a kernel release
    key: str  # build-id, or kernel release
    action: str  # installed, replaced, unchanged, removed
    release: str
    previous: str | None = None  # the release it replaced or removed


@dataclass
class Installed:
    store: Path
    patch: str
    release: str
    changes: list[Change] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"schema": "klpcc.install/1", "store": str(self.store), "patch": self.patch,
                "release": self.release,
                "records": [{"object": c.object, "key": c.key, "action": c.action, "release": c.release,
                             "previous": c.previous} for c in self.changes]}

    def text(self) -> str:
        lines = []
        for c in self.changes:
            was = f" (was {c.previous})" if c.previous and c.previous != c.release else ""
            lines.append(f"{c.action} {c.release} for {c.object} ({c.key[:12]}){was} in {self.store}")
        return "\n".join(lines) + "\n" if lines else f"nothing installed in {self.store}\n"


def _order(new: dict, old: dict) -> int:
    """-1 if ``new`` is an older release of ``old``'s series, 1 if newer, 0 otherwise."""
    nr, orr = new.get("releases") or [], old.get("releases") or []
    ni, oi = (new.get("release") or {}).get("index", 0), (old.get("release") or {}).get("index", 0)
    n = min(ni, oi)
    if not n or nr[:n] != orr[:n] or ni == oi:
        return 0
    return -1 if ni < oi else 1


def _release(doc: dict) -> str:
    return str((doc.get("release") or {}).get("name", "?"))


def _keys(doc: dict) -> list[dict]:
    """The objects a patch object is recorded for: the program alone when it has one (the
    patch covers the libraries it carries when that program runs; other programs keep
    the libraries' own records), else every library."""
    objects = doc["patch_object"]["objects"]
    program = [o for o in objects if o.get("kind") == "program"]
    return program or objects


def install_userspace(patch: str, state_dir: str | None = None, force: bool = False) -> Installed:
    doc = elfinfo.patch_manifest(patch)
    data = _read(patch)
    store = primary(state_dir)
    area = store / USERSPACE
    name = f"{hashlib.sha256(data).hexdigest()}.so"
    done = Installed(store, str(Path(patch).resolve()), _release(doc))
    _mkdirs(area / OBJECTS)
    _mkdirs(area)
    with _locked(area):
        plan = []
        for obj in _keys(doc):
            record = area / f"{obj['build_id']}.so"
            if record.is_dir():
                raise KlpccError(f"{record} is a directory, not a record", patch=patch)
            old = None
            if record.exists():
                with contextlib.suppress(KlpccError):
                    old = elfinfo.patch_manifest(str(record))
            if old is not None and os.path.realpath(record) == os.path.realpath(area / OBJECTS / name):
                plan.append((record, Change(obj["name"], obj["build_id"], "unchanged", done.release,
                                            done.release)))
                continue
            if old is not None and _order(doc, old) < 0 and not force:
                raise KlpccError(f"a newer release ({_release(old)}) is installed for {obj['name']} "
                                 f"(build-id {obj['build_id'][:12]}) in {store}; --force installs the older "
                                 f"{done.release}", patch=patch)
            action = "replaced" if record.is_symlink() or record.exists() else "installed"
            plan.append((record, Change(obj["name"], obj["build_id"], action, done.release,
                                        _release(old) if old else None)))
        target = area / OBJECTS / name
        if not target.exists():
            atomic.write_atomic(target, data, 0o644)
        for record, change in plan:
            if change.action != "unchanged":
                _link(record, f"{OBJECTS}/{name}")
            done.changes.append(change)
        _collect(area)
    return done


def install_kernel(module: str, state_dir: str | None = None, force: bool = False) -> Installed:
    info = elfinfo.modinfo(module)
    data = _read(module)
    if info.get("livepatch") != "Y":
        raise KlpccError("is not a livepatch module (its modinfo has no livepatch=Y)", patch=module)
    vermagic = info.get("vermagic", "").split()
    if not vermagic or not _KREL.match(vermagic[0]):
        raise KlpccError("its modinfo has no vermagic naming the kernel it is for", patch=module)
    krel, modname = vermagic[0], info.get("name") or Path(module).name.removesuffix(".ko")
    if not _KREL.match(modname):
        raise KlpccError(f"its module name {modname!r} is not a file name", patch=module)
    store = primary(state_dir)
    area = store / KERNEL / krel
    release = info.get("klpcc_release", modname)
    done = Installed(store, str(Path(module).resolve()), release)
    _mkdirs(area)
    for d in (store, store / KERNEL):  # klpcc-load --all trusts the whole path
        _check_dir(d)
    with _locked(store / KERNEL):
        previous = sorted(area.glob("*.ko"))
        old_info: dict[str, str] = {}
        for p in previous:
            with contextlib.suppress(KlpccError):
                old_info = elfinfo.modinfo(str(p))
        series = old_info.get("klpcc_series")
        same_series = series and series == info.get("klpcc_series")
        if same_series and not force and int(old_info.get("klpcc_release_index", "0") or 0) > int(
                info.get("klpcc_release_index", "0") or 0):
            raise KlpccError(f"a newer release ({old_info.get('klpcc_release')}) is installed for kernel "
                             f"{krel} in {store}; --force installs the older {release}", patch=module)
        target = area / f"{modname}.ko"
        unchanged = target.is_file() and target.read_bytes() == data
        if not unchanged:
            atomic.write_atomic(target, data, 0o644)
        for p in previous:  # one cumulative module per kernel: the new one replaces them all
            if p != target:
                p.unlink()
        was = old_info.get("klpcc_release") or (previous[0].stem if previous else None)
        done.changes.append(Change(f"kernel {krel}", krel, "unchanged" if unchanged else
                                   "replaced" if previous else "installed", release, was))
    return done


def install(path: str, state_dir: str | None = None, force: bool = False, kernel: bool = False) -> Installed:
    """Record a patch in the store so that it comes back after a restart (userspace: a
    patch object) or a reboot (``kernel``: a livepatch module)."""
    return (install_kernel if kernel else install_userspace)(path, state_dir, force)


def uninstall(path: str, state_dir: str | None = None, kernel: bool = False) -> Installed:
    """Remove records: those of a patch object (for each of its objects, when it is the one
    in force), those of a program or library (by its build-id), or the kernel module
    for a kernel release (``kernel``: a module file or a release such as 6.1.0-28-amd64)."""
    store = primary(state_dir)
    done = Installed(store, path, "")
    if kernel:
        krel = path
        if os.path.isfile(path):
            vm = elfinfo.modinfo(path).get("vermagic", "").split()
            krel = vm[0] if vm else ""
        if not _KREL.match(krel) or krel in (".", ".."):
            raise KlpccError("neither a livepatch module nor a kernel release", patch=path)
        area = store / KERNEL / krel
        if not area.is_dir():
            return done
        with _locked(store / KERNEL):
            for p in sorted(area.glob("*.ko")):
                rel = p.stem
                with contextlib.suppress(KlpccError):
                    rel = elfinfo.modinfo(str(p)).get("klpcc_release", p.stem)
                p.unlink()
                done.changes.append(Change(f"kernel {krel}", krel, "removed", rel, rel))
            with contextlib.suppress(OSError):
                area.rmdir()
        return done
    area = store / USERSPACE
    if elfinfo.section(path, elfinfo.PATCH_MANIFEST) is not None:
        doc = elfinfo.patch_manifest(path)
        wanted = hashlib.sha256(_read(path)).hexdigest()
        keys = [(o["name"], o["build_id"]) for o in _keys(doc)]
    else:
        bid = elfinfo.build_id(path)
        if bid is None:
            raise KlpccError("is neither a klpcc patch object nor a program or library with a GNU build-id",
                             patch=path)
        wanted, keys = None, [(os.path.basename(path), bid)]
    if not area.is_dir():
        return done
    with _locked(area):
        for name, bid in keys:
            record = area / f"{bid}.so"
            if not record.is_symlink() and not record.exists():
                continue
            if wanted is not None and Path(os.path.realpath(record)).stem != wanted:
                continue  # another patch is in force for it: not this one's to remove
            with contextlib.suppress(KlpccError):
                done.release = _release(elfinfo.patch_manifest(str(record)))
            record.unlink()
            done.changes.append(Change(name, bid, "removed", done.release, done.release))
        _collect(area)
    return done


def _trusted_record(dirs: tuple[Path, ...], record: Path) -> bool:
    """Whether the runtime (its store's userspace/) or klpcc-load (the store, kernel/ and
    the release's directory) would apply this record."""
    try:
        return (all(stat.S_ISDIR(os.lstat(d).st_mode) and _trusted(os.lstat(d)) for d in dirs)
                and stat.S_ISREG(os.stat(record).st_mode) and _trusted(os.stat(record)))
    except OSError:
        return False


def records() -> list[dict]:
    """What every store holds, for ``klpcc status --all``."""
    out = []
    for store in stores():
        area = store / USERSPACE
        for record in sorted(area.glob("*.so")) if area.is_dir() else []:
            doc: dict = {}
            with contextlib.suppress(KlpccError):
                doc = elfinfo.patch_manifest(str(record))
            objects = {o["build_id"]: o["name"] for o in doc.get("patch_object", {}).get("objects", [])}
            out.append({"store": str(store), "kind": "userspace", "key": record.stem,
                        "object": objects.get(record.stem, "?"), "release": _release(doc) if doc else "?",
                        "patch": os.path.realpath(record), "trusted": _trusted_record((area,), record)})
        kernel = store / KERNEL
        for mod in sorted(kernel.glob("*/*.ko")) if kernel.is_dir() else []:
            info: dict = {}
            with contextlib.suppress(KlpccError):
                info = elfinfo.modinfo(str(mod))
            out.append({"store": str(store), "kind": "kernel", "key": mod.parent.name,
                        "object": f"kernel {mod.parent.name}", "release": info.get("klpcc_release", mod.stem),
                        "patch": str(mod), "trusted": _trusted_record((store, kernel, mod.parent), mod)})
    return out
