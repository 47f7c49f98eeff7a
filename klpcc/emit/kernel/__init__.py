"""Kernel target: a bundle becomes a cumulative livepatch module (``replace = true``)
built with the kernel's own Kbuild, which ``runtime/kernel/klpcc-load`` enables.

:mod:`.source` writes the units, :mod:`.module` the ``klp_patch`` unit, ``Kbuild``
and the build, :mod:`.elf` the livepatch relocations, :mod:`.symbols` reads
``Module.symvers`` and kallsyms."""

from .module import KernelBuild, KernelOptions, build_kernel

__all__ = ["KernelBuild", "KernelOptions", "build_kernel"]
