"""Raw log line layouts: which header fields a line has and which of them the models see.

A :class:`LogFormat` names the fields of one line, the regular expression that splits a line
into them, the field that carries an inline label (Loghub's BGL and Thunderbird put it first),
the field Drain parses (paper III-A) and the fields the classifiers read.

Volatile header fields (timestamps, dates, node and user ids, PIDs) are left out of what the
models see by default: they change on every line, carry no information about whether one
message is anomalous, and would let a per-message classifier memorise time periods or nodes
instead of message semantics.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fame.errors import BundleError, InputError

__all__ = [
    "FORMAT_NAMES",
    "LABEL_TOKEN_PATTERN",
    "LogFormat",
    "format_from_json",
    "format_to_json",
    "get_format",
    "header_to_regex",
]

#: Tag written by :func:`format_to_json` and checked by :func:`format_from_json`.
FORMAT_JSON_TAG = "fame.log_format/1"

#: Loghub's inline label convention: ``-`` for a normal line, an upper-case alert category
#: (``KERNDTLB``, ``APPREAD``, ``VAPI``, ``PBS_CON``, ...) for an anomalous one. Requiring
#: this shape, rather than accepting any first token, means that an unlabelled log read with
#: a labelled format shows up as malformed lines instead of as 100% anomalies.
LABEL_TOKEN_PATTERN = r"-|[A-Z][A-Z0-9_]+"

_LABEL = rf"(?P<Label>{LABEL_TOKEN_PATTERN})"

# BGL: Label Timestamp Date Node Time NodeRepeat Type Component Level Content. The content
# may be empty (619 lines of bgl_sample.log end right after the level), so it is optional.
_BGL_REGEX = (
    rf"^{_LABEL}\s+(?P<Timestamp>\S+)\s+(?P<Date>\S+)\s+(?P<Node>\S+)\s+(?P<Time>\S+)"
    r"\s+(?P<NodeRepeat>\S+)\s+(?P<Type>\S+)\s+(?P<Component>\S+)\s+(?P<Level>\S+)"
    r"(?:\s+(?P<Content>.*))?$"
)
_BGL_FIELDS: tuple[str, ...] = (
    "Label",
    "Timestamp",
    "Date",
    "Node",
    "Time",
    "NodeRepeat",
    "Type",
    "Component",
    "Level",
    "Content",
)

# Thunderbird: Label Timestamp Date User Month Day Time Location Component[PID]: Content.
# As in Loghub's `<Component>(\[<PID>\])?: <Content>`, the component is the shortest text
# that is followed by an optional `[PID]` and a colon plus whitespace: it may contain spaces
# ("IA32 emulation $Id") and colons not followed by whitespace ("audit(1131538222.234:0)"),
# and `dhcpd: ...` lines have no PID. This reproduces all 2,000 rows of Loghub's
# Thunderbird_2k.log_structured.csv.
_THUNDERBIRD_REGEX = (
    rf"^{_LABEL}\s+(?P<Timestamp>\S+)\s+(?P<Date>\S+)\s+(?P<User>\S+)\s+(?P<Month>\S+)"
    r"\s+(?P<Day>\S+)\s+(?P<Time>\S+)\s+(?P<Location>\S+)\s+(?P<Component>.*?)"
    r"(?:\[(?P<PID>\d+)\])?:(?:\s+|$)(?P<Content>.*)$"
)
_THUNDERBIRD_FIELDS: tuple[str, ...] = (
    "Label",
    "Timestamp",
    "Date",
    "User",
    "Month",
    "Day",
    "Time",
    "Location",
    "Component",
    "PID",
    "Content",
)

#: Names accepted by :func:`get_format`.
FORMAT_NAMES: tuple[str, ...] = ("bgl", "thunderbird", "custom")

_DEFAULT_MODEL_FIELDS: dict[str, tuple[str, ...]] = {
    "bgl": ("Component", "Level", "Content"),
    "thunderbird": ("Component", "Content"),
    "custom": ("Content",),
}

_FIELD_IN_HEADER = re.compile(r"<([^<>]+)>")


@dataclass(frozen=True)
class LogFormat:
    """The layout of one kind of raw log line.

    Attributes:
        name: Registry name (``bgl``, ``thunderbird``, ``custom``).
        fields: Header field names in line order; the last is normally the free text
            (``Content``). A label field, if any, is one of them.
        regex: Pattern with one named group per field; a line that does not match it is a
            malformed line (kept, never dropped, see :func:`fame.logs.read_records`).
        label_field: Field holding the inline label token (``-`` = normal, anything else = an
            anomaly category), or ``None`` for logs without inline labels. It is removed before
            Drain or a model sees the line (paper III-A: "We strip label tokens to prevent
            leakage").
        parse_field: Field Drain parses into templates (paper III-A), normally ``Content``.
        model_fields: Fields, joined by one space, that form the text the models read.
            Volatile header fields (timestamps, node ids) are excluded by default because they
            are noise for a per-message classifier; the component and severity are kept where
            the format has them because they say which subsystem spoke.
        label_pattern: When set, a label token must fully match it. It is also used to
            recover the label of a malformed line from its first whitespace token, which is
            only meaningful when the label is the first field.
    """

    name: str
    fields: tuple[str, ...]
    regex: re.Pattern[str]
    label_field: str | None
    parse_field: str = "Content"
    model_fields: tuple[str, ...] = ("Content",)
    label_pattern: re.Pattern[str] | None = field(default=None)

    @property
    def categorical_fields(self) -> tuple[str, ...]:
        """Model fields other than the parsed text (BGL: component and level)."""
        return tuple(name for name in self.model_fields if name != self.parse_field)

    def __post_init__(self) -> None:
        """Check that the fields, regex groups and field roles agree.

        Raises:
            InputError: If a field role names a field the format does not have, the regex
                lacks a group for a field, or the label field would reach the models.
        """
        known = ", ".join(self.fields)
        if not self.fields:
            raise InputError(f"log format {self.name!r} has no fields; define at least Content")
        if len(set(self.fields)) != len(self.fields):
            raise InputError(
                f"log format {self.name!r} names a field twice ({known}); "
                "give every field a distinct name"
            )
        missing_groups = [f for f in self.fields if f not in self.regex.groupindex]
        if missing_groups:
            raise InputError(
                f"log format {self.name!r}: the regex has no named group for "
                f"{', '.join(missing_groups)}; add (?P<Name>...) groups for every field"
            )
        if self.label_field is not None and self.label_field not in self.fields:
            raise InputError(
                f"log format {self.name!r}: label field {self.label_field!r} is not one of "
                f"its fields ({known})"
            )
        if self.parse_field not in self.fields:
            raise InputError(
                f"log format {self.name!r}: parse field {self.parse_field!r} is not one of its "
                f"fields ({known}); name one of those"
            )
        if self.parse_field == self.label_field:
            raise InputError(
                f"log format {self.name!r}: the parse field cannot be the label field "
                f"{self.label_field!r} (the label would leak into the templates); "
                "name the free-text field instead"
            )
        if not self.model_fields:
            raise InputError(
                f"log format {self.name!r}: model_fields is empty; name at least one of "
                f"{known} (normally Content)"
            )
        unknown = [f for f in self.model_fields if f not in self.fields]
        if unknown:
            raise InputError(
                f"log format {self.name!r}: model field(s) {', '.join(unknown)} not among its "
                f"fields ({known}); choose model fields from those"
            )
        if self.label_field is not None and self.label_field in self.model_fields:
            raise InputError(
                f"log format {self.name!r}: model_fields contains the label field "
                f"{self.label_field!r}, which would leak the answer to the models; remove it"
            )

    @property
    def header_fields(self) -> tuple[str, ...]:
        """Fields other than the label field, in line order."""
        return tuple(f for f in self.fields if f != self.label_field)

    @property
    def label_first(self) -> bool:
        """Whether the label is the line's first field (Loghub's convention)."""
        return self.label_field is not None and self.fields[0] == self.label_field


def header_to_regex(header: str) -> tuple[tuple[str, ...], re.Pattern[str]]:
    """Turn a Loghub-style header template into field names and a regex.

    The construction is the one of Loghub's benchmark (``generate_logformat_regex``): every
    ``<Field>`` becomes a lazy group ``(?P<Field>.*?)``, every run of spaces between fields
    becomes ``\\s+``, other text between fields is kept as a regular-expression fragment (so
    Loghub's own templates such as ``<Component>(\\[<PID>\\])?: <Content>`` work verbatim; a
    literal ``[`` must be written ``\\[``), and the whole is anchored at both ends, so the
    last field takes the rest of the line.

    Args:
        header: A template such as ``"<Label> <Date> <Node> <Content>"``.

    Returns:
        The field names in order and the compiled pattern.

    Raises:
        InputError: If the template has no ``<Field>``, repeats or misnames a field, or does
            not compile.
    """
    pieces = re.split(r"(<[^<>]+>)", header.strip())
    fields: list[str] = []
    parts: list[str] = []
    for i, piece in enumerate(pieces):
        if i % 2 == 0:
            parts.append(re.sub(r" +", r"\\s+", piece))
            continue
        name = piece[1:-1].strip()
        if not name.isidentifier():
            raise InputError(
                f"header template field {piece!r} is not a valid name; use letters, digits and "
                "underscores, e.g. <Content>"
            )
        if name in fields:
            raise InputError(
                f"header template {header!r} names field {name!r} twice; give each field a "
                "distinct name"
            )
        fields.append(name)
        parts.append(f"(?P<{name}>.*?)")
    if not fields:
        raise InputError(
            f"header template {header!r} has no <Field> placeholders; expected something like "
            "'<Label> <Date> <Node> <Content>'"
        )
    try:
        regex = re.compile("^" + "".join(parts) + "$")
    except re.error as exc:
        raise InputError(
            f"header template {header!r} does not form a valid regular expression ({exc}); "
            "escape literal regex characters such as [ ] ( ) with a backslash"
        ) from exc
    return tuple(fields), regex


def _compile_custom_regex(regex: str) -> tuple[tuple[str, ...], re.Pattern[str]]:
    try:
        pattern = re.compile(regex)
    except re.error as exc:
        raise InputError(
            f"custom log regex {regex!r} does not compile ({exc}); fix the expression"
        ) from exc
    # Named groups in the order they open in the pattern are the line's field order.
    fields = tuple(name for name, _ in sorted(pattern.groupindex.items(), key=lambda kv: kv[1]))
    if not fields:
        raise InputError(
            f"custom log regex {regex!r} has no named groups; expected e.g. "
            r"'^(?P<Date>\S+) (?P<Content>.*)$'"
        )
    return fields, pattern


def get_format(
    name: str,
    *,
    header: str | None = None,
    regex: str | None = None,
    model_fields: Sequence[str] | None = None,
    parse_field: str = "Content",
) -> LogFormat:
    """Look up a log format by name, or build a custom one.

    ``bgl`` and ``thunderbird`` are Loghub's raw layouts with the inline label first. The
    default model text is ``Component Level Content`` for BGL and ``Component Content`` for
    Thunderbird; timestamps, dates, node/user ids, locations and PIDs are left out because
    they are volatile noise for a per-message classifier.

    ``custom`` needs exactly one of ``header`` (a Loghub-style template such as
    ``"<Label> <Date> <Node> <Content>"``, see :func:`header_to_regex`) or ``regex`` (a Python
    regular expression with named groups; field order is group order). It must have a
    ``Content`` field (or the field named by ``parse_field``); a field called ``Label`` is the
    inline label. Its default model text is the content alone.

    Args:
        name: ``bgl``, ``thunderbird`` or ``custom`` (case-insensitive).
        header: Header template, only with ``custom``.
        regex: Regular expression with named groups, only with ``custom``.
        model_fields: Fields the models see, joined by one space; overrides the default.
        parse_field: Field Drain parses (default ``Content``).

    Returns:
        The format.

    Raises:
        InputError: For an unknown name (the message lists the valid ones), a custom format
            without exactly one of header/regex, a header or regex for a built-in format, or
            model/parse fields the format does not have.
    """
    key = name.strip().lower()
    if key not in FORMAT_NAMES:
        raise InputError(
            f"unknown log format {name!r}; valid formats are {', '.join(FORMAT_NAMES)} "
            "(use 'custom' with a header template or a regex for other layouts)"
        )
    chosen_model = tuple(model_fields) if model_fields is not None else _DEFAULT_MODEL_FIELDS[key]
    label_pattern = re.compile(LABEL_TOKEN_PATTERN)
    if key != "custom":
        if header is not None or regex is not None:
            raise InputError(
                f"log format {key!r} has a fixed layout and takes no header or regex; "
                "use format 'custom' to give your own"
            )
        if key == "bgl":
            fields, pattern = _BGL_FIELDS, re.compile(_BGL_REGEX)
        else:
            fields, pattern = _THUNDERBIRD_FIELDS, re.compile(_THUNDERBIRD_REGEX)
        return LogFormat(
            name=key,
            fields=fields,
            regex=pattern,
            label_field="Label",
            parse_field=parse_field,
            model_fields=chosen_model,
            label_pattern=label_pattern,
        )

    if header is not None and regex is None:
        fields, pattern = header_to_regex(header)
        source = f"header template {header!r}"
    elif regex is not None and header is None:
        fields, pattern = _compile_custom_regex(regex)
        source = f"regex {regex!r}"
    else:
        raise InputError(
            "format 'custom' needs exactly one of a header template (e.g. "
            "'<Label> <Date> <Node> <Content>') or a regex with named groups "
            "(e.g. '^(?P<Date>\\S+) (?P<Content>.*)$'), not both and not neither"
        )
    if parse_field not in fields:
        raise InputError(
            f"custom {source} has no {parse_field!r} field (fields: {', '.join(fields)}); "
            f"add a <{parse_field}> placeholder or a (?P<{parse_field}>...) group for the "
            "free text"
        )
    label_field = "Label" if "Label" in fields else None
    return LogFormat(
        name="custom",
        fields=fields,
        regex=pattern,
        label_field=label_field,
        parse_field=parse_field,
        model_fields=chosen_model,
        # The Loghub label convention is only checked where the label leads the line; a label
        # elsewhere is taken as the user's regex captures it.
        label_pattern=label_pattern if label_field is not None and fields[0] == "Label" else None,
    )


def format_to_json(fmt: LogFormat) -> dict[str, Any]:
    """Describe a format as plain JSON data (for a detector bundle).

    Args:
        fmt: The format.

    Returns:
        A dictionary that :func:`format_from_json` turns back into an equal format.
    """
    return {
        "format": FORMAT_JSON_TAG,
        "name": fmt.name,
        "fields": list(fmt.fields),
        "regex": fmt.regex.pattern,
        "label_field": fmt.label_field,
        "parse_field": fmt.parse_field,
        "model_fields": list(fmt.model_fields),
        "label_pattern": fmt.label_pattern.pattern if fmt.label_pattern is not None else None,
    }


def _str_list(data: dict[str, Any], key: str) -> tuple[str, ...]:
    value = data.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BundleError(
            f"log format JSON: {key!r} must be a list of strings, got {value!r}; the bundle's "
            "format.json is corrupt, rebuild the bundle with fame setup"
        )
    return tuple(value)


def _opt_str(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise BundleError(
            f"log format JSON: {key!r} must be a string or null, got {value!r}; the bundle's "
            "format.json is corrupt, rebuild the bundle with fame setup"
        )
    return value


def format_from_json(data: Any) -> LogFormat:
    """Rebuild a format written by :func:`format_to_json`.

    Args:
        data: The decoded JSON object.

    Returns:
        The format.

    Raises:
        BundleError: If the data is not a format description of this version or is
            inconsistent (unknown fields, a regex that does not compile).
    """
    if not isinstance(data, dict) or data.get("format") != FORMAT_JSON_TAG:
        tag = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise BundleError(
            f"log format JSON has tag {tag!r}, expected {FORMAT_JSON_TAG!r}; the bundle is "
            "corrupt or from another fame version, rebuild it with fame setup"
        )
    name = _opt_str(data, "name")
    regex = _opt_str(data, "regex")
    parse_field = _opt_str(data, "parse_field")
    if name is None or regex is None or parse_field is None:
        raise BundleError(
            "log format JSON lacks 'name', 'regex' or 'parse_field'; the bundle's format.json "
            "is corrupt, rebuild the bundle with fame setup"
        )
    label_pattern = _opt_str(data, "label_pattern")
    try:
        return LogFormat(
            name=name,
            fields=_str_list(data, "fields"),
            regex=re.compile(regex),
            label_field=_opt_str(data, "label_field"),
            parse_field=parse_field,
            model_fields=_str_list(data, "model_fields"),
            label_pattern=re.compile(label_pattern) if label_pattern is not None else None,
        )
    except re.error as exc:
        raise BundleError(
            f"log format JSON holds a regex that does not compile ({exc}); rebuild the bundle"
        ) from exc
    except InputError as exc:
        raise BundleError(f"log format JSON is inconsistent: {exc}") from exc
