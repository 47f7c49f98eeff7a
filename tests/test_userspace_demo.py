"""The live demo end to end (scripts/demo-live.sh): the shop service of
fixtures/demo/live runs with worker threads serving without pause while its four
releases are compiled, built and applied in turn, then disabled.  What a request sees
after each step must be exactly that release's behaviour."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TICK = re.compile(r"^  (.+?): tick (\d+): greeting=(\S+) price\(12\)=(\d+) served=(\d+)$")


@pytest.fixture(scope="module")
def demo() -> str:
    proc = subprocess.run([str(ROOT / "scripts" / "demo-live.sh")], capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _seen(out: str) -> list[tuple[str, str, int, int]]:
    rows = []
    for line in out.splitlines():
        if m := TICK.match(line):
            rows.append((m[1].strip(), m[3], int(m[4]), int(m[5])))
    return rows


def test_each_release_shows_its_behaviour_live(demo):
    seen = [(step, greeting, price) for step, greeting, price, _ in _seen(demo)]
    assert seen == [
        ("original", "welcome", 120),
        ("release 1", "Welcome!", 120),  # the greeting fix
        ("release 2", "Welcome!", 108),  # the bulk discount, greeting fix kept
        ("release 3", "welcome", 108),  # release 1 backed out: the original greeting again
        ("release 4", "welcome", 108),
        ("original", "welcome", 120),  # disabled: the original code everywhere
    ], demo


def test_patched_code_counts_in_the_programs_counter(demo):
    served = [n for *_, n in _seen(demo)]
    # the patched serve() counts through the program's own static counter, which the
    # unpatched served_total() reads: it keeps growing through every release
    assert served == sorted(served) and len(set(served)) == len(served), demo


def test_release_4_callbacks_ran_and_took_over_the_state(demo):
    assert "  release 4: pre_patch, discount state taken over" in demo.splitlines()
    assert any(line.startswith("  release 4: post_patch, ") for line in demo.splitlines())


def test_apply_reports_replace_and_revert(demo):
    lines = demo.splitlines()
    applied = [line for line in lines if line.startswith("  applied ")]
    assert len(applied) == 4, demo
    assert "reverted greeting" in applied[2], applied
