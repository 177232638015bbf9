"""Two costs BentoML 1.4's request path adds to every answer, removed without changing what it answers.

Found for issue 18 (the Bento's tail against plain FastAPI doing the same work; evidence in docs/serving.md):

- `TimeoutMiddleware` arms a `call_later` timer per request and never cancels it: for the traffic timeout
  (1 s here) every answered request leaves a TimerHandle, its future and a copy of its context alive, the
  largest set of objects the worker's collector walks (~600 of each after a second at 600 req/s). Here
  the timer is cancelled once the answer has started; a request that has not started answering within the
  timeout still gets BentoML's 504.
- `ServiceAppFactory._add_response_headers` is wrapped in simple_di's `@inject`, which binds its signature
  and resolves the logging format on every call: ~25 us of a ~285 us answer. Here the format and the
  trace-id setting are read once; the headers written are the same.

`install()` runs when `bentos.eta_service` is imported, before BentoML builds the service's ASGI app, so
both the `bentoml serve` process and a built Bento's container pick it up.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from bentoml._internal.server.http import traffic
from starlette.responses import JSONResponse, Response


class CancellingTimeoutMiddleware(traffic.TimeoutMiddleware):
    """BentoML's timeout middleware, with its timer cancelled once the answer has started."""

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

        async def _send(message) -> None:
            if not waiter.done():
                waiter.set_result(None)
            await send(message)

        answering = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)
        try:
            await waiter
        except asyncio.TimeoutError:
            if answering.cancel():
                await JSONResponse({"error": f"Not able to process the request in {self.timeout} seconds"},
                                   status_code=504)(scope, receive, send)
        else:
            timer.cancel()
            await answering


@functools.cache
def _header_settings() -> tuple[dict[str, str], bool]:
    from bentoml._internal.container import BentoMLContainer

    return BentoMLContainer.logging_formatting.get(), bool(BentoMLContainer.http.response.trace_id.get())


def add_response_headers(self: Any, resp: Response) -> None:
    """What `ServiceAppFactory._add_response_headers` writes, with its settings read once per process."""
    from bentoml._internal.context import trace_context

    formatting, with_trace_id = _header_settings()
    resp.headers["Server"] = f"BentoML Service/{self.service.name}"
    if trace_context.request_id is not None:
        resp.headers["X-BentoML-Request-ID"] = format(trace_context.request_id, formatting["span_id"])
    if with_trace_id and trace_context.trace_id is not None:
        resp.headers["X-BentoML-Trace-ID"] = format(trace_context.trace_id, formatting["trace_id"])


def install() -> None:
    """Swap both in; BentoML looks the middleware class up when it builds a service's app."""
    from _bentoml_impl.server.app import ServiceAppFactory

    traffic.TimeoutMiddleware = CancellingTimeoutMiddleware
    ServiceAppFactory._add_response_headers = add_response_headers
