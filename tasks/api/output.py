"""``GET /api/v1/tasks/{id}/logs/``: a task's output by cursor, as JSON chunks or as the plain bytes.

JSON (the default): each chunk with its ``seq``, ``stream`` and ``data`` — the text when the
chunk's bytes are valid UTF-8 (``encoding: "utf-8"``), else base64 (``encoding: "base64"``: binary
output, or a character split across two chunks). Plain text (``Accept: text/plain`` or
``?format=txt``): the chunks' bytes, concatenated in ``seq`` order, every stream together, with the
cursor in ``X-Aegis-After-Seq`` and ``X-Aegis-More: true`` when ``limit`` cut the page.

``?follow=S`` (1-60 seconds): when nothing follows the cursor yet, the answer waits up to S
seconds for the next chunk, or for the task to end, holding no database connection
(``tasks.engine.output_waits``); the view is async for that, like the agent's long-poll claim.
``?download=1``: the whole attempt as a file, streamed from the database page by page.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponseBase, StreamingHttpResponse
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import exceptions, serializers, status
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from tasks.engine import output_waits
from tasks.engine.output import OutputChunk, OutputPage, read_output
from tasks.models import Task

MAX_LIMIT = 1000
MAX_FOLLOW_S = 60
DOWNLOAD_PAGE = 256  # chunks per read of a download: at most 4 MiB in memory at once


class OutputQuerySerializer(serializers.Serializer):
    attempt = serializers.IntegerField(min_value=1, max_value=32_767, required=False, help_text="Default: the current.")
    after_seq = serializers.IntegerField(min_value=0, max_value=2**63 - 1, default=0, help_text="The cursor.")
    limit = serializers.IntegerField(min_value=1, max_value=MAX_LIMIT, default=200, help_text="Chunks at most.")
    follow = serializers.IntegerField(
        min_value=0,
        max_value=MAX_FOLLOW_S,
        default=0,
        help_text="Seconds to wait (1-60) when nothing follows the cursor yet: the answer comes as soon as a "
        "chunk after it is stored or the task ends, else an empty page after this long. 0: answer at once.",
    )
    download = serializers.IntegerField(
        min_value=0,
        max_value=1,
        default=0,
        help_text="1: the whole attempt's bytes as a file (text/plain, Content-Disposition: attachment); "
        "after_seq, limit and follow do not apply.",
    )


class OutputChunkSerializer(serializers.Serializer):
    seq = serializers.IntegerField()
    stream = serializers.ChoiceField(choices=["stdout", "stderr", "system"])
    # A declared field leaves the class (the serializer metaclass collects it): .data stays the property.
    data = serializers.CharField(help_text="The text, or base64 when encoding is base64.")  # type: ignore[assignment]
    encoding = serializers.ChoiceField(choices=["utf-8", "base64"])


class OutputPageSerializer(serializers.Serializer):
    task_id = serializers.IntegerField()
    attempt = serializers.IntegerField()
    attempts = serializers.ListField(child=serializers.IntegerField(), help_text="Attempts that have output.")
    chunks = OutputChunkSerializer(many=True)
    after_seq = serializers.IntegerField(help_text="Ask again with after_seq set to this for what follows.")
    more = serializers.BooleanField(help_text="More chunks were waiting than limit allowed.")
    max_seq = serializers.IntegerField(help_text="The highest seq stored for this attempt.")
    missing = serializers.IntegerField(help_text="Chunks below max_seq not stored (yet): a resend may fill them.")
    truncated_at = serializers.IntegerField(allow_null=True, help_text="Set once a size cap stopped the output.")
    dropped = serializers.IntegerField(help_text="Chunks refused after the truncation.")
    state = serializers.CharField(help_text="The task's state.")


class PlainOutputRenderer(BaseRenderer):
    media_type = "text/plain"
    format = "txt"
    charset = None  # the task's own bytes: whatever it printed

    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None) -> bytes:
        if isinstance(data, bytes):
            return data
        return json.dumps(data).encode()  # an error answer: the same JSON error as ever


def query(request: Request) -> dict[str, Any]:
    """The query's parameters, validated; an unknown one is a 400 like an unknown body field."""
    # The strict serializers take no numbers as strings: a query's digits become the number they spell.
    params: dict[str, Any] = {}
    for key, value in request.query_params.items():
        if key != "format":  # the renderer's choice (``?format=txt``)
            text = str(value)
            params[key] = int(text) if re.fullmatch(r"-?[0-9]{1,19}", text) else text
    body = OutputQuerySerializer(data=params)
    body.is_valid(raise_exception=True)
    return dict(body.validated_data)


def chunk_json(chunk: OutputChunk) -> dict[str, Any]:
    try:
        return {"seq": chunk.seq, "stream": chunk.stream, "data": chunk.data.decode(), "encoding": "utf-8"}
    except UnicodeDecodeError:
        data = base64.b64encode(chunk.data).decode()
        return {"seq": chunk.seq, "stream": chunk.stream, "data": data, "encoding": "base64"}


def page_json(page: OutputPage) -> dict[str, Any]:
    return {
        "task_id": page.task_id,
        "attempt": page.attempt,
        "attempts": page.attempts,
        "chunks": [chunk_json(chunk) for chunk in page.chunks],
        "after_seq": page.after_seq,
        "more": page.more,
        "max_seq": page.max_seq,
        "missing": page.missing,
        "truncated_at": page.truncated_at,
        "dropped": page.dropped,
        "state": page.state,
    }


class TooManyFollowers(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "This server has as many readers following output as it allows; retry, or read without follow."
    default_code = "too_many_followers"


class PendingOutput(Response):
    """A page with nothing after the cursor that may wait: ``logs`` (below) follows, then fills it in."""

    def __init__(self, task_id: int, wanted: dict[str, Any], page: OutputPage, plain: bool) -> None:
        super().__init__()
        self.task_id, self.wanted, self.plain = task_id, wanted, plain
        self.attempt = page.attempt  # fixed at the first read: a new attempt starting meanwhile is not this one
        fill(self, page, plain)


class PendingDownload(Response):
    """The view checked the request; ``logs`` streams the file (an async iterator: no thread per chunk)."""

    def __init__(self, task_id: int, attempt: int) -> None:
        super().__init__()
        self.task_id, self.attempt = task_id, attempt


def fill(response: Response, page: OutputPage, plain: bool) -> None:
    if plain:
        response.data = b"".join(chunk.data for chunk in page.chunks)
        response["X-Aegis-After-Seq"] = str(page.after_seq)
        response["X-Aegis-More"] = "true" if page.more else "false"
    else:
        response.data = page_json(page)


class TaskOutputView(APIView):
    """A task's output by cursor (docs/task-output.md)."""

    # The URL calls ``logs`` (below), which waits for ``?follow=`` and streams downloads.

    queryset = Task.objects.all()  # GET needs tasks.view_task
    renderer_classes = [JSONRenderer, PlainOutputRenderer]

    @extend_schema(
        parameters=[OutputQuerySerializer],
        responses={
            200: OutputPageSerializer,
            503: OpenApiResponse(
                description="too_many_followers: TASK_LOG_MAX_FOLLOWERS readers already follow in this process."
            ),
        },
        summary="The task's output after a cursor (after_seq), as JSON chunks or, with Accept: text/plain, "
        "the bytes; follow waits for what comes next, download serves the whole attempt as a file.",
    )
    def get(self, request: Request, pk: int) -> Response:
        wanted = query(request)
        if wanted["download"]:
            page = read_output(pk, wanted.get("attempt"), 0, 1)  # the task exists; the attempt is fixed now
            return PendingDownload(pk, page.attempt)
        page = read_output(pk, wanted.get("attempt"), wanted["after_seq"], wanted["limit"])
        plain = isinstance(request.accepted_renderer, PlainOutputRenderer)
        if page.chunks or not wanted["follow"] or output_waits.finished(page):
            response = Response()
            fill(response, page, plain)
            return response
        if not output_waits.FOLLOWERS.reserve(settings.TASK_LOG_MAX_FOLLOWERS):
            raise TooManyFollowers()
        output_waits.release_connection()
        return PendingOutput(pk, wanted, page, plain)


_output_view = TaskOutputView.as_view()


async def logs(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
    """``GET tasks/{id}/logs/``: ``TaskOutputView`` answers, or hands back a follow to wait for or a file to stream.

    If the client goes away, Django cancels this coroutine and the ``finally`` frees the follower's slot.
    """
    response = await sync_to_async(_output_view)(request, *args, **kwargs)
    if isinstance(response, PendingDownload):
        return download(response.task_id, response.attempt)
    if not isinstance(response, PendingOutput):
        return response
    try:
        wanted = response.wanted

        def read() -> OutputPage:
            return read_output(response.task_id, response.attempt, wanted["after_seq"], wanted["limit"])

        page = await output_waits.follow(
            read, response.task_id, wanted["follow"], gather_s=settings.TASK_LOG_FOLLOW_GATHER_S
        )
        fill(response, page, response.plain)
    finally:
        output_waits.FOLLOWERS.release()
    return response


# What drf-spectacular and Django read off a view function.
logs.cls = TaskOutputView  # type: ignore[attr-defined]
logs.initkwargs = {}  # type: ignore[attr-defined]
logs.csrf_exempt = True  # type: ignore[attr-defined]


def download(task_id: int, attempt: int) -> StreamingHttpResponse:
    response = StreamingHttpResponse(attempt_bytes(task_id, attempt), content_type="text/plain")
    response["Content-Disposition"] = f'attachment; filename="task-{task_id}-attempt-{attempt}.log"'
    response["X-Content-Type-Options"] = "nosniff"
    return response


async def attempt_bytes(task_id: int, attempt: int) -> AsyncIterator[bytes]:
    """The attempt's chunks in ``seq`` order, ``DOWNLOAD_PAGE`` at a time, each read with a connection given back."""

    def read(after_seq: int) -> OutputPage:
        try:
            return read_output(task_id, attempt, after_seq, DOWNLOAD_PAGE)
        finally:
            output_waits.release_connection()

    after_seq = 0
    while True:
        page = await sync_to_async(read)(after_seq)
        if page.chunks:
            yield b"".join(chunk.data for chunk in page.chunks)
        if not page.more:
            return
        after_seq = page.after_seq
