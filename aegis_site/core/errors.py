"""Domain errors the actions raise, each with the HTTP ``status`` and the stable ``code`` it answers with.

``aegis_site/api/errors.py`` maps every ``DomainError`` by these attributes (it
imports no app for its errors): ``field`` names the request field at fault (a
400 with the message under ``fields``), ``details`` adds ids for clients
(``{"existing_job": 12}``). The apps subclass them for their own refusals
(``tasks.engine.checks.SpecRefused``, ``registry.actions.EnrolmentRefused``).
"""

from __future__ import annotations

from typing import Any, ClassVar


class DomainError(Exception):
    status: ClassVar[int] = 400
    code: str = "invalid"
    field: str = ""  # the request field at fault, if one is
    details: dict[str, Any] = {}


class NotFound(DomainError):
    status = 404
    code = "not_found"


class InvalidTransition(DomainError):
    """The object is not in a state that allows the operation (HTTP 409)."""

    status = 409
    code = "invalid_state"


class InvalidTarget(DomainError):
    """Unknown explicit agent ids: the API's plain validation answer (code ``invalid``), the reason under ``target``."""

    code = "invalid"
    field = "target"
