"""Partition proposer that reads a partition a person wrote or reviewed, as JSON.

File format (``write_partition_file`` writes it, ``FileProposer`` reads it back)::

    {
      "format": "fame-partition/1",
      "help": "...",
      "proposer": "llm",
      "domains": [
        {"name": "TLB_ERROR_INTERRUPT", "event_ids": [
          {"event_id": "E12", "template": "data TLB error interrupt", "signals": "anomaly",
           "count": 42, "normal_example": null, "anomaly_example": "..."},
          "E13"
        ]},
        {"name": "UNIVERSAL_NORMAL", "event_ids": ["E1", "E2"]}
      ],
      "llm_audit": [...]
    }

Only ``domains`` is required; the older mapping form ``{"NAME": [EventIDs]}`` is read too.
Each domain lists EventIDs either as plain strings or as objects with an ``"event_id"`` key;
every other key of such an object (template, signals, count, examples) is there to help the
reviewer and is ignored on reading, so a whole entry can be cut and pasted from one domain to
another. Domain names must be UPPER_SNAKE_CASE; EventIDs not listed anywhere default to
``UNIVERSAL_NORMAL``; an EventID unknown to the offline data is an error unless the proposer
is built with ``on_unknown="drop"``. ``llm_audit`` (written by ``fame partition`` with the
LLM proposer: prompts, raw answers, model, provider, time) is carried into the bundle.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from fame.errors import InputError
from fame.partition.base import (
    PARTITION_FORMAT,
    UNIVERSAL_NORMAL,
    Partition,
    UnknownPolicy,
    check_unknown_policy,
)
from fame.sampling import EventStats, KShotSample

logger = logging.getLogger(__name__)

#: Explanation written into every partition file for the person editing it.
PARTITION_FILE_HELP = (
    "Edit 'domains' to change the failure-domain partition: move EventID entries between "
    "domains, rename domains (UPPER_SNAKE_CASE), add or delete domains. An entry is an EventID "
    "string or an object with 'event_id'; its other keys are ignored when read. EventIDs not "
    "listed default to UNIVERSAL_NORMAL. Certification then keeps only domains the K-shot "
    "labels support."
)


def _signals_label(stats: EventStats) -> str:
    """Describe an EventID's K-shot signals in words.

    Args:
        stats: The EventID's statistics.

    Returns:
        ``"anomaly"``, ``"normal"``, ``"normal+anomaly"`` or ``"unlabelled"``.
    """
    if stats.has_normal and stats.has_anomaly:
        return "normal+anomaly"
    if stats.has_anomaly:
        return "anomaly"
    if stats.has_normal:
        return "normal"
    return "unlabelled"


def write_partition_file(
    partition: Partition,
    path: str | Path,
    sample: KShotSample | None = None,
    *,
    audit: list[dict[str, Any]] | None = None,
) -> Path:
    """Write a partition as a human-reviewable JSON file.

    Expert domains come first, ``UNIVERSAL_NORMAL`` last. With a sample, every EventID entry
    carries its template, signals, offline count and representative lines.

    Args:
        partition: The partition to write.
        path: Destination file; its folder must exist.
        sample: Optional K-shot sample used to annotate the entries.
        audit: The model calls that produced the proposal (kept for the bundle).

    Returns:
        The path written.

    Raises:
        InputError: If the file cannot be written.
    """
    target = Path(path)
    names = [name for name in partition.domains if name != UNIVERSAL_NORMAL]
    names.append(UNIVERSAL_NORMAL)
    domains: list[dict[str, Any]] = []
    for name in names:
        entries: list[Any] = []
        for event_id in partition.domains.get(name, []):
            stats = sample.events.get(event_id) if sample is not None else None
            if stats is None:
                entries.append(event_id)
                continue
            entries.append(
                {
                    "event_id": event_id,
                    "template": stats.template,
                    "signals": _signals_label(stats),
                    "count": stats.count,
                    "normal_example": stats.normal_example,
                    "anomaly_example": stats.anomaly_example,
                }
            )
        domains.append({"name": name, "event_ids": entries})
    document: dict[str, Any] = {
        "format": PARTITION_FORMAT,
        "help": PARTITION_FILE_HELP,
        "proposer": partition.proposer,
        "domains": domains,
        "details": partition.details,
    }
    if audit:
        document["llm_audit"] = audit
    try:
        target.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", "utf-8")
    except OSError as exc:
        raise InputError(
            f"cannot write the partition file {target}: {exc}; check that the folder exists "
            "and is writable"
        ) from exc
    logger.info("wrote partition with %s domains to %s", len(domains), target)
    return target


def read_partition_file(path: str | Path) -> Partition:
    """Read a partition file (not yet normalised against the offline EventIDs).

    Args:
        path: The JSON file.

    Returns:
        A partition with ``proposer="file"``; ``details`` records the path and, when the file
        names one, the proposer that originally wrote it.

    Raises:
        InputError: If the file is missing, unreadable, not valid JSON or not a partition.
    """
    source = Path(path)
    try:
        text = source.read_text("utf-8")
    except FileNotFoundError as exc:
        raise InputError(
            f"partition file {source} does not exist; check the path, or write one with "
            "fame.partition.write_partition_file and edit it"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(
            f"cannot read the partition file {source}: {exc}; expected a UTF-8 JSON file"
        ) from exc
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"partition file {source} is not valid JSON: {exc.msg} at line {exc.lineno} "
            f"column {exc.colno}; fix the syntax there (often a missing or extra comma, or an "
            "unquoted name)"
        ) from exc
    raw_domains = document.get("domains") if isinstance(document, dict) else None
    if isinstance(raw_domains, list):
        pairs = []
        for position, item in enumerate(raw_domains):
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise InputError(
                    f"partition file {source}: domain {position} is {item!r}; expected an "
                    'object {"name": "NAME", "event_ids": [...]}'
                )
            pairs.append((item["name"], item.get("event_ids")))
    elif isinstance(raw_domains, dict):
        pairs = list(raw_domains.items())
    else:
        raise InputError(
            f"partition file {source} has no 'domains' list; expected "
            '{"domains": [{"name": "NAME", "event_ids": ["E1", ...]}, ...]}'
        )
    domains: dict[str, list[str]] = {}
    for name, entries in pairs:
        if not isinstance(entries, list):
            raise InputError(
                f"partition file {source}: domain {name!r} must be a list of EventIDs, got "
                f'{type(entries).__name__}; write it as ["E1", "E2"]'
            )
        ids: list[str] = []
        for position, entry in enumerate(entries):
            if isinstance(entry, dict) and isinstance(entry.get("event_id"), str):
                ids.append(entry["event_id"])
            elif isinstance(entry, str):
                ids.append(entry)
            else:
                raise InputError(
                    f"partition file {source}: entry {position} of domain {name!r} is "
                    f"{entry!r}; expected an EventID string or an object with an 'event_id' "
                    "string"
                )
        if str(name) in domains:
            raise InputError(
                f"partition file {source}: domain {name!r} appears twice; merge the two entries"
            )
        domains[str(name)] = ids
    details: dict[str, Any] = {"path": str(source)}
    if isinstance(document.get("proposer"), str):
        details["source_proposer"] = document["proposer"]
    if isinstance(document.get("llm_audit"), list):
        details["llm_audit"] = document["llm_audit"]
    return Partition(domains=domains, proposer="file", details=details)


class FileProposer:
    """Proposer that returns the partition stored in a JSON file.

    Attributes:
        name: Registry name, ``"file"``.
        path: The partition file.
        on_unknown: What to do with EventIDs unknown to the offline data (``"error"`` or
            ``"drop"``).
    """

    name = "file"

    def __init__(self, path: str | Path, *, on_unknown: UnknownPolicy = "error") -> None:
        """Configure the proposer.

        Args:
            path: The partition file to read on :meth:`propose`.
            on_unknown: ``"error"`` (default) rejects EventIDs that do not occur offline,
                ``"drop"`` drops them with a WARNING.

        Raises:
            ConfigError: If ``on_unknown`` is neither ``"error"`` nor ``"drop"``.
        """
        check_unknown_policy(on_unknown)
        self.path = Path(path)
        self.on_unknown: UnknownPolicy = on_unknown

    def propose(self, sample: KShotSample) -> Partition:
        """Read the file and normalise it against the sample's EventIDs.

        Args:
            sample: The K-shot sample (its EventIDs are the valid ones).

        Returns:
            The normalised partition.

        Raises:
            InputError: If the file cannot be read or does not fit the offline data.
        """
        partition = read_partition_file(self.path)
        try:
            return partition.normalised(sample.events, on_unknown=self.on_unknown)
        except InputError as exc:
            raise InputError(f"partition file {self.path}: {exc}") from exc
