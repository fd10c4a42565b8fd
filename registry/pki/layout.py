"""Where the certificate authority keeps its files in the broker directory (``BROKER_DIR``).

The CA side owns these paths: the CA and the certificates it issued the broker's server
and the bridge, every CA a rotation knows, the agents' issued certificates, the CRL and
the CA state. The broker's own files (``mosquitto.conf``, ACL, persistence, plugin) are
``broker.mosquitto.BrokerLayout``, which extends this one.

``trust_changed`` is sent after the trusted CAs or the CRL changed on disk, so that
whoever points at those files follows (the broker rewrites ``mosquitto.conf``'s
``cafile``/``crlfile`` lines; connected in ``broker.apps``). The signal needs no
Django settings, so the file-only modules stay usable from a plain script.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from django.dispatch import Signal

# Sent with ``layout`` (a ``CaLayout``) after the trust bundle, the CRL or the CA state changed.
trust_changed = Signal()


@dataclass(frozen=True)
class CaLayout:
    """The certificate files of one broker directory."""

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


def announce_trust_change(layout: CaLayout) -> None:
    trust_changed.send(sender=CaLayout, layout=layout)
