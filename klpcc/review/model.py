"""What a review report shows, as typed data: built from a series (the analysis, its
lint and the object-level check) or from a bundle, rendered by :mod:`.html`."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..lint.rules import Rule
from ..manifest import Change, Finding

REPORT_VERSION = "klpcc.report/1"
MAX_COLUMNS = 100  # releases the matrix shows (the last ones); older ones are not linked to either


@dataclass(frozen=True, slots=True)
class DiffLine:
    """One line of a function's diff: ``kind`` is ``" "`` (context), ``"-"``, ``"+"``
    or ``"@"`` (a hunk header, ``text`` then reads ``@@ -a,b +c,d @@``)."""

    kind: str
    text: str


@dataclass(frozen=True, slots=True)
class FunctionDiff:
    """A function's code in the base against the release, or why there is none."""

    lines: tuple[DiffLine, ...] = ()
    note: str | None = None
    omitted: int = 0  # diff lines left out (long diffs are cut)


@dataclass(frozen=True, slots=True)
class Row:
    """A function (or another item) of the matrix."""

    anchor: str  # the id of its diff
    change: Change
    links: dict[int, str] = field(default_factory=dict)  # release index -> id of the patch line
    diff: FunctionDiff | None = None  # functions only
    compiled: tuple[str, str] | None = None  # the object-level check: (what, reason)


@dataclass(frozen=True, slots=True)
class Excerpt:
    """A part of a release's patch: the hunk around lines something links to."""

    anchor: str
    release: int  # 1-based
    patch: str  # the patch file, as shown
    file: str | None  # the file the hunk changes
    lines: tuple[tuple[int | None, str], ...]  # (patch line; None: a gap), text
    marked: frozenset[int]  # patch lines that are link targets


@dataclass(frozen=True, slots=True)
class FindingView:
    finding: Finding
    rule: Rule | None
    link: str | None  # the id of its patch line in an excerpt, or of the function's diff
    patch_text: str | None  # the text of the patch line


@dataclass(frozen=True, slots=True)
class Edge:
    """Two releases change the same functions, ``later`` after ``earlier``."""

    earlier: int
    later: int
    functions: tuple[str, ...]


@dataclass(frozen=True)
class Review:
    generator: str
    origin: str  # the series as loaded, or the bundle
    from_bundle: bool
    base: dict[str, str]
    releases: tuple[str, ...]  # every release of the series
    release: int  # 1-based
    installed: int | None
    functions: tuple[Row, ...]
    outside: tuple[Row, ...]
    findings: tuple[FindingView, ...] | None  # None: not linted
    lint_against: tuple[str, ...]
    lint_notes: tuple[str, ...]
    objects: dict | None  # the object-level report (analysis JSON's ``objects``)
    edges: tuple[Edge, ...]
    excerpts: tuple[Excerpt, ...]
    warnings: tuple[str, ...]
    notes: tuple[str, ...]
    carries_patches: bool = True  # a bundle written with patches/ (always true of a series)

    @property
    def release_name(self) -> str:
        return self.releases[self.release - 1]

    @property
    def installed_name(self) -> str | None:
        return None if self.installed is None else self.releases[self.installed - 1]
