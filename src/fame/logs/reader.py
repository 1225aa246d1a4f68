"""Streaming reader that turns raw log lines into :class:`LogRecord` objects.

The reader never holds a file in memory: it reads one line at a time in binary, so files of
any size (the full BGL log has 4.7M lines) stream through in constant memory, and it yields
exactly one record per input line, in order, so that record ``i`` always describes line ``i``
(labels, splits and reports rely on this alignment). Lines that are empty, not valid UTF-8,
too long or not in the expected format are still yielded, flagged and counted in
:class:`ReadStats`, never dropped.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

from fame.errors import ConfigError, InputError
from fame.logs.formats import LogFormat
from fame.logs.labels import parse_label_token

__all__ = ["LogRecord", "ReadStats", "count_lines", "read_records"]

logger = logging.getLogger(__name__)

#: A path, ``"-"`` for standard input, or a binary file object.
LogSource = str | os.PathLike[str] | BinaryIO

_SKIP_CHUNK = 1 << 16
_COUNT_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One input line, split into what Drain sees, what the models see and its label.

    Attributes:
        line_no: 1-based position of the line in the input.
        content: The parse field (normally ``Content``): what Drain parses (paper III-A). For
            a malformed line, the line without its label token.
        text: The model-visible text: the format's model fields joined by one space, empty
            fields skipped. Equal to ``content`` for a malformed line.
        label: ``True`` anomalous, ``False`` normal, ``None`` unknown.
        label_value: The raw label token (``-``, ``KERNDTLB``, ...) or ``None``.
        malformed: The line did not fit the format (empty lines are not malformed; they are
            counted in :attr:`ReadStats.empty`).
        truncated: The line was longer than ``max_line_chars`` and was cut.
        fields: Header fields by name, without the label field. A malformed line has every
            field empty except the parse field.
    """

    line_no: int
    content: str
    text: str
    label: bool | None
    label_value: str | None
    malformed: bool = False
    truncated: bool = False
    fields: Mapping[str, str] = field(default_factory=dict, hash=False)


@dataclass
class ReadStats:
    """Counts of what :func:`read_records` met, updated while it streams.

    Attributes:
        lines: Records yielded (= input lines).
        malformed: Lines that did not match the format.
        decode_errors: Lines with bytes that are not valid UTF-8 (replaced by U+FFFD).
        truncated: Lines cut to ``max_line_chars``.
        empty: Lines that were empty or whitespace only.
        labelled: Records whose label is known.
        anomalous: Records labelled anomalous.
    """

    lines: int = 0
    malformed: int = 0
    decode_errors: int = 0
    truncated: int = 0
    empty: int = 0
    labelled: int = 0
    anomalous: int = 0

    def to_json(self) -> dict[str, int]:
        """The counts as a plain dictionary (for reports and bundle provenance).

        Returns:
            ``{"lines": ..., "malformed": ..., ...}``.
        """
        return asdict(self)

    def warn_summary(self, log: logging.Logger | None = None, *, source: str = "input") -> int:
        """Log one WARNING per nonzero problem count, each with a hint on what to do.

        Args:
            log: Logger to write to (default: this module's).
            source: Name of the input, for the messages.

        Returns:
            The number of warnings written.
        """
        out = log if log is not None else logger
        warned = 0
        if self.malformed:
            out.warning(
                "%s: %d of %d lines did not match the log format; they were kept whole "
                "(label token removed where recognisable). Check --format (or the custom "
                "header/regex) against a few lines of the file",
                source,
                self.malformed,
                self.lines,
            )
            warned += 1
        if self.decode_errors:
            out.warning(
                "%s: %d lines had bytes that are not valid UTF-8 and were decoded with U+FFFD "
                "replacement characters; if the file uses another encoding convert it first "
                "(e.g. iconv -f latin1 -t utf-8)",
                source,
                self.decode_errors,
            )
            warned += 1
        if self.truncated:
            out.warning(
                "%s: %d lines were longer than max_line_chars and were cut; raise "
                "max_line_chars if their ends matter (the tokenizer truncates each line to the "
                "model's token limit anyway)",
                source,
                self.truncated,
            )
            warned += 1
        if self.empty:
            out.warning(
                "%s: %d lines were empty; they were kept as empty records so line numbers "
                "stay aligned",
                source,
                self.empty,
            )
            warned += 1
        return warned


def _check_path(path: Path) -> None:
    if not path.exists():
        raise InputError(f"log file {str(path)!r} does not exist; check the path")
    if path.is_dir():
        raise InputError(f"log file {str(path)!r} is a directory; pass a log file inside it")
    if not os.access(path, os.R_OK):
        raise InputError(
            f"log file {str(path)!r} is not readable by this user; check its permissions"
        )


def _drop_partial_utf8_tail(raw: bytes) -> bytes:
    """Remove an incomplete UTF-8 sequence that a byte-limited read left at the end."""
    for back in range(1, min(4, len(raw)) + 1):
        byte = raw[-back]
        if byte & 0xC0 == 0x80:  # continuation byte: keep looking for the lead byte
            continue
        if byte < 0x80:
            need = 1
        elif byte >= 0xF0:
            need = 4
        elif byte >= 0xE0:
            need = 3
        else:
            need = 2
        return raw[:-back] if back < need else raw
    return raw


def _physical_lines(stream: BinaryIO, byte_limit: int) -> Iterator[tuple[bytes, bool]]:
    """Yield each line's bytes without its newline, and whether it exceeded ``byte_limit``.

    Reading at most ``byte_limit`` bytes per call keeps memory bounded even for a
    multi-gigabyte line without newlines; the rest of such a line is skipped in chunks.
    """
    while True:
        raw = stream.readline(byte_limit)
        if not raw:
            return
        if not isinstance(raw, bytes):
            raise InputError(
                "the log stream yields text, not bytes; open the file in binary mode ('rb') "
                "or pass sys.stdin.buffer"
            )
        if raw.endswith(b"\n"):
            raw = raw[:-1]
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            yield raw, False
        elif len(raw) >= byte_limit:
            while True:
                rest = stream.readline(_SKIP_CHUNK)
                if not rest or rest.endswith(b"\n"):
                    break
            yield _drop_partial_utf8_tail(raw), True
        else:  # last line of the input, without a newline
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            yield raw, False


def _records(
    source: LogSource,
    fmt: LogFormat,
    labels: Mapping[int, bool] | None,
    max_line_chars: int,
    stats: ReadStats,
    own_stats: bool,
) -> Iterator[LogRecord]:
    name = "<stdin>" if isinstance(source, str) and source == "-" else str(source)
    if isinstance(source, str | os.PathLike):
        if name == "<stdin>":
            yield from _parse_stream(sys.stdin.buffer, fmt, labels, max_line_chars, stats)
        else:
            try:
                handle = open(source, "rb")  # noqa: SIM115 - closed in the finally below
            except OSError as exc:
                raise InputError(
                    f"cannot open log file {name!r} ({exc.strerror or exc}); check the path "
                    "and its permissions"
                ) from exc
            try:
                yield from _parse_stream(handle, fmt, labels, max_line_chars, stats)
            except OSError as exc:
                raise InputError(
                    f"error while reading log file {name!r} ({exc.strerror or exc})"
                ) from exc
            finally:
                handle.close()
    else:
        name = str(getattr(source, "name", "<stream>"))
        yield from _parse_stream(source, fmt, labels, max_line_chars, stats)
    logger.debug("read %s: %s", name, stats)
    if own_stats:
        # Nobody else will see the counts, so report problems here rather than lose them.
        stats.warn_summary(logger, source=name)


def _parse_stream(
    stream: BinaryIO,
    fmt: LogFormat,
    labels: Mapping[int, bool] | None,
    max_line_chars: int,
    stats: ReadStats,
) -> Iterator[LogRecord]:
    regex = fmt.regex
    label_field = fmt.label_field
    label_pattern = fmt.label_pattern
    # Only a leading label can be recovered from a line the regex rejects.
    recover_pattern = label_pattern if fmt.label_first else None
    header_fields = fmt.header_fields
    parse_field = fmt.parse_field
    model_fields = fmt.model_fields
    empty_fields = dict.fromkeys(header_fields, "")
    # A UTF-8 character takes at most 4 bytes, so this many bytes always hold more than
    # max_line_chars characters of any line that gets cut.
    byte_limit = 4 * max_line_chars + 4

    line_no = 0
    for raw, overflow in _physical_lines(stream, byte_limit):
        line_no += 1
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            line = raw.decode("utf-8", errors="replace")
            stats.decode_errors += 1
        truncated = overflow
        if len(line) > max_line_chars:
            line = line[:max_line_chars]
            truncated = True
        if truncated:
            stats.truncated += 1

        label_value: str | None = None
        malformed = False
        if not line.strip():
            stats.empty += 1
            content = text = ""
            fields: dict[str, str] = empty_fields.copy()
        else:
            match = regex.match(line)
            if match is not None and label_field is not None:
                label_value = match.group(label_field) or ""
                label_value = label_value.strip()
                if label_pattern is not None and not label_pattern.fullmatch(label_value):
                    # e.g. an unlabelled log read as bgl: the timestamp sits in the label slot.
                    match = None
            if match is not None:
                groups = match.groupdict(default="")
                fields = {name: groups[name] or "" for name in header_fields}
                content = fields[parse_field]
                text = " ".join(v for f in model_fields if (v := fields[f].strip()))
            else:
                malformed = True
                stats.malformed += 1
                label_value = None
                content = line
                if recover_pattern is not None:
                    parts = line.split(None, 1)
                    if recover_pattern.fullmatch(parts[0]):
                        # Strip the label before anything else sees the line (paper III-A).
                        label_value = parts[0]
                        content = parts[1] if len(parts) > 1 else ""
                text = content
                fields = empty_fields.copy()
                fields[parse_field] = content

        label = parse_label_token(label_value) if label_value else None
        if not label_value:
            label_value = None
        if labels is not None and line_no in labels:
            label = labels[line_no]
        stats.lines += 1
        if label is not None:
            stats.labelled += 1
            if label:
                stats.anomalous += 1
        yield LogRecord(
            line_no=line_no,
            content=content,
            text=text,
            label=label,
            label_value=label_value,
            malformed=malformed,
            truncated=truncated,
            fields=fields,
        )

    if labels:
        beyond = sum(1 for n in labels if n > line_no)
        if beyond:
            logger.warning(
                "%d labels refer to lines after the last input line (%d); check that the "
                "label file belongs to this log",
                beyond,
                line_no,
            )


def read_records(
    source: LogSource,
    fmt: LogFormat,
    *,
    labels: Mapping[int, bool] | None = None,
    max_line_chars: int = 20000,
    stats: ReadStats | None = None,
) -> Iterator[LogRecord]:
    """Stream the records of a log, one per input line, in order.

    Each line is read in binary and decoded as UTF-8 with replacement of invalid bytes; only
    the trailing newline (and a CR before it) is removed. The label token is taken out before
    anything else sees the line, so ``content`` and ``text`` never contain it (paper III-A).
    A line that does not fit ``fmt`` is yielded with ``malformed=True``: if the format's label
    leads the line and the first token looks like a label, it is the label token and the rest
    is the content, otherwise the whole line is. Lines longer than ``max_line_chars``
    characters are cut (``truncated=True``); the tokenizer later truncates each text to the
    model's token limit anyway, so this bound only protects memory and regex time.

    The path is checked when this function is called; the file is opened on first iteration
    and closed when the iterator is exhausted or closed.

    Args:
        source: A path, ``"-"`` for standard input (read as bytes), or a binary file object
            (not closed here).
        fmt: The line layout, from :func:`fame.logs.get_format`.
        labels: Labels by 1-based line number (from :func:`fame.logs.load_label_csv`); they
            override inline labels and label lines that have none.
        max_line_chars: Longest line kept, in characters.
        stats: Counts to update while reading. When given, the caller reports them (e.g.
            with :meth:`ReadStats.warn_summary`); when omitted, problems are logged as
            warnings once the input is exhausted.

    Returns:
        An iterator of :class:`LogRecord`.

    Raises:
        InputError: If the path does not exist, is a directory or is unreadable (at call time),
            or reading fails (during iteration).
        ConfigError: If ``max_line_chars`` is below 1.
    """
    if isinstance(max_line_chars, bool) or not isinstance(max_line_chars, int):
        raise ConfigError(f"max_line_chars must be an integer, got {max_line_chars!r}")
    if max_line_chars < 1:
        raise ConfigError(
            f"max_line_chars must be at least 1, got {max_line_chars}; the default is 20000"
        )
    if isinstance(source, str | os.PathLike) and not (isinstance(source, str) and source == "-"):
        _check_path(Path(source))
    own_stats = stats is None
    return _records(
        source, fmt, labels, max_line_chars, stats if stats is not None else ReadStats(), own_stats
    )


def count_lines(path: str | os.PathLike[str]) -> int:
    """Count the records :func:`read_records` will yield for a file, for progress bars.

    Reads the file in binary chunks: a final line without a newline counts as a line.

    Args:
        path: The log file (not ``"-"``: standard input cannot be read twice).

    Returns:
        The number of lines.

    Raises:
        InputError: If the path is ``"-"``, does not exist, is a directory or is unreadable.
    """
    if isinstance(path, str) and path == "-":
        raise InputError(
            "cannot count the lines of standard input ahead of reading it; pass a file path "
            "or run without a progress total"
        )
    file_path = Path(path)
    _check_path(file_path)
    count = 0
    last = b""
    try:
        with file_path.open("rb") as handle:
            while chunk := handle.read(_COUNT_CHUNK):
                count += chunk.count(b"\n")
                last = chunk
    except OSError as exc:
        raise InputError(
            f"cannot read log file {str(file_path)!r} ({exc.strerror or exc})"
        ) from exc
    if last and not last.endswith(b"\n"):
        count += 1
    return count
