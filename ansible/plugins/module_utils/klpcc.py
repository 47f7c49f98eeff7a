# Copyright: klpcc
# GNU General Public License v2.0 (see https://www.gnu.org/licenses/old-licenses/gpl-2.0.txt)
"""What the klpcc modules share: running klpcc's own commands on the host (every answer
as klpcc's JSON), the processes to patch, and the kernel's livepatch state.  The
modules keep no state of their own: everything is asked of klpcc, the processes and
/sys/kernel/livepatch each time."""

from __future__ import annotations

import json
import os

SYSFS = "/sys/kernel/livepatch"


class Klpcc:
    """klpcc's command line on the managed host, with the host's store and socket
    directory."""

    def __init__(self, module):
        self.module = module
        p = module.params
        self.exe = p.get("klpcc") or module.get_bin_path("klpcc", required=True)
        self.env = {}
        if p.get("state_dir"):
            self.env["KLPCC_STATE_DIR"] = p["state_dir"]
        if p.get("socket_dir"):
            self.env["KLPCC_SOCKET_DIR"] = p["socket_dir"]

    def run(self, *args, ok=(0,)):
        """(exit status, the JSON klpcc printed or None, its stdout, its stderr); any
        other exit status than ``ok`` fails the task with klpcc's own line."""
        argv = [self.exe, *[str(a) for a in args]]
        rc, out, err = self.module.run_command(argv, environ_update=self.env)
        doc = None
        if out.strip().startswith("{"):
            try:
                doc = json.loads(out)
            except ValueError:
                doc = None
        if rc not in ok:
            line = (err.strip().splitlines() or [out.strip()])[-1] if (err.strip() or out.strip()) else ""
            self.module.fail_json(msg=line or f"{' '.join(argv)} exited with {rc}", rc=rc, cmd=argv,
                                  klpcc=doc, stderr=err)
        return rc, doc, out, err

    def inspect(self, path):
        return self.run("inspect", path, "--format", "json")[1]

    def status(self, pid):
        """The runtime's answer of process ``pid``, or None when it cannot be asked (gone,
        no runtime)."""
        rc, doc, _, _ = self.run("status", "--pid", pid, "--format", "json", ok=(0, 1, 2))
        return doc if rc == 0 and doc and doc.get("ok") else None

    def status_all(self):
        return self.run("status", "--all", "--format", "json", ok=(0, 1))[1] or {}


def mapping_pids(path):
    """The processes that map the file ``path`` (a program or a shared library)."""
    want = os.path.realpath(path)
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/maps", encoding="utf-8", errors="surrogateescape") as fh:
                if any(line.rstrip("\n").endswith(" " + want) for line in fh):
                    out.append(int(entry))
        except OSError:
            continue
    return sorted(out)


def in_force(answer, name):
    """Does the runtime's status ``answer`` hold patch ``name`` in force?"""
    return any(p.get("name") == name and p.get("state") == "installed"
               for p in (answer or {}).get("patches", []))


def kernel_patches(sysfs=SYSFS):
    """The livepatches the kernel has: name -> {enabled, transition}."""
    out = {}
    try:
        names = sorted(os.listdir(sysfs))
    except OSError:
        return out
    for name in names:
        state = {}
        for attr in ("enabled", "transition"):
            try:
                with open(os.path.join(sysfs, name, attr), encoding="ascii") as fh:
                    state[attr] = fh.read().strip() == "1"
            except OSError:
                state[attr] = False
        out[name] = state
    return out


def kernel_commands(state, module, name, loaded, loader, timeout):
    """The commands that bring the kernel to ``state`` for livepatch module ``module``
    (its patch ``name``), given ``loaded`` (:func:`kernel_patches`): the loader's, and
    nothing when the kernel is there already.  The klpcc_patch module runs them; on a
    host without Python they are what to run (tests/test_fleet.py runs them in a guest)."""
    there = loaded.get(name, {})
    if state == "present":
        if there.get("enabled") and not there.get("transition"):
            return []
        return [[loader, "--timeout", str(timeout), module]]
    if name in loaded:
        return [[loader, "--timeout", str(timeout), "--disable", name]]
    return []
