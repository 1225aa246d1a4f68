"""The HTTP layer of ``fame serve``: routes, authentication, limits and error answers.

Every error is answered as JSON ``{"error": "what was wrong and how to fix it"}`` with a
status code that says whose problem it is (400 syntax, 401 token, 413 too large, 415 type,
422 content, 409 a reload running, 503 not ready or too busy). This module is the only one
of the service that turns exceptions into status codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import TypeAdapter
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from fame import __version__
from fame.errors import BundleError, FameError, InputError
from fame.result import Detection
from fame.serve import dashboard
from fame.serve.ingest import (
    BodyError,
    BodyInvalid,
    BodyTooLarge,
    Limits,
    UnsupportedType,
    parse_body,
)
from fame.serve.runtime import ReloadRunning, Runtime
from fame.serve.storage import StorageError
from fame.serve.worker import Busy, Closed

logger = logging.getLogger(__name__)

HERE = Path(__file__).parent
COOKIE = "fame_session"
NDJSON = "application/x-ndjson"
MAX_LIST = 1000

_STATUS: list[tuple[type[Exception], int]] = [
    (BodyError, 400),
    (BodyTooLarge, 413),
    (UnsupportedType, 415),
    (BodyInvalid, 422),
    (ReloadRunning, 409),
    (Busy, 503),
    (Closed, 503),
    (StorageError, 503),
    (BundleError, 422),
    (InputError, 422),
]


class Unauthorized(FameError):
    """No or a wrong bearer token (answered 401)."""


def status_of(exc: Exception) -> int:
    """The HTTP status an error is answered with."""
    if isinstance(exc, Unauthorized):
        return 401
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return status
    return 500


def error_response(exc: Exception) -> JSONResponse:
    """The JSON answer for an error."""
    status = status_of(exc)
    headers = {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="fame"'
    if status == 503:
        headers["Retry-After"] = "2"
    message = str(exc) if status != 500 else "internal error; the server log has the details"
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _error_schema() -> dict[str, Any]:
    return {
        "description": "what was wrong and how to fix it",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"error": {"type": "string"}},
                    "required": ["error"],
                }
            }
        },
    }


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema with its local ``$defs`` written in place (OpenAPI has no ``$defs``)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {key: walk(value) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(item) for item in node]
        return node

    return dict(walk(schema))


_LINE_ITEM = {
    "anyOf": [
        {"type": "string", "description": "a raw log line in the bundle's format"},
        {
            "type": "object",
            "properties": {
                "message": {"type": "string", "description": "the log line"},
                "source": {"type": "string", "description": "who sent it (stored)"},
            },
            "required": ["message"],
        },
    ]
}
DETECT_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": False,
        "content": {
            "application/json": {"schema": {"type": "array", "items": _LINE_ITEM}},
            NDJSON: {"schema": {"type": "string", "description": "one line or object per line"}},
            "text/plain": {"schema": {"type": "string", "description": "raw log lines"}},
        },
    },
    "responses": {
        "200": {
            "description": "one result per line, in order (the schema of `fame detect`)",
            "content": {
                "application/json": {
                    "schema": _inline_refs(
                        TypeAdapter(list[Detection]).json_schema(mode="serialization")
                    )
                },
                NDJSON: {"schema": {"type": "string"}},
            },
        },
        **{str(code): _error_schema() for code in (400, 401, 413, 415, 422, 503)},
    },
}


def create_app(runtime: Runtime) -> FastAPI:
    """The ASGI app serving ``runtime``; loading starts when the app starts."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if runtime.state == "loading" and not runtime.worker.ready:
            runtime.start_loading()
        try:
            yield
        finally:
            # uvicorn has answered the requests it accepted; finish storing and alerting.
            await run_in_threadpool(runtime.close, runtime.settings.shutdown_timeout_s)

    app = FastAPI(
        title="fame",
        version=__version__,
        description="Anomalous log lines and their failure domains (FAME), over HTTP.",
        lifespan=lifespan,
        docs_url=None,  # the interactive docs load scripts from a CDN; the page must work offline
        redoc_url=None,
    )
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    limits = Limits(
        runtime.settings.request_max_bytes,
        runtime.settings.request_max_lines,
        runtime.settings.request_max_line_chars,
    )
    session = _session_value(runtime.token) if runtime.token else None

    def check_auth(request: Request, *, cookie: bool = False) -> None:
        token = runtime.token
        if token is None:
            return
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            value.strip().encode("utf-8"), token.encode("utf-8")
        ):
            return
        given = request.cookies.get(COOKIE)
        if cookie and given and session and hmac.compare_digest(given, session):
            return
        raise Unauthorized(
            "missing or wrong bearer token: send 'Authorization: Bearer TOKEN' with the token "
            f"the service was started with (from ${runtime.settings.token_env} or --token-file)"
        )

    @app.exception_handler(FameError)
    async def fame_error(request: Request, exc: FameError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()
        )
        return JSONResponse({"error": f"invalid request: {problems}"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error answering %s %s", request.method, request.url.path)
        return error_response(exc)

    # -- detection ---------------------------------------------------------------------------

    @app.post(
        "/v1/detect",
        summary="Score log lines",
        description=(
            "A JSON array of lines (strings or {message, source} objects), NDJSON (one object "
            "with a 'message' or one raw line per line) or text/plain lines. Answers one result "
            "per line, in order, in the schema of `fame detect`; NDJSON when the request's "
            "Accept header asks for application/x-ndjson. Anomalous lines are stored."
        ),
        openapi_extra=DETECT_OPENAPI,
        response_class=JSONResponse,
    )
    async def detect(
        request: Request,
        source: str | None = Query(None, max_length=255, description="stored with each line"),
    ) -> Response:
        started = time.perf_counter()
        try:
            check_auth(request)
            body = await _read_body(request, limits.max_bytes)
            lines = await run_in_threadpool(
                parse_body, body, request.headers.get("content-type"), limits
            )
            detections: list[Detection] = []
            if lines.raw:
                if not runtime.worker.ready:
                    raise Closed(_not_ready(runtime))
                client = request.client.host if request.client else "unknown"
                future = runtime.submit(lines.raw, lines.sources, source or client)
                detections = await asyncio.shield(asyncio.wrap_future(future))
            response = _detections_response(detections, request.headers.get("accept", ""))
        except FameError as exc:
            response = error_response(exc)
        runtime.metrics.requests.labels(status=str(response.status_code)).inc()
        runtime.metrics.latency.observe(time.perf_counter() - started)
        return response

    @app.get("/v1/anomalies", summary="Stored anomalous detections, newest first")
    async def anomalies(
        request: Request,
        domain: str | None = Query(None, max_length=255),
        since: str | None = Query(None, description="epoch seconds or ISO 8601 (UTC)"),
        until: str | None = Query(None, description="epoch seconds or ISO 8601 (UTC)"),
        limit: int = Query(100, ge=1, le=MAX_LIST),
    ) -> dict[str, Any]:
        check_auth(request, cookie=True)
        start = dashboard.parse_time(since, "since")
        end = dashboard.parse_time(until, "until")
        rows = await run_in_threadpool(
            runtime.store.recent, domain=domain, since=start, until=end, limit=limit
        )
        return {"count": len(rows), "detections": [r.to_json() for r in rows]}

    @app.get("/v1/domains", summary="Stored anomalies per failure domain")
    async def domains(
        request: Request,
        since: str | None = Query(None, description="epoch seconds or ISO 8601 (UTC)"),
        until: str | None = Query(None, description="epoch seconds or ISO 8601 (UTC)"),
    ) -> dict[str, Any]:
        check_auth(request, cookie=True)
        start = dashboard.parse_time(since, "since")
        end = dashboard.parse_time(until, "until")
        counts = await run_in_threadpool(runtime.store.domain_counts, since=start, until=end)
        return {"domains": [{"domain": c.domain, "count": c.count, "last": c.last} for c in counts]}

    # -- operations --------------------------------------------------------------------------

    @app.get("/healthz", summary="The process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="A bundle is loaded and lines can be scored")
    async def readyz() -> JSONResponse:
        status = runtime.status()
        body = {"status": status.state, "bundle": status.bundle, "error": status.error}
        ready = runtime.worker.ready
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics(request: Request) -> Response:
        check_auth(request)
        return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/admin/reload", summary="Load a bundle and swap it in without dropping requests")
    async def reload(request: Request) -> dict[str, Any]:
        check_auth(request)
        bundle = await _reload_target(request)
        started = time.perf_counter()
        loaded = await run_in_threadpool(runtime.reload, bundle)
        return {
            "bundle": loaded.bundle,
            "loaded_at": loaded.loaded_at,
            "seconds": round(time.perf_counter() - started, 3),
        }

    # -- dashboard ---------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse, summary="The dashboard", include_in_schema=False)
    async def page(
        request: Request,
        domain: str | None = Query(None, max_length=255),
        range: str | None = Query(None),
        since: str | None = Query(None),
        until: str | None = Query(None),
    ) -> Response:
        try:
            check_auth(request, cookie=True)
        except Unauthorized:
            return RedirectResponse("/login", status_code=303)
        flt = dashboard.Filter.from_query(domain, range, since, until)
        context = await run_in_threadpool(dashboard.view, runtime.store, flt)
        status = runtime.status()
        context.update(status=status, version=__version__, auth=runtime.token is not None)
        return _html(templates.TemplateResponse(request, "dashboard.html", context))

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    async def login_form(request: Request) -> Response:
        return _html(templates.TemplateResponse(request, "login.html", {"failed": False}))

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        form = urllib.parse.parse_qs((await _read_body(request, 8192)).decode("utf-8", "replace"))
        given = (form.get("token") or [""])[0]
        if runtime.token is None or hmac.compare_digest(
            given.encode("utf-8"), runtime.token.encode("utf-8")
        ):
            response = RedirectResponse("/", status_code=303)
            if session:
                response.set_cookie(COOKIE, session, httponly=True, samesite="strict")
            return response
        return _html(
            templates.TemplateResponse(request, "login.html", {"failed": True}, status_code=401)
        )

    return app


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refusing more than ``limit`` bytes before reading them all."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise BodyTooLarge(
            f"request body of {length} bytes is over the limit of {limit}; send smaller "
            "batches (or raise --request-max-bytes)"
        )
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(
                f"request body is over the limit of {limit} bytes; send smaller batches (or "
                "raise --request-max-bytes)"
            )
        chunks.append(chunk)
    return b"".join(chunks)


async def _reload_target(request: Request) -> str | None:
    body = await _read_body(request, 65536)
    if not body.strip():
        return None
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise BodyError(f'the reload body must be JSON like {{"bundle": "PATH"}} ({exc})') from exc
    if not isinstance(data, dict) or not isinstance(data.get("bundle", ""), str):
        raise BodyInvalid('the reload body must be a JSON object like {"bundle": "PATH"}')
    return data.get("bundle") or None


def _detections_response(detections: list[Detection], accept: str) -> Response:
    if NDJSON in accept and "application/json" not in accept:
        text = "".join(json.dumps(d.to_json()) + "\n" for d in detections)
        return Response(text, media_type=NDJSON)
    return JSONResponse([d.to_json() for d in detections])


def _not_ready(runtime: Runtime) -> str:
    status = runtime.status()
    if status.state == "failed":
        return f"the bundle could not be loaded: {status.error}"
    return "the bundle is still loading; retry when GET /readyz answers 200"


def _session_value(token: str) -> str:
    """The dashboard's cookie: derived from the token, so the cookie is not the token."""
    return hmac.new(token.encode("utf-8"), b"fame-dashboard-session", hashlib.sha256).hexdigest()


def _html(response: Response) -> Response:
    # Everything the page needs comes from this server: no CDN, no inline script.
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
