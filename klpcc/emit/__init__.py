"""Targets: what a bundle is built into.  Each target is a package of its own, a peer
of the others (:mod:`.kernel`: a livepatch module; :mod:`.userspace`: a patch object
for a running program); adding a target is adding a folder.

What they share, and nothing else: the typed bundle (:mod:`klpcc.manifest`), the
policy of what may be built (:mod:`.policy`), the unit writer and its documented hooks
(:mod:`.units`), the C text helpers (:mod:`.cgen`), and the compiler runner
(:mod:`klpcc.toolchain`).  A target's package exposes ``<Target>Options``, a build
function that returns a result with ``to_json()`` (a versioned format, see
``docs/formats.md``) and ``text()``."""
