"""Notifications in the admin: subscriptions, their deliveries with the attempt log, and the events.

Nothing here writes a model: the subscription form's ``save_model`` and the actions call
``notify.actions`` (which audit), and the form checks with the same ``notify.actions.clean_*``
as the API. The secret is shown masked; "Rotate secret" shows the new one once, on a page
that is never cached. Deliveries and events are read-only; "Redeliver" sends a delivery again.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin
from django.contrib.admin.utils import quote
from django.db.models import OuterRef, QuerySet, Subquery
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.cache import add_never_cache_headers
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from aegis_site.core.adminkit import ReadOnlyAdmin, ReadOnlyInline, actor_of, run_for_each
from notify import actions
from notify.models import Delivery, DeliveryAttempt, Event, EventType, Subscription

RECENT_DELIVERIES = 20


class SubscriptionForm(forms.ModelForm):
    """Events as checkboxes, the lists and the selector as JSON; checked by ``notify.actions`` like the API."""

    url = forms.CharField(required=False, max_length=2000, help_text="Webhook or Slack incoming-webhook URL.")
    events = forms.MultipleChoiceField(choices=EventType.choices, widget=forms.CheckboxSelectMultiple)
    emails = forms.JSONField(required=False, initial=list, help_text='E-mail target: ["ops@example.com"].')
    job_kinds = forms.JSONField(required=False, initial=list, help_text='Only these job kinds, e.g. ["deploy"].')
    agent_labels = forms.JSONField(
        required=False, initial=dict, help_text='Label selector, e.g. {"zone": ["eu-1", "eu-2"]}; empty: any agent.'
    )

    class Meta:
        model = Subscription
        fields = list(actions.EDITABLE)

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if self.errors:
            return data
        given = {name: data.get(name) for name in actions.EDITABLE}
        given["url"] = given["url"] or ""
        given["emails"] = given["emails"] or []
        try:
            self.checked = actions.clean_subscription(given)
        except actions.SubscriptionRefused as refused:
            self.add_error(refused.field if refused.field in self.fields else None, str(refused))
        return data


def _last_state() -> Subquery:
    latest = Delivery.objects.filter(subscription=OuterRef("pk")).order_by("-created_at", "-id").values("state")[:1]
    return Subquery(latest)


@admin.register(Subscription)
class SubscriptionAdmin(admin.ModelAdmin):
    form = SubscriptionForm
    list_display = ("name", "target_kind", "target", "event_list", "enabled", "created_by", "last_delivery")
    list_filter = ("enabled", "target_kind")
    search_fields = ("name", "url")
    actions = ["enable", "disable", "rotate_secret"]
    readonly_fields = ("masked_secret", "created_by", "created_at", "updated_at", "recent_deliveries")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Subscription]:
        return super().get_queryset(request).select_related("created_by").annotate(last_state=_last_state())

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        fields = list(actions.EDITABLE)
        if obj is None:
            return fields
        return [*fields, "masked_secret", "created_by", "created_at", "updated_at", "recent_deliveries"]

    @admin.display(description="target")
    def target(self, subscription: Subscription) -> str:
        return subscription.url or ", ".join(subscription.emails)

    @admin.display(description="events")
    def event_list(self, subscription: Subscription) -> str:
        return ", ".join(subscription.events)

    @admin.display(description="last delivery")
    def last_delivery(self, subscription: Subscription) -> str:
        return getattr(subscription, "last_state", None) or "-"

    @admin.display(description="secret")
    def masked_secret(self, subscription: Subscription) -> str:
        hint = "select it in the list and run \u201cRotate secret\u201d for a new one"
        return f"{actions.mask(subscription.secret)} ({hint})"

    @admin.display(description="recent deliveries")
    def recent_deliveries(self, subscription: Subscription) -> SafeString:
        rows = Delivery.objects.filter(subscription=subscription).select_related("event")
        recent = list(rows.order_by("-created_at", "-id")[:RECENT_DELIVERIES])
        if not recent:
            return format_html("{}", "none yet")
        lines = format_html_join(
            "",
            '<tr><td><a href="{}">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>',
            (
                (
                    reverse("admin:notify_delivery_change", args=[quote(delivery.pk)]),  # admin URLs escape "_"
                    delivery.pk,
                    delivery.event.type,
                    delivery.state,
                    delivery.attempts,
                    delivery.last_status or "",
                    f"{delivery.created_at:%Y-%m-%d %H:%M:%S}",
                )
                for delivery in recent
            ),
        )
        head = "<tr><th>id</th><th>event</th><th>state</th><th>attempts</th><th>status</th><th>created</th></tr>"
        return format_html("<table>{}{}</table>", SafeString(head), lines)

    def save_model(self, request: HttpRequest, obj: Subscription, form: Any, change: bool) -> None:
        checked = form.checked
        if change:
            changed = actions.update_subscription(obj.pk, actor_of(request), **checked)
            obj.__dict__.update({name: getattr(changed, name) for name in (*actions.EDITABLE, "updated_at")})
            return
        created = actions.create_subscription(actor_of(request), **checked)
        obj.__dict__.update(created.__dict__)

    def delete_model(self, request: HttpRequest, obj: Subscription) -> None:
        actions.delete_subscription(obj.pk, actor_of(request))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Subscription]) -> None:
        for pk in list(queryset.values_list("pk", flat=True)):
            actions.delete_subscription(pk, actor_of(request))

    def log_addition(self, request: HttpRequest, obj: Any, message: Any) -> Any:
        return None  # the action's audit row is the record (subscription.create)

    def log_change(self, request: HttpRequest, obj: Any, message: Any) -> Any:
        return None  # subscription.update

    def log_deletion(self, request: HttpRequest, obj: Any, object_repr: str) -> Any:
        return None  # subscription.delete

    def log_deletions(self, request: HttpRequest, queryset: Any) -> Any:
        return None  # subscription.delete, one per subscription

    @admin.action(description="Enable selected subscriptions", permissions=("change",))
    def enable(self, request: HttpRequest, queryset: QuerySet[Subscription]) -> None:
        actor = actor_of(request)
        ids = list(queryset.values_list("pk", flat=True))
        run_for_each(self, request, ids, lambda pk: actions.set_enabled(pk, True, actor), "Enabled {count}.")

    @admin.action(description="Disable selected subscriptions", permissions=("change",))
    def disable(self, request: HttpRequest, queryset: QuerySet[Subscription]) -> None:
        actor = actor_of(request)
        ids = list(queryset.values_list("pk", flat=True))
        run_for_each(self, request, ids, lambda pk: actions.set_enabled(pk, False, actor), "Disabled {count}.")

    @admin.action(description="Rotate secret of selected subscriptions", permissions=("change",))
    def rotate_secret(self, request: HttpRequest, queryset: QuerySet[Subscription]) -> HttpResponse:
        """The new secrets on a page of their own, never cached: the only place they are shown."""
        actor = actor_of(request)
        rotated = [actions.rotate_secret(pk, actor) for pk in queryset.values_list("pk", flat=True)]
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "New signing secrets",
            "rotated": rotated,
        }
        response = TemplateResponse(request, "admin/notify/subscription/new_secrets.html", context)
        add_never_cache_headers(response)
        return response


class DeliveryAttemptInline(ReadOnlyInline):
    model = DeliveryAttempt
    fields = ("at", "status", "error", "duration_ms")
    readonly_fields = fields
    verbose_name_plural = "attempts (newest first)"

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.has_perm("notify.view_delivery"))  # the log is part of the delivery


class EventTypeFilter(admin.SimpleListFilter):
    title = "event type"
    parameter_name = "event_type"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return list(EventType.choices)

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset.filter(event__type=value) if value else queryset


@admin.register(Delivery)
class DeliveryAdmin(ReadOnlyAdmin):
    list_display = ("id", "subscription", "event_type", "state", "attempts", "last_status", "created_at", "deadline")
    list_filter = ("state", "subscription", EventTypeFilter)
    list_select_related = ("subscription", "event")
    search_fields = ("=id", "=event__id")
    inlines = [DeliveryAttemptInline]
    actions = ["redeliver"]
    readonly_fields = (
        "id",
        "subscription",
        "event",
        "state",
        "attempts",
        "created_at",
        "next_attempt_at",
        "lease_until",
        "deadline",
        "delivered_at",
        "last_status",
        "last_error",
        "merged_into",
        "body",
    )
    fields = readonly_fields

    @admin.display(description="event type")
    def event_type(self, delivery: Delivery) -> str:
        return delivery.event.type

    @admin.display(description="event data")
    def body(self, delivery: Delivery) -> SafeString:
        return format_html("<pre>{}</pre>", json.dumps(delivery.event.payload, indent=2, sort_keys=True))

    @admin.action(description="Redeliver selected deliveries (same webhook-id)", permissions=("operate",))
    def redeliver(self, request: HttpRequest, queryset: QuerySet[Delivery]) -> None:
        actor = actor_of(request)
        ids = list(queryset.values_list("pk", flat=True))
        run_for_each(self, request, ids, lambda pk: actions.redeliver(pk, actor), "{count} delivery(ies) due again.")


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin):
    list_display = ("id", "type", "key", "occurred_at", "job_id")
    list_filter = ("type",)
    search_fields = ("=id", "=key")
    fields = ("id", "type", "key", "occurred_at", "job_id", "data")
    readonly_fields = fields

    @admin.display(description="data")
    def data(self, event: Event) -> SafeString:
        return format_html("<pre>{}</pre>", json.dumps(event.payload, indent=2, sort_keys=True))
