"""Jobs, their tasks and the task history. State changes live in ``tasks.actions``."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class JobMode(models.TextChoices):
    EACH = "each", "one task per matching agent"
    ANY = "any", "N tasks for any matching agent"


class JobState(models.TextChoices):
    """The labels are what operators read (admin, dashboard, API docs): ``tasks.outcomes`` shows them."""

    SCHEDULED = "scheduled", "scheduled"
    RUNNING = "running", "running"
    PAUSED = "paused", "paused"
    SUCCEEDED = "succeeded", "succeeded"
    FAILED = "failed", "failed"
    CANCELED = "canceled", "canceled"
    ABORTED = "aborted", "aborted"
    EMPTY = "empty", "no tasks"


def states_help(states: type[models.TextChoices], note: str = "") -> str:
    """A state field's description in the API docs: each value, with its label where the two differ."""
    words = [value if value == label else f"{value} ({label})" for value, label in states.choices]
    return f"One of: {', '.join(words)}.{note}"


ACTIVE_JOB_STATES = (JobState.SCHEDULED, JobState.RUNNING)
OPEN_JOB_STATES = (JobState.SCHEDULED, JobState.RUNNING, JobState.PAUSED)


class Job(models.Model):
    """What to run (kind + payload), where (target) and how (policy)."""

    kind = models.CharField(max_length=100)
    payload = models.JSONField(default=dict, blank=True)
    # Target: every given part must match; an empty part matches every agent.
    target_agent_ids = models.JSONField(default=list, blank=True)
    target_labels = models.JSONField(default=dict, blank=True, help_text="Label selector: {key: value | [values]}.")
    target_capabilities = models.JSONField(default=list, blank=True)
    mode = models.CharField(max_length=4, choices=JobMode.choices, default=JobMode.EACH)
    task_count = models.PositiveIntegerField(default=1, help_text="For mode 'any': how many tasks.")
    continuous = models.BooleanField(default=False, help_text="Mode 'each': agents that match later get a task too.")
    target_all = models.BooleanField(
        default=False,
        db_default=False,
        help_text="The submitter asked for every agent of the fleet (the target is empty on purpose).",
    )
    # Policy.
    priority = models.SmallIntegerField(default=0, help_text="Higher runs first.")
    max_attempts = models.PositiveSmallIntegerField(default=3)
    backoff_base_s = models.FloatField(default=5.0)
    backoff_cap_s = models.FloatField(default=600.0)
    delivery_timeout_s = models.PositiveIntegerField(default=60)
    execution_timeout_s = models.PositiveIntegerField(default=600)
    not_before = models.DateTimeField(null=True, blank=True)
    idempotency_key = models.CharField(max_length=200, null=True, blank=True, unique=True)
    spec_fingerprint = models.CharField(
        max_length=64,
        blank=True,
        default="",
        db_default="",
        help_text="sha256 of the submitted specification (idempotency).",
    )
    max_in_flight = models.PositiveIntegerField(null=True, blank=True, help_text="Rollout: tasks at once (count).")
    max_in_flight_percent = models.PositiveSmallIntegerField(null=True, blank=True)
    rate_per_minute = models.PositiveIntegerField(null=True, blank=True, help_text="Rollout: assignments per minute.")
    abort_failure_ratio = models.FloatField(null=True, blank=True, help_text="Abort when failed/finished exceeds this.")
    abort_min_finished = models.PositiveIntegerField(default=1)
    # State, with counters kept in the same transactions as the task transitions so
    # that roll-up and abort checks never count a large job's rows.
    state = models.CharField(
        max_length=10,
        choices=JobState.choices,
        default=JobState.SCHEDULED,
        help_text=states_help(JobState, " A job ends failed when any of its tasks failed or timed out (tasks_failed)."),
    )
    tasks_total = models.PositiveIntegerField(default=0)
    tasks_succeeded = models.PositiveIntegerField(default=0)
    tasks_failed = models.PositiveIntegerField(default=0, help_text="Tasks that failed or timed out, together.")
    tasks_canceled = models.PositiveIntegerField(default=0)
    rate_window_start = models.DateTimeField(null=True, blank=True)
    rate_window_assigned = models.PositiveIntegerField(default=0)
    # The rate limit's token bucket (GCRA): when the bucket is full again; null or past: full.
    rate_bucket_full_at = models.DateTimeField(null=True, blank=True)
    # Rollout spread: the agent this job's last limited assignment went to; the next go to the agents after it.
    rollout_last_agent_id = models.CharField(max_length=63, blank=True, default="", db_default="")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "jobs"
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["state", "mode"], name="jobs_state_idx"),
            models.Index(fields=["kind"], name="jobs_kind_idx"),
            models.Index(fields=["created_at"], name="jobs_created_idx"),
        ]

    def __str__(self) -> str:
        return f"job {self.pk} ({self.kind})"

    @property
    def tasks_finished(self) -> int:
        return self.tasks_succeeded + self.tasks_failed + self.tasks_canceled

    @property
    def has_rollout_limit(self) -> bool:
        return bool(self.max_in_flight or self.max_in_flight_percent or self.rate_per_minute)

    def in_flight_limit(self) -> int | None:
        """The smaller of the count and percent limits, at least 1 task."""
        limits = []
        if self.max_in_flight:
            limits.append(self.max_in_flight)
        if self.max_in_flight_percent:
            limits.append(max(1, self.tasks_total * self.max_in_flight_percent // 100))
        return min(limits) if limits else None


class TaskState(models.TextChoices):
    """Labels as for ``JobState``; a job counts failed and timed-out tasks together as failed."""

    QUEUED = "queued", "queued"
    ASSIGNED = "assigned", "assigned"
    RUNNING = "running", "running"
    SUCCEEDED = "succeeded", "succeeded"
    FAILED = "failed", "failed"
    TIMED_OUT = "timed_out", "timed out"
    CANCELED = "canceled", "canceled"


HELD_STATES = (TaskState.ASSIGNED, TaskState.RUNNING)
TERMINAL_STATES = (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.TIMED_OUT, TaskState.CANCELED)


class Task(models.Model):
    """One execution of a job on one agent. ``attempt`` is the fencing token: it grows on every assignment."""

    # Both foreign keys are covered by the (job, state) and (agent, state) indexes;
    # every extra index on this table costs each state change an index insert.
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="tasks", db_index=False)
    agent = models.ForeignKey(
        "registry.Agent", null=True, blank=True, on_delete=models.SET_NULL, related_name="tasks", db_index=False
    )
    pinned = models.BooleanField(default=False, help_text="Mode 'each': only this agent may run the task.")
    kind = models.CharField(max_length=100)
    state = models.CharField(
        max_length=10,
        choices=TaskState.choices,
        default=TaskState.QUEUED,
        help_text=states_help(TaskState, " A job counts failed and timed out together as failed."),
    )
    priority = models.SmallIntegerField(default=0)
    attempt = models.PositiveSmallIntegerField(default=0)
    max_attempts = models.PositiveSmallIntegerField(default=3)
    backoff_from_attempt = models.PositiveSmallIntegerField(
        default=0,
        db_default=0,
        help_text="Retry delays grow from here: a retry with reset_backoff sets it to the attempts so far.",
    )
    not_before = models.DateTimeField()
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    progress = models.JSONField(null=True, blank=True)
    result = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    assigned_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "tasks"
        ordering = ["-id"]
        indexes = [
            # The queue's claim index: queued rows in claim order.
            models.Index(
                fields=["-priority", "id"],
                name="tasks_claim_idx",
                condition=models.Q(state="queued"),
            ),
            # Queued rows by when they come due: the dispatcher's look for work that came due in a window
            # (``Dispatcher.announce_due``) reads a range of it, not every queued row.
            models.Index(fields=["not_before"], name="tasks_queued_due_idx", condition=models.Q(state="queued")),
            models.Index(fields=["job", "state"], name="tasks_job_state_idx"),
            models.Index(fields=["agent", "state"], name="tasks_agent_state_idx"),
            models.Index(
                fields=["lease_expires_at"],
                name="tasks_lease_idx",
                condition=models.Q(state__in=["assigned", "running"]),
            ),
            # The admin's filters and the dashboard (measured in bench/admin_scale.py, docs/benchmarks.md):
            # a rare kind or a recent age would otherwise read the whole table, and the dashboard's
            # "finished in the last hour" would scan it. finished_at is partial: only ended tasks pay.
            models.Index(fields=["kind", "id"], name="tasks_kind_idx"),
            models.Index(fields=["created_at"], name="tasks_created_idx"),
            models.Index(
                fields=["finished_at"], name="tasks_finished_idx", condition=models.Q(finished_at__isnull=False)
            ),
        ]

    def __str__(self) -> str:
        # No state: this names the task in page titles, which live updates don't refresh.
        return f"task {self.pk} ({self.kind})"


class TaskEventKind(models.TextChoices):
    CREATED = "created"
    ASSIGNED = "assigned"
    ACCEPTED = "accepted"
    PROGRESS = "progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"
    DELIVERY_TIMEOUT = "delivery_timeout"
    EXECUTION_TIMEOUT = "execution_timeout"
    CANCEL_REQUESTED = "cancel_requested"
    CANCELED = "canceled"
    RETRIED = "retried"
    STALE = "stale"
    AGENT_LOST = "agent_lost"
    RESENT = "resent"


class TaskEvent(models.Model):
    """Append-only history: every transition and every agent event, including stale ones.

    ``message_id`` is the id an agent gave its report (the MQTT envelope's ``id``, the HTTP
    ``event_id``): a report is stored once per (agent, message id). Agents choose their ids,
    so uniqueness across agents would let one agent take an id another will use and have
    that agent's real result dropped as a duplicate.
    """

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="events", db_index=False)
    kind = models.CharField(max_length=20, choices=TaskEventKind.choices)
    attempt = models.PositiveSmallIntegerField()
    from_state = models.CharField(max_length=10, blank=True)
    to_state = models.CharField(max_length=10, blank=True)
    agent_id = models.CharField(max_length=63, blank=True)
    message_id = models.CharField(max_length=100, null=True, blank=True)  # noqa: DJ001  NULL: no id, outside the unique index
    data = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField()

    class Meta:
        db_table = "task_events"
        ordering = ["id"]
        indexes = [
            models.Index(fields=["task", "id"], name="task_events_task_idx"),
            # An agent's recent events (its admin page); rows written by the server itself have no agent.
            models.Index(fields=["agent_id", "id"], name="task_events_agent_idx", condition=~models.Q(agent_id="")),
        ]
        constraints = [
            # Message id first: the admin's search by a message id alone reads this index too.
            models.UniqueConstraint(
                fields=["message_id", "agent_id"],
                name="task_events_message_agent_uniq",
                condition=models.Q(message_id__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} of task {self.task_id} (attempt {self.attempt})"


class LogStream(models.TextChoices):
    STDOUT = "stdout"
    STDERR = "stderr"
    SYSTEM = "system"  # written by the agent or the server about the output, e.g. the truncation marker


class TaskLogChunk(models.Model):
    """One chunk of a task's output, as the agent sent it (``task.log``): raw bytes, in ``seq`` order per attempt.

    Written set-based by ``tasks.engine.logs`` in the bridge's batch transaction; the unique
    (task, attempt, seq) both drops resent duplicates and is the index a reader follows by ``seq``.
    """

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="log_chunks", db_index=False)
    attempt = models.PositiveSmallIntegerField()
    seq = models.BigIntegerField()
    stream = models.CharField(max_length=6, choices=LogStream.choices)
    data = models.BinaryField()
    received_at = models.DateTimeField()

    class Meta:
        db_table = "task_log_chunks"
        ordering = ["task", "attempt", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["task", "attempt", "seq"], name="task_log_chunks_task_attempt_seq_uniq"),
        ]

    def __str__(self) -> str:
        return f"{self.stream} chunk {self.seq} of task {self.task_id} (attempt {self.attempt})"


class TaskLogAttempt(models.Model):
    """What one attempt's output amounts to: bytes stored, chunks, the highest seq, truncation and drops.

    ``max_seq - chunks`` is how many chunks are missing (a gap a later resend may fill);
    ``truncated_at`` is set once a cap stopped the output (a ``system`` chunk says so).
    """

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="log_attempts", db_index=False)
    attempt = models.PositiveSmallIntegerField()
    bytes = models.BigIntegerField(default=0)
    chunks = models.BigIntegerField(default=0)
    max_seq = models.BigIntegerField(default=0)
    truncated_at = models.BigIntegerField(null=True, blank=True)
    dropped = models.BigIntegerField(default=0, help_text="Chunks refused after the output was truncated.")

    class Meta:
        db_table = "task_log_attempts"
        ordering = ["task", "attempt"]
        constraints = [
            models.UniqueConstraint(fields=["task", "attempt"], name="task_log_attempts_task_attempt_uniq"),
        ]

    def __str__(self) -> str:
        return f"output of task {self.task_id} (attempt {self.attempt})"


class ArtifactState(models.TextChoices):
    PENDING = "pending"  # an upload URL was issued; the object is not verified yet
    AVAILABLE = "available"  # verified (size and sha256 as declared): listed for download


class TaskArtifact(models.Model):
    """A file a task produced, kept in the artifact store (``tasks.artifacts``): the row holds what it is.

    The agent declares name, size and sha256, uploads through a pre-signed URL, then asks the
    server to verify; only then is the artifact ``available``. ``storage`` names the backend that
    holds ``key``, so a change of ``TASK_ARTIFACT_STORAGE`` never loses track of older objects.
    """

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="artifacts", db_index=False)
    attempt = models.PositiveSmallIntegerField()
    agent_id = models.CharField(max_length=63)
    name = models.CharField(max_length=200)
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64, help_text="Hex digest of the content.")
    state = models.CharField(max_length=9, choices=ArtifactState.choices, default=ArtifactState.PENDING)
    storage = models.CharField(max_length=10)
    key = models.CharField(max_length=300)
    created_at = models.DateTimeField()
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "task_artifacts"
        ordering = ["task", "id"]
        constraints = [
            # Also the index a task's list (and retention) reads by its leading column.
            models.UniqueConstraint(fields=["task", "attempt", "name"], name="task_artifacts_task_attempt_name_uniq"),
        ]

    def __str__(self) -> str:
        return f"artifact {self.name} of task {self.task_id} (attempt {self.attempt})"
