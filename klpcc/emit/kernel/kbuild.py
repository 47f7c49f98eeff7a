"""The compile command a kernel build directory uses for an object, taken from Kbuild
itself: a probe unit is built once as an external module object (``make -C KDIR
M=DIR probe.o``), and the command Kbuild saved for it (``.probe.o.cmd``) is the
template for every unit: the kernel's own flags, its ``-nostdinc`` include path, its
``-include`` files, ``-pg -mfentry`` where ftrace is on.  The template is cached per
build directory."""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import shlex
import shutil
import tempfile
from pathlib import Path

from ... import toolchain
from ...atomic import write_atomic
from ...compdb import Command
from ...errors import KlpccError
from ...names import quote

_SAVED = re.compile(r"^(?:saved)?cmd_\S*probe\.o\s*:=\s*(.*)$", re.M)
_PROBE = "klpcc_probe"


def _cache_dir() -> Path:
    return Path(os.environ.get("KLPCC_CACHE") or Path.home() / ".cache" / "klpcc") / "kbuild"


def _identity(kdir: Path) -> str:
    """The build directory as the cache knows it: its path and its configuration."""
    parts = [str(kdir.resolve())]
    for name in (".config", "Makefile", "include/generated/utsrelease.h", "Module.symvers"):
        try:
            st = (kdir / name).stat()
            parts.append(f"{name}:{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            parts.append(f"{name}:-")
    return hashlib.sha256("\n".join(parts).encode("utf-8", "surrogateescape")).hexdigest()[:16]


def template(kdir: Path, jobs: int | None = None) -> list[str]:
    """The compiler command Kbuild of ``kdir`` uses for a module object, without the
    object's own names (its source, output, dependency file)."""
    cached = _cache_dir() / f"{_identity(kdir)}.json"
    try:
        return list(json.loads(cached.read_text())["args"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if shutil.which("make") is None:
        raise KlpccError("make is not installed (the kernel's build system needs it)")
    work = Path(tempfile.mkdtemp(prefix="klpcc-kbuild-"))
    try:
        (work / f"{_PROBE}.c").write_text("int klpcc_probe_value(int x)\n{\n\treturn x + 1;\n}\n")
        (work / "Kbuild").write_text(f"obj-m := {_PROBE}.o\n")
        toolchain.run(["make", "-s", "-C", str(kdir), f"M={work}", f"{_PROBE}.o"],
                      subject="the probe object", action=f"building a probe object against {kdir}")
        saved = (work / f".{_PROBE}.o.cmd").read_text(errors="replace")
    except OSError as exc:
        raise KlpccError(f"building a probe object against {kdir} left no command ({exc.strerror})") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    m = _SAVED.search(saved)
    if m is None:
        raise KlpccError(f"{kdir}: Kbuild saved no compile command for the probe object")
    first = m.group(1).split(" ; ")[0]  # objtool and the like follow the compiler
    args = [a for a in shlex.split(first) if str(work) not in a]
    drop = {"-c", "-o"}
    out: list[str] = []
    for a in args:
        if a in drop or a.startswith("-Wp,-MMD") or a.endswith(f"{_PROBE}.c") or a.endswith(f"{_PROBE}.o"):
            continue
        out.append(a)
    cached.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(cached, json.dumps({"kdir": str(kdir), "args": out}))
    return out


def unit_command(args: list[str], kdir: Path, path: str, root: Path, module: str | None) -> Command:
    """The command of unit ``path`` (under ``root``), built into ``module`` (None:
    vmlinux, without ``-DMODULE``), as Kbuild would build it, run from ``kdir``."""
    stem = Path(path).stem
    name = (module or stem).replace("-", "_")
    out = []
    for a in args:
        if a == "-DMODULE" and module is None:
            # as Kbuild gives built-in code
            out.append(f'-DKBUILD_MODFILE={quote(posixpath.splitext(path)[0])}')
            continue
        if a.startswith("-DKBUILD_BASENAME="):
            a = f'-DKBUILD_BASENAME="{stem}"'
        elif a.startswith("-DKBUILD_MODNAME="):
            a = f'-DKBUILD_MODNAME="{name}"'
        elif a.startswith("-D__KBUILD_MODNAME="):
            a = f"-D__KBUILD_MODNAME=kmod_{name}"
        out.append(a)
    return Command(str(kdir.resolve()), tuple(out), str(root / path))
