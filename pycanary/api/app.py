"""The FastAPI application: auth, the error envelope, a body size cap, and the routers.

Every route is a thin call into the service layer (the CLI calls the same functions); the
Connection is made once per server and shared (redis-py's pool is thread-safe, and FastAPI runs
plain ``def`` routes in a thread pool, so a slow Redis call never blocks the event loop).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__, observability
from ..connection import Connection
from . import errors
from .auth import Principal, Role, TokenStore

#: Largest request body accepted (a plan, a tenant map): bigger is refused with 413 before it
#: is read into memory.
MAX_BODY_BYTES = 256 * 1024

_bearer = HTTPBearer(auto_error=False)


def get_conn(request: Request) -> Connection:
    return request.app.state.conn


def _principal(request: Request,
               cred: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
               ) -> Principal:
    tokens: TokenStore | None = request.app.state.tokens
    if tokens is None:  # --no-auth on loopback
        return Principal(Role.OPERATOR, "no-auth")
    if cred is None or cred.scheme.lower() != "bearer":
        raise HTTPException(401, "a bearer token is required (Authorization: Bearer <token>)",
                            headers={"WWW-Authenticate": "Bearer"})
    who = tokens.identify(cred.credentials)
    if who is None:
        raise HTTPException(401, "unknown token", headers={"WWW-Authenticate": "Bearer"})
    return who


def viewer(who: Annotated[Principal, Depends(_principal)]) -> Principal:
    """Dependency of every read route: any valid token."""
    return who


def operator(who: Annotated[Principal, Depends(_principal)]) -> Principal:
    """Dependency of every route that changes something."""
    if who.role < Role.OPERATOR:
        raise HTTPException(403, "this token may only read (role viewer); changes need an "
                                 "operator token")
    return who


Viewer = Annotated[Principal, Depends(viewer)]
Operator = Annotated[Principal, Depends(operator)]
Conn = Annotated[Connection, Depends(get_conn)]


class BodyCap:
    """Refuse a request body over ``limit`` bytes with 413 before the app sees it: at once
    from Content-Length, and for a chunked body (no Content-Length) by reading it, at most
    ``limit`` + 1 bytes, before the app runs (then replaying it). A plain ASGI middleware:
    a body never sits in memory beyond the limit."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.limit:
                await self._refuse(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, _replay([message]), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        await self.app(scope, _replay([{"type": "http.request", "body": body,
                                        "more_body": False}], receive), send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = errors.envelope(413, "payload_too_large",
                                   f"request body over {self.limit} bytes", "body")
        await response(scope, receive, send)


def _replay(messages: list[Message], then: Receive | None = None) -> Receive:
    """A receive() that gives ``messages`` first, then defers to ``then`` (a disconnect)."""
    pending = list(messages)

    async def receive() -> Message:
        if pending:
            return pending.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive


def create_app(conn: Connection, *, tokens: TokenStore | None) -> FastAPI:
    """The API over ``conn``. ``tokens=None`` turns auth off (the CLI allows that only with
    ``--no-auth`` on a loopback bind)."""
    app = FastAPI(title="pycanary admin API", version=__version__,
                  description="Canary rollouts of job-queue workers: queues, deployments, "
                              "workers, dead letters. Viewers read; operators change.",
                  responses=errors.ERROR_RESPONSES)
    app.state.conn = conn
    app.state.tokens = tokens
    errors.install(app)

    app.add_middleware(BodyCap, limit=MAX_BODY_BYTES)

    @app.get("/healthz", tags=["health"], summary="Redis reachability and the controller "
             "leader (no token needed: a probe must not carry secrets)")
    def healthz(c: Conn, response: Response) -> dict:
        report = observability.health(c)
        if not report["ok"]:
            response.status_code = 503
        return report

    @app.get("/metrics", tags=["health"], summary="Prometheus exposition (viewer token)",
             response_class=Response,
             responses={200: {"content": {"text/plain": {}}}})
    def metrics(c: Conn, _: Viewer) -> Response:
        return Response(observability.metrics_text(c),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    from .routes import include_all

    include_all(app)
    return app
