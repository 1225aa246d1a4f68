"""Request bodies to log lines: JSON arrays, NDJSON and plain text, with their limits.

What a shipper posts becomes a list of raw lines (bytes, one per result) and, where the
body names one, each line's source. Lines stay bytes so that the reader of ``fame detect``
decodes them (invalid UTF-8 replaced and counted), and the service answers exactly what
``fame detect`` answers for the same lines.

Accepted bodies:

- ``application/json``: an array whose items are lines (strings) or objects with a
  ``message`` string (and optionally a ``source`` string); or objects one per line (NDJSON),
  each with a ``message``.
- ``application/x-ndjson`` (also ``application/jsonl``, ``application/x-jsonlines``): one
  item per line; a line that is a JSON object with a ``message`` string gives that message,
  any other line is taken as a raw log line.
- ``text/plain``: raw log lines, one per line, like a file given to ``fame detect``.

A message with line breaks (e.g. a stack trace shipped as one event) is one line: its
breaks are replaced by spaces. An empty body or an empty array is an empty batch.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from fame.errors import InputError

JSON_TYPES = ("application/json",)
NDJSON_TYPES = (
    "application/x-ndjson",
    "application/ndjson",
    "application/jsonl",
    "application/x-jsonlines",
)
TEXT_TYPES = ("text/plain",)
ACCEPTED_TYPES = JSON_TYPES + NDJSON_TYPES + TEXT_TYPES

_BREAKS = re.compile(r"\r\n|\r|\n")


class BodyError(InputError):
    """A request body that cannot be read as lines (answered 400: fix the body's syntax)."""


class BodyTooLarge(InputError):
    """A body over the size or line-count limit (answered 413: split it)."""


class BodyInvalid(InputError):
    """A well-formed body whose items are not lines (answered 422: fix its items)."""


class UnsupportedType(InputError):
    """A content type the service does not read (answered 415)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """What one request may hold.

    Attributes:
        max_bytes: Largest body, in bytes.
        max_lines: Most lines.
        max_line_chars: Longest line, in characters.
    """

    max_bytes: int
    max_lines: int
    max_line_chars: int


@dataclass(slots=True)
class Lines:
    """The lines of one request, in order.

    Attributes:
        raw: Each line's bytes, without line breaks.
        sources: Each line's source when the body named one (None: the request's).
    """

    raw: list[bytes] = field(default_factory=list)
    sources: list[str | None] = field(default_factory=list)

    def add(self, raw: bytes, source: str | None = None) -> None:
        """Append one line."""
        self.raw.append(raw)
        self.sources.append(source)


def media_type(content_type: str | None) -> str:
    """The media type of a Content-Type header, lower case, without parameters."""
    if not content_type:
        return "application/json"
    return content_type.split(";", 1)[0].strip().lower()


def parse_body(body: bytes, content_type: str | None, limits: Limits) -> Lines:
    """Read a request body into lines, enforcing the limits.

    Args:
        body: The raw body.
        content_type: The request's Content-Type header (None: JSON).
        limits: What one request may hold.

    Returns:
        The lines in order.

    Raises:
        BodyTooLarge: Over ``max_bytes`` or ``max_lines``.
        BodyError: Not valid JSON (or JSON that is not UTF-8).
        BodyInvalid: Items that are not lines, or a line over ``max_line_chars``.
        UnsupportedType: A content type other than JSON, NDJSON or plain text.
    """
    if len(body) > limits.max_bytes:
        raise BodyTooLarge(
            f"request body of {len(body)} bytes is over the limit of {limits.max_bytes}; send "
            "smaller batches (or raise --request-max-bytes)"
        )
    kind = media_type(content_type)
    if kind not in ACCEPTED_TYPES and not kind.endswith("+json"):
        raise UnsupportedType(
            f"content type {kind!r} is not accepted; send {', '.join(ACCEPTED_TYPES)}"
        )
    if not body.strip():
        return Lines()
    if kind in TEXT_TYPES:
        lines = _raw_lines(body, limits)
    elif kind in NDJSON_TYPES:
        lines = _ndjson_lines(body, limits, strict=False)
    elif body.lstrip()[:1] == b"[":
        lines = _json_array_lines(body, limits)
    else:
        lines = _ndjson_lines(body, limits, strict=True)
    _check_lengths(lines, limits)
    return lines


def _split(body: bytes, limits: Limits) -> list[bytes]:
    """Physical lines as the log reader splits them (a final newline ends the last line)."""
    count = body.count(b"\n") + (0 if body.endswith(b"\n") else 1)
    if count > limits.max_lines:
        raise _too_many(count, limits)
    parts = body.split(b"\n")
    if body.endswith(b"\n"):
        parts.pop()
    return [p[:-1] if p.endswith(b"\r") else p for p in parts]


def _raw_lines(body: bytes, limits: Limits) -> Lines:
    lines = Lines()
    for raw in _split(body, limits):
        lines.add(raw)
    return lines


def _ndjson_lines(body: bytes, limits: Limits, *, strict: bool) -> Lines:
    lines = Lines()
    for number, raw in enumerate(_split(body, limits), start=1):
        item: Any = None
        if raw.lstrip()[:1] == b"{":
            try:
                item = json.loads(raw)
            except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
                if strict:
                    raise BodyError(
                        f"line {number} of the body is not valid JSON ({exc}); send a JSON "
                        "array, one JSON object per line, or raw lines as "
                        "application/x-ndjson or text/plain"
                    ) from exc
        if isinstance(item, dict):
            message, source = _message_of(item, f"line {number}")
            lines.add(message, source)
        elif strict:
            raise BodyError(
                f"line {number} of the body is not a JSON object with a 'message'; send raw "
                "lines as application/x-ndjson or text/plain"
            )
        else:
            lines.add(raw)
    return lines


def _json_array_lines(body: bytes, limits: Limits) -> Lines:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyError(
            f"a JSON body must be UTF-8, but byte {exc.start} is not; send raw lines in other "
            "encodings as text/plain or application/x-ndjson (invalid bytes are replaced)"
        ) from exc
    try:
        items = json.loads(text)
    except ValueError as exc:
        raise BodyError(
            f"the body is not valid JSON ({exc}); send a JSON array of lines, e.g. "
            '["line one", "line two"], or {"message": ...} objects'
        ) from exc
    if not isinstance(items, list):
        raise BodyInvalid(
            f"a JSON body must be an array of lines, got {type(items).__name__}; e.g. "
            '["line one", "line two"]'
        )
    if len(items) > limits.max_lines:
        raise _too_many(len(items), limits)
    lines = Lines()
    for index, item in enumerate(items):
        if isinstance(item, str):
            lines.add(_encode(item))
        elif isinstance(item, dict):
            message, source = _message_of(item, f"item {index}")
            lines.add(message, source)
        else:
            raise BodyInvalid(
                f"item {index} of the array is {type(item).__name__}; each item must be a line "
                "(a string) or an object with a 'message' string"
            )
    return lines


def _message_of(item: dict[str, Any], where: str) -> tuple[bytes, str | None]:
    message = item.get("message")
    if not isinstance(message, str):
        found = ", ".join(sorted(map(str, item))[:8]) or "none"
        raise BodyInvalid(
            f"{where}: an object needs a 'message' string (the log line); its keys are "
            f"{found}. Shippers: map the line's field to 'message' (e.g. Fluent Bit's tail "
            "input 'Key message')"
        )
    source = item.get("source")
    return _encode(message), source if isinstance(source, str) and source else None


def _encode(text: str) -> bytes:
    # Lone surrogates (possible in JSON escapes) become invalid bytes that the reader
    # replaces and counts, as it does for a file.
    return _BREAKS.sub(" ", text).encode("utf-8", errors="surrogatepass")


def _check_lengths(lines: Lines, limits: Limits) -> None:
    limit = limits.max_line_chars
    for index, raw in enumerate(lines.raw):
        if len(raw) > limit and len(raw.decode("utf-8", errors="replace")) > limit:
            raise BodyInvalid(
                f"line {index + 1} has more than {limit} characters; cut long lines before "
                "sending (or raise --request-max-line-chars)"
            )


def _too_many(count: int, limits: Limits) -> BodyTooLarge:
    return BodyTooLarge(
        f"request holds {count} lines, over the limit of {limits.max_lines}; send smaller "
        "batches (or raise --request-max-lines)"
    )
