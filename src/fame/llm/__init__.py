"""Chat models for the offline grouping (III-B1) and per-template triage.

- :mod:`fame.llm.providers`: the provider interface and the ``local``, ``openai`` and
  ``anthropic`` implementations.
- :mod:`fame.llm.cache`: answers cached by request hash, and every call kept for audit.
- :mod:`fame.llm.redaction`: what is removed from log text before it leaves the machine.
- :mod:`fame.llm.model_files`: the verified offline model assembled from its PyPI parts.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fame.llm.cache import RecordingClient
from fame.llm.providers import (
    PROVIDER_NAMES,
    DryRunProvider,
    LLMError,
    LLMProvider,
    LLMResponse,
    Message,
    get_provider,
)
from fame.llm.redaction import Redactor

__all__ = [
    "DEFAULT_LOCAL_MODEL",
    "PROVIDER_NAMES",
    "DryRunProvider",
    "LLMError",
    "LLMProvider",
    "LLMResponse",
    "Message",
    "RecordingClient",
    "Redactor",
    "client_from_settings",
    "get_provider",
    "provider_from_settings",
    "resolve_local_model",
]

logger = logging.getLogger(__name__)

#: Where the local model is assembled when ``llm_model`` is not given.
DEFAULT_LOCAL_MODEL = Path("~/.cache/fame/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf")


def resolve_local_model(model: str | None) -> str:
    """The GGUF path to use: ``model`` if given, else the default one, assembled if needed.

    Raises:
        ConfigError: If no model is given and the PyPI parts are not installed.
    """
    if model:
        return model
    from fame.llm.model_files import LOCAL_MODEL_SIZE, assemble_local_model

    path = DEFAULT_LOCAL_MODEL.expanduser()
    if path.is_file() and path.stat().st_size == LOCAL_MODEL_SIZE:
        return str(path)
    logger.info("no --llm-model given: assembling the default local model at %s", path)
    return str(assemble_local_model(path))


def provider_from_settings(settings: Any) -> LLMProvider:
    """Build the configured provider from :class:`fame.config.Settings`."""
    model = settings.llm_model
    if settings.llm_provider == "local":
        model = resolve_local_model(model)
    return get_provider(
        settings.llm_provider,
        model=model,
        base_url=settings.llm_base_url,
        key_env=settings.llm_key_env,
        timeout=settings.llm_timeout,
        context_tokens=settings.llm_context_tokens,
        threads=settings.threads,
        seed=settings.seed,
    )


def client_from_settings(settings: Any, *, connect: bool = True) -> RecordingClient:
    """The configured provider wrapped with the answer cache and audit trail.

    Args:
        settings: The :class:`fame.config.Settings`.
        connect: False builds a :class:`DryRunProvider` that sends nothing (``--dry-run``).
    """
    cache = settings.llm_cache_dir or None
    if not connect:
        return RecordingClient(
            DryRunProvider(settings.llm_provider, settings.llm_model, settings.llm_base_url), None
        )
    return RecordingClient(provider_from_settings(settings), cache)
