"""JSON types are not negotiable: a string where the schema says integer is a 400, not a quiet conversion.

DRF's fields coerce: ``"5"`` and ``5.0`` pass as integers, ``12`` as a string,
``"true"`` as a boolean. The OpenAPI document promises JSON types, and clients
that send the wrong one have a bug they should hear about. ``install()`` makes
the scalar fields check the JSON type first (``registry.apps`` calls it once).
"""

from __future__ import annotations

from typing import Any

from rest_framework import fields
from rest_framework.exceptions import ValidationError

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
