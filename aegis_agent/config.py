"""Agent configuration: a JSON or TOML file, then command-line overrides."""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aegis_agent import __version__

AGENT_ID_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}\Z")


class ConfigError(ValueError):
    """The configuration cannot be used; the message says which setting and why."""


@dataclass
class AgentConfig:
    agent_id: str
    host: str = "127.0.0.1"
    # None: 8883 when TLS is configured, 1883 otherwise.
    port: int | None = None
    # TLS: all three paths, or none of them for plain TCP (tests, local brokers).
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_check_hostname: bool = True
    # Only for brokers that authenticate by password (the embedded dev broker).
    username: str | None = None
    password: str | None = None
    mqtt_version: int = 5  # 5, or 311 for brokers that only speak MQTT 3.1.1
    # Empty: advertise every handler kind the agent has.
    capabilities: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    max_concurrency: int = 4
    heartbeat_interval_s: float = 10.0
    heartbeat_qos: int = 0
    keepalive_s: int = 30
    session_expiry_s: int = 3600
    reconnect_min_s: int = 1
    reconnect_max_s: int = 60
    # Exact argv[0] values the `shell` handler may run; empty disables it.
    shell_allow: list[str] = field(default_factory=list)
    shell_timeout_s: float = 300.0
    # The result's stdout/stderr keep this many last bytes; the whole output streams as task.log chunks.
    shell_max_output_bytes: int = 64 * 1024
    # Task output (docs/task-output.md, "The agent"): small writes wait this long to share a chunk.
    output_flush_interval_s: float = 0.15
    # Unacknowledged output kept in memory, then in an overflow file in output_spool_dir (default: the
    # system's temporary directory); past both, output is dropped and a `system` chunk says how much.
    output_spool_memory_bytes: int = 8 * 1024 * 1024
    output_spool_dir: str | None = None
    output_spool_disk_bytes: int = 256 * 1024 * 1024
    shutdown_grace_s: float = 10.0
    # Artifacts (docs/artifacts.md, "In a handler"): the server's HTTP address and a file holding this
    # agent's API token, read at each upload (never logged). Without both, ctx.upload_artifact() fails.
    api_url: str | None = None
    api_token_file: str | None = None
    version: str = __version__

    def __post_init__(self) -> None:
        self.validate()

    @property
    def tls_enabled(self) -> bool:
        return self.tls_ca is not None

    @property
    def broker_port(self) -> int:
        if self.port is not None:
            return self.port
        return 8883 if self.tls_enabled else 1883

    def validate(self) -> None:
        if not isinstance(self.agent_id, str) or not AGENT_ID_RE.match(self.agent_id):
            raise ConfigError(f"agent_id {self.agent_id!r} must match [a-z0-9][a-z0-9._-]{{0,62}}")
        tls = (self.tls_ca, self.tls_cert, self.tls_key)
        if any(p is not None for p in tls) and not all(p is not None for p in tls):
            raise ConfigError("tls_ca, tls_cert and tls_key go together: set all three or none")
        for name in ("tls_ca", "tls_cert", "tls_key"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"{name}: no such file {path!r}")
        if self.mqtt_version not in (5, 311):
            raise ConfigError(f"mqtt_version must be 5 or 311, not {self.mqtt_version!r}")
        if self.port is not None and not 0 < self.port < 65536:
            raise ConfigError(f"port {self.port} is out of range")
        if self.max_concurrency < 1:
            raise ConfigError("max_concurrency must be at least 1")
        if self.heartbeat_interval_s <= 0:
            raise ConfigError("heartbeat_interval_s must be positive")
        if self.heartbeat_qos not in (0, 1):
            raise ConfigError("heartbeat_qos must be 0 or 1")
        if not 1 <= self.reconnect_min_s <= self.reconnect_max_s:
            raise ConfigError("need 1 <= reconnect_min_s <= reconnect_max_s")
        if not 0 < self.output_flush_interval_s <= 5:
            raise ConfigError("output_flush_interval_s must be above 0 and at most 5")
        if self.output_spool_memory_bytes < 64 * 1024:
            raise ConfigError("output_spool_memory_bytes must be at least 65536 (a few chunks)")
        if self.output_spool_disk_bytes < 0:
            raise ConfigError("output_spool_disk_bytes must be 0 (no overflow file) or more")
        if self.api_url is not None:
            parts = urllib.parse.urlsplit(self.api_url) if isinstance(self.api_url, str) else None
            if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(f"api_url {self.api_url!r} must be an http:// or https:// URL with a host")
        if self.api_token_file is not None and not Path(self.api_token_file).is_file():
            raise ConfigError(f"api_token_file: no such file {self.api_token_file!r}")
        if not all(isinstance(c, str) for c in self.capabilities + self.shell_allow):
            raise ConfigError("capabilities and shell_allow are lists of strings")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.labels.items()):
            raise ConfigError("labels map strings to strings")


_FIELDS = {f.name for f in dataclasses.fields(AgentConfig)}


def read_file(path: str | Path) -> dict[str, Any]:
    """The settings in a ``.json`` or ``.toml`` file, as a flat mapping."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    try:
        if path.suffix == ".toml":
            data: Any = tomllib.loads(raw.decode())
        elif path.suffix == ".json":
            data = json.loads(raw)
        else:
            raise ConfigError(f"config file {path} must end in .json or .toml")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid {path.suffix[1:].upper()}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a table/object at the top")
    return data


def build(settings: dict[str, Any], overrides: dict[str, Any] | None = None) -> AgentConfig:
    """An AgentConfig from file settings, with non-None overrides (command-line flags) on top."""
    merged = dict(settings)
    merged.update({k: v for k, v in (overrides or {}).items() if v is not None})
    unknown = sorted(set(merged) - _FIELDS)
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
    if "agent_id" not in merged:
        raise ConfigError("agent_id is required (in the config file or with --id)")
    try:
        return AgentConfig(**merged)
    except TypeError as exc:
        raise ConfigError(str(exc)) from exc


def load(path: str | Path | None, overrides: dict[str, Any] | None = None) -> AgentConfig:
    return build(read_file(path) if path is not None else {}, overrides)
