"""Per-template triage: the verdict cache, its persistence, rate limit and budget, and a
detector side that never waits for a slow or failing model.

The model is played by :class:`ScriptedModel`, which answers with recorded verdict texts
(or fails, or is slow); the product code around it is the real one.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from fame.errors import InputError
from fame.llm import RecordingClient
from fame.llm.providers import LLMError, LLMResponse, Message
from fame.triage import (
    RateLimit,
    Triage,
    TriageContext,
    TriageState,
    build_prompt,
    label_from_confirmed,
    parse_verdict,
    set_operator_verdict,
)

# Contents of real BGL_2k lines (two kinds of message, the first twice with other values).
TREE = (
    "Error receiving packet on tree network, expecting type 57 instead of type 3 "
    "(softheader=0064588e 8aff0003 00000002 00000000) PSR0=00001f01 PSR1=00000000 "
    "PRXF=00000002 PIXF=00000007"
)
TREE_2 = (
    "Error receiving packet on tree network, expecting type 57 instead of type 3 "
    "(softheader=00589370 90990003 00000002 00000000) PSR0=00001f01 PSR1=00000000 "
    "PRXF=00000002 PIXF=00000007"
)
LINK = (
    "ciod: Error loading /bgl/apps/followup/SPASM/spasm.254: invalid or missing program "
    "image, Permission denied"
)
ANOMALOUS = '{"verdict": "anomalous", "domain": "tree network", "reason": "packet errors"}'
NORMAL = '{"verdict": "normal", "domain": "", "reason": "routine"}'
CONTEXT = TriageContext(
    domains={"DATA_TLB_ERROR": ["KERNEL FATAL data TLB error interrupt"]},
    normal_examples=["KERNEL INFO instruction cache parity error corrected"],
)


class ScriptedModel:
    """Answers with the given texts in order; can be slow or fail."""

    name = "local"
    model = "scripted.gguf"
    remote = False

    def __init__(self, answers: Sequence[str], *, delay: float = 0.0, fail: bool = False):
        self.answers = list(answers)
        self.delay = delay
        self.fail = fail
        self.asked: list[list[Message]] = []

    def complete(
        self,
        messages: Sequence[Message],
        *,
        schema: Mapping[str, Any] | None = None,
        max_tokens: int = 2048,
    ) -> LLMResponse:
        self.asked.append(list(messages))
        time.sleep(self.delay)
        if self.fail or not self.answers:
            raise LLMError("the model is down")
        return LLMResponse(self.answers.pop(0), "local", self.model, seconds=self.delay)


def _triage(model: ScriptedModel, state: TriageState, **options: Any) -> Triage:
    options.setdefault("background", False)
    return Triage(state, RecordingClient(model, None), CONTEXT, **options)


def test_one_question_per_new_template_and_the_verdict_serves_later_lines(
    tmp_path: Path,
) -> None:
    model = ScriptedModel([ANOMALOUS, NORMAL])
    triage = _triage(model, TriageState(tmp_path / "state.json"))
    assert triage.verdict_for(TREE, "KERNEL FATAL " + TREE) is None  # first line: no verdict
    assert triage.verdict_for(TREE_2, "KERNEL FATAL " + TREE_2) is None  # same template
    assert triage.verdict_for(LINK, "HARDWARE WARNING " + LINK) is None
    triage.process_pending()
    assert len(model.asked) == 2
    tree = triage.verdict_for(TREE, "x")
    link = triage.verdict_for(LINK, "x")
    assert tree is not None and tree.anomalous and tree.domain == "TREE_NETWORK"
    assert tree.source == "llm" and tree.model == "scripted.gguf" and tree.time
    assert link is not None and not link.anomalous and link.domain is None
    prompt = model.asked[0][-1].content
    assert "DATA_TLB_ERROR" in prompt and "expecting type" in prompt


def test_verdicts_and_template_ids_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    first = _triage(ScriptedModel([ANOMALOUS]), TriageState(path))
    first.verdict_for(TREE, TREE)
    first.process_pending()
    first.close()
    again_model = ScriptedModel([])  # would fail if asked
    again = _triage(again_model, TriageState(path))
    verdict = again.verdict_for(TREE_2, TREE_2)
    assert verdict is not None and verdict.anomalous
    again.process_pending()
    assert again_model.asked == []


def test_rate_limit_and_budget() -> None:
    now = [0.0]
    limit = RateLimit(per_minute=2, budget=3, clock=lambda: now[0])
    limit.record()
    limit.record()
    assert limit.wait_time() == pytest.approx(60.0)
    now[0] = 61.0
    assert limit.wait_time() == 0.0
    limit.record()
    assert limit.exhausted


def test_the_budget_stops_questions_and_lines_keep_flowing(tmp_path: Path) -> None:
    model = ScriptedModel([ANOMALOUS, NORMAL])
    triage = _triage(model, TriageState(None), budget=1)
    triage.verdict_for(TREE, TREE)
    triage.verdict_for(LINK, LINK)
    triage.process_pending()
    assert len(model.asked) == 1
    assert triage.verdict_for(LINK, LINK) is None


def test_a_slow_model_never_blocks_detection(tmp_path: Path) -> None:
    model = ScriptedModel([ANOMALOUS], delay=1.5)
    triage = _triage(model, TriageState(None), background=True)
    start = time.perf_counter()
    answers = [triage.verdict_for(TREE, TREE) for _ in range(50)]
    assert time.perf_counter() - start < 0.5  # the model takes 1.5 s; nobody waited
    assert answers == [None] * 50
    assert triage.wait_idle(timeout=10)
    verdict = triage.verdict_for(TREE, TREE)
    assert verdict is not None and verdict.anomalous
    triage.close()


def test_a_failing_model_leaves_lines_on_the_novelty_path(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    triage = _triage(ScriptedModel([], fail=True), TriageState(None))
    assert triage.verdict_for(TREE, TREE) is None
    triage.process_pending()
    assert triage.failures == 1
    assert triage.verdict_for(TREE, TREE) is None
    assert "stays on the novelty path" in caplog.text


def test_operator_override_is_confirmed_and_becomes_a_label(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    triage = _triage(ScriptedModel([NORMAL]), TriageState(path))
    triage.verdict_for(LINK, LINK)
    triage.process_pending()
    state = TriageState(path)
    (template_id,) = state.templates
    entry = set_operator_verdict(state, template_id, "anomalous", "program load")
    assert entry.confirmed and entry.source == "operator" and entry.domain == "PROGRAM_LOAD"
    assert "was: normal by llm" in entry.reason
    reloaded = TriageState(path)
    assert reloaded.verdicts[template_id].anomalous
    labels: list[bool | None] = [None, None, False]
    counts = label_from_confirmed(reloaded, [LINK, TREE, LINK], labels)
    assert labels == [True, None, False]
    assert counts == {"labelled": 1, "disagreements": 1}
    with pytest.raises(InputError, match="no new template"):
        set_operator_verdict(reloaded, "N999", "normal")
    with pytest.raises(InputError, match="normal' or 'anomalous"):
        set_operator_verdict(reloaded, template_id, "maybe")


def test_a_corrupt_state_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("{not json")
    with pytest.raises(InputError, match="unreadable"):
        TriageState(path)


def test_verdict_parsing_and_redacted_prompt() -> None:
    assert parse_verdict(ANOMALOUS) == (True, "TREE_NETWORK", "packet errors")
    assert parse_verdict(NORMAL)[0] is False
    with pytest.raises(ValueError, match="neither"):
        parse_verdict('{"verdict": "maybe"}')
    messages = build_prompt(CONTEXT, "socket to <*>", "socket to 10.1.2.3 closed", lambda t: "X")
    assert "10.1.2.3" not in messages[-1].content


def test_background_thread_is_safe_under_concurrent_lines() -> None:
    model = ScriptedModel([NORMAL] * 20)
    triage = _triage(model, TriageState(None), background=True)
    contents = [f"new message kind {i} happened" for i in range(5)] * 20

    def feed() -> None:
        for content in contents:
            triage.verdict_for(content, content)

    threads = [threading.Thread(target=feed) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert triage.wait_idle(timeout=10)
    assert len(model.asked) == len(triage.state.verdicts) <= 5
    triage.close()
    assert json.dumps(list(triage.state.verdicts))


def test_confirmed_verdicts_label_the_next_setup(tmp_path: Path) -> None:
    from fame.config import Settings
    from fame.setup import read_offline

    state_path = tmp_path / "state.json"
    triage = _triage(ScriptedModel([NORMAL]), TriageState(state_path))
    triage.verdict_for(LINK, LINK)
    triage.process_pending()
    state = TriageState(state_path)
    set_operator_verdict(state, next(iter(state.templates)), "anomalous")
    log = tmp_path / "offline.log"
    log.write_text(f"{LINK}\n{TREE}\n{LINK}\n", encoding="utf-8")
    labels = tmp_path / "labels.csv"
    labels.write_text("line,label\n2,0\n3,0\n", encoding="utf-8")
    settings = Settings(
        format="custom",
        header="<Content>",
        labels_csv=str(labels),
        triage_labels=str(state_path),
    )
    data = read_offline([log], settings)
    # Line 1 had no label and matches the confirmed template; line 3 keeps its own label.
    assert data.labels == [True, False, False]
    with pytest.raises(InputError, match="does not exist"):
        read_offline([log], settings.replace(triage_labels=str(tmp_path / "missing.json")))


def test_triage_command_lists_and_sets_verdicts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fame.cli import main

    path = tmp_path / "state.json"
    triage = _triage(ScriptedModel([NORMAL]), TriageState(path))
    triage.verdict_for(LINK, LINK)
    triage.process_pending()
    assert main(["triage", "list", "--state", str(path), "-q"]) == 0
    (row,) = capsys.readouterr().out.splitlines()
    template_id, status, template = row.split("\t")
    assert status == "normal [llm]" and "program image" in template
    assert main(["triage", "set", template_id, "anomalous", "--state", str(path), "-q"]) == 0
    assert main(["triage", "list", "--state", str(path), "-q"]) == 0
    assert "anomalous [operator, confirmed]" in capsys.readouterr().out
    assert main(["triage", "set", "N999", "normal", "--state", str(path), "-q"]) == 2
    assert main(["triage", "list", "--state", str(tmp_path / "none.json"), "-q"]) == 2
