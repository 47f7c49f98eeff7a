"""Stage 2: parse the unified diffs of a patch and apply them, validated.

Patches may be plain unified diffs, ``git diff`` output or ``git format-patch``
mails; new, deleted, renamed and copied files, ``-p0``/``-p1`` paths and
``\\ No newline at end of file`` are understood.  A hunk applies where it says, or
at an offset when the lines around it moved; dropping context lines (fuzz) happens
only when asked for.  Every problem is a :class:`KlpccError` naming the patch, the
line of the patch and the file.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from unidiff import PatchSet
from unidiff.errors import UnidiffParseError

from .c import LineEdit
from .errors import KlpccError, quoted
from .names import unquote
from .series import Patch

DEV_NULL = "/dev/null"


@dataclass(frozen=True, slots=True)
class Hunk:
    old_start: int  # 1-based, as in the header
    old_count: int
    new_start: int
    new_count: int
    lines: tuple[tuple[str, bytes, int], ...]  # (" "|"-"|"+", text with its newline, patch line)
    patch_line: int  # line of the @@ header in the patch

    def old_lines(self) -> list[bytes]:
        return [t for tag, t, _ in self.lines if tag != "+"]

    def new_lines(self) -> list[bytes]:
        return [t for tag, t, _ in self.lines if tag != "-"]


@dataclass(frozen=True, slots=True)
class FileChange:
    kind: str  # "modify", "add", "delete", "rename", "copy"
    old_path: str | None
    new_path: str | None
    hunks: tuple[Hunk, ...]
    patch_line: int

    @property
    def path(self) -> str:
        return self.new_path or self.old_path or "?"


# --------------------------------------------------------------------------- parse

_GIT_HEADER = re.compile(r"^diff --git ")


def _split_lines(data: bytes) -> list[str]:
    text = data.decode("utf-8", "surrogateescape")
    parts = text.split("\n")
    lines = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def _first_diff_line(lines: Sequence[str], patch: Patch) -> int:
    """Index of the first line of the first file diff (mail headers, commit message
    and diffstat before it are not part of the diff; a hunk header there is a file
    diff whose headers are missing)."""
    for i, line in enumerate(lines):
        if line.startswith("diff "):
            return i
        if line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            return i
        if line.startswith("@@ -"):
            raise KlpccError("a hunk without a file header (its '---'/'+++' lines are missing)",
                             patch=patch.path, line=i + 1)
    return len(lines)




def _file_before(body: Sequence[str], upto: int) -> str | None:
    """The file named by the last diff header before line ``upto`` of ``body``."""
    for line in reversed(body[:upto]):
        if line.startswith("+++ ") or line.startswith("--- "):
            name = line[4:].split("\t")[0].strip()
            if name != DEV_NULL:
                return name[2:] if name.startswith(("a/", "b/")) else name
        if line.startswith("diff --git "):
            return line.split()[-1][2:]
    return None


class _Counted:
    """Feeds lines to unidiff and remembers how far it read, for error messages."""

    def __init__(self, lines: Sequence[str]):
        self.lines = lines
        self.read = 0

    def __iter__(self) -> Iterator[str]:
        for line in self.lines:
            self.read += 1
            yield line


def _unquote(name: str) -> str:
    return unquote(name.strip())


def _strip(name: str, n: int) -> str:
    parts = name.split("/")
    return "/".join(parts[n:])


_PATH_MAX = 4095  # bytes, as Linux counts them
_NAME_MAX = 255


def _check_path(path: str, patch: Patch, line: int) -> str:
    if not path:
        raise KlpccError("a diff names an empty path", patch=patch.path, line=line)
    # any other byte is a name's own (a tab, a newline, bytes that are not UTF-8): carried
    # exactly, and written back the way git quotes it (JSON, diffs, C's #line)
    if "\0" in path:
        raise KlpccError(f"the path {path!r} holds a NUL byte, which no file name can",
                         patch=patch.path, line=line)
    raw = path.encode("utf-8", "surrogateescape")
    if len(raw) > _PATH_MAX or any(len(part) > _NAME_MAX for part in raw.split(b"/")):
        raise KlpccError(f"the path {path[:60]!r}... is longer than a file system allows "
                         f"({len(raw)} bytes; at most {_PATH_MAX}, {_NAME_MAX} per name)",
                         patch=patch.path, line=line)
    if path.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", path):
        raise KlpccError(f"absolute path {path!r} is not allowed", patch=patch.path, line=line)
    if ".." in path.replace("\\", "/").split("/"):
        raise KlpccError(f"path {path!r} leads outside the source tree ('..')",
                         patch=patch.path, line=line)
    # a backslash is part of a name on the systems live patches run on
    return "/".join(p for p in path.split("/") if p not in ("", "."))


# a hunk header as git writes it: counts of at most nine digits, the closing "@@",
# then nothing or a space and the function context
_HUNK_STRICT = re.compile(r"^@@ -(\d{1,9})(?:,(\d{1,9}))? \+(\d{1,9})(?:,(\d{1,9}))? @@(?:[ \t].*)?\r?\n?$",
                          re.S)
# extended header lines of a git diff (git's own list)
_GIT_EXTENDED = re.compile(
    r"^(old mode [0-7]{6}|new mode [0-7]{6}|deleted file mode [0-7]{6}|new file mode [0-7]{6}|"
    r"copy from .+|copy to .+|rename from .+|rename to .+|rename old .+|rename new .+|"
    r"similarity index \d{1,3}%|dissimilarity index \d{1,3}%|"
    r"index [0-9a-f]+\.\.[0-9a-f]+(?: [0-7]{6})?)\r?\n?$",
    re.S)
_MODE = re.compile(r"^(?:old mode|new mode|deleted file mode|new file mode) (\d{6})")
_SIGNATURE = ("-- \n", "-- \r\n")
_SHOWN = 60  # characters of an offending line a message quotes


def _quote(line: str) -> str:
    return quoted(line, _SHOWN)


@dataclass
class _Section:
    """One file's part of a patch as the strict reader accounts for it."""

    line: int  # 1-based patch line of its first header line
    header: str  # its first header line
    hunks: list[tuple[int, int, int]]  # (patch line, "-" lines, "+" lines)
    modes: list[str]  # modes its git header names
    old_name: str | None = None  # the '---' name as written
    new_name: str | None = None  # the '+++' name as written


_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')


def _git_names(header: str) -> tuple[str, str] | None:
    """The two names of a ``diff --git`` line, where they can be told apart (quoted, or
    the same name twice); None where spaces make it ambiguous (a rename's names)."""
    rest = header[len("diff --git "):].rstrip("\r\n")
    first = _QUOTED.match(rest)
    if first:
        second = rest[first.end() + 1:]
        return _unquote(first.group()), _unquote(second)
    if rest.endswith('"'):
        at = rest.rfind(' "')
        return (rest[:at], _unquote(rest[at + 1:])) if at >= 0 else None
    mid = len(rest) // 2
    old, new = rest[:mid], rest[mid + 1:]
    if len(rest) % 2 == 1 and rest[mid] == " " and old[2:] == new[2:]:
        return old, new
    return None


class _Strict:
    """Reads a patch's diff as strictly as ``git apply`` does: every line is a header,
    a hunk line, known metadata, a blank separator, a mail signature, or text between
    file diffs (noted); a hunk holds exactly the lines its header counts.  Anything
    else is an error naming the patch line, never a line left out."""

    def __init__(self, lines: Sequence[str], start: int, patch: Patch):
        self.lines = lines
        self.start = start  # index in the whole patch of lines[0]
        self.patch = patch
        self.sections: list[_Section] = []
        self.notes: list[str] = []

    def fail(self, message: str, i: int) -> KlpccError:
        return KlpccError(message, patch=self.patch.path, line=self.start + i + 1,
                          file=_file_before(self.lines, i))

    def read(self) -> None:
        lines, n = self.lines, len(self.lines)
        i = 0
        text_from: int | None = None
        while i < n:
            line = lines[i]
            header = (line.startswith(("diff ", "Index: ")) or
                      (line.startswith("--- ") and i + 1 < n and lines[i + 1].startswith("+++ ")))
            if (header or line in _SIGNATURE) and text_from is not None:
                self._text(text_from, i)
                text_from = None
            if line.startswith("diff --git "):
                i = self._git(i)
            elif line.startswith(("diff ", "Index: ")):
                i = self._plain(i)
            elif line.startswith("--- "):
                i = self._files(i, _Section(self.start + i + 1, line, [], []))
            elif line in _SIGNATURE:
                self._signature(i)
                return
            elif line.startswith("@@"):
                raise self.fail("a hunk without a file header (its '---'/'+++' lines are missing)", i)
            elif line.startswith("+++ "):
                raise self.fail("a '+++' line without the '---' line before it", i)
            elif line.startswith(("+", "-", " ", "\\")):
                raise self.fail(f"a diff line outside any hunk: {_quote(line)} (a hunk header is missing "
                                "or counts too few lines)", i)
            elif not line.strip():
                i += 1
            elif line.startswith("Binary files ") or line.startswith("GIT binary patch"):
                raise self.fail("binary patches are not supported", i)
            else:
                if line.startswith("Only in "):
                    self.notes.append(f"{self.patch.path}:{self.start + i + 1}: {line.strip()}: the file is "
                                      "not in the patch (diff -r without -N leaves new files out)")
                if text_from is None:
                    text_from = i
                i += 1
        if text_from is not None:
            if self.sections and not lines[n - 1].endswith("\n"):
                # the last line of text after the file diffs ends mid-line: the patch was
                # cut there (a hunk header's first '@', say), not written so
                raise self.fail(f"the patch ends in the middle of a line, {_quote(lines[n - 1])} "
                                "(cut short?)", n - 1)
            self._text(text_from, n)

    def _text(self, lo: int, hi: int) -> None:
        """Text between file diffs, which ``git apply`` skips too: said, not read."""
        if not self.sections:
            return
        span = f"{self.start + lo + 1}" + (f"-{self.start + hi}" if hi - lo > 1 else "")
        self.notes.append(f"{self.patch.path}:{span}: {hi - lo} line(s) of text between file diffs "
                          f"ignored ({_quote(self.lines[lo])})")

    def _signature(self, i: int) -> None:
        for j in range(i + 1, len(self.lines)):
            line = self.lines[j]
            if line.startswith(("diff ", "--- ", "+++ ", "@@")):
                raise self.fail("a diff after the mail signature ('-- ')", j)

    def _git(self, i: int) -> int:
        sec = _Section(self.start + i + 1, self.lines[i], [], [])
        first = i
        i += 1
        n = len(self.lines)
        while i < n:
            line = self.lines[i]
            if _GIT_EXTENDED.match(line):
                m = _MODE.match(line)
                if m:
                    sec.modes.append(m.group(1))
                i += 1
                continue
            if line.startswith(("Binary files ", "GIT binary patch")):
                raise self.fail("binary patches are not supported", i)
            break
        if i < n and self.lines[i].startswith("--- "):
            return self._files(i, sec)
        if i < n and self.lines[i].startswith(("@@", "+++ ")):
            raise self.fail("a git diff whose '---' line is missing", i)
        if i < n and self.lines[i].strip() and not self.lines[i].startswith(("diff ", "Index: ")) \
                and self.lines[i] not in _SIGNATURE:
            raise self.fail(f"an unknown line in a git diff header: {_quote(self.lines[i])}", i)
        told = self.lines[first + 1:i]
        if not any(ln.startswith(("old mode", "new mode", "new file mode", "deleted file mode", "rename ",
                                  "copy ")) for ln in told):
            raise self.fail("a git diff header with no change under it: no '---' line and no mode, rename or "
                            "copy line (cut short?)", first)
        self.sections.append(sec)
        return i

    def _plain(self, i: int) -> int:
        """``Index: path`` (quilt, svn) with its '=====' line, or a ``diff -u a b``
        command line: the '---' line follows (else they were text)."""
        first = i
        i += 1
        if self.lines[first].startswith("Index: ") and i < len(self.lines) and \
                self.lines[i].startswith("===="):
            i += 1
        if i < len(self.lines) and self.lines[i].startswith(("Binary files ", "GIT binary patch")):
            raise self.fail("binary patches are not supported", i)
        if i < len(self.lines) and self.lines[i].startswith("--- "):
            return self._files(i, _Section(self.start + first + 1, self.lines[first], [], []))
        # not followed by a file diff: a line of text, as git takes it (nothing is lost:
        # a '---' line further down is read where it stands) -- unless nothing but
        # another file's header or the end follows: a file diff cut short after its header
        rest = next((ln for ln in self.lines[i:] if ln.strip()), None)
        if rest is None or rest.startswith(("diff ", "Index: ")):
            raise self.fail(f"{_quote(self.lines[first])} has no file diff under it: no '---' line "
                            "follows (cut short?)", first)
        self._text(first, i)
        return i

    def _files(self, i: int, sec: _Section) -> int:
        """The '---' and '+++' lines at ``i``, then the section's hunks."""
        lines, n = self.lines, len(self.lines)
        if i + 1 >= n or not lines[i + 1].startswith("+++ "):
            raise self.fail("a '---' line without the '+++' line after it", min(i + 1, n - 1))
        sec.old_name, sec.new_name = lines[i][4:], lines[i + 1][4:]
        names = _git_names(sec.header) if sec.header.startswith("diff --git ") else None
        if names is not None:
            for k, (named, shown) in enumerate(((sec.old_name, names[0]), (sec.new_name, names[1]))):
                name = _unquote(named.rstrip("\r\n").split("\t")[0])
                if name != DEV_NULL and name != shown:
                    raise self.fail(f"the '{'---' if k == 0 else '+++'}' line names {name!r}, the git header "
                                    f"{shown!r}", i + k)
        i += 2
        while i < n and lines[i].startswith("@@"):
            i = self._hunk(i, sec)
        if not sec.hunks:
            if i < n and lines[i].startswith(("+", "-", " ", "\\")) and lines[i] not in _SIGNATURE \
                    and not lines[i].startswith("--- "):
                raise self.fail(f"a diff line outside any hunk: {_quote(lines[i])} (its hunk header is "
                                "missing)", i)
            raise self.fail("a file diff whose '---'/'+++' lines have no hunk after them (cut short?)",
                            min(i, n - 1))
        self.sections.append(sec)
        return i

    def _marker(self, i: int) -> None:
        """A line starting with a backslash is the no-newline marker, exactly: any other
        would be read differently by different tools (git takes any, unidiff only this)."""
        if self.lines[i].rstrip("\r\n") != "\\ No newline at end of file":
            raise self.fail(f"an unknown '\\' line {_quote(self.lines[i])} (expected '\\ No newline at end "
                            "of file')", i)

    def _hunk(self, i: int, sec: _Section) -> int:
        lines, n = self.lines, len(self.lines)
        m = _HUNK_STRICT.match(lines[i])
        if m is None:
            raise self.fail(f"malformed hunk header {_quote(lines[i])} (expected '@@ -OLD[,N] +NEW[,N] @@')",
                            i)
        old = int(m.group(2)) if m.group(2) is not None else 1
        new = int(m.group(4)) if m.group(4) is not None else 1
        if m.group(1) == "0" and old:
            raise self.fail("malformed hunk header: line 0 with a non-empty old side", i)
        head = i
        minus = plus = 0
        want_old, want_new = old, new
        i += 1
        while i < n and (old > 0 or new > 0):
            line = lines[i]
            tag = line[:1]
            if tag == "-":
                old -= 1
                minus += 1
            elif tag == "+":
                new -= 1
                plus += 1
            elif tag == " " or line in ("\n", "\r\n"):
                old -= 1
                new -= 1
            elif tag == "\\":
                self._marker(i)
                i += 1
                continue
            else:
                break
            if old < 0 or new < 0:
                side = "'-'" if old < 0 else "'+'"
                raise self.fail(f"the hunk has more {side} lines than its header "
                                f"'-{m.group(1)},{want_old} +{m.group(3)},{want_new}' says", i)
            i += 1
        if old > 0 or new > 0:
            where = f"before {_quote(lines[i])}" if i < n else "at the end of the patch"
            raise self.fail(f"the hunk ends {where}: its header says {want_old} old and {want_new} new "
                            f"lines, {old} old and {new} new are missing", min(i, n - 1))
        while i < n and lines[i].startswith("\\"):
            self._marker(i)
            i += 1
        if i < n and lines[i][:1] in ("+", "-", " ") and not lines[i].startswith(("--- ", "+++ ")) \
                and lines[i] not in _SIGNATURE:
            raise self.fail("the hunk has more lines than its header says", i)
        if not minus and not plus:
            raise self.fail("a hunk that changes no line (git apply refuses it too)", head)
        last = lines[i - 1]
        if not last.endswith("\n") and last[:1] in ("+", "-", " "):
            raise self.fail("the patch ends in the middle of a hunk line (cut short?)", i - 1)
        sec.hunks.append((self.start + head + 1, minus, plus))
        return i


def parse_patch(patch: Patch, exists: Callable[[str], bool] | None = None,
                notes: list[str] | None = None) -> list[FileChange]:
    """Parse one patch into file changes.  ``exists`` tells whether a path exists in
    the tree the patch applies to (used to pick -p0 or -p1 when not told).  An empty
    patch (nothing but whitespace) is an empty release: no changes.  What the patch
    holds that no change carries (text between file diffs, a mode change, a hunk
    that changes nothing) is said in ``notes``."""
    if not patch.data.strip():
        return []
    lines = _split_lines(patch.data)
    start = _first_diff_line(lines, patch)
    body = lines[start:]
    if not body:
        if re.search(rb"^GIT binary patch|^Binary files ", patch.data, re.M):
            raise KlpccError("binary patches are not supported", patch=patch.path)
        raise KlpccError("the patch holds no diff", patch=patch.path)
    strict = _Strict(body, start, patch)
    strict.read()
    feed = _Counted(body)
    try:
        parsed = PatchSet(feed)
    except (UnidiffParseError, UnicodeError, ValueError) as exc:
        raise KlpccError(f"malformed diff: {exc}".rstrip(), patch=patch.path,
                         line=start + feed.read, file=_file_before(body, feed.read)) from None
    for pf in parsed:
        if pf.is_binary_file:
            raise KlpccError(f"binary patch for {pf.path}: binary files are not supported",
                             patch=patch.path, line=start + (pf.diff_line_no or 1))
    if not parsed:
        raise KlpccError("the patch holds no diff", patch=patch.path)
    _agree(strict, parsed, patch)
    strip = patch.strip
    if strip is None:
        # one strip level for the whole patch, from the first file that tells
        guesses = [_guess_strip(*_sides(pf), _is_git(pf), exists) for pf in parsed]
        told = next((g for g, sure in guesses if sure and g is not None), None)
        if told is None and any(g is None for g, _ in guesses):
            k = next(i for i, (g, _) in enumerate(guesses) if g is None)
            name = next(n for n in _sides(parsed[k]) if n is not None)
            raise KlpccError(f"both {name} (-p0) and {_strip(name, 1)} (-p1) exist in the base: say which "
                             "the patch means with -p0 or -p1 after its name in a quilt series file "
                             "(a patch given alone: list it in a file named 'series' beside it, "
                             "'NAME -p1', and give that file)",
                             patch=patch.path, line=start + (parsed[k].diff_line_no or 1))
        strip = told if told is not None else guesses[0][0] or 0
    changes = [_file_change(pf, patch, start + (pf.diff_line_no or 1), start, strip) for pf in parsed]
    _once_each(changes, patch)
    said = list(strict.notes)
    for change, sec in zip(changes, strict.sections):
        _modes(change, sec, patch, said)
    if notes is not None:
        notes.extend(said)
    return changes


def _agree(strict: _Strict, parsed, patch: Patch) -> None:
    """Every hunk line the strict reader counted reached the parsed changes: no line
    of the patch is lost between reading and applying."""
    mine = [[(m, p) for _, m, p in sec.hunks] for sec in strict.sections]
    theirs = [[(sum(1 for ln in h if ln.line_type == "-"), sum(1 for ln in h if ln.line_type == "+"))
               for h in pf] for pf in parsed]
    if mine != theirs:
        at = next((i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b), min(len(mine), len(theirs)))
        line = strict.sections[at].line if at < len(strict.sections) else None
        raise KlpccError("the patch reads two ways (the diff parser and the strict reader count different "
                         "lines): refusing it rather than losing a line", patch=patch.path, line=line)


def _once_each(changes: list[FileChange], patch: Patch) -> None:
    """A file diff repeated in one patch would be applied twice (git applies the
    sections of one file one after the other, and so does klpcc): refused.  Two
    different sections for one file are two edits, applied in order."""
    seen: dict[tuple, int] = {}
    for c in changes:
        hunks = tuple((h.old_start, h.new_start, tuple((t, b) for t, b, _ in h.lines)) for h in c.hunks)
        key = (c.kind, c.old_path, c.new_path, hunks)
        if key in seen:
            raise KlpccError(f"the patch repeats its diff of {c.path} (the file diffs at lines {seen[key]} "
                             f"and {c.patch_line} are the same): it would be applied twice",
                             patch=patch.path, line=c.patch_line, file=c.path)
        seen[key] = c.patch_line


def _modes(change: FileChange, sec: _Section, patch: Patch, notes: list[str]) -> None:
    """File modes: a symbolic link or a submodule is refused (no code to patch); a mode
    change of a file is said (a live patch carries code, not modes)."""
    for mode in sec.modes:
        if mode.startswith("12"):
            raise KlpccError("a symbolic link: a live patch carries C code, not links", patch=patch.path,
                             line=sec.line, file=change.path)
        if mode.startswith("16"):
            raise KlpccError("a submodule: a live patch carries C code, not submodules", patch=patch.path,
                             line=sec.line, file=change.path)
    if change.kind in ("modify", "rename", "copy") and len(set(sec.modes)) > 1:
        notes.append(f"{patch.path}:{sec.line}: {change.path}: mode change {' -> '.join(sec.modes)} not "
                     "carried (a live patch changes code, not file modes)")
    elif change.kind == "modify" and not change.hunks and not sec.modes:
        notes.append(f"{patch.path}:{sec.line}: {change.path}: a file diff that changes nothing")


def _is_git(pf) -> bool:
    return any(_GIT_HEADER.match(str(x)) for x in (pf.patch_info or []))


def _sides(pf) -> tuple[str | None, str | None]:
    """Old and new path of a file diff as written (None for /dev/null)."""
    src = _unquote(pf.source_file or "")
    dst = _unquote(pf.target_file or "")
    old = None if src == DEV_NULL else src
    new = None if dst == DEV_NULL else dst
    # `diff -N` shows a missing side as an empty file dated the epoch
    if old is not None and _epoch(pf.source_timestamp) and all(h.source_length == 0 for h in pf):
        old = None
    if new is not None and _epoch(pf.target_timestamp) and all(h.target_length == 0 for h in pf):
        new = None
    return old, new


def _file_change(pf, patch: Patch, pline: int, offset: int, strip: int) -> FileChange:
    info = [str(x) for x in (pf.patch_info or [])]

    def header(prefix: str) -> str | None:
        return next((x[len(prefix):].rstrip("\n") for x in info if x.startswith(prefix)), None)

    rename_from, rename_to = header("rename from "), header("rename to ")
    copy_from, copy_to = header("copy from "), header("copy to ")
    old, new = _sides(pf)
    if old is None and new is None:
        raise KlpccError("a diff has /dev/null on both sides", patch=patch.path, line=pline)
    for raw in (old, new):
        if raw is not None and (raw.startswith("/") or ".." in raw.split("/")):
            _check_path(raw, patch, pline)
    old_p = _check_path(_strip(old, strip), patch, pline) if old is not None else None
    new_p = _check_path(_strip(new, strip), patch, pline) if new is not None else None
    kind = "modify"
    if rename_from is not None and rename_to is not None:
        kind = "rename"
        old_p = _check_path(_unquote(rename_from), patch, pline)
        new_p = _check_path(_unquote(rename_to), patch, pline)
    elif copy_from is not None and copy_to is not None:
        kind = "copy"
        old_p = _check_path(_unquote(copy_from), patch, pline)
        new_p = _check_path(_unquote(copy_to), patch, pline)
    elif old_p is None:
        kind = "add"
    elif new_p is None:
        kind = "delete"
    elif old_p != new_p:
        # plain diffs name backups (foo.c.orig) on the old side: the new side wins
        old_p = new_p

    hunks = []
    for h in pf:
        hline = offset + (h[0].diff_line_no - 1 if len(h) else 1)
        hunks.append(_hunk(h, hline, offset))
    return FileChange(kind, old_p, new_p, tuple(hunks), pline)


_EPOCH = re.compile(r"^(1970-01-01|1969-12-31)[ T]|^Thu Jan +1 00:00:00 1970|^Wed Dec 31 ")


def _epoch(stamp: str | None) -> bool:
    return bool(stamp) and bool(_EPOCH.match(stamp.strip()))


def _guess_strip(old: str | None, new: str | None, git: bool,
                 exists: Callable[[str], bool] | None) -> tuple[int | None, bool]:
    """Strip level for a file diff, and whether the paths settle it (None: both levels
    name a file of the base)."""
    if git:
        return 1, True
    if (old is None or old.startswith("a/")) and (new is None or new.startswith("b/")):
        return 1, True
    name = old if old is not None else new
    assert name is not None
    if exists is not None and old is not None:
        if exists(name):
            return (None, True) if "/" in name and exists(_strip(name, 1)) else (0, True)
        if "/" in name and exists(_strip(name, 1)):
            return 1, True
    if exists is not None and old is None and "/" in name:
        # a new file: strip a level if that puts it in an existing directory
        top = name.split("/")[0]
        if not exists(top) and exists(_strip(name, 1).rsplit("/", 1)[0]):
            return 1, False
    return 0, False


def _hunk(h, header_line: int, offset: int) -> Hunk:
    out: list[tuple[str, bytes, int]] = []
    for line in h:
        tag = line.line_type
        if tag == "\\":
            if out:
                ptag, text, pl = out[-1]
                if text.endswith(b"\n"):
                    text = text[:-1]
                out[-1] = (ptag, text, pl)
            continue
        if tag not in (" ", "-", "+"):
            continue
        value = line.value
        if not value.endswith("\n"):
            value += "\n"
        out.append((tag, value.encode("utf-8", "surrogateescape"), offset + (line.diff_line_no or 0)))
    return Hunk(h.source_start, h.source_length, h.target_start, h.target_length, tuple(out),
                header_line)


# --------------------------------------------------------------------------- apply


@dataclass(frozen=True, slots=True)
class Applied:
    lines: list[bytes]
    edits: list[LineEdit]  # in ascending order, non-overlapping
    edit_lines: list[int]  # patch line of the first changed line of each edit
    notes: list[str]  # offsets and fuzz used
    added: dict[int, int]  # new line (1-based) -> patch line of the "+" line that made it
    removed: dict[int, int]  # old line (1-based) -> patch line of the "-" line that removed it


def apply_hunks(lines: Sequence[bytes], change: FileChange, patch: Patch, fuzz: int = 0) -> Applied:
    """Apply the hunks of ``change`` to ``lines`` (each with its newline)."""
    out: list[bytes] = []
    edits: list[LineEdit] = []
    edit_lines: list[int] = []
    notes: list[str] = []
    added: dict[int, int] = {}
    removed: dict[int, int] = {}
    pos = 0  # next unconsumed old line
    shift = 0  # offset found for the previous hunk
    path = change.old_path or change.path
    for number, hunk in enumerate(change.hunks, 1):
        nominal = hunk.old_start - 1 if hunk.old_count else hunk.old_start
        expected = nominal + shift
        found = None
        trim = (0, 0)
        for f in range(0, fuzz + 1):
            trim = _context_trim(hunk, f)
            old_f = hunk.old_lines()[trim[0]: len(hunk.old_lines()) - trim[1]]
            found = _locate(lines, old_f, expected + trim[0], pos)
            if found is not None:
                if f:
                    notes.append(f"{path}: hunk #{number} applied with fuzz {f}")
                break
        if found is None:
            earlier = next((k for k, h in enumerate(change.hunks[:number - 1], 1)
                            if h.old_start > hunk.old_start), None)
            why = (f"it is for line {hunk.old_start}, before hunk #{earlier} (line "
                   f"{change.hunks[earlier - 1].old_start}): a patch's hunks must come in the order "
                   "of their lines" if earlier is not None else _mismatch(lines, hunk, expected))
            raise KlpccError(f"hunk #{number} does not apply: {why}", patch=patch.path, line=hunk.patch_line,
                             file=path)
        body = hunk.lines[trim[0]: len(hunk.lines) - trim[1]]
        if found - trim[0] != expected:
            notes.append(f"{path}: hunk #{number} applied at offset {found - trim[0] - nominal:+d}")
        shift = found - trim[0] - nominal
        out.extend(lines[pos:found])
        _hunk_edits(body, found, len(out), edits, edit_lines, added, removed)
        new = [t for tag, t, _ in body if tag != "-"]
        out.extend(new)
        pos = found + sum(1 for tag, _, _ in body if tag != "+")
    out.extend(lines[pos:])
    return Applied(out, edits, edit_lines, notes, added, removed)


def _context_trim(hunk: Hunk, fuzz: int) -> tuple[int, int]:
    """How many leading and trailing context lines fuzz ``fuzz`` drops."""
    if fuzz == 0:
        return 0, 0
    lead = 0
    for tag, _, _ in hunk.lines:
        if tag != " ":
            break
        lead += 1
    trail = 0
    for tag, _, _ in reversed(hunk.lines):
        if tag != " ":
            break
        trail += 1
    return min(fuzz, lead), min(fuzz, trail)


def _locate(lines: Sequence[bytes], old: Sequence[bytes], expected: int, floor: int) -> int | None:
    """Where ``old`` occurs in ``lines`` at or after ``floor``, nearest ``expected``."""
    n = len(old)
    limit = len(lines) - n
    if not old:
        return min(max(expected, floor), len(lines))
    if limit < floor:
        return None
    # from a stated line far outside the file, the search starts at its nearest end:
    # the time it takes is bounded by the file, not by the number in the header
    expected = min(max(expected, floor), limit)
    first = old[0]
    delta = 0
    while True:
        up, down = expected + delta, expected - delta
        if up > limit and down < floor:
            return None
        for at in ((up,) if delta == 0 else (up, down)):
            if floor <= at <= limit and lines[at] == first and lines[at:at + n] == old:
                return at
        delta += 1


def _hunk_edits(body: Sequence[tuple[str, bytes, int]], old_at: int, new_at: int,
                edits: list[LineEdit], edit_lines: list[int],
                added: dict[int, int], removed: dict[int, int]) -> None:
    """One edit per run of changed lines; where each changed line came from."""
    o, n = old_at, new_at
    run: list[int] | None = None  # [old_start, old_count, new_start, new_count]
    for tag, _, pline in body:
        if tag == " ":
            if run:
                edits.append(LineEdit(*run))
                run = None
            o += 1
            n += 1
            continue
        if run is None:
            run = [o, 0, n, 0]
            edit_lines.append(pline)
        if tag == "-":
            removed[o + 1] = pline
            run[1] += 1
            o += 1
        else:
            added[n + 1] = pline
            run[3] += 1
            n += 1
    if run:
        edits.append(LineEdit(*run))


def _show(line: bytes) -> str:
    return quoted(line.decode("utf-8", "surrogateescape"))


def _mismatch(lines: Sequence[bytes], hunk: Hunk, expected: int) -> str:
    old = hunk.old_lines()
    if expected + len(old) > len(lines) and expected >= len(lines):
        return (f"it expects line {expected + 1} but the file has only {len(lines)} lines")
    for i, want in enumerate(old):
        at = expected + i
        if at >= len(lines):
            return f"the file ends at line {len(lines)}, before the hunk does"
        if lines[at] != want:
            got = lines[at]
            if got.rstrip(b"\r\n") == want.rstrip(b"\r\n"):
                return f"line {at + 1} differs in its line ending or final newline"
            return f"line {at + 1} is {_show(got)}, the patch expects {_show(want)}"
    return "the context does not match"
