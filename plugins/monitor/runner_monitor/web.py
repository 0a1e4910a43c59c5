"""The monitor's web side (Starlette): the dashboard page, its JSON API, live updates (server-sent
events) and Prometheus ``/metrics``.

No front-end build: ``static/`` holds one HTML page, one script and one stylesheet.  Every
route needs a role (:mod:`runner_monitor.auth`); the Retry action needs ``admin``.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from runner.errors import RunnerError, UnroutableError
from runner_monitor import metrics
from runner_monitor.stats import stats
from runner_monitor.auth import ADMIN, COOKIE, Auth, can_post
from runner_monitor.history import History
from runner_monitor.stored import Stored

STATIC = Path(__file__).parent / "static"
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
SSE_TICK = 0.3  # how often a stream looks for changes (an in-memory counter)
SSE_PING = 15.0  # comment line keeping proxies from closing an idle stream


class _Denied(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


def create_app(
    history: History, auth: Auth, actions: Any, stopping: threading.Event,
    loopback_only: bool = True, stored: Stored | None = None,
) -> ASGIApp:
    stored = stored or Stored(None)

    def role(request: Request, need: str | None = None) -> str:
        token, how = auth.credentials(request.headers, request.cookies)
        found = auth.role_of(token)
        if found is None:
            body = {"error": "authentication required"} if how == "none" else {"error": "bad token"}
            raise _Denied(JSONResponse(body, 401, {"WWW-Authenticate": 'Basic realm="runner monitor"'}))
        if need == ADMIN and found != ADMIN:
            raise _Denied(JSONResponse({"error": "read-only access: admin role required"}, 403))
        request.state.how = how
        return found

    def guarded(handler: Any, need: str | None = None) -> Any:
        async def endpoint(request: Request) -> Response:
            try:
                who = role(request, need)
            except _Denied as denied:
                return denied.response
            if asyncio.iscoroutinefunction(handler):
                return await handler(request, who)
            return await asyncio.to_thread(handler, request, who)

        return endpoint

    def index(request: Request, who: str) -> Response:
        token = request.query_params.get("token")
        if token:  # a browser login: keep the token in a cookie, drop it from the address
            response: Response = RedirectResponse("/", 303)
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
            return response
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    def login(request: Request) -> Response:
        """``/?token=`` arrives before any credentials: check the token itself."""
        token = request.query_params.get("token", "")
        if auth.role_of(token) is None:
            return JSONResponse({"error": "bad token"}, 401)
        return index(request, "")

    async def root(request: Request) -> Response:
        if request.query_params.get("token"):
            return login(request)
        return await guarded(index)(request)

    def me(request: Request, who: str) -> Response:
        return JSONResponse({"role": who, "auth": "open" if auth.open else request.state.how,
                             "generation": history.generation})

    def jobs(request: Request, who: str) -> Response:
        q = request.query_params
        try:
            found = history.jobs(
                state=q.get("state") or None, job=q.get("job") or None,
                route=q.get("route") or None, search=(q.get("q") or "").strip() or None,
                since=_float(q.get("since")), until=_float(q.get("until")),
                limit=int(q.get("limit") or 100), offset=int(q.get("offset") or 0),
            )
        except ValueError as exc:
            return JSONResponse({"error": f"bad filter: {exc}"}, 400)
        return JSONResponse({**found, "facets": history.facets(), "generation": history.generation})

    def job(request: Request, who: str) -> Response:
        found = history.job(request.path_params["job_id"])
        if found is None:
            return JSONResponse({"error": "no such job in the history"}, 404)
        found["retryable"] = found["retryable"] and who == ADMIN
        return JSONResponse(found)

    def retry(request: Request, who: str) -> Response:
        if not can_post(request.state.how, request.headers):
            return JSONResponse({"error": "missing X-Runner-Monitor: 1 header"}, 403)
        job_id = request.path_params["job_id"]
        try:
            done = actions.retry(job_id, by=request.state.how)
        except UnroutableError as exc:
            return JSONResponse({"error": str(exc)}, 409)
        except RunnerError as exc:
            status = 404 if "no dead-lettered job" in str(exc) else 502
            return JSONResponse({"error": str(exc)}, status)
        return JSONResponse(done)

    def result(request: Request, who: str) -> Response:
        found = stored.result(request.path_params["job_id"])
        if found is None:
            return JSONResponse({"error": "no result in the result store (unknown, not "
                                          "finished, expired, or no store)"}, 404)
        return JSONResponse(found)

    def output(request: Request, who: str) -> Response:
        found = stored.output(request.path_params["job_id"], request.path_params["index"])
        if found is None:
            return JSONResponse({"error": "no such output in the result store"}, 404)
        data, headers = found
        return Response(data, headers=headers, media_type=headers.pop("Content-Type"))

    def group(request: Request, who: str) -> Response:
        found = stored.group(request.path_params["group_id"])
        if found is None:
            return JSONResponse({"error": "no such group in the result store"}, 404)
        return JSONResponse(found)

    def workers(request: Request, who: str) -> Response:
        return JSONResponse({"workers": history.workers()})

    def charts(request: Request, who: str) -> Response:
        try:
            window = float(request.query_params.get("window") or 600)
        except ValueError:
            return JSONResponse({"error": "window: expected seconds"}, 400)
        return JSONResponse({**stats(history, window), "generation": history.generation})

    def queues(request: Request, who: str) -> Response:
        return JSONResponse({"queues": history.queues()})

    def prometheus(request: Request, who: str) -> Response:
        body, content_type = metrics.render(history, request.headers.get("accept", ""))
        return Response(body, media_type=content_type)

    async def stream(request: Request, who: str) -> Response:
        async def changes() -> Any:
            seen, quiet = -1, 0.0
            yield "retry: 2000\n\n"
            while not stopping.is_set() and not await request.is_disconnected():
                now = history.generation
                if now != seen:
                    seen, quiet = now, 0.0
                    yield f"event: change\ndata: {json.dumps({'generation': now})}\n\n"
                elif quiet >= SSE_PING:
                    quiet = 0.0
                    yield ": ping\n\n"
                await asyncio.sleep(SSE_TICK)
                quiet += SSE_TICK

        return StreamingResponse(
            changes(), media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    app = Starlette(routes=[
        Route("/", root),
        Route("/healthz", healthz),
        Route("/metrics", guarded(prometheus)),
        Route("/api/me", guarded(me)),
        Route("/api/jobs", guarded(jobs)),
        Route("/api/jobs/{job_id}", guarded(job)),
        Route("/api/jobs/{job_id}/retry", guarded(retry, ADMIN), methods=["POST"]),
        Route("/api/results/{job_id}", guarded(result)),
        Route("/api/results/{job_id}/outputs/{index:int}", guarded(output)),
        Route("/api/groups/{group_id}", guarded(group)),
        Route("/api/workers", guarded(workers)),
        Route("/api/queues", guarded(queues)),
        Route("/api/stats", guarded(charts)),
        Route("/api/stream", guarded(stream)),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ])
    return _HostCheck(app) if loopback_only else app


def _float(value: str | None) -> float | None:
    return float(value) if value not in (None, "") else None


class _HostCheck:
    """On loopback, answer only requests addressed to a loopback name: a web page elsewhere
    cannot reach the monitor through DNS rebinding."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = ""
            for name, value in scope.get("headers", []):
                if name == b"host":
                    host = value.decode("latin-1")
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if name not in LOOPBACK_HOSTS:
                response = PlainTextResponse("unknown host", 421)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
