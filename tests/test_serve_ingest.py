"""Request bodies to lines (fame.serve.ingest): a golden table of bodies and their lines."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")

from fame.serve.ingest import (
    BodyError,
    BodyInvalid,
    BodyTooLarge,
    Limits,
    UnsupportedType,
    parse_body,
)

LIMITS = Limits(max_bytes=1000, max_lines=5, max_line_chars=40)
LINE = "- 1117838570 2005.06.03 R02-M1-N0 RAS KERNEL INFO ok"

GOLDEN = [
    # (content type, body, lines, sources)
    ("application/json", b'["a", "b"]', [b"a", b"b"], [None, None]),
    (None, b'["a"]', [b"a"], [None]),
    ("application/json; charset=utf-8", b'[{"message": "m", "source": "h1"}]', [b"m"], ["h1"]),
    ("application/json", b'{"message": "x"}\n{"message": "y"}\n', [b"x", b"y"], [None, None]),
    ("application/json", b"[]", [], []),
    ("application/json", b"", [], []),
    ("application/json", b'["two\\nlines"]', [b"two lines"], [None]),
    ("application/x-ndjson", b'{"message": "x"}\nraw line\n', [b"x", b"raw line"], [None, None]),
    ("application/x-ndjson", b"{not json\n", [b"{not json"], [None]),
    ("text/plain", b"one\r\ntwo\n\nfour", [b"one", b"two", b"", b"four"], [None] * 4),
    ("text/plain", b'{"message": "kept raw"}\n', [b'{"message": "kept raw"}'], [None]),
    ("text/plain", b"bad \xff byte\n", [b"bad \xff byte"], [None]),
]


@pytest.mark.parametrize(("kind", "body", "lines", "sources"), GOLDEN)
def test_bodies_become_lines(
    kind: str | None, body: bytes, lines: list[bytes], sources: list[str | None]
) -> None:
    parsed = parse_body(body, kind, LIMITS)
    assert parsed.raw == lines
    assert parsed.sources == sources


ERRORS = [
    ("application/json", b"[1, 2", BodyError, "not valid JSON"),
    ("application/json", b'["\xff"]', BodyError, "UTF-8"),
    ("application/json", b'{"msg": "x"}', BodyInvalid, "'message'"),
    ("application/json", b"[1]", BodyInvalid, "item 0"),
    ("application/json", b'"text"', BodyError, "not a JSON object"),
    ("application/json", b'{"a": 1}', BodyInvalid, "keys are a"),
    ("application/json", b"[" + b'"x",' * 5 + b'"x"]', BodyTooLarge, "6 lines"),
    ("text/plain", b"x\n" * 6, BodyTooLarge, "6 lines"),
    ("text/plain", b"x" * 1001, BodyTooLarge, "1001 bytes"),
    ("text/plain", b"y" * 41, BodyInvalid, "more than 40 characters"),
    ("application/xml", b"<a/>", UnsupportedType, "text/plain"),
]


@pytest.mark.parametrize(("kind", "body", "error", "says"), ERRORS)
def test_bad_bodies_say_what_is_wrong(
    kind: str, body: bytes, error: type[Exception], says: str
) -> None:
    with pytest.raises(error, match=says):
        parse_body(body, kind, LIMITS)


def test_length_limit_counts_characters_not_bytes() -> None:
    # 40 characters of 2 bytes each fit a 40-character limit.
    assert parse_body(("é" * 40).encode(), "text/plain", LIMITS).raw == [("é" * 40).encode()]
