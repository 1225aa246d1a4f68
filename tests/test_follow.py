"""Live input: following a growing file, offsets for resuming, and the detection loop.

Real BGL lines are the content throughout; a tiny fake detector stands in for a bundle
(building one takes minutes), since the loop only needs ``detect_batch``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, cast

import pytest

from fame.cli import EXIT_BAD_INPUT, _graceful_stop, main
from fame.config import Settings
from fame.errors import ConfigError, InputError
from fame.follow import FollowSource, LoopStats, OffsetStore, run_detection_loop
from fame.logs import LogRecord, get_format, read_records
from fame.result import Detection, Route

BGL = get_format("bgl")
POLL = 0.02


class FakeDetector:
    """Flags the lines labelled anomalous; ``template`` carries the line's content."""

    def __init__(self, fail_on_batch: int | None = None) -> None:
        self.batches: list[int] = []
        self.fail_on_batch = fail_on_batch

    def detect_batch(self, records: Sequence[LogRecord]) -> list[Detection]:
        if self.fail_on_batch is not None and len(self.batches) == self.fail_on_batch:
            raise RuntimeError("simulated crash")
        self.batches.append(len(records))
        return [
            Detection(
                line=r.line_no,
                anomaly=bool(r.label),
                score=1.0 if r.label else 0.0,
                domain=None,
                route=Route.UNIVERSAL_NORMAL,
                event_id=None,
                template=r.content,
                raw_score=0.0,
                gate=0.0,
                malformed=r.malformed,
            )
            for r in records
        ]


@pytest.fixture(scope="module")
def bgl_lines(bgl_2k: Path) -> list[bytes]:
    """The real BGL lines, each with its newline."""
    return bgl_2k.read_bytes().splitlines(keepends=True)


def _contents(lines: Sequence[bytes]) -> list[str]:
    """What read_records makes of these lines (the expected content, in order)."""
    return [r.content for r in read_records(io.BytesIO(b"".join(lines)), BGL)]


def _wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


class _Follower:
    """Runs read_records over a FollowSource in a thread, collecting the records."""

    def __init__(self, source: FollowSource, max_line_chars: int = 20_000) -> None:
        self.source = source
        self.records: list[LogRecord] = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(max_line_chars,), daemon=True)
        self._thread.start()

    def _run(self, max_line_chars: int) -> None:
        try:
            stream = cast(BinaryIO, self.source)
            for record in read_records(stream, BGL, max_line_chars=max_line_chars):
                self.records.append(record)
        except BaseException as exc:  # reported by finish()
            self.error = exc

    def wait_count(self, n: int) -> None:
        _wait_for(lambda: len(self.records) >= n)

    def finish(self) -> list[LogRecord]:
        self.source.stop()
        self._thread.join(timeout=5)
        assert not self._thread.is_alive()
        if self.error is not None:
            raise self.error
        return self.records


def _append(path: Path, data: bytes) -> None:
    with path.open("ab") as out:
        out.write(data)


# -- FollowSource ------------------------------------------------------------------------------


def test_growth_in_order_with_partial_writes(tmp_path: Path, bgl_lines: list[bytes]) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"".join(bgl_lines[:100]))
    follower = _Follower(FollowSource(log, poll_interval=POLL))
    follower.wait_count(100)
    for start in range(100, 400, 50):
        chunk = b"".join(bgl_lines[start : start + 50])
        _append(log, chunk[:777])  # cut mid-line: the rest arrives later
        time.sleep(0.05)
        _append(log, chunk[777:])
    follower.wait_count(400)
    records = follower.finish()
    assert [r.content for r in records] == _contents(bgl_lines[:400])
    assert [r.line_no for r in records] == list(range(1, 401))
    assert follower.source.offset == log.stat().st_size


def test_partial_line_held_until_newline(tmp_path: Path, bgl_lines: list[bytes]) -> None:
    log = tmp_path / "app.log"
    line = bgl_lines[0]
    log.write_bytes(bgl_lines[1] + line[:40])
    source = FollowSource(log, poll_interval=POLL)
    follower = _Follower(source)
    follower.wait_count(1)
    time.sleep(0.2)
    assert len(follower.records) == 1  # the partial line is held back
    assert source.offset == len(bgl_lines[1])
    _append(log, line[40:])
    follower.wait_count(2)
    assert follower.records[1].content == _contents([line])[0]
    # Stopping with a partial line pending ends the input; the offset stays before it.
    _append(log, line[:10])
    time.sleep(0.1)
    records = follower.finish()
    assert len(records) == 2
    assert source.offset == len(bgl_lines[1]) + len(line)


def test_rotation_finishes_old_file_first(tmp_path: Path, bgl_lines: list[bytes]) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"".join(bgl_lines[:50]))
    source = FollowSource(log, poll_interval=POLL)
    follower = _Follower(source)
    follower.wait_count(50)
    # The writer appends its last lines (the last one unterminated), then rotates.
    _append(log, b"".join(bgl_lines[50:60]) + bgl_lines[60].rstrip(b"\n"))
    log.rename(tmp_path / "app.log.1")
    time.sleep(0.1)  # a moment with no file at the path
    log.write_bytes(b"".join(bgl_lines[61:90]))
    follower.wait_count(90)
    _append(log, b"".join(bgl_lines[90:100]))
    follower.wait_count(100)
    records = follower.finish()
    assert [r.content for r in records] == _contents(bgl_lines[:100])
    assert source.inode == log.stat().st_ino
    assert source.offset == log.stat().st_size


def test_truncation_restarts_at_zero(
    tmp_path: Path, bgl_lines: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"".join(bgl_lines[:200]))
    follower = _Follower(FollowSource(log, poll_interval=POLL))
    follower.wait_count(200)
    with caplog.at_level(logging.WARNING, logger="fame.follow"):
        with log.open("r+b") as out:  # copytruncate-style: same inode, shorter file
            out.truncate(0)
        time.sleep(0.1)
        _append(log, b"".join(bgl_lines[200:220]))
        follower.wait_count(220)
    records = follower.finish()
    assert [r.content for r in records] == _contents(bgl_lines[:220])
    assert any("truncated" in m for m in caplog.messages)


def test_waits_for_the_file_to_appear(tmp_path: Path, bgl_lines: list[bytes]) -> None:
    log = tmp_path / "later.log"
    follower = _Follower(FollowSource(log, poll_interval=POLL))
    time.sleep(0.1)
    log.write_bytes(b"".join(bgl_lines[:5]))
    follower.wait_count(5)
    assert [r.content for r in follower.finish()] == _contents(bgl_lines[:5])


def test_malformed_binary_and_long_lines_one_record_each(
    tmp_path: Path, bgl_lines: list[bytes]
) -> None:
    odd = [
        bgl_lines[0],
        b"not a bgl line at all\n",
        b"\xff\xfe\x00\x80 binary \x9c\xe2\n",
        b"\n",
        b"x" * 5000 + b"\n",  # longer than max_line_chars below
        bgl_lines[1].rstrip(b"\r\n") + b"\r\n",
        bgl_lines[2],
    ]
    log = tmp_path / "odd.log"
    log.write_bytes(b"".join(odd[:4]) + odd[4][:4500])  # the long line arrives in two parts
    follower = _Follower(FollowSource(log, poll_interval=POLL), max_line_chars=1000)
    follower.wait_count(4)
    _append(log, odd[4][4500:] + b"".join(odd[5:]))
    follower.wait_count(len(odd))
    records = follower.finish()
    assert len(records) == len(odd)
    assert records[1].malformed and records[2].malformed
    assert "\ufffd" in records[2].content
    assert records[4].truncated and len(records[4].content) == 1000
    assert not records[5].malformed  # CRLF line ending
    assert records[5].content == _contents([bgl_lines[1]])[0]
    # And the loop gives exactly one result per line, in order.
    sink = io.StringIO()
    stats = run_detection_loop(FakeDetector(), records, sink, batch_size=3, flush_ms=10)
    lines = [json.loads(x) for x in sink.getvalue().splitlines()]
    assert [d["line"] for d in lines] == list(range(1, len(odd) + 1))
    assert [d["malformed"] for d in lines] == [r.malformed for r in records]
    assert stats.lines == len(odd)


def test_long_line_pieces_respect_the_limit(tmp_path: Path) -> None:
    log = tmp_path / "long.log"
    log.write_bytes(b"a" * 250 + b"\nshort\n")
    source = FollowSource(log, poll_interval=POLL)
    pieces = [source.readline(100) for _ in range(4)]
    assert pieces == [b"a" * 100, b"a" * 100, b"a" * 50 + b"\n", b"short\n"]
    assert source.lines == 2 and source.offset == 257
    source.stop()
    assert source.readline(100) == b""


# -- offsets and resuming ----------------------------------------------------------------------


def test_offset_store_roundtrip_and_errors(tmp_path: Path) -> None:
    store = OffsetStore(tmp_path / "off.json")
    assert store.load() is None
    log = tmp_path / "app.log"
    store.save(log, 1234, 567, 89)
    saved = store.load_for(log)
    assert saved is not None and (saved.inode, saved.offset, saved.lines) == (1234, 567, 89)
    assert [p.name for p in tmp_path.iterdir()] == ["off.json"]  # no temporary file left
    with pytest.raises(InputError, match="belongs to"):
        store.load_for(tmp_path / "other.log")
    (tmp_path / "off.json").write_text("{broken")
    with pytest.raises(InputError, match="delete it"):
        store.load()
    (tmp_path / "off.json").write_text('{"path": "x"}')
    with pytest.raises(InputError, match="not a fame offset file"):
        store.load()
    with pytest.raises(InputError, match="cannot write offset file"):
        OffsetStore(tmp_path / "no" / "such" / "dir.json").save(log, 1, 2, 3)


def test_start_offset_rules(tmp_path: Path, bgl_lines: list[bytes]) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"".join(bgl_lines[:3]))
    inode = log.stat().st_ino
    first = len(bgl_lines[0])
    same = FollowSource(log, start_offset=first, start_inode=inode)
    assert same.readline() == bgl_lines[1]
    # Another inode: the file was rotated since the save, so the new file is read from 0.
    rotated = FollowSource(log, start_offset=first, start_inode=inode + 1)
    assert rotated.readline() == bgl_lines[0]
    # Shorter than the offset: truncated since the save, read from 0.
    short = FollowSource(log, start_offset=10**6, start_inode=inode)
    assert short.readline() == bgl_lines[0]
    with pytest.raises(InputError):
        FollowSource(log, poll_interval=0)


def _follow_loop(
    log: Path,
    store: OffsetStore,
    sink: io.StringIO,
    stop: threading.Event,
    detector: FakeDetector,
    batch_size: int = 7,
) -> threading.Thread:
    """What `fame detect --follow --offset-file` runs, in a thread."""
    saved = store.load_for(log)
    source = FollowSource(
        log,
        stop=stop,
        poll_interval=POLL,
        start_offset=saved.offset if saved else 0,
        start_inode=saved.inode if saved else None,
        track_positions=True,
    )
    base = saved.lines if saved else 0

    def record(done: int) -> None:
        inode, offset = source.position_after(done)
        store.save(log, inode, offset, base + done)

    def run() -> None:
        records = read_records(cast(BinaryIO, source), BGL)
        with contextlib.suppress(RuntimeError):  # the simulated crash
            run_detection_loop(
                detector,
                records,
                sink,
                batch_size=batch_size,
                flush_ms=20,
                stop=stop,
                line_base=base,
                on_flushed=record,
            )

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_resume_after_crash_no_loss_no_repeats(tmp_path: Path, bgl_lines: list[bytes]) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"".join(bgl_lines[:100]))
    store = OffsetStore(tmp_path / "off.json")
    out1 = io.StringIO()
    # Run 1 dies inside its 5th batch: that batch is neither written nor recorded.
    stop1 = threading.Event()
    run1 = _follow_loop(log, store, out1, stop1, FakeDetector(fail_on_batch=4))
    run1.join(timeout=5)
    stop1.set()
    saved = store.load()
    assert saved is not None and saved.lines == 28
    # Lines written while nothing runs are picked up by the next run.
    _append(log, b"".join(bgl_lines[100:150]))
    out2 = io.StringIO()
    stop2 = threading.Event()
    run2 = _follow_loop(log, store, out2, stop2, FakeDetector())
    _wait_for(lambda: (s := store.load()) is not None and s.lines == 150)
    stop2.set()
    run2.join(timeout=5)
    results = [json.loads(x) for x in (out1.getvalue() + out2.getvalue()).splitlines()]
    assert [d["line"] for d in results] == list(range(1, 151))
    assert [d["template"] for d in results] == _contents(bgl_lines[:150])


_CHILD = """
import sys
from fame.follow import FollowSource, OffsetStore, run_detection_loop
from fame.logs import get_format, read_records
from fame.result import Detection, Route

log, off, out = sys.argv[1:4]
store = OffsetStore(off)
saved = store.load_for(log)
src = FollowSource(log, poll_interval=0.02, start_offset=saved.offset if saved else 0,
                   start_inode=saved.inode if saved else None, track_positions=True)
base = saved.lines if saved else 0

class D:
    def detect_batch(self, rs):
        return [Detection(r.line_no, False, 0.0, None, Route.EXPERT, None, r.content, 0.0, 0.0)
                for r in rs]

def rec(n):
    inode, offset = src.position_after(n)
    store.save(log, inode, offset, base + n)

with open(out, "a", encoding="utf-8") as sink:
    run_detection_loop(D(), read_records(src, get_format("bgl")), sink, batch_size=7,
                       flush_ms=20, line_base=base, on_flushed=rec)
"""


def test_resume_after_sigkill(tmp_path: Path, bgl_lines: list[bytes]) -> None:
    log, off, out = tmp_path / "app.log", tmp_path / "off.json", tmp_path / "out.jsonl"
    store = OffsetStore(off)
    log.write_bytes(b"".join(bgl_lines[:60]))

    def lines_done() -> int:
        saved = store.load()
        return saved.lines if saved is not None else 0

    for total in (60, 130, 200):
        child = subprocess.Popen([sys.executable, "-c", _CHILD, str(log), str(off), str(out)])
        try:
            _wait_for(lambda: lines_done() == total, 10)  # noqa: B023 - called at once
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=5)
        # Appended while no follower runs (and across a rotation for the last round).
        if total == 130:
            log.rename(tmp_path / "app.log.1")
            log.write_bytes(b"".join(bgl_lines[130:200]))
        else:
            _append(log, b"".join(bgl_lines[total : total + 70]))
    results = [json.loads(x) for x in out.read_text().splitlines()]
    assert [d["line"] for d in results] == list(range(1, 201))
    assert [d["template"] for d in results] == _contents(bgl_lines[:200])


# -- the detection loop ------------------------------------------------------------------------


def test_anomalies_only(bgl_2k: Path) -> None:
    records = list(read_records(bgl_2k, BGL))
    sink = io.StringIO()
    stats = run_detection_loop(FakeDetector(), records, sink, batch_size=64, anomalies_only=True)
    written = [json.loads(x) for x in sink.getvalue().splitlines()]
    expected = [r.line_no for r in records if r.label]
    assert len(expected) == 143
    assert [d["line"] for d in written] == expected and all(d["anomaly"] for d in written)
    assert (stats.lines, stats.anomalies, stats.written) == (2000, 143, 143)


def test_small_batch_arrives_within_flush_ms(bgl_2k: Path) -> None:
    release = threading.Event()

    def trickle() -> Iterator[LogRecord]:
        records = read_records(bgl_2k, BGL)
        for _ in range(3):
            yield next(records)
        release.wait(10)  # an idle source: no more lines for now

    sink = io.StringIO()
    done: list[int] = []
    started = time.monotonic()
    thread = threading.Thread(
        target=lambda: run_detection_loop(
            FakeDetector(), trickle(), sink, batch_size=256, flush_ms=50, on_flushed=done.append
        ),
        daemon=True,
    )
    thread.start()
    _wait_for(lambda: len(sink.getvalue().splitlines()) == 3, timeout=5)
    assert time.monotonic() - started < 5
    assert done == [3]
    release.set()
    thread.join(timeout=5)


class SlowDetector(FakeDetector):
    """Takes 20 ms per batch, like a model: lines pile up in the queue meanwhile."""

    def detect_batch(self, records: Sequence[LogRecord]) -> list[Detection]:
        time.sleep(0.02)
        return super().detect_batch(records)


def test_backlog_goes_out_in_full_batches(bgl_2k: Path) -> None:
    """Lines that queued while a batch was scored are past their flush time; they must still
    leave together, not one line per batch."""
    detector = SlowDetector()
    sink = io.StringIO()
    stats = run_detection_loop(
        detector, read_records(bgl_2k, BGL), sink, batch_size=256, flush_ms=1
    )
    assert stats.lines == 2000 and len(sink.getvalue().splitlines()) == 2000
    assert sum(detector.batches) == 2000
    # A line-by-line loop would take ~2000 batches; a backlog is taken whole.
    assert len(detector.batches) < 100, detector.batches[:20]


def test_stop_finishes_lines_already_read(tmp_path: Path, bgl_lines: list[bytes]) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"".join(bgl_lines[:50]))
    stop = threading.Event()
    source = FollowSource(log, stop=stop, poll_interval=POLL)
    sink = io.StringIO()
    result: list[LoopStats] = []
    thread = threading.Thread(
        target=lambda: result.append(
            run_detection_loop(
                FakeDetector(),
                read_records(cast(BinaryIO, source), BGL),
                sink,
                batch_size=1000,
                flush_ms=60_000,  # nothing is written before the stop
                stop=stop,
            )
        ),
        daemon=True,
    )
    thread.start()
    _wait_for(lambda: source.lines == 50)
    time.sleep(0.2)
    assert sink.getvalue() == ""
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert len(sink.getvalue().splitlines()) == 50
    assert result[0].stopped is True


def test_reader_error_raised_after_earlier_results(bgl_2k: Path) -> None:
    def broken() -> Iterator[LogRecord]:
        yield from list(read_records(bgl_2k, BGL))[:5]
        raise InputError("disk gone")

    sink = io.StringIO()
    with pytest.raises(InputError, match="disk gone"):
        run_detection_loop(FakeDetector(), broken(), sink, batch_size=2, flush_ms=10)
    assert len(sink.getvalue().splitlines()) == 5


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_sets_stop_and_handlers_are_restored(sig: signal.Signals) -> None:
    before = signal.getsignal(sig)
    stop = threading.Event()
    with _graceful_stop(stop):
        os.kill(os.getpid(), sig)
        _wait_for(stop.is_set, timeout=2)
        with pytest.raises(KeyboardInterrupt):  # a second signal quits at once
            os.kill(os.getpid(), sig)
            time.sleep(1)
    assert signal.getsignal(sig) is before


# -- options -----------------------------------------------------------------------------------


def test_cli_option_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = str(tmp_path / "no-bundle")
    assert main(["detect", "--bundle", bundle, "--follow"]) == EXIT_BAD_INPUT
    assert "standard input cannot be followed" in capsys.readouterr().err
    log = tmp_path / "a.log"
    log.write_text("x\n")
    code = main(["detect", "--bundle", bundle, str(log), "--offset-file", "o.json"])
    assert code == EXIT_BAD_INPUT
    assert "add --follow" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="flush_ms"):
        Settings(flush_ms=0)
    assert Settings().flush_ms == 200
