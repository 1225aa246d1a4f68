"""Deterministic certification of a proposed failure-domain partition (paper Section III-B2).

A proposer (LLM, TF-IDF or a person) only proposes a partition. Certification checks every
domain ``c != UNIVERSAL_NORMAL`` against the K-shot signals with exactly the paper's three
rules, applied in this order:

(iii) No EventID of ``c`` has HasAnomalySignal: ``c`` is dissolved into UNIVERSAL_NORMAL.

(i) No EventID of ``c`` has HasNormalSignal (and, after (iii), at least one has an anomaly
    signal): ``c`` is a *pure-anomaly* domain, resolved by routing alone, provided it is
    distinct from the UNIVERSAL_NORMAL normal pool: the largest TF-IDF cosine similarity
    between the domain's K-shot anomalous lines and the UNIVERSAL_NORMAL normal texts must stay
    below ``max_pure_similarity``; otherwise ``c`` is dissolved into UNIVERSAL_NORMAL.

(ii) Otherwise (some EventID has HasNormalSignal and some has HasAnomalySignal): ``c`` is a
    *mixed* domain and gets a trained expert.

EventIDs with *neither* signal (no labelled line in the K-shot sample) fit neither (i) nor (ii)
as the paper words them. They are treated as carrying no normal evidence: they never make a
domain mixed by themselves, so a domain of anomaly-only and unlabelled EventIDs is pure-anomaly
(subject to the distinctness check). This follows the asymmetry of Section II-C: only a normal
label is evidence that a domain needs a classifier.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
from scipy.sparse import csr_matrix

from fame.errors import BundleError, ConfigError, InputError
from fame.partition.base import UNIVERSAL_NORMAL, Partition
from fame.partition.tfidf import fit_tfidf, log_tokens
from fame.sampling import KShotSample

logger = logging.getLogger(__name__)

#: Default ceiling on the TF-IDF cosine similarity between a pure-anomaly domain's anomalous
#: lines and the UNIVERSAL_NORMAL normal pool (rule i). The paper requires pure domains to be
#: "sufficiently distinct" without a number. Lines of one template differ only in numbers and
#: identifiers, which the tokeniser drops, so a cosine of 0.9 or more means an anomalous line
#: reads like a normal one word for word, save a rare word or two: routing cannot tell them
#: apart, and routing alone would flag the look-alike normals as anomalies.
DEFAULT_MAX_PURE_SIMILARITY = 0.9

#: Rows of anomalous lines compared with the normal pool per sparse product, to bound memory.
_SIMILARITY_CHUNK_ROWS = 256

#: Similarities are rounded to this many decimals before comparison, so that two identical
#: texts (cosine 0.9999999999999998) count as similarity 1.
_SIMILARITY_DECIMALS = 9

#: Longest excerpt of the closest normal line quoted in a decision's reason.
_REASON_EXCERPT_CHARS = 80

#: Format tag written by :meth:`CertifiedPartition.to_json`.
CERTIFIED_FORMAT = "fame-certified/1"


class DomainKind(StrEnum):
    """What a certified domain is (paper type flag ``rho_c``, plus UNIVERSAL_NORMAL)."""

    UNIVERSAL = "universal"
    PURE_ANOMALY = "pure_anomaly"
    MIXED = "mixed"


class CertificationOutcome(StrEnum):
    """The certification decision for one proposed domain."""

    PURE_ANOMALY = "pure_anomaly"
    MIXED = "mixed"
    DISSOLVED_NO_ANOMALY = "dissolved_no_anomaly"
    DISSOLVED_NOT_DISTINCT = "dissolved_not_distinct"

    @property
    def kept(self) -> bool:
        """Whether the domain survives certification."""
        return self in (CertificationOutcome.PURE_ANOMALY, CertificationOutcome.MIXED)


@dataclass
class DomainDecision:
    """Why one proposed domain was kept or dissolved.

    Attributes:
        name: The proposed domain name.
        event_ids: Its EventIDs as proposed.
        outcome: The certification outcome.
        reason: A human-readable explanation naming the rule applied.
        similarity: For pure-anomaly candidates, the largest TF-IDF cosine similarity to the
            UNIVERSAL_NORMAL normal texts; None for the other rules.
    """

    name: str
    event_ids: list[str]
    outcome: CertificationOutcome
    reason: str
    similarity: float | None = None


@dataclass
class CertifiedPartition:
    """The frozen partition ``pi`` with its type flags ``rho_c`` (paper Section III-B2).

    Attributes:
        domains: Surviving domain name -> kind; ``UNIVERSAL_NORMAL`` (kind UNIVERSAL) first.
        event_to_domain: Every offline EventID -> its certified domain.
        decisions: One decision per proposed domain other than UNIVERSAL_NORMAL.
        proposer: Name of the proposer whose partition was certified.
    """

    domains: dict[str, DomainKind]
    event_to_domain: dict[str, str]
    decisions: list[DomainDecision] = field(default_factory=list)
    proposer: str = ""

    def kind_of(self, domain: str) -> DomainKind:
        """Return the kind of a certified domain.

        Args:
            domain: A certified domain name.

        Returns:
            Its kind.

        Raises:
            InputError: If the domain did not survive certification or never existed.
        """
        try:
            return self.domains[domain]
        except KeyError:
            raise InputError(
                f"domain {domain!r} is not in the certified partition; expected one of "
                f"{', '.join(self.domains)}"
            ) from None

    @property
    def expert_domains(self) -> list[str]:
        """Certified domains other than UNIVERSAL_NORMAL (pure and mixed), sorted."""
        return sorted(name for name in self.domains if name != UNIVERSAL_NORMAL)

    @property
    def pure_domains(self) -> list[str]:
        """Pure-anomaly domains (resolved by routing alone), sorted."""
        return sorted(n for n, k in self.domains.items() if k is DomainKind.PURE_ANOMALY)

    @property
    def mixed_domains(self) -> list[str]:
        """Domains that need a trained expert: UNIVERSAL_NORMAL first, then mixed, sorted."""
        mixed = sorted(n for n, k in self.domains.items() if k is DomainKind.MIXED)
        return [UNIVERSAL_NORMAL, *mixed]

    def domain_of(self, event_id: str) -> str:
        """Return the certified domain of an EventID.

        Args:
            event_id: The EventID.

        Returns:
            Its domain; ``UNIVERSAL_NORMAL`` for EventIDs unseen offline.
        """
        return self.event_to_domain.get(event_id, UNIVERSAL_NORMAL)

    def events_of(self, domain: str) -> list[str]:
        """Return the EventIDs of a certified domain.

        Args:
            domain: A domain name.

        Returns:
            Its EventIDs in partition order (empty for an unknown domain).
        """
        return [e for e, d in self.event_to_domain.items() if d == domain]

    def summary(self) -> str:
        """Render the certification decisions as a readable multi-line table.

        Returns:
            The table, headed by counts of pure, mixed and dissolved domains.
        """
        n_pure = len(self.pure_domains)
        n_mixed = len(self.mixed_domains) - 1
        n_dissolved = sum(1 for d in self.decisions if not d.outcome.kept)
        lines = [
            f"certified partition (proposer {self.proposer or '?'}): {n_pure} pure-anomaly, "
            f"{n_mixed} mixed, {n_dissolved} dissolved; {UNIVERSAL_NORMAL} holds "
            f"{len(self.events_of(UNIVERSAL_NORMAL))} EventIDs"
        ]
        width = max([len("domain"), *(len(d.name) for d in self.decisions)])
        lines.append(f"{'domain':<{width}}  {'ids':>4}  {'outcome':<22}  {'sim':>5}  reason")
        for d in self.decisions:
            sim = "-" if d.similarity is None else f"{d.similarity:.2f}"
            lines.append(
                f"{d.name:<{width}}  {len(d.event_ids):>4}  {d.outcome.value:<22}  {sim:>5}  "
                f"{d.reason}"
            )
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """Serialise as a plain JSON-compatible dictionary.

        Returns:
            A dictionary :meth:`from_json` reads back.
        """
        return {
            "format": CERTIFIED_FORMAT,
            "proposer": self.proposer,
            "domains": {name: kind.value for name, kind in self.domains.items()},
            "event_to_domain": dict(self.event_to_domain),
            "decisions": [
                {
                    "name": d.name,
                    "event_ids": list(d.event_ids),
                    "outcome": d.outcome.value,
                    "reason": d.reason,
                    "similarity": d.similarity,
                }
                for d in self.decisions
            ],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CertifiedPartition:
        """Rebuild a certified partition from :meth:`to_json` output.

        Args:
            data: The dictionary written by :meth:`to_json`.

        Returns:
            The restored certified partition.

        Raises:
            BundleError: If the structure is malformed or inconsistent.
        """
        try:
            if data.get("format") != CERTIFIED_FORMAT:
                raise BundleError(
                    f"certified partition has format {data.get('format')!r}, expected "
                    f"{CERTIFIED_FORMAT!r}; rebuild the bundle with this version of fame"
                )
            domains = {str(n): DomainKind(k) for n, k in data["domains"].items()}
            event_to_domain = {str(e): str(d) for e, d in data["event_to_domain"].items()}
            decisions = [
                DomainDecision(
                    name=str(item["name"]),
                    event_ids=[str(e) for e in item["event_ids"]],
                    outcome=CertificationOutcome(item["outcome"]),
                    reason=str(item["reason"]),
                    similarity=None if item["similarity"] is None else float(item["similarity"]),
                )
                for item in data["decisions"]
            ]
            proposer = str(data["proposer"])
        except BundleError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BundleError(
                f"certified partition JSON is malformed ({type(exc).__name__}: {exc}); "
                "expected the structure written by CertifiedPartition.to_json; rebuild the bundle"
            ) from exc
        if domains.get(UNIVERSAL_NORMAL) is not DomainKind.UNIVERSAL:
            raise BundleError(
                f"certified partition lacks {UNIVERSAL_NORMAL} of kind 'universal'; the bundle "
                "is corrupt; rebuild it"
            )
        unknown = sorted({d for d in event_to_domain.values() if d not in domains})
        if unknown:
            raise BundleError(
                f"certified partition maps EventIDs to undeclared domains {unknown}; the bundle "
                "is corrupt; rebuild it"
            )
        return cls(
            domains=domains,
            event_to_domain=event_to_domain,
            decisions=decisions,
            proposer=proposer,
        )


def universal_normal_texts(
    partition: Partition,
    sample: KShotSample,
    event_ids: Sequence[str],
    texts: Sequence[str],
) -> list[str]:
    """Collect the UNIVERSAL_NORMAL normal pool texts that :func:`certify` compares against.

    These are the PU-normal lines (``sample.pu_normal``) whose EventID the proposed partition
    puts in UNIVERSAL_NORMAL, deduplicated in first-seen order.

    Args:
        partition: The proposed partition.
        sample: The K-shot sample (its PU-normal pool).
        event_ids: EventID of every offline line.
        texts: Text of every offline line.

    Returns:
        The distinct normal-pool texts.

    Raises:
        InputError: If ``event_ids`` and ``texts`` differ in length or are shorter than the
            pool's indices.
    """
    if len(event_ids) != len(texts):
        raise InputError(
            f"event_ids and texts must be aligned, got lengths {len(event_ids)} and "
            f"{len(texts)}; pass the offline region's sequences"
        )
    if sample.pu_normal and sample.pu_normal[-1] >= len(texts):
        raise InputError(
            f"the PU-normal pool refers to offline line {sample.pu_normal[-1]} but only "
            f"{len(texts)} lines were given; pass the same offline region the sample came from"
        )
    pool = (
        texts[i] for i in sample.pu_normal if partition.domain_of(event_ids[i]) == UNIVERSAL_NORMAL
    )
    return list(dict.fromkeys(pool))


def certify(
    partition: Partition,
    sample: KShotSample,
    *,
    normal_pool_texts: Sequence[str],
    max_pure_similarity: float = DEFAULT_MAX_PURE_SIMILARITY,
) -> CertifiedPartition:
    """Certify a proposed partition against the K-shot signals (paper Section III-B2).

    Args:
        partition: The proposed partition; it is normalised against ``sample.events`` first
            (unassigned EventIDs go to UNIVERSAL_NORMAL, unknown ones are rejected).
        sample: The K-shot sample providing HasNormalSignal / HasAnomalySignal per EventID
            and the anomalous lines of every domain.
        normal_pool_texts: Texts of the UNIVERSAL_NORMAL normal pool: PU-normal lines whose
            EventID the proposal puts in UNIVERSAL_NORMAL (see :func:`universal_normal_texts`).
            Duplicates are fine; they are removed before vectorising.
        max_pure_similarity: A pure-anomaly candidate whose anomalous lines reach this TF-IDF
            cosine similarity to any normal-pool text is dissolved, in ``(0, 1]``.

    Returns:
        The certified partition with one decision per proposed domain.

    Raises:
        ConfigError: If ``max_pure_similarity`` is outside ``(0, 1]``.
        InputError: If the partition does not fit the sample.
    """
    if not 0.0 < max_pure_similarity <= 1.0:
        raise ConfigError(
            f"max_pure_similarity must be in (0, 1], got {max_pure_similarity!r}; the default "
            f"is {DEFAULT_MAX_PURE_SIMILARITY}"
        )
    proposal = partition.normalised(sample.events)
    decisions: list[DomainDecision] = []
    candidates: dict[str, list[str]] = {}
    for name, event_ids in proposal.domains.items():
        if name == UNIVERSAL_NORMAL:
            continue
        stats = [sample.events[e] for e in event_ids]
        n_anomaly = sum(1 for s in stats if s.has_anomaly)
        n_normal = sum(1 for s in stats if s.has_normal)
        n_unlabelled = sum(1 for s in stats if not s.has_normal and not s.has_anomaly)
        if n_anomaly == 0:
            decisions.append(
                DomainDecision(
                    name=name,
                    event_ids=list(event_ids),
                    outcome=CertificationOutcome.DISSOLVED_NO_ANOMALY,
                    reason=f"rule iii: none of its {_count(len(event_ids), 'EventID')} has an "
                    f"anomaly signal; dissolved into {UNIVERSAL_NORMAL}",
                )
            )
        elif n_normal == 0:
            candidates[name] = list(event_ids)
            decisions.append(
                DomainDecision(
                    name=name,
                    event_ids=list(event_ids),
                    outcome=CertificationOutcome.PURE_ANOMALY,
                    reason=f"rule i: no normal signal ({_count(n_anomaly, 'EventID')} with "
                    f"anomaly signal, {n_unlabelled} unlabelled)",
                )
            )
        else:
            decisions.append(
                DomainDecision(
                    name=name,
                    event_ids=list(event_ids),
                    outcome=CertificationOutcome.MIXED,
                    reason=f"rule ii: {n_normal} of {_count(len(event_ids), 'EventID')} with a "
                    f"normal signal, {n_anomaly} with an anomaly signal",
                )
            )

    if candidates:
        anomaly_texts: dict[str, list[str]] = {name: [] for name in candidates}
        for line in sample.lines():
            if line.label:
                name = proposal.domain_of(line.event_id)
                if name in anomaly_texts:
                    anomaly_texts[name].append(line.text)
        closest = _max_similarity(anomaly_texts, normal_pool_texts)
        for decision in decisions:
            if decision.name not in closest:
                continue
            similarity, nearest = closest[decision.name]
            decision.similarity = similarity
            if similarity >= max_pure_similarity:
                decision.outcome = CertificationOutcome.DISSOLVED_NOT_DISTINCT
                decision.reason += (
                    f"; max TF-IDF cosine to {UNIVERSAL_NORMAL} normals {similarity:.2f} >= "
                    f"{max_pure_similarity:.2f} (closest normal: {_excerpt(nearest)}); "
                    f"dissolved into {UNIVERSAL_NORMAL}"
                )
            else:
                decision.reason += (
                    f"; max TF-IDF cosine to {UNIVERSAL_NORMAL} normals {similarity:.2f} < "
                    f"{max_pure_similarity:.2f}"
                )

    kinds: dict[str, DomainKind] = {UNIVERSAL_NORMAL: DomainKind.UNIVERSAL}
    for decision in decisions:
        if decision.outcome is CertificationOutcome.PURE_ANOMALY:
            kinds[decision.name] = DomainKind.PURE_ANOMALY
        elif decision.outcome is CertificationOutcome.MIXED:
            kinds[decision.name] = DomainKind.MIXED
    event_to_domain = {
        event_id: (name if name in kinds else UNIVERSAL_NORMAL)
        for name, event_ids in proposal.domains.items()
        for event_id in event_ids
    }
    certified = CertifiedPartition(
        domains=kinds,
        event_to_domain=event_to_domain,
        decisions=decisions,
        proposer=proposal.proposer,
    )
    logger.info("%s", certified.summary())
    return certified


def _max_similarity(
    anomaly_texts: Mapping[str, list[str]], normal_pool_texts: Sequence[str]
) -> dict[str, tuple[float, str]]:
    """Find, per domain, the largest TF-IDF cosine between its anomalies and the normal pool.

    Texts are deduplicated by their token sequence (lines that differ only in numbers or
    identifiers have identical TF-IDF vectors), and one vectoriser is fitted on the union of
    the normal pool and every domain's anomalous texts.

    Args:
        anomaly_texts: Domain -> its K-shot anomalous lines.
        normal_pool_texts: UNIVERSAL_NORMAL normal pool texts.

    Returns:
        Domain -> (largest similarity, the normal text reaching it; "" when none).
    """
    normals = _dedupe_by_tokens(normal_pool_texts)
    if not normals:
        logger.warning(
            "no %s normal texts to compare pure-anomaly domains with; similarity taken as 0",
            UNIVERSAL_NORMAL,
        )
        return {name: (0.0, "") for name in anomaly_texts}
    per_domain = {name: _dedupe_by_tokens(texts) for name, texts in anomaly_texts.items()}
    all_anomalies = [text for texts in per_domain.values() for text in texts]
    matrix, _, _ = fit_tfidf([*normals, *all_anomalies])
    normal_matrix = matrix[: len(normals)]
    result: dict[str, tuple[float, str]] = {}
    offset = len(normals)
    for name, texts in per_domain.items():
        best, best_text = 0.0, ""
        for start in range(0, len(texts), _SIMILARITY_CHUNK_ROWS):
            stop = min(start + _SIMILARITY_CHUNK_ROWS, len(texts))
            block = csr_matrix(matrix[offset + start : offset + stop] @ normal_matrix.T)
            if block.nnz == 0:
                continue
            row, col = np.unravel_index(int(block.argmax()), block.shape)
            value = round(float(block[row, col]), _SIMILARITY_DECIMALS)
            if value > best:
                best, best_text = value, normals[int(col)]
        offset += len(texts)
        result[name] = (min(best, 1.0), best_text)
    return result


def _dedupe_by_tokens(texts: Sequence[str]) -> list[str]:
    """Keep the first text of every distinct token sequence.

    Args:
        texts: Texts to deduplicate.

    Returns:
        One representative text per distinct :func:`log_tokens` sequence, first-seen order.
    """
    seen: dict[tuple[str, ...], str] = {}
    for text in dict.fromkeys(texts):
        seen.setdefault(tuple(log_tokens(text)), text)
    return list(seen.values())


def _excerpt(text: str) -> str:
    """Quote a text for a reason string, shortened to a readable length.

    Args:
        text: The text.

    Returns:
        The quoted, possibly shortened text.
    """
    if len(text) > _REASON_EXCERPT_CHARS:
        text = text[: _REASON_EXCERPT_CHARS - 3] + "..."
    return repr(text)


def _count(n: int, noun: str) -> str:
    """Write a count with its noun in singular or plural.

    Args:
        n: The count.
        noun: The singular noun.

    Returns:
        E.g. ``"1 EventID"`` or ``"3 EventIDs"``.
    """
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
