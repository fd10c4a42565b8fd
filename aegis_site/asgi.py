"""ASGI entry point: HTTP through Django, websockets for the admin's live updates, ``mqtt`` for the bridge."""

import os

from django.conf import settings
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aegis_site.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402  (needs Django set up first)
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from aegis_site.client_address import TrustedProxyHeaders  # noqa: E402
from aegis_site.logs import route_twisted_log  # noqa: E402
from aegis_site.request_limits import BodyLimit  # noqa: E402
from broker.consumer import MqttConsumer  # noqa: E402
from ops.live.routing import websocket_urlpatterns  # noqa: E402

route_twisted_log()  # under daphne: warnings and Twisted's errors as log records, not lost

# Bodies over their limit are refused before Django reads them; chunked ones are read with their length.
http_app = BodyLimit(ASGIStaticFilesHandler(django_asgi_app) if settings.DEBUG else django_asgi_app)

# The session cookie authenticates the socket, so only pages of this site (Origin in
# ALLOWED_HOSTS) may open one: another site cannot ride on an operator's cookie.
websocket_app = AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))

# The client's address and scheme from X-Forwarded-* only when a proxy in TRUSTED_PROXIES sent them.
application = ProtocolTypeRouter(
    {
        "http": TrustedProxyHeaders(http_app),
        "websocket": TrustedProxyHeaders(websocket_app),
        "mqtt": MqttConsumer.as_asgi(),
    }
)
