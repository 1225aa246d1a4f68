"""The LLM proposer (III-B1): prompts, redaction, validation and repair, cache and audit.

Model answers come from ``tests/data/llm/bgl_2k_responses.json``: answers written for the
real BGL_2k grouping prompt (a sound one and the faults the 1.5B local model makes), replayed
in order by :class:`ReplayProvider`. The
integration test against the real local model is in ``test_llm_integration.py``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from fame.certification import CertifiedPartition, DomainKind
from fame.cli import main
from fame.errors import ConfigError, InputError
from fame.llm import RecordingClient
from fame.llm.model_files import LOCAL_MODEL_SIZE, verify_local_model
from fame.llm.providers import (
    DryRunProvider,
    LLMError,
    LLMResponse,
    LocalProvider,
    Message,
    get_provider,
)
from fame.llm.redaction import RULE_NAMES, Redactor
from fame.partition import UNIVERSAL_NORMAL, Partition, get_proposer, read_partition_file
from fame.partition.llm import (
    LLMProposer,
    extract_json,
    normalise_name,
    parse_proposal,
    select_events,
)
from fame.sampling import KShotSample

RESPONSES = json.loads(
    (Path(__file__).parent / "data" / "llm" / "bgl_2k_responses.json").read_text("utf-8")
)["responses"]


class ReplayProvider:
    """Answers with recorded texts, in order, and keeps the messages it was sent."""

    def __init__(self, answers: Sequence[str], *, name: str = "local", remote: bool = False):
        self.answers = list(answers)
        self.name = name
        self.model = "replay.gguf"
        self.remote = remote
        self.sent: list[list[Message]] = []

    def complete(
        self,
        messages: Sequence[Message],
        *,
        schema: Mapping[str, Any] | None = None,
        max_tokens: int = 2048,
    ) -> LLMResponse:
        self.sent.append(list(messages))
        if not self.answers:
            raise LLMError("no recorded answer left")
        text = self.answers.pop(0)
        return LLMResponse(text=text, provider=self.name, model=self.model, seconds=0.01)


def _proposer(provider: ReplayProvider, cache: Path | None = None, **options: Any) -> LLMProposer:
    return LLMProposer(RecordingClient(provider, cache), **options)


# -- redaction -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "kept", "removed"),
    [
        (
            "KERNEL FATAL R02-M1-N0-C:J12-U11 data TLB error interrupt",
            "data TLB error interrupt",
            "R02-M1-N0-C:J12-U11",
        ),
        ("ciod: socket to 172.16.96.116:33370 closed", "ciod: socket to", "172.16.96.116"),
        ("Lustre mount FAILED : bglio11 : point /p/gb1", "Lustre mount FAILED", "bglio11"),
        ("login failed for user=alice from a.b.example.org", "login failed", "alice"),
        ("chdir(/home/alice/run) failed", "failed", "/home/alice"),
        ("instruction address: 0x00004ed8 count 123456", "instruction address", "0x00004ed8"),
        ("link 00:1a:2b:3c:4d:5e down, core.2275", "down", "00:1a:2b:3c:4d:5e"),
    ],
)
def test_redaction_removes_identifiers_and_keeps_the_message(
    line: str, kept: str, removed: str
) -> None:
    redacted = Redactor()(line)
    assert kept in redacted
    assert removed not in redacted


def test_redaction_rules_are_a_setting() -> None:
    line = "socket to 172.16.96.116 on R02-M1-N0"
    assert Redactor(["none"])(line) == line
    only_ip = Redactor(["ip"])(line)
    assert "<IP>" in only_ip and "R02-M1-N0" in only_ip
    extra = Redactor.from_settings("none", r"R\d\d-M\d")(line)
    assert "<REDACTED>" in extra and "172.16.96.116" in extra
    with pytest.raises(ConfigError, match="unknown redaction rule"):
        Redactor(["ip", "postcode"])
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        Redactor(extra=["(unclosed"])
    assert set(RULE_NAMES) >= {"ip", "host", "node", "user", "path", "hex", "number"}


# -- prompt ----------------------------------------------------------------------------------


def test_prompt_lists_every_anomalous_event_id_by_its_exact_id(bgl_sample: KShotSample) -> None:
    proposer = _proposer(ReplayProvider([]), chunk_events=100)
    prompts, hidden = proposer.plan(bgl_sample)
    assert len(prompts) == 1
    text = prompts[0][-1].content
    shown = re.findall(r"^(E\d+) \|", text, re.MULTILINE)
    anomalous = [e for e, s in bgl_sample.events.items() if s.has_anomaly]
    assert set(anomalous) <= set(shown)
    assert len(shown) == len(set(shown))
    assert set(shown) | set(hidden) == set(bgl_sample.events)
    assert "UNIVERSAL_NORMAL" in text and "UPPER_SNAKE_CASE" in text
    # Normal-only EventIDs shown are those sharing words with an anomalous one, capped.
    normal_shown = [e for e in shown if not bgl_sample.events[e].has_anomaly]
    assert 0 < len(normal_shown) <= proposer.max_normal_events


def test_prompt_for_a_remote_provider_is_redacted(bgl_sample: KShotSample) -> None:
    local_prompts = _proposer(ReplayProvider([])).plan(bgl_sample)[0]
    local = "".join(p[-1].content for p in local_prompts)
    remote = _proposer(ReplayProvider([], name="openai", remote=True)).plan(bgl_sample)[0]
    remote_text = "".join(p[-1].content for p in remote)
    ips = re.findall(r"\b(?:\d{1,3}\.){3}\d{1,3}\b", local)
    assert ips, "the BGL_2k examples carry IP addresses"
    assert not re.findall(r"\b(?:\d{1,3}\.){3}\d{1,3}\b", remote_text)
    assert "<IP>" in remote_text


@pytest.mark.parametrize("limits", [{"prompt_tokens": 300}, {"chunk_events": 5}])
def test_large_listings_are_split_and_every_event_is_shown_once(
    bgl_sample: KShotSample, limits: dict[str, int]
) -> None:
    proposer = _proposer(ReplayProvider([]), **{"chunk_events": 100, **limits})
    prompts, _ = proposer.plan(bgl_sample)
    assert len(prompts) > 1
    shown = [e for p in prompts for e in re.findall(r"^(E\d+) \|", p[-1].content, re.MULTILINE)]
    assert len(shown) == len(set(shown))
    groups, _ = select_events(bgl_sample, related_similarity=0.25, max_normal_events=60)
    assert sorted(shown) == sorted(e for g in groups for e in g)


# -- validation and repair -------------------------------------------------------------------


def _shown(sample: KShotSample) -> list[str]:
    groups, _ = select_events(sample, related_similarity=0.25, max_normal_events=60)
    return [e for g in groups for e in g]


def _templates(sample: KShotSample) -> dict[str, str]:
    return {e: s.template for e, s in sample.events.items()}


def test_a_good_answer_parses_without_problems(bgl_sample: KShotSample) -> None:
    parsed = parse_proposal(RESPONSES["good"], _shown(bgl_sample), _templates(bgl_sample))
    assert parsed.parsed and not parsed.problems
    assert UNIVERSAL_NORMAL in parsed.domains
    assigned = [e for ids in parsed.domains.values() for e in ids]
    assert sorted(assigned) == sorted(_shown(bgl_sample))


def test_cosmetic_faults_are_repaired_silently(bgl_sample: KShotSample) -> None:
    parsed = parse_proposal(
        RESPONSES["fenced_lowercase"], _shown(bgl_sample), _templates(bgl_sample)
    )
    assert not parsed.problems
    assert "DATA_TLB_ERROR" in parsed.domains and "LUSTRE_MOUNT_FAILURE" in parsed.domains
    assert any("code fence" in r for r in parsed.repairs)
    assert any("UNIVERSAL_NORMAL" in r for r in parsed.repairs)
    chatter = parse_proposal(RESPONSES["chatter"], _shown(bgl_sample), _templates(bgl_sample))
    assert not chatter.problems


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ("unknown_ids", "not EventIDs shown"),
        ("duplicate", "E85 is in both"),
        ("truncated", "not valid JSON"),
        ("bad_name", "not UPPER_SNAKE_CASE"),
    ],
)
def test_real_faults_are_reported_as_problems(
    bgl_sample: KShotSample, answer: str, problem: str
) -> None:
    parsed = parse_proposal(RESPONSES[answer], _shown(bgl_sample), _templates(bgl_sample))
    assert any(problem in p for p in parsed.problems), parsed.problems


def test_a_template_string_is_accepted_for_its_event_id(bgl_sample: KShotSample) -> None:
    shown = _shown(bgl_sample)
    event_id = next(e for e in shown if bgl_sample.events[e].has_anomaly)
    template = bgl_sample.events[event_id].template
    answer = json.dumps({"domains": [{"name": "X_FAILURE", "event_ids": [template]}]})
    parsed = parse_proposal(answer, shown, _templates(bgl_sample))
    assert parsed.domains["X_FAILURE"] == [event_id]


def test_names_are_normalised_and_json_is_found_in_chatter() -> None:
    assert normalise_name("ddr memory-errors") == "DDR_MEMORY_ERRORS"
    assert normalise_name("  2 net fail ") == "NET_FAIL"
    assert extract_json('Sure! {"domains": []} done') == {"domains": []}
    with pytest.raises(ValueError, match="no JSON object"):
        extract_json("I cannot help with that")


def test_a_bad_answer_is_retried_with_its_problems_shown(bgl_sample: KShotSample) -> None:
    provider = ReplayProvider([RESPONSES["unknown_ids"], RESPONSES["good"]])
    proposer = _proposer(provider, chunk_events=100)
    partition = proposer.propose(bgl_sample)
    assert len(provider.sent) == 2
    retry = provider.sent[1]
    assert retry[-2].role == "assistant" and "not EventIDs shown" in retry[-1].content
    good = json.loads(RESPONSES["good"])
    for domain in good["domains"]:
        assert partition.domains[domain["name"]][: len(domain["event_ids"])] == domain[
            "event_ids"
        ] or set(domain["event_ids"]) <= set(partition.domains[domain["name"]])
    # Every EventID of the sample is in exactly one domain; unshown ones in UNIVERSAL_NORMAL.
    assigned = [e for ids in partition.domains.values() for e in ids]
    assert sorted(assigned) == sorted(bgl_sample.events)
    calls = proposer.client.calls
    assert [c["purpose"] for c in calls] == ["grouping 1/1", "grouping 1/1 retry 1"]
    assert calls[0]["problems"] and not calls[1]["problems"]


def test_unusable_output_fails_with_a_clear_message_after_bounded_retries(
    bgl_sample: KShotSample,
) -> None:
    provider = ReplayProvider([RESPONSES["truncated"]] * 3)
    with pytest.raises(LLMError, match=r"no usable JSON in 3 attempts.*--proposer file"):
        _proposer(provider, retries=2, chunk_events=100).propose(bgl_sample)
    assert len(provider.sent) == 3


def test_persisting_unknown_ids_are_dropped_after_the_retries(bgl_sample: KShotSample) -> None:
    provider = ReplayProvider([RESPONSES["unknown_ids"]] * 2)
    partition = _proposer(provider, retries=1, chunk_events=100).propose(bgl_sample)
    assert partition.domains["DATA_TLB_ERROR"] == ["E10"]
    assert "E999" not in partition.event_ids
    assert any("unresolved" in note for note in partition.details["repairs"])


def test_the_llm_partition_is_certified_unchanged(
    bgl_sample: KShotSample, certify_bgl_2k: Callable[[Partition], CertifiedPartition]
) -> None:
    proposer = _proposer(ReplayProvider([RESPONSES["good"]]), chunk_events=100)
    partition = proposer.propose(bgl_sample)
    certified = certify_bgl_2k(partition)
    assert certified.domains[UNIVERSAL_NORMAL] == DomainKind.UNIVERSAL
    assert certified.domains["DATA_TLB_ERROR"] == DomainKind.PURE_ANOMALY


def _group_anomalous(prompts: list[list[Message]], name: Callable[[int], str]) -> list[str]:
    """One answer per grouping prompt: its anomaly-bearing EventIDs in one named domain."""
    answers = []
    for number, messages in enumerate(prompts):
        ids = re.findall(r"^(E\d+) \| lines=\d+ \| labels=(\S+)", messages[-1].content, re.M)
        anomalous = [e for e, label in ids if "ANOMALY" in label]
        answers.append(json.dumps({"domains": [{"name": name(number), "event_ids": anomalous}]}))
    return answers


def test_chunks_are_merged_by_the_model(bgl_sample: KShotSample) -> None:
    proposer = _proposer(ReplayProvider([]), prompt_tokens=300)
    prompts, _ = proposer.plan(bgl_sample)
    answers = _group_anomalous(prompts, lambda number: f"GROUP_{number}")
    merge = json.dumps(
        {
            "domains": [
                {"name": "ALL_FAILURES", "members": ["GROUP_0", "GROUP_1"]},
                *(
                    {"name": f"GROUP_{i}", "members": [f"GROUP_{i}"]}
                    for i in range(2, len(prompts))
                ),
            ]
        }
    )
    provider = ReplayProvider([*answers, merge])
    partition = _proposer(provider, prompt_tokens=300).propose(bgl_sample)
    assert "ALL_FAILURES" in partition.domains
    assert "GROUP_0" not in partition.domains and "GROUP_1" not in partition.domains
    assert "merge" in provider.sent[-1][-1].content.lower()


def test_an_invalid_merge_is_retried_then_falls_back_to_equal_names(
    bgl_sample: KShotSample,
) -> None:
    prompts, _ = _proposer(ReplayProvider([]), prompt_tokens=300).plan(bgl_sample)
    answers = _group_anomalous(prompts, lambda number: f"GROUP_{number % 2}")
    # GROUP_0 twice, GROUP_1 in no list: the answer breaks the merge rule.
    bad = json.dumps(
        {
            "domains": [
                {"name": "A", "members": ["GROUP_0"]},
                {"name": "B", "members": ["GROUP_0"]},
            ]
        }
    )
    provider = ReplayProvider([*answers, bad, bad, bad])
    partition = _proposer(provider, prompt_tokens=300, retries=2).propose(bgl_sample)
    assert "A" not in partition.domains and "B" not in partition.domains
    assert {"GROUP_0", "GROUP_1"} <= set(partition.domains)  # equal names merged
    retry = provider.sent[-1][-1].content
    assert "GROUP_0 is in the members of both A and B" in retry
    assert "in no members list: GROUP_1" in retry


# -- cache and audit -------------------------------------------------------------------------


def test_a_rerun_reuses_the_cached_answer(bgl_sample: KShotSample, tmp_path: Path) -> None:
    first = ReplayProvider([RESPONSES["good"]])
    one = _proposer(first, tmp_path, chunk_events=100).propose(bgl_sample)
    second = ReplayProvider([])  # would fail if asked
    proposer = _proposer(second, tmp_path, chunk_events=100)
    two = proposer.propose(bgl_sample)
    assert two.domains == one.domains
    assert second.sent == []
    assert proposer.client.calls[0]["cached"] is True
    assert proposer.client.model_calls == 0


def test_audit_records_prompt_answer_model_provider_and_time(bgl_sample: KShotSample) -> None:
    proposer = _proposer(ReplayProvider([RESPONSES["good"]]), chunk_events=100)
    proposer.propose(bgl_sample)
    (call,) = proposer.client.calls
    assert call["provider"] == "local" and call["model"] == "replay.gguf"
    assert call["response"] == RESPONSES["good"]
    assert call["messages"][-1]["content"].startswith("Below are log message templates")
    assert re.match(r"\d{4}-\d\d-\d\dT", call["time"])


# -- providers, model file, CLI -----------------------------------------------------------


def test_provider_errors_name_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        get_provider("openai", model="gpt-x")
    with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY"):
        get_provider("anthropic", model="claude-x")
    with pytest.raises(ConfigError, match="unknown LLM provider"):
        get_provider("gemini", model="x")
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"<html>not a model</html>")
    with pytest.raises(ConfigError, match="not a GGUF model file"):
        LocalProvider(str(not_gguf))
    with pytest.raises(ConfigError, match="does not exist"):
        LocalProvider(str(tmp_path / "missing.gguf"))


def test_an_unreachable_server_is_an_llm_error() -> None:
    provider = get_provider("openai", model="m", base_url="http://127.0.0.1:9/v1", timeout=2)
    assert provider.remote is False
    with pytest.raises(LLMError, match="failed"):
        provider.complete([Message("user", "hi")])


def test_a_local_model_file_of_the_wrong_size_is_refused(tmp_path: Path) -> None:
    short = tmp_path / "model.gguf"
    short.write_bytes(b"GGUF" + b"\0" * 100)
    with pytest.raises(InputError, match=f"expected {LOCAL_MODEL_SIZE:,}"):
        verify_local_model(short)


def test_dry_run_prints_the_redacted_prompt_and_sends_nothing(
    bgl_2k: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "partition.json"
    code = main(
        [
            "partition",
            str(bgl_2k),
            "--proposer",
            "llm",
            "--provider",
            "openai",
            "--model",
            "gpt-x",
            "--llm-base-url",
            "https://llm.example.com/v1",
            "--out",
            str(out),
            "--dry-run",
            "-q",
        ]
    )
    assert code == 0
    assert not out.exists()
    document = json.loads(capsys.readouterr().out)
    assert document["redacted"] is True
    text = document["calls"][0][1]["content"]
    assert "E10 |" in text and not re.search(r"\b(?:\d{1,3}\.){3}\d{1,3}\b", text)
    assert DryRunProvider("openai", "m", "http://127.0.0.1:8080/v1").remote is False


def test_partition_file_carries_the_audit_into_setup(
    bgl_sample: KShotSample, tmp_path: Path
) -> None:
    from fame.partition import write_partition_file

    proposer = _proposer(ReplayProvider([RESPONSES["good"]]), chunk_events=100)
    partition = proposer.propose(bgl_sample)
    path = write_partition_file(
        partition, tmp_path / "p.json", bgl_sample, audit=proposer.client.calls
    )
    document = json.loads(path.read_text("utf-8"))
    first = document["domains"][0]
    assert {"name", "event_ids"} <= set(first)
    assert "template" in first["event_ids"][0]
    restored = read_partition_file(path)
    assert restored.details["llm_audit"][0]["response"] == RESPONSES["good"]
    proposed = get_proposer("file", path=str(path)).propose(bgl_sample)
    assert proposed.domains == partition.domains
