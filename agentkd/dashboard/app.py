"""The dashboard web app (FastAPI): routes, CSV downloads and access control.

Every page is a GET whose query string carries the filters, so any view can be bookmarked and
its tables fetched as CSV by adding ``format=csv&table=NAME``. Access control: bound to
loopback, requests must name a loopback Host (a guard against DNS rebinding from a web page);
with a token, every request must present it (``?token=`` once, which sets a cookie, or an
``Authorization: Bearer`` header). A token is mandatory when bound to any other address.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from fastapi.staticfiles import StaticFiles
from sqlalchemy.engine import make_url

from agentkd.dashboard.html import STATIC, plotly_js_path, render
from agentkd.dashboard.queries import Dashboard, Filters, Page, csv_lines
from agentkd.errors import ConfigError
from agentkd.log import TrajectoryLog
from agentkd.secrets import register_secret

COOKIE = "agentkd_dashboard_token"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str:
    """Host header without its port; IPv6 literals keep no brackets."""
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def create_app(log: str | TrajectoryLog | Dashboard, *, host: str = "127.0.0.1",
               token: str | None = None, allowed_hosts: set[str] | None = None,
               refresh_interval_s: float = 1.0) -> FastAPI:
    """The ASGI app for one log. `host` is where it will be bound (it decides the guards)."""
    if not is_loopback(host) and not token:
        raise ConfigError(f"the dashboard is bound to {host}, which is not loopback; it needs an "
                          f"access token (--token or AGENTKD_DASHBOARD_TOKEN)")
    dash = log if isinstance(log, Dashboard) else Dashboard(
        log, refresh_interval_s=refresh_interval_s)
    if token:
        register_secret(token)
    if allowed_hosts is None and is_loopback(host):
        allowed_hosts = set(LOOPBACK_NAMES) | {host}
    source = make_url(dash.log.url).render_as_string(hide_password=True)

    app = FastAPI(title="agentkd dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.dashboard = dash

    @app.middleware("http")
    async def guard(request: Request,
                    call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if allowed_hosts is not None:
            name = _host_name(request.headers.get("host", ""))
            if name not in allowed_hosts:
                return PlainTextResponse(f"host {name!r} not allowed", status_code=400)
        if token and request.url.path != "/healthz":
            offered = request.query_params.get("token")
            if offered is not None and secrets.compare_digest(offered, token):
                # Trade the URL token for a cookie so it leaves the address bar and history.
                rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
                target = request.url.path + ("?" + urlencode(rest) if rest else "")
                response: Response = RedirectResponse(target, status_code=303)
                response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
                return response
            header = request.headers.get("authorization", "")
            presented = request.cookies.get(COOKIE) or (
                header[7:] if header.lower().startswith("bearer ") else "")
            if not secrets.compare_digest(presented, token):
                return PlainTextResponse("an access token is required: open the URL printed by "
                                         "`agentkd dashboard` (…?token=…)", status_code=401)
        return await call_next(request)

    def filters_of(request: Request) -> Filters:
        return Filters.parse(request.query_params)

    def respond(request: Request, page: Page, template: str, active: str,
                f: Filters | None = None) -> Response:
        f = f or Filters()
        if request.query_params.get("format") == "csv":
            return _csv(page, request.query_params.get("table", ""))
        options = {"runs": dash.runs(), "modes": dash.modes(), "task_types": dash.task_types()}
        html = render(template, page=page, filters=f, options=options, path=request.url.path,
                      active=active, source=source, standalone=False)
        return HTMLResponse(html)

    @app.exception_handler(ConfigError)
    async def bad_input(_request: Request, exc: ConfigError) -> Response:
        return PlainTextResponse(str(exc), status_code=400)

    @app.get("/healthz")
    def healthz() -> PlainTextResponse:
        return PlainTextResponse("ok")

    @app.get("/", response_class=HTMLResponse)
    def overview(request: Request) -> Response:
        f = filters_of(request)
        return respond(request, dash.overview(f), "page.html", "overview", f)

    @app.get("/costs", response_class=HTMLResponse)
    def costs(request: Request) -> Response:
        f = filters_of(request)
        return respond(request, dash.costs(f), "page.html", "costs", f)

    @app.get("/cascade", response_class=HTMLResponse)
    def cascade(request: Request) -> Response:
        f = filters_of(request)
        return respond(request, dash.cascade(f), "page.html", "cascade", f)

    @app.get("/models", response_class=HTMLResponse)
    def models(request: Request) -> Response:
        f = filters_of(request)
        return respond(request, dash.models(f), "page.html", "models", f)

    @app.get("/episodes", response_class=HTMLResponse)
    def episodes(request: Request) -> Response:
        f = filters_of(request)
        if request.query_params.get("format") == "csv":
            return StreamingResponse(
                csv_lines(Dashboard.EPISODE_COLUMNS, dash.iter_episodes(f)),
                media_type="text/csv",
                headers={"content-disposition": 'attachment; filename="episodes.csv"'})
        try:
            page_no = int(request.query_params.get("page", "1"))
        except ValueError:
            raise ConfigError("'page' must be a whole number") from None
        return respond(request, dash.episodes(f, page_no), "episodes.html", "episodes", f)

    @app.get("/episodes/{episode_id}", response_class=HTMLResponse)
    def episode(request: Request, episode_id: int) -> Response:
        page = dash.episode(episode_id)
        if page is None:
            return PlainTextResponse(f"no episode {episode_id} in this log", status_code=404)
        return respond(request, page, "episode.html", "episodes")

    @app.get("/static/plotly.min.js")
    def plotly_js() -> FileResponse:
        return FileResponse(plotly_js_path(), media_type="text/javascript",
                            headers={"cache-control": "max-age=86400"})

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    return app


def _csv(page: Page, name: str) -> Response:
    try:
        table = page.table(name)
    except KeyError:
        known = ", ".join(t.name for t in page.tables)
        return PlainTextResponse(f"no table {name!r} on this page; tables: {known}",
                                 status_code=404)
    return Response(table.csv(), media_type="text/csv",
                    headers={"content-disposition": f'attachment; filename="{name}.csv"'})


def serve(log: str, *, host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
          cache: str | Path | None = None, on_ready: Callable[[str], Any] | None = None,
          on_progress: Callable[[str, int, int], Any] | None = None) -> None:
    """Build the aggregates, then serve until interrupted (used by `agentkd dashboard`)."""
    import uvicorn

    dash = Dashboard(log, cache=cache)
    dash.rollup.refresh(progress=on_progress)
    dash.rollup.save()
    app = create_app(dash, host=host, token=token)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    if on_ready is not None:
        on_ready(url)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        dash.rollup.save()  # the next start then reads only what the log gains meanwhile
