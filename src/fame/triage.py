"""Per-template verdicts for templates never seen offline, from an LLM or an operator.

Beyond the paper. When a line matches no frozen template, an online Drain parser (separate
from the frozen one) gives it a *new template* id (``N<n>``). The first time a new template
appears, :class:`Triage` queues one question to the configured LLM provider: is this template
normal, or anomalous and in which failure domain (an existing one, or a new name)? The answer
is cached per template and applied to every later line of it. Until it arrives, the line is
decided by the calibrated novelty path (:mod:`fame.novelty`): the detector never waits for
the model.

- Calls run on one background thread, rate-limited (``calls_per_minute``) and budgeted
  (``budget`` calls per process); a slow, failing or missing model only means lines stay on
  the novelty path.
- Verdicts carry provenance (provider, model, time, seconds, the answer) and are kept with the
  online parser in a JSON state file, saved after every verdict, so a restart neither asks
  again nor renumbers templates.
- An operator can confirm or override a verdict (``fame triage set``); confirmed verdicts
  become labels of matching unlabelled lines for the next setup
  (``fame setup --triage-labels STATE``).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fame.errors import InputError
from fame.llm.cache import RecordingClient
from fame.llm.providers import LLMError, Message, model_label
from fame.llm.redaction import Redactor
from fame.parsing import TemplateParser
from fame.partition.llm import extract_json, normalise_name

if TYPE_CHECKING:
    from fame.certification import CertifiedPartition
    from fame.sampling import KShotSample

logger = logging.getLogger(__name__)

TRIAGE_FORMAT = "fame-triage/1"
VERDICTS = ("normal", "anomalous")

TRIAGE_SYSTEM = (
    "You are an expert operator of large computer systems. You judge whether a log message "
    "template reports a failure. Answer with JSON only."
)


@dataclass
class TemplateVerdict:
    """The verdict on one new template.

    Attributes:
        template_id: The online template id (``N<n>``).
        template: Its template text when the verdict was given.
        anomalous: True when lines of this template are anomalies.
        domain: The failure domain (existing or proposed) for anomalous templates.
        source: ``"llm"`` or ``"operator"``.
        confirmed: An operator confirmed or set it (it then becomes a label for setup).
        provider: The LLM provider, for ``source="llm"``.
        model: The LLM model, for ``source="llm"``.
        time: When it was given (ISO 8601, UTC).
        seconds: Wall time of the LLM call.
        reason: The model's short reason, if any.
        example: The line that triggered the question (as the model saw it).
    """

    template_id: str
    template: str
    anomalous: bool
    domain: str | None
    source: str
    confirmed: bool = False
    provider: str | None = None
    model: str | None = None
    time: str = ""
    seconds: float = 0.0
    reason: str = ""
    example: str = ""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TemplateVerdict:
        """Inverse of :func:`dataclasses.asdict`."""
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class TriageContext:
    """What the model is told about the detector: its domains and representative lines.

    Attributes:
        domains: Failure-domain name -> up to two representative anomalous lines.
        normal_examples: A few representative normal lines.
    """

    domains: dict[str, list[str]] = field(default_factory=dict)
    normal_examples: list[str] = field(default_factory=list)


def build_prompt(
    context: TriageContext, template: str, example: str, redact: Callable[[str], str]
) -> list[Message]:
    """The chat messages asking for one template's verdict."""
    lines = ["Known failure domains of this system, each with example anomalous lines:"]
    for name, examples in context.domains.items():
        shown = " || ".join(redact(e)[:200] for e in examples[:2])
        lines.append(f"- {name}: {shown}")
    if context.normal_examples:
        lines.append("Examples of normal lines:")
        lines += [f"- {redact(e)[:200]}" for e in context.normal_examples[:5]]
    lines += [
        "",
        "A new message template appeared that was never seen before:",
        f"template: {redact(template)[:300]}",
        f"example line: {redact(example)[:300]}",
        "",
        "Is this template a failure (anomalous) or normal operation? If anomalous, name the "
        "failure domain: one of the known names above if it fits, otherwise a new "
        "UPPER_SNAKE_CASE name for its mechanism.",
        'Answer as JSON: {"verdict": "normal" or "anomalous", "domain": "NAME or empty", '
        '"reason": "a few words"}',
    ]
    return [Message("system", TRIAGE_SYSTEM), Message("user", "\n".join(lines))]


def verdict_schema() -> dict[str, Any]:
    """JSON schema of a triage answer."""
    return {
        "type": "object",
        "properties": {
            "verdict": {"type": "string", "enum": list(VERDICTS)},
            "domain": {"type": "string", "maxLength": 60},
            "reason": {"type": "string", "maxLength": 200},
        },
        "required": ["verdict", "domain", "reason"],
    }


def parse_verdict(text: str) -> tuple[bool, str | None, str]:
    """(anomalous, domain, reason) from a model answer.

    Raises:
        ValueError: If the answer is not a usable verdict.
    """
    data = extract_json(text)
    if not isinstance(data, dict):
        raise ValueError("the answer is not a JSON object")
    verdict = str(data.get("verdict", "")).strip().lower()
    if verdict not in VERDICTS:
        raise ValueError(f"verdict {verdict!r} is neither 'normal' nor 'anomalous'")
    anomalous = verdict == "anomalous"
    domain = normalise_name(str(data.get("domain") or "")) or None
    if not anomalous or domain in {"NORMAL", "UNIVERSAL_NORMAL", "NONE"}:
        domain = None
    return anomalous, domain, str(data.get("reason") or "")[:200]


class RateLimit:
    """At most ``per_minute`` calls in any 60-second window, and ``budget`` calls in all.

    Args:
        per_minute: Calls per minute (0: unlimited).
        budget: Calls per process (0: unlimited).
        clock: Time source (seconds).
    """

    def __init__(
        self, per_minute: int, budget: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.per_minute = per_minute
        self.budget = budget
        self.clock = clock
        self.calls: list[float] = []
        self.total = 0

    @property
    def exhausted(self) -> bool:
        """The budget is spent."""
        return bool(self.budget) and self.total >= self.budget

    def wait_time(self) -> float:
        """Seconds until the next call is allowed (0: now)."""
        if not self.per_minute:
            return 0.0
        now = self.clock()
        self.calls = [t for t in self.calls if now - t < 60.0]
        if len(self.calls) < self.per_minute:
            return 0.0
        return 60.0 - (now - self.calls[0])

    def record(self) -> None:
        """Count one call."""
        self.calls.append(self.clock())
        self.total += 1


class TriageState:
    """The persistent part of triage: the online parser and the verdicts, in one JSON file.

    Args:
        path: The state file (created on first save); None keeps state in memory only.
        sim_th: Drain similarity threshold of the online parser.
        depth: Drain depth of the online parser.
    """

    def __init__(self, path: str | Path | None, *, sim_th: float = 0.5, depth: int = 4) -> None:
        self.path = Path(path) if path else None
        self.parser = TemplateParser(sim_th=sim_th, depth=depth, cache_size=0)
        self.verdicts: dict[str, TemplateVerdict] = {}
        self.templates: dict[str, str] = {}
        #: Offline validation of each provider:model used, so it runs once per model.
        self.validation: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        if self.path is not None and self.path.is_file():
            self._load(self.path)

    def _load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text("utf-8"))
            if data.get("format") != TRIAGE_FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {TRIAGE_FORMAT!r}")
            self.parser = TemplateParser.from_json(data["parser"], cache_size=0)
            self.verdicts = {
                k: TemplateVerdict.from_json(v) for k, v in dict(data["verdicts"]).items()
            }
            self.templates = {str(k): str(v) for k, v in dict(data.get("templates", {})).items()}
            self.validation = dict(data.get("validation", {}))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(
                f"triage state {path} is unreadable ({exc}); move it away to start with no "
                "verdicts, or restore it from a backup"
            ) from exc
        logger.info("triage state %s: %d verdicts", path, len(self.verdicts))

    def template_of(self, content: str) -> tuple[str, str]:
        """The online template (id, text) of a novel line's content, learning it."""
        with self._lock:
            template = self.parser.learn_one(content)
            template_id = "N" + template.event_id.lstrip("E")
            self.templates[template_id] = template.template
            return template_id, template.template

    def set(self, verdict: TemplateVerdict) -> None:
        """Store a verdict and save the state."""
        with self._lock:
            self.verdicts[verdict.template_id] = verdict
            self.save_locked()

    def save(self) -> None:
        """Write the state file atomically (no-op without a path)."""
        with self._lock:
            self.save_locked()

    def save_locked(self) -> None:
        if self.path is None:
            return
        document = {
            "format": TRIAGE_FORMAT,
            "parser": self.parser.to_json(),
            "templates": self.templates,
            "verdicts": {k: asdict(v) for k, v in self.verdicts.items()},
            "validation": self.validation,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps(document, indent=1, ensure_ascii=False), "utf-8")
        os.replace(partial, self.path)

    def find(self, key: str) -> str:
        """The template id named by ``key``: an id (``N3``) or an exact template text.

        Raises:
            InputError: If no template matches.
        """
        if key in self.templates:
            return key
        for template_id, text in self.templates.items():
            if text == key:
                return template_id
        raise InputError(
            f"no new template {key!r} in the triage state; 'fame triage list' shows the ids "
            "and templates"
        )


class Triage:
    """Asks the LLM once per new template, in the background, and serves the verdicts.

    Args:
        state: The persistent state.
        client: The LLM (cached, audited); None serves stored verdicts only.
        context: Domains and representative lines shown to the model.
        redactor: Applied to what a remote provider is sent.
        calls_per_minute: Rate limit.
        budget: Most model calls for this process.
        background: Run calls on a background thread (False: the caller runs
            :meth:`process_pending`, for tests and evaluation replays).
        trusted: Apply the model's verdicts to lines. When False (the model failed its
            offline validation), its verdicts are still asked for and kept for operators,
            but lines stay on the novelty path; operator verdicts always apply.
    """

    def __init__(
        self,
        state: TriageState,
        client: RecordingClient | None,
        context: TriageContext,
        *,
        redactor: Redactor | None = None,
        calls_per_minute: int = 30,
        budget: int = 500,
        background: bool = True,
        trusted: bool = True,
    ) -> None:
        self.trusted = trusted
        self.state = state
        self.client = client
        self.context = context
        self.redactor = redactor or Redactor()
        self.limit = RateLimit(calls_per_minute, budget)
        self.pending: queue.Queue[tuple[str, str, str]] = queue.Queue()
        self.requested: set[str] = set(state.verdicts)
        self.failures = 0
        self.call_seconds: list[float] = []
        self._stop = threading.Event()
        self._idle = threading.Condition()
        self._busy = 0
        self._thread: threading.Thread | None = None
        if background and client is not None:
            self._thread = threading.Thread(target=self._run, name="fame-triage", daemon=True)
            self._thread.start()

    # -- detection side ----------------------------------------------------------------------

    def verdict_for(self, content: str, text: str) -> TemplateVerdict | None:
        """The verdict for a novel line's template, queueing a question for a new template."""
        template_id, template = self.state.template_of(content)
        verdict = self.state.verdicts.get(template_id)
        if verdict is None and self.client is not None:
            with self._idle:  # check-and-mark at once: several threads may feed lines
                ask = template_id not in self.requested
                if ask:
                    self.requested.add(template_id)
                    self._busy += 1
            if ask:
                self.pending.put((template_id, template, text))
        if verdict is not None and verdict.source == "llm" and not self.trusted:
            return None
        return verdict

    # -- model side --------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                item = self.pending.get(timeout=0.2)
            except queue.Empty:
                continue
            self._answer(item)

    def process_pending(self) -> None:
        """Answer every queued question now, on the calling thread."""
        while True:
            try:
                item = self.pending.get_nowait()
            except queue.Empty:
                return
            self._answer(item)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no question is queued or running; False on timeout."""
        if self._thread is None:
            self.process_pending()
            return True
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout=timeout)

    def close(self) -> None:
        """Stop the background thread (queued questions are dropped) and save the state."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.state.save()

    def _answer(self, item: tuple[str, str, str]) -> None:
        template_id, template, example = item
        try:
            if self.limit.exhausted:
                logger.warning(
                    "triage budget of %d calls spent; %s stays on the novelty path",
                    self.limit.budget,
                    template_id,
                )
                return
            wait = self.limit.wait_time()
            if wait > 0:
                logger.info("triage rate limit: waiting %.1f s", wait)
                if self._stop.wait(wait):
                    return
            if self.client is not None:
                self._ask(self.client, template_id, template, example)
        finally:
            with self._idle:
                self._busy -= 1
                self._idle.notify_all()

    def _ask(self, client: RecordingClient, template_id: str, template: str, example: str) -> None:
        remote = client.provider.remote
        redact = self.redactor if remote and self.redactor.active else (lambda t: t)
        messages = build_prompt(self.context, template, example, redact)
        self.limit.record()
        try:
            response = client.complete(
                messages,
                purpose=f"triage {template_id}",
                schema=verdict_schema(),
                max_tokens=160,
            )
            anomalous, domain, reason = parse_verdict(response.text)
        except (LLMError, ValueError) as exc:
            self.failures += 1
            logger.warning(
                "triage of %s failed (%s); it stays on the novelty path", template_id, exc
            )
            return
        if not response.truncated:
            self.call_seconds.append(response.seconds)
        verdict = TemplateVerdict(
            template_id=template_id,
            template=template,
            anomalous=anomalous,
            domain=domain,
            source="llm",
            provider=response.provider,
            model=response.model,
            time=datetime.now(UTC).isoformat(timespec="seconds"),
            seconds=round(response.seconds, 3),
            reason=reason,
            example=redact(example)[:300],
        )
        self.state.set(verdict)
        logger.info(
            "triage %s: %s%s (%s)",
            template_id,
            "anomalous" if anomalous else "normal",
            f" in {domain}" if domain else "",
            template[:80],
        )


def set_operator_verdict(
    state: TriageState, key: str, verdict: str, domain: str | None = None
) -> TemplateVerdict:
    """Record an operator's verdict (confirmed) for a new template and save the state.

    Raises:
        InputError: If the template is unknown or the verdict is not normal/anomalous.
    """
    if verdict not in VERDICTS:
        raise InputError(f"verdict must be 'normal' or 'anomalous', got {verdict!r}")
    template_id = state.find(key)
    previous = state.verdicts.get(template_id)
    name = normalise_name(domain) if domain else (previous.domain if previous else None)
    entry = TemplateVerdict(
        template_id=template_id,
        template=state.templates[template_id],
        anomalous=verdict == "anomalous",
        domain=name if verdict == "anomalous" else None,
        source="operator",
        confirmed=True,
        time=datetime.now(UTC).isoformat(timespec="seconds"),
        reason=f"set by an operator (was: {_describe(previous)})",
        example=previous.example if previous else "",
    )
    state.set(entry)
    return entry


def _describe(verdict: TemplateVerdict | None) -> str:
    if verdict is None:
        return "no verdict"
    kind = "anomalous" if verdict.anomalous else "normal"
    return f"{kind} by {verdict.source}"


def label_from_confirmed(
    state: TriageState, contents: Sequence[str], labels: list[bool | None]
) -> dict[str, int]:
    """Apply confirmed verdicts as labels of offline lines that have none.

    A line gets a confirmed template's verdict when the triage state's parser matches its
    content to that template. Lines that carry a label keep it; disagreements are counted.

    Returns:
        Counts: ``labelled`` (labels filled in) and ``disagreements``.
    """
    confirmed = {k: v for k, v in state.verdicts.items() if v.confirmed}
    counts = {"labelled": 0, "disagreements": 0}
    if not confirmed:
        return counts
    for i, content in enumerate(contents):
        match = state.parser.match(content)
        if match is None:
            continue
        verdict = confirmed.get("N" + match.event_id.lstrip("E"))
        if verdict is None:
            continue
        if labels[i] is None:
            labels[i] = verdict.anomalous
            counts["labelled"] += 1
        elif labels[i] != verdict.anomalous:
            counts["disagreements"] += 1
    return counts


def _load_bundle_labels(root: str | Path) -> tuple[CertifiedPartition, KShotSample]:
    """The certified partition and the K-shot sample of a bundle."""
    from fame import bundle as bundle_io
    from fame.certification import CertifiedPartition
    from fame.sampling import KShotSample

    path = Path(root)
    partition = CertifiedPartition.from_json(bundle_io.read_json(path / "certification.json"))
    sample = KShotSample.from_json(bundle_io.read_json(path / "kshot.json"))
    return partition, sample


def build_context(
    partition: CertifiedPartition, sample: KShotSample, *, exclude: Sequence[str] = ()
) -> TriageContext:
    """The domains and representative lines shown to the model.

    Args:
        partition: The certified partition (failure domains).
        sample: The K-shot sample (representative lines per EventID).
        exclude: EventIDs whose lines must not appear (to simulate their novelty).
    """
    from fame.partition import UNIVERSAL_NORMAL

    context = TriageContext()
    normal: list[tuple[int, str]] = []
    skip = set(exclude)
    for event_id, stats in sample.events.items():
        if event_id in skip:
            continue
        domain = partition.domain_of(event_id)
        if domain != UNIVERSAL_NORMAL and stats.anomaly_example:
            examples = context.domains.setdefault(domain, [])
            if len(examples) < 2:
                examples.append(stats.anomaly_example)
        if stats.normal_example and not stats.has_anomaly:
            normal.append((stats.count, stats.normal_example))
    context.normal_examples = [text for _, text in sorted(normal, reverse=True)[:5]]
    return context


def context_from_bundle(root: str | Path) -> TriageContext:
    """The domains and representative lines of a bundle, for the triage prompt."""
    partition, sample = _load_bundle_labels(root)
    return build_context(partition, sample)


#: Templates of each kind asked about when the LLM is validated on the offline labels.
VALIDATION_TEMPLATES = 15


def validate_on_offline(
    client: RecordingClient,
    bundle: str | Path,
    redactor: Redactor,
    *,
    per_class: int = VALIDATION_TEMPLATES,
    seed: int = 0,
) -> dict[str, Any]:
    """Measure the LLM's verdicts on offline templates whose K-shot labels are known.

    Up to ``per_class`` templates whose K-shot lines are all anomalous and as many whose
    lines are all normal are asked about exactly as a new template would be, with their own
    lines removed from the context (they are "new" to the model). The precision and recall of
    the model's ``anomalous`` verdicts against the labels say how far its verdicts on truly
    new templates can be trusted.

    Returns:
        ``{"precision", "recall", "asked", "answered", "seconds", "model"}``.
    """
    import random

    partition, sample = _load_bundle_labels(bundle)
    events = list(sample.events.values())
    anomalous = [e for e in events if e.has_anomaly and not e.has_normal and e.anomaly_example]
    normal = [e for e in events if e.has_normal and not e.has_anomaly and e.normal_example]
    rng = random.Random(seed)
    rng.shuffle(anomalous)
    normal.sort(key=lambda e: -e.count)  # the routine messages a stream is made of
    chosen = [(e, True) for e in anomalous[:per_class]] + [(e, False) for e in normal[:per_class]]
    remote = client.provider.remote
    redact: Callable[[str], str] = redactor if remote and redactor.active else (lambda t: t)
    tp = fp = fn = answered = 0
    seconds = 0.0
    for stats, label in chosen:
        context = build_context(partition, sample, exclude=[stats.event_id])
        example = (stats.anomaly_example if label else stats.normal_example) or stats.template
        messages = build_prompt(context, stats.template, example, redact)
        try:
            response = client.complete(
                messages,
                purpose=f"triage validation {stats.event_id}",
                schema=verdict_schema(),
                max_tokens=160,
            )
            predicted, _, _ = parse_verdict(response.text)
        except (LLMError, ValueError) as exc:
            logger.warning("triage validation of %s failed: %s", stats.event_id, exc)
            continue
        answered += 1
        seconds += response.seconds
        tp += predicted and label
        fp += predicted and not label
        fn += (not predicted) and label
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    result = {
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "asked": len(chosen),
        "answered": answered,
        "anomalous_templates": min(per_class, len(anomalous)),
        "normal_templates": min(per_class, len(normal)),
        "seconds": round(seconds, 1),
        "model": model_label(client.provider),
        "provider": client.provider.name,
    }
    logger.info(
        "triage model on %d offline templates: precision %.2f, recall %.2f",
        answered,
        precision,
        recall,
    )
    return result


def default_state_path(bundle: str | Path) -> Path:
    """Where triage state lives when no path is given: beside the bundle, not inside it."""
    root = Path(bundle).resolve()
    return root.with_name(root.name + ".triage.json")


def build_triage(bundle: str | Path, settings: Any, *, background: bool = True) -> Triage:
    """The triage of ``fame detect`` and ``fame evaluate`` from the settings.

    The model is built lazily by its provider (the local model loads on the first question),
    so a detector with triage on starts as fast as one without.
    """
    from fame.llm import client_from_settings

    state = TriageState(settings.triage_state or default_state_path(bundle))
    client = client_from_settings(settings)
    redactor = Redactor.from_settings(settings.llm_redact, settings.llm_redact_extra)
    trusted = True
    if settings.triage_min_precision > 0:
        key = f"{client.provider.name}:{model_label(client.provider)}"
        validation = state.validation.get(key)
        if validation is None:
            logger.info("validating the triage model on offline templates (once per model)")
            validation = validate_on_offline(client, bundle, redactor, seed=settings.seed)
            state.validation[key] = validation
            state.save()
        trusted = validation["precision"] >= settings.triage_min_precision
        if not trusted:
            logger.warning(
                "the triage model's verdicts reached precision %.2f on offline templates, "
                "under --triage-min-precision %.2f: its verdicts are kept for review "
                "('fame triage list') but not applied; lines of new templates stay on the "
                "novelty path. A larger model, or operator verdicts, change that.",
                validation["precision"],
                settings.triage_min_precision,
            )
    return Triage(
        state,
        client,
        context_from_bundle(bundle),
        redactor=redactor,
        calls_per_minute=settings.triage_calls_per_minute,
        budget=settings.triage_budget,
        background=background,
        trusted=trusted,
    )
