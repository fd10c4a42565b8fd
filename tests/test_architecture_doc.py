"""docs/architecture.md's folder tree matches the folders: every package it names exists, and every
subpackage of an app or of the site's floors is named in that folder's entry."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("aegis_site/core", "aegis_site/api", "registry", "tasks", "broker", "ops")
NOT_CODE = {"tests", "migrations", "management", "templates", "static", "templatetags", "__pycache__"}


def tree() -> dict[str, str]:
    """Each folder of the tree block to the text of its entry (its line and the indented lines after it)."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = text.split("The folders, floor by floor:", 1)[1].split("```", 2)[1]
    entries: dict[str, str] = {}
    current = ""
    for line in block.splitlines():
        named = re.match(r"^(\S+)/\s", line)
        if named:
            current = named.group(1)
            entries[current] = ""
        if current:
            entries[current] += line + "\n"
    return entries


def test_every_folder_of_the_tree_exists() -> None:
    for folder in tree():
        assert (ROOT / folder).is_dir(), f"docs/architecture.md names {folder}/, which does not exist"


def test_every_subpackage_is_named_in_its_folders_entry() -> None:
    entries = tree()
    for folder in FOLDERS:
        entry = entries[folder]
        for child in sorted((ROOT / folder).iterdir()):
            if child.is_dir() and child.name not in NOT_CODE and (child / "__init__.py").exists():
                assert f"{child.name}/" in entry, f"{folder}/{child.name}/ is missing from docs/architecture.md"
