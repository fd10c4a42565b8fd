"""What the soak (``bench/soak.py``) records: the per-minute row (and its CSV), the PNG plot, the memory check.

The queries run in the soak's own process (``PGAPPNAME=soak-driver``), on the
scratch database, once a minute: a handful of ``count(*)`` and
``pg_total_relation_size`` calls, cheap beside the load.
"""

from __future__ import annotations

import csv
import math
import statistics
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from bench._infra import percentile

ROLES = ("web", "bridge", "dispatcher")
APP_PREFIX = "soak-"
DRIVER_APP = "soak-driver"
# The tables that grow with the work done: the job and task rows, the transition history (one task_events
# row per transition), task output, the audit log, the MQTT outbox and the notification events.
TABLES = ("jobs", "tasks", "task_events", "task_log_chunks", "audit_events", "outbox_messages", "notify_events")
QUEUE_STATES = ("queued", "assigned", "running")


def _rows(sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return list(cursor.fetchall())


def finished_between(start: datetime, end: datetime) -> list[float]:
    rows = _rows(
        "SELECT EXTRACT(EPOCH FROM finished_at - created_at) FROM tasks WHERE finished_at >= %s AND finished_at < %s",
        [start, end],
    )
    return [float(row[0]) for row in rows]


def role_connections(database: str) -> dict[str, int]:
    rows = _rows("SELECT application_name, count(*) FROM pg_stat_activity WHERE datname = %s GROUP BY 1", [database])
    return {str(name): int(count) for name, count in rows}


def terminate_role_backends(database: str) -> int:
    rows = _rows(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = %s AND application_name LIKE %s AND application_name <> %s AND pid <> pg_backend_pid()",
        [database, APP_PREFIX + "%", DRIVER_APP],
    )
    return int(rows[0][0])


def queue_depth() -> dict[str, int]:
    rows = _rows("SELECT state, count(*) FROM tasks WHERE state = ANY(%s) GROUP BY 1", [list(QUEUE_STATES)])
    found = {str(state): int(count) for state, count in rows}
    return {state: found.get(state, 0) for state in QUEUE_STATES}


def backlog() -> dict[str, int]:
    """Outbox rows not yet published to the broker, and notification deliveries still pending."""
    rows = _rows(
        "SELECT (SELECT count(*) FROM outbox_messages WHERE sent_at IS NULL), "
        "(SELECT count(*) FROM notify_deliveries WHERE state = 'pending')",
        [],
    )
    return {"outbox_unsent": int(rows[0][0]), "notify_pending": int(rows[0][1])}


def table_sizes() -> dict[str, tuple[int, float]]:
    """Each growing table's rows (exact) and its size on disk with indexes and TOAST, in MB."""
    sizes = {}
    for table in TABLES:
        rows = _rows(f"SELECT count(*), pg_total_relation_size(%s) FROM {table}", [table])  # nosec B608 (constant)
        sizes[table] = (int(rows[0][0]), int(rows[0][1]) / 1024 / 1024)
    return sizes


def online_agents(prefix: str) -> int:
    from registry.models import Agent, Connectivity

    return Agent.objects.filter(pk__startswith=prefix, connectivity=Connectivity.ONLINE).count()


# --- the per-minute row -------------------------------------------------------------------------------------------


@dataclass
class Minute:
    minute: int
    utc: str
    seconds: float
    submitted: int
    latencies: list[float] = field(repr=False)
    rss_mb: dict[str, float]  # every process by role name: web, bridge, dispatcher, sim0.., mosquitto
    connections: dict[str, int]  # by application_name
    queue: dict[str, int]
    backlog: dict[str, int]
    tables: dict[str, tuple[int, float]]
    agents_online: int
    faults: list[str]
    restarts: list[str]

    @property
    def finished(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        return self.finished / self.seconds if self.seconds > 0 else 0.0

    def csv_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "minute": self.minute,
            "utc": self.utc,
            "seconds": round(self.seconds, 1),
            "tasks_submitted": self.submitted,
            "tasks_finished": self.finished,
            "tasks_per_s": round(self.rate, 2),
            "p50_s": _round(percentile(self.latencies, 50)),
            "p95_s": _round(percentile(self.latencies, 95)),
            "agents_online": self.agents_online,
        }
        row.update({f"rss_{name}_mb": _round(value, 1) for name, value in self.rss_mb.items()})
        for name in (*ROLES, "driver"):
            row[f"pg_conns_{name}"] = self.connections.get(APP_PREFIX + name, 0)
        row["pg_conns_total"] = sum(self.connections.values())
        row.update({f"tasks_{state}": count for state, count in self.queue.items()})
        row.update(self.backlog)
        for table, (count, size) in self.tables.items():
            row[f"rows_{table}"] = count
            row[f"mb_{table}"] = round(size, 2)
        row["faults"] = "; ".join(self.faults)
        row["role_exits"] = "; ".join(self.restarts)
        return row

    def line(self) -> str:
        rss = "/".join(f"{self.rss_mb[name]:.0f}" for name in ROLES)
        sims = sum(value for name, value in self.rss_mb.items() if name.startswith("sim") and value == value)
        conns = "/".join(str(self.connections.get(APP_PREFIX + name, 0)) for name in ROLES)
        queue = "/".join(str(self.queue[state]) for state in QUEUE_STATES)
        return (
            f"{self.minute:>4} {self.submitted:>7} {self.finished:>7} {self.rate:>6.1f} "
            f"{percentile(self.latencies, 50):>6.2f} {percentile(self.latencies, 95):>6.2f} {rss:>11} "
            f"{sims:>5.0f} {self.rss_mb['mosquitto']:>4.0f} {conns:>6} {queue:>10} "
            f"{self.backlog['outbox_unsent']:>5} {self.tables['task_events'][1]:>6.1f}  "
            f"{', '.join(self.faults) or '-'}{'; ' + ', '.join(self.restarts) if self.restarts else ''}"
        )


HEADER = " min  submit  finish  tasks/s p50 s  p95 s  RSS MB w/b/d  sims  mq  PG w/b/d  q/asg/run outbx ev MB  faults\n"


def _round(value: float, digits: int = 3) -> float | str:
    return "" if value != value else round(value, digits)


class CsvLog:
    """The per-minute rows, one line each, flushed as they come (a killed soak leaves what it had)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fields: list[str] | None = None

    def write(self, row: dict[str, Any]) -> None:
        first = self.fields is None
        if first:
            self.fields = list(row)
        with self.path.open("w" if first else "a", newline="") as sink:
            writer = csv.DictWriter(sink, fieldnames=self.fields)
            if first:
                writer.writeheader()
            writer.writerow(row)


def plot(csv_path: Path, png_path: Path, title: str) -> str:
    """Six panels from the CSV; returns what happened (the plot is skipped, not the soak, without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plot skipped: matplotlib is not installed (pip install -r requirements-bench.txt)"
    with csv_path.open(newline="") as source:
        rows = list(csv.DictReader(source))
    if not rows:
        return "plot skipped: no minute recorded"
    minutes = [int(row["minute"]) for row in rows]

    def series(column: str) -> list[float]:
        return [float(row[column]) if row.get(column) not in (None, "") else math.nan for row in rows]

    columns = list(rows[0])
    fig, axes = plt.subplots(3, 2, figsize=(13, 11), sharex=True)
    panels = [
        (axes[0][0], "RSS per process (MB)", [c for c in columns if c.startswith("rss_")], "rss_", "_mb"),
        (
            axes[0][1],
            "PostgreSQL connections per role",
            [c for c in columns if c.startswith("pg_conns_")],
            "pg_conns_",
            "",
        ),
        (
            axes[1][0],
            "queue depth and backlog (rows)",
            [*(f"tasks_{s}" for s in QUEUE_STATES), "outbox_unsent", "notify_pending"],
            "",
            "",
        ),
        (axes[1][1], "table size on disk (MB)", [f"mb_{t}" for t in TABLES], "mb_", ""),
        (axes[2][0], "table rows (thousands)", [f"rows_{t}" for t in TABLES], "rows_", ""),
        (axes[2][1], "tasks/s; completion p50, p95 (s)", ["tasks_per_s", "p95_s", "p50_s"], "", ""),
    ]
    for axis, name, cols, prefix, suffix in panels:
        axis.set_prop_cycle(color=plt.cm.tab20.colors)  # 12 processes and more: tab10 would repeat colours
        for column in cols:
            values = series(column)
            if column.startswith("rows_"):
                values = [value / 1000 for value in values]
            label = column.removeprefix(prefix).removesuffix(suffix)
            axis.plot(minutes, values, marker=".", label=label)
        axis.set_title(name, fontsize=10)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, ncol=2)
    for row in rows:  # agent kills as dotted red lines (in the minute before the row) on the RSS and queue panels
        if "kill agents" in row.get("faults", ""):
            for axis in (axes[0][0], axes[1][0]):
                axis.axvline(int(row["minute"]) - 0.5, color="tab:red", alpha=0.6, linewidth=1.0, linestyle=":")
    for axis in axes[2]:
        axis.set_xlabel("minute of load")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(png_path, dpi=72)
    plt.close(fig)
    return f"plot: {png_path}"


# --- memory ------------------------------------------------------------------------------------------------------


@dataclass
class RssTrack:
    """RSS samples of every process by (role, pid), every few seconds, for the growth check.

    The check looks at one process at a time (a restarted role is a new process with a new
    baseline), from the later of the end of the soak's warm-up and the end of that process's own
    first minute. Over that window it takes the medians of the first, middle and last third of the
    samples (a median ignores the short peaks of a reconnect storm or a burst of jobs). The process
    grows without bound when each third's median is above the previous one by more than
    ``step`` of the first (a rise that goes on, not one step up that stays) and the last third's is
    above the first's by more than ``tolerance``. A leak rises through the whole window and fails
    once it passes the tolerance; noise and one-off steps (an allocator's high-water mark after a
    burst) do not rise in both halves. A process that lived less than ``min_window_s`` past its
    warm-up is not judged. Separately, no process may end above ``ceiling`` over its role's RSS in
    the warm-up (``warm``), whatever its shape.
    """

    samples: dict[tuple[str, int], list[tuple[float, float]]] = field(default_factory=dict)
    first_seen: dict[tuple[str, int], float] = field(default_factory=dict)

    def add(self, name: str, pid: int | None, at: float, rss: float) -> None:
        if pid is None or rss != rss:
            return
        key = (name, pid)
        self.first_seen.setdefault(key, at)
        self.samples.setdefault(key, []).append((at, rss))

    def warm(self, warm_end: float) -> dict[str, float]:
        """Each role's RSS at warm-up: the highest sample of its processes until ``warm_end`` (a role killed just
        before the end of the warm-up would otherwise be measured young)."""
        peaks: dict[str, float] = {}
        for (name, _pid), points in self.samples.items():
            for at, rss in points:
                if at <= warm_end:
                    peaks[name] = max(peaks.get(name, 0.0), rss)
        return peaks

    def check(
        self,
        warm_end: float,
        tolerance: float,
        ceiling: float,
        step: float = 0.01,
        min_window_s: float = 120.0,
    ) -> tuple[list[str], list[str]]:
        """(problems, one line per judged process)."""
        problems, report = [], []
        warm_rss = self.warm(warm_end)
        for (name, pid), points in sorted(self.samples.items()):
            start = max(warm_end, self.first_seen[(name, pid)] + 60)
            window = [rss for at, rss in points if at >= start]
            span = points[-1][0] - start
            if len(window) < 6 or span < min_window_s:
                continue
            third = len(window) // 3
            first = statistics.median(window[:third])
            middle = statistics.median(window[third : len(window) - third])
            last = statistics.median(window[len(window) - third :])
            rise = (last - first) / first
            growing = middle - first > step * first and last - middle > step * first
            report.append(
                f"{name} pid {pid}: {span / 60:.1f} min, median RSS {first:.0f} -> {middle:.0f} -> {last:.0f} MB "
                f"({rise:+.1%})"
            )
            if growing and rise > tolerance:
                problems.append(
                    f"{name} (pid {pid}) grows: median RSS {first:.0f} -> {middle:.0f} -> {last:.0f} MB over "
                    f"{span / 60:.1f} min ({rise:+.1%}, limit {tolerance:.0%})"
                )
            warm = warm_rss.get(name)
            if warm is not None and last > (1 + ceiling) * warm:
                problems.append(
                    f"{name} (pid {pid}) ends at {last:.0f} MB, over {1 + ceiling:.1f} x its role's {warm:.0f} MB "
                    "in the warm-up"
                )
        return problems, report


def summary_csv(path: Path) -> list[str]:
    """A few lines from a soak CSV: first and last minute of each RSS column, table growth, queue peaks."""
    with path.open(newline="") as source:
        rows = list(csv.DictReader(source))
    if not rows:
        return ["(no rows)"]
    first, warm, last = rows[0], rows[min(1, len(rows) - 1)], rows[-1]
    lines = [f"minutes {first['minute']}-{last['minute']}, {first['utc']} .. {last['utc']} UTC"]
    rss = [c for c in first if c.startswith("rss_")]
    lines.append(
        f"RSS MB at minutes {first['minute']} / {warm['minute']} / {last['minute']}: "
        + ", ".join(f"{c[4:-3]} {first[c] or '-'} / {warm[c] or '-'} / {last[c] or '-'}" for c in rss)
    )

    def peak(column: str) -> str:
        return max((row[column] for row in rows if row[column] != ""), key=float, default="-")

    lines.append(
        "peaks: "
        + ", ".join(f"{c} {peak(c)}" for c in ("tasks_queued", "tasks_assigned", "tasks_running", "outbox_unsent"))
        + f", pg_conns_total {peak('pg_conns_total')}"
    )
    lines.append(
        f"tables, minute {first['minute']} -> {last['minute']} (rows, MB): "
        + ", ".join(
            f"{t} {int(first[f'rows_{t}']):,} -> {int(last[f'rows_{t}']):,} ({first[f'mb_{t}']} -> {last[f'mb_{t}']})"
            for t in TABLES
        )
    )
    return lines
