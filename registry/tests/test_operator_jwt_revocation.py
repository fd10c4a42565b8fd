"""An operator's JWTs (access and refresh) stop working when the password changes or the account goes away."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db

PASSWORD = "pw-for-tests-only"


@pytest.fixture
def operator_user(make_agent) -> User:
    make_agent("web-1")
    user = User.objects.create_user("jwt-op", password=PASSWORD, is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename="view_agent"))
    return user


def login(username: str = "jwt-op", password: str = PASSWORD) -> dict[str, Any]:
    answer = APIClient().post("/api/v1/auth/token/", {"username": username, "password": password}, format="json")
    assert answer.status_code == 200, answer.content
    return dict(answer.json())


def list_agents(access: str) -> int:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access}")
    return int(client.get("/api/v1/agents/").status_code)


def refresh(token: str) -> int:
    return int(APIClient().post("/api/v1/auth/token/refresh/", {"refresh": token}, format="json").status_code)


def test_a_password_change_ends_the_operators_jwts(operator_user):
    pair = login()
    assert list_agents(pair["access"]) == 200
    assert refresh(pair["refresh"]) == 200

    operator_user.set_password("a-new-password-for-tests")
    operator_user.save()

    assert list_agents(pair["access"]) == 401
    assert refresh(pair["refresh"]) == 401
    fresh = login(password="a-new-password-for-tests")
    assert list_agents(fresh["access"]) == 200


def test_deactivation_ends_the_operators_jwts(operator_user):
    pair = login()
    operator_user.is_active = False
    operator_user.save()
    assert list_agents(pair["access"]) == 401
    assert refresh(pair["refresh"]) == 401


def test_a_removed_operators_refresh_token_is_refused_as_a_credential(operator_user):
    pair = login()
    operator_user.delete()
    assert refresh(pair["refresh"]) == 401
    assert list_agents(pair["access"]) == 401


def test_a_jwt_without_the_password_claim_is_refused(operator_user):
    """A token minted before this check existed (or by anything else holding the key) carries no claim."""
    from rest_framework_simplejwt.tokens import RefreshToken

    bare = RefreshToken.for_user(operator_user)
    assert list_agents(str(bare.access_token)) == 401
    assert refresh(str(bare)) == 401
