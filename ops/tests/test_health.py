"""/healthz and /healthz/comprehensive against the real database, cache and Mosquitto (127.0.0.1:1883)."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection
from django.test import Client

from aegis_site.core import clock, roles
from aegis_site.core.models import RoleHeartbeat
from registry.pki import crypto
from tests.support import free_port

pytestmark = pytest.mark.django_db(transaction=True)

JSON = {"HTTP_ACCEPT": "application/json"}


def beat(role: str, age_s: float = 0) -> None:
    roles.record_role_heartbeat(role, f"host:{role}", clock.now())
    RoleHeartbeat.objects.filter(role=role).update(beat_at=clock.now() - timedelta(seconds=age_s))


@pytest.fixture
def healthy(settings: Any, tmp_path: Path) -> Any:
    settings.MQTT_URL = "mqtt://127.0.0.1:1883"
    settings.MQTT_CA_FILE = settings.MQTT_CERT_FILE = ""
    settings.DATA_DIR = tmp_path
    beat("bridge")
    beat("dispatcher")
    return settings


def failing(answer: Any) -> dict[str, str]:
    return {name: status for name, status in answer.json().items() if status != "OK"}


def test_liveness_and_readiness_are_json_on_request():
    for path in ("/healthz", "/healthz/ready"):
        answer = Client().get(path, **JSON)
        assert answer.status_code == 200
        assert list(answer.json().values()) == ["OK"]
        assert Client().get(f"{path}?format=json").json() == answer.json()


def test_comprehensive_is_healthy_when_everything_answers(healthy):
    answer = Client().get("/healthz/comprehensive", **JSON)
    assert answer.status_code == 200, answer.json()
    assert failing(answer) == {}
    # database, cache, broker, bridge, dispatcher, notifications, disk, memory, certificates
    assert len(answer.json()) == 9


def test_a_stale_dispatcher_makes_it_unhealthy_is_named_and_recovers(healthy):
    beat("dispatcher", age_s=600)
    answer = Client().get("/healthz/comprehensive", **JSON)
    assert answer.status_code == 500
    (name,) = failing(answer)
    assert "dispatcher" in name
    assert "last reported" in failing(answer)[name]
    beat("dispatcher")  # it reports again
    assert Client().get("/healthz/comprehensive", **JSON).status_code == 200


def test_a_role_that_never_reported_is_unhealthy(healthy):
    RoleHeartbeat.objects.filter(role="bridge").delete()
    answer = Client().get("/healthz/comprehensive", **JSON)
    assert answer.status_code == 500
    assert any("has ever reported" in status for status in failing(answer).values())


def test_an_unreachable_broker_is_unhealthy_and_recovers(healthy):
    healthy.MQTT_URL = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens: a stopped broker
    answer = Client().get("/healthz/comprehensive", **JSON)
    assert answer.status_code == 500
    assert list(failing(answer)) == ["MqttBroker()"], answer.json()
    healthy.MQTT_URL = "mqtt://127.0.0.1:1883"
    assert Client().get("/healthz/comprehensive", **JSON).status_code == 200


def test_a_dead_database_makes_readiness_fail_not_liveness_and_it_recovers():
    from django.db import connections

    default = connections["default"]
    live = default.settings_dict
    saved = dict(live)
    pooled = default.vendor == "postgresql" and "pool" in live.get("OPTIONS", {})
    if default.vendor == "postgresql":
        live["PORT"] = str(free_port())  # nothing listens there
        if pooled:
            live["OPTIONS"] = {**live["OPTIONS"], "pool": {**live["OPTIONS"]["pool"], "timeout": 1}}
            default.close_pool()  # the next connection comes from a pool built with the dead address
    else:
        live["NAME"] = "/nonexistent-dir/dead.sqlite3"
    try:
        answer = Client().get("/healthz/ready", **JSON)
        assert answer.status_code == 500
        assert any(name.startswith("Database") for name in failing(answer)), answer.json()
        # The process still serves: restarting it (what a failed liveness probe does) would cure nothing.
        assert Client().get("/healthz", **JSON).status_code == 200
    finally:
        live.clear()
        live.update(saved)
        if pooled:
            default.close_pool()
    assert Client().get("/healthz/ready", **JSON).status_code == 200


def _cert_file(tmp_path: Path, days: int) -> str:
    ca = crypto.create_ca(validity_days=3650)
    leaf = crypto.issue_agent_cert(ca, "edge-1", validity_days=days)
    path = tmp_path / "bridge.crt"
    path.write_bytes(leaf.cert_pem)
    return str(path)


def test_a_certificate_expiring_soon_warns_but_stays_healthy(healthy, tmp_path):
    healthy.MQTT_CERT_FILE = _cert_file(tmp_path, days=10)
    answer = Client().get("/healthz/comprehensive", **JSON)
    assert answer.status_code == 200, answer.json()
    (status,) = failing(answer).values()
    assert status.startswith("Warning")
    assert "expires in" in status


def test_an_expired_certificate_is_unhealthy(healthy, tmp_path):
    healthy.MQTT_CERT_FILE = _cert_file(tmp_path, days=1)
    beat("bridge")
    beat("dispatcher")
    later = clock.now() + timedelta(days=3)
    clock.set_clock(lambda: later)
    try:
        beat("bridge")
        beat("dispatcher")
        answer = Client().get("/healthz/comprehensive", **JSON)
    finally:
        clock.set_clock(None)
    assert answer.status_code == 500
    assert any("expired" in status for status in failing(answer).values())


def test_the_health_check_command_runs_from_the_shell(live_server, healthy):
    address = live_server.url.removeprefix("http://")
    call_command("health_check", "healthz", address, "--forwarded-proto", "http")
    beat("dispatcher", age_s=600)
    with pytest.raises(SystemExit) as exited:
        call_command("health_check", "healthz-comprehensive", address, "--forwarded-proto", "http")
    assert exited.value.code != 0


class CountingProxy(socketserver.ThreadingTCPServer):
    """A TCP relay to Mosquitto on 127.0.0.1:1883 that counts the connections made through it."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Relay)
        self.connections = 0


class Relay(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: Any = self.server
        server.connections += 1
        upstream = socket.create_connection(("127.0.0.1", 1883))
        pump = threading.Thread(target=self.copy, args=(upstream, self.request), daemon=True)
        pump.start()
        self.copy(self.request, upstream)
        pump.join(5)

    @staticmethod
    def copy(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, target):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def counting_proxy() -> Iterator[CountingProxy]:
    proxy = CountingProxy()
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    yield proxy
    proxy.shutdown()
    proxy.server_close()


def test_a_flood_of_anonymous_calls_opens_one_broker_connection(healthy, counting_proxy):
    healthy.MQTT_URL = f"mqtt://127.0.0.1:{counting_proxy.server_address[1]}"
    healthy.HEALTH_BROKER_CACHE_SECONDS = 60.0  # longer than the test: every call below falls in one period
    answers: list[int] = []

    def call() -> None:
        try:
            for _ in range(5):
                answers.append(Client(REMOTE_ADDR="203.0.113.7").get("/healthz/comprehensive", **JSON).status_code)
        finally:
            connection.close()

    callers = [threading.Thread(target=call) for _ in range(6)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(60)
    assert answers == [200] * 30
    assert counting_proxy.connections == 1


def test_the_broker_outcome_is_checked_again_after_the_cache_period(healthy, counting_proxy):
    healthy.MQTT_URL = f"mqtt://127.0.0.1:{counting_proxy.server_address[1]}"
    healthy.HEALTH_BROKER_CACHE_SECONDS = 0.2  # short, so that the test sees a period end
    assert Client().get("/healthz/comprehensive", **JSON).status_code == 200
    assert Client().get("/healthz/comprehensive", **JSON).status_code == 200
    assert counting_proxy.connections == 1
    time.sleep(0.3)
    assert Client().get("/healthz/comprehensive", **JSON).status_code == 200
    assert counting_proxy.connections == 2
