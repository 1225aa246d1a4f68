"""Shared fixtures: the real log data that lives next to the repository, never inside it."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fame.certification import CertifiedPartition, certify, universal_normal_texts
from fame.config import Settings
from fame.evaluation.evaluate import EvaluationResult
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


# A small but real configuration: setup on BGL_2k's first 85% takes about two minutes.
SMALL_SETUP = {"k": 20, "phase1_max_steps": 20, "seed": 0}


@pytest.fixture(scope="session")
def bgl_2k_run(bgl_2k: Path, tmp_path_factory: pytest.TempPathFactory) -> EvaluationResult:
    """One ``fame evaluate`` run on BGL_2k (bundle in ``.bundle``), shared by the session.

    Tests may read the bundle and the run's files; none may change them.
    """
    import fame.api as fame

    out = tmp_path_factory.mktemp("bgl_2k_run")
    return fame.evaluate(bgl_2k, out, test_fraction=0.15, **SMALL_SETUP)


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


# -- the detection service (tests/test_serve_*.py) ------------------------------------------


@pytest.fixture(scope="session")
def serve_bundle(request: pytest.FixtureRequest) -> Path:
    """The session's small BGL_2k bundle, for the service tests.

    ``FAME_TEST_BUNDLE=DIR`` reuses a bundle trained the same way (a faster local rerun).
    """
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    if os.environ.get("FAME_TEST_BUNDLE"):
        return Path(os.environ["FAME_TEST_BUNDLE"])
    run: EvaluationResult = request.getfixturevalue("bgl_2k_run")
    return run.out / "bundle"


@pytest.fixture(scope="session")
def webhook() -> Iterator[Any]:
    """A real local HTTP receiver of alert webhooks (``serve_harness.Receiver``)."""
    from serve_harness import start_receiver

    receiver = start_receiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="session")
def fame_service(
    serve_bundle: Path, webhook: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """One real ``fame serve`` process on 127.0.0.1 (token on, small limits, alerts on)."""
    from serve_harness import start_service

    service = start_service(
        serve_bundle,
        tmp_path_factory.mktemp("serve"),
        *("--request-max-bytes", "400000", "--request-max-lines", "1000"),
        *("--request-max-line-chars", "5000"),
        *("--alert-webhook-url", webhook.url, "--alert-threshold", "3"),
        *("--alert-window-s", "3600", "--alert-cooldown-s", "3600"),
    )
    yield service
    service.stop()
