"""``python -m aegis_agent --config FILE [--id ID] [--host HOST] [--port PORT]``."""

from __future__ import annotations

import argparse
import sys

from aegis_agent import __version__, logs
from aegis_agent.agent import Agent
from aegis_agent.config import ConfigError, load


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m aegis_agent", description="Aegis reference agent")
    parser.add_argument("--config", help="agent settings, .json or .toml")
    parser.add_argument("--id", dest="agent_id", help="agent id (overrides the file)")
    parser.add_argument("--host", help="broker host")
    parser.add_argument("--port", type=int, help="broker port (default 8883 with TLS, 1883 without)")
    parser.add_argument("--tls-ca", help="CA certificate that signed the broker's certificate")
    parser.add_argument("--tls-cert", help="this agent's client certificate (CN = agent id)")
    parser.add_argument("--tls-key", help="this agent's private key")
    parser.add_argument("--max-concurrency", type=int)
    parser.add_argument("--mqtt-version", type=int, choices=(5, 311))
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    parser.add_argument("--version", action="version", version=f"aegis-agent {__version__}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        logs.configure(args.log_level)  # LOG_FORMAT: plain or json, the control plane's lines
    except ValueError as exc:
        print(f"aegis_agent: {exc}", file=sys.stderr)
        return 2
    overrides = {
        "agent_id": args.agent_id,
        "host": args.host,
        "port": args.port,
        "tls_ca": args.tls_ca,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "max_concurrency": args.max_concurrency,
        "mqtt_version": args.mqtt_version,
    }
    try:
        config = load(args.config, overrides)
    except ConfigError as exc:
        print(f"aegis_agent: configuration error: {exc}", file=sys.stderr)
        return 2
    Agent(config).run_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
