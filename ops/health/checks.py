"""The project's own checks: the process serving, the MQTT broker, the roles' freshness, certificate expiry,
the notifier and its backlog.

Each raises ``ServiceUnavailable`` (unhealthy: the view answers 500) or
``ServiceWarning`` (reported, still healthy). Messages name what is wrong and
never carry a secret.
"""

from __future__ import annotations

import dataclasses
import datetime
import threading
import time
import uuid
from pathlib import Path

from cryptography import x509
from django.conf import settings
from django.db import connection
from health_check.base import HealthCheck
from health_check.exceptions import ServiceUnavailable, ServiceWarning

from aegis_site.core import clock
from aegis_site.core.models import RoleHeartbeat
from notify.models import Delivery, DeliveryState, Subscription


@dataclasses.dataclass
class Serving(HealthCheck):
    """The process serves requests (it ran this check): liveness, with no database or broker involved."""

    async def run(self) -> None:
        return None


@dataclasses.dataclass
class RoleFreshness(HealthCheck):
    """A bridge or dispatcher process recorded a heartbeat within ``ROLE_STALE_AFTER`` seconds."""

    role: str = "dispatcher"

    def run(self) -> None:
        try:
            latest = RoleHeartbeat.objects.filter(role=self.role).order_by("-beat_at").first()
        finally:
            # Checks run on the view's executor threads, outside any request: give the connection back
            # (with the pool on, a kept one would starve the next requests).
            connection.close()
        if latest is None:
            raise ServiceUnavailable(f"no {self.role} has ever reported")
        age = (clock.now() - latest.beat_at).total_seconds()
        if age > settings.ROLE_STALE_AFTER:
            raise ServiceUnavailable(f"{self.role} last reported {age:.0f}s ago ({latest.instance})")


# The broker check's last outcome per configuration: (checked at, monotonic; the failure, or "" when it answered).
_broker_outcomes: dict[tuple[str, ...], tuple[float, str]] = {}
_broker_lock = threading.Lock()


@dataclasses.dataclass
class MqttBroker(HealthCheck):
    """A real CONNECT/CONNACK with the bridge's settings and TLS identity, then DISCONNECT.

    ``/healthz/comprehensive`` answers anyone, so the outcome is reused for
    ``HEALTH_BROKER_CACHE_SECONDS`` and one check at a time runs (the others wait
    for it): a flood of calls makes at most one broker connection per period per
    process, never one each.
    """

    timeout: datetime.timedelta = dataclasses.field(default=datetime.timedelta(seconds=5), repr=False)

    def run(self) -> None:
        if not settings.MQTT_URL:
            raise ServiceWarning("MQTT_URL is not set (all-in-one mode: the embedded broker)")
        configuration = (settings.MQTT_URL, settings.MQTT_CA_FILE, settings.MQTT_CERT_FILE)
        with _broker_lock:
            checked = _broker_outcomes.get(configuration)
            if checked is None or time.monotonic() - checked[0] >= settings.HEALTH_BROKER_CACHE_SECONDS:
                checked = (time.monotonic(), self.connect_once())
                _broker_outcomes.clear()
                _broker_outcomes[configuration] = checked
        if checked[1]:
            raise ServiceUnavailable(checked[1])

    def connect_once(self) -> str:
        """What is wrong with the broker, or ``""`` when it answered CONNACK."""
        from broker.client import BrokerAddress, new_client

        address = BrokerAddress.configured()
        answered = threading.Event()
        outcome: list[str] = []
        client = new_client(f"aegis-health-{uuid.uuid4().hex[:12]}", address, persistent=False)

        def on_connect(_client: object, _userdata: object, _flags: object, reason: object, _props: object) -> None:
            outcome.append("" if not getattr(reason, "is_failure", False) else str(reason))
            answered.set()

        client.on_connect = on_connect
        try:
            client.connect(address.host, address.port, keepalive=10)
            client.loop_start()
            if not answered.wait(self.timeout.total_seconds()):
                return f"no CONNACK from {address.host}:{address.port}"
            if outcome[0]:
                return f"broker refused the connection: {outcome[0]}"
            return ""
        except OSError as exc:
            return f"cannot reach {address.host}:{address.port}: {exc.strerror or exc}"
        finally:
            client.disconnect()
            client.loop_stop()


@dataclasses.dataclass
class CertificateExpiry(HealthCheck):
    """The certificates this process uses: a warning under ``CERT_WARN_DAYS`` days, unhealthy once expired."""

    def run(self) -> None:
        paths = [Path(p) for p in (settings.MQTT_CA_FILE, settings.MQTT_CERT_FILE) if p]
        warnings = []
        for path in paths:
            try:
                certificates = x509.load_pem_x509_certificates(path.read_bytes())
            except (OSError, ValueError) as exc:
                raise ServiceUnavailable(f"cannot read {path.name}: {exc}") from exc
            for certificate in certificates:
                left = certificate.not_valid_after_utc - clock.now()
                name = f"{path.name} ({certificate.subject.rfc4514_string()})"
                if left.total_seconds() <= 0:
                    raise ServiceUnavailable(f"{name} expired {-left.days} days ago")
                if left.days < settings.CERT_WARN_DAYS:
                    warnings.append(f"{name} expires in {left.days} days")
        if warnings:
            raise ServiceWarning("; ".join(warnings))


@dataclasses.dataclass
class Notifications(HealthCheck):
    """With an enabled subscription, a notifier must heartbeat, and due deliveries must not wait long.

    No subscription: nothing to send, healthy without a notifier. A notifier silent past
    ``ROLE_STALE_AFTER`` is unhealthy (events pile up unsent); the oldest due delivery
    waiting more than ``backlog_warn_s`` is a warning (the notifiers are behind).
    Deliveries waiting for a retry are not due: a failing receiver does not raise this.
    """

    role: str = "notifier"
    backlog_warn_s: float = 600.0

    def run(self) -> None:
        try:
            if not Subscription.objects.filter(enabled=True).exists():
                return
            latest = RoleHeartbeat.objects.filter(role=self.role).order_by("-beat_at").first()
            now = clock.now()
            due = Delivery.objects.filter(state=DeliveryState.PENDING, next_attempt_at__lte=now)
            oldest = due.order_by("next_attempt_at").values_list("next_attempt_at", flat=True).first()
        finally:
            connection.close()  # as RoleFreshness: checks run on executor threads, outside any request
        if latest is None:
            raise ServiceUnavailable(f"subscriptions exist but no {self.role} has ever reported")
        age = (now - latest.beat_at).total_seconds()
        if age > settings.ROLE_STALE_AFTER:
            raise ServiceUnavailable(f"{self.role} last reported {age:.0f}s ago ({latest.instance})")
        waited = (now - oldest).total_seconds() if oldest is not None else 0.0
        if waited > self.backlog_warn_s:
            raise ServiceWarning(f"the oldest due notification has waited {waited:.0f}s")
