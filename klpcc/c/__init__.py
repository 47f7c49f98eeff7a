"""Stage 4: C source read without a preprocessor -- its top-level items, their
fingerprints, and a parse kept in step with line edits.

* :mod:`.language`: tree-sitter-c's language and parser, and the annotations blanked
  before parsing;
* :mod:`.text`: the one reading of comments and string/character literals
  (:func:`mask`, :func:`scan`);
* :mod:`.tokens`: C tokens and fingerprints;
* :mod:`.items`: the items of a parse tree (:class:`Item`);
* :mod:`.lexical`: the lexical scanner used where the parser recovers from errors;
* :mod:`.source`: :class:`CSource`, a file parsed once and kept in step with its
  edits, so that following a series costs in proportion to its diffs.
"""

from .items import Item
from .language import (
    ANNOTATION_CALLS,
    ANNOTATION_WORDS,
    C_LANGUAGE,
    C_SUFFIXES,
    is_c_file,
    mask_annotations,
    parse,
    parser,
)
from .source import CSource, LineEdit, line_offsets, split_lines
from .text import mask, scan, strip_comments
from .tokens import fingerprint, in_context, normalise, tokens

__all__ = [
    "ANNOTATION_CALLS", "ANNOTATION_WORDS", "C_LANGUAGE", "C_SUFFIXES", "CSource", "Item", "LineEdit",
    "fingerprint", "in_context", "is_c_file", "line_offsets", "mask", "mask_annotations", "normalise",
    "parse", "parser", "scan", "split_lines", "strip_comments", "tokens",
]
