"""Domain errors the actions raise; the API maps them to 404/409/400 answers."""


class EngineError(Exception):
    code = "engine_error"


class NotFound(EngineError):
    code = "not_found"


class InvalidTransition(EngineError):
    """The object is not in a state that allows the operation (HTTP 409)."""

    code = "invalid_state"


class InvalidTarget(EngineError):
    code = "invalid_target"
