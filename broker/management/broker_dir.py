"""The broker directory the certificate commands work on: ``--dir``, else ``BROKER_DIR``; it must hold the CA."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.management.base import CommandError

from broker.mosquitto import BrokerLayout


def broker_layout(directory: Path | None, need_key: bool = True) -> BrokerLayout:
    """``need_key``: the command signs something (the CA's private key must be there, not only its certificate)."""
    chosen = directory or settings.BROKER_DIR
    if chosen is None:
        raise CommandError("pass --dir (or set BROKER_DIR)")
    layout = BrokerLayout(Path(chosen).resolve())
    if not (layout.ca_key if need_key else layout.ca_cert).exists():
        raise CommandError(f"no CA in {layout.directory}: run setup_broker first")
    return layout
