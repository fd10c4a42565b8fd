"""The registry in the admin; each module registers its models.

``agents`` (the fleet list, an agent's page, credentials), ``operations`` (operator actions and
buttons, the agent admin's base), ``certificates`` (certificate bundles), ``enrolment``
(enrolment tokens), ``filters`` and ``display`` (list filters and cell rendering).
"""

from registry.admin import agents, enrolment

__all__ = ["agents", "enrolment"]
