"""Operators' jobs and tasks: read, submit and control them. Every write is an action in ``tasks.actions``."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import BaseSerializer

from aegis_site.core.audit import Actor
from tasks import actions
from tasks.api.filters import JobFilter, TaskFilter
from tasks.api.serializers import (
    CancelSerializer,
    ExplanationSerializer,
    JobCreateSerializer,
    JobDetailSerializer,
    JobPreviewSerializer,
    JobSerializer,
    NoBodySerializer,
    RetryFailedResultSerializer,
    RetryFailedSerializer,
    RetrySerializer,
    TaskDetailSerializer,
    TaskRetriedSerializer,
    TaskSerializer,
)
from tasks.models import Job, Task

TASK_COLUMNS = tuple(field.name for field in Task._meta.concrete_fields)


def _valid(serializer_class: type[BaseSerializer], request: Request) -> dict[str, Any]:
    serializer = serializer_class(data=request.data)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


class JobViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    queryset = Job.objects.select_related("created_by")
    serializer_class = JobSerializer
    filterset_class = JobFilter
    lookup_value_converter = "int"  # not a number: a JSON 404 from the URL resolver
    required_permissions = {
        "create": ["tasks.add_job"],
        "preview": ["tasks.add_job"],
        "cancel": ["tasks.change_job"],
        "pause": ["tasks.change_job"],
        "resume": ["tasks.change_job"],
        "retry_failed": ["tasks.change_job"],
    }

    def get_queryset(self) -> QuerySet[Job]:
        queryset = super().get_queryset()
        # A list shows no payloads: up to 256 KiB each, they are read only for one job at a time.
        return queryset.defer("payload") if self.action == "list" else queryset

    def get_serializer_class(self) -> type[BaseSerializer]:
        return JobSerializer if self.action == "list" else JobDetailSerializer

    def _detail(self, job: Job, status_code: int = status.HTTP_200_OK) -> Response:
        return Response(JobDetailSerializer(job, context=self.get_serializer_context()).data, status=status_code)

    @extend_schema(
        request=JobCreateSerializer,
        responses={
            201: JobDetailSerializer,
            200: OpenApiResponse(
                JobDetailSerializer, description="The idempotency key was used with the same specification: that job."
            ),
            400: OpenApiResponse(
                description="Not valid, or refused by a submit check (code target_required, target_all_with_target, "
                "no_matching_agent, kind_not_offered; the error names the field that would allow it)."
            ),
            409: OpenApiResponse(
                description="idempotency_conflict: the key was used by another specification; the error holds "
                "existing_job and idempotency_key."
            ),
        },
    )
    def create(self, request: Request) -> Response:
        serializer = JobCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        job, created = actions.submit_job(serializer.to_spec(), Actor.of_user(request.user))
        return self._detail(job, status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    @extend_schema(
        request=JobCreateSerializer,
        responses=JobPreviewSerializer,
        summary="Dry run of a job submission: the agents and rollout waves it would have. Creates nothing.",
    )
    @action(detail=False, methods=["post"])
    def preview(self, request: Request) -> Response:
        serializer = JobCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        preview = actions.preview_job(serializer.to_spec())
        return Response(JobPreviewSerializer(preview.as_dict()).data)

    @extend_schema(
        request=CancelSerializer, responses=JobDetailSerializer, summary="Cancel the job and its open tasks."
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: int) -> Response:
        force = _valid(CancelSerializer, request)["force"]
        return self._detail(actions.cancel_job(pk, Actor.of_user(request.user), force=force))

    @extend_schema(request=NoBodySerializer, responses=JobDetailSerializer, summary="Stop assigning the job's tasks.")
    @action(detail=True, methods=["post"])
    def pause(self, request: Request, pk: int) -> Response:
        _valid(NoBodySerializer, request)
        return self._detail(actions.pause_job(pk, Actor.of_user(request.user)))

    @extend_schema(
        request=NoBodySerializer, responses=JobDetailSerializer, summary="Assign a paused job's tasks again."
    )
    @action(detail=True, methods=["post"])
    def resume(self, request: Request, pk: int) -> Response:
        _valid(NoBodySerializer, request)
        return self._detail(actions.resume_job(pk, Actor.of_user(request.user)))

    @extend_schema(
        request=RetryFailedSerializer,
        responses=RetryFailedResultSerializer,
        summary="Queue the job's failed and timed-out tasks (or some of them) again, each with the job's "
        "max_attempts more attempts; the answer says which attempt numbers that allows and why.",
    )
    @action(detail=True, methods=["post"], url_path="retry-failed")
    def retry_failed(self, request: Request, pk: int) -> Response:
        body = _valid(RetryFailedSerializer, request)
        allowance = actions.retry_job_tasks(
            pk, Actor.of_user(request.user), task_ids=body.get("task_ids"), reset_backoff=body["reset_backoff"]
        )
        job = self.get_queryset().get(pk=pk)
        context = self.get_serializer_context()
        return Response({**allowance.as_dict(), "job": JobDetailSerializer(job, context=context).data})


class TaskViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    queryset = Task.objects.all()
    serializer_class = TaskSerializer
    filterset_class = TaskFilter
    lookup_value_converter = "int"  # not a number: a JSON 404 from the URL resolver
    required_permissions = {
        "cancel": ["tasks.change_task"],
        "retry": ["tasks.change_task"],
        "explain": ["tasks.view_task"],
    }

    def get_queryset(self) -> QuerySet[Task]:
        queryset = super().get_queryset()
        if self.action == "list":
            return queryset.defer("progress", "result", "error")
        # The detail shows the job's payload; the job's other columns stay unread.
        return queryset.select_related("job").only(*TASK_COLUMNS, "job__payload")

    def get_serializer_class(self) -> type[BaseSerializer]:
        return TaskSerializer if self.action == "list" else TaskDetailSerializer

    def _detail(self, task_id: int) -> Response:
        task = self.get_queryset().get(pk=task_id)
        return Response(TaskDetailSerializer(task, context=self.get_serializer_context()).data)

    @extend_schema(
        request=CancelSerializer,
        responses=TaskDetailSerializer,
        summary="Cancel the task: its agent is asked to stop (force: it ends now).",
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: int) -> Response:
        force = _valid(CancelSerializer, request)["force"]
        task = actions.cancel_task(pk, Actor.of_user(request.user), force=force)
        return self._detail(task.pk)

    @extend_schema(
        request=RetrySerializer,
        responses=TaskRetriedSerializer,
        summary="Queue a failed, timed-out or canceled task again with the job's max_attempts more attempts "
        "(retry: which attempt numbers that allows and why).",
    )
    @action(detail=True, methods=["post"])
    def retry(self, request: Request, pk: int) -> Response:
        reset_backoff = _valid(RetrySerializer, request)["reset_backoff"]
        task, allowance = actions.retry_task_explained(pk, Actor.of_user(request.user), reset_backoff=reset_backoff)
        task = self.get_queryset().get(pk=task.pk)
        context = {**self.get_serializer_context(), "allowance": allowance.as_dict()}
        return Response(TaskRetriedSerializer(task, context=context).data)

    @extend_schema(responses=ExplanationSerializer, summary="Why the task is not running (yet).")
    @action(detail=True, methods=["get"])
    def explain(self, request: Request, pk: int) -> Response:
        return Response(ExplanationSerializer(actions.explain_task(pk).as_dict()).data)
