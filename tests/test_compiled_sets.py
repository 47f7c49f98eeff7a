"""klpcc.emit.compiled: how the compiled code's answer reshapes a function set --
here, a changed ``static inline`` the kernel kept out of line (no ftrace hook of its
own) is carried by its callers, up the calls."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from klpcc.emit.compiled import CompiledSet, through_callers
from klpcc.emit.policy import Plan
from klpcc.errors import KlpccError
from klpcc.objects import Code

PATH = "fs/x/file.c"


def compiled(*code: Code) -> CompiledSet:
    unit = SimpleNamespace(code={c.symbol: c for c in code})
    report = SimpleNamespace(objects={PATH: (unit, unit)})
    return CompiledSet(report, {PATH: {c.symbol for c in code}}, {}, 0.0)


def fn(name: str, *refs: str, kind: str = "function") -> Code:
    return Code(name, kind, f".text.{name}", "0", tuple(refs))


def test_callers_of_the_out_of_line_copy_join_up_to_one_that_can_be_redirected():
    c = compiled(fn("bread", "__fentry__-4"), fn("helper", "bread-4"),
                 fn("reader", "__fentry__-4", "helper-4"), fn("writer.isra.0", "__fentry__-4", "bread-4"),
                 fn("other", "__fentry__-4"))
    plan = Plan()
    plan.add(PATH, "bread", "modified")
    notes = through_callers(plan, c, lambda path, name: name in {"bread", "helper"})
    fns = plan.functions[PATH]
    # bread and helper (itself a static inline) are compiled in, not redirected; the
    # callers that can be redirected join; the clone counts as its function
    assert fns == {"bread": "added", "helper": "added", "reader": "modified", "writer": "modified"}
    assert any("writer (fs/x/file.c) joins the patch: it calls the out-of-line copy of `bread`" in n
               for n in notes), notes
    assert "other" not in fns


def test_a_copy_whose_address_data_holds_is_refused():
    c = compiled(fn("bread"), fn("ops", "bread+0", kind="data"))
    plan = Plan()
    plan.add(PATH, "bread", "modified")
    with pytest.raises(KlpccError, match="the data ops holds its address"):
        through_callers(plan, c, lambda path, name: True)
