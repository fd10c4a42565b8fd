from django.apps import AppConfig


class OpsConfig(AppConfig):
    name = "ops"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_login_failed

        from ops import checks  # noqa: F401  (registers the system checks)
        from ops.logins import log_failed_login

        user_login_failed.connect(log_failed_login, dispatch_uid="aegis-login-failed")
