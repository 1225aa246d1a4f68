"""Redaction of log text before it leaves the machine.

Every line fame puts in a prompt for a *remote* provider first goes through a
:class:`Redactor`. Each rule has a name, a pattern and a placeholder; the ``llm_redact``
setting lists the rules to apply (all by default, ``none`` for none), and
``llm_redact_extra`` adds site-specific regular expressions. Placeholders keep the shape of
the message (``<IP>``, ``<PATH>``, ...) so the model can still see what kind of value was
there. Templates from the parser already mask numbers and hex; representative lines do not,
which is why they are redacted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fame.errors import ConfigError


@dataclass(frozen=True)
class RedactionRule:
    """One redaction rule.

    Attributes:
        name: The rule's name in the ``llm_redact`` setting.
        pattern: What to replace.
        placeholder: What replaces it.
        help: What the rule covers, for documentation.
    """

    name: str
    pattern: re.Pattern[str]
    placeholder: str
    help: str


# Order matters: specific shapes (URLs, e-mail, IPs, paths) before generic ones (hex, numbers).
RULES: tuple[RedactionRule, ...] = (
    RedactionRule(
        "url",
        re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s\"'<>]+", re.IGNORECASE),
        "<URL>",
        "URLs (scheme://...)",
    ),
    RedactionRule(
        "email",
        re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b"),
        "<EMAIL>",
        "e-mail addresses",
    ),
    RedactionRule(
        "user",
        re.compile(r"(?i)\b(user(?:name)?|uid|login|account|owner)(\s*[=:]\s*)(?!<)[\w.@-]+"),
        r"\1\2<USER>",
        "user names after user=, uid=, login=, account= or owner=",
    ),
    RedactionRule(
        "user",
        re.compile(r"(?i)\b(user|account)(\s+)(?!<)(?=[\w.@-]*[a-z])[\w.@-]+"),
        r"\1\2<USER>",
        "the word after 'user' or 'account' (may over-redact: 'user authentication')",
    ),
    RedactionRule(
        "mac",
        re.compile(r"\b(?:[0-9a-f]{2}[:-]){5}[0-9a-f]{2}\b", re.IGNORECASE),
        "<MAC>",
        "MAC addresses",
    ),
    RedactionRule(
        "ip",
        re.compile(
            r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b"
            r"|\b(?:[0-9a-f]{1,4}:){7}[0-9a-f]{1,4}\b"
            r"|(?<![\w:])(?=[0-9a-f:]*::)[0-9a-f]{0,4}(?::[0-9a-f]{0,4}){2,7}(?![\w:])",
            re.IGNORECASE,
        ),
        "<IP>",
        "IPv4 (with port) and IPv6 addresses",
    ),
    RedactionRule(
        "path",
        re.compile(r"(?<![\w<])(?:~|\.{1,2})?(?:/[\w.@+-]+){2,}/?"),
        "<PATH>",
        "file paths with two or more components",
    ),
    RedactionRule(
        "host",
        re.compile(
            r"\b(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.){2,}"
            r"(?:com|net|org|edu|gov|local|lan|internal|corp|io|[a-z]{2})\b",
            re.IGNORECASE,
        ),
        "<HOST>",
        "fully qualified host names (a.b.example.org)",
    ),
    RedactionRule(
        "host",
        re.compile(r"\b[A-Za-z]{2,}\d{2,}\b"),
        "<HOST>",
        "short host names: letters then two or more digits (bglio11, sn209)",
    ),
    RedactionRule(
        "node",
        re.compile(r"\b(?=[\w:-]*\d)(?=[\w:-]*[A-Za-z])[A-Za-z0-9]+(?:[-:][A-Za-z0-9]+){2,}\b"),
        "<NODE>",
        "node and device names of three or more parts with digits (R02-M1-N0-C:J12-U11)",
    ),
    RedactionRule(
        "hex",
        re.compile(r"\b0x[0-9a-f]+\b|\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{8,}\b", re.I),
        "<HEX>",
        "0x-prefixed and long (8+ digit) hexadecimal values",
    ),
    RedactionRule(
        "number",
        re.compile(r"(?<![A-Za-z0-9])\d{4,}(?![A-Za-z0-9])"),
        "<NUM>",
        "numbers of four or more digits (ids, counters, timestamps)",
    ),
)

RULE_NAMES: tuple[str, ...] = tuple(dict.fromkeys(rule.name for rule in RULES))


class Redactor:
    """Applies the chosen redaction rules, in the fixed order of :data:`RULES`.

    Args:
        rules: Rule names to apply; ``["all"]`` (the default) applies every rule, ``[]`` or
            ``["none"]`` none.
        extra: Additional regular expressions; each match becomes ``<REDACTED>``.

    Raises:
        ConfigError: For an unknown rule name or an invalid extra pattern.
    """

    def __init__(self, rules: Iterable[str] = ("all",), extra: Sequence[str] = ()) -> None:
        names = [name.strip().lower() for name in rules if name.strip()]
        if "all" in names:
            names = list(RULE_NAMES)
        names = [name for name in names if name != "none"]
        unknown = sorted(set(names) - set(RULE_NAMES))
        if unknown:
            raise ConfigError(
                f"unknown redaction rule(s) {', '.join(unknown)}; expected 'all', 'none' or "
                f"a comma-separated list of {', '.join(RULE_NAMES)}"
            )
        self.rules = [rule for rule in RULES if rule.name in names]
        self.extra: list[re.Pattern[str]] = []
        for pattern in extra:
            try:
                self.extra.append(re.compile(pattern))
            except re.error as exc:
                raise ConfigError(
                    f"redaction pattern {pattern!r} is not a valid regular expression: {exc}"
                ) from exc

    @classmethod
    def from_settings(cls, rules: str, extra: str | None) -> Redactor:
        """Build from the comma-separated ``llm_redact`` and ``;;``-separated extra setting."""
        patterns = [p for p in (extra or "").split(";;") if p.strip()]
        return cls(rules.split(","), patterns)

    @property
    def active(self) -> bool:
        """Whether any rule or pattern applies."""
        return bool(self.rules or self.extra)

    def __call__(self, text: str) -> str:
        """Return ``text`` with every match replaced by its placeholder."""
        for pattern in self.extra:
            text = pattern.sub("<REDACTED>", text)
        for rule in self.rules:
            text = rule.pattern.sub(rule.placeholder, text)
        return text
