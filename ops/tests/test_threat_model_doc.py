"""docs/operations.md "Threat model" names, for each limit, the setting that turns it and the test that
performs the attack: both must exist, or the section tells an operator something untrue."""

from __future__ import annotations

import re
from pathlib import Path

from django.conf import settings

DOC = Path(settings.BASE_DIR) / "docs" / "operations.md"


def threat_model() -> str:
    text = DOC.read_text()
    start = text.index("## Threat model")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def test_every_test_file_the_threat_model_names_exists():
    named = set(re.findall(r"`((?:[a-z_]+/)+test_[a-z0-9_]+\.py)`", threat_model()))
    assert len(named) >= 15
    missing = sorted(path for path in named if not (Path(settings.BASE_DIR) / path).exists())
    assert missing == []


def test_every_setting_the_threat_model_names_is_documented_in_the_readme():
    names = set(re.findall(r"`([A-Z][A-Z0-9_]{3,})`", threat_model()))
    readme = (Path(settings.BASE_DIR) / "README.md").read_text()
    code_constants = {"BROKER_PAYLOAD_FACTOR", "DATA_UPLOAD_MAX_MEMORY_SIZE"}
    undocumented = sorted(name for name in names - code_constants if f"`{name}`" not in readme)
    assert undocumented == []
