"""The admin of jobs and tasks; each module registers its models."""

from tasks.admin import agents, jobs, tasks

__all__ = ["agents", "jobs", "tasks"]
