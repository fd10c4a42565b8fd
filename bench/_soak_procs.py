"""The processes of the soak (``bench/soak.py``): roles restarted like a supervisor would, the broker, the simulators.

Each has a log appended to across restarts and reports its RSS by pid, so the
soak can follow one process's memory over its life and tell a restart from growth.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import IO

from bench._infra import MOSQUITTO, PYTHON, ROOT, wait_port

MB = 1024 * 1024
AGENT_PREFIX = "soak-"


def rss_mb(pid: int | None) -> float:
    """The resident set of one process in MB (NaN when it is gone)."""
    import psutil

    if pid is None:
        return float("nan")
    try:
        return float(psutil.Process(pid).memory_info().rss) / MB
    except psutil.NoSuchProcess:
        return float("nan")


class Role:
    """One long-running process, started again by whoever watches it: its log is appended to across restarts."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.exits: list[int] = []  # exit codes of exits nobody asked for
        self.kills = 0

    def start(self) -> None:
        sink: IO[bytes]
        with self.log.open("ab") as sink:
            self.process = subprocess.Popen(  # nosec B603
                self.argv,
                cwd=ROOT,
                env={**os.environ, **self.env},
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started_at = time.monotonic()

    @property
    def pid(self) -> int | None:
        return None if self.process is None or self.process.poll() is not None else self.process.pid

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def kill(self) -> None:
        assert self.process is not None  # nosec B101
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def rss_mb(self) -> float:
        return rss_mb(self.pid)

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


class Broker:
    """A private Mosquitto on a fixed port with persistence, so it can be restarted in place."""

    name = "mosquitto"

    def __init__(self, directory: Path) -> None:
        from bench._infra import free_port
        from broker.mosquitto import AUTOSAVE_INTERVAL_S, MAX_QUEUED_MESSAGES

        self.port = free_port()
        self.directory = directory
        data = directory / "mq"
        data.mkdir(parents=True, exist_ok=True)
        self.conf = directory / "mosquitto.conf"
        self.log = directory / "mosquitto.log"
        user = "user root\n" if os.geteuid() == 0 else ""  # as root it would drop to "mosquitto", who cannot write here
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {data}/\n"
            f"autosave_interval {AUTOSAVE_INTERVAL_S}\n"
            f"max_queued_messages {MAX_QUEUED_MESSAGES}\n"
            "set_tcp_nodelay true\n"
            f"log_dest file {self.log}\n"
            "log_type error\nlog_type warning\nlog_type notice\n" + user
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.restarts = 0

    def start(self) -> None:
        with (self.directory / "mosquitto.out").open("ab") as sink:  # what it says before its log file is open
            self.process = subprocess.Popen(  # nosec B603
                [MOSQUITTO, "-c", str(self.conf)], cwd=self.directory, stdout=sink, stderr=subprocess.STDOUT
            )
        self.started_at = time.monotonic()
        wait_port(self.port, 20)

    @property
    def pid(self) -> int | None:
        return None if self.process is None or self.process.poll() is not None else self.process.pid

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # writes the persistence file: sessions and their queues survive
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()
        self.restarts += 1

    def rss_mb(self) -> float:
        return rss_mb(self.pid)


class Supervisor:
    """Restarts every role that exits, as compose's ``restart: unless-stopped`` would, and counts the restarts."""

    def __init__(self, roles: dict[str, Role]) -> None:
        self.roles = roles
        self.lock = threading.Lock()
        self.events: list[tuple[float, str]] = []  # (monotonic, "bridge exited 1") for the minute lines

    def check(self) -> None:
        with self.lock:
            for role in self.roles.values():
                code = role.exited()
                if code is not None:
                    role.exits.append(code)
                    self.events.append((time.monotonic(), f"{role.name} exited {code}"))
                    print(f"  ! {role.name} exited with {code}; restarted", flush=True)
                    role.start()

    def kill(self, name: str) -> None:
        with self.lock:
            role = self.roles[name]
            role.kill()
            role.kills += 1
            role.start()


class Simulators:
    """The fleet as several ``aegis_agent.simulate`` processes, each with its own agent ids (``soak-<i>-<n>``).

    ``kill(i)`` SIGKILLs one: its sockets close, the broker publishes each of its agents' Last Will
    (offline), and whatever those agents held is the engine's to recover. ``due()`` starts it again
    with the same ids after the pause drawn for it: the agents resume their MQTT sessions (what the
    broker queued for them arrives) and say hello with nothing running, as an agent does after a crash.
    """

    def __init__(self, agents: int, processes: int, port: int, seed: int, log_dir: Path) -> None:
        sizes = [agents // processes + (1 if i < agents % processes else 0) for i in range(processes)]
        self.roles: list[Role] = []
        self.agent_ids: list[str] = []
        for i, size in enumerate(sizes):
            prefix = f"{AGENT_PREFIX}{i}-"
            argv = [
                PYTHON,
                "-m",
                "aegis_agent.simulate",
                "--count",
                str(size),
                "--port",
                str(port),
                "--prefix",
                prefix,
                "--failure-rate",
                "0.02",
                "--seed",
                str(seed + i),
                "--stats-every-s",
                "60",
                "--log-level",
                "WARNING",
            ]
            self.roles.append(Role(f"sim{i}", argv, {"PYTHONUNBUFFERED": "1"}, log_dir / f"sim{i}.log"))
            self.agent_ids += [f"{prefix}{n}" for n in range(size)]
        self.down: dict[int, float] = {}  # index -> when it is started again (monotonic)
        self.kills = 0

    def start_all(self) -> None:
        for role in self.roles:
            role.start()

    def kill(self, index: int, down_s: float) -> int:
        """SIGKILL simulator ``index``; it is started again ``down_s`` later by ``due``. Returns its agent count."""
        role = self.roles[index]
        role.kill()
        role.kills += 1
        self.kills += 1
        self.down[index] = time.monotonic() + down_s
        return int(role.argv[role.argv.index("--count") + 1])

    def up(self) -> list[int]:
        return [i for i in range(len(self.roles)) if i not in self.down]

    def due(self, now: float | None = None) -> list[str]:
        """Start again every killed simulator whose pause is over (``now=inf``: all of them)."""
        now = time.monotonic() if now is None else now
        started = []
        for index, at in sorted(self.down.items()):
            if at <= now:
                self.roles[index].start()
                del self.down[index]
                started.append(self.roles[index].name)
        return started

    def check(self) -> None:
        """A simulator that exits by itself is a bug of the soak (or the simulator): stop the run."""
        for index, role in enumerate(self.roles):
            if index not in self.down and role.exited() is not None:
                raise RuntimeError(f"simulator {role.name} exited with {role.exited()}:\n{role.tail()}")

    def stop_all(self) -> None:
        for role in self.roles:
            role.stop()
