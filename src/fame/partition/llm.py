"""The LLM partition proposer of paper Section III-B1: one offline grouping by a model.

How the prompt is built (the strategy the issue asks to write down):

1. **What goes in.** Every EventID with a HasAnomalySignal is listed, with its template,
   offline line count, both signals and its representative lines. Normal-only EventIDs are
   listed (template, count and signals, no example lines) only when their template shares
   vocabulary with an anomaly-bearing one's (TF-IDF cosine at least ``related_similarity``),
   at most ``MAX_RELATED_PER_ANOMALY`` per anomaly-bearing EventID and ``max_normal_events``
   in all, most similar first: these are the normal messages of the
   same subsystems, which the model needs to see to keep them out of failure domains or to
   group them with their mixed siblings. Every other EventID goes to UNIVERSAL_NORMAL
   without being shown, as the paper's default for unassigned EventIDs.
2. **Within the context.** The listing is measured in estimated tokens; when it exceeds
   ``prompt_tokens``, or lists more than ``chunk_events`` EventIDs, it is split into chunks
   that keep each anomaly-bearing EventID next to its related normal ones, one call per
   chunk. The EventID cap matters more than the context for small models: the 1.5B local
   model kept to the format on a dozen EventIDs but looped on 74. A final *merge* call then
   sees the domain names of all chunks with two member templates each and may merge names
   that denote the same failure mechanism; if that answer is unusable, domains of equal
   names merge.
3. **Identifiers.** The model answers with exact EventIDs (``E12``), never list positions;
   a template string is accepted in place of its EventID.
4. **Validation and repair.** Answers are parsed strictly against a JSON schema (and the
   schema is sent as structured output where the provider supports it). Cosmetic faults are
   repaired (code fences, name case, a missing UNIVERSAL_NORMAL). Unknown or duplicated
   EventIDs, bad names and unparsable or truncated output are sent back to the model with
   the errors, at most ``retries`` times; after that, unknown EventIDs are dropped and a
   duplicated one keeps its first domain (logged and recorded), and unparsable output fails
   with a clear message. Unlisted EventIDs fall into UNIVERSAL_NORMAL.
5. **Egress.** For a provider that leaves the machine, representative lines are redacted
   (:mod:`fame.llm.redaction`); templates are already masked by the parser and redacted too.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fame.errors import InputError
from fame.llm.cache import RecordingClient
from fame.llm.providers import LLMError, Message, model_label
from fame.llm.redaction import Redactor
from fame.partition.base import DOMAIN_NAME_PATTERN, UNIVERSAL_NORMAL, Partition
from fame.partition.tfidf import _cosine, fit_tfidf
from fame.sampling import EventStats, KShotSample

logger = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You are an expert in the operation of large computer systems. You group log message "
    "templates by failure mechanism for an anomaly detector. Answer with JSON only."
)

GROUPING_INSTRUCTIONS = """\
Below are log message templates, one per line, each with its EventID, how many lines it
had, and whether labelled examples of it were NORMAL, ANOMALY or both.

Group the EventIDs into failure domains by failure mechanism: the subsystem or the cause
that the templates themselves name. Ignore boilerplate that says nothing about the
mechanism: severity words, node names, numbers, addresses and hex payloads.

Rules:
- You decide how many domains there are. A domain may have a single EventID.
- Put EventIDs that describe normal operation into the domain UNIVERSAL_NORMAL.
- Put a normal EventID into a failure domain only if it belongs to the same mechanism as
  that domain's anomalies.
- Domain names are UPPER_SNAKE_CASE words that name the mechanism you see in the
  templates.
- Use the exact EventIDs shown below (like E12). Never use positions or line numbers,
  and never an EventID that is not shown.
- List every EventID shown exactly once.

Answer as JSON: {"domains": [{"name": "DOMAIN_NAME", "event_ids": [EventIDs]}, ...]}

Templates:
"""

MERGE_INSTRUCTIONS = """\
The failure domains below were proposed separately for different parts of one log. Each
line shows a domain name and some of its member templates. Merge domains that describe the
same failure mechanism under one UPPER_SNAKE_CASE name; keep the others as they are. Every
domain name shown must appear in exactly one members list.

Answer as JSON: {"domains": [{"name": "NEW_NAME", "members": ["OLD_NAME_1", "OLD_NAME_2"]}]}

Domains:
"""


@dataclass
class ParsedProposal:
    """The result of checking one grouping answer.

    Attributes:
        domains: Domain name -> EventIDs, as repaired.
        problems: Faults to show the model on a retry (empty when none).
        repairs: Faults repaired silently (for the audit record).
        parsed: False when the text was not usable JSON of the expected shape.
    """

    domains: dict[str, list[str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)
    parsed: bool = True


def answer_schema(member_key: str, allowed: Sequence[str]) -> dict[str, Any]:
    """JSON schema of an answer ``{"domains": [{"name": ..., member_key: [...]}]}``.

    Members are an ``enum`` of ``allowed`` and lists get a ``maxItems``, so a provider that
    enforces the schema (llama.cpp turns it into a grammar) cannot invent EventIDs or loop
    without end: the 1.5B local model, unconstrained, counted ``E1, E2, ...`` until its
    token limit.

    Args:
        member_key: ``"event_ids"`` for a grouping, ``"members"`` for a merge.
        allowed: The EventIDs (or domain names) the answer may use.
    """
    values = list(dict.fromkeys(allowed))
    domain = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 60},
            member_key: {
                "type": "array",
                "items": {"type": "string", "enum": values},
                "maxItems": len(values),
            },
        },
        "required": ["name", member_key],
    }
    return {
        "type": "object",
        "properties": {"domains": {"type": "array", "items": domain, "maxItems": len(values) + 1}},
        "required": ["domains"],
    }


def estimate_tokens(text: str) -> int:
    """A conservative token estimate for log text (about 3 characters per token)."""
    return len(text) // 3 + 1


def normalise_name(raw: str) -> str:
    """Turn a proposed name into UPPER_SNAKE_CASE (``"ddr-errors"`` gives ``DDR_ERRORS``)."""
    name = re.sub(r"[^A-Za-z0-9]+", "_", raw.strip()).strip("_").upper()
    name = re.sub(r"^[0-9_]+", "", name)
    return name


def extract_json(text: str) -> Any:
    """Parse a JSON object out of a model answer (code fences and chatter around it allowed).

    Raises:
        ValueError: If no JSON object can be parsed.
    """
    stripped = text.strip()
    fence = re.match(r"^```(?:json)?\s*(.*?)\s*```$", stripped, re.DOTALL)
    if fence:
        stripped = fence.group(1)
    try:
        return json.loads(stripped)
    except json.JSONDecodeError:
        start, end = stripped.find("{"), stripped.rfind("}")
        if start == -1 or end <= start:
            raise ValueError("the answer contains no JSON object") from None
        try:
            return json.loads(stripped[start : end + 1])
        except json.JSONDecodeError as exc:
            raise ValueError(f"the answer is not valid JSON ({exc.msg} at {exc.pos})") from exc


def parse_proposal(
    text: str, shown: Sequence[str], templates: dict[str, str], *, truncated: bool = False
) -> ParsedProposal:
    """Check a grouping answer against the EventIDs that were shown.

    Args:
        text: The model's raw answer.
        shown: The EventIDs listed in the prompt.
        templates: EventID -> template, to accept a template string in place of its EventID.
        truncated: The provider reported that the answer hit its token limit.

    Returns:
        The repaired domains with the remaining problems and the repairs made.
    """
    result = ParsedProposal()
    if truncated:
        result.problems.append(
            "your answer was cut off at the token limit; answer more briefly, with only the "
            "JSON object"
        )
    try:
        data = extract_json(text)
    except ValueError as exc:
        result.parsed = False
        result.problems.append(f"{exc}; answer with one JSON object only")
        return result
    if text.strip().startswith("```"):
        result.repairs.append("removed a code fence around the JSON")
    domains_raw = data.get("domains") if isinstance(data, dict) else None
    if not isinstance(domains_raw, list):
        result.parsed = False
        result.problems.append(
            'the JSON must be an object with a "domains" list: {"domains": [{"name": ..., '
            '"event_ids": [...]}]}'
        )
        return result
    by_lower = {event_id.lower(): event_id for event_id in shown}
    by_template = {templates[e].strip(): e for e in shown if templates.get(e)}
    assigned: dict[str, str] = {}
    unknown: list[str] = []
    for position, entry in enumerate(domains_raw):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            result.problems.append(f"domain entry {position + 1} has no string 'name'")
            continue
        raw_name = entry["name"]
        name = normalise_name(raw_name)
        if not name or not DOMAIN_NAME_PATTERN.match(name):
            result.problems.append(f"domain name {raw_name!r} is not UPPER_SNAKE_CASE")
            continue
        if name != raw_name:
            result.repairs.append(f"renamed domain {raw_name!r} to {name!r}")
        members = entry.get("event_ids")
        if not isinstance(members, list):
            result.problems.append(f"domain {name} has no 'event_ids' list")
            continue
        kept = result.domains.setdefault(name, [])
        for member in members:
            key = str(member).strip()
            event_id = by_lower.get(key.lower()) or by_template.get(key)
            if event_id is None:
                unknown.append(key)
                continue
            if event_id in assigned:
                first = assigned[event_id]
                if first == name:
                    continue
                if UNIVERSAL_NORMAL in (first, name):
                    # Small models often repeat a domain's EventIDs under UNIVERSAL_NORMAL;
                    # the failure domain is the specific answer.
                    if first == UNIVERSAL_NORMAL:
                        result.domains[first].remove(event_id)
                        assigned[event_id] = name
                        kept.append(event_id)
                    result.repairs.append(
                        f"{event_id} was in UNIVERSAL_NORMAL and {assigned[event_id]}; kept "
                        f"in {assigned[event_id]}"
                    )
                    continue
                result.problems.append(f"{event_id} is in both {first} and {name}; put it in one")
                continue
            assigned[event_id] = name
            kept.append(event_id)
    if unknown:
        listed = ", ".join(repr(u) for u in unknown[:10])
        result.problems.append(
            f"these are not EventIDs shown to you: {listed}; use only the EventIDs listed"
        )
    missing = [e for e in shown if e not in assigned]
    if missing:
        result.repairs.append(f"{len(missing)} EventIDs not listed went to {UNIVERSAL_NORMAL}")
        result.domains.setdefault(UNIVERSAL_NORMAL, []).extend(missing)
    if UNIVERSAL_NORMAL not in result.domains:
        result.repairs.append(f"added an empty {UNIVERSAL_NORMAL}")
        result.domains[UNIVERSAL_NORMAL] = []
    result.domains = {
        name: ids for name, ids in result.domains.items() if ids or name == UNIVERSAL_NORMAL
    }
    return result


def select_events(
    sample: KShotSample, *, related_similarity: float, max_normal_events: int
) -> tuple[list[list[str]], list[str]]:
    """Choose the EventIDs to show, grouped as [anomaly-bearing EventID, related normal ones].

    Returns:
        The groups (each starts with an anomaly-bearing EventID; a normal EventID appears in
        the group of the anomaly EventID it is most similar to) and the EventIDs left out.
    """
    event_ids = list(sample.events)
    anomalous = [e for e in event_ids if sample.events[e].has_anomaly]
    others = [e for e in event_ids if not sample.events[e].has_anomaly]
    if not anomalous:
        return [], event_ids
    # Templates only: the example lines carry the component and level ("KERNEL INFO"),
    # which every EventID of a subsystem shares whatever its mechanism.
    documents = [sample.events[e].template for e in event_ids]
    matrix, _, _ = fit_tfidf(documents)
    similarity = _cosine(matrix)
    row = {e: i for i, e in enumerate(event_ids)}
    anomaly_rows = [row[e] for e in anomalous]
    candidates: list[tuple[float, str, str]] = []
    for event_id in others:
        sims = similarity[row[event_id], anomaly_rows]
        best = int(np.argmax(sims))
        if sims[best] >= related_similarity:
            candidates.append((float(sims[best]), event_id, anomalous[best]))
    candidates.sort(key=lambda item: (-item[0], item[1]))
    groups = {e: [e] for e in anomalous}
    shown = 0
    for _, event_id, anchor in candidates:
        if shown >= max_normal_events or len(groups[anchor]) > MAX_RELATED_PER_ANOMALY:
            continue
        groups[anchor].append(event_id)
        shown += 1
    added = {e for group in groups.values() for e in group}
    return list(groups.values()), [e for e in event_ids if e not in added]


def _signals(stats: EventStats) -> str:
    if stats.has_anomaly and stats.has_normal:
        return "NORMAL+ANOMALY"
    return "ANOMALY" if stats.has_anomaly else ("NORMAL" if stats.has_normal else "UNLABELLED")


#: Most normal-only EventIDs shown beside one anomaly-bearing EventID (the most similar).
MAX_RELATED_PER_ANOMALY = 4

#: Longest template or example line shown in a prompt (characters); longer ones are cut.
MAX_SHOWN_CHARS = 200


def _clip(text: str) -> str:
    return text if len(text) <= MAX_SHOWN_CHARS else text[:MAX_SHOWN_CHARS] + " ..."


def describe_event(stats: EventStats, redact: Callable[[str], str]) -> str:
    """One prompt line (plus example lines for anomaly-bearing EventIDs) for an EventID."""
    line = (
        f"{stats.event_id} | lines={stats.count} | labels={_signals(stats)} | "
        f"template: {_clip(redact(stats.template))}"
    )
    if stats.has_anomaly:
        if stats.anomaly_example:
            line += f"\n    anomaly example: {_clip(redact(stats.anomaly_example))}"
        if stats.normal_example:
            line += f"\n    normal example: {_clip(redact(stats.normal_example))}"
    return line


class LLMProposer:
    """Propose failure domains with a chat model (paper III-B1).

    Args:
        client: The provider, wrapped for caching and audit.
        redactor: Applied to every template and line shown to a remote provider.
        prompt_tokens: Estimated-token budget of one grouping prompt's listing.
        chunk_events: Most EventIDs listed in one grouping prompt. Small local models lose
            track of long listings (Qwen2.5-Coder-1.5B looped on 74 EventIDs of the BGL
            sample and hit the token limit), so listings are split and merged.
        max_output_tokens: Answer token limit per call.
        retries: Extra attempts after an answer with problems.
        related_similarity: TF-IDF cosine for a normal-only EventID to be shown.
        max_normal_events: Most normal-only EventIDs shown.
        redact_local: Also redact for a provider that runs on this machine.
    """

    name = "llm"

    def __init__(
        self,
        client: RecordingClient,
        *,
        redactor: Redactor | None = None,
        prompt_tokens: int = 5000,
        chunk_events: int = 12,
        max_output_tokens: int = 2048,
        retries: int = 2,
        related_similarity: float = 0.25,
        max_normal_events: int = 60,
        redact_local: bool = False,
    ) -> None:
        self.client = client
        self.redactor = redactor or Redactor()
        self.prompt_tokens = prompt_tokens
        self.chunk_events = chunk_events
        self.max_output_tokens = max_output_tokens
        self.retries = retries
        self.related_similarity = related_similarity
        self.max_normal_events = max_normal_events
        self.redact_local = redact_local

    @property
    def redacting(self) -> bool:
        """Whether prompts are redacted (always for remote providers)."""
        return self.redactor.active and (self.client.provider.remote or self.redact_local)

    def _redact(self, text: str) -> str:
        return self.redactor(text) if self.redacting else text

    def plan(self, sample: KShotSample) -> tuple[list[list[Message]], list[str]]:
        """The grouping prompts that :meth:`propose` sends first, and the EventIDs not shown.

        This is what ``--dry-run`` prints: nothing is sent.
        """
        groups, hidden = select_events(
            sample,
            related_similarity=self.related_similarity,
            max_normal_events=self.max_normal_events,
        )
        chunks: list[list[str]] = []
        current: list[str] = []
        used = 0
        for group in groups:
            text = "\n".join(describe_event(sample.events[e], self._redact) for e in group)
            cost = estimate_tokens(text)
            too_many = len(current) + len(group) > self.chunk_events
            if current and (used + cost > self.prompt_tokens or too_many):
                chunks.append(current)
                current, used = [], 0
            current.extend(group)
            used += cost
        if current:
            chunks.append(current)
        return [self._grouping_messages(sample, chunk) for chunk in chunks], hidden

    def _grouping_messages(self, sample: KShotSample, chunk: Sequence[str]) -> list[Message]:
        listing = "\n".join(describe_event(sample.events[e], self._redact) for e in chunk)
        return [
            Message("system", SYSTEM_PROMPT),
            Message("user", GROUPING_INSTRUCTIONS + listing),
        ]

    def propose(self, sample: KShotSample) -> Partition:
        """Ask the model for a grouping and return it normalised against the sample.

        Raises:
            LLMError: If the model cannot be reached or never gives usable JSON.
        """
        prompts, hidden = self.plan(sample)
        templates = {e: s.template for e, s in sample.events.items()}
        chunk_domains: list[dict[str, list[str]]] = []
        notes: list[str] = []
        for number, messages in enumerate(prompts, start=1):
            shown = re.findall(r"^(E\d+) \|", messages[-1].content, re.MULTILINE)
            purpose = f"grouping {number}/{len(prompts)}"
            domains, repairs = self._ask_grouping(messages, shown, templates, purpose)
            chunk_domains.append(domains)
            notes.extend(repairs)
        if len(chunk_domains) > 1:
            merged = self._merge(chunk_domains, templates)
        else:
            merged = chunk_domains[0] if chunk_domains else {UNIVERSAL_NORMAL: []}
        merged.setdefault(UNIVERSAL_NORMAL, []).extend(hidden)
        provider = self.client.provider
        details = {
            "provider": provider.name,
            "model": model_label(provider),
            "calls": len(self.client.calls),
            "model_calls": self.client.model_calls,
            "prompts": len(prompts),
            "shown_event_ids": len(sample.events) - len(hidden),
            "hidden_event_ids": len(hidden),
            "redacted": self.redacting,
            "repairs": notes,
            "prompt_tokens_estimate": sum(estimate_tokens(m.content) for p in prompts for m in p),
            "seconds": round(sum(c["seconds"] for c in self.client.calls if not c["cached"]), 1),
        }
        partition = Partition(domains=merged, proposer=self.name, details=details)
        return partition.normalised(sample.events, on_unknown="drop")

    def _ask_grouping(
        self,
        messages: list[Message],
        shown: Sequence[str],
        templates: dict[str, str],
        purpose: str,
    ) -> tuple[dict[str, list[str]], list[str]]:
        conversation = list(messages)
        last: ParsedProposal | None = None
        for attempt in range(self.retries + 1):
            response = self.client.complete(
                conversation,
                purpose=purpose if attempt == 0 else f"{purpose} retry {attempt}",
                schema=answer_schema("event_ids", shown),
                max_tokens=min(self.max_output_tokens, 256 + 40 * len(shown)),
            )
            parsed = parse_proposal(response.text, shown, templates, truncated=response.truncated)
            self.client.calls[-1]["problems"] = parsed.problems
            self.client.calls[-1]["repairs"] = parsed.repairs
            if not parsed.problems:
                return parsed.domains, parsed.repairs
            logger.warning("%s: answer has problems: %s", purpose, "; ".join(parsed.problems))
            if parsed.parsed:
                last = parsed
            conversation = [
                *messages,
                Message("assistant", response.text[:4000]),
                Message(
                    "user",
                    "Your answer has these problems:\n- "
                    + "\n- ".join(parsed.problems)
                    + "\nAnswer again with the corrected JSON only.",
                ),
            ]
        if last is None:
            raise LLMError(
                f"{purpose}: the model gave no usable JSON in {self.retries + 1} attempts "
                f"(last problems: {'; '.join(parsed.problems)}); try a larger model, raise "
                "--llm-max-output-tokens, or write the partition by hand with --proposer file"
            )
        logger.warning(
            "%s: keeping the last parsable answer; unknown EventIDs dropped, a duplicated "
            "EventID kept in its first domain",
            purpose,
        )
        return last.domains, [*last.repairs, *(f"unresolved: {p}" for p in last.problems)]

    def _merge(
        self, chunks: list[dict[str, list[str]]], templates: dict[str, str]
    ) -> dict[str, list[str]]:
        """Merge the domains of several chunks: by the model, else by equal names."""
        by_name: dict[str, list[str]] = {}
        for domains in chunks:
            for name, ids in domains.items():
                by_name.setdefault(name, []).extend(ids)
        expert_names = [n for n in by_name if n != UNIVERSAL_NORMAL]
        if len(expert_names) < 2:
            return by_name
        listing = "\n".join(
            f"{name}: " + " || ".join(self._redact(templates[e]) for e in by_name[name][:2])
            for name in expert_names
        )
        messages = [Message("system", SYSTEM_PROMPT), Message("user", MERGE_INSTRUCTIONS + listing)]
        conversation = list(messages)
        for attempt in range(self.retries + 1):
            try:
                response = self.client.complete(
                    conversation,
                    purpose="merge" if attempt == 0 else f"merge retry {attempt}",
                    schema=answer_schema("members", expert_names),
                    max_tokens=min(self.max_output_tokens, 256 + 40 * len(expert_names)),
                )
            except LLMError as exc:
                logger.warning("merge call failed (%s); merging domains of equal names", exc)
                return by_name
            merged, problems = parse_merge(response.text, by_name, expert_names)
            self.client.calls[-1]["problems"] = problems
            if not problems:
                return merged
            logger.warning("merge answer has problems: %s", "; ".join(problems))
            conversation = [
                *messages,
                Message("assistant", response.text[:4000]),
                Message(
                    "user",
                    "Your answer has these problems:\n- "
                    + "\n- ".join(problems)
                    + "\nAnswer again with the corrected JSON only.",
                ),
            ]
        logger.warning("no valid merge answer; merging domains of equal names only")
        return by_name


def parse_merge(
    text: str, by_name: dict[str, list[str]], expert_names: Sequence[str]
) -> tuple[dict[str, list[str]], list[str]]:
    """Check a merge answer: every domain name in exactly one members list.

    Returns:
        The merged domains and the problems found (empty when the answer is valid).
    """
    try:
        data = extract_json(text)
    except ValueError as exc:
        return {}, [str(exc)]
    entries = data.get("domains") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        return {}, ['the JSON must be {"domains": [{"name": ..., "members": [...]}]}']
    merged: dict[str, list[str]] = {UNIVERSAL_NORMAL: list(by_name.get(UNIVERSAL_NORMAL, []))}
    seen: dict[str, str] = {}
    problems: list[str] = []
    for entry in entries:
        if not isinstance(entry, dict):
            problems.append(f"{entry!r} is not an object with name and members")
            continue
        name = normalise_name(str(entry.get("name", "")))
        if not name or not DOMAIN_NAME_PATTERN.match(name) or name == UNIVERSAL_NORMAL:
            problems.append(f"{entry.get('name')!r} is not a usable domain name")
            continue
        for member in entry.get("members") or []:
            old = normalise_name(str(member))
            if old not in expert_names:
                problems.append(f"{member!r} is not one of the domain names shown")
            elif old in seen:
                problems.append(f"{old} is in the members of both {seen[old]} and {name}")
            else:
                seen[old] = name
                merged.setdefault(name, []).extend(by_name[old])
    missing = [n for n in expert_names if n not in seen]
    if missing:
        problems.append(f"these domain names are in no members list: {', '.join(missing)}")
    return merged, problems


def proposer_from_settings(settings: Any, *, connect: bool = True) -> LLMProposer:
    """Build the LLM proposer from :class:`fame.config.Settings`.

    Args:
        settings: The settings.
        connect: False for a dry run: prompts are built and redacted, nothing is sent.
    """
    from fame.llm import client_from_settings

    client = client_from_settings(settings, connect=connect)
    redactor = Redactor.from_settings(settings.llm_redact, settings.llm_redact_extra)
    return LLMProposer(
        client,
        redactor=redactor,
        prompt_tokens=settings.llm_prompt_tokens,
        chunk_events=settings.llm_chunk_events,
        max_output_tokens=settings.llm_max_output_tokens,
        retries=settings.llm_retries,
        max_normal_events=settings.llm_max_normal_events,
    )


def check_partition_input(sample: KShotSample) -> None:
    """Fail early when there is nothing for a model to group.

    Raises:
        InputError: If no EventID has an anomaly signal.
    """
    if not any(stats.has_anomaly for stats in sample.events.values()):
        raise InputError(
            "no EventID has an anomalous K-shot line, so there is nothing to group; check the "
            "labels of the offline region"
        )
