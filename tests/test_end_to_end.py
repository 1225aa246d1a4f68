"""End to end on Loghub's real BGL_2k sample, in a small configuration (about two minutes).

One ``evaluate`` run (setup on the first 85%, detection on the last 15%) is shared by the
tests below; they assert real metrics, the bundle's contents, the detect CLI's contract and
that a reloaded bundle gives the same results.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import fame.api as fame
from fame.cli import main
from fame.evaluation.evaluate import EvaluationResult
from fame.logs import read_records
from fame.novelty import NoveltyModel

TEST_LINES = 300  # 15% of 2,000
TEST_ANOMALIES = 24  # labelled anomalies among BGL_2k's last 300 lines


@pytest.fixture(scope="module")
def run(bgl_2k_run: EvaluationResult) -> EvaluationResult:
    return bgl_2k_run


def test_metrics_are_real_and_consistent(run: EvaluationResult) -> None:
    m = run.metrics
    assert m["tp"] + m["fp"] + m["fn"] + m["tn"] == TEST_LINES
    assert m["tp"] + m["fn"] == m["anomalies"] == TEST_ANOMALIES
    assert m["precision"] == pytest.approx(m["tp"] / (m["tp"] + m["fp"]))
    assert m["recall"] == pytest.approx(m["tp"] / TEST_ANOMALIES)
    # Floors set under what this configuration measured (precision 0.89, recall 1.00,
    # F1 0.94, AUROC 1.00 at K=20 on 1,700 offline lines); they catch a broken pipeline,
    # not small drifts between machines.
    assert m["recall"] >= 0.85
    assert m["f1"] >= 0.8
    assert m["auroc"] >= 0.95
    # Most test anomalies of BGL_2k come from templates never seen offline (paper RQ6).
    assert m["unseen_anomaly_share"] > 0.5
    k = json.loads((run.out / "bundle" / "settings.json").read_text())["k"]
    assert m["labeled_lines"] <= k * m["templates"]
    assert (run.out / "metrics.json").exists()


def test_detections_file_one_per_line_in_order(run: EvaluationResult) -> None:
    rows = [json.loads(line) for line in (run.out / "detections.jsonl").open()]
    assert [r["line"] for r in rows] == list(range(1701, 2001))
    for r in rows:
        assert set(r) >= {"line", "anomaly", "score", "domain", "route", "event_id", "template"}
        assert 0.0 <= r["score"] <= 1.0
        assert r["anomaly"] == (r["score"] >= 0.5)
        assert r["route"] in {"universal_normal", "pure_anomaly", "expert", "novel"}
        if r["route"] == "universal_normal":
            assert r["domain"] is None
        elif r["route"] in {"pure_anomaly", "expert"}:
            assert r["domain"]
        assert (r["event_id"] is None) == (r["template"] is None)
        # Never-seen templates are marked novel (the novelty path is off on this run).
        assert r["novel"] == (r["event_id"] is None)


def test_bundle_holds_no_pickle_and_reloads_identically(
    run: EvaluationResult, bgl_2k: Path
) -> None:
    bundle = run.out / "bundle"
    suffixes = {p.suffix for p in bundle.rglob("*") if p.is_file()}
    assert suffixes <= {".json", ".safetensors", ".txt", ".onnx"}  # ONNX: protobuf, no code
    certification = json.loads((bundle / "certification.json").read_text())
    assert "UNIVERSAL_NORMAL" in json.dumps(certification)
    first = [json.loads(line) for line in (run.out / "detections.jsonl").open()]
    detector = fame.load(bundle, cache_size=0)
    again = list(detector.detect_file(_test_region(run, bgl_2k)))
    assert len(again) == TEST_LINES
    for a, b in zip(again, first, strict=True):
        assert a.anomaly == b["anomaly"] and a.domain == b["domain"]
        assert a.score == pytest.approx(b["score"], abs=1e-5)


def test_detect_cli_keeps_every_line(
    run: EvaluationResult, bgl_2k: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = _test_region(run, bgl_2k).read_bytes().splitlines(keepends=True)[:20]
    messy = tmp_path / "messy.log"
    messy.write_bytes(
        b"".join(raw[:5])
        + b"this line fits no BGL layout\n"
        + b"\xff\xfe\x00 binary \x80 junk\n"
        + b"\n"
        + b"- 1 2 3 "
        + b"x" * 50_000
        + b"\n"
        + b"".join(raw[5:])
    )
    code = main(["detect", "--bundle", str(run.out / "bundle"), str(messy), "--quiet"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    rows: list[dict[str, Any]] = [json.loads(line) for line in out]
    assert [r["line"] for r in rows] == list(range(1, 25))
    assert rows[5]["malformed"] and rows[6]["malformed"]
    assert not rows[0]["malformed"]


def test_novelty_path_is_calibrated_offline_and_gated_by_its_own_precision(
    run: EvaluationResult, bgl_2k: Path
) -> None:
    bundle = run.out / "bundle"
    data = json.loads((bundle / "novelty.json").read_text())
    report = data["report"]
    assert report["templates"] > 10 and report["anomalous_templates"] >= 2
    assert 0.0 < data["threshold"] < 1.0
    # On BGL_2k (K=20) the held-out templates are too few for the path to be precise: its
    # cross-validated precision is under the floor, so setup disables it and detection keeps
    # the paper's routing for new templates.
    assert report["cv_template_precision"] < report["min_precision"]
    assert data["enabled"] is False and run.metrics["detection"]["novelty"] is False
    assert "novel" not in run.metrics["unseen_by_route"]
    # Forced on, the path decides every new-template line, with a domain only when it flags.
    detector = fame.load(bundle)
    model = NoveltyModel.from_json(data)
    detector.novelty = model
    records = list(read_records(_test_region(run, bgl_2k), detector.format))
    results = list(detector.detect_records(records))
    novel = [d for d in results if d.novel]
    assert novel and all(d.route.value == "novel" for d in novel)
    assert all(d.anomaly == (d.raw_score >= model.threshold) for d in novel)
    assert all(d.domain is None for d in novel if not d.anomaly)
    assert all(d.route.value != "novel" for d in results if not d.novel)


def test_triage_verdicts_apply_after_the_first_lines_and_persist(
    run: EvaluationResult, bgl_2k: Path, tmp_path: Path
) -> None:
    from fame.detector import Detector
    from fame.llm import RecordingClient
    from fame.llm.providers import LLMResponse
    from fame.llm.redaction import Redactor
    from fame.triage import Triage, TriageState, context_from_bundle, validate_on_offline

    class AlwaysAnomalous:
        """A model that calls every new template a tree-network failure."""

        name, model, remote = "local", "scripted.gguf", False

        def complete(self, messages: Any, *, schema: Any = None, max_tokens: int = 0) -> Any:
            text = '{"verdict": "anomalous", "domain": "TREE_NETWORK", "reason": "x"}'
            return LLMResponse(text, "local", "scripted.gguf", 0.01)

    bundle = run.out / "bundle"
    state = TriageState(tmp_path / "triage.json")
    context = context_from_bundle(bundle)
    assert context.domains and context.normal_examples
    triage = Triage(state, RecordingClient(AlwaysAnomalous(), None), context, background=False)
    detector = Detector.load(bundle, triage=triage)
    records = list(read_records(_test_region(run, bgl_2k), detector.format))
    first = detector.detect_batch(records)
    triage.process_pending()
    second = detector.detect_batch(records)
    novel = [i for i, d in enumerate(first) if d.novel]
    assert novel, "BGL_2k's test region has lines of new templates"
    assert all(first[i].route.value != "triage" for i in novel)
    assert all(second[i].route.value == "triage" and second[i].anomaly for i in novel)
    assert all(second[i].verdict_source == "llm" for i in novel)
    known = [i for i, d in enumerate(first) if not d.novel]
    assert [second[i] for i in known] == [first[i] for i in known]
    triage.close()
    assert len(TriageState(tmp_path / "triage.json").verdicts) == len(state.verdicts) > 0

    # A model that calls everything anomalous fails its offline validation: its verdicts are
    # kept for review but not applied, and lines stay on the novelty path.
    validation = validate_on_offline(RecordingClient(AlwaysAnomalous(), None), bundle, Redactor())
    assert validation["answered"] == validation["asked"] > 0
    assert validation["recall"] == 1.0
    expected = validation["anomalous_templates"] / validation["asked"]
    assert validation["precision"] == pytest.approx(expected, abs=1e-3)
    untrusted = Triage(
        TriageState(None),
        RecordingClient(AlwaysAnomalous(), None),
        context,
        background=False,
        trusted=False,
    )
    gated = Detector.load(bundle, triage=untrusted)
    gated.detect_batch(records)
    untrusted.process_pending()
    again = gated.detect_batch(records)
    assert untrusted.state.verdicts
    assert [again[i] for i in novel] == [first[i] for i in novel]


def _test_region(run: EvaluationResult, source: Path) -> Path:
    """The last 300 lines of BGL_2k as their own file."""
    path = run.out / "test_region.log"
    if not path.exists():
        lines = source.read_bytes().splitlines(keepends=True)
        path.write_bytes(b"".join(lines[1700:]))
    return path
