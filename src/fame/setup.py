"""Offline setup (paper section III), stage by stage, from labelled lines to a bundle.

:func:`build_bundle` reads as the list of steps of section III: parse templates, sample
K-shot labels, propose and certify failure domains, adapt the encoder (Phase 1), train the
router (gate, selector), train the mixed experts (Phase 2), calibrate thresholds, and
write the bundle that detection loads.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fame import bundle as bundle_io
from fame.calibration import TieBreak, calibrate_fusion, calibrate_threshold
from fame.certification import CertifiedPartition, certify, universal_normal_texts
from fame.config import Settings
from fame.errors import ConfigError, InputError, TrainingDataError
from fame.logs import LogFormat, LogRecord, ReadStats, get_format, load_label_csv, read_records
from fame.logs.formats import format_to_json
from fame.models import training
from fame.models.encoder import load_encoder, load_tokenizer, resolve_encoder, save_encoder
from fame.models.export import export_onnx, hash_sources
from fame.models.heads import save_heads
from fame.models.phase1 import adapt_mlm
from fame.models.trunk import Trunk
from fame.novelty import fit_novelty, mean_pool
from fame.parsing import TemplateParser
from fame.partition import UNIVERSAL_NORMAL, Partition, Proposer, get_proposer
from fame.partition.file import write_partition_file
from fame.partition.llm import LLMProposer
from fame.partition.llm import proposer_from_settings as llm_proposer_from_settings
from fame.sampling import KShotSample, LabeledLine, sample_kshot
from fame.stages import StageTimer

logger = logging.getLogger(__name__)

# Paper III-C1: UNIVERSAL_NORMAL lines are subsampled to 3 per expert-domain line for the gate.
GATE_NORMAL_RATIO = 3
# Paper III-D2: normals are capped at 10x the anomalies for UNIVERSAL_NORMAL, 20x otherwise.
UN_NORMAL_CAP = 10
EXPERT_NORMAL_CAP = 20


@dataclass
class OfflineData:
    """The offline region, in time order: what Drain sees, what the models see, labels."""

    contents: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    labels: list[bool | None] = field(default_factory=list)
    #: Per line, the values of the format's categorical fields (model fields other than
    #: the parsed text, e.g. BGL's component and level), for the novelty path.
    field_values: list[tuple[str, ...]] = field(default_factory=list)
    categorical_fields: tuple[str, ...] = ()

    def append(self, record: LogRecord) -> None:
        """Add one record."""
        self.contents.append(record.content)
        self.texts.append(record.text)
        self.labels.append(record.label)
        self.field_values.append(
            tuple(record.fields.get(name, "") for name in self.categorical_fields)
        )

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class SetupResult:
    """What setup produced: the bundle path and what it measured."""

    bundle: Path
    partition: CertifiedPartition
    sample: KShotSample
    report: dict[str, Any]


def make_format(settings: Settings) -> LogFormat:
    """The log format the settings describe."""
    return get_format(
        settings.format,
        header=settings.header,
        regex=settings.regex,
        model_fields=settings.model_field_list(),
    )


def read_offline(
    sources: Sequence[str | Path], settings: Settings, *, stats: ReadStats | None = None
) -> OfflineData:
    """Read the offline region from one or more files (in the given order)."""
    fmt = make_format(settings)
    labels = load_label_csv(settings.labels_csv) if settings.labels_csv else None
    data = OfflineData(categorical_fields=fmt.categorical_fields)
    for source in sources:
        for record in read_records(
            source, fmt, labels=labels, max_line_chars=settings.max_line_chars, stats=stats
        ):
            data.append(record)
    if settings.triage_labels:
        # Operator-confirmed verdicts on templates that were new at detection time.
        from fame.triage import TriageState, label_from_confirmed

        state_path = Path(settings.triage_labels)
        if not state_path.is_file():
            raise InputError(
                f"--triage-labels {state_path} does not exist; give the state file written by "
                "'fame detect --triage' (default BUNDLE.triage.json)"
            )
        counts = label_from_confirmed(TriageState(state_path), data.contents, data.labels)
        logger.info(
            "confirmed triage verdicts labelled %d offline lines (%d lines kept a different "
            "label of their own)",
            counts["labelled"],
            counts["disagreements"],
        )
    return data


def run_setup(
    sources: Sequence[str | Path],
    settings: Settings,
    out: str | Path,
    *,
    progress: bool = True,
) -> SetupResult:
    """``fame setup``: read the offline region from files and build a bundle in ``out``."""
    stats = ReadStats()
    timer = StageTimer()
    with timer.stage("read"):
        data = read_offline(sources, settings, stats=stats)
    stats.warn_summary(logger)
    provenance = {"inputs": bundle_io.hash_inputs(sources), "read": stats.to_json()}
    return build_bundle(data, settings, out, progress=progress, timer=timer, provenance=provenance)


def parse_and_sample(
    data: OfflineData, settings: Settings, timer: StageTimer | None = None
) -> tuple[TemplateParser, list[str], KShotSample]:
    """III-A: learn templates on the offline region, then draw K-shot labels per EventID.

    Returns:
        The fitted parser, the EventID of every offline line, and the K-shot sample.
    """
    timer = timer or StageTimer()
    with timer.stage("parsing"):
        parser = TemplateParser(sim_th=settings.drain_sim_th, depth=settings.drain_depth)
        event_ids = parser.learn(data.contents)
    templates = {eid: t.template for eid, t in parser.templates.items()}
    with timer.stage("sampling"):
        sample = sample_kshot(
            event_ids,
            data.texts,
            data.labels,
            templates,
            settings.k,
            calibration_fraction=settings.calibration_fraction,
        )
    logger.info(
        "%d templates, %d K-shot lines (%d train, %d calibration)",
        len(templates),
        sample.labeled_count,
        len(sample.train),
        len(sample.calibration),
    )
    return parser, event_ids, sample


def _sample_for_partition(sources: Sequence[str | Path], settings: Settings) -> KShotSample:
    """Read, parse and sample the offline region for a partition proposal."""
    stats = ReadStats()
    data = read_offline(sources, settings, stats=stats)
    stats.warn_summary(logger)
    if len(data) == 0:
        raise TrainingDataError(
            "the offline region is empty: a partition needs labelled log lines; check the "
            "input files"
        )
    _, _, sample = parse_and_sample(data, settings)
    return sample


def run_partition(
    sources: Sequence[str | Path], settings: Settings, out: str | Path
) -> tuple[Partition, Path]:
    """``fame partition``: propose failure domains and write them for review.

    The file lists each domain with its EventIDs beside their templates; edit it and pass it
    to ``fame setup --partition FILE``. A model's calls (prompt, answer, model, provider,
    time) are kept in the file and carried into the bundle for audit.

    Returns:
        The proposed partition and the path written.
    """
    sample = _sample_for_partition(sources, settings)
    proposer = make_proposer(settings)
    partition = proposer.propose(sample)
    audit = proposer.client.calls if isinstance(proposer, LLMProposer) else None
    path = write_partition_file(partition, Path(out), sample, audit=audit)
    return partition, path


def plan_partition(sources: Sequence[str | Path], settings: Settings) -> str:
    """``fame partition --dry-run``: what the LLM proposer would send, as JSON text.

    Nothing is sent. Later calls (retries after a bad answer, the merge of several chunks)
    depend on the answers and are described, not shown.

    Raises:
        ConfigError: If the proposer is not ``llm``.
    """
    if settings.proposer != "llm":
        raise ConfigError("--dry-run shows what an LLM would be sent; add --proposer llm")
    sample = _sample_for_partition(sources, settings)
    proposer = llm_proposer_from_settings(settings, connect=False)
    prompts, hidden = proposer.plan(sample)
    document = {
        "provider": settings.llm_provider,
        "model": settings.llm_model,
        "redacted": proposer.redacting,
        "calls": [[m.to_json() for m in messages] for messages in prompts],
        "event_ids_not_shown": len(hidden),
        "note": (
            "one call per entry of 'calls'; a retry adds the model's answer and the problems "
            "found in it; with more than one call, a merge call lists the proposed domain "
            "names with two member templates each"
        ),
    }
    return json.dumps(document, indent=2, ensure_ascii=False)


def build_bundle(
    data: OfflineData,
    settings: Settings,
    out: str | Path,
    *,
    progress: bool = True,
    timer: StageTimer | None = None,
    provenance: dict[str, Any] | None = None,
) -> SetupResult:
    """Run every offline stage of section III on ``data`` and write the bundle."""
    timer = timer or StageTimer()
    fmt = make_format(settings)
    _seed_everything(settings.seed)
    if len(data) == 0:
        raise TrainingDataError(
            "the offline region is empty: setup needs labelled log lines; check the input files"
        )
    out_dir = _fresh_dir(Path(out))

    # III-A: templates learned on the offline region only, then K-shot labels per EventID.
    parser, event_ids, sample = parse_and_sample(data, settings, timer)
    templates = {eid: t.template for eid, t in parser.templates.items()}

    # III-B: propose failure domains, then certify them against the K-shot signals.
    with timer.stage("partition"):
        partition, llm_audit = _propose(settings, sample)
    with timer.stage("certification"):
        un_normal_texts = universal_normal_texts(partition, sample, event_ids, data.texts)
        certified = certify(
            partition,
            sample,
            normal_pool_texts=un_normal_texts,
            max_pure_similarity=settings.max_pure_similarity,
        )
    logger.info("certification:\n%s", certified.summary())

    # The UNIVERSAL_NORMAL PU-normal pool after certification (dissolved domains join it).
    un_pool = _unique(
        data.texts[i]
        for i in sample.pu_normal
        if certified.domain_of(event_ids[i]) == UNIVERSAL_NORMAL
    )

    # III-D1: Phase 1 MLM adaptation on the UNIVERSAL_NORMAL PU-normal pool.
    with timer.stage("phase1"):
        encoder_path = resolve_encoder(settings.encoder)
        if settings.phase1:
            encoder, tokenizer, phase1_report = adapt_mlm(
                encoder_path,
                un_pool,
                max_lines=settings.phase1_max_lines,
                max_steps=settings.phase1_max_steps,
                batch_size=settings.train_batch_size,
                max_tokens=settings.max_tokens,
                seed=settings.seed,
                progress=progress,
            )
            phase1_info: dict[str, Any] = _as_dict(phase1_report)
        else:
            encoder, tokenizer = load_encoder(encoder_path), load_tokenizer(encoder_path)
            phase1_info = {"skipped": True}
    n_layers = int(encoder.config.num_hidden_layers)
    if not 1 <= settings.trainable_layers <= n_layers:
        raise TrainingDataError(
            f"trainable_layers={settings.trainable_layers} but the encoder has {n_layers} "
            f"layers; choose a value from 1 to {n_layers}"
        )
    n_frozen = n_layers - settings.trainable_layers
    trunk = Trunk(encoder, n_frozen)
    states = training.StateCache(trunk, tokenizer, settings.max_tokens, progress=progress)

    router_dir: str | None = None
    if settings.router_encoder == "shared":
        router_encoder, router_trunk, router_states = encoder, trunk, states
    else:
        r_path = resolve_encoder(settings.router_encoder)
        router_encoder, r_tokenizer = load_encoder(r_path), load_tokenizer(r_path)
        r_layers = int(router_encoder.config.num_hidden_layers)
        router_trunk = Trunk(router_encoder, r_layers - settings.trainable_layers)
        router_states = training.StateCache(
            router_trunk, r_tokenizer, settings.max_tokens, progress=progress
        )
        router_dir = "router_encoder"

    # III-C: the router, trained before the experts so that routing is fixed first.
    heads: dict[str, Any] = {}
    reports: dict[str, Any] = {}
    expert_domains = certified.expert_domains
    with timer.stage("router"):
        routing = _train_router(
            data, event_ids, certified, router_encoder, router_states, settings, heads, reports
        )
    routing["n_frozen_layers"] = n_frozen
    routing["router_encoder_dir"] = router_dir
    if router_dir:
        routing["router_n_frozen_layers"] = router_trunk.n_frozen_layers

    # III-D2: Phase 2, one head per mixed domain including UNIVERSAL_NORMAL.
    rng = random.Random(settings.seed)
    with timer.stage("experts"):
        for domain in certified.mixed_domains:
            anomalies, normals = _expert_training_set(domain, sample, certified, un_pool, rng)
            logger.info(
                "expert %s: %d anomalous, %d normal training lines",
                domain,
                len(anomalies),
                len(normals),
            )
            head, head_report = training.train_expert(
                encoder,
                states,
                anomalies,
                normals,
                settings=settings,
                seed=settings.seed,
                name=domain,
            )
            heads[f"expert/{domain}"] = head
            reports[f"expert/{domain}"] = head_report

    # III-E: thresholds on the held-out calibration subset.
    with timer.stage("calibration"):
        calibration = _calibrate(sample, certified, heads, states, router_states, routing, settings)

    # Beyond the paper: the calibrated decision for lines of never-seen templates.
    novelty_model = None
    if settings.novelty:
        with timer.stage("novelty"):
            kshot = sample.lines()
            novelty_model = fit_novelty(
                mean_pool(states.get([ln.text for ln in kshot])),
                [ln.event_id for ln in kshot],
                [ln.label for ln in kshot],
                [data.field_values[ln.index] for ln in kshot],
                list(data.categorical_fields),
                min_recall=settings.novel_min_recall,
                min_precision=settings.novel_min_precision,
                seed=settings.seed,
            )

    # The bundle: everything detection needs, nothing it must not run.
    with timer.stage("bundle"):
        save_encoder(encoder, tokenizer, out_dir / "encoder")
        if router_dir:
            save_encoder(router_encoder, r_tokenizer, out_dir / router_dir)
        save_heads(heads, out_dir / "heads.safetensors")
        bundle_io.write_json(out_dir / "settings.json", settings.to_dict())
        bundle_io.write_json(out_dir / "format.json", format_to_json(fmt))
        bundle_io.write_json(out_dir / "templates.json", parser.to_json())
        bundle_io.write_json(out_dir / "kshot.json", sample.to_json())
        bundle_io.write_json(out_dir / "partition.json", partition.to_json())
        if llm_audit:
            # Prompts, raw answers, model, provider and time of every model call (audit).
            bundle_io.write_json(out_dir / "llm_audit.json", {"calls": llm_audit})
        bundle_io.write_json(out_dir / "certification.json", certified.to_json())
        bundle_io.write_json(out_dir / "calibration.json", calibration)
        bundle_io.write_json(out_dir / "routing.json", routing)
        if novelty_model is not None:
            bundle_io.write_json(out_dir / "novelty.json", novelty_model.to_json())
        # The CPU engine's graphs (fp32 and int8), sealed with the rest by the manifest.
        export_onnx(
            out_dir / "onnx",
            tokenizer=tokenizer,
            trunk=trunk,
            heads=heads,
            source=hash_sources(out_dir),
            router_trunk=router_trunk if router_dir else None,
            router_tokenizer=r_tokenizer if router_dir else None,
            router_heads=["gate", "selector"] if router_dir else [],
            max_tokens=settings.max_tokens,
        )
        report = {
            "offline_lines": len(data),
            "templates": len(templates),
            "labeled_lines": sample.labeled_count,
            "domains": {d: k.value for d, k in certified.domains.items()},
            "expert_domains": expert_domains,
            "phase1": phase1_info,
            "training": {name: _as_dict(r) for name, r in reports.items()},
            "novelty": novelty_model.report if novelty_model is not None else None,
            "stages": timer.stages,
        }
        bundle_io.write_json(out_dir / "report.json", report)
        bundle_io.write_manifest(out_dir, {**(provenance or {}), "settings": settings.to_dict()})
    report["stages"] = timer.stages
    return SetupResult(bundle=out_dir, partition=certified, sample=sample, report=report)


# -- stage helpers ---------------------------------------------------------------------------


def make_proposer(settings: Settings) -> Proposer:
    """The partition proposer the settings name, configured from them."""
    if settings.proposer == "llm":
        return llm_proposer_from_settings(settings)
    options: dict[str, Any] = {}
    if settings.proposer == "file":
        options["path"] = settings.partition_file
    elif settings.proposer == "tfidf":
        options["similarity_threshold"] = settings.tfidf_threshold
    return get_proposer(settings.proposer, **options)


def _propose(
    settings: Settings, sample: KShotSample
) -> tuple[Partition, list[dict[str, Any]] | None]:
    """Run the configured proposer; write its proposal to the partition file if asked.

    Returns:
        The partition and, when a model proposed it (now or for the file read), the record
        of its calls for the bundle's audit file.
    """
    proposer = make_proposer(settings)
    # Proposers return a partition already normalised against the sample's EventIDs.
    partition = proposer.propose(sample)
    audit: list[dict[str, Any]] | None = partition.details.pop("llm_audit", None)
    if isinstance(proposer, LLMProposer):
        audit = proposer.client.calls
    if settings.partition_file and settings.proposer != "file":
        write_partition_file(partition, Path(settings.partition_file), sample, audit=audit)
        logger.info("proposal written to %s for review", settings.partition_file)
    return partition, audit


def _train_router(
    data: OfflineData,
    event_ids: Sequence[str],
    certified: CertifiedPartition,
    encoder: Any,
    states: training.StateCache,
    settings: Settings,
    heads: dict[str, Any],
    reports: dict[str, Any],
) -> dict[str, Any]:
    """Gate and selector (III-C) on the distinct offline texts, labelled by their domain.

    Routing labels come from the partition, not from annotation, so every offline line can
    teach the router; identical texts are taken once.
    """
    rng = random.Random(settings.seed)
    domain_of_text: dict[str, str] = {}
    for text, eid in zip(data.texts, event_ids, strict=True):
        domain_of_text.setdefault(text, certified.domain_of(eid))
    expert_texts = sorted(t for t, d in domain_of_text.items() if d != UNIVERSAL_NORMAL)
    un_texts = sorted(t for t, d in domain_of_text.items() if d == UNIVERSAL_NORMAL)
    classes = certified.expert_domains
    routing: dict[str, Any] = {"has_gate": False, "selector_classes": classes}
    if not expert_texts:
        logger.warning(
            "no expert domain survived certification: every line takes the "
            "UNIVERSAL_NORMAL path; more anomaly labels per template would help"
        )
        return routing

    # Expert lines are all kept; UNIVERSAL_NORMAL is subsampled 3:1 (III-C1); both capped.
    cap = settings.router_max_lines
    positives = _subsample(expert_texts, cap // (1 + GATE_NORMAL_RATIO) or 1, rng)
    negatives = _subsample(un_texts, GATE_NORMAL_RATIO * len(positives), rng)
    if settings.routing == "symmetric":
        # No-Gate ablation (paper IV-D): one selector whose classes are UNIVERSAL_NORMAL and
        # the expert domains, on the same lines the gate and selector would see; Eq. 1's
        # class weights take care of the 3:1 imbalance.
        sym_classes = [UNIVERSAL_NORMAL, *classes]
        texts = [*positives, *negatives]
        labels = [sym_classes.index(domain_of_text[t]) for t in texts]
        selector, sel_report = training.train_selector(
            encoder, states, texts, labels, sym_classes, settings=settings, seed=settings.seed
        )
        heads["selector"] = selector
        reports["selector"] = sel_report
        return {"has_gate": False, "symmetric": True, "selector_classes": sym_classes}
    gate_head, gate_report = training.train_gate(
        encoder, states, positives, negatives, settings=settings, seed=settings.seed
    )
    heads["gate"] = gate_head
    reports["gate"] = gate_report
    routing["has_gate"] = True
    routing["gate_training"] = {"expert_lines": len(positives), "normal_lines": len(negatives)}

    if len(classes) > 1:
        labels = [classes.index(domain_of_text[t]) for t in positives]
        selector, sel_report = training.train_selector(
            encoder, states, positives, labels, classes, settings=settings, seed=settings.seed
        )
        heads["selector"] = selector
        reports["selector"] = sel_report
    return routing


def _expert_training_set(
    domain: str,
    sample: KShotSample,
    certified: CertifiedPartition,
    un_pool: Sequence[str],
    rng: random.Random,
) -> tuple[list[str], list[str]]:
    """Phase 2 lines for one mixed domain (III-D2).

    Anomalies: the domain's anomalous K-shot training lines; for UNIVERSAL_NORMAL, every
    EventID's, so that it can catch anomalies the gate misroutes. Normals: the domain's own
    labelled normals first (the template-ambiguous cases an expert must separate), then
    distinct lines of the UNIVERSAL_NORMAL PU-normal pool, up to the paper's cap.
    """
    is_un = domain == UNIVERSAL_NORMAL

    def in_domain(line: LabeledLine) -> bool:
        return is_un or certified.domain_of(line.event_id) == domain

    anomalies = [ln.text for ln in sample.train if ln.label and in_domain(ln)]
    if not anomalies:
        # The domain's anomalies all fell into the calibration split; train on them rather
        # than not at all (its threshold then falls back to the calibration rule's default).
        anomalies = [ln.text for ln in sample.calibration if ln.label and in_domain(ln)]
    own_normals = [
        ln.text
        for ln in sample.train
        if not ln.label and certified.domain_of(ln.event_id) == domain
    ]
    cap = (UN_NORMAL_CAP if is_un else EXPERT_NORMAL_CAP) * max(1, len(anomalies))
    normals = own_normals[:cap]
    taken = set(normals)
    fill = [t for t in un_pool if t not in taken]
    normals += _subsample(fill, cap - len(normals), rng)
    if not normals:
        raise TrainingDataError(
            f"domain {domain} has no normal lines to train on: label some normal lines "
            "(the first token '-' in Loghub formats) in the offline region"
        )
    return anomalies, normals


def _calibrate(
    sample: KShotSample,
    certified: CertifiedPartition,
    heads: dict[str, Any],
    states: training.StateCache,
    router_states: training.StateCache,
    routing: dict[str, Any],
    settings: Settings,
) -> dict[str, Any]:
    """Thresholds per mixed expert and the UNIVERSAL_NORMAL fusion (III-E, Eq. 4)."""
    tie_break: TieBreak = "middle" if settings.threshold_tie_break == "middle" else "highest"
    out: dict[str, Any] = {"experts": {}, "min_recall": settings.min_recall}
    for domain in certified.mixed_domains:
        if domain == UNIVERSAL_NORMAL:
            continue
        lines = [ln for ln in sample.calibration if certified.domain_of(ln.event_id) == domain]
        scores = training.score_texts(heads[f"expert/{domain}"], states, [ln.text for ln in lines])
        result = calibrate_threshold(
            scores,
            np.array([ln.label for ln in lines], dtype=bool),
            min_recall=settings.min_recall,
            tie_break=tie_break,
        )
        out["experts"][domain] = {"threshold": result.threshold, "details": result.to_json()}

    # UNIVERSAL_NORMAL: its own EventIDs' calibration lines plus every expert EventID's
    # anomalous ones, matching the anomaly set it was trained on (III-D2).
    lines = [
        ln
        for ln in sample.calibration
        if ln.label or certified.domain_of(ln.event_id) == UNIVERSAL_NORMAL
    ]
    texts = [ln.text for ln in lines]
    labels = np.array([ln.label for ln in lines], dtype=bool)
    un_scores = training.score_texts(heads[f"expert/{UNIVERSAL_NORMAL}"], states, texts)
    if routing.get("has_gate"):
        gate_scores = training.score_texts(heads["gate"], router_states, texts)
        fusion = calibrate_fusion(
            un_scores, gate_scores, labels, min_recall=settings.min_recall, tie_break=tie_break
        )
        out["universal_normal"] = {
            "weight": fusion.weight,
            "threshold": fusion.threshold.threshold,
            "details": fusion.to_json(),
        }
    else:
        result = calibrate_threshold(
            un_scores, labels, min_recall=settings.min_recall, tie_break=tie_break
        )
        out["universal_normal"] = {
            "weight": 0.0,
            "threshold": result.threshold,
            "details": result.to_json(),
        }
    return out


# -- small utilities -------------------------------------------------------------------------


def _unique(texts: Iterable[str]) -> list[str]:
    """Distinct texts in first-seen order."""
    return list(dict.fromkeys(texts))


def _subsample(items: Sequence[str], n: int, rng: random.Random) -> list[str]:
    """At most ``n`` items, uniformly without replacement, in their original order."""
    if n >= len(items):
        return list(items)
    if n <= 0:
        return []
    keep = sorted(rng.sample(range(len(items)), n))
    return [items[i] for i in keep]


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _fresh_dir(path: Path) -> Path:
    """Create the bundle directory; an existing fame bundle there is replaced."""
    if path.exists():
        if not path.is_dir():
            raise TrainingDataError(f"--out {path} exists and is not a directory; pick another")
        if any(path.iterdir()) and not (path / bundle_io.MANIFEST).exists():
            raise TrainingDataError(
                f"--out {path} is a non-empty directory that is not a fame bundle; "
                "pick an empty or new directory"
            )
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def _as_dict(obj: Any) -> Any:
    """Dataclass reports as plain dicts for JSON."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    return obj
