"""Each path of Eq. 5 (paper III-F) on constructed gate, selector and expert scores.

The trunk and heads are replaced by lookup tables keyed on a line's first token, so every
score is known in advance and the routing logic is checked exactly; the tokenizer, the
template matching, the cache and the result schema are the real ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from fame.certification import CertifiedPartition, DomainKind
from fame.detector import Detector
from fame.logs import get_format
from fame.models.encoder import load_tokenizer, resolve_encoder
from fame.models.inference import TorchBackend
from fame.parsing import TemplateParser
from fame.partition import UNIVERSAL_NORMAL
from fame.result import Route

WORDS = ("alpha", "beta", "gamma", "delta", "epsilon")


class FakeTrunk(torch.nn.Module):
    """Hidden state = the id of the first real token, broadcast over positions."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return input_ids[:, 1:2].float().expand(-1, input_ids.shape[1]).unsqueeze(-1)


class TableHead:
    """A head whose output for a line is looked up by the line's first token id."""

    def __init__(self, table: dict[int, Any], n_outputs: int = 1, default: Any = 0.1) -> None:
        self.table = table
        self.n_outputs = n_outputs
        self.default = default  # for lines outside the plan (an empty line)

    def eval(self) -> None:
        """Heads are put in eval mode on load."""

    def score(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ids = [int(v) for v in hidden[:, 0, 0]]
        return torch.tensor([self.table.get(i, self.default) for i in ids], dtype=torch.float32)


@pytest.fixture(scope="module")
def detector() -> Detector:
    tokenizer = load_tokenizer(resolve_encoder("minilm"))
    tid = {w: tokenizer.convert_tokens_to_ids(w) for w in WORDS}
    # word: (gate, selector choice, expert score)
    plan = {
        "alpha": (0.9, "PURE", None),  # routed to a pure-anomaly domain
        "beta": (0.8, "MIX", 0.7),  # routed to a mixed expert, above its threshold 0.6
        "gamma": (0.8, "MIX", 0.3),  # routed to the mixed expert, below it
        "delta": (0.1, None, 0.9),  # UNIVERSAL_NORMAL path, above 0.7
        "epsilon": (0.1, None, 0.2),  # UNIVERSAL_NORMAL path, below
    }
    classes = ["MIX", "PURE"]
    gate = TableHead({tid[w]: p[0] for w, p in plan.items()})
    selector = TableHead(
        {tid[w]: [1.0 if c == p[1] else 0.0 for c in classes] for w, p in plan.items()},
        n_outputs=2,
    )
    mix = TableHead({tid[w]: p[2] for w, p in plan.items() if p[1] == "MIX"})
    un = TableHead({tid[w]: p[2] for w, p in plan.items() if p[1] is None})
    partition = CertifiedPartition(
        domains={
            UNIVERSAL_NORMAL: DomainKind.UNIVERSAL,
            "MIX": DomainKind.MIXED,
            "PURE": DomainKind.PURE_ANOMALY,
        },
        # The frozen templates of "gamma" and "delta" belong to PURE in the partition.
        event_to_domain={"E2": "PURE", "E3": "PURE"},
    )
    parser = TemplateParser()
    parser.learn(["alpha", "gamma", "delta"])
    trunk: Any = FakeTrunk()
    return Detector(
        root=Path("."),
        fmt=get_format("custom", regex=r"(?P<Content>.*)"),
        parser=parser,
        partition=partition,
        calibration={
            "experts": {"MIX": {"threshold": 0.6}},
            "universal_normal": {"weight": 0.0, "threshold": 0.7},
        },
        routing={"has_gate": True, "selector_classes": classes},
        backend=TorchBackend(
            tokenizer=tokenizer,
            trunk=trunk,
            heads={
                "gate": gate,
                "selector": selector,
                "expert/MIX": mix,
                f"expert/{UNIVERSAL_NORMAL}": un,
            },
            max_tokens=16,
        ),
        route_known_templates=False,
    )


def test_each_path_of_eq5(detector: Detector) -> None:
    results = {d.line: d for d in detector.detect_lines(WORDS)}
    alpha, beta, gamma, delta, epsilon = (results[i] for i in range(1, 6))

    assert (alpha.route, alpha.domain, alpha.anomaly) == (Route.PURE_ANOMALY, "PURE", True)
    assert alpha.score == pytest.approx(0.9)  # the gate's probability
    assert alpha.event_id is not None and alpha.template == "alpha"

    assert (beta.route, beta.domain, beta.anomaly) == (Route.EXPERT, "MIX", True)
    assert beta.raw_score == pytest.approx(0.7) and beta.score > 0.5
    assert (gamma.route, gamma.domain, gamma.anomaly) == (Route.EXPERT, "MIX", False)
    assert gamma.score < 0.5

    assert (delta.route, delta.domain, delta.anomaly) == (Route.UNIVERSAL_NORMAL, None, True)
    assert (epsilon.route, epsilon.domain, epsilon.anomaly) == (
        Route.UNIVERSAL_NORMAL,
        None,
        False,
    )
    assert epsilon.event_id is None and epsilon.template is None  # never-seen template


def test_one_result_per_line_in_order_cache_on_and_off(detector: Detector) -> None:
    lines = [WORDS[i % 5] for i in range(0, 53, 3)] + ["", "gamma"]
    detector.cache_size = 0
    off = [d.to_json() for d in detector.detect_lines(lines, batch_size=4)]
    detector.cache_size = 100
    on = [d.to_json() for d in detector.detect_lines(lines, batch_size=4)]
    assert [d["line"] for d in off] == list(range(1, len(lines) + 1))
    assert on == off
    assert detector.cache_hits > 0


def test_known_templates_routed_by_the_partition(detector: Detector) -> None:
    detector.route_known_templates = True
    try:
        results = list(detector.detect_lines(["gamma", "beta", "delta"]))
    finally:
        detector.route_known_templates = False
    gamma, beta, delta = results
    # The selector would send "gamma" to MIX (normal there); its template is certified PURE.
    assert gamma.event_id == "E2"
    assert (gamma.route, gamma.domain, gamma.anomaly) == (Route.PURE_ANOMALY, "PURE", True)
    assert gamma.score >= 0.5 and gamma.raw_score == pytest.approx(0.8)
    # Routed by its template although the gate says 0.1: still a decided anomaly, score 0.5.
    assert (delta.route, delta.anomaly, delta.score) == (Route.PURE_ANOMALY, True, 0.5)
    assert delta.raw_score == pytest.approx(0.1)
    # A never-seen template is still routed by the gate and selector.
    assert beta.event_id is None
    assert (beta.route, beta.domain) == (Route.EXPERT, "MIX")


def test_symmetric_routing_without_a_gate(detector: Detector) -> None:
    """No-Gate ablation: one selector whose class 0 is UNIVERSAL_NORMAL routes every line."""
    tokenizer = detector.backend.tokenizer
    tid = {w: tokenizer.convert_tokens_to_ids(w) for w in WORDS}
    classes = [UNIVERSAL_NORMAL, "MIX", "PURE"]
    # word: selector probabilities over (UNIVERSAL_NORMAL, MIX, PURE)
    probs = {
        "alpha": [0.1, 0.2, 0.7],
        "beta": [0.3, 0.6, 0.1],
        "gamma": [0.2, 0.7, 0.1],
        "delta": [0.8, 0.1, 0.1],
        "epsilon": [0.6, 0.3, 0.1],
    }
    heads = dict(detector.backend.heads)
    heads["selector"] = TableHead({tid[w]: p for w, p in probs.items()}, n_outputs=3)
    del heads["gate"]
    symmetric = Detector(
        root=Path("."),
        fmt=detector.format,
        parser=detector.parser,
        partition=detector.partition,
        calibration=detector.calibration,
        routing={"has_gate": False, "symmetric": True, "selector_classes": classes},
        backend=TorchBackend(
            tokenizer=tokenizer, trunk=detector.backend.trunk, heads=heads, max_tokens=16
        ),
        route_known_templates=False,
    )
    alpha, beta, gamma, delta, epsilon = symmetric.detect_lines(WORDS)
    assert (alpha.route, alpha.domain, alpha.anomaly) == (Route.PURE_ANOMALY, "PURE", True)
    assert alpha.score == pytest.approx(0.9)  # 1 - P(UNIVERSAL_NORMAL)
    assert (beta.route, beta.domain, beta.anomaly) == (Route.EXPERT, "MIX", True)
    assert (gamma.route, gamma.domain, gamma.anomaly) == (Route.EXPERT, "MIX", False)
    assert (delta.route, delta.anomaly) == (Route.UNIVERSAL_NORMAL, True)
    assert (epsilon.route, epsilon.anomaly) == (Route.UNIVERSAL_NORMAL, False)
