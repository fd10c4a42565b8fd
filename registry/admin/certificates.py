"""Certificates from the admin: issue a bundle as a zip, revoke a credential (and the CRL entry).

The same actions as ``issue_agent_cert`` and ``revoke_agent_cert`` (broker/management/commands):
``registry.actions.issue_agent_certificate`` issues the certificate with the broker directory's CA
(keeping a public copy in ``issued/``) and records (and audits) it;
``registry.actions.revoke_agent_certificates`` revokes the credential and writes ``crl.pem``.
The broker directory is ``settings.BROKER_DIR``; the web process needs write access to it.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from aegis_site.core.audit import Actor
from registry import actions
from registry.models import AgentCredential, CredentialKind
from registry.pki.layout import CaLayout


class BrokerDirMissing(Exception):
    """``BROKER_DIR`` is unset or holds no CA: certificates cannot be issued or put on the CRL here."""


def broker_layout() -> CaLayout:
    if not settings.BROKER_DIR:
        raise BrokerDirMissing(
            "BROKER_DIR is not set: certificates are issued with the broker directory's CA "
            "(set BROKER_DIR to the directory written by `manage.py setup_broker`)."
        )
    layout = CaLayout(Path(settings.BROKER_DIR).resolve())
    if not layout.ca_key.exists():
        raise BrokerDirMissing(
            f"No CA in {layout.directory}: run `manage.py setup_broker --dir {layout.directory}` first."
        )
    return layout


@dataclass(frozen=True)
class IssuedBundle:
    agent_id: str
    credential: AgentCredential
    files: dict[str, bytes]  # name in the zip -> content


def issue_bundle(layout: CaLayout, agent_id: str, actor: Actor) -> IssuedBundle:
    """Issue a certificate for the agent and record it; the key never touches disk, it goes into the zip."""
    result = actions.issue_agent_certificate(layout, agent_id, actor)
    files = {f"{agent_id}/{name}": content for name, content in result.certificate.files.items()}
    return IssuedBundle(agent_id, result.credential, files)


def zip_bundles(bundles: Iterable[IssuedBundle]) -> bytes:
    """One zip, one folder per agent: ``<id>/<id>.crt``, ``<id>/<id>.key``, ``<id>/ca.crt``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for bundle in bundles:
            for name, content in bundle.files.items():
                archive.writestr(name, content)
    return buffer.getvalue()


def revoke(credential: AgentCredential, actor: Actor) -> str:
    """Revoke one credential; a certificate also goes on the broker's CRL when ``BROKER_DIR`` has the CA.

    Returns a note for the operator about what else has to happen.
    """
    if credential.kind != CredentialKind.CERTIFICATE:
        actions.revoke_credential(credential.pk, actor)
        return "Token revoked: it no longer authenticates."
    try:
        layout = broker_layout()
    except BrokerDirMissing as missing:
        actions.revoke_credential(credential.pk, actor)
        return (
            f"Certificate revoked in the registry (the bridge drops messages of an agent whose certificates are "
            f"all revoked), but the CRL was not updated: {missing}"
        )
    if not credential.cert_serial:
        actions.revoke_credential(credential.pk, actor)
        return "Certificate revoked in the registry; it has no serial, so the CRL was not changed."
    actions.revoke_agent_certificates(layout, credential.agent_id, actor, serial=credential.cert_serial)
    if credential.revoked_at is not None:  # already revoked: the function above skips it, keep the audit trail
        actions.revoke_credential(credential.pk, actor)
    return (
        f"Certificate {credential.cert_serial} revoked and written to {layout.crl}. Restart Mosquitto so that it "
        "refuses the certificate at the TLS handshake; open connections stay open until then."
    )
