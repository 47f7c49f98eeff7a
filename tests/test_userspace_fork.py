"""The runtime in forked processes: a pre-fork server (a parent and its workers, each
calling the library without pause) patched as a tree, workers forked after the apply
serving the new code, forks while applies and disables run (no child whose code and
records disagree), exec giving a fresh image."""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import time
from pathlib import Path

import pytest

from .helpers import klpcc, make_series
from .test_userspace_library import BASE, LIB_FIX, _cc, _lib
from .userspace_helpers import RUNTIME, wait_listening

# Every worker reports `w <pid> <tax(2000)> <version of state 1, 0: none>` on stdout
# every 20 ms (long-lived workers) or once (churn: a worker forked every 2 ms).
PREFORK_C = """\
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "klpcc.h"
#include "lib/tax.h"

static void report(void)
{
	struct klpcc_state *s = klpcc_get_state(1);

	dprintf(1, "w %d %d %u\\n", (int)getpid(), tax(2000), s ? s->version : 0u);
}

static void *churn(void *arg)
{
	long ms = (long)arg;
	struct timespec t0, t;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	do {
		pid_t c = fork();

		if (c == 0) {
			report();
			_exit(0);
		}
		usleep(2000);
		clock_gettime(CLOCK_MONOTONIC, &t);
	} while ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000 < ms);
	dprintf(1, "churned\\n");
	return NULL;
}

int main(int argc, char **argv)
{
	char line[128];
	pthread_t t;

	if (argc > 1 && !strcmp(argv[1], "once")) {
		report();
		return 0;
	}
	signal(SIGCHLD, SIG_IGN);
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("ready\\n");
	while (fgets(line, sizeof(line), stdin)) {
		if (!strncmp(line, "spawn", 5)) {
			pid_t c = fork();

			if (c == 0) {
				for (;;) {
					report();
					usleep(20000);
				}
			}
			printf("spawned %d\\n", (int)c);
		} else if (!strncmp(line, "churn ", 6)) {
			pthread_create(&t, NULL, churn, (void *)atol(line + 6));
			pthread_detach(t);
		} else if (!strncmp(line, "exec", 4)) {
			pid_t c = fork();

			if (c == 0) {
				execl("/proc/self/exe", "prefork", "once", (char *)NULL);
				_exit(127);
			}
		}
	}
	return 0;
}
"""

FIX = {"lib/tax.c": LIB_FIX["lib/tax.c"] + "\nKLPCC_STATE(1, 1);\n"}
FIX2 = {"lib/tax.c": FIX["lib/tax.c"].replace("cents > 1000 ? 25 : 10", "cents > 1000 ? 30 : 10")}


class Server:
    def __init__(self, exe: Path):
        self.p = subprocess.Popen([str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        self.pid = self.p.pid
        self.reports: dict[int, list[tuple[int, int]]] = {}
        self.lines: list[str] = []
        self.workers: list[int] = []  # long-lived: stopped with the server
        self._pending = b""  # read from the pipe, not yet split into lines
        assert self.read_until(lambda ln: ln == "ready")
        wait_listening(self.pid)

    def send(self, cmd: str) -> None:
        self.p.stdin.write(cmd.encode() + b"\n")

    def read_until(self, done, timeout: float = 30.0) -> str:
        """Read the server's lines until ``done`` accepts one.  The pipe is read in
        chunks and split here: select() on a buffered reader misses the lines its buffer
        already holds (several lines arrive in one read when the machine is busy)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            while b"\n" in self._pending:
                raw, self._pending = self._pending.split(b"\n", 1)
                line = raw.decode().strip()
                self.lines.append(line)
                if line.startswith("w "):
                    _, pid, value, version = line.split()
                    self.reports.setdefault(int(pid), []).append((int(value), int(version)))
                if done(line):
                    return line
            ready, _, _ = select.select([self.p.stdout], [], [], 0.2)
            if ready:
                chunk = os.read(self.p.stdout.fileno(), 1 << 16)
                assert chunk, "the server exited"
                self._pending += chunk
        raise AssertionError(f"nothing matched in {timeout} s; last lines: {self.lines[-5:]}")

    def spawn(self) -> int:
        self.send("spawn")
        pid = int(self.read_until(lambda ln: ln.startswith("spawned")).split()[1])
        self.workers.append(pid)
        wait_listening(pid)
        return pid

    def latest(self, pid: int, want: tuple[int, int]) -> None:
        """Wait until worker ``pid`` reports ``want`` (value, state version)."""
        self.read_until(lambda ln: ln == f"w {pid} {want[0]} {want[1]}")

    def stop(self) -> None:
        for pid in self.workers:  # children of the server, not reaped: their pids are theirs
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        self.p.kill()
        self.p.wait()


@pytest.fixture(scope="module")
def prefork(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prefork")
    cflags = klpcc("config", "--cflags").stdout.split()
    libs = klpcc("config", "--libs").stdout.split()
    patches, src = make_series(tmp / "s", {**BASE, "prefork.c": PREFORK_C}, [FIX, FIX2])
    lib = _lib(src, tmp / "lib", cflags)
    exe = tmp / "prefork"
    _cc("-O2", *cflags, f"-I{RUNTIME}", "-pthread", "-o", exe, src / "prefork.c", f"-L{lib.parent}", "-ltax",
        f"-Wl,-rpath,{lib.parent}", *libs)
    fixes = []
    for release in ("1", "2"):
        bundle = tmp / f"b{release}"
        r = klpcc("compile", str(patches), "--source", str(src), "-r", release, "-o", str(bundle))
        assert r.returncode == 0, r.stderr
        fixes.append(tmp / f"fix{release}.so")
        r = klpcc("build", str(bundle), "--library", str(lib), "-o", str(fixes[-1]))
        assert r.returncode == 0, r.stderr
    return exe, *fixes


ORIGINAL, PATCHED, PATCHED2 = (400, 0), (500, 1), (600, 1)  # tax(2000) and state 1's version


def test_a_prefork_server_patched_as_a_tree(prefork):
    exe, fix, fix2 = prefork
    s = Server(exe)
    try:
        workers = [s.spawn() for _ in range(3)]
        for w in workers:
            s.latest(w, ORIGINAL)
        r = klpcc("apply", str(fix), "--tree", str(s.pid), "--format", "json")
        assert r.returncode == 0, r.stdout + r.stderr
        doc = json.loads(r.stdout)
        assert {p["pid"]: p["result"] for p in doc["processes"]} == {
            pid: "applied" for pid in [s.pid, *workers]}, doc
        for w in workers:
            s.latest(w, PATCHED)
        # workers forked after the apply serve the new code, and can be patched further
        late = s.spawn()
        s.latest(late, PATCHED)
        st = json.loads(klpcc("status", "--pid", str(late), "--format", "json").stdout)
        assert st["pid"] == late and [p["name"] for p in st["patches"]] == ["0001-release-1"]
        # exec: a fresh image, unpatched
        s.send("exec")
        s.read_until(lambda ln: ln.startswith("w ") and ln.endswith(f" {ORIGINAL[0]} {ORIGINAL[1]}")
                     and int(ln.split()[1]) not in (s.pid, *workers, late))
        # release 2 across the tree, then back to release 1 (a downgrade)
        for patch, want in ((fix2, PATCHED2), (fix, PATCHED)):
            r = klpcc("apply", str(patch), "--tree", str(s.pid))
            assert r.returncode == 0, r.stdout + r.stderr
            for w in (*workers, late):
                s.latest(w, want)
        r = klpcc("disable", "--tree", str(s.pid), "--format", "json")
        assert r.returncode == 0, r.stdout + r.stderr
        assert {p["result"] for p in json.loads(r.stdout)["processes"]} == {"disabled"}
        for w in (*workers, late):
            s.latest(w, ORIGINAL)
    finally:
        s.stop()


def test_forks_while_applies_run(prefork):
    """A worker forked every 2 ms for 4 s while the parent's patch is applied and disabled
    again and again: every child's code and records agree (the value of its code and the
    state version its runtime answers), and the server lives on."""
    exe, fix, _ = prefork
    s = Server(exe)
    try:
        s.send("churn 4000")
        end, cycles = time.monotonic() + 3.5, 0
        while time.monotonic() < end:
            for cmd in (["apply", str(fix)], ["disable"]):
                r = klpcc(*cmd, "--pid", str(s.pid))
                assert r.returncode == 0, r.stdout + r.stderr
            cycles += 1
        s.read_until(lambda ln: ln == "churned", timeout=60)
        seen = [x for v in s.reports.values() for x in v]
        assert len(seen) > 300 and cycles >= 3, (len(seen), cycles)
        assert set(seen) <= {ORIGINAL, PATCHED}, sorted(set(seen) - {ORIGINAL, PATCHED})
        assert set(seen) == {ORIGINAL, PATCHED}  # children were forked in both states
        assert s.p.poll() is None
    finally:
        s.stop()
