"""Publishing again what the broker took but routed to nobody.

An MQTT 5 broker answers a QoS 1 PUBLISH that matched no subscription with
PUBACK reason 16, "No matching subscribers" — a success code, so paho reports
the message as delivered although the broker dropped it. For an agent that
happens in the window after a broker restart in which the agents are back but
the bridge has not subscribed again (Mosquitto 2.0 restores a session's plain
subscriptions but not its shared ones). Losing a result there would leave the
task to time out and run again, so such messages are published again with
backoff until a subscriber takes them.

A publisher can ask to hear when a message reached a subscriber
(``on_delivered``: the agents list a finished task in their hello until then),
and can have a message rebuilt for each new try (``rebuild``: a hello published
again must say what the agent holds now, not what it held when the first copy
was refused).

One thread per process serves every client (the simulator runs thousands).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt

log = logging.getLogger(__name__)

NO_MATCHING_SUBSCRIBERS = 16
FIRST_DELAY_S = 0.5
MAX_DELAY_S = 30.0


# How a re-publish reaches a client: directly (paho's own network thread is
# thread-safe), or handed to the thread that drives the client (the simulator).
Runner = Callable[..., None]
Delivered = Callable[[], None]
Rebuild = Callable[[], bytes]


class _Pending(NamedTuple):
    topic: str
    payload: bytes
    retain: bool
    delay: float  # the wait before the next try, should this one be routed to nobody
    runner: Runner
    on_delivered: Delivered | None
    rebuild: Rebuild | None


@dataclass(order=True)
class _Due:
    at: float
    seq: int
    client: mqtt.Client = field(compare=False)
    pending: _Pending = field(compare=False)


def _direct(fn: Callable[..., Any], *args: Any) -> None:
    fn(*args)


class Redelivery:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._sent: dict[tuple[int, int], _Pending] = {}
        self._due: list[_Due] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def publish(
        self,
        client: mqtt.Client,
        topic: str,
        payload: bytes,
        retain: bool = False,
        runner: Runner = _direct,
        on_delivered: Delivered | None = None,
        rebuild: Rebuild | None = None,
    ) -> mqtt.MQTTMessageInfo:
        """``client.publish`` at QoS 1, remembered until the broker says where it went.

        ``on_delivered`` runs (on the thread that reads the PUBACK) once the broker took
        the message for a subscriber; ``rebuild`` makes the payload of every further try.
        """
        return self._publish(client, _Pending(topic, payload, retain, FIRST_DELAY_S, runner, on_delivered, rebuild))

    def _publish(self, client: mqtt.Client, pending: _Pending) -> mqtt.MQTTMessageInfo:
        # A QoS 1 PUBACK needs a network round trip, so it cannot beat this bookkeeping.
        info = client.publish(pending.topic, pending.payload, qos=1, retain=pending.retain)
        if info.rc in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            with self._lock:
                self._sent[(id(client), info.mid)] = pending
        return info

    def _publish_again(self, client: mqtt.Client, pending: _Pending) -> None:
        if pending.rebuild is not None:
            pending = pending._replace(payload=pending.rebuild())
        self._publish(client, pending)

    def on_publish(self, client: mqtt.Client, mid: int, reason: Any) -> None:
        """Call from the client's ``on_publish``."""
        code = getattr(reason, "value", 0)
        with self._lock:
            pending = self._sent.pop((id(client), mid), None)
            if pending is None:
                return
            if code == NO_MATCHING_SUBSCRIBERS:
                again = pending._replace(delay=min(pending.delay * 2, MAX_DELAY_S))
                heapq.heappush(self._due, _Due(time.monotonic() + pending.delay, next(self._seq), client, again))
                self._ensure_thread()
                self._wake.notify()
        if code == NO_MATCHING_SUBSCRIBERS:
            log.warning(
                "broker routed a message on %s to nobody; publishing it again in %.1fs", pending.topic, pending.delay
            )
        elif code < 0x80 and pending.on_delivered is not None:  # 0x80 and up: refused, never delivered
            pending.on_delivered()

    def forget(self, client: mqtt.Client) -> None:
        """Drop what is pending for a client that is going away."""
        with self._lock:
            key = id(client)
            self._sent = {k: v for k, v in self._sent.items() if k[0] != key}
            self._due = [due for due in self._due if due.client is not client]
            heapq.heapify(self._due)

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="aegis-redelivery", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._due or self._due[0].at > time.monotonic():
                    timeout = self._due[0].at - time.monotonic() if self._due else None
                    self._wake.wait(timeout)
                due = heapq.heappop(self._due)
            try:
                due.pending.runner(self._publish_again, due.client, due.pending)
            except Exception:  # one client's failure must not stop the others' retries
                log.exception("publishing again on %s failed", due.pending.topic)


redelivery = Redelivery()
