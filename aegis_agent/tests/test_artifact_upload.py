"""A handler in the reference agent uploads an artifact with ``ctx.upload_artifact()``: a real agent on the
real Mosquitto (conftest), the web role as pytest-django's live server, and both artifact backends (the
local one and moto's S3 server, the fixtures of tasks/tests/test_artifacts_stores.py). The operator API
then lists the artifact as available with the file's sha256.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from aegis_agent.artifacts import file_digest
from aegis_agent.config import AgentConfig, ConfigError
from aegis_agent.handlers import TaskContext
from aegis_agent.tests.conftest import assign
from tasks.tests.artifact_fixtures import running_task
from tasks.tests.test_artifacts_stores import backend, operator_client, s3_server  # noqa: F401  (fixtures)

pytestmark = pytest.mark.django_db(transaction=True)  # the live server's thread reads what the test wrote


def upload_handler(ctx: TaskContext) -> Mapping[str, Any]:
    """Upload the file the payload names, under the name it gives; the server's record is the result."""
    record = ctx.upload_artifact(ctx.payload["path"], ctx.payload.get("name"))
    return {"artifact": record}


def uploading_agent(make_agent, api_url: str, token: str, tmp_path) -> None:
    """A reference agent with the API settings and the upload handler (the token file ends with a newline or not)."""
    token_file = tmp_path / "agent.token"
    token_file.write_text(token)
    agent = make_agent(api_url=api_url, api_token_file=str(token_file))
    agent.registry.register("upload", upload_handler)


def test_a_handler_uploads_a_file_the_operator_then_lists(
    backend,  # noqa: F811
    operator_client,  # noqa: F811
    live_server,
    make_agent,
    peer,
    agent_id,
    tmp_path,
):
    run = running_task(agent_id)
    uploading_agent(make_agent, live_server.url, run.token + "\n", tmp_path)
    report = tmp_path / "report.bin"
    report.write_bytes(bytes(range(256)) * 4_000)  # 1 MB of every byte value
    size, digest = file_digest(report)

    peer.send(agent_id, assign(run.task.pk, "upload", {"path": str(report), "name": "build-report.bin"}))
    succeeded = peer.event(agent_id, "task.succeeded", run.task.pk, timeout=60)[0]
    record = succeeded["result"]["artifact"]
    assert (record["name"], record["state"], record["size"], record["sha256"]) == (
        "build-report.bin",
        "available",
        size,
        digest,
    )

    listed = operator_client.get(f"/api/v1/tasks/{run.task.pk}/artifacts/").json()
    assert [(a["name"], a["size"], a["sha256"], a["state"], a["attempt"]) for a in listed] == [
        ("build-report.bin", size, digest, "available", 1)
    ]


def test_an_agent_without_api_settings_fails_the_task_with_a_clear_code(make_agent, peer, agent_id, tmp_path):
    agent = make_agent()
    agent.registry.register("upload", upload_handler)
    report = tmp_path / "report.txt"
    report.write_text("done\n")
    peer.send(agent_id, assign(41, "upload", {"path": str(report)}))
    failed = peer.event(agent_id, "task.failed", 41)[0]
    assert (failed["error"]["code"], failed["retryable"]) == ("artifacts_not_configured", False)
    assert "api_url and api_token_file" in failed["error"]["message"]


def test_a_refusal_by_the_server_fails_the_task_with_its_code(
    backend,  # noqa: F811
    live_server,
    make_agent,
    peer,
    agent_id,
    tmp_path,
):
    run = running_task(agent_id)
    uploading_agent(make_agent, live_server.url, run.token, tmp_path)
    report = tmp_path / "report.txt"
    report.write_text("done\n")
    peer.send(agent_id, assign(run.task.pk, "upload", {"path": str(report), "name": "../escape"}))
    failed = peer.event(agent_id, "task.failed", run.task.pk, timeout=60)[0]
    assert (failed["error"]["code"], failed["retryable"]) == ("invalid_name", False)
    assert run.task.artifacts.count() == 0


def test_the_config_checks_the_api_url(tmp_path):
    for url in ("ftp://aegis.example.org", "aegis.example.org", "http://"):
        with pytest.raises(ConfigError, match="api_url"):
            AgentConfig(agent_id="edge-1", api_url=url)
    with pytest.raises(ConfigError, match="api_token_file"):
        AgentConfig(agent_id="edge-1", api_url="https://aegis.example.org", api_token_file=str(tmp_path / "none"))
    assert AgentConfig(agent_id="edge-1", api_url="https://aegis.example.org:8443/").api_url
