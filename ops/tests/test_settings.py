"""Settings come from the environment; bad values stop the process at start with a message naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_check(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "DEBUG", "SECRET_KEY"}}
    environment.update({"DATA_DIR": str(tmp_path), **env})
    return subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60
    )


def test_no_environment_at_all_works_with_a_generated_key_and_a_warning(tmp_path: Path) -> None:
    result = run_check(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "aegis.W001" in result.stderr + result.stdout
    assert (tmp_path / ".dev_secret_key").exists()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DATABASE_URL": "mysql://db/x"}, "DATABASE_URL must start with sqlite:// or postgres://"),
        ({"DATABASE_URL": "postgres://h/db", "DB_POOL_SIZE": "many"}, "DB_POOL_SIZE must be an integer"),
        ({"DATABASE_URL": "postgres://h/db", "DB_POOL_SIZE": "-1"}, "DB_POOL_SIZE must be >= 0"),
        ({"REDIS_URL": "http://x"}, "REDIS_URL must be a redis://"),
        ({"MQTT_URL": "tcp://x"}, "MQTT_URL must be an mqtt:// or mqtts:// URL"),
        ({"DEBUG": "0"}, "SECRET_KEY (or SECRET_KEY_FILE) must be set when DEBUG is off"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL must be one of"),
        ({"DISPATCHER_POLL_INTERVAL": "0"}, "DISPATCHER_POLL_INTERVAL must be > 0"),
    ],
)
def test_bad_configuration_fails_at_start_naming_the_variable(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    result = run_check(tmp_path, **env)
    assert result.returncode != 0
    assert message in result.stderr


def test_secret_key_can_come_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("a-secret-from-a-file-that-is-long-enough-for-django-0123456789")
    result = run_check(tmp_path, DEBUG="0", SECRET_KEY_FILE=str(secret), ALLOWED_HOSTS="example.org")
    assert result.returncode == 0, result.stderr
    assert "aegis.W001" not in result.stderr + result.stdout


def test_postgres_url_uses_the_connection_pool_sized_from_the_environment() -> None:
    code = (
        "import django, os; os.environ['DJANGO_SETTINGS_MODULE']='aegis_site.settings';"
        "from django.conf import settings as s; o=s.DATABASES['default']['OPTIONS']['pool'];"
        "print(o['min_size'], o['max_size'])"
    )
    environment = {**os.environ, "DATABASE_URL": "postgres://u@h:5432/db", "DB_POOL_SIZE": "3", "DB_MAX_OVERFLOW": "5"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.split() == ["3", "8"], result.stderr


def test_sqlite_uses_immediate_transactions_and_wal(tmp_path: Path) -> None:
    code = (
        "import os; os.environ['DJANGO_SETTINGS_MODULE']='aegis_site.settings';"
        "import django; django.setup(); from django.db import connection;"
        "c=connection.cursor(); c.execute('PRAGMA journal_mode'); print(c.fetchone()[0]);"
        "print(connection.settings_dict['OPTIONS']['transaction_mode'])"
    )
    environment = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    environment["DATA_DIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.split() == ["wal", "IMMEDIATE"], result.stderr


@pytest.mark.parametrize("deploy", [False, True])
@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"JWT_ALGORITHM": "none"}, "aegis.E002"),
        ({"JWT_ALGORITHM": "RS256"}, "aegis.E002"),  # would need a verifying key this project never configures
        ({"JWT_SIGNING_KEY": "abc"}, "aegis.E003"),
    ],
)
def test_unsafe_jwt_settings_refuse_to_start(tmp_path: Path, env: dict[str, str], message: str, deploy: bool) -> None:
    command = ["check", "--deploy"] if deploy else ["check"]
    environment = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "DEBUG", "SECRET_KEY"}}
    environment.update({"DATA_DIR": str(tmp_path), **env})
    result = subprocess.run(
        [sys.executable, "manage.py", *command], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert message in result.stderr


def test_a_long_random_jwt_key_passes(tmp_path: Path) -> None:
    result = run_check(tmp_path, JWT_SIGNING_KEY="k" * 32, JWT_ALGORITHM="HS512")
    assert result.returncode == 0, result.stderr
