"""OpenAPI details drf-spectacular cannot infer: our bearer schemes and the one error shape on every operation."""

from __future__ import annotations

from typing import Any, Literal

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from rest_framework import serializers


class ErrorDetailSerializer(serializers.Serializer[Any]):
    code = serializers.CharField(help_text="Stable, for programs: not_found, invalid, throttled, stale, ...")
    message = serializers.CharField(help_text="For people.")
    # An error body's key, named like Serializer.fields: the stubs object to the shadowing.
    fields = serializers.DictField(required=False, help_text="Validation errors per field.")  # type: ignore[assignment]


class ErrorSerializer(serializers.Serializer[Any]):
    error = ErrorDetailSerializer()


_ALWAYS = {
    "400": "Invalid request (parameters or body).",
    "401": "Missing or invalid credentials.",
    "403": "Not allowed.",
    "404": "No such object.",
    "429": "Throttled.",
}
_WITH_BODY = {"413": "Body too large.", "415": "Not JSON."}
_WRITES = {"409": "The object's state does not allow this."}


class AegisAutoSchema(AutoSchema):
    def _get_response_bodies(self, direction: Literal["request", "response"] = "response") -> dict[str, Any]:
        responses: dict[str, Any] = super()._get_response_bodies(direction)
        errors = dict(_ALWAYS)
        if self.method in {"POST", "PUT", "PATCH"}:
            errors |= _WITH_BODY | _WRITES
        for code, description in errors.items():
            if code not in responses:
                responses[code] = self._get_response_for_code(ErrorSerializer, code)
                responses[code]["description"] = description
        return responses


class _Bearer(OpenApiAuthenticationExtension):
    description = ""

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {"type": "http", "scheme": "bearer", "description": self.description}


class AgentTokenScheme(_Bearer):
    target_class = "registry.api.authentication.AgentTokenAuthentication"
    name = "agentToken"
    description = "An agent's own token, `aeg_...` (from enrolment or rotation)."


class OperatorTokenScheme(_Bearer):
    target_class = "ops.api.authentication.OperatorTokenAuthentication"
    name = "operatorToken"
    description = "An operator's personal API token, `aeo_...`."


class JwtScheme(OpenApiAuthenticationExtension):
    target_class = "registry.api.authentication.AegisJWTAuthentication"
    name = "jwt"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "Short-lived access token from /api/v1/auth/token/ (operators) or /api/v1/agent/token/.",
        }
