"""Boot the installed Debian kernel in qemu (TCG, no KVM needed) with a throwaway
initramfs, run a shell script in it and collect what it printed.

    kut = ensure_kernel_packages()          # installs the packages when missing (root)
    run = run_guest({"/bin/tool": path, "/data/x": b"..."}, "tool --version | sed 's/^/R: /'")
    assert run.status == 0
    assert run.lines("R: ") == [...]

The guest is busybox (from busybox-static) on the kernel's initramfs; /init mounts
proc, sysfs and devtmpfs, runs the script with sh, prints ``KLPCC-GUEST-EXIT <status>``
and powers off.  Kernel messages share the serial console with the script's output and
may interleave with it; scripts should print their results on lines with a prefix of
their own and read them back with :meth:`GuestRun.lines`.
"""

from __future__ import annotations

import functools
import gzip
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PACKAGES = ["linux-image-amd64", "linux-headers-amd64", "qemu-system-x86", "busybox-static", "cpio"]
QEMU = "qemu-system-x86_64"
BUSYBOX = Path("/bin/busybox")
START_MARKER = "KLPCC-GUEST-START"
EXIT_MARKER = "KLPCC-GUEST-EXIT"
_EXIT_RE = re.compile(re.escape(EXIT_MARKER) + r" (\d+)")
_ANSI_RE = re.compile(r"\x1b(?:\[[0-9;?]*[A-Za-z]|c)")  # the firmware's terminal resets


@dataclass(frozen=True)
class KernelUnderTest:
    """The installed kernel the guest boots, and what building modules for it needs."""

    release: str  # e.g. "6.1.0-56-amd64"
    vmlinuz: Path  # /boot/vmlinuz-<release>
    kdir: Path  # /lib/modules/<release>/build (has Module.symvers)
    package_version: str  # Debian version of linux-image-<release>, e.g. "6.1.192-2"

    @property
    def image_package(self) -> str:
        return f"linux-image-{self.release}"

    @property
    def source_package(self) -> str:
        """The Debian package with this kernel's source, e.g. ``linux-source-6.1``."""
        major_minor = ".".join(self.release.split("-")[0].split(".")[:2])
        return f"linux-source-{major_minor}"

    @property
    def source_version(self) -> str:
        """The version of :attr:`source_package` that matches this kernel: the same
        Debian version as the image (one source package builds both)."""
        return self.package_version

    @property
    def upstream_version(self) -> str:
        """The upstream kernel version, e.g. ``6.1.192`` (the Debian revision stripped)."""
        version = self.package_version.split(":", 1)[-1]
        return version.rsplit("-", 1)[0] if "-" in version else version


@dataclass
class GuestRun:
    output: str  # what the script printed (between the start and exit markers, no \r)
    status: int | None  # the script's exit status (None: no exit marker seen)
    seconds: float  # wall time of the whole qemu run
    console: str = field(repr=False, default="")  # the full serial console log

    def lines(self, prefix: str) -> list[str]:
        """The output lines that start with ``prefix``, the prefix stripped."""
        return [line[len(prefix):] for line in self.output.splitlines() if line.startswith(prefix)]

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.console.splitlines()[-n:])


# --- packages and the kernel -------------------------------------------------------


def _dpkg_installed(package: str) -> bool:
    res = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True,
                         check=False)
    return res.returncode == 0 and res.stdout.split()[-1:] == ["installed"]


def _dpkg_version(package: str) -> str | None:
    res = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True,
                         check=False)
    return (res.stdout.strip() or None) if res.returncode == 0 else None


def _version_key(release: str) -> list[tuple[int, int | str]]:
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"[.\-+~]", release)]


def _find_kernel() -> KernelUnderTest | None:
    """The newest kernel with headers (build/Module.symvers) and a matching /boot/vmlinuz."""
    candidates = []
    for build in Path("/lib/modules").glob("*/build"):
        release = build.parent.name
        vmlinuz = Path("/boot") / f"vmlinuz-{release}"
        if (build / "Module.symvers").is_file() and vmlinuz.is_file():
            candidates.append((release, vmlinuz, build))
    if not candidates:
        return None
    release, vmlinuz, build = max(candidates, key=lambda c: _version_key(c[0]))
    version = _dpkg_version(f"linux-image-{release}") or _dpkg_version(f"linux-image-{release}-unsigned")
    if version is None:
        return None
    return KernelUnderTest(release=release, vmlinuz=vmlinuz, kdir=build, package_version=version)


def _missing() -> list[str]:
    missing = []
    if _find_kernel() is None:
        missing += ["linux-image-amd64", "linux-headers-amd64"]
    if shutil.which(QEMU) is None:
        missing.append("qemu-system-x86")
    if not _dpkg_installed("busybox-static") or not BUSYBOX.is_file():
        missing.append("busybox-static")
    if shutil.which("cpio") is None:
        missing.append("cpio")
    return missing


def _apt_knows(package: str) -> bool:
    res = subprocess.run(["apt-cache", "policy", package], capture_output=True, text=True, check=False)
    return res.returncode == 0 and "Candidate:" in res.stdout and "Candidate: (none)" not in res.stdout


@functools.cache
def ensure_kernel_packages() -> KernelUnderTest:
    """The kernel to boot; installs the Debian packages the guest needs when they are missing
    (as root; otherwise the calling test fails with a message saying what to install)."""
    missing = _missing()
    if missing:
        if os.geteuid() != 0:
            pytest.fail(f"the kernel tests need the Debian packages {' '.join(missing)}; install them with "
                        f"'apt-get install --no-install-recommends {' '.join(PACKAGES)}' (as root)")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        if not all(_apt_knows(p) for p in PACKAGES):
            subprocess.run(["apt-get", "update"], env=env, check=True, capture_output=True)
        res = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES], env=env,
                             capture_output=True, text=True, check=False)
        if res.returncode != 0:
            pytest.fail(f"apt-get install {' '.join(PACKAGES)} failed:\n"
                        f"{res.stdout[-3000:]}{res.stderr[-3000:]}")
        missing = _missing()
        if missing:
            pytest.fail(f"still missing after apt-get install: {' '.join(missing)}")
    kut = _find_kernel()
    if kut is None:
        pytest.fail("no kernel with both /boot/vmlinuz-<release> and "
                    "/lib/modules/<release>/build/Module.symvers")
    return kut


# --- the initramfs -------------------------------------------------------------------

_S_IFDIR, _S_IFREG, _S_IFLNK, _S_IFCHR = 0o040000, 0o100000, 0o120000, 0o020000


class _Cpio:
    """A newc ("070701") archive, as the kernel unpacks an initramfs; every entry owned by root."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._ino = 0x1000
        self._dirs: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        self._ino += 1
        fields = [self._ino, mode, 0, 0, 2 if mode & _S_IFDIR == _S_IFDIR else 1, 0, len(data),
                  0, 0, rdev[0], rdev[1], len(name) + 1, 0]
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        blob = header + name.encode() + b"\0"
        blob += b"\0" * (-len(blob) % 4)
        blob += data + b"\0" * (-len(data) % 4)
        self._chunks.append(blob)

    def directory(self, path: str) -> None:
        path = path.strip("/")
        if not path or path in self._dirs:
            return
        self.directory(os.path.dirname(path))
        self._dirs.add(path)
        self._entry(path, _S_IFDIR | 0o755)

    def file(self, path: str, data: bytes, perm: int) -> None:
        path = path.strip("/")
        self.directory(os.path.dirname(path))
        self._entry(path, _S_IFREG | perm, data)

    def symlink(self, path: str, target: str) -> None:
        path = path.strip("/")
        self.directory(os.path.dirname(path))
        self._entry(path, _S_IFLNK | 0o777, target.encode())

    def chardev(self, path: str, major: int, minor: int, perm: int = 0o600) -> None:
        path = path.strip("/")
        self.directory(os.path.dirname(path))
        self._entry(path, _S_IFCHR | perm, rdev=(major, minor))

    def bytes(self) -> bytes:
        trailer = _Cpio()
        trailer._entry("TRAILER!!!", 0)
        data = b"".join(self._chunks) + b"".join(trailer._chunks)
        return data + b"\0" * (-len(data) % 512)


_INIT = f"""#!/bin/sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /usr/bin /usr/sbin /sbin
/bin/busybox mount -t proc proc /proc 2>/dev/null
/bin/busybox --install -s
mount -t sysfs sysfs /sys 2>/dev/null
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp 2>/dev/null
[ -c /dev/console ] && exec </dev/null >/dev/console 2>&1
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/ TERM=dumb
cd /
echo {START_MARKER}
sh /test.sh
echo "{EXIT_MARKER} $?"
sync
poweroff -f
sleep 5
"""


def _mode(guest_path: str) -> int:
    name = guest_path.rsplit("/", 1)[-1]
    if guest_path.startswith(("/bin/", "/sbin/", "/usr/bin/", "/usr/sbin/")) or name.endswith(".sh") \
            or name == "klpcc-load":
        return 0o755
    return 0o644


def build_initramfs(files: Mapping[str, Path | bytes], script: str, dest: Path) -> Path:
    """Write a gzip'ed newc initramfs with busybox, ``files`` at their guest paths, the
    script as /test.sh and the /init that runs it; returns ``dest``."""
    archive = _Cpio()
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "run", "etc", "root"):
        archive.directory(d)
    archive.chardev("dev/console", 5, 1)
    archive.chardev("dev/null", 1, 3, 0o666)
    archive.file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
    archive.symlink("bin/sh", "busybox")
    archive.file("init", _INIT.encode(), 0o755)
    archive.file("test.sh", script.encode(), 0o755)
    for guest_path, content in files.items():
        if not guest_path.startswith("/"):
            raise ValueError(f"guest paths are absolute: {guest_path!r}")
        data = content if isinstance(content, bytes) else Path(content).read_bytes()
        archive.file(guest_path, data, _mode(guest_path))
    dest.write_bytes(gzip.compress(archive.bytes(), compresslevel=1, mtime=0))
    return dest


# --- running the guest ---------------------------------------------------------------


def _between_markers(console: str) -> tuple[str, int | None]:
    start = console.find(START_MARKER + "\n")
    body = console[start + len(START_MARKER) + 1:] if start >= 0 else console
    matches = list(_EXIT_RE.finditer(body))
    if not matches:
        return body, None
    last = matches[-1]
    # Whatever precedes the marker on its line stays (output without a final newline).
    return body[:last.start()], int(last.group(1))


def run_guest(files: Mapping[str, Path | bytes], script: str, *, timeout: float = 300,
              memory: str = "512M", kernel: KernelUnderTest | None = None,
              append: str = "") -> GuestRun:
    """Boot the kernel with an initramfs holding ``files`` (guest path -> host file or
    content) and run ``script`` (sh) in it; fails the test when qemu does not finish
    within ``timeout`` seconds."""
    kut = kernel or ensure_kernel_packages()
    with tempfile.TemporaryDirectory(prefix="klpcc-guest-") as tmp:
        initrd = build_initramfs(files, script, Path(tmp) / "initramfs.cpio.gz")
        cmdline = f"console=ttyS0 panic=-1 quiet loglevel=4 {append}".strip()
        cmd = [QEMU, "-accel", "tcg", "-m", memory, "-smp", "1", "-nographic",
               "-no-reboot", "-net", "none", "-kernel", str(kut.vmlinuz), "-initrd", str(initrd),
               "-append", cmdline]
        started = time.monotonic()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        try:
            raw, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raw, _ = proc.communicate()
            console = _ANSI_RE.sub("", raw.decode(errors="replace").replace("\r", ""))
            tail = "\n".join(console.splitlines()[-60:])
            pytest.fail(f"qemu did not finish within {timeout:.0f} s; console tail:\n{tail}")
        seconds = time.monotonic() - started
    console = _ANSI_RE.sub("", raw.decode(errors="replace").replace("\r", ""))
    output, status = _between_markers(console)
    return GuestRun(output=output, status=status, seconds=seconds, console=console)
