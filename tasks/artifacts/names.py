"""An artifact's name: what an agent may call a file, so that it is safe as a key, a path part and a download name."""

from __future__ import annotations

import re
import unicodedata

from tasks.artifacts.errors import ArtifactRefused

MAX_NAME_LENGTH = 200
# Letters, digits and a few punctuation marks; no separator, no control character, no leading dot.
_ALLOWED = re.compile(r"\A[\w][\w.+=@,-]*\Z")


def clean_name(name: str) -> str:
    """The name as given, once it is safe; a refusal (``invalid_name``) otherwise. Names are never rewritten.

    Rewriting (``../x`` to ``x``) would let two different requests collide silently;
    refusing says exactly what is wrong.
    """
    normalized = unicodedata.normalize("NFC", name)
    if not normalized or len(normalized) > MAX_NAME_LENGTH:
        raise ArtifactRefused("invalid_name", f"A name has 1 to {MAX_NAME_LENGTH} characters.", field="name")
    if "/" in normalized or "\\" in normalized or ".." in normalized:
        raise ArtifactRefused("invalid_name", "A name holds no path separator and no '..'.", field="name")
    if not _ALLOWED.match(normalized):
        raise ArtifactRefused(
            "invalid_name",
            "A name starts with a letter, digit or '_' and holds only letters, digits and . _ - + = @ ,",
            field="name",
        )
    return normalized
