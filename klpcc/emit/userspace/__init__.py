"""Userspace target: a bundle becomes a patch object (a shared object) for one exact
program build, which the runtime in that program (``runtime/userspace``,
``libklpcc.so``) installs with an atomic replace.

:mod:`.program` reads the program's ELF and DWARF, :mod:`.source` writes the units,
:mod:`.build` the descriptor and the object, :mod:`.library` builds the runtime
library (``klpcc config``), :mod:`.client` talks to a running program's runtime."""

from .build import ProgramBuild, ProgramOptions, build_program
from .client import Answer

__all__ = ["Answer", "ProgramBuild", "ProgramOptions", "build_program"]
