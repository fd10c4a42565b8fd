"""The API side of bench/task_logs.py: readers that follow a task's output and note each chunk's lag."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from typing import Any

POLL_S = 0.05  # a reader without ?follow= asks again this often while nothing is new
FOLLOW_S = 10


class Reader(threading.Thread):
    """Follows one task's output through the API until it has ``expected`` bytes, noting each chunk's lag."""

    def __init__(self, base_url: str, token: str, task_id: int, expected: int, follow: bool) -> None:
        super().__init__(daemon=True)
        self.url = f"{base_url}/api/v1/tasks/{task_id}/logs/"
        self.headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        self.expected = expected
        self.follow = follow
        self.lags: list[float] = []
        self.read = 0
        self.throttled = 0  # 429 answers (waited out as Retry-After says)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._follow()
        except BaseException as exc:  # reported by the main thread
            self.error = exc

    def _follow(self) -> None:
        after = 0
        deadline = time.monotonic() + 600
        while self.read < self.expected and time.monotonic() < deadline:
            query = f"?after_seq={after}&limit=1000" + (f"&follow={FOLLOW_S}" if self.follow else "")
            try:
                page = _get_json(self.url + query, self.headers)
            except urllib.error.HTTPError as exc:
                if exc.code != 429:
                    raise
                self.throttled += 1
                time.sleep(float(exc.headers.get("Retry-After") or 1))
                continue
            now = time.time()
            for chunk in page["chunks"]:
                data = chunk["data"]
                self.read += len(data.encode())
                header = data.split("\n", 1)[0]
                if " t=" in header:
                    self.lags.append(now - float(header.rsplit("t=", 1)[1]))
                after = chunk["seq"]
            if not page["chunks"] and not self.follow:
                time.sleep(POLL_S)


def _get_json(url: str, headers: dict[str, str]) -> Any:
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=FOLLOW_S + 30) as response:  # nosec B310
        return json.load(response)


def has_follow(base_url: str, token: str, task_id: int) -> bool:
    """Whether the API takes ``?follow=`` (contract 2 of issue 17): older servers answer 400 to it."""
    try:
        _get_json(f"{base_url}/api/v1/tasks/{task_id}/logs/?follow=1", {"Authorization": f"Bearer {token}"})
    except urllib.error.HTTPError as exc:
        if exc.code == 400:
            return False
        raise
    return True


def operator_tokens(count: int) -> list[str]:
    """One operator (and token) per reader: the API throttles each operator (``API_THROTTLE_OPERATOR``)."""
    from django.contrib.auth.models import User

    from aegis_site.core.audit import Actor
    from ops import actions as ops_actions

    tokens = []
    for n in range(count):
        user = User.objects.create_superuser(f"bench-logs-{n}", password=None)
        tokens.append(ops_actions.issue_api_token(user, "bench", Actor.system("bench"))[1])
    return tokens
