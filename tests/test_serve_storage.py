"""Storage of detections (fame.serve.storage) on SQLite and on a real PostgreSQL server.

PostgreSQL is found at ``$FAME_TEST_POSTGRES_URL`` (default a local ``fame_test`` database);
without it these cases are skipped, except in CI where ``.ci/run`` starts one and sets
``FAME_REQUIRE_SERVE=1``, so there they must run.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("sqlalchemy", reason="the serve extra is not installed")

from fame.serve.storage import (
    NO_DOMAIN,
    DetectionStore,
    StorageError,
    StoredDetection,
    database_url,
    detections,
    safe_url,
)
from serve_harness import POSTGRES_URL, REQUIRE_SERVE, postgres_available

T0 = 1_780_000_000.0  # a fixed time (2026), on a minute boundary


def _row(
    t: float, domain: str, line: str = "KERNEL FATAL x", source: str = "h1"
) -> StoredDetection:
    return StoredDetection(
        time=t,
        source=source,
        line_no=1,
        line=line,
        score=0.9,
        domain=domain,
        route="pure_anomaly",
        event_id="E1",
        template="KERNEL FATAL <*>",
        novel=False,
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DetectionStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'd.sqlite'}"
    else:
        reason = postgres_available()
        if reason:
            if REQUIRE_SERVE:
                pytest.fail(f"FAME_REQUIRE_SERVE=1 but {reason}")
            pytest.skip(reason)
        url = database_url(POSTGRES_URL, tmp_path)
    s = DetectionStore(url)
    with s.engine.begin() as conn:  # each test starts empty (PostgreSQL outlives the test)
        conn.execute(detections.delete())
    yield s
    s.close()


def test_add_recent_and_filters(store: DetectionStore) -> None:
    store.add(
        [
            _row(T0, "TLB"),
            _row(T0 + 30, "TLB", line="second"),
            _row(T0 + 90, "NET", source="h2"),
            _row(T0 + 4000, NO_DOMAIN),
        ]
    )
    assert store.count() == 4
    newest = store.recent(limit=2)
    assert [r.domain for r in newest] == [NO_DOMAIN, "NET"]
    assert [r.line for r in store.recent(domain="TLB")] == ["second", "KERNEL FATAL x"]
    in_range = store.recent(since=T0 + 10, until=T0 + 100)
    assert [(r.domain, r.source) for r in in_range] == [("NET", "h2"), ("TLB", "h1")]
    row = store.recent(domain="NET")[0]
    assert (row.template, row.event_id, row.novel, row.score) == (
        "KERNEL FATAL <*>",
        "E1",
        False,
        0.9,
    )
    assert row.id is not None


def test_counts_per_domain_and_over_time(store: DetectionStore) -> None:
    store.add([_row(T0 + s, "TLB") for s in (0, 10, 70, 130)] + [_row(T0 + 5, "NET")])
    counts = store.domain_counts()
    assert [(c.domain, c.count) for c in counts] == [("TLB", 4), ("NET", 1)]
    assert counts[0].last == T0 + 130
    minute = int(T0 // 60)
    assert store.counts_over_time(bucket_minutes=1) == {
        "TLB": {minute: 2, minute + 1: 1, minute + 2: 1},
        "NET": {minute: 1},
    }
    two = store.counts_over_time(bucket_minutes=2, domain="TLB")
    assert sum(two["TLB"].values()) == 4 and set(two) == {"TLB"}


def test_retention_purge(store: DetectionStore) -> None:
    store.add([_row(T0, "OLD"), _row(T0 + 3600, "NEW")])
    assert store.purge(T0 + 10) == 1
    assert [r.domain for r in store.recent()] == ["NEW"]


def test_unicode_and_long_lines_survive(store: DetectionStore) -> None:
    text = "ünïcödé \ufffd " + "x" * 30_000
    store.add([_row(T0, "TLB", line=text)])
    assert store.recent()[0].line == text


def test_urls_default_and_hide_passwords(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    assert database_url(None, bundle) == f"sqlite:///{tmp_path / 'bundle.detections.sqlite'}"
    assert database_url("postgresql://u:p@h/db", bundle) == "postgresql+psycopg://u:p@h/db"
    assert "secret" not in safe_url("postgresql+psycopg://u:secret@h/db")


def test_unreachable_database_is_a_clear_error() -> None:
    name = uuid.uuid4().hex
    with pytest.raises(StorageError, match="--database-url") as info:
        DetectionStore(f"postgresql+psycopg://nobody:pw-{name}@127.0.0.1:1/none")
    assert f"pw-{name}" not in str(info.value)
    with pytest.raises(StorageError, match="cannot use the database"):
        DetectionStore("nosuchdriver://x")
