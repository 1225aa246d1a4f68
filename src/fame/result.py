"""What detection emits for every input line."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class Route(enum.StrEnum):
    """The three paths of Eq. 5 (paper III-F)."""

    UNIVERSAL_NORMAL = "universal_normal"
    PURE_ANOMALY = "pure_anomaly"
    EXPERT = "expert"
    #: Beyond the paper: a line of a never-seen template decided by the novelty path.
    NOVEL = "novel"
    #: Beyond the paper: a line of a never-seen template decided by a per-template verdict
    #: (from the LLM or an operator), see :mod:`fame.triage`.
    TRIAGE = "triage"


@dataclass(frozen=True, slots=True)
class Detection:
    """The verdict for one input line.

    Attributes:
        line: 1-based position of the line in its input.
        anomaly: The binary decision.
        score: Anomaly score in [0, 1], mapped so that 0.5 is the decision point of the path
            the line took (higher = more anomalous); comparable across paths.
        domain: The failure domain for the routed paths (pure-anomaly, expert); None on the
            UNIVERSAL_NORMAL path, which names no domain (paper III-F).
        route: Which path of Eq. 5 decided.
        event_id: The frozen template the line matched, or None for a never-seen template.
        template: That template's text, or None.
        raw_score: The path's own score before the mapping (expert probability, fused
            UNIVERSAL_NORMAL score, or the gate probability on the pure-anomaly path).
        gate: The gate's probability that the line belongs to an expert domain; None when
            the gate was not consulted (a known template routed by the partition to a domain
            whose decision does not use it).
        malformed: The line did not fit the log format and was scored as raw text.
        novel: The line matched no frozen template (its template was never seen offline).
        verdict_source: On the triage route, who gave the template's verdict (``llm`` or
            ``operator``); None otherwise.
    """

    line: int
    anomaly: bool
    score: float
    domain: str | None
    route: Route
    event_id: str | None
    template: str | None
    raw_score: float
    gate: float | None
    malformed: bool = False
    novel: bool = False
    verdict_source: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (the JSON Lines schema of ``fame detect``)."""
        return {
            "line": self.line,
            "anomaly": self.anomaly,
            "score": round(self.score, 6),
            "domain": self.domain,
            "route": self.route.value,
            "event_id": self.event_id,
            "template": self.template,
            "raw_score": round(self.raw_score, 6),
            "gate": None if self.gate is None else round(self.gate, 6),
            "malformed": self.malformed,
            "novel": self.novel,
            "verdict_source": self.verdict_source,
        }
