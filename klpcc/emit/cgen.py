"""C text the targets generate: literals and the callback trampolines."""

from __future__ import annotations


def c_string(text: str) -> str:
    """``text`` escaped for a C string literal on one line (no newlines in it)."""
    return text.replace("\\", "\\\\").replace('"', '\\"')


def c_literal(text: str) -> str:
    """``text`` (any length, newlines and tabs included) as adjacent C string literals."""
    chunks = []
    for i in range(0, len(text), 100):
        part = c_string(text[i:i + 100]).replace("\n", "\\n").replace("\t", "\\t")
        chunks.append(f'"{part}"')
    return "\n\t\t".join(chunks) or '""'


def callback_trampoline(kind: str, fn: str, units: list[int], params: str, args: str) -> list[str]:
    """C lines of ``fn``, the callback of ``kind`` that calls every unit's (a pre_patch
    stops at the first error)."""
    if kind == "pre_patch":
        out = ["", f"static int {fn}({params})", "{", "\tint ret;", ""]
        for i in units:
            out += [f"\tret = klpcc_cb_pre_patch_{i}({args});", "\tif (ret)", "\t\treturn ret;"]
        return out + ["\treturn 0;", "}"]
    return ["", f"static void {fn}({params})", "{", *[f"\tklpcc_cb_{kind}_{i}({args});" for i in units], "}"]
