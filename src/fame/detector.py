"""Online detection (paper III-F, Eq. 5): every line gets a verdict, a score and a route.

The flow per batch of lines: match each line's content against the frozen templates (for
its EventID only; routing is by text, as in the paper), look up the model-visible text in
a bounded result cache, and score the distinct uncached texts together: one trunk pass
shared by every head, then the gate, the selector for lines the gate sends to an expert
domain, and the one expert (or UNIVERSAL_NORMAL) each line needs. Results come out one per
input line, in input order.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fame import bundle as bundle_io
from fame.calibration import fuse, to_calibrated_score
from fame.certification import CertifiedPartition, DomainKind
from fame.config import DEFAULT_ENGINE, DEFAULT_PRECISION, ENGINES, Settings
from fame.errors import BundleError, ConfigError
from fame.logs import LogFormat, LogRecord, ReadStats, read_records
from fame.logs.formats import format_from_json
from fame.models.encoder import load_saved_encoder
from fame.models.export import find_or_export
from fame.models.heads import load_heads
from fame.models.inference import (
    Encoded,
    InferenceBackend,
    OnnxBackend,
    PerStageTorchBackend,
    TorchBackend,
)
from fame.models.trunk import Trunk
from fame.novelty import NoveltyModel
from fame.parsing import TemplateParser
from fame.partition import UNIVERSAL_NORMAL
from fame.result import Detection, Route

if TYPE_CHECKING:
    from fame.triage import Triage

logger = logging.getLogger(__name__)

GATE_THRESHOLD = 0.5  # paper III-C1: the routing threshold is fixed at 0.5
SUB_BATCH = 64  # most texts per trunk pass; sorted by length so padding stays small
CHUNK_CHARS = 64 * 160  # and at most this many characters of padded text per pass
GATE_HEAD = "gate"
SELECTOR_HEAD = "selector"


def expert_head_name(domain: str) -> str:
    """Name of a domain expert's head in the bundle."""
    return f"expert/{domain}"


# A line's cache key: its model-visible text; when known templates are routed by the
# certified partition, the domain that routing fixes (None: the gate and selector decide);
# for a line of a never-seen template decided by the novelty path, its categorical field
# values (None otherwise).
_Key = tuple[str, str | None, tuple[str, ...] | None]


@dataclass(frozen=True, slots=True)
class _Verdict:
    """What the models decide for one model-visible text (the cached part of a result)."""

    anomaly: bool
    score: float
    raw_score: float
    gate: float | None
    route: Route
    domain: str | None


class Detector:
    """A loaded bundle that scores log lines. Build it with :meth:`load`.

    Args:
        root: The bundle directory it was loaded from.
        fmt: The log format the bundle was trained on.
        parser: Frozen templates.
        partition: The certified partition.
        calibration: Thresholds per mixed domain and the UNIVERSAL_NORMAL fusion.
        routing: Gate and selector layout (``has_gate``, ``selector_classes``).
        backend: Runs the trunk and the heads (see :mod:`fame.models.inference`).
        cache_size: Size of the result cache (0 = off).
        route_known_templates: Route a line that matches a frozen template to that template's
            certified domain instead of asking the gate and selector; the learned router then
            serves only never-seen templates.
        novelty: The calibrated decision for lines of never-seen templates (None: the
            paper's routing decides them).
        triage: Per-template verdicts for never-seen templates (LLM or operator), applied
            on top of the novelty path once a template has one.
    """

    def __init__(
        self,
        *,
        root: Path,
        fmt: LogFormat,
        parser: TemplateParser,
        partition: CertifiedPartition,
        calibration: dict[str, Any],
        routing: dict[str, Any],
        backend: InferenceBackend,
        cache_size: int = 100_000,
        route_known_templates: bool = True,
        novelty: NoveltyModel | None = None,
        triage: Triage | None = None,
    ) -> None:
        self.root = root
        self.format = fmt
        self.parser = parser
        self.partition = partition
        self.calibration = calibration
        self.routing = routing
        self.backend = backend
        self.cache_size = cache_size
        self.route_known_templates = route_known_templates
        self.novelty = novelty
        self.triage = triage
        self._cache: OrderedDict[_Key, _Verdict] = OrderedDict()
        self.cache_hits = 0
        self.cache_misses = 0
        self._pool = (
            ThreadPoolExecutor(max_workers=backend.workers, thread_name_prefix="fame-score")
            if backend.workers > 1
            else None
        )

    # -- loading -----------------------------------------------------------------------------

    @classmethod
    def from_settings(
        cls, root: str | Path, settings: Settings, *, triage: Triage | None = None
    ) -> Detector:
        """Load a bundle with the detection settings of ``settings`` (CLI, service, API)."""
        return cls.load(
            root,
            cache_size=settings.cache_size,
            route_known_templates=settings.route_known_templates,
            novelty=settings.novelty,
            triage=triage,
            engine=settings.engine,
            precision=settings.precision,
            threads=settings.threads,
            onnx_cache_dir=settings.onnx_cache_dir,
        )

    @classmethod
    def load(
        cls,
        root: str | Path,
        *,
        cache_size: int = 100_000,
        route_known_templates: bool = True,
        novelty: bool = True,
        triage: Triage | None = None,
        engine: str = DEFAULT_ENGINE,
        precision: str = DEFAULT_PRECISION,
        threads: int = 0,
        onnx_cache_dir: str | None = None,
    ) -> Detector:
        """Load a bundle written by ``fame setup``.

        Args:
            root: The bundle directory.
            cache_size: Result cache size (0 = off).
            route_known_templates: See the class.
            novelty: Use the bundle's novelty path when it has one.
            triage: Per-template verdicts to apply (see :mod:`fame.triage`).
            engine: ``onnx`` (onnxruntime), ``torch`` or ``reference`` (the paper's
                architecture: a full model per stage, one line at a time; for comparisons).
            precision: ``int8`` or ``fp32`` (the onnx engine; the others run fp32).
            threads: CPU threads of the onnx engine (0: one per core).
            onnx_cache_dir: Where to keep the ONNX export of a bundle that carries none.

        Raises:
            BundleError: the bundle is missing, incomplete, corrupt or of another version.
            ConfigError: an unknown engine or precision.
        """
        if engine not in ENGINES:
            raise ConfigError(f"engine {engine!r}; expected one of {', '.join(ENGINES)}")
        path = Path(root)
        manifest = bundle_io.check_bundle(path)
        settings = bundle_io.read_json(path / "settings.json")
        fmt = format_from_json(bundle_io.read_json(path / "format.json"))
        parser = TemplateParser.from_json(bundle_io.read_json(path / "templates.json"))
        partition = CertifiedPartition.from_json(bundle_io.read_json(path / "certification.json"))
        calibration = bundle_io.read_json(path / "calibration.json")
        routing = bundle_io.read_json(path / "routing.json")
        max_tokens = int(settings["max_tokens"])

        encoder, tokenizer = load_saved_encoder(path / "encoder")
        n_frozen = int(routing["n_frozen_layers"])
        trunk = Trunk(encoder, n_frozen)
        configs = {}
        router_trunk, r_tokenizer = None, None
        if routing.get("router_encoder_dir"):
            r_encoder, r_tokenizer = load_saved_encoder(path / routing["router_encoder_dir"])
            router_trunk = Trunk(r_encoder, int(routing["router_n_frozen_layers"]))
            # Router heads were cut from the router's own encoder, not the experts'.
            configs = {GATE_HEAD: r_encoder.config, SELECTOR_HEAD: r_encoder.config}
        heads = load_heads(path / "heads.safetensors", encoder.config, configs=configs)
        del encoder
        heads_needed = [expert_head_name(d) for d in partition.mixed_domains]
        if routing.get("has_gate"):
            heads_needed.append(GATE_HEAD)
        if len(routing.get("selector_classes", [])) > 1:
            heads_needed.append(SELECTOR_HEAD)
        missing = [h for h in heads_needed if h not in heads]
        if missing:
            raise BundleError(
                f"bundle {path} lacks model heads {', '.join(missing)}; rebuild it with "
                "'fame setup'"
            )
        for head in heads.values():
            head.eval()
        models: dict[str, Any] = {
            "tokenizer": tokenizer,
            "trunk": trunk,
            "heads": heads,
            "max_tokens": max_tokens,
            "router_trunk": router_trunk,
            "router_tokenizer": r_tokenizer,
            "router_heads": list(configs),
        }
        backend: InferenceBackend
        if engine == "onnx":
            folder = find_or_export(path, manifest, cache_dir=onnx_cache_dir, **models)
            backend = OnnxBackend(
                folder,
                tokenizer=tokenizer,
                max_tokens=max_tokens,
                precision=precision,
                threads=threads,
                router_tokenizer=r_tokenizer,
            )
        elif engine == "torch":
            backend = TorchBackend(**models)
        else:
            backend = PerStageTorchBackend(**models)
        novelty_model = None
        if novelty and (path / "novelty.json").is_file():
            novelty_model = NoveltyModel.from_json(bundle_io.read_json(path / "novelty.json"))
            if not novelty_model.enabled:
                logger.info("the bundle's novelty path is disabled (see its report)")
                novelty_model = None
        logger.info("detection engine: %s", backend.name)
        return cls(
            root=path,
            fmt=fmt,
            parser=parser,
            partition=partition,
            calibration=calibration,
            routing=routing,
            backend=backend,
            cache_size=cache_size,
            route_known_templates=route_known_templates,
            novelty=novelty_model,
            triage=triage,
        )

    # -- public API --------------------------------------------------------------------------

    def detect_records(
        self, records: Iterable[LogRecord], *, batch_size: int = 1024
    ) -> Iterator[Detection]:
        """Score records, yielding exactly one :class:`Detection` per record, in order."""
        batch: list[LogRecord] = []
        for record in records:
            batch.append(record)
            if len(batch) >= batch_size:
                yield from self._detect_batch(batch)
                batch = []
        if batch:
            yield from self._detect_batch(batch)

    def detect_lines(self, lines: Iterable[str], *, batch_size: int = 1024) -> Iterator[Detection]:
        """Score raw log lines (in the bundle's format), one result per line, in order."""
        return self.detect_file(_LineStream(lines), batch_size=batch_size)

    def detect_file(
        self,
        source: Any,
        *,
        batch_size: int = 1024,
        stats: ReadStats | None = None,
    ) -> Iterator[Detection]:
        """Stream a file path, ``"-"`` for stdin, or a binary file object through detection."""
        records = read_records(source, self.format, stats=stats)
        return self.detect_records(records, batch_size=batch_size)

    def detect_batch(self, records: Sequence[LogRecord]) -> list[Detection]:
        """Score one batch of records as a whole (the unit of :meth:`detect_records`).

        Args:
            records: The records; each keeps its own ``line_no`` in the results.

        Returns:
            Exactly one :class:`Detection` per record, in order.
        """
        return self._detect_batch(records)

    # -- internals ---------------------------------------------------------------------------

    def _detect_batch(self, batch: Sequence[LogRecord]) -> list[Detection]:
        templates = [self.parser.match(r.content) for r in batch]
        keys: list[_Key] = []
        for record, template in zip(batch, templates, strict=True):
            forced = None
            if self.route_known_templates and template is not None:
                forced = self.partition.domain_of(template.event_id)
            novel_fields = None
            if template is None and self.novelty is not None:
                novel_fields = tuple(
                    record.fields.get(f, "") for f in self.format.categorical_fields
                )
            keys.append((record.text, forced, novel_fields))
        out = []
        for record, template, verdict in zip(batch, templates, self._verdicts(keys), strict=True):
            source = None
            if template is None and self.triage is not None:
                # Per-template verdicts change over time, so they are applied after the cache.
                verdict, source = _apply_triage(self.triage, record, verdict)
            out.append(
                Detection(
                    line=record.line_no,
                    anomaly=verdict.anomaly,
                    score=verdict.score,
                    domain=verdict.domain,
                    route=verdict.route,
                    event_id=template.event_id if template else None,
                    template=template.template if template else None,
                    raw_score=verdict.raw_score,
                    gate=verdict.gate,
                    malformed=record.malformed,
                    novel=template is None,
                    verdict_source=source,
                )
            )
        return out

    def _verdicts(self, keys: Sequence[_Key]) -> list[_Verdict]:
        """Verdicts for a batch, scoring each distinct uncached (text, route) once."""
        known: dict[_Key, _Verdict | None] = {}
        todo: list[_Key] = []
        for key in keys:
            if key in known:
                continue
            cached = self._cache.get(key) if self.cache_size else None
            if cached is not None:
                self._cache.move_to_end(key)
                self.cache_hits += 1
            else:
                todo.append(key)
            known[key] = cached
        self.cache_misses += len(todo)
        if todo:
            for key, verdict in zip(todo, self._score_unique(todo), strict=True):
                known[key] = verdict
                if self.cache_size:
                    self._cache[key] = verdict
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return [v for v in (known[k] for k in keys) if v is not None]

    def _score_unique(self, keys: list[_Key]) -> list[_Verdict]:
        """Scores distinct keys in length-sorted chunks, in parallel where the backend can."""
        chunks = _length_chunks([key[0] for key in keys], self.backend.workers)
        parts: Iterable[list[_Verdict]]
        if self._pool is not None and len(chunks) > 1:
            parts = self._pool.map(lambda idx: self._score_chunk([keys[i] for i in idx]), chunks)
        else:
            parts = (self._score_chunk([keys[i] for i in idx]) for idx in chunks)
        results: list[_Verdict | None] = [None] * len(keys)
        for idx, verdicts in zip(chunks, parts, strict=True):
            for i, verdict in zip(idx, verdicts, strict=True):
                results[i] = verdict
        return [r for r in results if r is not None]

    def _score_chunk(self, keys: list[_Key]) -> list[_Verdict]:
        texts = [key[0] for key in keys]
        encoded = self.backend.encode(texts)

        # Gate: probability that a line belongs to any expert domain (III-C1). A line whose
        # known template fixes its domain needs it only where the decision uses it: the
        # pure-anomaly score and a UNIVERSAL_NORMAL fusion with a non-zero weight.
        n = len(texts)
        un_weight = float(self.calibration["universal_normal"]["weight"])
        gate = np.full(n, np.nan)
        classes: list[str] = list(self.routing.get("selector_classes", []))
        chosen: dict[int, str] = {}
        routed = np.zeros(0, dtype=np.int64)
        needed = [i for i in range(n) if self._needs_gate(keys[i][1], un_weight)]
        if self.routing.get("symmetric"):
            # No-Gate ablation: one selector over UNIVERSAL_NORMAL (class 0) and the expert
            # domains routes each line; 1 - P(UNIVERSAL_NORMAL) stands in for the gate score.
            if needed:
                probs = self.backend.score(SELECTOR_HEAD, encoded, needed)
                gate[needed] = 1.0 - probs[:, 0]
                best = probs.argmax(axis=-1)
                chosen = {
                    i: classes[int(c)]
                    for i, c in zip(needed, best, strict=True)
                    if keys[i][1] is None
                }
        elif self.routing.get("has_gate"):
            if needed:
                gate[needed] = self.backend.score(GATE_HEAD, encoded, needed).reshape(-1)
            routed = np.flatnonzero(
                (np.nan_to_num(gate) >= GATE_THRESHOLD) & np.array([key[1] is None for key in keys])
            )
        else:
            gate[:] = 0.0

        # Selector: which expert domain (III-C2); trivial when there is only one.
        if len(routed) and len(classes) == 1:
            chosen = {int(i): classes[0] for i in routed}
        elif len(routed):
            probs = self.backend.score(SELECTOR_HEAD, encoded, routed.tolist())
            best = probs.argmax(axis=-1)
            chosen = {int(i): classes[int(c)] for i, c in zip(routed, best, strict=True)}

        verdicts: list[_Verdict | None] = [None] * n
        by_domain: dict[str, list[int]] = {}
        for i in range(n):
            forced = keys[i][1]
            domain = forced if forced is not None else chosen.get(i, UNIVERSAL_NORMAL)
            if domain != UNIVERSAL_NORMAL and self.partition.kind_of(domain) is (
                DomainKind.PURE_ANOMALY
            ):
                # Pure-anomaly domain: routing alone decides (Eq. 5, second case). The score is
                # the gate's probability, at least 0.5 (a known template routed here by the
                # partition may have a low gate score, but it is still a decided anomaly).
                g = float(gate[i])
                verdicts[i] = _Verdict(True, max(g, 0.5), g, g, Route.PURE_ANOMALY, domain)
            else:
                by_domain.setdefault(domain, []).append(i)

        for domain, all_rows in by_domain.items():
            rows = all_rows
            if self.novelty is not None:
                # The novelty path decides never-seen templates; of the routing it keeps only
                # the domain's name, so their expert scores would be thrown away.
                rows = [i for i in all_rows if keys[i][2] is None]
                named = None if domain == UNIVERSAL_NORMAL else domain
                for i in all_rows:
                    if keys[i][2] is not None:
                        verdicts[i] = _Verdict(False, 0.0, 0.0, None, Route.NOVEL, named)
                if not rows:
                    continue
            raw = self.backend.score(expert_head_name(domain), encoded, rows).reshape(-1)
            if domain == UNIVERSAL_NORMAL:
                un = self.calibration["universal_normal"]
                fused = fuse(raw, np.nan_to_num(gate[rows]), un_weight)
                threshold = float(un["threshold"])
                for j, i in enumerate(rows):
                    verdicts[i] = self._verdict(
                        float(fused[j]), threshold, _opt(gate[i]), Route.UNIVERSAL_NORMAL, None
                    )
            else:
                threshold = float(self.calibration["experts"][domain]["threshold"])
                for j, i in enumerate(rows):
                    verdicts[i] = self._verdict(
                        float(raw[j]), threshold, _opt(gate[i]), Route.EXPERT, domain
                    )
        novel = [i for i in range(n) if keys[i][2] is not None]
        if novel and self.novelty is not None:
            self._novelty_verdicts(self.novelty, novel, keys, encoded, gate, verdicts)
        return [v for v in verdicts if v is not None]

    def _novelty_verdicts(
        self,
        model: NoveltyModel,
        rows: list[int],
        keys: list[_Key],
        encoded: Encoded,
        gate: Any,
        verdicts: list[_Verdict | None],
    ) -> None:
        """Decide lines of never-seen templates by the calibrated novelty path."""
        embeddings = self.backend.pooled(encoded, rows)
        fields = [keys[i][2] or () for i in rows]
        probabilities = model.probability(embeddings, fields)
        nearest = model.nearest(embeddings, anomalous_only=True)
        threshold = model.threshold
        for j, i in enumerate(rows):
            p = float(probabilities[j])
            routed = verdicts[i]
            domain = None
            if p >= threshold:
                # Name the failure domain: where the router sent the line, else the domain of
                # the nearest template with anomalous K-shot lines.
                if routed is not None and routed.domain is not None:
                    domain = routed.domain
                elif nearest[j] is not None:
                    candidate = self.partition.domain_of(nearest[j] or "")
                    domain = None if candidate == UNIVERSAL_NORMAL else candidate
            verdicts[i] = self._verdict(p, threshold, float(gate[i]), Route.NOVEL, domain)

    def _needs_gate(self, forced: str | None, un_weight: float) -> bool:
        if forced is None:
            return True  # the gate routes the line
        if forced == UNIVERSAL_NORMAL:
            return un_weight != 0.0
        return self.partition.kind_of(forced) is DomainKind.PURE_ANOMALY

    @staticmethod
    def _verdict(
        raw: float, threshold: float, gate: float | None, route: Route, domain: str | None
    ) -> _Verdict:
        score = float(to_calibrated_score(raw, threshold))
        return _Verdict(raw >= threshold, score, raw, gate, route, domain)


def _opt(value: float) -> float | None:
    """A gate value, or None where the gate was not consulted (NaN)."""
    return None if np.isnan(value) else float(value)


def _length_chunks(texts: Sequence[str], workers: int = 1) -> list[list[int]]:
    """Indices of ``texts`` sorted by length and cut into chunks of bounded padded size.

    A chunk holds at most :data:`SUB_BATCH` texts and, padded to its longest, at most
    :data:`CHUNK_CHARS` characters, so a few long lines do not pad many short ones; a
    small batch is cut into at least ``workers`` chunks (of 8 texts or more) so that every
    worker gets a share.
    """
    rows = min(SUB_BATCH, max(8, -(-len(texts) // max(workers, 1))))
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    chunks: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = max(len(texts[i]), 1)
        if current and (len(current) >= rows or (len(current) + 1) * longest > CHUNK_CHARS):
            chunks.append(current)
            current = []
        current.append(i)
    if current:
        chunks.append(current)
    return chunks


def _apply_triage(
    triage: Triage, record: LogRecord, verdict: _Verdict
) -> tuple[_Verdict, str | None]:
    """Override a novel line's verdict by its template's triage verdict, if there is one."""
    known = triage.verdict_for(record.content, record.text)
    if known is None:
        return verdict, None
    if known.anomalous:
        domain = known.domain or verdict.domain
        score = max(verdict.score, 0.5)
    else:
        domain, score = None, min(verdict.score, 0.49)
    return (
        _Verdict(known.anomalous, score, verdict.raw_score, verdict.gate, Route.TRIAGE, domain),
        known.source,
    )


class _LineStream:
    """Adapts an iterable of text lines to the binary ``readline`` interface of the reader.

    Lines are encoded lazily, so a generator of lines streams without being held in memory.
    """

    def __init__(self, lines: Iterable[str]) -> None:
        self._lines = iter(lines)
        self._pending = b""

    def readline(self, limit: int = -1) -> bytes:
        """The next line as bytes with its newline, at most ``limit`` bytes at a time."""
        if not self._pending:
            line = next(self._lines, None)
            if line is None:
                return b""
            self._pending = line.rstrip("\r\n").encode("utf-8", errors="replace") + b"\n"
        if limit is None or limit < 0 or limit >= len(self._pending):
            out, self._pending = self._pending, b""
        else:
            out, self._pending = self._pending[:limit], self._pending[limit:]
        return out
