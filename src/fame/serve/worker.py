"""The one thread that owns the detector: requests queue up, are batched and scored in order.

The detector is not thread-safe (its result cache and counters), so every request goes
through one worker thread. Requests waiting together are scored as one batch (up to
``batch_size`` lines), which is what makes many small requests from several shippers
cheap. A new detector (a reloaded bundle) is swapped in between two batches, so no request
is dropped or scored half by each.
"""

from __future__ import annotations

import io
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fame.errors import FameError
from fame.logs import LogRecord, ReadStats, read_records
from fame.result import Detection

if TYPE_CHECKING:
    from fame.detector import Detector
    from fame.triage import Triage

logger = logging.getLogger(__name__)

_POLL_S = 0.1


class Busy(FameError):
    """The queue holds more lines than the service accepts to wait (answered 503)."""


class Closed(FameError):
    """The service is shutting down and takes no new requests (answered 503)."""


@dataclass(slots=True)
class Job:
    """One request's lines on their way through the worker.

    Attributes:
        lines: The raw lines.
        sources: Each line's source (None: ``source``).
        source: The request's source.
        received: When the request arrived (epoch seconds).
        future: Resolved with one detection per line, in order.
        records: The parsed records (set by the worker).
    """

    lines: list[bytes]
    sources: list[str | None]
    source: str
    received: float = field(default_factory=time.time)
    future: Future[list[Detection]] = field(default_factory=Future)
    records: list[LogRecord] = field(default_factory=list)


@dataclass(slots=True)
class Loaded:
    """A detector ready to serve, with the triage it uses (None: no triage)."""

    detector: Detector
    triage: Triage | None
    bundle: str
    loaded_at: float = field(default_factory=time.time)

    def close(self) -> None:
        """Stop its triage thread and save the triage state."""
        if self.triage is not None:
            self.triage.close()


ResultHook = Callable[[Job, list[Detection]], None]


class DetectionWorker:
    """Scores queued jobs on one thread, batching jobs that wait together.

    Args:
        batch_size: Most lines scored in one detector call.
        max_queued_lines: Most lines allowed to wait; beyond, :meth:`submit` raises
            :class:`Busy`.
        max_line_chars: Longest line the reader keeps (requests are checked before).
        on_results: Called on the worker thread with each job and its detections, before
            the job's future is resolved (storage and alerting hook in here).
    """

    def __init__(
        self,
        *,
        batch_size: int,
        max_queued_lines: int,
        max_line_chars: int,
        on_results: ResultHook | None = None,
    ) -> None:
        self.batch_size = batch_size
        self.max_queued_lines = max_queued_lines
        self.max_line_chars = max_line_chars
        self.on_results = on_results
        self.current: Loaded | None = None
        self.read_stats = ReadStats()
        self.batches = 0
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._queued_lines = 0
        self._lock = threading.Lock()
        self._accepting = True
        self._swap: tuple[Loaded, Future[Loaded | None]] | None = None
        self._thread = threading.Thread(target=self._run, name="fame-detect", daemon=True)
        self._thread.start()

    # -- request side ------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        """Lines accepted and not yet scored."""
        return self._queued_lines

    @property
    def ready(self) -> bool:
        """A detector is installed."""
        return self.current is not None

    def submit(self, job: Job) -> Future[list[Detection]]:
        """Queue a job; its future resolves with its detections.

        Raises:
            Busy: Too many lines wait already.
            Closed: The worker is shutting down.
        """
        with self._lock:
            if not self._accepting:
                raise Closed("the service is shutting down; send the request to another instance")
            if self._queued_lines and self._queued_lines + len(job.lines) > self.max_queued_lines:
                raise Busy(
                    f"{self._queued_lines} lines are waiting to be scored; retry in a few "
                    "seconds or send smaller batches"
                )
            self._queued_lines += len(job.lines)
            self._queue.put(job)
        return job.future

    def install(self, loaded: Loaded) -> Future[Loaded | None]:
        """Use ``loaded`` from the next batch on; resolves with the detector it replaced.

        The replaced detector's triage is closed by the caller once the swap is done.
        """
        done: Future[Loaded | None] = Future()
        with self._lock:
            if self._swap is not None:  # a newer detector supersedes one not yet installed
                self._swap[1].set_result(None)
            self._swap = (loaded, done)
        return done

    def close(self, timeout: float | None = None) -> None:
        """Stop taking jobs, finish the queued ones, stop the thread."""
        with self._lock:
            self._accepting = False
        self._queue.put(None)
        self._thread.join(timeout=timeout)

    # -- worker side -------------------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        while not stopping:
            self._apply_swap()
            try:
                first = self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if first is None:
                break
            jobs = [first]
            lines = len(first.lines)
            while lines < self.batch_size:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                jobs.append(more)
                lines += len(more.lines)
            self._apply_swap()
            self._score(jobs)
        self._apply_swap()

    def _apply_swap(self) -> None:
        with self._lock:
            swap, self._swap = self._swap, None
        if swap is None:
            return
        loaded, done = swap
        previous, self.current = self.current, loaded
        logger.info("detecting with bundle %s", loaded.bundle)
        done.set_result(previous)

    def _score(self, jobs: list[Job]) -> None:
        try:
            current = self.current
            if current is None:
                raise Closed("no bundle is loaded yet; wait until /readyz answers 200")
            detector = current.detector
            for job in jobs:
                body = b"".join(line + b"\n" for line in job.lines)
                job.records = list(
                    read_records(
                        io.BytesIO(body),
                        detector.format,
                        max_line_chars=self.max_line_chars,
                        stats=self.read_stats,
                    )
                )
            flat = [record for job in jobs for record in job.records]
            detections: list[Detection] = []
            for start in range(0, len(flat), self.batch_size):
                detections.extend(detector.detect_batch(flat[start : start + self.batch_size]))
                self.batches += 1
            offset = 0
            for job in jobs:
                mine = detections[offset : offset + len(job.records)]
                offset += len(job.records)
                self._finish(job, mine)
        except Exception as exc:  # a failing batch answers its requests, never kills the thread
            logger.exception("detection failed for a batch of %d requests", len(jobs))
            for job in jobs:
                if not job.future.done():
                    self._release(job)
                    job.future.set_exception(exc)

    def _finish(self, job: Job, detections: list[Detection]) -> None:
        if self.on_results is not None:
            try:
                self.on_results(job, detections)
            except Exception:  # storage trouble must not withhold the answer
                logger.exception("keeping the detections of a request failed")
        self._release(job)
        job.future.set_result(detections)

    def _release(self, job: Job) -> None:
        with self._lock:
            self._queued_lines -= len(job.lines)
