"""The Python API: the same verbs as the CLI (setup, load, detect, evaluate).

Example::

    import fame.api as fame

    fame.setup(["offline.log"], out="bundle", k=100)
    detector = fame.load("bundle")
    with open("new.log") as lines:
        alerts = [d for d in detector.detect_lines(lines) if d.anomaly]
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from fame.config import Settings
from fame.detector import Detector
from fame.evaluation.evaluate import EvaluationResult, run_evaluate
from fame.result import Detection, Route
from fame.setup import SetupResult, run_setup

__all__ = ["Detection", "Detector", "Route", "Settings", "detect", "evaluate", "load", "setup"]


def setup(
    logs: Sequence[str | Path], out: str | Path, *, progress: bool = False, **settings: Any
) -> SetupResult:
    """Train a bundle from labelled offline logs; keyword arguments are settings."""
    return run_setup(logs, Settings.from_dict(settings), out, progress=progress)


def load(bundle: str | Path, **settings: Any) -> Detector:
    """Load a bundle for detection; keyword arguments are detection settings.

    For example ``load("bundle", cache_size=0, engine="torch", precision="fp32")``; see
    :class:`Settings` for every option and its default.
    """
    return Detector.from_settings(bundle, Settings.from_dict(settings))


def detect(
    bundle: str | Path, lines: Iterable[str], *, batch_size: int = 1024
) -> Iterator[Detection]:
    """Score raw log lines with a bundle: one result per line, in order."""
    return load(bundle).detect_lines(lines, batch_size=batch_size)


def evaluate(
    log: str | Path,
    out: str | Path,
    *,
    test_fraction: float = 0.15,
    progress: bool = False,
    **settings: Any,
) -> EvaluationResult:
    """Chronological split, setup on the offline region, detection and metrics on the rest."""
    return run_evaluate(
        log, Settings.from_dict(settings), out, test_fraction=test_fraction, progress=progress
    )
