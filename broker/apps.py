from django.apps import AppConfig


class BrokerConfig(AppConfig):
    name = "broker"

    def ready(self) -> None:
        from broker.mosquitto import follow_trust_change
        from registry.pki.layout import trust_changed

        # A CA rotation step or a revocation (from a command or the admin) keeps mosquitto.conf's trust lines current.
        trust_changed.connect(follow_trust_change, dispatch_uid="broker.mosquitto.follow_trust_change")
