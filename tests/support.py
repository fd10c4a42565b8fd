"""Helpers the end-to-end tests share: bounded waiting and hand-built protocol v1 messages."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any


def wait_for(
    condition: Callable[[], Any], what: str = "condition", timeout: float = 15.0, interval: float = 0.05
) -> Any:
    """Poll ``condition`` until it returns something truthy (returned), or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def envelope(message_type: str, **fields: Any) -> bytes:
    """An agent → server message as an agent would publish it."""
    ts = datetime.now(UTC).isoformat()
    return json.dumps({"v": 1, "id": uuid.uuid4().hex, "ts": ts, "type": message_type, **fields}).encode()


def mqtt_dropped() -> Counter[str]:
    """The bridge's dropped messages so far in this process, by reason (``aegis_mqtt_dropped_total``)."""
    from aegis_site.core import counters

    totals: Counter[str] = Counter()
    for metric in counters.MQTT_DROPPED.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                totals[sample.labels["reason"]] += int(sample.value)
    return totals


def broker_reachable(address: tuple[str, int] = ("127.0.0.1", 1883)) -> bool:
    """Whether the machine's MQTT broker (the bridge tests' default) accepts TCP connections."""
    try:
        socket.create_connection(address, timeout=1).close()
        return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def staff_user(username: str, perms: tuple[str, ...] = (), is_staff: bool = True) -> Any:
    """A user with exactly these ``app_label.codename`` permissions."""
    from django.contrib.auth.models import Permission, User

    user = User.objects.create_user(username, is_staff=is_staff)
    for perm in perms:
        app_label, codename = perm.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    return user


def client_for(user: Any) -> Any:
    """An API client logged in as ``user`` (``None``: anonymous)."""
    from rest_framework.test import APIClient

    client = APIClient()
    if user is not None:
        client.force_authenticate(user)
    return client
