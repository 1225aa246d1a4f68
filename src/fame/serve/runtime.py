"""What a running service holds: the detector worker, storage, alerting, metrics, reloads.

:class:`Runtime` is the service without HTTP: the app (:mod:`fame.serve.app`) turns
requests into calls on it. Loading a bundle (at start and on reload) runs beside the worker,
which keeps answering with the bundle it has until the new one is swapped in.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from fame.config import Settings
from fame.errors import FameError
from fame.result import Detection
from fame.serve.alerting import Alerter, Anomaly, Sender, WindowCounter, post_json
from fame.serve.metrics import ServeMetrics
from fame.serve.storage import NO_DOMAIN, DetectionStore, StoredDetection, database_url
from fame.serve.worker import DetectionWorker, Job, Loaded

logger = logging.getLogger(__name__)

#: Lines allowed to wait for the worker, in requests' worth of the largest size.
QUEUED_REQUESTS = 8
PURGE_EVERY_S = 60.0
SOURCE_CHARS = 255


class ReloadRunning(FameError):
    """A reload is already in progress (answered 409)."""


Loader = Callable[[str, Settings], Loaded]


def load_bundle(bundle: str, settings: Settings) -> Loaded:
    """Load a bundle as ``fame detect`` does: its cache, routing, novelty and triage settings.

    Raises:
        BundleError: The bundle is missing, incomplete or corrupt.
    """
    from fame.detector import Detector

    triage = None
    if settings.triage:
        from fame.triage import build_triage

        triage = build_triage(bundle, settings)
    try:
        detector = Detector.from_settings(bundle, settings, triage=triage)
    except BaseException:
        if triage is not None:
            triage.close()
        raise
    return Loaded(detector, triage, str(bundle))


@dataclass(frozen=True, slots=True)
class Status:
    """Where the service stands: ``loading``, ``ready`` or ``failed`` (with the error)."""

    state: str
    bundle: str | None
    error: str | None
    loaded_at: float | None


class Runtime:
    """The service's parts, started and stopped together.

    Args:
        settings: All settings (the serve and detect groups are used).
        bundle: The bundle directory to load.
        token: The bearer token clients must send (None: no authentication).
        loader: Loads a bundle (default :func:`load_bundle`; tests inject others).
        sender: Posts webhook bodies (default: HTTP POST).
        external_url: The service's URL, for links in alerts.
    """

    def __init__(
        self,
        settings: Settings,
        bundle: str,
        *,
        token: str | None = None,
        loader: Loader = load_bundle,
        sender: Sender = post_json,
        external_url: str | None = None,
    ) -> None:
        self.settings = settings
        self.bundle = str(bundle)
        self.token = token
        self.loader = loader
        self.external_url = external_url or f"http://{settings.host}:{settings.port}"
        self.metrics = ServeMetrics(self._live)
        self.store = DetectionStore(database_url(settings.database_url, bundle))
        self.alerter: Alerter | None = None
        if settings.alert_webhook_url:
            counter = WindowCounter(
                settings.alert_threshold, settings.alert_window_s, settings.alert_cooldown_s
            )
            self.alerter = Alerter(
                settings.alert_webhook_url,
                counter,
                external_url=self.external_url,
                sender=sender,
            )
        self.worker = DetectionWorker(
            batch_size=settings.batch_size,
            max_queued_lines=QUEUED_REQUESTS * settings.request_max_lines,
            max_line_chars=settings.request_max_line_chars,
            on_results=self._on_results,
        )
        self.state = "loading"
        self.error: str | None = None
        self.on_failed: Callable[[str], None] | None = None
        self._reload_lock = threading.Lock()
        self._writes: queue.Queue[tuple[Job, list[Detection]] | None] = queue.Queue()
        self._writer = threading.Thread(target=self._write_loop, name="fame-store", daemon=True)
        self._writer.start()

    # -- lifecycle ---------------------------------------------------------------------------

    def start_loading(self) -> threading.Thread:
        """Load the bundle on a background thread (``/readyz`` turns 200 when done)."""
        thread = threading.Thread(target=self._initial_load, name="fame-load", daemon=True)
        thread.start()
        return thread

    def _initial_load(self) -> None:
        try:
            self.reload()
        except Exception as exc:  # reported by /readyz and the CLI, not swallowed
            self.state = "failed"
            self.error = str(exc)
            logger.error("cannot load bundle %s: %s", self.bundle, exc)
            if self.on_failed is not None:
                self.on_failed(str(exc))

    def reload(self, bundle: str | None = None) -> Loaded:
        """Load a bundle (default: the current path again) and swap it in between batches.

        Requests keep being answered by the old detector while the new one loads.

        Raises:
            ReloadRunning: Another reload is in progress.
            BundleError: The bundle cannot be loaded (the old one stays in use).
        """
        if not self._reload_lock.acquire(blocking=False):
            raise ReloadRunning("a bundle reload is already running; retry when it is done")
        try:
            path = str(bundle or self.bundle)
            started = time.monotonic()
            logger.info("loading bundle %s", path)
            try:
                loaded = self.loader(path, self.settings)
            except Exception:
                self.metrics.reloads.labels(result="failed").inc()
                raise
            previous = self.worker.install(loaded).result()
            if previous is not None:
                previous.close()
            self.bundle = path
            self.state, self.error = "ready", None
            self.metrics.reloads.labels(result="ok").inc()
            self.metrics.bundle_loaded.set(loaded.loaded_at)
            logger.info("bundle %s ready in %.1f s", path, time.monotonic() - started)
            return loaded
        finally:
            self._reload_lock.release()

    def reload_in_background(self) -> None:
        """Reload on a thread (for SIGHUP); failures are logged and the old bundle kept."""

        def run() -> None:
            try:
                self.reload()
            except Exception as exc:  # logged; the service goes on with the old bundle
                logger.error("reload failed, still serving the previous bundle: %s", exc)

        threading.Thread(target=run, name="fame-reload", daemon=True).start()

    def status(self) -> Status:
        """Readiness and the bundle in use."""
        current = self.worker.current
        return Status(
            self.state,
            current.bundle if current else None,
            self.error,
            current.loaded_at if current else None,
        )

    def close(self, timeout: float = 30.0) -> None:
        """Finish queued requests, store their detections, deliver alerts, release all."""
        self.worker.close(timeout=timeout)
        self._writes.put(None)
        self._writer.join(timeout=timeout)
        if self.alerter is not None:
            self.alerter.close()
        if self.worker.current is not None:
            self.worker.current.close()
        self.store.close()
        logger.info("service stopped")

    # -- requests ----------------------------------------------------------------------------

    def submit(
        self, lines: list[bytes], sources: list[str | None], source: str
    ) -> Future[list[Detection]]:
        """Queue lines for detection (see :meth:`DetectionWorker.submit`)."""
        return self.worker.submit(Job(lines=lines, sources=sources, source=source))

    def _on_results(self, job: Job, detections: list[Detection]) -> None:
        """On the worker thread: count, and hand anomalies to the writer."""
        metrics = self.metrics
        metrics.lines.inc(len(detections))
        anomalous = False
        for d in detections:
            if d.novel:
                metrics.novel.inc()
            if d.anomaly:
                anomalous = True
                metrics.anomalies.labels(domain=d.domain or NO_DOMAIN).inc()
        if anomalous:
            self._writes.put((job, detections))

    def _live(self) -> dict[str, float]:
        current = self.worker.current
        values = {"queue_depth": float(self.worker.queue_depth), "ready": 0.0}
        if current is not None:
            values["ready"] = 1.0
            values["cache_hits"] = float(current.detector.cache_hits)
            values["cache_misses"] = float(current.detector.cache_misses)
        return values

    # -- storage and alerting ----------------------------------------------------------------

    def _write_loop(self) -> None:
        last_purge = 0.0
        stopping = False
        while not stopping:
            try:
                item = self._writes.get(timeout=1.0)
            except queue.Empty:
                item = None
            else:
                if item is None:
                    stopping = True
            batch = [item] if item is not None else []
            while True:  # take everything waiting: one transaction for many requests
                try:
                    more = self._writes.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                batch.append(more)
            if batch:
                self._store(batch)
            if time.monotonic() - last_purge >= PURGE_EVERY_S:
                last_purge = time.monotonic()
                self._purge()

    def _store(self, batch: list[tuple[Job, list[Detection]]]) -> None:
        rows = []
        for job, detections in batch:
            for detection, own in zip(detections, job.sources, strict=True):
                if not detection.anomaly:
                    continue
                rows.append(_row(job, detection, own))
        if not rows:
            return
        try:
            self.store.add(rows)
        except Exception as exc:  # counted and logged; detection goes on without storage
            self.metrics.storage_errors.inc()
            logger.error("could not store %d detections: %s", len(rows), exc)
            return
        self.metrics.stored.inc(len(rows))
        if self.alerter is not None:
            anomalies = [
                Anomaly(r.time, r.domain, r.line, r.template, r.score, r.source) for r in rows
            ]
            for alert in self.alerter.observe(anomalies):
                self.metrics.alerts.labels(domain=alert.domain).inc()

    def _purge(self) -> None:
        cutoff = time.time() - self.settings.retention_hours * 3600.0
        try:
            removed = self.store.purge(cutoff)
        except Exception as exc:  # logged; retried at the next purge
            logger.error("could not delete old detections: %s", exc)
            return
        if removed:
            logger.info("deleted %d detections older than the retention", removed)


def _row(job: Job, d: Detection, own_source: str | None) -> StoredDetection:
    raw = job.lines[d.line - 1]
    # PostgreSQL text holds no NUL characters; invalid UTF-8 is replaced as the reader does.
    line = raw.decode("utf-8", errors="replace").replace("\x00", "\ufffd")
    return StoredDetection(
        time=job.received,
        source=(own_source or job.source)[:SOURCE_CHARS],
        line_no=d.line,
        line=line,
        score=d.score,
        domain=d.domain or NO_DOMAIN,
        route=d.route.value,
        event_id=d.event_id,
        template=d.template,
        novel=d.novel,
        verdict_source=d.verdict_source,
    )
