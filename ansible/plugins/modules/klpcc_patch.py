#!/usr/bin/python
# Copyright: klpcc
# GNU General Public License v2.0 (see https://www.gnu.org/licenses/old-licenses/gpl-2.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: klpcc_patch
short_description: Put a klpcc cumulative live patch in force on a host, or take it out
description:
  - C(state=present) applies a cumulative release to what it patches -- a userspace patch
    object (C(klpcc build --binary/--library)) to the processes named by O(pids) and those
    mapping O(mapping), or a livepatch module (C(klpcc build --kernel)) to the running
    kernel through C(klpcc-load) -- an atomic replace of whatever release is in force,
    and, with O(install), records it in the host's store so restarts and reboots get it.
  - C(state=absent) disables it where it is in force and removes its record.
  - Idempotent, asked each time of klpcc, the processes and /sys/kernel/livepatch
    (a process that already runs the release, a module already enabled, a record already
    there are left alone, and the task reports C(changed=false)); check mode says what
    would change. The module keeps no state of its own.
  - "The result carries klpcc's own JSON answers (C(klpcc.processes/1), C(klpcc.install/1),
    C(klpcc.inspect/1)): what each process replaced and reverted (nops), and who refused
    and why."
options:
  patch:
    description: The release on the host (a C(.so) patch object or a C(.ko) livepatch module).
    type: path
    required: true
  state:
    description: In force (present) or not (absent).
    type: str
    choices: [present, absent]
    default: present
  target:
    description: userspace or kernel; C(auto) takes the kernel for a C(.ko).
    type: str
    choices: [auto, userspace, kernel]
    default: auto
  pids:
    description: Userspace. The processes to patch.
    type: list
    elements: int
    default: []
  mapping:
    description: Userspace. Also every process that maps this program or library.
    type: path
  install:
    description: Record the release in the host's store (C(klpcc install)), or remove its record when absent.
    type: bool
    default: true
  force:
    description: Allow an older release of the series than the one installed (a rollback).
    type: bool
    default: false
  timeout:
    description: Seconds a process or the kernel may take to switch.
    type: int
    default: 30
  loader:
    description: "Kernel. C(klpcc-load) on the host (default: C(klpcc config --loader))."
    type: path
extends_documentation_fragment:
  - klpcc.fleet.klpcc
"""

EXAMPLES = r"""
- name: Release 3 of the shop service, in its processes and for its restarts
  klpcc.fleet.klpcc_patch:
    patch: /var/lib/klpcc/incoming/shop-r3.so
    mapping: /usr/sbin/shopd

- name: The kernel's cumulative livepatch, and at boot
  klpcc.fleet.klpcc_patch:
    patch: /var/lib/klpcc/incoming/klpcc_fs_r4.ko
  become: true

- name: Back out
  klpcc.fleet.klpcc_patch:
    patch: /var/lib/klpcc/incoming/shop-r3.so
    mapping: /usr/sbin/shopd
    state: absent
"""

RETURN = r"""
patch:
  description: What the release is (klpcc.inspect/1).
  returned: always
  type: dict
processes:
  description: Userspace. klpcc's answer for the processes it asked (klpcc.processes/1), one entry per
    process.
  returned: when processes were changed
  type: dict
unchanged:
  description: Userspace. The processes that already had the release in force (present) or not (absent).
  returned: always
  type: list
install:
  description: klpcc's answer of install or uninstall (klpcc.install/1).
  returned: when the store was asked to change
  type: dict
would:
  description: Check mode, userspace. What would be done (C(action) apply or disable) to which C(pids).
  returned: in check mode, when processes would change
  type: dict
would_record:
  description: Check mode. C(install) or C(uninstall), when the store would change.
  returned: in check mode, when the store would change
  type: str
commands:
  description: Kernel. The loader's commands run (or, in check mode, that would run).
  returned: always
  type: list
kernel:
  description: Kernel. The livepatches the kernel has after the task (name -> enabled, transition).
  returned: always
  type: dict
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.klpcc.fleet.plugins.module_utils.klpcc import (
    Klpcc,
    in_force,
    kernel_commands,
    kernel_patches,
    mapping_pids,
)


def _records(module, k, info):
    """The records the store ``klpcc install`` writes to holds for what the release
    patches: key -> record (``klpcc status --all``'s).  That store is ``state_dir`` when
    given, else the first one klpcc lists."""
    kind = "kernel" if info["kind"] == "kernel-module" else "userspace"
    records = [r for r in k.status_all().get("installed", []) if r.get("kind") == kind]
    if module.params["state_dir"]:
        want = os.path.realpath(module.params["state_dir"])
        records = [r for r in records if os.path.realpath(r["store"]) == want]
    elif records:
        records = [r for r in records if r["store"] == records[0]["store"]]
    if kind == "kernel":
        keys = {info["kernel_release"]}
    else:
        keys = {o["build_id"] for o in info["objects"] if o["kind"] == "program"} or {
            o["build_id"] for o in info["objects"]}
    return {r["key"]: r for r in records if r["key"] in keys}, keys


def _store(module, k, info, result):
    """What the store must do, decided before anything changes: None (nothing),
    "install" or "uninstall".  A newer release of the series recorded there refuses an
    install without ``force`` here, before any process or the kernel is switched."""
    p = module.params
    held, keys = _records(module, k, info)
    if p["state"] == "absent":
        return "uninstall" if any(r["release"] == info["release"] for r in held.values()) else None
    if all(held.get(key, {}).get("release") == info["release"] for key in keys):
        return None
    if not p["force"]:
        for r in held.values():
            other = k.inspect(r["patch"]) if os.path.exists(r["patch"]) else None
            if other and other["series"] == info["series"] and \
                    other["release_index"] > info["release_index"]:
                module.fail_json(msg=f"the store {r['store']} records the newer release {other['release']} "
                                     f"for {r['object']}: force installs the older {info['release']}",
                                 **result)
    return "install"


def _record(module, k, verb, result):
    """Run ``klpcc install|uninstall`` (``verb``; None: nothing to record); changed when
    it changed a record.  In check mode, say it would."""
    if verb is None:
        return
    if module.check_mode:
        result["changed"] = True
        result["would_record"] = verb
        return
    p = module.params
    extra = (["--kernel"] if result["patch"]["kind"] == "kernel-module" else []) + (
        ["--force"] if verb == "install" and p["force"] else [])
    doc = k.run(verb, *extra, p["patch"], "--format", "json")[1] or {}
    result["install"] = doc
    if any(r.get("action") != "unchanged" for r in doc.get("records", [])):
        result["changed"] = True


def _userspace(module, k, info, result):
    p = module.params
    pids = set(p["pids"])
    if p["mapping"]:
        if not os.path.exists(p["mapping"]):
            module.fail_json(msg=f"mapping {p['mapping']}: no such file on the host", **result)
        pids |= set(mapping_pids(p["mapping"]))
    want = p["state"] == "present"
    todo, unchanged, gone = [], [], []
    for pid in sorted(pids):
        answer = k.status(pid)
        if answer is None:
            gone.append(pid)
            continue
        (unchanged if in_force(answer, info["name"]) == want else todo).append(pid)
    result["unchanged"] = unchanged
    # a process that maps it without the runtime is no error; one named in pids is
    named = [pid for pid in gone if pid in p["pids"]]
    if named:
        module.fail_json(msg=f"cannot ask process(es) {', '.join(map(str, named))}: gone, or no klpcc "
                             "runtime", **result)
    store = _store(module, k, info, result) if p["install"] else None
    if todo:
        result["changed"] = True
        if not module.check_mode:
            args = [a for pid in todo for a in ("--pid", pid)]
            if want:
                rc, doc, _, _ = k.run("apply", p["patch"], *args, "--timeout", p["timeout"],
                                      "--format", "json", ok=(0, 1))
            else:
                rc, doc, _, _ = k.run("disable", *args, "--patch", info["name"], "--timeout", p["timeout"],
                                      "--format", "json", ok=(0, 1))
            if doc is not None and "processes" not in doc:
                # one process: klpcc printed its runtime's answer
                ok = "applied" if want else "disabled"
                doc = {"schema": "klpcc.processes/1", "action": "apply" if want else "disable",
                       "processes": [{"pid": todo[0], "result": ok if doc.get("ok") else "refused",
                                      "answer": doc,
                                      **({} if doc.get("ok")
                                         else {"error": f"{doc.get('step')}: {doc.get('error')}"})}]}
            result["processes"] = doc
            if rc != 0:
                bad = [f"{q['pid']}: {q.get('error') or q['result']}"
                       for q in (doc or {}).get("processes", [])
                       if q["result"] not in ("applied", "disabled")]
                module.fail_json(msg=f"{'apply' if want else 'disable'} of {info['name']} refused: "
                                     + "; ".join(bad), **result)
        else:
            result["would"] = {"action": "apply" if want else "disable", "pids": todo}
    _record(module, k, store, result)


def _kernel(module, k, info, result):
    p = module.params
    loader = p["loader"] or k.run("config", "--loader")[2].strip()
    store = _store(module, k, info, result) if p["install"] else None
    loaded = kernel_patches()
    cmds = kernel_commands(p["state"], p["patch"], info["name"], loaded, loader, p["timeout"])
    result["commands"] = cmds
    if cmds:
        result["changed"] = True
        if not module.check_mode:
            for cmd in cmds:
                rc, out, err = module.run_command(cmd)
                if rc != 0:
                    # the loader's own line, not the kernel log lines it adds after it
                    said = [ln for ln in (err.strip() or out.strip()).splitlines() if "dmesg:" not in ln]
                    result["kernel"] = kernel_patches()
                    module.fail_json(msg=f"{' '.join(cmd)}: {said[-1] if said else f'exit {rc}'}", rc=rc,
                                     stdout=out, stderr=err, **result)
    _record(module, k, store, result)
    result["kernel"] = kernel_patches()


def main():
    module = AnsibleModule(
        argument_spec={
            "patch": {"type": "path", "required": True},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "target": {"type": "str", "choices": ["auto", "userspace", "kernel"], "default": "auto"},
            "pids": {"type": "list", "elements": "int", "default": []},
            "mapping": {"type": "path"},
            "install": {"type": "bool", "default": True},
            "force": {"type": "bool", "default": False},
            "timeout": {"type": "int", "default": 30},
            "state_dir": {"type": "path"},
            "socket_dir": {"type": "path"},
            "klpcc": {"type": "path"},
            "loader": {"type": "path"},
        },
        supports_check_mode=True,
    )
    k = Klpcc(module)
    info = k.inspect(module.params["patch"])
    result = {"changed": False, "patch": info, "unchanged": [], "commands": []}
    target = module.params["target"]
    if target == "auto":
        target = "kernel" if info["kind"] == "kernel-module" else "userspace"
    if (target == "kernel") != (info["kind"] == "kernel-module"):
        module.fail_json(msg=f"{module.params['patch']} is a {info['kind']}, not for the {target} target",
                         **result)
    if target == "kernel":
        _kernel(module, k, info, result)
    else:
        _userspace(module, k, info, result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
