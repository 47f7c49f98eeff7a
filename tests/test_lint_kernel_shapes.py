"""``klpcc lint`` and ``klpcc analyze`` on the shapes of real kernel code that stable
updates of Linux 6.1 brought and that once gave false or missing findings.

Every base file is a real file of Debian's ``linux-source-6.1`` (fetched at test time,
see ``tests/test_real_sources.py``); each release is that file with the edit a stable
update made (or one of the same shape), written here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from klpcc.api import AnalyzeOptions, analyze, lint

from .helpers import make_series
from .test_real_sources import fetch_kernel

pytestmark = pytest.mark.slow

VERSION = "6.1.176-1"  # pinned: the edits below are written against these files


def real(*paths: str) -> dict[str, str]:
    root = fetch_kernel(VERSION)
    return {p: (root / p).read_text(errors="surrogateescape") for p in paths}


def run(tmp: Path, base: dict[str, str], release: dict[str, str | None]):
    patches, src = make_series(tmp, base, [release])
    o = AnalyzeOptions(series=[str(patches)], source=str(src))
    return analyze(o), lint(o)


def findings(res, rule: str) -> list:
    return [f for f in res.findings if f.rule.id == rule]


def block(text: str, first: str, last: str) -> tuple[int, int]:
    """Where the block from the line ``first`` to the next ``last`` stands in ``text``."""
    start = text.index(first)
    return start, text.index(last, start) + len(last)


def body_line(text: str, needle: str) -> int:
    return text[: text.index(needle)].count("\n") + 1


def test_the_if_version_that_changed_is_located_and_read(tmp_path: Path):
    # kernel/trace/trace.c defines __ftrace_trace_stack out of line under
    # CONFIG_STACKTRACE and as an empty static inline stub in the #else branch; the
    # release changes the out-of-line one.  Its line and its (not inline) head are
    # that version's; the file is built without ftrace, so U004 says so.
    base = real("kernel/trace/trace.c", "kernel/trace/Makefile")
    text = base["kernel/trace/trace.c"]
    head = ("static void __ftrace_trace_stack(struct trace_buffer *buffer,\n"
            "\t\t\t\t unsigned int trace_ctx,\n\t\t\t\t int skip, struct pt_regs *regs)\n{\n")
    assert text.count(head) == 1, "the out-of-line definition moved: update the test"
    new = text.replace(head, head + "\tif (!buffer)\n\t\treturn;\n")
    a, res = run(tmp_path, base, {"kernel/trace/trace.c": new})
    (e,) = [e for e in a.functions if e.name == "__ftrace_trace_stack"]
    assert e.change == "modified"
    assert e.lines is not None and e.lines[0] == body_line(new, head)
    assert not [f for f in findings(res, "U006") if "__ftrace_trace_stack" in f.message]
    (u004,) = [f for f in findings(res, "U004") if "__ftrace_trace_stack" in f.message]
    assert "kernel/trace/Makefile builds kernel/trace/trace.c without" in u004.message
    assert u004.site.line >= body_line(new, head)


def test_every_function_of_a_file_built_without_ftrace_is_unpatchable(tmp_path: Path):
    # kernel/Makefile: CFLAGS_REMOVE_irq_work.o = $(CC_FLAGS_FTRACE) (under
    # ifdef CONFIG_FUNCTION_TRACER); kernel/trace/Makefile adds the flags back for one
    # file with CFLAGS_trace_selftest_dynamic.o, which only a selftest configuration builds
    base = real("kernel/irq_work.c", "kernel/Makefile", "kernel/fork.c")
    irq = base["kernel/irq_work.c"]
    new_irq = re.sub(r"(void irq_work_sync\(struct irq_work \*work\)\n\{\n)", r"\1\tbarrier();\n", irq)
    fork = base["kernel/fork.c"]
    new_fork = re.sub(r"(void __mmdrop\(struct mm_struct \*mm\)\n\{\n)", r"\1\tbarrier();\n", fork)
    assert new_irq != irq and new_fork != fork
    _, res = run(tmp_path, base, {"kernel/irq_work.c": new_irq, "kernel/fork.c": new_fork})
    u004 = {f.site.function: f.message for f in findings(res, "U004")}
    assert "kernel/Makefile builds kernel/irq_work.c without" in u004.get("irq_work_sync", "")
    assert "__mmdrop" not in u004  # kernel/fork.c keeps ftrace's flags
    # a kernel whose configuration has no function tracer: the makefile removes nothing
    kdir = tmp_path / "kdir"
    kdir.mkdir()
    (kdir / ".config").write_text("CONFIG_LIVEPATCH=y\n# CONFIG_FUNCTION_TRACER is not set\n")
    patches = tmp_path / "patches"
    res2 = lint(AnalyzeOptions(series=[str(patches)], source=str(tmp_path / "base")), kernel=kdir)
    assert not [f for f in findings(res2, "U004") if f.site.function == "irq_work_sync"]


def test_a_function_moved_out_of_an_ifdef_is_not_changed(tmp_path: Path):
    # 6.1.190 moved is_core_idle (kernel/sched/fair.c) out of the
    # '#ifdef CONFIG_NUMA_BALANCING' block, unchanged
    base = real("kernel/sched/fair.c")
    text = base["kernel/sched/fair.c"]
    start, end = block(text, "static inline bool is_core_idle(int cpu)\n", "\n}\n")
    fn = text[start:end]
    outer = text.index("#ifdef CONFIG_NUMA_BALANCING\n")
    assert outer < start
    moved = text[:outer] + fn + "\n" + text[outer:start] + text[end:]
    a, res = run(tmp_path, base, {"kernel/sched/fair.c": moved})
    assert not [e for e in a.functions if e.name == "is_core_idle"]
    assert not [f for f in res.findings if "is_core_idle" in f.message]


def test_a_per_cpu_variable_is_named_as_the_compiler_sees_it(tmp_path: Path):
    # mm/kasan/quarantine.c: static DEFINE_PER_CPU(struct cpu_shrink_qlist, shrink_qlist) = {...}
    base = real("mm/kasan/quarantine.c", "mm/kasan/Makefile")
    text = base["mm/kasan/quarantine.c"]
    old = ".lock = __RAW_SPIN_LOCK_UNLOCKED(shrink_qlist.lock),"
    assert old in text
    new = text.replace(old, old + "\n\t.qlist = { NULL, NULL, 0 },")
    a, res = run(tmp_path, base, {"mm/kasan/quarantine.c": new})
    assert [e.name for e in a.outside if e.change == "modified"] == ["shrink_qlist"]
    (u002,) = findings(res, "U002")
    assert "global shrink_qlist (mm/kasan/quarantine.c)" in u002.message
    assert "cpu_shrink_qlist" not in u002.message


def test_a_struct_is_located_at_its_definition_not_a_forward_declaration(tmp_path: Path):
    # kernel/sched/sched.h declares 'struct rq;' twice before defining it
    base = real("kernel/sched/sched.h", "kernel/sched/core.c")
    text = base["kernel/sched/sched.h"]
    head = "struct rq {\n\t/* runqueue lock: */\n\traw_spinlock_t\t\t__lock;\n"
    assert head in text and text.index("struct rq;\n") < text.index(head)
    new = text.replace(head, head + "\tunsigned int\t\tklpcc_probe;\n")
    a, res = run(tmp_path, base, {"kernel/sched/sched.h": new})
    (e,) = [e for e in a.outside if e.name == "struct rq"]
    assert e.lines is not None and e.lines[0] == body_line(new, head)
    (u001,) = [f for f in findings(res, "U001") if "struct rq " in f.message]
    assert u001.severity == "error"
    assert u001.site.line == body_line(new, head) + 3  # the member added, not 'struct rq;'


def test_a_struct_that_only_lives_on_patched_stacks_is_a_note(tmp_path: Path):
    # mm/damon/vaddr.c: struct damon_young_walk_private is a local of damon_va_young,
    # reached through walk->private by the two page-walk callbacks
    base = real("mm/damon/vaddr.c")
    text = base["mm/damon/vaddr.c"]
    new = text.replace("struct damon_young_walk_private {\n",
                       "struct damon_young_walk_private {\n\tunsigned long klpcc_seen;\n")
    for head in ("static int damon_young_pmd_entry(", "static int damon_young_hugetlb_entry(",
                 "static bool damon_va_young("):
        at = new.index("{\n", new.index(head)) + 2
        new = new[:at] + "\tbarrier();\n" + new[at:]
    a, res = run(tmp_path, base, {"mm/damon/vaddr.c": new})
    (u001,) = findings(res, "U001")
    assert u001.severity == "note", u001.message
    assert "live only on the stacks" in u001.message
    # the same struct also allocated on the heap stays an error
    keep = ("static void *klpcc_keep(void)\n{\n\treturn kzalloc(sizeof(struct damon_young_walk_private), "
            "GFP_KERNEL);\n}\n\n")
    heap = new.replace("static bool damon_va_young(", keep + "static bool damon_va_young(")
    _, res = run(tmp_path / "heap", base, {"mm/damon/vaddr.c": heap})
    (u001,) = findings(res, "U001")
    assert u001.severity == "error"


def test_a_struct_moved_to_a_new_header_is_compared_with_itself(tmp_path: Path):
    # a stable update moved struct cpuset from kernel/cgroup/cpuset.c into a new
    # header, changing a member's type on the way
    base = real("kernel/cgroup/cpuset.c")
    text = base["kernel/cgroup/cpuset.c"]
    start, end = block(text, "struct cpuset {\n", "\n};\n")
    struct = text[start:end]
    assert "\tint relax_domain_level;\n" in struct
    header = "#ifndef CPUSET_INTERNAL_H\n#define CPUSET_INTERNAL_H\n" + \
        struct.replace("\tint relax_domain_level;\n", "\tlong relax_domain_level;\n") + "#endif\n"
    moved = text[:start] + '#include "cpuset-internal.h"\n' + text[end:]
    _, res = run(tmp_path, base, {"kernel/cgroup/cpuset.c": moved,
                                  "kernel/cgroup/cpuset-internal.h": header})
    (u001,) = [f for f in findings(res, "U001") if "struct cpuset " in f.message]
    assert "kernel/cgroup/cpuset-internal.h (moved from kernel/cgroup/cpuset.c)" in u001.message
    # moved unchanged: nothing to say
    same = "#ifndef CPUSET_INTERNAL_H\n#define CPUSET_INTERNAL_H\n" + struct + "#endif\n"
    _, res = run(tmp_path / "same", base, {"kernel/cgroup/cpuset.c": moved,
                                           "kernel/cgroup/cpuset-internal.h": same})
    assert not [f for f in findings(res, "U001") if "struct cpuset " in f.message]


def test_a_static_function_made_global_and_called_elsewhere(tmp_path: Path):
    base = real("mm/damon/vaddr.c", "mm/damon/core.c")
    vaddr = base["mm/damon/vaddr.c"]
    head = "static int damon_va_evenly_split_region(struct damon_target *t,"
    assert head in vaddr
    vaddr_new = vaddr.replace(head, "int damon_va_evenly_split_region(struct damon_target *t,")
    core = base["mm/damon/core.c"]
    call = "void damon_add_region(struct damon_region *r, struct damon_target *t)\n{\n"
    assert call in core
    core_new = core.replace(call, "int damon_va_evenly_split_region(struct damon_target *t,\n"
                            "\t\tstruct damon_region *r, unsigned int nr_pieces);\n\n"
                            + call + "\tif (!r->nr_accesses)\n\t\tdamon_va_evenly_split_region(t, r, 1);\n")
    _, res = run(tmp_path, base, {"mm/damon/vaddr.c": vaddr_new, "mm/damon/core.c": core_new})
    (u008,) = findings(res, "U008")
    assert "static damon_va_evenly_split_region() (mm/damon/vaddr.c) global" in u008.message
    assert "damon_add_region" in u008.message
    assert "__damon_va_init_regions" in u008.message  # its caller in vaddr.c, not patched
    assert u008.severity == "warning"  # its code did not change
