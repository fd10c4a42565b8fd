"""Debian's chromium, driven by Playwright, with the flags a machine without internet needs.

Playwright's own browser download (``playwright install``) is never used: the
browser is the distribution's ``/usr/bin/chromium``, handed to Playwright as
``executable_path``.

Two of the issue's flags are not passed in ``args``, because Playwright owns them:
``headless=True`` makes Playwright add ``--headless`` itself, and Playwright refuses
a ``--user-data-dir`` argument ("pass user_data_dir to launch_persistent_context
instead"). So the browser is started with ``launch_persistent_context`` on a fresh,
empty directory, which Playwright passes on as ``--user-data-dir``. The smoke test
reads chrome://version to check that the running browser got every flag.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
REQUIRED_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
# What goes into ``args``: everything except what Playwright adds itself (see the module docstring).
LAUNCH_ARGS = [flag for flag in REQUIRED_FLAGS if flag != "--headless"]
APT_PACKAGES = ("chromium", "fonts-dejavu-core")  # a font, or the screenshots show boxes instead of text


def chromium_missing_reason() -> str | None:
    """Install Debian's chromium with apt if it is missing; the reason when it can't be had, else ``None``."""
    if CHROMIUM.exists():
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"{CHROMIUM} is missing and cannot be installed here (needs root and apt-get): apt-get install chromium"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *APT_PACKAGES]):
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)
        if result.returncode != 0 and command[1] == "install":
            return f"{CHROMIUM} is missing and `apt-get install chromium` failed: {result.stderr.strip()[-500:]}"
    return None if CHROMIUM.exists() else f"{CHROMIUM} is still missing after apt-get install chromium"


def launch_options(user_data_dir: Path) -> dict[str, Any]:
    """Keyword arguments for ``chromium.launch_persistent_context``."""
    return {
        "user_data_dir": str(user_data_dir),
        "executable_path": str(CHROMIUM),
        "headless": True,
        "args": LAUNCH_ARGS,
        "viewport": {"width": 1440, "height": 900},
        "locale": "en-GB",
        "timezone_id": "UTC",
    }
