"""Live input for ``fame detect``: following a growing file and a bounded-latency loop.

:class:`FollowSource` is a binary file-like object that tails a path like ``tail -F``: it
polls for new data, survives rotation (the path gets a new inode) and truncation (the file
shrinks), waits for a missing file to (re)appear, and only ever hands out complete lines, so
:func:`fame.logs.read_records` can read from it as from any file. It ends (returns ``b""``)
once its stop event is set and no complete line is left in its buffer.

:class:`OffsetStore` keeps where a follower got to (path, inode, byte offset, lines done) in
a small JSON file written atomically, so a restarted ``fame detect --follow`` resumes without
losing or repeating lines. :func:`run_detection_loop` is the loop of ``fame detect``: a reader
thread feeds records into a queue; the caller's thread scores them in batches of at most
``batch_size`` lines, emitting a batch at the latest ``flush_ms`` after its first line
arrived, writes JSON Lines, flushes, and only then reports the lines done (so an offset is
recorded only for lines whose results were written out).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import queue
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO

from fame.errors import InputError
from fame.logs import LogRecord
from fame.result import Detection

__all__ = [
    "FollowSource",
    "LoopStats",
    "OffsetStore",
    "SavedOffset",
    "SupportsDetectBatch",
    "run_detection_loop",
]

logger = logging.getLogger(__name__)

_READ_CHUNK = 1 << 16
_QUEUE_POLL_S = 0.1


class FollowSource:
    """A binary, line-oriented reader that follows a path like ``tail -F``.

    Reading starts at ``start_offset`` (0: the whole file, then whatever is appended). At the
    end of the current file it checks the path each ``poll_interval`` seconds:

    - **growth**: new bytes are read; a last line without its newline is held back until the
      newline arrives, so only complete lines are returned.
    - **rotation** (the path now names another file, e.g. ``mv app.log app.log.1`` and a new
      ``app.log``): the old file is read to its end first, then the new file from offset 0.
      An unterminated last line of the old file is returned as a line of its own.
    - **truncation** (the file is shorter than what was read, e.g. ``logrotate
      copytruncate``): a WARNING is logged and reading restarts at offset 0. A file that is
      truncated and regrown past the read position between two polls cannot be told apart
      from growth (as with ``tail``).
    - **missing** file: it waits for the path to appear (or reappear).

    Once ``stop`` is set, :meth:`readline` returns the complete lines already buffered and
    then ``b""`` (end of input); a held partial line is not returned, and :attr:`offset`
    stays before it, so a resumed reader starts with that line.

    Args:
        path: The file to follow.
        stop: Event that ends following; one is created when omitted (see :meth:`stop`).
        poll_interval: Seconds between checks for new data, rotation and truncation.
        start_offset: Byte offset to start at (from :class:`OffsetStore`).
        start_inode: Inode the offset belongs to. If the file at ``path`` now has another
            inode it was rotated since the offset was saved, and reading starts at 0 (the
            saved offset means nothing in another file; the lines appended to the old file
            after the save are not searched for). If the file is shorter than the offset it
            was truncated meanwhile, and reading starts at 0 too. Both cases log a WARNING.
        track_positions: Remember where each returned line ends, for
            :meth:`position_after`. Off by default, as the memory grows with lines returned
            but not yet asked for.

    Raises:
        InputError: If ``poll_interval`` or ``start_offset`` is out of range.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        stop: threading.Event | None = None,
        poll_interval: float = 0.1,
        start_offset: int = 0,
        start_inode: int | None = None,
        track_positions: bool = False,
    ) -> None:
        if not poll_interval > 0:
            raise InputError(f"poll_interval must be > 0 seconds, got {poll_interval!r}")
        if start_offset < 0:
            raise InputError(f"start_offset must be >= 0, got {start_offset}")
        self.path = Path(path)
        self.name = str(self.path)
        self.poll_interval = float(poll_interval)
        self._stop = stop if stop is not None else threading.Event()
        self._start_offset = start_offset
        self._start_inode = start_inode
        self._fh: Any = None
        self._ident: tuple[int, int] | None = None  # (st_dev, st_ino) of the open file
        self._buf = bytearray()
        self._pos = 0  # file offset of self._buf[0]
        self._mid_line = False  # a prefix of the current line was returned (long line)
        self._warned_missing = False
        self.offset = start_offset
        """Byte offset just after the last complete line returned (in :attr:`inode`)."""
        self.inode: int | None = start_inode
        """Inode of the file :attr:`offset` refers to (None before the file was opened)."""
        self.lines = 0
        """Complete lines returned so far."""
        self._track = track_positions
        self._ends: deque[tuple[int, int | None, int]] = deque()
        self._last_position: tuple[int | None, int] = (start_inode, start_offset)
        self._lock = threading.Lock()

    # -- file-like interface -----------------------------------------------------------------

    def readline(self, limit: int = -1) -> bytes:
        """The next complete line, with its newline, blocking until one is available.

        Args:
            limit: Most bytes to return. A line longer than ``limit`` comes in pieces of at
                most ``limit`` bytes, the last one ending with the newline (the contract of
                :meth:`io.BufferedReader.readline`, which the log reader relies on).

        Returns:
            The line, or ``b""`` once stopped with no complete line buffered.

        Raises:
            InputError: If the path cannot be opened or read (other than not existing).
        """
        while True:
            if self._fh is None and not self._open_first():
                if self._stop.is_set():
                    return b""
                self._stop.wait(self.poll_interval)
                continue
            piece = self._take(limit)
            if piece:
                return piece
            if self._stop.is_set():
                return b""
            if self._fill():
                continue
            if self._check_path():
                continue
            self._stop.wait(self.poll_interval)

    def stop(self) -> None:
        """End following: :meth:`readline` returns ``b""`` once its buffer has no line."""
        self._stop.set()

    def close(self) -> None:
        """Stop and close the open file."""
        self._stop.set()
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> FollowSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def position_after(self, lines: int) -> tuple[int | None, int]:
        """Where the ``lines``-th line returned by this source ends (needs ``track_positions``).

        Positions up to that line are forgotten, so ask with increasing counts.

        Args:
            lines: A count of lines returned (1-based: 1 is the end of the first line).

        Returns:
            ``(inode, offset)``; the start position while no such line has been returned.
        """
        with self._lock:
            while self._ends and self._ends[0][0] <= lines:
                _, inode, offset = self._ends.popleft()
                self._last_position = (inode, offset)
            return self._last_position

    # -- internals ---------------------------------------------------------------------------

    def _take(self, limit: int) -> bytes:
        """Cut the next returnable piece from the buffer, or ``b""`` if there is none."""
        buf = self._buf
        if not buf:
            return b""
        end = buf.find(b"\n", 0, limit if limit is not None and limit > 0 else len(buf))
        if end >= 0:
            n = end + 1
        elif limit is not None and limit > 0 and (len(buf) >= limit or self._mid_line):
            # A long line: hand out a piece now so memory stays bounded. Inside a long line
            # any nonempty piece will do (the reader is skipping to its newline).
            n = min(limit, len(buf))
        else:
            return b""
        piece = bytes(buf[:n])
        del buf[:n]
        self._pos += n
        self._mid_line = not piece.endswith(b"\n")
        if not self._mid_line:
            self.lines += 1
            self.offset = self._pos
            self.inode = self._ident[1] if self._ident else None
            if self._track:
                with self._lock:
                    self._ends.append((self.lines, self.inode, self.offset))
        return piece

    def _fill(self) -> bool:
        """Read what the open file has beyond the buffer; True if anything came."""
        try:
            data = self._fh.read(_READ_CHUNK)
        except OSError as exc:
            raise InputError(f"error while reading {self.name!r} ({exc.strerror or exc})") from exc
        if data:
            self._buf += data
            return True
        return False

    def _open(self) -> tuple[Any, os.stat_result] | None:
        """Open the path; None if it does not exist (yet)."""
        try:
            fh = open(self.path, "rb", buffering=0)  # noqa: SIM115 - closed in close()
        except FileNotFoundError:
            return None
        except IsADirectoryError as exc:
            raise InputError(f"{self.name!r} is a directory; follow a log file inside it") from exc
        except OSError as exc:
            raise InputError(
                f"cannot open {self.name!r} to follow it ({exc.strerror or exc}); check its "
                "permissions"
            ) from exc
        return fh, os.fstat(fh.fileno())

    def _open_first(self) -> bool:
        """Open the file for the first time, at the start offset if it still applies."""
        opened = self._open()
        if opened is None:
            if not self._warned_missing:
                logger.warning("%s does not exist (yet); waiting for it to appear", self.name)
                self._warned_missing = True
            return False
        fh, st = opened
        start = self._start_offset
        if start:
            if self._start_inode is not None and st.st_ino != self._start_inode:
                logger.warning(
                    "%s was rotated since offset %d was saved (inode %d, now %d); reading the "
                    "new file from its start",
                    self.name,
                    start,
                    self._start_inode,
                    st.st_ino,
                )
                start = 0
            elif st.st_size < start:
                logger.warning(
                    "%s is shorter (%d bytes) than the saved offset %d: it was truncated; "
                    "reading from its start",
                    self.name,
                    st.st_size,
                    start,
                )
                start = 0
            fh.seek(start)
        self._set_file(fh, st, start)
        return True

    def _set_file(self, fh: Any, st: os.stat_result, pos: int) -> None:
        if self._fh is not None:
            self._fh.close()
        self._fh = fh
        self._ident = (st.st_dev, st.st_ino)
        self._pos = pos
        if self.lines == 0:
            self.offset = pos
            self.inode = st.st_ino
            with self._lock:
                self._last_position = (st.st_ino, pos)

    def _check_path(self) -> bool:
        """At the end of the open file: handle rotation or truncation; True if it changed."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False  # rotated away and not recreated yet: keep the old file open
        except OSError as exc:
            raise InputError(f"cannot stat {self.name!r} ({exc.strerror or exc})") from exc
        if (st.st_dev, st.st_ino) != self._ident:
            if self._fill():  # the writer may have appended to the old file just now
                return True
            opened = self._open()
            if opened is None:
                return False
            fh, new_st = opened
            logger.info("%s was rotated; following the new file", self.name)
            held = bytes(self._buf)
            self._set_file(fh, new_st, 0)
            if held or self._mid_line:
                # The old file's unterminated last line will never be completed: end it here.
                # Its end maps to offset 0 of the new file.
                self._buf = bytearray(held + b"\n")
                self._pos = -len(self._buf)
            else:
                self._buf = bytearray()
            return True
        read_to = self._pos + len(self._buf)
        if st.st_size < read_to:
            logger.warning(
                "%s was truncated (now %d bytes, %d read); reading it again from the start",
                self.name,
                st.st_size,
                read_to,
            )
            self._fh.seek(0)
            if self._mid_line:  # end the long line the reader is skipping through
                self._buf = bytearray(b"\n")
                self._pos = -1
            else:
                self._buf = bytearray()
                self._pos = 0
            return True
        return False


@dataclass(frozen=True)
class SavedOffset:
    """Where a follower got to.

    Attributes:
        path: The followed file (absolute).
        inode: Its inode when the offset was saved.
        offset: Byte offset just after the last line whose result was written out.
        lines: Lines done over all runs (line numbers of a resumed run continue after it).
    """

    path: str
    inode: int | None
    offset: int
    lines: int


class OffsetStore:
    """A JSON file ``{"path", "inode", "offset", "lines"}``, replaced atomically on save.

    Args:
        path: The offset file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> SavedOffset | None:
        """The saved offset, or None if the file does not exist.

        Raises:
            InputError: If the file is unreadable or not a saved offset.
        """
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(
                f"offset file {str(self.path)!r} cannot be read ({exc}); delete it to start "
                "from the beginning of the log"
            ) from exc
        try:
            inode = data["inode"]
            saved = SavedOffset(
                path=str(data["path"]),
                inode=None if inode is None else int(inode),
                offset=int(data["offset"]),
                lines=int(data.get("lines", 0)),
            )
        except (TypeError, KeyError, ValueError) as exc:
            raise InputError(
                f"offset file {str(self.path)!r} is not a fame offset file (needs path, inode "
                "and offset); delete it to start from the beginning of the log"
            ) from exc
        if saved.offset < 0 or saved.lines < 0:
            raise InputError(f"offset file {str(self.path)!r} holds a negative offset or count")
        return saved

    def load_for(self, log_path: str | os.PathLike[str]) -> SavedOffset | None:
        """The saved offset, checked to belong to ``log_path``.

        Raises:
            InputError: If the file is unreadable or records another log.
        """
        saved = self.load()
        if saved is not None and saved.path != str(Path(log_path).resolve()):
            raise InputError(
                f"offset file {str(self.path)!r} belongs to {saved.path!r}, not "
                f"{str(Path(log_path).resolve())!r}; pass another --offset-file or delete it"
            )
        return saved

    def save(
        self, log_path: str | os.PathLike[str], inode: int | None, offset: int, lines: int
    ) -> None:
        """Write the offset atomically (temporary file in the same folder, then replace).

        Raises:
            InputError: If the file cannot be written.
        """
        data = {
            "path": str(Path(log_path).resolve()),
            "inode": inode,
            "offset": offset,
            "lines": lines,
        }
        folder = self.path.parent
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=folder)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    json.dump(data, out)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise InputError(
                f"cannot write offset file {str(self.path)!r} ({exc.strerror or exc}); check "
                "that its folder exists and is writable"
            ) from exc


class SupportsDetectBatch(Protocol):
    """Anything that scores a batch of records, one result per record in order."""

    def detect_batch(self, records: Sequence[LogRecord]) -> list[Detection]:
        """Score ``records``."""
        ...


@dataclass
class LoopStats:
    """What :func:`run_detection_loop` did.

    Attributes:
        lines: Records scored and written out (or filtered by ``anomalies_only``).
        anomalies: Of them, anomalous.
        written: JSON lines written.
        batches: Batches scored.
        stopped: The stop event ended the loop (rather than the end of the input).
    """

    lines: int = 0
    anomalies: int = 0
    written: int = 0
    batches: int = 0
    stopped: bool = False


_END = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _read_into(
    records: Iterable[LogRecord], out: queue.Queue[Any], stops: tuple[threading.Event, ...]
) -> None:
    """Reader thread: put each record with its arrival time, then an end marker (or the
    exception met)."""

    def stopped() -> bool:
        return any(event.is_set() for event in stops)

    def put(item: Any) -> bool:
        while not stopped():
            try:
                out.put(item, timeout=_QUEUE_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    try:
        for record in records:
            if stopped() or not put((record, time.monotonic())):
                break
    except BaseException as exc:  # handed to the consuming thread, raised there
        put(_Failure(exc))
        return
    put(_END)
    # With stop set, put() gives up; the consumer drains the queue without waiting for _END.


def run_detection_loop(
    detector: SupportsDetectBatch,
    records: Iterable[LogRecord],
    sink: TextIO,
    *,
    batch_size: int = 1024,
    flush_ms: int = 200,
    anomalies_only: bool = False,
    stop: threading.Event | None = None,
    line_base: int = 0,
    on_flushed: Callable[[int], None] | None = None,
) -> LoopStats:
    """Score records as they arrive and write one JSON line per result, with bounded latency.

    A daemon thread reads ``records`` into a bounded queue; this thread collects at most
    ``batch_size`` of them, or fewer once ``flush_ms`` have passed since the first record of
    the batch arrived, scores the batch with ``detector.detect_batch``, writes the results
    (only anomalous ones with ``anomalies_only``), flushes ``sink`` and then calls
    ``on_flushed`` with the number of records done so far in this run (1-based line numbers
    of ``records`` are therefore a safe resume point once reported).

    When ``stop`` is set the loop stops taking new records: the records already queued are
    scored and written, and the loop returns without waiting for the reader (which may be
    blocked on a pipe).

    Args:
        detector: Anything with ``detect_batch(records) -> list[Detection]``.
        records: The input records, e.g. from :func:`fame.logs.read_records`.
        sink: Text stream for the JSON lines.
        batch_size: Most records per batch.
        flush_ms: Longest wait, in milliseconds, between the first record of a batch arriving
            and its results being written.
        anomalies_only: Write only anomalous results.
        stop: Event that ends the loop (e.g. set by a signal handler).
        line_base: Added to every record's ``line_no`` (line numbers of a resumed run).
        on_flushed: Called after each flushed batch with the run's count of records done.

    Returns:
        Counts of what was done.

    Raises:
        InputError: If ``batch_size`` or ``flush_ms`` is below 1; errors of the reader (e.g.
            :class:`InputError` for an unreadable file) are raised here after the records
            before them were written.
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    if flush_ms < 1:
        raise InputError(f"flush_ms must be >= 1, got {flush_ms}")
    stop = stop if stop is not None else threading.Event()
    reader_stop = threading.Event()  # also set when this loop leaves early (e.g. broken pipe)
    pending: queue.Queue[Any] = queue.Queue(maxsize=4 * batch_size)
    stats = LoopStats()
    flush_s = flush_ms / 1000.0

    reader = threading.Thread(
        target=_read_into,
        args=(records, pending, (stop, reader_stop)),
        name="fame-reader",
        daemon=True,
    )
    reader.start()

    def emit(batch: list[LogRecord]) -> None:
        for start in range(0, len(batch), batch_size):
            chunk = batch[start : start + batch_size]
            if line_base:
                chunk = [dataclasses.replace(r, line_no=r.line_no + line_base) for r in chunk]
            detections = detector.detect_batch(chunk)
            for detection in detections:
                if detection.anomaly:
                    stats.anomalies += 1
                if anomalies_only and not detection.anomaly:
                    continue
                sink.write(json.dumps(detection.to_json()) + "\n")
                stats.written += 1
            sink.flush()
            stats.lines += len(chunk)
            stats.batches += 1
            if on_flushed is not None:
                on_flushed(chunk[-1].line_no - line_base)

    batch: list[LogRecord] = []
    first_at = 0.0
    failure: BaseException | None = None

    def take(item: Any, limit: int | None) -> bool:
        """Add ``item`` and every record already queued to the batch, without waiting, up to
        ``limit`` records (so a backlog goes out as one batch, not line by line). Returns
        True once the input ended (its end marker, or the reader's failure)."""
        nonlocal failure, first_at
        while item is not None:
            if item is _END:
                return True
            if isinstance(item, _Failure):
                failure = item.exc
                return True
            record, arrived = item
            if not batch:
                # The wait counts from the line's arrival, not from when it was taken:
                # lines that queued up while a batch was scored go out at once.
                first_at = arrived
            batch.append(record)
            if limit is not None and len(batch) >= limit:
                return False
            try:
                item = pending.get_nowait()
            except queue.Empty:
                item = None
        return False

    try:
        done = False
        while not done:
            if stop.is_set():
                # The records already read are finished; nothing new is taken.
                stats.stopped = True
                done = True
                with contextlib.suppress(queue.Empty):
                    take(pending.get_nowait(), None)
            else:
                if batch:
                    wait = max(0.0, min(_QUEUE_POLL_S, first_at + flush_s - time.monotonic()))
                else:
                    wait = _QUEUE_POLL_S
                with contextlib.suppress(queue.Empty):
                    done = take(pending.get(timeout=wait), batch_size)
            if batch and (
                done or len(batch) >= batch_size or time.monotonic() - first_at >= flush_s
            ):
                emit(batch)
                batch = []
    finally:
        reader_stop.set()
    if failure is not None:
        raise failure
    return stats
