from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from broker.management.broker_dir import broker_layout
from registry.pki import rotation
from registry.pki.authorities import ca_standing, known_cas
from registry.pki.layout import CaLayout

SIGHUP_NOTE = (
    "Mosquitto: reload to pick up the new server certificate: kill -HUP <pid> (or systemctl reload mosquitto)."
)
BRIDGE_NOTE = "Bridge and dispatcher: restart them (run_bridge, run_dispatcher) to use the new client certificate."
RESTART_NOTE = "Mosquitto: RESTART it (systemctl restart mosquitto): it does not re-read its CA bundle on SIGHUP."


class Command(BaseCommand):
    help = "Re-issue the server/bridge certificates, or rotate the CA with an overlap window."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dir", type=Path, default=None, help="broker directory (default: settings.BROKER_DIR)")
        parser.add_argument("--server", action="store_true", help="re-issue the server certificate only")
        parser.add_argument("--bridge", action="store_true", help="re-issue the bridge certificate only")
        steps = parser.add_mutually_exclusive_group()
        steps.add_argument("--ca", action="store_true", help="start a CA rotation: new CA trusted next to the old")
        steps.add_argument("--finish-ca", action="store_true", help="sign with the new CA; re-issue server and bridge")
        steps.add_argument("--drop-old-ca", action="store_true", help="stop trusting the old CA")
        parser.add_argument(
            "--force",
            action="store_true",
            help="with --drop-old-ca: drop it even though agents still hold a certificate from it (they are cut off)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        layout = broker_layout(options["dir"])
        if options["force"] and not options["drop_old_ca"]:
            raise CommandError("--force only goes with --drop-old-ca")
        try:
            if options["ca"]:
                self._report(rotation.start_ca_rotation(layout), layout)
                self.stdout.write(RESTART_NOTE)
                self.stdout.write(
                    f"Agents: give each the new trust bundle {layout.ca_bundle} as its CA file "
                    "(agents issued from now on get it in their ca.crt), then run rotate_certs --finish-ca."
                )
            elif options["finish_ca"]:
                result = rotation.finish_ca_rotation(layout)
                self._report(result, layout)
                if result.changed:
                    self.stdout.write(SIGHUP_NOTE + " Restart instead if this is the first restart since --ca.")
                    self.stdout.write(BRIDGE_NOTE)
                    self.stdout.write(
                        "Agents: re-issue their certificates (issue_agent_cert) to move them to the new CA; "
                        "old-CA certificates keep working until rotate_certs --drop-old-ca."
                    )
            elif options["drop_old_ca"]:
                result = rotation.drop_old_ca(layout, force=options["force"])
                self._report(result, layout)
                for holder in result.cut_off:
                    self.stdout.write(
                        self.style.WARNING(
                            f"Cut off: {holder.agent_id} (serial {holder.serial}, CA {holder.issuer}) is refused "
                            "once Mosquitto restarts; re-issue it with issue_agent_cert."
                        )
                    )
                if result.changed:
                    self.stdout.write(RESTART_NOTE)
            else:
                both = not (options["server"] or options["bridge"])
                issued = rotation.rotate_leaf_certs(
                    layout, server=both or options["server"], bridge=both or options["bridge"]
                )
                self.stdout.write(f"Re-issued with the current CA: {', '.join(issued)}")
                if "server" in issued:
                    self.stdout.write(SIGHUP_NOTE)
                if "bridge" in issued:
                    self.stdout.write(BRIDGE_NOTE)
        except rotation.RotationError as error:
            raise CommandError(str(error)) from error

    def _report(self, result: rotation.StepResult, layout: CaLayout) -> None:
        state = result.state
        for note in result.notes:
            self.stdout.write(f"Nothing to do: {note}.")
        if result.issued:
            self.stdout.write(f"Issued: {', '.join(result.issued)}")
        self.stdout.write(f"CA state ({layout.ca_state}): phase={state.phase} signing={state.signing}")
        cas = known_cas(layout)
        for identifier in state.trusted:
            subject = cas[identifier].subject.rfc4514_string() if identifier in cas else "?"
            self.stdout.write(f"  trusted: {identifier} {ca_standing(state, identifier)} {subject}")
        self.stdout.write(f"  bundle: {layout.ca_bundle}")
