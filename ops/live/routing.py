"""Websocket routes. Anything but the live-updates path is refused at the handshake."""

from channels.security.websocket import WebsocketDenier
from django.urls import path, re_path

from ops.live.consumer import LiveConsumer
from tasks.live.output_tail import OutputTailConsumer

websocket_urlpatterns = [
    path("ws/admin/live/", LiveConsumer.as_asgi()),
    path("ws/admin/tasks/<int:task_id>/output/", OutputTailConsumer.as_asgi()),
    re_path(r"", WebsocketDenier.as_asgi()),
]
