"""``GET /api/v1/tasks/{id}/logs/``: a task's output by cursor, as JSON chunks or as the plain bytes.

JSON (the default): each chunk with its ``seq``, ``stream`` and ``data`` — the text when the
chunk's bytes are valid UTF-8 (``encoding: "utf-8"``), else base64 (``encoding: "base64"``: binary
output, or a character split across two chunks). Plain text (``Accept: text/plain`` or
``?format=txt``): the chunks' bytes, concatenated in ``seq`` order, every stream together, with the
cursor in ``X-Aegis-After-Seq`` and ``X-Aegis-More: true`` when ``limit`` cut the page.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from rest_framework import serializers
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from tasks.engine.output import OutputChunk, OutputPage, read_output

MAX_LIMIT = 1000


class OutputQuerySerializer(serializers.Serializer):
    attempt = serializers.IntegerField(min_value=1, max_value=32_767, required=False, help_text="Default: the current.")
    after_seq = serializers.IntegerField(min_value=0, max_value=2**63 - 1, default=0, help_text="The cursor.")
    limit = serializers.IntegerField(min_value=1, max_value=MAX_LIMIT, default=200, help_text="Chunks at most.")


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


def respond(request: Request, task_id: int) -> Response:
    wanted = query(request)
    page = read_output(task_id, wanted.get("attempt"), wanted["after_seq"], wanted["limit"])
    if isinstance(request.accepted_renderer, PlainOutputRenderer):
        headers = {"X-Aegis-After-Seq": str(page.after_seq), "X-Aegis-More": "true" if page.more else "false"}
        return Response(b"".join(chunk.data for chunk in page.chunks), headers=headers)
    return Response(page_json(page))
