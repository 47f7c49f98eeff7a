"""``klpcc lint`` on a cumulative kernel live patch written against real kernel source.

The base is ``fs/proc/cmdline.c``, ``fs/proc/version.c`` and ``fs/proc/internal.h`` from
Debian's ``linux-source-6.1`` (the newest version apt knows), fetched at test time by
the helpers of ``test_real_sources.py`` and cached outside the repository.  The exact
text of those files depends on the package version, so the three releases are made
here, by editing the real text at anchors that are checked, and turned into patches
with difflib.  What the releases do, as a live patch author would write them:

 1  0001-proc-cmdline-redact-secrets: ``cmdline_proc_show`` prints a copy of the
    command line with the values of ``secret=`` masked.  The copy is made by a
    ``pre_patch`` callback and freed by a ``post_unpatch`` callback; the live patch
    declares the system state ``CMDLINE_KLP_STATE_REDACT`` (a ``#define``) at version 1
    and keeps the copy in the state's ``data``.
 2  0002-proc-version-count-reads: ``version_proc_show`` counts reads per UTS namespace
    in a shadow variable (``klp_shadow_get_or_alloc`` with
    ``sizeof(struct proc_version_reads)``; its id and struct go to ``internal.h``); the
    state goes to version 2 and ``pre_patch`` takes the copy over from the replaced
    release with ``klp_get_prev_state``; ``post_unpatch`` frees every shadow variable
    too.  The fix of release 1 is kept (the patch is cumulative).
 3  0003-proc-cmdline-back-out-redaction: ``cmdline_proc_show`` is back to its original
    code (an implicit revert of release 1's fix) and the author lowered the state
    version to 1 with it: the kernel refuses a patch that lowers a state version, so
    ``lint`` must report S002 (an error) there, while release 2 is clean.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest

from .helpers import klpcc, make_series
from .test_lint_sarif import assert_valid
from .test_real_sources import fetch_kernel, kernel_versions

pytestmark = pytest.mark.slow

CMDLINE = "fs/proc/cmdline.c"
VERSION = "fs/proc/version.c"
INTERNAL = "fs/proc/internal.h"
FILES = (CMDLINE, VERSION, INTERNAL)

RELEASES = [
    "0001-proc-cmdline-redact-secrets",
    "0002-proc-version-count-reads",
    "0003-proc-cmdline-back-out-redaction",
]

STATE_ID = 0x636D646C  # CMDLINE_KLP_STATE_REDACT
SHADOW_ID = 0x76657273  # PROC_KLP_SHADOW_VERSION_READS
SHOW = f"{CMDLINE}:cmdline_proc_show"


# =========================================================================== the releases


def _edit(text: str, anchor: str, new: str, path: str) -> str:
    """``text`` with its one occurrence of ``anchor`` replaced by ``new``."""
    if text.count(anchor) != 1:
        pytest.fail(f"{path} of {kernel_version()} does not hold exactly one {anchor!r}: "
                    "the releases of this test must be adapted to it", pytrace=False)
    return text.replace(anchor, new)


def _after(text: str, anchor: str, added: str, path: str) -> str:
    return _edit(text, anchor, anchor + added, path)


SHOW_BASE = """\
static int cmdline_proc_show(struct seq_file *m, void *v)
{
\tseq_puts(m, saved_command_line);
"""

SHOW_FIXED = """\
static int cmdline_proc_show(struct seq_file *m, void *v)
{
\tconst char *line = READ_ONCE(cmdline_redacted);

\tseq_puts(m, line ? line : saved_command_line);
"""

STATE_DECL = """
/* The system state this live patch sets up: a redacted copy of the command line. */
#define CMDLINE_KLP_STATE_REDACT\t0x636d646cUL

static char *cmdline_redacted;

static struct klp_state cmdline_klp_states[] = {
\t{ .id = CMDLINE_KLP_STATE_REDACT, .version = %d },
\t{}
};
"""

REDACT = """
/* Mask the value of every secret= parameter. */
static void cmdline_redact(char *line)
{
\tchar *p = line;

\twhile ((p = strstr(p, "secret=")) != NULL) {
\t\tp += strlen("secret=");
\t\twhile (*p && *p != ' ')
\t\t\t*p++ = '*';
\t}
}
"""

PRE_PATCH_1 = """
static int cmdline_klp_pre_patch(struct klp_object *obj)
{
\tchar *copy = kstrdup(saved_command_line, GFP_KERNEL);

\tif (!copy)
\t\treturn -ENOMEM;
\tcmdline_redact(copy);
\tcmdline_klp_states[0].data = copy;
\tWRITE_ONCE(cmdline_redacted, copy);
\treturn 0;
}
"""

PRE_PATCH_2 = """
static int cmdline_klp_pre_patch(struct klp_object *obj)
{
\tstruct klp_state *prev = klp_get_prev_state(CMDLINE_KLP_STATE_REDACT);
\tchar *copy;

\tif (prev && prev->data) {
\t\t/* the release being replaced made the copy: take it over */
\t\tcopy = prev->data;
\t\tprev->data = NULL;
\t} else {
\t\tcopy = kstrdup(saved_command_line, GFP_KERNEL);
\t\tif (!copy)
\t\t\treturn -ENOMEM;
\t\tcmdline_redact(copy);
\t}
\tcmdline_klp_states[0].data = copy;
\tWRITE_ONCE(cmdline_redacted, copy);
\treturn 0;
}
"""

POST_UNPATCH_1 = """
static void cmdline_klp_post_unpatch(struct klp_object *obj)
{
\tkfree(cmdline_klp_states[0].data);
\tcmdline_klp_states[0].data = NULL;
}
"""

POST_UNPATCH_2 = """
static void cmdline_klp_post_unpatch(struct klp_object *obj)
{
\tkfree(cmdline_klp_states[0].data);
\tcmdline_klp_states[0].data = NULL;
\tklp_shadow_free_all(PROC_KLP_SHADOW_VERSION_READS, NULL);
}
"""

CALLBACKS = """
static struct klp_callbacks cmdline_klp_callbacks = {
\t.pre_patch = cmdline_klp_pre_patch,
\t.post_unpatch = cmdline_klp_post_unpatch,
};
"""

SHADOW_DECL = """
/* Live patch: reads of /proc/version, per UTS namespace (a shadow variable). */
#define PROC_KLP_SHADOW_VERSION_READS\t0x76657273UL

struct proc_version_reads {
\tunsigned long count;
};
"""

VERSION_SHOW_BASE = """\
static int version_proc_show(struct seq_file *m, void *v)
{
"""

VERSION_SHOW_COUNTED = """\
static int version_proc_show(struct seq_file *m, void *v)
{
\tstruct proc_version_reads *reads;

\treads = klp_shadow_get_or_alloc(current->nsproxy->uts_ns, PROC_KLP_SHADOW_VERSION_READS,
\t\t\t\t\tsizeof(struct proc_version_reads), GFP_KERNEL, NULL, NULL);
\tif (reads)
\t\treads->count++;
"""

INIT_ANCHOR = "static int __init proc_cmdline_init(void)\n"


def cmdline_release(base: str, release: int) -> str:
    """fs/proc/cmdline.c as release ``release`` (1-3) has it."""
    text = _after(base, "#include <linux/init.h>\n", "#include <linux/livepatch.h>\n", CMDLINE)
    includes = "#include <linux/slab.h>\n#include <linux/string.h>\n"
    if release >= 2:
        includes += '#include "internal.h"\n'
    version = {1: 1, 2: 2, 3: 1}[release]
    text = _after(text, "#include <linux/seq_file.h>\n", includes + STATE_DECL % version, CMDLINE)
    if release < 3:
        text = _edit(text, SHOW_BASE, SHOW_FIXED, CMDLINE)
    code = REDACT + (PRE_PATCH_1 if release == 1 else PRE_PATCH_2)
    code += (POST_UNPATCH_1 if release == 1 else POST_UNPATCH_2) + CALLBACKS
    return _edit(text, INIT_ANCHOR, code.lstrip("\n") + "\n" + INIT_ANCHOR, CMDLINE)


def version_release(base: str) -> str:
    """fs/proc/version.c as releases 2 and 3 have it."""
    text = _after(base, "#include <linux/init.h>\n", "#include <linux/livepatch.h>\n", VERSION)
    text = _after(text, "#include <linux/proc_fs.h>\n", "#include <linux/sched.h>\n", VERSION)
    return _edit(text, VERSION_SHOW_BASE, VERSION_SHOW_COUNTED, VERSION)


def internal_release(base: str) -> str:
    return _after(base, "struct mempolicy;\n", SHADOW_DECL, INTERNAL)


# =========================================================================== fetching


@cache
def kernel_version() -> str:
    """The newest version of linux-source-6.1 apt knows."""
    return kernel_versions()[-1]


@cache
def kernel_base() -> dict[str, str]:
    """The three real files, from the newest linux-source-6.1."""
    root = fetch_kernel(kernel_version())
    out = {}
    for path in FILES:
        if not (root / path).is_file():
            pytest.fail(f"{path} is missing from linux-source-6.1 {kernel_version()} "
                        f"(extracted to {root})", pytrace=False)
        out[path] = (root / path).read_text()
    return out


@pytest.fixture
def series(tmp_path: Path) -> tuple[Path, Path, list[dict[str, str]]]:
    """(patches, base, the files of each release) of the three-release live patch."""
    base = kernel_base()
    r1 = {CMDLINE: cmdline_release(base[CMDLINE], 1)}
    r2 = {CMDLINE: cmdline_release(base[CMDLINE], 2), VERSION: version_release(base[VERSION]),
          INTERNAL: internal_release(base[INTERNAL])}
    r3 = {CMDLINE: cmdline_release(base[CMDLINE], 3)}
    patches, base_dir = make_series(tmp_path, base, [r1, r2, r3], names=RELEASES)
    trees = [dict(base)]
    for rel in (r1, r2, r3):
        trees.append({**trees[-1], **rel})
    return patches, base_dir, trees[1:]


def lint(patches: Path, base: Path, *args: str) -> tuple[int, dict]:
    proc = klpcc("lint", str(patches), "--source", str(base), "--format", "json", *args)
    assert proc.returncode in (0, 1), f"klpcc lint {' '.join(args)} failed:\n{proc.stderr}"
    try:
        return proc.returncode, json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        pytest.fail(f"klpcc lint --format json printed no JSON ({exc}):\n{proc.stdout[:2000]}")


def line_of(text: str, needle: str) -> int:
    """1-based number of the one line of ``text`` that holds ``needle``."""
    hits = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    assert len(hits) == 1, f"{needle!r} is on lines {hits}"
    return hits[0]


# =========================================================================== tests


def test_the_series_is_what_the_test_says(series):
    """The generated series applies to the real files and does what the docstring says
    (checked with ``analyze``, independently of ``lint``)."""
    patches, base, _ = series
    proc = klpcc("analyze", str(patches), "--source", str(base), "--format", "json", "--release", "3",
                 "--from", "2")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["releases"] == RELEASES
    changes = {f["key"]: f["change"] for f in doc["functions"]}
    assert changes[SHOW] == "nop"  # release 3 reverts release 1's fix implicitly
    assert doc["nops"] == [SHOW]
    assert changes[f"{VERSION}:version_proc_show"] == "modified"
    for fn in ("cmdline_redact", "cmdline_klp_pre_patch", "cmdline_klp_post_unpatch"):
        assert changes[f"{CMDLINE}:{fn}"] == "added"


def test_release_2_is_clean(series):
    """Release 2 keeps the state (at a higher version), takes it over and frees its
    shadow variables: nothing to report, against release 1 or on its own."""
    patches, base, _ = series
    code, doc = lint(patches, base, "--release", "2")
    assert doc["schema"] == "klpcc.lint/1"
    assert doc["release"] == RELEASES[1]
    assert doc["findings"] == [], json.dumps(doc["findings"], indent=1)
    assert doc["summary"] == {"error": 0, "warning": 0, "note": 0}
    assert code == 0
    code, doc = lint(patches, base, "--release", "2", "--error-on", "warning")
    assert code == 0 and doc["findings"] == []
    assert lint(patches, base, "--release", "1")[0] == 0


def test_release_3_lowers_the_state_version(series):
    patches, base, trees = series
    code, doc = lint(patches, base)
    assert doc["release"] == RELEASES[2]
    assert code == 1
    assert [f["rule"] for f in doc["findings"]] == ["S002"], json.dumps(doc["findings"], indent=1)
    (finding,) = doc["findings"]
    assert finding["name"] == "state-version-lowered"
    assert finding["severity"] == "error"
    assert doc["summary"] == {"error": 1, "warning": 0, "note": 0}
    assert finding["release"] == RELEASES[2]
    assert RELEASES[1] in finding["against"]  # release 2 declares version 2
    assert RELEASES[0] not in finding["against"]  # release 1 declares version 1, as release 3 does
    assert finding["message"].strip() and finding["hint"].strip()
    # where: the state's line in the real file as release 3 has it ...
    r3 = trees[2][CMDLINE]
    assert finding["file"] == CMDLINE
    assert finding["line"] == line_of(r3, "{ .id = CMDLINE_KLP_STATE_REDACT, .version = 1 },")
    # ... and the + line of release 3's patch that lowers the version
    patch = patches / f"{RELEASES[2]}.patch"
    assert Path(finding["patch"]).resolve() == patch.resolve()
    assert finding["patch_line"] == line_of(patch.read_text(),
                                            "+\t{ .id = CMDLINE_KLP_STATE_REDACT, .version = 1 },")

    proc = klpcc("lint", str(patches), "--source", str(base))
    assert proc.returncode == 1
    assert "S002" in proc.stdout and f"{CMDLINE}:{finding['line']}" in proc.stdout, proc.stdout


def test_release_3_over_release_1_is_clean(series):
    """Installed release 1 has the state at version 1, as release 3 does."""
    patches, base, _ = series
    code, doc = lint(patches, base, "--from", "1")
    assert doc["findings"] == [], json.dumps(doc["findings"], indent=1)
    assert code == 0


def test_facts_of_each_release(series):
    patches, base, trees = series
    callbacks = {"pre_patch": "cmdline_klp_pre_patch", "post_unpatch": "cmdline_klp_post_unpatch"}
    for n, (name, files) in enumerate(zip(RELEASES, trees), 1):
        _, doc = lint(patches, base, "--release", str(n))
        facts = doc["facts"][name]
        cmdline, version = files[CMDLINE], files[VERSION]
        state_version = {1: 1, 2: 2, 3: 1}[n]
        where = f"{CMDLINE} in release {n}"

        assert [(s["id"], s["version"], s["file"], s["line"]) for s in facts["states"]] == [
            (STATE_ID, state_version, CMDLINE,
             line_of(cmdline, f"{{ .id = CMDLINE_KLP_STATE_REDACT, .version = {state_version} }},"))
        ], where

        assert {c["kind"]: c["callback"] for c in facts["callbacks"]} == callbacks, where
        assert len(facts["callbacks"]) == 2, facts["callbacks"]
        for c in facts["callbacks"]:
            assert c["file"] == CMDLINE
            assert c["line"] == line_of(cmdline, f".{c['kind']} = {c['callback']},"), c

        shadow = sorted((u["op"], u["id"], u["type"], u["file"], u["function"], u["line"])
                        for u in facts["shadow"])
        expected = [] if n == 1 else sorted([
            ("get_or_alloc", SHADOW_ID, "struct proc_version_reads", VERSION, "version_proc_show",
             line_of(version, "klp_shadow_get_or_alloc(")),
            ("free_all", SHADOW_ID, None, CMDLINE, "cmdline_klp_post_unpatch",
             line_of(cmdline, "klp_shadow_free_all(")),
        ])
        assert shadow == expected, where


def test_release_3_as_sarif(series):
    """The same finding as valid SARIF 2.1.0: the patch line first, then the real file."""
    patches, base, trees = series
    proc = klpcc("lint", str(patches), "--source", str(base), "--format", "sarif")
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    assert_valid(doc)
    (result,) = doc["runs"][0]["results"]
    assert result["ruleId"] == "S002" and result["level"] == "error"
    (patch_loc, source_loc) = (loc["physicalLocation"] for loc in result["locations"])
    patch = patches / f"{RELEASES[2]}.patch"
    assert Path(patch_loc["artifactLocation"]["uri"]).name == patch.name
    assert patch_loc["region"]["startLine"] == line_of(
        patch.read_text(), "+\t{ .id = CMDLINE_KLP_STATE_REDACT, .version = 1 },")
    assert source_loc["artifactLocation"]["uri"].endswith(CMDLINE)
    assert source_loc["region"]["startLine"] == line_of(
        trees[2][CMDLINE], "{ .id = CMDLINE_KLP_STATE_REDACT, .version = 1 },")
