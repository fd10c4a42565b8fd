"""``manage.py create_enrolment_token``: a bootstrap token with its enrolment policy, for provisioning scripts.

The token alone goes to stdout (``TOKEN=$(manage.py create_enrolment_token ...)``);
what it allows goes to stderr.
"""

import re
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from aegis_site.core.audit import Actor
from registry import actions, policy
from registry.api.serializers import AGENT_ID_PREFIX_REGEX, AGENT_ID_REGEX


def key_value(text: str) -> tuple[str, str]:
    key, separator, value = text.partition("=")
    if not separator or not key:
        raise CommandError(f"{text!r}: use key=value")
    return key, value


class Command(BaseCommand):
    help = (
        "Create a bootstrap (enrolment) token. By default an agent enrolling with it may claim no label and no "
        "capability of its own: allow them with --allow-label and --allow-capability."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--name", default="", help="what it is for (shown in the admin and the audit log)")
        parser.add_argument("--agent-id", default="", help="the only agent id it enrols (it may claim that agent)")
        parser.add_argument("--agent-id-prefix", default="", help="new agent ids must start with this")
        parser.add_argument("--uses", type=int, default=1, help="how many enrolments it allows (default 1)")
        parser.add_argument("--ttl-hours", type=int, default=None, help="lifetime in hours (default: no expiry)")
        parser.add_argument(
            "--fixed-label", action="append", default=[], metavar="KEY=VALUE", help="always given; repeatable"
        )
        parser.add_argument(
            "--allow-label",
            action="append",
            default=[],
            metavar="KEY=PATTERN",
            help="a label value the agent may claim (glob; KEY '*' for any other key); repeatable",
        )
        parser.add_argument(
            "--allow-capability", action="append", default=[], metavar="PATTERN", help="glob; repeatable"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["agent_id"] and not re.match(AGENT_ID_REGEX, options["agent_id"]):
            raise CommandError("--agent-id: 1-63 of a-z, 0-9, '.', '_', '-', starting with a letter or digit")
        if options["agent_id_prefix"] and not re.match(AGENT_ID_PREFIX_REGEX, options["agent_id_prefix"]):
            raise CommandError("--agent-id-prefix: 1-32 of a-z, 0-9, '.', '_', '-', starting with a letter or digit")
        if not 1 <= options["uses"] <= 100_000:
            raise CommandError("--uses is 1 to 100000")
        if options["ttl_hours"] is not None and options["ttl_hours"] < 1:
            raise CommandError("--ttl-hours is at least 1")
        allowed: dict[str, list[str]] = {}
        for key, pattern in map(key_value, options["allow_label"]):
            allowed.setdefault(key, []).append(pattern)
        try:
            fixed = policy.clean_fixed_labels(dict(map(key_value, options["fixed_label"])))
            allowed = policy.clean_allowed_labels(allowed)
            capabilities = policy.clean_allowed_capabilities(options["allow_capability"])
        except policy.PolicyError as error:
            raise CommandError(f"{error.field}: {error}") from error
        enrolment, token = actions.create_enrolment_token(
            Actor.system("create_enrolment_token"),
            name=options["name"],
            agent_id=options["agent_id"],
            agent_id_prefix=options["agent_id_prefix"],
            fixed_labels=fixed,
            allowed_labels=allowed,
            allowed_capabilities=capabilities,
            uses=options["uses"],
            ttl=timedelta(hours=options["ttl_hours"]) if options["ttl_hours"] else None,
        )
        self.stderr.write(
            f"enrolment token {enrolment.pk} ({enrolment.token_prefix}…), {enrolment.uses_left} use(s); "
            f"fixed labels {fixed or 'none'}; may claim labels {allowed or 'none'}, "
            f"capabilities {capabilities or 'none'}. Shown once:"
        )
        self.stdout.write(token)
