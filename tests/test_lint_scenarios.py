"""``klpcc lint`` on the scenario series of fixtures/lint, each a small subsystem with a
live patch written the way the kernel's livepatch selftests (and klpcc's userspace
runtime) do it.  What each scenario holds, and what lint must say about it, was written
down from reading the patches:

states-takeover (diff -ruN)
  1  0001-irqwatch-judge-storms-by-rate: irqwatch_check() judges a rate; the glue
     (kernel/irqwatch_klp.c, new) declares state IRQWATCH_KLP_RATE_STATE (1) at version
     1 and has all four callbacks: pre_patch saves irqwatch_threshold in the state's
     data, post_patch switches it to a rate, pre_unpatch puts it back, post_unpatch
     frees the copy.
  2  0002-irqwatch-rate-window-take-over-state: the state goes to version 2 and its
     callbacks take the saved value over from release 1 with klp_get_prev_state.
  Release 2 is clean; release 1 installed over release 2 (a downgrade) lowers the
  state's version: S002.

callbacks-replace (git format-patch)
  1  0001-hbeat-compare-beats-wrap-safe: hbeat_late() fix; the glue (kernel/hbeat_klp.c,
     new) has pre/post patch and pre/post unpatch callbacks and no state; post_patch
     turns hbeat_strict on, pre_unpatch restores it.
  2  0002-hbeat-reset-missed-count: keeps the fix, adds one, deletes the glue.
  Release 2 loses the unpatch callbacks (C001, an error) and the effect of release 1's
  post_patch (C003, a warning).

shadow-lifecycle (diff -ruN)
  1  0001-msgq-limit-message-rate: shadow variable MSGQ_KLP_SHADOW_RL (1), a struct
     msgq_conn_rl, allocated in msgq_conn_create(), got in msgq_conn_recv(), freed in
     msgq_conn_release() (the connection's release function) and by a klp-build
     KLP_POST_UNPATCH_CALLBACK with klp_shadow_free_all().
  2  0002-msgq-sliding-rate-window: same id, same struct, still freed.  Clean.
  3  0003-msgq-count-rate-drops: struct msgq_conn_rl gains a field: H001.

userspace-sessiond (git format-patch, klpcc runtime API)
  1  0001-session-reap-by-last-read: shadow variable SESSION_KLP_IDLE (0x1d1e), struct
     session_idle, allocated in session_accept(), got in session_read() and
     session_reap_idle(), freed in session_close() and by the post-unpatch callback;
     KLPCC_STATE(SESSION_KLP_STATE, 1); KLPCC_POST_PATCH adopts older sessions.
  2  0002-session-grace-for-busy-sessions: state version 2, post-patch checks
     klpcc_get_prev_state.  Clean.
  3  0003-session-warn-before-reaping: struct session_idle gains a field (H001) and a
     __attribute__((destructor)) function frees every shadow variable (H005).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import FIXTURES
from .helpers import klpcc

LINT = FIXTURES / "lint"

SCENARIOS = {
    "states-takeover": ["0001-irqwatch-judge-storms-by-rate", "0002-irqwatch-rate-window-take-over-state"],
    "callbacks-replace": ["0001-hbeat-compare-beats-wrap-safe", "0002-hbeat-reset-missed-count"],
    "shadow-lifecycle": ["0001-msgq-limit-message-rate", "0002-msgq-sliding-rate-window",
                         "0003-msgq-count-rate-drops"],
    "userspace-sessiond": ["0001-session-reap-by-last-read", "0002-session-grace-for-busy-sessions",
                           "0003-session-warn-before-reaping"],
}


def patches(scenario: str) -> Path:
    return LINT / scenario / "patches"


def src(scenario: str) -> Path:
    return LINT / scenario / "src"


def series_files(scenario: str) -> list[str]:
    lines = (patches(scenario) / "series").read_text().splitlines()
    return [ln.split()[0] for ln in lines if ln.strip() and not ln.startswith("#")]


def lint(scenario: str, *args: str) -> tuple[int, dict]:
    proc = klpcc("lint", str(patches(scenario) / "series"), "--source", str(src(scenario)),
                 "--format", "json", *args)
    assert proc.returncode in (0, 1), proc.stderr
    data = json.loads(proc.stdout)
    assert data["schema"] == "klpcc.lint/1"
    counts = {"error": 0, "warning": 0, "note": 0}
    for f in data["findings"]:
        counts[f["severity"]] += 1
        assert f["release"] == data["release"]
    assert data["summary"] == counts
    assert proc.returncode == (1 if counts["error"] else 0)
    return proc.returncode, data


def rules(data: dict) -> set[str]:
    return {f["rule"] for f in data["findings"]}


def only(data: dict, rule: str) -> list[dict]:
    found = [f for f in data["findings"] if f["rule"] == rule]
    assert found, f"no {rule}: {[(f['rule'], f['message']) for f in data['findings']]}"
    return found


def assert_clean(data: dict) -> None:
    bad = [f for f in data["findings"] if f["severity"] != "note"]
    assert not bad, [(f["rule"], f["message"]) for f in bad]


def release_tree(scenario: str, n: int, tmp: Path) -> Path:
    """The tree of release ``n`` (0: the base), made with git apply."""
    work = tmp / f"{scenario}-{n}"
    shutil.copytree(src(scenario), work)
    env = {**os.environ, "GIT_CEILING_DIRECTORIES": str(tmp)}
    for name in series_files(scenario)[:n]:
        proc = subprocess.run(["git", "apply", "-p1", str(patches(scenario) / name)], cwd=work, env=env,
                              capture_output=True, text=True, check=False)
        assert proc.returncode == 0, f"git apply {name}: {proc.stderr}"
    return work


def lines_of(text: str, needle: str) -> list[int]:
    return [i for i, ln in enumerate(text.splitlines(), 1) if needle in ln]


def span(text: str, first: str, end: str = "}") -> tuple[int, int]:
    (lo,) = lines_of(text, first)
    lines = text.splitlines()
    for i in range(lo, len(lines) + 1):
        if lines[i - 1].rstrip() in (end, end + ","):
            return lo, i
    raise AssertionError(first)


def patch_line(f: dict) -> tuple[Path, str]:
    assert f["patch"] is not None and f["patch_line"] is not None, f
    p = Path(f["patch"])
    if not p.is_absolute():
        p = Path.cwd() / p
    lines = p.read_text().splitlines()
    return p, lines[f["patch_line"] - 1]


# =========================================================================== every scenario


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario_applies(scenario, tmp_path):
    assert [Path(n).stem for n in series_files(scenario)] == SCENARIOS[scenario]
    trees = [release_tree(scenario, n, tmp_path) for n in range(len(SCENARIOS[scenario]) + 1)]
    assert len(trees) == len(SCENARIOS[scenario]) + 1
    proc = klpcc("analyze", str(patches(scenario) / "series"), "--source", str(src(scenario)),
                 "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["releases"] == SCENARIOS[scenario]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_first_release_is_clean(scenario):
    code, data = lint(scenario, "--release", "1", "--error-on", "warning")
    assert code == 0
    assert data["against"] == []
    assert_clean(data)


# =========================================================================== states-takeover

ST = "states-takeover"
ST1, ST2 = SCENARIOS[ST]
IRQ_CALLBACKS = {"pre_patch": "irqwatch_klp_pre_patch", "post_patch": "irqwatch_klp_post_patch",
                 "pre_unpatch": "irqwatch_klp_pre_unpatch", "post_unpatch": "irqwatch_klp_post_unpatch"}


def test_states_takeover_release_2_is_clean():
    code, data = lint(ST, "--error-on", "warning")
    assert code == 0
    assert (data["release"], data["against"]) == (ST2, [ST1])
    assert_clean(data)
    assert [(s["id"], s["version"], s["file"]) for s in data["facts"][ST1]["states"]] == \
        [(1, 1, "kernel/irqwatch_klp.c")]
    assert [(s["id"], s["version"]) for s in data["facts"][ST2]["states"]] == [(1, 2)]
    for rel in (ST1, ST2):
        cbs = {c["kind"]: c["callback"] for c in data["facts"][rel]["callbacks"]}
        assert cbs == IRQ_CALLBACKS
    # the same with --from
    code, data = lint(ST, "--from", "1")
    assert code == 0 and data["against"] == [ST1]
    assert_clean(data)


def test_states_takeover_downgrade_lowers_the_version(tmp_path):
    code, data = lint(ST, "--release", "1", "--from", ST2)
    assert code == 1
    assert (data["release"], data["against"]) == (ST1, [ST2])
    (f,) = only(data, "S002")
    assert f["severity"] == "error" and f["against"] == [ST2]
    assert "klp_is_patch_compatible" in f["message"] or "-EINVAL" in f["message"]
    assert "S001" not in rules(data)
    # it points at the state entry of release 1's glue, and at release 1's patch
    text = (release_tree(ST, 1, tmp_path) / "kernel/irqwatch_klp.c").read_text()
    lo, hi = span(text, "static struct klp_state irqwatch_klp_states[] = {", "};")
    assert f["file"] == "kernel/irqwatch_klp.c" and lo <= f["line"] <= hi, f
    ppath, pl = patch_line(f)
    assert ppath.name == ST1 + ".patch"
    assert pl.startswith("+") and pl[1:] in text.splitlines()[lo - 1:hi], pl


# =========================================================================== callbacks-replace

CR = "callbacks-replace"
CR1, CR2 = SCENARIOS[CR]


def test_callbacks_replace_loses_unpatch_callbacks(tmp_path):
    code, data = lint(CR)
    assert code == 1
    assert (data["release"], data["against"]) == (CR2, [CR1])
    lost = only(data, "C001")
    assert all(f["severity"] == "error" and f["against"] == [CR1] for f in lost)
    text = " ".join(f["message"] for f in lost)
    assert "hbeat_klp_pre_unpatch" in text or "pre_unpatch" in text
    (effects,) = only(data, "C003")
    assert effects["severity"] == "warning"
    assert "hbeat_klp_post_patch" in effects["message"]
    assert "C002" not in rules(data)
    # the findings point at release 1's callbacks, as release 1's patch adds them
    glue = (release_tree(CR, 1, tmp_path) / "kernel/hbeat_klp.c").read_text()
    for f in [*lost, effects]:
        assert f["file"] == "kernel/hbeat_klp.c", f
        line = glue.splitlines()[f["line"] - 1]
        assert "= hbeat_klp_p" in line, line
        ppath, pl = patch_line(f)
        assert ppath.name == CR1 + ".patch" and pl == "+" + line
    facts = data["facts"]
    assert {c["kind"] for c in facts[CR1]["callbacks"]} == {"pre_patch", "post_patch", "pre_unpatch",
                                                           "post_unpatch"}
    (post,) = [c for c in facts[CR1]["callbacks"] if c["kind"] == "post_patch"]
    assert post["effects"]
    assert facts[CR2] == {"states": [], "callbacks": [], "shadow": []}


# =========================================================================== shadow-lifecycle

SL = "shadow-lifecycle"
SL1, SL2, SL3 = SCENARIOS[SL]
RL = "struct msgq_conn_rl"


def _ops(facts: dict) -> set[tuple]:
    return {(u["op"], u["id"], u["function"]) for u in facts["shadow"]}


def test_shadow_lifecycle_releases_1_and_2_are_clean():
    code, data = lint(SL, "--release", "2", "--error-on", "warning")
    assert code == 0
    assert_clean(data)
    expected = {("alloc", 1, "msgq_conn_create"), ("get", 1, "msgq_conn_recv"),
                ("free", 1, "msgq_conn_release"), ("free_all", 1, "msgq_klp_post_unpatch")}
    for rel in (SL1, SL2):
        facts = data["facts"][rel]
        assert _ops(facts) == expected
        for u in facts["shadow"]:
            assert u["teardown"] is False
            if u["op"] in ("alloc", "get"):
                assert u["type"] == RL, u
            if u["op"] == "alloc":
                assert u["ctor"] == "msgq_conn_rl_ctor"
            if u["op"] in ("free", "free_all"):
                assert u["dtor"] is None
        assert [(c["kind"], c["callback"]) for c in facts["callbacks"]] == \
            [("post_unpatch", "msgq_klp_post_unpatch")]


@pytest.mark.parametrize("args", [(), ("--from", "2"), ("--from", "1")])
def test_shadow_lifecycle_release_3_changes_the_layout(tmp_path, args):
    code, data = lint(SL, *args)
    assert code == 1
    assert data["release"] == SL3
    (f,) = only(data, "H001")
    assert f["severity"] == "error"
    assert rules(data) == {"H001"}, [(g["rule"], g["message"]) for g in data["findings"]]
    text = (release_tree(SL, 3, tmp_path) / "net/msgq/conn.c").read_text()
    lo, hi = span(text, "struct msgq_conn_rl {", "};")
    allowed = set(range(lo, hi + 1)) | {i for i, ln in enumerate(text.splitlines(), 1)
                                        if "klp_shadow_alloc(" in ln or "klp_shadow_get(" in ln}
    assert f["file"] == "net/msgq/conn.c" and f["line"] in allowed, f
    _, pl = patch_line(f)
    assert pl[:1] in ("+", "-") and ("msgq_conn_rl" in pl or "klp_shadow" in pl or "drops" in pl), pl


# =========================================================================== userspace-sessiond

US = "userspace-sessiond"
US1, US2, US3 = SCENARIOS[US]
IDLE = 0x1D1E


def test_userspace_releases_1_and_2_are_clean():
    code, data = lint(US, "--release", US2, "--error-on", "warning")
    assert code == 0
    assert_clean(data)
    f1, f2 = data["facts"][US1], data["facts"][US2]
    assert [(s["id"], s["version"]) for s in f1["states"]] == [(1, 1)]
    assert [(s["id"], s["version"]) for s in f2["states"]] == [(1, 2)]
    for facts in (f1, f2):
        assert {(c["kind"], c["callback"]) for c in facts["callbacks"]} == \
            {("post_patch", "session_klp_adopt"), ("post_unpatch", "session_klp_forget")}
        assert {u["id"] for u in facts["shadow"]} == {IDLE}
        assert {(u["op"], u["function"]) for u in facts["shadow"]} == {
            ("alloc", "session_accept"), ("get", "session_read"), ("get", "session_reap_idle"),
            ("free", "session_close"), ("get_or_alloc", "session_klp_adopt"),
            ("free_all", "session_klp_forget")}
        for u in facts["shadow"]:
            if u["op"] in ("alloc", "get", "get_or_alloc"):
                assert u["type"] == "struct session_idle", u


def test_userspace_release_3_layout_and_teardown(tmp_path):
    code, data = lint(US)
    assert code == 1
    assert (data["release"], data["against"]) == (US3, [US1, US2])
    (h1,) = only(data, "H001")
    assert h1["severity"] == "error" and h1["file"] == "src/session.c"
    (h5,) = only(data, "H005")
    assert h5["severity"] == "warning"
    assert h5["function"].endswith("session_klp_fini")
    text = (release_tree(US, 3, tmp_path) / "src/session.c").read_text()
    lo, hi = span(text, "session_klp_fini(void)")
    (line,) = [i for i in lines_of(text, "klpcc_shadow_free_all(") if lo <= i <= hi]
    assert (h5["file"], h5["line"]) == ("src/session.c", line)
    ppath, pl = patch_line(h5)
    assert ppath.name == US3 + ".patch" and pl == "+" + text.splitlines()[line - 1]
    assert [(s["id"], s["version"]) for s in data["facts"][US3]["states"]] == [(1, 3)]
    assert rules(data) == {"H001", "H005"}
