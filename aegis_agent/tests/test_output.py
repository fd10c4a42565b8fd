"""Task output on the agent: chunking, coalescing, seq, the spool's overflow file and what it says when full.

The spool is driven through a stand-in for paho's publish/PUBACK pair, so a test decides when the "broker"
acknowledges; tests/test_output_broker.py runs the same code against a real Mosquitto that restarts.
"""

from __future__ import annotations

import base64
import itertools
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from aegis_agent import wire
from aegis_agent.handlers import TaskContext
from aegis_agent.output import NO_MATCHING_SUBSCRIBERS, OutputSpool, TaskOutput
from aegis_agent.tests.conftest import WAIT_S

KIB = 1024


@dataclass
class Info:
    mid: int
    rc: int


class FakeBroker:
    """paho's publish as the spool sees it: a mid per message; PUBACKs only when the test sends them."""

    def __init__(self) -> None:
        self.spool: OutputSpool | None = None
        self.published: list[tuple[int, dict[str, Any]]] = []
        self.unacked: list[int] = []
        self._mids = itertools.count(1)
        self._cond = threading.Condition()

    def publish(self, payload: bytes) -> Info:
        with self._cond:
            mid = next(self._mids)
            self.published.append((mid, json.loads(payload)))
            self.unacked.append(mid)
            self._cond.notify_all()
        return Info(mid, 0)

    def wait_published(self, count: int) -> list[dict[str, Any]]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.published) >= count, WAIT_S):
                raise AssertionError(f"waited for {count} publishes, got {len(self.published)}")
            return [message for _, message in self.published]

    def drain(self) -> None:
        """Acknowledge until the spool holds nothing."""
        assert self.spool is not None
        deadline = time.monotonic() + WAIT_S
        while self.spool.pending():
            if not self.ack():
                with self._cond:
                    self._cond.wait(0.05)
            assert time.monotonic() < deadline, f"{self.spool.pending()} chunks still pending"

    def ack(self, code: int = 0) -> int:
        """Acknowledge everything published so far; answers how many."""
        assert self.spool is not None
        with self._cond:
            mids, self.unacked = self.unacked, []
        for mid in mids:
            self.spool.on_publish(mid, code)
        return len(mids)


@pytest.fixture
def broker_and_spool(tmp_path: Path):
    broker = FakeBroker()
    spool = OutputSpool(
        broker.publish, memory_max_bytes=64 * KIB, disk_path=tmp_path / "spool.bin", disk_max_bytes=4 * 1024 * KIB
    )
    broker.spool = spool
    yield broker, spool
    spool.close()


def data_of(message: dict[str, Any]) -> bytes:
    if message.get("encoding") == "base64":
        return base64.b64decode(message["data"])
    return message["data"].encode()


def test_task_log_is_text_when_utf8_without_nul_and_base64_otherwise():
    text = json.loads(wire.task_log(7, 2, 1, "stdout", "héllo\n".encode()))
    assert {k: text[k] for k in ("type", "task_id", "attempt", "seq", "stream", "data")} == {
        "type": "task.log",
        "task_id": 7,
        "attempt": 2,
        "seq": 1,
        "stream": "stdout",
        "data": "héllo\n",
    }
    assert "encoding" not in text
    for raw in (b"\xff\xfe\x00\x01", b"a\x00b", "€".encode()[:2]):  # not UTF-8, NUL, half a character
        message = json.loads(wire.task_log(7, 2, 2, "stderr", raw))
        assert (message["encoding"], base64.b64decode(message["data"])) == ("base64", raw)


def test_task_log_refuses_a_chunk_over_16_kib_and_an_unknown_stream():
    assert len(wire.task_log(1, 0, 1, "stdout", b"\x01" * wire.MAX_LOG_CHUNK_BYTES)) < wire.MAX_MESSAGE_BYTES
    with pytest.raises(wire.MessageTooLarge):
        wire.task_log(1, 0, 1, "stdout", b"x" * (wire.MAX_LOG_CHUNK_BYTES + 1))
    with pytest.raises(ValueError, match="stream"):
        wire.task_log(1, 0, 1, "stdin", b"x")


def test_one_byte_writes_are_coalesced_into_one_chunk(broker_and_spool):
    broker, spool = broker_and_spool
    output = TaskOutput(5, 1, spool, flush_interval_s=0.1)
    for _ in range(500):
        output.write(b".")
    (message,) = broker.wait_published(1)  # sent by the flush interval, not by close()
    assert (message["seq"], message["stream"], message["data"]) == (1, "stdout", "." * 500)
    output.close()
    assert len(broker.published) == 1


def test_big_writes_are_cut_at_16_kib_and_a_write_that_fits_a_chunk_is_not_split(broker_and_spool):
    broker, spool = broker_and_spool
    output = TaskOutput(5, 1, spool, flush_interval_s=5)
    output.write(b"a" * (40 * KIB))  # 16 + 16 go at once, 8 wait
    output.write(b"b" * (10 * KIB))  # 8 + 10 would pass 16: the 8 go alone, the 10 stay whole
    output.close()
    messages = broker.wait_published(4)
    assert [(m["seq"], len(data_of(m))) for m in messages] == [
        (1, 16 * KIB),
        (2, 16 * KIB),
        (3, 8 * KIB),
        (4, 10 * KIB),
    ]
    assert b"".join(data_of(m) for m in messages) == b"a" * (40 * KIB) + b"b" * (10 * KIB)


def test_seq_is_gap_free_over_all_streams_and_the_context_is_file_like(broker_and_spool):
    broker, spool = broker_and_spool
    output = TaskOutput(9, 3, spool)
    ctx = TaskContext(9, 3, "demo", None, None, lambda _p: None, output)
    print("to stdout", file=ctx.stdout)
    ctx.stderr.write(b"raw \xff bytes\n")
    ctx.stdout.writelines(["a\n", b"b\n"])
    ctx.stdout.buffer.write("é".encode()[:1])  # half a character: the chunk goes as base64
    ctx.log("note\n", stream="system")
    ctx.stdout.flush()
    output.close()
    messages = broker.wait_published(4)
    assert [(m["task_id"], m["attempt"], m["seq"], m["stream"]) for m in messages] == [
        (9, 3, 1, "stdout"),
        (9, 3, 2, "stderr"),
        (9, 3, 3, "stdout"),
        (9, 3, 4, "system"),
    ]
    assert [data_of(m) for m in messages] == [b"to stdout\n", b"raw \xff bytes\n", b"a\nb\n\xc3", b"note\n"]
    with pytest.raises(ValueError, match="finished task"):
        ctx.log("too late")


def test_unacknowledged_output_overflows_to_disk_and_leaves_in_order_once_acknowledged(broker_and_spool, tmp_path):
    broker, spool = broker_and_spool
    output = TaskOutput(1, 0, spool)
    for number in range(200):  # 200 x 1 KiB chunks: far more than 64 KiB of memory and the 64-chunk window
        output.write(f"{number:04d}".encode() * 256)
        output.flush()
    output.close()
    assert (tmp_path / "spool.bin").stat().st_size > 0
    assert spool.pending() == 200
    broker.drain()
    seqs = [m["seq"] for _, m in broker.published]
    assert seqs == list(range(1, 201))
    assert [data_of(m)[:4] for _, m in broker.published] == [f"{n:04d}".encode() for n in range(200)]
    assert (tmp_path / "spool.bin").stat().st_size == 0  # emptied once drained


def test_when_memory_and_disk_are_full_the_loss_is_counted_and_said_in_a_system_chunk(tmp_path):
    broker = FakeBroker()
    spool = OutputSpool(broker.publish, memory_max_bytes=64 * KIB, disk_path=tmp_path / "s", disk_max_bytes=64 * KIB)
    broker.spool = spool
    try:
        output = TaskOutput(1, 0, spool)
        for _ in range(20):  # 320 KiB of output, 128 KiB of room, nothing acknowledged
            output.write(b"x" * (16 * KIB))
        output.write(b"e" * 100, stream="stderr")  # fits in what the disk has left
        output.close()
        lost = output.lost_total
        assert lost["stdout"] > 0
        broker.drain()
        messages = [m for _, m in broker.published]
        assert sorted(m["seq"] for m in messages) == list(range(1, len(messages) + 1))  # still gap-free
        (marker,) = [m for m in messages if m["stream"] == "system"]
        assert f"{lost['stdout']} bytes of stdout lost" in marker["data"]
        # The small stderr write fit again: the marker goes first, so a reader sees where the hole is.
        last = max(messages, key=lambda m: m["seq"])
        assert (last["stream"], last["data"], last["seq"]) == ("stderr", "e" * 100, marker["seq"] + 1)
        stored = sum(len(data_of(m)) for m in messages if m["stream"] == "stdout")
        assert stored + lost["stdout"] == 20 * 16 * KIB  # what was not sent is exactly what the marker counts
    finally:
        spool.close()


def test_a_chunk_the_broker_routed_to_nobody_is_sent_again(broker_and_spool):
    broker, spool = broker_and_spool
    output = TaskOutput(1, 0, spool)
    output.write(b"first\n")
    output.close()
    broker.wait_published(1)
    broker.ack(NO_MATCHING_SUBSCRIBERS)  # the bridge was not subscribed: the broker dropped it
    again = broker.wait_published(2)[1]
    assert (again["seq"], again["data"]) == (1, "first\n")
    broker.ack()
    assert spool.wait_empty(WAIT_S)
    assert spool.acknowledged == 1


def test_an_acknowledgement_before_the_bookkeeping_is_not_lost(tmp_path):
    """paho may read the PUBACK between publish() returning and the spool noting the mid."""
    spool_box: list[OutputSpool] = []

    def publish_and_ack_at_once(payload: bytes) -> Info:
        spool_box[0].on_publish(1, 0)
        return Info(1, 0)

    spool = OutputSpool(publish_and_ack_at_once, disk_path=tmp_path / "s")
    spool_box.append(spool)
    try:
        assert spool.offer(wire.task_log(1, 0, 1, "stdout", b"x"))
        assert spool.wait_empty(WAIT_S)
    finally:
        spool.close()


def test_an_unwritable_spool_directory_counts_as_a_full_spool_not_as_a_failing_handler(tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    broker = FakeBroker()
    spool = OutputSpool(broker.publish, memory_max_bytes=64 * KIB, disk_path=blocker / "spool.bin")
    broker.spool = spool
    try:
        output = TaskOutput(1, 0, spool)
        for _ in range(10):  # 160 KiB, nothing acknowledged: past memory, and the file cannot be made
            output.write(b"x" * (16 * KIB))
        output.close()
        assert output.lost_total["stdout"] > 0
        broker.drain()
        assert [m for _, m in broker.published if m["stream"] == "system"]
    finally:
        spool.close()
