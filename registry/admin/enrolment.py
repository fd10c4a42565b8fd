"""Bootstrap (enrolment) tokens in the admin: create one (shown once), change its policy, revoke.

Nothing here writes a model: the form's ``save_model`` calls ``registry.actions``
(``create_enrolment_token``, ``set_enrolment_policy``), which audit. Creating or
changing a token needs ``registry.add_agent``, as in the API: a token makes agents.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from django import forms
from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.cache import add_never_cache_headers

from aegis_site.core.adminkit import CappedPaginator, actor_of, run_for_each
from registry import actions, policy
from registry.api.serializers import AGENT_ID_PREFIX_REGEX, AGENT_ID_REGEX
from registry.models import EnrolmentToken

POLICY_FIELDS = ("agent_id_prefix", "fixed_labels", "allowed_labels", "allowed_capabilities")
_CLEANERS = {
    "fixed_labels": policy.clean_fixed_labels,
    "allowed_labels": policy.clean_allowed_labels,
    "allowed_capabilities": policy.clean_allowed_capabilities,
}


class EnrolmentTokenForm(forms.ModelForm):
    """The policy as JSON, checked by ``registry.policy`` (the API's checks); on add, also name, id, uses, lifetime."""

    agent_id = forms.RegexField(AGENT_ID_REGEX, required=False, help_text="The only agent id it enrols; empty: any.")
    agent_id_prefix = forms.RegexField(AGENT_ID_PREFIX_REGEX, required=False, help_text="New ids must start with it.")
    uses = forms.IntegerField(min_value=1, max_value=100_000, initial=1, help_text="Enrolments it allows.")
    ttl_hours = forms.IntegerField(min_value=1, max_value=24 * 365, required=False, help_text="Empty: no expiry.")

    class Meta:
        model = EnrolmentToken
        fields = ["name", "agent_id", *POLICY_FIELDS]

    def _clean_policy(self, name: str) -> Any:
        try:
            return _CLEANERS[name](self.cleaned_data.get(name))
        except policy.PolicyError as error:
            raise forms.ValidationError(str(error)) from error

    def clean_fixed_labels(self) -> Any:
        return self._clean_policy("fixed_labels")

    def clean_allowed_labels(self) -> Any:
        return self._clean_policy("allowed_labels")

    def clean_allowed_capabilities(self) -> Any:
        return self._clean_policy("allowed_capabilities")


class EnrolmentTokenChangeForm(EnrolmentTokenForm):
    class Meta(EnrolmentTokenForm.Meta):
        fields = list(POLICY_FIELDS)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name in ("agent_id", "uses", "ttl_hours"):
            self.fields.pop(name)


@admin.register(EnrolmentToken)
class EnrolmentTokenAdmin(admin.ModelAdmin):
    list_display = ("__str__", "agent_id", "agent_id_prefix", "policy", "uses_left", "expires_at", "revoked_at")
    search_fields = ("name", "token_prefix")
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    paginator = CappedPaginator
    actions = ["revoke"]
    readonly_fields = ("token_prefix", "agent_id", "uses_left", "created_at", "expires_at", "revoked_at")

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        kwargs["form"] = EnrolmentTokenChangeForm if obj is not None else EnrolmentTokenForm
        return super().get_form(request, obj, change, **kwargs)

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None:
            return ["name", "agent_id", "uses", "ttl_hours", *POLICY_FIELDS]
        return [
            "name",
            "token_prefix",
            "agent_id",
            "uses_left",
            "created_at",
            "expires_at",
            "revoked_at",
            *POLICY_FIELDS,
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        return (*self.readonly_fields, "name") if obj is not None else ()

    def has_add_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("registry.add_agent")

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm("registry.add_agent")

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # revoked, never deleted: the audit log names it

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("registry.add_agent")

    @admin.display(description="may claim")
    def policy(self, token: EnrolmentToken) -> str:
        parts = [f"fixed {json.dumps(token.fixed_labels)}"] if token.fixed_labels else []
        parts.append(f"labels {json.dumps(token.allowed_labels)}" if token.allowed_labels else "no labels")
        caps = token.allowed_capabilities
        parts.append(f"capabilities {', '.join(caps)}" if caps else "no capabilities")
        return "; ".join(parts)

    def save_model(self, request: HttpRequest, obj: EnrolmentToken, form: Any, change: bool) -> None:
        data = form.cleaned_data
        if change:
            updated = actions.set_enrolment_policy(
                obj.pk, actor_of(request), **{name: data[name] for name in POLICY_FIELDS if name in data}
            )
            obj.__dict__.update({name: getattr(updated, name) for name in POLICY_FIELDS})
            return
        created, token = actions.create_enrolment_token(
            actor_of(request),
            name=data["name"],
            agent_id=data["agent_id"] or "",
            uses=data["uses"],
            ttl=timedelta(hours=data["ttl_hours"]) if data.get("ttl_hours") else None,
            **{name: data[name] for name in POLICY_FIELDS},
        )
        obj.pk = created.pk
        obj.token_prefix = created.token_prefix
        obj._plaintext = token  # type: ignore[attr-defined]  # for response_add only, never stored

    def response_add(self, request: HttpRequest, obj: EnrolmentToken, post_url_continue: str | None = None) -> Any:
        """The only place the new token is shown: this response, not cached, not stored anywhere."""
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "New enrolment token",
            "enrolment": EnrolmentToken.objects.get(pk=obj.pk),
            "token": obj._plaintext,  # type: ignore[attr-defined]
        }
        response = TemplateResponse(request, "admin/registry/enrolmenttoken/new_token.html", context)
        add_never_cache_headers(response)
        return response

    def log_addition(self, request: HttpRequest, obj: Any, message: Any) -> Any:
        return None  # the action's audit row is the record (enrolment_token.create)

    def log_change(self, request: HttpRequest, obj: Any, message: Any) -> Any:
        return None  # enrolment_token.policy

    @admin.action(description="Revoke selected enrolment tokens", permissions=("revoke",))
    def revoke(self, request: HttpRequest, queryset: QuerySet[EnrolmentToken]) -> HttpResponse | None:
        actor = actor_of(request)
        ids = list(queryset.values_list("pk", flat=True))
        run_for_each(
            self,
            request,
            ids,
            lambda pk: actions.revoke_enrolment_token(pk, actor),
            "Revoked {count} enrolment token(s).",
        )
        return None
