"""Wall time and peak memory per setup stage, for reports and progress logs."""

from __future__ import annotations

import logging
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


@dataclass
class StageTimer:
    """Records the wall time and the peak memory reached by the end of each stage."""

    stages: dict[str, dict[str, float]] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time one stage; logs its start and end at INFO."""
        logger.info("stage %s: started", name)
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - start
            self.stages[name] = {"seconds": round(seconds, 3), "peak_rss_mb": round(peak_rss_mb())}
            logger.info("stage %s: done in %.1f s", name, seconds)

    @property
    def total_seconds(self) -> float:
        """Sum of all stage times."""
        return sum(s["seconds"] for s in self.stages.values())
