"""HTTP routes of the service (FastAPI; run by uvicorn in ``serve.__main__``).

``POST /v1/embed`` (query), ``GET /v1/usage`` (the caller's budget), ``GET
/v1/info`` (input shape, output dimension, defense names), ``GET /healthz``,
``GET /metrics`` (Prometheus). Every error is JSON ``{"error": {"status",
"code", "message"}}``; the wire format and error codes are in docs/serving.md.
"""
from __future__ import annotations

import asyncio
import contextlib

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from sslsteal_jax.serve.service import Service, ServiceError


def _error(e: ServiceError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


async def _read_body(request: Request, service: Service, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it exceeds ``limit`` bytes."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise service._reject(413, "payload_too_large",
                              f"request body of {length} bytes exceeds the limit of {limit} bytes; "
                              f"send fewer images per request")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise service._reject(413, "payload_too_large",
                                  f"request body exceeds the limit of {limit} bytes; send fewer "
                                  f"images per request")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(service: Service) -> FastAPI:
    """The FastAPI application serving ``service`` (batcher started and stopped with it)."""

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="sslsteal_jax representation API", lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)

    @app.exception_handler(ServiceError)
    async def service_error(request, e: ServiceError):
        return _error(e)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, e: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return _error(ServiceError(e.status_code, code, f"{request.method} {request.url.path}: "
                                   f"{e.detail}"))

    @app.exception_handler(Exception)
    async def internal_error(request, e: Exception):
        return _error(ServiceError(500, "internal_error", f"{type(e).__name__}: {e}"))

    @app.get("/healthz")
    async def healthz():
        totals = await asyncio.to_thread(service.ledger.totals)
        return {"status": "ok", "boot": service.boot, "ledger": {"queries_charged":
                                                                 totals["charged"]}}

    @app.get("/v1/info")
    async def info():
        return service.info()

    @app.get("/v1/usage")
    async def usage(request: Request, account: str | None = None, defenses: str | None = None,
                    session: str | None = None):
        rec = await asyncio.to_thread(service.authenticate, request.headers.get("authorization"))
        return await asyncio.to_thread(service.usage, rec, account, defenses, session)

    @app.post("/v1/embed")
    async def embed(request: Request):
        body = await _read_body(request, service, service.limits.max_request_bytes)
        out, headers = await service.embed(request.headers.get("authorization"),
                                           request.headers.get("idempotency-key"), body)
        return Response(out, media_type="application/json", headers=headers)

    @app.get("/metrics")
    async def metrics():
        return Response(service.metrics.render(), media_type=service.metrics.content_type)

    return app
