"""WhiteNoise's middleware, async capable: a sync-only middleware makes Django run every request below it in a thread.

WhiteNoise 6 is sync only. In daphne, Django then calls everything under it, async views
included, through ``async_to_sync`` from a thread of its own per request, held for as long as
the view awaits: each waiting long-poll claim held a thread (docs/benchmarks.md, "HTTP agents
at scale"). Under an async chain this subclass looks the file up and serves it in a thread
(``sync_to_async``) and otherwise awaits the next handler; under a sync chain it is WhiteNoise.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.http import HttpRequest, HttpResponse
from whitenoise.middleware import WhiteNoiseMiddleware


class AsyncWhiteNoiseMiddleware(WhiteNoiseMiddleware):
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[..., Any] | None = None, **kwargs: Any) -> None:
        super().__init__(get_response, **kwargs)
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        if self.is_async:
            return self.__acall__(request)
        return super().__call__(request)

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        if self.autorefresh:
            static_file = await sync_to_async(self.find_file)(request.path_info)
        else:
            static_file = self.files.get(request.path_info)
        if static_file is not None:
            return await sync_to_async(self.serve)(static_file, request)
        return await self.get_response(request)
