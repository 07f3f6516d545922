"""The fleet dashboard: server-rendered pages over the fleet database, behind the admin token.

Like Datasette: plain HTML from Jinja2 templates (``templates/``), one stylesheet, no
JavaScript; every page is also JSON, at ``PAGE.json`` or ``PAGE?format=json``, from the very
dict the template renders. Pages::

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

import datetime as dt
import hashlib
import hmac
import importlib.util
import io
import json
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

from edgeinfer.errors import MissingDependencyError

for _module in ("jinja2", "prometheus_client", "matplotlib"):
    if importlib.util.find_spec(_module) is None:
        raise MissingDependencyError(_module, "fleet", "the fleet dashboard")

import jinja2  # noqa: E402
from sqlalchemy import case, func, select  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.concurrency import run_in_threadpool  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse, RedirectResponse, Response  # noqa: E402
from starlette.routing import Route  # noqa: E402

from edgeinfer.fleet import inventory, rollouts  # noqa: E402
from edgeinfer.fleet.errors import BadReport, NotFound  # noqa: E402
from edgeinfer.fleet.metrics import (  # noqa: E402
    CONTENT_TYPE_LATEST,
    FleetMetrics,
    ReportObserver,
    state_label,
)
from edgeinfer.fleet.sketches import load as load_sketch  # noqa: E402
from edgeinfer.fleet.store import Device, Report, SketchRow, Store  # noqa: E402

__all__ = ["COOKIE", "halt_reason", "mount", "rollouts_of", "session_cookie"]

TEMPLATES = Path(__file__).parent / "templates"
COOKIE = "edgeinfer_fleet_session"
SESSION_S = 12 * 3600  # seconds a login lasts
RECENT_DEVICES = 100  # devices listed on the overview, most recent report first
DEVICE_PAGE = 100  # devices a page of /devices lists
HISTORY = 50  # reports shown on a device page
PLOT_RANKS = tuple(i / 100 for i in range(1, 100))  # the quantiles a latency curve is drawn by
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
_SESSION_CONTEXT = b"edgeinfer-fleet-session-v1"


# --- sessions -------------------------------------------------------------------------


def _mac(token: str, expiry: int, nonce: str) -> str:
    message = _SESSION_CONTEXT + f"|{expiry}|{nonce}".encode()
    return hmac.new(token.encode("utf-8"), message, hashlib.sha256).hexdigest()


def session_cookie(token: str, now: float | None = None) -> str:
    """A session value for ``token``: ``EXPIRY.NONCE.MAC`` (the token is not in it)."""
    expiry = int(now if now is not None else time.time()) + SESSION_S
    nonce = secrets.token_hex(12)
    return f"{expiry}.{nonce}.{_mac(token, expiry, nonce)}"


def _token_ok(token: str, tokens: tuple[str, ...]) -> bool:
    found = False
    for candidate in tokens:  # no early exit: timing tells nothing
        found |= hmac.compare_digest(token.encode("utf-8"), candidate.encode("utf-8"))
    return found


def _cookie_ok(value: str, tokens: tuple[str, ...]) -> bool:
    parts = value.split(".")
    if len(parts) != 3 or not parts[0].isdigit() or int(parts[0]) < time.time():
        return False
    expiry, nonce, mac = int(parts[0]), parts[1], parts[2]
    found = False
    for candidate in tokens:
        found |= hmac.compare_digest(mac.encode(), _mac(candidate, expiry, nonce).encode())
    return found


def _signed_in(request: Request, tokens: tuple[str, ...]) -> bool:
    cookie = request.cookies.get(COOKIE)
    if cookie is not None and _cookie_ok(cookie, tokens):
        return True
    scheme, _, token = request.headers.get("authorization", "").strip().partition(" ")
    return scheme.lower() == "bearer" and bool(token.strip()) and _token_ok(token.strip(), tokens)


def _same_origin(request: Request) -> bool:
    """A POST from the dashboard's own pages (browsers say where a form came from)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is not None:
        # the host, not the scheme: behind a TLS-terminating proxy this side sees http
        return urlsplit(origin).netloc == request.headers.get("host", "")
    return True  # neither header: not a browser, so not a forged cross-site form


def _local_path(target: str | None) -> str:
    """``target`` if it is a path on this site, else ``/`` (no open redirect)."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


# --- queries (plain functions of the store, JSON-ready dicts) ---------------------------


def _age(value: dt.datetime | None, now: dt.datetime) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    seconds = max(0, int((now - value).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def _device_row(d: Device, now: dt.datetime) -> dict[str, Any]:
    return {
        "id": d.id,
        "model": d.model,
        "version": d.active_version,
        "state": state_label(d.state, d.revoked_at is not None),
        "hardware_class": d.hardware_class,
        "reason": d.reason,
        "last_report_at": inventory.timestamp(d.last_report_at),
        "last_report_age": _age(d.last_report_at, now),
    }


def overview(store: Store, refused: dict[str, int]) -> dict[str, Any]:
    """Devices by (model, version, state) with their last report, and the recent devices."""
    now = dt.datetime.now(dt.timezone.utc)
    revoked = case((Device.revoked_at.is_not(None), 1), else_=0)
    with store.session() as session:
        groups = session.execute(
            select(
                Device.model,
                Device.active_version,
                Device.state,
                revoked,
                func.count(),
                func.max(Device.last_report_at),
            )
            .group_by(Device.model, Device.active_version, Device.state, revoked)
            .order_by(Device.model, Device.active_version.desc(), Device.state)
        ).all()
        recent = session.scalars(
            select(Device)
            .order_by(Device.last_report_at.desc().nulls_last(), Device.id)
            .limit(RECENT_DEVICES)
        ).all()
        reports = session.scalar(select(func.count()).select_from(Report)) or 0
    by_version = []
    states: dict[str, int] = {}
    for model, version, state, is_revoked, n, last in groups:
        label = state_label(state, bool(is_revoked))
        states[label] = states.get(label, 0) + int(n)
        by_version.append(
            {
                "model": model,
                "version": version,
                "state": label,
                "devices": int(n),
                "last_report_at": inventory.timestamp(last),
                "last_report_age": _age(last, now),
            }
        )
    return {
        "devices": sum(states.values()),
        "reports": int(reports),
        "states": dict(sorted(states.items())),
        "by_version": by_version,
        "recent_devices": [_device_row(d, now) for d in recent],
        "refused_since_start": refused,  # this replica's counters, by reason
    }


def _history_row(counter: int, received_at: dt.datetime, text: str) -> dict[str, Any]:
    """One report as the device page lists it (the signed text was validated on arrival)."""
    try:
        payload = json.loads(text).get("payload", {})
    except (ValueError, AttributeError):
        payload = {}
    active = payload.get("active") or {}
    cycle = payload.get("cycle") or {}
    return {
        "counter": counter,
        "received_at": inventory.timestamp(received_at),
        "version": active.get("version"),
        "result": cycle.get("result"),
        "reason": cycle.get("reason"),
        "from_version": cycle.get("from_version"),
        "to_version": cycle.get("to_version"),
        "via": cycle.get("via"),
        "gate": payload.get("gate") or {},
        "agent_version": payload.get("agent_version"),
    }


@dataclass(frozen=True)
class DeviceFilter:
    model: str | None = None
    version: int | None = None
    state: str | None = None  # a cycle result, "enrolled" or "revoked"
    offset: int = 0  # devices skipped (the page size is DEVICE_PAGE)


def device_filter(params: Mapping[str, str]) -> DeviceFilter:
    """The list's filters from a query string, or a one-line :class:`BadReport`."""
    version, offset = params.get("version") or None, params.get("offset") or "0"
    if version is not None and not version.isdigit():
        raise BadReport(f"?version={version[:20]}: expected a whole number")
    if not offset.isdigit() or int(offset) > 10**9:
        raise BadReport(f"?offset={offset[:20]}: expected a whole number")
    return DeviceFilter(
        model=(params.get("model") or None),
        version=None if version is None else int(version),
        state=(params.get("state") or None),
        offset=int(offset),
    )


def device_list(store: Store, f: DeviceFilter) -> dict[str, Any]:
    """One page of devices matching ``f``, latest report first."""
    now = dt.datetime.now(dt.timezone.utc)
    query = select(Device)
    if f.model is not None:
        query = query.where(Device.model == f.model)
    if f.version is not None:
        query = query.where(Device.active_version == f.version)
    if f.state == "revoked":
        query = query.where(Device.revoked_at.is_not(None))
    elif f.state is not None:
        query = query.where(Device.state == f.state, Device.revoked_at.is_(None))
    with store.session() as session:
        total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
        found = session.scalars(
            query.order_by(Device.last_report_at.desc().nulls_last(), Device.id)
            .limit(DEVICE_PAGE)
            .offset(f.offset)
        ).all()
    filters = {k: v for k, v in asdict(f).items() if v is not None and k != "offset"}
    after = f.offset + len(found)
    return {
        "filters": filters,
        "total": int(total),
        "offset": f.offset,
        "devices": [_device_row(d, now) for d in found],
        "next": f"/devices?{urlencode({**filters, 'offset': after})}" if after < total else None,
    }


def device_page(store: Store, device_id: str) -> dict[str, Any]:
    detail = inventory.device_detail(store, device_id, reports=0)
    with store.session() as session:
        rows = session.execute(
            select(Report.counter, Report.received_at, Report.signed_text)
            .where(Report.device_id == detail["id"])
            .order_by(Report.counter.desc())
            .limit(HISTORY)
        ).all()
    detail.pop("recent_reports", None)
    detail["history"] = [_history_row(c, r, t) for c, r, t in rows]
    return detail


def _latency_rows(store: Store, hardware_class: str | None = None) -> list[SketchRow]:
    with store.session() as session:
        query = select(SketchRow).where(SketchRow.metric == "latency_ms")
        if hardware_class is not None:
            query = query.where(SketchRow.hardware_class == hardware_class)
        return list(
            session.scalars(
                query.order_by(SketchRow.hardware_class, SketchRow.model, SketchRow.version)
            )
        )


def latency(store: Store) -> dict[str, Any]:
    """Per hardware class: each (model, version)'s merged latency count and quantiles."""
    classes: dict[str, list[dict[str, Any]]] = {}
    for row in _latency_rows(store):
        sketch = load_sketch(row.kll)
        if sketch.is_empty():
            continue
        q = [float(v) for v in sketch.get_quantiles([0.5, 0.95, 0.99])]
        classes.setdefault(row.hardware_class, []).append(
            {
                "model": row.model,
                "version": row.version,
                "n": int(row.n),
                "p50": q[0],
                "p95": q[1],
                "p99": q[2],
                "min": float(sketch.get_min_value()),
                "max": float(sketch.get_max_value()),
            }
        )
    return {
        "hardware_classes": [
            {"hardware_class": name, "plot": f"/latency/{quote(name)}.svg", "series": series}
            for name, series in classes.items()
        ]
    }


def latency_svg(store: Store, hardware_class: str) -> bytes:
    """The latency distribution (CDF from the merged sketches' quantiles) of one class."""
    from matplotlib.figure import Figure  # lazy: a second to import; the OO API is thread-safe

    rows = [(r, load_sketch(r.kll)) for r in _latency_rows(store, hardware_class)]
    rows = [(r, s) for r, s in rows if not s.is_empty()]
    if not rows:
        raise NotFound(f"no latency sketches for hardware class {hardware_class[:80]!r}")
    fig = Figure(figsize=(7.5, 3.6), dpi=96)
    ax = fig.add_subplot()
    for row, sketch in rows:
        xs = [float(sketch.get_min_value())]
        xs += [float(v) for v in sketch.get_quantiles(list(PLOT_RANKS))]
        xs += [float(sketch.get_max_value())]
        ys = [0.0, *PLOT_RANKS, 1.0]
        ax.plot(xs, ys, drawstyle="steps-post", label=f"{row.model} v{row.version} (n={row.n})")
    for rank in (0.5, 0.95, 0.99):
        ax.axhline(rank, color="#bbbbbb", linewidth=0.8, linestyle="--")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("share of inferences ≤ x")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"on-device latency, {hardware_class}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="svg", metadata={"Date": None})
    return out.getvalue()


def halt_reason(rule: str | None, detail: dict[str, Any] | None) -> str | None:
    """One line saying which rule halted a rollout and on what figures."""
    if rule is None:
        return None
    d = detail or {}
    try:
        if rule == "failure-share":
            return (
                f"failure share {float(d['failure_share']) * 100:.1f} % "
                f"({d['failed']} of {d['reporting']} reporting devices failed) above "
                f"max {float(d['threshold']) * 100:g} % at stage {int(d['stage']) + 1}"
            )
        if rule == "latency-p95":
            return (
                f"p95 latency on {d['hardware_class']} {float(d['p95']):.2f} ms vs "
                f"{float(d['previous_p95']):.2f} ms for version {d.get('previous_version')} "
                f"(+{float(d['regression']) * 100:.1f} %, max +{float(d['threshold']) * 100:g} %)"
            )
    except (KeyError, TypeError, ValueError):
        pass
    figures = ", ".join(f"{k}={v}" for k, v in sorted(d.items()))
    return f"{rule}: {figures}" if figures else rule


def rollouts_of(store: Store) -> list[dict[str, Any]]:
    """The newest rollout of every model (:func:`edgeinfer.fleet.rollouts.summaries`), each
    with ``halt_reason``: the rule that halted it and its figures, in one line."""
    with store.session() as session:
        found = rollouts.summaries(session)
    return [
        {**r, "halt_reason": halt_reason(r.get("halt_rule"), r.get("halt_detail"))} for r in found
    ]


# --- the routes ----------------------------------------------------------------------


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
            if not _signed_in(request, admin_tokens):
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
        if not _signed_in(request, admin_tokens):
            return headers(JSONResponse({"error": "sign in first"}, status_code=401))
        name = request.path_params["hardware_class"]
        try:
            svg = await run_in_threadpool(latency_svg, store, name)
        except NotFound as exc:
            return headers(JSONResponse({"error": str(exc)}, status_code=404))
        return headers(Response(svg, media_type="image/svg+xml"))

    async def login_form(request: Request) -> Response:
        target = _local_path(request.query_params.get("next"))
        return html("login.html", {"title": "sign in", "next": target, "error": None})

    async def login(request: Request) -> Response:
        if not _same_origin(request):
            return html("error.html", {"title": "refused", "message": "cross-site POST"}, 403)
        body = await request.body()
        form = parse_qs(body[:8192].decode("utf-8", "replace"), max_num_fields=4)
        token = (form.get("token") or [""])[0].strip()
        target = _local_path((form.get("next") or ["/"])[0])
        if not token or not _token_ok(token, admin_tokens):
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
        if not _same_origin(request):
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
        if not _signed_in(request, admin_tokens):
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
