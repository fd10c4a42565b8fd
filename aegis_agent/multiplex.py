"""Drive many paho clients from one asyncio event loop thread.

paho's threaded mode costs a thread per client, and one thread per simulated
agent is GIL-bound. Here every client's socket is registered with one selector
loop (paho's external-loop API: ``loop_read``/``loop_write``/``loop_misc`` and the
socket open/close/register-write callbacks); one ticker calls ``loop_misc`` for
keepalives. The blocking part of a connect (TCP connect, TLS handshake) runs on
a few pool threads so a slow handshake does not stall the loop; while a client is
connecting only that pool thread touches it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import paho.mqtt.client as mqtt

log = logging.getLogger(__name__)

T = TypeVar("T")

IDLE, CONNECTING, HANDSHAKE, CONNECTED, CLOSED = "idle", "connecting", "handshake", "connected", "closed"


class Listener(Protocol):
    def prepare_connect(self) -> None:
        """Called on a pool thread just before each connect attempt (e.g. to refresh the Will)."""

    def connected(self, session_present: bool) -> None:
        """CONNACK accepted; called on the loop thread."""

    def disconnected(self) -> None:
        """Connection lost or closed; called on the loop thread."""


class Session:
    """One client's bookkeeping in the multiplexer."""

    __slots__ = ("backoff_s", "client", "handshake_since", "listener", "state", "wanted")

    def __init__(self, client: mqtt.Client, listener: Listener) -> None:
        self.client = client
        self.listener = listener
        self.state = IDLE
        self.wanted = True  # False once the owner asked to disconnect: no more reconnects
        self.backoff_s = 0.0
        self.handshake_since = 0.0


class Multiplexer:
    def __init__(
        self,
        connect_workers: int = 4,
        reconnect_min_s: float = 1.0,
        reconnect_max_s: float = 30.0,
        handshake_timeout_s: float = 30.0,
    ) -> None:
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self.handshake_timeout_s = handshake_timeout_s
        self.loop = asyncio.new_event_loop()
        self._pool = concurrent.futures.ThreadPoolExecutor(connect_workers, thread_name_prefix="mqtt-connect")
        self._thread = threading.Thread(target=self._run_loop, name="mqtt-multiplexer", daemon=True)
        self._sessions: list[Session] = []
        self._random = random.Random()  # noqa: S311 (jitter, not security)  # nosec B311

    # --- thread plumbing --------------------------------------------------------

    def start(self) -> None:
        self._thread.start()
        self.loop.call_soon_threadsafe(self._tick)

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def in_loop(self) -> bool:
        return threading.current_thread() is self._thread

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run fn on the loop thread soon (from any thread)."""
        self.loop.call_soon_threadsafe(fn, *args)

    def run(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        """Run fn on the loop thread and wait for its result."""
        if self.in_loop():
            return fn()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def call() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

        self.loop.call_soon_threadsafe(call)
        return future.result(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the loop; call after the clients disconnected. Closes any socket left open."""
        if self._thread.is_alive():
            with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
                self.run(self._close_all, timeout)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)
        if not self._thread.is_alive():
            self.loop.close()

    def _close_all(self) -> None:
        for session in self._sessions:
            session.wanted = False
            if session.client.socket() is not None:
                session.client._sock_close()  # paho has no public "drop socket now"
            session.state = CLOSED

    # --- sessions -----------------------------------------------------------------

    def add(self, client: mqtt.Client, listener: Listener) -> Session:
        session = Session(client, listener)
        client.on_socket_close = lambda _c, _u, sock: self._unwatch(sock)
        client.on_socket_register_write = lambda _c, _u, sock: self._want_write(session, sock)
        client.on_socket_unregister_write = lambda _c, _u, sock: self._no_write(sock)
        client.on_connect = lambda _c, _u, flags, rc, _p: self._on_connect(session, flags, rc)
        client.on_disconnect = lambda _c, _u, _f, rc, _p: self._on_disconnect(session, rc)
        self._sessions.append(session)
        return session

    def connect(self, session: Session, delay_s: float = 0.0) -> None:
        """Start (or retry) a connect; loop thread only. The client must have had connect_async()."""
        if not session.wanted or session.state in (CONNECTING, HANDSHAKE, CONNECTED):
            return
        session.state = CONNECTING
        if delay_s > 0:
            self.loop.call_later(delay_s, self._submit_connect, session)
        else:
            self._submit_connect(session)

    def _submit_connect(self, session: Session) -> None:
        if not session.wanted:
            session.state = IDLE
            return
        future = self.loop.run_in_executor(self._pool, self._blocking_connect, session)
        future.add_done_callback(lambda f: self._connect_done(session, f))

    @staticmethod
    def _blocking_connect(session: Session) -> None:
        session.listener.prepare_connect()
        session.client.reconnect()

    def _connect_done(self, session: Session, future: asyncio.Future[None]) -> None:
        error = future.exception() if not future.cancelled() else RuntimeError("canceled")
        if error is not None:
            session.state = IDLE
            log.debug("connect of %s failed: %s", session.client._client_id, error)
            self._retry_later(session)
            return
        sock = session.client.socket()
        if sock is None:
            session.state = IDLE
            self._retry_later(session)
            return
        session.state = HANDSHAKE
        session.handshake_since = time.monotonic()
        self.loop.add_reader(sock, self._readable, session)
        if session.client.want_write():
            self.loop.add_writer(sock, self._writable, session)

    def _retry_later(self, session: Session) -> None:
        if not session.wanted:
            return
        delay = session.backoff_s = min(max(session.backoff_s * 2, self.reconnect_min_s), self.reconnect_max_s)
        # Jitter spreads a fleet's reconnects after a broker restart.
        self.connect(session, delay * self._random.uniform(0.5, 1.0))

    # --- paho callbacks -------------------------------------------------------------

    def _readable(self, session: Session) -> None:
        client = session.client
        client.loop_read()
        sock = client.socket()
        # TLS may hold decrypted bytes the selector cannot see.
        while sock is not None and hasattr(sock, "pending") and sock.pending():
            client.loop_read()
            sock = client.socket()

    def _writable(self, session: Session) -> None:
        session.client.loop_write()

    def _want_write(self, session: Session, sock: Any) -> None:
        # From a pool thread (CONNECT queued during reconnect) _connect_done registers the writer.
        if self.in_loop():
            self.loop.add_writer(sock, self._writable, session)

    def _no_write(self, sock: Any) -> None:
        if self.in_loop():
            self.loop.remove_writer(sock)

    def _unwatch(self, sock: Any) -> None:
        if self.in_loop():
            self.loop.remove_reader(sock)
            self.loop.remove_writer(sock)

    def _on_connect(self, session: Session, flags: mqtt.ConnectFlags, reason_code: Any) -> None:
        if reason_code.is_failure:
            log.warning("broker refused %s: %s", session.client._client_id, reason_code)
            return  # paho closes the socket next; _on_disconnect schedules the retry
        session.state = CONNECTED
        session.backoff_s = 0.0
        session.listener.connected(flags.session_present)

    def _on_disconnect(self, session: Session, reason_code: Any) -> None:
        was_connected = session.state == CONNECTED
        session.state = IDLE
        if was_connected:
            session.listener.disconnected()
        if session.wanted:
            log.debug("%s disconnected (%s)", session.client._client_id, reason_code)
            self._retry_later(session)
        else:
            session.state = CLOSED

    def _tick(self) -> None:
        """Keepalive pings and handshake timeouts for every client, once a second."""
        now = time.monotonic()
        for session in self._sessions:
            if session.state == CONNECTED:
                session.client.loop_misc()
            elif session.state == HANDSHAKE and now - session.handshake_since > self.handshake_timeout_s:
                log.warning("no CONNACK for %s; reconnecting", session.client._client_id)
                session.client._sock_close()
                self._on_disconnect(session, "handshake timeout")
        self.loop.call_later(1.0, self._tick)
