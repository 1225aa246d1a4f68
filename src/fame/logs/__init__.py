"""Reading raw logs: line formats, a streaming record reader and external label files."""

from __future__ import annotations

from fame.logs.formats import (
    FORMAT_NAMES,
    LABEL_TOKEN_PATTERN,
    LogFormat,
    format_from_json,
    format_to_json,
    get_format,
    header_to_regex,
)
from fame.logs.labels import load_label_csv, parse_label_token
from fame.logs.reader import LogRecord, LogSource, ReadStats, count_lines, read_records

__all__ = [
    "FORMAT_NAMES",
    "LABEL_TOKEN_PATTERN",
    "LogFormat",
    "LogRecord",
    "LogSource",
    "ReadStats",
    "count_lines",
    "format_from_json",
    "format_to_json",
    "get_format",
    "header_to_regex",
    "load_label_csv",
    "parse_label_token",
    "read_records",
]
