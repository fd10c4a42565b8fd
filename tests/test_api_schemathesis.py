"""schemathesis against the live OpenAPI document: no 5xx, and every answer matches the schema.

Positive and negative cases (``schemathesis.toml``), in process through Django's
WSGI application, in the test's database with a small fleet and queue in it.
Operator paths run as a superuser's personal token, agent paths as an agent's
token, so the generated cases reach the views rather than stopping at 401.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.contrib.auth.models import User
from django.core import signals
from django.core.serializers.json import DjangoJSONEncoder
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, settings
from rest_framework.throttling import SimpleRateThrottle

from aegis_site.core.audit import Actor
from ops import actions as ops_actions
from registry import actions as registry_actions
from tasks import actions
from tasks.engine.submit import JobSpec


def live_schema() -> Any:
    """The document /api/schema/ serves, generated in process (no database needed), bound to the WSGI app."""
    document = SchemaGenerator().get_schema(request=None, public=True)
    loaded = schemathesis.openapi.from_dict(json.loads(json.dumps(document, cls=DjangoJSONEncoder)))
    loaded.app = get_wsgi_application()
    return loaded


@pytest.fixture
def in_test_transaction() -> Iterator[None]:
    """Calling the WSGI app directly fires request_started/finished, whose handler would close the test's
    database connection (Django's test client disconnects it the same way)."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


@pytest.fixture
def credentials(db: Any, in_test_transaction: None, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    # Thousands of requests in a few seconds: the throttles would answer 429 to most of them.
    monkeypatch.setattr(
        SimpleRateThrottle,
        "THROTTLE_RATES",
        dict.fromkeys(("anon", "agent", "operator", "enrol", "auth"), "1000000/min"),
    )
    admin = User.objects.create_superuser("schema-admin", password="pw-for-tests-only")
    _token, operator_token = ops_actions.issue_api_token(admin, "schemathesis", Actor.of_user(admin))
    registry_actions.register_agent("schema-agent", Actor("tester"), capabilities=["echo"], max_concurrency=5)
    _credential, agent_token = registry_actions.issue_token("schema-agent", Actor("tester"))
    actions.submit_job(JobSpec(kind="echo", target_agent_ids=["schema-agent"]), Actor.of_user(admin))
    actions.submit_job(JobSpec(kind="echo", mode="any", task_count=3, target_all=True), Actor.of_user(admin))
    return {"operator": operator_token, "agent": agent_token}


schema = live_schema()


@pytest.mark.django_db
@schema.parametrize()
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], deadline=None)
def test_api_conforms_to_its_schema(case: Any, credentials: dict[str, str]) -> None:
    # The fixture's data is shared by the examples of one operation: cases may change it, which is the point.
    who = "agent" if case.path.startswith("/api/v1/agent/") else "operator"
    case.call_and_validate(headers={"Authorization": f"Bearer {credentials[who]}"})
