"""Mosquitto's ``aegis_auth`` plugin: built from ``aegis_auth.c`` next to this file.

The plugin binds every connection to its certificate (client id = CN for agents) and
refuses any subscription an agent has no business making; see the C file's header.
It needs a C compiler and the headers of ``mosquitto-dev`` and OpenSSL (Debian:
``apt-get install gcc mosquitto-dev libmosquitto-dev libssl-dev``). The container image
of the broker builds it itself (``deploy/mosquitto/Dockerfile``).

No Django import, like ``broker.mosquitto``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess  # nosec B404: runs the C compiler on our own source, no shell
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("aegis_auth.c")
PLUGIN_NAME = "aegis_auth.so"


class PluginBuildError(RuntimeError):
    """The plugin could not be compiled; the message says what to install."""


def source_digest() -> str:
    return hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]


def build(destination: Path, compiler: str | None = None) -> Path:
    """Compile the plugin to ``destination`` unless it is already built from this source.

    A ``<destination>.src`` file records which source it was built from, so an edited
    source rebuilds and an unchanged one costs nothing.
    """
    stamp = destination.with_name(destination.name + ".src")
    digest = source_digest()
    if destination.exists() and stamp.exists() and stamp.read_text().strip() == digest:
        return destination
    cc = compiler or os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise PluginBuildError("no C compiler: install gcc (and mosquitto-dev, libmosquitto-dev, libssl-dev)")
    destination.parent.mkdir(parents=True, exist_ok=True)
    # Compile beside the destination, then rename: a broker reading it never sees half a file.
    with tempfile.NamedTemporaryFile(dir=destination.parent, suffix=".so", delete=False) as partial:
        partial_path = Path(partial.name)
    command = [cc, "-O2", "-Wall", "-Wextra", "-fPIC", "-shared", "-o", str(partial_path), str(SOURCE), "-lcrypto"]
    try:
        try:
            result = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603  # nosec B603
        except OSError as error:
            raise PluginBuildError(f"cannot run the C compiler {cc!r}: {error}") from error
        if result.returncode != 0:
            raise PluginBuildError(
                f"compiling {SOURCE.name} failed (needs mosquitto-dev, libmosquitto-dev, libssl-dev):\n{result.stderr}"
            )
        partial_path.chmod(0o755)
        partial_path.replace(destination)
    finally:
        partial_path.unlink(missing_ok=True)
    stamp.write_text(digest + "\n")
    return destination
