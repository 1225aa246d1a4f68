"""Storage of anomalous detections: SQLite by default, PostgreSQL for a shared deployment.

One table (``fame_detections``) through SQLAlchemy Core, so the same queries run on both.
Times are UTC epoch seconds; ``minute`` (whole minutes since the epoch) is kept beside them
so that counts per time bucket are integer arithmetic on every backend.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    func,
    insert,
    select,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from fame.errors import InputError

logger = logging.getLogger(__name__)

#: Label of anomalies whose path names no failure domain (e.g. UNIVERSAL_NORMAL's).
NO_DOMAIN = "(none)"

_metadata = MetaData()
detections = Table(
    "fame_detections",
    _metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("time", Float, nullable=False),
    Column("minute", BigInteger, nullable=False),
    Column("source", String(255), nullable=False),
    Column("line_no", Integer, nullable=False),
    Column("line", Text, nullable=False),
    Column("score", Float, nullable=False),
    Column("domain", String(255), nullable=False),
    Column("route", String(32), nullable=False),
    Column("event_id", String(64)),
    Column("template", Text),
    Column("novel", Boolean, nullable=False),
    Column("verdict_source", String(32)),
    Index("ix_fame_detections_time", "time"),
    Index("ix_fame_detections_domain_time", "domain", "time"),
)


class StorageError(InputError):
    """The database URL is unusable or the database cannot be reached."""


@dataclass(frozen=True, slots=True)
class StoredDetection:
    """One anomalous line as kept.

    Attributes:
        time: When the service received it (UTC epoch seconds).
        source: Who sent it (the ``source`` of the request or line, else the client address).
        line_no: Its position in its request (the result's ``line``).
        line: The line as received (decoded).
        score: The detection's score.
        domain: Its failure domain, or :data:`NO_DOMAIN`.
        route: The path that decided it.
        event_id: Its frozen template's id, None for a never-seen template.
        template: That template's text.
        novel: It matched no frozen template.
        verdict_source: Who judged its template on the triage route.
        id: Row id (None before it is stored).
    """

    time: float
    source: str
    line_no: int
    line: str
    score: float
    domain: str
    route: str
    event_id: str | None
    template: str | None
    novel: bool
    verdict_source: str | None = None
    id: int | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class DomainCount:
    """How many anomalies a domain had in a time range, and the latest one's time."""

    domain: str
    count: int
    last: float


def database_url(url: str | None, bundle: str | Path) -> str:
    """The SQLAlchemy URL to use: the given one, or a SQLite file beside the bundle.

    ``postgresql://`` URLs are given the psycopg (version 3) driver, the one installed.
    """
    if not url:
        root = Path(bundle).resolve()
        return f"sqlite:///{root.with_name(root.name + '.detections.sqlite')}"
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def safe_url(url: str) -> str:
    """The URL with its password hidden, for logs and messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable URL>"


class DetectionStore:
    """Anomalous detections in a SQL database.

    Args:
        url: A SQLAlchemy URL (``sqlite:///path``, ``postgresql+psycopg://user@host/db``).

    Raises:
        StorageError: The URL is invalid, its driver is missing or the database is unreachable.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            options: dict[str, Any] = {"pool_pre_ping": True}
            if url.startswith("sqlite"):
                # One writer thread and request threads read: share the file across threads.
                options["connect_args"] = {"check_same_thread": False, "timeout": 30}
            self.engine: Engine = create_engine(url, **options)
            _metadata.create_all(self.engine)
        except (ArgumentError, SQLAlchemyError, ImportError) as exc:
            raise StorageError(
                f"cannot use the database {safe_url(url)}: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}. Check --database-url "
                "(e.g. sqlite:///detections.sqlite or postgresql://user:pass@host/db) and "
                "that the server is reachable"
            ) from exc
        logger.info("storing detections in %s", safe_url(url))

    def add(self, rows: Sequence[StoredDetection]) -> None:
        """Store detections (one transaction)."""
        if not rows:
            return
        values = []
        for row in rows:
            data = row.to_json()
            data.pop("id")
            data["minute"] = int(row.time // 60)
            values.append(data)
        with self.engine.begin() as conn:
            conn.execute(insert(detections), values)

    def recent(
        self,
        *,
        domain: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
    ) -> list[StoredDetection]:
        """The newest detections, newest first, optionally of one domain and time range."""
        query = select(detections).order_by(detections.c.time.desc(), detections.c.id.desc())
        query = self._where(query, domain, since, until).limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [_stored(row) for row in rows]

    def recent_by_domain(
        self,
        domains: Sequence[str],
        *,
        since: float | None = None,
        until: float | None = None,
        limit: int = 20,
    ) -> dict[str, list[StoredDetection]]:
        """The newest ``limit`` detections of each domain."""
        return {d: self.recent(domain=d, since=since, until=until, limit=limit) for d in domains}

    def domain_counts(
        self, *, domain: str | None = None, since: float | None = None, until: float | None = None
    ) -> list[DomainCount]:
        """Anomalies per domain in the range, most first."""
        count = func.count().label("n")
        query = select(detections.c.domain, count, func.max(detections.c.time).label("last"))
        query = self._where(query, domain, since, until).group_by(detections.c.domain)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(count.desc(), detections.c.domain)).all()
        return [DomainCount(str(r[0]), int(r[1]), float(r[2])) for r in rows]

    def counts_over_time(
        self,
        *,
        bucket_minutes: int,
        domain: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> dict[str, dict[int, int]]:
        """Anomalies per domain per time bucket: ``{domain: {bucket start minute: count}}``."""
        bucket = (detections.c.minute // bucket_minutes).label("bucket")
        query = select(detections.c.domain, bucket, func.count())
        query = self._where(query, domain, since, until).group_by(detections.c.domain, bucket)
        out: dict[str, dict[int, int]] = {}
        with self.engine.connect() as conn:
            for name, index, n in conn.execute(query).all():
                out.setdefault(str(name), {})[int(index) * bucket_minutes] = int(n)
        return out

    def purge(self, older_than: float) -> int:
        """Delete detections received before ``older_than`` (epoch seconds); their number."""
        with self.engine.begin() as conn:
            result = conn.execute(delete(detections).where(detections.c.time < older_than))
        return int(result.rowcount or 0)

    def count(self) -> int:
        """All stored detections."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(detections)).scalar_one())

    def close(self) -> None:
        """Release the connections."""
        self.engine.dispose()

    @staticmethod
    def _where(query: Any, domain: str | None, since: float | None, until: float | None) -> Any:
        if domain:
            query = query.where(detections.c.domain == domain)
        if since is not None:
            query = query.where(detections.c.time >= since)
        if until is not None:
            query = query.where(detections.c.time < until)
        return query


def _stored(row: Any) -> StoredDetection:
    return StoredDetection(
        time=float(row["time"]),
        source=row["source"],
        line_no=int(row["line_no"]),
        line=row["line"],
        score=float(row["score"]),
        domain=row["domain"],
        route=row["route"],
        event_id=row["event_id"],
        template=row["template"],
        novel=bool(row["novel"]),
        verdict_source=row["verdict_source"],
        id=int(row["id"]),
    )


def now() -> float:
    """The current time as stored (UTC epoch seconds)."""
    return time.time()
