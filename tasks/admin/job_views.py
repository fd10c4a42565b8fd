"""The job pages' custom views: create with a dry-run preview, and the detail page's control buttons.

They parse the request and call ``tasks.actions``, like the API does; nothing here writes a row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from aegis_site.core.adminkit import actor_of
from aegis_site.core.errors import DomainError, InvalidTarget
from registry.models import AdminState, Agent, Connectivity
from tasks import actions
from tasks.admin import job_form
from tasks.engine import checks
from tasks.engine.preview import JobPreview, Wave
from tasks.engine.submit import JobSpec
from tasks.models import Job

PREVIEW_AGENTS_SHOWN = 50
PREVIEW_WAVES_SHOWN = 20


@dataclass(frozen=True)
class PreviewAgent:
    id: str
    connectivity: str
    admin_state: str


@dataclass(frozen=True)
class PreviewView:
    """The dry run as the page shows it: the engine's preview plus the listed agents' states."""

    preview: JobPreview
    agents: list[PreviewAgent]  # the first PREVIEW_AGENTS_SHOWN
    offline: int  # among the listed agents (every matching agent when there are at most 1000)
    draining: int
    listed: int

    @property
    def complete(self) -> bool:
        return self.listed == self.preview.agent_count

    @property
    def waves(self) -> list[Wave]:
        return self.preview.waves[:PREVIEW_WAVES_SHOWN]

    @property
    def warnings(self) -> list[checks.Warning]:
        """What the submit checks found, but the fleet-wide notice (the agent count line says that)."""
        return [warning for warning in self.preview.warnings if warning.code != checks.FLEET_WIDE]

    def warns(self, code: str) -> bool:
        return self.preview.warning(code) is not None

    @property
    def no_agents(self) -> bool:
        return self.warns(checks.NO_MATCHING_AGENT)

    @property
    def kind_not_offered(self) -> bool:
        return self.warns(checks.KIND_NOT_OFFERED)


def preview_view(preview: JobPreview) -> PreviewView:
    """Look up the states of the agents the preview lists: one query, bounded by the preview's own cap."""
    states = {pk: (connectivity, state) for pk, connectivity, state in _agent_states(preview.agent_ids)}
    listed = [PreviewAgent(pk, *states.get(pk, ("unknown", "unknown"))) for pk in preview.agent_ids]
    return PreviewView(
        preview=preview,
        agents=listed[:PREVIEW_AGENTS_SHOWN],
        offline=sum(agent.connectivity != Connectivity.ONLINE for agent in listed),
        draining=sum(agent.admin_state == AdminState.DRAINING for agent in listed),
        listed=len(listed),
    )


def _agent_states(agent_ids: list[str]) -> list[tuple[str, str, str]]:
    if not agent_ids:
        return []
    return list(Agent.objects.filter(pk__in=agent_ids).order_by().values_list("pk", "connectivity", "admin_state"))


def create_view(model_admin: admin.ModelAdmin, request: HttpRequest) -> HttpResponse:
    """GET: an empty form (or a clone's, ``?clone=<id>``). POST ``_preview``: the dry run. POST ``_launch``: submit."""
    if not model_admin.has_add_permission(request):
        raise PermissionDenied
    preview: PreviewView | None = None
    if request.method == "POST":
        form = job_form.JobForm(request.POST)
        labels = job_form.label_formset(request.POST)
        spec = job_form.build_spec(form, labels)
        if spec is not None:
            if "_launch" in request.POST:
                launched = _launch(model_admin, request, spec, form)
                if launched is not None:
                    return launched
            else:
                preview = _preview(spec, form)
    else:
        form, labels = _blank_or_clone(model_admin, request)
    context = {
        **model_admin.admin_site.each_context(request),
        "title": "Create job",
        "subtitle": None,
        "opts": model_admin.opts,
        "form": form,
        "labels": labels,
        "preview": preview,
        "media": model_admin.media + form.media,
    }
    return TemplateResponse(request, "admin/tasks/job/create.html", context)


def _blank_or_clone(model_admin: admin.ModelAdmin, request: HttpRequest) -> tuple[Any, Any]:
    clone_of = request.GET.get("clone", "")
    if clone_of.isdigit():
        job = get_object_or_404(model_admin.get_queryset(request).defer(None), pk=int(clone_of))
        return job_form.JobForm(initial=job_form.initial_from_job(job)), job_form.label_formset(
            initial=job_form.label_rows(job.target_labels or {})
        )
    return job_form.JobForm(initial=job_form.default_initial()), job_form.label_formset()


def _preview(spec: JobSpec, form: job_form.JobForm) -> PreviewView | None:
    try:
        return preview_view(actions.preview_job(spec))
    except DomainError as exc:
        _refused(form, exc)
        return None


def _refused(form: job_form.JobForm, exc: DomainError) -> None:
    """The engine's refusal as a form error on the field that answers it (the API names the same field)."""
    if isinstance(exc, checks.SpecRefused):
        if exc.field in form.fields and exc.field.startswith("allow_"):
            label = form.fields[exc.field].label
            form.add_error(exc.field, f'{exc.reason} Tick "{label}" to launch it anyway.')
        else:
            form.add_error(exc.field if exc.field in form.fields else None, str(exc))
    elif isinstance(exc, checks.IdempotencyConflict):
        form.add_error("idempotency_key", str(exc))
    elif isinstance(exc, InvalidTarget):
        form.add_error("target_agent_ids", str(exc))
    else:
        form.add_error(None, str(exc))


def _launch(
    model_admin: admin.ModelAdmin, request: HttpRequest, spec: JobSpec, form: job_form.JobForm
) -> HttpResponse | None:
    try:
        job, created = actions.submit_job(spec, actor_of(request))
    except DomainError as exc:
        _refused(form, exc)
        return None
    if created:
        model_admin.message_user(request, f"Launched job {job.pk} with {job.tasks_total} tasks.", messages.SUCCESS)
    else:
        model_admin.message_user(
            request, f"The idempotency key was used by job {job.pk}: nothing new was launched.", messages.WARNING
        )
    return HttpResponseRedirect(reverse("admin:tasks_job_change", args=[job.pk]))


# --- the detail page's buttons ------------------------------------------------------------


def _pause(request: HttpRequest, job_id: int) -> str:
    actions.pause_job(job_id, actor_of(request))
    return "Paused the job: no new task is assigned until it resumes."


def _resume(request: HttpRequest, job_id: int) -> str:
    actions.resume_job(job_id, actor_of(request))
    return "Resumed the job."


def _cancel(request: HttpRequest, job_id: int) -> str:
    force = request.POST.get("force") == "on"
    actions.cancel_job(job_id, actor_of(request), force=force)
    return (
        "Canceled the job; its held tasks ended at once."
        if force
        else "Canceled the job; running tasks are asked to stop."
    )


def _retry_failed(request: HttpRequest, job_id: int) -> str:
    reset_backoff = request.POST.get("reset_backoff") == "on"
    allowance = actions.retry_job_tasks(job_id, actor_of(request), reset_backoff=reset_backoff)
    if not allowance.retried:
        return "No failed task to queue again."
    return (
        f"Queued {allowance.retried} failed task{'s' if allowance.retried != 1 else ''} again: "
        f"{allowance.numbering} ({allowance.reason}); "
        + ("the backoff starts again from the base." if reset_backoff else "the backoff goes on growing.")
    )


CONTROLS: dict[str, Callable[[HttpRequest, int], str]] = {
    "pause": _pause,
    "resume": _resume,
    "cancel": _cancel,
    "retry-failed": _retry_failed,
}


def control_view(model_admin: admin.ModelAdmin, name: str) -> Callable[..., HttpResponse]:
    """A POST-only view that runs one control on one job, then goes back to its page with a message.

    "Retry failed" answers GET too: a confirmation page that says what the retry gives.
    """
    control = CONTROLS[name]

    @require_http_methods(["GET", "POST"] if name == "retry-failed" else ["POST"])
    def view(request: HttpRequest, object_id: int) -> HttpResponse:
        if not model_admin.has_operate_permission(request):  # type: ignore[attr-defined]
            raise PermissionDenied
        get_object_or_404(Job.objects.only("pk"), pk=object_id)
        if request.method == "GET":
            return _retry_confirmation(model_admin, request, object_id)
        try:
            done = control(request, object_id)
        except DomainError as exc:
            model_admin.message_user(request, f"Job {object_id}: {exc}", messages.WARNING)
        else:
            model_admin.message_user(request, done, messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:tasks_job_change", args=[object_id]))

    return view


def _retry_confirmation(model_admin: admin.ModelAdmin, request: HttpRequest, job_id: int) -> HttpResponse:
    """What "Retry failed" would do: how many tasks, their attempt numbering, the backoff with and without reset."""
    job = Job.objects.get(pk=job_id)
    context = {
        **model_admin.admin_site.each_context(request),
        "title": f"Retry the failed tasks of job {job.pk}?",
        "subtitle": None,
        "opts": model_admin.opts,
        "original": job,
        "allowance": actions.preview_retry(job_id),
        "reset": actions.preview_retry(job_id, reset_backoff=True),
    }
    return TemplateResponse(request, "admin/tasks/job/retry.html", context)
