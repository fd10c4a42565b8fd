"""Uploading a task's files as artifacts, over HTTP with the agent's token (stdlib only: no new agent dependency).

Three requests (docs/artifacts.md): ask the server for an upload (name, size, sha256, attempt),
PUT the bytes to the pre-signed URL it answers (S3-compatible store, or the web role for the
local backend), then ask it to complete (it verifies size and sha256). An MQTT agent uses the
same endpoints with an agent token: from enrolment, or ``POST /api/v1/agents/{id}/rotate-token/``.

    python -m aegis_agent.artifacts --url https://aegis.example.org --token-file agent.token \\
        --task 42 --attempt 1 build/report.tar.gz
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

READ_CHUNK_BYTES = 1024 * 1024


class ArtifactError(RuntimeError):
    """The server or the store refused: ``status`` and the server's error ``code`` (empty for the store's)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}" if code else f"{status}: {message}")
        self.status = status
        self.code = code


def file_digest(path: Path) -> tuple[int, str]:
    """Size and sha256 (hex) of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as source:
        while chunk := source.read(READ_CHUNK_BYTES):
            size += len(chunk)
            digest.update(chunk)
    return size, digest.hexdigest()


def _http(url: str) -> str:
    """Only http(s): urllib would also open ``file:`` URLs, which neither the server nor a store ever gives.

    Every ``urlopen`` here opens a URL checked by this (hence their ``noqa``/``nosec``).
    """
    if not url.startswith(("http://", "https://")):
        raise ArtifactError(0, "invalid_url", f"not an http(s) URL: {url[:100]!r}")
    return url


def _refusal(error: urllib.error.HTTPError) -> ArtifactError:
    text = error.read().decode(errors="replace")
    try:
        body = json.loads(text)["error"]
        return ArtifactError(error.code, str(body.get("code", "")), str(body.get("message", "")))
    except (ValueError, KeyError, TypeError):
        return ArtifactError(error.code, "", text[:500])


@dataclass
class ArtifactClient:
    """The agent's side of ``/api/v1/agent/tasks/{id}/artifacts/``: ``url`` is the server's, ``token`` the agent's."""

    url: str
    token: str
    timeout_s: float = 60.0

    def _post(self, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        data = json.dumps(body if body is not None else {}).encode()
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        url = _http(self.url.rstrip("/") + path)
        request = urllib.request.Request(url, data=data, headers=headers, method="POST")  # noqa: S310  (http(s))
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:  # noqa: S310  # nosec B310
                result: dict[str, Any] = json.loads(answer.read())
                return result
        except urllib.error.HTTPError as error:
            raise _refusal(error) from error

    def request_upload(self, task_id: int, attempt: int, name: str, size: int, sha256: str) -> dict[str, Any]:
        body = {"attempt": attempt, "name": name, "size": size, "sha256": sha256}
        return self._post(f"/api/v1/agent/tasks/{task_id}/artifacts/", body)

    def put(self, upload: dict[str, Any], path: Path, size: int) -> None:
        """Send the file's bytes to the upload URL, with the headers the server named (they are signed)."""
        headers = {**upload["headers"], "Content-Length": str(size)}
        with path.open("rb") as source:
            url, method = _http(upload["url"]), upload["method"]
            request = urllib.request.Request(url, data=source, headers=headers, method=method)  # noqa: S310  (http(s))
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s):  # noqa: S310  # nosec B310
                    pass
            except urllib.error.HTTPError as error:
                raise _refusal(error) from error

    def complete(self, task_id: int, artifact_id: int) -> dict[str, Any]:
        return self._post(f"/api/v1/agent/tasks/{task_id}/artifacts/{artifact_id}/complete/", None)

    def upload_file(self, task_id: int, attempt: int, path: Path, name: str | None = None) -> dict[str, Any]:
        """Upload one file as an artifact of the task's attempt; the server's record of it (``state: available``)."""
        size, sha256 = file_digest(path)
        answer = self.request_upload(task_id, attempt, name or path.name, size, sha256)
        self.put(answer["upload"], path, size)
        return self.complete(task_id, answer["artifact"]["id"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aegis_agent.artifacts", description="Upload task artifacts.")
    parser.add_argument("--url", required=True, help="The server, e.g. https://aegis.example.org")
    parser.add_argument("--token-file", required=True, type=Path, help="A file holding the agent's token")
    parser.add_argument("--task", required=True, type=int)
    parser.add_argument("--attempt", required=True, type=int)
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    client = ArtifactClient(args.url, args.token_file.read_text().strip())
    for path in args.files:
        try:
            record = client.upload_file(args.task, args.attempt, path)
        except ArtifactError as error:
            print(f"{path}: {error}", file=sys.stderr)
            return 1
        print(f"{record['name']}: {record['size']} bytes, sha256 {record['sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
