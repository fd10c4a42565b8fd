"""Reconnect storm: how long the bridge takes to apply every agent's status and hello after a broker restart.

    nice -n 10 .venv/bin/python bench/reconnect_storm.py [--agents 1000] [--simulators 4] [--rounds 3]
        [--settle-s 5] [--timeout-s 300] [--seed 1] [--json /tmp/storm.json]

Separate processes with the production defaults (the PostgreSQL pool on, ``DEBUG``
off): one ``manage.py run_bridge`` and ``--simulators`` processes of ``python -m
aegis_agent.simulate`` sharing ``--agents`` agents (ids ``soak-<process>-<n>``), on a
scratch database ``<name>_storm`` (from ``DATABASE_URL``; created, migrated, dropped
here) and a private Mosquitto on a free port with persistence on (``Broker`` of
``bench/_soak_procs.py``, as the soak runs it). No dispatcher, no web, no jobs:
the agents only reconnect, say hello and send heartbeats.

Once every agent is online in PostgreSQL, each of ``--rounds`` rounds (``--settle-s``
apart) sets every agent's ``transport`` to ``http`` in PostgreSQL (only a hello
sets it back to ``mqtt``; a status leaves it alone, and nothing else reads it
here), takes T0 and restarts the broker (SIGTERM, which saves the sessions, and
start again on the same port). Measured from T0:

- ``reconnected_s``: the broker's own reconnect, independent of the bridge: every
  agent's "New client connected ... as <id>" in the broker's log (``log_type
  notice``), read every 50 ms. Not a paho subscriber on the agents' statuses: a
  plain subscription survives the restart, so the statuses the agents publish
  before the bridge has subscribed again would be taken by it instead of being
  published again until the bridge gets them (``aegis_agent/redelivery.py``), and
  the bridge would get fewer; not Mosquitto's ``$SYS`` counters, every 10 s here.
- ``applied_s``: every agent's hello of this round applied in PostgreSQL (all of
  them ``transport = 'mqtt'`` again), polled every 50 ms.
- ``bridge_back_s``: the bridge's "bridge connected" log line of this round
  (its own reconnect, paho's backoff from 1 s), polled with the rest.
- ``bridge_lag_s`` = applied_s - reconnected_s; ``ratio`` = applied_s /
  reconnected_s (1.0: the bridge keeps up with the broker); ``hellos_per_s`` =
  agents / applied_s; ``bridge_cpu_s``: CPU seconds (user + system) the bridge
  used from T0 to applied (psutil); ``hellos_published_again``: the simulators'
  warnings that the broker routed a hello to nobody (sent before the bridge had
  subscribed again: Mosquitto 2.0 restores a session's plain subscriptions but
  not its shared ones), each published again after 0.5 s, 1 s, 2 s ...

It prints every round and the medians, checks that every agent is online at the
end, and exits 1
with the reason when a round does not complete within ``--timeout-s`` or a check
fails. ``--json PATH`` writes the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._infra import (
    ROOT,
    Processes,
    drop_database,
    median,
    role_env,
    scratch_database_url,
    setup_django,
    wait_until,
)
from bench._soak_procs import AGENT_PREFIX, Broker, Simulators

POLL_S = 0.05
CONNECTED = re.compile(rb"New client connected from \S+ as (" + re.escape(AGENT_PREFIX.encode()) + rb"\S+) ")


class ConnectLog:
    """The agents' connects as the broker logs them (``log_type notice``: "New client connected from ... as <id>")."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""
        self.seen: set[bytes] = set()

    def arm(self) -> None:
        self.offset, self.partial, self.seen = self.path.stat().st_size, b"", set()

    def count(self) -> int:
        """Distinct agents connected since ``arm``; reads what the broker logged since the last call."""
        with self.path.open("rb") as log:
            log.seek(self.offset)
            data = log.read()
        self.offset += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        self.seen.update(match[1] for match in map(CONNECTED.search, lines) if match)
        return len(self.seen)


def agents_where(**filters: Any) -> int:
    from registry.models import Agent

    return Agent.objects.filter(pk__startswith=AGENT_PREFIX, **filters).count()


def logged(path: Path, offset: int, text: bytes) -> bool:
    with path.open("rb") as log:
        log.seek(offset)
        return text in log.read()


def count_in(path: Path, offset: int, pattern: bytes) -> int:
    with path.open("rb") as log:
        log.seek(offset)
        return len(re.findall(pattern, log.read()))


def cpu_s(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def one_round(
    args: argparse.Namespace, broker: Broker, bridge: Any, procs: Processes, sims: Simulators, connects: ConnectLog
) -> dict[str, float]:
    from registry.models import Agent, Transport

    Agent.objects.filter(pk__startswith=AGENT_PREFIX).update(transport=Transport.HTTP)  # a hello sets it back
    connects.arm()
    cpu0 = cpu_s(bridge.pid)
    bridge_log = procs.tmp / "bridge.log"
    offset = bridge_log.stat().st_size
    sim_offsets = [role.log.stat().st_size for role in sims.roles]
    t0 = time.monotonic()
    broker.restart()
    up_s = time.monotonic() - t0
    reconnected_s: float | None = None
    applied_s: float | None = None
    bridge_back_s: float | None = None
    cpu = 0.0
    while reconnected_s is None or applied_s is None:
        if time.monotonic() - t0 > args.timeout_s:
            seen, applied = connects.count(), agents_where(transport=Transport.MQTT)
            raise TimeoutError(
                f"round not complete after {args.timeout_s:g} s: {seen} of {args.agents} agents connected "
                f"again, {applied} of their hellos applied"
            )
        procs.check_alive()
        sims.check()
        if reconnected_s is None and connects.count() >= args.agents:
            reconnected_s = time.monotonic() - t0
        if bridge_back_s is None and logged(bridge_log, offset, b"bridge connected"):
            bridge_back_s = time.monotonic() - t0
        if applied_s is None and agents_where(transport=Transport.MQTT) >= args.agents:
            applied_s = time.monotonic() - t0
            cpu = cpu_s(bridge.pid) - cpu0
        time.sleep(POLL_S)
    again = sum(
        count_in(role.log, start, rb"routed a message on \S+/hello to nobody")
        for role, start in zip(sims.roles, sim_offsets, strict=True)
    )
    return {
        "broker_up_s": up_s,
        "reconnected_s": reconnected_s,
        "bridge_back_s": float("nan") if bridge_back_s is None else bridge_back_s,
        "applied_s": applied_s,
        "bridge_lag_s": applied_s - reconnected_s,
        "ratio": applied_s / reconnected_s,
        "hellos_per_s": args.agents / applied_s,
        "bridge_cpu_s": cpu,
        "hellos_published_again": again,
    }


def fmt(figures: dict[str, float]) -> str:
    return (
        f"broker up {figures['broker_up_s']:.2f} s, reconnected {figures['reconnected_s']:.2f} s, "
        f"bridge back {figures['bridge_back_s']:.2f} s, "
        f"applied {figures['applied_s']:.2f} s, bridge lag {figures['bridge_lag_s']:.2f} s, "
        f"applied/reconnected {figures['ratio']:.2f}, {figures['hellos_per_s']:.0f} hellos/s, "
        f"bridge CPU {figures['bridge_cpu_s']:.2f} s, hellos published again {figures['hellos_published_again']:.0f}"
    )


def git_head() -> str:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "-uno"], cwd=ROOT, capture_output=True, check=True)
        return head.stdout.decode().strip() + (" (dirty)" if dirty.stdout.strip() else "")
    return "?"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--simulators", type=int, default=4, help="simulator processes sharing the agents")
    parser.add_argument("--rounds", type=int, default=3, help="broker restarts")
    parser.add_argument("--settle-s", type=float, default=5.0, help="pause before each round")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="the most one round (or the start) may take")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", help="write the figures here")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    procs = Processes()
    database_url = scratch_database_url("storm")
    broker_dir = Path(tempfile.mkdtemp(prefix="aegis-storm-broker-"))
    broker: Broker | None = None
    sims: Simulators | None = None
    failed = True
    try:
        setup_django(database_url)
        from registry.models import Connectivity, Transport

        broker = Broker(broker_dir)
        broker.start()
        tag = f"storm{os.getpid()}"
        env = role_env(
            database_url, broker.port, tag, PYTHONUNBUFFERED="1", LOG_LEVEL="INFO", PGAPPNAME=f"{tag}-bridge"
        )
        bridge = procs.django_command("bridge", ["run_bridge"], env)
        # Agents that connect before the bridge subscribed are never learned (their hello has no subscriber).
        procs.wait_log("bridge", "bridge connected")
        time.sleep(0.5)
        sims = Simulators(args.agents, args.simulators, broker.port, args.seed, procs.tmp)
        started = time.monotonic()
        sims.start_all()
        wait_until(
            lambda: agents_where(connectivity=Connectivity.ONLINE, transport=Transport.MQTT) == args.agents,
            args.timeout_s,
            "every agent online",
            0.5,
        )
        print(
            f"reconnect storm: {args.agents} agents in {args.simulators} simulators, all online after "
            f"{time.monotonic() - started:.1f} s; code {git_head()}, database {database_url.rpartition('/')[2]}, "
            f"broker 127.0.0.1:{broker.port} (persistence on), logs in {procs.tmp}",
            flush=True,
        )
        rounds = []
        for number in range(1, args.rounds + 1):
            time.sleep(args.settle_s)
            figures = one_round(args, broker, bridge, procs, sims, ConnectLog(broker.log))
            rounds.append(figures)
            print(f"round {number}: {fmt(figures)}", flush=True)
        medians = {key: median([r[key] for r in rounds]) for key in rounds[0]} if rounds else {}
        if medians:
            print(f"median of {len(rounds)}: {fmt(medians)}")
        time.sleep(1.0)
        online = agents_where(connectivity=Connectivity.ONLINE)
        print(f"at the end: {online} of {args.agents} agents online in PostgreSQL, {broker.restarts} broker restarts")
        result = {
            "args": vars(args),
            "code": git_head(),
            "rounds": rounds,
            "median": medians,
            "online_at_end": online,
        }
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))
        if online != args.agents:
            print(f"STORM FAILED: {args.agents - online} agents not online at the end", flush=True)
            return 1
        failed = False
        return 0
    except TimeoutError as exc:
        print(f"STORM FAILED: {exc}", flush=True)
        return 1
    finally:
        if sims is not None:
            sims.stop_all()
        procs.stop_all(failed)  # the bridge (its log tail first after a failure)
        if broker is not None:
            broker.stop()
            if failed and broker.log.exists():
                print(
                    f"--- mosquitto log (tail) ---\n{broker.log.read_text(errors='replace')[-2000:]}", file=sys.stderr
                )
        shutil.rmtree(broker_dir, ignore_errors=True)
        from django.db import connections

        connections.close_all()
        drop_database(database_url)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
