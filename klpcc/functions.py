"""Temporary: the C reading moved to :mod:`klpcc.c`; klpcc/emit still imports from here."""

from .c import (  # temporary: klpcc/emit still imports from here
    C_LANGUAGE,
    CSource,
    Item,
    LineEdit,
    fingerprint,
    is_c_file,
    mask_annotations,
    split_lines,
    tokens,
)

__all__ = ["C_LANGUAGE", "CSource", "Item", "LineEdit", "fingerprint", "is_c_file", "mask_annotations",
           "split_lines", "tokens"]
