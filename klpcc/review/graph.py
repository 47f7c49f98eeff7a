"""The release graph as inline SVG: releases on a line, an arc from a release to each
later one that changes a function it changed."""

from __future__ import annotations

import math
from html import escape

from .model import Edge

_MAX_NAMES = 12  # function names in an arc's tooltip
_NAMED = 30  # up to this many releases, each has its name under it


def _short(name: str, width: int = 22) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def release_graph_svg(releases: tuple[str, ...], upto: int, current: int, edges: tuple[Edge, ...],
                      installed: int | None = None) -> str:
    """An arc diagram of releases 1..``upto``; ``current`` (and ``installed``) marked."""
    n = max(1, upto)
    dx = max(18.0, min(72.0, 960.0 / n))
    pad = 24.0
    width = pad * 2 + dx * (n - 1) + (120 if n <= _NAMED else 0)  # the last name, slanted
    span = max((e.later - e.earlier for e in edges), default=1)
    top = 14.0 + min(span * dx / 2, 160.0)
    base_y = top + 8
    named = n <= _NAMED
    height = base_y + (130 if named else 24)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="graph" role="img" width="{width:.0f}" '
             f'height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" '
             f'aria-label="releases that change the same functions">']
    x = [pad + dx * i for i in range(n)]
    for e in edges:
        if e.later > n:
            continue
        x1, x2 = x[e.earlier - 1], x[e.later - 1]
        r = (x2 - x1) / 2
        ry = min(r, top - 8)
        apex = base_y - ry
        w = 1 + math.log2(len(e.functions))
        names = ", ".join(e.functions[:_MAX_NAMES]) + (
            f" and {len(e.functions) - _MAX_NAMES} more" if len(e.functions) > _MAX_NAMES else "")
        parts.append(
            f'<path class="arc" data-from="{e.earlier}" data-to="{e.later}" '
            f'd="M {x1:.1f} {base_y:.1f} A {r:.1f} {ry:.1f} 0 0 1 {x2:.1f} {base_y:.1f}" '
            f'fill="none" stroke="#5b6b8c" stroke-opacity="0.7" stroke-width="{w:.1f}">'
            f'<title>{escape(releases[e.later - 1])} changes again what {escape(releases[e.earlier - 1])} '
            f'changed: {escape(names)}</title></path>'
            f'<text class="count" x="{(x1 + x2) / 2:.1f}" y="{apex - 3:.1f}" text-anchor="middle" '
            f'font-size="9" fill="#5b6b8c">{len(e.functions)}</text>')
    for i in range(n):
        cls = "node cur" if i + 1 == current else "node from" if i + 1 == installed else "node"
        fill = "#1f4fa3" if i + 1 == current else "#8a5a00" if i + 1 == installed else "#ffffff"
        text = "#ffffff" if i + 1 in (current, installed) else "#1d2433"
        label = str(i + 1)
        parts.append(
            f'<g class="{cls}" data-release="{i + 1}"><title>{i + 1}: {escape(releases[i])}</title>'
            f'<circle cx="{x[i]:.1f}" cy="{base_y:.1f}" r="9" fill="{fill}" stroke="#1d2433" '
            f'stroke-width="1.2"/><text x="{x[i]:.1f}" y="{base_y + 3.5:.1f}" text-anchor="middle" '
            f'font-size="{9 if n < 100 else 7}" fill="{text}">{label}</text>'
            + (f'<text class="name" x="{x[i]:.1f}" y="{base_y + 20:.1f}" font-size="10" fill="#5d6677" '
               f'transform="rotate(35 {x[i]:.1f} {base_y + 20:.1f})">{escape(_short(releases[i]))}</text>'
               if named else "") + "</g>")
    parts.append("</svg>")
    return "".join(parts)
