"""Prometheus metrics of the service, in a registry of its own (one per app)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# Request latencies from a few ms (a cached line) to many seconds (a full batch under load).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _Live(Collector):
    """Values read when scraped: cache counters, queue depth, readiness."""

    def __init__(self, read: Callable[[], dict[str, float]]) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        values = self.read()
        hits = CounterMetricFamily(
            "fame_cache_hits", "results served from the detector's result cache"
        )
        hits.add_metric([], values.get("cache_hits", 0.0))
        misses = CounterMetricFamily("fame_cache_misses", "results the models had to compute")
        misses.add_metric([], values.get("cache_misses", 0.0))
        total = values.get("cache_hits", 0.0) + values.get("cache_misses", 0.0)
        ratio = GaugeMetricFamily(
            "fame_cache_hit_ratio", "share of results served from the cache since the load"
        )
        ratio.add_metric([], values.get("cache_hits", 0.0) / total if total else 0.0)
        depth = GaugeMetricFamily("fame_queue_depth", "lines accepted and waiting to be scored")
        depth.add_metric([], values.get("queue_depth", 0.0))
        ready = GaugeMetricFamily("fame_ready", "1 once a bundle is loaded")
        ready.add_metric([], values.get("ready", 0.0))
        yield from (hits, misses, ratio, depth, ready)


class ServeMetrics:
    """The counters and histograms the service updates.

    Args:
        live: Returns the values read at scrape time (``cache_hits``, ``cache_misses``,
            ``queue_depth``, ``ready``).
    """

    def __init__(self, live: Callable[[], dict[str, float]]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.lines = Counter("fame_lines", "log lines scored", registry=r)
        self.anomalies = Counter(
            "fame_anomalies", "anomalous lines, by failure domain", ["domain"], registry=r
        )
        self.novel = Counter(
            "fame_novel_lines", "lines of templates never seen offline", registry=r
        )
        self.requests = Counter(
            "fame_detect_requests",
            "POST /v1/detect requests, by status code",
            ["status"],
            registry=r,
        )
        self.latency = Histogram(
            "fame_detect_latency_seconds",
            "time from a detect request's arrival to its answer",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stored = Counter("fame_stored_detections", "anomalous detections stored", registry=r)
        self.storage_errors = Counter(
            "fame_storage_errors", "batches of detections the database refused", registry=r
        )
        self.alerts = Counter("fame_alerts", "alerts raised, by domain", ["domain"], registry=r)
        self.reloads = Counter(
            "fame_reloads", "bundle reloads, by result (ok, failed)", ["result"], registry=r
        )
        self.bundle_loaded = Gauge(
            "fame_bundle_loaded_timestamp_seconds", "when the bundle in use was loaded", registry=r
        )
        r.register(_Live(live))
