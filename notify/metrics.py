"""The notifier's Prometheus metrics (exported by each ``run_notifier`` on ``METRICS_PORT``)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

SENT = Counter("aegis_notifications_sent", "Notifications delivered (2xx, or the e-mail accepted).", ["target"])
FAILED = Counter("aegis_notifications_failed", "Delivery attempts that failed, by reason.", ["reason"])
RETRIED = Counter("aegis_notifications_retried", "Failed attempts scheduled to be tried again.")
DEAD_LETTERED = Counter("aegis_notifications_dead_lettered", "Deliveries given up (refused, or past the deadline).")
DELIVERY_SECONDS = Histogram(
    "aegis_notifications_delivery_seconds",
    "From an event (its cause's commit) to the receiver's 2xx.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600, 4 * 3600, 24 * 3600),
)
