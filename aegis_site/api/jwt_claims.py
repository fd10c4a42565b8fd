"""An operator's JWTs carry a digest of the password they were issued under: a password change ends them.

The claim is an HMAC of the stored password hash (keyed with ``SECRET_KEY``, as Django's
session auth hash is), so it changes with every ``set_password`` and gives nothing to whoever
reads the token. The access check is in ``AegisJWTAuthentication``; the refresh check here
also refuses a removed or deactivated operator (a removed one answered 404, as if the URL were wrong).
Agents' JWTs name a credential instead (``registry.api.authentication.live_credential``).
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.utils.crypto import constant_time_compare, salted_hmac
from rest_framework.exceptions import AuthenticationFailed
from rest_framework_simplejwt.serializers import TokenObtainPairSerializer, TokenRefreshSerializer
from rest_framework_simplejwt.settings import api_settings
from rest_framework_simplejwt.tokens import Token

PASSWORD_CLAIM = "pwd"  # noqa: S105  # nosec B105  # the claim's name, not a password


def password_claim(user: Any) -> str:
    return salted_hmac("aegis.jwt.password", user.password, algorithm="sha256").hexdigest()[:32]


def issued_under_current_password(token: Token | Any, user: Any) -> bool:
    return constant_time_compare(str(token.get(PASSWORD_CLAIM, "")), password_claim(user))


class OperatorTokenObtainSerializer(TokenObtainPairSerializer):
    """``POST /api/v1/auth/token/``: the pair carries the password claim (the access token copies it)."""

    @classmethod
    def get_token(cls, user: Any) -> Token:
        token = super().get_token(user)
        token[PASSWORD_CLAIM] = password_claim(user)
        return token


class RefreshSerializer(TokenRefreshSerializer):
    """A refresh token of an operator who was removed, deactivated or changed password is refused (401)."""

    def validate(self, attrs: dict[str, Any]) -> dict[str, str]:
        refresh = self.token_class(attrs["refresh"])
        user_id = refresh.payload.get(api_settings.USER_ID_CLAIM)
        if user_id is not None:
            user = get_user_model().objects.filter(**{api_settings.USER_ID_FIELD: user_id}).first()
            if user is None or not user.is_active or not issued_under_current_password(refresh, user):
                raise AuthenticationFailed("No active account found for the given token.", "no_active_account")
        return super().validate(attrs)
