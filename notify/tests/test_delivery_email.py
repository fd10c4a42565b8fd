"""E-mail notifications through Django's SMTP backend to a real SMTP server (aiosmtpd) started by the test."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from email import message_from_bytes
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from notify import delivery
from notify.models import DeliveryAttempt, DeliveryState
from notify.tests.receiver import event_for, failed_task, subscription
from tests.support import free_port

pytestmark = pytest.mark.django_db


class Inbox:
    """aiosmtpd handler: keeps every message it accepts."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 OK"


@pytest.fixture
def smtp(settings: Any) -> Iterator[Inbox]:
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = controller.port
    settings.EMAIL_USE_TLS = False
    settings.EMAIL_USE_SSL = False
    settings.EMAIL_HOST_USER = ""
    settings.EMAIL_HOST_PASSWORD = ""
    settings.NOTIFY_EMAIL_FROM = "aegis@example.org"
    yield inbox
    controller.stop()


def test_an_email_reaches_the_smtp_server(smtp: Inbox) -> None:
    sub = subscription(target_kind="email", emails=["ops@example.org", "oncall@example.org"])
    item = event_for(sub, "task.failed", failed_task(5), job_id=7)
    with ThreadPoolExecutor(4) as pool:
        assert delivery.Notifier().step(pool) == 1
    ((mail_from, rcpt_tos, content),) = smtp.messages
    assert mail_from == "aegis@example.org"
    assert sorted(rcpt_tos) == ["oncall@example.org", "ops@example.org"]
    mail = message_from_bytes(content)
    assert mail["Subject"].startswith("[aegis] task.failed: task 5 of job 7 (echo) failed on agent-5")
    body = mail.get_payload(decode=True).decode()
    assert "exit 1 on 5" in body
    assert item.event_id in body
    item.refresh_from_db()
    assert item.state == DeliveryState.SUCCEEDED


def test_an_unreachable_smtp_server_is_retried(settings: Any) -> None:
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = free_port()  # nothing listens there
    item = event_for(subscription(target_kind="email", emails=["ops@example.org"]))
    with ThreadPoolExecutor(4) as pool:
        delivery.Notifier().step(pool)
    item.refresh_from_db()
    assert item.state == DeliveryState.PENDING
    assert DeliveryAttempt.objects.get(delivery=item).error


def test_no_addresses_is_dead() -> None:
    item = event_for(subscription(target_kind="email", emails=[]))
    with ThreadPoolExecutor(4) as pool:
        delivery.Notifier().step(pool)
    item.refresh_from_db()
    assert (item.state, item.last_error) == (DeliveryState.DEAD, "no e-mail addresses")
