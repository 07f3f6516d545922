"""The fleet service at fleet scale, on SQLite and PostgreSQL side by side in one run.

Three measurements, each against the real fleet service (``edgeinfer fleet serve``) in a
child process, on loopback:

1. **Ingest**: a simulated fleet (10,000 devices; ``--quick``: 100) with real Ed25519 keys
   enrolls through ``POST /v1/enroll``, then every device sends one signed report (the
   agent's: active slot, cycle, health gate, hardware, a KLL latency sketch) from async
   httpx clients. Accepted reports per second, p50/p99 latency and the CPU seconds of the
   service's process tree (its sketch sandbox included) per report, against the raw
   insert rate of the same rows into the same database, measured in the same run: one
   durable transaction per report writing what the service writes (the report row, the
   device's row, the merged sketch's row) straight through the database driver; the rate
   with 100 rows a transaction is shown beside it.
2. **Pages at 100,000 devices** (``--quick``: 2,000), loaded straight into the tables: the
   dashboard's overview and device list, and the ``/v1/devices`` pages that ``edgeinfer
   fleet devices`` walks (1,000 a page, after the last id), over HTTP: p50/p95 seconds.
3. **A bad release** on 2,000 devices (``--quick``: 300) with stages 1,10,100 and
   max-failure 10%: devices follow the signed rollout document (``RolloutGate``, the agent's
   check), install when it lets them, and report; the release fails the health gate on one
   hardware class of four. How many ever installed it, and seconds from the report that
   crossed the threshold (sent) to the halt (recorded in the database).

PostgreSQL is Debian's package, started here from a temporary data directory (fsync on,
as a fleet would run it). Results go to ``benchmarks/results/fleet.json`` with the load
average before and after.

    python benchmarks/bench_fleet.py            # the full run (several minutes)
    python benchmarks/bench_fleet.py --quick --backends sqlite --out /tmp/fleet.json
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import glob
import json
import multiprocessing
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine
from edgeinfer._rollout import rollout_bucket
from edgeinfer.fleet import reports as wire
from edgeinfer.fleet import sketches as kll
from edgeinfer.fleet.client import RolloutGate
from edgeinfer.fleet.errors import BadRolloutDocument
from edgeinfer.fleet.rollout_docs import load_public_key
from edgeinfer.fleet.store import StoreConfig, open_store

ADMIN = "fleet-bench-admin-token"
MODEL = "digits-cnn"
SHA = {1: "c1" * 32, 2: "c2" * 32}
LENGTH = 1_048_576
CLASSES = ("linux-aarch64-4cpu", "linux-armv7l-4cpu", "linux-x86_64-8cpu", "linux-riscv64-4cpu")
BAD_CLASS = CLASSES[3]  # the bad release fails its health gate here
CLIENT_PROCESSES = 4  # processes of async httpx clients sending the bulk requests
DROPPED: dict[str, int] = {}  # connections the service dropped mid-request, by route (retried)
WARM_DEVICES = 20  # devices whose reports warm the service up before the ingest is timed


@dataclass(frozen=True)
class Sizes:
    ingest_devices: int
    concurrency: int
    raw_rows: int  # rows of the raw-insert baseline (same rows, a prefix of them)
    page_devices: int
    page_repeats: int
    rollout_devices: int
    stages: tuple[float, ...]
    min_devices: int
    soak_s: float
    poll_s: float  # seconds between a device's looks at the rollout document


FULL = Sizes(10_000, 64, 2_000, 100_000, 20, 2_000, (1, 10, 100), 10, 120.0, 30.0)
QUICK = Sizes(100, 16, 100, 2_000, 3, 100, (10, 50, 100), 3, 2.0, 1.0)


# processes ------------------------------------------------------------------------------
def _pg_bin(name: str) -> str:
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None
    )
    if found is None:
        raise SystemExit(f"PostgreSQL's {name} is not installed (apt-get install postgresql)")
    return found


def _as_pg_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def postgres() -> Iterator[str]:
    """``postgresql://fleet@127.0.0.1:PORT`` from a fresh data directory (fsync on)."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    root = Path(tempfile.mkdtemp(prefix="edgeinfer-bench-pg-"))
    if os.geteuid() == 0:
        import pwd

        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
    data, log = root / "data", root / "server.log"
    subprocess.run(
        _as_pg_user([initdb, "-D", str(data), "-A", "trust", "-U", "fleet", "--no-sync"]),
        check=True,
        capture_output=True,
        timeout=120,
    )
    port = _free_port()
    options = f"-h 127.0.0.1 -p {port} -k {root} -c max_connections=200"
    subprocess.run(
        _as_pg_user([pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "start"]),
        check=True,
        capture_output=True,
        timeout=120,
    )
    try:
        yield f"postgresql://fleet@127.0.0.1:{port}"
    finally:
        subprocess.run(
            _as_pg_user([pg_ctl, "-D", str(data), "-m", "fast", "stop"]),
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)


def fresh_db(backend: str, pg: str | None, work: Path, name: str) -> str:
    if backend == "sqlite":
        return str(work / f"{name}.db")
    import psycopg

    assert pg is not None
    with psycopg.connect(pg + "/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return f"{pg}/{name}"


@dataclass
class Service:
    proc: subprocess.Popen[str]
    url: str
    output: list[str] = field(default_factory=list)

    def cpu_s(self) -> float:
        """CPU seconds of the service and its children (the sketch sandbox) so far."""
        total = 0.0
        try:
            me = psutil.Process(self.proc.pid)
            for p in [me, *me.children(recursive=True)]:
                try:
                    t = p.cpu_times()
                    total += t.user + t.system
                except psutil.NoSuchProcess:
                    pass
        except psutil.NoSuchProcess:
            pass
        return total

    def stop(self) -> None:
        """Stop it; what it logged past its first line goes to stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(20)
        for line in self.output[1:]:
            print(f"  service: {line.rstrip()}", file=sys.stderr)


def start_service(db: str, work: Path, *options: str) -> Service:
    env = {**os.environ, "EDGEINFER_ADMIN_TOKEN": ADMIN}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeinfer", "fleet", "serve", "--db", db, "--port", "0",
         "--rollout-key", str(work / "rollout-key.pem"), *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    output: list[str] = []
    first = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            first.set()
        first.set()

    threading.Thread(target=pump, daemon=True).start()
    if not first.wait(60) or not output or not output[0].startswith("fleet service on "):
        proc.kill()
        raise SystemExit(f"the fleet service did not start: {''.join(output)[-800:]}")
    url = output[0].split()[-1]
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(url + "/v1/health", timeout=5).raise_for_status()
            return Service(proc, url, output)
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                proc.kill()
                raise SystemExit(
                    f"the fleet service does not answer: {''.join(output)[-800:]}"
                ) from None
            time.sleep(0.05)


def admin(service: Service, method: str, route: str, **kw: Any) -> Any:
    answer = httpx.request(
        method,
        service.url + route,
        headers={"authorization": f"Bearer {ADMIN}"},
        timeout=120,
        **kw,
    )
    if answer.status_code != 200:
        raise SystemExit(f"{method} {route}: {answer.status_code} {answer.text[:300]}")
    return answer.json()


# simulated devices ----------------------------------------------------------------------
@dataclass
class Device:
    key: Ed25519PrivateKey
    agent_id: str
    hardware_class: str
    device_id: str = ""
    counter: int = 0

    @classmethod
    def make(cls, i: int) -> Device:
        return cls(Ed25519PrivateKey.generate(), f"sim-{i:06d}", CLASSES[i % len(CLASSES)])

    def hardware(self) -> dict[str, Any]:
        machine_name = self.hardware_class.split("-")[1]
        return {
            "hardware_class": self.hardware_class,
            "machine": machine_name,
            "system": "linux",
            "cpus": 4,
            "providers": ["CPUExecutionProvider"],
        }

    def enrollment(self, token: str) -> bytes:
        raw = self.key.public_key().public_bytes_raw()
        self.device_id = wire.device_id_for(raw)
        document = {
            "public_key": wire.b64encode(raw),
            "token": token,
            "created_at_ms": int(time.time() * 1000),
            "hardware": self.hardware(),
        }
        return wire.seal(self.key, "enrollment", document)

    def report(self, version: int, result: str, sketch: str, gate_ok: bool = True) -> bytes:
        """The agent's report after a cycle that ended in ``result`` (signed, next counter)."""
        self.counter += 1
        active = version if result != "rolled-back" else version - 1
        cycle = {
            "result": result,
            "via": "delta",
            "bytes_downloaded": 5120,
            "reason": None if result != "rolled-back" else "health gate: accuracy 0.41 < 0.9",
            "from_version": version - 1,
            "to_version": version,
            "seconds": 1.5,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        document = {
            "device_id": self.device_id,
            "counter": self.counter,
            "bundle_sha256": SHA[active],
            "created_at_ms": int(time.time() * 1000),
            "payload": {
                "agent_version": "0.1.0",
                "agent_device_id": self.agent_id,
                "channel": "stable",
                "active": {"slot": "a", "name": MODEL, "version": active, "sha256": SHA[active]},
                "cycle": cycle,
                "gate": {"passed": gate_ok, "accuracy": 0.97 if gate_ok else 0.41},
                "hardware": self.hardware(),
                "sketches": [{"metric": "latency_ms", "kll": sketch}],
            },
        }
        return wire.seal(self.key, "report", document)


def latency_sketches(n: int = 16) -> list[str]:
    rng = random.Random(7)
    return [
        kll.encode(kll.make(rng.lognormvariate(1.4, 0.25) for _ in range(200))) for _ in range(n)
    ]


def quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


async def _post_chunk(
    url: str, route: str, bodies: list[bytes], concurrency: int
) -> tuple[list[float], list[int], list[str]]:
    """POST every body (``concurrency`` at a time); latencies, statuses, dropped connections."""
    latencies: list[float] = [0.0] * len(bodies)
    dropped: list[str] = []
    statuses: list[int] = [0] * len(bodies)
    queue = iter(range(len(bodies)))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:

        async def worker() -> None:
            for i in queue:
                t0 = time.perf_counter()
                for attempt in range(5):  # as a device would: a dropped connection, again
                    try:
                        answer = await client.post(route, content=bodies[i], headers=headers)
                        break
                    except httpx.TransportError as exc:
                        dropped.append(f"{type(exc).__name__}: {exc}"[:200])
                        if attempt == 4:
                            raise
                        await asyncio.sleep(0.2 * (attempt + 1))
                latencies[i] = time.perf_counter() - t0
                statuses[i] = answer.status_code

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, statuses, dropped


def _client_process(
    url: str, route: str, bodies: list[bytes], concurrency: int, k: int, go: Any, out: Any
) -> None:
    out.put(("ready", k))
    go.wait()
    try:
        latencies, statuses, dropped = asyncio.run(_post_chunk(url, route, bodies, concurrency))
        out.put((k, latencies, statuses, dropped, time.monotonic()))
    except Exception as exc:  # the parent says what went wrong
        out.put((k, None, None, [f"{type(exc).__name__}: {exc}"], time.monotonic()))


def post_all(
    url: str, route: str, bodies: list[bytes], concurrency: int
) -> tuple[list[float], list[int], float]:
    """POST every body from CLIENT_PROCESSES processes of async httpx clients (``concurrency``
    requests in flight in all); latencies and statuses in ``bodies``' order, and seconds from
    the start to the last answer. One Python client process could not keep a fast service
    busy on a small machine: the load generator would be what was measured."""
    procs = max(1, min(CLIENT_PROCESSES, len(bodies) // 50))
    ctx = multiprocessing.get_context("fork")
    go, out = ctx.Event(), ctx.Queue()
    chunks = [bodies[k::procs] for k in range(procs)]
    each = max(1, concurrency // procs)
    workers = [
        ctx.Process(target=_client_process, args=(url, route, chunk, each, k, go, out))
        for k, chunk in enumerate(chunks)
    ]
    for w in workers:
        w.start()
    for _ in workers:
        out.get(timeout=120)
    start = time.monotonic()
    go.set()
    latencies: list[float] = [0.0] * len(bodies)
    statuses: list[int] = [0] * len(bodies)
    dropped: list[str] = []
    end = start
    for _ in workers:
        k, lat, stat, drops, finished = out.get(timeout=3600)
        dropped += drops
        if lat is None:
            raise SystemExit(f"{route}: a client process failed: {drops[-1]}")
        for j, (latency, status) in enumerate(zip(lat, stat, strict=True)):
            latencies[j * procs + k], statuses[j * procs + k] = latency, status
        end = max(end, finished)
    for w in workers:
        w.join(30)
    if dropped:
        print(f"  {route}: {len(dropped)} connections dropped, e.g. {dropped[0]}", file=sys.stderr)
    DROPPED[route] = DROPPED.get(route, 0) + len(dropped)
    return latencies, statuses, end - start


def enroll_all(service: Service, devices: list[Device], concurrency: int) -> float:
    """Enroll ``devices`` through ``POST /v1/enroll`` with one reusable token; seconds."""
    token = admin(service, "POST", "/v1/tokens", json={"uses": len(devices)})["token"]
    bodies = [d.enrollment(token) for d in devices]
    _, statuses, elapsed = post_all(service.url, "/v1/enroll", bodies, concurrency)
    bad = [s for s in statuses if s != 200]
    if bad:
        raise SystemExit(f"enrollment: {len(bad)} refused (status {bad[0]})")
    return elapsed


# 1. ingest ------------------------------------------------------------------------------
def _raw_rows(db: str, devices: list[Device], sketch: bytes) -> list[dict[str, Any]]:
    """The rows the service wrote for each device's first report, as the baseline writes
    them again (the next counter, so the unique key takes them)."""
    store = open_store(StoreConfig(db))
    try:
        with store.engine.connect() as conn:
            found = conn.exec_driver_sql(
                "SELECT device_id, counter, created_at_ms, bundle_sha256, result, signed_text, "
                "signature FROM reports"
            ).all()
    finally:
        store.close()
    by_device = {row[0]: row for row in found}
    rows = []
    for d in devices:
        r = by_device[d.device_id]
        rows.append(
            {
                "device_id": r[0],
                "counter": r[1] + 1,
                "created_at_ms": r[2],
                "bundle_sha256": r[3],
                "result": r[4],
                "signed_text": r[5],
                "signature": bytes(r[6]),
                "hardware_class": d.hardware_class,
                "hardware": json.dumps(d.hardware()),
                "agent_device_id": d.agent_id,
                "kll": sketch,
            }
        )
    return rows


def raw_insert_rate(db: str, rows: list[dict[str, Any]], per_commit: int) -> float:
    """Rows a second written straight through the driver, ``per_commit`` per transaction,
    each transaction durable (SQLite WAL synchronous=FULL, PostgreSQL fsync on)."""
    store = open_store(StoreConfig(db))  # the service's engine: its pragmas and locking
    sqlite = store.is_sqlite
    p = "?" if sqlite else "%s"
    insert = (
        "INSERT INTO reports (device_id, counter, received_at, created_at_ms, bundle_sha256, "
        f"result, signed_text, signature) VALUES ({', '.join([p] * 8)})"
    )
    device = (
        f"UPDATE devices SET last_counter = {p}, last_report_at = {p}, hardware_class = {p}, "
        f"hardware = {p}, agent_device_id = {p}, bundle_sha256 = {p}, model = {p}, "
        f"active_version = {p}, state = {p}, reason = {p} WHERE id = {p}"
    )
    merged = (
        f"UPDATE sketches SET kll = {p}, n = n + {p}, updated_at = {p} WHERE model = {p} "
        f"AND version = {p} AND hardware_class = {p} AND metric = {p}"
    )
    raw = store.engine.raw_connection()
    try:
        cursor = raw.cursor()
        start = time.perf_counter()
        for i in range(0, len(rows), per_commit):
            if sqlite:
                cursor.execute("BEGIN IMMEDIATE")
            for r in rows[i : i + per_commit]:
                now: Any = dt.datetime.now(dt.timezone.utc)
                if sqlite:
                    now = now.strftime("%Y-%m-%d %H:%M:%S.%f")
                cursor.execute(
                    insert,
                    (r["device_id"], r["counter"], now, r["created_at_ms"], r["bundle_sha256"],
                     r["result"], r["signed_text"], r["signature"]),
                )  # fmt: skip
                cursor.execute(
                    device,
                    (r["counter"], now, r["hardware_class"], r["hardware"], r["agent_device_id"],
                     r["bundle_sha256"], MODEL, 2, r["result"], None, r["device_id"]),
                )  # fmt: skip
                cursor.execute(
                    merged, (r["kll"], 200, now, MODEL, 2, r["hardware_class"], "latency_ms")
                )
            if sqlite:
                cursor.execute("COMMIT")
            else:
                raw.commit()
        elapsed = time.perf_counter() - start
        cursor.close()
    finally:
        raw.close()
        store.close()
    return len(rows) / elapsed


def bench_ingest(backend: str, pg: str | None, work: Path, sizes: Sizes) -> dict[str, Any]:
    db = fresh_db(backend, pg, work, f"ingest_{backend}")
    keygen = time.perf_counter()
    devices = [Device.make(i) for i in range(sizes.ingest_devices)]
    keygen_s = time.perf_counter() - keygen
    warm = [Device.make(sizes.ingest_devices + i) for i in range(WARM_DEVICES)]
    sketches = latency_sketches()
    service = start_service(db, work)
    try:
        enroll_s = enroll_all(service, devices + warm, sizes.concurrency)
        # not timed: the first reports start the service's sketch sandbox (two processes)
        warming = [d.report(2, "updated", sketches[0]) for d in warm]
        post_all(service.url, "/v1/reports", warming, sizes.concurrency)
        bodies = [
            d.report(2, "updated", sketches[i % len(sketches)]) for i, d in enumerate(devices)
        ]
        cpu0 = service.cpu_s()
        latencies, statuses, elapsed = post_all(
            service.url, "/v1/reports", bodies, sizes.concurrency
        )
        cpu = service.cpu_s() - cpu0
    finally:
        service.stop()
    accepted = sum(s == 200 for s in statuses)
    if accepted != len(bodies):
        raise SystemExit(f"ingest on {backend}: {len(bodies) - accepted} reports refused")
    store = open_store(StoreConfig(db))
    try:
        with store.engine.connect() as conn:
            stored = conn.exec_driver_sql("SELECT count(*) FROM reports").scalar_one()
            stored -= WARM_DEVICES
            sketch = bytes(conn.exec_driver_sql("SELECT kll FROM sketches LIMIT 1").scalar_one())
    finally:
        store.close()
    rows = _raw_rows(db, devices, sketch)[: sizes.raw_rows]
    raw_rate = raw_insert_rate(db, rows, 1)
    batched_rate = raw_insert_rate(db, [{**r, "counter": r["counter"] + 1} for r in rows], 100)
    rate = accepted / elapsed
    return {
        "devices": len(devices),
        "concurrency": sizes.concurrency,
        "keygen_s": round(keygen_s, 3),
        "enroll_s": round(enroll_s, 2),
        "enrollments_per_s": round((len(devices) + WARM_DEVICES) / enroll_s, 1),
        "reports": len(bodies),
        "accepted": accepted,
        "stored": int(stored),
        "seconds": round(elapsed, 3),
        "reports_per_s": round(rate, 1),
        "latency_p50_ms": round(quantile(latencies, 0.5) * 1000, 2),
        "latency_p99_ms": round(quantile(latencies, 0.99) * 1000, 2),
        "server_cpu_ms_per_report": round(cpu / accepted * 1000, 3),
        "raw_rows": len(rows),
        "raw_inserts_per_s": round(raw_rate, 1),
        "raw_inserts_per_s_100_per_commit": round(batched_rate, 1),
        "share_of_raw": round(rate / raw_rate, 3),
        "target_share": 0.5,
        "met": rate / raw_rate >= 0.5,
    }


# 2. pages at 100,000 devices ------------------------------------------------------------
def bulk_load(db: str, n: int, sketch: str) -> float:
    """``n`` devices (and one report each) written straight into the tables; seconds."""
    store = open_store(StoreConfig(db))
    sqlite = store.is_sqlite
    p = "?" if sqlite else "%s"
    rng = random.Random(3)
    base = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)
    states = ("updated", "up-to-date", "up-to-date", "up-to-date", "rolled-back", "failed")
    text_template = json.dumps({"payload": {"sketches": [{"kll": sketch}]}})
    devices, reports = [], []
    for i in range(n):
        device_id = f"d-{i:020x}"
        seen = base + dt.timedelta(seconds=rng.uniform(0, 86400))
        stamp: Any = seen.strftime("%Y-%m-%d %H:%M:%S.%f") if sqlite else seen
        hw = CLASSES[i % len(CLASSES)]
        version = rng.choice((1, 2, 2, 3))
        state = rng.choice(states)
        devices.append(
            (device_id, os.urandom(32), stamp, 1, stamp, hw, json.dumps({"hardware_class": hw}),
             f"sim-{i:06d}", MODEL if i % 5 else "kws-tiny", version, "ab" * 32, state,
             "health gate failed" if state == "rolled-back" else None)
        )  # fmt: skip
        reports.append(
            (device_id, 1, stamp, int(seen.timestamp() * 1000), "ab" * 32, state,
             text_template, os.urandom(64))
        )  # fmt: skip
    start = time.perf_counter()
    raw = store.engine.raw_connection()
    try:
        cursor = raw.cursor()
        if sqlite:
            cursor.execute("BEGIN IMMEDIATE")
        cursor.executemany(
            "INSERT INTO devices (id, public_key, enrolled_at, last_counter, last_report_at, "
            "hardware_class, hardware, agent_device_id, model, active_version, bundle_sha256, "
            f"state, reason) VALUES ({', '.join([p] * 13)})",
            devices,
        )
        cursor.executemany(
            "INSERT INTO reports (device_id, counter, received_at, created_at_ms, bundle_sha256, "
            f"result, signed_text, signature) VALUES ({', '.join([p] * 8)})",
            reports,
        )
        if sqlite:
            cursor.execute("COMMIT")
            cursor.execute("ANALYZE")
        else:
            raw.commit()
            cursor.execute("ANALYZE")
            raw.commit()
        cursor.close()
    finally:
        raw.close()
        store.close()
    return time.perf_counter() - start


def _time_get(client: httpx.Client, route: str) -> float:
    t0 = time.perf_counter()
    answer = client.get(route)
    elapsed = time.perf_counter() - t0
    if answer.status_code != 200:
        raise SystemExit(f"GET {route}: {answer.status_code} {answer.text[:200]}")
    return elapsed


def bench_pages(backend: str, pg: str | None, work: Path, sizes: Sizes) -> dict[str, Any]:
    db = fresh_db(backend, pg, work, f"pages_{backend}")
    load_s = bulk_load(db, sizes.page_devices, latency_sketches(1)[0])
    service = start_service(db, work)
    n = sizes.page_devices
    pages = {
        "overview": ["/"],
        "devices_page": ["/devices", f"/devices?offset={n // 2}", f"/devices?model={MODEL}"],
        # pages `edgeinfer fleet devices` walks (1,000 devices each, after the last id of
        # the page before; bulk_load's ids are d-<index in hex>): five spread over the fleet
        "cli_devices_page": ["/v1/devices?limit=1000"]
        + [f"/v1/devices?limit=1000&after=d-{o - 1:020x}" for o in range(n // 5, n, n // 5)],
    }
    out: dict[str, Any] = {"devices": n, "bulk_load_s": round(load_s, 2)}
    try:
        headers = {"authorization": f"Bearer {ADMIN}"}
        with httpx.Client(base_url=service.url, headers=headers, timeout=120) as client:
            for routes in pages.values():  # warm: the first read pulls the tables in
                for route in routes:
                    _time_get(client, route)
            times: dict[str, list[float]] = {k: [] for k in pages}
            for _ in range(sizes.page_repeats):  # interleaved, so drift hits all alike
                for name, routes in pages.items():
                    for route in routes:
                        times[name].append(_time_get(client, route))
        for name, xs in times.items():
            out[name] = {
                "requests": len(xs),
                "p50_ms": round(statistics.median(xs) * 1000, 1),
                "p95_ms": round(quantile(xs, 0.95) * 1000, 1),
                "met": quantile(xs, 0.95) <= 0.2,
            }
        env = {**os.environ, "EDGEINFER_ADMIN_TOKEN": ADMIN, "EDGEINFER_FLEET_URL": service.url}
        t0 = time.perf_counter()
        cli = subprocess.run(
            [sys.executable, "-m", "edgeinfer", "fleet", "devices", "--json"],
            capture_output=True,
            env=env,
            timeout=600,
        )
        cli_s = time.perf_counter() - t0
        if cli.returncode != 0:
            raise SystemExit(f"edgeinfer fleet devices: {cli.stderr.decode()[-300:]}")
        listed = len(json.loads(cli.stdout))
        out["cli_devices_command"] = {"devices": listed, "seconds": round(cli_s, 2)}
    finally:
        service.stop()
    return out


# 3. a bad release -----------------------------------------------------------------------
async def retried(call: Any, *args: Any, **kw: Any) -> httpx.Response:
    """``call(*args, **kw)``, again after a dropped connection (a kept-alive one the service
    closed as it was reused), as a device tries again; counted in DROPPED."""
    for attempt in range(5):
        try:
            return await call(*args, **kw)  # type: ignore[no-any-return]
        except httpx.TransportError:
            DROPPED["rollout"] = DROPPED.get("rollout", 0) + 1
            if attempt == 4:
                raise
            await asyncio.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


@dataclass
class Sent:
    device: int
    failed: bool
    sent_at: float  # time.time()
    answered_at: float


async def _rollout_run(
    service: Service, devices: list[Device], sizes: Sizes, sketches: list[str]
) -> dict[str, Any]:
    public = load_public_key(
        httpx.get(service.url + "/v1/rollout-key", timeout=30).json()["public_key"]
    )
    installed: dict[int, float] = {}
    sent: list[Sent] = []
    stop = asyncio.Event()
    halted_seen: list[float] = []
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    headers = {"authorization": f"Bearer {ADMIN}"}
    async with (
        httpx.AsyncClient(base_url=service.url, limits=limits, timeout=60) as client,
        httpx.AsyncClient(base_url=service.url, timeout=60) as operator,
        httpx.AsyncClient(base_url=service.url, limits=limits, timeout=60) as reporter,
    ):
        started = await client.post(
            "/v1/rollouts",
            headers=headers,
            json={
                "model": MODEL,
                "version": 2,
                "stages": list(sizes.stages),
                "max_failure": 0.1,
                "min_devices": sizes.min_devices,
                "soak_s": sizes.soak_s,
                "target": {"sha256": SHA[2], "length": LENGTH},
            },
        )
        if started.status_code != 200:
            raise SystemExit(f"rollout start: {started.status_code} {started.text[:300]}")
        t_start = time.time()

        async def device(i: int) -> None:
            d = devices[i]
            gate = RolloutGate(public, d.agent_id)
            rng = random.Random(i)
            followed = 0
            await asyncio.sleep(rng.uniform(0, sizes.poll_s))
            while not stop.is_set():
                try:
                    answer = await retried(client.get, f"/v1/rollouts/{MODEL}/document")
                    doc = gate.verify(answer.content, MODEL, min_doc_version=followed)
                except BadRolloutDocument:
                    doc = None
                if doc is not None:
                    followed = doc.doc_version
                verdict = gate.allows(
                    doc, model=MODEL, version=2, sha256=SHA[2], length=LENGTH, tuf_rollout=0
                )
                if verdict.allowed:
                    installed[i] = time.time()
                    await asyncio.sleep(rng.uniform(0.2, 1.0))  # download, swap, health gate
                    failed = d.hardware_class == BAD_CLASS
                    body = d.report(
                        2, "rolled-back" if failed else "updated", sketches[i % len(sketches)],
                        gate_ok=not failed,
                    )  # fmt: skip
                    t0 = time.time()
                    answer = await retried(
                        reporter.post,
                        "/v1/reports",
                        content=body,
                        headers={"content-type": "application/json"},
                    )
                    if answer.status_code != 200:
                        raise SystemExit(f"report: {answer.status_code} {answer.text[:200]}")
                    sent.append(Sent(i, failed, t0, time.time()))
                    return  # installed once; a failed device keeps its rollback
                with suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), sizes.poll_s * rng.uniform(0.8, 1.2))

        async def watch() -> None:
            deadline = time.time() + max(120.0, sizes.soak_s * len(sizes.stages) * 3)
            while time.time() < deadline:
                # the operator's own connection, not queued behind the devices' requests
                state = (
                    await retried(operator.get, f"/v1/rollouts/{MODEL}", headers=headers)
                ).json()
                if state["state"] in ("halted", "done", "aborted"):
                    halted_seen.append(time.time())
                    # a poll interval more: devices that saw the old document act on it
                    await asyncio.sleep(sizes.poll_s * 1.5)
                    break
                await asyncio.sleep(0.2)
            stop.set()

        tasks = [asyncio.create_task(device(i)) for i in range(len(devices))]
        await watch()
        await asyncio.gather(*tasks)
        final = (await retried(client.get, f"/v1/rollouts/{MODEL}", headers=headers)).json()
    return {
        "t_start": t_start,
        "installed": installed,
        "sent": sent,
        "final": final,
        "seen_at": halted_seen[0] if halted_seen else None,
    }


def _crossing(
    stored: list[tuple[float, bool]], min_devices: int, max_failure: float
) -> float | None:
    """When the service stored the report after which the failure rule held: ``stored`` is
    (received at, failed) of each device's report on the release."""
    ok = failed = 0
    for at, is_failed in sorted(stored):
        failed += is_failed
        ok += not is_failed
        if ok + failed >= min_devices and failed / (ok + failed) > max_failure:
            return at
    return None


def bench_rollout(backend: str, pg: str | None, work: Path, sizes: Sizes) -> dict[str, Any]:
    db = fresh_db(backend, pg, work, f"rollout_{backend}")
    devices = [Device.make(i) for i in range(sizes.rollout_devices)]
    sketches = latency_sketches()
    service = start_service(db, work, "--rollout-tick", "1")
    try:
        enroll_all(service, devices, 32)
        baseline = [d.report(1, "updated", sketches[i % 16]) for i, d in enumerate(devices)]
        _, statuses, _ = post_all(service.url, "/v1/reports", baseline, 32)
        if any(s != 200 for s in statuses):
            raise SystemExit("rollout: a baseline report was refused")
        run = asyncio.run(_rollout_run(service, devices, sizes, sketches))
    finally:
        service.stop()
    store = open_store(StoreConfig(db))
    try:
        with store.engine.connect() as conn:
            events = conn.exec_driver_sql(
                "SELECT kind, at FROM rollout_events ORDER BY revision"
            ).all()
            on_release = conn.exec_driver_sql(  # each device's report after the baseline
                "SELECT received_at, result FROM reports WHERE counter = 2"
            ).all()
    finally:
        store.close()

    def epoch(value: Any) -> float:
        if isinstance(value, str):
            value = dt.datetime.fromisoformat(value)
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return float(value.timestamp())

    halt_at = next((epoch(at) for kind, at in events if kind == "halted"), None)
    stored = [(epoch(at), result == "rolled-back") for at, result in on_release]
    crossing = _crossing(stored, sizes.min_devices, 0.1)
    in_first = sum(rollout_bucket(d.agent_id, MODEL) < sizes.stages[0] for d in devices)
    final = run["final"]
    installed = len(run["installed"])
    return {
        "devices": len(devices),
        "stages": list(sizes.stages),
        "max_failure": 0.1,
        "min_devices": sizes.min_devices,
        "soak_s": sizes.soak_s,
        "poll_s": sizes.poll_s,
        "failing_share": round(
            sum(d.hardware_class == BAD_CLASS for d in devices) / len(devices), 3
        ),
        "first_stage_devices": in_first,
        "state": final["state"],
        "halt_rule": final["halt_rule"],
        "stage_reached": final["stage"] + 1,
        "ever_installed": installed,
        "installed_after_halt": sum(t > halt_at for t in run["installed"].values())
        if halt_at is not None
        else None,
        "target_installed": in_first + sizes.min_devices,
        "met": final["state"] == "halted" and installed <= in_first + sizes.min_devices,
        "reports_before_halt": len([at for at, _ in stored if halt_at and at <= halt_at]),
        # from the crossing report stored to the halt recorded, both by the service's clock
        "crossing_to_halt_s": round(halt_at - crossing, 4)
        if halt_at is not None and crossing is not None
        else None,
        "crossing_to_operator_sees_halt_s": round(run["seen_at"] - crossing, 3)
        if run["seen_at"] is not None and crossing is not None
        else None,
        "start_to_halt_s": round(halt_at - run["t_start"], 2) if halt_at is not None else None,
        "events": [kind for kind, _ in events],
    }  # fmt: skip


# main -----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="A small run (the smoke test's).")
    parser.add_argument("--backends", default="sqlite,postgresql", help="sqlite,postgresql")
    parser.add_argument("--parts", default="ingest,pages,rollout", help="ingest,pages,rollout")
    parser.add_argument("--out", type=Path, default=RESULTS / "fleet.json")
    parser.add_argument("--ingest-devices", type=int, help="Devices of the ingest run.")
    parser.add_argument(
        "--merge", action="store_true", help="Keep the other parts' results already in --out."
    )
    parser.add_argument(
        "--postgres", help="postgresql://USER@HOST:PORT of a running server (default: start one)"
    )
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C: the services and PostgreSQL started here are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sizes = QUICK if args.quick else FULL
    if args.ingest_devices:
        sizes = dataclasses.replace(sizes, ingest_devices=args.ingest_devices)
    backends = [b for b in args.backends.split(",") if b]
    parts = [p for p in args.parts.split(",") if p]
    if not set(backends) <= {"sqlite", "postgresql"} or not backends:
        parser.error(f"--backends {args.backends}: expected sqlite and/or postgresql")
    if not set(parts) <= {"ingest", "pages", "rollout"} or not parts:
        parser.error(f"--parts {args.parts}: expected ingest, pages and/or rollout")
    results: dict[str, Any] = {
        "quick": args.quick,
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "sizes": sizes.__dict__,
        "connections_dropped_and_retried": DROPPED,
        "postgresql_fsync": "on (its default)" if not args.postgres else "as the given server",
    }
    if args.merge and args.out.is_file():
        kept = json.loads(args.out.read_text())
        kept.pop("machine", None)
        results = {**{k: v for k, v in kept.items() if k not in results}, **results}
        for part in parts:
            results.pop(part, None)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgeinfer-bench-fleet-") as tmp:
        work = Path(tmp)
        if args.postgres or "postgresql" not in backends:
            server = _nothing(args.postgres)
        else:
            server = postgres()
        with server as pg:
            for part, fn in (("ingest", bench_ingest), ("pages", bench_pages),
                             ("rollout", bench_rollout)):  # fmt: skip
                if part not in parts:
                    continue
                results[part] = {}
                for backend in backends:
                    t0 = time.perf_counter()
                    results[part][backend] = fn(backend, pg, work, sizes)
                    results[part][backend]["bench_s"] = round(time.perf_counter() - t0, 1)
                    results[part][backend]["load_average"] = [round(x, 2) for x in os.getloadavg()]
                    print(part, backend, json.dumps(results[part][backend]), flush=True)
                    _write(args.out, results)  # so far: a later part failing keeps these
    results["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    results["total_s"] = round(time.perf_counter() - started, 1)
    _write(args.out, results)
    print(f"wrote {args.out}")
    return 0


def _write(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine(), **results}, indent=2) + "\n")


@contextmanager
def _nothing(url: str | None) -> Iterator[str | None]:
    yield url


if __name__ == "__main__":
    raise SystemExit(main())
