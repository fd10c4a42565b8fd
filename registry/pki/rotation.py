"""CA rotation with overlap, and re-issuing the server and bridge certificates.

A CA rotation has three steps, each recorded in ``ca-state.json`` so that running a
step twice changes nothing:

``single``   one CA signs and is trusted.
``overlap``  (``start_ca_rotation``) a new CA exists and is trusted next to the old
             one in ``ca-bundle.crt``; the old CA still signs. Agents get the bundle.
``switched`` (``finish_ca_rotation``) the new CA signs (it becomes ``ca.crt``/``ca.key``)
             and the server and bridge certificates are re-issued; the old CA is still
             trusted, so agents holding old-CA certificates keep connecting.
``drop_old_ca`` returns to ``single`` with the new CA only. It refuses while an agent's
             newest usable certificate (``issued/``, not revoked, not expired) is
             from the old CA, unless forced: Mosquitto would refuse that agent.

No Django import but the ``trust_changed`` signal (``registry.pki.layout``): files only.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from cryptography.hazmat.primitives.asymmetric import rsa

from registry.pki import crypto
from registry.pki.agents import AgentHolding, current_agent_certs
from registry.pki.authorities import OVERLAP, SINGLE, SWITCHED, CaState, ca_id, load_ca, load_state, store_ca
from registry.pki.layout import CaLayout, announce_trust_change
from registry.pki.revocation import write_crl


class RotationError(RuntimeError):
    """The requested step does not follow from the recorded state."""


class OldCaInUse(RotationError):
    """Dropping the old CA would cut off agents whose certificate it issued."""

    def __init__(self, holders: Iterable[AgentHolding]) -> None:
        self.holders = tuple(holders)
        names = ", ".join(f"{holder.agent_id} (serial {holder.serial}, CA {holder.issuer})" for holder in self.holders)
        super().__init__(
            f"{len(self.holders)} agent(s) still hold a certificate from the old CA: {names}. "
            "Re-issue each (manage.py issue_agent_cert AGENT --dir ... --out ...) and run --drop-old-ca again, "
            "or pass --force to cut them off"
        )


@dataclass(frozen=True)
class StepResult:
    changed: bool
    state: CaState
    issued: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    cut_off: tuple[AgentHolding, ...] = ()  # agents on the dropped CA (only with force)


def start_ca_rotation(layout: CaLayout, *, key_algorithm: crypto.KeyAlgorithm = "ec") -> StepResult:
    state = load_state(layout)
    if state.phase == OVERLAP:
        return StepResult(False, state, notes=("a CA rotation is already in its overlap window",))
    if state.phase == SWITCHED:
        raise RotationError("the previous rotation is not finished: run rotate_certs --drop-old-ca first")
    new_ca = crypto.create_ca(key_algorithm=key_algorithm)
    store_ca(layout, new_ca)
    state = CaState(signing=state.signing, trusted=[state.signing, ca_id(new_ca.certificate)], phase=OVERLAP)
    _apply_trust(layout, state)
    return StepResult(True, state, issued=("ca",))


def finish_ca_rotation(layout: CaLayout) -> StepResult:
    state = load_state(layout)
    if state.phase == SWITCHED:
        return StepResult(False, state, notes=("the new CA already signs",))
    new_id = state.next_ca
    if new_id is None:
        raise RotationError("no CA rotation in progress: run rotate_certs --ca first")
    new_ca = load_ca(layout, new_id)
    crypto.write_issued(new_ca, layout.ca_cert, layout.ca_key)
    state = CaState(signing=new_id, trusted=state.trusted, phase=SWITCHED)
    issued = rotate_leaf_certs(layout, server=True, bridge=True)
    _apply_trust(layout, state)
    return StepResult(True, state, issued=tuple(issued))


def drop_old_ca(layout: CaLayout, *, force: bool = False) -> StepResult:
    """Trust the signing CA only; refuses (``OldCaInUse``) while agents depend on the old one, unless ``force``."""
    state = load_state(layout)
    if state.phase == SINGLE:
        return StepResult(False, state, notes=("only one CA is trusted",))
    if state.phase == OVERLAP:
        raise RotationError("the old CA still signs: run rotate_certs --finish-ca first")
    holders = agents_on_old_ca(layout, state)
    if holders and not force:
        raise OldCaInUse(holders)
    state = CaState(signing=state.signing, trusted=[state.signing], phase=SINGLE)
    _apply_trust(layout, state)
    return StepResult(True, state, cut_off=tuple(holders))


def agents_on_old_ca(layout: CaLayout, state: CaState) -> list[AgentHolding]:
    """Agents whose newest usable certificate a trusted CA other than the signing one issued."""
    old = set(state.trusted) - {state.signing}
    return [holding for holding in current_agent_certs(layout) if holding.issuer in old]


def _apply_trust(layout: CaLayout, state: CaState) -> None:
    """Bundle, CRL (when revocation is in use), whoever follows the trust files, then the state: the state last."""
    bundle = b"".join((layout.cas / f"{identifier}.crt").read_bytes() for identifier in state.trusted)
    crypto.write_public(layout.ca_bundle, bundle)
    if layout.crl.exists():
        write_crl(layout, state)
    announce_trust_change(layout)
    state.changed_at = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    crypto.write_public(layout.ca_state, (json.dumps(asdict(state), indent=2) + "\n").encode())


def rotate_leaf_certs(layout: CaLayout, *, server: bool, bridge: bool) -> list[str]:
    """Re-issue the server and/or bridge certificate with the signing CA, keeping names and key type."""
    ca = crypto.load_issued(layout.ca_cert, layout.ca_key)
    issued = []
    if server:
        old = crypto.load_issued(layout.server_cert, layout.server_key)
        dns_names, ip_addresses = crypto.subject_alt_names(old.certificate)
        fresh = crypto.issue_server_cert(
            ca, dns_names=dns_names, ip_addresses=ip_addresses, key_algorithm=_key_algorithm(old)
        )
        crypto.write_issued(fresh, layout.server_cert, layout.server_key)
        issued.append("server")
    if bridge:
        old = crypto.load_issued(layout.bridge_cert, layout.bridge_key)
        crypto.write_issued(
            crypto.issue_bridge_cert(ca, key_algorithm=_key_algorithm(old)), layout.bridge_cert, layout.bridge_key
        )
        issued.append("bridge")
    return issued


def _key_algorithm(issued: crypto.IssuedCertificate) -> crypto.KeyAlgorithm:
    return "rsa" if isinstance(issued.private_key, rsa.RSAPrivateKey) else "ec"
