"""Task handlers: what the agent can run, looked up by task kind.

A handler is a function ``(TaskContext) -> dict`` run on a worker thread. It
reports progress through the context, prints through ``ctx.log()`` or the
file-like ``ctx.stdout`` / ``ctx.stderr`` (streamed to the server as task.log
chunks, see output.py), checks ``ctx.check()`` or waits with ``ctx.wait()`` so
that a cancel or the task's timeout stops it promptly, uploads files with
``ctx.upload_artifact()`` (docs/artifacts.md), and raises TaskError for a failure
the server should see with a stable code.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess  # nosec B404  # the exec handler runs operator-defined argv (no shell) by design
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from aegis_agent.artifacts import ArtifactClient, ArtifactError
from aegis_agent.output import OutputStream, TaskOutput
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
        output: TaskOutput | None = None,
        api_url: str | None = None,
        api_token_file: str | None = None,
    ) -> None:
        """``output``: where ctx.log/stdout/stderr go; without one (no agent around) output is discarded.
        ``api_url`` and ``api_token_file`` (the agent's configuration): where upload_artifact() goes."""
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
        self.output = output or TaskOutput(task_id if isinstance(task_id, int) else 0, attempt, None)
        self.api_url = api_url
        self.api_token_file = api_token_file

    @property
    def stdout(self) -> OutputStream:
        return self.output.stdout

    @property
    def stderr(self) -> OutputStream:
        return self.output.stderr

    def log(self, data: str | bytes, stream: str = "stdout") -> None:
        """Print to the task's output (``stream``: stdout, stderr or system); never blocks on the network."""
        self.output.write(data, stream)

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

    def upload_artifact(self, path: str | Path, name: str | None = None) -> dict[str, Any]:
        """Upload a file as an artifact of this attempt (docs/artifacts.md); the server's record, ``available``.

        ``name`` defaults to the file's name. Raises TaskError: ``artifacts_not_configured`` (no
        api_url / api_token_file, or an unreadable token), ``artifact_not_found``, the server's or
        the store's refusal with its code (``store_unavailable`` is retryable), ``api_unreachable``.
        """
        self.check()
        client = ArtifactClient(self._api_url(), self._api_token())
        file = Path(path)
        if not file.is_file():
            raise TaskError("artifact_not_found", f"no such file to upload: {str(file)[:200]!r}")
        if not isinstance(self.task_id, int):
            raise TaskError("artifacts_not_configured", f"task id {self.task_id!r} is not a server task's")
        try:
            return client.upload_file(self.task_id, self.attempt, file, name)
        except ArtifactError as exc:
            retryable = exc.status >= 500  # e.g. 503 store_unavailable; a 4xx is the same again next time
            raise TaskError(exc.code or "artifact_refused", f"artifact upload refused: {exc}", retryable) from exc
        except OSError as exc:  # urllib's URLError, a timeout, a reset: the server or the store is not reachable
            raise TaskError("api_unreachable", f"artifact upload failed: {exc}", retryable=True) from exc

    def _api_url(self) -> str:
        if not self.api_url or not self.api_token_file:
            raise TaskError(
                "artifacts_not_configured", "this agent cannot upload artifacts: set api_url and api_token_file"
            )
        return self.api_url

    def _api_token(self) -> str:
        """The token, read now (it may have been rotated since the agent started); never logged."""
        try:
            token = Path(str(self.api_token_file)).read_text().strip()
        except OSError as exc:
            raise TaskError("artifacts_not_configured", f"cannot read api_token_file: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:  # the message would quote a byte of the token
            raise TaskError("artifacts_not_configured", "api_token_file is not text") from exc
        if not token:
            raise TaskError("artifacts_not_configured", "api_token_file is empty")
        return token


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
    stdout and stderr are streamed to the task's output as they come (both pipes
    read at once, by two threads); the result keeps the last ``max_output_bytes``
    of each (``truncated`` when more was printed) for clients of the result alone.
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
        out, err = _Tail(self.max_output_bytes), _Tail(self.max_output_bytes)
        exit_code = self._run(ctx, argv, cwd, timeout_s, out, err)
        stdout, stderr = out.text(), err.text()
        if exit_code != 0:
            tail = stderr[-2000:].strip()
            raise TaskError("nonzero_exit", f"{argv[0]} exited with status {exit_code}" + (f": {tail}" if tail else ""))
        return {"exit_code": exit_code, "stdout": stdout, "stderr": stderr, "truncated": out.cut or err.cut}

    def _run(self, ctx: TaskContext, argv: list[str], cwd: str | None, timeout_s: float, out: _Tail, err: _Tail) -> int:
        try:
            proc = subprocess.Popen(  # noqa: S603  # nosec B603  # argv list, no shell
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd
            )
        except OSError as exc:
            raise TaskError("exec_failed", f"cannot run {argv[0]!r}: {exc}") from exc
        if proc.stdout is None or proc.stderr is None:  # never: both are PIPE; this narrows the types
            raise TaskError("exec_failed", f"no pipes to {argv[0]!r}")
        readers = [
            threading.Thread(target=_pump, args=(proc.stdout, ctx.stdout, out), daemon=True),
            threading.Thread(target=_pump, args=(proc.stderr, ctx.stderr, err), daemon=True),
        ]
        for reader in readers:
            reader.start()
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    code = proc.wait(timeout=0.05)
                    break
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
            # The pipes end with the process, unless a child it left behind holds them: then stop waiting.
            for reader in readers:
                reader.join(timeout=5)
        return code


class _Tail:
    """The last ``limit`` bytes of a stream, for the result."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.cut = False

    def add(self, data: bytes) -> None:
        self.data += data
        if len(self.data) > self.limit:
            del self.data[: len(self.data) - self.limit]
            self.cut = True

    def text(self) -> str:
        # No NUL: the server refuses a message holding one (bad_string), and the result would be lost.
        return self.data.decode(errors="replace").replace("\x00", "\ufffd")


def _pump(pipe: IO[bytes], sink: OutputStream, tail: _Tail) -> None:
    """Copy a child's pipe to the task's output as it comes (os.read returns what is there, up to 64 KiB)."""
    fd = pipe.fileno()
    try:
        while data := os.read(fd, 65536):
            tail.add(data)
            with contextlib.suppress(ValueError):  # the task's output is closed: keep draining the pipe
                sink.write(data)
    finally:
        pipe.close()


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
