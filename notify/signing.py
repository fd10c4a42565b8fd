"""Standard Webhooks signatures (https://www.standardwebhooks.com): what a receiver checks to trust a notification.

``webhook-signature`` is ``v1,`` and the base64 HMAC-SHA256 of ``{id}.{timestamp}.{body}``
under the subscription's secret (``whsec_`` and the key in base64). The id is the delivery's,
the same on every attempt, so a receiver deduplicates by it; the timestamp is this attempt's
(wall clock, not the engine's: receivers compare it with theirs to refuse replays).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

PREFIX = "whsec_"


def secret_key(secret: str) -> bytes:
    """The HMAC key: the bytes base64-encoded after ``whsec_``."""
    return base64.b64decode(secret.removeprefix(PREFIX))


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256>`` of ``{msg_id}.{timestamp}.{body}``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(secret: str, msg_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt."""
    stamp = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": signature(secret, msg_id, stamp, body),
    }
