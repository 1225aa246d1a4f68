"""Template parsing (paper III-A) against Loghub's ground truth, and its JSON persistence."""

from __future__ import annotations

import copy
import csv
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from fame.errors import BundleError, ConfigError
from fame.logs import get_format, read_records
from fame.parsing import MASK_NUM, TemplateParser


def grouping_accuracy(predicted: Sequence[str], truth: Sequence[str]) -> float:
    """Loghub's grouping accuracy: share of lines whose predicted group equals their true one.

    A line counts as correct when the set of lines in its predicted cluster is exactly the
    set of lines in its ground-truth cluster (Zhu et al., ICSE-SEIP 2019).
    """
    by_pred: dict[str, set[int]] = defaultdict(set)
    by_true: dict[str, set[int]] = defaultdict(set)
    for i, (p, t) in enumerate(zip(predicted, truth, strict=True)):
        by_pred[p].add(i)
        by_true[t].add(i)
    correct = sum(by_pred[p] == by_true[t] for p, t in zip(predicted, truth, strict=True))
    return correct / len(truth)


@pytest.fixture(scope="module")
def bgl_contents(bgl_2k: Path) -> list[str]:
    return [r.content for r in read_records(bgl_2k, get_format("bgl"))]


@pytest.fixture(scope="module")
def learned(bgl_contents: list[str]) -> tuple[TemplateParser, list[str]]:
    parser = TemplateParser()
    return parser, parser.learn(bgl_contents)


def test_grouping_accuracy_on_bgl_2k(
    bgl_2k: Path, learned: tuple[TemplateParser, list[str]]
) -> None:
    parser, event_ids = learned
    with bgl_2k.with_name("BGL_2k.log_structured.csv").open(newline="") as handle:
        truth = [row["EventId"] for row in csv.DictReader(handle)]
    # Measured 0.9685 with 105 templates (Loghub's 2k sample has 120; its published Drain
    # result on BGL is 0.963). The floor leaves room for harmless Drain3 version drift.
    assert grouping_accuracy(event_ids, truth) >= 0.96
    assert 95 <= len(parser.templates) <= 115


def test_learned_ids_are_consistent(
    bgl_contents: list[str], learned: tuple[TemplateParser, list[str]]
) -> None:
    parser, event_ids = learned
    templates = parser.templates
    assert len(event_ids) == len(bgl_contents) == 2000
    assert set(event_ids) == set(templates)
    assert sum(t.size for t in templates.values()) == 2000
    for event_id, template in templates.items():
        assert template.event_id == event_id
        assert template.size == event_ids.count(event_id)


@pytest.mark.parametrize(
    ("line_no", "template"),
    [
        (1, "instruction cache parity error corrected"),
        (5, "<NUM> double-hummer alignment exceptions"),
        (8, "CE sym <NUM>, at <HEX>, mask <HEX>"),
        (
            9,
            "ciod: failed to read message prefix on control stream (CioStream socket to <IP>:<NUM>",
        ),
        (12, "generating core.<NUM>"),
        (104, "data TLB error interrupt"),
        (1283, "iar <*> dear <*>"),
        (1377, "Lustre mount FAILED : <*> : point <PATH>"),
        (1973, "ciod: LOGIN chdir(<PATH>) failed: Input/output error"),
    ],
)
def test_golden_templates(
    learned: tuple[TemplateParser, list[str]], line_no: int, template: str
) -> None:
    parser, event_ids = learned
    assert parser.templates[event_ids[line_no - 1]].template == template


@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        (
            "ciod: Error reading message prefix on CioStream socket to 172.16.96.116:42213",
            "ciod: Error reading message prefix on CioStream socket to <IP>:<NUM>",
        ),
        ("instruction address: 0x00004ed8", "instruction address: <HEX>"),
        (
            "ciod: Error loading /bgl/apps/scaletest/MINIBEN/mb_243_0810/allreduce.rts: denied",
            "ciod: Error loading <PATH>: denied",
        ),
        ("generating core.2275", "generating core.<NUM>"),
        # Tokens that merely contain digits are left to Drain: masks only take whole parts.
        ("R02-M1-N0-C:J12-U11 on bglio716 eth1", "R02-M1-N0-C:J12-U11 on bglio716 eth1"),
    ],
)
def test_masking(raw: str, masked: str) -> None:
    assert TemplateParser().mask(raw) == masked


def test_masking_is_overridable() -> None:
    parser = TemplateParser(masking=[(MASK_NUM, "NUM")])
    assert parser.mask("0x1f at 10.0.0.1") == "0x1f at <NUM>.<NUM>.<NUM>.<NUM>"
    assert TemplateParser(masking=[]).mask("1 2") == "1 2"
    with pytest.raises(ConfigError, match="does not compile"):
        TemplateParser(masking=[("(", "BAD")])
    with pytest.raises(ConfigError, match="sim_th"):
        TemplateParser(sim_th=1.5)
    with pytest.raises(ConfigError, match="depth"):
        TemplateParser(depth=2)


def test_match_uses_frozen_templates(
    bgl_contents: list[str], learned: tuple[TemplateParser, list[str]]
) -> None:
    parser, _ = learned
    before = {k: (t.template, t.size) for k, t in parser.templates.items()}
    unseen = "a message that looks like nothing in the offline log at all"
    assert parser.match(unseen) is None
    assert parser.match(unseen) is None  # cached
    matched = parser.match("123 double-hummer alignment exceptions")
    assert matched is not None and matched.template == "<NUM> double-hummer alignment exceptions"
    for content in bgl_contents[:200]:
        assert parser.match(content) is not None
    # Matching never creates or changes a template.
    assert {k: (t.template, t.size) for k, t in parser.templates.items()} == before


@pytest.mark.parametrize(
    ("log", "fmt"),
    [
        ("bgl/BGL_2k.log", "bgl"),
        ("bgl/BGL_head_5001.log", "bgl"),
        ("thunderbird/Thunderbird_2k.log", "thunderbird"),
    ],
)
@pytest.mark.parametrize("depth", [4, 6])
def test_json_round_trip_matches_exactly(shared_data: Path, log: str, fmt: str, depth: int) -> None:
    contents = [r.content for r in read_records(shared_data / log, get_format(fmt))]
    original = TemplateParser(depth=depth)
    original.learn(contents)
    loaded = TemplateParser.from_json(json.loads(json.dumps(original.to_json())))

    assert loaded.templates == original.templates
    assert loaded.masking == original.masking
    assert (loaded.sim_th, loaded.depth, loaded.max_children) == (0.5, depth, 100)
    for content in contents:
        a, b = original.match(content), loaded.match(content)
        assert (a.event_id if a else None) == (b.event_id if b else None), content
    assert loaded.match("a line that was never seen in any log, 17 times") is None
    # A loaded parser keeps learning where the original stopped: no id is reused.
    new_ids = loaded.learn(["a brand new message kind"])
    assert new_ids[0] not in original.templates


def _corruptions(good: dict[str, Any]) -> list[Any]:
    bad: list[Any] = [None, [], "text", {**good, "format": "fame.template_parser/0"}]
    for key in ("sim_th", "depth", "masking", "clusters", "clusters_counter"):
        broken = copy.deepcopy(good)
        del broken[key]
        bad.append(broken)
    bad.append({**good, "depth": 1})
    bad.append({**good, "masking": [["(", "BAD"]]})
    bad.append({**good, "masking": "NUM"})
    bad.append({**good, "clusters": {"1": "x"}})
    bad.append({**good, "clusters_counter": "3"})
    for field, value in (("id", 0), ("id", "1"), ("template", "a b"), ("size", -1)):
        broken = copy.deepcopy(good)
        broken["clusters"][0][field] = value
        bad.append(broken)
    duplicated = copy.deepcopy(good)
    duplicated["clusters"][1]["id"] = duplicated["clusters"][0]["id"]
    bad.append(duplicated)
    beyond = copy.deepcopy(good)
    beyond["clusters_counter"] = 1
    bad.append(beyond)
    return bad


def test_corrupt_json_raises_bundle_error(learned: tuple[TemplateParser, list[str]]) -> None:
    good = learned[0].to_json()
    assert TemplateParser.from_json(copy.deepcopy(good)).templates == learned[0].templates
    for bad in _corruptions(good):
        with pytest.raises(BundleError):
            TemplateParser.from_json(bad)
