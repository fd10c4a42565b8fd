"""The admin of jobs and tasks; each module registers its models."""

from tasks.admin import jobs, tasks

__all__ = ["jobs", "tasks"]
