"""klpcc: compiles a series of C source patches into one cumulative live patch."""

__version__ = "0.1.0"

# the most unchanged C units a release's changed headers may bring into a bundle
HEADER_UNITS = 100

__all__ = ["AnalyzeOptions", "analyze", "compile_bundle", "lint", "__version__"]


def __getattr__(name: str):
    """The library's entry points, imported on first use (``klpcc --version`` needs none)."""
    if name in ("AnalyzeOptions", "analyze", "compile_bundle", "lint"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'klpcc' has no attribute {name!r}")
