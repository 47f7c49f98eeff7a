"""Hostile patches: real patches mutated the ways patches break in practice (a hunk
header damaged, a header line lost, a section repeated, garbage inserted, counts off,
names that are not names), checked against ``git apply`` on the same tree; a
``klpcc.toml`` mutated the same ways and with values of the wrong type, size or
meaning (``check_config``); git ranges as users type and mistype them
(``check_range``).

The invariant (``check``): klpcc accepts a patch only when every ``+``/``-`` line
reached the result, which is what ``git apply`` makes of it; otherwise it refuses with
one located error (a :class:`KlpccError`, exit 2 on the command line); never another
exception.  Used by ``tests/test_hostile.py`` (a bounded sample, in CI) and
``bench/bench_hostile.py`` (the full sweep, with counts)."""

from __future__ import annotations

import random
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from klpcc.errors import KlpccError
from klpcc.history import replay
from klpcc.series import Patch, Series
from klpcc.trees import DirectoryTree

from .helpers import write_tree

BASE = {
    "src/util.c": ("#include \"util.h\"\n\nint util_max(int a, int b)\n{\n\treturn a > b ? a : b;\n}\n\n"
                   "int util_min(int a, int b)\n{\n\treturn a < b ? a : b;\n}\n\n"
                   + "".join(f"static int helper{i}(int x)\n{{\n\treturn x * {i};\n}}\n\n"
                             for i in range(8))),
    "src/util.h": "#ifndef UTIL_H\n#define UTIL_H\nint util_max(int a, int b);\nint util_min(int a, int b);\n"
                  "#endif\n",
    "src/calc.c": ("#include \"util.h\"\n\nstruct acc {\n\tint total;\n\tint count;\n};\n\n"
                   "int calc(int x)\n{\n\tint y = util_max(x, 0);\n\n\ty += util_min(x, 10);\n"
                   "\treturn y;\n}\n"),
    "src/old.c": "int old_one(void)\n{\n\treturn 1;\n}\n",
    "README": "a small tree\n",
}


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


def _edits(files: dict[str, str]) -> list[dict[str, str | None]]:
    """Releases of the seed patches, as files they change (None deletes)."""
    util, calc = files["src/util.c"], files["src/calc.c"]
    return [
        {"src/util.c": util.replace("a > b ? a : b", "a >= b ? a : b").replace("x * 3", "x * 33")},
        {"src/util.c": util.replace("x * 1;", "x * 11;").replace("x * 6;", "x * 66;"),
         "src/calc.c": calc.replace("\treturn y;\n", "\ty -= 1;\n\treturn y;\n")},
        {"src/new.c": "int fresh(void)\n{\n\treturn 7;\n}\n", "src/old.c": None},
        {"src/calc.c": calc.replace("\tint count;\n", "\tint count;\n\tint max;\n") + "int extra(void)\n{\n"
         "\treturn 2;\n}"},  # no newline at the end
        {"src/util.h": files["src/util.h"].replace("#endif\n", "int util_clamp(int v);\n#endif\n"),
         "src/util.c": util + "int util_clamp(int v)\n{\n\treturn v < 0 ? 0 : v;\n}\n"},
    ]


@dataclass
class World:
    """A base tree and seed patches made by git from it."""

    base: Path
    seeds: list[bytes]


def make_world(root: Path) -> World:
    base = write_tree(root / "base", BASE)
    repo = root / "repo"
    shutil.copytree(base, repo)
    _git(repo, "init", "-q")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base")
    seeds = []
    for rel in _edits(dict(BASE)):
        for path, text in rel.items():
            if text is None:
                (repo / path).unlink()
            else:
                (repo / path).write_text(text)
        seeds.append(subprocess.run(["git", "-C", str(repo), "diff", "-M", "--no-color"], capture_output=True,
                                    check=True).stdout)
        _git(repo, "checkout", "-q", ".")
        _git(repo, "clean", "-qfd")
    # a mail, as git format-patch writes it, and a quilt patch of the first edit
    mail = (b"From 0123456789abcdef0123456789abcdef01234567 Mon Sep 17 00:00:00 2001\nFrom: A <a@b>\n"
            b"Subject: [PATCH] util: max prefers the first\n\nWhy it changes.\n---\n src/util.c | 2 +-\n\n"
            + seeds[0] + b"-- \n2.39.5\n\n")
    quilt = seeds[1].replace(b"diff --git a/src/util.c b/src/util.c\n",
                             b"Index: b/src/util.c\n" + b"=" * 67 + b"\n")
    return World(base, [*seeds, mail, quilt])


# --------------------------------------------------------------------------- mutations


def _lines(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True)


def _at(rng: random.Random, lines: list[bytes], pred: Callable[[bytes], bool]) -> int | None:
    idx = [i for i, ln in enumerate(lines) if pred(ln)]
    return rng.choice(idx) if idx else None


def _hunk_header(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    i = _at(rng, lines, lambda ln: ln.startswith(b"@@ ") and b" @@" in ln[3:])
    if i is None:
        return data
    head = lines[i]
    close = head.index(b" @@", 3)
    choices = [
        head[:close] + b"\n",  # the closing @@ lost
        head[:close] + b"@@" + head[close + 3:],  # its space lost
        head[:4] + b"\0" + head[4:],  # a NUL
        head[:close] + bytes([rng.randrange(33, 127)]) + head[close:],  # a stray byte in the counts
        head[:close + 3] + b"x" + head[close + 3:],  # a stray byte after it
        head.replace(b"@@ -", b"@@ -" + b"9" * rng.choice((12, 5000)), 1),  # a huge start
        head.replace(b"@@ -", b"@@ -1000000000", 1) if b"@@ -1," in head else head,  # far away
    ]
    nums = head[:close].split(b" ")
    for k in range(1, min(len(nums), 3)):
        if nums[k].count(b",") == 1 and nums[k].split(b",")[1].isdigit():
            start, count = nums[k].split(b",")
            alt = max(int(count) + rng.choice((-2, -1, 1, 2)), 0)
            choices.append(head.replace(nums[k], start + b"," + str(alt).encode(), 1))  # a count off
    lines[i] = rng.choice(choices)
    return b"".join(lines)


def _delete_line(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    kind = rng.choice((b"+++ ", b"--- ", b"@@ ", b"diff --git", b"", b" ", b"+", b"-"))
    i = _at(rng, lines, lambda ln: ln.startswith(kind))
    if i is not None:
        del lines[i]
    return b"".join(lines)


def _garbage(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    junk = rng.choice((b"garbage\n", b"\n", b"x" * rng.choice((10, 1 << 20)) + b"\n", b"@@\n", b"+++\n",
                       b"\\ No newline at end of file\n", b"Only in a: x.c\n", b"\xff\xfe\n"))
    lines.insert(rng.randrange(len(lines) + 1), junk)
    return b"".join(lines)


def _repeat_section(rng: random.Random, data: bytes) -> bytes:
    text = data
    starts = [i for i in range(len(text)) if text.startswith(b"diff --git ", i)]
    if not starts:
        return data + data
    i = rng.choice(starts)
    end = next((s for s in starts if s > i), len(text))
    section = text[i:end]
    if b"\n-- \n" in section:
        section = section[:section.index(b"\n-- \n") + 1]
    return text[:end] + section + text[end:]


def _swap_or_duplicate(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    if len(lines) < 2:
        return data
    i = rng.randrange(len(lines) - 1)
    if rng.random() < 0.5:
        lines[i], lines[i + 1] = lines[i + 1], lines[i]
    else:
        lines.insert(i, lines[i])
    return b"".join(lines)


def _byte(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return data
    i = rng.randrange(len(data))
    return data[:i] + bytes([rng.randrange(256)]) + data[i + 1:]


def _truncate(rng: random.Random, data: bytes) -> bytes:
    return data[:rng.randrange(len(data) + 1)]


def _names(rng: random.Random, data: bytes) -> bytes:
    """A file name replaced, the same way in every place it stands."""
    name = rng.choice((b"src/util.c", b"src/calc.c", b"src/new.c"))
    other = rng.choice((b'"src/ut\\nil.c"', b'"src/ut\\til.c"', b"src/ut\til.c", b"src/\xe9t\xe9.c",
                        b"/etc/passwd", b"../outside.c", b"src/" + b"x" * 300 + b".c", b"src/u\0til.c",
                        b"src/util.c/inner.c", b"src/", b"src/ util.c"))
    if other.startswith(b'"'):
        return data.replace(b"a/" + name, b'"a/' + other[1:]).replace(b"b/" + name, b'"b/' + other[1:])
    return data.replace(b"a/" + name, b"a/" + other).replace(b"b/" + name, b"b/" + other)


def _modes(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    i = _at(rng, lines, lambda ln: ln.startswith(b"diff --git"))
    if i is None:
        return data
    extra = rng.choice((b"old mode 100644\nnew mode 100755\n", b"old mode 100644\nnew mode 120000\n",
                        b"new file mode 160000\n", b"similarity index 100%\n", b"index zzz..yyy\n"))
    lines.insert(i + 1, extra)
    return b"".join(lines)


def _empty_hunks(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    i = _at(rng, lines, lambda ln: ln[:1] in (b"+", b"-") and not ln.startswith((b"+++", b"---")))
    if i is None:
        return data
    lines[i] = b" " + lines[i][1:] if lines[i][:1] == b"-" else b""
    return b"".join(lines)


MUTATIONS: dict[str, Callable[[random.Random, bytes], bytes]] = {
    "hunk-header": _hunk_header, "delete-line": _delete_line, "garbage": _garbage,
    "repeat-section": _repeat_section, "swap-or-duplicate": _swap_or_duplicate, "byte": _byte,
    "truncate": _truncate, "names": _names, "modes": _modes, "context-only": _empty_hunks,
}


def mutate(rng: random.Random, seed: bytes) -> tuple[str, bytes]:
    """One to three mutations of ``seed``; the name of the first."""
    first = rng.choice(sorted(MUTATIONS))
    data = MUTATIONS[first](rng, seed)
    for _ in range(rng.choice((0, 0, 0, 1, 2))):
        data = MUTATIONS[rng.choice(sorted(MUTATIONS))](rng, data)
    return first, data


# --------------------------------------------------------------------------- the check


@dataclass
class Outcome:
    klpcc: str  # "accepted" or "refused"
    git: str  # "applied" or "rejected"
    message: str = ""


class Broken(AssertionError):
    """The invariant does not hold for a patch."""


def _git_apply(base: Path, data: bytes, work: Path) -> dict[str, bytes] | None:
    """The tree ``git apply`` makes of ``base`` and the patch (None: rejected)."""
    tree = work / "git"
    shutil.copytree(base, tree)
    subprocess.run(["git", "init", "-q", str(tree)], check=True)
    (work / "p.patch").write_bytes(data)
    proc = subprocess.run(["git", "-C", str(tree), "apply", "--unidiff-zero", str(work / "p.patch")],
                          capture_output=True, check=False)
    if proc.returncode != 0:
        return None
    return {p.relative_to(tree).as_posix(): p.read_bytes() for p in tree.rglob("*")
            if p.is_file() and ".git" not in p.relative_to(tree).parts}


def check(world: World, data: bytes, name: str = "0001-hostile.patch") -> Outcome:
    """Apply ``data`` to the world's base with klpcc and with git; raise :class:`Broken`
    when klpcc accepts something git would make otherwise, or fails in any way but a
    located :class:`KlpccError`."""
    with tempfile.TemporaryDirectory(prefix="klpcc-hostile-") as t:
        work = Path(t)
        series = Series((Patch(name[:-6], name, data, 1),), name)
        try:
            rep = replay(series, DirectoryTree(str(world.base)), keep=range(2))
        except KlpccError as exc:
            text = str(exc)
            if "\n" in text or len(text) > 700:
                raise Broken(f"the error is not one bounded line: {text[:200]!r}") from None
            if not exc.patch:
                raise Broken(f"the error names no patch: {text[:200]!r}") from None
            applied = _git_apply(world.base, data, work) is not None
            return Outcome("refused", "applied" if applied else "rejected", text)
        except Exception as exc:  # noqa: BLE001 (every other exception is the bug looked for)
            raise Broken(f"{type(exc).__name__}: {exc}") from exc
        ours = {}
        for path in rep.snapshots.paths():
            new = rep.snapshots.read(path, 1)
            if new is not None:
                ours[path] = new
        theirs = _git_apply(world.base, data, work)
        if theirs is None:
            if _changes_nothing(rep):
                return Outcome("accepted", "rejected", "a patch that changes nothing")
            raise Broken("klpcc accepted a patch git apply rejects")
        for path, new in ours.items():
            if theirs.get(path) != new:
                raise Broken(f"{path}: klpcc's result differs from git apply's")
        for path in set(theirs) - set(ours):
            before = (world.base / path).read_bytes() if (world.base / path).is_file() else None
            if before != theirs[path]:
                raise Broken(f"{path}: git apply changed it and klpcc did not")
        return Outcome("accepted", "applied")


def _changes_nothing(rep) -> bool:
    return all(rep.snapshots.read(p, 1) == rep.snapshots.read(p, 0) for p in rep.snapshots.paths())


# --------------------------------------------------------------------------- klpcc.toml and git ranges

# what an author keeps outside the diff, for the one release of the series ``check_config`` reads
TOML = """[releases."0001-release-1"]
states = [{ id = 1, version = 1 }]
callbacks = { pre_patch = "util_max", post_unpatch = "util_min" }
shadow = [{ id = 3, type = "struct acc", ops = ["alloc", "get", "free"], dtor = "util_min" }]
immediate = ["util_max"]

[releases.1]
states = [{ id = 2, version = 1 }]
"""
_VALUES = ('"x"', "-1", "0", "1e400", "99999999999999999999999", "true", "[]", "{}", "[[1]]", '"\\u0000"',
           '"' + "x" * 5000 + '"', "nan", "inf", '["", 1]', "{ id = [] }", '"0001-release-1"', "'''a\nb'''")
_NAMES = ('"0001-release-1"', "1", "2", "0", "-1", '"nosuch"', '""', '"1 "', "release", '"\\n"', "01")


def _toml_value(rng: random.Random, data: bytes) -> bytes:
    """A value replaced by one of another type, size or meaning."""
    spots = [m for m in re.finditer(rb"= *([^,}\]\n]+)", data)]
    if not spots:
        return data
    m = rng.choice(spots)
    return data[:m.start(1)] + rng.choice(_VALUES).encode() + data[m.end(1):]


def _toml_key(rng: random.Random, data: bytes) -> bytes:
    """A key renamed, or a release's name replaced."""
    if rng.random() < 0.5:
        key = rng.choice((b"states", b"callbacks", b"shadow", b"immediate", b"id", b"version", b"ops",
                          b"dtor", b"type", b"releases"))
        return data.replace(key, rng.choice((b"state", b"Callbacks", b"x", b"ids", b"releases", b"id")), 1)
    return data.replace(b'"0001-release-1"', rng.choice(_NAMES).encode(), 1)


TOML_MUTATIONS: dict[str, Callable[[random.Random, bytes], bytes]] = {
    "toml-value": _toml_value, "toml-key": _toml_key, "delete-line": _delete_line, "garbage": _garbage,
    "swap-or-duplicate": _swap_or_duplicate, "byte": _byte, "truncate": _truncate,
}


def mutate_toml(rng: random.Random) -> tuple[str, bytes]:
    """One to three mutations of :data:`TOML`; the name of the first."""
    first = rng.choice(sorted(TOML_MUTATIONS))
    data = TOML_MUTATIONS[first](rng, TOML.encode())
    for _ in range(rng.choice((0, 0, 1, 2))):
        data = TOML_MUTATIONS[rng.choice(sorted(TOML_MUTATIONS))](rng, data)
    return first, data


def _located(exc: KlpccError, *names: str) -> str:
    text = str(exc)
    if "\n" in text or len(text) > 700:
        raise Broken(f"the error is not one bounded line: {text[:200]!r}")
    if not any(n and n in text for n in names):
        raise Broken(f"the error names neither {' nor '.join(names)}: {text[:200]!r}")
    return text


def check_config(world: World, data: bytes) -> Outcome:
    """``klpcc compile`` of the world's first seed with ``data`` as its klpcc.toml:
    a bundle, or one located error naming the file and nothing written; never another
    exception."""
    from klpcc.api import AnalyzeOptions, compile_bundle

    with tempfile.TemporaryDirectory(prefix="klpcc-hostile-") as t:
        work = Path(t)
        (work / "0001-release-1.patch").write_bytes(world.seeds[0])
        (work / "series").write_text("0001-release-1.patch\n")
        (work / "klpcc.toml").write_bytes(data)
        out = work / "bundle"
        try:
            compile_bundle(AnalyzeOptions(series=(str(work / "series"),), source=str(world.base)), out)
        except KlpccError as exc:
            text = _located(exc, "klpcc.toml")
            if out.exists() or any(p.name.startswith(".bundle") for p in work.iterdir()):
                raise Broken(f"refused ({text[:80]}) but left output behind") from None
            return Outcome("refused", "-", text)
        except Exception as exc:  # noqa: BLE001 (every other exception is the bug looked for)
            raise Broken(f"{type(exc).__name__}: {exc}") from exc
        if not (out / "manifest.json").is_file():
            raise Broken("accepted, but wrote no manifest")
        return Outcome("accepted", "-")


def make_repo(root: Path) -> Path:
    """A git history over the world's base: the seed edits as commits, a tag, a side
    branch merged back (a merge commit on the first-parent line)."""
    repo = root / "history"
    write_tree(repo, BASE)
    git = ("-c", "user.name=t", "-c", "user.email=t@t")
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, *git, "add", "-A")
    _git(repo, *git, "commit", "-qm", "base")
    _git(repo, "tag", "v0")
    files = dict(BASE)
    for i, rel in enumerate(_edits(dict(BASE)), 1):
        for path, text in rel.items():
            if text is None:
                (repo / path).unlink()
                files.pop(path, None)
            else:
                (repo / path).write_text(text)
                files[path] = text
        _git(repo, *git, "add", "-A")
        _git(repo, *git, "commit", "-qm", f"release {i}")
        if i == 2:
            _git(repo, "checkout", "-qb", "side")
            (repo / "src" / "side.c").write_text("int side(void)\n{\n\treturn 3;\n}\n")
            _git(repo, *git, "add", "-A")
            _git(repo, *git, "commit", "-qm", "side")
            _git(repo, "checkout", "-q", "main")
            _git(repo, *git, "merge", "-q", "--no-ff", "-m", "merge side", "side")
    return repo


def git_range(rng: random.Random, repo: Path) -> str:
    """A range as users type them, and as they mistype them."""
    head = _git(repo, "rev-parse", "HEAD").strip()
    refs = ["HEAD", "HEAD~1", "HEAD~3", "HEAD~99", "HEAD^2", "main", "side", "v0", "nosuch", "", head,
            head[:7], head[:3], _git(repo, "rev-parse", "HEAD^{tree}").strip(), "HEAD:src", "HEAD@{0}",
            "--all", "-p", "--output=/tmp/x", "HEAD\n", " HEAD", "caf\u00e9", "a" * 300, "HEAD^{/release 2}"]
    if rng.random() < 0.4:  # ranges that name commits: the mistakes are elsewhere
        good = ["v0", "HEAD~1", "HEAD~2", "HEAD~3", "HEAD~4", "side", head[:7]]
        a, b = rng.choice(good), rng.choice((*good, "HEAD", "main"))
        return f"{a}..{b}"
    a, b = rng.choice(refs), rng.choice(refs)
    return rng.choice((f"{a}..{b}", f"{a}..{b}", f"{a}...{b}", a, f"{a}..", f"..{b}", f"{a}..{b}..{a}",
                       f"{a} {b}", f"^{a} {b}"))


def check_range(repo: Path, spec: str) -> Outcome:
    """``klpcc analyze --git REPO SPEC``: an analysis of the commits the range names, or
    one located error; never another exception."""
    from klpcc.api import AnalyzeOptions, analyze

    try:
        a = analyze(AnalyzeOptions(git=(str(repo), spec)))
    except KlpccError as exc:
        return Outcome("refused", "-", _located(exc, str(repo), "range", "release", "--git", "commit"))
    except Exception as exc:  # noqa: BLE001 (every other exception is the bug looked for)
        raise Broken(f"{type(exc).__name__}: {exc}") from exc
    if not a.replay.releases:
        raise Broken("accepted a range with no release")
    return Outcome("accepted", "-")
