"""Shared fixtures: the real log data that lives next to the repository, never inside it."""

from __future__ import annotations

from pathlib import Path

import pytest

# /work/main/tests/conftest.py -> /work/shared/data: the checkout's sibling "shared" folder.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-data folder; tests that need it are skipped only where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real log data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def bgl_2k(shared_data: Path) -> Path:
    """Loghub's 2,000-line BGL sample (143 anomalous lines)."""
    return shared_data / "bgl" / "BGL_2k.log"
