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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fame import bundle as bundle_io
from fame.calibration import fuse, to_calibrated_score
from fame.certification import CertifiedPartition, DomainKind
from fame.errors import BundleError
from fame.logs import LogFormat, LogRecord, ReadStats, read_records
from fame.logs.formats import format_from_json
from fame.models.encoder import load_saved_encoder, tokenize
from fame.models.heads import load_heads
from fame.models.trunk import Trunk
from fame.novelty import NoveltyModel, pooled_from_batch
from fame.parsing import TemplateParser
from fame.partition import UNIVERSAL_NORMAL
from fame.result import Detection, Route

if TYPE_CHECKING:
    from fame.triage import Triage

logger = logging.getLogger(__name__)

GATE_THRESHOLD = 0.5  # paper III-C1: the routing threshold is fixed at 0.5
SUB_BATCH = 64  # texts per trunk pass; sorted by length so padding stays small
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
    gate: float
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
        tokenizer: Tokenizer of the trunk.
        trunk: Shared frozen lower layers of the expert encoder.
        router_trunk: The router's trunk (the same object when the router shares it).
        router_tokenizer: Its tokenizer.
        heads: Gate, selector and expert heads by name.
        max_tokens: Token limit per line.
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
        tokenizer: Any,
        trunk: Trunk,
        router_trunk: Trunk,
        router_tokenizer: Any,
        heads: dict[str, Any],
        max_tokens: int,
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
        self.tokenizer = tokenizer
        self.trunk = trunk
        self.router_trunk = router_trunk
        self.router_tokenizer = router_tokenizer
        self.heads = heads
        self.max_tokens = max_tokens
        self.cache_size = cache_size
        self.route_known_templates = route_known_templates
        self.novelty = novelty
        self.triage = triage
        self._cache: OrderedDict[_Key, _Verdict] = OrderedDict()
        self.cache_hits = 0
        self.cache_misses = 0

    # -- loading -----------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        root: str | Path,
        *,
        cache_size: int = 100_000,
        route_known_templates: bool = True,
        novelty: bool = True,
        triage: Triage | None = None,
    ) -> Detector:
        """Load a bundle written by ``fame setup``.

        Args:
            root: The bundle directory.
            cache_size: Result cache size (0 = off).
            route_known_templates: See the class.
            novelty: Use the bundle's novelty path when it has one.
            triage: Per-template verdicts to apply (see :mod:`fame.triage`).

        Raises:
            BundleError: the bundle is missing, incomplete, corrupt or of another version.
        """
        path = Path(root)
        bundle_io.check_bundle(path)
        settings = bundle_io.read_json(path / "settings.json")
        fmt = format_from_json(bundle_io.read_json(path / "format.json"))
        parser = TemplateParser.from_json(bundle_io.read_json(path / "templates.json"))
        partition = CertifiedPartition.from_json(bundle_io.read_json(path / "certification.json"))
        calibration = bundle_io.read_json(path / "calibration.json")
        routing = bundle_io.read_json(path / "routing.json")

        encoder, tokenizer = load_saved_encoder(path / "encoder")
        n_frozen = int(routing["n_frozen_layers"])
        trunk = Trunk(encoder, n_frozen)
        configs = {}
        if routing.get("router_encoder_dir"):
            r_encoder, r_tokenizer = load_saved_encoder(path / routing["router_encoder_dir"])
            router_trunk = Trunk(r_encoder, int(routing["router_n_frozen_layers"]))
            # Router heads were cut from the router's own encoder, not the experts'.
            configs = {GATE_HEAD: r_encoder.config, SELECTOR_HEAD: r_encoder.config}
        else:
            router_trunk, r_tokenizer = trunk, tokenizer
        heads = load_heads(path / "heads.safetensors", encoder.config, configs=configs)
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
        novelty_model = None
        if novelty and (path / "novelty.json").is_file():
            novelty_model = NoveltyModel.from_json(bundle_io.read_json(path / "novelty.json"))
            if not novelty_model.enabled:
                logger.info("the bundle's novelty path is disabled (see its report)")
                novelty_model = None
        return cls(
            root=path,
            fmt=fmt,
            parser=parser,
            partition=partition,
            calibration=calibration,
            routing=routing,
            tokenizer=tokenizer,
            trunk=trunk,
            router_trunk=router_trunk,
            router_tokenizer=r_tokenizer,
            heads=heads,
            max_tokens=int(settings["max_tokens"]),
            cache_size=cache_size,
            route_known_templates=route_known_templates,
            novelty=novelty_model,
            triage=triage,
        )

    # -- public API --------------------------------------------------------------------------

    def detect_records(
        self, records: Iterable[LogRecord], *, batch_size: int = 256
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

    def detect_lines(self, lines: Iterable[str], *, batch_size: int = 256) -> Iterator[Detection]:
        """Score raw log lines (in the bundle's format), one result per line, in order."""
        return self.detect_file(_LineStream(lines), batch_size=batch_size)

    def detect_file(
        self,
        source: Any,
        *,
        batch_size: int = 256,
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

    @torch.inference_mode()
    def _score_unique(self, keys: list[_Key]) -> list[_Verdict]:
        order = sorted(range(len(keys)), key=lambda i: len(keys[i][0]))
        results: list[_Verdict | None] = [None] * len(keys)
        for start in range(0, len(order), SUB_BATCH):
            idx = order[start : start + SUB_BATCH]
            chunk = [keys[i] for i in idx]
            for i, verdict in zip(idx, self._score_chunk(chunk), strict=True):
                results[i] = verdict
        return [r for r in results if r is not None]

    def _hidden(self, trunk: Trunk, tokenizer: Any, texts: list[str]) -> tuple[Any, Any]:
        enc = tokenize(tokenizer, texts, self.max_tokens)
        mask = enc["attention_mask"]
        return trunk(enc["input_ids"], mask), mask

    def _score_chunk(self, keys: list[_Key]) -> list[_Verdict]:
        texts = [key[0] for key in keys]
        hidden, mask = self._hidden(self.trunk, self.tokenizer, texts)
        if self.router_trunk is self.trunk:
            r_hidden, r_mask = hidden, mask
        else:
            r_hidden, r_mask = self._hidden(self.router_trunk, self.router_tokenizer, texts)

        # Gate: probability that a line belongs to any expert domain (III-C1).
        n = len(texts)
        if self.routing.get("has_gate"):
            gate = self.heads[GATE_HEAD].score(r_hidden, r_mask).reshape(-1).numpy()
        else:
            gate = np.zeros(n, dtype=np.float32)
        routed = np.flatnonzero(
            (gate >= GATE_THRESHOLD) & np.array([key[1] is None for key in keys])
        )

        # Selector: which expert domain (III-C2); trivial when there is only one.
        classes: list[str] = list(self.routing.get("selector_classes", []))
        chosen: dict[int, str] = {}
        if len(routed) and len(classes) == 1:
            chosen = {int(i): classes[0] for i in routed}
        elif len(routed):
            probs = self.heads[SELECTOR_HEAD].score(r_hidden[routed], r_mask[routed])
            best = probs.argmax(dim=-1).numpy()
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

        for domain, rows in by_domain.items():
            scores = self.heads[expert_head_name(domain)].score(hidden[rows], mask[rows])
            raw = scores.reshape(-1).numpy().astype(np.float64)
            if domain == UNIVERSAL_NORMAL:
                un = self.calibration["universal_normal"]
                fused = fuse(raw, gate[rows].astype(np.float64), float(un["weight"]))
                threshold = float(un["threshold"])
                for j, i in enumerate(rows):
                    verdicts[i] = self._verdict(
                        float(fused[j]), threshold, float(gate[i]), Route.UNIVERSAL_NORMAL, None
                    )
            else:
                threshold = float(self.calibration["experts"][domain]["threshold"])
                for j, i in enumerate(rows):
                    verdicts[i] = self._verdict(
                        float(raw[j]), threshold, float(gate[i]), Route.EXPERT, domain
                    )
        novel = [i for i in range(n) if keys[i][2] is not None]
        if novel and self.novelty is not None:
            self._novelty_verdicts(self.novelty, novel, keys, hidden, mask, gate, verdicts)
        return [v for v in verdicts if v is not None]

    def _novelty_verdicts(
        self,
        model: NoveltyModel,
        rows: list[int],
        keys: list[_Key],
        hidden: Any,
        mask: Any,
        gate: Any,
        verdicts: list[_Verdict | None],
    ) -> None:
        """Decide lines of never-seen templates by the calibrated novelty path."""
        embeddings = pooled_from_batch(hidden[rows], mask[rows])
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

    @staticmethod
    def _verdict(
        raw: float, threshold: float, gate: float, route: Route, domain: str | None
    ) -> _Verdict:
        score = float(to_calibrated_score(raw, threshold))
        return _Verdict(raw >= threshold, score, raw, gate, route, domain)


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
