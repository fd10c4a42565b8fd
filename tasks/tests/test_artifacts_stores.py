"""Artifacts through real HTTP, against both backends: the web role (pytest-django's live server) issues
the URLs, the agent's stdlib helper uploads, an operator lists and downloads by following the 302.

- ``s3``: moto's S3-compatible server, started by the test on a free port (MinIO's server is not
  installable here); boto3 signs the URLs, the bytes go to moto over HTTP.
- ``local``: the web role itself receives and serves the bytes, through its signed URLs.

moto checks neither a pre-signed URL's signature nor its expiry nor the signed checksum (S3 and
MinIO do): what these tests show for ``s3`` is that the server's own verification (reading the
object back) refuses wrong bytes whatever the store accepted, and that the URL carries its expiry.
"""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from django.test import Client
from moto.server import ThreadedMotoServer

from aegis_agent.artifacts import ArtifactClient, ArtifactError, file_digest
from aegis_site.core import clock
from tasks import retention
from tasks.artifacts import storage
from tasks.models import ArtifactState, Task, TaskArtifact, TaskState
from tasks.tests.artifact_fixtures import Running, running_task, sha256
from tests.support import wait_for

pytestmark = pytest.mark.django_db(transaction=True)  # the live server's thread reads what the test wrote
BUCKET = "aegis-artifacts"


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(params=["local", "s3"])
def backend(request: Any, settings: Any, tmp_path: Path) -> Iterator[str]:
    settings.TASK_ARTIFACT_STORAGE = request.param
    settings.TASK_ARTIFACT_LOCAL_DIR = tmp_path / "artifacts"
    if request.param == "s3":
        endpoint = request.getfixturevalue("s3_server")
        settings.TASK_ARTIFACT_S3_ENDPOINT_URL = endpoint
        settings.TASK_ARTIFACT_S3_PUBLIC_URL = endpoint
        settings.TASK_ARTIFACT_S3_BUCKET = BUCKET
        settings.TASK_ARTIFACT_S3_ACCESS_KEY = "aegis-test"
        settings.TASK_ARTIFACT_S3_SECRET_KEY = "aegis-test-secret"
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="aegis-test",
            aws_secret_access_key="aegis-test-secret",
        )
        existing = {bucket["Name"] for bucket in s3.list_buckets()["Buckets"]}
        if BUCKET not in existing:
            s3.create_bucket(Bucket=BUCKET)
    storage.backend.cache_clear()
    yield request.param
    storage.backend.cache_clear()


@pytest.fixture
def agent_run(backend: str, live_server: Any) -> tuple[Running, ArtifactClient]:
    run = running_task("edge-1")
    return run, ArtifactClient(live_server.url, run.token)


@pytest.fixture
def operator_client(admin_user: Any, live_server: Any) -> Client:
    client = Client(HTTP_HOST=urllib.parse.urlsplit(live_server.url).netloc)  # URLs name the live server
    client.force_login(admin_user)
    return client


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as answer:
        data: bytes = answer.read()
        return data


def stored(artifact: TaskArtifact) -> int | None:
    return storage.backend(artifact.storage).size(artifact.key)


def test_upload_list_and_download_the_same_bytes(agent_run, operator_client, tmp_path):
    run, client = agent_run
    report = tmp_path / "report.bin"
    report.write_bytes(bytes(range(256)) * 40_000)  # 10 MB of every byte value
    record = client.upload_file(run.task.pk, 1, report)
    size, digest = file_digest(report)
    assert (record["state"], record["size"], record["sha256"]) == ("available", size, digest)

    listed = operator_client.get(f"/api/v1/tasks/{run.task.pk}/artifacts/").json()
    assert [(item["name"], item["size"], item["state"], item["attempt"]) for item in listed] == [
        ("report.bin", size, "available", 1)
    ]
    redirect = operator_client.get(f"/api/v1/tasks/{run.task.pk}/artifacts/{record['id']}/download/")
    assert redirect.status_code == 302
    downloaded = fetch(redirect["Location"])  # the store's pre-signed GET, or the web role's signed URL
    assert hashlib.sha256(downloaded).hexdigest() == digest
    assert downloaded == report.read_bytes()


def test_bytes_other_than_the_declared_ones_are_never_listed(agent_run, backend, tmp_path):
    run, client = agent_run
    declared = b"the real content\n" * 100
    sent = declared.replace(b"real", b"fake")
    answer = client.request_upload(run.task.pk, 1, "wrong.txt", len(declared), sha256(declared))
    path = tmp_path / "wrong.txt"
    path.write_bytes(sent)
    if backend == "local":
        with pytest.raises(ArtifactError) as refused_put:
            client.put(answer["upload"], path, len(sent))  # the web role hashes while it receives
        assert (refused_put.value.status, refused_put.value.code) == (400, "checksum_mismatch")
    else:
        client.put(answer["upload"], path, len(sent))  # moto stores it (S3 itself would refuse the checksum)
    with pytest.raises(ArtifactError) as refused:
        client.complete(run.task.pk, answer["artifact"]["id"])
    expected = "not_uploaded" if backend == "local" else "checksum_mismatch"
    assert refused.value.code == expected
    artifact = TaskArtifact.objects.get()
    assert artifact.state == ArtifactState.PENDING
    assert stored(artifact) is None  # a refused object is deleted


def test_a_size_other_than_the_declared_one_is_refused(agent_run, backend, tmp_path):
    run, client = agent_run
    answer = client.request_upload(run.task.pk, 1, "short.txt", 10, sha256(b"0123456789"))
    path = tmp_path / "short.txt"
    path.write_bytes(b"012345678")
    if backend == "local":
        with pytest.raises(ArtifactError) as refused_put:
            client.put(answer["upload"], path, 9)
        assert refused_put.value.code == "size_mismatch"
    else:
        client.put(answer["upload"], path, 9)
        with pytest.raises(ArtifactError) as refused:
            client.complete(run.task.pk, answer["artifact"]["id"])
        assert (refused.value.status, refused.value.code) == (400, "size_mismatch")
    assert TaskArtifact.objects.get().state == ArtifactState.PENDING


def test_upload_urls_expire(agent_run, backend, settings, tmp_path):
    settings.TASK_ARTIFACT_URL_TTL = 1  # short, so that the test sees its URL expire
    storage.backend.cache_clear()
    run, client = agent_run
    data = b"late\n"
    answer = client.request_upload(run.task.pk, 1, "late.txt", len(data), sha256(data))
    if backend == "s3":
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(answer["upload"]["url"]).query)
        assert query["X-Amz-Expires"] == ["1"]  # enforced by S3 and MinIO (not by moto)
        assert "x-amz-checksum-sha256" in query["X-Amz-SignedHeaders"][0]
        assert "content-length" in query["X-Amz-SignedHeaders"][0]
        return
    path = tmp_path / "late.txt"
    path.write_bytes(data)

    def refused() -> str:
        try:
            client.put(answer["upload"], path, len(data))
        except ArtifactError as error:
            return error.code
        return ""

    assert wait_for(refused, "the upload URL to expire", timeout=60, interval=0.5) == "url_expired"


def test_another_agent_cannot_touch_the_task_or_its_artifacts(agent_run, live_server, tmp_path):
    run, client = agent_run
    path = tmp_path / "mine.txt"
    path.write_bytes(b"mine")
    record = client.upload_file(run.task.pk, 1, path)
    other = running_task("edge-2")
    intruder = ArtifactClient(live_server.url, other.token)
    with pytest.raises(ArtifactError) as asked:
        intruder.request_upload(run.task.pk, 1, "theirs.txt", 4, sha256(b"mine"))
    with pytest.raises(ArtifactError) as completed:
        intruder.complete(run.task.pk, record["id"])
    assert (asked.value.status, completed.value.status) == (404, 404)
    with pytest.raises(ArtifactError) as stale:
        client.request_upload(run.task.pk, 2, "next.txt", 4, sha256(b"mine"))
    assert (stale.value.status, stale.value.code) == (409, "stale_attempt")


def test_retention_deletes_the_objects_with_their_tasks(agent_run, tmp_path):
    run, client = agent_run
    path = tmp_path / "kept.txt"
    path.write_bytes(b"until the task is pruned")
    client.upload_file(run.task.pk, 1, path)
    pending = client.request_upload(run.task.pk, 1, "pending.txt", 4, sha256(b"half"))
    half = tmp_path / "pending.txt"
    half.write_bytes(b"half")
    client.put(pending["upload"], half, 4)  # uploaded, never completed: pruned all the same
    artifacts = list(TaskArtifact.objects.all())
    assert all(stored(artifact) is not None for artifact in artifacts)

    finished = clock.now() - timedelta(days=40)
    Task.objects.filter(pk=run.task.pk).update(state=TaskState.SUCCEEDED, finished_at=finished)
    counts = retention.prune(timedelta(days=30))
    assert (counts.tasks, counts.task_artifacts) == (1, 2)
    assert not TaskArtifact.objects.exists()
    assert all(stored(artifact) is None for artifact in artifacts)
