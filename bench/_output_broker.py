"""What bench/task_logs.py runs against: Mosquitto from the generated configuration, and the baseline's reader.

Every process is started through ``bench._infra.Processes`` and ends with its ``stop_all``.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from bench._infra import Processes, free_port, wait_port


class GeneratedBroker:
    """Mosquitto from the generated configuration on a free port, and one certificate per simulated agent."""

    def __init__(self, procs: Processes) -> None:
        from broker import mosquitto

        self.root = procs.tmp / "broker"
        self.agents_dir = procs.tmp / "agents"
        self.port = free_port()
        run_as = "root" if os.geteuid() == 0 else None  # a throwaway broker may stay root (see test_broker_security)
        files = mosquitto.write_broker_files(
            self.root, port=self.port, log_file=procs.tmp / "mosquitto.log", run_as_user=run_as
        )
        self.layout = files.layout
        self.process = procs.start("mosquitto", mosquitto.mosquitto_command(self.layout))
        wait_port(self.port)

    def issue(self, agent_ids: list[str]) -> None:
        from registry.pki.agents import write_agent_bundle

        for agent_id in agent_ids:
            write_agent_bundle(self.layout.directory, agent_id, self.agents_dir)

    def bridge_env(self) -> dict[str, str]:
        return {
            "MQTT_URL": f"mqtts://127.0.0.1:{self.port}",
            "MQTT_CA_FILE": str(self.layout.ca_cert),
            "MQTT_CERT_FILE": str(self.layout.bridge_cert),
            "MQTT_KEY_FILE": str(self.layout.bridge_key),
        }


class RawReader:
    """The baseline's consumer: the bridge's MQTT client class with the bridge's identity, counting messages only."""

    def __init__(self, broker: GeneratedBroker) -> None:
        import ssl

        import paho.mqtt.client as mqtt

        from broker.client import BatchingClient, service_client_id, set_nodelay

        self.count = 0
        self.first = self.last = 0.0
        self.hellos: set[str] = set()
        self.lock = threading.Condition()
        self.client = BatchingClient(
            mqtt.CallbackAPIVersion.VERSION2, client_id=service_client_id("bench-raw"), protocol=mqtt.MQTTv5
        )
        self.client.tls_set(
            ca_certs=str(broker.layout.ca_cert),
            certfile=str(broker.layout.bridge_cert),
            keyfile=str(broker.layout.bridge_key),
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
        self.client.on_socket_open = set_nodelay
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        self.client.subscribe([(f"aegis/agents/+/{channel}", 1) for channel in ("logs", "events", "hello")])
        if not subscribed.wait(10):
            raise TimeoutError("the baseline reader's subscription was not acknowledged")

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        if message.topic.endswith("/logs"):
            now = time.perf_counter()
            with self.lock:
                self.first = self.first or now
                self.last = now
                self.count += 1
                self.lock.notify_all()
        elif message.topic.endswith("/hello"):
            with self.lock:
                self.hellos.add(message.topic.split("/")[2])
                self.lock.notify_all()

    def assign(self, agent_ids: list[str], task_id: int) -> None:
        from aegis_agent import wire

        for agent_id in agent_ids:
            task = {"id": task_id, "attempt": 1, "job_id": 1, "kind": "noop", "payload": {}}
            message = wire.envelope("task.assign", task={**task, "timeout_s": 600, "lease_s": 600})
            self.client.publish(wire.Topics(agent_id).inbox, wire.encode(message), qos=1)
            task_id += 1

    def wait_hellos(self, agent_ids: list[str]) -> None:
        """An agent's hello follows its inbox subscription: after it, an assignment reaches the agent."""
        with self.lock:
            if not self.lock.wait_for(lambda: self.hellos.issuperset(agent_ids), 60):
                raise TimeoutError(f"baseline: {len(self.hellos)} of {len(agent_ids)} agents said hello")

    def measure(self, agent_ids: list[str], first_task_id: int, chunks: int, timeout_s: float) -> float:
        """Seconds from the first chunk to the last one of a round of one task per agent."""
        with self.lock:
            self.count, self.first, self.last = 0, 0.0, 0.0
        self.assign(agent_ids, first_task_id)
        with self.lock:
            if not self.lock.wait_for(lambda: self.count >= chunks, timeout_s):
                raise TimeoutError(f"baseline: {self.count} of {chunks} chunks in {timeout_s}s")
            return self.last - self.first

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
