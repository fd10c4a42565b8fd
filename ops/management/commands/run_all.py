import logging
import os
import sys
from typing import Any

from django.conf import settings
from django.core import checks
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser

from aegis_site.logs import use_format
from ops.allinone import (
    EMBEDDED_BROKER_PORT,
    LOG_FORMAT,
    Supervisor,
    ensure_admin,
    port_in_use,
    restrict_data_files,
    role_commands,
)

log = logging.getLogger("aegis.allinone")

CHECK_LEVELS = {
    checks.DEBUG: logging.DEBUG,
    checks.INFO: logging.INFO,
    checks.WARNING: logging.WARNING,
    checks.ERROR: logging.ERROR,
    checks.CRITICAL: logging.CRITICAL,
}


class Command(BaseCommand):
    help = (
        "Run every role (web, dispatcher, bridge, an embedded broker without MQTT_URL, a few simulated agents) "
        "in one command for a laptop or a demo; prints an admin login. A role that exits is restarted with "
        "backoff; SIGTERM or SIGINT (Ctrl-C) stops them all."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000, help="The web role's port (make run PORT=...).")
        parser.add_argument(
            "--broker-port",
            type=int,
            default=EMBEDDED_BROKER_PORT,
            help="The embedded broker's port, without MQTT_URL (make run BROKER_PORT=...).",
        )
        parser.add_argument("--no-migrate", action="store_true")
        parser.add_argument("--agents", type=int, default=3, help="Simulated agents to start (0: none).")

    def execute(self, *args: Any, **options: Any) -> Any:
        # One format for the whole stream: the roles log in LOG_FORMAT (plain when unset), so run_all does too,
        # system check messages included (check() below), from its first line on.
        use_format(os.environ.get("LOG_FORMAT", LOG_FORMAT))
        return super().execute(*args, **options)

    def check(self, *args: Any, **kwargs: Any) -> None:
        """Django's system checks, each message one log line of the stream; an error still refuses to start."""
        messages = [message for message in checks.run_checks() if not message.is_silenced()]
        for message in messages:
            extra = {"check": message.id} | ({"hint": message.hint} if message.hint else {})
            log.log(CHECK_LEVELS.get(message.level, logging.ERROR), "%s", message.msg, extra=extra)
        serious = [message.id for message in messages if message.is_serious()]
        if serious:
            log.critical("system check errors; not starting", extra={"checks": ",".join(map(str, serious))})
            raise SystemExit(1)

    def handle(self, *args: Any, **options: Any) -> None:
        host, port, broker_port = options["host"], options["port"], options["broker_port"]
        busy = [f"{host}:{port} (PORT=)"] if port_in_use(host, port) else []
        if not settings.MQTT_URL and port_in_use("127.0.0.1", broker_port):
            busy.append(f"127.0.0.1:{broker_port} (BROKER_PORT=)")
        if busy:
            log.critical(
                "already in use: %s; another make run? Choose free ports: make run PORT=8001 BROKER_PORT=18831",
                ", ".join(busy),
            )
            raise SystemExit(1)
        restrict_data_files()  # before migrate writes a byte, and again on every start for older files
        if not options["no_migrate"]:
            call_command("migrate", interactive=False, verbosity=0)
        username, password = ensure_admin()
        log.info("Aegis Event Bus is starting: http://%s:%d/admin/", host, port)
        if password:
            log.info("Admin login: user %r, password %r", username, password)
        else:
            log.info("Admin user %r exists; reset its password with: manage.py changepassword %s", username, username)
        commands, env = role_commands(host, port, options["agents"], broker_port)
        sys.exit(Supervisor(commands, env).run())
