"""JSON types and field names are not negotiable: a wrong type or an unknown field is a 400, not a quiet guess.

DRF's fields coerce: ``"5"`` and ``5.0`` pass as integers, ``12`` as a string,
``"true"`` as a boolean. The OpenAPI document promises JSON types, and clients
that send the wrong one have a bug they should hear about. ``install()`` makes
the scalar fields check the JSON type first (``registry.apps`` calls it once).

DRF's serializers also drop the keys they do not know: a misspelt
``"target": {...}`` for ``target_agent_ids`` left a job with an empty target,
which means every agent of the fleet. ``install()`` makes every serializer that
reads an object refuse keys it has no writable field for: an unknown key is
``"Unknown field."`` (code ``unknown_field``), a read-only one ``"Read-only:
set by the server."`` (code ``read_only_field``), next to the other fields'
errors. Nested serializers check their own objects the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rest_framework import fields, serializers
from rest_framework.exceptions import ErrorDetail, ValidationError

UNKNOWN_FIELD = "unknown_field"
READ_ONLY_FIELD = "read_only_field"
UNKNOWN_MESSAGE = "Unknown field."
READ_ONLY_MESSAGE = "Read-only: set by the server."

_JSON_TYPES: list[tuple[type[fields.Field], tuple[type, ...]]] = [
    (fields.IntegerField, (int,)),
    (fields.FloatField, (int, float)),
    (fields.DecimalField, (int, float, str)),
    (fields.BooleanField, (bool,)),
    (fields.CharField, (str,)),
]


def install() -> None:
    for field_class, accepted in _JSON_TYPES:
        if getattr(field_class.to_internal_value, "_strict", False):
            continue
        field_class.to_internal_value = _checked(field_class.to_internal_value, accepted)  # type: ignore[method-assign]
    if not getattr(serializers.Serializer.to_internal_value, "_strict", False):
        serializers.Serializer.to_internal_value = _known_keys_only(serializers.Serializer.to_internal_value)  # type: ignore[method-assign]


def unexpected_keys(serializer: serializers.Serializer[Any], data: Mapping[str, Any]) -> dict[str, list[ErrorDetail]]:
    """The keys of ``data`` the serializer does not read: unknown ones and read-only ones, each with its message."""
    found: dict[str, list[ErrorDetail]] = {}
    for key in data:
        field = serializer.fields.get(key) if isinstance(key, str) else None
        if field is None:
            found[str(key)] = [ErrorDetail(UNKNOWN_MESSAGE, code=UNKNOWN_FIELD)]
        elif field.read_only:
            found[key] = [ErrorDetail(READ_ONLY_MESSAGE, code=READ_ONLY_FIELD)]
    return found


def _known_keys_only(original: Any) -> Any:
    def to_internal_value(self: serializers.Serializer[Any], data: Any) -> Any:
        unexpected = unexpected_keys(self, data) if isinstance(data, Mapping) else {}
        try:
            value = original(self, data)
        except ValidationError as refused:
            if unexpected and isinstance(refused.detail, dict):
                raise ValidationError({**refused.detail, **unexpected}) from None
            raise
        if unexpected:
            raise ValidationError(unexpected)
        return value

    to_internal_value._strict = True  # type: ignore[attr-defined]
    return to_internal_value


def _checked(original: Any, accepted: tuple[type, ...]) -> Any:
    def to_internal_value(self: fields.Field, data: Any) -> Any:
        wrong = not isinstance(data, accepted) or (isinstance(data, bool) and bool not in accepted)
        if wrong:
            raise ValidationError(f"Expected {' or '.join(_name(t) for t in accepted)}, got {_name(type(data))}.")
        return original(self, data)

    to_internal_value._strict = True  # type: ignore[attr-defined]
    return to_internal_value


def _name(kind: type) -> str:
    return {int: "integer", float: "number", str: "string", bool: "boolean", dict: "object", list: "array"}.get(
        kind, "null" if kind is type(None) else kind.__name__
    )


def refuse_body(data: Any) -> None:
    """For an endpoint that takes no parameters: a body with fields is refused, as unknown fields are elsewhere.

    ``data`` is ``request.data``: no body, ``{}`` or an empty form pass.
    """
    if isinstance(data, Mapping) and data:
        raise ValidationError({str(key): [ErrorDetail(UNKNOWN_MESSAGE, code=UNKNOWN_FIELD)] for key in data})
