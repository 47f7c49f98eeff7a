"""The JSON Schemas of docs/schemas/ (draft 2020-12), one per JSON output format,
checked against what klpcc really writes.

Every output comes from the command line run on the bundled fixtures (the demo, the
lint series, the live demo's service) or on small series written here for what those
do not show (an object-level report with data and DWARF findings, klpcc.toml facts, a
git range, a kernel module with states, callbacks, nops, copies and sympos).  The
runtime's answers come from the live demo's service while it runs
(test_userspace_cli's ``running`` fixture).  Each output must validate; the same output
with a key dropped or renamed or a value of the wrong type must not; and the outputs
must show every optional section non-empty, so that the schemas are tried on each.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from . import test_userspace_cli, test_userspace_library
from .helpers import LINT_RULES, klpcc, make_series, write_tree

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = ROOT / "docs" / "schemas"
DEMO = ROOT / "fixtures" / "demo"
LINT = ROOT / "fixtures" / "lint"
SESSIOND = LINT / "userspace-sessiond"
ID_BASE = "https://klpcc.invalid/schemas/"

# schema file (docs/schemas/NAME.schema.json) -> the "schema" id of its documents
# (the runtime's answers carry none)
FORMATS = {
    "analysis": "klpcc.analysis/1",
    "lint": "klpcc.lint/1",
    "manifest": "klpcc.manifest/2",
    "kernel-build": "klpcc.kernel-build/1",
    "patch-object": "klpcc.patch-object/1",
    "runtime-answer": None,
    "processes": "klpcc.processes/1",
    "install": "klpcc.install/1",
    "inspect": "klpcc.inspect/1",
}

# the live demo's service running, and patch objects for it and for another build of it
running = test_userspace_cli.running
# a library, programs using it, patch objects for it
built = test_userspace_library.built


# =========================================================================== the schemas


@functools.cache
def schemas() -> dict[str, dict]:
    return {p.name.removesuffix(".schema.json"): json.loads(p.read_text())
            for p in sorted(SCHEMAS.glob("*.schema.json"))}


@functools.cache
def registry() -> Registry:
    return Registry().with_resources((s["$id"], DRAFT202012.create_resource(s)) for s in schemas().values())


@functools.cache
def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(schemas()[name], registry=registry())


def errors(name: str, doc: object) -> list[str]:
    """What the schema finds wrong in ``doc``, with what each alternative of a oneOf
    found (its context)."""
    out = []
    todo = list(validator(name).iter_errors(doc))
    while todo:
        e = todo.pop(0)
        out.append(f"/{'/'.join(map(str, e.absolute_path))}: {e.message}")
        todo.extend(e.context or ())
    return out


def _refs(node: object):
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_every_schema_is_a_valid_draft_2020_12_schema():
    assert set(schemas()) == set(FORMATS)
    for name, schema in schemas().items():
        Draft202012Validator.check_schema(schema)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$id"] == f"{ID_BASE}{name}.schema.json"
        assert schema["title"] and schema["description"]
        if FORMATS[name] is not None:
            assert schema["properties"]["schema"] == {"const": FORMATS[name]}
            assert schema["title"] == FORMATS[name]
        resolver = registry().resolver(base_uri=schema["$id"])
        for ref in _refs(schema):
            resolver.lookup(ref)  # raises when it leads nowhere


def test_the_lint_schema_admits_every_documented_rule():
    finding = schemas()["lint"]["$defs"]["finding"]["properties"]
    for rule, (name, severity) in LINT_RULES.items():
        assert Draft202012Validator(finding["rule"]).is_valid(rule), rule
        assert Draft202012Validator(finding["name"]).is_valid(name), name
        assert severity in schemas()["lint"]["$defs"]["severity"]["enum"]


# =========================================================================== real outputs


def run_json(*args: str | Path, codes: tuple[int, ...] = (0,)) -> dict:
    """The JSON document a klpcc command prints."""
    proc = klpcc(*map(str, args))
    assert proc.returncode in codes, (args, proc.returncode, proc.stdout, proc.stderr)
    return json.loads(proc.stdout)


def compiled(*args: str | Path, out: Path) -> dict:
    """The manifest of the bundle ``klpcc compile ARGS -o OUT`` writes."""
    proc = klpcc("compile", *map(str, args), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    return json.loads((out / "manifest.json").read_text())


SHOP = """static long rebate(long n)
{
\treturn n > 9 ? n / 10 : 0;
}

long checkout(long n)
{
\treturn n - rebate(n);
}

long ticket(void)
{
\tstatic long next = 100;
\treturn next++;
}
"""


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> dict[str, Path]:
    """A one-release series for the object-level check: the changed ``rebate`` is
    inlined into ``checkout``, the static local of ``ticket`` gets a new initial value;
    its compilation database, a binary of the base built with -g, and a klpcc.toml."""
    tmp = tmp_path_factory.mktemp("shop")
    release = SHOP.replace("n / 10", "n / 8").replace("next = 100", "next = 500")
    patches, base = make_series(tmp, {"src/shop.c": SHOP}, [{"src/shop.c": release}])
    db = tmp / "compile_commands.json"
    db.write_text(json.dumps([{"directory": str(base / "src"), "arguments": ["gcc", "-O2", "-c", "shop.c"],
                               "file": "shop.c"}]))
    main = tmp / "main.c"
    main.write_text("long checkout(long);\nlong ticket(void);\n"
                    "int main(void) { return checkout(12) + ticket(); }\n")
    prog = tmp / "shop"
    subprocess.run(["gcc", "-O2", "-g", str(base / "src" / "shop.c"), str(main), "-o", str(prog)], check=True)
    config = tmp / "klpcc.toml"
    config.write_text('[releases."1"]\nstates = [{ id = 3, version = 1 }]\n'
                      'callbacks = { post_patch = "shop_adopt" }\n'
                      'shadow = [{ id = "SHOP_EXTRA", type = "struct shop_extra", dtor = "shop_free" }]\n')
    return {"patches": patches, "base": base, "db": db, "prog": prog, "config": config, "tmp": tmp}


def _commit(repo: Path, message: str) -> None:
    """Commit the work tree of ``repo`` (made a repository by its first commit)."""
    env = dict(os.environ, GIT_AUTHOR_NAME="T", GIT_AUTHOR_EMAIL="t@example.com", GIT_COMMITTER_NAME="T",
               GIT_COMMITTER_EMAIL="t@example.com")
    script = '[ -d .git ] || git init -q -b main; git add -A; git -c commit.gpgsign=false commit -qm "$1"'
    subprocess.run(["sh", "-ec", script, "sh", message], cwd=repo, env=env, check=True, capture_output=True)


@pytest.fixture(scope="module")
def git_range(tmp_path_factory) -> Path:
    """A repository whose second commit changes a function, deletes a file and adds one:
    the series HEAD~1..main."""
    repo = write_tree(tmp_path_factory.mktemp("git") / "repo", {
        "calc.c": "int add(int a, int b)\n{\n\treturn a + b;\n}\n",
        "old.c": "int old(void)\n{\n\treturn 1;\n}\n"})
    _commit(repo, "base")
    (repo / "calc.c").write_text("long add(long a, long b)\n{\n\treturn a + b;\n}\n")
    (repo / "old.c").unlink()
    (repo / "new.c").write_text("int new(void)\n{\n\treturn 2;\n}\n")
    _commit(repo, "calc: widen add, old.c becomes new.c")
    return repo


@pytest.fixture(scope="module")
def analysis_outputs(shop, git_range) -> dict[str, dict]:
    demo = [DEMO / "patches", "--source", DEMO / "src", "--format", "json"]
    return {
        "demo": run_json("analyze", *demo),
        "upgrade": run_json("analyze", *demo, "-r", "4", "--from", "2"),
        "downgrade": run_json("analyze", *demo, "-r", "1", "--from", "5"),
        "git": run_json("analyze", "--git", git_range, "HEAD~1..main", "--format", "json"),
        "objects": run_json("analyze", shop["patches"], "--source", shop["base"], "--objects", shop["db"],
                            "--no-cache", "--binary", shop["prog"], "--format", "json"),
    }


def _sessiond_commands(tmp: Path, include: bool) -> Path:
    """A compilation database for userspace-sessiond (without the runtime's headers, its
    unit does not preprocess)."""
    db = tmp / f"compile_commands-{include}.json"
    args = ["gcc", "-O2", *([f"-I{ROOT / 'runtime' / 'userspace'}"] if include else []), "-c", "session.c"]
    db.write_text(json.dumps([{"directory": str(SESSIOND / "src" / "src"), "arguments": args,
                               "file": "session.c"}]))
    return db


@pytest.fixture(scope="module")
def lint_outputs(shop, tmp_path_factory) -> dict[str, dict]:
    tmp = tmp_path_factory.mktemp("lint")
    docs = {}
    for series in ("states-takeover", "callbacks-replace", "shadow-lifecycle", "userspace-sessiond"):
        docs[series] = run_json("lint", LINT / series / "patches", "--source", LINT / series / "src",
                                "--format", "json", codes=(0, 1))
    sessiond = [SESSIOND / "patches", "--source", SESSIOND / "src", "--format", "json"]
    docs["layouts"] = run_json("lint", *sessiond, "--compile-commands", _sessiond_commands(tmp, True),
                               codes=(0, 1))
    docs["layout-notes"] = run_json("lint", *sessiond, "--compile-commands", _sessiond_commands(tmp, False),
                                    codes=(0, 1))
    shadow = LINT / "shadow-lifecycle"
    docs["downgrade"] = run_json("lint", shadow / "patches", "--source", shadow / "src", "-r", "1",
                                 "--from", "3", "--format", "json", codes=(0, 1))
    docs["config-objects"] = run_json("lint", shop["patches"], "--source", shop["base"],
                                      "--config", shop["config"], "--objects", shop["db"], "--no-cache",
                                      "--format", "json", codes=(0, 1))
    return docs


KDEMO = "drivers/demo/demo.c"
KDEMO_C = """#include <linux/module.h>
#include <linux/seq_file.h>

static int demo_hits;
DEFINE_SHOW_ATTRIBUTE(demo_stats);

static int demo_count(void)
{
\treturn demo_hits;
}

int demo_value(int x)
{
\treturn x + demo_count();
}

static int demo_twice(int x)
{
\treturn 2 * x;
}

int demo_show(int x)
{
\treturn demo_twice(x) + 1;
}
"""
KDEMO_CALLBACKS = """
static int demo_pre(struct klp_object *obj)
{
\tpr_info("demo: patching\\n");
\treturn 0;
}

KLPCC_STATE(42, 2);
KLPCC_PRE_PATCH(demo_pre);
"""


@pytest.fixture(scope="module")
def kernel_bundle(tmp_path_factory) -> tuple[Path, dict]:
    """The bundle of a two-release kernel series: release 1 changes demo_value,
    demo_twice and demo_show; release 2 takes demo_twice back (a nop) and declares a
    state and a pre_patch callback; and a kallsyms where demo_show is defined twice and
    the statics demo_count and demo_twice were inlined away."""
    tmp = tmp_path_factory.mktemp("kernel")
    r1 = (KDEMO_C.replace("return x + demo_count();", "return x + demo_count() + 1;")
          .replace("return 2 * x;", "return 3 * x;").replace("demo_twice(x) + 1", "demo_twice(x) + 2"))
    r2 = r1.replace("return 3 * x;", "return 2 * x;") + KDEMO_CALLBACKS
    patches, src = make_series(tmp, {KDEMO: KDEMO_C}, [{KDEMO: r1}, {KDEMO: r2}])
    kallsyms = tmp / "kallsyms"
    kallsyms.write_text("ffffffff81000000 T _stext\nffffffff81001000 T demo_value\n"
                        "ffffffff81002000 t demo_show\nffffffff81003000 t demo_show\n")
    bundle = tmp / "bundle"
    manifest = compiled(patches, "--source", src, out=bundle)
    return bundle, {"manifest": manifest, "kallsyms": kallsyms, "tmp": tmp}


@pytest.fixture(scope="module")
def kernel_outputs(kernel_bundle) -> dict[str, dict]:
    bundle, made = kernel_bundle
    out = made["tmp"] / "module"
    docs = {"kallsyms": run_json("build", bundle, "--source-only", "-o", out, "--kallsyms", made["kallsyms"],
                                 "--sympos", f"{KDEMO}:demo_show=2", "--format", "json")}
    docs["build.json"] = json.loads((out / "build.json").read_text())
    docs["module-object"] = run_json("build", bundle, "--source-only", "-o", made["tmp"] / "other",
                                     "--object", "drivers/demo=demo", "--no-replace", "--name", "demo_fix",
                                     "--format", "json")
    for series in ("callbacks-replace", "shadow-lifecycle"):
        lint_bundle = made["tmp"] / f"{series}-bundle"
        compiled(LINT / series / "patches", "--source", LINT / series / "src", out=lint_bundle)
        docs[series] = run_json("build", lint_bundle, "--source-only", "-o", made["tmp"] / f"{series}-module",
                                "--format", "json")
    return docs


@pytest.fixture(scope="module")
def manifest_outputs(shop, git_range, kernel_bundle, tmp_path_factory) -> dict[str, dict]:
    tmp = tmp_path_factory.mktemp("manifest")
    return {
        "demo": compiled(DEMO / "patches", "--source", DEMO / "src", out=tmp / "demo"),
        "sessiond": compiled(SESSIOND / "patches", "--source", SESSIOND / "src", out=tmp / "sessiond"),
        "git": compiled("--git", git_range, "HEAD~1..main", out=tmp / "git"),
        "objects-config": compiled(shop["patches"], "--source", shop["base"], "--objects", shop["db"],
                                   "--no-cache", "--config", shop["config"], out=tmp / "objects"),
        "kernel": kernel_bundle[1]["manifest"],
    }


@pytest.fixture(scope="module")
def live(running, tmp_path_factory) -> dict[str, dict]:
    """Patch objects of releases 2 and 4 of the live demo for the running service, and
    the runtime's answers to a sequence of requests: status of the unpatched program,
    the patch for another build refused, release 2 applied, replaced by release 4 (a
    nop, callbacks), disabled, and a disable with nothing installed."""
    pid, good, foreign, _ = running
    tmp = tmp_path_factory.mktemp("live")
    service = Path(os.readlink(f"/proc/{pid}/exe"))
    objects = {}
    for release in ("2", "4"):
        bundle = tmp / f"b{release}"
        compiled(test_userspace_cli.SERIES, "--source", test_userspace_cli.SRC, "-r", release, out=bundle)
        objects[f"r{release}"] = run_json("build", bundle, "--binary", service, "-o", tmp / f"r{release}.so",
                                          "--format", "json")
    target = ["--pid", str(pid), "--format", "json"]
    answers = {
        "status-unpatched": run_json("status", *target),
        "apply-another-build": run_json("apply", foreign, *target, codes=(1,)),
        "apply": run_json("apply", good, *target),
        "status": run_json("status", *target),
        "apply-replace": run_json("apply", tmp / "r4.so", *target),
        "status-replaced": run_json("status", *target),
        "disable": run_json("disable", *target),
        "disable-nothing": run_json("disable", *target, codes=(1,)),
    }
    return {"patch-object": objects, "runtime-answer": answers}


@pytest.fixture(scope="module")
def library_outputs(built, tmp_path_factory) -> dict[str, dict[str, dict]]:
    """Many processes at once (a library build mapped with and without the runtime, and
    another build of it) and a store: what apply --all-mapping, status --all, disable
    of several processes, install and uninstall print."""
    lib = built.lib
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KLPCC_STATE_DIR", str(tmp_path_factory.mktemp("store")))
        procs = [test_userspace_library.Proc([str(exe)]) for exe in (built.taxd, built.plain, built.other)]
        try:
            for p in (procs[0], procs[2]):
                test_userspace_library.wait_listening(p.pid)
            older = tmp_path_factory.mktemp("older") / "r1-both.so"
            run_json("build", built.tmp / "b1", "--binary", built.taxd, "--library", lib, "-o", older,
                     "--format", "json")
            install = {"install": run_json("install", built.r1, "--format", "json"),
                       "install-program": run_json("install", built.r2, "--format", "json"),
                       "install-replace": run_json("install", older, "--force", "--format", "json")}
            fleet = {"all-mapping": run_json("apply", built.r1, "--all-mapping", lib, "--format", "json"),
                     "status-all": run_json("status", "--all", "--format", "json"),
                     "disable-many": run_json("disable", "--pid", procs[0].pid, "--pid", procs[1].pid,
                                              "--format", "json", codes=(1,))}
            install["uninstall"] = run_json("uninstall", older, "--format", "json")
            inspect = {"library-object": run_json("inspect", built.r1, "--format", "json"),
                       "program-and-library": run_json("inspect", older, "--format", "json")}
        finally:
            for p in procs:
                p.stop()
    return {"processes": fleet, "install": install, "inspect": inspect}


@pytest.fixture(scope="module")
def inspect_outputs(library_outputs, tmp_path_factory) -> dict[str, dict]:
    """inspect of patch objects, and of a livepatch module built against the installed
    kernel's headers."""
    from .test_kernel_build import _release1, build, bundle_of, kernel_dir

    tmp = tmp_path_factory.mktemp("inspect")
    bundle = bundle_of(tmp, [_release1()])
    made = build(bundle, tmp / "ko", "--kernel", str(kernel_dir()), "--name", "klpcc_inspected")
    assert made.returncode == 0, made.stderr
    return {**library_outputs["inspect"],
            "kernel-module": run_json("inspect", tmp / "ko" / "klpcc_inspected.ko", "--format", "json")}


def outputs(request: pytest.FixtureRequest, schema: str) -> dict[str, dict]:
    if schema in ("patch-object", "runtime-answer"):
        return request.getfixturevalue("live")[schema]
    if schema in ("processes", "install"):
        return request.getfixturevalue("library_outputs")[schema]
    if schema == "inspect":
        return request.getfixturevalue("inspect_outputs")
    return request.getfixturevalue(f"{schema.replace('-build', '')}_outputs")


# every output each schema is checked against
CASES = {
    "analysis": ("demo", "upgrade", "downgrade", "git", "objects"),
    "lint": ("states-takeover", "callbacks-replace", "shadow-lifecycle", "userspace-sessiond", "layouts",
             "layout-notes", "downgrade", "config-objects"),
    "manifest": ("demo", "sessiond", "git", "objects-config", "kernel"),
    "kernel-build": ("kallsyms", "build.json", "module-object", "callbacks-replace", "shadow-lifecycle"),
    "patch-object": ("r2", "r4"),
    "runtime-answer": ("status-unpatched", "apply-another-build", "apply", "status", "apply-replace",
                       "status-replaced", "disable", "disable-nothing"),
    "processes": ("all-mapping", "status-all", "disable-many"),
    "install": ("install", "install-program", "install-replace", "uninstall"),
    "inspect": ("library-object", "program-and-library", "kernel-module"),
}


@pytest.mark.parametrize("schema, case", [(s, c) for s, cases in CASES.items() for c in cases])
def test_real_output_validates(request, schema, case):
    docs = outputs(request, schema)
    assert set(docs) == set(CASES[schema])
    assert not errors(schema, docs[case]), "\n".join(errors(schema, docs[case]))


@pytest.mark.parametrize("case", CASES["runtime-answer"])
def test_each_request_answers_what_its_schema_says(live, case):
    """An answer to apply, status or disable validates against that request's $defs."""
    request = case.split("-")[0]
    schema = {"$ref": f"{ID_BASE}runtime-answer.schema.json#/$defs/{request}"}
    found = list(Draft202012Validator(schema, registry=registry()).iter_errors(live["runtime-answer"][case]))
    assert not found, [e.message for e in found]
    other = "status" if request != "status" else "apply"
    wrong = {"$ref": f"{ID_BASE}runtime-answer.schema.json#/$defs/{other}"}
    if live["runtime-answer"][case]["ok"]:
        assert not Draft202012Validator(wrong, registry=registry()).is_valid(live["runtime-answer"][case])


def _all(docs: dict[str, dict], key: str) -> list:
    """The items of list ``key`` in every output."""
    return [x for doc in docs.values() for x in doc[key]]


def _facts(docs: dict[str, dict], kind: str) -> list[dict]:
    """The ``kind`` facts (states, callbacks, shadow) of every release in every lint output."""
    return [x for doc in docs.values() for facts in doc["facts"].values() for x in facts[kind]]


def _filled(doc: dict, *keys: str) -> bool:
    return all(doc[k] for k in keys)


SESSIOND_R3 = "0003-session-warn-before-reaping"

# what the outputs must show, so that each part of a schema is tried on real data
SHOWN: dict[str, list[tuple[str, Callable[[dict[str, dict]], object]]]] = {
    "analysis": [
        ("transitions", lambda d: d["upgrade"]["transitions"] and d["downgrade"]["transitions"]),
        ("every change kind but removed", lambda d: {f["change"] for f in _all(d, "functions")} >= {
            "modified", "added", "nop", "dropped", "unchanged", "absent"}),
        ("a removed function", lambda d: "removed" in {f["change"] for f in d["git"]["functions"]}),
        ("a null transition", lambda d: None in {f["transition"] for f in d["downgrade"]["functions"]}),
        ("a change to a file that is not C", lambda d: "file" in {o["kind"] for o in d["demo"]["outside"]}),
        ("a git base", lambda d: d["git"]["base"]["kind"] == "git"),
        ("every object-level list",
         lambda d: _filled(d["objects"]["objects"], "units", "functions", "data", "dwarf")),
    ],
    "lint": [
        ("findings in and outside functions",
         lambda d: {f["function"] is None for f in _all(d, "findings")} == {True, False}),
        ("states, callbacks and shadow uses",
         lambda d: all(_facts(d, k) for k in ("states", "callbacks", "shadow"))),
        ("exact layouts", lambda d: [s for s in d["layouts"]["facts"][SESSIOND_R3]["shadow"] if s["layout"]]),
        ("layout notes", lambda d: d["layout-notes"]["layout_notes"]),
        ("klpcc.toml facts, a text id",
         lambda d: [s for s in _facts({"c": d["config-objects"]}, "shadow")
                    if s["origin"] == "klpcc.toml" and s["id"] == "SHOP_EXTRA"]),
        ("a finding without a patch line",
         lambda d: [f for f in _all(d, "findings") if f["patch"] is None]),
    ],
    "manifest": [
        ("every lint section",
         lambda d: _filled(d["sessiond"], "states", "callbacks", "shadow")
         and d["sessiond"]["lint"]["findings"]),
        ("every file status",
         lambda d: {f["status"] for f in _all(d, "files")} == {"modified", "added", "deleted"}),
        ("a base file the base lacks", lambda d: None in {f["sha256"] for f in d["demo"]["base"]["files"]}),
        ("functions the object-level check added",
         lambda d: [f for f in d["objects-config"]["functions"] if f.get("origin") == "objects"]),
        ("a git base", lambda d: d["git"]["base"]["kind"] == "git"),
        ("unchanged units that read a changed header", lambda d: d["demo"]["header_units"]),
    ],
    "kernel-build": [
        ("every list", lambda d: _filled(d["kallsyms"], "functions", "nops", "states", "callbacks", "copied",
                                         "left_out")),
        ("a symbol position", lambda d: {f["sympos"] for f in d["kallsyms"]["functions"]} >= {0, 2}),
        ("a module object, no replace",
         lambda d: d["module-object"]["objects"] == ["demo"] and d["module-object"]["replace"] is False),
    ],
    "patch-object": [
        ("every list", lambda d: all(_all(d, k) for k in ("functions", "added_by_inlining", "refs", "nops",
                                                          "states", "callbacks", "copied", "notes"))),
    ],
    "runtime-answer": [
        ("replaced, unloaded, nops", lambda d: _filled(d["apply-replace"], "replaced", "unloaded", "nops")),
        ("patches, their functions and states, redirections",
         lambda d: _filled(d["status"]["patches"][0], "functions", "states") and d["status"]["redirected"]),
        ("refusals", lambda d: {d["apply-another-build"]["step"], d["disable-nothing"]["step"]} == {
            "build-id", "request"}),
    ],
    "processes": [
        ("every kind of result", lambda d: {p["result"] for doc in d.values() for p in doc["processes"]} >= {
            "applied", "no-runtime", "different-build", "status", "disabled"}),
        ("the library and the store", lambda d: d["all-mapping"]["library"] and d["status-all"]["installed"]),
    ],
    "inspect": [
        ("both kinds, a program and a library",
         lambda d: {doc["kind"] for doc in d.values()} == {"patch-object", "kernel-module"}
         and {o["kind"] for o in d["program-and-library"]["objects"]} == {"program", "library"}),
        ("a release of a series",
         lambda d: all(doc["release_index"] >= 1 and doc["series"] for doc in d.values())),
    ],
    "install": [
        ("installed, replaced, removed", lambda d: {r["action"] for doc in d.values() for r in doc["records"]}
         >= {"installed", "replaced", "removed"}),
    ],
}


@pytest.mark.parametrize("schema", SHOWN)
def test_the_outputs_show_every_section(request, schema):
    docs = outputs(request, schema)
    missing = [what for what, shown in SHOWN[schema] if not shown(docs)]
    assert not missing, f"the {schema} outputs checked do not show: {', '.join(missing)}"


# =========================================================================== broken outputs


def rename(obj: dict, old: str, new: str) -> None:
    obj[new] = obj.pop(old)


# (schema, output, what is broken, how, what the validator must say)
BROKEN = [
    ("analysis", "demo", "release_index dropped", lambda d: d.pop("release_index"),
     "'release_index' is a required property"),
    ("analysis", "demo", "a function's fingerprint renamed",
     lambda d: rename(d["functions"][0], "fingerprint", "fingerprint_now"),
     "'fingerprint_now' was unexpected"),
    ("analysis", "demo", "release_index as text", lambda d: d.update(release_index="5"),
     "'5' is not of type 'integer'"),
    ("analysis", "demo", "an unknown change kind", lambda d: d["functions"][0].update(change="changed"),
     "'changed' is not one of"),
    ("analysis", "demo", "static outside functions", lambda d: d["outside"][0].update(static=False),
     "'static' was unexpected"),
    ("analysis", "demo", "a transition without --from", lambda d: d["functions"][0].update(transition="keep"),
     "False schema does not allow 'keep'"),
    ("analysis", "upgrade", "transitions dropped with --from", lambda d: d.pop("transitions"),
     "'transitions' is a required property"),
    ("analysis", "objects", "a unit's headers dropped", lambda d: d["objects"]["units"][0].pop("headers"),
     "'headers' is a required property"),
    ("analysis", "objects", "a static local without its function",
     lambda d: d["objects"]["data"][0].update(function=None), "None is not of type 'string'"),
    ("lint", "userspace-sessiond", "a finding's hint dropped", lambda d: d["findings"][0].pop("hint"),
     "'hint' is a required property"),
    ("lint", "userspace-sessiond", "an unknown severity", lambda d: d["findings"][0].update(severity="fatal"),
     "'fatal' is not one of"),
    ("lint", "userspace-sessiond", "a rule id out of the families",
     lambda d: d["findings"][0].update(rule="X001"), "'X001' does not match"),
    ("lint", "userspace-sessiond", "a line without its file", lambda d: d["findings"][0].update(file=None),
     "is not valid under any of the given schemas"),
    ("lint", "userspace-sessiond", "a shadow op renamed",
     lambda d: d["facts"]["0001-session-reap-by-last-read"]["shadow"][0].update(op="realloc"), "'realloc'"),
    ("lint", "userspace-sessiond", "layout_notes renamed", lambda d: rename(d, "layout_notes", "layout"),
     "'layout_notes' is a required property"),
    ("manifest", "sessiond", "sources dropped", lambda d: d.pop("sources"),
     "'sources' is a required property"),
    ("manifest", "sessiond", "diff renamed", lambda d: rename(d, "diff", "cumulative"),
     "'diff' is a required property"),
    ("manifest", "sessiond", "lint without the facts", lambda d: d.pop("states"),
     "'states' is a dependency of 'lint'"),
    ("manifest", "sessiond", "the release index as text", lambda d: d["release"].update(index="3"),
     "'3' is not of type 'integer'"),
    ("manifest", "git", "a deleted file with content", lambda d: next(
        f for f in d["files"] if f["status"] == "deleted").update(sha256="0" * 64),
     "is not valid under any of the given schemas"),
    ("manifest", "objects-config", "code-only functions without the report", lambda d: d.pop("objects"),
     "'objects' is a required property"),
    ("manifest", "demo", "a header unit that reads no header",
     lambda d: d["header_units"][0].update(headers=[]), "should be non-empty"),
    ("manifest", "demo", "a transition in a bundle", lambda d: d["functions"][0].update(transition="add"),
     "is not valid under any of the given schemas"),
    ("kernel-build", "kallsyms", "nops dropped", lambda d: d.pop("nops"), "'nops' is a required property"),
    ("kernel-build", "kallsyms", "a negative sympos", lambda d: d["functions"][0].update(sympos=-1),
     "-1 is less than the minimum of 0"),
    ("kernel-build", "kallsyms", "livepatch_symbols renamed",
     lambda d: rename(d, "livepatch_symbols", "symbols"), "'livepatch_symbols' is a required property"),
    ("kernel-build", "kallsyms", "build time without a module", lambda d: d.update(build_seconds=1.5),
     "0 was expected"),
    ("kernel-build", "build.json", "replace as text", lambda d: d.update(replace="true"),
     "'true' is not of type 'boolean'"),
    ("patch-object", "r4", "the build-id dropped", lambda d: d.pop("binary_build_id"),
     "'binary_build_id' is a required property"),
    ("patch-object", "r4", "immediate as a number", lambda d: d["functions"][0].update(immediate=0),
     "0 is not of type 'boolean'"),
    ("patch-object", "r4", "a ref's slot renamed", lambda d: rename(d["refs"][0], "slot", "ref"),
     "'slot' is a required property"),
    ("patch-object", "r4", "a callback kind unknown", lambda d: d["callbacks"][0].update(kind="on_patch"),
     "'on_patch' is not one of"),
    ("runtime-answer", "apply-replace", "total_us dropped", lambda d: d.pop("total_us"),
     "is not valid under any of the given schemas"),
    ("runtime-answer", "status", "a patch state unknown", lambda d: d["patches"][0].update(state="active"),
     "is not valid under any of the given schemas"),
    ("runtime-answer", "status", "an object without its build-id",
     lambda d: d["patches"][0]["objects"][0].pop("build_id"), "is not valid under any of the given schemas"),
    ("runtime-answer", "apply", "pending dropped", lambda d: d.pop("pending"),
     "is not valid under any of the given schemas"),
    ("runtime-answer", "apply-another-build", "an unknown step", lambda d: d.update(step="loading"),
     "is not valid under any of the given schemas"),
    ("runtime-answer", "apply", "an error in a success", lambda d: d.update(error="x"),
     "is not valid under any of the given schemas"),
    ("processes", "all-mapping", "a result unknown", lambda d: d["processes"][0].update(result="patched"),
     "'patched' is not one of"),
    ("processes", "all-mapping", "a refusal without its reason",
     lambda d: [p.pop("error", None) for p in d["processes"]], "'error' is a required property"),
    ("inspect", "kernel-module", "a module with objects",
     lambda d: d["objects"].append({"name": "x", "build_id": "ab", "kind": "program"}),
     "expected to be empty"),
    ("inspect", "library-object", "a patch object for a kernel", lambda d: d.update(kernel_release="6.1.0"),
     "is not of type 'null'"),
    ("install", "install", "an action unknown", lambda d: d["records"][0].update(action="added"),
     "'added' is not one of"),
]


@pytest.mark.parametrize("schema, case, mutate, message", [
    pytest.param(schema, case, mutate, message, id=f"{schema}: {what}")
    for schema, case, what, mutate, message in BROKEN])
def test_a_broken_output_fails(request, schema, case, mutate, message):
    doc = copy.deepcopy(outputs(request, schema)[case])
    mutate(doc)
    found = errors(schema, doc)
    assert any(message in e for e in found), found
