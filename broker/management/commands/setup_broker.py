import os
import shlex
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from broker.mosquitto import DEFAULT_HOST, DEFAULT_PORT, mosquitto_command, write_broker_files
from broker.plugin import PluginBuildError


class Command(BaseCommand):
    help = (
        "Write the CA, Mosquitto's and the bridge's certificates, mosquitto.conf, the ACL and the aegis_auth"
        " plugin into a directory."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dir", type=Path, default=None, help="broker directory, created if missing (default: settings.BROKER_DIR)"
        )
        parser.add_argument("--host", default=DEFAULT_HOST, help="address the TLS listener binds to")
        parser.add_argument("--port", type=int, default=DEFAULT_PORT)
        parser.add_argument(
            "--dns-name", action="append", dest="dns_names", help="server certificate DNS SAN (repeatable)"
        )
        parser.add_argument(
            "--ip-address", action="append", dest="ip_addresses", help="server certificate IP SAN (repeatable)"
        )
        parser.add_argument("--log-file", type=Path, help="Mosquitto log file (default: stdout)")
        parser.add_argument("--user", help="user Mosquitto drops to when started as root (default: mosquitto)")
        parser.add_argument(
            "--force", action="store_true", help="replace the CA and certificates (invalidates agent certificates)"
        )
        parser.add_argument(
            "--plugin-path",
            help="where Mosquitto finds aegis_auth.so when its image carries it (default: compile it into --dir)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        directory = options["dir"] or settings.BROKER_DIR
        if directory is None:
            raise CommandError("pass --dir (or set BROKER_DIR)")
        try:
            files = write_broker_files(
                Path(directory),
                host=options["host"],
                port=options["port"],
                dns_names=options["dns_names"] or ["localhost"],
                ip_addresses=options["ip_addresses"] or ["127.0.0.1"],
                force=options["force"],
                log_file=options["log_file"],
                run_as_user=options["user"],
                plugin_path=options["plugin_path"],
            )
        except PluginBuildError as error:
            raise CommandError(f"{error}\nOr name the plugin Mosquitto's image carries: --plugin-path.") from error
        except KeyError as error:  # pwd: --user names no account
            raise CommandError(f"--user {options['user']}: no such user on this host") from error
        created = ", ".join(files.created) or "nothing (kept the existing CA and certificates)"
        self.stdout.write(f"Broker files in {files.layout.directory}; newly issued: {created}")
        for role, issued in (("ca", files.ca), ("server", files.server), ("bridge", files.bridge)):
            self.stdout.write(f"  {role}: CN={issued.common_name} serial={issued.serial:x} sha256={issued.fingerprint}")
        layout = files.layout
        if os.geteuid() == 0 and not options["user"]:
            self.stdout.write(
                self.style.WARNING(
                    "Started as root, Mosquitto reads server.key as user 'mosquitto': pass --user mosquitto"
                    " (it then owns server.key and the persistence directory)."
                )
            )
        elif options["user"] and os.geteuid() != 0:
            self.stdout.write(
                self.style.WARNING(
                    f"Not root, so the files stay yours: chown {options['user']} {layout.server_key} {layout.data}"
                )
            )
        self.stdout.write(shlex.join(mosquitto_command(files.layout)))
