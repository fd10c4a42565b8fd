"""The one hash for every bearer secret of the project (agent tokens, enrolment tokens, operator tokens)."""

from __future__ import annotations

import hashlib


def hash_token(token: str) -> str:
    """Tokens carry 256 random bits, so a fast hash is enough (no password stretching needed)."""
    return hashlib.sha256(token.encode()).hexdigest()
