"""Failure-domain partition proposers (paper Section III-B1) behind one interface.

Use :func:`get_proposer` to build a proposer by name:

- ``"tfidf"``: :class:`TfidfProposer`, the paper's deterministic non-LLM grouping variant.
- ``"file"``: :class:`FileProposer`, a partition a person wrote or reviewed (JSON).
- ``"llm"``: :class:`LLMProposer`, the paper's grouping by a chat model (any provider of
  :mod:`fame.llm`).
- ``"single"``: :class:`SingleDomainProposer`, no failure domains (the single-global-model
  ablation).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fame.errors import ConfigError
from fame.partition.base import (
    DOMAIN_NAME_PATTERN,
    UNIVERSAL_NORMAL,
    Partition,
    Proposer,
    validate_domain_name,
)
from fame.partition.file import FileProposer, read_partition_file, write_partition_file
from fame.partition.llm import LLMProposer
from fame.partition.single import SingleDomainProposer
from fame.partition.tfidf import TfidfProposer, log_tokens

__all__ = [
    "DOMAIN_NAME_PATTERN",
    "PROPOSER_NAMES",
    "UNIVERSAL_NORMAL",
    "FileProposer",
    "LLMProposer",
    "Partition",
    "Proposer",
    "SingleDomainProposer",
    "TfidfProposer",
    "get_proposer",
    "log_tokens",
    "read_partition_file",
    "validate_domain_name",
    "write_partition_file",
]


_FACTORIES: dict[str, Callable[..., Proposer]] = {
    "tfidf": TfidfProposer,
    "file": FileProposer,
    "llm": LLMProposer,
    "single": SingleDomainProposer,
}

#: Every proposer name the registry knows, in the order shown to users.
PROPOSER_NAMES: tuple[str, ...] = tuple(_FACTORIES)


def get_proposer(name: str, **options: Any) -> Proposer:
    """Build a partition proposer by registry name.

    Args:
        name: ``"tfidf"``, ``"file"``, ``"llm"`` or ``"single"`` (case-insensitive).
        **options: Keyword arguments of the proposer's constructor (e.g. ``path=`` for
            ``"file"``, ``similarity_threshold=`` for ``"tfidf"``).

    Returns:
        The configured proposer.

    Raises:
        ConfigError: For an unknown name or options the proposer does not accept.
    """
    key = name.strip().lower() if isinstance(name, str) else name
    factory = _FACTORIES.get(key)
    if factory is None:
        raise ConfigError(
            f"unknown partition proposer {name!r}; expected one of {', '.join(PROPOSER_NAMES)}"
        )
    try:
        return factory(**options)
    except TypeError as exc:
        raise ConfigError(
            f"invalid options for the {key} proposer ({exc}); see the documentation of "
            f"{getattr(factory, '__name__', key)} for the accepted options"
        ) from exc
