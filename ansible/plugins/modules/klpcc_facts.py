#!/usr/bin/python
# Copyright: klpcc
# GNU General Public License v2.0 (see https://www.gnu.org/licenses/old-licenses/gpl-2.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: klpcc_facts
short_description: What klpcc has installed and in force on a host
description:
  - Sets C(ansible_facts.klpcc) -- for inventories, reports and the rollout role -- from
    klpcc itself (C(klpcc status --all), C(klpcc inspect)) and /sys/kernel/livepatch.
  - "C(processes) -- every process that runs the klpcc runtime, or those of O(pids) and
    O(mapping) -- with the patches in force in each; C(releases) the releases in force
    in them; C(installed) the records of the host's stores; C(kernel) the kernel's
    livepatches; C(release) the one release in force over everything asked (null when
    none, or when they differ: C(mixed))."
options:
  pids:
    description: Only these processes.
    type: list
    elements: int
    default: []
  mapping:
    description: Only (and also) the processes that map this program or library.
    type: path
  processes:
    description: Ask the processes (false for a kernel host, where they are not what is rolled out).
    type: bool
    default: true
  kernel:
    description: Ask the kernel's livepatches (a module's patch name is not its release; O(patches) names
      the releases).
    type: bool
    default: true
  patches:
    description: Releases on the host (C(.so)/C(.ko)) whose names tell which release a kernel livepatch is.
    type: list
    elements: path
    default: []
extends_documentation_fragment:
  - klpcc.fleet.klpcc
"""

EXAMPLES = r"""
- klpcc.fleet.klpcc_facts:
    mapping: /usr/sbin/shopd
- ansible.builtin.debug:
    msg: "{{ inventory_hostname }} runs {{ ansible_facts.klpcc.release }}"
"""

RETURN = r"""
ansible_facts:
  description: "C(klpcc) -- C(processes) ([{pid, command, patches: [{name, state}]}]), C(releases),
    C(release), C(mixed), C(installed) (the stores' records), C(kernel) (name -> enabled, transition,
    release)."
  returned: always
  type: dict
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.klpcc.fleet.plugins.module_utils.klpcc import Klpcc, kernel_patches, mapping_pids


def main():
    module = AnsibleModule(
        argument_spec={
            "pids": {"type": "list", "elements": "int", "default": []},
            "mapping": {"type": "path"},
            "processes": {"type": "bool", "default": True},
            "kernel": {"type": "bool", "default": True},
            "patches": {"type": "list", "elements": "path", "default": []},
            "state_dir": {"type": "path"},
            "socket_dir": {"type": "path"},
            "klpcc": {"type": "path"},
        },
        supports_check_mode=True,
    )
    p = module.params
    if p["mapping"] and not os.path.exists(p["mapping"]):
        module.fail_json(msg=f"mapping {p['mapping']}: no such file on the host")
    k = Klpcc(module)
    fleet = k.status_all()
    chosen = set(p["pids"]) | (set(mapping_pids(p["mapping"])) if p["mapping"] else set())
    selected = bool(p["pids"] or p["mapping"])  # else every process running the runtime
    processes = []
    for q in fleet.get("processes", []) if p["processes"] else ():
        if selected and q["pid"] not in chosen:
            continue
        answer = q.get("answer") or {}
        processes.append({"pid": q["pid"], "command": q.get("command", ""), "result": q["result"],
                          "patches": [{"name": x.get("name"), "state": x.get("state")}
                                      for x in answer.get("patches", [])]})
    for pid in sorted(chosen - {q["pid"] for q in processes}) if p["processes"] else ():
        processes.append({"pid": pid, "command": "", "result": "no-runtime", "patches": []})
    names = {}
    for path in p["patches"]:
        info = k.inspect(path)
        names[info["name"]] = info["release"]
    kernel = {}
    if p["kernel"]:
        for name, state in kernel_patches().items():
            kernel[name] = {**state, "release": names.get(name)}
    # a process that maps the library but runs no runtime has nothing in force to compare
    per_process = [sorted({x["name"] for x in q["patches"] if x["state"] == "installed"}) for q in processes
                   if q["result"] != "no-runtime"]
    releases = sorted({r for rs in per_process for r in rs}
                      | {v["release"] or n for n, v in kernel.items() if v["enabled"]})
    whole = {tuple(rs) for rs in per_process} | ({tuple(sorted(
        v["release"] or n for n, v in kernel.items() if v["enabled"]))} if kernel else set())
    mixed = len(whole) > 1
    release = releases[0] if len(releases) == 1 and not mixed else None
    facts = {"processes": processes, "releases": releases, "release": release, "mixed": mixed,
             "installed": fleet.get("installed", []), "kernel": kernel}
    module.exit_json(changed=False, ansible_facts={"klpcc": facts})


if __name__ == "__main__":
    main()
