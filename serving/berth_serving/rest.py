"""The routes off the hot path, through FastAPI: v2 health, server and model metadata,
model readiness, and Prometheus `/metrics`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from berth_serving.codecs import dumps
from berth_serving.errors import HTTPError
from berth_serving.metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from berth_serving.app import ServingApp


def _json(document: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(document), status_code=status, media_type="application/json", headers=headers)


def _error(error: HTTPError) -> Response:
    headers = {"Retry-After": str(error.retry_after)} if error.retry_after is not None else None
    return _json({"error": {"code": error.code, "message": error.message}}, error.code, headers)


def build_rest_app(serving: ServingApp) -> FastAPI:
    rest = FastAPI(title="berth serve", docs_url=None, redoc_url=None, openapi_url=None)

    @rest.exception_handler(HTTPError)
    async def berth_error(request: Request, error: HTTPError) -> Response:
        return _error(error)

    @rest.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        return _error(HTTPError(error.status_code, str(error.detail)))

    @rest.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> Response:
        # Starlette re-raises after this answer; ServingApp logs it once, with its traceback.
        return _error(HTTPError(500, f"internal error ({type(error).__name__}); see the server log"))

    @rest.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> Response:
        return _error(HTTPError(400, "invalid request"))

    @rest.get("/v2/health/live")
    async def live() -> Response:
        return _json({"live": True})

    @rest.get("/v2/health/ready")
    async def ready() -> Response:
        if not serving.ready:
            return _error(serving.unavailable())
        return _json({"ready": True})

    @rest.get("/v2")
    async def server_metadata() -> Response:
        return _json({"name": "berth", "version": "1", "extensions": ["binary_tensor_data"]})

    @rest.get("/v2/models/{name}")
    @rest.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(name: str, version: str = "") -> Response:
        return _json(serving.metadata(name))

    @rest.get("/v2/models/{name}/ready")
    @rest.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str = "") -> Response:
        serving.metadata(name)  # 404 for another name, 503 before loading
        if not serving.ready:
            return _error(serving.unavailable())
        return _json({"name": name, "ready": True})

    @rest.get("/metrics")
    async def metrics() -> Response:
        return Response(serving.metrics.exposition(), media_type=CONTENT_TYPE)

    return rest
