"""ASGI middleware in front of every endpoint: API key and request size, checked before any parsing.

It also turns BentoML's 400 for a refused request body into the 422 API clients expect.

Pure ASGI (not Starlette's BaseHTTPMiddleware, which costs a task per request). Health, readiness,
metrics and the API docs stay open so probes and scrapers need no secret. The docs are BentoML's
Swagger UI: the page at `/`, its assets under `/static_content/` and the OpenAPI spec at `/docs.json`,
all open or the page renders blank; the spec describes the request shapes only, never data, and every
route that answers with data stays behind the key.
"""

from __future__ import annotations

import hmac
import json

from eta.settings import ServingSettings

OPEN_PATHS = frozenset({"/healthz", "/livez", "/readyz", "/metrics", "/docs.json", "/"})
# Starlette's StaticFiles serves only files inside its folder (`..` answers 404), so the prefix opens no route.
OPEN_PREFIX = "/static_content/"


class Guard:
    def __init__(self, app, config: ServingSettings) -> None:
        self.app = app
        self.api_key = config.api_key.get_secret_value().encode() if config.api_key else None
        self.max_body_bytes = config.max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or scope["path"].startswith(OPEN_PREFIX):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.api_key is not None and not self._authorised(headers):
            return await _reject(send, 401, "missing or wrong API key: send it as 'x-api-key' or 'Authorization: Bearer'")
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            return await _reject(send, 413, f"request body over {self.max_body_bytes} bytes")
        if length is None and b"transfer-encoding" in headers:
            return await _reject(send, 411, "a request body needs a content-length (chunked bodies are not bounded)")
        return await self.app(scope, receive, _validation_as_422(send))

    def _authorised(self, headers: dict[bytes, bytes]) -> bool:
        given = headers.get(b"x-api-key") or headers.get(b"authorization", b"").removeprefix(b"Bearer ")
        return hmac.compare_digest(given, self.api_key)


def _validation_as_422(send):
    """BentoML answers a request its pydantic model refuses with 400; HTTP APIs say 422 (FastAPI, OpenAPI)."""

    async def sending(message) -> None:
        if message["type"] == "http.response.start" and message["status"] == 400:
            message = {**message, "status": 422}
        await send(message)

    return sending


async def _reject(send, status: int, reason: str) -> None:
    body = json.dumps({"error": reason}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
