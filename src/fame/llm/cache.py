"""Calls to a model, cached by request hash and recorded for audit.

:class:`RecordingClient` wraps an :class:`~fame.llm.providers.LLMProvider`: a request
(provider, model, messages, schema, token limit) is hashed; an answer already stored under
that hash in the cache directory is reused without calling the model, so rerunning setup on
the same data does not ask again. Every call, cached or not, is appended to
:attr:`RecordingClient.calls` with the prompt, the raw answer, the model, the provider and
the time, which setup stores in the bundle for audit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fame.llm.providers import LLMProvider, LLMResponse, Message, model_label

logger = logging.getLogger(__name__)


def request_key(
    provider: LLMProvider,
    messages: Sequence[Message],
    schema: Mapping[str, Any] | None,
    max_tokens: int,
) -> str:
    """SHA-256 of everything that determines a model's answer."""
    payload = {
        "provider": provider.name,
        "model": model_label(provider),
        "messages": [m.to_json() for m in messages],
        "schema": schema,
        "max_tokens": max_tokens,
    }
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


class RecordingClient:
    """A provider with an answer cache on disk and an audit trail in memory.

    Args:
        provider: The provider that answers cache misses.
        cache_dir: Directory of cached answers (one JSON file per request hash); None
            disables the cache.
    """

    def __init__(self, provider: LLMProvider, cache_dir: str | Path | None) -> None:
        self.provider = provider
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.calls: list[dict[str, Any]] = []

    @property
    def model_calls(self) -> int:
        """Calls that reached the model (cache misses)."""
        return sum(1 for call in self.calls if not call["cached"])

    def complete(
        self,
        messages: Sequence[Message],
        *,
        purpose: str,
        schema: Mapping[str, Any] | None = None,
        max_tokens: int = 2048,
    ) -> LLMResponse:
        """Answer ``messages`` from the cache or the model, and record the call.

        Args:
            messages: The chat messages.
            purpose: What the call is for, kept in the audit record.
            schema: JSON schema of the expected answer.
            max_tokens: Answer token limit.

        Raises:
            LLMError: If the model call fails.
        """
        key = request_key(self.provider, messages, schema, max_tokens)
        cached = self._load(key)
        if cached is not None:
            response = cached
            logger.info("%s: answer reused from the cache (%s)", purpose, key[:12])
        else:
            logger.info("%s: asking %s model %s", purpose, self.provider.name, self.provider.model)
            response = self.provider.complete(messages, schema=schema, max_tokens=max_tokens)
            logger.info("%s: answered in %.1f s", purpose, response.seconds)
            self._store(key, messages, response)
        self.calls.append(
            {
                "purpose": purpose,
                "request_sha256": key,
                "provider": response.provider,
                "model": response.model,
                "time": datetime.now(UTC).isoformat(timespec="seconds"),
                "seconds": round(response.seconds, 3),
                "cached": cached is not None,
                "usage": response.usage,
                "truncated": response.truncated,
                "messages": [m.to_json() for m in messages],
                "response": response.text,
            }
        )
        return response

    def _path(self, key: str) -> Path | None:
        return self.cache_dir / f"{key}.json" if self.cache_dir else None

    def _load(self, key: str) -> LLMResponse | None:
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            answer = data["response"]
            return LLMResponse(
                text=str(answer["text"]),
                provider=str(answer["provider"]),
                model=str(answer["model"]),
                seconds=float(answer["seconds"]),
                usage={str(k): int(v) for k, v in dict(answer.get("usage") or {}).items()},
                truncated=bool(answer.get("truncated", False)),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("ignoring unreadable cached answer %s (%s)", path, exc)
            return None

    def _store(self, key: str, messages: Sequence[Message], response: LLMResponse) -> None:
        path = self._path(key)
        if path is None:
            return
        record = {
            "created": time.time(),
            "messages": [m.to_json() for m in messages],
            "response": {
                "text": response.text,
                "provider": response.provider,
                "model": response.model,
                "seconds": response.seconds,
                "usage": response.usage,
                "truncated": response.truncated,
            },
        }
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".partial")
            partial.write_text(json.dumps(record, ensure_ascii=False), encoding="utf-8")
            os.replace(partial, path)
        except OSError as exc:
            logger.warning("could not cache the answer in %s (%s); continuing", path, exc)
