from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from aegis_site.core.audit import Actor
from broker.management.broker_dir import broker_layout
from registry.actions import revoke_agent_certificates
from registry.pki.agents import agent_cert_issuers


class Command(BaseCommand):
    help = "Revoke an agent's client certificate(s): registry credential(s) and the broker's CRL (crl.pem)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("agent_id")
        parser.add_argument("--dir", type=Path, default=None, help="broker directory (default: settings.BROKER_DIR)")
        parser.add_argument("--serial", help="revoke only this certificate (hex serial); default: all of the agent's")

    def handle(self, *args: Any, **options: Any) -> None:
        layout = broker_layout(options["dir"])
        try:
            result = revoke_agent_certificates(
                layout, options["agent_id"], Actor.system("revoke_agent_cert"), serial=options["serial"]
            )
        except ValueError as error:
            raise CommandError(str(error)) from error
        issuers = agent_cert_issuers(layout)
        for serial in result.serials:
            fresh = "revoked" if serial in result.newly_revoked else "already revoked"
            self.stdout.write(f"serial {serial} (CA {issuers.get(serial) or 'unknown'}): {fresh}")
        self.stdout.write(f"registry credentials revoked: {len(result.credentials_revoked)}")
        self.stdout.write(f"CRL written: {layout.crl} (mosquitto.conf references it with crlfile)")
        self.stdout.write(
            "Mosquitto reads the CRL when it starts: restart it (systemctl restart mosquitto) so that it refuses "
            "the revoked certificate at the TLS handshake. Connections already open stay open until then."
        )
