"""The artifact rules, against the local backend in the test client: limits, names, fencing, isolation, verification.

The same flows through real HTTP servers (the web role and an S3-compatible store) are in
test_artifacts_stores.py; this file pins each refusal to its status and code.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from rest_framework.test import APIClient

from tasks.artifacts import storage
from tasks.models import ArtifactState, TaskArtifact, TaskState
from tasks.tests.artifact_fixtures import Running, running_task, sha256

pytestmark = pytest.mark.django_db
DATA = b"build log\n" * 1000


@pytest.fixture(autouse=True)
def local_store(settings: Any, tmp_path: Any) -> Any:
    # The all-in-one default, in a scratch directory (tests never write into the repository).
    settings.TASK_ARTIFACT_STORAGE = "local"
    settings.TASK_ARTIFACT_LOCAL_DIR = tmp_path / "artifacts"
    storage.backend.cache_clear()
    yield tmp_path / "artifacts"
    storage.backend.cache_clear()


def agent(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def ask(run: Running, name: str = "out.bin", data: bytes = DATA, **fields: Any) -> Any:
    body = {"attempt": run.task.attempt, "name": name, "size": len(data), "sha256": sha256(data), **fields}
    return agent(run.token).post(f"/api/v1/agent/tasks/{run.task.pk}/artifacts/", body, format="json")


def put(url: str, data: bytes) -> Any:
    """PUT to the local backend's signed URL (it is absolute: the path is what the test client takes)."""
    path = url.removeprefix("http://testserver")
    return Client().generic("PUT", path, data, content_type="application/octet-stream")


def complete(run: Running, artifact_id: int) -> Any:
    return agent(run.token).post(f"/api/v1/agent/tasks/{run.task.pk}/artifacts/{artifact_id}/complete/")


def code(answer: Any) -> str:
    return str(answer.json()["error"]["code"])


def test_an_upload_is_listed_only_once_completed_and_verified():
    run = running_task("edge-1")
    asked = ask(run)
    assert asked.status_code == 201, asked.content
    artifact, upload = asked.json()["artifact"], asked.json()["upload"]
    assert (artifact["state"], upload["method"]) == ("pending", "PUT")
    assert complete(run, artifact["id"]).status_code == 409  # nothing uploaded yet: not_uploaded
    assert put(upload["url"], DATA).status_code == 200
    done = complete(run, artifact["id"])
    assert done.status_code == 200, done.content
    assert (done.json()["state"], done.json()["size"], done.json()["sha256"]) == ("available", len(DATA), sha256(DATA))
    assert complete(run, artifact["id"]).json()["state"] == "available"  # a retried complete changes nothing


def test_the_local_backend_refuses_bytes_that_are_not_the_declared_ones(local_store):
    run = running_task("edge-1")
    upload = ask(run).json()["upload"]
    wrong = put(upload["url"], DATA[:-1] + b"?")
    assert (wrong.status_code, code(wrong)) == (400, "checksum_mismatch")
    longer = put(upload["url"], DATA + b"x")
    assert (longer.status_code, code(longer)) == (400, "size_mismatch")
    shorter = put(upload["url"], DATA[:10])
    assert (shorter.status_code, code(shorter)) == (400, "size_mismatch")
    assert not any(path.is_file() for path in local_store.rglob("*"))  # no partial file is left behind
    assert TaskArtifact.objects.get().state == ArtifactState.PENDING


def test_a_forged_or_misused_url_is_refused():
    run = running_task("edge-1")
    upload = ask(run).json()["upload"]
    forged = put(upload["url"].replace("/local/", "/local/x"), DATA)
    assert (forged.status_code, code(forged)) == (403, "invalid_url")
    # An upload URL is not a download URL.
    download = Client().get(upload["url"].removeprefix("http://testserver"))
    assert (download.status_code, code(download)) == (403, "invalid_url")


@pytest.mark.parametrize(
    ("name", "allowed"),
    [
        ("report.tar.gz", True),
        ("résumé_2.txt", True),
        ("../etc/passwd", False),
        ("a/b", False),
        ("a\\b", False),
        ("..", False),
        (".hidden", False),
        ("", False),
        ("x" * 201, False),
        ("with space", False),
        ("nul\x00", False),
    ],
)
def test_names_are_refused_rather_than_rewritten(name, allowed):
    answer = ask(running_task("edge-1"), name=name)
    assert answer.status_code == (201 if allowed else 400), answer.content
    if not allowed and "\x00" not in name:  # NUL: the JSON parser refuses the body before the name is read
        assert "name" in answer.json()["error"]["fields"]


def test_size_and_count_limits(settings):
    settings.TASK_ARTIFACT_MAX_BYTES = 100
    settings.TASK_ARTIFACT_MAX_BYTES_PER_TASK = 150
    settings.TASK_ARTIFACT_MAX_COUNT_PER_TASK = 2
    run = running_task("edge-1")
    one_file = ask(run, data=b"x" * 101)
    refused = (one_file.status_code, code(one_file), list(one_file.json()["error"]["fields"]))
    assert refused == (400, "too_large", ["size"])
    assert ask(run, name="a", data=b"x" * 100).status_code == 201
    over_total = ask(run, name="b", data=b"x" * 51)
    assert (over_total.status_code, code(over_total)) == (400, "too_large")  # 100 + 51 > 150 for the task
    assert ask(run, name="b", data=b"x" * 50).status_code == 201
    assert ask(run, name="a", data=b"x" * 10).status_code == 201  # a pending name is asked for again: replaced
    third = ask(run, name="c", data=b"x")
    assert third.status_code == 400
    assert "at most 2 artifacts" in str(third.json())
    assert TaskArtifact.objects.count() == 2


def test_another_agents_task_is_not_found_and_a_stale_attempt_is_refused():
    mine = running_task("edge-1", attempt=2)
    other = running_task("edge-2")
    foreign = ask(Running(other.agent_id, other.token, mine.task))
    assert foreign.status_code == 404
    artifact = ask(mine).json()["artifact"]
    assert (
        agent(other.token).post(f"/api/v1/agent/tasks/{mine.task.pk}/artifacts/{artifact['id']}/complete/").status_code
        == 404
    )
    stale = ask(mine, attempt=1)
    assert (stale.status_code, code(stale)) == (409, "stale_attempt")
    # The task went to its next attempt before the upload was completed: that upload is stale too.
    type(mine.task).objects.filter(pk=mine.task.pk).update(attempt=3, state=TaskState.ASSIGNED)
    late = complete(mine, artifact["id"])
    assert (late.status_code, code(late)) == (409, "stale_attempt")


def test_an_available_name_is_not_replaced():
    run = running_task("edge-1")
    first = ask(run).json()
    put(first["upload"]["url"], DATA)
    complete(run, first["artifact"]["id"])
    again = ask(run)
    assert (again.status_code, code(again)) == (409, "exists")


def test_operators_need_the_view_permission(django_user_model):
    run = running_task("edge-1")
    asked = ask(run).json()
    put(asked["upload"]["url"], DATA)
    complete(run, asked["artifact"]["id"])
    listing = f"/api/v1/tasks/{run.task.pk}/artifacts/"
    download = f"{listing}{asked['artifact']['id']}/download/"

    staff = django_user_model.objects.create_user("viewer", is_staff=True)
    client = APIClient()
    client.force_login(staff)
    assert client.get(listing).status_code == 403
    assert client.get(download).status_code == 403
    assert agent(run.token).get(listing).status_code == 403  # an agent is no operator

    from django.contrib.auth.models import Permission

    staff.user_permissions.add(Permission.objects.get(codename="view_task"))
    client.force_login(django_user_model.objects.get(pk=staff.pk))
    (listed,) = client.get(listing).json()
    assert (listed["name"], listed["state"], listed["attempt"]) == ("out.bin", "available", 1)
    redirect = client.get(download)
    assert redirect.status_code == 302
    fetched = Client().get(redirect["Location"].removeprefix("http://testserver"))
    assert b"".join(fetched.streaming_content) == DATA
    assert 'filename="out.bin"' in fetched["Content-Disposition"]
    assert client.get(f"/api/v1/tasks/{run.task.pk + 1000}/artifacts/").status_code == 404
    assert client.get(f"{listing}{asked['artifact']['id'] + 1}/download/").status_code == 404


def test_bad_bodies_are_400s_that_change_nothing():
    run = running_task("edge-1")
    url = f"/api/v1/agent/tasks/{run.task.pk}/artifacts/"
    for body in (
        {},
        {"attempt": 1, "name": "a", "size": -1, "sha256": sha256(b"")},
        {"attempt": 1, "name": "a", "size": 1, "sha256": "F" * 64},
        {"attempt": 1, "name": "a", "size": 1, "sha256": sha256(b""), "extra": 1},
        {"attempt": "one", "name": "a", "size": 1, "sha256": sha256(b"")},
    ):
        answer = agent(run.token).post(url, body, format="json")
        assert answer.status_code == 400, (body, answer.content)
    assert not TaskArtifact.objects.exists()


def test_the_task_page_lists_artifacts_with_download_links(admin_client):
    run = running_task("edge-1")
    done = ask(run, name="report.txt").json()
    put(done["upload"]["url"], DATA)
    complete(run, done["artifact"]["id"])
    ask(run, name="half.txt")  # pending: listed, no link
    page = admin_client.get(f"/admin/tasks/task/{run.task.pk}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    link = f'href="/api/v1/tasks/{run.task.pk}/artifacts/{done["artifact"]["id"]}/download/"'
    assert link in html
    assert sha256(DATA) in html
    assert "half.txt" in html
    assert html.count("/download/") == 1
    fetched = admin_client.get(f"/api/v1/tasks/{run.task.pk}/artifacts/{done['artifact']['id']}/download/")
    assert fetched.status_code == 302  # the admin's session is enough for the API's download


def test_an_unreachable_store_is_a_503_that_changes_nothing(settings):
    # s3 at a port nothing listens on: signing needs no store, verifying does.
    settings.TASK_ARTIFACT_STORAGE = "s3"
    settings.TASK_ARTIFACT_S3_ENDPOINT_URL = settings.TASK_ARTIFACT_S3_PUBLIC_URL = "http://127.0.0.1:9"
    settings.TASK_ARTIFACT_S3_ACCESS_KEY, settings.TASK_ARTIFACT_S3_SECRET_KEY = "key", "secret"
    storage.backend.cache_clear()
    run = running_task("edge-1")
    asked = ask(run)
    assert asked.status_code == 201, asked.content
    answer = complete(run, asked.json()["artifact"]["id"])
    assert (answer.status_code, code(answer)) == (503, "store_unavailable")
    assert TaskArtifact.objects.get().state == ArtifactState.PENDING
