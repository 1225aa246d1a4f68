"""Reading logs: formats, the streaming reader and label files, on the real Loghub data."""

from __future__ import annotations

import csv
import io
import logging
import sys
from pathlib import Path

import pytest

from fame.errors import BundleError, ConfigError, InputError
from fame.logs import (
    FORMAT_NAMES,
    LogRecord,
    ReadStats,
    count_lines,
    format_from_json,
    format_to_json,
    get_format,
    load_label_csv,
    read_records,
)

BGL_LINE = (
    "- 1117838570 2005.06.03 R02-M1-N0-C:J12-U11 2005-06-03-15.42.50.675872 "
    "R02-M1-N0-C:J12-U11 RAS KERNEL INFO instruction cache parity error corrected"
)
BGL_ANOMALY = (
    "KERNDTLB 1118536327 2005.06.11 R30-M0-N9-C:J16-U01 2005-06-11-17.32.07.581048 "
    "R30-M0-N9-C:J16-U01 RAS KERNEL FATAL data TLB error interrupt"
)


def _structured(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# -- BGL and Thunderbird on real data ---------------------------------------------------------


def test_bgl_2k_reads_every_line_and_strips_labels(bgl_2k: Path) -> None:
    stats = ReadStats()
    records = list(read_records(bgl_2k, get_format("bgl"), stats=stats))
    truth = _structured(bgl_2k.with_name("BGL_2k.log_structured.csv"))

    assert len(records) == 2000
    assert [r.line_no for r in records] == list(range(1, 2001))
    assert sum(r.label is True for r in records) == 143
    assert stats == ReadStats(lines=2000, labelled=2000, anomalous=143)
    for record, row in zip(records, truth, strict=True):
        assert record.label_value == row["Label"]
        assert record.label is (row["Label"] != "-")
        # The label never reaches what Drain or the models see.
        assert record.content == row["Content"]
        assert record.text == f"{row['Component']} {row['Level']} {row['Content']}".strip()
        assert "Label" not in record.fields
        assert record.fields["Node"] == row["Node"]
        assert not record.malformed
        if record.label:
            assert not record.content.startswith(row["Label"])
            assert not record.text.startswith(row["Label"])
            assert row["Label"] not in record.text.split()


def test_thunderbird_2k_fields_match_loghub(shared_data: Path) -> None:
    path = shared_data / "thunderbird" / "Thunderbird_2k.log"
    records = list(read_records(path, get_format("thunderbird")))
    truth = _structured(path.with_name("Thunderbird_2k.log_structured.csv"))

    assert len(records) == 2000
    assert not any(r.malformed for r in records)
    # Every line, including the 255 without a PID ("dhcpd: ...") and components with colons
    # or spaces ("audit(1131538222.234:0)", "scsi0 : LSI Logic ...").
    for record, row in zip(records, truth, strict=True):
        assert record.content == row["Content"], record.line_no
        assert record.fields["Component"] == row["Component"]
        assert record.fields["PID"] == row["PID"]
        assert record.fields["Location"] == row["Location"]
        assert record.label is False
    assert records[0].text == "crond(pam_unix) session closed for user root"


def test_loghub_header_template_reproduces_structured_csv(shared_data: Path) -> None:
    # Loghub's own Thunderbird template, written the way its benchmark writes it.
    fmt = get_format(
        "custom",
        header=r"<Label> <Timestamp> <Date> <User> <Month> <Day> <Time> <Location> "
        r"<Component>(\[<PID>\])?: <Content>",
    )
    assert fmt.label_field == "Label"
    path = shared_data / "thunderbird" / "Thunderbird_2k.log"
    truth = _structured(path.with_name("Thunderbird_2k.log_structured.csv"))
    for record, row in zip(read_records(path, fmt), truth, strict=True):
        assert record.content == row["Content"]
        assert record.fields["Component"] == row["Component"]
        assert record.text == row["Content"]  # custom default: the content alone


def test_stream_and_stdin_give_the_same_records_as_the_path(
    bgl_2k: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fmt = get_format("bgl")
    from_path = list(read_records(bgl_2k, fmt))
    from_stream = list(read_records(io.BytesIO(bgl_2k.read_bytes()), fmt))
    assert from_stream == from_path

    class FakeStdin:
        buffer = io.BytesIO(bgl_2k.read_bytes())

    monkeypatch.setattr(sys, "stdin", FakeStdin())
    assert list(read_records("-", fmt)) == from_path


def test_count_lines(bgl_2k: Path, tmp_path: Path) -> None:
    assert count_lines(bgl_2k) == 2000  # its last line has no newline
    assert count_lines(_write(tmp_path, "e.log", b"")) == 0
    assert count_lines(_write(tmp_path, "n.log", b"a\n\nb\n")) == 3
    with pytest.raises(InputError, match="does not exist"):
        count_lines(tmp_path / "nope.log")
    with pytest.raises(InputError, match="standard input"):
        count_lines("-")


# -- awkward input ----------------------------------------------------------------------------


def test_empty_file_gives_no_records(tmp_path: Path) -> None:
    stats = ReadStats()
    assert (
        list(read_records(_write(tmp_path, "empty.log", b""), get_format("bgl"), stats=stats)) == []
    )
    assert stats == ReadStats()


def test_every_awkward_line_is_one_record_in_order(tmp_path: Path) -> None:
    huge = "- " + "x" * 50_000
    lines = [
        BGL_LINE.encode(),  # 1 fine
        b"",  # 2 empty
        BGL_LINE.encode().replace(b"corrected", b"corr\xff\xfeected"),  # 3 invalid UTF-8
        huge.encode(),  # 4 huge, and not in BGL layout
        b"APPREAD this line has lost its header fields",  # 5 malformed, label recoverable
        b"no label here",  # 6 malformed, no label
        BGL_ANOMALY.encode() + b"\r",  # 7 CRLF line ending
        b"   \t ",  # 8 whitespace only
        # 9: an unlabelled BGL line: the timestamp sits where the label belongs.
        BGL_LINE[2:].encode(),
        BGL_LINE.encode(),  # 10 last line, no newline
    ]
    path = _write(tmp_path, "mixed.log", b"\n".join(lines))
    stats = ReadStats()
    records = list(read_records(path, get_format("bgl"), max_line_chars=1000, stats=stats))

    assert [r.line_no for r in records] == list(range(1, 11))
    ok = records[0]
    assert (ok.content, ok.label, ok.malformed) == (
        "instruction cache parity error corrected",
        False,
        False,
    )
    assert ok.text == "KERNEL INFO instruction cache parity error corrected"

    empty = records[1]
    assert (empty.content, empty.text, empty.label, empty.malformed) == ("", "", None, False)

    bad_bytes = records[2]
    assert bad_bytes.content == "instruction cache parity error corr\ufffd\ufffdected"
    assert not bad_bytes.malformed

    cut = records[3]
    assert cut.truncated and cut.malformed
    assert cut.label_value == "-" and cut.label is False
    assert cut.content == "x" * 998  # 1000 characters minus the label token and space

    lost = records[4]
    assert lost.malformed
    assert (lost.label, lost.label_value) == (True, "APPREAD")
    assert lost.content == lost.text == "this line has lost its header fields"
    assert lost.fields["Content"] == lost.content and lost.fields["Node"] == ""

    unlabeled = records[5]
    assert unlabeled.malformed and unlabeled.label is None
    assert unlabeled.content == "no label here"

    crlf = records[6]
    assert crlf.content == "data TLB error interrupt" and crlf.label_value == "KERNDTLB"

    assert records[7].content == "" and not records[7].malformed

    shifted = records[8]
    assert shifted.malformed and shifted.label is None
    assert shifted.content == BGL_LINE[2:]

    assert records[9] == LogRecord(
        line_no=10,
        content=ok.content,
        text=ok.text,
        label=False,
        label_value="-",
        fields=ok.fields,
    )
    assert stats == ReadStats(
        lines=10, malformed=4, decode_errors=1, truncated=1, empty=2, labelled=6, anomalous=2
    )


def test_huge_multibyte_line_is_cut_without_decode_errors(tmp_path: Path) -> None:
    header = "- 1 2005.06.03 n 2005-06-03-15.42.50.675872 n RAS KERNEL INFO "
    line = header + "é€😀" * 100_000  # 2-, 3- and 4-byte characters
    path = _write(tmp_path, "wide.log", line.encode() + b"\n" + BGL_LINE.encode() + b"\n")
    stats = ReadStats()
    records = list(read_records(path, get_format("bgl"), max_line_chars=500, stats=stats))
    assert len(records) == 2
    assert records[0].truncated and not records[0].malformed
    assert records[0].content == line[len(header) : 500]
    assert records[1].content == "instruction cache parity error corrected"
    assert stats.decode_errors == 0 and stats.truncated == 1


def test_warn_summary_names_each_problem(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _write(tmp_path, "p.log", b"garbage\n\n\xff\n")
    with caplog.at_level(logging.WARNING):
        records = list(read_records(path, get_format("bgl")))  # no stats: reader warns itself
    assert len(records) == 3
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "--format" in messages and "UTF-8" in messages and "empty" in messages
    assert ReadStats(lines=5).warn_summary(logging.getLogger("t")) == 0


def test_missing_file_directory_and_bad_settings(tmp_path: Path) -> None:
    fmt = get_format("bgl")
    missing = tmp_path / "missing.log"
    with pytest.raises(InputError, match=r"missing\.log.*does not exist"):
        read_records(missing, fmt)  # checked at call time, before iterating
    with pytest.raises(InputError, match="is a directory"):
        read_records(tmp_path, fmt)
    with pytest.raises(ConfigError, match="max_line_chars"):
        read_records(_write(tmp_path, "a.log", b"x\n"), fmt, max_line_chars=0)
    with pytest.raises(InputError, match="binary mode"):
        list(read_records(io.StringIO("text\n"), fmt))  # type: ignore[arg-type]


# -- formats ----------------------------------------------------------------------------------


def test_unknown_format_lists_valid_names() -> None:
    with pytest.raises(InputError) as info:
        get_format("hdfs")
    for name in FORMAT_NAMES:
        assert name in str(info.value)


def test_default_model_fields_and_validation() -> None:
    assert get_format("bgl").model_fields == ("Component", "Level", "Content")
    assert get_format("Thunderbird").model_fields == ("Component", "Content")
    assert get_format("bgl", model_fields=["Content"]).model_fields == ("Content",)
    with pytest.raises(InputError, match="Severity"):
        get_format("bgl", model_fields=["Severity", "Content"])
    with pytest.raises(InputError, match="leak"):
        get_format("bgl", model_fields=["Label", "Content"])
    with pytest.raises(InputError, match="fixed layout"):
        get_format("bgl", header="<Content>")


def test_custom_header_template(tmp_path: Path) -> None:
    fmt = get_format(
        "custom", header="<Label> <Date> <Node> <Content>", model_fields=["Node", "Content"]
    )
    assert fmt.fields == ("Label", "Date", "Node", "Content")
    path = _write(
        tmp_path,
        "c.log",
        b"- 2024-01-01 n1 disk ok  \nDISKFAIL 2024-01-02 n2 disk /dev/sda failed\noops\n",
    )
    records = list(read_records(path, fmt))
    assert [(r.label, r.content, r.text) for r in records] == [
        (False, "disk ok  ", "n1 disk ok"),
        (True, "disk /dev/sda failed", "n2 disk /dev/sda failed"),
        (None, "oops", "oops"),
    ]
    assert records[2].malformed
    with pytest.raises(InputError, match="Content"):
        get_format("custom", header="<Date> <Message>")
    with pytest.raises(InputError, match="exactly one"):
        get_format("custom")
    with pytest.raises(InputError, match="no <Field>"):
        get_format("custom", header="just text")


def test_custom_regex(tmp_path: Path) -> None:
    fmt = get_format("custom", regex=r"^(?P<Time>\d\d:\d\d) \[(?P<Level>\w+)\] (?P<Content>.*)$")
    assert fmt.fields == ("Time", "Level", "Content") and fmt.label_field is None
    path = _write(tmp_path, "r.log", b"12:00 [WARN] fan speed low\nnot a line\n")
    first, second = read_records(path, fmt)
    assert (first.content, first.text, first.label, first.fields["Level"]) == (
        "fan speed low",
        "fan speed low",
        None,
        "WARN",
    )
    assert second.malformed and second.content == "not a line"
    with pytest.raises(InputError, match="Content"):
        get_format("custom", regex=r"^(?P<Time>\S+) (?P<Message>.*)$")
    with pytest.raises(InputError, match="does not compile"):
        get_format("custom", regex=r"^(?P<Content>.*")
    with pytest.raises(InputError, match="exactly one"):
        get_format("custom", header="<Content>", regex="(?P<Content>.*)")


def test_format_json_round_trip() -> None:
    for fmt in (
        get_format("bgl"),
        get_format("thunderbird", model_fields=["Content"]),
        get_format("custom", header="<Label> <Date> <Content>"),
    ):
        assert format_from_json(format_to_json(fmt)) == fmt
    data = format_to_json(get_format("bgl"))
    with pytest.raises(BundleError):
        format_from_json({**data, "format": "something else"})
    with pytest.raises(BundleError):
        format_from_json({**data, "model_fields": ["Nope"]})
    with pytest.raises(BundleError):
        format_from_json({**data, "regex": "("})
    with pytest.raises(BundleError):
        format_from_json([1, 2])


# -- label files ------------------------------------------------------------------------------


def test_label_csv_overrides_and_provides_labels(bgl_2k: Path, tmp_path: Path) -> None:
    csv_path = _write(
        tmp_path,
        "labels.csv",
        b"line,label,comment\n1,1,x\n2,anomaly,\n3,KERNDTLB,\n4,-,\n5,normal,\n"
        b"6,0,\n7,true,\n8,False,\n9,0,\n11,anomalous,\n",
    )
    labels = load_label_csv(csv_path)
    assert labels == {
        1: True,
        2: True,
        3: True,
        4: False,
        5: False,
        6: False,
        7: True,
        8: False,
        9: False,
        11: True,
    }

    # Overrides inline labels on real data.
    stats = ReadStats()
    records = list(read_records(bgl_2k, get_format("bgl"), labels=labels, stats=stats))
    assert [r.label for r in records[:11]] == [labels.get(n, True) for n in range(1, 12)]
    # Line 9 is inline APPREAD, now normal; lines 1, 2, 3, 7 and 11 are inline normal, now
    # anomalous; line 10 (APPREAD) is not in the file and keeps its inline label.
    assert records[8].label_value == "APPREAD" and records[0].label_value == "-"
    assert stats.anomalous == 143 - 1 + 5

    # Provides labels where the format has none; unlisted lines stay unknown.
    fmt = get_format("custom", regex=r"^(?P<Content>.*)$")
    log = _write(tmp_path, "plain.log", b"a\nb\nc\n")
    assert [r.label for r in read_records(log, fmt, labels={1: True, 3: False})] == [
        True,
        None,
        False,
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"row,value\n1,1\n", r"found 'row', 'value'"),
        (b"line,label\n1,1\nten,0\n", r"row 3: line number 'ten' is not an integer"),
        (b"line,label\n0,1\n", "below 1"),
        (b"line,label\n4,\n", "row 2: the label is empty"),
        (b"line,label\n4,1\n4,0\n", "labelled twice"),
    ],
)
def test_bad_label_csv(tmp_path: Path, content: bytes, message: str) -> None:
    with pytest.raises(InputError, match=message):
        load_label_csv(_write(tmp_path, "bad.csv", content))


def test_missing_label_csv(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nope\.csv.*does not exist"):
        load_label_csv(tmp_path / "nope.csv")
    assert load_label_csv(_write(tmp_path, "h.csv", b"\xef\xbb\xbfLine,Label\n")) == {}
