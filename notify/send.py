"""Sending one delivery: an HTTP POST (webhook, Slack) or an e-mail, and what the answer means for it.

No database here: the notifier calls ``send`` outside any transaction (a slow receiver must
not hold locks) and records the ``Outcome`` afterwards. ``retry``: try again later
(timeouts, connection errors, 5xx, 429); ``refuse``: trying again would not help (other
4xx, a redirect, a blocked address, a bad target) and the delivery is dead-lettered.
"""

from __future__ import annotations

import functools
import logging
import smtplib
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Literal

import httpx
from django.conf import settings
from django.core.mail import EmailMessage, get_connection

from notify import render, signing
from notify.addresses import BlockedAddress, pin
from notify.models import TargetKind

# httpx logs each request's URL at INFO: a Slack incoming-webhook URL is a credential, kept out of the logs.
logging.getLogger("httpx").setLevel(logging.WARNING)

Verdict = Literal["delivered", "retry", "refuse"]


@dataclass(frozen=True)
class Target:
    """The subscription's target as it was at the claim."""

    kind: str
    url: str
    emails: tuple[str, ...]
    secret: str


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    status: int | None = None
    error: str = ""
    reason: str = ""  # the failure's kind, the label of aegis_notifications_failed_total
    retry_after: float | None = None  # seconds, from a Retry-After header
    duration_ms: int = 0


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date (``None``: absent or unreadable)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)


def _short(error: BaseException | str) -> str:
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return text[:500]


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The TLS context of every POST, built once per process.

    Building one loads certifi's CA bundle: about 10 ms of CPU, three quarters of what a send
    to a local receiver cost (bench/notifications.py's profile), paid per delivery when each
    ``httpx.Client`` made its own. A context is safe to share between the sender threads; each
    send still opens its own connection (no keep-alive across deliveries: the URL is pinned to
    an address, and a pooled connection must not carry another host's request).
    """
    return httpx.create_ssl_context(trust_env=False)


def post(url: str, body: bytes, headers: dict[str, str]) -> Outcome:
    """POST ``body`` to ``url`` pinned to its checked address; redirects are not followed."""
    try:
        pinned = pin(url)
    except BlockedAddress as error:
        return Outcome("refuse", error=_short(str(error)), reason="blocked")
    timeout = settings.NOTIFY_DELIVERY_TIMEOUT_S
    request_headers = {"content-type": "application/json", "user-agent": "aegis-notifier/1", **headers}
    request_headers.update(pinned.headers)
    started = time.monotonic()
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False, verify=tls_context()) as client:
            response = client.post(pinned.url, content=body, headers=request_headers, extensions=pinned.extensions)
    except httpx.TimeoutException as error:
        return Outcome("retry", error=_short(error) or "timeout", reason="timeout", duration_ms=_ms(started))
    except httpx.HTTPError as error:
        return Outcome("retry", error=_short(error), reason="connection", duration_ms=_ms(started))
    took = _ms(started)
    status = response.status_code
    if 200 <= status < 300:
        return Outcome("delivered", status=status, duration_ms=took)
    text = f"HTTP {status}: {response.text[:200]}".strip()
    if status == 429 or status >= 500:
        wait = retry_after_seconds(response.headers.get("retry-after"))
        reason = "http_429" if status == 429 else "http_5xx"
        return Outcome("retry", status=status, error=text, reason=reason, retry_after=wait, duration_ms=took)
    if 300 <= status < 400:
        return Outcome("refuse", status=status, error=f"HTTP {status}: redirects are not followed", reason="redirect")
    return Outcome("refuse", status=status, error=text, reason="http_4xx", duration_ms=took)


def send_email(target: Target, msg: render.Message) -> Outcome:
    """An e-mail through Django's e-mail backend; an SMTP 5xx refuses, anything else failing is retried."""
    if not target.emails:
        return Outcome("refuse", error="no e-mail addresses", reason="bad_target")
    subject, body = render.email(msg)
    started = time.monotonic()
    try:
        connection = get_connection(timeout=settings.NOTIFY_DELIVERY_TIMEOUT_S)
        EmailMessage(subject, body, settings.NOTIFY_EMAIL_FROM, list(target.emails), connection=connection).send()
    except smtplib.SMTPRecipientsRefused as error:
        codes = [code for code, _text in error.recipients.values()]
        verdict: Verdict = "refuse" if codes and all(code >= 500 for code in codes) else "retry"
        return Outcome(verdict, error=_short(error), reason="smtp", duration_ms=_ms(started))
    except smtplib.SMTPResponseException as error:
        verdict = "refuse" if error.smtp_code >= 500 else "retry"
        return Outcome(verdict, error=_short(error), reason="smtp", duration_ms=_ms(started))
    except (OSError, smtplib.SMTPException) as error:  # refused connection, timeout, dropped session
        return Outcome("retry", error=_short(error), reason="connection", duration_ms=_ms(started))
    return Outcome("delivered", duration_ms=_ms(started))


def send(target: Target, delivery_id: str, msg: render.Message) -> Outcome:
    """Send one delivery to its target; never raises for the receiver's faults."""
    if target.kind == TargetKind.EMAIL:
        return send_email(target, msg)
    if not target.url:
        return Outcome("refuse", error="no URL", reason="bad_target")
    body = render.slack_body(msg) if target.kind == TargetKind.SLACK else render.webhook_body(msg)
    return post(target.url, body, signing.headers(target.secret, delivery_id, body))


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
