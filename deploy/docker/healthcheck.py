"""The image's HEALTHCHECK: one image runs every role, so the check looks at what the container runs.

- web (daphne): ``GET /healthz`` on its own port answers 200 (the process serves; liveness touches no database);
- bridge, dispatcher, notifier: the process recorded a role heartbeat within ``ROLE_STALE_AFTER`` (a role blocked on
  the database or the broker stops beating, which a port probe would not see);
- anything else (migrate, setup_broker, backup): healthy, there is nothing long-running to watch.

In a container the role is PID 1; ``--role``/``--pid``/``--port`` name another process (the tests do).
The web check imports no Django, so it costs a few milliseconds every interval.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path

ROLES = {"run_bridge": "bridge", "run_dispatcher": "dispatcher", "run_notifier": "notifier"}


def role_of(argv: list[str]) -> str | None:
    if any(Path(arg).name == "daphne" or arg == "daphne" for arg in argv):
        return "web"
    return next((ROLES[arg] for arg in argv if arg in ROLES), None)


def daphne_port(argv: list[str]) -> int:
    for flag in ("-p", "--port"):
        if flag in argv[:-1]:
            return int(argv[argv.index(flag) + 1])
    return 8000


def host_header() -> str:
    """A name ALLOWED_HOSTS accepts, else Django answers 400 and the check would fail for the wrong reason."""
    hosts = [host.strip() for host in os.environ.get("ALLOWED_HOSTS", "").split(",") if host.strip()]
    first = hosts[0].lstrip(".") if hosts else "localhost"
    return "localhost" if first == "*" else first


def check_web(port: int) -> str | None:
    request = urllib.request.Request(  # nosec B310  # a fixed http:// URL on loopback
        f"http://127.0.0.1:{port}/healthz", headers={"Host": host_header(), "Accept": "text/plain"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310  # nosec B310
            return None if response.status == 200 else f"/healthz answered {response.status}"
    except urllib.error.HTTPError as error:
        return f"/healthz answered {error.code}: {error.read()[:500].decode(errors='replace')}"
    except OSError as error:
        return f"/healthz unreachable: {error}"


def check_role(role: str, pid: int) -> str | None:
    """Reads the heartbeat this very process wrote (``aegis_site.core.roles.RoleBeacon`` names it ``host:pid``)."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aegis_site.settings")
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    import django

    django.setup()
    from django.conf import settings

    from aegis_site.core import clock
    from aegis_site.core.models import RoleHeartbeat

    instance = f"{socket.gethostname()}:{pid}"
    beat = RoleHeartbeat.objects.filter(role=role, instance=instance).values_list("beat_at", flat=True).first()
    if beat is None:
        return f"{role} {instance} has not recorded a heartbeat"
    age = (clock.now() - beat).total_seconds()
    if age > settings.ROLE_STALE_AFTER:
        return f"{role} {instance} last beat {age:.0f}s ago (ROLE_STALE_AFTER={settings.ROLE_STALE_AFTER:.0f})"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=("web", "bridge", "dispatcher"), help="default: from PID 1's command")
    parser.add_argument("--pid", type=int, default=1, help="the role's process (default 1: the container's)")
    parser.add_argument("--port", type=int, help="web: daphne's port (default: from its command, else 8000)")
    args = parser.parse_args()
    try:
        argv = Path(f"/proc/{args.pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        argv = []
    role = args.role or role_of(argv)
    if role is None:
        return 0
    problem = check_web(args.port or daphne_port(argv)) if role == "web" else check_role(role, args.pid)
    if problem:
        print(problem, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
