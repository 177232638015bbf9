"""BentoML's request path as the Bento runs it (bentos/bentoml_request_path.py): the timeout middleware cancels
its timer once answered, still answers 504 when nothing started in time, and the response headers are
BentoML's own."""

from __future__ import annotations

import asyncio
import contextvars
from types import SimpleNamespace

from starlette.responses import Response

from bentos.bentoml_request_path import CancellingTimeoutMiddleware, add_response_headers, install

SCOPE = {"type": "http", "method": "POST", "path": "/eta/order", "headers": []}


async def _answer(app, scope=SCOPE) -> list[dict]:
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    return sent


async def _ok(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def _armed_timers(loop: asyncio.AbstractEventLoop) -> list[asyncio.TimerHandle]:
    return [handle for handle in loop._scheduled if not handle.cancelled()]


def test_an_answered_request_leaves_no_timer_armed():
    async def scenario():
        middleware = CancellingTimeoutMiddleware(_ok, timeout=30)
        before = len(_armed_timers(asyncio.get_running_loop()))
        for _ in range(50):
            assert [m["type"] for m in await _answer(middleware)] == ["http.response.start", "http.response.body"]
        return len(_armed_timers(asyncio.get_running_loop())) - before

    assert asyncio.run(scenario()) == 0, "each answered request left its 30 s timer (and what it holds) alive"


def test_a_request_that_starts_no_answer_in_time_gets_504_and_is_cancelled():
    cancelled = asyncio.Event()

    async def stuck(scope, receive, send):
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def scenario():
        sent = await _answer(CancellingTimeoutMiddleware(stuck, timeout=0.05))
        await asyncio.sleep(0)
        return sent

    sent = asyncio.run(scenario())
    assert sent[0]["status"] == 504
    assert b"0.05 seconds" in sent[1]["body"]
    assert cancelled.is_set()


def test_response_headers_are_bentomls_own():
    from bentoml._internal.container import BentoMLContainer
    from bentoml._internal.context import trace_context

    factory = SimpleNamespace(service=SimpleNamespace(name="EtaOrder"))
    span_format = BentoMLContainer.logging_formatting.get()["span_id"]

    def headers(request_id: int | None) -> dict[str, str]:
        trace_context.request_id = request_id
        response = Response(b"{}")
        add_response_headers(factory, response)
        return dict(response.headers)

    plain = contextvars.copy_context().run(headers, None)
    traced = contextvars.copy_context().run(headers, 0xABC)
    assert plain["server"] == "BentoML Service/EtaOrder" and "x-bentoml-request-id" not in plain
    assert traced["x-bentoml-request-id"] == format(0xABC, span_format)


def test_bentoml_builds_services_with_both():
    from _bentoml_impl.server.app import ServiceAppFactory
    from bentoml._internal.server.base_app import BaseAppFactory

    install()

    class Factory(BaseAppFactory):
        name = "probe"

    assert [m.cls for m in Factory(timeout=1).middlewares] == [CancellingTimeoutMiddleware]
    assert ServiceAppFactory._add_response_headers is add_response_headers
