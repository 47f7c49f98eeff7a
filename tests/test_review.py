"""``klpcc report``: the review page of a release, read back as HTML and checked
against what the series says (the analysis, the lint, the patch files themselves).
The same pages opened in a real browser: tests/test_review_browser.py."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from klpcc import report as analysis_report
from klpcc.api import AnalyzeOptions, analyze, lint, review, review_bundle, write_review
from klpcc.review import render
from klpcc.series import load_series

from .conftest import FIXTURES
from .helpers import klpcc, make_series

KERNEL = FIXTURES / "kernel" / "patches", FIXTURES / "kernel" / "src"
_LINE_ID = re.compile(r"#p\d+-\d+")  # a link to a line of a release's patch
_VOID = {"meta", "br", "link", "img", "input", "hr", "circle", "path"}


class Page(HTMLParser):
    """The elements of a page: every element's tag and attributes, and the text of the
    ones with an id."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.ids: dict[str, tuple[str, dict[str, str]]] = {}
        self.text: dict[str, str] = {}
        self.duplicates: list[str] = []
        self._open: list[tuple[str, str | None]] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        self.elements.append((tag, a))
        if "id" in a:
            if a["id"] in self.ids:
                self.duplicates.append(a["id"])
            self.ids[a["id"]] = (tag, a)
            self.text[a["id"]] = ""
        if tag not in _VOID:
            self._open.append((tag, a.get("id")))

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in _VOID:
            self._open.pop()

    def handle_endtag(self, tag):
        while self._open:
            t, _ = self._open.pop()
            if t == tag:
                break

    def handle_data(self, data):
        for _, ident in self._open:
            if ident is not None:
                self.text[ident] += data

    def find(self, tag: str, **attrs: str) -> list[dict[str, str]]:
        want = {k.rstrip("_").replace("_", "-"): v for k, v in attrs.items()}
        return [a for t, a in self.elements if t == tag and all(a.get(k) == v for k, v in want.items())]


def _page(rv) -> Page:
    return Page(render(rv))


def _check_self_contained(page: Page) -> None:
    """No script, no stylesheet or image fetched, every in-page link lands on an id."""
    tags = {t for t, _ in page.elements}
    assert not tags & {"script", "link", "img", "iframe", "object", "embed"}
    for tag, a in page.elements:
        for attr in ("src", "href", "action", "srcset"):
            value = a.get(attr)
            if value is None:
                continue
            assert value.startswith("#"), f"<{tag} {attr}={value!r}> leaves the page"
            assert value[1:] in page.ids, f"<{tag} {attr}={value!r}> has no target"
    assert not page.duplicates


def _patch_paths(patches: Path) -> list[str]:
    return [p.path for p in load_series([str(patches)]).patches]


def _patch_line(path: str, line: int) -> str:
    return Path(path).read_bytes().split(b"\n")[line - 1].decode()


def test_demo_report_matches_the_analysis(demo):
    patches, src = demo
    opts = AnalyzeOptions(series=[str(patches)], source=str(src))
    page = _page(review(opts))
    _check_self_contained(page)
    doc = analysis_report.analysis_json(analyze(opts))
    rows = [a for t, a in page.elements if t == "tr" and "data-key" in a]
    assert [r["data-key"] for r in rows] == [f["key"] for f in doc["functions"]]
    want = {f["key"]: f["change"] for f in doc["functions"]}
    assert {r["data-key"]: r["data-change"] for r in rows} == want
    nop = next(r for r in rows if r["data-key"] == "log_line")
    assert "c-nop" in nop["class"] and doc["nops"] == ["log_line"]
    # the cells of each row are the history, release by release
    cells = [a for t, a in page.elements if t == "td" and "data-release" in a]
    n = len(doc["releases"])
    matrix = cells[: len(rows) * n]
    for i, f in enumerate(doc["functions"]):
        assert [c["data-kind"] for c in matrix[i * n: (i + 1) * n]] == f["history"]
    assert sum("cur" in c["class"].split() for c in matrix) == len(rows)  # the current column
    # the back-out callout names the nop and links to its diff
    assert "log_line" in page.text["backout"]
    # the release graph: 0004 changes again what 0002 changed (log_line)
    arcs = page.find("path", class_="arc")
    assert {(a["data-from"], a["data-to"]) for a in arcs} >= {("2", "4")}


def test_touched_cells_link_to_the_hunk_line_of_their_release(demo):
    """Every cell of a release that changed the function links to a line of that
    release's own patch file, and the page shows that line as the file has it."""
    patches, src = demo
    page = _page(review(AnalyzeOptions(series=[str(patches)], source=str(src))))
    paths = _patch_paths(patches)
    linked = 0
    for tag, a in page.elements:
        if tag != "td" or "t" not in a.get("class", "").split():
            continue
        target = None
        # the cell's <a> follows it in document order
        idx = page.elements.index((tag, a))
        nxt = page.elements[idx + 1]
        assert nxt[0] == "a"
        target = nxt[1]["href"][1:]
        if target.startswith("fn"):
            continue  # a release whose hunk line is not known links to the function's diff
        release, line = (int(x) for x in target[1:].split("-"))
        assert release == int(a["data-release"])
        want = _patch_line(paths[release - 1], line)
        assert page.text[target] == want
        assert want[:1] in "+-@d" or want.startswith("diff")
        linked += 1
    assert linked >= 8


def test_transition_from_an_installed_release(demo):
    patches, src = demo
    opts = AnalyzeOptions(series=[str(patches)], source=str(src), release=4, installed=2)
    page = _page(review(opts))
    _check_self_contained(page)
    doc = analysis_report.analysis_json(analyze(opts))
    rows = {a["data-transition"]: a for t, a in page.elements if t == "tr" and "data-transition" in a}
    assert set(rows) == {"add", "update", "keep", "nop", "drop"}
    text = page.text["transition"]
    for keys in doc["transitions"].values():
        for key in keys:
            assert key.split(":")[-1] in text
    assert doc["transitions"]["nop"] == ["log_line"] and doc["transitions"]["drop"]


def test_kernel_findings_link_to_their_patch_lines():
    patches, src = KERNEL
    opts = AnalyzeOptions(series=[str(patches)], source=str(src))
    rv = review(opts)
    page = _page(rv)
    _check_self_contained(page)
    res = lint(opts)
    assert len(res.findings) == len(rv.findings) >= 5
    boxes = [a for t, a in page.elements if t == "div" and a.get("class", "").startswith("finding ")]
    assert sorted(b["data-rule"] for b in boxes) == sorted(f.rule.id for f in res.findings)
    for f in res.findings:
        assert f.patch is not None
        release = _patch_paths(patches).index(f.patch[0]) + 1
        target = f"p{release}-{f.patch[1]}"
        assert target in page.ids, f"{f.rule.id}: no line {target}"
        assert page.text[target] == _patch_line(f.patch[0], f.patch[1])
        assert page.find("a", href=f"#{target}", class_="patch-link")
    # grouped by severity, with the rule text and the hint
    assert "findings-error" in page.ids
    assert "Keep the struct and attach the new fields with a shadow variable" in page.text["findings"]


def test_function_diffs_are_base_against_release(demo, tmp_path):
    """Each function's diff: its '-' lines are lines of the base file, its '+' lines
    lines of the release's file (read from a bundle compiled independently)."""
    patches, src = demo
    rv = review(AnalyzeOptions(series=[str(patches)], source=str(src)))
    out = tmp_path / "bundle"
    assert klpcc("compile", str(patches), "--source", str(src), "-o", str(out)).returncode == 0
    seen = set()
    for row in rv.functions:
        d = row.diff
        base = (src / row.change.file).read_text().splitlines()
        rel_path = out / "sources" / row.change.file
        rel = rel_path.read_text().splitlines() if rel_path.exists() else base
        for ln in d.lines:
            if ln.kind == "-":
                assert ln.text in base
            elif ln.kind == "+":
                assert ln.text in rel
        kinds = {ln.kind for ln in d.lines}
        seen.add(row.change.change)
        if row.change.change == "nop":
            assert "nop" in d.note and not kinds & {"+", "-"}
        elif row.change.change == "modified":
            assert kinds & {"+", "-"}
    assert {"modified", "nop"} <= seen


def test_a_report_from_the_bundle_says_what_the_series_says(tmp_path):
    patches, src = KERNEL
    out = tmp_path / "bundle"
    assert klpcc("compile", str(patches), "--source", str(src), "-o", str(out)).returncode == 0
    from_series = review(AnalyzeOptions(series=[str(patches)], source=str(src)))
    from_bundle = review_bundle(out)
    assert from_bundle.from_bundle and not from_series.from_bundle
    for a, b in zip(from_series.functions, from_bundle.functions, strict=True):
        assert (a.change.key, a.change.history, a.change.change) == \
            (b.change.key, b.change.history, b.change.change)
        assert a.diff == b.diff or a.change.change == "nop"
    assert [(v.finding.rule, v.finding.message) for v in from_series.findings] == \
        [(v.finding.rule, v.finding.message) for v in from_bundle.findings]
    page = _page(from_bundle)
    _check_self_contained(page)
    # the patch files are where the manifest says: the findings still link to their lines
    assert page.find("a", class_="patch-link")


def test_objects_say_why_a_function_joined(tmp_path):
    """With --objects, the compiled-code verdicts show in the matrix and in their own
    section: a caller whose inlined helper changed joins the patch."""
    unit = ("static int helper(int x)\n{\n\treturn x * 2 + 1;\n}\n\n"
            "int use_helper(int y)\n{\n\treturn helper(y) + 7;\n}\n")
    patches, base = make_series(tmp_path, {"src/a.c": unit}, [{"src/a.c": unit.replace("2 + 1", "2 + 3")}])
    db = tmp_path / "compile_commands.json"
    db.write_text(json.dumps([{"directory": str(base / "src"),
                               "arguments": ["gcc", "-O2", "-c", "a.c", "-o", "a.o"], "file": "a.c"}]))
    out = tmp_path / "r.html"
    res = klpcc("report", str(patches), "--source", str(base), "--objects", str(db),
                "--cache", str(tmp_path / "cache"), "-o", str(out))
    assert res.returncode == 0, res.stderr
    page = Page(out.read_text())
    _check_self_contained(page)
    verdicts = {a["data-what"] for a in page.find("tr") if "data-what" in a}
    assert "code-only" in verdicts
    assert "inlined `helper` changed" in page.text["objects"]


def test_cli_writes_one_file_and_refuses_bad_input(demo, tmp_path):
    patches, src = demo
    out = tmp_path / "r.html"
    ok = klpcc("report", str(patches), "--source", str(src), "-o", str(out))
    assert ok.returncode == 0, ok.stderr
    assert "release 5/5" in ok.stdout and out.read_text().startswith("<!DOCTYPE html>")
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]
    bundle = tmp_path / "bundle"
    assert klpcc("compile", str(patches), "--source", str(src), "-o", str(bundle)).returncode == 0
    bad = [
        (["report", str(bundle), "--from", "2", "-o", str(tmp_path / "a.html")], "--from does not apply"),
        (["report", str(bundle), "--source", str(src), "-o", str(tmp_path / "a.html")], "--source"),
        (["report", str(patches), "--source", str(src), "-o", str(tmp_path / "no" / "a.html")],
         "its directory does not exist"),
        (["report", str(patches), "--source", str(src), "-r", "9", "-o", str(tmp_path / "a.html")],
         "unknown release '9'"),
        (["report", str(patches), "--source", str(src)], "Missing option '-o'"),
        (["report", str(tmp_path / "nothing"), "--source", str(src), "-o", str(tmp_path / "a.html")],
         "nothing"),
    ]
    for args, message in bad:
        res = klpcc(*args)
        assert res.returncode == 2, (args, res.stderr)
        assert message in res.stderr and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert not (tmp_path / "a.html").exists()


def test_a_broken_patch_leaves_no_report(tmp_path):
    patches, base = make_series(tmp_path, {"a.c": "int f(void)\n{\n\treturn 1;\n}\n"},
                                [{"a.c": "int f(void)\n{\n\treturn 2;\n}\n"}])
    p = next(patches.glob("*.patch"))
    p.write_text(p.read_text().replace("return 1;", "return 7;"))  # no longer applies
    out = tmp_path / "r.html"
    res = klpcc("report", str(patches), "--source", str(base), "-o", str(out))
    assert res.returncode == 2 and p.name in res.stderr and "Traceback" not in res.stderr
    assert not out.exists()


def test_an_empty_release_and_a_long_series(tmp_path):
    """A series of 130 releases (more columns than the page shows) and a release that
    changes nothing but a comment."""
    src = "int f(int x)\n{\n\treturn x;\n}\n"
    rels = [{"a.c": src.replace("return x;", f"return x + {i};")} for i in range(1, 130)]
    rels.append({"a.c": "/* just a comment */\n" + src.replace("return x;", "return x + 129;")})
    patches, base = make_series(tmp_path, {"a.c": src}, rels)
    rv = review(AnalyzeOptions(series=[str(patches)], source=str(base)))
    page = _page(rv)
    _check_self_contained(page)
    cells = [a for t, a in page.elements if t == "td" and "data-release" in a]
    assert [int(c["data-release"]) for c in cells][:2] == [31, 32] and len(cells) == 100
    assert "Releases 1..30 are not shown" in page.text["matrix"]
    assert len(page.find("path", class_="arc")) == 128  # each release changes f again
    write_review(rv, tmp_path / "r.html")
    assert (tmp_path / "r.html").stat().st_size < 200_000


def test_undecodable_bytes_and_markup_in_sources_are_escaped(tmp_path):
    """Source text is data: a string holding markup, and bytes that are not UTF-8."""
    src = "int f(void)\n{\n\treturn puts(\"</pre><script>x</script>\");\n}\n"
    patches, base = make_series(tmp_path, {"a.c": src},
                                [{"a.c": src.replace("x</script>", "y\udcff</script>")}])
    out = tmp_path / "r.html"
    res = klpcc("report", str(patches), "--source", str(base), "-o", str(out))
    assert res.returncode == 0, res.stderr
    text = out.read_text(encoding="utf-8")
    assert "<script>" not in text and "&lt;script&gt;y\ufffd&lt;/script&gt;" in text
    _check_self_contained(Page(text))


@pytest.mark.parametrize("release", [1, 3])
def test_earlier_releases(demo, release):
    patches, src = demo
    rv = review(AnalyzeOptions(series=[str(patches)], source=str(src), release=release))
    page = _page(rv)
    _check_self_contained(page)
    heads = [a for t, a in page.elements if t == "th" and "rel" in a.get("class", "").split()
             and "data-release" in a]
    assert [int(h["data-release"]) for h in heads] == list(range(1, release + 1))


def test_a_bundle_carries_its_patches(tmp_path):
    """The series' patch files change or go away after compile: the bundle's page
    still quotes and links the lines as they were (the bundle carries the patches);
    a bundle whose copy was altered is refused; one written without the patches links
    to the functions' diffs and says why there are no hunks."""
    import shutil

    patches, src = KERNEL
    moved = shutil.copytree(patches, tmp_path / "patches")
    original = {p.name: p.read_bytes() for p in moved.iterdir()}
    out = tmp_path / "bundle"
    assert klpcc("compile", str(moved), "--source", str(src), "-o", str(out)).returncode == 0
    shutil.rmtree(moved)
    rv = review_bundle(out)
    page = _page(rv)
    _check_self_contained(page)
    quoted = 0
    for v in rv.findings:
        f = v.finding
        assert v.link == f"p{_patch_index(f.patch)}-{f.patch_line}"
        want = original[Path(f.patch).name].split(b"\n")[f.patch_line - 1].decode()
        assert page.text[v.link] == want == v.patch_text
        quoted += 1
    assert quoted == 5
    # a copy altered after compile
    manifest = json.loads((out / "manifest.json").read_text())
    copy = out / manifest["patches"][5]["file"]
    copy.write_bytes(copy.read_bytes().replace(b"removals", b"remuvals"))
    res = klpcc("report", str(out), "-o", str(tmp_path / "r.html"))
    assert res.returncode == 2 and "does not match the manifest's sha256" in res.stderr
    assert manifest["patches"][5]["file"] in res.stderr and not (tmp_path / "r.html").exists()
    # a bundle without its patches (made before the bundle carried them)
    del manifest["patches"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    rv = review_bundle(out)
    page = _page(rv)
    _check_self_contained(page)
    assert not rv.excerpts
    assert "the bundle does not carry the series' patches" in page.text["patches"]
    assert not [a for t, a in page.elements if t == "a" and _LINE_ID.fullmatch(a.get("href", ""))]
    assert len(page.find("a", class_="function-link")) == sum(1 for v in rv.findings if v.finding.function)


def _patch_index(path: str) -> int:
    return int(Path(path).name[:4])


def test_a_git_range(tmp_path):
    """Releases from a git range: each cell of a commit that changed the function
    leads to a line of that commit's own diff."""
    import subprocess

    repo = tmp_path / "repo"
    repo.mkdir()

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), "-c", "user.name=T", "-c", "user.email=t@e",
                               "-c", "commit.gpgsign=false", *args], check=True, capture_output=True,
                              text=True).stdout

    src = "int f(int x)\n{\n\treturn x;\n}\n\nint g(int x)\n{\n\treturn -x;\n}\n"
    git("init", "-q", "-b", "main")
    (repo / "a.c").write_text(src)
    git("add", "-A")
    git("commit", "-qm", "base")
    git("tag", "v1")
    for subject, text in (("fix f", src.replace("return x;", "return x + 1;")),
                          ("fix g", src.replace("return x;", "return x + 1;").replace("-x", "-x - 1")),
                          ("revert f", src.replace("-x", "-x - 1"))):
        (repo / "a.c").write_text(text)
        git("commit", "-qam", subject)
    out = tmp_path / "r.html"
    res = klpcc("report", "--git", str(repo), "v1..main", "-o", str(out))
    assert res.returncode == 0, res.stderr
    page = Page(out.read_text())
    _check_self_contained(page)
    rows = {a["data-key"]: a["data-change"] for t, a in page.elements if t == "tr" and "data-key" in a}
    assert rows == {"f": "nop", "g": "modified"}
    commits = git("rev-list", "--reverse", "v1..main").split()
    targets = [a["href"][1:] for t, a in page.elements if t == "a" and _LINE_ID.fullmatch(a.get("href", ""))]
    assert len(targets) == 3  # f in commits 1 and 3, g in commit 2
    for target in targets:
        release, _ = (int(x) for x in target[1:].split("-"))
        shown = git("show", "--format=", commits[release - 1]).splitlines()
        assert page.text[target] in shown and page.text[target][:1] in "+-"


def test_a_hand_made_manifest_cannot_put_markup_in_the_page(tmp_path):
    patches, src = KERNEL
    out = tmp_path / "bundle"
    assert klpcc("compile", str(patches), "--source", str(src), "-o", str(out)).returncode == 0
    m = json.loads((out / "manifest.json").read_text())
    evil = 'x"><script>document.title="INJECTED"</script><b class="'
    m["functions"][0]["change"] = evil
    m["functions"][0]["history"][-1] = evil
    m["lint"]["findings"][0]["severity"] = evil
    (out / "manifest.json").write_text(json.dumps(m))
    page_file = tmp_path / "r.html"
    res = klpcc("report", str(out), "-o", str(page_file))
    assert res.returncode == 0, res.stderr
    text = page_file.read_text()
    assert "<script" not in text and "&lt;script&gt;" in text
    _check_self_contained(Page(text))
    # a release index that is not one of the releases is a malformed manifest
    m["release"]["index"] = 99
    (out / "manifest.json").write_text(json.dumps(m))
    res = klpcc("report", str(out), "-o", str(tmp_path / "s.html"))
    assert res.returncode == 2 and "malformed manifest: manifest.release" in res.stderr
    assert not (tmp_path / "s.html").exists()


def test_a_function_moved_to_another_file_diffs_against_its_old_place(tmp_path):
    a = "int f(int x)\n{\n\treturn x;\n}\n\nint g(int y)\n{\n\treturn y;\n}\n"
    b = "/* b.c: unrelated */\nstatic int zz;\nint m(void)\n{\n\treturn zz;\n}\n"
    patches, base = make_series(tmp_path, {"a.c": a, "b.c": b},
                                [{"a.c": a.split("\n\nint g")[0] + "\n",
                                  "b.c": b + "\nint g(int y)\n{\n\treturn y + 1;\n}\n"}])
    out = tmp_path / "bundle"
    assert klpcc("compile", str(patches), "--source", str(base), "-o", str(out)).returncode == 0
    for rv in (review(AnalyzeOptions(series=[str(patches)], source=str(base))), review_bundle(out)):
        row = next(r for r in rv.functions if r.change.name == "g")
        changed = [(ln.kind, ln.text) for ln in row.diff.lines if ln.kind in "+-"]
        assert changed == [("-", "\treturn y;"), ("+", "\treturn y + 1;")], rv.origin


def test_special_output_files_are_written_not_replaced(demo, tmp_path):
    """-o /dev/stdout or a pipe: written into, never renamed over."""
    import os
    import stat
    import threading

    patches, src = demo
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    res = klpcc("report", str(patches), "--source", str(src), "-o", str(fifo))
    reader.join(30)
    assert res.returncode == 0, res.stderr
    assert stat.S_ISFIFO(fifo.stat().st_mode) and got and got[0].startswith(b"<!DOCTYPE html>")


def test_option_mistakes(demo, tmp_path):
    patches, src = demo
    bundle = tmp_path / "bundle"
    assert klpcc("compile", str(patches), "--source", str(src), "-o", str(bundle)).returncode == 0
    for args, message in (
            (["report", str(bundle), "--jobs", "2", "-o", str(tmp_path / "a.html")], "--jobs does not apply"),
            (["report", str(patches), "--source", str(src), "--no-lint", "--config", "x.toml",
              "-o", str(tmp_path / "a.html")], "--config is for the lint"),
            (["report", str(patches), "--source", str(src), "-o", ""], "-o needs a file name")):
        res = klpcc(*args)
        assert res.returncode == 2 and message in res.stderr, (args, res.stderr)
    ok = klpcc("report", str(patches), "--source", str(src), "--no-lint", "-o", str(tmp_path / "b.html"))
    assert ok.returncode == 0 and "not linted" in ok.stdout
    assert "Not linted." in Page((tmp_path / "b.html").read_text()).text["findings"]


def test_a_downgrade_says_what_goes_back(demo):
    patches, src = demo
    rv = review(AnalyzeOptions(series=[str(patches)], source=str(src), release=3, installed=5))
    page = _page(rv)
    _check_self_contained(page)
    back = sorted(r.change.name for r in rv.functions if r.change.transition in ("nop", "drop"))
    assert back and "Replacing release 5" in page.text["backout"]
    assert all(name in page.text["backout"].split("Replacing release 5")[1] for name in back)
    nodes = [a for t, a in page.elements if t == "g" and "data-release" in a]
    assert [int(a["data-release"]) for a in nodes] == [1, 2, 3, 4, 5]


def test_a_report_from_a_directory_that_is_gone(demo, tmp_path):
    import subprocess
    import sys

    patches, src = demo
    gone = tmp_path / "gone"
    gone.mkdir()
    out = tmp_path / "r.html"
    script = f'cd "{gone}" && rmdir "{gone}" && exec "$0" -m klpcc report "$1" --source "$2" -o "$3"'
    res = subprocess.run(["sh", "-c", script, sys.executable, str(patches), str(src), str(out)],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert out.read_text().startswith("<!DOCTYPE html>")
