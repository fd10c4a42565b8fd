"""Task artifacts over HTTP: agents ask for an upload URL and complete it; operators list and download.

- ``POST agent/tasks/{id}/artifacts/`` (the agent's token): name, size, sha256 and its attempt →
  a pending artifact and a pre-signed upload (``PUT url`` with ``headers``, until ``expires_at``).
- ``POST agent/tasks/{id}/artifacts/{aid}/complete/``: the server verifies what was stored.
- ``GET tasks/{id}/artifacts/`` and ``GET tasks/{id}/artifacts/{aid}/download/`` (302 to a
  time-limited URL): operators with ``tasks.view_task``, like the task itself.
- ``PUT|GET artifacts/local/{token}/``: the local backend's signed URLs (the token is the
  credential; no other authentication), served by the web role.
"""

from __future__ import annotations

from django.http import FileResponse, HttpRequest, HttpResponse, HttpResponseBase, HttpResponseRedirect, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from aegis_site.api import errors
from aegis_site.api.strict import refuse_body
from aegis_site.core.errors import NotFound
from registry.api.agent_views import AgentView, principal
from tasks.artifacts import actions, storage
from tasks.artifacts.errors import ArtifactRefused
from tasks.artifacts.local import LocalStorage, verify
from tasks.artifacts.names import MAX_NAME_LENGTH
from tasks.models import Task, TaskArtifact


class UploadRequestSerializer(serializers.Serializer):
    attempt = serializers.IntegerField(min_value=1, max_value=32_767, help_text="The attempt the agent runs.")
    name = serializers.CharField(max_length=MAX_NAME_LENGTH, trim_whitespace=False)
    size = serializers.IntegerField(min_value=0, max_value=2**62, help_text="Bytes.")
    sha256 = serializers.RegexField(r"\A[0-9a-f]{64}\Z", help_text="Hex digest of the content, lower case.")


class UploadSerializer(serializers.Serializer):
    method = serializers.CharField()
    url = serializers.CharField()
    headers = serializers.DictField(child=serializers.CharField(), help_text="Send exactly these with the bytes.")
    expires_at = serializers.DateTimeField()


class ArtifactSerializer(serializers.ModelSerializer[TaskArtifact]):
    class Meta:
        model = TaskArtifact
        fields = ["id", "task_id", "attempt", "name", "size", "sha256", "state", "created_at", "completed_at"]
        read_only_fields = fields


class UploadAnswerSerializer(serializers.Serializer):
    artifact = ArtifactSerializer()
    upload = UploadSerializer()


def base_url(request: HttpRequest) -> str:
    """This server's address as the caller reached it: the local backend's URLs start with it."""
    return request.build_absolute_uri("/").rstrip("/")


class AgentArtifactView(AgentView):
    """Ask to upload a file of this agent's task (its current attempt)."""

    @extend_schema(
        request=UploadRequestSerializer,
        responses={
            201: UploadAnswerSerializer,
            400: OpenApiResponse(description="invalid_name, too_large, too_many, or a field not valid."),
            409: OpenApiResponse(description="stale_attempt, or exists: the attempt already has that name."),
        },
    )
    def post(self, request: Request, task_id: int) -> Response:
        body = UploadRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        artifact, upload = actions.request_upload(
            principal(request).agent_id,
            task_id,
            data["attempt"],
            data["name"],
            data["size"],
            data["sha256"],
            base_url(request),
        )
        answer = {"artifact": artifact, "upload": upload}
        return Response(UploadAnswerSerializer(answer).data, status=status.HTTP_201_CREATED)


class AgentArtifactCompleteView(AgentView):
    """The bytes are uploaded: the server checks size and sha256 and lists the artifact, or refuses."""

    @extend_schema(
        request=None,
        responses={
            200: ArtifactSerializer,
            400: OpenApiResponse(description="size_mismatch or checksum_mismatch: the object was deleted."),
            409: OpenApiResponse(description="not_uploaded, or stale_attempt."),
        },
    )
    def post(self, request: Request, task_id: int, artifact_id: int) -> Response:
        refuse_body(request.data)
        artifact = actions.complete_upload(principal(request).agent_id, task_id, artifact_id)
        return Response(ArtifactSerializer(artifact).data)


class TaskArtifactListView(APIView):
    """A task's artifacts, oldest first, pending ones included (``state``)."""

    queryset = Task.objects.all()  # IsOperator: GET needs tasks.view_task

    @extend_schema(responses=ArtifactSerializer(many=True))
    def get(self, request: Request, task_id: int) -> Response:
        if not Task.objects.filter(pk=task_id).exists():
            raise NotFound(f"task {task_id} does not exist")
        artifacts = TaskArtifact.objects.filter(task_id=task_id).order_by("id")
        return Response(ArtifactSerializer(artifacts, many=True).data)


class TaskArtifactDownloadView(APIView):
    """302 to a time-limited URL of the artifact's bytes."""

    queryset = Task.objects.all()

    @extend_schema(responses={302: OpenApiResponse(description="Location: the artifact's time-limited URL.")})
    def get(self, request: Request, task_id: int, artifact_id: int) -> HttpResponse:
        return HttpResponseRedirect(actions.download_url(task_id, artifact_id, base_url(request)))


def _refusal(refused: ArtifactRefused) -> JsonResponse:
    return JsonResponse(errors.body(refused.code, str(refused)), status=refused.status)


@csrf_exempt  # the signed token is the credential; there is no session to forge
@require_http_methods(["GET", "PUT"])
def local_object(request: HttpRequest, token: str) -> HttpResponseBase:
    """The local backend's upload (PUT) and download (GET) of one object, by a token ``LocalStorage`` signed."""
    local = storage.backend("local")
    if not isinstance(local, LocalStorage):  # backend("local") is always one; -O must not remove the check
        raise TypeError("the local backend is not a LocalStorage")
    try:
        if request.method == "PUT":
            local.receive(verify(token, "put"), request)
            return JsonResponse({"status": "stored"})
        grant = verify(token, "get")
    except ArtifactRefused as refused:
        return _refusal(refused)
    if local.size(grant.key) is None:
        return JsonResponse(errors.body("not_found", "This artifact is not stored (any more)."), status=404)
    return FileResponse(local.path(grant.key).open("rb"), as_attachment=True, filename=grant.filename)
