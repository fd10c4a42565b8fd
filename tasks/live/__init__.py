"""Websocket consumers of the tasks app (routed by the site's ``ops.live.routing``)."""
