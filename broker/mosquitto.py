"""Mosquitto's configuration and ACL, generated so that they always match the protocol.

Everything the broker needs lives in one directory (see ``BrokerLayout``);
``write_broker_files`` fills it and is safe to run again: it keeps the CA and
certificates it finds unless told to force, and rewrites the derived text files.

No Django import, like ``broker.pki``.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from broker import pki, plugin

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8883
MAX_PAYLOAD_BYTES = 256 * 1024
# The broker's own limit is four times the protocol's, so that a message over the
# protocol limit still reaches the bridge, which acknowledges, counts and drops it as
# ``oversized``. At the broker's limit Mosquitto disconnects the client instead, and a
# client that re-sends its unacknowledged message after reconnecting loops: the
# reference agent never sends more than the protocol limit (``aegis_agent.wire``).
BROKER_PAYLOAD_FACTOR = 4
# Room for the fixed header, topic and MQTT 5 properties around a maximal payload.
PACKET_OVERHEAD_BYTES = 4096
# A bridge that is down must not lose what agents send meanwhile: Mosquitto drops
# QoS 1 messages beyond this many queued per session (its default is only 1000).
MAX_QUEUED_MESSAGES = 1_000_000
AUTOSAVE_INTERVAL_S = 60
SHARE_GROUP = "aegis"

# Topics every agent may use, %u being its username (the certificate CN).
AGENT_WRITE_TOPICS = ("hello", "heartbeat", "status", "events")
AGENT_READ_TOPICS = ("inbox",)
BROADCAST_TOPIC = "aegis/broadcast"


@dataclass(frozen=True)
class BrokerLayout:
    """Where each file of a broker directory lives."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"

    @property
    def bridge_cert(self) -> Path:
        return self.directory / "bridge.crt"

    @property
    def bridge_key(self) -> Path:
        return self.directory / "bridge.key"

    @property
    def ca_bundle(self) -> Path:
        """Every CA Mosquitto and the agents trust; only present once a CA rotation started."""
        return self.directory / "ca-bundle.crt"

    @property
    def trust_file(self) -> Path:
        """What Mosquitto's ``cafile`` and an agent's ``ca.crt`` hold: the bundle if any, else the CA."""
        return self.ca_bundle if self.ca_bundle.exists() else self.ca_cert

    @property
    def crl(self) -> Path:
        return self.directory / "crl.pem"

    @property
    def ca_state(self) -> Path:
        return self.directory / "ca-state.json"

    @property
    def revoked(self) -> Path:
        return self.directory / "revoked.json"

    @property
    def cas(self) -> Path:
        """Every CA (certificate and key) the rotation knows, named by fingerprint."""
        return self.directory / "cas"

    @property
    def issued(self) -> Path:
        """A copy of each agent certificate issued (no keys), for expiry reports and revocation."""
        return self.directory / "issued"

    @property
    def conf(self) -> Path:
        return self.directory / "mosquitto.conf"

    @property
    def acl(self) -> Path:
        return self.directory / "acl"

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def plugin(self) -> Path:
        """The ``aegis_auth`` plugin built for this machine's Mosquitto (``broker.plugin``)."""
        return self.directory / plugin.PLUGIN_NAME


@dataclass(frozen=True)
class BrokerFiles:
    """What ``write_broker_files`` left in the directory, for the registry and the logs."""

    layout: BrokerLayout
    ca: pki.IssuedCertificate
    server: pki.IssuedCertificate
    bridge: pki.IssuedCertificate
    created: tuple[str, ...]


@dataclass(frozen=True)
class AgentBundle:
    cert: Path
    key: Path
    ca_cert: Path
    issued: pki.IssuedCertificate


def bridge_subscriptions(group: str = SHARE_GROUP) -> list[str]:
    """The shared subscriptions every bridge replica makes, so replicas split the agents' traffic."""
    return [f"$share/{group}/aegis/agents/+/{topic}" for topic in AGENT_WRITE_TOPICS]


def render_acl(*, bridge_username: str = pki.BRIDGE_CN) -> str:
    """The design's ACL for what is published and delivered, with the one correction Mosquitto 2.0 needs.

    ``topic`` lines before the first ``user`` line apply to anonymous clients only,
    so the broadcast is granted with a ``pattern`` (patterns apply to every user;
    Mosquitto warns that it has no ``%u``, which is harmless).

    The ACL file never restricts a SUBSCRIBE (Mosquitto checks it per delivered
    message only), so an agent could join the bridge's shared subscription and take
    its share of every agent's messages: the ``aegis_auth`` plugin refuses every
    subscription of an agent but its inbox and the broadcast (``plugin_lines``).
    """
    lines = ["# Generated by Aegis Event Bus (manage.py setup_broker); re-run it instead of editing.", ""]
    lines += [f"pattern write aegis/agents/%u/{topic}" for topic in AGENT_WRITE_TOPICS]
    lines += [f"pattern read aegis/agents/%u/{topic}" for topic in AGENT_READ_TOPICS]
    lines += [f"pattern read {BROADCAST_TOPIC}", ""]
    lines += [
        f"user {bridge_username}",
        "topic readwrite aegis/#",
    ]
    return "\n".join(lines) + "\n"


def plugin_lines(plugin_path: Path | str, *, services: Sequence[str] = (pki.BRIDGE_CN,)) -> list[str]:
    """Load ``aegis_auth``: the certificate's CN is the username, an agent's client id is its CN,
    and an agent subscribes to its inbox and the broadcast only (see ``broker/plugin/aegis_auth.c``)."""
    agent_read = [f"aegis/agents/%u/{topic}" for topic in AGENT_READ_TOPICS] + [BROADCAST_TOPIC]
    return [
        f"plugin {plugin_path}",
        f"plugin_opt_services {' '.join(services)}",
        "plugin_opt_topic_root aegis",
        f"plugin_opt_agent_read {' '.join(agent_read)}",
    ]


def render_conf(
    layout: BrokerLayout,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    log_file: Path | None = None,
    run_as_user: str | None = None,
    max_payload_bytes: int = MAX_PAYLOAD_BYTES,
    plugin_path: Path | str | None = None,
) -> str:
    """``mosquitto.conf`` for one TLS listener where the client certificate is the identity.

    The listener requires a certificate but does not set ``use_identity_as_username``:
    that option skips every authentication hook, and the ``aegis_auth`` plugin
    (``plugin_path``, default: the one built into the broker directory) must see each
    CONNECT before Mosquitto hands the client id's session over, to refuse an agent
    that presents another agent's client id. The plugin makes the CN the username.

    ``run_as_user``: Mosquitto started as root drops to the ``mosquitto`` user
    before it reads certificates, so that user must be able to read the 0600
    keys; name another user here (``root`` only for throwaway test brokers).
    """
    for path in (layout.directory, log_file):
        if path is not None and any(char.isspace() for char in str(path)):
            raise ValueError(f"Mosquitto cannot read a path with whitespace: {path!r}")
    lines = [
        "# Generated by Aegis Event Bus (manage.py setup_broker); re-run it instead of editing.",
        "per_listener_settings false",
        "allow_anonymous false",
        *plugin_lines(plugin_path or layout.plugin),
        f"acl_file {layout.acl}",
        "",
        "persistence true",
        f"persistence_location {layout.data}",
        f"autosave_interval {AUTOSAVE_INTERVAL_S}",
        f"max_queued_messages {MAX_QUEUED_MESSAGES}",
        "",
        f"max_packet_size {max_payload_bytes * BROKER_PAYLOAD_FACTOR + PACKET_OVERHEAD_BYTES}",
        "set_tcp_nodelay true",
        "",
        f"log_dest file {log_file}" if log_file else "log_dest stdout",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "connection_messages true",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
    ]
    if run_as_user:
        lines.append(f"user {run_as_user}")
    lines += [
        "",
        f"listener {port} {host}",
        "protocol mqtt",
        f"cafile {layout.trust_file}",
        *_crl_lines(layout),
        f"certfile {layout.server_cert}",
        f"keyfile {layout.server_key}",
        "tls_version tlsv1.2",
        "require_certificate true",
    ]
    return "\n".join(lines) + "\n"


def _crl_lines(layout: BrokerLayout) -> list[str]:
    return [f"crlfile {layout.crl}"] if layout.crl.exists() else []


def sync_trust_lines(layout: BrokerLayout) -> bool:
    """Point an existing ``mosquitto.conf`` at the current trust bundle and CRL; True if it changed.

    Rotation and revocation change which files exist, but not the host, port or log
    settings the operator gave ``setup_broker``, so only these lines are rewritten.
    """
    if not layout.conf.exists():
        return False
    old = layout.conf.read_text()
    lines = [line for line in old.splitlines() if not line.startswith("crlfile ")]
    for index, line in enumerate(lines):
        if line.startswith("cafile "):
            lines[index : index + 1] = [f"cafile {layout.trust_file}", *_crl_lines(layout)]
            break
    new = "\n".join(lines) + "\n"
    if new == old:
        return False
    pki.write_public(layout.conf, new.encode())
    return True


def mosquitto_command(layout: BrokerLayout, executable: str = "mosquitto") -> list[str]:
    return [shutil.which(executable) or executable, "-c", str(layout.conf)]


def write_broker_files(
    directory: Path,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    dns_names: Sequence[str] = ("localhost",),
    ip_addresses: Sequence[str] = ("127.0.0.1",),
    force: bool = False,
    log_file: Path | None = None,
    run_as_user: str | None = None,
    key_algorithm: pki.KeyAlgorithm = "ec",
    plugin_path: Path | str | None = None,
) -> BrokerFiles:
    """Fill ``directory`` with CA, server and bridge certificates, conf, ACL and the auth plugin.

    A kept CA keeps every agent certificate valid; ``force`` replaces it and so
    revokes them all. A certificate that no longer chains to the CA, or a server
    certificate missing a requested name, is reissued.

    ``plugin_path``: where Mosquitto finds ``aegis_auth.so`` when it is installed
    elsewhere (the broker's container image builds its own); without it the plugin
    is compiled into the directory (``broker.plugin.build``).
    """
    layout = BrokerLayout(directory.resolve())
    layout.directory.mkdir(parents=True, exist_ok=True)
    layout.data.mkdir(exist_ok=True)
    created: list[str] = []

    ca = None if force else _load_if_present(layout.ca_cert, layout.ca_key)
    if ca is None:
        ca = pki.create_ca(key_algorithm=key_algorithm)
        pki.write_issued(ca, layout.ca_cert, layout.ca_key)
        created.append("ca")

    server = None if force else _load_if_present(layout.server_cert, layout.server_key)
    if server is None or not _valid_server(server, ca, dns_names, ip_addresses):
        server = pki.issue_server_cert(ca, dns_names=dns_names, ip_addresses=ip_addresses, key_algorithm=key_algorithm)
        pki.write_issued(server, layout.server_cert, layout.server_key)
        created.append("server")

    bridge = None if force else _load_if_present(layout.bridge_cert, layout.bridge_key)
    if bridge is None or not pki.is_signed_by(bridge.certificate, ca.certificate):
        bridge = pki.issue_bridge_cert(ca, key_algorithm=key_algorithm)
        pki.write_issued(bridge, layout.bridge_cert, layout.bridge_key)
        created.append("bridge")

    if plugin_path is None:
        plugin.build(layout.plugin)
    pki.write_public(layout.acl, render_acl().encode())
    conf = render_conf(
        layout, host=host, port=port, log_file=log_file, run_as_user=run_as_user, plugin_path=plugin_path
    )
    pki.write_public(layout.conf, conf.encode())
    if run_as_user and os.geteuid() == 0:
        hand_over_to_broker_user(layout, run_as_user)
    return BrokerFiles(layout=layout, ca=ca, server=server, bridge=bridge, created=tuple(created))


def hand_over_to_broker_user(layout: BrokerLayout, user: str) -> None:
    """Mosquitto started as root drops to ``user`` before it reads its key and writes its persistence.

    So ``user`` owns ``server.key`` (0600) and the persistence directory; the CA's and the bridge's keys stay
    with whoever ran ``setup_broker``. Raises ``KeyError`` for an unknown user.
    """
    entry = pwd.getpwnam(user)
    for path in (layout.server_key, layout.data):
        os.chown(path, entry.pw_uid, entry.pw_gid)


def write_agent_bundle(
    broker_directory: Path,
    agent_id: str,
    out_directory: Path,
    *,
    key_algorithm: pki.KeyAlgorithm = "ec",
) -> AgentBundle:
    """Issue ``agent_id``'s certificate with the broker directory's CA and write what the agent needs."""
    pki.validate_agent_id(agent_id)
    layout = BrokerLayout(broker_directory.resolve())
    ca = pki.load_issued(layout.ca_cert, layout.ca_key)
    issued = pki.issue_agent_cert(ca, agent_id, key_algorithm=key_algorithm)
    # Public copy (no key), so that expiry reports and revocation know every agent certificate.
    pki.write_public(layout.issued / f"{agent_id}-{issued.serial:x}.crt", issued.cert_pem)
    bundle = AgentBundle(
        cert=out_directory / f"{agent_id}.crt",
        key=out_directory / f"{agent_id}.key",
        ca_cert=out_directory / "ca.crt",
        issued=issued,
    )
    pki.write_issued(issued, bundle.cert, bundle.key)
    # During a CA rotation the agent must trust the old and the new CA.
    pki.write_public(bundle.ca_cert, layout.ca_bundle.read_bytes() if layout.ca_bundle.exists() else ca.cert_pem)
    return bundle


def _load_if_present(cert_path: Path, key_path: Path) -> pki.IssuedCertificate | None:
    if not (cert_path.exists() and key_path.exists()):
        return None
    return pki.load_issued(cert_path, key_path)


def _valid_server(
    server: pki.IssuedCertificate,
    ca: pki.IssuedCertificate,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str],
) -> bool:
    if not pki.is_signed_by(server.certificate, ca.certificate):
        return False
    have_dns, have_ips = pki.subject_alt_names(server.certificate)
    wanted_ips = {str(ipaddress.ip_address(address)) for address in ip_addresses}
    return set(dns_names) <= set(have_dns) and wanted_ips <= set(have_ips)
