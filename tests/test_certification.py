"""Certification (paper III-B2) on constructed signals, plus one run on real BGL lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from drain3 import TemplateMiner
from drain3.template_miner_config import TemplateMinerConfig

from fame.certification import (
    CertificationOutcome,
    CertifiedPartition,
    DomainKind,
    certify,
    universal_normal_texts,
)
from fame.errors import BundleError, InputError
from fame.partition import (
    DOMAIN_NAME_PATTERN,
    UNIVERSAL_NORMAL,
    Partition,
    TfidfProposer,
)
from fame.sampling import EventStats, KShotSample, LabeledLine, sample_kshot

# (event_id, has_normal, has_anomaly, anomaly text)
SIGNALS: list[tuple[str, bool, bool, str | None]] = [
    ("P1", False, True, "data TLB error interrupt"),
    ("P2", False, True, "instruction TLB error interrupt"),
    ("M1", True, True, "machine check interrupt failed"),
    ("M2", True, False, None),
    ("N1", True, False, None),
    ("N2", False, False, None),
    ("S1", False, True, "generating core 4711"),
    ("U1", False, True, "Lustre mount unavailable bglio11"),
    ("U2", False, False, None),
    ("X1", True, False, None),
]
NORMAL_POOL = [
    "generating core 1234",
    "generating core 1234",
    "ciod LOGIN chdir failed No such file or directory",
    "instruction cache parity error corrected",
]
PROPOSAL = {
    "PURE": ["P1", "P2"],
    "MIXED": ["M1", "M2"],
    "NO_ANOMALY": ["N1", "N2"],
    "LOOKALIKE": ["S1"],
    "PURE_WITH_UNLABELLED": ["U1", "U2"],
}


def _sample() -> KShotSample:
    events: dict[str, EventStats] = {}
    train: list[LabeledLine] = []
    for i, (event_id, has_normal, has_anomaly, anomaly_text) in enumerate(SIGNALS):
        events[event_id] = EventStats(
            event_id=event_id,
            template=anomaly_text or f"template {event_id}",
            count=3,
            n_labeled=int(has_normal) + int(has_anomaly),
            has_normal=has_normal,
            has_anomaly=has_anomaly,
            normal_example=f"normal {event_id}" if has_normal else None,
            anomaly_example=anomaly_text,
        )
        if has_anomaly and anomaly_text is not None:
            train.append(LabeledLine(3 * i, event_id, anomaly_text, True))
        if has_normal:
            train.append(LabeledLine(3 * i + 1, event_id, f"normal {event_id}", False))
    return KShotSample(k=10, train=train, calibration=[], events=events, pu_normal=[])


def _certify(**kwargs: float) -> CertifiedPartition:
    partition = Partition(domains={k: list(v) for k, v in PROPOSAL.items()}, proposer="test")
    return certify(partition, _sample(), normal_pool_texts=NORMAL_POOL, **kwargs)


def test_the_three_rules_and_the_distinctness_check() -> None:
    certified = _certify()
    outcomes = {d.name: d.outcome for d in certified.decisions}
    assert outcomes == {
        "PURE": CertificationOutcome.PURE_ANOMALY,
        "MIXED": CertificationOutcome.MIXED,
        "NO_ANOMALY": CertificationOutcome.DISSOLVED_NO_ANOMALY,
        "LOOKALIKE": CertificationOutcome.DISSOLVED_NOT_DISTINCT,
        "PURE_WITH_UNLABELLED": CertificationOutcome.PURE_ANOMALY,
    }
    assert certified.domains == {
        UNIVERSAL_NORMAL: DomainKind.UNIVERSAL,
        "PURE": DomainKind.PURE_ANOMALY,
        "MIXED": DomainKind.MIXED,
        "PURE_WITH_UNLABELLED": DomainKind.PURE_ANOMALY,
    }
    assert certified.expert_domains == ["MIXED", "PURE", "PURE_WITH_UNLABELLED"]
    assert certified.pure_domains == ["PURE", "PURE_WITH_UNLABELLED"]
    assert certified.mixed_domains == [UNIVERSAL_NORMAL, "MIXED"]
    assert certified.proposer == "test"


def test_dissolved_and_unassigned_event_ids_go_to_universal_normal() -> None:
    certified = _certify()
    assert set(certified.event_to_domain) == {s[0] for s in SIGNALS}
    assert sorted(certified.events_of(UNIVERSAL_NORMAL)) == ["N1", "N2", "S1", "X1"]
    assert certified.domain_of("P2") == "PURE"
    assert certified.domain_of("U2") == "PURE_WITH_UNLABELLED"
    assert certified.domain_of("NEVER_SEEN") == UNIVERSAL_NORMAL


def test_decisions_carry_similarity_and_reasons() -> None:
    decisions = {d.name: d for d in _certify().decisions}
    # "generating core 4711" and "generating core 1234" share every word: cosine 1.
    assert decisions["LOOKALIKE"].similarity == pytest.approx(1.0)
    assert "closest normal: 'generating core 1234'" in decisions["LOOKALIKE"].reason
    # The TLB lines share only "error" with one pool line: similar, but far below 0.9.
    pure_similarity = decisions["PURE"].similarity
    assert pure_similarity is not None and 0.0 < pure_similarity < 0.5
    assert decisions["MIXED"].similarity is None
    assert decisions["NO_ANOMALY"].reason.startswith("rule iii")
    assert decisions["MIXED"].reason.startswith("rule ii")
    assert decisions["PURE"].reason.startswith("rule i:")
    assert "1 unlabelled" in decisions["PURE_WITH_UNLABELLED"].reason


def test_similarity_ceiling_is_a_setting() -> None:
    strict = {d.name: d.outcome for d in _certify(max_pure_similarity=0.05).decisions}
    assert strict["PURE"] is CertificationOutcome.DISSOLVED_NOT_DISTINCT
    assert strict["PURE_WITH_UNLABELLED"] is CertificationOutcome.PURE_ANOMALY
    with pytest.raises(InputError, match="max_pure_similarity"):
        _certify(max_pure_similarity=0.0)


def test_empty_normal_pool_keeps_pure_domains() -> None:
    partition = Partition(domains={"LOOKALIKE": ["S1"]}, proposer="test")
    certified = certify(partition, _sample(), normal_pool_texts=[])
    assert certified.kind_of("LOOKALIKE") is DomainKind.PURE_ANOMALY
    assert certified.decisions[0].similarity == 0.0


def test_universal_normal_is_present_even_when_everything_dissolves() -> None:
    partition = Partition(domains={"NO_ANOMALY": ["N1"]}, proposer="test")
    certified = certify(partition, _sample(), normal_pool_texts=NORMAL_POOL)
    assert certified.domains == {UNIVERSAL_NORMAL: DomainKind.UNIVERSAL}
    assert certified.expert_domains == []
    assert certified.mixed_domains == [UNIVERSAL_NORMAL]


def test_kind_of_an_unknown_domain_is_an_input_error() -> None:
    with pytest.raises(InputError, match="NO_ANOMALY"):
        _certify().kind_of("NO_ANOMALY")


def test_unknown_event_id_in_the_proposal_is_rejected() -> None:
    partition = Partition(domains={"PURE": ["P1", "Z9"]}, proposer="test")
    with pytest.raises(InputError, match="'Z9'"):
        certify(partition, _sample(), normal_pool_texts=NORMAL_POOL)


def test_summary_lists_every_decision() -> None:
    summary = _certify().summary()
    assert summary.splitlines()[0].startswith("certified partition (proposer test): 2 pure")
    for name in PROPOSAL:
        assert name in summary
    assert "dissolved_not_distinct" in summary


def test_json_round_trip_and_malformed_bundles() -> None:
    certified = _certify()
    restored = CertifiedPartition.from_json(json.loads(json.dumps(certified.to_json())))
    assert restored == certified
    data = certified.to_json()
    with pytest.raises(BundleError, match="format"):
        CertifiedPartition.from_json({**data, "format": "x"})
    with pytest.raises(BundleError, match="malformed"):
        CertifiedPartition.from_json({**data, "domains": {"PURE": "sideways"}})
    without_un = {**data, "domains": {"PURE": "pure_anomaly"}, "event_to_domain": {}}
    with pytest.raises(BundleError, match=UNIVERSAL_NORMAL):
        CertifiedPartition.from_json(without_un)
    dangling = {**data, "event_to_domain": {"P1": "GONE"}}
    with pytest.raises(BundleError, match="undeclared"):
        CertifiedPartition.from_json(dangling)


def test_universal_normal_texts_takes_pu_normal_lines_of_universal_event_ids() -> None:
    event_ids = ["A", "B", "A", "B", "A"]
    texts = ["a0", "b1", "a0", "b3", "a4"]
    labels: list[bool | None] = [False, True, False, False, True]
    sample = sample_kshot(event_ids, texts, labels, {}, 10)
    partition = Partition(domains={"BEES": ["B"]}, proposer="test").normalised(sample.events)
    # PU-normal pool: 0, 2, 3 (1 and 4 are sampled anomalies); only A is UNIVERSAL_NORMAL.
    assert universal_normal_texts(partition, sample, event_ids, texts) == ["a0"]
    with pytest.raises(InputError):
        universal_normal_texts(partition, sample, event_ids[:2], texts[:2])


# -- real data ---------------------------------------------------------------------------------


def _bgl_2k(path: Path) -> tuple[list[str], list[str], list[bool | None], dict[str, str]]:
    """Parse Loghub's BGL 2k sample with Drain3: label token off, content = tokens[9:]."""
    if not path.is_file():
        pytest.skip(f"real BGL sample not found at {path}")
    config = TemplateMinerConfig()
    config.drain_sim_th = 0.5  # paper III-A
    config.drain_depth = 4  # paper III-A
    config.profiling_enabled = False
    miner = TemplateMiner(config=config)
    event_ids: list[str] = []
    texts: list[str] = []
    labels: list[bool | None] = []
    for line in path.read_text("utf-8", errors="replace").splitlines():
        tokens = line.split()
        if len(tokens) < 10:
            continue
        content = " ".join(tokens[9:])
        event_ids.append(f"E{miner.add_log_message(content)['cluster_id']}")
        texts.append(content)
        labels.append(tokens[0] != "-")
    templates = {f"E{c.cluster_id}": c.get_template() for c in miner.drain.clusters}
    return event_ids, texts, labels, templates


def _certify_bgl(path: Path) -> tuple[KShotSample, Partition, CertifiedPartition]:
    event_ids, texts, labels, templates = _bgl_2k(path)
    offline = int(len(event_ids) * 0.85)  # paper III: first 85% is the offline region
    sample = sample_kshot(event_ids[:offline], texts[:offline], labels[:offline], templates, 100)
    partition = TfidfProposer().propose(sample)
    pool = universal_normal_texts(partition, sample, event_ids[:offline], texts[:offline])
    return sample, partition, certify(partition, sample, normal_pool_texts=pool)


def test_tfidf_proposal_certified_on_real_bgl_lines(bgl_2k: Path) -> None:
    sample, partition, certified = _certify_bgl(bgl_2k)
    assert UNIVERSAL_NORMAL in certified.domains
    assert certified.kind_of(UNIVERSAL_NORMAL) is DomainKind.UNIVERSAL
    assert len(certified.expert_domains) >= 1
    # Every EventID is assigned exactly once, in the proposal and after certification.
    listed = partition.event_ids
    assert len(listed) == len(set(listed)) == len(sample.events)
    assert set(certified.event_to_domain) == set(sample.events)
    assert all(DOMAIN_NAME_PATTERN.match(name) for name in partition.domains)
    # Every anomaly-signal EventID is in some certified domain; pure domains hold no normals.
    for domain in certified.pure_domains:
        assert not any(sample.events[e].has_normal for e in certified.events_of(domain))
    for domain in certified.expert_domains:
        assert any(sample.events[e].has_anomaly for e in certified.events_of(domain))
    # Deterministic across runs.
    _, partition_again, certified_again = _certify_bgl(bgl_2k)
    assert partition_again.to_json() == partition.to_json()
    assert certified_again.to_json() == certified.to_json()
