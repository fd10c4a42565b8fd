from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from aegis_site.core.audit import Actor
from broker.management.broker_dir import broker_layout
from registry.actions import issue_agent_certificate
from registry.pki.crypto import InvalidAgentId


class Command(BaseCommand):
    help = "Issue an agent's client certificate (CN = agent id) and write cert, key and CA certificate."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("agent_id")
        parser.add_argument("--dir", type=Path, default=None, help="broker directory (default: settings.BROKER_DIR)")
        parser.add_argument(
            "--out", type=Path, default=None, help="directory for the agent's files (default: ./AGENT_ID)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        layout = broker_layout(options["dir"])
        out = options["out"] or Path(options["agent_id"])
        try:
            result = issue_agent_certificate(
                layout, options["agent_id"], Actor.system("issue_agent_cert"), out_directory=out
            )
        except InvalidAgentId as error:
            raise CommandError(str(error)) from error
        except FileNotFoundError as error:
            raise CommandError(f"no CA in {layout.directory}: run setup_broker first ({error})") from error
        bundle, issued = result.bundle, result.certificate.issued
        if bundle is None:  # issue_agent_certificate writes the files whenever out_directory is given
            raise CommandError(f"the certificate of {options['agent_id']} was issued but its files were not written")
        self.stdout.write(f"cert {bundle.cert}\nkey {bundle.key}\nca {bundle.ca_cert}")
        self.stdout.write(f"serial {issued.serial:x}\nsha256 {issued.fingerprint}\nexpires {issued.not_valid_after}")
