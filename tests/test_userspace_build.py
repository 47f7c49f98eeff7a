"""klpcc build --binary: the patch object for one exact program, checked without the
runtime: the descriptor is read back by loading the object with ctypes (lazy binding:
the runtime's API functions it calls stay unresolved), the code by calling the new
functions with the reference slots pointed at the test's own variables."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from .helpers import klpcc, make_series

CFLAGS = ["-fpatchable-function-entry=5,0", "-falign-functions=16", "-flive-patching=inline-clone",
          "-fno-omit-frame-pointer", "-fasynchronous-unwind-tables", "-g"]

BASE = {
    "calc.c": """#include <stdio.h>
#include "calc.h"

static long hits;
static int twice_calls[4];

static int helper(int x)
{
	return x + 1;
}

int calc(int x)
{
	hits++;
	return helper(x) * 2;
}

int untouched(int x)
{
	return helper(x) - 1;
}

long calc_hits(void)
{
	return hits;
}

int twice(int x)
{
	twice_calls[x & 3]++;
	return 2 * x;
}
""",
    "calc.h": "int calc(int x);\nint untouched(int x);\nlong calc_hits(void);\nint twice(int x);\n",
    "main.c": """#include <stdio.h>
#include "calc.h"

int main(int argc, char **argv)
{
	(void)argv;
	printf("%d %d %d %ld\\n", calc(argc), untouched(argc), twice(argc), calc_hits());
	return 0;
}
""",
}


class Object(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("build_id", ctypes.c_char_p), ("library", ctypes.c_int)]


class Func(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("offset", ctypes.c_ulong), ("size", ctypes.c_ulong),
                ("new_func", ctypes.c_void_p), ("immediate", ctypes.c_int), ("why", ctypes.c_char_p),
                ("object", ctypes.c_uint)]


class Ref(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("offset", ctypes.c_ulong),
                ("slot", ctypes.POINTER(ctypes.c_void_p)), ("object", ctypes.c_uint)]


class StateDecl(ctypes.Structure):
    _fields_ = [("id", ctypes.c_ulong), ("version", ctypes.c_uint)]


class Patch(ctypes.Structure):
    _fields_ = [("abi", ctypes.c_uint), ("name", ctypes.c_char_p),
                ("objects", ctypes.POINTER(Object)), ("nobjects", ctypes.c_uint),
                ("funcs", ctypes.POINTER(Func)), ("nfuncs", ctypes.c_uint),
                ("refs", ctypes.POINTER(Ref)), ("nrefs", ctypes.c_uint),
                ("states", ctypes.POINTER(StateDecl)), ("nstates", ctypes.c_uint),
                ("pre_patch", ctypes.c_void_p), ("post_patch", ctypes.c_void_p),
                ("pre_unpatch", ctypes.c_void_p), ("post_unpatch", ctypes.c_void_p),
                ("manifest", ctypes.c_char_p)]


def _program(src: Path, out: Path) -> Path:
    subprocess.run(["cc", "-O2", *CFLAGS, "-o", str(out), str(src / "main.c"), str(src / "calc.c"),
                    "-Wl,--build-id"], check=True)
    return out


def _symbols(path: Path) -> dict[str, tuple[int, int]]:
    with open(path, "rb") as fh:
        tab = ELFFile(fh).get_section_by_name(".symtab")
        return {s.name: (s["st_value"], s["st_size"]) for s in tab.iter_symbols()
                if s["st_info"]["type"] in ("STT_FUNC", "STT_OBJECT")}


def _descriptor(so: Path) -> tuple[ctypes.CDLL, Patch]:
    lib = ctypes.CDLL(str(so), mode=os.RTLD_LAZY | os.RTLD_LOCAL)
    return lib, Patch.in_dll(lib, "klpcc_patch_descriptor")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ubuild")
    r1 = dict(BASE)
    r1["calc.c"] = BASE["calc.c"].replace("return x + 1;", "return x + 100;").replace(
        "\thits++;\n\treturn helper(x) * 2;", "\thits += 10;\n\treturn helper(x) * 2;")
    r1["calc.c"] += "\nKLPCC_STATE(7, 3);\n"
    patches, src = make_series(tmp, BASE, [r1])
    prog = _program(src, tmp / "prog")
    bundle = tmp / "bundle"
    r = klpcc("compile", str(patches), "--source", str(src), "-o", str(bundle))
    assert r.returncode == 0, r.stderr
    so = tmp / "r1.so"
    r = klpcc("build", str(bundle), "--binary", str(prog), "-o", str(so), "--format", "json")
    assert r.returncode == 0, r.stderr
    return prog, so, json.loads(r.stdout), bundle


def test_descriptor_names_the_program_functions_with_their_offsets(built):
    prog, so, doc, _ = built
    syms = _symbols(prog)
    lib, d = _descriptor(so)
    funcs = {d.funcs[i].name.decode(): d.funcs[i] for i in range(d.nfuncs)}
    # helper changed; gcc inlined it into calc (DWARF says so) and into untouched,
    # where x + 1 - 1 folded to x and left no record: the compiled code of both changed
    assert set(funcs) == {"calc", "untouched"}
    for name, f in funcs.items():
        assert (f.offset, f.size) == syms[name], name
    assert funcs["calc"].why.decode() == "modified; inlined helper"
    assert funcs["untouched"].why.decode() == "inlined `helper` changed"
    assert {x["function"] for x in doc["added_by_inlining"]} == {"calc", "untouched"}
    assert d.abi == 2 and d.nstates == 1 and (d.states[0].id, d.states[0].version) == (7, 3)
    with open(prog, "rb") as fh:
        note = next(n for s in ELFFile(fh).iter_sections() if s["sh_type"] == "SHT_NOTE"
                    for n in s.iter_notes() if n["n_type"] == "NT_GNU_BUILD_ID")
    assert d.nobjects == 1 and d.objects[0].name.decode() == prog.name
    assert d.objects[0].build_id.decode() == note["n_desc"] == doc["binary_build_id"]
    assert {f.object for f in funcs.values()} == {0} and doc["objects"][0]["kind"] == "program"
    manifest = json.loads(d.manifest.decode())
    assert manifest["schema"].startswith("klpcc.manifest/") and manifest["patch_object"]["functions"]


def test_new_code_uses_the_programs_statics_through_the_slots(built):
    _, so, _, _ = built
    lib, d = _descriptor(so)
    refs = {d.refs[i].name.decode(): d.refs[i] for i in range(d.nrefs)}
    assert "hits" in refs  # calc's static counter: the program's, not a copy
    hits = ctypes.c_long(5)
    refs["hits"].slot[0] = ctypes.cast(ctypes.pointer(hits), ctypes.c_void_p).value
    funcs = {d.funcs[i].name.decode(): d.funcs[i] for i in range(d.nfuncs)}
    calc = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(funcs["calc"].new_func)
    untouched = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(funcs["untouched"].new_func)
    assert calc(1) == 202 and hits.value == 15  # the new helper inlined, the counter is ours
    assert untouched(1) == 100


def test_patch_object_has_no_copy_of_program_data(built):
    _, so, _, _ = built
    with open(so, "rb") as fh:
        tab = ELFFile(fh).get_section_by_name(".symtab")
        objects = {s.name for s in tab.iter_symbols() if s["st_info"]["type"] == "STT_OBJECT"
                   and s["st_shndx"] != "SHN_UNDEF"}
    assert not objects & {"hits", "twice_calls"}


def test_refuses_another_program_and_bad_input(built, tmp_path):
    prog, so, _, bundle = built
    r = klpcc("build", str(bundle), "--binary", str(tmp_path / "nope"), "-o", str(tmp_path / "x.so"))
    assert r.returncode == 2 and "cannot read the program" in r.stderr and not (tmp_path / "x.so").exists()
    stripped = tmp_path / "stripped"
    subprocess.run(["strip", "-o", str(stripped), str(prog)], check=True)
    r = klpcc("build", str(bundle), "--binary", str(stripped), "-o", str(tmp_path / "x.so"))
    assert r.returncode == 2 and "symbol table" in r.stderr and not (tmp_path / "x.so").exists()
    r = klpcc("build", str(bundle), "--binary", str(prog), "-o", str(so))
    assert r.returncode == 2 and "--force" in r.stderr
    r = klpcc("build", str(bundle), "--binary", str(prog), "--kernel", "/nonexistent", "-o", str(so))
    assert r.returncode == 2 and "--binary" in r.stderr
    # the patch object never lands on the program it is for, nor in the bundle
    before = prog.read_bytes()
    for target in (prog, bundle / "manifest.json"):
        r = klpcc("build", str(bundle), "--binary", str(prog), "-o", str(target), "--force")
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert "which this run reads" in r.stderr or "inside" in r.stderr, r.stderr
    assert prog.read_bytes() == before


def test_config_flags():
    r = klpcc("config", "--cflags")
    assert r.returncode == 0 and r.stdout.split() == CFLAGS
    r = klpcc("config")
    assert r.returncode == 2


def test_refuses_a_static_used_through_a_macro(tmp_path):
    macro = "static long hits;\n#define BUMP() (hits++)\n"
    r0 = dict(BASE)
    r0["calc.c"] = BASE["calc.c"].replace("static long hits;\n", macro)
    r1 = dict(r0)
    r1["calc.c"] = r0["calc.c"].replace("\thits++;\n\treturn helper(x) * 2;",
                                        "\tBUMP();\n\treturn helper(x) * 3;")
    patches, src = make_series(tmp_path, r0, [r1])
    prog = _program(src, tmp_path / "prog")
    bundle = tmp_path / "bundle"
    assert klpcc("compile", str(patches), "--source", str(src), "-o", str(bundle)).returncode == 0
    r = klpcc("build", str(bundle), "--binary", str(prog), "-o", str(tmp_path / "x.so"))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "hits directly (through a macro?)" in r.stderr and "calc.c" in r.stderr
    assert not (tmp_path / "x.so").exists()
