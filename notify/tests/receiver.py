"""The delivery tests' helpers: a real HTTP receiver that records every POST and answers from a script; rows.

It listens on 127.0.0.1 (a free port) in a thread of the test process. ``answers`` is a list
of ``(status, headers)`` used in order (then 200); ``hold`` makes the next POSTs wait until
``release()``, so a test can kill a notifier while its request is in the receiver's hands.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aegis_site.core import clock
from notify.models import Delivery, Event, Subscription


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    answers: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    requests: list[Received] = field(default_factory=list)
    holding: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        if self.server is None:
            raise RuntimeError("receiver not started")
        return int(self.server.server_address[1])

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def hold(self) -> None:
        """Keep the next requests unanswered until ``release()``."""
        self.released.clear()
        self.holding.set()

    def release(self) -> None:
        self.holding.clear()
        self.released.set()

    def ids(self) -> Counter[str]:
        """How many POSTs each ``webhook-id`` got."""
        with self.lock:
            return Counter(request.headers.get("webhook-id", "") for request in self.requests)

    def count(self) -> int:
        with self.lock:
            return len(self.requests)

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                with receiver.lock:
                    receiver.requests.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                    status, headers = receiver.answers.pop(0) if receiver.answers else (200, {})
                if receiver.holding.is_set():
                    receiver.released.wait(60)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", "2")
                self.end_headers()
                with contextlib.suppress(OSError):  # the sender died while we held its request
                    self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.release()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


# --- rows as notify.outbox.emit would write them (the tests do not depend on it) ---------------------------


def subscription(url: str = "", **fields: Any) -> Subscription:
    now = clock.now()
    fields.setdefault("events", ["job.finished", "task.failed"])
    return Subscription.objects.create(name="hook", url=url, created_at=now, updated_at=now, **fields)


def event_for(
    sub: Subscription,
    event_type: str = "job.finished",
    payload: dict[str, Any] | None = None,
    job_id: int | None = None,
    deadline_s: float = 3600.0,
    key: str = "",
) -> Delivery:
    """An Event and its Delivery, written as notify.outbox.emit would (without depending on it)."""
    at = clock.now()
    event = Event.objects.create(
        type=event_type,
        key=key or f"{event_type}:{Event.objects.count() + 1}",
        occurred_at=at,
        payload=payload if payload is not None else {"job": {"id": 42, "kind": "echo"}, "outcome": "succeeded"},
        job_id=job_id,
    )
    return Delivery.objects.create(
        subscription=sub,
        event=event,
        created_at=at,
        next_attempt_at=at,
        deadline=at + timedelta(seconds=deadline_s),
    )


def failed_task(task_id: int, job_id: int = 7) -> dict[str, Any]:
    return {
        "job": {"id": job_id, "kind": "echo", "state": "running"},
        "tasks": [
            {
                "id": task_id,
                "attempt": 3,
                "agent_id": f"agent-{task_id}",
                "state": "failed",
                "error": {"code": "exit_code", "message": f"exit 1 on {task_id}"},
                "finished_at": "2026-01-01T12:00:00Z",
            }
        ],
        "count": 1,
    }
