"""The failure-domain partition and the interface every partition proposer implements.

A partition (paper Section III-B1) maps EventIDs to named failure domains. It always has a
domain named ``UNIVERSAL_NORMAL``; every EventID a proposer leaves unassigned defaults to it.
Proposers (TF-IDF, a reviewed file, later an LLM) only *propose*: certification
(:mod:`fame.certification`, III-B2) decides what survives.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from fame.errors import BundleError, ConfigError, InputError

if TYPE_CHECKING:
    from fame.sampling import KShotSample

logger = logging.getLogger(__name__)

#: The distinguished domain ``u`` of the paper (Section III): the default for every EventID not
#: assigned to a failure domain, and the only domain that is always trained.
UNIVERSAL_NORMAL = "UNIVERSAL_NORMAL"

#: Domain names are UPPER_SNAKE_CASE, like the paper's ``UNIVERSAL_NORMAL``.
DOMAIN_NAME_PATTERN = re.compile(r"^[A-Z][A-Z0-9_]*$")

#: Format tag written by :meth:`Partition.to_json`.
PARTITION_FORMAT = "fame-partition/1"

UnknownPolicy = Literal["error", "drop"]


def validate_domain_name(name: str) -> None:
    """Check that a domain name is UPPER_SNAKE_CASE.

    Args:
        name: The proposed domain name.

    Raises:
        InputError: If the name does not match ``^[A-Z][A-Z0-9_]*$``.
    """
    if not isinstance(name, str) or not DOMAIN_NAME_PATTERN.match(name):
        raise InputError(
            f"domain name {name!r} is not UPPER_SNAKE_CASE; expected a name matching "
            f"{DOMAIN_NAME_PATTERN.pattern} such as 'MEMORY_ERRORS'; rename the domain"
        )


def check_unknown_policy(on_unknown: str) -> None:
    """Check an ``on_unknown`` setting.

    Args:
        on_unknown: The policy for EventIDs unknown to the offline data.

    Raises:
        ConfigError: If it is neither ``"error"`` nor ``"drop"``.
    """
    if on_unknown not in ("error", "drop"):
        raise ConfigError(
            f"on_unknown must be 'error' or 'drop', got {on_unknown!r}; 'error' rejects "
            "EventIDs unknown to the offline data, 'drop' drops them with a warning"
        )


@dataclass
class Partition:
    """A proposed mapping of EventIDs to named failure domains.

    Treat instances as immutable: the EventID lookup used by :meth:`domain_of` is built once
    when the partition is created; build a new partition to change it.

    Attributes:
        domains: Domain name -> EventIDs of that domain. Always contains ``UNIVERSAL_NORMAL``
            (added empty when missing).
        proposer: Name of the proposer that produced the partition (e.g. ``"tfidf"``).
        details: Free-form, JSON-compatible provenance (settings, similarities, file path).
    """

    domains: dict[str, list[str]]
    proposer: str
    details: dict[str, Any] = field(default_factory=dict)
    _index: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Copy the domain lists, add an empty ``UNIVERSAL_NORMAL`` and index EventIDs."""
        self.domains = {name: list(ids) for name, ids in self.domains.items()}
        if UNIVERSAL_NORMAL not in self.domains:
            self.domains[UNIVERSAL_NORMAL] = []
        self._index = {}
        for name, event_ids in self.domains.items():
            for event_id in event_ids:
                self._index.setdefault(event_id, name)

    def domain_of(self, event_id: str) -> str:
        """Return the domain of an EventID.

        Args:
            event_id: The EventID to look up.

        Returns:
            Its domain name; ``UNIVERSAL_NORMAL`` when the EventID is not assigned.
        """
        return self._index.get(event_id, UNIVERSAL_NORMAL)

    @property
    def event_ids(self) -> list[str]:
        """Every EventID listed in the partition, in domain order."""
        return [event_id for ids in self.domains.values() for event_id in ids]

    def normalised(
        self, all_event_ids: Iterable[str], *, on_unknown: UnknownPolicy = "error"
    ) -> Partition:
        """Return a checked copy covering exactly ``all_event_ids``.

        Every EventID of ``all_event_ids`` that no domain lists is appended to
        ``UNIVERSAL_NORMAL`` (paper III-B1: unassigned EventIDs default to it). Domain names are
        validated, an EventID listed twice is rejected, and EventIDs unknown to
        ``all_event_ids`` are rejected (default) or dropped with a warning.

        Args:
            all_event_ids: Every EventID of the offline region.
            on_unknown: ``"error"`` to reject EventIDs not in ``all_event_ids`` (the default:
                they usually mean the partition belongs to another parse), ``"drop"`` to
                drop them with a WARNING (useful for proposers that may invent EventIDs).

        Returns:
            A new partition with the same proposer and details.

        Raises:
            ConfigError: If ``on_unknown`` is neither ``"error"`` nor ``"drop"``.
            InputError: On a bad domain name, an EventID listed twice, or (with
                ``on_unknown="error"``) an unknown EventID.
        """
        check_unknown_policy(on_unknown)
        known = list(dict.fromkeys(all_event_ids))
        known_set = set(known)
        seen: dict[str, str] = {}
        domains: dict[str, list[str]] = {}
        dropped: list[str] = []
        for name, event_ids in self.domains.items():
            validate_domain_name(name)
            kept: list[str] = []
            for event_id in event_ids:
                if event_id in seen:
                    raise InputError(
                        f"EventID {event_id!r} is assigned twice, to {seen[event_id]!r} and to "
                        f"{name!r}; expected each EventID in exactly one domain; remove one of "
                        "the two entries"
                    )
                seen[event_id] = name
                if event_id not in known_set:
                    if on_unknown == "drop":
                        dropped.append(event_id)
                        continue
                    raise InputError(
                        f"domain {name!r} lists EventID {event_id!r}, which does not occur in "
                        f"the offline data ({len(known)} EventIDs); the partition was probably "
                        "made for another parse of the logs; remove the entry or regenerate "
                        "the partition"
                    )
                kept.append(event_id)
            domains[name] = kept
        if dropped:
            logger.warning(
                "dropped %s EventIDs unknown to the offline data from the partition: %s",
                len(dropped),
                ", ".join(dropped[:10]),
            )
        unassigned = [event_id for event_id in known if event_id not in seen]
        domains.setdefault(UNIVERSAL_NORMAL, []).extend(unassigned)
        return Partition(domains=domains, proposer=self.proposer, details=dict(self.details))

    def to_json(self) -> dict[str, Any]:
        """Serialise the partition as a plain JSON-compatible dictionary.

        Returns:
            ``{"format", "proposer", "domains", "details"}``; :meth:`from_json` reads it back.
        """
        return {
            "format": PARTITION_FORMAT,
            "proposer": self.proposer,
            "domains": {name: list(ids) for name, ids in self.domains.items()},
            "details": self.details,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Partition:
        """Rebuild a partition from :meth:`to_json` output.

        Args:
            data: The dictionary written by :meth:`to_json`.

        Returns:
            The restored partition.

        Raises:
            BundleError: If the structure is malformed.
        """
        try:
            domains_raw = data["domains"]
            domains = {str(name): [str(e) for e in ids] for name, ids in domains_raw.items()}
            details = dict(data.get("details") or {})
            return cls(domains=domains, proposer=str(data["proposer"]), details=details)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BundleError(
                f"partition JSON is malformed ({type(exc).__name__}: {exc}); expected the "
                "structure written by Partition.to_json; rebuild the bundle"
            ) from exc


@runtime_checkable
class Proposer(Protocol):
    """Anything that proposes a failure-domain partition from a K-shot sample.

    Attributes:
        name: The registry name of the proposer (``"tfidf"``, ``"file"``, ...).
    """

    name: str

    def propose(self, sample: KShotSample) -> Partition:
        """Propose a partition of the sample's EventIDs.

        Args:
            sample: The K-shot sample whose per-EventID statistics drive the proposal.

        Returns:
            A partition normalised against ``sample.events``.
        """
        ...
