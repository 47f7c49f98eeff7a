"""Exact struct layouts from the compiler, where a compile_commands.json gives the
build flags: what the text comparison calls different but compiles the same is not
reported, and a real layout change is reported with what changed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from .helpers import klpcc, make_series

API = """#ifndef SHADOW_API_H
#define SHADOW_API_H
#include <stddef.h>
void *klpcc_shadow_alloc(void *obj, unsigned long id, size_t size, void *ctor, void *data);
void *klpcc_shadow_get(void *obj, unsigned long id);
void klpcc_shadow_free(void *obj, unsigned long id, void *dtor);
#endif
"""

BASE = {
    "src/sess.h": """#ifndef SESS_H
#define SESS_H
#include <stdint.h>
#define NAME_MAX_LEN 16

struct sess {
\tint id;
\tchar name[NAME_MAX_LEN];
};

int sess_touch(struct sess *s);
int sess_id(const struct sess *s);
#endif
""",
    "src/sess.c": """#include "sess.h"

int sess_touch(struct sess *s)
{
\treturn s->id;
}

int sess_id(const struct sess *s)
{
\treturn s->id + 0;
}
""",
}


def _release(extra_struct: str, sess_struct: str | None = None) -> dict[str, str]:
    files = {
        "src/shadow_api.h": API,
        "src/sess.c": f"""#include "sess.h"
#include "shadow_api.h"

#define SESS_EXTRA 7

{extra_struct}

int sess_touch(struct sess *s)
{{
\tstruct sess_extra *e = klpcc_shadow_get(s, SESS_EXTRA);

\tif (!e)
\t\te = klpcc_shadow_alloc(s, SESS_EXTRA, sizeof(struct sess_extra), NULL, NULL);
\treturn e ? s->id + 1 : s->id;
}}

int sess_id(const struct sess *s)
{{
\treturn s->id + 0;
}}
""",
    }
    if sess_struct is not None:
        files["src/sess.h"] = BASE["src/sess.h"].replace(
            "struct sess {\n\tint id;\n\tchar name[NAME_MAX_LEN];\n};", sess_struct)
    return files


def _series(tmp: Path, releases: list[dict[str, str]]) -> tuple[Path, Path, Path]:
    patches, base = make_series(tmp, BASE, releases)
    db = tmp / "compile_commands.json"
    db.write_text(json.dumps([{
        "directory": str(base / "src"),
        "arguments": ["gcc", "-O2", "-Wall", "-std=gnu11", "-c", "sess.c", "-o", "sess.o"],
        "file": "sess.c",
    }]))
    return patches, base, db


def _lint(patches: Path, base: Path, *extra: str) -> dict:
    r = klpcc("lint", str(patches), "--source", str(base), "--format", "json", *extra)
    assert r.returncode in (0, 1), r.stderr
    return json.loads(r.stdout)


def _rules(doc: dict) -> list[str]:
    return [f["rule"] for f in doc["findings"]]


def test_same_layout_written_differently_is_not_a_mismatch(tmp_path):
    patches, base, db = _series(tmp_path, [
        _release("struct sess_extra {\n\tlong hits;\n\tint flags;\n};"),
        _release("typedef long counter_t;\n\nstruct sess_extra {\n\tcounter_t hits; /* counted per call */\n"
                 "\tint32_t flags;\n};"),
    ])
    by_text = _lint(patches, base)
    assert _rules(by_text) == ["H001"]  # the text cannot see through the typedef
    exact = _lint(patches, base, "--compile-commands", str(db))
    assert _rules(exact) == [], exact["findings"]
    uses = exact["facts"]["0002-release-2"]["shadow"]
    assert uses and all(u["layout"] == "size 16, align 8, hits@0:8, flags@8:4" for u in uses)
    assert exact["layout_notes"] == []


def test_a_real_layout_change_is_reported_with_the_layouts(tmp_path):
    patches, base, db = _series(tmp_path, [
        _release("struct sess_extra {\n\tlong hits;\n\tint flags;\n};"),
        _release("struct sess_extra {\n\tint flags;\n\tlong hits;\n};"),  # members swapped
    ])
    doc = _lint(patches, base, "--compile-commands", str(db))
    assert _rules(doc) == ["H001"]
    msg = doc["findings"][0]["message"]
    assert "hits@0:8, flags@8:4" in msg and "flags@0:4, hits@8:8" in msg


def test_struct_of_the_program_typed_differently_but_laid_out_the_same(tmp_path):
    same = "typedef int sess_id_t;\n\nstruct sess {\n\tsess_id_t id;\n\tchar name[16];\n};"
    grown = "struct sess {\n\tint id;\n\tchar name[32];\n};"
    patches, base, db = _series(tmp_path, [_release("struct sess_extra { long hits; };", same)])
    assert "U001" in _rules(_lint(patches, base))
    assert "U001" not in _rules(_lint(patches, base, "--compile-commands", str(db)))
    patches, base, db = _series(tmp_path / "b", [_release("struct sess_extra { long hits; };", grown)])
    doc = _lint(patches, base, "--compile-commands", str(db))
    u001 = [f for f in doc["findings"] if f["rule"] == "U001"]
    assert len(u001) == 1 and "size 20 -> 36 bytes" in u001[0]["message"]
    assert "sess_id (src/sess.c)" in u001[0]["message"]  # unpatched code that uses it


def test_fallback_to_text_is_said(tmp_path):
    patches, base, db = _series(tmp_path, [
        _release("struct sess_extra {\n\tlong hits;\n\tint flags;\n};"),
        _release("typedef long counter_t;\n\nstruct sess_extra {\n\tcounter_t hits;\n\tint32_t flags;\n};"),
    ])
    db.write_text(json.dumps([{
        "directory": str(base / "src"),
        "arguments": ["gcc", "-DBROKEN=", "-include", "no-such-header.h", "-c", "sess.c"],
        "file": "sess.c",
    }]))
    doc = _lint(patches, base, "--compile-commands", str(db))
    assert _rules(doc) == ["H001"]  # as by text
    assert doc["layout_notes"] and "sess.c" in doc["layout_notes"][0]


@pytest.mark.parametrize("content, message", [
    ("{not json", "is not a JSON compilation database"),
    ('{"directory": "x"}', "expected a list of entries"),
    ('[{"directory": "x"}]', "entry 1 needs 'directory' and 'file' strings"),
    ('[{"directory": "x", "file": "a.c"}]', "entry 1 needs 'arguments' or 'command'"),
])
def test_bad_compilation_database(tmp_path, content, message):
    patches, base, db = _series(tmp_path, [_release("struct sess_extra { long hits; };")])
    db.write_text(content)
    r = klpcc("lint", str(patches), "--source", str(base), "--compile-commands", str(db))
    assert r.returncode == 2
    assert r.stderr.startswith("klpcc: error: ") and str(db) in r.stderr and message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def _header_series(tmp: Path, old_struct: str, new_struct: str, include_args: list[str]):
    """A unit in src/ including a header from src/include/, whose struct a release changes."""
    header = "#ifndef REC_H\n#define REC_H\n{}\nint rec_sum(struct rec *r);\n#endif\n"
    unit = '#include "rec.h"\n\nint rec_sum(struct rec *r)\n{\n\treturn r->a + r->b;\n}\n'
    patches, base = make_series(tmp, {"src/include/rec.h": header.format(old_struct), "src/rec.c": unit},
                                [{"src/include/rec.h": header.format(new_struct)}])
    db = tmp / "compile_commands.json"
    db.write_text(json.dumps([{"directory": str(base / "src"),
                               "arguments": ["gcc", *include_args, "-c", "rec.c"], "file": "rec.c"}]))
    return patches, base, db


@pytest.mark.parametrize("include_args", [["-I", "include"], ["-Iinclude"], ["-iquote", "include"]])
def test_headers_are_taken_from_the_release_whatever_the_include_flag(tmp_path, include_args):
    patches, base, db = _header_series(tmp_path, "struct rec { int a; long b; };",
                                       "struct rec { long b; int a; };", include_args)
    doc = _lint(patches, base, "--compile-commands", str(db))
    u001 = [f for f in doc["findings"] if f["rule"] == "U001"]
    assert len(u001) == 1, doc
    assert "moved or resized" in u001[0]["message"] and "rec_sum (src/rec.c)" in u001[0]["message"]
    assert doc["layout_notes"] == []


def test_members_of_nested_structs_are_compared(tmp_path):
    old = "struct rec { int a; long b; struct { int x; long y; } p; };"
    new = "struct rec { int a; long b; struct { long y; int x; } p; };"
    patches, base, db = _header_series(tmp_path, old, new, ["-Iinclude"])
    doc = _lint(patches, base, "--compile-commands", str(db))
    messages = [f["message"] for f in doc["findings"] if f["rule"] == "U001"]
    moved = re.compile(r"member p\.[xy] moved or resized")
    assert any("struct rec" in m and moved.search(m) for m in messages), messages


def test_a_missing_compiler_falls_back_to_text(tmp_path):
    patches, base, db = _header_series(tmp_path, "struct rec { int a; long b; };",
                                       "struct rec { int a; long b; int c; };", ["-Iinclude"])
    db.write_text(db.read_text().replace('"gcc"', '"/nonexistent/cc"'))
    doc = _lint(patches, base, "--compile-commands", str(db))
    assert [f["rule"] for f in doc["findings"]] == ["U001"]  # by text
    assert doc["layout_notes"] and "cannot run the compile command" in doc["layout_notes"][0]
