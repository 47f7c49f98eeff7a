"""Stage 9: the review report, one self-contained HTML page per release.

:func:`from_series` gathers it from an analysis (with the lint and the object-level
check when they ran), :func:`from_bundle` from what ``klpcc compile`` recorded;
:func:`render` writes the page (:mod:`.html`; the release graph in :mod:`.graph`).
"""

from .collect import from_bundle, from_series
from .html import render
from .model import REPORT_VERSION, Review

__all__ = ["REPORT_VERSION", "Review", "from_bundle", "from_series", "render"]
