"""The browser's end of the live updates: staff only, listen only."""

from __future__ import annotations

import json
from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from ops.live.feed import ChangeFeed, feed_for_this_loop

REFUSED = 4403  # the browser stops reconnecting on this code: its session is gone or not staff


def may_listen(user: Any) -> bool:
    return bool(user is not None and user.is_authenticated and user.is_active and user.is_staff)


class LiveConsumer(AsyncJsonWebsocketConsumer):
    """Async, not sync: every socket of the process shares one change feed, an asyncio task on daphne's loop."""

    feed: ChangeFeed | None = None

    async def connect(self) -> None:
        if not may_listen(self.scope.get("user")):
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
        """``changed`` from the feed's group: pass the topics on, nothing else."""
        await self.send_json({"type": "changed", "topics": list(event.get("topics", []))})
