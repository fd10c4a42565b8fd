"""``manage.py health_check ENDPOINT [HOST:PORT]``: django-health-check's command, made to work in production.

The library's command asks for ``https://`` whenever ``SECURE_SSL_REDIRECT`` is on (``HTTPS_ONLY``, the production
default), but daphne speaks plain HTTP (TLS ends at nginx or the Ingress), so it never reached the server; and it
sends the address it connects to as ``Host``, which ``ALLOWED_HOSTS`` refuses (400) unless that address is listed.
This one asks over plain HTTP for the endpoints exempt from the HTTPS redirect (``/healthz*``, what probes call) and
sends a host ``ALLOWED_HOSTS`` accepts. Arguments, output and exit status are the library's: 0 healthy, 1 a check
failed (the report is printed), 2 the server could not be asked. ``ops`` comes before ``health_check`` in
``INSTALLED_APPS`` so that this command is the one ``manage.py`` runs.
"""

from __future__ import annotations

import re
import sys
import urllib.error
import urllib.request
from typing import Any

from django.conf import settings
from django.core.management.base import CommandError
from django.urls import NoReverseMatch, reverse
from health_check.management.commands import health_check


def redirect_exempt(path: str) -> bool:
    """Whether ``SecurityMiddleware`` answers ``path`` over plain HTTP although ``SECURE_SSL_REDIRECT`` is on."""
    return any(re.search(pattern, path.lstrip("/")) for pattern in settings.SECURE_REDIRECT_EXEMPT)


class Command(health_check.Command):
    def handle(self, *args: Any, **options: Any) -> None:
        if not options["use_http"]:
            super().handle(*args, **options)
            return
        try:
            path = reverse(options["endpoint"])
        except NoReverseMatch as error:
            raise CommandError(f"no endpoint named {options['endpoint']!r}: {error}", returncode=2) from error
        secure = settings.SECURE_SSL_REDIRECT and not redirect_exempt(path)
        url = f"{'https' if secure else 'http'}://{options['addrport']}{path}"
        headers = {"Accept": "text/plain", "X-Forwarded-Proto": options["forwarded_proto"]}
        if host := options["forwarded_host"]:
            headers["Host"] = headers["X-Forwarded-Host"] = host
        if options["verbosity"] >= 2:
            self.stdout.write(f"Checking {url} with headers {headers}")
        request = urllib.request.Request(url, headers=headers)  # noqa: S310  # nosec B310  # http(s) only, above
        try:
            with urllib.request.urlopen(request, timeout=options["timeout"]) as response:  # noqa: S310  # nosec B310
                self.stdout.write(response.read().decode("utf-8", errors="replace"))
        except urllib.error.HTTPError as error:
            if error.code == 500:  # a check failed: the body names it
                self.stdout.write(error.read().decode("utf-8", errors="replace"))
                sys.exit(1)
            hint = " (is the host in ALLOWED_HOSTS? --forwarded-host names another)" if error.code == 400 else ""
            raise CommandError(f"{url} answered {error.code} {error.reason}{hint}", returncode=2) from error
        except OSError as error:  # URLError, a timeout, a refused connection
            raise CommandError(f"{url} is not reachable: {error}", returncode=2) from error
