"""The bundle's manifest as typed data: what ``klpcc compile`` writes and every target
reads (schema ``klpcc.manifest/2``, documented in ``docs/formats.md``).

:class:`Manifest` is built from an analysis by :mod:`klpcc.bundle` and written with
:meth:`Manifest.to_json`; targets read it back with :func:`read` (a bundle directory)
or :meth:`Manifest.from_json`, which check every field they rely on and say which one
is wrong.  ``from_json(doc).to_json() == doc`` for every manifest klpcc writes.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .errors import KlpccError
from .names import decoded

MANIFEST_SCHEMA = "klpcc.manifest/2"
OBJECTS_ORIGIN = "objects"  # an entry the compiled code added: its source did not change

T = TypeVar("T")


class _Reader:
    """Typed access to one JSON object of the manifest; errors name the field."""

    def __init__(self, doc: Any, where: str, shown: str):
        if not isinstance(doc, Mapping):
            raise KlpccError(f"{shown}: malformed manifest: {where} is not an object")
        self.doc, self.where, self.shown = doc, where, shown

    def _bad(self, key: str, want: str) -> KlpccError:
        return KlpccError(f"{self.shown}: malformed manifest: {self.where}.{key} is not {want}")

    def has(self, key: str) -> bool:
        return key in self.doc

    def get(self, key: str, kind: type | tuple[type, ...], want: str, default: Any = ...) -> Any:
        if key not in self.doc:
            if default is ...:
                raise KlpccError(f"{self.shown}: malformed manifest: {self.where}.{key} is missing")
            return default
        value = self.doc[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _tuple(kind)):
            raise self._bad(key, want)
        return value

    def str(self, key: str, default: Any = ...) -> Any:
        return self.get(key, str, "a string", default)

    def opt_str(self, key: str) -> str | None:
        return self.get(key, (str, type(None)), "a string or null", None)

    def int(self, key: str, default: Any = ...) -> Any:
        return self.get(key, int, "a number", default)

    def bool(self, key: str, default: Any = ...) -> Any:
        return self.get(key, bool, "true or false", default)

    def strings(self, key: str, default: Any = ...) -> tuple[str, ...]:
        value = self.get(key, list, "a list", default)
        if value is default and not isinstance(value, list):
            return value
        if not all(isinstance(v, str) for v in value):
            raise self._bad(key, "a list of strings")
        return tuple(value)

    def objects(self, key: str, make: Callable[[_Reader], T], default: Any = ...) -> tuple[T, ...]:
        value = self.get(key, list, "a list", default)
        if value is default and not isinstance(value, list):
            return value
        return tuple(make(_Reader(v, f"{self.where}.{key}[{i}]", self.shown)) for i, v in enumerate(value))

    def mapping(self, key: str, default: Any = ...) -> dict:
        return dict(self.get(key, dict, "an object", default))


def _tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


@dataclass(frozen=True)
class Change:
    """One entry of ``functions`` (or of ``outside``: a type, a variable, a macro, a
    file): what the release does to it against the base.  An entry the object-level
    check added (``origin == "objects"``: the code changed, the source did not) has
    only its name, file, change, reason and symbols."""

    name: str
    file: str
    change: str  # modified, added, removed, nop, dropped
    kind: str = "function"
    key: str | None = None
    static: bool | None = None  # functions only
    files: tuple[str, ...] = ()  # every file defining it, when more than one
    macro: str | None = None  # the macro that defines it
    lines: tuple[int, int] | None = None
    base_fingerprint: str | None = None
    fingerprint: str | None = None
    patch: tuple[str, int | None] | None = None  # the patch line of its last change
    history: tuple[str, ...] = ()  # its change kind in each release
    touched: tuple[str, ...] = ()  # the releases that changed it
    fingerprints: dict[str, str | None] = field(default_factory=dict)
    transition: str | None = None  # from an installed release (analysis with --from)
    origin: str | None = None
    reason: str | None = None
    symbols: tuple[str, ...] = ()

    def to_json(self, with_transition: bool = False) -> dict:
        if self.origin == OBJECTS_ORIGIN:
            return {"name": self.name, "file": self.file, "change": self.change, "origin": self.origin,
                    "reason": self.reason, "symbols": list(self.symbols)}
        doc: dict = {"name": self.name, "key": self.key, "file": self.file}
        if self.kind != "function":
            doc = {"kind": self.kind, **doc}
        else:
            doc["static"] = self.static
        doc["change"] = self.change
        if self.files:
            doc["files"] = list(self.files)
        if self.macro:
            doc["macro"] = self.macro
        if with_transition:
            doc["transition"] = self.transition
        doc["lines"] = None if self.lines is None else {"start": self.lines[0], "end": self.lines[1]}
        doc["base_fingerprint"] = self.base_fingerprint
        doc["fingerprint"] = self.fingerprint
        doc["patch"] = None if self.patch is None else {"file": self.patch[0], "line": self.patch[1]}
        doc["history"] = list(self.history)
        doc["touched"] = list(self.touched)
        doc["fingerprints"] = dict(self.fingerprints)
        return doc

    @classmethod
    def from_json(cls, r: _Reader) -> Change:
        name, file, change = r.str("name"), r.str("file"), r.str("change")
        if r.opt_str("origin") == OBJECTS_ORIGIN:
            return cls(name, file, change, origin=OBJECTS_ORIGIN, reason=r.opt_str("reason"),
                       symbols=r.strings("symbols", ()))
        lines = r.get("lines", (dict, type(None)), "an object or null", None)
        patch = r.get("patch", (dict, type(None)), "an object or null", None)
        if lines is not None:
            lines = _Reader(lines, f"{r.where}.lines", r.shown)
            lines = (lines.int("start"), lines.int("end"))
        if patch is not None:
            patch = _Reader(patch, f"{r.where}.patch", r.shown)
            patch = (patch.str("file"), patch.get("line", (int, type(None)), "a number or null"))
        kind = r.str("kind", "function")
        return cls(name, file, change, kind=kind, key=r.str("key"),
                   static=r.bool("static") if kind == "function" else None,
                   files=r.strings("files", ()), macro=r.opt_str("macro"), lines=lines,
                   base_fingerprint=r.opt_str("base_fingerprint"), fingerprint=r.opt_str("fingerprint"),
                   patch=patch, history=r.strings("history", ()), touched=r.strings("touched", ()),
                   fingerprints=r.mapping("fingerprints", {}), transition=r.opt_str("transition"))


@dataclass(frozen=True)
class FileChange:
    path: str
    status: str  # added, deleted, modified
    base_sha256: str | None
    sha256: str | None

    def to_json(self) -> dict:
        return {"path": self.path, "status": self.status, "base_sha256": self.base_sha256,
                "sha256": self.sha256}

    @classmethod
    def from_json(cls, r: _Reader) -> FileChange:
        return cls(r.str("path"), r.str("status"), r.opt_str("base_sha256"), r.opt_str("sha256"))


@dataclass(frozen=True)
class SourceFile:
    """A file of ``sources/``: the release's version of a changed C file or of a local
    header it includes."""

    path: str
    sha256: str

    def to_json(self) -> dict:
        return {"path": self.path, "sha256": self.sha256}

    @classmethod
    def from_json(cls, r: _Reader) -> SourceFile:
        return cls(_bundle_path(r), r.str("sha256"))


def _bundle_path(r: _Reader) -> str:
    path = r.str("path")
    if not path or path.startswith("/") or ".." in path.split("/") or "\0" in path:
        raise KlpccError(f"{r.shown}: malformed manifest: {r.where}.path {path!r} is not a path inside "
                         "the bundle")
    return path


@dataclass(frozen=True)
class HeaderUnit:
    """An unchanged C unit of the base tree that reads a header the release changes
    (directly or through other headers): ``sources/`` carries it, and the targets
    compare its code as they do the changed units'."""

    path: str
    headers: tuple[str, ...]  # the changed headers it reads

    def to_json(self) -> dict:
        return {"path": self.path, "headers": list(self.headers)}

    @classmethod
    def from_json(cls, r: _Reader) -> HeaderUnit:
        return cls(_bundle_path(r), r.strings("headers"))


@dataclass(frozen=True)
class PatchFile:
    """A release's patch as the bundle carries it (``patches/``), for the review page:
    ``path`` is the patch as the series named it (what findings and ``patch`` fields
    refer to), ``file`` its copy in the bundle."""

    release: str
    path: str
    file: str
    sha256: str

    def to_json(self) -> dict:
        return {"release": self.release, "path": self.path, "file": self.file, "sha256": self.sha256}

    @classmethod
    def from_json(cls, r: _Reader) -> PatchFile:
        file = r.str("file")
        if not re.fullmatch(r"patches/\d{4,}\.patch", file):
            raise KlpccError(f"{r.shown}: malformed manifest: {r.where}.file {file!r} is not a patch of "
                             "the bundle")
        return cls(r.str("release"), r.str("path"), file, r.str("sha256"))


@dataclass(frozen=True)
class Site:
    file: str
    line: int
    function: str | None

    def to_json(self) -> dict:
        return {"file": self.file, "line": self.line, "function": self.function}

    @classmethod
    def from_json(cls, r: _Reader) -> Site:
        return cls(r.str("file"), r.int("line"), r.opt_str("function"))


@dataclass(frozen=True)
class State:
    """A system state the release declares: ``id`` is a number, or the text of an id
    klpcc could not compute."""

    id: int | str
    version: int
    site: Site
    origin: str

    def to_json(self) -> dict:
        return {"id": self.id, "version": self.version, **self.site.to_json(), "origin": self.origin}

    @classmethod
    def from_json(cls, r: _Reader) -> State:
        return cls(r.get("id", (int, str), "a number or a string"), r.int("version"), Site.from_json(r),
                   r.str("origin"))


@dataclass(frozen=True)
class Callback:
    kind: str  # pre_patch, post_patch, pre_unpatch, post_unpatch
    callback: str
    site: Site
    effects: tuple[str, ...]
    origin: str

    @property
    def file(self) -> str:
        return self.site.file

    def to_json(self) -> dict:
        return {"kind": self.kind, "callback": self.callback, **self.site.to_json(),
                "effects": list(self.effects), "origin": self.origin}

    @classmethod
    def from_json(cls, r: _Reader) -> Callback:
        return cls(r.str("kind"), r.str("callback"), Site.from_json(r), r.strings("effects", ()),
                   r.str("origin"))


@dataclass(frozen=True)
class ShadowUse:
    op: str  # alloc, get_or_alloc, get, free, free_all
    id: int | str
    type: str | None
    size: str | None
    ctor: str | None
    dtor: str | None
    teardown: bool
    layout: str | None
    site: Site
    origin: str

    def to_json(self) -> dict:
        return {"op": self.op, "id": self.id, "type": self.type, "size": self.size, "ctor": self.ctor,
                "dtor": self.dtor, "teardown": self.teardown, "layout": self.layout, **self.site.to_json(),
                "origin": self.origin}

    @classmethod
    def from_json(cls, r: _Reader) -> ShadowUse:
        return cls(r.str("op"), r.get("id", (int, str), "a number or a string"), r.opt_str("type"),
                   r.opt_str("size"), r.opt_str("ctor"), r.opt_str("dtor"), r.bool("teardown"),
                   r.opt_str("layout"), Site.from_json(r), r.str("origin"))


@dataclass(frozen=True)
class Finding:
    """A lint finding recorded in the bundle (``klpcc.lint/1``'s form)."""

    rule: str
    name: str
    severity: str
    message: str
    hint: str
    release: str
    against: tuple[str, ...]
    function: str | None
    file: str | None
    line: int | None
    patch: str | None
    patch_line: int | None

    def to_json(self) -> dict:
        return {"rule": self.rule, "name": self.name, "severity": self.severity, "message": self.message,
                "hint": self.hint, "release": self.release, "against": list(self.against),
                "function": self.function, "file": self.file, "line": self.line, "patch": self.patch,
                "patch_line": self.patch_line}

    @classmethod
    def from_json(cls, r: _Reader) -> Finding:
        opt_int = (int, type(None))
        return cls(r.str("rule"), r.str("name"), r.str("severity"), r.str("message"), r.str("hint"),
                   r.str("release"), r.strings("against"), r.opt_str("function"), r.opt_str("file"),
                   r.get("line", opt_int, "a number or null"), r.opt_str("patch"),
                   r.get("patch_line", opt_int, "a number or null"))


@dataclass(frozen=True)
class Lint:
    """The lint of the release against every earlier one, as ``compile`` ran it."""

    schema: str
    against: tuple[str, ...]
    summary: dict[str, int]
    findings: tuple[Finding, ...]

    def to_json(self) -> dict:
        return {"schema": self.schema, "against": list(self.against), "summary": dict(self.summary),
                "findings": [f.to_json() for f in self.findings]}

    @classmethod
    def from_json(cls, r: _Reader) -> Lint:
        return cls(r.str("schema"), r.strings("against"), r.mapping("summary"),
                   r.objects("findings", Finding.from_json))


def lint_sections(doc: Mapping, shown: str = "lint") -> dict:
    """The manifest's lint fields (``states``, ``callbacks``, ``shadow``, ``lint``) from
    a lint's JSON (``klpcc.lint/1``: its summary and findings, and the release's facts)."""
    r = _Reader(doc, "lint", shown)
    return {"states": r.objects("states", State.from_json),
            "callbacks": r.objects("callbacks", Callback.from_json),
            "shadow": r.objects("shadow", ShadowUse.from_json), "lint": Lint.from_json(r)}


@dataclass(frozen=True)
class Base:
    """The tree the series applies to: its identity (``kind``, ``path``, a git
    ``commit``) and the base version of every file the series touches."""

    identity: dict[str, str]
    files: tuple[tuple[str, str | None], ...]  # (path, sha256; None: the base has no such file)

    def to_json(self) -> dict:
        return {**self.identity, "files": [{"path": p, "sha256": h} for p, h in self.files]}

    @classmethod
    def from_json(cls, r: _Reader) -> Base:
        ident = {k: v for k, v in r.doc.items() if k != "files"}
        files = r.objects("files", lambda f: (f.str("path"), f.opt_str("sha256")))
        return cls(ident, files)


@dataclass(frozen=True)
class Manifest:
    generator: str
    release: str  # the release's name
    release_index: int  # 1-based
    releases: tuple[str, ...]
    base: Base
    functions: tuple[Change, ...]
    nops: tuple[str, ...]
    outside: tuple[Change, ...]
    files: tuple[FileChange, ...]
    sources: tuple[SourceFile, ...]
    dependencies: dict[str, list[str]]
    warnings: tuple[str, ...]
    diff: str = "cumulative.diff"
    base_sources: tuple[SourceFile, ...] = ()  # base/: the base version of the changed sources
    immediate: tuple[str, ...] = ()  # functions klpcc.toml marks immediate for this release
    header_units: tuple[HeaderUnit, ...] = ()  # unchanged units that read a changed header
    patches: tuple[PatchFile, ...] = ()  # patches/: the patches of releases 1..R
    # from the lint (absent when the bundle was written without it)
    states: tuple[State, ...] | None = None
    callbacks: tuple[Callback, ...] | None = None
    shadow: tuple[ShadowUse, ...] | None = None
    lint: Lint | None = None
    objects: dict | None = None  # the object-level report (klpcc.objects, in analysis JSON's form)
    schema: str = MANIFEST_SCHEMA

    @property
    def findings(self) -> tuple[Finding, ...]:
        return self.lint.findings if self.lint is not None else ()

    def to_json(self) -> dict:
        doc: dict = {
            "schema": self.schema,
            "generator": self.generator,
            "release": {"name": self.release, "index": self.release_index},
            "releases": list(self.releases),
            "base": self.base.to_json(),
            "functions": [c.to_json() for c in self.functions],
            "nops": list(self.nops),
            "outside": [c.to_json() for c in self.outside],
            "files": [f.to_json() for f in self.files],
            "diff": self.diff,
            "sources": [s.to_json() for s in self.sources],
            **({"base_sources": [s.to_json() for s in self.base_sources]} if self.base_sources else {}),
            **({"immediate": list(self.immediate)} if self.immediate else {}),
            **({"header_units": [u.to_json() for u in self.header_units]} if self.header_units else {}),
            **({"patches": [p.to_json() for p in self.patches]} if self.patches else {}),
            "dependencies": {k: list(v) for k, v in self.dependencies.items()},
            "warnings": list(self.warnings),
        }
        if self.lint is not None:
            doc["states"] = [s.to_json() for s in self.states or ()]
            doc["callbacks"] = [c.to_json() for c in self.callbacks or ()]
            doc["shadow"] = [u.to_json() for u in self.shadow or ()]
            doc["lint"] = self.lint.to_json()
        if self.objects is not None:
            doc["objects"] = self.objects
        return doc

    @classmethod
    def from_json(cls, doc: Any, shown: str = "manifest.json") -> Manifest:
        r = _Reader(doc, "manifest", shown)
        if doc.get("schema") != MANIFEST_SCHEMA:
            raise KlpccError(f"{shown}: not a {MANIFEST_SCHEMA} manifest")
        rel = _Reader(r.get("release", dict, "an object"), "manifest.release", shown)
        deps = r.mapping("dependencies")
        if not all(isinstance(v, list) for v in deps.values()):
            raise KlpccError(f"{shown}: malformed manifest: manifest.dependencies holds a non-list")
        linted = r.has("lint")
        name, index, releases = rel.str("name"), rel.int("index"), r.strings("releases")
        if not 0 < index <= len(releases) or releases[index - 1] != name:
            raise KlpccError(f"{shown}: malformed manifest: manifest.release ({index}, {name!r}) is not "
                             f"one of manifest.releases ({len(releases)})")
        return cls(
            generator=r.str("generator"), release=name, release_index=index, releases=releases,
            base=Base.from_json(_Reader(r.get("base", dict, "an object"), "manifest.base", shown)),
            functions=r.objects("functions", Change.from_json), nops=r.strings("nops"),
            outside=r.objects("outside", Change.from_json), files=r.objects("files", FileChange.from_json),
            sources=r.objects("sources", SourceFile.from_json), dependencies=deps,
            base_sources=r.objects("base_sources", SourceFile.from_json, ()),
            immediate=r.strings("immediate", ()),
            header_units=r.objects("header_units", HeaderUnit.from_json, ()),
            patches=r.objects("patches", PatchFile.from_json, ()),
            warnings=r.strings("warnings"), diff=r.str("diff"),
            states=r.objects("states", State.from_json, ()) if linted else None,
            callbacks=r.objects("callbacks", Callback.from_json, ()) if linted else None,
            shadow=r.objects("shadow", ShadowUse.from_json, ()) if linted else None,
            lint=Lint.from_json(_Reader(r.get("lint", dict, "an object"), "manifest.lint", shown))
            if linted else None,
            objects=r.mapping("objects") if r.has("objects") else None,
        )


@dataclass(frozen=True)
class Bundle:
    """A bundle directory read back: its manifest, and its files."""

    path: Path
    manifest: Manifest

    def source(self, path: str) -> bytes:
        """The release's version of ``path`` as the bundle carries it (``sources/``)."""
        try:
            return (self.path / "sources" / path).read_bytes()
        except OSError as exc:
            raise KlpccError(f"{self.path}/sources/{path}: {exc.strerror}") from None

    def patch(self, release: int) -> tuple[str, bytes] | None:
        """The patch of ``release`` (1-based) as the series named it and its text, when
        the bundle carries it (``patches/``)."""
        m = self.manifest
        if not 0 < release <= len(m.releases):
            return None
        entry = next((p for p in m.patches if p.release == m.releases[release - 1]), None)
        if entry is None:
            return None
        try:
            data = (self.path / entry.file).read_bytes()
        except OSError as exc:
            raise KlpccError(f"{self.path}/{entry.file}: {exc.strerror}") from None
        if hashlib.sha256(data).hexdigest() != entry.sha256:
            raise KlpccError(f"{self.path}/{entry.file}: does not match the manifest's sha256 (the bundle "
                             "was changed after klpcc compile wrote it)")
        return entry.path, data

    @property
    def source_paths(self) -> list[str]:
        return [s.path for s in self.manifest.sources]

    def base_source(self, path: str) -> bytes | None:
        """The base version of ``path`` (None: the release adds it): from ``base/`` where
        the release changed it, else the same as ``sources/``."""
        if any(s.path == path for s in self.manifest.base_sources):
            try:
                return (self.path / "base" / path).read_bytes()
            except OSError as exc:
                raise KlpccError(f"{self.path}/base/{path}: {exc.strerror}") from None
        if any(f.path == path and f.status == "added" for f in self.manifest.files):
            return None
        return self.source(path)


def read(bundle: str | Path) -> Bundle:
    """The bundle a ``klpcc compile`` wrote to ``bundle``."""
    root = Path(bundle)
    path = root / "manifest.json"
    try:
        doc = decoded(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise KlpccError(f"{root} is not a klpcc bundle (no manifest.json); make one with klpcc compile") \
            from None
    except (OSError, ValueError) as exc:
        raise KlpccError(f"{path}: unreadable manifest: {exc}") from None
    if not isinstance(doc, dict) or doc.get("schema") != MANIFEST_SCHEMA:
        raise KlpccError(f"{path}: not a {MANIFEST_SCHEMA} manifest")
    if "sources" not in doc or not (root / "sources").is_dir() and doc["sources"]:
        raise KlpccError(f"{root} has no sources/ (made by an older klpcc); compile the bundle again")
    return Bundle(root, Manifest.from_json(doc, str(path)))
