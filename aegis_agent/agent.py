"""The reference agent: one MQTT session, a bounded pool of task threads.

Threads: paho's network loop (callbacks run there and only queue work), one
heartbeat thread, and ``max_concurrency`` task workers.

Delivery is at-least-once both ways, so the agent is idempotent by (task id,
attempt): a duplicate assign starts nothing (for a finished task it re-sends the
stored final event with its original message id, which the server dedups), and
an assign older than the attempt the agent knows is ignored.

A hello lists what runs (``running``) and the finished tasks whose result has
not reached a subscriber yet, or did so only moments ago (``finished``): after a
broker restart the hello goes out before the buffered results, and the server
must wait for them rather than end those attempts as lost.
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import paho.mqtt.client as mqtt

from aegis_agent import connection, wire
from aegis_agent.config import AgentConfig
from aegis_agent.handlers import HandlerRegistry, TaskContext, TaskError, default_registry
from aegis_agent.output import OutputSpool, TaskOutput
from aegis_agent.redelivery import redelivery
from aegis_agent.wire import FINISHED_LISTED_S, TaskId, TaskKey

log = logging.getLogger(__name__)

_REMEMBERED_FINISHED = 1000
_REMEMBERED_ATTEMPTS = 10_000


@dataclass
class _Final:
    """A terminal event: kept to re-send on a duplicate assign, and listed in hellos until a subscriber got it."""

    key: TaskKey
    payload: bytes
    delivered_at: float | None = None  # time.monotonic() when the broker took it for a subscriber

    def delivered(self) -> None:
        self.delivered_at = time.monotonic()

    def unacknowledged(self, now: float) -> bool:
        return self.delivered_at is None or now - self.delivered_at < FINISHED_LISTED_S


class Agent:
    def __init__(self, config: AgentConfig, registry: HandlerRegistry | None = None) -> None:
        self.config = config
        self.registry = registry or default_registry(
            config.shell_allow, config.shell_timeout_s, config.shell_max_output_bytes
        )
        self.topics = wire.Topics(config.agent_id)
        self._lock = threading.RLock()  # re-entered when a hello is built under it (_send_hello)
        self._running: dict[TaskKey, TaskContext] = {}
        self._latest_attempt: OrderedDict[TaskId, int] = OrderedDict()
        self._finished: OrderedDict[TaskKey, _Final] = OrderedDict()
        self._draining = False
        self._seq = 0
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._connected = threading.Event()
        self._stop_requested = threading.Event()
        self._pool = ThreadPoolExecutor(config.max_concurrency, thread_name_prefix=f"task-{config.agent_id}")
        self._heartbeat_thread: threading.Thread | None = None
        tls = None
        if config.tls_ca and config.tls_cert and config.tls_key:
            tls = connection.TlsFiles(config.tls_ca, config.tls_cert, config.tls_key, config.tls_check_hostname)
        self.client = connection.new_client(config.agent_id, config.mqtt_version, tls, config.username, config.password)
        self.client.reconnect_delay_set(config.reconnect_min_s, config.reconnect_max_s)
        self.client.on_pre_connect = self._on_pre_connect
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        spool_dir = Path(config.output_spool_dir or tempfile.gettempdir())
        self.output_spool = OutputSpool(
            self._publish_output,
            memory_max_bytes=config.output_spool_memory_bytes,
            disk_path=spool_dir / f"aegis-agent-{config.agent_id}.output-spool",
            disk_max_bytes=config.output_spool_disk_bytes,
        )

    # --- lifecycle ------------------------------------------------------------

    @property
    def capabilities(self) -> list[str]:
        if self.config.capabilities:
            return list(self.config.capabilities)
        kinds = self.registry.kinds()
        return [k for k in kinds if k != "shell" or self.config.shell_allow]

    @property
    def draining(self) -> bool:
        return self._draining

    def start(self) -> None:
        """Connect in the background; paho retries with backoff forever until stop()."""
        self.client.connect_async(
            self.config.host,
            self.config.broker_port,
            keepalive=self.config.keepalive_s,
            clean_start=connection.clean_start_flag(self.config.mqtt_version),
            properties=connection.connect_properties(self.config.mqtt_version, self.config.session_expiry_s),
        )
        self.client.loop_start()
        self._heartbeat_thread = threading.Thread(
            target=self._heartbeat_loop, name=f"heartbeat-{self.config.agent_id}", daemon=True
        )
        self._heartbeat_thread.start()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def stop(self, grace_s: float | None = None) -> None:
        """Cancel running tasks, let their reports out, publish ``offline`` and disconnect cleanly."""
        if self._stopping.is_set():
            self._stopped.wait(30)
            return
        self._stopping.set()
        grace = self.config.shutdown_grace_s if grace_s is None else grace_s
        with self._lock:
            self._draining = True
            for ctx in self._running.values():
                ctx.cancel(code="agent_shutdown")
        self._pool.shutdown(wait=False, cancel_futures=False)
        deadline = time.monotonic() + grace
        while self._running and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.client.is_connected() and not self.output_spool.wait_empty(max(deadline - time.monotonic(), 1.0)):
            log.warning("stopping with %s task output chunk(s) not acknowledged", self.output_spool.pending())
        if self.client.is_connected():
            info = self.client.publish(self.topics.status, wire.encode(wire.status("offline")), qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=min(grace, 5.0))
            except (RuntimeError, ValueError):
                log.warning("offline status not confirmed before disconnect")
        self.client.disconnect()
        self.client.loop_stop()
        self.output_spool.close()
        if self._heartbeat_thread is not None:
            self._heartbeat_thread.join(timeout=5)
        self._stopped.set()
        log.info("agent %s stopped", self.config.agent_id)

    def run_forever(self) -> None:
        """Run until SIGTERM or SIGINT, then stop cleanly."""

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("signal %s: stopping", signal.Signals(signum).name)
            self._stop_requested.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.start()
        while not self._stop_requested.wait(0.5):
            pass
        self.stop()

    # --- MQTT callbacks (network thread) --------------------------------------

    def _on_pre_connect(self, client: mqtt.Client, _userdata: Any) -> None:
        connection.offline_will(client, self.topics)

    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: Any,
        _properties: Any,
    ) -> None:
        if reason_code.is_failure:
            log.error("broker refused the connection: %s", reason_code)
            return
        log.info(
            "connected to %s:%s (session present: %s)", self.config.host, self.config.broker_port, flags.session_present
        )
        client.subscribe([(self.topics.inbox, 1), (wire.BROADCAST_TOPIC, 1)])
        redelivery.publish(client, self.topics.status, wire.encode(wire.status("online")), retain=True)
        self._send_hello()
        self._connected.set()

    def _hello(self) -> bytes:
        with self._lock:
            running, finished = list(self._running), self._unacknowledged()
        message = wire.hello(
            self.config.version, self.capabilities, self.config.labels, self.config.max_concurrency, running, finished
        )
        return wire.encode(message)

    def _send_hello(self) -> None:
        # Built and published under the lock, so no event about a task it does not list can overtake it.
        # Published again while nobody subscribes, and rebuilt each time: a hello must say what runs now.
        with self._lock:
            redelivery.publish(self.client, self.topics.hello, self._hello(), runner=self._locked, rebuild=self._hello)

    def _locked(self, publish: Callable[..., Any], *args: Any) -> None:
        with self._lock:
            publish(*args)

    def _on_publish(self, client: mqtt.Client, _userdata: Any, mid: int, reason: Any, _props: Any) -> None:
        redelivery.on_publish(client, mid, reason)
        self.output_spool.on_publish(mid, reason)

    def _publish_output(self, payload: bytes) -> mqtt.MQTTMessageInfo:
        return self.client.publish(self.topics.logs, payload, qos=1)

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason_code: Any, _props: Any) -> None:
        self._connected.clear()
        if not self._stopping.is_set():
            log.warning("disconnected from broker (%s); reconnecting with backoff", reason_code)

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic not in (self.topics.inbox, wire.BROADCAST_TOPIC):  # never read as a command to run
            log.debug("ignored a message on %s, not this agent's inbox", message.topic)
            return
        try:
            parsed = wire.parse_inbox(message.payload)
        except wire.ProtocolError as exc:
            log.warning(
                "dropped invalid message on %s: %s (%s)",
                message.topic,
                exc,
                connection.describe_payload(message.payload),
            )
            return
        try:
            self.handle(parsed, broadcast=message.topic == wire.BROADCAST_TOPIC)
        except Exception:
            log.exception("failed to handle %s", parsed)

    # --- inbox ------------------------------------------------------------------

    def handle(self, message: wire.InboxMessage, broadcast: bool = False) -> None:
        if isinstance(message, wire.Ping):
            if message.hello:
                self._send_hello()
            else:
                self._send_heartbeat()
        elif isinstance(message, wire.Drain):
            log.info("draining: finishing running tasks, accepting nothing new")
            self._draining = True
        elif isinstance(message, wire.Resume):
            if not self._stopping.is_set():  # a drain for shutdown stays
                log.info("resumed: accepting new tasks again")
                self._draining = False
        elif broadcast:
            log.warning("ignored %s on the broadcast topic", type(message).__name__)
        elif isinstance(message, wire.Assign):
            self._assign(message.task)
        elif isinstance(message, wire.Cancel):
            self._cancel(message)

    def _assign(self, task: wire.TaskSpec) -> None:
        key = task.key
        reason: str | None = None
        ctx: TaskContext | None = None
        with self._lock:
            if key in self._running:
                log.info("ignored duplicate assign of task %s attempt %s (running)", *key)
                return
            final = self._finished.get(key)
            if final is None:
                latest = self._latest_attempt.get(task.id)
                if latest is not None and task.attempt < latest:
                    log.info("ignored assign of task %s attempt %s: attempt %s is newer", task.id, task.attempt, latest)
                    return
                reason = self._refusal(task)
                if reason is None:
                    previous = self._running.get((task.id, latest)) if latest is not None else None
                    if previous is not None:
                        log.info("task %s: attempt %s supersedes %s", task.id, task.attempt, latest)
                        previous.cancel(force=True, code="superseded")
                    output = TaskOutput(
                        task.id if isinstance(task.id, int) else 0,
                        task.attempt,
                        self.output_spool if isinstance(task.id, int) else None,  # task.log carries integer ids
                        self.config.output_flush_interval_s,
                    )
                    report = self._progress_reporter(key)
                    ctx = TaskContext(
                        task.id,
                        task.attempt,
                        task.kind,
                        task.payload,
                        task.timeout_s,
                        report,
                        output,
                        api_url=self.config.api_url,
                        api_token_file=self.config.api_token_file,
                    )
                    self._running[key] = ctx
                    self._latest_attempt[task.id] = task.attempt
                    self._latest_attempt.move_to_end(task.id)
                    while len(self._latest_attempt) > _REMEMBERED_ATTEMPTS:
                        self._latest_attempt.popitem(last=False)
        if final is not None:
            log.info("duplicate assign of finished task %s attempt %s: re-sending its result", *key)
            redelivery.publish(self.client, self.topics.events, final.payload, on_delivered=final.delivered)
            return
        if reason is not None:
            log.info("rejected task %s attempt %s: %s", task.id, task.attempt, reason)
            self._publish_event(wire.task_rejected(task.id, task.attempt, reason))
            return
        assert ctx is not None  # nosec B101  # type narrowing: _check returns a context whenever reason is None
        self._publish_event(wire.task_accepted(task.id, task.attempt))
        try:
            self._pool.submit(self._run, task, ctx)
        except RuntimeError:  # the pool shut down: we are stopping
            self._finish(key, wire.task_failed(task.id, task.attempt, "agent_shutdown", "the agent is stopping", True))

    def _refusal(self, task: wire.TaskSpec) -> str | None:
        if self._draining:
            return "draining"
        if self.registry.get(task.kind) is None:
            return "unknown_kind"
        if len(self._running) >= self.config.max_concurrency:
            return "at_capacity"
        return None

    def _cancel(self, message: wire.Cancel) -> None:
        key = (message.task_id, message.attempt)
        with self._lock:
            ctx = self._running.get(key)
        if ctx is None:
            log.info("cancel for task %s attempt %s: not running here", message.task_id, message.attempt)
            return
        log.info("canceling task %s attempt %s (force=%s)", message.task_id, message.attempt, message.force)
        ctx.cancel(force=message.force)
        if message.force:
            # The server has ended this attempt already: free the slot now, not when the handler
            # gets round to returning, so the next assignment is not refused at_capacity.
            self._finish(key, wire.task_failed(*key, "canceled", "canceled by the server (forced)", False))

    # --- running tasks (worker threads) ---------------------------------------

    def _progress_reporter(self, key: TaskKey) -> Any:
        def report(progress: Mapping[str, Any]) -> None:
            self._publish_event(wire.task_progress(key[0], key[1], progress))

        return report

    def _run(self, task: wire.TaskSpec, ctx: TaskContext) -> None:
        handler = self.registry.get(task.kind)
        assert handler is not None  # nosec B101  # checked before acceptance; the registry does not shrink
        try:
            result = handler(ctx)
            final = wire.task_succeeded(task.id, task.attempt, result)
            try:
                wire.encode(final)
            except wire.MessageTooLarge as exc:
                final = wire.task_failed(task.id, task.attempt, "result_too_large", str(exc), False)
        except TaskError as exc:
            final = wire.task_failed(task.id, task.attempt, exc.code, exc.message, exc.retryable)
        except Exception as exc:
            log.exception("handler %s failed on task %s attempt %s", task.kind, task.id, task.attempt)
            final = wire.task_failed(task.id, task.attempt, "handler_error", f"{type(exc).__name__}: {exc}", True)
        ctx.output.close()  # the result goes out only once every chunk of output is in the spool
        self._finish(task.key, final)

    def _finish(self, key: TaskKey, final_message: dict[str, Any]) -> None:
        """Publish the terminal event; the task stays listed as finished until a subscriber got it."""
        final = _Final(key, wire.encode(final_message))
        with self._lock:
            if self._running.pop(key, None) is None:
                return  # already ended (a forced cancel): what the handler returned later is dropped
            self._finished[key] = final
            while len(self._finished) > _REMEMBERED_FINISHED:
                self._finished.popitem(last=False)
            # Published under the lock so that a hello built meanwhile lists the task either as
            # running or as finished, never as neither (the server would call it lost).
            redelivery.publish(self.client, self.topics.events, final.payload, on_delivered=final.delivered)
        log.info("task %s attempt %s: %s", key[0], key[1], final_message["type"])

    def _publish_event(self, message: dict[str, Any]) -> None:
        redelivery.publish(self.client, self.topics.events, wire.encode(message))

    # --- heartbeats -------------------------------------------------------------

    def _unacknowledged(self) -> list[TaskKey]:
        """Finished tasks whose final event has not reached a subscriber (or only just did). Hold the lock."""
        now = time.monotonic()
        return [f.key for f in self._finished.values() if f.unacknowledged(now)]

    def running(self) -> list[TaskKey]:
        with self._lock:
            return list(self._running)

    def _send_heartbeat(self) -> None:
        if not self.client.is_connected():
            return
        with self._lock:
            self._seq += 1
            seq, held = self._seq, [*self._running, *self._unacknowledged()]
        try:
            load: float | None = round(os.getloadavg()[0], 2)
        except (OSError, AttributeError):
            load = None
        message = wire.heartbeat(seq, held, load)
        self.client.publish(self.topics.heartbeat, wire.encode(message), qos=self.config.heartbeat_qos)

    def _heartbeat_loop(self) -> None:
        while not self._stopping.wait(self.config.heartbeat_interval_s):
            try:
                self._send_heartbeat()
            except Exception:
                log.exception("heartbeat failed")
