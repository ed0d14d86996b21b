"""The routes off the hot path, through FastAPI: v2 health, server and model metadata,
model readiness, and Prometheus `/metrics`. They depend on a `DataPlane` (the few things
they read of the serving app), not on the app itself."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from berth_serving.errors import HTTPError, error_body, error_headers, is_v2_path
from berth_serving.metrics import CONTENT_TYPE
from berth_serving.tensors import dumps


class DataPlane(Protocol):
    @property
    def ready(self) -> bool: ...

    def unavailable(self) -> HTTPError:
        """Why the model cannot answer now (a 503)."""
        ...

    def metadata(self, name: str) -> dict[str, Any] | Awaitable[dict[str, Any]]:
        """v2 model metadata for `name`, as the client called it; HTTPError 404 / 503. A
        multi-model replica answers after loading the model."""
        ...

    def exposition(self) -> bytes:
        """The Prometheus text of /metrics."""
        ...


def _json(document: Any, status: int = 200) -> Response:
    return Response(dumps(document), status_code=status, media_type="application/json")


def _error(request: Request, error: HTTPError) -> Response:
    headers = {key.decode(): value.decode() for key, value in error_headers(error)}
    body = error_body(error, v2=is_v2_path(request.url.path))
    return Response(body, status_code=error.code, media_type="application/json", headers=headers)


async def _metadata(plane: DataPlane, name: str) -> dict[str, Any]:
    found = plane.metadata(name)
    return await found if inspect.isawaitable(found) else found


def build_rest_app(plane: DataPlane) -> FastAPI:
    rest = FastAPI(title="berth serve", docs_url=None, redoc_url=None, openapi_url=None)

    @rest.exception_handler(HTTPError)
    async def berth_error(request: Request, error: HTTPError) -> Response:
        return _error(request, error)

    @rest.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        return _error(request, HTTPError(error.status_code, str(error.detail)))

    @rest.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> Response:
        # Starlette re-raises after this answer; ServingApp logs it once, with its traceback.
        return _error(request, HTTPError(500, f"internal error ({type(error).__name__}); see the server log"))

    @rest.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> Response:
        return _error(request, HTTPError(400, "invalid request"))

    @rest.get("/v2/health/live")
    async def live() -> Response:
        return _json({"live": True})

    @rest.get("/v2/health/ready")
    async def ready() -> Response:
        if not plane.ready:
            raise plane.unavailable()
        return _json({"ready": True})

    @rest.get("/v2")
    async def server_metadata() -> Response:
        return _json({"name": "berth", "version": "1", "extensions": ["binary_tensor_data"]})

    @rest.get("/v2/models/{name}")
    @rest.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(name: str, version: str = "") -> Response:
        return _json(await _metadata(plane, name))

    @rest.get("/v2/models/{name}/ready")
    @rest.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str = "") -> Response:
        await _metadata(plane, name)  # 404 for another name, 503 before loading
        if not plane.ready:
            raise plane.unavailable()
        return _json({"name": name, "ready": True})

    @rest.get("/metrics")
    async def metrics() -> Response:
        return Response(plane.exposition(), media_type=CONTENT_TYPE)

    return rest
