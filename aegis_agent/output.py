"""Task output on the agent: handlers' writes cut into task.log chunks, and the spool holding them until acknowledged.

``TaskOutput`` (one per running attempt) owns the chunking: it coalesces small writes (a chunk goes out when it
fills or ``flush_interval_s`` after its first byte), numbers chunks gap-free from 1 over all streams, and never
blocks its writer. ``OutputSpool`` (one per agent) owns every chunk from then on until the broker's PUBACK: in
memory up to a limit, then in an overflow file, and when even that is full the writer is told so and says it in
a ``system`` chunk (what was lost, counted). Chunks are handed to paho a window at a time; paho re-sends what is
in flight after a reconnect, and a chunk the broker routed to nobody (PUBACK reason 16: the bridge is down) goes
back to the spool's head and out again later. The server drops duplicates by ``seq``.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from aegis_agent import wire

log = logging.getLogger(__name__)

NO_MATCHING_SUBSCRIBERS = 16
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 10.0
_RECORD_HEADER = struct.Struct(">I")


class PublishResult(Protocol):
    """What ``client.publish`` answers (paho's MQTTMessageInfo)."""

    @property
    def mid(self) -> int: ...

    @property
    def rc(self) -> int: ...


Publish = Callable[[bytes], PublishResult]


class OutputSpool:
    """Encoded task.log messages from ``offer`` until the broker acknowledged them (``on_publish``).

    Order is kept: the overflow file only ever holds chunks newer than every chunk in memory. The file does not
    survive the agent: after a restart the attempts it held are lost anyway (the server re-queues them).
    """

    def __init__(
        self,
        publish: Publish,
        memory_max_bytes: int = 8 * 1024 * 1024,
        disk_path: Path | None = None,
        disk_max_bytes: int = 256 * 1024 * 1024,
        window: int = 64,
    ) -> None:
        self._publish = publish
        self.memory_max_bytes = memory_max_bytes
        self.disk_path = disk_path
        self.disk_max_bytes = disk_max_bytes if disk_path is not None else 0
        self.window = window
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        # Not yet handed to paho, or routed to nobody (to send again): a heap by arrival, so the oldest goes first.
        self._memory: list[tuple[int, bytes]] = []
        self._arrival = itertools.count()
        self._memory_bytes = 0  # of _memory and _in_flight together
        self._in_flight: dict[int, tuple[int, bytes]] = {}
        self._publishing = False
        self._early_acks: dict[int, int] = {}  # acks that arrived between publish() returning and its bookkeeping
        self._retry_at = 0.0
        self._retry_delay = RETRY_FIRST_S
        self._disk: Any = None
        self._disk_read = 0
        self._disk_write = 0
        self._disk_chunks = 0
        self.acknowledged = 0
        self.refused = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="aegis-output-spool", daemon=True)
        self._thread.start()

    # --- writers' side ----------------------------------------------------------

    def offer(self, payload: bytes, force: bool = False) -> bool:
        """Take a chunk, or answer False when memory and disk are full (``force``: a small marker, taken anyway)."""
        with self._lock:
            taken = False
            if not self._disk_chunks and (force or self._memory_bytes + len(payload) <= self.memory_max_bytes):
                taken = self._keep(payload)
            elif self._disk_write + _RECORD_HEADER.size + len(payload) <= self.disk_max_bytes:
                taken = self._to_disk(payload)
            if force and not taken:
                # A marker is small; it goes out before what the disk holds (the server orders by seq).
                taken = self._keep(payload)
            if taken:
                self._wake.notify_all()
            return taken

    def _keep(self, payload: bytes) -> bool:
        """Hold the lock."""
        heapq.heappush(self._memory, (next(self._arrival), payload))
        self._memory_bytes += len(payload)
        return True

    def has_room(self, size: int) -> bool:
        """Whether ``size`` more bytes would be taken now (in memory or on disk)."""
        with self._lock:
            in_memory = not self._disk_chunks and self._memory_bytes + size <= self.memory_max_bytes
            return in_memory or self._disk_write + _RECORD_HEADER.size + size <= self.disk_max_bytes

    def pending(self) -> int:
        """Chunks not acknowledged yet (in memory, in flight or on disk)."""
        with self._lock:
            return len(self._memory) + len(self._in_flight) + self._disk_chunks

    def wait_empty(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._memory or self._in_flight or self._disk_chunks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._wake.wait(remaining)
            return True

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._wake.notify_all()
        self._thread.join(timeout=5)
        if self._disk is not None:
            self._disk.close()
            if self.disk_path is not None:
                with contextlib.suppress(OSError):
                    self.disk_path.unlink()

    # --- the network thread's side ---------------------------------------------

    def on_publish(self, mid: int, reason_code: Any) -> None:
        """Call from the client's ``on_publish`` (paho calls it for every QoS 1 PUBACK, not only ours)."""
        code = int(getattr(reason_code, "value", reason_code or 0))
        with self._lock:
            entry = self._in_flight.pop(mid, None)
            if entry is None:
                if self._publishing:
                    self._early_acks[mid] = code
                return
            self._settle(entry, code)

    def _settle(self, entry: tuple[int, bytes], code: int) -> None:
        """Hold the lock."""
        payload = entry[1]
        if code == NO_MATCHING_SUBSCRIBERS:
            heapq.heappush(self._memory, entry)  # kept in _memory_bytes: it never left the spool
            now = time.monotonic()
            if self._retry_at <= now:
                log.warning("broker routed task output to nobody (no bridge subscribed); sending again")
                self._retry_at = now + self._retry_delay
                self._retry_delay = min(self._retry_delay * 2, RETRY_MAX_S)
        else:
            self._memory_bytes -= len(payload)
            if code >= 0x80:
                self.refused += 1
                log.error("broker refused a task output chunk (reason %s); dropped", code)
            else:
                self.acknowledged += 1
                self._retry_delay = RETRY_FIRST_S
            self._refill()
        self._wake.notify_all()

    # --- overflow file ------------------------------------------------------------

    def _to_disk(self, payload: bytes) -> bool:
        """Append a chunk to the overflow file; False (and no file from now on) when the file cannot be written."""
        try:
            if self._disk is None:
                if self.disk_path is None:
                    return False
                self.disk_path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.disk_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
                self._disk = os.fdopen(fd, "r+b", buffering=0)
            if not self._disk_chunks:
                log.info("output spool: %s bytes in memory, overflowing to %s", self._memory_bytes, self.disk_path)
            self._disk.seek(self._disk_write)
            self._disk.write(_RECORD_HEADER.pack(len(payload)) + payload)
        except OSError as exc:  # a full or unwritable disk: the spool is full, which the writer reports
            log.error("output spool: cannot write %s (%s); no overflow file from now on", self.disk_path, exc)
            self.disk_max_bytes = min(self.disk_max_bytes, self._disk_write)
            return False
        self._disk_write += _RECORD_HEADER.size + len(payload)
        self._disk_chunks += 1
        return True

    def _refill(self) -> None:
        """Move the oldest chunks from the file to memory while they fit. Hold the lock."""
        while self._disk_chunks:
            self._disk.seek(self._disk_read)
            (size,) = _RECORD_HEADER.unpack(self._disk.read(_RECORD_HEADER.size))
            if self._memory_bytes and self._memory_bytes + size > self.memory_max_bytes:
                return  # (when memory is empty, one chunk always fits: the spool must move)
            heapq.heappush(self._memory, (next(self._arrival), self._disk.read(size)))
            self._memory_bytes += size
            self._disk_read += _RECORD_HEADER.size + size
            self._disk_chunks -= 1
        if self._disk is not None and self._disk_write:
            self._disk.truncate(0)
            self._disk_read = self._disk_write = 0

    # --- the sender thread --------------------------------------------------------

    def _next(self) -> tuple[int, bytes] | None:
        """The next chunk to hand to paho, waiting for one. Hold the lock."""
        while not self._closed:
            if not self._memory:
                self._refill()
            wait: float | None = None
            if self._memory and len(self._in_flight) < self.window:
                wait = self._retry_at - time.monotonic()
                if wait <= 0:
                    return heapq.heappop(self._memory)
            self._wake.wait(wait)
        return None

    def _run(self) -> None:
        while True:
            with self._lock:
                entry = self._next()
                if entry is None:
                    return
                self._publishing = True
            info = None
            try:
                info = self._publish(entry[1])
            except Exception:  # never lose the chunk to a bug in the client: keep it for the next round
                log.exception("publishing task output failed")
            with self._lock:
                self._publishing = False
                early, self._early_acks = self._early_acks, {}
                if info is None or info.rc not in (0, 4):  # 4: MQTT_ERR_NO_CONN, paho queued it for the reconnect
                    heapq.heappush(self._memory, entry)
                    self._retry_at = time.monotonic() + RETRY_FIRST_S
                elif info.mid in early:
                    self._settle(entry, early[info.mid])
                else:
                    self._in_flight[info.mid] = entry


class TaskOutput:
    """One attempt's output: coalesced writes, cut into numbered chunks, handed to the spool. Thread-safe."""

    def __init__(
        self,
        task_id: int,
        attempt: int,
        spool: OutputSpool | None,
        flush_interval_s: float = 0.15,
        chunk_bytes: int = wire.MAX_LOG_CHUNK_BYTES,
    ) -> None:
        self.task_id = task_id
        self.attempt = attempt
        self.spool = spool
        self.flush_interval_s = flush_interval_s
        self.chunk_bytes = min(chunk_bytes, wire.MAX_LOG_CHUNK_BYTES)
        self._lock = threading.Condition()
        self._stream = "stdout"
        self._buffer = bytearray()
        self._first_write_at = 0.0
        self.seq = 0  # the last seq handed to the spool
        self.written = 0
        self.lost: dict[str, int] = {}  # not said yet in a system chunk
        self.lost_total: dict[str, int] = {}
        self.closed = False
        self._flusher: threading.Thread | None = None
        self.stdout = OutputStream(self, "stdout")
        self.stderr = OutputStream(self, "stderr")

    def write(self, data: bytes | str, stream: str = "stdout") -> int:
        if stream not in wire.LOG_STREAMS:
            raise ValueError(f"stream must be one of {wire.LOG_STREAMS}, not {stream!r}")
        raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else bytes(data)
        if not raw:
            return len(data)
        with self._lock:
            if self.closed:
                raise ValueError("write to the output of a finished task")
            self.written += len(raw)
            if self._buffer and (stream != self._stream or len(self._buffer) + len(raw) > self.chunk_bytes):
                self._emit()  # a write that fits a chunk of its own is not split across two
            self._stream = stream
            view = memoryview(raw)
            while len(view) >= self.chunk_bytes:
                self._buffer += view[: self.chunk_bytes]
                self._emit()
                view = view[self.chunk_bytes :]
            if view:
                if not self._buffer:
                    self._first_write_at = time.monotonic()
                self._buffer += view
                self._start_flusher()
                self._lock.notify_all()
        return len(data)

    def flush(self) -> None:
        with self._lock:
            if self._buffer:
                self._emit()

    def close(self) -> None:
        """Hand everything to the spool (and say what was lost); later writes raise ValueError."""
        with self._lock:
            if self.closed:
                return
            if self._buffer:
                self._emit()
            if self.lost and self.spool is not None:
                self._report_lost(self.spool, force=True)
            self.closed = True
            self._lock.notify_all()

    def _emit(self) -> None:
        """Hold the lock: hand the buffer to the spool as one chunk, or count it as lost."""
        data, self._buffer = bytes(self._buffer), bytearray()
        if self.spool is None:
            return
        # Say what was lost first, once the spool has room for that and for this chunk.
        if self.lost and (
            not self.spool.has_room(2 * len(data) + 1024) or not self._report_lost(self.spool, force=False)
        ):
            self._count_lost(data)
            return
        if self.spool.offer(wire.task_log(self.task_id, self.attempt, self.seq + 1, self._stream, data)):
            self.seq += 1
        else:
            self._count_lost(data)

    def _count_lost(self, data: bytes) -> None:
        if not self.lost:
            log.warning(
                "task %s attempt %s: the output spool is full; output is lost until it drains",
                self.task_id,
                self.attempt,
            )
        self.lost[self._stream] = self.lost.get(self._stream, 0) + len(data)
        self.lost_total[self._stream] = self.lost_total.get(self._stream, 0) + len(data)

    def _report_lost(self, spool: OutputSpool, force: bool) -> bool:
        counts = ", ".join(f"{count} bytes of {stream}" for stream, count in sorted(self.lost.items()))
        text = f"[aegis agent] output spool full (broker unreachable too long): {counts} lost\n"
        if spool.offer(wire.task_log(self.task_id, self.attempt, self.seq + 1, "system", text.encode()), force):
            self.seq += 1
            self.lost = {}
            return True
        return False

    def _start_flusher(self) -> None:
        if self._flusher is None:
            self._flusher = threading.Thread(
                target=self._flush_loop, name=f"output-{self.task_id}-{self.attempt}", daemon=True
            )
            self._flusher.start()

    def _flush_loop(self) -> None:
        with self._lock:
            while not self.closed:
                if not self._buffer:
                    self._lock.wait()
                    continue
                due = self._first_write_at + self.flush_interval_s - time.monotonic()
                if due > 0:
                    self._lock.wait(due)
                elif self._buffer:
                    self._emit()


class OutputStream:
    """A file-like stream of one task's output (``ctx.stdout``, ``ctx.stderr``): takes str and bytes.

    Works with ``print(..., file=ctx.stdout)``, ``ctx.stdout.write(b"...")`` and ``ctx.stdout.buffer.write``.
    """

    encoding = "utf-8"
    errors = "surrogateescape"

    def __init__(self, output: TaskOutput, stream: str) -> None:
        self._output = output
        self.name = f"<task {stream}>"
        self.stream = stream

    @property
    def buffer(self) -> OutputStream:
        return self

    @property
    def closed(self) -> bool:
        return self._output.closed

    def write(self, data: bytes | str) -> int:
        return self._output.write(data, self.stream)

    def writelines(self, lines: Iterable[bytes | str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._output.flush()

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def isatty(self) -> bool:
        return False
