"""What a job specification would create, computed without writing: the agents it selects and its rollout waves.

Pure functions over plain values (the caller looks the agents up), so the API's
dry run and tests share them. The wave size follows the claim's own limits
(``Job.in_flight_limit`` and ``rate_per_minute``): a wave is what may be in
flight at once, or what may be assigned in one minute.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tasks.engine.submit import JobSpec
from tasks.models import JobMode

if TYPE_CHECKING:
    from tasks.engine.checks import Warning

MAX_LISTED = 1000  # agent ids and waves listed in a preview; the counts are always complete

PACED_BY_NONE = "none"  # no limit: every task may run at once
PACED_BY_IN_FLIGHT = "in_flight"  # the next wave starts as tasks of the previous one finish
PACED_BY_RATE = "rate"  # one wave per minute
PACED_BY = (PACED_BY_NONE, PACED_BY_IN_FLIGHT, PACED_BY_RATE)


@dataclass(frozen=True)
class Wave:
    number: int
    tasks: int

    def as_dict(self) -> dict[str, int]:
        return {"wave": self.number, "tasks": self.tasks}


@dataclass(frozen=True)
class JobPreview:
    agent_ids: list[str]  # at most MAX_LISTED
    agent_count: int
    task_count: int
    wave_size: int | None
    paced_by: str
    wave_count: int
    waves: list[Wave]  # at most MAX_LISTED
    warnings: list[Warning] = field(default_factory=list)  # the submit rules' findings (tasks.engine.checks)
    target_all: bool = False

    def warning(self, code: str) -> Warning | None:
        return next((warning for warning in self.warnings if warning.code == code), None)

    def as_dict(self) -> dict[str, Any]:
        return {
            "agents": list(self.agent_ids),
            "agent_count": self.agent_count,
            "task_count": self.task_count,
            "wave_size": self.wave_size,
            "paced_by": self.paced_by,
            "wave_count": self.wave_count,
            "waves": [wave.as_dict() for wave in self.waves],
            "target_all": self.target_all,
            "warnings": [warning.as_dict() for warning in self.warnings],
        }


def in_flight_limit(task_count: int, max_in_flight: int | None, max_in_flight_percent: int | None) -> int | None:
    """The smaller of the count and percent limits, at least 1 task (as ``Job.in_flight_limit`` computes it)."""
    limits = []
    if max_in_flight:
        limits.append(max_in_flight)
    if max_in_flight_percent:
        limits.append(max(1, task_count * max_in_flight_percent // 100))
    return min(limits) if limits else None


def wave_size(
    task_count: int,
    max_in_flight: int | None = None,
    max_in_flight_percent: int | None = None,
    rate_per_minute: int | None = None,
) -> tuple[int | None, str]:
    """The tightest rollout limit and which kind of limit it is; ``(None, "none")`` without limits."""
    in_flight = in_flight_limit(task_count, max_in_flight, max_in_flight_percent)
    if rate_per_minute and (in_flight is None or rate_per_minute < in_flight):
        return rate_per_minute, PACED_BY_RATE
    if in_flight is not None:
        return in_flight, PACED_BY_IN_FLIGHT
    return None, PACED_BY_NONE


def waves(task_count: int, size: int | None, limit: int = MAX_LISTED) -> tuple[int, list[Wave]]:
    """``task_count`` tasks in waves of ``size`` (one wave without a size): the total and the first ``limit``."""
    if task_count <= 0:
        return 0, []
    if size is None or size >= task_count:
        return 1, [Wave(1, task_count)]
    count = -(-task_count // size)
    listed = [Wave(n + 1, min(size, task_count - n * size)) for n in range(min(count, limit))]
    return count, listed


def build(spec: JobSpec, agent_ids: Sequence[str], warnings: Sequence[Warning] = ()) -> JobPreview:
    """The preview of ``spec`` given the agents it selects now.

    Mode ``each``: one task per selected agent. Mode ``any``: ``task_count`` tasks;
    ``agent_ids`` are then the agents that could take them now (online, active).
    """
    task_count = len(agent_ids) if spec.mode == JobMode.EACH else spec.task_count
    size, paced_by = wave_size(task_count, spec.max_in_flight, spec.max_in_flight_percent, spec.rate_per_minute)
    wave_count, listed = waves(task_count, size)
    return JobPreview(
        agent_ids=list(agent_ids[:MAX_LISTED]),
        agent_count=len(agent_ids),
        task_count=task_count,
        wave_size=size,
        paced_by=paced_by,
        wave_count=wave_count,
        waves=listed,
        warnings=list(warnings),
        target_all=spec.target_all,
    )
