"""The dispatcher role: expire leases, mark silent agents offline, assign queued tasks to online agents.

Each step is a method that returns whether it did work (healthchecks'
``sendalerts`` shape); the loop repeats steps while they find work and otherwise
sleeps until a NOTIFY or the poll interval. Every step claims its rows with
``SKIP LOCKED`` or a conditional UPDATE, so several replicas can run at once.
"""

from __future__ import annotations

import logging
import threading

from django.conf import settings
from django.db import close_old_connections

from registry import actions as registry_actions
from registry.models import AdminState, Agent, Connectivity
from tasks import actions
from tasks.engine import clock
from tasks.engine.wakeup import Listener
from tasks.models import ACTIVE_JOB_STATES, HELD_STATES, JobMode, Task, TaskState

log = logging.getLogger("aegis.dispatcher")


class Dispatcher:
    def __init__(self, batch_size: int | None = None, poll_interval: float | None = None) -> None:
        self.batch_size = batch_size or settings.DISPATCHER_BATCH_SIZE
        self.poll_interval = poll_interval or settings.DISPATCHER_POLL_INTERVAL
        self.stop = threading.Event()

    def expire_leases(self) -> bool:
        return actions.expire_leases(self.batch_size) > 0

    def mark_silent_agents_offline(self) -> bool:
        return (
            registry_actions.mark_silent_agents_offline(
                settings.AGENT_HEARTBEAT_INTERVAL, settings.AGENT_OFFLINE_AFTER_MISSED
            )
            > 0
        )

    def assign(self) -> bool:
        """One claim transaction per candidate agent, at most ``batch_size`` tasks each."""
        assigned = 0
        for agent_id in self.candidate_agents():
            assigned += len(actions.claim_tasks(agent_id, self.batch_size, push=True))
        if assigned:
            log.info("assigned tasks", extra={"count": assigned})
        return assigned > 0

    def candidate_agents(self) -> list[str]:
        """Dispatchable agents that have claimable work: pinned tasks first, then any-mode takers."""
        now = clock.now()
        ready = Task.objects.filter(state=TaskState.QUEUED, not_before__lte=now, job__state__in=ACTIVE_JOB_STATES)
        dispatchable = {"connectivity": Connectivity.ONLINE, "admin_state": AdminState.ACTIVE}
        pinned = (
            ready.filter(pinned=True, **{f"agent__{k}": v for k, v in dispatchable.items()})
            .order_by()  # without it the model's ordering adds tasks.id to the DISTINCT: one row per task
            .values_list("agent_id", flat=True)
            .distinct()[: self.batch_size]
        )
        candidates = list(dict.fromkeys(pinned))
        if ready.filter(pinned=False, job__mode=JobMode.ANY).exists():
            busy = Task.objects.filter(state__in=HELD_STATES).values("agent_id")
            online = Agent.objects.filter(**dispatchable).order_by("last_seen_at").values_list("pk", flat=True)
            idle_first = list(online.exclude(pk__in=busy)[: self.batch_size]) + list(online[: self.batch_size])
            candidates.extend(agent for agent in dict.fromkeys(idle_first) if agent not in candidates)
        return [agent_id for agent_id in candidates if agent_id]

    def step(self) -> bool:
        did_work = False
        # Assignment first: a NOTIFY for new work should reach an agent before the housekeeping runs.
        for name in ("assign", "expire_leases", "mark_silent_agents_offline"):
            try:
                did_work |= getattr(self, name)()
            except Exception:
                log.exception("dispatcher step %s failed", name)
                close_old_connections()
        return did_work

    def run(self) -> None:
        log.info("dispatcher started", extra={"batch_size": self.batch_size, "poll_interval": self.poll_interval})
        listener = Listener()
        try:
            while not self.stop.is_set():
                close_old_connections()
                if not self.step():
                    listener.wait(self.poll_interval, self.stop)
        finally:
            listener.close()
            log.info("dispatcher stopped")
