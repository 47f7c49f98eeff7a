"""The rules: can release R's cumulative patch safely replace an installed release K?"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .. import kbuild
from ..c import Item, is_c_file, mask, parser
from ..c import tokens as c_tokens
from ..c.language import ANNOTATION_WORDS
from ..history import ADDED, MODIFIED, REMOVED, Analysis, Replay, item_key, pick_variant
from ..objects import is_readonly
from .facts import ALLOCATING, Extractor, ReleaseFacts, ShadowUse, Site, char_span
from .locate import added_by, removed_by

ERROR, WARNING, NOTE = "error", "warning", "note"
SEVERITIES = (ERROR, WARNING, NOTE)


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    name: str
    severity: str
    summary: str  # one line
    description: str  # what goes wrong at run time
    hint: str


RULES: tuple[Rule, ...] = (
    Rule("S001", "state-dropped", ERROR,
         "The release drops a system state an earlier release declares.",
         "An atomic replace is allowed only when the new patch supports every state id of the "
         "installed one; the kernel's klp_is_patch_compatible() refuses it (-EINVAL), and "
         "klpcc's userspace runtime refuses it the same way.",
         "Keep the state (same id, same or higher version) in the release's klp_state array, "
         "and take it over in its callbacks."),
    Rule("S002", "state-version-lowered", ERROR,
         "The release declares a system state at a lower version than an earlier release.",
         "A replace may not lower a state's version: klp_is_patch_compatible() refuses it "
         "(-EINVAL); an older cumulative release cannot replace a newer one past a state.",
         "Declare the state at the installed version or higher."),
    Rule("S003", "state-not-declared", WARNING,
         "The release's code asks for a system state it does not declare.",
         "klp_get_state() and klp_get_prev_state() look a state up by the ids the patch "
         "declares; for an undeclared id they return NULL, and the take-over they guard never "
         "happens.",
         "Declare the state in the release's klp_state array (or KLPCC_STATE), or fix the id."),
    Rule("C001", "unpatch-callbacks-lost", ERROR,
         "An earlier release's unpatch callbacks never run once this release replaces it.",
         "On an atomic replace only the new patch's callbacks run; the replaced patch's "
         "pre_unpatch/post_unpatch callbacks are skipped, so whatever they would undo stays.",
         "Declare a klp_state the earlier release declares and take it over "
         "(klp_get_prev_state) in this release's callbacks, or add callbacks that undo it."),
    Rule("C002", "unpatch-callback-not-taken-over", WARNING,
         "An earlier release's unpatch callback has no counterpart in this release.",
         "The replaced patch's unpatch callback never runs, and this release has callbacks but "
         "none of that kind and shares no system state with it.",
         "Add the same kind of callback, or a shared klp_state that hands the work over."),
    Rule("C003", "post-patch-effects-lost", WARNING,
         "An earlier release's post_patch callback changes system state nobody takes over.",
         "The replaced patch's post_patch callback changed the system; this release neither "
         "declares a state that takes it over nor has callbacks to keep or undo it.",
         "Declare a klp_state for it in both releases and check it with klp_get_prev_state."),
    Rule("H001", "shadow-type-mismatch", ERROR,
         "One shadow variable id holds data of different types or sizes across releases.",
         "Shadow variables survive an atomic replace: the new patch reads data an older one "
         "allocated, with the old layout.",
         "Use a new shadow id for the new layout, and migrate or free the old one in a "
         "post_patch callback."),
    Rule("H002", "shadow-get-unallocated", ERROR,
         "A shadow variable id is read or freed but no release up to this one allocates it.",
         "klp_shadow_get() always returns NULL for an id nothing allocates.",
         "Allocate it (klp_shadow_alloc/klp_shadow_get_or_alloc), or fix the id."),
    Rule("H003", "shadow-leak", WARNING,
         "An earlier release allocates a shadow variable this release neither uses nor frees.",
         "After the replace, every object keeps the old release's shadow data and nothing "
         "frees it.",
         "Free it in a post_patch callback with klp_shadow_free_all(id, dtor), or keep using it."),
    Rule("H004", "shadow-destructor-mismatch", WARNING,
         "Releases free one shadow variable id with different destructors.",
         "Data allocated by one release is freed by another's destructor.",
         "Use one destructor for the id in every release."),
    Rule("H005", "shadow-free-in-teardown", WARNING,
         "Shadow variables are freed in module exit / destructor code.",
         "With atomic replace a patch's exit code runs after it was replaced, freeing data the "
         "replacing patch still uses; a post_unpatch callback runs only when patching is "
         "really undone.",
         "Free shadow variables in a post_unpatch callback instead."),
    Rule("U001", "struct-layout-changed", ERROR,
         "The release changes the layout of an existing struct or union.",
         "Objects that exist in the running program keep the old layout, and unpatched code "
         "keeps using it.",
         "Keep the struct and attach the new fields with a shadow variable."),
    Rule("U002", "global-initializer-changed", ERROR,
         "The release changes the initialiser or type of an existing global variable.",
         "A live patch replaces functions, not data: the running program keeps the old value.",
         "Set the new value in a post_patch callback (and restore it in post_unpatch), or "
         "use a new variable."),
    Rule("U007", "data-changed", ERROR,
         "The compiled release changes data the running program already holds.",
         "A live patch replaces functions, not data: a changed static local or global keeps "
         "its old value in the running program (found by the object-level check).",
         "Set the new value in a post_patch callback, or keep the data and add a new variable "
         "or a shadow variable."),
    Rule("U003", "signature-changed", ERROR,
         "A patched function's signature changed while some of its callers are not patched.",
         "Unpatched callers keep calling the new code with the old arguments.",
         "Keep the signature and add a new function, or patch every caller in the same release."),
    Rule("U004", "unpatchable-function", ERROR,
         "The release changes a function a live patch cannot redirect.",
         "__init/__exit code is discarded after use, and notrace/noinstr functions and the "
         "functions of files the kernel's makefiles build without ftrace's flags "
         "(CFLAGS_REMOVE_file.o, ccflags-remove-y) have no ftrace entry hook, so the change "
         "never takes effect.",
         "Fix the callers, or carry the change in a callback."),
    Rule("U005", "header-inline-changed", ERROR,
         "A static inline function of a header changed while some callers are not patched.",
         "Every caller holds its own inlined copy of the old code; only patched callers get "
         "the change.",
         "Patch every caller listed in the same release."),
    Rule("U008", "static-made-global", WARNING,
         "A static function becomes global and gains callers in other files.",
         "The running program has only its static copy: the patch carries a second, global one "
         "for the new callers, and nothing redirects the static copy, so unpatched callers in its "
         "file keep the old code (an error when the release also changes that code).",
         "Keep the function static and add a global wrapper, or patch its callers in its file too."),
    Rule("U009", "change-not-carried", WARNING,
         "The release changes assembly, a build file or a linker script.",
         "A live patch replaces C functions in the running code; assembly, makefiles, Kconfig "
         "and linker scripts are not part of it, so their changes never reach the running system.",
         "Carry the change in C (a patched function or a callback), or ship it with the next "
         "full update."),
    Rule("U006", "inline-function-changed", WARNING,
         "An inline function changed: its callers may hold inlined copies of the old code.",
         "A function the compiler inlined has no single entry to redirect.",
         "Patch its callers too, or check with the object-level comparison."),
)
RULE = {r.id: r for r in RULES}


@dataclass(frozen=True, slots=True)
class Finding:
    rule: Rule
    message: str
    release: str
    against: tuple[str, ...]
    site: Site | None  # the source line in the release (or in the release it names)
    patch: tuple[str, int] | None  # the offending hunk line: (patch file, line)
    hint: str
    level: str | None = None  # this finding's severity, where it is not the rule's

    @property
    def severity(self) -> str:
        return self.level or self.rule.severity


_SCAN_LINES = 20_000  # lines of a file searched for the first one a patch put there
_ASSEMBLY = (".S", ".s", ".asm")
_LINKER = (".lds", ".ld", ".lds.S")
_BUILD = frozenset({"Makefile", "makefile", "GNUmakefile", "Kbuild", "CMakeLists.txt", "meson.build",
                    "configure", "configure.ac", "configure.in", "Makefile.am", "Makefile.in"})


def _logical_lines(make: bytes) -> Counter:
    """The lines of a makefile, continued lines joined."""
    return Counter(make.decode("utf-8", "replace").replace("\\\n", " ").splitlines())


def _words(lines: Counter) -> Counter:
    return Counter(w for line, n in lines.items() for w in line.split() for _ in range(n))


# what a makefile line that adds objects is made of besides them: 'obj-y +=', 'foo-objs :=',
# 'obj-$(CONFIG_FOO) +='
_MAKE_ASSIGN = re.compile(r"[+:?]?=|[\w$()-]*-(?:y|m|objs|\$\(CONFIG_\w+\))")


def not_carried(path: str) -> str | None:
    """What ``path`` is when a live patch cannot carry its changes (assembly, a build
    file, a linker script), or None."""
    name = path.rsplit("/", 1)[-1]
    if name.endswith(_LINKER):
        return "a linker script"
    if name.endswith(_ASSEMBLY):
        return "assembly"
    if name in _BUILD or name.startswith(("Kconfig", "Makefile.")) or name.endswith((".mk", ".cmake")):
        return "a build file"
    return None


class Checker:
    def __init__(self, rep: Replay, extractor: Extractor, facts: dict[int, ReleaseFacts],
                 analysis: Analysis, kernel_config: Mapping[str, str] | None = None):
        self.rep = rep
        # the configuration Kbuild makefiles are read with (for the ftrace flags of a file)
        self.kernel_config = dict(kernel_config if kernel_config is not None else kbuild.LIVEPATCH_CONFIG)
        self._untraced: dict[str, str | None] = {}
        self._moved: dict[str, str] = {}  # key of a type the release moves -> the file it left
        self.x = extractor
        self.facts = facts
        self.analysis = analysis
        self.release = analysis.release
        self.findings: list[Finding] = []
        self._seen: dict[tuple, int] = {}
        self._layout_detail: dict[str, str] = {}
        self.notes: list[str] = []
        self._globals_said: set[str] = set()  # globals U002 names

    @property
    def rname(self) -> str:
        return self.rep.releases[self.release - 1]

    def name(self, release: int) -> str:
        return self.rep.releases[release - 1]

    def add(self, rule_id: str, message: str, site: Site | None, against: Iterable[int] = (),
            patch: tuple[str, int] | None = None, key: tuple = (), hint: str | None = None,
            level: str | None = None) -> None:
        rule = RULE[rule_id]
        if site is not None and patch is None:
            patch = added_by(self.rep, site.release, site.file, site.line)
        names = tuple(self.name(k) for k in against)
        dedupe = (rule_id, *key) if key else None
        if dedupe is not None and dedupe in self._seen:
            # the same finding against a later release: keep its account (the earlier
            # releases are checked first), and every release it holds against
            i = self._seen[dedupe]
            old = self.findings[i]
            merged = tuple(dict.fromkeys(old.against + names))
            self.findings[i] = Finding(rule, message, self.rname, merged, site, patch, hint or rule.hint,
                                       level)
            return
        if dedupe is not None:
            self._seen[dedupe] = len(self.findings)
        self.findings.append(Finding(rule, message, self.rname, names, site, patch, hint or rule.hint, level))

    # -- states -----------------------------------------------------------------

    def states(self, k: int) -> None:
        fk, fr = self.facts[k], self.facts[self.release]
        for st in fk.states:
            mine = fr.state(st.id)
            if mine is None and (isinstance(st.id, str) or any(isinstance(x.id, str) for x in fr.states)):
                # an id that could not be computed may be any of the others: no verdict
                self.notes.append(f"system state {st.shown} of release {fk.name} and the states of "
                                  f"release {self.rname} could not all be computed; not compared")
                continue
            if mine is None:
                patch = removed_by(self.rep, k, self.release, st.site.file, st.site.line) \
                    if k < self.release and st.origin == "code" else None
                self.add("S001",
                         f"release {self.rname} drops system state {st.shown} (version {st.version}) "
                         f"that release {fk.name} declares ({st.site.file}:{st.site.line}): the "
                         f"kernel's klp_is_patch_compatible() refuses the replace with -EINVAL",
                         st.site, [k], patch=patch, key=(st.id,))
            elif mine.version < st.version:
                self.add("S002",
                         f"release {self.rname} declares system state {st.shown} at version "
                         f"{mine.version}, lower than version {st.version} in release {fk.name}: "
                         "the kernel's klp_is_patch_compatible() refuses the replace with -EINVAL",
                         mine.site, [k], key=(st.id,))

    def queries(self) -> None:
        fr = self.facts[self.release]
        declared = {s.id for s in fr.states}
        for what, sid, site in fr.state_queries:
            if sid not in declared:
                call = "klp_get_prev_state" if what == "get_prev" else "klp_get_state"
                self.add("S003", f"{site.function or 'the patch'} asks for system state {sid} "
                         f"({call}) but release {self.rname} does not declare it: the call "
                         "returns NULL", site, key=(sid, site.file, site.line))

    # -- callbacks --------------------------------------------------------------

    def callbacks(self, k: int) -> None:
        fk, fr = self.facts[k], self.facts[self.release]
        shared = {s.id for s in fk.states} & {s.id for s in fr.states}
        if shared:
            return
        mine = {c.kind for c in fr.callbacks}
        for cb in fk.callbacks:
            if cb.kind not in ("pre_unpatch", "post_unpatch"):
                continue
            if not fr.callbacks:
                self.add("C001",
                         f"release {fk.name}'s {cb.kind} callback {cb.function}() never runs once "
                         f"release {self.rname} replaces it: {self.rname} neither declares a "
                         f"system state {fk.name} declares nor has callbacks of its own",
                         cb.site, [k], key=(cb.kind, cb.function))
            elif cb.kind not in mine:
                self.add("C002",
                         f"release {fk.name}'s {cb.kind} callback {cb.function}() never runs once "
                         f"release {self.rname} replaces it, and {self.rname} has no {cb.kind} "
                         "callback nor a shared system state to take its work over",
                         cb.site, [k], key=(cb.kind, cb.function))
        if fr.callbacks:
            return
        for cb in fk.callbacks:
            if cb.kind == "post_patch" and cb.effects:
                self.add("C003",
                         f"release {fk.name}'s post_patch callback {cb.function}() changes system "
                         f"state ({cb.effects[0]}) that release {self.rname} neither takes over "
                         "(no shared klp_state) nor keeps or undoes (no callbacks)",
                         cb.site, [k], key=(cb.function,))

    # -- shadow variables -------------------------------------------------------

    def shadows(self, against: list[int]) -> None:
        r = self.release
        fr = self.facts[r]
        upto = sorted({*range(1, r + 1), *against})
        uses: dict[object, list[ShadowUse]] = {}
        for rel in upto:
            for u in self.facts[rel].shadows:
                uses.setdefault(u.id, []).append(u)
        # H001: one id, several types
        for sid, us in uses.items():
            clash = _type_clash([u for u in us if u.type or u.size])
            if clash is None:
                continue
            u1, u2, how = clash
            if how == "exact":
                detail = (f"it holds `{u1.type}` in release {self.name(u1.site.release)} "
                          f"({u1.site.file}:{u1.site.line}; {u1.exact}) but `{u2.type}` in release "
                          f"{self.name(u2.site.release)} ({u2.exact})")
            elif how == "definition":
                detail = (f"`{u1.type}` changes its definition between release "
                          f"{self.name(u1.site.release)} and release {self.name(u2.site.release)}")
            else:
                detail = (f"it holds {_show_use(u1)} in release {self.name(u1.site.release)} "
                          f"({u1.site.file}:{u1.site.line}) but {_show_use(u2)} in release "
                          f"{self.name(u2.site.release)}")
            mine = next((u for u in reversed(us) if u.site.release == r and (u.type or u.size)), u2)
            self.add("H001", f"shadow variable {mine.shown}: {detail}", mine.site,
                     sorted({u.site.release for u in (u1, u2) if u.site.release != r}), key=(sid,))
        allocated = {u.id for rel in range(1, r + 1) for u in self.facts[rel].shadows if u.op in ALLOCATING}
        for u in fr.shadows:
            if u.op in ("get", "free") and u.id not in allocated:
                self.add("H002", f"shadow variable {u.shown} is {'read' if u.op == 'get' else 'freed'} "
                         f"({u.op}) in release {self.rname} but no release up to {self.rname} "
                         "allocates it", u.site, key=(u.id, u.site.file, u.site.line))
        used_now = {u.id for u in fr.shadows}
        for k in against:
            for u in self.facts[k].shadows:
                if u.op in ALLOCATING and u.id not in used_now:
                    self.add("H003", f"release {self.name(k)} allocates shadow variable {u.shown}; "
                             f"release {self.rname} neither uses nor frees it, so it leaks on every "
                             "object after the replace", u.site, [k], key=(u.id,))
        for sid, us in uses.items():
            dtors = {}
            for u in us:
                if u.op in ("free", "free_all"):
                    dtors.setdefault(u.dtor, u)
            if len(dtors) > 1:
                (d1, u1), (d2, u2) = list(dtors.items())[:2]
                mine = next((u for u in reversed(us) if u.op.startswith("free") and u.site.release == r), u2)
                self.add("H004", f"shadow variable {mine.shown} is freed with destructor {d1 or 'NULL'} in "
                         f"release {self.name(u1.site.release)} but {d2 or 'NULL'} in release "
                         f"{self.name(u2.site.release)}", mine.site,
                         [u.site.release for u in dtors.values() if u.site.release != r], key=(sid,))
        for u in fr.shadows:
            if u.op in ("free", "free_all") and u.teardown:
                self.add("H005", f"shadow variable {u.shown} is freed in {u.site.function}(), exit code "
                         "that runs when the module is removed, also after an atomic replace while "
                         "the replacing patch still uses it", u.site, key=(u.id, u.site.function))

    # -- unsupported changes ----------------------------------------------------

    def unsupported(self) -> None:
        r = self.release
        a = self.analysis
        patched_now = {e.key for e in a.functions if e.change in (MODIFIED, ADDED)}
        pending: list[tuple] = []
        # a type the release moves to another file (a new header, say) is the same type
        gone = {(e.kind, e.name): e for e in a.outside
                if e.change == REMOVED and e.kind in ("type", "typedef")}
        for e in a.outside:
            if e.change == ADDED and (e.kind, e.name) in gone:
                self._moved[e.key] = gone[e.kind, e.name].file
            elif e.change != MODIFIED:
                continue
            struct = e.kind == "type" and not e.name.startswith("enum ")
            if struct or (e.kind == "typedef" and self._defines_struct(e)):
                pending.append(("U001", e, [_type_needle(n) for n in e.name.split(", ")]))
            elif e.kind == "variable" and not self._cosmetic(e):
                self._globals_said.update(e.name.split(", "))
                self.add("U002", f"release {self.rname} changes the initialiser or type of global "
                         f"{e.name} ({e.file}); the running program keeps its old value", self._site(e),
                         key=(e.key,))
        for e in a.functions:
            if e.change != MODIFIED or self._cosmetic(e):
                continue
            head_new = self._head(e, r)
            head_old = self._head(e, 0)
            if head_new is None:
                continue
            marks = re.findall(r"\b(__init|__exit|notrace|noinstr|__noinstr_section)\b", head_new)
            if marks:
                self.add("U004", f"{e.name}() is {marks[0]}: a live patch cannot redirect it; "
                         f"release {self.rname}'s change to it never takes effect", self._site(e),
                         key=(e.key,))
            elif (why := self.untraced(e.file)) is not None:
                self.add("U004", f"{e.name}() has no ftrace entry hook: {why}, so a live patch cannot "
                         f"redirect it; release {self.rname}'s change to it never takes effect",
                         self._site(e), key=(e.key,))
            inline = re.search(r"\b(inline|__inline__|__always_inline)\b", head_new)
            if inline and e.file.endswith(".h"):
                pending.append(("U005", e, [("call", e.name)]))
            elif inline:
                pending.append(("U006", e, [("call", e.name)]))
            if head_old is not None and _signature(head_old) != _signature(head_new):
                pending.append(("U003", e, [("call", e.name)]))
        for e in a.outside:
            what = not_carried(e.file) if e.kind == "file" else None
            if what is not None and e.change in (MODIFIED, ADDED, REMOVED) \
                    and not self._builds_added_units(e):
                verb = {MODIFIED: "changes", ADDED: "adds", REMOVED: "removes"}[e.change]
                site, patch = self._file_site(e.file) if e.change != REMOVED else (None, None)
                self.add("U009", f"release {self.rname} {verb} {e.file} ({what}), which a live patch does "
                         "not carry: the running system keeps what it was built with", site, patch=patch,
                         key=(e.key,))
        gone_static = {e.name: e for e in a.functions if e.change == REMOVED and e.static}
        for e in a.functions:
            if e.change == ADDED and not e.static and e.name in gone_static:
                pending.append(("U008", e, [("call", e.name)]))
        if not pending:
            return
        touched = set(self.rep.snapshots.paths())
        names = {n for p in pending for n in _plain_names(p[1].name)}
        try:
            elsewhere = self.rep.base.mentions(names)
        except OSError:
            elsewhere = {}
        # files of the base the series does not touch that name them: read them too,
        # up to a limit per name (headers first: few, and where prototypes stand), to
        # name the functions there
        scanned: set[str] = set()
        for n in sorted(names):
            mine = sorted((p for p in elsewhere.get(n, []) if p not in touched),
                          key=lambda p: (not p.endswith(".h"), p))
            scanned.update(mine[:_SCAN_PER_NAME])
            if len(scanned) >= _SCAN_LIMIT:
                break
        local = self._local_users([p[2] for p in pending], patched_now, sorted(touched | scanned))
        for (rule_id, e, _), users in zip(pending, local):
            others = sorted({p for n in _plain_names(e.name) for p in elsewhere.get(n, [])
                             if p not in touched and p not in scanned})
            if (rule_id in ("U003", "U005") and e.static or rule_id == "U001") and e.file.endswith(".c"):
                # a static function, or a type a C file defines, is seen in that file alone
                # (a type of the same name elsewhere is another type)
                others = []
                users = [u for u in users if u[1] == e.file]
            if rule_id != "U001":  # callers: calls in the body
                users = [u for u in users if u[3]]
            unpatched = [f"{fn} ({path})" for fn, path, is_patched, _ in users
                         if not is_patched and fn != e.name]
            patched = [fn for fn, _, is_patched, _ in users if is_patched and fn != e.name]
            listing = _listing(unpatched, others)
            site = self._site(e)
            if rule_id == "U001":
                if not self._layout_changed(e, [u[1] for u in users]):
                    continue
                where = f"; unpatched code uses it: {listing}" if listing else ""
                how = f" ({self._layout_detail[e.key]})" if e.key in self._layout_detail else ""
                stack = None if listing else self._stack_only(e, users)
                if stack is not None:
                    self.add("U001", f"release {self.rname} changes the layout of {e.name} ({e.file}){how}; "
                             f"its objects live only on the stacks of functions the patch replaces "
                             f"({', '.join(stack)}): none outlives the switch to the new code", site,
                             key=(e.key,), level=NOTE, hint="Nothing to do: no object of the old layout "
                             "is left once every task has switched.")
                    continue
                moved = f" (moved from {self._moved[e.key]})" if e.key in self._moved else ""
                self.add("U001", f"release {self.rname} changes the layout of {e.name} "
                         f"({e.file}{moved}){how}: "
                         f"objects the running program already has keep the old layout{where}",
                         site, key=(e.key,))
            elif rule_id == "U003" and listing:
                self.add("U003", f"release {self.rname} changes the signature of {e.name}() but not "
                         f"all its callers: {listing} still call it the old way", site, key=(e.key,))
            elif rule_id == "U005" and listing:
                self.add("U005", f"release {self.rname} changes static inline {e.name}() in header "
                         f"{e.file}; these callers hold inlined copies and must be patched with "
                         f"it: {listing}", site, key=(e.key,))
            elif rule_id == "U008":
                old = gone_static[e.name]
                outside = sorted({fn for fn, path, _, _ in users if path != old.file and fn != e.name})
                if not outside:
                    continue
                stay = sorted({fn for fn, path, is_patched, _ in users
                               if path == old.file and not is_patched and fn != e.name})
                changed = self._code_without_static(old, 0) != self._code_without_static(e, self.release)
                keep = (f"; unpatched callers in {old.file} keep calling the static copy"
                        f"{' without the change' if changed else ''}: {', '.join(stay)}") if stay else ""
                self.add("U008", f"release {self.rname} makes static {e.name}() ({old.file}) global and "
                         f"calls it from {', '.join(outside[:8])}{' ...' if len(outside) > 8 else ''}: the "
                         f"running program has only its static copy{keep}", site, key=(e.key,),
                         level=ERROR if changed and stay else None)
            elif rule_id == "U006":
                if not listing and patched:
                    # every caller found is patched with it and carries the new copy, unless
                    # a caller is inline itself, inlined in turn into unpatched code
                    listing = ", ".join(self._through_inline(e.file, patched, patched_now))
                    if not listing:
                        continue
                who = listing or "none found"
                self.add("U006", f"release {self.rname} changes inline function {e.name}() "
                         f"({e.file}); callers that may hold an inlined copy and are not patched: "
                         f"{who}", site, key=(e.key,))
        return

    def data(self, report) -> None:
        """Writable data the compiled release changes (``--objects``)."""
        for d in report.data:
            if d.change != "changed" or is_readonly(d.section) or \
                    (d.function is None and d.symbol in self._globals_said):
                continue
            owner = f"static local `{d.symbol}` of {d.function}()" if d.function else f"global `{d.symbol}`"
            self.add("U007", f"release {self.rname} changes the initial value of {owner} ({d.unit}, "
                     f"{d.section}): the running program keeps the old one", self._data_site(d),
                     key=(d.symbol, d.unit, d.function))
        self.notes.extend(report.notes)

    def _data_site(self, d) -> Site | None:
        v = self.x.view(d.unit, self.release)
        if v is None:
            return None
        want = d.function or d.symbol
        for it in v.items:
            if it.name == want or (d.function is None and d.symbol in it.name.split(", ")):
                return Site(self.release, d.unit, it.start_line, d.function)
        return None

    # -- helpers ----------------------------------------------------------------

    def untraced(self, path: str) -> str | None:
        """Why the kernel's makefiles build ``path`` (as release R has them) without
        ftrace's entry hook; None for a file they build with it, or without makefiles."""
        if not path.endswith(".c"):
            return None
        if path not in self._untraced:
            def read(p: str) -> bytes | None:
                return self.x.read(p, self.release)
            pre = {"CC_FLAGS_FTRACE": kbuild.CC_FLAGS_FTRACE}
            r = kbuild.build_flags(read, path, self.kernel_config, pre)
            self._untraced[path] = kbuild.untraced(r, kbuild.CC_FLAGS_FTRACE)
        return self._untraced[path]

    def _builds_added_units(self, e) -> bool:
        """Does the release change build file ``e`` only to build C files the series adds
        (``obj-y += new.o`` beside a new ``new.c``)?  Their code is carried, as added
        functions; the build file's change has nothing more to carry."""
        if e.change != MODIFIED or not e.file.rsplit("/", 1)[-1].startswith(("Makefile", "Kbuild")):
            return False
        old, new = self._text(e.file, 0), self._text(e.file, self.release)
        if old is None or new is None:
            return False
        old_lines, new_lines = _logical_lines(old), _logical_lines(new)
        gained = _words(new_lines - old_lines) - _words(old_lines - new_lines)
        lost = _words(old_lines - new_lines) - _words(new_lines - old_lines)
        folder = e.file.rsplit("/", 1)[0] + "/" if "/" in e.file else ""

        def added_unit(word: str) -> bool:
            path = folder + word[:-2] + ".c"
            return word.endswith(".o") and self._text(path, 0) is None \
                and self._text(path, self.release) is not None

        units = [w for w in gained if w.endswith(".o")]
        return not lost and bool(units) and all(added_unit(w) for w in units) \
            and all(w.endswith(".o") or _MAKE_ASSIGN.fullmatch(w) for w in gained)

    def _text(self, path: str, release: int) -> bytes | None:
        """``path`` as ``release`` has it (None: absent, or a file the series never read)."""
        try:
            return self.rep.snapshots.read(path, release)
        except KeyError:
            return self.rep.base.read(path) if release == 0 else None

    def _file_site(self, path: str) -> tuple[Site | None, tuple[str, int] | None]:
        """The first line of file ``path`` (as the release has it) that a patch put there,
        and that patch line; or the file's first line and its latest diff header."""
        data = self._text(path, self.release)
        lines = min(data.count(b"\n") + 1, _SCAN_LINES) if data else 0
        for line in range(1, lines + 1):
            if (patch := added_by(self.rep, self.release, path, line)) is not None:
                return Site(self.release, path, line), patch
        for r in range(self.release, 0, -1):
            if changes := self.rep.line_changes.get((r, path)):
                return Site(self.release, path, 1), (changes[-1].patch, changes[-1].patch_line)
        return None, None

    def _site(self, e) -> Site | None:
        """The first line of the item that a patch changed (its first line when none)."""
        if e.lines is None:
            return None
        fn = e.name if e.kind == "function" else None
        for line in range(e.lines[0], e.lines[1] + 1):
            if added_by(self.rep, self.release, e.file, line) is not None:
                return Site(self.release, e.file, line, fn)
        return Site(self.release, e.file, e.lines[0], fn)

    def _item(self, e, release: int) -> tuple[str, Item] | None:
        data = self.x.read(e.file, release)
        if data is None:
            return None
        items = self.x.items(e.file, data)
        track = self.rep.functions.get(e.key) or self.rep.outside.get(e.key)
        other = () if track is None else \
            track.base_signature if release else track.signature(self.release)
        it = pick_variant((it for it in items if item_key(e.file, it) == e.key), other)
        if it is None:
            return None
        after = max((o.end_byte for o in items if o.end_byte <= it.start_byte), default=0)
        head_start = _head_start(data, it.start_byte, after)
        return data[head_start:it.end_byte].decode("utf-8", "replace"), it

    def _head(self, e, release: int) -> str | None:
        found = self._item(e, release)
        if found is None:
            return None
        text = mask(found[0])
        brace = text.find("{")
        return text[:brace] if brace >= 0 else text

    def _layout_changed(self, e, user_files: list[str]) -> bool:
        """Does the layout differ: the compiler's, where build flags are known (in a
        unit that uses the type), else the definition's text once integer macros are
        replaced by values?"""
        exact = self._exact_layouts(e, user_files)
        if exact is not None:
            old, new = exact
            if old.key() == new.key():
                return False
            self._layout_detail[e.key] = old.differs(new)
            return True
        new, old = self.x.view(e.file, self.release), self.x.view(self._moved.get(e.key, e.file), 0)
        if new is None or old is None:
            return True
        name = e.name.split(", ")[0]
        return new.types.get(name) != old.types.get(name)

    def _exact_layouts(self, e, user_files: list[str]):
        layouts = self.x.layouts
        if layouts is None:
            return None
        name = e.name.split(", ")[0]
        candidates = [e.file] if not e.file.endswith(".h") else []
        candidates += [f for f in dict.fromkeys(user_files) if f not in candidates]
        for path in candidates:
            if layouts.commands.get(path) is None:
                continue
            old = layouts.layout(0, path, name)
            new = layouts.layout(self.release, path, name)
            if old is not None and new is not None:
                return old, new
        return None

    def _through_inline(self, path: str, callers: list[str], patched_now: set[str]) -> list[str]:
        """Unpatched functions of ``path`` that call one of ``callers`` where that caller
        is an inline function (so each may hold an inlined copy of it): "f (via g)"."""
        view = self.x.view(path, self.release)
        if view is None:
            return []
        fns = [it for it in view.items if it.kind == "function"]
        inline = []
        for it in fns:
            if it.name in callers:
                lo, hi = char_span(view, it)
                body = view.masked[lo:hi]
                head = body[:body.find("{")] if "{" in body else body
                if re.search(r"\b(?:inline|__inline__|__always_inline)\b", view.text[lo:lo + len(head)]):
                    inline.append(it.name)
        if not inline:
            return []
        call = re.compile(r"\b(" + "|".join(map(re.escape, inline)) + r")\s*\(")
        out = []
        for it in fns:
            if it.name in inline or item_key(path, it) in patched_now:
                continue
            lo, hi = char_span(view, it)
            body = view.masked[lo:hi]
            m = call.search(body, body.find("{") + 1 if "{" in body else 0)
            if m:
                out.append(f"{it.name} (via inline {m.group(1)})")
        return sorted(set(out))

    def _cosmetic(self, e) -> bool:
        """Does release R change only how ``e`` is written (comments, annotations,
        ``const``, another name of the same integer type), not what it compiles to?"""
        old, new = self._item(e, 0), self._item(e, self.release)
        return old is not None and new is not None and _code(old[0]) == _code(new[0])

    def _code_without_static(self, e, release: int) -> str | None:
        """:func:`_code` of ``e`` in ``release``, its storage class left out."""
        found = self._item(e, release)
        return None if found is None else _code(re.sub(r"\bstatic\b", " ", found[0]))

    def _stack_only(self, e, users: list[tuple[str, str, bool, bool]]) -> list[str] | None:
        """The functions whose stack frames hold every object of the type ``e`` names,
        when nothing else can: a type of one C file that no global, static local,
        other type or allocation names, used only by functions the release patches
        (None: its objects may persist)."""
        if not e.file.endswith(".c") or not users or any(not u[2] or u[1] != e.file for u in users):
            return None
        view = self.x.view(e.file, self.release)
        if view is None:
            return None
        names = e.name.split(", ")
        needle = re.compile(r"\b(?:" + "|".join(re.escape(n).replace(r"\ ", r"\s+") for n in names) + r")\b")
        for it in view.items:
            if it.kind == "function" or item_key(e.file, it) == e.key:
                continue
            lo, hi = char_span(view, it)
            if needle.search(view.masked[lo:hi]):
                return None  # a global, a member of another type, a typedef, a prototype
        for it in view.items:
            if it.kind != "function" or it.name not in {u[0] for u in users}:
                continue
            lo, hi = char_span(view, it)
            body = view.masked[lo:hi]
            if _ALLOCATION.search(body) or re.search(r"\bstatic\s+(?:const\s+)?" + needle.pattern, body) \
                    or re.search(r"\bcontainer_of\b", body):
                return None
        return sorted({u[0] for u in users})

    def _defines_struct(self, e) -> bool:
        found = self._item(e, self.release)
        return found is not None and re.search(r"\b(struct|union)\b[^;]*\{", found[0]) is not None

    def _local_users(self, wanted: list[list[tuple[str, str]]], patched_now: set[str], paths: list[str]
                     ) -> list[list[tuple[str, str, bool, bool]]]:
        """For each list of needles -- ("type", "struct foo"), ("ident", "foo_t") or
        ("call", "fn") -- the functions of ``paths`` (as release R has them) that name
        one: (name, file, patched by R, named in the body rather than only in the
        head).  One pass of three combined patterns per function."""
        out: list[list[tuple[str, str, bool, bool]]] = [[] for _ in wanted]
        by_needle: dict[tuple[str, str], list[int]] = {}
        for i, needles in enumerate(wanted):
            for n in needles:
                by_needle.setdefault(n, []).append(i)
        patterns = _combined_patterns(list(by_needle))
        for path in paths:
            if not is_c_file(path):
                continue
            v = self.x.view(path, self.release)
            if v is None:
                continue
            for it in v.items:
                if it.kind != "function":
                    continue
                lo, hi = char_span(v, it)
                body = v.masked[lo:hi]
                open_at = body.find("{")
                head, inner = (body[:open_at], body[open_at:]) if open_at >= 0 else (body, "")
                found_inner = _found(patterns, inner)
                found_any = found_inner | _found(patterns, head)
                patched = item_key(path, it) in patched_now
                hits: dict[int, bool] = {}
                for needle in found_any:
                    for i in by_needle.get(needle, ()):
                        hits[i] = hits.get(i, False) or needle in found_inner
                for i, in_body in hits.items():
                    out[i].append((it.name, path, patched, in_body))
        return out


# calls that allocate memory that outlives the function (heap, per-CPU, caches)
_ALLOCATION = re.compile(r"\b(?:k[mzv]?alloc\w*|kcalloc\w*|krealloc\w*|kmem_cache_\w*alloc\w*|v[mz]alloc\w*|"
                         r"kv[mzc]?alloc\w*|devm_\w*alloc\w*|kmemdup\w*|malloc|calloc|realloc|"
                         r"alloc_percpu\w*|__alloc_percpu\w*|mempool_alloc\w*)\s*\(")
_SCAN_LIMIT = 600  # untouched files read to name the users of changed types and functions
_SCAN_PER_NAME = 24  # ... and of one of them


def _head_start(data: bytes, start: int, after: int) -> int:
    """Where a definition's head really starts: annotations a parser leaves out
    (``noinstr void f(...)``, ``__init`` on the line before) included.  ``after``:
    where the code before the definition ends."""
    line_start = data.rfind(b"\n", 0, start) + 1
    prev_end = line_start - 1
    if prev_end > 0:
        prev_start = data.rfind(b"\n", 0, prev_end) + 1
        if prev_start < after:  # the line ends the code before
            return line_start
        prev = mask(data[after:prev_end])[prev_start - after:].strip()  # comments blanked
        if prev and not prev.endswith((b";", b"}", b"{", b"\\")) and not prev.startswith(b"#"):
            return prev_start
    return line_start


def _plain_names(name: str) -> list[str]:
    """The identifiers an item name stands for: ``struct foo`` -> foo; ``a_t, b_t``."""
    return [n.split()[-1] for n in name.split(", ")]


def _type_needle(name: str) -> tuple[str, str]:
    parts = name.split()
    if len(parts) == 2:
        return ("type", f"{parts[0]} {parts[1]}")
    return ("ident", name)


def _combined_patterns(needles: list[tuple[str, str]]) -> list[tuple[str, re.Pattern[str]]]:
    def alt(names: set[str]) -> str:
        return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))

    types = {n.split()[1] for k, n in needles if k == "type"}
    idents = {n for k, n in needles if k == "ident"}
    calls = {n for k, n in needles if k == "call"}
    out = []
    if types:
        out.append(("type", re.compile(r"\b(struct|union)\s+(" + alt(types) + r")\b")))
    if idents:
        out.append(("ident", re.compile(r"\b(" + alt(idents) + r")\b")))
    if calls:
        out.append(("call", re.compile(r"\b(" + alt(calls) + r")\s*\(")))
    return out


def _found(patterns: list[tuple[str, re.Pattern[str]]], text: str) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for kind, pat in patterns:
        for m in pat.finditer(text):
            found.add((kind, f"{m.group(1)} {m.group(2)}" if kind == "type" else m.group(1)))
    return found


def _listing(functions: list[str], files: list[str], limit: int = 8) -> str:
    parts = functions[:limit]
    if len(functions) > limit:
        parts.append(f"{len(functions) - limit} more")
    if files:
        shown = ", ".join(files[:limit]) + (f" and {len(files) - limit} more" if len(files) > limit else "")
        parts.append(f"code in {shown}")
    return ", ".join(parts)


_INTEGER_WORDS = frozenset("signed unsigned short long int char".split())
_STORAGE = re.compile(r"\b(static|inline|__inline__|__inline|__always_inline|extern|noinline|__cold|"
                      r"__hot|__init|__exit|notrace|noinstr|__weak|__maybe_unused|__used|asmlinkage|"
                      r"__(?:mod|mem|cpu|dev|net_)?init\w*|__(?:mem|cpu|dev|net_)?exit\w*|__ref\w*|"
                      + "|".join(w for w in ANNOTATION_WORDS if w not in ("__user", "__kernel", "__iomem",
                                                                          "__percpu", "__rcu", "__force",
                                                                          "__bitwise"))
                      + r")\b|__attribute__\s*\(\(.*?\)\)")


def _canonical(text: str) -> str:
    """Tokens of a type, integer spellings made one (``unsigned`` is ``unsigned int``,
    ``long unsigned`` is ``unsigned long int``)."""
    toks = re.findall(r"[A-Za-z_]\w*|\.\.\.|\S", text)
    out: list[str] = []
    i = 0
    while i < len(toks):
        if toks[i] not in _INTEGER_WORDS:
            out.append(toks[i])
            i += 1
            continue
        run = []
        while i < len(toks) and toks[i] in _INTEGER_WORDS:
            run.append(toks[i])
            i += 1
        if "char" in run:
            sign = "unsigned " if "unsigned" in run else "signed " if "signed" in run else ""
            out.append(f"{sign}char")
        else:
            size = "short " if "short" in run else "long " * min(run.count("long"), 2)
            out.append(("unsigned " if "unsigned" in run else "") + size + "int")
    return " ".join(out)


# the kernel's fixed-size integer types, as the C types they are
_INT_ALIASES = {
    **dict.fromkeys(("u8", "__u8", "uint8_t"), "unsigned char"),
    **dict.fromkeys(("s8", "__s8", "int8_t"), "signed char"),
    **dict.fromkeys(("u16", "__u16", "uint16_t"), "unsigned short"),
    **dict.fromkeys(("s16", "__s16", "int16_t"), "short"),
    **dict.fromkeys(("u32", "__u32", "uint32_t"), "unsigned int"),
    **dict.fromkeys(("s32", "__s32", "int32_t"), "int"),
    **dict.fromkeys(("u64", "__u64", "uint64_t"), "unsigned long long"),
    **dict.fromkeys(("s64", "__s64", "int64_t"), "long long"),
}
_NOT_CODE = frozenset(ANNOTATION_WORDS) | {"const"}


# a designated initialiser that sets a member to zero, as leaving it out does
_ZERO_MEMBER = re.compile(r"\. \w+ = (?:0|false|NULL|\{ \}|\{ 0 \}|HLIST_HEAD_INIT|RB_ROOT|RB_ROOT_CACHED|"
                          r"ATOMIC_INIT \( 0 \)|ATOMIC64_INIT \( 0 \)) (?:, |(?=\}))")


def _code(text: str) -> str:
    """What the compiler makes of a definition's text, as far as the text tells:
    tokens without comments, annotations and ``const``, integer types by their C
    names, members initialised to zero left out.  Two texts with the same code differ
    only in how they are written."""
    toks = [t.decode("utf-8", "surrogateescape") for t in c_tokens(text.encode("utf-8", "surrogateescape"))]
    words = " ".join(_INT_ALIASES.get(t, t) for t in toks if t not in _NOT_CODE)
    words = _ZERO_MEMBER.sub("", words + " ").replace(", }", "}")
    return _canonical(words)


def _signature(head: str) -> str:
    """A function's type from its head: return and parameter types, without names,
    storage classes and attributes (tree-sitter tells names from type names)."""
    head = " ".join(_INT_ALIASES.get(w, w) for w in re.findall(r"[A-Za-z_]\w*|\S", head) if w != "const")
    src = (_STORAGE.sub(" ", head).strip() + ";").encode("utf-8", "surrogateescape")
    tree = parser().parse(src)
    fd = _first(tree.root_node, "function_declarator")
    params = fd.child_by_field_name("parameters") if fd is not None else None
    if fd is None or params is None:
        return _canonical(head)
    parts = []
    for p in params.named_children:
        if p.type == "comment":
            continue
        pieces, last = [], p.start_byte
        for ident in _all(p, "identifier"):  # declarator names; type names are type_identifier
            pieces.append(src[last:ident.start_byte])
            last = ident.end_byte
        pieces.append(src[last:p.end_byte])
        parts.append(_canonical(b"".join(pieces).decode("utf-8", "surrogateescape")))
    ret = src[:fd.start_byte].decode("utf-8", "surrogateescape")
    name_end = fd.child_by_field_name("declarator")
    pointer = ""
    if name_end is not None:  # a function returning a pointer: int *f(void)
        pointer = src[fd.start_byte:name_end.start_byte].decode("utf-8", "surrogateescape")
    return _canonical(ret + pointer) + "(" + ",".join(parts) + ")"


def _all(node, kind: str):
    """The outermost nodes of ``kind`` under ``node``, in source order (iterative: a
    long expression makes a deep tree)."""
    stack = [node]
    while stack:
        n = stack.pop()
        if n.type == kind:
            yield n
            continue
        stack.extend(reversed(n.children))


def _first(node, kind: str):
    return next(_all(node, kind), None)


def _type_clash(uses: list[ShadowUse]) -> tuple[ShadowUse, ShadowUse, str] | None:
    """Two uses of one shadow id that disagree on the data's type, and how:
    ``exact`` (the compiler's layouts differ), ``definition`` (one type name, two
    definitions) or ``type`` (two types, or two sizes). Unknowns agree with anything."""
    if len(uses) > 1 and all(u.exact for u in uses):
        first = uses[0]
        other = next((u for u in uses if u.exact != first.exact), None)
        return (first, other, "exact") if other is not None else None
    typed = [u for u in uses if u.type]
    for u in typed[1:]:
        if u.type != typed[0].type:
            return typed[0], u, "type"
    with_layout = [u for u in typed if u.layout is not None]
    for u in with_layout[1:]:
        if u.layout != with_layout[0].layout:
            return with_layout[0], u, "definition"
    sized = [u for u in uses if not u.type and u.size]
    for u in sized[1:]:
        if u.size != sized[0].size:
            return sized[0], u, "type"
    return None


def _show_use(u: ShadowUse) -> str:
    return f"`{u.type}`" if u.type else f"data of size `{u.size}`"
