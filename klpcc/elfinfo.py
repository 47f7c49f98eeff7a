"""Small facts read from an ELF file without loading it: its GNU build-id, the
manifest klpcc embeds in a userspace patch object, a kernel module's modinfo."""

from __future__ import annotations

import json

from .errors import KlpccError
from .names import decoded


def _open(path: str):
    from elftools.elf.elffile import ELFFile

    fh = open(path, "rb")  # noqa: SIM115 (closed by the caller's with)
    try:
        return fh, ELFFile(fh)
    except Exception:
        fh.close()
        raise


def _errors() -> tuple[type[BaseException], ...]:
    from elftools.common.exceptions import ELFError, ELFParseError

    return (ELFError, ELFParseError, ValueError, KeyError, EOFError, OSError)


def build_id_of(elf) -> str | None:
    """The GNU build-id (hex) of an open ``ELFFile``, from its notes; None if it has none."""
    for seg in elf.iter_segments():
        if seg["p_type"] == "PT_NOTE":
            for note in seg.iter_notes():
                if note["n_type"] == "NT_GNU_BUILD_ID":
                    return note["n_desc"]
    for sec in elf.iter_sections():
        if sec["sh_type"] == "SHT_NOTE":
            for note in sec.iter_notes():
                if note["n_type"] == "NT_GNU_BUILD_ID":
                    return note["n_desc"]
    return None


def build_id(path: str) -> str | None:
    """The GNU build-id of the ELF file ``path``; None if it has none or is no ELF file."""
    try:
        fh, elf = _open(path)
        with fh:
            return build_id_of(elf)
    except _errors():
        return None


def section(path: str, name: str) -> bytes | None:
    """The bytes of section ``name``; None when the file has none.  A file that is not
    ELF is refused."""
    try:
        fh, elf = _open(path)
        with fh:
            sec = elf.get_section_by_name(name)
            return None if sec is None else sec.data()
    except FileNotFoundError:
        raise KlpccError("no such file", patch=path) from None
    except IsADirectoryError:
        raise KlpccError("is a directory", patch=path) from None
    except PermissionError:
        raise KlpccError("cannot read it: permission denied", patch=path) from None
    except _errors() as exc:
        raise KlpccError(f"is not an ELF file klpcc can read: {exc}", patch=path) from None


PATCH_MANIFEST = ".klpcc.manifest"


def patch_manifest(path: str) -> dict:
    """The manifest ``klpcc build --binary/--library`` embeds in a patch object."""
    data = section(path, PATCH_MANIFEST)
    if data is None:
        raise KlpccError("is not a klpcc patch object (no .klpcc.manifest section): build it with "
                         "klpcc build --binary or --library", patch=path)
    try:
        doc = decoded(json.loads(data.rstrip(b"\0").decode("utf-8")))
    except (UnicodeDecodeError, ValueError) as exc:
        raise KlpccError(f"its .klpcc.manifest section is not JSON: {exc}", patch=path) from None
    objects = doc.get("patch_object", {}).get("objects") if isinstance(doc, dict) else None
    if not isinstance(objects, list) or not objects or not all(
            isinstance(o, dict) and isinstance(o.get("build_id"), str) for o in objects):
        raise KlpccError("its manifest names no objects (built by an older klpcc?): build it again",
                         patch=path)
    return doc


def modinfo(path: str) -> dict[str, str]:
    """A kernel module's ``.modinfo`` (key=value, the first of each key)."""
    data = section(path, ".modinfo")
    if data is None:
        raise KlpccError("is not a kernel module (no .modinfo section)", patch=path)
    out: dict[str, str] = {}
    for item in data.split(b"\0"):
        key, eq, value = item.decode("utf-8", "replace").partition("=")
        if eq:
            out.setdefault(key, value)
    return out


INSPECT_SCHEMA = "klpcc.inspect/1"


def series_id(releases: tuple[str, ...] | list[str]) -> str:
    """Which series a release belongs to, for telling newer from older releases of it
    (``klpcc install``): a digest of its first release's name."""
    import hashlib

    return hashlib.sha256(releases[0].encode("utf-8", "surrogateescape")).hexdigest()[:16] if releases else ""


def describe(path: str) -> dict:
    """What a patch object or a livepatch module is, without loading it
    (``klpcc inspect``): its kind, the name it has once loaded (the runtime's patch, the
    ``/sys/kernel/livepatch`` entry), its release in its series, what it patches."""
    import hashlib
    import os

    if section(path, PATCH_MANIFEST) is not None:
        doc = patch_manifest(path)
        rel = doc.get("release") or {}
        name, index = str(rel.get("name", "")), int(rel.get("index") or 0)
        releases = [str(r) for r in doc.get("releases") or []]
        objects = [{"name": str(o.get("name", "")), "build_id": o["build_id"], "kind": str(o.get("kind", ""))}
                   for o in doc["patch_object"]["objects"]]
        out = {"kind": "patch-object", "name": name, "release": name, "release_index": index,
               "series": series_id(releases), "kernel_release": None, "objects": objects}
    else:
        info = modinfo(path)
        if info.get("livepatch") != "Y":
            raise KlpccError("is neither a klpcc patch object nor a livepatch module", patch=path)
        vermagic = info.get("vermagic", "").split()
        index = info.get("klpcc_release_index", "0")
        name = info.get("name") or os.path.basename(path).removesuffix(".ko")
        out = {"kind": "kernel-module", "name": name, "release": info.get("klpcc_release", name),
               "release_index": int(index) if index.isdigit() else 0, "series": info.get("klpcc_series", ""),
               "kernel_release": vermagic[0] if vermagic else None, "objects": []}
    with open(path, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()
    return {"schema": INSPECT_SCHEMA, "path": os.path.abspath(path), "sha256": digest, **out}
