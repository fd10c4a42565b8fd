"""What an agent needs to run one attempt of a task."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Assignment:
    """What an agent needs to run one attempt; the ``task`` object of a ``task.assign`` message."""

    task_id: int
    attempt: int
    job_id: int
    kind: str
    payload: Any
    timeout_s: int
    lease_s: int

    def as_message(self) -> dict[str, Any]:
        return {
            "id": self.task_id,
            "attempt": self.attempt,
            "job_id": self.job_id,
            "kind": self.kind,
            "payload": self.payload,
            "timeout_s": self.timeout_s,
            "lease_s": self.lease_s,
        }
