from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"


@pytest.fixture
def demo() -> tuple[Path, Path]:
    """(patches directory, base source) of the bundled kvd demo."""
    return FIXTURES / "demo" / "patches", FIXTURES / "demo" / "src"
