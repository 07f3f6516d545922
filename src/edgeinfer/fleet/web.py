"""The fleet dashboard: server-rendered pages over the fleet database, behind the admin token.

Like Datasette: plain HTML from Jinja2 templates (``templates/``), one stylesheet, no
JavaScript; every page is also JSON, at ``PAGE.json`` or ``PAGE?format=json``, from the very
dict the template renders (:mod:`edgeinfer.fleet.web_queries` makes them; sessions are
:mod:`edgeinfer.fleet.web_session`'s). Pages::

    /login          the admin token, exchanged for a session cookie
    /               overview: devices by model, version and state; recent devices; refusals
    /devices        the devices of one model / version / state, a page at a time
    /devices/ID     one device: what it runs, its history of reports (versions, cycle
                    results and reasons, gate figures), its class's merged latency
    /latency        latency per hardware class: quantiles of the merged KLL sketches,
                    plotted server-side (/latency/CLASS.svg, matplotlib)
    /rollouts       staged rollouts, their stage and why one halted
    /metrics        Prometheus (:mod:`edgeinfer.fleet.metrics`)

The session cookie never holds the token itself: it is an expiry and a nonce MACed with the
admin token (HMAC-SHA256), so any replica that knows the token accepts it, and changing the
token ends every session. It is ``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no
other site's page sends it) and ``Secure`` over HTTPS. POSTs (login, logout) must also come
from the dashboard's own origin (``Origin`` / ``Sec-Fetch-Site``), so a cross-site form can
neither log an operator out nor in as someone else. Everything a device sent is untrusted:
Jinja2 escapes every value, and a Content-Security-Policy without scripts backs that up.
JSON pages and ``/metrics`` also take ``Authorization: Bearer <admin token>``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from edgeinfer.errors import MissingDependencyError

for _module in ("jinja2", "prometheus_client", "matplotlib"):
    if importlib.util.find_spec(_module) is None:
        raise MissingDependencyError(_module, "fleet", "the fleet dashboard")

import jinja2  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.concurrency import run_in_threadpool  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse, RedirectResponse, Response  # noqa: E402
from starlette.routing import Route  # noqa: E402

from edgeinfer.fleet.errors import BadReport, NotFound  # noqa: E402
from edgeinfer.fleet.metrics import CONTENT_TYPE_LATEST, FleetMetrics, ReportObserver  # noqa: E402
from edgeinfer.fleet.store import Store  # noqa: E402
from edgeinfer.fleet.web_queries import (  # noqa: E402
    device_filter,
    device_list,
    device_page,
    halt_reason,
    latency,
    latency_svg,
    overview,
    rollouts_of,
)
from edgeinfer.fleet.web_session import (  # noqa: E402
    COOKIE,
    SESSION_S,
    local_path,
    same_origin,
    session_cookie,
    signed_in,
    token_ok,
)

__all__ = ["COOKIE", "SESSION_S", "halt_reason", "mount", "rollouts_of", "session_cookie"]

TEMPLATES = Path(__file__).parent / "templates"
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


def mount(app: Starlette, store: Store, admin_tokens: tuple[str, ...]) -> FleetMetrics:
    """Add the dashboard's routes, ``/metrics`` and the report counters to ``app``."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,  # every value: device ids, reasons, hardware strings are untrusted
        undefined=jinja2.StrictUndefined,
    )
    metrics = FleetMetrics(store, lambda: rollouts_of(store))
    app.add_middleware(ReportObserver, metrics=metrics)

    def headers(response: Response) -> Response:
        response.headers["content-security-policy"] = CSP
        response.headers["x-content-type-options"] = "nosniff"
        response.headers["referrer-policy"] = "same-origin"  # no-referrer makes Origin null
        response.headers["cache-control"] = "no-store"
        return response

    def html(name: str, context: dict[str, Any], status: int = 200) -> Response:
        body = env.get_template(name).render(**context)
        return headers(Response(body, status_code=status, media_type="text/html"))

    def wants_json(request: Request, name: str | None = None) -> bool:
        return request.query_params.get("format") == "json" or (
            name is not None and name.endswith(".json")
        )

    def page(
        template: str, title: str, load: Callable[..., dict[str, Any]], *args: Any
    ) -> Callable[[Request], Any]:
        async def handler(request: Request) -> Response:
            as_json = wants_json(request, request.url.path)
            if not signed_in(request, admin_tokens):
                if as_json:
                    return headers(JSONResponse({"error": "sign in first"}, status_code=401))
                here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                target = quote(here, safe="")
                return RedirectResponse(f"/login?next={target}", status_code=303)
            try:
                data = await run_in_threadpool(load, *args)
            except NotFound as exc:
                if as_json:
                    return headers(JSONResponse({"error": str(exc)}, status_code=404))
                return html("error.html", {"title": "not found", "message": str(exc)}, 404)
            if as_json:
                return headers(JSONResponse(data))
            return html(template, {"title": title, "data": data, "json_url": _json_url(request)})

        return handler

    def _json_url(request: Request) -> str:
        path = request.url.path
        if request.url.query:
            return f"{path}?{request.url.query}&format=json"
        return "/.json" if path == "/" else f"{path}.json"

    index = page("overview.html", "fleet", lambda: overview(store, metrics.refused_counts()))
    lat = page("latency.html", "latency", latency, store)
    rolls = page("rollouts.html", "rollouts", lambda: {"rollouts": rollouts_of(store)})

    async def device(request: Request) -> Response:
        device_id = request.path_params["device_id"].removesuffix(".json")
        handler = page("device.html", f"device {device_id}", device_page, store, device_id)
        response: Response = await handler(request)
        return response

    async def devices(request: Request) -> Response:
        try:
            f = device_filter(request.query_params)
        except BadReport as exc:
            if wants_json(request, request.url.path):
                return headers(JSONResponse({"error": str(exc)}, status_code=400))
            return html("error.html", {"title": "bad request", "message": str(exc)}, 400)
        handler = page("devices.html", "devices", device_list, store, f)
        response: Response = await handler(request)
        return response

    async def plot(request: Request) -> Response:
        if not signed_in(request, admin_tokens):
            return headers(JSONResponse({"error": "sign in first"}, status_code=401))
        name = request.path_params["hardware_class"]
        try:
            svg = await run_in_threadpool(latency_svg, store, name)
        except NotFound as exc:
            return headers(JSONResponse({"error": str(exc)}, status_code=404))
        return headers(Response(svg, media_type="image/svg+xml"))

    async def login_form(request: Request) -> Response:
        target = local_path(request.query_params.get("next"))
        return html("login.html", {"title": "sign in", "next": target, "error": None})

    async def login(request: Request) -> Response:
        if not same_origin(request):
            return html("error.html", {"title": "refused", "message": "cross-site POST"}, 403)
        body = await request.body()
        form = parse_qs(body[:8192].decode("utf-8", "replace"), max_num_fields=4)
        token = (form.get("token") or [""])[0].strip()
        target = local_path((form.get("next") or ["/"])[0])
        if not token or not token_ok(token, admin_tokens):
            context = {"title": "sign in", "next": target, "error": "wrong admin token"}
            return html("login.html", context, 401)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            COOKIE,
            session_cookie(token),
            max_age=SESSION_S,
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return headers(response)

    async def logout(request: Request) -> Response:
        if not same_origin(request):
            return html("error.html", {"title": "refused", "message": "cross-site POST"}, 403)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return headers(response)

    async def stylesheet(request: Request) -> Response:
        css = (TEMPLATES / "fleet.css").read_bytes()
        response = Response(css, media_type="text/css")
        response.headers["cache-control"] = "max-age=3600"
        return response

    async def prometheus(request: Request) -> Response:
        if not signed_in(request, admin_tokens):
            return JSONResponse(
                {"error": "/metrics needs the admin token (Authorization: Bearer)"},
                status_code=401,
            )
        body = await run_in_threadpool(metrics.render)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    for route in (
        Route("/", index, methods=["GET"]),
        Route("/.json", index, methods=["GET"]),
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/devices", devices, methods=["GET"]),
        Route("/devices.json", devices, methods=["GET"]),
        Route("/devices/{device_id}", device, methods=["GET"]),
        Route("/latency", lat, methods=["GET"]),
        Route("/latency.json", lat, methods=["GET"]),
        Route("/latency/{hardware_class}.svg", plot, methods=["GET"]),
        Route("/rollouts", rolls, methods=["GET"]),
        Route("/rollouts.json", rolls, methods=["GET"]),
        Route("/assets/fleet.css", stylesheet, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
    ):
        app.router.routes.append(route)
    return metrics
