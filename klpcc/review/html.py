"""A :class:`~.model.Review` as one self-contained HTML page: no script, no network, no
external asset; long parts collapsed in ``<details>``.  The ids and classes listed in
``docs/formats.md`` (review report) are what tools may rely on."""

from __future__ import annotations

import os
import re
from collections import Counter
from html import escape

from ..history import ADDED, DROPPED, MODIFIED, NOP, REMOVED, UNCHANGED
from ..lint.rules import SEVERITIES
from .graph import release_graph_svg
from .model import MAX_COLUMNS, REPORT_VERSION, Excerpt, FindingView, Review, Row

_OPEN_ROWS = 40  # longer tables of changes outside functions start collapsed
_OPEN_EXCERPT_LINES = 400  # a release's patch excerpts start open up to this many lines

_SYMBOL = {MODIFIED: "M", ADDED: "A", REMOVED: "R", NOP: "N", DROPPED: "D", UNCHANGED: ".", "absent": ""}
_KINDS = (MODIFIED, ADDED, REMOVED, NOP, DROPPED)
_TRANSITIONS = ("add", "update", "keep", "nop", "drop")
_WHAT = {"code-only": "joined: the compiled code changed, the source did not",
         "source-only": "left: the source changed, the compiled code did not",
         "line-only": "left: only line numbers in the compiled code changed",
         "both": "source and compiled code changed"}

_CSS = """
:root{--ink:#1d2433;--mute:#5d6677;--line:#d5dae3;--bg:#f7f8fb;--mod:#f6d58a;--add:#a9dfb0;--rem:#f2a7a0;
--nop:#cdb8f0;--drop:#b9bec8;--same:#eef0f4;--cur:#1f4fa3}
*{box-sizing:border-box}
[id]{scroll-margin-top:48px}
details>.body[id]{scroll-margin-top:84px}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:var(--ink);margin:0;background:#fff}
main{max-width:1280px;margin:0 auto;padding:0 20px 40px}
header.top{background:var(--ink);color:#fff;padding:14px 20px}
header.top h1{font-size:20px;margin:0 0 4px}
header.top .meta{color:#c8d0e0;font-size:13px}
header.top code{color:#fff}
nav.toc{position:sticky;top:0;background:#fff;border-bottom:1px solid var(--line);padding:6px 20px;z-index:2;
font-size:13px}
nav.toc a{margin-right:14px;color:var(--cur);text-decoration:none}
h2{font-size:17px;margin:26px 0 8px;border-bottom:1px solid var(--line);padding-bottom:4px}
h3{font-size:15px;margin:16px 0 6px}
.counts span{display:inline-block;border-radius:10px;padding:1px 9px;margin:4px 6px 0 0;font-size:13px;
color:var(--ink)}
.k-modified{background:var(--mod)}.k-added{background:var(--add)}.k-removed{background:var(--rem)}
.k-nop{background:var(--nop)}.k-dropped{background:var(--drop)}.k-unchanged{background:var(--same)}
.k-absent{background:#fff}
.sev-error{background:#f2a7a0}.sev-warning{background:#f6d58a}.sev-note{background:#cfe0f6}
.callout{border-left:4px solid #7a52c7;background:#f4effc;padding:8px 12px;margin:10px 0}
.callout.ok{border-color:#3a8f4b;background:#eef8f0}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:13px}
th,td{border:1px solid var(--line);padding:2px 6px;text-align:left;vertical-align:top}
thead th{background:var(--bg)}
table.matrix td.cell{text-align:center;min-width:24px;padding:2px 3px;font-family:ui-monospace,monospace}
table.matrix td.cell a{color:inherit;text-decoration:none;display:block}
table.matrix td.cell.t{font-weight:700}
table.matrix .cur{box-shadow:inset 2px 0 0 var(--cur),inset -2px 0 0 var(--cur)}
table.matrix th.cur{background:var(--cur);color:#fff}
table.matrix tr.c-nop th,table.matrix tr.c-dropped th{font-style:italic}
table.matrix tr.c-nop{outline:2px solid #7a52c7}
table.matrix td.now{font-weight:600}
table.matrix th a{color:var(--ink)}
.legend span{display:inline-block;padding:0 6px;margin:2px 6px 2px 0;border:1px solid var(--line);
font-family:ui-monospace,monospace}
ol.releases{columns:2;font-size:13px;padding-left:30px}
ol.releases li.cur{font-weight:700;color:var(--cur)}
.finding{border:1px solid var(--line);border-left:5px solid #999;padding:6px 10px;margin:8px 0}
.finding.sev-error{border-left-color:#c0392b;background:#fff}
.finding.sev-warning{border-left-color:#c98a00;background:#fff}
.finding.sev-note{border-left-color:#3a6fb0;background:#fff}
.finding .rule{font-weight:700}
.finding .hint{color:#244d22}
.finding code.pl{display:block;white-space:pre-wrap;background:var(--bg);padding:2px 6px;margin:4px 0}
pre{margin:0;font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,monospace;overflow-x:auto}
pre>span{display:block;white-space:pre;min-height:1.4em}
pre.num>span{counter-increment:ln}
pre.num>span::before{content:counter(ln);display:inline-block;min-width:4.5em;padding-left:8px;
color:var(--mute)}
pre.num>span.g{counter-increment:none}pre.num>span.g::before{content:""}
pre .a{background:#e6f6e8}pre .d{background:#fbe8e6}pre .h{background:#eef0f4;color:var(--mute)}
pre .f{color:var(--mute);font-weight:600}
pre .g{color:var(--mute);font-style:italic}
pre .m{box-shadow:inset 4px 0 0 #7a52c7}
pre>span:target,.finding:target,.body:target{background:#fff3a8}
details{border:1px solid var(--line);margin:6px 0;padding:0 8px}
details>summary{cursor:pointer;padding:4px 0}
details[open]>summary{border-bottom:1px solid var(--line);margin-bottom:4px}
.excerpt{margin:8px 0 12px}
.excerpt .cap{font-size:12px;color:var(--mute);margin-bottom:2px}
.note{color:var(--mute)}
svg.graph text{font-family:ui-monospace,monospace}
footer{color:var(--mute);font-size:12px;margin-top:30px}
"""


_LINE = {"+": " class=a", "-": " class=d", "@": " class=h", " ": ""}  # a diff line's class


def _cls(token: str) -> str:
    """A value (a change kind, a severity) as a class name: nothing but a word."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", token)


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def render(rv: Review) -> str:
    """The report as HTML text."""
    n = len(rv.releases)
    title = f"release {rv.release}/{n}: {rv.release_name}"
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f'<meta name="generator" content="{_e(rv.generator)}">',
           f'<meta name="klpcc-report" content="{REPORT_VERSION}">',
           f"<title>klpcc review: {_e(title)}</title>", f"<style>{_CSS}</style></head><body>"]
    out.append(_header(rv, title))
    out.append('<nav class="toc">' + "".join(
        f'<a href="#{sid}">{label}</a>' for sid, label in _sections(rv)) + "</nav><main>")
    out.append(_backout(rv))
    if rv.installed is not None:
        out.append(_transition(rv))
    out.append(_matrix(rv))
    if rv.outside:
        out.append(_outside(rv))
    out.append(_findings(rv))
    if rv.objects is not None:
        out.append(_objects(rv))
    out.append(_graph(rv))
    out.append(_diffs(rv))
    out.append(_patches(rv))
    source = ("from the bundle " if rv.from_bundle else "series ") + _e(rv.origin)
    out.append(f"<footer>{_e(rv.generator)} · report format {REPORT_VERSION} · {source}</footer>")
    out.append("</main></body></html>\n")
    return "\n".join(out)


def _sections(rv: Review) -> list[tuple[str, str]]:
    out = [("backout", "Backed out")]
    if rv.installed is not None:
        out.append(("transition", f"From {rv.installed}"))
    out.append(("matrix", "Matrix"))
    if rv.outside:
        out.append(("outside", "Outside functions"))
    out.append(("findings", "Lint"))
    if rv.objects is not None:
        out.append(("objects", "Compiled code"))
    out += [("graph", "Release graph"), ("diffs", "Function diffs"), ("patches", "Patches")]
    return out


def _shown_path(path: str) -> str:
    """A path as the reader of the page knows it: relative to where klpcc ran, when
    it lies below."""
    try:
        rel = os.path.relpath(path)
    except (ValueError, OSError):  # another drive, or no current directory any more
        return path
    return path if rel.startswith("..") else rel


def _header(rv: Review, title: str) -> str:
    base = _shown_path(rv.base.get("path", ""))
    if "commit" in rv.base:
        base += f" @ {rv.base['commit'][:12]}"
    direction = ""
    if rv.installed is not None:
        direction = (f" · {'downgrade' if rv.installed > rv.release else 'upgrade'} from "
                     f"{rv.installed}: <code>{_e(rv.installed_name)}</code>")
    counts = Counter(r.change.change for r in rv.functions)
    badges = "".join(f'<span class="k-{k}">{counts.get(k, 0)} {k}</span>' for k in _KINDS)
    if rv.findings is not None:
        sev = Counter(f.finding.severity for f in rv.findings)
        badges += "".join(
            f'<span class="sev-{s}">{sev.get(s, 0)} {s}{"s" if sev.get(s, 0) != 1 else ""}</span>'
            for s in SEVERITIES)
    return (f'<header class="top" id="summary"><h1>klpcc review · {_e(title)}</h1>'
            f'<div class="meta">base <code title="{_e(rv.base.get("path", ""))}">{_e(base)}</code>'
            f'{direction} · '
            f'{"bundle" if rv.from_bundle else "series"} <code>{_e(rv.origin)}</code></div>'
            f'<div class="counts">{badges}</div></header>')


def _link(row: Row) -> str:
    name = row.change.name + (" (static)" if row.change.static else "")
    return f'<a href="#{row.anchor}">{_e(name)}</a>'


def _backout(rv: Review) -> str:
    nops = [r for r in rv.functions if r.change.change == NOP]
    drops = [r for r in rv.functions if r.change.change == DROPPED]
    out = ['<section id="backout"><h2>What this release backs out</h2>']
    if not nops and not drops:
        out.append('<p class="callout ok">Nothing: every function an earlier release patched is still '
                   "patched by this one.</p>")
    if rv.installed is not None:
        back = [r for r in rv.functions if r.change.transition in ("nop", "drop")]
        if back:
            out.append(f'<div class="callout from">Replacing release {rv.installed} '
                       f"(<code>{_e(rv.installed_name)}</code>): {len(back)} function(s) it patches go back "
                       "to the original or away (see the <a href=\"#transition\">transition</a>): "
                       + ", ".join(_link(r) for r in back) + "</div>")
    if nops:
        out.append(f'<div class="callout nops"><b>{len(nops)} nop{"s" if len(nops) != 1 else ""}</b>: '
                   "earlier releases patched these functions and this release has their original code "
                   "again; its patch carries a nop for each (the implicit revert of an atomic replace): "
                   + ", ".join(_link(r) for r in nops) + "</div>")
    if drops:
        out.append(f'<div class="callout drops"><b>{len(drops)} dropped</b>: added by an earlier release and '
                   "gone again; the patch neither carries nor reverts them: "
                   + ", ".join(_link(r) for r in drops) + "</div>")
    if rv.warnings or rv.notes:
        out.append('<ul class="warnings">' + "".join(f"<li>warning: {_e(w)}</li>" for w in rv.warnings)
                   + "".join(f'<li class="note">note: {_e(n)}</li>' for n in rv.notes) + "</ul>")
    out.append("</section>")
    return "\n".join(out)


def _transition(rv: Review) -> str:
    groups: dict[str, list[Row]] = {t: [] for t in _TRANSITIONS}
    for r in rv.functions:
        if r.change.transition in groups:
            groups[r.change.transition].append(r)
    out = [f'<section id="transition"><h2>From release {rv.installed} '
           f'(<code>{_e(rv.installed_name)}</code>) to {rv.release}</h2>',
           '<table class="transition"><thead><tr><th>transition</th><th>count</th><th>functions</th></tr>'
           "</thead><tbody>"]
    for t in _TRANSITIONS:
        fns = ", ".join(_link(r) for r in groups[t]) or '<span class="note">none</span>'
        out.append(f'<tr data-transition="{t}"><th>{t}</th><td>{len(groups[t])}</td><td>{fns}</td></tr>')
    out.append("</tbody></table></section>")
    return "\n".join(out)


def _columns(rv: Review) -> range:
    return range(max(1, rv.release - MAX_COLUMNS + 1), rv.release + 1)


def _cells(rv: Review, row: Row, cols: range) -> str:
    touched = set(row.change.touched)
    out = []
    for r in cols:
        kind = row.change.history[r - 1] if r - 1 < len(row.change.history) else "absent"
        name = rv.releases[r - 1]
        t = name in touched
        sym = _SYMBOL.get(kind, "?") + ("*" if t else "")
        cls = f"cell k-{_cls(kind)}" + (" t" if t else "") + (" cur" if r == rv.release else "")
        tip = f"{name}: {kind}" + (" (this release changed its code)" if t else "")
        target = row.links.get(r) or (row.anchor if t and row.diff is not None else None)
        inner = f'<a href="#{target}">{_e(sym)}</a>' if target else _e(sym)
        out.append(f'<td class="{cls}" data-release="{r}" data-kind="{_e(kind)}" title="{_e(tip)}">'
                   f"{inner}</td>")
    return "".join(out)


def _matrix(rv: Review) -> str:
    cols = _columns(rv)
    with_t = rv.installed is not None
    with_o = rv.objects is not None
    out = ['<section id="matrix"><h2>Functions × releases</h2>']
    if cols.start > 1:
        out.append(f'<p class="note">Releases 1..{cols.start - 1} are not shown (the JSON of '
                   "<code>klpcc analyze</code> has them all).</p>")
    if not rv.functions:
        out.append(f"<p>No function differs from the base in releases 1..{rv.release}.</p>")
    else:
        head = "".join(f'<th class="rel{" cur" if r == rv.release else ""}" data-release="{r}" '
                       f'title="{_e(rv.releases[r - 1])}">{r}</th>' for r in cols)
        out.append('<div class="scroll"><table class="matrix" id="function-matrix"><thead><tr>'
                   f"<th>function</th><th>file</th>{head}<th>now</th>"
                   + (f"<th>from {rv.installed}</th>" if with_t else "")
                   + ("<th>compiled code</th>" if with_o else "") + "</tr></thead><tbody>")
        for row in rv.functions:
            ch = row.change
            where = ch.file + (f":{ch.lines[0]}" if ch.lines else "")
            extra = ""
            if with_t:
                extra += f'<td class="transition">{_e(ch.transition or "")}</td>'
            if with_o:
                extra += (f'<td class="compiled" title="{_e(row.compiled[1])}">{_e(row.compiled[0])}'
                          "</td>" if row.compiled else "<td></td>")
            out.append(f'<tr id="row-{row.anchor}" class="c-{_cls(ch.change)}" '
                       f'data-key="{_e(ch.key or ch.name)}" '
                       f'data-change="{_e(ch.change)}"><th scope="row">{_link(row)}</th><td>{_e(where)}</td>'
                       f'{_cells(rv, row, cols)}<td class="now k-{_cls(ch.change)}">{_e(ch.change)}</td>'
                       f"{extra}</tr>")
        out.append("</tbody></table></div>")
    out.append('<p class="legend">' + "".join(
        f'<span class="k-{k}">{_SYMBOL[k]} {k}</span>' for k in (*_KINDS, UNCHANGED))
        + "<span>* that release changed its code (links to its hunk)</span></p>")
    opened = " open" if rv.release <= 12 else ""
    out.append(f'<details{opened}><summary>Releases</summary><ol class="releases">' + "".join(
        f'<li{" class=cur" if i == rv.release else ""}>{_e(name)}</li>'
        for i, name in enumerate(rv.releases[: max(rv.release, rv.installed or 0)], 1))
        + "</ol></details></section>")
    return "\n".join(out)


def _outside(rv: Review) -> str:
    cols = _columns(rv)
    head = "".join(f'<th class="rel{" cur" if r == rv.release else ""}">{r}</th>' for r in cols)
    rows = "".join(
        f'<tr id="row-{row.anchor}" class="c-{_cls(ch.change)}" data-change="{_e(ch.change)}">'
        f"<td>{_e(ch.kind)}</td><th scope=\"row\">{_e(ch.name or '-')}</th>"
        f'<td>{_e(ch.file + (f":{ch.lines[0]}" if ch.lines else ""))}</td>'
        f'{_cells(rv, row, cols)}<td class="now k-{_cls(ch.change)}">{_e(ch.change)}</td></tr>'
        for row, ch in ((row, row.change) for row in rv.outside))
    opened = " open" if len(rv.outside) <= _OPEN_ROWS else ""
    return (f'<section id="outside"><h2>Changes outside functions</h2><details{opened}><summary>'
            f"{len(rv.outside)} type, variable, macro and other change(s)</summary>"
            f'<div class="scroll"><table class="matrix outside"><thead><tr><th>kind</th><th>name</th>'
            f"<th>file</th>{head}<th>now</th></tr></thead><tbody>{rows}</tbody></table></div></details></section>")


def _finding(i: int, v: FindingView) -> str:
    f = v.finding
    where = ""
    if f.file:
        where = f"{f.file}:{f.line}" + (f" in {f.function}()" if f.function else "")
    patch = ""
    to_line = v.link is not None and v.patch_text is not None  # else the link is to the function's diff
    if f.patch:
        loc = f"{f.patch}:{f.patch_line}"
        patch = (f'<div>patch line: <a class="patch-link" href="#{v.link}">{_e(loc)}</a></div>'
                 if to_line else f"<div>patch line: {_e(loc)}</div>")
        if v.patch_text is not None:
            patch += f'<code class="pl">{_e(v.patch_text)}</code>'
    if v.link and not to_line:
        patch += f'<div>function: <a class="function-link" href="#{v.link}">{_e(f.function)}</a></div>'
    rule = ""
    if v.rule is not None:
        rule = (f"<details><summary>rule {v.rule.id}: {_e(v.rule.summary)}</summary>"
                f"<p>{_e(v.rule.description)}</p></details>")
    return (f'<div class="finding sev-{_cls(f.severity)}" id="finding-{i}" data-rule="{_e(f.rule)}">'
            f'<div><span class="rule">{_e(f.severity)} {_e(f.rule)} {_e(f.name)}</span> '
            f'<span class="note">{_e(where)}</span></div><div class="msg">{_e(f.message)}</div>'
            f'{patch}<div class="hint">hint: {_e(f.hint)}</div>{rule}</div>')


def _findings(rv: Review) -> str:
    out = ['<section id="findings"><h2>Lint</h2>']
    if rv.findings is None:
        out.append('<p class="note">Not linted.</p></section>')
        return "\n".join(out)
    against = ", ".join(rv.lint_against) or "no earlier release"
    sev = Counter(v.finding.severity for v in rv.findings)
    out.append(f"<p>Release <code>{_e(rv.release_name)}</code> against {_e(against)}: "
               + ", ".join(f"{sev.get(s, 0)} {s}(s)" for s in SEVERITIES) + ".</p>")
    i = 0
    others = sorted({v.finding.severity for v in rv.findings} - set(SEVERITIES))  # from a hand-made manifest
    for sev in (*SEVERITIES, *others):
        group = [v for v in rv.findings if v.finding.severity == sev]
        if not group:
            continue
        out.append(f'<h3 class="sev-title" id="findings-{_cls(sev)}">{_e(sev.capitalize())}s '
                   f"({len(group)})</h3>")
        for v in group:
            i += 1
            out.append(_finding(i, v))
    for note in rv.lint_notes:
        out.append(f'<p class="note">note: {_e(note)}</p>')
    out.append("</section>")
    return "\n".join(out)


def _objects(rv: Review) -> str:
    obj = rv.objects or {}
    s = obj.get("summary", {})
    out = ['<section id="objects"><h2>What the compiled code says</h2>',
           f"<p>{_e(s.get('units', 0))} unit(s), {_e(s.get('compiled', 0))} compiled, "
           f"{_e(s.get('cache_hits', 0))} from the cache.</p>"]
    fns = obj.get("functions", [])
    if fns:
        out.append('<table class="objects"><thead><tr><th>function</th><th>file</th><th>verdict</th>'
                   "<th>why</th></tr></thead><tbody>")
        for f in fns:
            out.append(f'<tr data-what="{_e(f["what"])}"><th>{_e(f["function"])}</th><td>{_e(f["file"])}</td>'
                       f'<td>{_e(_WHAT.get(f["what"], f["what"]))}</td><td>{_e(f["reason"])}</td></tr>')
        out.append("</tbody></table>")
    data = obj.get("data", [])
    if data:
        out.append("<h3>Data the compiled release changes</h3><ul>" + "".join(
            f"<li><code>{_e(d['symbol'])}</code> ({_e(d['unit'])}, {_e(d['section'])}): "
            f"{_e(d['change'])}</li>"
            for d in data) + "</ul>")
    for note in obj.get("notes", []):
        out.append(f'<p class="note">note: {_e(note)}</p>')
    out.append("</section>")
    return "\n".join(out)


def _graph(rv: Review) -> str:
    edges = [e for e in rv.edges if e.later <= rv.release]
    text = (f"{len(edges)} pair(s) of releases change the same functions; hover an arc for the functions."
            if edges else "No two releases change the same function.")
    return (f'<section id="graph"><h2>Release graph</h2><p>{text}</p><div class="scroll">'
            + release_graph_svg(rv.releases, max(rv.release, rv.installed or 0), rv.release, tuple(edges),
                                rv.installed)
            + "</div></section>")


def _diffs(rv: Review) -> str:
    out = ['<section id="diffs"><h2>Function diffs (base → this release)</h2>']
    for row in rv.functions:
        d = row.diff
        if d is None:
            continue
        ch = row.change
        body = []
        if d.note:
            body.append(f'<p class="note">{_e(d.note)}</p>')
        if d.lines:
            shown = (_e(ln.text if ln.kind == "@" else ln.kind + ln.text) for ln in d.lines)
            body.append("<pre>" + "".join(f"<span{_LINE[ln.kind]}>{text}</span>"
                                          for ln, text in zip(d.lines, shown)) + "</pre>")
        if d.omitted:
            body.append(f'<p class="note">⋯ {d.omitted} more line(s) of diff not shown</p>')
        if row.compiled:
            body.append(f'<p>compiled code: {_e(_WHAT.get(row.compiled[0], row.compiled[0]))} '
                        f"({_e(row.compiled[1])})</p>")
        # the id is inside: following a link to it opens the details (the browser reveals its target)
        out.append(f'<details class="diff c-{_cls(ch.change)}"><summary><b>{_e(ch.name)}</b> '
                   f'<span class="note">{_e(ch.file)}</span> '
                   f'<span class="k-{_cls(ch.change)}">&nbsp;{_e(ch.change)}&nbsp;</span></summary>'
                   f'<div class="body" id="{row.anchor}">' + "".join(body) + "</div></details>")
    if len(out) == 1:
        out.append('<p class="note">No function to show.</p>')
    out.append("</section>")
    return "\n".join(out)


def _excerpt(x: Excerpt) -> str:
    """The lines of an excerpt, numbered by a CSS counter (a page of many hunks stays
    small): the ``<pre>`` starts it, a gap sets it to the line before the next shown."""
    lines = []
    in_header = not x.lines or not x.lines[0][1].startswith("@@")  # the file's diff header first
    for i, (num, text) in enumerate(x.lines):
        if num is None:
            after = next((n for n, _ in x.lines[i + 1:] if n is not None), 1)
            lines.append(f'<span class=g style="counter-set:ln {after - 1}">{_e(text)}</span>')
            continue
        in_header = in_header and not text.startswith("@@")
        c = "f" if in_header else "h" if text.startswith("@@") else {"+": "a", "-": "d"}.get(text[:1], "")
        if num in x.marked:
            lines.append(f'<span class="{c} m" id="p{x.release}-{num}">{_e(text)}</span>')
        else:
            lines.append(f"<span{' class=' + c if c else ''}>{_e(text)}</span>")
    first = next((n for n, _ in x.lines if n is not None), 1)
    file = f" · {_e(x.file)}" if x.file else ""
    return (f'<div class="excerpt" id="{x.anchor}"><div class="cap">{_e(x.patch)}{file}</div>'
            f'<pre class="num" style="counter-reset:ln {first - 1}">{"".join(lines)}</pre></div>')


def _patches(rv: Review) -> str:
    out = ['<section id="patches"><h2>Patches: the hunks linked to</h2>']
    by_release: dict[int, list[Excerpt]] = {}
    for x in rv.excerpts:
        by_release.setdefault(x.release, []).append(x)
    if not by_release:
        note = ("the bundle does not carry the series' patches (compile it again to have them)"
                if rv.from_bundle and not rv.carries_patches else "nothing links to a patch line")
        out.append(f'<p class="note">No hunk to show: {note}.</p>')
    for r, xs in sorted(by_release.items()):
        size = sum(len(x.lines) for x in xs)
        opened = " open" if size <= _OPEN_EXCERPT_LINES else ""
        out.append(f'<details id="release-{r}"{opened}><summary>release {r}: <code>{_e(rv.releases[r - 1])}'
                   f"</code> ({len(xs)} hunk(s))</summary>{''.join(_excerpt(x) for x in xs)}</details>")
    out.append("</section>")
    return "\n".join(out)
