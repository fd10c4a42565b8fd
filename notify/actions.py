"""Operator writes on notifications: subscriptions (create, change, enable, rotate the secret) and redelivery.

Each is one transaction with its audit row; the admin and the API parse input and call these.
The checks live here, not in a serializer or a form, so both surfaces refuse the same things
with the same messages (a ``SubscriptionRefused`` names the field at fault: a 400 in the API,
a form error in the admin). The secret never enters the audit log.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator, validate_email
from django.db import transaction

from aegis_site.core import clock, wakeup
from aegis_site.core.audit import Actor, record
from aegis_site.core.errors import DomainError, InvalidTransition, NotFound
from notify.models import Delivery, DeliveryState, EventType, Subscription, TargetKind, new_secret

WAKEUP_CHANNEL = "aegis_notify"  # the notifiers LISTEN here (contract of issue 18)
MAX_EMAILS = 50
MAX_JOB_KINDS = 100
MAX_LABELS = 50
MAX_LABEL_CHOICES = 100
MAX_TEXT = 200
EDITABLE = ("name", "target_kind", "url", "emails", "events", "job_kinds", "agent_labels", "enabled")


class SubscriptionRefused(DomainError):
    """A subscription's field is not valid: HTTP 400 with the message under that field."""

    code = "invalid"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def clean_name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SubscriptionRefused("name", "A name is required.")
    if len(value) > 100:
        raise SubscriptionRefused("name", "At most 100 characters.")
    return value.strip()


def clean_events(value: Any) -> list[str]:
    """Event types of the catalogue, at least one, each once (in the order given)."""
    if not isinstance(value, list) or not value:
        raise SubscriptionRefused("events", "Give at least one event type.")
    known = set(EventType.values)
    unknown = [item for item in value if item not in known]
    if unknown:
        raise SubscriptionRefused(
            "events", f"Unknown event type(s) {', '.join(map(repr, unknown))}; known: {', '.join(EventType.values)}."
        )
    return list(dict.fromkeys(value))


def clean_url(value: Any) -> str:
    """An absolute http or https URL. Where it resolves is checked at each send (SSRF), not here: DNS changes."""
    if not isinstance(value, str) or not value:
        raise SubscriptionRefused("url", "A webhook or Slack target needs a URL.")
    if len(value) > 2000:
        raise SubscriptionRefused("url", "At most 2000 characters.")
    try:
        URLValidator(schemes=["http", "https"])(value)
    except ValidationError:
        raise SubscriptionRefused("url", "Use an absolute http:// or https:// URL.") from None
    return value


def clean_emails(value: Any) -> list[str]:
    if not isinstance(value, list) or not value:
        raise SubscriptionRefused("emails", "An e-mail target needs at least one address.")
    if len(value) > MAX_EMAILS:
        raise SubscriptionRefused("emails", f"At most {MAX_EMAILS} addresses.")
    for address in value:
        try:
            if not isinstance(address, str):
                raise ValidationError("not a string")
            validate_email(address)
        except ValidationError:
            raise SubscriptionRefused("emails", f"Not an e-mail address: {address!r}.") from None
    return list(dict.fromkeys(value))


def clean_target(kind: Any, url: Any, emails: Any) -> tuple[str, str, list[str]]:
    """The target kind with what it needs: a URL (webhook, Slack) or addresses (e-mail), and not the other."""
    if kind not in TargetKind.values:
        raise SubscriptionRefused("target_kind", f"One of {', '.join(TargetKind.values)}.")
    if kind == TargetKind.EMAIL:
        if url:
            raise SubscriptionRefused("url", "An e-mail target has no URL; give emails.")
        return kind, "", clean_emails(emails)
    if emails:
        raise SubscriptionRefused("emails", f"A {kind} target has no e-mail addresses; give url.")
    return kind, clean_url(url), []


def clean_job_kinds(value: Any) -> list[str]:
    """Job kinds (empty: any job)."""
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_JOB_KINDS:
        raise SubscriptionRefused("job_kinds", f"A list of at most {MAX_JOB_KINDS} job kinds.")
    for kind in value:
        if not isinstance(kind, str) or not kind or len(kind) > 100:
            raise SubscriptionRefused("job_kinds", "Job kinds are non-empty strings of at most 100 characters.")
    return list(dict.fromkeys(value))


def clean_agent_labels(value: Any) -> dict[str, str | list[str]]:
    """A label selector as jobs target agents (``{key: value | [values]}``; empty: any agent)."""
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_LABELS:
        raise SubscriptionRefused("agent_labels", f"An object of at most {MAX_LABELS} label keys to values.")
    cleaned: dict[str, str | list[str]] = {}
    for key, wanted in value.items():
        if not isinstance(key, str) or not key or len(key) > 63 or "\x00" in key:
            raise SubscriptionRefused("agent_labels", "Label keys are 1-63 characters without NUL.")
        choices = wanted if isinstance(wanted, list) else [wanted]
        if not choices or len(choices) > MAX_LABEL_CHOICES:
            raise SubscriptionRefused("agent_labels", f"{key}: give 1 to {MAX_LABEL_CHOICES} values.")
        for choice in choices:
            if not isinstance(choice, str) or len(choice) > MAX_TEXT or "\x00" in choice:
                raise SubscriptionRefused(
                    "agent_labels", f"{key}: values are strings (or lists of strings) of at most {MAX_TEXT} characters."
                )
        cleaned[key] = list(wanted) if isinstance(wanted, list) else wanted
    return cleaned


def clean_subscription(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Every editable field of a subscription, checked (a missing one gets its default)."""
    kind, url, emails = clean_target(
        fields.get("target_kind", TargetKind.WEBHOOK), fields.get("url", ""), fields.get("emails") or []
    )
    enabled = fields.get("enabled", True)
    if not isinstance(enabled, bool):
        raise SubscriptionRefused("enabled", "true or false.")
    return {
        "name": clean_name(fields.get("name")),
        "target_kind": kind,
        "url": url,
        "emails": emails,
        "events": clean_events(fields.get("events")),
        "job_kinds": clean_job_kinds(fields.get("job_kinds")),
        "agent_labels": clean_agent_labels(fields.get("agent_labels")),
        "enabled": enabled,
    }


def _audited(fields: Mapping[str, Any]) -> dict[str, Any]:
    """What the audit row keeps of a subscription: its fields, never the secret."""
    return {name: fields[name] for name in EDITABLE if name in fields}


def create_subscription(actor: Actor, **fields: Any) -> Subscription:
    """A new subscription with a fresh secret, created by the acting user (``created_by``)."""
    unknown = set(fields) - set(EDITABLE)
    if unknown:
        raise SubscriptionRefused(sorted(unknown)[0], "Unknown field.")
    cleaned = clean_subscription(fields)
    now = clock.now()
    with transaction.atomic():
        subscription = Subscription.objects.create(
            **cleaned, secret=new_secret(), created_by_id=actor.user_id, created_at=now, updated_at=now
        )
        record(actor, "subscription.create", "subscription", subscription.pk, **_audited(cleaned))
    return subscription


def _locked(subscription_id: int) -> Subscription:
    subscription = Subscription.objects.select_for_update().filter(pk=subscription_id).first()
    if subscription is None:
        raise NotFound(f"Subscription {subscription_id} does not exist.")
    return subscription


def update_subscription(subscription_id: int, actor: Actor, **changes: Any) -> Subscription:
    """Change some fields; the whole subscription is checked again (a kind change needs its target)."""
    unknown = set(changes) - set(EDITABLE)
    if unknown:
        raise SubscriptionRefused(sorted(unknown)[0], "Unknown field.")
    with transaction.atomic():
        subscription = _locked(subscription_id)
        current = {name: getattr(subscription, name) for name in EDITABLE}
        if "target_kind" in changes and changes["target_kind"] != subscription.target_kind:
            # Changing the kind drops the old kind's target unless the change gives it again.
            current["url"] = "" if changes["target_kind"] == TargetKind.EMAIL else current["url"]
            current["emails"] = [] if changes["target_kind"] != TargetKind.EMAIL else current["emails"]
        cleaned = clean_subscription({**current, **changes})
        changed = {name: value for name, value in cleaned.items() if getattr(subscription, name) != value}
        if changed:
            for name, value in changed.items():
                setattr(subscription, name, value)
            subscription.updated_at = clock.now()
            subscription.save(update_fields=[*changed, "updated_at"])
            record(actor, "subscription.update", "subscription", subscription.pk, **_audited(changed))
    return subscription


def set_enabled(subscription_id: int, enabled: bool, actor: Actor) -> Subscription:
    """A disabled subscription gets no new deliveries; those already written are still sent."""
    with transaction.atomic():
        subscription = _locked(subscription_id)
        if subscription.enabled != enabled:
            subscription.enabled = enabled
            subscription.updated_at = clock.now()
            subscription.save(update_fields=["enabled", "updated_at"])
        record(actor, "subscription.enable" if enabled else "subscription.disable", "subscription", subscription.pk)
    return subscription


def rotate_secret(subscription_id: int, actor: Actor) -> tuple[Subscription, str]:
    """A new signing secret, returned once; every later attempt (also of older deliveries) is signed with it."""
    with transaction.atomic():
        subscription = _locked(subscription_id)
        subscription.secret = new_secret()
        subscription.updated_at = clock.now()
        subscription.save(update_fields=["secret", "updated_at"])
        record(actor, "subscription.rotate_secret", "subscription", subscription.pk)
    return subscription, subscription.secret


def delete_subscription(subscription_id: int, actor: Actor) -> None:
    """Remove the subscription with its deliveries and their log (the audit row keeps its name and target)."""
    with transaction.atomic():
        subscription = _locked(subscription_id)
        kept = _audited({name: getattr(subscription, name) for name in ("name", "target_kind", "url", "emails")})
        subscription.delete()
        record(actor, "subscription.delete", "subscription", subscription_id, **kept)


def mask(secret: str) -> str:
    """What the admin and the API show of a secret: enough to tell two apart, not enough to sign."""
    return f"whsec_…{secret[-4:]}" if secret else ""


def redeliver(delivery_id: str, actor: Actor) -> Delivery:
    """Send the delivery again, with the same ``webhook-id``: due now, a fresh deadline, no lease.

    A delivery merged into a digest was sent as part of its leader: redeliver the leader.
    One being sent right now (pending under a lease) is refused: clearing the lease would
    send it twice at once.
    """
    now = clock.now()
    with transaction.atomic():
        delivery = Delivery.objects.select_for_update().filter(pk=delivery_id).first()
        if delivery is None:
            raise NotFound(f"Delivery {delivery_id} does not exist.")
        if delivery.state == DeliveryState.MERGED:
            raise InvalidTransition(
                f"Delivery {delivery_id} was sent in the digest of delivery {delivery.merged_into_id}: "
                "redeliver that one."
            )
        if delivery.state == DeliveryState.PENDING and delivery.lease_until is not None and delivery.lease_until > now:
            raise InvalidTransition(f"Delivery {delivery_id} is being sent now; try again once this attempt ends.")
        previous = delivery.state
        delivery.state = DeliveryState.PENDING
        delivery.next_attempt_at = now
        delivery.deadline = now + timedelta(seconds=settings.NOTIFY_DEADLINE_S)
        delivery.lease_until = None
        delivery.delivered_at = None
        delivery.save(update_fields=["state", "next_attempt_at", "deadline", "lease_until", "delivered_at"])
        record(actor, "delivery.redeliver", "delivery", delivery.pk, previous=previous)
        wakeup.notify_on_commit(WAKEUP_CHANNEL)
    return delivery
