"""The broker side of the registry's changes (``registry.signals``): messages to the agent.

Connected in ``BrokerConfig.ready()``. They write to the outbox inside the registry
action's transaction, so a message leaves only if the change commits.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from broker import outbox
from registry.models import AdminState, Agent


def tell_agent_admin_state(
    sender: type[Agent], *, agent_id: str, previous: AdminState, state: AdminState, at: datetime, **kwargs: Any
) -> None:
    """``admin_state_changed``: a drained agent is told ``agent.drain``, one made active again ``agent.resume``.

    The agent stopped taking work when it was drained: without the resume it would go on
    refusing (task.rejected "draining") every task the server now assigns it, until it restarts.
    Disabling sends nothing: the agent's credentials stop working.
    """
    if state == AdminState.DRAINING:
        outbox.write([outbox.to_inbox(agent_id, "agent.drain", at)])
    elif state == AdminState.ACTIVE:
        outbox.write([outbox.to_inbox(agent_id, "agent.resume", at)])


def send_ping(sender: type[Agent], *, agent_id: str, at: datetime, **kwargs: Any) -> None:
    """``agent_pinged``: the protocol's ``ping``, answered by a heartbeat."""
    outbox.write([outbox.to_inbox(agent_id, "ping", at)])
