"""An embedded MQTT 3.1.1 broker (amqtt) for the all-in-one mode, when no ``MQTT_URL`` is configured.

Plain TCP on loopback, anonymous clients: a laptop demo, never production (which
runs Mosquitto with TLS, client certificates and the ACL). amqtt has no shared
subscriptions and speaks MQTT 3.1.1 only, which is fine for a single bridge.
"""

from __future__ import annotations

import asyncio
import logging
import signal

log = logging.getLogger("aegis.broker")


def broker_config(host: str, port: int) -> dict[str, object]:
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


async def serve(host: str, port: int, stop: asyncio.Event) -> None:
    from amqtt.broker import Broker

    broker = Broker(broker_config(host, port))
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
