"""Webhook alerting (fame.serve.alerting): window, threshold, cooldown, delivery to a real
local HTTP receiver, retries against a failing one."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")

from fame.serve import alerting
from fame.serve.alerting import Alerter, Anomaly, WindowCounter
from serve_harness import start_receiver


def _a(t: float, domain: str = "TLB") -> Anomaly:
    return Anomaly(t, domain, f"line at {t}", "KERNEL <*>", 0.9, "h1")


def test_threshold_within_window_then_cooldown() -> None:
    counter = WindowCounter(threshold=3, window_s=60, cooldown_s=600)
    assert counter.observe([_a(0), _a(10)]) == []
    assert counter.observe([_a(100)]) == []  # the first two left the window
    assert counter.observe([_a(110)]) == []
    fired = counter.observe([_a(120)])
    assert [(a.domain, a.count, a.starts_at) for a in fired] == [("TLB", 3, 100)]
    assert counter.observe([_a(121), _a(122), _a(123)]) == []  # cooling down
    assert counter.observe([_a(130, "NET")] * 3)[0].domain == "NET"  # per domain
    assert counter.observe([_a(721), _a(722), _a(723)])[0].count == 3  # cooldown over


def test_payload_has_alertmanager_shape() -> None:
    counter = WindowCounter(threshold=2, window_s=300, cooldown_s=0)
    alert = counter.observe([_a(1), _a(2)])[0]
    body = alert.payload("http://127.0.0.1:8080")
    assert body["version"] == "4" and body["status"] == "firing"
    assert set(body) >= {"receiver", "groupLabels", "commonLabels", "commonAnnotations", "alerts"}
    (item,) = body["alerts"]
    assert item["labels"] == {
        "alertname": "FameAnomalyBurst",
        "domain": "TLB",
        "severity": "warning",
    }
    assert item["startsAt"].endswith("Z") and "summary" in item["annotations"]
    assert item["generatorURL"] == "http://127.0.0.1:8080/?domain=TLB"
    assert body["fame"]["count"] == 2 and body["fame"]["examples"][-1]["line"] == "line at 2"


def test_alerts_reach_a_real_receiver() -> None:
    receiver = start_receiver()
    try:
        alerter = Alerter(
            receiver.url, WindowCounter(2, 300, 600), external_url="http://127.0.0.1:1"
        )
        alerter.observe([_a(1), _a(2), _a(3)])
        bodies = receiver.wait(1, timeout=30)
        alerter.close()
        assert len(bodies) == 1
        assert bodies[0]["alerts"][0]["labels"]["domain"] == "TLB"
        assert alerter.sent == 1 and alerter.failed == 0
    finally:
        receiver.close()


def test_failing_receiver_is_retried_and_logged_without_its_secret(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(alerting, "RETRY_BACKOFF_S", 0.01)
    receiver = start_receiver(status=500)
    try:
        alerter = Alerter(receiver.url, WindowCounter(1, 300, 0), external_url="http://x")
        alerter.observe([_a(1)])
        receiver.wait(alerting.SEND_ATTEMPTS, timeout=30)
        alerter.close()
        assert len(receiver.bodies) == alerting.SEND_ATTEMPTS
        assert alerter.failed == 1 and alerter.sent == 0
        assert "secret-path" not in caplog.text and "not delivered" in caplog.text
    finally:
        receiver.close()
