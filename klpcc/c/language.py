"""The C language of tree-sitter-c, its parser, and what is done to source before
it is parsed without a preprocessor."""

from __future__ import annotations

import re
import threading
from bisect import bisect_right
from collections.abc import Sequence
from itertools import accumulate

import tree_sitter_c
from tree_sitter import Language, Parser, Point, Range, Tree

from .text import mask

C_LANGUAGE = Language(tree_sitter_c.language())

#: File suffixes treated as C source.
C_SUFFIXES = (".c", ".h")


def is_c_file(path: str) -> bool:
    return path.endswith(C_SUFFIXES)


_local = threading.local()


def parser() -> Parser:
    """The C parser of the calling thread (one per thread, made on first use)."""
    try:
        return _local.parser
    except AttributeError:
        _local.parser = Parser(C_LANGUAGE)
        return _local.parser


def parse(data: bytes) -> Tree:
    """The tree of C source ``data``, parsed with well-known annotations blanked (see
    :func:`mask_annotations`)."""
    return parser().parse(mask_annotations(data))


# Annotations that sit between the specifiers and the declarator of real kernel and
# userspace definitions (section placement, sparse and compiler attributes).  Without
# a preprocessor tree-sitter cannot know they expand to nothing, and they derail its
# parse of the definition around them; they are blanked out (same length, so every
# byte offset stays valid) before parsing.  Fingerprints are taken from the original
# bytes, so changing an annotation still changes the fingerprint.
ANNOTATION_WORDS = (
    "__init", "__exit", "__initdata", "__exitdata", "__initconst", "__ref", "__refdata",
    "__meminit", "__meminitdata", "__init_or_module", "__initdata_or_module",
    "__net_init", "__net_exit", "__net_initdata", "__cold", "__hot", "__weak", "__pure",
    "__noreturn", "__always_inline", "noinline", "__noinline", "__maybe_unused",
    "__always_unused", "__used", "__visible", "asmlinkage", "notrace", "noinstr",
    "__sched", "__kprobes", "nokprobe_inline", "__latent_entropy", "__must_check",
    "__user", "__kernel", "__iomem", "__rcu", "__percpu", "__force", "__bitwise",
    "__read_mostly", "__ro_after_init", "__cacheline_aligned",
    "__cacheline_aligned_in_smp", "____cacheline_aligned",
    "____cacheline_aligned_in_smp", "__packed", "__naked", "__flatten", "__cpuidle",
    "__irq_entry", "__softirq_entry", "__no_kcsan", "__no_sanitize_address", "__nocfi",
    "__randomize_layout", "__nonstring", "__deprecated", "__gnu_inline", "__malloc",
    "__attribute_const__", "__lockfunc", "__always_used", "__init_memblock",
    "__initdata_memblock", "fastcall", "__safe", "__noclone", "__no_stack_protector",
    "__noinstr_section", "__nostackprotector", "noinline_for_stack", "__noipa",
)
ANNOTATION_CALLS = (
    "__printf", "__scanf", "__acquires", "__releases", "__must_hold", "__section",
    "__aligned", "__alloc_size", "__cond_acquires", "__cond_releases",
    "__assume_aligned", "__counted_by", "__nonnull", "__diag_ignore", "__free",
    "__guarded_by", "__no_sanitize_or_inline", "__realloc_size", "TARGET_ATTRIBUTE",
)

_WORD_RE = "|".join(re.escape(w) for w in ANNOTATION_WORDS)
_CALL_RE = "|".join(re.escape(w) for w in ANNOTATION_CALLS)
# a preprocessor directive (with its continuation lines) is left as written: blanking
# `__init` in `#define __modinit __init` would leave a value of blanks, which makes
# tree-sitter-c read the next line (an `#endif`) into the definition
_DIRECTIVE = rb"(?m:^[ \t]*#(?:[^\\\n]|\\(?:\r?\n|.))*)"
_MASK = re.compile(
    _DIRECTIVE + b"|"
    + rf"\b(?:{_CALL_RE})[ \t]*\((?:[^()\n]|\([^()\n]*\))*\)|\b(?:{_WORD_RE})\b".encode()
)


# a quick necessary condition for _MASK to blank anything: one pattern with a literal
# prefix, one without (an alternation of every word is a slow search)
_UNDERSCORED = sorted((w[2:] for w in (*ANNOTATION_WORDS, *ANNOTATION_CALLS) if w.startswith("__")),
                      key=len, reverse=True)
_ANY_ANNOTATION = (
    re.compile(("__(?:" + "|".join(map(re.escape, _UNDERSCORED)) + r")\b").encode()),
    re.compile(("(?:" + "|".join(re.escape(w) for w in (*ANNOTATION_WORDS, *ANNOTATION_CALLS)
                                 if not w.startswith("__")) + r")\b").encode()),
)


def mask_annotations(data: bytes) -> bytes:
    """Blank out well-known annotation macros, keeping every byte offset (outside
    preprocessor directives)."""
    if not any(p.search(data) for p in _ANY_ANNOTATION):
        return data  # nothing to blank (most code outside the kernel)
    return _MASK.sub(_blank, data)


def _blank(m: re.Match[bytes]) -> bytes:
    text = m.group()
    return text if text.lstrip(b" \t").startswith(b"#") else b" " * len(text)


# Kernel macros that define (or, DECLARE_PER_CPU, declare) one variable: the name the
# compiler sees is an argument, not the macro.  Per-CPU macros take (type, name);
# the others take the name first.
_PER_CPU = r"(?:DEFINE|DECLARE)_PER_CPU(?:_[A-Z_]+)?"
_NAME_FIRST = (
    r"DEFINE_(?:MUTEX|SPINLOCK|RAW_SPINLOCK|RWLOCK|SEQLOCK|IDR|IDA|XARRAY(?:_[A-Z_]+)?|HASHTABLE|"
    r"READ_MOSTLY_HASHTABLE|RATELIMIT_STATE|SEMAPHORE|STATIC_KEY_(?:TRUE|FALSE)(?:_RO)?|STATIC_SRCU|SRCU|"
    r"TIMER|WAIT_QUEUE_HEAD|PERCPU_RWSEM|STATIC_PERCPU_RWSEM|WD_CLASS|WW_CLASS|WW_MUTEX_CLASS|"
    r"LLIST_HEAD|CTL_TABLE_POLL|KLP_SHADOW\w*)|"
    r"DECLARE_(?:RWSEM|WAIT_QUEUE_HEAD|BITMAP|WORK|DELAYED_WORK|DEFERRABLE_WORK|COMPLETION|"
    r"KFIFO(?:_PTR)?|TASKLET(?:_OLD|_DISABLED|_DISABLED_OLD)?|SWAIT_QUEUE_HEAD)|"
    r"(?:BLOCKING|ATOMIC|RAW|SRCU)_NOTIFIER_HEAD|H?LIST_HEAD|LLIST_HEAD|LIST_HEAD"
)
_MACRO_VARIABLE = re.compile(
    rb"\s*(?P<storage>(?:(?:static|extern)\s+)?)(?:__\w+\s+)*(?P<macro>" + _PER_CPU.encode() + rb"|"
    + _NAME_FIRST.encode() + rb")\s*\((?P<args>[^;{]*?)\)\s*(?:=[^;]*)?;?\s*\Z", re.S)


def macro_variable(text: bytes) -> tuple[str, str, bool, str] | None:
    """``(kind, name, static, macro)`` of a declaration written with a kernel macro that
    defines one variable (``static DEFINE_PER_CPU(struct rq, runqueues);``): the
    variable the compiler sees.  None for anything else."""
    m = _MACRO_VARIABLE.match(text)
    if m is None:
        return None
    args, depth, cur = [], 0, b""
    for ch in m["args"]:
        c = bytes([ch])
        if c in b"([{":
            depth += 1
        elif c in b")]}":
            depth -= 1
        if c == b"," and depth == 0:
            args.append(cur.strip())
            cur = b""
        else:
            cur += c
    args.append(cur.strip())
    macro = m["macro"].decode()
    per_cpu = re.fullmatch(_PER_CPU, macro) is not None
    name = args[-1] if per_cpu and len(args) >= 2 else args[0]
    if not re.fullmatch(rb"[A-Za-z_]\w*", name):
        return None
    kind = "prototype" if macro.startswith("DECLARE_PER_CPU") or m["storage"].startswith(b"extern") \
        else "variable"
    return kind, name.decode(), m["storage"].startswith(b"static"), macro


# A large brace initialiser at file scope (a table of thousands of numbers) costs the
# parser a node per token and tells it nothing an item needs: its body is left out of
# the parse (tree-sitter's included ranges: the parser never reads it, and every node
# keeps its byte offset and line), from the line after `... = {` to a line starting
# with `};`, when no line of it is a preprocessor directive.  Items keep the
# fingerprints of the real text.
_TABLE = re.compile(rb"^[^\s#/*][^\n]*=[ \t]*\{[ \t]*\n((?:(?![ \t]*#)(?!\};)[^\n]*\n)+?)\};", re.M)
TABLE_MIN = 8192  # bytes of body below which nothing is left out


_OPENS = re.compile(rb"=[ \t]*\{[ \t]*\n")


def _large_brace_block(text: bytes) -> bool:
    """Is there a line ending in ``= {`` whose next line starting ``};`` is at least
    TABLE_MIN bytes on (a quick necessary condition for a table to leave out)?"""
    for m in _OPENS.finditer(text):
        start = text.rfind(b"\n", 0, m.start()) + 1
        if text[start:start + 1] in (b" ", b"\t", b"#", b"/", b"*", b"\n"):
            continue  # not at file scope
        close = text.find(b"\n};", m.end() - 1)
        if close < 0:
            return False
        if close - m.end() >= TABLE_MIN:
            return True
    return False


def table_spans(masked: bytes) -> list[tuple[int, int]]:
    """The byte spans of the bodies of large file-scope brace initialisers in
    ``masked`` (annotations blanked), which the parser is not given.  Comments and
    strings are seen through when looking for the closing ``};``."""
    if len(masked) < TABLE_MIN or not _large_brace_block(masked):
        return []  # no candidate
    return [(m.start(1), m.end(1)) for m in _TABLE.finditer(mask(masked))
            if m.end(1) - m.start(1) >= TABLE_MIN]


_WHOLE = Range(Point(0, 0), Point(0xFFFFFFFF, 0xFFFFFFFF), 0, 0xFFFFFFFF)


def parse_without(data: bytes, spans: Sequence[tuple[int, int]], old: Tree | None = None) -> Tree:
    """The tree of ``data`` parsed without the byte ``spans`` (sorted, disjoint),
    incrementally from ``old`` when given.  Nodes keep the offsets and lines of
    ``data``."""
    try:
        ranged = _local.ranged
    except AttributeError:
        ranged = _local.ranged = Parser(C_LANGUAGE)
    if spans:
        # rows as the parser counts them: at each newline (the caller's lines may
        # have been split otherwise)
        starts = list(accumulate((len(part) + 1 for part in data.split(b"\n")), initial=0))

        def point(byte: int) -> Point:
            row = bisect_right(starts, byte) - 1
            return Point(row, byte - starts[row])

        ranges, pos = [], 0
        for lo, hi in (*spans, (len(data), len(data))):
            if lo > pos:
                ranges.append(Range(point(pos), point(lo), pos, lo))
            pos = hi
        ranged.included_ranges = ranges or [Range(Point(0, 0), Point(0, 0), 0, 0)]
    else:
        ranged.included_ranges = [_WHOLE]
    return ranged.parse(data) if old is None else ranged.parse(data, old)
