"""The fleet dashboard on the admin index: numbers that stay cheap at 100,000 agents and 2,000,000 tasks."""

from ops.dashboard.fleet import Dashboard, build

__all__ = ["Dashboard", "build"]
