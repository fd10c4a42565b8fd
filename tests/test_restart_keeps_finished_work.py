"""Finished work survives a broker restart, and a lease that runs out stops the work it ended.

Everything is real: Mosquitto from the generated TLS + ACL configuration (with
``log_type debug``, so the test can see each agent's hello arrive), the bridge
with its certificate, ``manage.py run_dispatcher`` as a process publishing its
assignments itself (the production default), and reference agents (threads,
handlers) or the fleet simulator, each with its own certificate. Executions are
counted where they happen: in the agents' handlers, or the tasks the simulator
starts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from aegis_agent.agent import Agent as ReferenceAgent
from aegis_agent.config import AgentConfig
from aegis_agent.handlers import HandlerRegistry, TaskContext, default_registry, sleep
from aegis_agent.simagent import SimAgent
from aegis_agent.simulate import Fleet
from aegis_agent.wire import TaskSpec
from broker.bridge import Bridge
from registry.models import Agent as Registered
from tasks import actions
from tasks.dispatcher import Dispatcher
from tasks.models import Job, JobState, Task, TaskEvent, TaskState
from tests.test_bridge_faults import MOSQUITTO, Broker, bridge_database_url, broker, wait_for  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
TASK_S = 3.0  # long enough that tasks run across the outage and finish after the agents are back
BROKER_OUTAGE_S = 1.5
AGENT_IDS = ["keep-0", "keep-1", "keep-2"]
SLOTS = 4

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not Path(MOSQUITTO).exists(), reason="mosquitto is not installed"),
]


# --- roles ------------------------------------------------------------------------------------------------------


@pytest.fixture
def start_bridge(broker: Broker, settings: Any) -> Iterator[Callable[[], Bridge]]:  # noqa: F811
    """In-process bridges (started at a moment the test chooses); every one is shut down at the end."""
    settings.MQTT_CA_FILE = str(broker.layout.ca_cert)
    settings.MQTT_CERT_FILE = str(broker.layout.bridge_cert)
    settings.MQTT_KEY_FILE = str(broker.layout.bridge_key)
    settings.MQTT_SHARE_GROUP = f"keep{uuid.uuid4().hex[:8]}"
    settings.BRIDGE_OUTBOX_POLL_INTERVAL = 0.05
    settings.BRIDGE_HEARTBEAT_FLUSH_INTERVAL = 0.2
    started: list[Bridge] = []

    def start() -> Bridge:
        bridge = Bridge(f"mqtts://127.0.0.1:{broker.port}", client_id=f"aegis-bridge-{uuid.uuid4().hex[:8]}")
        bridge.start()
        started.append(bridge)
        wait_for(lambda: broker.subacks_to(bridge.client_id) >= 1, "the bridge to subscribe", timeout=20)
        return bridge

    yield start
    for bridge in started:
        if not bridge.stop.is_set():
            bridge.shutdown()


class DispatcherProcess:
    """``manage.py run_dispatcher`` with its own MQTT connection (``DISPATCHER_PUBLISH``, the default)."""

    def __init__(self, broker: Broker, log: Path) -> None:  # noqa: F811
        self.log = log
        credentials = broker.bridge
        env = {key: value for key, value in os.environ.items() if key not in {"REDIS_URL", "MQTT_URL"}}
        env.update(
            DATABASE_URL=bridge_database_url(),
            MQTT_URL=f"mqtts://127.0.0.1:{broker.port}",
            MQTT_CA_FILE=str(credentials.ca),
            MQTT_CERT_FILE=str(credentials.cert),
            MQTT_KEY_FILE=str(credentials.key),
            MQTT_CLIENT_ID="keep-dispatcher",
            DISPATCHER_POLL_INTERVAL="0.2",
            LOG_LEVEL="INFO",
            PYTHONUNBUFFERED="1",
        )
        with log.open("ab") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "manage.py", "run_dispatcher"],
                cwd=ROOT,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@pytest.fixture
def start_dispatcher(broker: Broker, tmp_path: Path, transactional_db: Any) -> Iterator[Callable[[], None]]:  # noqa: F811
    started: list[DispatcherProcess] = []
    log = tmp_path / "dispatcher.log"

    def start() -> None:
        started.append(DispatcherProcess(broker, log))

    try:
        yield start
    finally:
        for process in started:
            process.stop()
        if started:
            print(f"--- dispatcher (exit {started[0].process.returncode}) ---\n{log.read_text()[-10_000:]}")


# --- agents, with every execution counted -------------------------------------------------------------------------


class Executions:
    """Which (task, attempt) pairs the agents started, and when a task's first run ended."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started: list[tuple[str, int, int]] = []  # (agent, task id, attempt) in start order
        self.ended: dict[tuple[int, int], float] = {}  # (task id, attempt) -> time.monotonic() its run ended

    def start(self, agent_id: str, task_id: int, attempt: int) -> None:
        with self._lock:
            self.started.append((agent_id, task_id, attempt))

    def end(self, task_id: int, attempt: int) -> None:
        with self._lock:
            self.ended.setdefault((task_id, attempt), time.monotonic())

    def runs(self) -> Counter[int]:
        with self._lock:
            return Counter(task_id for _agent, task_id, _attempt in self.started)

    def counted(self, agent_id: str, handler: Callable[[TaskContext], Mapping[str, Any]]) -> Any:
        def run(ctx: TaskContext) -> Mapping[str, Any]:
            self.start(agent_id, int(ctx.task_id), ctx.attempt)
            try:
                return handler(ctx)
            finally:
                self.end(int(ctx.task_id), ctx.attempt)

        return run

    def count_simulated(self, agent: SimAgent) -> None:
        assign, complete = agent._assign, agent._complete

        def counted_assign(task: TaskSpec) -> None:
            before = task.key in agent.running
            assign(task)
            if not before and task.key in agent.running:
                self.start(agent.agent_id, int(task.id), task.attempt)

        def counted_complete(task: TaskSpec) -> None:
            complete(task)
            self.end(int(task.id), task.attempt)

        agent._assign = counted_assign  # type: ignore[method-assign]
        agent._complete = counted_complete  # type: ignore[method-assign]


def reference_agent(broker: Broker, agent_id: str, registry: HandlerRegistry, slots: int) -> ReferenceAgent:  # noqa: F811
    credentials = broker.agent(agent_id)
    config = AgentConfig(
        agent_id=agent_id,
        host="127.0.0.1",
        port=broker.port,
        tls_ca=str(credentials.ca),
        tls_cert=str(credentials.cert),
        tls_key=str(credentials.key),
        max_concurrency=slots,
        heartbeat_interval_s=1.0,
        reconnect_min_s=1,
        reconnect_max_s=2,
    )
    return ReferenceAgent(config, registry)


class ReferenceFleet:
    def __init__(self, broker: Broker, executions: Executions) -> None:  # noqa: F811
        self.agents = []
        for agent_id in AGENT_IDS:
            registry = default_registry([], 60.0, 64 * 1024)
            registry.register("sleep", executions.counted(agent_id, sleep))
            self.agents.append(reference_agent(broker, agent_id, registry, SLOTS))

    def start(self) -> None:
        for agent in self.agents:
            agent.start()
        for agent in self.agents:
            assert agent.wait_connected(10)

    def stop(self) -> None:
        for agent in self.agents:
            agent.stop(2)


class SimulatedFleet:
    def __init__(self, broker: Broker, executions: Executions) -> None:  # noqa: F811
        bundles = [broker.agent(agent_id) for agent_id in AGENT_IDS]
        self.fleet = Fleet(
            len(AGENT_IDS),
            port=broker.port,
            prefix="keep-",
            tls_dir=bundles[0].ca.parent,
            heartbeat_s=1.0,
            max_concurrency=SLOTS,
            capabilities=("sleep",),
        )
        assert self.fleet.agent_ids == AGENT_IDS
        for agent in self.fleet.agents:
            executions.count_simulated(agent)

    def start(self) -> None:
        self.fleet.start(wait_s=30)

    def stop(self) -> None:
        self.fleet.stop()


# --- a broker restart mid-run -------------------------------------------------------------------------------------


def hellos_since(broker: Broker, offset: int, agent_id: str) -> int:  # noqa: F811
    """How many hellos the broker received from ``agent_id`` after ``offset`` characters of its log."""
    received = f"Received PUBLISH from {agent_id} ("
    return sum(1 for line in broker.log_text()[offset:].splitlines() if received in line and "/hello'" in line)


@pytest.mark.parametrize("kind", ["reference", "simulator"])
def test_a_broker_restart_mid_run_re_runs_no_finished_task(
    broker,  # noqa: F811
    start_bridge,
    start_dispatcher,
    spec,
    operator,
    kind,
):
    """The bridge comes back a few seconds after the agents (its backoff is longer than theirs).

    Meanwhile every agent's hello and its buffered results are acknowledged with
    "No matching subscribers" and published again with backoff. The bridge
    subscribes right after an agent's fourth hello, so results of tasks that
    finished after the reconnect arrive (and new work is assigned, accepted) before
    the agent's next hello: that hello must describe what the agent holds then,
    and list the results still on their way, or the server ends those attempts as
    ``agent_lost`` and runs the work again.
    """
    executions = Executions()
    fleet = (ReferenceFleet if kind == "reference" else SimulatedFleet)(broker, executions)
    bridge = start_bridge()
    fleet.start()
    try:
        wait_for(lambda: Registered.objects.filter(pk__in=AGENT_IDS).count() == 3, "the agents' hello")
        total = 60
        job, _ = actions.submit_job(
            spec(
                kind="sleep",
                mode="any",
                task_count=total,
                target_agent_ids=AGENT_IDS,
                payload={"seconds": TASK_S},
                max_attempts=5,
                backoff_base_s=0.1,
                backoff_cap_s=0.5,
            ),
            operator,
        )
        start_dispatcher()

        def succeeded() -> int:
            return Task.objects.filter(job_id=job.pk, state=TaskState.SUCCEEDED).count()

        wait_for(lambda: succeeded() >= 14, "more than one round of tasks to succeed", timeout=60)
        bridge.shutdown()  # back later than the agents, like a bridge whose backoff reached a few seconds
        broker.stop()
        restarted_at = len(broker.log_text())
        time.sleep(BROKER_OUTAGE_S)  # the agents keep working and buffer what they finish
        broker.start()
        wait_for(
            lambda: all(hellos_since(broker, restarted_at, agent_id) >= 4 for agent_id in AGENT_IDS),
            "every agent's hello after the restart, published four times for want of a subscriber",
            timeout=30,
            interval=0.02,
        )
        start_bridge()

        def lost() -> list[int]:
            events = TaskEvent.objects.filter(task__job_id=job.pk, kind="agent_lost")
            return sorted(events.values_list("task_id", flat=True))

        def settled() -> bool:
            return bool(lost()) or Job.objects.get(pk=job.pk).state == JobState.SUCCEEDED

        wait_for(settled, "the job to succeed", timeout=120)
        assert lost() == [], "the server ended attempts of work the agents still had, or had finished"
        runs = executions.runs()
        finished = {task_id for (task_id, _attempt) in executions.ended}
        re_ran = sorted(task_id for task_id in finished if runs[task_id] > 1)
        print(f"{kind}: {sum(runs.values())} executions for {total} tasks; re-ran: {re_ran}")
        assert re_ran == []
        assert sorted(runs) == sorted(Task.objects.filter(job_id=job.pk).values_list("pk", flat=True))
    finally:
        fleet.stop()


# --- an execution lease runs out ----------------------------------------------------------------------------------


def test_an_expired_lease_stops_the_old_run_and_the_retry_runs_once(
    broker,  # noqa: F811
    start_bridge,
    spec,
    operator,
    frozen_clock,
):
    """The agent is told to stop the attempt the server ended; its only slot is free for the retry at once."""
    executions = Executions()
    stopped = threading.Event()

    def hold(ctx: TaskContext) -> Mapping[str, Any]:
        if ctx.attempt > 1:
            return {"attempt": ctx.attempt}
        try:
            while True:  # the first attempt hangs (a stuck download, a lost NFS mount) until stopped
                ctx.wait(0.05)
        finally:
            stopped.set()

    registry = HandlerRegistry()
    registry.register("hold", executions.counted("expire-a", hold))
    agent = reference_agent(broker, "expire-a", registry, slots=1)
    start_bridge()
    agent.start()
    try:
        assert agent.wait_connected(10)
        wait_for(lambda: Registered.objects.filter(pk="expire-a").exists(), "the agent's hello")
        job, _ = actions.submit_job(
            spec(kind="hold", target_agent_ids=["expire-a"], execution_timeout_s=60, max_attempts=3, backoff_base_s=1),
            operator,
        )
        dispatcher = Dispatcher()
        assert dispatcher.assign()
        task = Task.objects.get(job=job)
        wait_for(lambda: Task.objects.get(pk=task.pk).state == TaskState.RUNNING, "the agent to accept attempt 1")

        frozen_clock.advance(61)  # the execution lease runs out while the handler still runs
        assert dispatcher.expire_leases()
        frozen_clock.advance(5)  # past the backoff: the retry goes to the same agent straight away
        wait_for(dispatcher.assign, "the retry to be assigned")
        wait_for(lambda: Job.objects.get(pk=job.pk).state == JobState.SUCCEEDED, "the retry to succeed")

        assert stopped.wait(10), "the first run never stopped"
        assert executions.started == [("expire-a", task.pk, 1), ("expire-a", task.pk, 2)]
        assert agent.running() == []
        kinds = list(TaskEvent.objects.filter(task=task).order_by("id").values_list("kind", flat=True))
        assert "rejected" not in kinds  # the retry was not refused at_capacity
        assert kinds.count("succeeded") == 1
        task.refresh_from_db()
        assert (task.attempt, task.result) == (2, {"attempt": 2})
    finally:
        agent.stop(2)
