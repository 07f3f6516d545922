"""The fleet dashboard and /metrics, on a real fleet service with devices that reported.

Four devices enroll and report through the client library (real keys, real signed reports,
real KLL sketches); one of them sends HTML in every free-text field it has. The pages are
read as JSON and HTML over HTTP on SQLite and PostgreSQL, and driven end to end in Debian's
headless Chromium through Playwright (never ``playwright install``): sign in, the overview,
a device's history, the latency plots, a halted rollout and its reason, sign out. Chromium
missing is a failure, not a skip. The rollout rows are written as the rollout engine leaves
them (its own tests drive it), so these pages are tested on exactly what they render.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fleet_support import (
    ADMIN,
    SHA,
    FleetProcess,
    device,
    document,
    post,
    sealed,
    start_fleet,
    status,
)

from edgeinfer.fleet import web
from edgeinfer.fleet.client import report_cycle
from edgeinfer.fleet.sketches import encode, make
from edgeinfer.fleet.store import (
    Rollout,
    RolloutDevice,
    RolloutEvent,
    StoreConfig,
    open_store,
    utc_now,
)

pytestmark = pytest.mark.timeout(120)

XSS_REASON = "<script>alert('reason')</script> health gate: accuracy 0.41 < 0.90"
XSS_AGENT_ID = '<img src=x onerror="alert(1)">'
XSS_MACHINE = "<svg onload=alert(2)>"
XSS_GATE = "<b>bold</b>"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@dataclass
class Fleet:
    service: FleetProcess
    ids: dict[str, str]  # name -> device id

    @property
    def url(self) -> str:
        return self.service.url

    def get(self, route: str, **kw: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {ADMIN}"}
        return httpx.get(self.url + route, headers=headers, timeout=30, **kw)


@pytest.fixture(scope="module")
def populated(fleet: FleetProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Four devices on two hardware classes; one rolled back with HTML in what it sent."""
    root = tmp_path_factory.mktemp("devices")
    a = device(fleet, root / "a", hardware_class="test-x86_64")
    assert report_cycle(a, status(version=1), latency_ms=[4.0, 4.5, 5.0]).sent == 1
    assert report_cycle(a, status(version=2), latency_ms=[2.0, 2.5, 3.0, 3.5]).sent == 1
    b = device(fleet, root / "b", hardware_class="test-x86_64")
    up_to_date = status(version=2, result="up-to-date")
    assert report_cycle(b, up_to_date, latency_ms=[2.2, 2.8, 3.1]).sent == 1
    c = device(fleet, root / "c", hardware_class="test-arm64")
    rolled_back = status(version=1, result="rolled-back", reason=XSS_REASON)
    rolled_back["device_id"] = XSS_AGENT_ID
    gate = {"accuracy": 0.41, "note": XSS_GATE}
    assert report_cycle(c, rolled_back, latency_ms=[9.0, 11.0], gate=gate).sent == 1
    d = device(fleet, root / "d", hardware_class="test-arm64")
    payload = {
        "agent_version": "0.1.0",
        "active": {"slot": "b", "name": "digits", "version": 2, "sha256": SHA},
        "cycle": {"result": "updated", "via": "full", "from_version": 1, "to_version": 2},
        "hardware": {"hardware_class": "test-arm64", "machine": XSS_MACHINE, "system": "linux"},
        "sketches": [{"metric": "latency_ms", "kll": encode(make([7.0, 8.0, 9.5]))}],
    }
    assert d.report(payload, SHA).sent == 1
    # two refusals: a forged signature and a malformed body
    forged = sealed(Ed25519PrivateKey.generate(), document(a, 99))
    assert post(fleet, forged).status_code == 401
    assert post(fleet, b'{"report": 1}').status_code == 400
    ids = {"a": a.device_id, "b": b.device_id, "c": c.device_id, "d": d.device_id}
    _rollouts(fleet.db, ids)
    yield Fleet(fleet, ids)


HALT = {
    "stage": 0,
    "share": 5,
    "in_stage": 4,
    "reporting": 4,
    "ok": 3,
    "failed": 1,
    "failure_share": 0.25,
    "threshold": 0.1,
    "min_devices": 3,
}
HALT_REASON = "failure share 25.0 % (1 of 4 reporting devices failed) above max 10 % at stage 1"


def _rollouts(db: str, ids: dict[str, str]) -> None:
    """Rows as the rollout engine leaves them: digits 2 halted at its first stage by the
    failure share (c rolled back), and a paused rollout of another model."""
    store = open_store(StoreConfig(db))
    now = utc_now()
    common = {"created_at": now, "stage_started_at": now, "updated_at": now, "soak_s": 0.0}
    try:
        with store.session() as session:
            halted = Rollout(
                model="digits",
                version=2,
                previous_version=1,
                stages=[5.0, 25.0, 100.0],
                stage=0,
                state="halted",
                max_failure=0.1,
                min_devices=3,
                max_latency_regression=0.2,
                halt_rule="failure-share",
                halt_detail=HALT,
                revision=2,
                **common,
            )
            paused = Rollout(
                model="detector",
                version=7,
                stages=[10.0, 50.0, 100.0],
                stage=1,
                state="paused",
                max_failure=0.05,
                min_devices=20,
                revision=3,
                **common,
            )
            session.add_all([halted, paused])
            session.flush()
            for name, outcome in (("a", "ok"), ("b", "ok"), ("d", "ok"), ("c", "failed")):
                session.add(
                    RolloutDevice(
                        rollout_id=halted.id,
                        device_id=ids[name],
                        outcome=outcome,
                        stage=0,
                        reason=XSS_REASON if outcome == "failed" else None,
                        updated_at=now,
                    )
                )
            session.add(
                RolloutEvent(
                    rollout_id=halted.id, revision=2, at=now, kind="halted", stage=0, detail=HALT
                )
            )
    finally:
        store.close()


def _login(fleet: Fleet, token: str = ADMIN, **headers: str) -> httpx.Response:
    return httpx.post(
        fleet.url + "/login",
        data={"token": token, "next": "/latency"},
        headers=headers,
        timeout=30,
    )


def test_the_overview_counts_devices_by_version_and_state(populated: Fleet) -> None:
    data = populated.get("/.json").json()
    assert data["devices"] == 4
    assert data["reports"] == 5
    assert data["states"] == {"rolled-back": 1, "up-to-date": 1, "updated": 2}
    groups = {(g["model"], g["version"], g["state"]): g["devices"] for g in data["by_version"]}
    assert groups == {
        ("digits", 2, "updated"): 2,
        ("digits", 2, "up-to-date"): 1,
        ("digits", 1, "rolled-back"): 1,
    }
    assert all(
        re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:]{8}Z", g["last_report_at"]) for g in data["by_version"]
    )
    assert {d["id"] for d in data["recent_devices"]} == set(populated.ids.values())
    assert data["refused_since_start"] == {"bad-signature": 1, "malformed": 1}
    again = populated.get("/?format=json").json()  # the same page (ages move on: "3 s ago")
    assert _without_ages(again) == _without_ages(data)


def _without_ages(data: dict[str, Any]) -> dict[str, Any]:
    lists = ("by_version", "recent_devices")
    rows = {k: [{**r, "last_report_age": None} for r in data[k]] for k in lists}
    return {**data, **rows}


def test_a_device_page_holds_its_history(populated: Fleet) -> None:
    a = populated.get(f"/devices/{populated.ids['a']}.json").json()
    assert [(r["counter"], r["version"], r["result"]) for r in a["history"]] == [
        (2, 2, "updated"),
        (1, 1, "updated"),
    ]
    assert a["history"][0]["via"] == "delta"
    assert [s["metric"] for s in a["fleet_latency"]] == ["latency_ms"]
    c = populated.get(f"/devices/{populated.ids['c']}", params={"format": "json"}).json()
    assert c["state"] == "rolled-back"
    assert c["history"][0]["reason"] == XSS_REASON
    assert c["history"][0]["gate"] == {"accuracy": 0.41, "note": XSS_GATE}


def test_the_device_list_filters_by_model_version_and_state(populated: Fleet) -> None:
    rolled_back = populated.get("/devices.json", params={"state": "rolled-back"}).json()
    assert [d["id"] for d in rolled_back["devices"]] == [populated.ids["c"]]
    assert rolled_back["devices"][0]["reason"] == XSS_REASON
    assert (rolled_back["total"], rolled_back["next"]) == (1, None)
    query = {"model": "digits", "version": "2", "state": "updated", "format": "json"}
    updated = populated.get("/devices", params=query).json()
    assert {d["id"] for d in updated["devices"]} == {populated.ids["a"], populated.ids["d"]}
    assert updated["filters"] == {"model": "digits", "version": 2, "state": "updated"}
    assert populated.get("/devices.json").json()["total"] == 4
    bad = populated.get("/devices.json", params={"version": "two"})
    assert bad.status_code == 400
    assert bad.json() == {"error": "?version=two: expected a whole number"}
    page = populated.get("/devices", params={"offset": "-1"})
    assert page.status_code == 400 and "?offset=-1: expected a whole number" in page.text


def test_everything_a_device_sent_is_escaped(populated: Fleet) -> None:
    for name in ("c", "d"):
        page = populated.get(f"/devices/{populated.ids[name]}")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "script-src" not in page.headers["content-security-policy"]
        assert "<script" not in page.text and "<svg" not in page.text and "<img" not in page.text
    c = populated.get(f"/devices/{populated.ids['c']}").text
    assert "&lt;script&gt;alert(&#39;reason&#39;)&lt;/script&gt;" in c
    assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in c
    assert "&lt;b&gt;bold&lt;/b&gt;" in c
    d = populated.get(f"/devices/{populated.ids['d']}").text
    assert "&lt;svg onload=alert(2)&gt;" in d
    overview = populated.get("/").text
    assert "<script" not in overview and "&lt;script&gt;" in overview  # the reason, as a title


def test_latency_per_hardware_class_is_plotted(populated: Fleet) -> None:
    data = populated.get("/latency.json").json()
    classes = {c["hardware_class"]: c for c in data["hardware_classes"]}
    assert set(classes) == {"test-arm64", "test-x86_64"}
    x86 = {(s["version"], s["n"]) for s in classes["test-x86_64"]["series"]}
    assert x86 == {(1, 3), (2, 7)}  # a's version 2 and b's, merged
    v2 = next(s for s in classes["test-x86_64"]["series"] if s["version"] == 2)
    assert 2.0 <= v2["p50"] <= v2["p95"] <= v2["p99"] <= v2["max"] == 3.5
    svg = populated.get(classes["test-arm64"]["plot"])
    assert svg.status_code == 200
    assert svg.headers["content-type"] == "image/svg+xml"
    assert svg.text.lstrip().startswith("<?xml") and "<svg" in svg.text
    assert populated.get("/latency/no-such-class.svg").status_code == 404


def test_rollouts_show_their_stage_and_why_one_halted(populated: Fleet) -> None:
    found = {r["model"]: r for r in populated.get("/rollouts.json").json()["rollouts"]}
    assert set(found) == {"detector", "digits"}
    digits = found["digits"]
    assert (digits["state"], digits["stage"], digits["share"]) == ("halted", 0, 0)
    assert (digits["ok"], digits["failed"], digits["halt_rule"]) == (3, 1, "failure-share")
    assert digits["halt_reason"] == HALT_REASON
    assert (found["detector"]["state"], found["detector"]["share"]) == ("paused", 50.0)
    page = populated.get("/rollouts").text
    assert HALT_REASON in page
    assert "No rollouts." not in page


def test_halt_reasons_read_as_one_line() -> None:
    latency = {
        "hardware_class": "rpi5",
        "p95": 12.5,
        "previous_p95": 10.0,
        "regression": 0.25,
        "threshold": 0.2,
        "previous_version": 3,
    }
    assert web.halt_reason("latency-p95", latency) == (
        "p95 latency on rpi5 12.50 ms vs 10.00 ms for version 3 (+25.0 %, max +20 %)"
    )
    assert web.halt_reason("failure-share", HALT) == HALT_REASON
    assert web.halt_reason("some-new-rule", {"x": 1}) == "some-new-rule: x=1"
    assert web.halt_reason("failure-share", {}) == "failure-share"
    assert web.halt_reason(None, None) is None


def test_the_rollouts_page_without_rollouts(tmp_path: Path) -> None:
    store = open_store(StoreConfig(str(tmp_path / "empty.db")))
    try:
        assert web.rollouts_of(store) == []
    finally:
        store.close()


def test_metrics_are_behind_the_admin_token(populated: Fleet) -> None:
    open_answer = httpx.get(populated.url + "/metrics", timeout=30)
    assert open_answer.status_code == 401
    assert "admin token" in open_answer.json()["error"]
    text = populated.get("/metrics").text
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert samples['edgeinfer_fleet_devices{model="digits",state="updated",version="2"}'] == 2
    assert samples['edgeinfer_fleet_devices{model="digits",state="rolled-back",version="1"}'] == 1
    assert samples['edgeinfer_fleet_reports_received_total{outcome="accepted"}'] == 5
    assert samples['edgeinfer_fleet_reports_received_total{outcome="refused"}'] == 2
    assert samples['edgeinfer_fleet_reports_refused_total{reason="bad-signature"}'] == 1
    assert samples['edgeinfer_fleet_reports_refused_total{reason="malformed"}'] == 1
    assert samples['edgeinfer_fleet_reports_refused_total{reason="revoked"}'] == 0
    halted = 'edgeinfer_fleet_rollout_halted{model="digits",rule="failure-share",version="2"}'
    assert samples[halted] == 1
    paused = 'edgeinfer_fleet_rollout_share_percent{model="detector",state="paused",version="7"}'
    assert samples[paused] == 50
    failed = 'edgeinfer_fleet_rollout_devices{model="digits",outcome="failed",version="2"}'
    assert samples[failed] == 1


def test_sign_in_sets_a_strict_http_only_cookie_without_the_token(populated: Fleet) -> None:
    answer = _login(populated)
    assert answer.status_code == 303 and answer.headers["location"] == "/latency"
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(web.COOKIE + "=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert ADMIN not in cookie
    session = {web.COOKIE: answer.cookies[web.COOKIE]}
    page = httpx.get(populated.url + "/", cookies=session, timeout=30)
    assert page.status_code == 200 and "Fleet overview" in page.text


@pytest.mark.parametrize(
    ("token", "headers", "status_code", "fragment"),
    [
        ("not-the-token", {}, 401, "wrong admin token"),
        ("", {}, 401, "wrong admin token"),
        (ADMIN, {"origin": "http://evil.example"}, 403, "cross-site POST"),
        (ADMIN, {"sec-fetch-site": "cross-site"}, 403, "cross-site POST"),
    ],
)
def test_sign_in_refuses_wrong_tokens_and_other_sites(
    populated: Fleet, token: str, headers: dict[str, str], status_code: int, fragment: str
) -> None:
    answer = _login(populated, token, **headers)
    assert answer.status_code == status_code
    assert fragment in answer.text
    assert "set-cookie" not in answer.headers


def test_pages_need_a_session(populated: Fleet) -> None:
    answer = httpx.get(populated.url + f"/devices/{populated.ids['a']}", timeout=30)
    assert answer.status_code == 303
    assert answer.headers["location"] == f"/login?next=%2Fdevices%2F{populated.ids['a']}"
    listing = httpx.get(populated.url + "/devices?state=updated", timeout=30)
    assert listing.headers["location"] == "/login?next=%2Fdevices%3Fstate%3Dupdated"
    back = httpx.post(
        populated.url + "/login",
        data={"token": ADMIN, "next": "/devices?state=updated"},
        timeout=30,
    )
    assert back.status_code == 303 and back.headers["location"] == "/devices?state=updated"
    assert httpx.get(populated.url + "/.json", timeout=30).status_code == 401
    forged = {web.COOKIE: web.session_cookie("some-other-token")}
    assert httpx.get(populated.url + "/.json", cookies=forged, timeout=30).status_code == 401
    expired = {web.COOKIE: web.session_cookie(ADMIN, now=time.time() - web.SESSION_S - 5)}
    assert httpx.get(populated.url + "/.json", cookies=expired, timeout=30).status_code == 401
    login = httpx.get(populated.url + "/login", params={"next": "//evil.example/x"}, timeout=30)
    assert 'name="next" value="/"' in login.text  # no redirect off the site


def test_an_unknown_device_is_a_404(populated: Fleet) -> None:
    missing = "d-" + "0" * 20
    assert populated.get(f"/devices/{missing}.json").json() == {"error": f"no device {missing!r}"}
    page = populated.get(f"/devices/{missing}")
    assert page.status_code == 404 and "no device" in page.text


@pytest.mark.slow
def test_a_rollout_that_halted_itself_shows_its_reason(tmp_path: Path) -> None:
    """The rollout engine halts a real rollout on devices' rollback reports; the page says why."""
    service = start_fleet(str(tmp_path / "rollout.db"))
    try:
        clients = []
        for i in range(4):  # the model's four devices, on version 2 before the rollout
            clients.append(device(service, tmp_path / f"dev{i}", hardware_class="test-x86_64"))
            assert report_cycle(clients[-1], status(version=2, result="up-to-date")).sent == 1
        plan = {"model": "digits", "version": 3, "stages": [100], "max_failure": 0.1}
        started = service.admin("POST", "/v1/rollouts", json={**plan, "min_devices": 3})
        assert started.status_code == 200, started.text
        for client, fails in zip(clients, (False, False, True, True), strict=True):
            if fails:
                cycle = status(version=3, result="rolled-back", reason=XSS_REASON)
                cycle["active"]["version"] = 2  # back on the version it had
            else:
                cycle = status(version=3)
            assert report_cycle(client, cycle).sent == 1
        headers = {"authorization": f"Bearer {ADMIN}"}
        (found,) = httpx.get(service.url + "/rollouts.json", headers=headers, timeout=30).json()[
            "rollouts"
        ]
        assert (found["state"], found["halt_rule"]) == ("halted", "failure-share")
        assert (found["ok"], found["failed"]) == (2, 2)  # the last one counted after the halt
        reason = "failure share 33.3 % (1 of 3 reporting devices failed) above max 10 % at stage 1"
        assert found["halt_reason"] == reason
        page = httpx.get(service.url + "/rollouts", headers=headers, timeout=30).text
        assert reason in page
    finally:
        service.stop()


def _chromium() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.fail("Debian's chromium is not installed: run scripts/system-deps.sh")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("fleet", ["sqlite"], indirect=True)
def test_the_dashboard_in_chromium(populated: Fleet, tmp_path: Path) -> None:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        pytest.fail(f"playwright is not installed (the test extra): {exc}")
    with sync_playwright() as pw:
        try:
            browser = pw.chromium.launch(
                executable_path=_chromium(), args=CHROMIUM_ARGS, headless=True, timeout=60_000
            )
        except Exception as exc:  # the reason, whatever it is, is the failure
            pytest.fail(f"Chromium cannot start: {str(exc).splitlines()[0]}")
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            page.set_default_timeout(20_000)
            dialogs: list[str] = []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            url = populated.url

            page.goto(url + "/")
            assert page.url.endswith("/login?next=%2F")
            page.fill("#token", "not-the-token")
            page.click("button[type=submit]")
            assert page.locator(".error").inner_text() == "wrong admin token"
            assert context.cookies() == []

            page.fill("#token", ADMIN)
            page.click("button[type=submit]")
            page.wait_for_url(url + "/")
            (cookie,) = context.cookies()
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
            assert page.evaluate("document.cookie") == ""  # no script can read the session
            assert page.locator("#device-count").inner_text() == "4"
            rows = page.locator("#by-version tbody tr").all_inner_texts()
            assert len(rows) == 3
            assert any(re.match(r"digits\s+2\s+updated\s+2\s+20", r) for r in rows), rows
            assert "bad-signature" in page.locator("#refused").inner_text()
            page.click("#by-version a[href*='rolled-back']")  # the rolled-back group
            assert page.locator("#devices tbody tr").count() == 1
            assert XSS_REASON in page.locator("#devices tbody tr").inner_text()
            page.go_back()
            page.screenshot(path=str(tmp_path / "overview.png"), full_page=True)

            page.click(f"a[href='/devices/{populated.ids['c']}']")
            page.wait_for_url(url + f"/devices/{populated.ids['c']}")
            history = page.locator("#history tbody tr")
            assert history.count() == 1
            assert XSS_REASON in history.first.inner_text()  # shown as text, not run
            assert XSS_GATE in history.first.inner_text()
            assert page.locator("script, svg, img[onerror], b").count() == 0
            assert XSS_AGENT_ID in page.locator("dl.facts").inner_text()
            page.screenshot(path=str(tmp_path / "device.png"), full_page=True)

            page.goto(url + f"/devices/{populated.ids['d']}")
            assert XSS_MACHINE in page.locator("#hardware").inner_text()
            assert page.locator("svg").count() == 0

            page.click("nav >> text=Latency")
            plots = page.locator("img.plot")
            assert plots.count() == 2
            loaded = "img => img.complete && img.naturalWidth > 0"
            deadline = time.monotonic() + 30
            while not all(plots.nth(i).evaluate(loaded) for i in range(2)):
                assert time.monotonic() < deadline, "the latency plots did not load"
                time.sleep(0.1)
            page.screenshot(path=str(tmp_path / "latency.png"), full_page=True)

            page.click("nav >> text=Rollouts")
            halted = page.locator("tr.rollout[data-model=digits]")
            assert "halted" in halted.inner_text()
            assert halted.locator(".halt-reason").inner_text() == HALT_REASON
            assert halted.locator(".stage.current").inner_text() == "5 %"
            page.screenshot(path=str(tmp_path / "rollouts.png"), full_page=True)

            page.click("text=Sign out")
            page.wait_for_url(re.compile(r".*/login$"))
            assert context.cookies() == []
            page.goto(url + "/")
            assert page.url.endswith("/login?next=%2F")
            assert dialogs == []  # nothing a device sent ever ran
        finally:
            browser.close()
