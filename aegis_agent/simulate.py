"""Fleet simulator: N agents in one process, each with its own MQTT session.

    python -m aegis_agent.simulate --count N --host H --port P [--prefix sim-]
        [--duration-ms D] [--failure-rate F] [--tls-dir DIR]
        [--output-bytes B [--output-rate R] [--output-chunk C] [--output-stderr F]]

Each simulated agent speaks protocol v1 like the reference agent (status +
Last Will, hello on every connect listing what it runs, heartbeats, accepted ->
succeeded/failed, cancel, drain, idempotent by task id + attempt), but "runs" a
task with a timer on one asyncio loop instead of a thread. With ``--tls-dir``
each agent connects with ``DIR/<agent id>.crt`` + ``.key`` (CN = agent id) and
trusts ``DIR/ca.crt``.

With ``--output-bytes B`` every task prints B bytes before its result, as
``task.log`` chunks of ``--output-chunk`` bytes (at most 16 KiB) on the agent's
logs topic, paced at ``--output-rate`` bytes/s per task (0: as fast as 32
unacknowledged chunks per task allow), ``--output-stderr`` of the chunks on
stderr; seq is gap-free per attempt. See ``simagent.OutputSpec``.
"""

from __future__ import annotations

import argparse
import logging
import random
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from aegis_agent import connection, logs, wire
from aegis_agent.config import AGENT_ID_RE
from aegis_agent.multiplex import Multiplexer
from aegis_agent.simagent import FleetStats, OutputSpec, SimAgent, filler_text

log = logging.getLogger("aegis_agent.simulate")  # not ``__main__`` under ``python -m``


class Fleet:
    """N simulated agents on one event loop thread (plus a few connect threads).

    ``Fleet(50, port=1883).start()`` connects them all (waits up to ``wait_s``);
    ``stop()`` publishes each agent's retained ``offline`` status and disconnects.
    """

    def __init__(
        self,
        count: int,
        host: str = "127.0.0.1",
        port: int | None = None,
        prefix: str = "sim-",
        duration_ms: float = 0.0,
        failure_rate: float = 0.0,
        tls_dir: str | Path | None = None,
        heartbeat_s: float = 10.0,
        heartbeat_qos: int = 0,
        max_concurrency: int = 8,
        capabilities: Sequence[str] = ("echo", "noop", "sleep"),
        labels: dict[str, str] | None = None,
        mqtt_version: int = 5,
        session_expiry_s: int = 3600,
        keepalive_s: int = 60,
        connect_workers: int = 4,
        seed: int | None = None,
        output: OutputSpec | None = None,
    ) -> None:
        if count < 1:
            raise ValueError("count must be at least 1")
        if not 0.0 <= failure_rate <= 1.0:
            raise ValueError("failure_rate must be between 0 and 1")
        self.host = host
        self.port = port if port is not None else (8883 if tls_dir else 1883)
        self.duration_s = max(duration_ms, 0.0) / 1000.0
        self.failure_rate = failure_rate
        self.heartbeat_s = heartbeat_s
        self.heartbeat_qos = heartbeat_qos
        self.max_concurrency = max_concurrency
        self.capabilities = list(capabilities)
        self.labels = dict(labels or {"simulated": "true"})
        self.mqtt_version = mqtt_version
        self.session_expiry_s = session_expiry_s
        self.keepalive_s = keepalive_s
        self.random = random.Random(seed)  # noqa: S311 (simulation, not security)  # nosec B311
        self.output = output or OutputSpec()
        self._filler = filler_text(self.random) if self.output.bytes_per_task else b""
        self.stats = FleetStats()
        self.agent_ids = [f"{prefix}{i}" for i in range(count)]
        self.mux = Multiplexer(connect_workers=connect_workers)
        self.agents: list[SimAgent] = [self._make_agent(agent_id, tls_dir) for agent_id in self.agent_ids]
        self._started = False

    def _make_agent(self, agent_id: str, tls_dir: str | Path | None) -> SimAgent:
        if not AGENT_ID_RE.match(agent_id):
            raise ValueError(f"agent id {agent_id!r} is not a valid Aegis agent id")
        tls = None
        if tls_dir is not None:
            directory = Path(tls_dir)
            tls = connection.TlsFiles(
                str(directory / "ca.crt"), str(directory / f"{agent_id}.crt"), str(directory / f"{agent_id}.key")
            )
        client = connection.new_client(agent_id, self.mqtt_version, tls)
        agent = SimAgent(self, agent_id, client, wire.Topics(agent_id))
        client.on_message = agent.on_message
        agent.session = self.mux.add(client, agent)
        client.connect_async(
            self.host,
            self.port,
            keepalive=self.keepalive_s,
            clean_start=connection.clean_start_flag(self.mqtt_version),
            properties=connection.connect_properties(self.mqtt_version, self.session_expiry_s),
        )
        return agent

    def status_online(self) -> bytes:
        return wire.encode(wire.status("online"))

    def output_chunk(self, key: wire.TaskKey, seq: int, stream: str, size: int) -> bytes:
        """``size`` bytes of a task's output: a header line with the publish time, then log-like lines."""
        task_id, attempt = key
        header = f"{stream} task {task_id} attempt {attempt} seq {seq} t={time.time():.6f}\n".encode()
        if size <= len(header):
            return header[:size]
        body = size - len(header)
        offset = self.random.randrange(len(self._filler) - body + 1)
        return header + self._filler[offset : offset + body]

    # --- control (any thread) ---------------------------------------------------------

    def start(self, wait_s: float | None = 30.0) -> None:
        """Connect every agent; with ``wait_s`` block until all are online (TimeoutError otherwise)."""
        if self._started:
            return
        self._started = True
        self.mux.start()
        for agent in self.agents:
            assert agent.session is not None  # nosec B101  # type narrowing: __init__ gives every agent a session
            self.mux.call(self.mux.connect, agent.session)
        if wait_s is not None and not self.wait_online(wait_s):
            raise TimeoutError(f"only {self.online_count()} of {len(self.agents)} agents online after {wait_s}s")

    def online_count(self) -> int:
        return sum(1 for agent in self.agents if agent.online)

    def wait_online(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.online_count() < len(self.agents):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def running_count(self) -> int:
        return self.mux.run(lambda: sum(len(a.running) for a in self.agents))

    def stop(self, timeout_s: float = 10.0) -> None:
        """Publish ``offline`` for every online agent, disconnect cleanly, stop the loop."""
        if not self._started:
            return
        self._started = False
        self.mux.run(self._disconnect_all, timeout_s)
        deadline = time.monotonic() + timeout_s
        while any(a.client.socket() is not None for a in self.agents) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.mux.close()

    def _disconnect_all(self) -> None:
        offline = wire.encode(wire.status("offline"))
        for agent in self.agents:
            assert agent.session is not None  # nosec B101  # type narrowing: __init__ gives every agent a session
            agent.session.wanted = False
            if agent.heartbeat_timer is not None:
                agent.heartbeat_timer.cancel()
            for running in agent.running.values():
                running.timer.cancel()
            if agent.online:
                agent.client.publish(agent.topics.status, offline, qos=1, retain=True)
                agent.client.disconnect()
            agent.online = False

    def __enter__(self) -> Fleet:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m aegis_agent.simulate", description="Aegis fleet simulator")
    parser.add_argument("--count", type=int, required=True, help="number of simulated agents")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, help="default 8883 with --tls-dir, 1883 without")
    parser.add_argument("--prefix", default="sim-", help="agent ids are PREFIX0 .. PREFIX(N-1)")
    parser.add_argument("--duration-ms", type=float, default=0.0, help="how long each task 'runs'")
    parser.add_argument("--failure-rate", type=float, default=0.0, help="fraction of tasks that fail (0..1)")
    parser.add_argument("--tls-dir", help="directory with ca.crt and <agent id>.crt/.key per agent")
    parser.add_argument("--heartbeat-s", type=float, default=10.0)
    parser.add_argument("--max-concurrency", type=int, default=8)
    parser.add_argument("--mqtt-version", type=int, choices=(5, 311), default=5)
    parser.add_argument("--connect-workers", type=int, default=4, help="threads for TCP/TLS connects")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--output-bytes", type=int, default=0, help="bytes each task prints (0: none)")
    parser.add_argument("--output-rate", type=float, default=0.0, help="bytes/s of each task's output (0: unpaced)")
    parser.add_argument("--output-chunk", type=int, default=4096, help="bytes per task.log chunk (128..16384)")
    parser.add_argument("--output-stderr", type=float, default=0.0, help="fraction of chunks on stderr (0..1)")
    parser.add_argument("--stats-every-s", type=float, default=10.0, help="log counters this often (0: never)")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        logs.configure(args.log_level)  # LOG_FORMAT: plain or json, the control plane's lines
        fleet = Fleet(
            args.count,
            host=args.host,
            port=args.port,
            prefix=args.prefix,
            duration_ms=args.duration_ms,
            failure_rate=args.failure_rate,
            tls_dir=args.tls_dir,
            heartbeat_s=args.heartbeat_s,
            max_concurrency=args.max_concurrency,
            mqtt_version=args.mqtt_version,
            connect_workers=args.connect_workers,
            seed=args.seed,
            output=OutputSpec(args.output_bytes, args.output_rate, args.output_chunk, args.output_stderr),
        )
    except (ValueError, OSError) as exc:
        print(f"aegis_agent.simulate: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    fleet.start(wait_s=None)
    started = time.monotonic()
    announced = False
    next_stats = started + args.stats_every_s
    while not stop.wait(0.2):
        if not announced and fleet.online_count() == args.count:
            announced = True
            log.info("all %d agents online after %.1fs", args.count, time.monotonic() - started)
        if args.stats_every_s > 0 and time.monotonic() >= next_stats:
            next_stats += args.stats_every_s
            log.info("online=%d %s", fleet.online_count(), fleet.stats.as_dict())
    log.info("stopping %d agents", args.count)
    fleet.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
