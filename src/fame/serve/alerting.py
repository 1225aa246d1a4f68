"""Webhook alerts when a failure domain's anomaly count within a window reaches a threshold.

The JSON posted has the shape of Alertmanager's webhook payload (version 4: ``status``,
``groupLabels``, ``commonLabels``, ``alerts`` with ``labels``, ``annotations`` and
``startsAt``), so receivers written for Alertmanager (and generic webhook receivers that
take any JSON) read it; a ``fame`` object adds the count, the window and example lines.
Delivery runs on its own thread, with a timeout and a few retries, so a slow receiver
never delays detection; after an alert a domain stays quiet for the cooldown.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

logger = logging.getLogger(__name__)

ALERT_NAME = "FameAnomalyBurst"
SEND_TIMEOUT_S = 10.0
SEND_ATTEMPTS = 3
RETRY_BACKOFF_S = 1.0  # doubled after each failed attempt
EXAMPLES = 5  # example lines per alert


@dataclass(frozen=True, slots=True)
class Anomaly:
    """What the alerter needs of one stored anomaly."""

    time: float
    domain: str
    line: str
    template: str | None
    score: float
    source: str


@dataclass(slots=True)
class Alert:
    """One domain passing its threshold."""

    domain: str
    count: int
    window_s: float
    threshold: int
    starts_at: float
    examples: list[Anomaly] = field(default_factory=list)

    def payload(self, external_url: str) -> dict[str, Any]:
        """The Alertmanager-compatible webhook body."""
        labels = {"alertname": ALERT_NAME, "domain": self.domain, "severity": "warning"}
        query = urllib.parse.urlencode({"domain": self.domain})
        summary = (
            f"{self.count} anomalous log lines in failure domain {self.domain} within "
            f"{self.window_s:g} s (threshold {self.threshold})"
        )
        first = self.examples[-1] if self.examples else None
        annotations = {
            "summary": summary,
            "description": f"latest line: {first.line}" if first else summary,
            "template": (first.template or "") if first else "",
        }
        alert = {
            "status": "firing",
            "labels": labels,
            "annotations": annotations,
            "startsAt": _iso(self.starts_at),
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": f"{external_url.rstrip('/')}/?{query}",
            "fingerprint": hashlib.sha256(self.domain.encode("utf-8")).hexdigest()[:16],
        }
        return {
            "version": "4",
            "groupKey": f'{{}}:{{alertname="{ALERT_NAME}", domain="{self.domain}"}}',
            "truncatedAlerts": 0,
            "status": "firing",
            "receiver": "fame",
            "groupLabels": {"alertname": ALERT_NAME, "domain": self.domain},
            "commonLabels": labels,
            "commonAnnotations": annotations,
            "externalURL": external_url,
            "alerts": [alert],
            "fame": {
                "domain": self.domain,
                "count": self.count,
                "window_s": self.window_s,
                "threshold": self.threshold,
                "examples": [
                    {
                        "time": _iso(a.time),
                        "line": a.line,
                        "template": a.template,
                        "score": a.score,
                        "source": a.source,
                    }
                    for a in self.examples
                ],
            },
        }


class WindowCounter:
    """Counts each domain's anomalies in a sliding window and decides when to alert.

    Args:
        threshold: Anomalies within the window that alert.
        window_s: The window, in seconds.
        cooldown_s: Quiet time of a domain after its alert.
    """

    def __init__(self, threshold: int, window_s: float, cooldown_s: float) -> None:
        self.threshold = threshold
        self.window_s = window_s
        self.cooldown_s = cooldown_s
        self._times: dict[str, deque[Anomaly]] = {}
        self._last_alert: dict[str, float] = {}

    def observe(self, anomalies: Sequence[Anomaly]) -> list[Alert]:
        """Add anomalies (in time order); the alerts they trigger."""
        alerts = []
        for anomaly in anomalies:
            window = self._times.setdefault(anomaly.domain, deque())
            window.append(anomaly)
            while window and window[0].time <= anomaly.time - self.window_s:
                window.popleft()
            last = self._last_alert.get(anomaly.domain)
            cooled = last is None or anomaly.time - last >= self.cooldown_s
            if len(window) >= self.threshold and cooled:
                self._last_alert[anomaly.domain] = anomaly.time
                alerts.append(
                    Alert(
                        domain=anomaly.domain,
                        count=len(window),
                        window_s=self.window_s,
                        threshold=self.threshold,
                        starts_at=window[0].time,
                        examples=list(window)[-EXAMPLES:],
                    )
                )
        return alerts


Sender = Callable[[str, bytes], None]


def post_json(url: str, body: bytes) -> None:
    """POST a JSON body; raises on a non-2xx answer or a network error."""
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=SEND_TIMEOUT_S) as response:
        response.read()


def describe_url(url: str) -> str:
    """Scheme, host and port only: a webhook's path or query may hold a secret."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}/..."


class Alerter:
    """Decides alerts and delivers them to a webhook on a background thread.

    Args:
        url: The webhook URL.
        counter: The window counter.
        external_url: The service's own URL, for links in the alert.
        sender: How a body is posted (default :func:`post_json`).
    """

    def __init__(
        self,
        url: str,
        counter: WindowCounter,
        *,
        external_url: str,
        sender: Sender = post_json,
    ) -> None:
        self.url = url
        self.counter = counter
        self.external_url = external_url
        self.sender = sender
        self.sent = 0
        self.failed = 0
        self._queue: queue.Queue[Alert | None] = queue.Queue()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="fame-alerts", daemon=True)
        self._thread.start()

    def observe(self, anomalies: Sequence[Anomaly]) -> list[Alert]:
        """Count anomalies; queue and return the alerts they trigger."""
        with self._lock:
            alerts = self.counter.observe(anomalies)
        for alert in alerts:
            logger.info(
                "alert: %d anomalies in %s within %g s", alert.count, alert.domain, alert.window_s
            )
            self._queue.put(alert)
        return alerts

    def close(self, timeout: float = 15.0) -> None:
        """Deliver what is queued (within ``timeout``) and stop."""
        self._queue.put(None)
        self._thread.join(timeout=timeout)

    def _run(self) -> None:
        while True:
            alert = self._queue.get()
            if alert is None:
                return
            self._deliver(alert)

    def _deliver(self, alert: Alert) -> None:
        body = json.dumps(alert.payload(self.external_url)).encode("utf-8")
        delay = RETRY_BACKOFF_S
        for attempt in range(1, SEND_ATTEMPTS + 1):
            try:
                self.sender(self.url, body)
            except (OSError, urllib.error.URLError, ValueError) as exc:
                logger.warning(
                    "webhook %s failed (attempt %d of %d): %s",
                    describe_url(self.url),
                    attempt,
                    SEND_ATTEMPTS,
                    exc,
                )
                if attempt < SEND_ATTEMPTS:
                    time.sleep(delay)
                    delay *= 2
            else:
                self.sent += 1
                return
        self.failed += 1
        logger.error(
            "alert for %s not delivered to %s after %d attempts",
            alert.domain,
            describe_url(self.url),
            SEND_ATTEMPTS,
        )


def _iso(epoch: float) -> str:
    return (
        datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )
