"""The artifact actions' refusals, each with its HTTP status and stable code (``aegis_site.api.errors`` maps them)."""

from __future__ import annotations

from aegis_site.core.errors import DomainError


class ArtifactRefused(DomainError):
    """A request the limits or the verification refuse: 400, or the given status, with its own code."""

    def __init__(self, code: str, message: str, *, field: str = "", status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.field = field
        self.status = status  # type: ignore[misc]  # per refusal: a limit is a 400, a stale attempt a 409
