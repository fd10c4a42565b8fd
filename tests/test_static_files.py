"""``aegis_site.static_files.AsyncWhiteNoiseMiddleware``: WhiteNoise in an async chain without a thread per request."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path
from typing import cast

import pytest
from asgiref.sync import iscoroutinefunction
from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory

from aegis_site.static_files import AsyncWhiteNoiseMiddleware


def _body(response: HttpResponse) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


@pytest.fixture
def static_dir(tmp_path: Path) -> Path:
    (tmp_path / "hello.txt").write_text("static hello")
    return tmp_path


def test_in_an_async_chain_it_is_a_coroutine_serving_files_and_awaiting_the_rest(static_dir: Path) -> None:
    async def view(request: HttpRequest) -> HttpResponse:
        return HttpResponse(b"from the view")

    middleware = AsyncWhiteNoiseMiddleware(view)
    middleware.add_files(str(static_dir), prefix="static/")
    assert iscoroutinefunction(middleware)  # Django keeps the chain async: no thread per request

    async def get(path: str) -> HttpResponse:
        return await cast(Awaitable[HttpResponse], middleware(RequestFactory().get(path)))

    served = asyncio.run(get("/static/hello.txt"))
    assert (served.status_code, _body(served)) == (200, b"static hello")
    passed = asyncio.run(get("/api/v1/agents/"))
    assert (passed.status_code, _body(passed)) == (200, b"from the view")


def test_in_a_sync_chain_it_is_whitenoise(static_dir: Path) -> None:
    middleware = AsyncWhiteNoiseMiddleware(lambda request: HttpResponse(b"from the view"))
    middleware.add_files(str(static_dir), prefix="static/")
    assert not iscoroutinefunction(middleware)
    assert _body(cast(HttpResponse, middleware(RequestFactory().get("/static/hello.txt")))) == b"static hello"
    assert _body(cast(HttpResponse, middleware(RequestFactory().get("/other")))) == b"from the view"
