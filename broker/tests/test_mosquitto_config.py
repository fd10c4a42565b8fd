"""The generated broker directory: what Mosquitto is told, and that re-running keeps the CA."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from broker import mosquitto
from registry.pki import crypto
from registry.pki.agents import write_agent_bundle

DESIGN_AGENT_RULES = [
    "pattern write aegis/agents/%u/hello",
    "pattern write aegis/agents/%u/heartbeat",
    "pattern write aegis/agents/%u/status",
    "pattern write aegis/agents/%u/events",
    "pattern write aegis/agents/%u/logs",
    "pattern read aegis/agents/%u/inbox",
]


def rules(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_acl_is_the_design_acl_with_broadcast_granted_to_every_user():
    assert rules(mosquitto.render_acl()) == [
        *DESIGN_AGENT_RULES,
        "pattern read aegis/broadcast",
        "user aegis-bridge",
        "topic readwrite aegis/#",
    ]


def test_conf_requires_a_client_certificate_as_identity(tmp_path):
    layout = mosquitto.BrokerLayout(tmp_path)
    conf = rules(mosquitto.render_conf(layout, host="0.0.0.0", port=18883))
    for directive in [
        "per_listener_settings false",
        "allow_anonymous false",
        f"acl_file {layout.acl}",
        "persistence true",
        f"persistence_location {layout.data}",
        f"max_packet_size {4 * 256 * 1024 + mosquitto.PACKET_OVERHEAD_BYTES}",
        "set_tcp_nodelay true",
        "log_dest stdout",
        "listener 18883 0.0.0.0",
        f"cafile {layout.ca_cert}",
        f"certfile {layout.server_cert}",
        f"keyfile {layout.server_key}",
        "require_certificate true",
        f"plugin {layout.plugin}",
        "plugin_opt_services aegis-bridge",
        "plugin_opt_agent_read aegis/agents/%u/inbox aegis/broadcast",
    ]:
        assert directive in conf
    # use_identity_as_username would skip the plugin's check of each CONNECT (client id = CN).
    assert not any(line.startswith(("use_identity_as_username", "use_subject_as_username")) for line in conf)
    # Listener options must follow their listener line.
    assert conf.index("require_certificate true") > conf.index("listener 18883 0.0.0.0")
    assert not any(line.startswith("user ") for line in conf)


def test_conf_can_log_to_a_file_and_name_the_user(tmp_path):
    conf = rules(mosquitto.render_conf(mosquitto.BrokerLayout(tmp_path), log_file=tmp_path / "m.log", run_as_user="mq"))
    assert f"log_dest file {tmp_path / 'm.log'}" in conf
    assert "user mq" in conf


def test_conf_refuses_paths_mosquitto_cannot_parse(tmp_path):
    with pytest.raises(ValueError):
        mosquitto.render_conf(mosquitto.BrokerLayout(tmp_path / "with space"))


def test_write_broker_files_is_idempotent_and_force_replaces_the_ca(tmp_path):
    first = mosquitto.write_broker_files(tmp_path / "broker")
    assert first.created == ("ca", "server", "bridge")
    layout = first.layout
    for key in (layout.ca_key, layout.server_key, layout.bridge_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert layout.data.is_dir()
    assert layout.acl.read_text() == mosquitto.render_acl()
    assert crypto.is_signed_by(first.server.certificate, first.ca.certificate)
    assert first.bridge.common_name == crypto.BRIDGE_CN

    again = mosquitto.write_broker_files(tmp_path / "broker")
    assert again.created == ()
    assert (again.ca, again.server, again.bridge) == (first.ca, first.server, first.bridge)

    forced = mosquitto.write_broker_files(tmp_path / "broker", force=True)
    assert forced.created == ("ca", "server", "bridge")
    assert forced.ca.fingerprint != first.ca.fingerprint
    assert crypto.is_signed_by(forced.bridge.certificate, forced.ca.certificate)


def test_server_cert_is_reissued_when_a_new_name_is_asked_for(tmp_path):
    first = mosquitto.write_broker_files(tmp_path)
    second = mosquitto.write_broker_files(tmp_path, dns_names=["localhost", "mosquitto"])
    assert second.created == ("server",)
    assert second.ca == first.ca
    assert crypto.subject_alt_names(second.server.certificate)[0] == ["localhost", "mosquitto"]


def test_agent_bundle_is_signed_by_the_broker_ca(tmp_path):
    files = mosquitto.write_broker_files(tmp_path / "broker")
    bundle = write_agent_bundle(tmp_path / "broker", "agent-a", tmp_path / "out")
    assert bundle.cert == tmp_path / "out" / "agent-a.crt"
    assert bundle.ca_cert.read_bytes() == files.ca.cert_pem
    assert stat.S_IMODE(bundle.key.stat().st_mode) == 0o600
    loaded = crypto.load_issued(bundle.cert, bundle.key)
    assert loaded.common_name == "agent-a"
    assert loaded.fingerprint == bundle.issued.fingerprint
    assert crypto.is_signed_by(loaded.certificate, files.ca.certificate)


def test_agent_bundle_refuses_the_bridge_name(tmp_path):
    mosquitto.write_broker_files(tmp_path / "broker")
    with pytest.raises(crypto.InvalidAgentId):
        write_agent_bundle(tmp_path / "broker", "aegis-bridge", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bridge_subscriptions_are_shared_and_cover_every_agent_topic():
    assert mosquitto.bridge_subscriptions() == [
        "$share/aegis/aegis/agents/+/hello",
        "$share/aegis/aegis/agents/+/heartbeat",
        "$share/aegis/aegis/agents/+/status",
        "$share/aegis/aegis/agents/+/events",
        "$share/aegis/aegis/agents/+/logs",
    ]


def test_mosquitto_command_points_at_the_conf(tmp_path):
    command = mosquitto.mosquitto_command(mosquitto.BrokerLayout(Path(tmp_path)))
    assert command[-2:] == ["-c", str(tmp_path / "mosquitto.conf")]


def test_the_plugin_is_built_once_per_source_and_a_given_path_is_used_as_is(tmp_path):
    files = mosquitto.write_broker_files(tmp_path / "broker")
    built = files.layout.plugin
    assert built.exists()
    assert built.stat().st_mode & 0o111
    first = built.stat().st_mtime_ns
    mosquitto.write_broker_files(tmp_path / "broker")
    assert built.stat().st_mtime_ns == first
    elsewhere = mosquitto.write_broker_files(tmp_path / "other", plugin_path="/usr/lib/mosquitto/aegis_auth.so")
    assert "plugin /usr/lib/mosquitto/aegis_auth.so" in elsewhere.layout.conf.read_text().splitlines()
    assert not elsewhere.layout.plugin.exists()


def test_without_a_compiler_the_plugin_build_says_what_to_install(tmp_path):
    from broker import plugin

    with pytest.raises(plugin.PluginBuildError, match="C compiler"):
        plugin.build(tmp_path / "aegis_auth.so", compiler=str(tmp_path / "no-such-cc"))
    assert not (tmp_path / "aegis_auth.so").exists()
