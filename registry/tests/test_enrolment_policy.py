"""Enrolment policy (issue 13 item 9): a bootstrap token limits what an agent may claim about itself.

The attack: anyone holding a generic bootstrap token enrolled as ``role=db-primary``
(or offering any capability) and received that role's payloads; and an agent's MQTT
hello could widen what it enrolled with. Labels and capabilities route jobs.
"""

from __future__ import annotations

import io
import logging
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from aegis_site.core.audit import Actor
from aegis_site.core.models import AuditEvent
from aegis_site.core.tokens import hash_token
from broker.ingest import Incoming, ingest
from broker.presence import HeartbeatBuffer
from registry import actions as registry_actions
from registry.models import Agent, EnrolmentToken
from registry.policy import (
    EnrolmentPolicy,
    PolicyError,
    clean_allowed_capabilities,
    clean_allowed_labels,
    clean_fixed_labels,
)
from tasks import actions
from tests.support import envelope, staff_user

pytestmark = pytest.mark.django_db

ENROL = "/api/v1/agent/enrol/"


@pytest.fixture(autouse=True)
def _fresh_enrolment_limit() -> None:
    """Enrolment allows 10 a minute per address (API_THROTTLE_ENROL): these tests enrol more than that, from one."""
    cache.clear()


def enrol(token: str, agent_id: str, **fields: Any) -> Any:
    return APIClient().post(ENROL, {"enrolment_token": token, "agent_id": agent_id, **fields}, format="json")


def test_a_generic_token_cannot_enrol_an_agent_as_db_primary_nor_let_it_take_that_roles_payloads(spec, operator):
    actions.submit_job(spec(target_labels={"role": "db-primary"}, mode="any", payload={"dump": "secrets"}), operator)
    token_row, generic = registry_actions.create_enrolment_token(operator, name="fleet", uses=10)

    answer = enrol(generic, "rogue-1", labels={"role": "db-primary"})

    assert answer.status_code == 403, answer.content
    error = answer.json()["error"]
    assert error["code"] == "outside_policy"
    assert list(error["fields"]) == ["labels"]
    assert "role='db-primary'" in error["fields"]["labels"][0]
    # Nothing was created and nothing used up: no agent, no audit row, the token's 10 uses intact.
    assert not Agent.objects.filter(pk="rogue-1").exists()
    assert EnrolmentToken.objects.get(pk=token_row.pk).uses_left == 10
    assert not AuditEvent.objects.filter(action="agent.enrol").exists()
    # Enrolled as the token allows, it gets a token of its own but not the role's payload.
    plain = enrol(generic, "rogue-1")
    assert plain.status_code == 201
    rogue = APIClient()
    rogue.credentials(HTTP_AUTHORIZATION=f"Bearer {plain.json()['token']}")
    assert rogue.post("/api/v1/agent/tasks/claim/", {"max_tasks": 5}, format="json").json() == {"tasks": []}
    assert EnrolmentToken.objects.get(pk=token_row.pk).uses_left == 9


def test_a_generic_token_cannot_offer_capabilities_it_was_not_given(operator):
    _row, token = registry_actions.create_enrolment_token(operator, allowed_capabilities=["echo", "metrics:*"])

    refused = enrol(token, "edge-1", capabilities=["echo", "db-restore"])

    assert refused.status_code == 403
    fields = refused.json()["error"]["fields"]
    assert list(fields) == ["capabilities"]
    assert fields["capabilities"] == ["this enrolment token does not allow capability 'db-restore'"]
    assert not Agent.objects.filter(pk="edge-1").exists()
    assert enrol(token, "edge-1", capabilities=["echo", "metrics:cpu"]).status_code == 201
    assert Agent.objects.get(pk="edge-1").capabilities == ["echo", "metrics:cpu"]


def test_fixed_labels_are_always_applied_and_cannot_be_given_another_value(operator):
    _row, token = registry_actions.create_enrolment_token(operator, fixed_labels={"site": "lab"}, uses=2)

    overriding = enrol(token, "lab-1", labels={"site": "prod"})
    assert overriding.status_code == 403
    assert overriding.json()["error"]["fields"]["labels"] == ["label 'site' is fixed to 'lab' by this enrolment token"]

    assert enrol(token, "lab-1").status_code == 201
    assert Agent.objects.get(pk="lab-1").labels == {"site": "lab"}


def test_allowed_labels_are_value_globs_per_key_and_star_covers_keys_not_listed(operator):
    _row, token = registry_actions.create_enrolment_token(
        operator, allowed_labels={"zone": ["eu-*"], "rack": ["*"]}, uses=5
    )
    assert enrol(token, "z-1", labels={"zone": "eu-1", "rack": "r12"}).status_code == 201
    assert Agent.objects.get(pk="z-1").labels == {"zone": "eu-1", "rack": "r12"}
    refused = enrol(token, "z-2", labels={"zone": "us-1", "role": "db-primary"})
    assert refused.status_code == 403
    assert len(refused.json()["error"]["fields"]["labels"]) == 2

    _row, open_but_role = registry_actions.create_enrolment_token(
        operator, allowed_labels={"*": ["*"], "role": []}, uses=5
    )
    assert enrol(open_but_role, "z-3", labels={"anything": "goes"}).status_code == 201
    assert enrol(open_but_role, "z-4", labels={"role": "db-primary"}).status_code == 403


def test_agent_id_prefix_limits_the_ids_a_token_enrols(operator):
    _row, token = registry_actions.create_enrolment_token(operator, agent_id_prefix="edge-", uses=5)
    refused = enrol(token, "db-1")
    assert refused.status_code == 403
    assert list(refused.json()["error"]["fields"]) == ["agent_id"]
    assert enrol(token, "edge-9").status_code == 201


def test_a_refused_enrolment_is_logged_with_the_fields(operator, caplog):
    _row, token = registry_actions.create_enrolment_token(operator)
    with caplog.at_level(logging.WARNING, logger="aegis.api"):
        assert enrol(token, "rogue-2", labels={"role": "db-primary"}).status_code == 403
    (line,) = [record for record in caplog.records if getattr(record, "event", "") == "enrolment_refused"]
    assert (line.code, line.agent_id, line.token_prefix) == ("outside_policy", "rogue-2", token[:8])
    assert list(line.fields) == ["labels"]
    assert token not in caplog.text


def test_a_bound_token_claiming_an_agent_lets_it_repeat_its_operator_labels(operator):
    Agent.objects.create(pk="db-main", labels={"role": "db-primary"})
    _row, bound = registry_actions.create_enrolment_token(operator, agent_id="db-main")
    assert enrol(bound, "db-main", labels={"role": "db-primary"}).status_code == 201
    assert Agent.objects.get(pk="db-main").labels == {"role": "db-primary"}

    _row, bound_again = registry_actions.create_enrolment_token(operator, agent_id="db-main")
    assert enrol(bound_again, "db-main", labels={"role": "db-replica"}).status_code == 403


def _hello(agent_id: str, **fields: Any) -> Incoming:
    body = {"agent_version": "1.0", "capabilities": [], "labels": {}, "max_concurrency": 2, "running": [], **fields}
    return Incoming(f"aegis/agents/{agent_id}/hello", envelope("hello", **body))


def test_an_mqtt_hello_cannot_widen_what_the_agent_enrolled_with(operator, caplog):
    _row, token = registry_actions.create_enrolment_token(
        operator, fixed_labels={"site": "lab"}, allowed_labels={"zone": ["eu-*"]}, allowed_capabilities=["echo"]
    )
    assert enrol(token, "edge-7", capabilities=["echo"], labels={"zone": "eu-1"}).status_code == 201

    with caplog.at_level(logging.WARNING, logger="aegis.registry"):
        ingest(
            [
                _hello(
                    "edge-7",
                    capabilities=["echo", "db-restore"],
                    labels={"role": "db-primary", "zone": "eu-2", "site": "prod"},
                )
            ],
            HeartbeatBuffer(),
        )

    agent = Agent.objects.get(pk="edge-7")
    assert agent.capabilities == ["echo"]
    assert agent.labels == {"zone": "eu-2", "site": "lab"}
    (line,) = [record for record in caplog.records if getattr(record, "event", "") == "policy_refused"]
    assert line.agent_id == "edge-7"
    assert line.capabilities == ["db-restore"]
    assert line.labels == {"role": "db-primary", "site": "prod"}


def test_operators_set_any_label_and_the_agents_hello_neither_removes_nor_changes_it(operator):
    _row, token = registry_actions.create_enrolment_token(operator, fixed_labels={"site": "lab"})
    assert enrol(token, "edge-8").status_code == 201
    staff = User.objects.create_superuser("root", password="pw-for-tests-only")
    admin_api = APIClient()
    admin_api.force_authenticate(staff)
    patched = admin_api.patch("/api/v1/agents/edge-8/", {"labels": {"role": "db-primary"}}, format="json")
    assert patched.status_code == 200, patched.content
    assert patched.json()["labels"] == {"role": "db-primary"}  # an operator's word, beyond the token's policy

    ingest([_hello("edge-8", labels={"role": "db-replica"})], HeartbeatBuffer())

    assert Agent.objects.get(pk="edge-8").labels == {"role": "db-primary", "site": "lab"}


def test_agents_made_by_operators_keep_saying_what_they_offer_in_their_hello(operator):
    """No enrolment token, no policy: an agent whose certificate an operator issued reports freely, as before."""
    ingest([_hello("cert-1", capabilities=["echo", "shell"], labels={"zone": "eu-1"})], HeartbeatBuffer())
    agent = Agent.objects.get(pk="cert-1")
    assert (agent.capabilities, agent.labels, agent.enrolment_policy) == (["echo", "shell"], {"zone": "eu-1"}, None)


def test_the_agent_keeps_the_policy_it_enrolled_with_when_the_token_changes(operator):
    row, token = registry_actions.create_enrolment_token(operator, allowed_capabilities=["echo"], uses=2)
    assert enrol(token, "keep-1", capabilities=["echo"]).status_code == 201
    registry_actions.set_enrolment_policy(row.pk, operator, allowed_capabilities=["*"])

    ingest([_hello("keep-1", capabilities=["echo", "shell"])], HeartbeatBuffer())

    assert Agent.objects.get(pk="keep-1").capabilities == ["echo"]
    assert enrol(token, "keep-2", capabilities=["shell"]).status_code == 201  # later enrolments: the new policy
    assert AuditEvent.objects.filter(action="enrolment_token.policy", object_id=str(row.pk)).exists()


def test_policy_matching():
    policy = EnrolmentPolicy(
        fixed_labels={"site": "lab"},
        allowed_labels={"*": ["*"], "role": ["web", "cache-?"]},
        allowed_capabilities=["echo", "deploy:*"],
    )
    assert policy.may_claim_label("anything", "x")
    assert policy.may_claim_label("role", "cache-1")
    assert not policy.may_claim_label("role", "db-primary")
    assert not policy.may_claim_label("site", "prod")
    assert policy.may_claim_label("site", "lab")
    assert policy.may_offer("deploy:web")
    assert not policy.may_offer("Echo")  # case-sensitive, like capability matching
    assert not EnrolmentPolicy().may_claim_label("zone", "eu-1")
    assert not EnrolmentPolicy().may_offer("echo")


def test_a_policy_never_holds_text_the_database_cannot_store():
    """The admin and the command reach the cleaners without the API's JSON parser, which refuses these first."""
    with pytest.raises(PolicyError):
        clean_fixed_labels({"zone": "\ud800"})
    with pytest.raises(PolicyError):
        clean_allowed_labels({"zone": ["eu\x00"]})
    with pytest.raises(PolicyError):
        clean_allowed_capabilities(["echo\x00"])


# --- operators: the API ------------------------------------------------------------------


@pytest.fixture
def admin_api() -> APIClient:
    client = APIClient()
    client.force_authenticate(User.objects.create_superuser("admin", password="pw-for-tests-only"))
    return client


def test_operators_create_and_change_a_tokens_policy_through_the_api(admin_api):
    created = admin_api.post(
        "/api/v1/enrolment-tokens/",
        {
            "name": "eu edge",
            "fixed_labels": {"site": "lab"},
            "allowed_labels": {"zone": ["eu-*"]},
            "allowed_capabilities": ["echo"],
            "agent_id_prefix": "edge-",
            "uses": 5,
        },
        format="json",
    )
    assert created.status_code == 201, created.content
    body = created.json()
    assert (body["fixed_labels"], body["allowed_labels"], body["allowed_capabilities"], body["agent_id_prefix"]) == (
        {"site": "lab"},
        {"zone": ["eu-*"]},
        ["echo"],
        "edge-",
    )
    url = f"/api/v1/enrolment-tokens/{body['id']}/"
    changed = admin_api.patch(url, {"allowed_capabilities": ["echo", "shell"]}, format="json")
    assert changed.status_code == 200, changed.content
    assert changed.json()["allowed_capabilities"] == ["echo", "shell"]
    assert changed.json()["allowed_labels"] == {"zone": ["eu-*"]}  # the parts not given stay
    assert admin_api.get(url).json()["allowed_capabilities"] == ["echo", "shell"]


def test_a_new_token_allows_nothing_and_the_old_labels_field_still_means_fixed_labels(admin_api):
    created = admin_api.post("/api/v1/enrolment-tokens/", {"labels": {"rack": "4"}}, format="json").json()
    assert (created["fixed_labels"], created["allowed_labels"], created["allowed_capabilities"]) == (
        {"rack": "4"},
        {},
        [],
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("allowed_labels", {"bad key!": ["*"]}),
        ("allowed_labels", {"zone": "eu-*"}),
        ("allowed_labels", ["zone"]),
        ("allowed_capabilities", ["has space"]),
        ("allowed_capabilities", "echo"),
        ("fixed_labels", {"zone": 5}),
        ("agent_id_prefix", "Edge "),
    ],
)
def test_a_malformed_policy_is_refused_naming_its_field(admin_api, field, value):
    answer = admin_api.post("/api/v1/enrolment-tokens/", {field: value}, format="json")
    assert answer.status_code == 400, answer.content
    assert list(answer.json()["error"]["fields"]) == [field]
    assert not EnrolmentToken.objects.exists()


# --- operators: the admin ----------------------------------------------------------------


def test_the_admin_creates_a_token_with_a_policy_shows_it_once_and_changes_the_policy(client):
    client.force_login(User.objects.create_superuser("boss", password="pw-for-tests-only"))
    form = {
        "name": "rack 4",
        "agent_id": "",
        "uses": "3",
        "ttl_hours": "",
        "agent_id_prefix": "rack4-",
        "fixed_labels": '{"rack": "4"}',
        "allowed_labels": '{"zone": ["eu-*"]}',
        "allowed_capabilities": '["echo"]',
    }
    page = client.post("/admin/registry/enrolmenttoken/add/", form)
    assert page.status_code == 200, page.content[:2000]
    row = EnrolmentToken.objects.get()
    token = page.context["token"]
    assert token.startswith("aen_")
    assert token.encode() in page.content
    assert "no-cache" in page["Cache-Control"]
    assert (row.name, row.uses_left, row.agent_id_prefix, row.fixed_labels) == ("rack 4", 3, "rack4-", {"rack": "4"})
    assert (row.allowed_labels, row.allowed_capabilities) == ({"zone": ["eu-*"]}, ["echo"])
    assert AuditEvent.objects.filter(action="enrolment_token.create", object_id=str(row.pk)).exists()
    assert enrol(token, "rack4-1", labels={"zone": "eu-1"}, capabilities=["echo"]).status_code == 201

    change = f"/admin/registry/enrolmenttoken/{row.pk}/change/"
    assert token.encode() not in client.get(change).content
    edited = {**form, "allowed_capabilities": '["echo", "shell"]'}
    assert client.post(change, edited).status_code == 302
    assert EnrolmentToken.objects.get().allowed_capabilities == ["echo", "shell"]
    assert AuditEvent.objects.filter(action="enrolment_token.policy", object_id=str(row.pk)).exists()

    refused = client.post(change, {**form, "allowed_labels": '{"zone": "eu-*"}'})
    assert refused.status_code == 200  # the form again, with the error
    assert "allowed_labels" in refused.context["adminform"].form.errors
    assert EnrolmentToken.objects.get().allowed_labels == {"zone": ["eu-*"]}

    revoked = client.post(
        "/admin/registry/enrolmenttoken/", {"action": "revoke", "_selected_action": [str(row.pk)]}, follow=True
    )
    assert revoked.status_code == 200
    assert EnrolmentToken.objects.get().revoked_at is not None


def test_the_admin_needs_add_agent_to_make_or_change_tokens(client):
    client.force_login(staff_user("viewer", ("registry.view_enrolmenttoken",)))
    assert client.get("/admin/registry/enrolmenttoken/").status_code == 200
    assert client.get("/admin/registry/enrolmenttoken/add/").status_code == 403
    assert client.post("/admin/registry/enrolmenttoken/add/", {"name": "x", "uses": "1"}).status_code == 403
    assert not EnrolmentToken.objects.exists()


# --- operators: manage.py create_enrolment_token -----------------------------------------


def test_the_command_prints_only_the_token_on_stdout_and_stores_its_policy():
    out, err = io.StringIO(), io.StringIO()
    call_command(
        "create_enrolment_token",
        "--name=eu edge",
        "--uses=20",
        "--agent-id-prefix=edge-",
        "--fixed-label=site=lab",
        "--allow-label=zone=eu-*",
        "--allow-label=zone=us-east-1",
        "--allow-label=rack=*",
        "--allow-capability=echo",
        stdout=out,
        stderr=err,
    )
    token = out.getvalue().strip()
    assert token.startswith("aen_")
    assert "\n" not in token
    row = EnrolmentToken.objects.get()
    assert (row.name, row.uses_left, row.agent_id_prefix) == ("eu edge", 20, "edge-")
    assert (row.fixed_labels, row.allowed_labels, row.allowed_capabilities) == (
        {"site": "lab"},
        {"zone": ["eu-*", "us-east-1"], "rack": ["*"]},
        ["echo"],
    )
    assert enrol(token, "edge-1", labels={"zone": "us-east-1"}, capabilities=["echo"]).status_code == 201


@pytest.mark.parametrize(
    "bad", ["--allow-label=zone", "--allow-label=bad key=x", "--allow-capability=has space", "--agent-id-prefix=Edge"]
)
def test_the_command_refuses_a_malformed_policy(bad):
    with pytest.raises(CommandError):
        call_command("create_enrolment_token", bad, stdout=io.StringIO(), stderr=io.StringIO())
    assert not EnrolmentToken.objects.exists()


# --- upgrading ---------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_upgrading_keeps_existing_tokens_enrolling_but_no_longer_lets_them_choose_labels():
    """The migration: an old token's labels become fixed ones, it allows any capability (as before), no labels."""
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    before, after = [("registry", "0005_agent_transport")], [("registry", "0006_enrolment_policy")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    old_state = executor.loader.project_state(before)
    old_token = old_state.apps.get_model("registry", "EnrolmentToken").objects.create(
        name="old",
        token_prefix="aen_old",
        token_hash=hash_token("aen_old-generic"),
        labels={"site": "lab"},
        uses_left=5,
    )
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(after)

    upgraded = EnrolmentToken.objects.get(pk=old_token.pk)
    assert (upgraded.fixed_labels, upgraded.allowed_labels, upgraded.allowed_capabilities) == (
        {"site": "lab"},
        {},
        ["*"],
    )
    assert registry_actions.create_enrolment_token(Actor("tester"))[0].allowed_capabilities == []  # new ones: none
    cache.clear()
    assert enrol("aen_old-generic", "old-1", capabilities=["echo", "shell"]).status_code == 201
    assert Agent.objects.get(pk="old-1").labels == {"site": "lab"}
    assert enrol("aen_old-generic", "old-2", labels={"role": "db-primary"}).status_code == 403
