"""The admin's job form: it only parses what a person types; the API's serializer judges the specification.

The form turns text boxes and label rows into the API's request body, then hands
that to ``JobCreateSerializer``, so the admin and the API accept exactly the same
jobs and build the same ``JobSpec``. The serializer's complaints come back as field
errors under the same names.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from django import forms
from django.conf import settings
from rest_framework.exceptions import ErrorDetail

from broker.protocol import ProtocolError, decode_json
from tasks.api.serializers import JobCreateSerializer
from tasks.engine.submit import JobSpec
from tasks.models import Job, JobMode

LABEL_EQUALS = "="
LABEL_IN = "in"
BLANK_LABEL_ROWS = 3
_AGENT_ID_SEPARATORS = re.compile(r"[\s,]+")
_LIST_SEPARATORS = re.compile(r"[,\n]")

# Spec fields the form passes on only when filled in; left empty, the server's default applies.
_OPTIONAL = (
    "task_count",
    "max_attempts",
    "backoff_base_s",
    "backoff_cap_s",
    "delivery_timeout_s",
    "execution_timeout_s",
    "not_before",
    "idempotency_key",
    "max_in_flight",
    "max_in_flight_percent",
    "rate_per_minute",
    "abort_failure_ratio",
    "abort_min_finished",
)


def _split(text: str, separators: re.Pattern[str]) -> list[str]:
    return [item.strip() for item in separators.split(text or "") if item.strip()]


class JobForm(forms.Form):
    """Every field of a job specification, named as in the API (``id_kind``, ``id_payload``...)."""

    kind = forms.CharField(max_length=64, help_text="The task kind agents run, e.g. <code>echo</code>.")
    payload = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 8, "cols": 80, "class": "vLargeTextField", "spellcheck": "false"}),
        help_text="A JSON object handed to every task. Empty: <code>{}</code>.",
    )
    target_agent_ids = forms.CharField(
        required=False,
        label="Agent ids",
        widget=forms.Textarea(attrs={"rows": 2, "cols": 80}),
        help_text="Only these agents, separated by commas, spaces or new lines.",
    )
    target_capabilities = forms.CharField(
        required=False,
        label="Capabilities",
        widget=forms.TextInput(attrs={"size": 60}),
        help_text="The agent must offer all of these, separated by commas.",
    )
    target_all = forms.BooleanField(
        required=False,
        label="Target every agent of the fleet",
        help_text="Tick to launch a job without agent ids, labels or capabilities: it goes to every agent. "
        "Without a target and without this, nothing is launched.",
    )
    mode = forms.ChoiceField(choices=JobMode.choices, initial=JobMode.EACH)
    task_count = forms.IntegerField(required=False, initial=1, help_text="Mode 'any' only: how many tasks.")
    continuous = forms.BooleanField(required=False, help_text="Mode 'each' only: agents that match later get a task.")
    priority = forms.IntegerField(required=False, initial=0, help_text="Higher runs first.")
    max_attempts = forms.IntegerField(required=False)
    backoff_base_s = forms.FloatField(required=False, label="Backoff base (s)")
    backoff_cap_s = forms.FloatField(required=False, label="Backoff cap (s)")
    delivery_timeout_s = forms.IntegerField(required=False, label="Delivery timeout (s)")
    execution_timeout_s = forms.IntegerField(required=False, label="Execution timeout (s)")
    max_in_flight = forms.IntegerField(required=False, help_text="Tasks at once.")
    max_in_flight_percent = forms.IntegerField(
        required=False, label="Max in flight (%)", help_text="Percent of tasks at once."
    )
    rate_per_minute = forms.IntegerField(required=False, help_text="Assignments a minute.")
    abort_failure_ratio = forms.FloatField(
        required=False, help_text="Abort when failed / finished tasks exceed this (0 to 1)."
    )
    abort_min_finished = forms.IntegerField(required=False, help_text="Finished tasks before the abort rule applies.")
    not_before = forms.DateTimeField(
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        help_text="Do not start before this time (server time zone).",
    )
    idempotency_key = forms.CharField(
        required=False,
        max_length=200,
        help_text="Launching the same job with the same key again shows the existing job; "
        "another job with a used key is refused.",
    )
    # The answers to the submit checks (tasks.engine.checks): shown with the check's warning.
    allow_no_agents = forms.BooleanField(
        required=False,
        label="Launch although no agent matches",
        help_text="The job is created with no tasks (mode each) or its tasks wait for an agent (mode any).",
    )
    allow_unsupported_kind = forms.BooleanField(
        required=False,
        label="Launch although agents do not offer the kind",
        help_text="Their tasks will fail: the kind is not among their capabilities.",
    )

    def clean_payload(self) -> Any:
        text = self.cleaned_data["payload"].strip()
        if not text:
            return {}
        try:  # the protocol's rules, as the API's parser applies them: strict JSON, depth, no NUL or lone surrogate
            value = decode_json(text.encode("utf-8", "surrogatepass"), max_bytes=int(settings.API_MAX_BODY_BYTES))
        except ProtocolError as refused:
            raise forms.ValidationError(f"Not a valid payload: {refused.message}") from None
        if not isinstance(value, dict):
            raise forms.ValidationError("The payload must be a JSON object: {...}.")
        return value


class LabelRowForm(forms.Form):
    """One line of the label selector: ``key = value`` or ``key in a, b``."""

    key = forms.CharField(required=False, max_length=200, widget=forms.TextInput(attrs={"size": 20}))
    op = forms.ChoiceField(choices=[(LABEL_EQUALS, "="), (LABEL_IN, "in")], initial=LABEL_EQUALS, required=False)
    value = forms.CharField(
        required=False, max_length=10_000, widget=forms.TextInput(attrs={"size": 40, "placeholder": "value or a, b"})
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        key, value = data.get("key", "").strip(), data.get("value", "").strip()
        if value and not key:
            raise forms.ValidationError("Give the label key, or clear the value.")
        if key and not value:
            raise forms.ValidationError(f"Give a value for label '{key}'.")
        data["key"] = key
        data["wanted"] = _split(value, _LIST_SEPARATORS) if data.get("op") == LABEL_IN else value
        return data


class BaseLabelRowFormSet(forms.BaseFormSet):
    def clean(self) -> None:
        if any(self.errors):
            return
        keys = [form.cleaned_data["key"] for form in self.forms if form.cleaned_data.get("key")]
        repeated = sorted({key for key in keys if keys.count(key) > 1})
        if repeated:
            raise forms.ValidationError(f"Each label key once: {', '.join(repeated)}.")

    def selector(self) -> dict[str, Any]:
        return {
            form.cleaned_data["key"]: form.cleaned_data["wanted"] for form in self.forms if form.cleaned_data.get("key")
        }


def label_formset(data: Mapping[str, Any] | None = None, initial: list[dict[str, str]] | None = None) -> Any:
    """The label rows: what the job had (cloning) plus a few blank rows."""
    formset_class = forms.formset_factory(
        LabelRowForm, formset=BaseLabelRowFormSet, extra=2 if initial else BLANK_LABEL_ROWS, max_num=64
    )
    return formset_class(data, initial=initial, prefix="labels")


def label_rows(selector: Mapping[str, Any]) -> list[dict[str, str]]:
    rows = []
    for key, wanted in selector.items():
        if isinstance(wanted, list):
            rows.append({"key": key, "op": LABEL_IN, "value": ", ".join(str(item) for item in wanted)})
        else:
            rows.append({"key": key, "op": LABEL_EQUALS, "value": str(wanted)})
    return rows


def default_initial() -> dict[str, Any]:
    """A new job's form shows the server's policy defaults, so the operator sees what applies."""
    return {
        "mode": JobMode.EACH,
        "task_count": 1,
        "priority": 0,
        "max_attempts": settings.TASK_DEFAULT_MAX_ATTEMPTS,
        "backoff_base_s": settings.TASK_DEFAULT_BACKOFF_BASE,
        "backoff_cap_s": settings.TASK_DEFAULT_BACKOFF_CAP,
        "delivery_timeout_s": settings.TASK_DEFAULT_DELIVERY_TIMEOUT,
        "execution_timeout_s": settings.TASK_DEFAULT_EXECUTION_TIMEOUT,
        "abort_min_finished": 1,
        "payload": "{}",
    }


def initial_from_job(job: Job) -> dict[str, Any]:
    """The form filled in as ``job`` was submitted (a clone); the idempotency key stays empty, it is unique."""
    return {
        "kind": job.kind,
        "payload": json.dumps(job.payload, indent=2, ensure_ascii=False),
        "target_agent_ids": "\n".join(job.target_agent_ids or []),
        "target_capabilities": ", ".join(job.target_capabilities or []),
        "mode": job.mode,
        "task_count": job.task_count if job.mode == JobMode.ANY else 1,
        "continuous": job.continuous,
        "target_all": job.target_all,
        "priority": job.priority,
        "max_attempts": job.max_attempts,
        "backoff_base_s": job.backoff_base_s,
        "backoff_cap_s": job.backoff_cap_s,
        "delivery_timeout_s": job.delivery_timeout_s,
        "execution_timeout_s": job.execution_timeout_s,
        "not_before": job.not_before,
        "max_in_flight": job.max_in_flight,
        "max_in_flight_percent": job.max_in_flight_percent,
        "rate_per_minute": job.rate_per_minute,
        "abort_failure_ratio": job.abort_failure_ratio,
        "abort_min_finished": job.abort_min_finished,
    }


def request_body(form: JobForm, labels: BaseLabelRowFormSet) -> dict[str, Any]:
    """The API's request body for what the forms hold (both already valid)."""
    data = form.cleaned_data
    body: dict[str, Any] = {
        "kind": data["kind"],
        "payload": data["payload"],
        "target_agent_ids": _split(data["target_agent_ids"], _AGENT_ID_SEPARATORS),
        "target_labels": labels.selector(),
        "target_capabilities": _split(data["target_capabilities"], _LIST_SEPARATORS),
        "mode": data["mode"],
        "continuous": data["continuous"],
        "target_all": data["target_all"],
        "allow_no_agents": data["allow_no_agents"],
        "allow_unsupported_kind": data["allow_unsupported_kind"],
        "priority": data["priority"] if data["priority"] is not None else 0,
    }
    for name in _OPTIONAL:
        if data.get(name) not in (None, ""):
            body[name] = data[name]
    return body


def messages_of(detail: Any, prefix: str = "") -> list[str]:
    """A serializer's error detail (lists, or dicts by list index or key) as plain sentences."""
    if isinstance(detail, dict):
        found = []
        for key, value in detail.items():
            where = f"item {key + 1}" if isinstance(key, int) else str(key)
            found += messages_of(value, f"{prefix}{where}: ")
        return found
    if isinstance(detail, list):
        return [message for item in detail for message in messages_of(item, prefix)]
    return [f"{prefix}{detail}" if isinstance(detail, ErrorDetail | str) else f"{prefix}{detail!r}"]


def build_spec(form: JobForm, labels: BaseLabelRowFormSet) -> JobSpec | None:
    """The ``JobSpec`` the API would build from the same input, or ``None`` with the errors put on the forms."""
    if not (form.is_valid() and labels.is_valid()):
        return None
    serializer = JobCreateSerializer(data=request_body(form, labels))
    if serializer.is_valid():
        return serializer.to_spec()
    for name, detail in serializer.errors.items():
        for message in messages_of(detail):
            if name in form.fields:
                form.add_error(name, message)
            elif name == "target_labels":
                form.add_error(None, f"Label selector: {message}")
            else:
                form.add_error(None, message)
    return None
