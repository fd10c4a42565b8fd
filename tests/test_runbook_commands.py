"""The commands of docs/operations.md and the README's "without containers" set-up run as written.

``health_check`` runs as an operator types it, against daphne, the bridge and the dispatcher as processes
with the production defaults (``DEBUG=0`` and so ``HTTPS_ONLY`` on, ``ALLOWED_HOSTS`` of .env.example).
The broker commands run with only ``BROKER_DIR`` set, and Mosquitto is started as root from what
``setup_broker --user mosquitto`` wrote, as a host without containers starts it.
"""

from __future__ import annotations

import io
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from django.core.management import call_command
from django.test import override_settings

from aegis_site.core.models import RoleHeartbeat
from registry.models import AgentCredential, CredentialKind
from tests.roles import ROOT, role_env
from tests.support import free_port, wait_for

# What .env.example and the Kubernetes ConfigMap set: the public name and localhost, not 127.0.0.1.
PRODUCTION_HOSTS = "aegis.example.org,localhost"
SYSTEMD = ROOT / "deploy" / "systemd"


def unit_command(unit: str) -> list[str]:
    """The ``ExecStart`` of ``deploy/systemd/<unit>.service``, with the checkout at ROOT instead of /opt/aegis."""
    lines = (SYSTEMD / f"{unit}.service").read_text().splitlines()
    (command,) = [line.removeprefix("ExecStart=") for line in lines if line.startswith("ExecStart=")]
    venv_bin = str(Path(sys.executable).parent)
    return command.replace("/opt/aegis/.venv/bin", venv_bin).replace("/opt/aegis", str(ROOT)).split()


def test_the_systemd_units_pass_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    units = sorted([*SYSTEMD.glob("*.service"), *SYSTEMD.glob("*.target")])
    for unit in units:  # verify checks that ExecStart is executable: point it at this checkout
        text = unit.read_text().replace("/opt/aegis/.venv/bin", str(Path(sys.executable).parent))
        (tmp_path / unit.name).write_text(text.replace("/opt/aegis", str(ROOT)))
    done = subprocess.run(  # nosec B603
        [analyze, "verify", *(unit.name for unit in units)], cwd=tmp_path, capture_output=True, timeout=60
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, b"")
    for role in ("web", "bridge", "dispatcher"):  # they exit non-zero when they cannot work: restart them
        text = (SYSTEMD / f"aegis-{role}.service").read_text()
        assert "Restart=on-failure" in text
        assert "Requires=aegis-migrate.service" in text


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_documented_health_check_line_passes_against_production_roles(roles, tmp_path):
    production = {"HTTPS_ONLY": "1", "ALLOWED_HOSTS": PRODUCTION_HOSTS}  # role_env turns them off; the default is on
    port = free_port()
    # Each role as its systemd unit starts it (deploy/systemd), from this checkout and on a free port.
    web = [str(port) if arg == "8000" else arg for arg in unit_command("aegis-web")]
    roles.start("web", web, **production)
    roles.start("bridge", unit_command("aegis-bridge"), **production)
    roles.start("dispatcher", unit_command("aegis-dispatcher"), **production)
    wait_for(lambda: roles.alive("web") and _listening(port), "daphne to listen", timeout=60, interval=0.2)
    for role in ("bridge", "dispatcher"):
        wait_for(RoleHeartbeat.objects.filter(role=role).exists, f"a {role} heartbeat", timeout=60)

    # docs/operations.md, "Health checks", as written there but for the port
    argv = ["manage.py", "health_check", "healthz-comprehensive", f"127.0.0.1:{port}", "--forwarded-proto", "http"]
    done = subprocess.run(  # nosec B603
        [sys.executable, *argv], cwd=ROOT, env=role_env(tmp_path, **production), capture_output=True, timeout=60
    )
    assert done.returncode == 0, (done.stdout + done.stderr).decode(errors="replace")
    assert b"MqttBroker" in done.stdout  # the comprehensive report, not some other answer


@pytest.mark.django_db
def test_issue_agent_cert_with_only_broker_dir_set_writes_the_bundle_into_the_agent_directory(tmp_path, monkeypatch):
    broker_dir = tmp_path / "broker"
    monkeypatch.chdir(tmp_path)
    with override_settings(BROKER_DIR=str(broker_dir)):  # what BROKER_DIR in the environment gives
        call_command("setup_broker", stdout=io.StringIO())
        call_command("issue_agent_cert", "edge-01", stdout=io.StringIO())  # docs/operations.md, as written
    bundle = tmp_path / "edge-01"
    assert sorted(path.name for path in bundle.iterdir()) == ["ca.crt", "edge-01.crt", "edge-01.key"]
    assert (bundle / "edge-01.key").stat().st_mode & 0o777 == 0o600
    assert (bundle / "ca.crt").read_bytes() == (broker_dir / "ca.crt").read_bytes()
    assert AgentCredential.objects.filter(agent_id="edge-01", kind=CredentialKind.CERTIFICATE).count() == 1


def test_setup_broker_without_a_directory_names_the_setting(settings):
    settings.BROKER_DIR = None  # neither --dir nor BROKER_DIR
    with pytest.raises(Exception, match=r"pass --dir \(or set BROKER_DIR\)"):
        call_command("setup_broker", stdout=io.StringIO())


def _tls_handshake(port: int, broker_dir: Path) -> None:
    context = ssl.create_default_context(cafile=str(broker_dir / "ca.crt"))
    context.load_cert_chain(broker_dir / "bridge.crt", broker_dir / "bridge.key")
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    with context.wrap_socket(raw, server_hostname="localhost") as tls:  # closes raw too
        assert tls.version()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mosquitto") is None, reason="needs root and mosquitto")
@pytest.mark.django_db
def test_mosquitto_started_as_root_serves_tls_with_what_setup_broker_user_wrote_and_after_a_rotation():
    broker_uid = pwd.getpwnam("mosquitto").pw_uid
    # Not under pytest's tmp_path, whose parents are 0700: the user Mosquitto drops to must reach the directory,
    # as it reaches /etc/aegis/broker.
    with tempfile.TemporaryDirectory(prefix="aegis-cmds-") as parent:
        Path(parent).chmod(0o755)
        broker_dir = Path(parent) / "broker"
        port = free_port()
        # README "Without containers": setup_broker ... --user mosquitto, then mosquitto -c (as root)
        call_command(
            "setup_broker", "--dir", str(broker_dir), "--host", "127.0.0.1", "--port", str(port),
            "--user", "mosquitto", stdout=io.StringIO(),
        )  # fmt: skip
        assert (broker_dir / "server.key").stat().st_uid == broker_uid
        assert (broker_dir / "ca.key").stat().st_uid == 0  # the CA's key stays with root
        _serve_tls_once(broker_dir, port)
        # docs/ops-certs.md: rotate_certs, then reload/restart Mosquitto: the new key is still Mosquitto's to read.
        call_command("rotate_certs", "--dir", str(broker_dir), "--server", stdout=io.StringIO())
        assert (broker_dir / "server.key").stat().st_uid == broker_uid
        _serve_tls_once(broker_dir, port)


def _serve_tls_once(broker_dir: Path, port: int) -> None:
    broker = subprocess.Popen(  # nosec B603
        [shutil.which("mosquitto") or "mosquitto", "-c", str(broker_dir / "mosquitto.conf")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for(lambda: broker.poll() is not None or _listening(port), "mosquitto to listen", timeout=15)
        assert broker.poll() is None, broker.communicate()[0].decode(errors="replace")
        _tls_handshake(port, broker_dir)
    finally:
        broker.terminate()
        broker.wait(10)


def test_collectstatic_fills_static_root_for_whitenoise(tmp_path):
    static_root = tmp_path / "static"
    env = role_env(tmp_path, STATIC_ROOT=str(static_root), DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}")
    done = subprocess.run(  # nosec B603
        [sys.executable, "manage.py", "collectstatic", "--noinput"], cwd=ROOT, env=env, capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert (static_root / "admin" / "css" / "base.css").exists()
    assert (static_root / "aegis" / "dashboard.css").exists()
