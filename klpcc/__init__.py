"""klpcc: compiles a series of C source patches into one cumulative live patch."""

__version__ = "0.1.0"

from .api import AnalyzeOptions, analyze, compile_bundle, lint  # noqa: E402

__all__ = ["AnalyzeOptions", "analyze", "compile_bundle", "lint", "__version__"]
