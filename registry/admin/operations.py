"""Operator actions on agents in the admin: bulk actions on the changelist and buttons on the detail page.

Both call ``registry.actions`` (which audit every change) and need the operate permission
(``registry.change_agent``); credentials need what the API asks for them: issuing one (rotate
token, certificate bundle) also ``registry.add_agentcredential``, revoking one
``registry.change_agentcredential``. The detail buttons are POST views under the agent's admin URL,
behind ``admin_site.admin_view`` (staff login, CSRF, no caching). A new token is shown on the
response page only: never in a message (messages live in the session or a cookie).
"""

from __future__ import annotations

from collections.abc import Callable

from django.contrib import admin, messages
from django.contrib.admin.utils import quote, unquote
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase, HttpResponseNotAllowed
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.cache import add_never_cache_headers

from aegis_site.core.adminkit import REFUSALS, ReadOnlyAdmin, actor_of, run_for_each
from aegis_site.core.audit import Actor
from registry import actions
from registry.admin.certificates import BrokerDirMissing, broker_layout, issue_bundle, revoke, zip_bundles
from registry.api.serializers import AgentUpdateSerializer
from registry.models import AdminState, Agent, AgentCredential

Step = Callable[[str, Actor], object]

# operation in the URL -> (button label, what it does, what the operator is told)
OPERATIONS: dict[str, tuple[str, Step, str]] = {
    "drain": (
        "Drain",
        lambda agent_id, actor: actions.set_admin_state(agent_id, AdminState.DRAINING, actor),
        "draining: it finishes what it runs and takes nothing new",
    ),
    "disable": (
        "Disable",
        lambda agent_id, actor: actions.set_admin_state(agent_id, AdminState.DISABLED, actor),
        "disabled: it gets no tasks and its tokens stop authenticating",
    ),
    "enable": (
        "Enable",
        lambda agent_id, actor: actions.set_admin_state(agent_id, AdminState.ACTIVE, actor),
        "active again",
    ),
    "ping": ("Ping", actions.ping_agent, "pinged: it answers with a heartbeat if it is connected"),
}


# The admin state each state-changing operation leads to: the detail page offers it only to agents not in it.
TARGET_STATE = {"drain": AdminState.DRAINING, "disable": AdminState.DISABLED, "enable": AdminState.ACTIVE}


class AgentOperationsAdmin(ReadOnlyAdmin):
    def has_issue_credentials_permission(self, request: HttpRequest) -> bool:
        return self.has_operate_permission(request) and request.user.has_perm("registry.add_agentcredential")

    def has_revoke_credentials_permission(self, request: HttpRequest) -> bool:
        return self.has_operate_permission(request) and request.user.has_perm("registry.change_agentcredential")

    actions = ["drain", "disable", "enable", "ping", "rotate_tokens", "download_certificates", "revoke_credentials"]

    # --- changelist bulk actions -----------------------------------------------------

    def _each(self, request: HttpRequest, queryset: QuerySet[Agent], operation: str, done: str) -> None:
        _, step, _ = OPERATIONS[operation]
        actor = actor_of(request)
        ids = list(queryset.values_list("pk", flat=True))
        run_for_each(self, request, ids, lambda agent_id: step(agent_id, actor), done)

    @admin.action(description="Drain selected agents", permissions=("operate",))
    def drain(self, request: HttpRequest, queryset: QuerySet[Agent]) -> None:
        self._each(request, queryset, "drain", "Draining {count} agent(s).")

    @admin.action(description="Disable selected agents", permissions=("operate",))
    def disable(self, request: HttpRequest, queryset: QuerySet[Agent]) -> None:
        self._each(request, queryset, "disable", "Disabled {count} agent(s).")

    @admin.action(description="Enable selected agents", permissions=("operate",))
    def enable(self, request: HttpRequest, queryset: QuerySet[Agent]) -> None:
        self._each(request, queryset, "enable", "Enabled {count} agent(s).")

    @admin.action(description="Ping selected agents", permissions=("operate",))
    def ping(self, request: HttpRequest, queryset: QuerySet[Agent]) -> None:
        self._each(request, queryset, "ping", "Pinged {count} agent(s).")

    @admin.action(description="Rotate the token of selected agents", permissions=("issue_credentials",))
    def rotate_tokens(self, request: HttpRequest, queryset: QuerySet[Agent]) -> HttpResponse | None:
        actor = actor_of(request)
        issued: list[tuple[str, str]] = []

        def rotate(agent_id: str) -> None:
            _, token = actions.rotate_token(agent_id, actor)
            issued.append((agent_id, token))

        run_for_each(self, request, list(queryset.values_list("pk", flat=True)), rotate, "Rotated {count} token(s).")
        return self._token_page(request, issued) if issued else None

    @admin.action(description="Issue and download certificate bundles", permissions=("issue_credentials",))
    def download_certificates(self, request: HttpRequest, queryset: QuerySet[Agent]) -> HttpResponse | None:
        try:
            layout = broker_layout()
        except BrokerDirMissing as missing:
            self.message_user(request, str(missing), messages.ERROR)
            return None
        actor = actor_of(request)
        bundles = []

        def issue(agent_id: str) -> None:
            try:
                bundles.append(issue_bundle(layout, agent_id, actor))
            except OSError as error:  # e.g. the web process may not write to the broker directory
                raise ValueError(f"cannot write to the broker directory: {error}") from error

        ids = list(queryset.values_list("pk", flat=True))
        run_for_each(self, request, ids, issue, "Issued {count} certificate(s).")
        if not bundles:
            return None
        name = f"{bundles[0].agent_id}-certificate.zip" if len(bundles) == 1 else "agent-certificates.zip"
        return _zip_response(zip_bundles(bundles), name)

    @admin.action(description="Revoke every credential of selected agents", permissions=("revoke_credentials",))
    def revoke_credentials(self, request: HttpRequest, queryset: QuerySet[Agent]) -> HttpResponse | None:
        ids = list(queryset.values_list("pk", flat=True))
        live = AgentCredential.objects.filter(agent_id__in=ids, revoked_at__isnull=True)
        if request.POST.get("confirmed") != "yes":
            context = {
                **self.admin_site.each_context(request),
                "opts": self.opts,
                "title": "Revoke credentials",
                "agent_ids": ids,
                "credentials": live.order_by("agent_id", "kind")[:200],
                "action": "revoke_credentials",
            }
            return TemplateResponse(request, "admin/registry/agent/revoke_confirmation.html", context)
        actor = actor_of(request)
        notes: dict[str, None] = {}

        def revoke_one(credential_id: int) -> None:
            notes[revoke(AgentCredential.objects.get(pk=credential_id), actor)] = None

        run_for_each(
            self, request, list(live.values_list("pk", flat=True)), revoke_one, "Revoked {count} credential(s)."
        )
        for note in notes:
            self.message_user(request, note, messages.INFO)
        return None

    # --- detail page buttons ---------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        name = f"{self.opts.app_label}_{self.opts.model_name}"
        wrap = self.admin_site.admin_view
        return [
            path("<path:object_id>/operate/<slug:operation>/", wrap(self.operate_view), name=f"{name}_operate"),
            path("<path:object_id>/rotate-token/", wrap(self.rotate_token_view), name=f"{name}_rotate_token"),
            path("<path:object_id>/edit/", wrap(self.edit_view), name=f"{name}_edit"),
            path(
                "<path:object_id>/certificate-bundle/",
                wrap(self.certificate_bundle_view),
                name=f"{name}_certificate_bundle",
            ),
            path(
                "<path:object_id>/credentials/<int:credential_id>/revoke/",
                wrap(self.revoke_credential_view),
                name=f"{name}_revoke_credential",
            ),
            *super().get_urls(),
        ]

    def _operable(
        self, request: HttpRequest, object_id: str, allowed: Callable[[HttpRequest], bool] | None = None
    ) -> Agent:
        """The agent an operator may act on through a POST, or 405 / 403 / 404."""
        if not (allowed or self.has_operate_permission)(request):
            raise PermissionDenied
        agent = self.get_object(request, unquote(object_id))
        if agent is None:
            raise Http404(f"no agent {object_id}")
        return agent

    def _back(self, agent_id: str) -> HttpResponse:
        return redirect(reverse("admin:registry_agent_change", args=[quote(agent_id)]))

    def operate_view(self, request: HttpRequest, object_id: str, operation: str) -> HttpResponseBase:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        agent = self._operable(request, object_id)
        if operation not in OPERATIONS:
            raise Http404(f"no operation {operation}")
        _, step, outcome = OPERATIONS[operation]
        try:
            step(agent.pk, actor_of(request))
        except REFUSALS as refusal:
            self.message_user(request, f"{agent.pk}: {refusal}", messages.WARNING)
        else:
            self.message_user(request, f"{agent.pk} {outcome}.", messages.SUCCESS)
        return self._back(agent.pk)

    def edit_view(self, request: HttpRequest, object_id: str) -> HttpResponseBase:
        """Name and labels, what an operator may change (as ``PATCH /api/v1/agents/{id}/``), through register_agent."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        agent = self._operable(request, object_id)
        try:
            name, labels = parse_edit(request.POST.get("name", ""), request.POST.get("labels", ""))
        except ValueError as error:
            self.message_user(request, f"nothing changed: {error}", messages.ERROR)
            return self._back(agent.pk)
        actions.register_agent(agent.pk, actor_of(request), name=name, labels=labels)
        self.message_user(request, f"{agent.pk}: name and labels saved.", messages.SUCCESS)
        return self._back(agent.pk)

    def rotate_token_view(self, request: HttpRequest, object_id: str) -> HttpResponseBase:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        agent = self._operable(request, object_id, self.has_issue_credentials_permission)
        _, token = actions.rotate_token(agent.pk, actor_of(request))
        return self._token_page(request, [(agent.pk, token)])

    def certificate_bundle_view(self, request: HttpRequest, object_id: str) -> HttpResponseBase:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        agent = self._operable(request, object_id, self.has_issue_credentials_permission)
        try:
            bundle = issue_bundle(broker_layout(), agent.pk, actor_of(request))
        except BrokerDirMissing as missing:
            self.message_user(request, str(missing), messages.ERROR)
            return self._back(agent.pk)
        except (OSError, ValueError) as error:
            self.message_user(request, f"no certificate issued: {error}", messages.ERROR)
            return self._back(agent.pk)
        return _zip_response(zip_bundles([bundle]), f"{agent.pk}-certificate.zip")

    def revoke_credential_view(self, request: HttpRequest, object_id: str, credential_id: int) -> HttpResponseBase:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        agent = self._operable(request, object_id, self.has_revoke_credentials_permission)
        credential = get_object_or_404(AgentCredential, pk=credential_id, agent_id=agent.pk)
        try:
            note = revoke(credential, actor_of(request))
        except (OSError, ValueError) as error:
            self.message_user(request, f"not revoked: {error}", messages.ERROR)
        else:
            self.message_user(request, note, messages.SUCCESS)
        return self._back(agent.pk)

    def _token_page(self, request: HttpRequest, issued: list[tuple[str, str]]) -> HttpResponse:
        """The only place a new token is shown: this response, not cached, not stored anywhere."""
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "New agent token" if len(issued) == 1 else "New agent tokens",
            "issued": issued,
        }
        response = TemplateResponse(request, "admin/registry/agent/new_tokens.html", context)
        add_never_cache_headers(response)
        return response

    def detail_buttons(self, agent: Agent | None = None) -> list[tuple[str, str]]:
        """The buttons that change something for this agent: no "Enable" on an active one, no "Drain" twice."""
        current = agent.admin_state if agent is not None else None
        return [
            (operation, label)
            for operation, (label, _, _) in OPERATIONS.items()
            if current is None or TARGET_STATE.get(operation) != current
        ]


def parse_edit(name: str, labels_text: str) -> tuple[str, dict[str, str]]:
    """The edit form's fields, checked by the API's own serializer: ``key=value`` lines become labels."""
    labels: dict[str, str] = {}
    for number, line in enumerate(labels_text.splitlines(), 1):
        if not line.strip():
            continue
        key, separator, value = line.partition("=")
        if not separator or not key.strip():
            raise ValueError(f"label line {number} is not key=value: {line.strip()[:80]!r}")
        labels[key.strip()] = value.strip()
    body = AgentUpdateSerializer(data={"name": name.strip(), "labels": labels})
    if not body.is_valid():
        problems = "; ".join(f"{field}: {' '.join(map(str, errors))}" for field, errors in body.errors.items())
        raise ValueError(problems)
    return body.validated_data["name"], body.validated_data["labels"]


def _zip_response(data: bytes, filename: str) -> HttpResponse:
    response = HttpResponse(data, content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    add_never_cache_headers(response)
    return response
