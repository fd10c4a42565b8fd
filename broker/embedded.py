"""An embedded MQTT 3.1.1 broker (amqtt) for the all-in-one mode, when no ``MQTT_URL`` is configured.

Plain TCP on loopback, anonymous clients: a laptop demo, never production (which
runs Mosquitto with TLS, client certificates and the ACL). amqtt has no shared
subscriptions and speaks MQTT 3.1.1 only, which is fine for a single bridge.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

log = logging.getLogger("aegis.broker")


class UnackedDeliveryFilter(logging.Filter):
    """One warning line, not a traceback, for a delivery a vanished client never acknowledged.

    amqtt logs each QoS 1 delivery still waiting for a PUBACK from a client that was killed as an
    exception with its traceback (when the wait times out, and again at shutdown). A killed agent is
    an expected event here: its session is gone and the bridge redelivers by the protocol's rules.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, TimeoutError) and "PUBACK" in str(error):
            record.msg = "embedded broker: a client went away without acknowledging a delivery (%s)"
            record.args = (str(error),)
            record.exc_info = None
            record.exc_text = None
            record.levelno = logging.WARNING
            record.levelname = "WARNING"
        return True


def quiet_unacked_deliveries() -> None:
    """Install :class:`UnackedDeliveryFilter` on amqtt's broker logger (once)."""
    logger = logging.getLogger("amqtt.broker")
    if not any(isinstance(existing, UnackedDeliveryFilter) for existing in logger.filters):
        logger.addFilter(UnackedDeliveryFilter())


def broker_config(host: str, port: int) -> dict[str, object]:
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


def broker_class() -> type[Any]:
    from amqtt.broker import Broker
    from amqtt.session import Session

    class EmbeddedBroker(Broker):
        """amqtt, sending a client only the retained messages of its own subscriptions.

        amqtt 0.12 sends every client that connects the retained messages that match *any* client's
        subscriptions (its connection handler loops over all of the broker's subscription filters): a restarted
        simulated agent received the other agents' retained ``status`` (matched by the bridge's
        ``aegis/agents/+/status``) and logged each as an invalid inbox message.
        """

        async def _publish_retained_messages_for_subscription(
            self, subscription: tuple[str, int], session: Session
        ) -> None:
            holders = self._subscriptions.get(subscription[0], [])
            if any(holder.client_id == session.client_id for holder, _qos in holders):
                await super()._publish_retained_messages_for_subscription(subscription, session)

    return EmbeddedBroker


async def serve(host: str, port: int, stop: asyncio.Event) -> None:
    quiet_unacked_deliveries()
    broker = broker_class()(broker_config(host, port))
    await broker.start()
    log.info("embedded MQTT broker listening on %s:%d (MQTT 3.1.1, anonymous, no TLS)", host, port)
    try:
        await stop.wait()
    finally:
        await broker.shutdown()
        log.info("embedded MQTT broker stopped")


def run(host: str, port: int) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await serve(host, port, stop)

    asyncio.run(main())
