from django.apps import AppConfig


class BrokerConfig(AppConfig):
    name = "broker"

    def ready(self) -> None:
        from broker import receivers
        from broker.mosquitto import follow_trust_change
        from registry import signals
        from registry.pki.layout import trust_changed

        # A CA rotation step or a revocation (from a command or the admin) keeps mosquitto.conf's trust lines current.
        trust_changed.connect(follow_trust_change, dispatch_uid="broker.mosquitto.follow_trust_change")
        # The registry's changes that are messages to the agent (registry/signals.py names these receivers).
        signals.admin_state_changed.connect(
            receivers.tell_agent_admin_state, dispatch_uid="broker.receivers.tell_agent_admin_state"
        )
        signals.agent_pinged.connect(receivers.send_ping, dispatch_uid="broker.receivers.send_ping")
