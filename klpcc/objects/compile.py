"""Compiling the units of the base and of a release for the object-level check,
once per preprocessed content: objects are cached by the hash of the preprocessed
unit, its flags and the compiler."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..atomic import write_atomic
from ..compdb import BuildFailed, Command, Overlay
from ..errors import KlpccError
from ..names import unquote
from ..toolchain import first_error

OBJECTS_FLAGS = ("-ffunction-sections", "-fdata-sections", "-fdump-ipa-clones")
_LINE_MARKER = re.compile(rb'^# \d+ "((?:[^"\\\n]|\\.)+)"', re.M)


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base, "klpcc", "objects")


class Compiler:
    """Compiles units of the base or of a release, once per preprocessed content."""

    def __init__(self, overlay: Overlay, cache: Path | None, keep_preprocessed: bool = False):
        self.overlay = overlay
        self.cache = cache
        self.keep_preprocessed = keep_preprocessed
        self.preprocessed: dict[str, bytes] = {}  # with keep_preprocessed: each base unit as compiled
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
        if self.keep_preprocessed and release == 0:
            self.preprocessed[path] = text
        files = set()
        for m in _LINE_MARKER.finditer(text):
            # the compiler escapes a quote, a backslash and control characters in a name
            name = unquote('"' + m.group(1).decode("utf-8", "surrogateescape") + '"')
            try:
                files.add(Path(cmd.directory, name).resolve().relative_to(self.overlay.root).as_posix())
            except (ValueError, OSError):
                continue
        if deps_only:
            return None, b"", False, files
        flags = [a.replace(overlay_dir, "<overlay>") for a in argv]
        key = hashlib.sha256("\0".join([self.identity(argv[0], cmd.directory), *flags, *OBJECTS_FLAGS])
                             .encode("utf-8", "surrogateescape") + b"\0" + text).hexdigest()
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
        try:
            write_atomic(self.cache / f"{key}.ipa-clones", ipa_text)
            write_atomic(self.cache / f"{key}.o", out.read_bytes())
        except KlpccError as exc:  # an entry that cannot be written is the unit's problem, said in a note
            raise BuildFailed(str(exc)) from None
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


def check_cache(cache: Path) -> None:
    """Refuse an object cache that cannot be created or written."""
    try:
        cache.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=cache, prefix=".probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise KlpccError(f"cannot use the object cache {cache}: {exc.strerror or exc} "
                         "(give another --cache, or --no-cache)") from None
