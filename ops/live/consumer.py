"""The browser's end of the live updates: staff with view permissions only, listen only."""

from __future__ import annotations

import json
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from ops.live.feed import ChangeFeed, feed_for_this_loop

REFUSED = 4403  # the browser stops reconnecting on this code: its session is gone, not staff, or may view nothing

# What each topic announces, and the view permissions of the pages it refreshes ("health" is the dashboard's).
TOPIC_PERMISSIONS: dict[str, tuple[str, ...]] = {
    "agents": ("registry.view_agent",),
    "tasks": ("tasks.view_task",),
    "jobs": ("tasks.view_job",),
    "audit": ("core.view_auditevent",),
    "health": ("registry.view_agent", "tasks.view_task"),
}


def may_listen(user: Any) -> bool:
    return bool(user is not None and user.is_authenticated and user.is_active and user.is_staff)


def topics_for(user: Any) -> frozenset[str]:
    """The topics whose pages this user may view: none for anyone who is not an active staff user."""
    if not may_listen(user):
        return frozenset()
    return frozenset(topic for topic, perms in TOPIC_PERMISSIONS.items() if user.has_perms(perms))


class LiveConsumer(AsyncJsonWebsocketConsumer):
    """Async, not sync: every socket of the process shares one change feed, an asyncio task on daphne's loop."""

    feed: ChangeFeed | None = None
    topics: frozenset[str] = frozenset()

    async def connect(self) -> None:
        self.topics = await database_sync_to_async(topics_for)(self.scope.get("user"))
        if not self.topics:
            # Accept, then close with a code the page can tell from a network failure.
            await self.accept()
            await self.close(code=REFUSED)
            return
        feed = feed_for_this_loop()
        await feed.join(self.channel_name)  # before accepting: a change made once we are open is announced
        self.feed = feed
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if self.feed is not None:
            feed, self.feed = self.feed, None
            await feed.leave(self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any) -> None:
        """Browsers only listen. A ``{"type": "ping"}`` gets a pong; anything else, malformed or not, is ignored."""
        if not text_data or len(text_data) > 1024:
            return
        try:
            message = json.loads(text_data)
        except ValueError:
            return
        if isinstance(message, dict) and message.get("type") == "ping":
            await self.send_json({"type": "pong"})

    async def changed(self, event: dict[str, Any]) -> None:
        """``changed`` from the feed's group: pass on the topics this user may view, nothing else."""
        topics = [topic for topic in event.get("topics", []) if topic in self.topics]
        if topics:
            await self.send_json({"type": "changed", "topics": topics})
