"""Targets: what a bundle is built into (the kernel livepatch module)."""
