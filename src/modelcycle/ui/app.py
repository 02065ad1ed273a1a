"""The dashboard's HTTP app: one page (static/index.html) and the read-only JSON, file and
server-sent-event routes it calls.

With an API key (``--api-key-env``, as for ``serve``), every route but the page itself and
/api/health needs it, checked by serve/auth.py. The page cannot put a header on an ``<img>``,
an ``<iframe>`` or an ``EventSource``, so it trades the Bearer key once (POST /api/session) for
a cookie holding an HMAC of the key: HttpOnly, SameSite=Strict, never the key itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from importlib.metadata import version as package_version
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from modelcycle.errors import UserError
from modelcycle.serve import replies
from modelcycle.serve.auth import check_header, check_key
from modelcycle.ui import views
from modelcycle.ui.files import inside, served_file
from modelcycle.ui.tail import Tail

PAGE = Path(__file__).parent / "static" / "index.html"
COOKIE = "modelcycle_ui"
MAX_STREAMS = 64  # open live-curve streams at once; each holds a file handle only while it reads
KEEP_ALIVE_S = 15.0  # a comment line this often: proxies keep the stream, a gone client is noticed


def session_token(key: str) -> str:
    return hmac.new(key.encode(), b"modelcycle ui session", hashlib.sha256).hexdigest()


def build_ui(root: Path, api_key: str | None = None, poll_s: float = 0.5) -> FastAPI:
    """The dashboard over the runs folder ``root``; ``poll_s``: how often a live stream looks
    at a metrics.jsonl for new lines."""
    root = Path(root)
    app = FastAPI(title="modelcycle ui", version=package_version("modelcycle"), docs_url=None, redoc_url=None)
    app.state.streams = 0

    async def guard(request: Request) -> None:
        if api_key is None:
            return
        cookie = request.cookies.get(COOKIE)
        if cookie is not None:
            check_key(cookie, session_token(api_key))
        else:
            check_header(request.headers.get("authorization"), api_key)

    keyed = [Depends(guard)]

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404 and exc.detail == "Not Found":
            exc = StarletteHTTPException(404, f"{request.url.path}: no such page; the dashboard is at /")
        return replies.http_error(exc)

    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, 400)

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(), headers={"Cache-Control": "no-cache"})

    @app.get("/api/health")
    async def health() -> dict:
        return {"live": True, "keyed": api_key is not None}

    @app.post("/api/session", dependencies=keyed)
    async def session() -> Response:
        response = JSONResponse({"ok": True})
        if api_key is not None:
            response.set_cookie(COOKIE, session_token(api_key), httponly=True, samesite="strict")
        return response

    @app.get("/api/runs", dependencies=keyed)
    def runs() -> dict:
        return views.runs(root)

    @app.get("/api/studies", dependencies=keyed)
    def studies() -> list[dict]:
        return views.studies(root)

    @app.get("/api/monitors", dependencies=keyed)
    def monitors() -> list[dict]:
        return views.monitors(root)

    @app.get("/api/drift", dependencies=keyed)
    def drift(path: str) -> dict:
        folder = inside(root, path)
        if not (folder / "predictions.db").is_file():
            raise HTTPException(404, f"{path}: holds no prediction log (predictions.db)")
        return views.drift(folder)

    @app.get("/files/{path:path}", dependencies=keyed)
    def files(path: str) -> Response:
        return served_file(root, path)

    @app.get("/api/stream", dependencies=keyed)
    async def stream(request: Request, run: str) -> StreamingResponse:
        """Server-sent events: each line of the run's metrics.jsonl (all of it, then each new
        one), ``id`` its end offset, so a reconnecting EventSource (Last-Event-ID) goes on
        where it stopped; ``reset`` when the file started over."""
        folder = inside(root, run)
        if not folder.is_dir():
            raise HTTPException(404, f"{run}: not a run folder")
        metrics = folder / "metrics.jsonl"
        if metrics.exists():
            inside(root, f"{run}/metrics.jsonl")  # a symlink out of the runs folder: 403
        if app.state.streams >= MAX_STREAMS:
            raise HTTPException(503, f"{MAX_STREAMS} live streams are open; close a tab", headers={"Retry-After": "5"})
        last = request.headers.get("last-event-id", "")
        tail = Tail(metrics, int(last) if last.isdigit() else 0)
        return StreamingResponse(
            _events(request, tail, poll_s, app),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return app


def _stopping(app: FastAPI) -> bool:
    """Is the server shutting down? It waits for open responses to end, and a stream never would."""
    server = getattr(app.state, "server", None)
    return bool(server and server.should_exit)


async def _events(request: Request, tail: Tail, poll_s: float, app: FastAPI):
    app.state.streams += 1
    try:
        yield "retry: 2000\n\n"
        quiet = 0.0
        while not (await request.is_disconnected() or _stopping(app)):
            batch = await asyncio.to_thread(tail.poll)
            if batch.reset:
                yield "event: reset\ndata: {}\n\n"
            for offset, row in batch.lines:
                yield f"id: {offset}\ndata: {json.dumps(views.finite(row))}\n\n"
            quiet = 0.0 if batch.lines else quiet + poll_s
            if quiet >= KEEP_ALIVE_S:
                quiet = 0.0
                yield ": keep-alive\n\n"
            await asyncio.sleep(poll_s)
    finally:
        app.state.streams -= 1
