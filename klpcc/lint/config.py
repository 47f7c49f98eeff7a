"""``klpcc.toml``: states, callbacks and shadow variables of releases whose authors
keep them outside the diff (in a module template, a build script).

::

    [releases."0002-fix-foo"]        # a release name, or its 1-based number as a string
    states = [{ id = 1, version = 2 }]
    callbacks = { pre_patch = "setup_foo", post_unpatch = "undo_foo" }
    shadow = [{ id = 3, type = "struct foo_extra", ops = ["alloc", "get", "free"],
                dtor = "free_foo_extra" }]
    immediate = ["worker"]           # userspace: switched without waiting for threads to leave
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from ..errors import KlpccError
from ..series import Series
from .facts import CALLBACK_KINDS, CallbackDecl, ReleaseFacts, ShadowUse, Site, StateDecl

CONFIG_NAME = "klpcc.toml"
_OPS = ("alloc", "get_or_alloc", "get", "free", "free_all")


def find_config(series_args: tuple[str, ...] | list[str], git_repo: str | None) -> Path | None:
    """The ``klpcc.toml`` beside the series (the series file's directory, or the
    directory given), or at the top of the git repository."""
    candidates: list[Path] = []
    if git_repo is not None:
        candidates.append(Path(git_repo))
    for arg in series_args[:1]:
        p = Path(arg)
        candidates.append(p if p.is_dir() else p.parent)
    for d in candidates:
        if (d / CONFIG_NAME).is_file():
            return d / CONFIG_NAME
    return None


def _line_of(text: str, needle: str) -> int | None:
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return i
    return None


class Config:
    def __init__(self, path: Path, tables: dict[int, dict[str, Any]], text: str):
        self.path = path
        self.tables = tables
        self.text = text

    def immediate(self, release: int) -> tuple[str, ...]:
        """The functions release ``release`` marks immediate."""
        return tuple(self.tables.get(release, {}).get("immediate", ()))

    def apply(self, rf: ReleaseFacts) -> None:
        table = self.tables.get(rf.release)
        if not table:
            return
        shown = str(self.path)
        key = table.get("_key", rf.name)
        site = Site(rf.release, shown, _line_of(self.text, f'"{key}"') or _line_of(self.text, key) or 1,
                    None, in_tree=False)
        for st in table.get("states", []):
            rf.states.append(StateDecl(st["id"], st["version"], site, "klpcc.toml"))
        for kind, fn in table.get("callbacks", {}).items():
            rf.callbacks.append(CallbackDecl(kind, fn, site, origin="klpcc.toml"))
        for sh in table.get("shadow", []):
            for op in sh.get("ops", ["alloc", "get", "free"]):
                rf.shadows.append(ShadowUse(op, sh["id"], site, sh.get("type"), None,
                                            sh.get("size"), sh.get("ctor"),
                                            sh.get("dtor") if op.startswith("free") else None,
                                            origin="klpcc.toml"))


def load_config(path: Path, series: Series) -> Config:
    shown = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise KlpccError(f"cannot read it: {exc.strerror}", patch=shown) from None
    except UnicodeDecodeError:
        raise KlpccError("is not UTF-8 text", patch=shown) from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = re.search(r"\(at line (\d+), column \d+\)", msg)
        line = int(m.group(1)) if m else None
        raise KlpccError(f"invalid TOML: {re.sub(r' *[(]at line .*[)]', '', msg)}",
                         patch=shown, line=line) from None

    def bad(message: str, needle: str | None = None) -> KlpccError:
        return KlpccError(message, patch=shown, line=_line_of(text, needle) if needle else None)

    unknown = set(doc) - {"releases"}
    if unknown:
        key = sorted(unknown)[0]
        raise bad(f"unknown key {key!r} (expected [releases.NAME] tables)", key)
    releases = doc.get("releases", {})
    if not isinstance(releases, dict):
        raise bad("'releases' must be a table of [releases.NAME] tables", "releases")
    tables: dict[int, dict[str, Any]] = {}
    for name, table in releases.items():
        try:
            index = series.index(int(name) if name.isascii() and name.isdigit() else name, "release")
        except KlpccError:
            raise bad(f"[releases.{name!r}] names no release of the series "
                      f"(releases: {', '.join(series.names)})", name) from None
        if not isinstance(table, dict):
            raise bad(f"releases.{name} must be a table", name)
        tables[index] = _check_table(name, table, bad)
        tables[index]["_key"] = name
    return Config(path, tables, text)


def _check_table(name: str, table: dict[str, Any], bad) -> dict[str, Any]:
    extra = set(table) - {"states", "callbacks", "shadow", "immediate"}
    if extra:
        key = sorted(extra)[0]
        raise bad(f"releases.{name}: unknown key {key!r} (expected states, callbacks, shadow, immediate)",
                  key)
    immediate = table.get("immediate", [])
    if not isinstance(immediate, list) or not all(
            isinstance(f, str) and re.fullmatch(r"[A-Za-z_]\w*", f) for f in immediate):
        raise bad(f"releases.{name}.immediate must be a list of function names", "immediate")
    states = table.get("states", [])
    if not isinstance(states, list) or not all(isinstance(s, dict) for s in states):
        raise bad(f"releases.{name}.states must be a list of {{ id = N, version = V }}", "states")
    for s in states:
        ok = all(isinstance(s.get(k), int) and not isinstance(s.get(k), bool) for k in ("id", "version"))
        if not ok or set(s) - {"id", "version"}:
            raise bad(f"releases.{name}.states: each state needs an integer id and version", "states")
    callbacks = table.get("callbacks", {})
    if isinstance(callbacks, list):
        if not all(isinstance(k, str) for k in callbacks):
            raise bad(f"releases.{name}.callbacks must list callback kinds ({', '.join(CALLBACK_KINDS)})",
                      "callbacks")
        callbacks = {k: "(klpcc.toml)" for k in callbacks}
    if not isinstance(callbacks, dict) or not all(
            k in CALLBACK_KINDS and isinstance(v, str) for k, v in callbacks.items()):
        raise bad(f"releases.{name}.callbacks must map {', '.join(CALLBACK_KINDS)} to function names",
                  "callbacks")
    shadow = table.get("shadow", [])
    if not isinstance(shadow, list) or not all(isinstance(s, dict) for s in shadow):
        raise bad(f"releases.{name}.shadow must be a list of tables", "shadow")
    for s in shadow:
        if not isinstance(s.get("id"), (int, str)) or isinstance(s.get("id"), bool):
            raise bad(f"releases.{name}.shadow: each shadow variable needs an id", "shadow")
        ops = s.get("ops", ["alloc", "get", "free"])
        if not isinstance(ops, list) or any(op not in _OPS for op in ops):
            raise bad(f"releases.{name}.shadow: ops must be a list of {', '.join(_OPS)}", "ops")
        for key in ("type", "size", "ctor", "dtor"):
            if key in s and not isinstance(s[key], str):
                raise bad(f"releases.{name}.shadow: {key} must be a string", key)
        unknown = set(s) - {"id", "ops", "type", "size", "ctor", "dtor"}
        if unknown:
            key = sorted(unknown)[0]
            raise bad(f"releases.{name}.shadow: unknown key {key!r}", key)
    return {"states": states, "callbacks": callbacks, "shadow": shadow, "immediate": immediate}
