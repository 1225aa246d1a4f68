"""Shared fixtures: the real log data that lives next to the repository, never inside it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from fame.certification import CertifiedPartition, certify, universal_normal_texts
from fame.config import Settings
from fame.partition import Partition
from fame.sampling import KShotSample
from fame.setup import parse_and_sample, read_offline

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


@pytest.fixture(scope="session")
def bgl_parsed(bgl_2k: Path) -> tuple[list[str], list[str], KShotSample]:
    """BGL_2k's model texts, EventIDs and K-shot sample under the default settings."""
    settings = Settings()
    data = read_offline([bgl_2k], settings)
    _, event_ids, sample = parse_and_sample(data, settings)
    return data.texts, event_ids, sample


@pytest.fixture(scope="session")
def bgl_sample(bgl_parsed: tuple[list[str], list[str], KShotSample]) -> KShotSample:
    """The K-shot sample of BGL_2k (K=100)."""
    return bgl_parsed[2]


@pytest.fixture(scope="session")
def certify_bgl_2k(
    bgl_parsed: tuple[list[str], list[str], KShotSample],
) -> Callable[[Partition], CertifiedPartition]:
    """Certify a partition of BGL_2k's EventIDs as setup does (III-B2)."""
    texts, event_ids, sample = bgl_parsed

    def run(partition: Partition) -> CertifiedPartition:
        pool = universal_normal_texts(partition, sample, event_ids, texts)
        return certify(partition, sample, normal_pool_texts=pool)

    return run
