"""Task handlers: what the agent can run, looked up by task kind.

A handler is a function ``(TaskContext) -> dict`` run on a worker thread. It
reports progress through the context, checks ``ctx.check()`` or waits with
``ctx.wait()`` so that a cancel or the task's timeout stops it promptly, and
raises TaskError for a failure the server should see with a stable code.
"""

from __future__ import annotations

import logging
import subprocess  # nosec B404  # the exec handler runs operator-defined argv (no shell) by design
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from typing import IO, Any

from aegis_agent.wire import TaskId

log = logging.getLogger(__name__)


class TaskError(Exception):
    """A failure reported as ``task.failed`` with ``error.code`` = code."""

    def __init__(self, code: str, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable


class TaskCanceled(TaskError):
    """Stopped on request: an operator's cancel is final; "agent_shutdown" may run again elsewhere."""

    def __init__(self, code: str = "canceled") -> None:
        messages = {"canceled": "the task was canceled", "agent_shutdown": "the agent is stopping"}
        super().__init__(code, messages.get(code, f"the task was stopped ({code})"), retryable=code != "canceled")


class TaskTimeout(TaskError):
    def __init__(self, timeout_s: float) -> None:
        super().__init__("timeout", f"the task ran longer than its timeout of {timeout_s:g}s", retryable=True)


class TaskContext:
    """What a handler sees of its task; safe to use from the handler's thread."""

    def __init__(
        self,
        task_id: TaskId,
        attempt: int,
        kind: str,
        payload: Any,
        timeout_s: float | None,
        report_progress: Callable[[Mapping[str, Any]], None],
    ) -> None:
        self.task_id = task_id
        self.attempt = attempt
        self.kind = kind
        self.payload = payload
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + timeout_s if timeout_s else None
        self._report_progress = report_progress
        self._cancel = threading.Event()
        self.cancel_code = "canceled"
        self.force = False

    def cancel(self, force: bool = False, code: str = "canceled") -> None:
        """Ask the handler to stop; ``force`` lets handlers that own processes kill them outright."""
        self.cancel_code = code
        self.force = self.force or force
        self._cancel.set()

    @property
    def canceled(self) -> bool:
        return self._cancel.is_set()

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def check(self) -> None:
        """Raise TaskCanceled or TaskTimeout if the task must stop now."""
        if self._cancel.is_set():
            raise TaskCanceled(self.cancel_code)
        remaining = self.remaining()
        if remaining is not None and remaining <= 0 and self.timeout_s is not None:
            raise TaskTimeout(self.timeout_s)

    def wait(self, seconds: float) -> None:
        """Sleep up to ``seconds``; raise at once on cancel or at the task's deadline."""
        remaining = self.remaining()
        if remaining is not None:
            seconds = min(seconds, max(remaining, 0.0))
        self._cancel.wait(max(seconds, 0.0))
        self.check()

    def progress(self, **fields: Any) -> None:
        self._report_progress(fields)


Handler = Callable[[TaskContext], Mapping[str, Any]]


class HandlerRegistry:
    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def register(self, kind: str, handler: Handler) -> None:
        self._handlers[kind] = handler

    def get(self, kind: str) -> Handler | None:
        return self._handlers.get(kind)

    def kinds(self) -> list[str]:
        return sorted(self._handlers)


def _payload_object(ctx: TaskContext) -> dict[str, Any]:
    if ctx.payload is None:
        return {}
    if not isinstance(ctx.payload, dict):
        raise TaskError("bad_payload", f"{ctx.kind} needs a JSON object payload")
    return ctx.payload


def echo(ctx: TaskContext) -> Mapping[str, Any]:
    """Return the payload (wrapped as {"value": ...} when it is not an object)."""
    ctx.check()
    return ctx.payload if isinstance(ctx.payload, dict) else {"value": ctx.payload}


def sleep(ctx: TaskContext) -> Mapping[str, Any]:
    """Sleep ``payload.seconds``, reporting progress about four times (at most once a second)."""
    seconds = _payload_object(ctx).get("seconds", 1.0)
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
        raise TaskError("bad_payload", "sleep needs payload.seconds >= 0")
    step = max(0.05, min(1.0, seconds / 4))
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < seconds:
        ctx.wait(min(step, seconds - elapsed))
        elapsed = time.monotonic() - start
        if elapsed < seconds:
            ctx.progress(elapsed_s=round(elapsed, 3), total_s=seconds, fraction=round(elapsed / seconds, 3))
    return {"slept_s": round(time.monotonic() - start, 3)}


class ShellHandler:
    """Run an allow-listed program: payload {"argv": [...], "timeout_s"?, "cwd"?}.

    No shell is involved (argv is executed directly), so the allow-list on argv[0]
    is the whole policy: "ls" allows exactly the argv[0] "ls", not "/tmp/ls".
    Output goes to temporary files so a chatty command cannot exhaust memory;
    each stream is cut to ``max_output_bytes``.
    """

    def __init__(self, allow: list[str], timeout_s: float, max_output_bytes: int) -> None:
        self.allow = frozenset(allow)
        self.timeout_s = timeout_s
        self.max_output_bytes = max_output_bytes

    def __call__(self, ctx: TaskContext) -> Mapping[str, Any]:
        payload = _payload_object(ctx)
        argv = payload.get("argv")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise TaskError("bad_payload", "shell needs payload.argv, a non-empty list of strings")
        if argv[0] not in self.allow:
            allowed = ", ".join(sorted(self.allow)) or "nothing"
            raise TaskError(
                "command_not_allowed", f"{argv[0]!r} is not in this agent's shell allow-list (allowed: {allowed})"
            )
        timeout_s = payload.get("timeout_s", self.timeout_s)
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or timeout_s <= 0:
            raise TaskError("bad_payload", "shell payload.timeout_s must be a positive number")
        timeout_s = min(float(timeout_s), self.timeout_s)
        cwd = payload.get("cwd")
        if cwd is not None and not isinstance(cwd, str):
            raise TaskError("bad_payload", "shell payload.cwd must be a string")
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            exit_code = self._run(ctx, argv, cwd, timeout_s, out, err)
            stdout, out_cut = self._read(out)
            stderr, err_cut = self._read(err)
        if exit_code != 0:
            tail = stderr[-2000:].strip()
            raise TaskError("nonzero_exit", f"{argv[0]} exited with status {exit_code}" + (f": {tail}" if tail else ""))
        return {"exit_code": exit_code, "stdout": stdout, "stderr": stderr, "truncated": out_cut or err_cut}

    def _run(
        self, ctx: TaskContext, argv: list[str], cwd: str | None, timeout_s: float, out: IO[bytes], err: IO[bytes]
    ) -> int:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=cwd)  # noqa: S603  # nosec B603  # argv list, no shell
        except OSError as exc:
            raise TaskError("exec_failed", f"cannot run {argv[0]!r}: {exc}") from exc
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    return proc.wait(timeout=0.05)
                except subprocess.TimeoutExpired:
                    pass
                if time.monotonic() >= deadline:
                    raise TaskError("timeout", f"{argv[0]} ran longer than {timeout_s:g}s", retryable=True)
                ctx.check()
        finally:
            if proc.poll() is None:
                if ctx.force:
                    proc.kill()
                else:
                    proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def _read(self, stream: IO[bytes]) -> tuple[str, bool]:
        size = stream.seek(0, 2)
        stream.seek(0)
        data = stream.read(self.max_output_bytes)
        return data.decode(errors="replace"), size > self.max_output_bytes


def default_registry(
    shell_allow: list[str] | None = None, shell_timeout_s: float = 300.0, shell_max_output_bytes: int = 64 * 1024
) -> HandlerRegistry:
    """echo, sleep and shell. shell is always there so that a refused command fails with a clear
    error instead of looking like an unknown kind; agents advertise it only when something is allowed."""
    registry = HandlerRegistry()
    registry.register("echo", echo)
    registry.register("sleep", sleep)
    registry.register("shell", ShellHandler(shell_allow or [], shell_timeout_s, shell_max_output_bytes))
    return registry
