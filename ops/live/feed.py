"""Where live events come from: a per-process poller of watermarks that cost one index probe each.

Changes are made by several processes (web, bridge, dispatcher, and in production several
replicas of each), and in the all-in-one mode each has its own in-memory channel layer, so the
bridge cannot reach the web's sockets. The database is the one place every change passes
through, so each web process that has live sockets reads, once a second, the newest task event
id, the newest audit row id and the newest agent timestamps (MAX over an index: O(1) at any
size) and sends ``changed`` with the topics that moved to its own sockets through the channel
layer. Nothing is written on the hot path, and one event per second at most leaves each process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
import weakref
from dataclasses import dataclass
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import BaseChannelLayer, get_channel_layer
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection

from aegis_site.core.models import AuditEvent
from registry.models import Agent
from tasks.models import TaskEvent

log = logging.getLogger("aegis.live")

TOPICS = ("agents", "tasks", "jobs", "audit", "health")
GROUP_PREFIX = "aegis-live"


def poll_interval() -> float:
    """Seconds between two reads, and so the shortest time between two events."""
    return float(settings.LIVE_POLL_INTERVAL)


def seen_interval() -> float:
    """Heartbeats move ``last_seen_at`` all the time: they announce "agents" at most this often."""
    return float(settings.LIVE_SEEN_INTERVAL)


def health_interval() -> float:
    """A dead role writes nothing, so "health" is announced on a timer for the pages to notice."""
    return float(settings.LIVE_HEALTH_INTERVAL)


def channel_layer() -> BaseChannelLayer:
    layer = get_channel_layer()
    if layer is None:
        raise ImproperlyConfigured("live updates need CHANNEL_LAYERS")
    return layer


@dataclass(frozen=True)
class Watermarks:
    task_event_id: Any
    audit_event_id: Any
    agent_updated_at: Any
    agent_seen_at: Any


WATERMARK_COLUMNS = (  # in the order of Watermarks' fields
    (TaskEvent._meta.db_table, "id"),
    (AuditEvent._meta.db_table, "id"),
    (Agent._meta.db_table, "updated_at"),
    (Agent._meta.db_table, "last_seen_at"),
)


def read_watermarks() -> Watermarks:
    """One round trip; each part is a MAX that PostgreSQL and SQLite answer from the end of an index."""
    q = connection.ops.quote_name
    parts = [f"(SELECT MAX({column}) FROM {q(table)})" for table, column in WATERMARK_COLUMNS]  # noqa: S608  # nosec B608
    sql = "SELECT " + ", ".join(parts)
    with connection.cursor() as cursor:
        cursor.execute(sql)
        row = cursor.fetchone()
    return Watermarks(*row)


def moved(before: Watermarks, after: Watermarks) -> set[str]:
    """Topics whose watermark moved; "seen" is internal (heartbeats only), throttled by the feed.

    Job counters and states change in the transactions that write task events, and operators'
    job actions (submit, pause, resume, cancel) write audit rows: either one moves "jobs".
    """
    topics = set()
    if after.task_event_id != before.task_event_id:
        topics |= {"tasks", "jobs"}
    if after.audit_event_id != before.audit_event_id:
        topics |= {"audit", "jobs"}
    if after.agent_updated_at != before.agent_updated_at:
        topics.add("agents")
    if after.agent_seen_at != before.agent_seen_at:
        topics.add("seen")
    return topics


@dataclass
class Pacer:
    """Turns moved watermarks into the topics to send now: heartbeat-only moves and health on their own clocks."""

    started_at: float
    agents_sent_at: float = float("-inf")
    health_sent_at: float = 0.0

    def __post_init__(self) -> None:
        self.health_sent_at = self.started_at

    def topics(self, moved_topics: set[str], now: float) -> set[str]:
        topics = moved_topics - {"seen"}
        if "seen" in moved_topics and now - self.agents_sent_at >= seen_interval():
            topics.add("agents")
        if "agents" in topics:
            self.agents_sent_at = now
        if now - self.health_sent_at >= health_interval():
            topics.add("health")
            self.health_sent_at = now
        return topics


class ChangeFeed:
    """The poller of one process (one event loop), running while at least one socket listens.

    Its group is its own (``aegis-live.<random>``): with a Redis channel layer and several web
    replicas, each replica tells only its own sockets, so a browser gets one event, not one per
    replica.
    """

    def __init__(self) -> None:
        self.group = f"{GROUP_PREFIX}.{uuid.uuid4().hex}"
        self.listeners = 0
        self._task: asyncio.Task[None] | None = None
        self._started = asyncio.Event()

    async def join(self, channel_name: str) -> None:
        """Returns once the first watermarks are read, so a change made after joining is announced."""
        await channel_layer().group_add(self.group, channel_name)
        self.listeners += 1
        if self._task is None:
            self._started = asyncio.Event()
            self._task = asyncio.create_task(self._run(self._started), name="aegis-live-feed")
        await self._started.wait()

    async def leave(self, channel_name: str) -> None:
        await channel_layer().group_discard(self.group, channel_name)
        self.listeners -= 1
        if self.listeners <= 0 and self._task is not None:
            task, self._task = self._task, None
            self.listeners = 0
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _read(self) -> Watermarks | None:
        try:
            return await database_sync_to_async(read_watermarks, thread_sensitive=False)()
        except Exception:  # the database may be away for a while: keep polling, say it once per failure
            log.warning("live feed: cannot read watermarks", exc_info=True)
            return None

    async def _run(self, started: asyncio.Event) -> None:
        layer = channel_layer()
        previous = await self._read()
        started.set()
        pacer = Pacer(started_at=time.monotonic())
        while True:
            await asyncio.sleep(poll_interval())
            current = await self._read()
            if current is None:
                continue
            topics = pacer.topics(moved(previous, current) if previous else set(), time.monotonic())
            previous = current
            if topics:
                await layer.group_send(self.group, {"type": "changed", "topics": sorted(topics)})


_feeds: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ChangeFeed] = weakref.WeakKeyDictionary()


def feed_for_this_loop() -> ChangeFeed:
    """One feed per event loop: daphne runs one per process; each test's loop gets a fresh one."""
    loop = asyncio.get_running_loop()
    feed = _feeds.get(loop)
    if feed is None:
        feed = _feeds[loop] = ChangeFeed()
    return feed
