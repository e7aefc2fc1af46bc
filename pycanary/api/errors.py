"""One error envelope for every response that is not a success:
``{"error": {"code": "...", "message": "...", "field": "..." | null}}``.

Status codes follow the exception's class (pycanary.errors), so the CLI's exit codes and the
API's statuses come from the same place: user mistakes are 4xx, Redis unreachable is 503, and
anything unexpected is a 500 whose body says nothing about the internals.
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import errors as E
from ..plan import PlanError

log = logging.getLogger("pycanary.api")


class ErrorBody(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorEnvelope(BaseModel):
    error: ErrorBody


@contextmanager
def field_renamed(service_name: str, body_name: str) -> Iterator[None]:
    """The service names a bad value by its CLI argument (``weight``); a request body may call
    it something else (``percent``): the envelope names the field the client sent."""
    try:
        yield
    except E.PycanaryError as exc:
        if exc.field == service_name:
            exc.field = body_name
        raise


def status_of(exc: E.PycanaryError) -> int:
    """HTTP status of a pycanary error (most specific class first)."""
    for cls, status in (
        (E.PayloadTooLargeError, 413),
        (E.ValidationError, 422),
        (E.NotFoundError, 404),
        (E.PermissionDeniedError, 403),
        (E.ConflictError, 409),
        (E.StateError, 409),
        (E.FencedError, 409),
        (E.QueueFullError, 429),
        (E.EnqueueTimeoutError, 504),
        (E.ConnectionFailedError, 503),
        (E.WrongTypeError, 500),
    ):
        if isinstance(exc, cls):
            return status
    return 400


def envelope(status: int, code: str, message: str, field: str | None = None,
             headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "field": field}}
    return JSONResponse(status_code=status, content=body, headers=headers)


#: Documented error responses of every route (OpenAPI), by status.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorEnvelope, "description": d} for s, d in (
        (401, "no or unknown bearer token"),
        (403, "the token's role may not do this"),
        (404, "no such queue, deployment or job"),
        (409, "the queue's state does not allow it (nothing changed)"),
        (413, "request body too large"),
        (422, "a field is malformed or out of range (the envelope names it)"),
        (503, "Redis is unreachable"),
    )
}


#: Entries pydantic puts in an error's location for the member of a union that failed
#: (``percent.int``, ``plan.dict[str,any]``): not fields, so not in the envelope's field.
_UNION_TAG = re.compile(r"^(int|float|str|bool|none|dict\[.*\]|list\[.*\]|[a-z-]+\[.*\])$")


def _field_of(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for i, p in enumerate(loc)
             if not (i == 0 and p in ("body", "query", "path", "header"))
             and not (isinstance(p, str) and _UNION_TAG.match(p))]
    return ".".join(parts) or None


def _redact(request: Request, text: str | None) -> str | None:
    """Messages quote what the caller sent; a configured token never leaves in one."""
    tokens = getattr(request.app.state, "tokens", None)
    return text if tokens is None or text is None else tokens.redact(text)


def install(app: FastAPI) -> None:
    """Route every exception through the envelope."""

    @app.exception_handler(E.PycanaryError)
    async def _pycanary(request: Request, exc: E.PycanaryError) -> JSONResponse:
        return envelope(status_of(exc), exc.code, _redact(request, exc.message) or "",
                        _redact(request, exc.field))

    @app.exception_handler(PlanError)
    async def _plan(request: Request, exc: PlanError) -> JSONResponse:
        # every defect at once, as plan loading reports them
        return envelope(422, exc.code, _redact(request, "; ".join(exc.lines)) or "",
                        _redact(request, exc.field) or "plan")

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        by_field: dict[str, list[str]] = {}
        for e in exc.errors():
            loc = tuple(e.get("loc", ()))
            if e.get("type") == "json_invalid":  # loc is (body, character position)
                field, text = "body", f"not valid JSON (at character {loc[-1]})"
            else:
                field, text = _field_of(loc) or "body", str(e.get("msg", ""))
            msgs = by_field.setdefault(field, [])
            if text and text not in msgs:
                msgs.append(text)
        if not by_field:
            by_field["body"] = ["invalid request"]
        msg = "; ".join(f"{f}: {' or '.join(m)}" for f, m in list(by_field.items())[:5])
        first = next(iter(by_field))
        return envelope(422, "invalid", _redact(request, msg) or "", _redact(request, first))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI's "error parsing the body": not UTF-8 JSON
            return envelope(422, "invalid", "body: not valid JSON (or not UTF-8)", "body")
        code = {401: "unauthorized", 403: "forbidden", 404: "not_found",
                405: "method_not_allowed", 413: "payload_too_large"}.get(exc.status_code,
                                                                          "http_error")
        return envelope(exc.status_code, code, _redact(request, str(exc.detail)) or "", None,
                        headers=getattr(exc, "headers", None))

    @app.exception_handler(redis.exceptions.ConnectionError)
    @app.exception_handler(redis.exceptions.TimeoutError)
    async def _redis_down(request: Request, exc: Exception) -> JSONResponse:
        log.warning("Redis unreachable on %s %s: %s", request.method,
                    _redact(request, request.url.path), type(exc).__name__)
        return envelope(503, "unavailable", "cannot reach Redis; try again later")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # the traceback formatted here, so that it is redacted like everything else
        trace = "".join(traceback.format_exception(exc))
        log.error("unexpected error on %s %s\n%s", request.method,
                  _redact(request, request.url.path), _redact(request, trace))
        return envelope(500, "internal", "internal error (see the API server's log)")
