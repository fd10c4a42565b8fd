"""What the task engine tells the floors above it, without importing them.

``tasks`` may not import ``notify`` (docs/architecture.md, the floors), yet its
changes are what notifications are about: a job starts, ends, pauses or aborts, a
task fails for good. The engine sends one of these signals inside the transaction of
the change (Django signals are synchronous), so what the receivers write (the
notification outbox) commits or rolls back with it. Each receiver is connected in
its app's ``AppConfig.ready()`` with a ``dispatch_uid``; each signal's docstring
names its receivers, and ``tasks/tests/test_signals.py`` holds the two together.

Every signal is sent with ``sender=Job`` (``task_failed`` with ``sender=Task``, ``pruning`` with
``sender=PruneCounts``).
"""

from __future__ import annotations

from django.dispatch import Signal


def _signal(doc: str) -> Signal:
    signal = Signal()
    signal.__doc__ = doc
    return signal


job_started = _signal(
    """A job went from scheduled to running: its first task was assigned (``jobs.mark_running``).

    Sent once per job that this transaction moved, never for one another claim started first.
    Arguments: ``job_id``, ``at``.
    Receivers: ``notify.receivers.job_started``.
    """
)

job_finished = _signal(
    """A job got its final state and finish time (``jobs.settle``: every task ended, or the job was empty).

    The state is succeeded, failed, canceled (an operator's cancel), aborted (the failure
    threshold) or empty. A job retried after it ended finishes again later, with a new ``at``.
    Arguments: ``job_id``, ``state`` (``tasks.models.JobState``), ``at`` (the job's ``finished_at``).
    Receivers: ``notify.receivers.job_finished``.
    """
)

job_paused = _signal(
    """An operator paused a scheduled or running job (``control.pause_job``).

    Arguments: ``job_id``, ``at``.
    Receivers: ``notify.receivers.job_paused``.
    """
)

job_aborted = _signal(
    """A job crossed its failure threshold and was aborted; its open tasks are being canceled (``jobs.abort``).

    Arguments: ``job_id``, ``at``.
    Receivers: ``notify.receivers.job_aborted``.
    """
)

task_failed = _signal(
    """An attempt of a task ended failed or timed out with no attempt left: the task's final failure.

    Sent by the agent's report (``reports``), lease expiry (``expiry``), an agent that came
    back without the task (``reconcile``) and an operator ending a stuck attempt (``stuck``).
    Arguments: ``task_id``, ``job_id``, ``attempt``, ``agent_id`` (or ``None``), ``state``
    (failed or timed_out), ``error`` (``{"code", "message"}`` or ``None``), ``at``.
    Receivers: ``notify.receivers.task_failed``.
    """
)

pruning = _signal(
    """``manage.py prune`` runs (``tasks.retention.prune``): the apps above delete their own old rows too.

    Sent once, after the engine's own rows, outside any transaction (each receiver deletes in
    batches of its own). Each receiver returns ``{what: count}`` (counted only with ``dry_run``).
    Arguments: ``cutoff``, ``batch_size``, ``dry_run``.
    Receivers: ``notify.receivers.prune_notifications``.
    """
)
