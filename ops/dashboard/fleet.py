"""What the dashboard shows, read with bounded queries.

Nothing here counts a whole big table: task counts stop at a cap (``SELECT COUNT(*)
FROM (... LIMIT cap+1)``) on the queue's partial indexes, the oldest queued task is
found by probing the claim index once per priority, the last hour's throughput
reads only that hour's rows through an index on ``finished_at`` (at most
``THROUGHPUT_CAP`` of them), and the roles' health comes from their heartbeat rows,
never from a broker connection made while the page waits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db.models import Count, Max, Q, QuerySet
from django.db.models.functions import Trunc

from aegis_site.core import clock
from aegis_site.core.models import AuditEvent, RoleHeartbeat
from broker.models import OutboxMessage
from registry.models import AdminState, Agent, Connectivity
from tasks import outcomes
from tasks.engine.stuck import GROUPS as STUCK_GROUPS
from tasks.models import OPEN_JOB_STATES, Job, Task, TaskState

QUEUE_CAP = 100_000
HELD_CAP = 100_000
OUTBOX_CAP = 10_000
OPEN_JOBS_CAP = 1_000
THROUGHPUT_CAP = 50_000  # finished tasks read for the chart; beyond it the chart covers the most recent ones
STUCK_CAP = 1_000  # tasks the reconciliation link counts (the reconciliation page's own cap)
PRIORITY_PROBES = 32  # distinct queued priorities probed for the oldest queued task
JOBS_SHOWN = 10
AUDIT_SHOWN = 10
WINDOW_MINUTES = 60
ROLES = ("bridge", "dispatcher")
OUTCOMES = {
    TaskState.SUCCEEDED: "succeeded",
    TaskState.FAILED: "failed",
    TaskState.TIMED_OUT: "failed",
    TaskState.CANCELED: "canceled",
}


@dataclass(frozen=True)
class CappedCount:
    """A count that stopped at ``cap + 1`` rows; prints as "100,000+" then."""

    value: int
    cap: int

    @property
    def capped(self) -> bool:
        return self.value > self.cap

    def __str__(self) -> str:
        return f"{self.cap:,}+" if self.capped else f"{self.value:,}"


def capped_count(queryset: QuerySet, cap: int) -> CappedCount:
    """No ORDER BY inside: a sort would read every matching row before the LIMIT."""
    return CappedCount(queryset.order_by()[: cap + 1].count(), cap)


@dataclass(frozen=True)
class AgentCounts:
    online: int = 0
    offline: int = 0
    active: int = 0
    draining: int = 0
    disabled: int = 0
    dispatchable: int = 0  # online and active: what the dispatcher can give work to

    @property
    def total(self) -> int:
        return self.online + self.offline


def agent_counts() -> AgentCounts:
    """One GROUP BY over the (connectivity, admin_state) index: an index-only scan, a few ms at 100,000 agents."""
    counts: dict[str, int] = {}
    dispatchable = 0
    rows = Agent.objects.values_list("connectivity", "admin_state").annotate(n=Count("pk")).order_by()
    for connectivity, admin_state, n in rows:
        counts[connectivity] = counts.get(connectivity, 0) + n
        counts[admin_state] = counts.get(admin_state, 0) + n
        if connectivity == Connectivity.ONLINE and admin_state == AdminState.ACTIVE:
            dispatchable += n
    return AgentCounts(
        online=counts.get(Connectivity.ONLINE, 0),
        offline=counts.get(Connectivity.OFFLINE, 0),
        active=counts.get(AdminState.ACTIVE, 0),
        draining=counts.get(AdminState.DRAINING, 0),
        disabled=counts.get(AdminState.DISABLED, 0),
        dispatchable=dispatchable,
    )


@dataclass(frozen=True)
class Queue:
    queued: CappedCount
    assigned: CappedCount
    running: CappedCount
    oldest_queued_at: datetime | None
    oldest_age_s: float | None


def oldest_queued_at() -> datetime | None:
    """A loose index scan of the claim index ``(-priority, id) WHERE state='queued'``.

    The first row of each priority is that priority's oldest task, so one index
    probe per distinct priority finds the oldest of all, without reading the queue.
    """
    queued = Task.objects.filter(state=TaskState.QUEUED).order_by("-priority", "id")
    oldest: datetime | None = None
    below: int | None = None
    for _ in range(PRIORITY_PROBES):
        probe = queued if below is None else queued.filter(priority__lt=below)
        head = probe.values_list("priority", "created_at").first()
        if head is None:
            break
        below, created_at = head
        oldest = created_at if oldest is None else min(oldest, created_at)
    return oldest


def queue_state(now: datetime) -> Queue:
    queued = capped_count(Task.objects.filter(state=TaskState.QUEUED), QUEUE_CAP)
    oldest = oldest_queued_at() if queued.value else None
    return Queue(
        queued=queued,
        # Both held states are covered by the partial lease index (state IN ('assigned', 'running')).
        assigned=capped_count(Task.objects.filter(state=TaskState.ASSIGNED), HELD_CAP),
        running=capped_count(Task.objects.filter(state=TaskState.RUNNING), HELD_CAP),
        oldest_queued_at=oldest,
        oldest_age_s=max((now - oldest).total_seconds(), 0.0) if oldest else None,
    )


@dataclass(frozen=True)
class Minute:
    start: datetime
    succeeded: int = 0
    failed: int = 0  # includes timed out, as a job's failed count does
    canceled: int = 0
    timed_out: int = 0  # the timed-out part of ``failed``

    @property
    def total(self) -> int:
        return self.succeeded + self.failed + self.canceled


@dataclass(frozen=True)
class Throughput:
    """Tasks that finished in each minute of the last hour, by outcome (failed includes timed out)."""

    minutes: list[Minute]
    counted_since: datetime  # later than the window's start when more than THROUGHPUT_CAP tasks finished
    capped: bool
    cap: int = THROUGHPUT_CAP

    @property
    def cap_label(self) -> str:
        return f"{self.cap:,}"

    @property
    def succeeded(self) -> int:
        return sum(m.succeeded for m in self.minutes)

    @property
    def failed(self) -> int:
        return sum(m.failed for m in self.minutes)

    @property
    def timed_out(self) -> int:
        return sum(m.timed_out for m in self.minutes)

    @property
    def failed_text(self) -> str:
        """'3 failed (3 timed out)', the words of the job pages."""
        return outcomes.failed_text(self.failed, self.timed_out)

    @property
    def canceled(self) -> int:
        return sum(m.canceled for m in self.minutes)

    @property
    def failure_rate(self) -> float | None:
        """Failed among the tasks that ran to an end (canceled ones are the operator's doing, not a failure)."""
        ran = self.succeeded + self.failed
        return self.failed / ran if ran else None

    @property
    def peak(self) -> int:
        return max((m.total for m in self.minutes), default=0)


def throughput(now: datetime) -> Throughput:
    """Two bounded statements on an index over ``tasks.finished_at``: the cap's cut-off, then the per-minute counts."""
    current_minute = now.astimezone(UTC).replace(second=0, microsecond=0)
    window_start = current_minute - timedelta(minutes=WINDOW_MINUTES - 1)
    finished = Task.objects.filter(finished_at__gte=window_start)
    cutoff = finished.order_by("-finished_at").values_list("finished_at", flat=True)[
        THROUGHPUT_CAP - 1 : THROUGHPUT_CAP
    ]
    since = next(iter(cutoff), None)
    if since is not None:
        finished = finished.filter(finished_at__gte=since)
    rows = (
        finished.annotate(minute=Trunc("finished_at", "minute", tzinfo=UTC))
        .values_list("minute", "state")
        .annotate(n=Count("pk"))
        .order_by()
    )
    buckets: list[dict[str, int]] = [{} for _ in range(WINDOW_MINUTES)]
    for minute, state, n in rows:
        outcome = OUTCOMES.get(state)
        if outcome is None:  # finished_at is cleared on retry; a row caught mid-change counts nowhere
            continue
        index = min(max(int((minute - window_start).total_seconds() // 60), 0), WINDOW_MINUTES - 1)
        buckets[index][outcome] = buckets[index].get(outcome, 0) + n
        if state == TaskState.TIMED_OUT:
            buckets[index]["timed_out"] = buckets[index].get("timed_out", 0) + n
    minutes = [Minute(window_start + timedelta(minutes=i), **counts) for i, counts in enumerate(buckets)]
    return Throughput(minutes=minutes, counted_since=since or window_start, capped=since is not None)


@dataclass(frozen=True)
class JobProgress:
    """A job's bar from its counters (kept in the task transitions' transactions, so never a count of its tasks)."""

    job: Job
    timed_out: int | None = None

    @property
    def state_label(self) -> str:
        return outcomes.label(self.job.state)

    @property
    def outcome(self) -> outcomes.JobOutcome:
        return outcomes.job_outcome(self.job, self.timed_out)

    def _percent(self, part: int) -> float:
        return round(100.0 * part / self.job.tasks_total, 1) if self.job.tasks_total else 0.0

    @property
    def succeeded_percent(self) -> float:
        return self._percent(self.job.tasks_succeeded)

    @property
    def failed_percent(self) -> float:
        return self._percent(self.job.tasks_failed)

    @property
    def canceled_percent(self) -> float:
        return self._percent(self.job.tasks_canceled)

    @property
    def canceled_offset(self) -> float:
        return self._percent(self.job.tasks_succeeded + self.job.tasks_failed)

    @property
    def done_percent(self) -> float:
        return self._percent(self.job.tasks_finished)


@dataclass(frozen=True)
class OpenJobs:
    shown: list[JobProgress]
    total: CappedCount


def open_jobs() -> OpenJobs:
    jobs = Job.objects.filter(state__in=OPEN_JOB_STATES)
    rows = jobs.defer("payload", "target_agent_ids", "target_labels", "target_capabilities").order_by("-id")
    page = list(rows[:JOBS_SHOWN])
    # One GROUP BY for the shown jobs' timed-out tasks; always run, so the page's query count never varies.
    timed_out = outcomes.timed_out_counts([job.pk for job in page] or [0])
    shown = [JobProgress(job, timed_out.get(job.pk, 0)) for job in page]
    total = CappedCount(len(shown), OPEN_JOBS_CAP)
    if len(shown) == JOBS_SHOWN:
        total = capped_count(jobs, OPEN_JOBS_CAP)
    return OpenJobs(shown=shown, total=total)


def recent_audit() -> list[AuditEvent]:
    return list(AuditEvent.objects.order_by("-id")[:AUDIT_SHOWN])


@dataclass(frozen=True)
class RoleHealth:
    role: str
    fresh_instances: int
    last_beat_at: datetime | None
    age_s: float | None

    @property
    def healthy(self) -> bool:
        return self.fresh_instances > 0


@dataclass(frozen=True)
class Health:
    roles: list[RoleHealth]
    outbox_backlog: CappedCount

    @property
    def broker_reachable(self) -> bool:
        """A bridge records its heartbeat only while it is connected to the broker (broker.bridge)."""
        return any(role.healthy for role in self.roles if role.role == "bridge")

    @property
    def healthy(self) -> bool:
        return all(role.healthy for role in self.roles)


def health(now: datetime) -> Health:
    fresh_after = now - timedelta(seconds=settings.ROLE_STALE_AFTER)
    rows = (
        RoleHeartbeat.objects.filter(role__in=ROLES)
        .values("role")
        .annotate(latest=Max("beat_at"), fresh=Count("pk", filter=Q(beat_at__gte=fresh_after)))
        .order_by()
    )
    seen = {row["role"]: row for row in rows}
    roles = []
    for role in ROLES:
        row = seen.get(role)
        latest = row["latest"] if row else None
        roles.append(
            RoleHealth(
                role=role,
                fresh_instances=row["fresh"] if row else 0,
                last_beat_at=latest,
                age_s=max((now - latest).total_seconds(), 0.0) if latest else None,
            )
        )
    backlog = capped_count(OutboxMessage.objects.filter(sent_at__isnull=True), OUTBOX_CAP)
    return Health(roles=roles, outbox_backlog=backlog)


def stuck_tasks(now: datetime) -> CappedCount:
    """Tasks the reconciliation page lists (any of its groups, each task once), counted up to ``STUCK_CAP``.

    One statement over the held tasks (the partial lease index), bounded by the cap.
    """
    finds = [group.find(now) for group in STUCK_GROUPS]
    union = finds[0]
    for more in finds[1:]:
        union = union | more
    return capped_count(union.values("pk"), STUCK_CAP)


@dataclass(frozen=True)
class Dashboard:
    now: datetime
    agents: AgentCounts
    queue: Queue
    throughput: Throughput
    jobs: OpenJobs | None  # None: the viewer may not see jobs (tasks.view_job)
    audit: list[AuditEvent] | None  # None: the viewer may not see the audit log (core.view_auditevent)
    health: Health
    stuck: CappedCount  # what the reconciliation page lists


def build(now: datetime | None = None, *, with_jobs: bool = True, with_audit: bool = True) -> Dashboard:
    """About a dozen bounded queries, whatever the size of the fleet; none for a part the viewer may not see."""
    now = now or clock.now()
    return Dashboard(
        now=now,
        agents=agent_counts(),
        queue=queue_state(now),
        throughput=throughput(now),
        jobs=open_jobs() if with_jobs else None,
        audit=recent_audit() if with_audit else None,
        health=health(now),
        stuck=stuck_tasks(now),
    )
