"""The dashboard's view: time filters, counts per domain and the chart, as plain data.

The page (``templates/dashboard.html``) is rendered on the server; the chart is an inline
SVG of stacked bars (anomalies per domain per time bucket) built here, so the page needs no
script library and works offline. ``static/dashboard.js`` only refreshes the page's content
and turns a click on a domain into a filter.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fame.errors import InputError
from fame.serve.storage import DetectionStore, StoredDetection

#: Time ranges offered by the filter, in minutes.
RANGES = {"15m": 15, "1h": 60, "6h": 360, "24h": 1440, "7d": 10080, "30d": 43200}
DEFAULT_RANGE = "24h"
BUCKET_CHOICES = (1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440)
TARGET_BUCKETS = 48
LINES_PER_DOMAIN = 20
CHART_DOMAINS = 8  # the others are drawn together as "other"
OTHER = "other"
# Colour-blind-safe palette (Okabe-Ito), then greys for "other".
PALETTE = (
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#D55E00",
    "#CC79A7",
    "#56B4E9",
    "#F0E442",
    "#000000",
)
OTHER_COLOUR = "#999999"
WIDTH, HEIGHT = 960, 220
LATEST_TIME = 253_402_300_799.0  # 9999-12-31T23:59:59Z, the last time datetime can show
PAD_LEFT, PAD_BOTTOM, PAD_TOP = 44, 26, 10


def parse_time(value: str | None, name: str) -> float | None:
    """A time filter: epoch seconds, or ISO 8601 (without a zone: UTC); None if empty.

    Raises:
        InputError: The value is neither.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        number = float(text)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError as exc:
            raise InputError(
                f"{name} must be epoch seconds or an ISO 8601 time such as 2026-12-04T10:00, "
                f"got {value!r}"
            ) from exc
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        number = parsed.timestamp()
    if not (math.isfinite(number) and 0 <= number <= LATEST_TIME):
        raise InputError(f"{name} must lie between 1970 and 9999, got {value!r}")
    return number


def fmt_time(epoch: float, *, seconds: bool = True) -> str:
    """A UTC time for the page."""
    pattern = "%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M"
    return datetime.fromtimestamp(epoch, UTC).strftime(pattern)


def input_time(epoch: float | None) -> str:
    """A time as a ``datetime-local`` input value (UTC)."""
    if epoch is None:
        return ""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M")


@dataclass(frozen=True, slots=True)
class Filter:
    """What the page shows: a domain (or all) and a time range."""

    domain: str | None
    range_name: str
    since: float
    until: float
    custom: bool

    @classmethod
    def from_query(
        cls,
        domain: str | None,
        range_name: str | None,
        since: str | None,
        until: str | None,
        *,
        now: float | None = None,
    ) -> Filter:
        """Build a filter from the page's query parameters.

        Raises:
            InputError: An unknown range, or a time that cannot be read.
        """
        now = time.time() if now is None else now
        name = range_name or DEFAULT_RANGE
        if name not in RANGES:
            raise InputError(f"range must be one of {', '.join(RANGES)}, got {name!r}")
        start = parse_time(since, "since")
        end = parse_time(until, "until")
        custom = start is not None or end is not None
        end = now if end is None else end
        start = end - RANGES[name] * 60.0 if start is None else start
        if start >= end:
            raise InputError("since must be before until")
        return cls(domain or None, name, start, end, custom)


@dataclass(slots=True)
class Chart:
    """The stacked-bar chart as SVG primitives."""

    width: int = WIDTH
    height: int = HEIGHT
    bars: list[dict[str, Any]] = field(default_factory=list)
    ticks: list[dict[str, Any]] = field(default_factory=list)
    y_ticks: list[dict[str, Any]] = field(default_factory=list)
    legend: list[dict[str, Any]] = field(default_factory=list)
    bucket_minutes: int = 1
    empty: bool = True


def bucket_minutes_for(span_s: float) -> int:
    """The smallest bucket choice that keeps the chart near :data:`TARGET_BUCKETS` bars."""
    wanted = span_s / 60.0 / TARGET_BUCKETS
    for choice in BUCKET_CHOICES:
        if choice >= wanted:
            return choice
    return BUCKET_CHOICES[-1]


def colours(domains: list[str]) -> dict[str, str]:
    """A stable colour per charted domain (by rank), grey for the rest."""
    out = {d: PALETTE[i] for i, d in enumerate(domains[:CHART_DOMAINS])}
    out[OTHER] = OTHER_COLOUR
    return out


def build_chart(store: DetectionStore, flt: Filter, ranked: list[str]) -> Chart:
    """Counts per domain over the filter's time range, as stacked bars."""
    minutes = bucket_minutes_for(flt.until - flt.since)
    series = store.counts_over_time(
        bucket_minutes=minutes, domain=flt.domain, since=flt.since, until=flt.until
    )
    chart = Chart(bucket_minutes=minutes)
    shown = ranked[:CHART_DOMAINS]
    palette = colours(ranked)
    stacks: dict[int, list[tuple[str, int]]] = {}
    for domain, buckets in series.items():
        name = domain if domain in shown else OTHER
        for minute, count in buckets.items():
            stacks.setdefault(minute, []).append((name, count))
    first = int(flt.since // 60) // minutes * minutes
    last = int(flt.until // 60) // minutes * minutes
    n_buckets = max(1, (last - first) // minutes + 1)
    peak = max((sum(c for _, c in stack) for stack in stacks.values()), default=0)
    plot_w = WIDTH - PAD_LEFT - 4
    plot_h = HEIGHT - PAD_BOTTOM - PAD_TOP
    bar_w = plot_w / n_buckets
    scale = plot_h / peak if peak else 0.0
    order = {name: i for i, name in enumerate([*shown, OTHER])}
    for minute, stack in stacks.items():
        index = (minute - first) // minutes
        if not 0 <= index < n_buckets:
            continue
        y = float(PAD_TOP + plot_h)
        merged: dict[str, int] = {}
        for name, count in stack:
            merged[name] = merged.get(name, 0) + count
        for name in sorted(merged, key=lambda n: order.get(n, len(order))):
            h = merged[name] * scale
            y -= h
            chart.bars.append(
                {
                    "x": round(PAD_LEFT + index * bar_w + 1, 1),
                    "y": round(y, 1),
                    "w": round(max(bar_w - 2, 1.0), 1),
                    "h": round(max(h, 0.5), 1),
                    "fill": palette.get(name, OTHER_COLOUR),
                    "domain": name,
                    "title": f"{name}: {merged[name]} at {fmt_time(minute * 60, seconds=False)}",
                }
            )
    for k in range(5):  # five time labels along the axis
        index = round(k * (n_buckets - 1) / 4) if n_buckets > 1 else 0
        chart.ticks.append(
            {
                "x": round(PAD_LEFT + index * bar_w + bar_w / 2, 1),
                "label": fmt_time((first + index * minutes) * 60, seconds=False)[5:],
            }
        )
    if peak:
        for value in sorted({peak, max(peak // 2, 1)}):
            chart.y_ticks.append({"y": round(PAD_TOP + plot_h - value * scale, 1), "label": value})
    chart.legend = [{"domain": d, "fill": palette[d]} for d in shown]
    if any(d not in shown for d in series):
        chart.legend.append({"domain": OTHER, "fill": OTHER_COLOUR})
    chart.empty = not stacks
    return chart


@dataclass(slots=True)
class DomainGroup:
    """One failure domain's section of the page."""

    domain: str
    count: int
    last: str
    colour: str
    rows: list[StoredDetection]


def view(store: DetectionStore, flt: Filter) -> dict[str, Any]:
    """Everything the dashboard template shows for a filter."""
    counts = store.domain_counts(domain=flt.domain, since=flt.since, until=flt.until)
    ranked = [c.domain for c in counts]
    palette = colours(ranked)
    groups = [
        DomainGroup(
            c.domain,
            c.count,
            fmt_time(c.last),
            palette.get(c.domain, OTHER_COLOUR),
            store.recent(domain=c.domain, since=flt.since, until=flt.until, limit=LINES_PER_DOMAIN),
        )
        for c in counts
    ]
    all_domains = [c.domain for c in store.domain_counts(since=flt.until - RANGES["30d"] * 60)]
    if flt.domain and flt.domain not in all_domains:
        all_domains.append(flt.domain)
    return {
        "filter": flt,
        "groups": groups,
        "total": sum(c.count for c in counts),
        "chart": build_chart(store, flt, ranked),
        "domains": sorted(all_domains),
        "ranges": list(RANGES),
        "since_value": input_time(flt.since) if flt.custom else "",
        "until_value": input_time(flt.until) if flt.custom else "",
        "since_label": fmt_time(flt.since, seconds=False),
        "until_label": fmt_time(flt.until, seconds=False),
        "fmt_time": fmt_time,
    }
