"""Partition, proposer registry, TF-IDF proposer and partition files (paper III-B1)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from scipy.sparse import csr_matrix

from fame.certification import CertifiedPartition
from fame.errors import BundleError, ConfigError, InputError
from fame.partition import (
    DOMAIN_NAME_PATTERN,
    PROPOSER_NAMES,
    UNIVERSAL_NORMAL,
    FileProposer,
    Partition,
    Proposer,
    TfidfProposer,
    get_proposer,
    log_tokens,
    read_partition_file,
    write_partition_file,
)
from fame.partition.single import SingleDomainProposer
from fame.partition.tfidf import _name_groups
from fame.sampling import KShotSample, sample_kshot

TEMPLATES = {
    "E1": "data TLB error interrupt",
    "E2": "instruction TLB error interrupt",
    "E3": "Lustre mount FAILED : <*> : point <*>",
    "E4": "ciod: LOGIN chdir(<*>) failed: No such file or directory",
    "E5": "generating core.<*>",
    "E6": "TLB error interrupt corrected",
    "E7": "Lustre mount ok : <*>",
}
ROWS: list[tuple[str, str, bool]] = [
    ("E1", "data TLB error interrupt", True),
    ("E1", "data TLB error interrupt", True),
    ("E2", "instruction TLB error interrupt", True),
    ("E3", "Lustre mount FAILED : bglio11 : point /p/gb1", True),
    ("E4", "ciod: LOGIN chdir(/home/user) failed: No such file or directory", False),
    ("E5", "generating core.1234", False),
    ("E6", "TLB error interrupt corrected", False),
    ("E7", "Lustre mount ok : bglio12", False),
    ("E7", "Lustre mount ok : bglio12", True),
]


def _sample(rows: list[tuple[str, str, bool]] = ROWS) -> KShotSample:
    return sample_kshot(
        [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], TEMPLATES, 10
    )


# -- Partition ---------------------------------------------------------------------------------


def test_partition_always_has_universal_normal() -> None:
    partition = Partition(domains={"DISK": ["E1"]}, proposer="test")
    assert partition.domains[UNIVERSAL_NORMAL] == []
    assert partition.domain_of("E1") == "DISK"
    assert partition.domain_of("E9") == UNIVERSAL_NORMAL


def test_normalised_puts_unassigned_event_ids_into_universal_normal() -> None:
    partition = Partition(domains={"DISK": ["E2"]}, proposer="test").normalised(["E1", "E2", "E3"])
    assert partition.domains == {"DISK": ["E2"], UNIVERSAL_NORMAL: ["E1", "E3"]}
    assert partition.proposer == "test"


def test_normalised_rejects_an_event_id_assigned_twice() -> None:
    partition = Partition(domains={"DISK": ["E1"], "NET": ["E1"]}, proposer="test")
    with pytest.raises(InputError, match=r"'E1'.*'DISK'.*'NET'"):
        partition.normalised(["E1"])


def test_normalised_rejects_unknown_event_ids_by_default() -> None:
    partition = Partition(domains={"DISK": ["E1", "E9"]}, proposer="test")
    with pytest.raises(InputError, match="'E9'"):
        partition.normalised(["E1"])


def test_normalised_can_drop_unknown_event_ids(caplog: pytest.LogCaptureFixture) -> None:
    partition = Partition(domains={"DISK": ["E1", "E9"]}, proposer="test")
    with caplog.at_level(logging.WARNING):
        result = partition.normalised(["E1"], on_unknown="drop")
    assert result.domains == {"DISK": ["E1"], UNIVERSAL_NORMAL: []}
    assert "E9" in caplog.text


@pytest.mark.parametrize("name", ["disk", "Disk_Errors", "1DISK", "DISK-ERRORS", ""])
def test_normalised_rejects_names_that_are_not_upper_snake_case(name: str) -> None:
    with pytest.raises(InputError, match="UPPER_SNAKE_CASE"):
        Partition(domains={name: ["E1"]}, proposer="test").normalised(["E1"])


def test_partition_json_round_trip() -> None:
    partition = Partition(domains={"DISK": ["E1"]}, proposer="tfidf", details={"x": 1})
    restored = Partition.from_json(json.loads(json.dumps(partition.to_json())))
    assert restored == partition
    assert restored.domain_of("E1") == "DISK"
    with pytest.raises(BundleError):
        Partition.from_json({"domains": ["E1"]})


# -- registry ----------------------------------------------------------------------------------


def test_registry_builds_the_known_proposers(tmp_path: Path) -> None:
    assert PROPOSER_NAMES == ("tfidf", "file", "llm", "single")
    tfidf = get_proposer("tfidf", similarity_threshold=0.7)
    assert isinstance(tfidf, TfidfProposer) and tfidf.similarity_threshold == 0.7
    file_proposer = get_proposer("file", path=tmp_path / "p.json")
    assert isinstance(file_proposer, FileProposer)
    assert isinstance(tfidf, Proposer) and isinstance(file_proposer, Proposer)


def test_single_proposer_keeps_every_event_in_universal_normal(
    bgl_sample: KShotSample,
    certify_bgl_2k: Callable[[Partition], CertifiedPartition],
) -> None:
    """The single-global-model ablation: no failure domain survives, one expert decides."""
    proposer = get_proposer("single")
    assert isinstance(proposer, SingleDomainProposer) and isinstance(proposer, Proposer)
    partition = proposer.propose(bgl_sample)
    assert set(partition.domains) == {UNIVERSAL_NORMAL}
    assert set(partition.domains[UNIVERSAL_NORMAL]) == set(bgl_sample.events)
    certified = certify_bgl_2k(partition)
    assert certified.expert_domains == []
    assert all(certified.domain_of(e) == UNIVERSAL_NORMAL for e in bgl_sample.events)


def test_registry_llm_proposer_needs_a_model_client() -> None:
    with pytest.raises(ConfigError, match=r"invalid options for the llm proposer.*client"):
        get_proposer("llm")


def test_registry_rejects_unknown_names_and_options() -> None:
    with pytest.raises(ConfigError, match="tfidf, file, llm"):
        get_proposer("kmeans")
    with pytest.raises(ConfigError, match="invalid options"):
        get_proposer("tfidf", colour="blue")
    with pytest.raises(ConfigError, match="similarity_threshold"):
        get_proposer("tfidf", similarity_threshold=1.5)


# -- TF-IDF proposer ---------------------------------------------------------------------------


def test_log_tokens_drop_masks_numbers_identifiers_hex_and_function_words() -> None:
    text = "Error at 0x1f <*> R02-M1-N0 status=beeaabff to <NUM> node core.1234"
    assert log_tokens(text) == ["error", "status", "node", "core"]


def test_tfidf_groups_by_similarity_and_attaches_normal_only_event_ids() -> None:
    partition = TfidfProposer().propose(_sample())
    assert partition.domains == {
        "TLB_ERROR_INTERRUPT": ["E1", "E2", "E6"],
        "LUSTRE_MOUNT_POINT": ["E3", "E7"],
        UNIVERSAL_NORMAL: ["E4", "E5"],
    }
    assert partition.proposer == "tfidf"
    groups = partition.details["groups"]
    assert groups["TLB_ERROR_INTERRUPT"]["anomaly_event_ids"] == ["E1", "E2"]
    assert [a["event_id"] for a in groups["TLB_ERROR_INTERRUPT"]["attached"]] == ["E6"]


def test_tfidf_attach_threshold_above_one_keeps_normal_only_event_ids_apart() -> None:
    partition = TfidfProposer(attach_threshold=1.01).propose(_sample())
    assert partition.domain_of("E6") == UNIVERSAL_NORMAL
    assert partition.domains["TLB_ERROR_INTERRUPT"] == ["E1", "E2"]


def test_tfidf_high_threshold_keeps_every_anomaly_event_id_apart() -> None:
    partition = TfidfProposer(similarity_threshold=0.99).propose(_sample())
    experts = {n: ids for n, ids in partition.domains.items() if n != UNIVERSAL_NORMAL}
    assert sorted(ids[0] for ids in experts.values()) == ["E1", "E2", "E3", "E7"]
    assert all(len(ids) == 1 for ids in experts.values())
    assert all(DOMAIN_NAME_PATTERN.match(name) for name in partition.domains)


def test_tfidf_is_deterministic_and_independent_of_input_order() -> None:
    first = TfidfProposer().propose(_sample())
    second = TfidfProposer().propose(_sample(list(reversed(ROWS))))
    assert first.to_json() == TfidfProposer().propose(_sample()).to_json()
    assert {n: sorted(ids) for n, ids in first.domains.items()} == {
        n: sorted(ids) for n, ids in second.domains.items()
    }


def test_group_names_are_unique_with_numeric_suffixes() -> None:
    matrix = csr_matrix([[1.0, 0.5], [1.0, 0.5], [0.0, 0.0]])
    names = _name_groups([[0], [1], [2]], matrix, ["disk", "fault"], ["disk fault"] * 3)
    assert names == ["DISK_FAULT", "DISK_FAULT_2", "DOMAIN"]


# -- partition files ---------------------------------------------------------------------------


def test_partition_file_round_trip_with_annotations(tmp_path: Path) -> None:
    sample = _sample()
    partition = TfidfProposer().propose(sample)
    path = write_partition_file(partition, tmp_path / "partition.json", sample)
    document = json.loads(path.read_text("utf-8"))
    assert document["domains"][-1]["name"] == UNIVERSAL_NORMAL
    by_name = {d["name"]: d["event_ids"] for d in document["domains"]}
    entry = by_name["TLB_ERROR_INTERRUPT"][0]
    assert entry["event_id"] == "E1" and entry["signals"] == "anomaly"
    assert entry["template"] == "data TLB error interrupt"
    restored = FileProposer(path).propose(sample)
    assert restored.domains == partition.domains
    assert restored.proposer == "file"
    assert restored.details["source_proposer"] == "tfidf"


def test_partition_file_accepts_plain_strings_and_defaults_to_universal_normal(
    tmp_path: Path,
) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"domains": {"TLB": ["E1", {"event_id": "E2", "note": "x"}]}}))
    partition = FileProposer(path).propose(_sample())
    assert partition.domains["TLB"] == ["E1", "E2"]
    assert sorted(partition.domains[UNIVERSAL_NORMAL]) == ["E3", "E4", "E5", "E6", "E7"]


def test_partition_file_errors_say_where_and_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        read_partition_file(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"domains": {"TLB": ["E1" "E2"]}}')
    with pytest.raises(InputError, match="line 1 column"):
        read_partition_file(bad)
    bad.write_text('{"groups": {}}')
    with pytest.raises(InputError, match="'domains'"):
        read_partition_file(bad)
    bad.write_text('{"domains": {"TLB": ["E1", 3]}}')
    with pytest.raises(InputError, match="entry 1 of domain 'TLB'"):
        read_partition_file(bad)
    bad.write_text('{"domains": {"TLB": ["E1", "E99"]}}')
    with pytest.raises(InputError, match="'E99'"):
        FileProposer(bad).propose(_sample())


def test_unknown_policy_is_checked() -> None:
    with pytest.raises(ConfigError, match="on_unknown"):
        FileProposer("p.json", on_unknown="ignore")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="on_unknown"):
        Partition(domains={}, proposer="t").normalised([], on_unknown="skip")  # type: ignore[arg-type]


def test_partition_copies_its_domain_lists() -> None:
    domains = {"DISK": ["E1"]}
    partition = Partition(domains=domains, proposer="test")
    domains["DISK"].append("E2")
    assert partition.domains == {"DISK": ["E1"], UNIVERSAL_NORMAL: []}
