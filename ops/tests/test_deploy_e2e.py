"""docker-compose.yml's services, run here as plain processes: the same commands, arguments and environment,
with the container names swapped for this machine's loopback services and the volumes and secrets for
scratch directories. certs writes the broker files, Mosquitto starts from them, migrate runs once, then
web, bridge and dispatcher start behind nginx (its configuration from deploy/nginx/), and the reference
agent, with a certificate issued as the compose file's comment says, completes a job submitted through
the HTTPS API.

PostgreSQL (own database aegis_deploy_e2e), Redis and the mosquitto binary must be present; nginx is
optional (without it the API is called on daphne directly, with the headers nginx would set)."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from broker import plugin
from ops.tests.deploy_compose import ENV_EXAMPLE, ROOT, Service, load_compose, read_env_file, rewrite, service
from tests.support import free_port, wait_for

PG_ADMIN_URL = "postgres://postgres@127.0.0.1:5432/postgres"
DATABASE = "aegis_deploy_e2e"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
BROKER = "/etc/aegis/broker"
PLUGIN_IN_IMAGE = "/usr/lib/mosquitto/aegis_auth.so"


def reachable(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


pytestmark = [
    pytest.mark.skipif(not Path(MOSQUITTO).exists(), reason="mosquitto is not installed"),
    pytest.mark.skipif(not reachable(5432), reason="needs PostgreSQL on 127.0.0.1:5432"),
    pytest.mark.skipif(not reachable(6379), reason="needs Redis on 127.0.0.1:6379"),
    pytest.mark.timeout(240),
]


@dataclass
class Host:
    """Where the containers' names, volumes and secrets are on this machine."""

    root: Path
    mqtt_port: int = field(default_factory=free_port)
    web_port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def broker(self) -> Path:
        return self.root / "broker"

    def paths(self, svc: Service) -> dict[str, str]:
        volumes = {"broker": str(self.broker), "mosquitto-data": str(self.broker / "data")}
        mapped = {mount.target: volumes[mount.source] for mount in svc.mounts if mount.source in volumes}
        mapped |= {target: str(self.secrets / name) for target, name in svc.secret_paths().items()}
        return mapped

    def replacements(self, svc: Service) -> dict[str, str]:
        return self.paths(svc) | {
            "mosquitto:8883": f"127.0.0.1:{self.mqtt_port}",
            "redis:6379": "127.0.0.1:6379",
            # TRUSTED_PROXIES: nginx's network is loopback here (nginx, or the test sending nginx's headers).
            compose_subnet(): "127.0.0.1/32",
        }

    def command(self, svc: Service) -> list[str]:
        args = {"python": sys.executable, "daphne": str(Path(sys.executable).parent / "daphne"), "mosquitto": MOSQUITTO}
        # 0.0.0.0 in a container is the container's own interfaces: here, loopback only.
        args |= {"0.0.0.0": "127.0.0.1", "8883": str(self.mqtt_port), "8000": str(self.web_port)}  # nosec B104
        # The broker image's plugin (deploy/mosquitto/Dockerfile compiles broker/plugin/aegis_auth.c there).
        args[PLUGIN_IN_IMAGE] = str(plugin.build(self.root / "plugin" / plugin.PLUGIN_NAME))
        return [args.get(arg, rewrite(arg, self.paths(svc))) for arg in svc.command]

    def environment(self, svc: Service) -> dict[str, str]:
        keep = {"PATH", "HOME", "LANG", "TMPDIR"}
        env = {name: value for name, value in os.environ.items() if name in keep}
        env |= read_env_file(ENV_EXAMPLE)  # the optional env_file .env, as .env.example has it
        env |= {name: rewrite(value, self.replacements(svc)) for name, value in svc.environment.items()}
        return env | {"DATA_DIR": str(self.root / "data"), "ROLE_HEARTBEAT_INTERVAL": "1"}

    def run(self, svc: Service, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.command(svc), *extra],
            cwd=ROOT,
            env=self.environment(svc),
            capture_output=True,
            text=True,
            timeout=120,
        )

    def start(self, name: str, command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = (self.root / f"{name}.log").open("wb")
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)  # nosec B603
        self.processes[name] = process
        return process

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop_all(self) -> None:
        for process in reversed(list(self.processes.values())):
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()


def compose_subnet() -> str:
    return str(load_compose()["networks"]["default"]["ipam"]["config"][0]["subnet"])


def recreate_database() -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        connection.execute(f'CREATE DATABASE "{DATABASE}"')


def drop_database() -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    recreate_database()
    here = Host(tmp_path)
    try:
        yield here
    finally:
        here.stop_all()
        drop_database()


class Api:
    """HTTPS through nginx when it is installed, else daphne with the headers nginx sets."""

    def __init__(self, host: Host, public_host: str, nginx_port: int | None) -> None:
        self.public_host, self.nginx_port, self.web_port = public_host, nginx_port, host.web_port
        self.context = ssl.create_default_context(cafile=str(host.secrets / "tls.crt"))
        self.context.check_hostname = False  # we dial 127.0.0.1; the certificate itself is verified
        self.token = ""

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, str], Any]:
        headers = {"Host": self.public_host, "Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        connection: http.client.HTTPConnection
        if self.nginx_port:
            connection = http.client.HTTPSConnection("127.0.0.1", self.nginx_port, context=self.context, timeout=30)
        else:
            connection = http.client.HTTPConnection("127.0.0.1", self.web_port, timeout=30)
            headers |= {"X-Forwarded-For": "198.51.100.7", "X-Forwarded-Proto": "https"}
        try:
            connection.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
            response = connection.getresponse()
            raw = response.read()
            payload = json.loads(raw) if response.getheader("Content-Type", "").startswith("application/json") else raw
            return response.status, dict(response.getheaders()), payload
        finally:
            connection.close()


def start_nginx(host: Host) -> int | None:
    if not Path(NGINX).exists():
        return None
    https_port, http_port = free_port(), free_port()
    conf = (ROOT / "deploy/nginx/aegis.conf").read_text()
    for old, new in {
        "server app:8000": f"server 127.0.0.1:{host.web_port}",
        "listen 80 default_server": f"listen 127.0.0.1:{http_port} default_server",
        "listen 443 ssl default_server": f"listen 127.0.0.1:{https_port} ssl default_server",
        "/run/secrets/": f"{host.secrets}/",
        "/dev/stdout": str(host.root / "nginx-access.log"),
    }.items():
        assert old in conf, old
        conf = conf.replace(old, new)
    (host.root / "aegis.conf").write_text(conf)
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must read this 0700 scratch directory
    (host.root / "nginx.conf").write_text(
        f"{user}daemon off;\nworker_processes 1;\npid {host.root}/nginx.pid;\nerror_log {host.root}/nginx-error.log;\n"
        f"events {{}}\nhttp {{ include {host.root}/aegis.conf; }}\n"
    )
    host.start("nginx", [NGINX, "-c", str(host.root / "nginx.conf"), "-p", str(host.root)])
    wait_for(lambda: reachable(https_port), "nginx listening", timeout=10)
    return https_port


def test_the_compose_services_run_here_and_an_agent_completes_a_job_submitted_through_the_api(host: Host) -> None:
    compose = load_compose()
    example = read_env_file(ENV_EXAMPLE)
    # Secrets as an operator makes them; the database URL then names this machine's PostgreSQL.
    subprocess.run(["sh", "deploy/docker/make-secrets.sh", str(host.secrets)], cwd=ROOT, check=True, env=os.environ)
    (host.secrets / "database_url").write_text(f"postgres://postgres@127.0.0.1:5432/{DATABASE}")

    certs = service(compose, "certs")
    # Compose runs certs and Mosquitto as one unprivileged uid; as root here, Mosquitto would drop to
    # "mosquitto" and lose the 0600 keys, so it is told to stay (what setup_broker's --user is for).
    run = host.run(certs, *(["--user", "root"] if os.geteuid() == 0 else []))
    assert run.returncode == 0, run.stderr

    mosquitto = host.start("mosquitto", host.command(service(compose, "mosquitto")))
    wait_for(lambda: reachable(host.mqtt_port) or mosquitto.poll() is not None, "mosquitto listening", timeout=10)
    assert mosquitto.poll() is None, host.log("mosquitto")

    migrate = host.run(service(compose, "migrate"))
    assert migrate.returncode == 0, migrate.stderr
    app = service(compose, "app")
    create_admin = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "createsuperuser",
            "--noinput",
            "--username",
            "ops",
            "--email",
            "ops@example.org",
        ],
        cwd=ROOT,
        env=host.environment(app) | {"DJANGO_SUPERUSER_PASSWORD": "a-long-operator-password-42"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert create_admin.returncode == 0, create_admin.stderr

    roles = {"web": app, "bridge": service(compose, "bridge"), "dispatcher": service(compose, "dispatcher")}
    for name, svc in roles.items():
        host.start(name, host.command(svc), host.environment(svc))

    healthcheck = [sys.executable, "deploy/docker/healthcheck.py"]

    def healthy(*args: str) -> bool:
        for name, process in host.processes.items():
            assert process.poll() is None, f"{name} exited:\n{host.log(name)}"
        return (
            subprocess.run([*healthcheck, *args], cwd=ROOT, env=host.environment(app), capture_output=True).returncode
            == 0
        )

    wait_for(lambda: healthy("--role", "web", "--port", str(host.web_port)), "web healthy", timeout=60, interval=0.5)
    for role in ("bridge", "dispatcher"):
        pid = str(host.processes[role].pid)
        wait_for(lambda: healthy("--role", role, "--pid", pid), f"{role} heartbeat", timeout=60, interval=0.5)  # noqa: B023

    api = Api(host, example["PUBLIC_HOST"], start_nginx(host))
    status, headers, body = api.request(
        "POST", "/api/v1/auth/token/", {"username": "ops", "password": "a-long-operator-password-42"}
    )
    assert status == 200, body
    assert headers.get("Strict-Transport-Security", "").startswith("max-age=31536000")
    api.token = body["access"]
    if api.nginx_port:
        assert api.request("GET", "/metrics")[0] == 404  # not routed to the internet

    # The agent's bundle, issued the way docker-compose.yml's comment says (certs service, --out).
    bundle = host.root / "edge-01"
    issue = subprocess.run(
        [sys.executable, "manage.py", "issue_agent_cert", "edge-01", "--dir", str(host.broker), "--out", str(bundle)],
        cwd=ROOT,
        env=host.environment(certs),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert issue.returncode == 0, issue.stderr
    host.start(
        "agent",
        [
            sys.executable,
            "-m",
            "aegis_agent",
            "--id",
            "edge-01",
            "--host",
            "127.0.0.1",
            "--port",
            str(host.mqtt_port),
            "--tls-ca",
            str(bundle / "ca.crt"),
            "--tls-cert",
            str(bundle / "edge-01.crt"),
            "--tls-key",
            str(bundle / "edge-01.key"),
        ],
        os.environ | {"PYTHONPATH": str(ROOT)},
    )

    def agent_online() -> bool:
        status, _, page = api.request("GET", "/api/v1/agents/?connectivity=online")
        return status == 200 and any(agent["id"] == "edge-01" for agent in page["results"])

    wait_for(agent_online, "edge-01 online through the bridge", timeout=30, interval=0.5)

    status, _, job = api.request(
        "POST", "/api/v1/jobs/", {"kind": "echo", "target_agent_ids": ["edge-01"], "payload": {"n": 7}}
    )
    assert status == 201, job

    def finished() -> Any:
        state = api.request("GET", f"/api/v1/jobs/{job['id']}/")[2]["state"]
        return state if state in {"succeeded", "failed", "canceled"} else None

    assert wait_for(finished, "the job finished", timeout=60, interval=0.5) == "succeeded", host.log("dispatcher")
    status, _, tasks = api.request("GET", f"/api/v1/tasks/?job={job['id']}")
    task = api.request("GET", f"/api/v1/tasks/{tasks['results'][0]['id']}/")[2]
    assert task["result"] == {"n": 7}
    assert [event["to_state"] for event in task["events"]][-1] == "succeeded"
