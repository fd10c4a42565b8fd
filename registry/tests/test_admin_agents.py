"""The agent pages of the admin: what an operator sees, what each action does, and who may do it."""

from __future__ import annotations

import io
import re
import zipfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.db import connection
from django.db.models import Q
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from aegis_site.core.audit import Actor
from aegis_site.core.models import AuditEvent
from broker.models import OutboxMessage
from registry import actions as registry_actions
from registry.models import AdminState, Agent, AgentCredential, CredentialKind
from registry.pki import crypto, revocation
from registry.pki.layout import CaLayout
from tasks import actions as task_actions
from tasks.engine.reports import Report
from tests.support import staff_user

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:registry_agent_changelist")


@pytest.fixture(autouse=True)
def fast_password_hashing(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def change_url(agent_id: str) -> str:
    return reverse("admin:registry_agent_change", args=[agent_id])


def operate_url(agent_id: str, operation: str) -> str:
    return reverse("admin:registry_agent_operate", args=[agent_id, operation])


def rotate_url(agent_id: str) -> str:
    return reverse("admin:registry_agent_rotate_token", args=[agent_id])


def bundle_url(agent_id: str) -> str:
    return reverse("admin:registry_agent_certificate_bundle", args=[agent_id])


def revoke_url(agent_id: str, credential_id: int) -> str:
    return reverse("admin:registry_agent_revoke_credential", args=[agent_id, credential_id])


def login(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def operator_user(db: Any) -> User:
    """Staff with exactly the permissions the API asks for these actions (not a superuser)."""
    return staff_user(
        "ops-anna",
        (
            "registry.view_agent",
            "registry.change_agent",
            "registry.add_agentcredential",
            "registry.change_agentcredential",
        ),
    )


@pytest.fixture
def operator_client(operator_user: User) -> Client:
    return login(operator_user)


@pytest.fixture
def viewer_client(db: Any) -> Client:
    """Staff who may look at agents but not change them."""
    return login(staff_user("viewer-vic", ("registry.view_agent",)))


@pytest.fixture
def fleet(frozen_clock: Any, spec: Any) -> dict[str, Agent]:
    """node-1 (online, 2 tasks held of 4), node-2 (offline, draining), edge-9 (disabled, gpu)."""
    operator = Actor("seed")
    registry_actions.register_agent(
        "node-1",
        operator,
        name="Web one",
        labels={"role": "web", "zone": "eu"},
        capabilities=["echo"],
        version="1.2.0",
        max_concurrency=4,
    )
    registry_actions.mark_online("node-1", at=frozen_clock() - timedelta(minutes=2))
    registry_actions.register_agent("node-2", operator, name="Web two", labels={"role": "web", "zone": "us"})
    registry_actions.set_admin_state("node-2", AdminState.DRAINING, operator)
    registry_actions.register_agent(
        "edge-9", operator, name="Edge", labels={"role": "edge"}, capabilities=["gpu", "echo"], version="2.0.0"
    )
    registry_actions.set_admin_state("edge-9", AdminState.DISABLED, operator)
    task_actions.submit_job(spec(mode="any", task_count=2, target_agent_ids=["node-1"]), operator)
    first, _second = task_actions.claim_tasks("node-1", 2)
    task_actions.report("node-1", Report("accepted", first.task_id, first.attempt))  # one running, one assigned
    return {agent.pk: agent for agent in Agent.objects.all()}


def listed(response: Any) -> list[str]:
    assert response.status_code == 200, response
    return [agent.pk for agent in response.context["cl"].result_list]


def audit_rows(action: str, agent_id: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action, object_type="agent", object_id=agent_id))


# --- the list -------------------------------------------------------------------------------


def test_agent_list_shows_badges_last_seen_labels_and_running_over_capacity(operator_client, fleet):
    response = operator_client.get(CHANGELIST)
    page = response.content.decode()

    assert sorted(listed(response)) == ["edge-9", "node-1", "node-2"]
    assert '<span class="aegis-badge aegis-badge-ok">online</span>' in page
    assert '<span class="aegis-badge aegis-badge-off">offline</span>' in page
    assert '<span class="aegis-badge aegis-badge-warn">draining</span>' in page
    assert '<span class="aegis-badge aegis-badge-bad">disabled</span>' in page
    assert 'title="2026-01-01 11:58:00 UTC">2 min ago</time>' in page
    assert '<span class="aegis-chip">role=web</span>' in page
    assert '<span class="aegis-chip aegis-chip-cap">gpu</span>' in page
    assert '<span class="aegis-load aegis-load-plain">2/4</span>' in page  # one assigned + one running
    assert "1.2.0" in page
    assert 'data-live="agents"' in page


def list_queries(client: Client) -> list[str]:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(CHANGELIST)
    assert response.status_code == 200
    return [query["sql"] for query in captured.captured_queries]


def test_agent_list_costs_the_same_queries_for_3_or_30_agents(operator_client, make_agent, spec, frozen_clock):
    def add_agents(ids: range) -> None:
        for number in ids:
            make_agent(f"a-{number:02d}", labels={"n": str(number)}, capabilities=["echo"])
        task_actions.submit_job(spec(target_agent_ids=[f"a-{number:02d}" for number in ids]), Actor("seed"))
        for number in ids:
            task_actions.claim_tasks(f"a-{number:02d}", 1)

    add_agents(range(3))
    few = list_queries(operator_client)
    add_agents(range(3, 30))
    many = list_queries(operator_client)

    assert Agent.objects.count() == 30
    assert len(many) == len(few)
    tasks_table = connection.ops.quote_name("tasks")
    over_tasks = [sql for sql in many if f"FROM {tasks_table}" in sql]
    assert len(over_tasks) == 1  # running/capacity: one query for the page's agents
    assert "IN (" in over_tasks[0]
    assert "GROUP BY" in over_tasks[0].upper()


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("connectivity__exact=online", ["node-1"]),
        ("connectivity__exact=offline", ["edge-9", "node-2"]),
        ("admin_state__exact=draining", ["node-2"]),
        ("admin_state__exact=disabled", ["edge-9"]),
        ("version=2.0.0", ["edge-9"]),
        ("capability=gpu", ["edge-9"]),
        ("capability=echo", ["edge-9", "node-1"]),
        ("label=role%3Dweb", ["node-1", "node-2"]),
        ("label=role%3Dweb%2Czone%3Deu", ["node-1"]),
        ("label=role%3Dweb&connectivity__exact=offline", ["node-2"]),
        ("q=node", ["node-1", "node-2"]),
        ("q=NODE-2", ["node-2"]),
        ("q=Edg", ["edge-9"]),
        ("q=ode", []),  # a prefix search: the middle of an id does not match
    ],
)
def test_filters_and_search_narrow_the_list(operator_client, fleet, query, expected):
    assert sorted(listed(operator_client.get(f"{CHANGELIST}?{query}"))) == expected


def test_a_label_filter_without_a_value_matches_nothing_and_says_why(operator_client, fleet):
    response = operator_client.get(f"{CHANGELIST}?label=role")

    assert listed(response) == []
    assert "use key=value" in response.content.decode()


def test_typed_filters_keep_the_other_parameters(operator_client, fleet):
    page = operator_client.get(f"{CHANGELIST}?q=node&admin_state__exact=draining").content.decode()

    assert '<input type="hidden" name="q" value="node">' in page
    assert '<input type="hidden" name="admin_state__exact" value="draining">' in page
    assert 'name="label" value=""' in page


# --- the detail page ------------------------------------------------------------------------


def test_detail_shows_tasks_events_credentials_audit_and_buttons(operator_user, fleet):
    credential, _ = registry_actions.issue_token("node-1", Actor("seed"))
    may_view = Permission.objects.filter(
        Q(content_type__app_label="tasks", codename="view_task")
        | Q(content_type__app_label="registry", codename="view_agentcredential")
        | Q(content_type__app_label="core", codename="view_auditevent")
    )
    operator_user.user_permissions.add(*may_view)

    response = login(operator_user).get(change_url("node-1"))
    page = response.content.decode()

    assert response.status_code == 200
    held = fleet_task_ids("node-1")
    for task_id in held:
        assert reverse("admin:tasks_task_change", args=[task_id]) in page
    assert ">accepted<" in page
    assert ">assigned<" in page
    assert f"{credential.token_prefix}…" in page
    assert revoke_url("node-1", credential.pk) in page
    assert ">agent.register<" in page  # recent audit rows
    assert '<span class="aegis-load aegis-load-plain">2/4</span>' in page
    assert 'id="agent-detail" data-live="agents tasks"' in page
    for operation in ("drain", "disable", "ping"):
        assert operate_url("node-1", operation) in page
    assert operate_url("node-1", "enable") not in page  # node-1 is active: enabling it would change nothing
    assert rotate_url("node-1") in page
    assert bundle_url("node-1") in page


@pytest.mark.parametrize(
    ("agent_id", "offered"),
    [
        ("node-1", ["drain", "disable", "ping"]),
        ("node-2", ["disable", "enable", "ping"]),
        ("edge-9", ["drain", "enable", "ping"]),
    ],
)
def test_detail_offers_only_the_state_changes_that_change_something(operator_client, fleet, agent_id, offered):
    page = operator_client.get(change_url(agent_id)).content.decode()

    shown = re.findall(rf"/admin/registry/agent/{agent_id}/operate/([a-z]+)/", page)
    assert shown == offered


def test_detail_shows_audit_data_as_json(admin_client, fleet):
    page = admin_client.get(change_url("node-2")).content.decode()

    assert '<pre class="aegis-json">{\n  &quot;previous&quot;: &quot;active&quot;\n}</pre>' in page
    assert "{&#x27;previous&#x27;" not in page  # not the Python repr


def test_detail_shows_the_disconnect_reason(operator_client, fleet):
    registry_actions.mark_offline("node-1", "connection lost")

    page = operator_client.get(change_url("node-1")).content.decode()

    assert "connection lost" in page
    assert '<span class="aegis-badge aegis-badge-off">offline</span>' in page


def fleet_task_ids(agent_id: str) -> list[int]:
    from tasks.models import HELD_STATES, Task

    return list(Task.objects.filter(agent_id=agent_id, state__in=HELD_STATES).values_list("pk", flat=True))


# --- drain, disable, enable, ping ---------------------------------------------------------

STATE_ACTIONS = [
    ("drain", "node-1", AdminState.DRAINING, "agent.drain"),
    ("disable", "node-1", AdminState.DISABLED, "agent.disable"),
    ("enable", "edge-9", AdminState.ACTIVE, "agent.enable"),
]


@pytest.mark.parametrize(("operation", "agent_id", "state", "audit"), STATE_ACTIONS)
def test_state_actions_from_the_changelist(operator_client, operator_user, fleet, operation, agent_id, state, audit):
    response = operator_client.post(CHANGELIST, {"action": operation, "_selected_action": [agent_id]})

    assert response.status_code == 302
    assert Agent.objects.get(pk=agent_id).admin_state == state
    (row,) = audit_rows(audit, agent_id)
    assert (row.actor_label, row.actor_id) == ("ops-anna", operator_user.pk)


@pytest.mark.parametrize(("operation", "agent_id", "state", "audit"), STATE_ACTIONS)
def test_state_buttons_on_the_detail_page(operator_client, operator_user, fleet, operation, agent_id, state, audit):
    response = operator_client.post(operate_url(agent_id, operation))

    assert response.status_code == 302
    assert response["Location"] == change_url(agent_id)
    assert Agent.objects.get(pk=agent_id).admin_state == state
    (row,) = audit_rows(audit, agent_id)
    assert (row.actor_label, row.actor_id) == ("ops-anna", operator_user.pk)


def test_draining_from_the_admin_tells_the_agent(operator_client, fleet):
    operator_client.post(operate_url("node-1", "drain"))

    assert OutboxMessage.objects.filter(agent_id="node-1", message_type="agent.drain").count() == 1


def pings(agent_id: str) -> list[OutboxMessage]:
    return list(OutboxMessage.objects.filter(agent_id=agent_id, message_type="ping"))


def test_ping_from_the_detail_page_writes_a_ping_to_the_inbox(operator_client, operator_user, fleet):
    operator_client.post(operate_url("node-1", "ping"))

    (message,) = pings("node-1")
    assert message.topic == "aegis/agents/node-1/inbox"
    assert message.payload["type"] == "ping"
    assert message.payload["v"] == 1
    assert "hello" not in message.payload
    (row,) = audit_rows("agent.ping", "node-1")
    assert row.actor_id == operator_user.pk


def test_ping_from_the_changelist_pings_each_selected_agent(operator_client, fleet):
    operator_client.post(CHANGELIST, {"action": "ping", "_selected_action": ["node-1", "node-2"]})

    assert len(pings("node-1")) == len(pings("node-2")) == 1
    assert len(audit_rows("agent.ping", "node-1")) == len(audit_rows("agent.ping", "node-2")) == 1


def test_unknown_operation_is_not_found(operator_client, fleet):
    assert operator_client.post(operate_url("node-1", "explode")).status_code == 404
    assert operator_client.post(operate_url("nobody", "drain")).status_code == 404


def test_buttons_answer_only_post(operator_client, fleet):
    for url in (operate_url("node-1", "drain"), rotate_url("node-1"), bundle_url("node-1")):
        assert operator_client.get(url).status_code == 405
    assert Agent.objects.get(pk="node-1").admin_state == AdminState.ACTIVE


# --- tokens ---------------------------------------------------------------------------------

TOKEN = re.compile(r"aeg_[A-Za-z0-9_-]{43}")


def test_rotating_a_token_shows_it_once_and_the_old_one_stops_working(operator_client, operator_user, fleet):
    _, old = registry_actions.issue_token("node-1", Actor("seed"))

    response = operator_client.post(rotate_url("node-1"))

    assert response.status_code == 200
    (token,) = TOKEN.findall(response.content.decode())
    assert "no-store" in response["Cache-Control"]
    assert registry_actions.authenticate_token(old) is None
    assert registry_actions.authenticate_token(token) == Agent.objects.get(pk="node-1")
    after = operator_client.get(change_url("node-1"))
    assert token not in after.content.decode()
    assert token not in str(operator_client.cookies)
    assert token not in str(dict(operator_client.session))
    mine = AuditEvent.objects.filter(actor_id=operator_user.pk, object_id="node-1")
    assert sorted(mine.values_list("action", flat=True)) == ["credential.issue", "credential.revoke"]


def test_rotating_tokens_from_the_changelist_shows_each_new_token(operator_client, fleet):
    response = operator_client.post(CHANGELIST, {"action": "rotate_tokens", "_selected_action": ["node-1", "node-2"]})

    assert response.status_code == 200
    tokens = TOKEN.findall(response.content.decode())
    assert {registry_actions.authenticate_token(token).pk for token in tokens} == {"node-1", "node-2"}


def test_revoking_a_token_from_the_detail_page(operator_client, operator_user, fleet):
    credential, token = registry_actions.issue_token("node-1", Actor("seed"))

    response = operator_client.post(revoke_url("node-1", credential.pk))

    assert response.status_code == 302
    assert registry_actions.authenticate_token(token) is None
    assert AgentCredential.objects.get(pk=credential.pk).revoked_at is not None
    (row,) = audit_rows("credential.revoke", "node-1")
    assert (row.actor_label, row.data["credential"]) == ("ops-anna", credential.pk)


def test_a_credential_of_another_agent_is_not_found(operator_client, fleet):
    credential, token = registry_actions.issue_token("node-2", Actor("seed"))

    assert operator_client.post(revoke_url("node-1", credential.pk)).status_code == 404
    assert registry_actions.authenticate_token(token) is not None


def test_revoking_every_credential_from_the_changelist_asks_first(operator_client, fleet):
    _, token_1 = registry_actions.issue_token("node-1", Actor("seed"))
    _, token_2 = registry_actions.issue_token("node-2", Actor("seed"))
    selection = {"action": "revoke_credentials", "_selected_action": ["node-1", "node-2"]}

    confirm = operator_client.post(CHANGELIST, selection)
    assert confirm.status_code == 200
    assert "Yes, revoke" in confirm.content.decode()
    assert registry_actions.authenticate_token(token_1) is not None

    operator_client.post(CHANGELIST, {**selection, "confirmed": "yes"})
    assert registry_actions.authenticate_token(token_1) is None
    assert registry_actions.authenticate_token(token_2) is None
    assert len(audit_rows("credential.revoke", "node-1")) == len(audit_rows("credential.revoke", "node-2")) == 1


# --- certificates ---------------------------------------------------------------------------


@pytest.fixture
def broker_dir(tmp_path: Path, settings: Any) -> CaLayout:
    """A broker directory as ``setup_broker`` writes it, named by BROKER_DIR."""
    directory = tmp_path / "broker"
    call_command("setup_broker", "--dir", str(directory), stdout=io.StringIO())
    settings.BROKER_DIR = str(directory)
    return CaLayout(directory.resolve())


def unzip(response: Any) -> dict[str, bytes]:
    assert response.status_code == 200, response
    assert response["Content-Type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_certificate_bundle_download_holds_cert_key_and_ca_and_is_recorded(
    operator_client, operator_user, fleet, broker_dir
):
    response = operator_client.post(bundle_url("node-1"))

    files = unzip(response)
    assert 'filename="node-1-certificate.zip"' in response["Content-Disposition"]
    assert sorted(files) == ["node-1/ca.crt", "node-1/node-1.crt", "node-1/node-1.key"]
    cert = x509.load_pem_x509_certificate(files["node-1/node-1.crt"])
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "node-1"
    assert b"PRIVATE KEY" in files["node-1/node-1.key"]
    assert files["node-1/ca.crt"] == broker_dir.ca_cert.read_bytes()
    credential = AgentCredential.objects.get(agent_id="node-1", kind=CredentialKind.CERTIFICATE)
    assert credential.cert_serial == crypto.normalize_serial(cert.serial_number)
    row = AuditEvent.objects.get(action="credential.issue", object_id="node-1", data__kind="certificate")
    assert (row.actor_label, row.actor_id) == ("ops-anna", operator_user.pk)


def test_certificate_bundles_from_the_changelist_one_folder_per_agent(operator_client, fleet, broker_dir):
    response = operator_client.post(
        CHANGELIST, {"action": "download_certificates", "_selected_action": ["node-1", "node-2"]}
    )

    files = unzip(response)
    assert {name.split("/")[0] for name in files} == {"node-1", "node-2"}
    assert AgentCredential.objects.filter(kind=CredentialKind.CERTIFICATE).count() == 2


def test_certificate_bundle_without_broker_dir_says_why(operator_client, fleet, settings):
    settings.BROKER_DIR = None

    response = operator_client.post(bundle_url("node-1"), follow=True)

    assert "BROKER_DIR is not set" in response.content.decode()
    assert not AgentCredential.objects.filter(kind=CredentialKind.CERTIFICATE).exists()


def test_certificate_bundle_with_a_broker_dir_without_ca_says_why(operator_client, fleet, settings, tmp_path):
    settings.BROKER_DIR = str(tmp_path)

    response = operator_client.post(
        CHANGELIST, {"action": "download_certificates", "_selected_action": ["node-1"]}, follow=True
    )

    assert f"No CA in {tmp_path.resolve()}" in response.content.decode()
    assert not AgentCredential.objects.filter(kind=CredentialKind.CERTIFICATE).exists()


def test_revoking_a_certificate_puts_it_on_the_crl(operator_client, operator_user, fleet, broker_dir):
    operator_client.post(bundle_url("node-1"))
    credential = AgentCredential.objects.get(agent_id="node-1", kind=CredentialKind.CERTIFICATE)

    response = operator_client.post(revoke_url("node-1", credential.pk), follow=True)

    assert "Restart Mosquitto" in response.content.decode()
    assert AgentCredential.objects.get(pk=credential.pk).revoked_at is not None
    assert credential.cert_serial in revocation.load_revocations(broker_dir).serials
    crl_serials = {format(entry.serial_number, "x") for crl in revocation.load_crls(broker_dir) for entry in crl}
    assert credential.cert_serial in crl_serials
    (row,) = audit_rows("credential.revoke", "node-1")
    assert row.actor_id == operator_user.pk
    assert "node-1" in registry_actions.revoked_certificate_agents()


# --- who may ------------------------------------------------------------------------------


def every_post(agent_id: str, credential_id: int) -> list[tuple[str, dict[str, Any]]]:
    """Each action as a POST: the detail buttons and the changelist's bulk actions."""
    posts: list[tuple[str, dict[str, Any]]] = [
        (operate_url(agent_id, operation), {}) for operation in ("drain", "disable", "enable", "ping")
    ]
    posts += [(rotate_url(agent_id), {}), (bundle_url(agent_id), {}), (revoke_url(agent_id, credential_id), {})]
    for action in ("drain", "disable", "enable", "ping", "rotate_tokens", "download_certificates"):
        posts.append((CHANGELIST, {"action": action, "_selected_action": [agent_id]}))
    posts.append((CHANGELIST, {"action": "revoke_credentials", "_selected_action": [agent_id], "confirmed": "yes"}))
    return posts


def is_login_redirect(response: Any) -> bool:
    return response.status_code == 302 and str(response["Location"]).startswith(reverse("admin:login"))


def snapshot() -> tuple[list[Any], ...]:
    return (
        list(Agent.objects.order_by("pk").values()),
        list(AgentCredential.objects.order_by("pk").values()),
        list(AuditEvent.objects.order_by("pk").values()),
        list(OutboxMessage.objects.order_by("pk").values_list("pk", flat=True)),
    )


@pytest.fixture
def token_of_node_1(fleet: Any) -> tuple[AgentCredential, str]:
    return registry_actions.issue_token("node-1", Actor("seed"))


def test_user_who_is_not_staff_is_sent_to_login_for_every_page_and_action(
    django_user_model, fleet, token_of_node_1, broker_dir
):
    client = login(django_user_model.objects.create_user("visitor", password="pw-visitor-1"))
    credential, token = token_of_node_1
    before = snapshot()

    for url in (CHANGELIST, change_url("node-1")):
        response = client.get(url)
        assert is_login_redirect(response), url
    for url, data in every_post("node-1", credential.pk):
        response = client.post(url, data)
        assert is_login_redirect(response), url

    assert snapshot() == before
    assert registry_actions.authenticate_token(token) is not None


def test_staff_without_change_permission_is_refused_every_action(viewer_client, fleet, token_of_node_1, broker_dir):
    credential, token = token_of_node_1
    before = snapshot()

    changelist = viewer_client.get(CHANGELIST)
    offered = changelist.context["cl"].model_admin.get_actions(changelist.wsgi_request)
    assert set(offered) & {"drain", "disable", "enable", "ping", "rotate_tokens", "revoke_credentials"} == set()
    detail = viewer_client.get(change_url("node-1")).content.decode()
    assert operate_url("node-1", "drain") not in detail
    assert revoke_url("node-1", credential.pk) not in detail
    for url, data in every_post("node-1", credential.pk):
        response = viewer_client.post(url, data)
        if url == CHANGELIST:  # an action not offered: Django answers "no action selected"
            assert response.status_code in (200, 302), url
        else:
            assert response.status_code == 403, url

    assert snapshot() == before
    assert registry_actions.authenticate_token(token) is not None
    assert not AgentCredential.objects.filter(kind=CredentialKind.CERTIFICATE).exists()


def test_credentials_need_the_credential_permissions_the_api_asks_for(db, fleet, token_of_node_1, broker_dir):
    """``registry.change_agent`` drains and pings; issuing or revoking a credential needs more, as in the API."""
    client = login(staff_user("ops-otto", ("registry.view_agent", "registry.change_agent")))
    credential, token = token_of_node_1

    changelist = client.get(CHANGELIST)
    offered = set(changelist.context["cl"].model_admin.get_actions(changelist.wsgi_request))
    detail = client.get(change_url("node-1")).content.decode()
    refused = [client.post(url).status_code for url in (rotate_url("node-1"), bundle_url("node-1"))]
    refused.append(client.post(revoke_url("node-1", credential.pk)).status_code)
    drained = client.post(operate_url("node-1", "drain"))

    assert offered >= {"drain", "ping"}
    assert offered.isdisjoint({"rotate_tokens", "download_certificates", "revoke_credentials"})
    assert rotate_url("node-1") not in detail
    assert revoke_url("node-1", credential.pk) not in detail
    assert refused == [403, 403, 403]
    assert registry_actions.authenticate_token(token) is not None
    assert not AgentCredential.objects.filter(kind=CredentialKind.CERTIFICATE).exists()
    assert drained.status_code == 302
    assert Agent.objects.get(pk="node-1").admin_state == AdminState.DRAINING


def test_staff_without_view_permission_cannot_open_the_agent_pages(db, fleet):
    client = login(staff_user("nobody-nat"))

    assert client.get(CHANGELIST).status_code == 403
    assert client.get(change_url("node-1")).status_code == 403


def test_a_credential_alone_cannot_be_deleted_in_the_admin_only_revoked(admin_client, make_agent, operator):
    make_agent("lonely")
    credential, _ = registry_actions.issue_token("lonely", operator)
    changelist = reverse("admin:registry_agentcredential_changelist")

    delete_url = reverse("admin:registry_agentcredential_delete", args=[credential.pk])
    delete_page = admin_client.post(delete_url, {"post": "yes"})
    admin_client.post(changelist, {"action": "delete_selected", "_selected_action": [credential.pk], "post": "yes"})

    assert delete_page.status_code == 403
    assert AgentCredential.objects.filter(pk=credential.pk).exists()


# --- editing name and labels -----------------------------------------------------------


def edit_url(agent_id: str) -> str:
    return reverse("admin:registry_agent_edit", args=[agent_id])


def test_name_and_labels_are_edited_through_register_agent_and_audited(operator_client, operator_user, fleet):
    detail = operator_client.get(change_url("node-1")).content.decode()

    response = operator_client.post(edit_url("node-1"), {"name": "Web 1", "labels": "role=api\n\nzone = eu-west\n"})

    assert edit_url("node-1") in detail
    assert "role=web" in detail  # the form shows the current labels
    assert response.status_code == 302
    agent = Agent.objects.get(pk="node-1")
    assert (agent.name, agent.labels) == ("Web 1", {"role": "api", "zone": "eu-west"})
    (row,) = audit_rows("agent.update", "node-1")
    assert (row.actor_label, row.data["labels"]) == (operator_user.username, {"role": "api", "zone": "eu-west"})


@pytest.mark.parametrize(
    "labels",
    ["no separator here", "=value", "bad key!=x", "\n".join(f"k{n}=v" for n in range(51))],
    ids=["not-key-value", "empty-key", "invalid-key", "too-many"],
)
def test_bad_labels_change_nothing_and_say_why(operator_client, fleet, labels):
    before = snapshot()

    response = operator_client.post(edit_url("node-1"), {"name": "Renamed", "labels": labels}, follow=True)

    assert "nothing changed" in response.content.decode().lower()
    assert snapshot() == before
    assert Agent.objects.get(pk="node-1").name == "Web one"


def test_editing_needs_the_change_permission(viewer_client, fleet):
    before = snapshot()

    assert edit_url("node-1") not in viewer_client.get(change_url("node-1")).content.decode()
    assert viewer_client.post(edit_url("node-1"), {"name": "x", "labels": "a=b"}).status_code == 403
    assert viewer_client.get(edit_url("node-1")).status_code in (403, 405)
    assert snapshot() == before


def test_detail_shows_tasks_credentials_and_audit_only_with_their_view_permissions(viewer_client, fleet):
    credential, _ = registry_actions.issue_token("node-1", Actor("seed"))

    response = viewer_client.get(change_url("node-1"))  # registry.view_agent and nothing else
    page = response.content.decode()

    assert response.status_code == 200
    assert '<span class="aegis-load aegis-load-plain">2/4</span>' in page  # the load is a count: shown
    for task_id in fleet_task_ids("node-1"):
        assert reverse("admin:tasks_task_change", args=[task_id]) not in page
    assert "Recent task events" not in page
    assert credential.token_prefix not in page
    assert "Credentials</h2>" not in page
    assert "agent.register" not in page
    assert "Recent audit events" not in page
