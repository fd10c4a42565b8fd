"""The project's certificate authority: the registry owns the agents' credentials, certificates included.

``crypto``       keys, the CA, server/bridge/agent certificates, PEM files (the CN rules).
``layout``       the CA's files in the broker directory (``CaLayout``) and the ``trust_changed`` signal.
``authorities``  which CAs exist, which signs, which are trusted (``ca-state.json``).
``agents``       issue an agent's certificate; the issued copies and who holds what.
``revocation``   revoked serials and the CRL.
``rotation``     CA rotation with overlap, server and bridge re-issue.
``expiry``       the expiry report ``check_certs`` prints.

Issuing or revoking an agent's certificate *and* its registry credential is one action each:
``registry.actions.issue_agent_certificate`` and ``registry.actions.revoke_agent_certificates``.
Mosquitto's side (``mosquitto.conf``, ACL, plugin) is ``broker.mosquitto``, which builds on this package.
"""
