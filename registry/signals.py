"""What the registry's actions tell the floors above it, without importing them.

``registry`` may not import ``tasks``, ``broker`` or ``notify`` (docs/architecture.md, the floors),
yet some of its changes have consequences there: a new agent joins continuous jobs, a
removed one loses its pinned tasks, a drain or a ping is a message to the agent. The
registry's action sends one of these signals inside its transaction (Django signals are
synchronous), so what the receivers write commits or rolls back with the change. Each
receiver is one call of an action of its app, connected in that app's ``AppConfig.ready()``
with a ``dispatch_uid``; each signal's docstring names its receivers, and
``registry/tests/test_signals.py`` holds the two together, so no receiver is hidden.

Every signal is sent with ``sender=Agent``.
"""

from __future__ import annotations

from django.dispatch import Signal


def _signal(doc: str) -> Signal:
    signal = Signal()
    signal.__doc__ = doc
    return signal


agent_registered = _signal(
    """An agent was created or its fields updated (``register_agent``, also through ``enrol``).

    Arguments: ``agent`` (the saved row), ``created``.
    Receivers: ``tasks.receivers.add_to_continuous_jobs``.
    """
)

agent_removing = _signal(
    """An agent is about to be deleted (``remove_agent``): its row is locked and still there.

    Arguments: ``agent_id``, ``actor`` (``aegis_site.core.audit.Actor``), ``at``.
    Receivers: ``tasks.receivers.release_tasks_of_removed_agent``.
    """
)

admin_state_changed = _signal(
    """An operator changed an agent's admin state (``set_admin_state``); not sent when it stays the same.

    Arguments: ``agent_id``, ``previous`` and ``state`` (``registry.models.AdminState``), ``at``.
    Receivers: ``broker.receivers.tell_agent_admin_state``, ``notify.receivers.agent_disabled``.
    """
)

agent_pinged = _signal(
    """An operator asked the agent for a heartbeat now (``ping_agent``).

    Arguments: ``agent_id``, ``at``.
    Receivers: ``broker.receivers.send_ping``.
    """
)

agent_connectivity_changed = _signal(
    """An agent came online or went offline: sent only when the row changed, not for every heartbeat.

    From ``mark_online``, ``mark_offline``, ``touch_agents`` (a heartbeat revives an agent the
    silence sweep took offline), ``mark_silent_agents_offline`` and ``record_hello``.
    Arguments: ``agent_id``, ``online`` (bool), ``at``, ``reason`` (why it went offline; empty when online).
    Receivers: ``notify.receivers.agent_connectivity_changed``.
    """
)
