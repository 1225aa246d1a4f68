"""``fame benchmark``: the plan, the consistency checks, and a quick run on BGL_2k.

The quick run (a few minutes on 2 cores) computes every quick row on Loghub's real BGL_2k
sample and checks that the report is produced and that its numbers are internally
consistent; a second call rebuilds the report from the cache alone.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from fame.cli import build_parser
from fame.config import Settings, setting_fields
from fame.evaluation.benchmark import (
    BASELINE,
    FAME,
    NOT_RUN,
    PAPER_KS,
    QUICK_KS,
    BenchmarkResult,
    _settings_flags,
    plan_rows,
    run_benchmark,
)
from fame.evaluation.report import check_consistency

TEST_LINES = 300  # 15% of BGL_2k's 2,000 lines
TEST_ANOMALIES = 24


def test_full_plan_covers_the_papers_evaluation() -> None:
    rows = plan_rows(quick=False, llm_reason=None, loglead_reason=None)
    ids = [r.id for r in rows]
    assert len(ids) == len(set(ids))
    assert sorted({r.k for r in rows if "k_sweep" in r.groups}) == list(PAPER_KS)
    assert len([r for r in rows if "seeds" in r.groups]) >= 3
    kinds = {r.kind for r in rows}
    assert {FAME, BASELINE, "loglead", NOT_RUN} <= kinds
    # Rows that cannot run here say why; dependencies are planned before their dependents.
    for i, row in enumerate(rows):
        assert (row.kind == NOT_RUN) == (row.reason is not None)
        for dep in row.depends_on():
            assert dep in ids[:i]
    methods = " ".join(r.method for r in rows)
    for needed in ("single global model (Phase 1+2)", "(Phase 2 only)", "no gate", "LLM"):
        assert needed in methods


def test_unavailable_rows_are_listed_with_the_reason() -> None:
    rows = plan_rows(quick=False, llm_reason="no model", loglead_reason="no venv")
    reasons = {r.id: r.reason for r in rows if r.kind == NOT_RUN}
    assert reasons["fame_llm_k100_s0"] == "no model"
    assert reasons["loglead_k100_s0"] == "no venv"
    assert "Thunderbird" in reasons["thunderbird"]


def test_settings_flags_round_trip_through_the_cli() -> None:
    settings = Settings(k=7, seed=3, phase1=False, novelty=False, proposer="single", threads=1)
    args = build_parser().parse_args(
        ["evaluate", "x.log", "--out", "o", *_settings_flags(settings)]
    )
    names = {f.name for f in setting_fields()}
    parsed = Settings.from_dict({k: v for k, v in vars(args).items() if k in names})
    assert parsed == settings


def _fake_results() -> dict[str, Any]:
    row = {"id": "r", "method": "m", "kind": BASELINE, "groups": ["table1"], "k": 5, "seed": 0,
           "status": "done", "precision": 0.5, "recall": 0.25, "f1": 2 * 0.5 * 0.25 / 0.75,
           "auroc": 0.9, "tp": 1, "fp": 1, "fn": 3, "tn": 5}  # fmt: skip
    k_rows = [
        {**row, "id": f"k{k}", "groups": ["k_sweep"], "k": k, "status": "not_run"} for k in (5, 9)
    ]
    return {"split": {"test_lines": 10, "test_anomalies": 4}, "rows": [row, *k_rows]}


def test_consistency_check_finds_counts_that_do_not_add_up() -> None:
    results = _fake_results()
    assert check_consistency(results) == []
    broken = copy.deepcopy(results)
    broken["rows"][0]["tn"] = 6
    assert any("tp+fp+fn+tn" in p for p in check_consistency(broken))
    broken = copy.deepcopy(results)
    broken["rows"][0]["f1"] = 0.5
    assert any("f1" in p for p in check_consistency(broken))


@pytest.fixture(scope="module")
def quick(bgl_2k: Path, tmp_path_factory: pytest.TempPathFactory) -> BenchmarkResult:
    root = tmp_path_factory.mktemp("benchmark")
    return run_benchmark(bgl_2k, Settings(), root / "report", quick=True, work=root / "work")


@pytest.mark.slow
def test_quick_benchmark_report_is_complete_and_consistent(quick: BenchmarkResult) -> None:
    results = json.loads((quick.out / "results.json").read_text())
    assert check_consistency(results) == []
    assert results["split"]["test_lines"] == TEST_LINES
    assert results["split"]["test_anomalies"] == TEST_ANOMALIES
    rows = results["rows"]
    for row in rows:
        assert row["status"] in {"done", "not_run"}, row
        if row["status"] != "done":
            assert row["reason"]
            continue
        assert row["tp"] + row["fp"] + row["fn"] + row["tn"] == TEST_LINES
        assert row["tp"] + row["fn"] == TEST_ANOMALIES
        assert 0.0 <= row["precision"] <= 1.0 and 0.0 <= row["recall"] <= 1.0
        p, r = row["precision"], row["recall"]
        assert row["f1"] == pytest.approx(0 if p + r == 0 else 2 * p * r / (p + r))
    done = {r["id"] for r in rows if r["status"] == "done"}
    assert {"fame_tfidf_k20_s0", "fame_tfidf_k5_s0", "fame_single-p1p2_k20_s0"} <= done
    assert {"baseline_drain_rf_k20_s0", "baseline_sbert_lr_k20_s0"} <= done
    # The No-Gate ablation trains a symmetric router: one selector with UNIVERSAL_NORMAL.
    assert "fame_no-gate_k20_s0" in done
    no_gate = quick.out.parent / "work" / "rows" / "fame_no-gate_k20_s0" / "bundle"
    routing = json.loads((no_gate / "routing.json").read_text())
    assert routing["symmetric"] and not routing["has_gate"]
    assert routing["selector_classes"][0] == "UNIVERSAL_NORMAL"
    # K table: one row per quick K, with its labelled lines.
    k_rows = {r["k"]: r for r in rows if "k_sweep" in r["groups"] and r["status"] == "done"}
    assert sorted(k_rows) == list(QUICK_KS)
    assert k_rows[5]["labeled_lines"] < k_rows[20]["labeled_lines"]
    main = k_rows[20]
    assert main["unseen_anomalies"] <= main["anomalies"]
    assert (
        sum(m["tp"] + m["fn"] for m in main["unseen_by_route"].values())
        == (main["unseen_anomalies"])
    )
    assert main["setup_stages"]["phase1"]["seconds"] > 0
    report = (quick.out / "report.md").read_text()
    for section in ("## 1. Table I", "## 2. K sensitivity", "## 3. Templates never seen",
                    "## 4. Spread", "## 5. Cost", "## 6. Against the paper"):  # fmt: skip
        assert section in report
    assert "Consistency checks" in report and "all passed." in report
    assert "Thunderbird" in report and "not run" in report
    for k in QUICK_KS:
        assert f"| {k} | {k_rows[k]['labeled_lines']:,} |" in report
    for plot in ("table1_f1.png", "k_sensitivity.png"):
        assert (quick.out / plot).stat().st_size > 1000
    # The README's short table: the main FAME row with its own counts.
    headline = (quick.out / "headline.md").read_text()
    assert f"| {main['tp']} / {main['fp']} / {main['fn']} |" in headline


@pytest.mark.slow
def test_quick_benchmark_report_rebuilds_from_the_cache(
    quick: BenchmarkResult, bgl_2k: Path
) -> None:
    first = json.loads((quick.out / "results.json").read_text())
    work = quick.out.parent / "work"
    before = {f: f.stat().st_mtime_ns for f in work.rglob("*") if f.is_file()}
    again = run_benchmark(
        bgl_2k,
        Settings(),
        quick.out.parent / "again",
        quick=True,
        work=quick.out.parent / "work",
        report_only=True,
    )
    # Nothing was computed again: every cached file is untouched and none was added.
    assert {f: f.stat().st_mtime_ns for f in work.rglob("*") if f.is_file()} == before
    assert again.results["report_only"] and again.results["split"] == first["split"]
    assert "rebuilt from the cached rows" in (quick.out.parent / "again" / "report.md").read_text()
    key = ("id", "status", "tp", "fp", "fn", "tn")
    assert [tuple(r.get(k) for k in key) for r in again.results["rows"]] == [
        tuple(r.get(k) for k in key) for r in first["rows"]
    ]
