"""Demo stage: a fleet of simulated devices, a staged rollout that promotes, one that halts.

Starts the fleet service on 127.0.0.1 (SQLite in the demo's folder, its own rollout key),
enrolls a dozen simulated devices (each its own Ed25519 key, half on an "npu" hardware
class), and has them report the version they run. Version 2 rolls out in two stages: the
devices of the first stage's share take it once the fleet's signed rollout document lets
them, report it healthy, and the fleet promotes the rollout to everyone. Version 3 fails
its health gate on the npu devices: they roll it back and say so, and the rollout halts
itself at its first stage; the rest of the fleet never installs it. The devices verify
every rollout document against the key they pinned, as update agents do.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgeinfer._atomic import write_atomic
from edgeinfer.demo import DemoContext

TITLE = "Run a fleet: signed reports, a staged rollout, and one that halts itself"

__all__ = ["TITLE", "run"]

MODEL = "digits"
DEVICES = 12
STAGES = [25, 100]
MAX_FAILURE = 0.2
MIN_DEVICES = 4  # the first stage's devices: a halt is decided on all of them
WIDTH = 78  # columns of the printed lines


class _Device:
    """A simulated device: a fleet client and what it runs."""

    def __init__(self, fleet_url: str, root: Path, name: str, token: str, npu: bool) -> None:
        from edgeinfer.fleet.client import ClientConfig, FleetClient

        self.name, self.npu, self.version = name, npu, 1
        hardware = "demo-npu" if npu else "demo-cpu"
        config = ClientConfig(fleet_url, root / name, enroll_token=token, hardware_class=hardware)
        self.client = FleetClient(config)

    def report(self, result: str, to_version: int | None = None, reason: str | None = None) -> None:
        from edgeinfer.fleet.client import report_cycle

        status: dict[str, Any] = {
            "device_id": self.name,
            "agent_version": "demo",
            "active": {
                "slot": "a",
                "name": MODEL,
                "version": self.version,
                "sha256": _sha256(self.version),
            },
            "last_cycle": {"result": result, "to_version": to_version, "reason": reason},
        }
        base = 3.0 if self.npu else 6.0  # ms: a steady model, for the latency sketches
        latency = [base * (1 + i / 200) for i in range(40)]
        sent = report_cycle(self.client, status, latency_ms=latency)
        if sent.sent < 1:
            raise RuntimeError(f"the fleet did not take the report of {self.name}")


def _sha256(version: int) -> str:
    """The (simulated) bundle of each version: what TUF would have verified."""
    return hashlib.sha256(f"{MODEL} bundle v{version}".encode()).hexdigest()


def _admitted(devices: list[_Device], gate_key: Any, version: int) -> list[_Device]:
    """The devices the fleet's signed rollout document lets install ``version`` now."""
    from edgeinfer.fleet.client import RolloutGate

    body = devices[0].client.rollout_document(MODEL)
    found = []
    for d in devices:
        if d.version >= version:
            continue
        gate = RolloutGate(gate_key, d.name)
        document = None if body is None else gate.verify(body, MODEL)
        verdict = gate.allows(
            document,
            model=MODEL,
            version=version,
            sha256=_sha256(version),
            length=1000,
            tuf_rollout=0,  # published held: only the fleet's rollout lets it through
        )
        if verdict.allowed:
            found.append(d)
    return found


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class _Operator:
    """The operator's side: the fleet's admin API over one HTTP client."""

    def __init__(self, url: str, token: str) -> None:
        import httpx

        headers = {"authorization": f"Bearer {token}"}
        self._http = httpx.Client(base_url=url, headers=headers, timeout=30)

    def __call__(self, method: str, route: str, body: Any = None) -> Any:
        answer = self._http.request(method, route, json=body)
        answer.raise_for_status()
        return answer.json()

    def close(self) -> None:
        self._http.close()


def run(ctx: DemoContext) -> None:
    import secrets

    from edgeinfer.fleet import rollout_docs
    from edgeinfer.fleet.api import FleetConfig
    from edgeinfer.fleet.rollout_api import RolloutConfig
    from edgeinfer.fleet.server import BackgroundFleet, ServerConfig
    from edgeinfer.fleet.store import StoreConfig
    from edgeinfer.fleet.web_queries import halt_reason

    console = ctx.console
    where = ctx.workdir / "fleet"
    where.mkdir(parents=True, exist_ok=True)
    db = where / "fleet.db"
    db.unlink(missing_ok=True)  # a fresh fleet each run
    for stale in where.glob("fleet.db-*"):
        stale.unlink()
    admin = secrets.token_urlsafe(24)
    config = ServerConfig(
        store=StoreConfig(str(db)),
        fleet=FleetConfig(
            admin_tokens=(admin,),
            # the key `fleet serve --db fleet.db` finds beside the database later
            rollouts=RolloutConfig(key_file=where / "fleet.db.rollout-key.pem", tick_s=0.2),
        ),
        port=0,
    )
    lines: list[str] = []

    def say(text: str, indent: int = 0) -> None:
        pad = " " * indent
        text = text.replace(" %", "%")  # no line break between a figure and its unit
        for line in textwrap.wrap(
            text,
            WIDTH,
            initial_indent=pad,
            subsequent_indent=pad + "  ",
            break_on_hyphens=False,
            break_long_words=False,
        ):
            console.print(line, markup=False, highlight=False)
            lines.append(line)

    # the fleet's own log lines (a halt, say) are what the lines below print
    with contextlib.ExitStack() as stack:
        stack.enter_context(_quiet("edgeinfer.fleet"))
        fleet = stack.enter_context(BackgroundFleet(config))
        say(f"fleet service on {fleet.url} (SQLite in {where.name}/fleet.db)")
        op = _Operator(fleet.url, admin)
        stack.callback(op.close)
        token = op("POST", "/v1/tokens", {"uses": DEVICES})["token"]
        devices = [
            _Device(fleet.url, where / "devices", f"demo-{i:02d}", token, npu=i % 2 == 0)
            for i in range(1, DEVICES + 1)
        ]
        for d in devices:
            d.report("updated", to_version=1)
        say(f"{DEVICES} simulated devices enrolled (Ed25519 keys) and report {MODEL} v1")
        # the devices pin the fleet's rollout key out of band (here: asked once)
        key = rollout_docs.load_public_key(op("GET", "/v1/rollout-key")["public_key"])
        plan = {"stages": STAGES, "max_failure": MAX_FAILURE, "min_devices": MIN_DEVICES}
        say(
            f"rollout plan: stages {' -> '.join(f'{s}%' for s in STAGES)}; halt when more "
            f"than {MAX_FAILURE:.0%} of at least {MIN_DEVICES} reporting devices fail"
        )
        ever_v3 = 0
        for version, bad in ((2, False), (3, True)):
            target = {"sha256": _sha256(version), "length": 1000}
            body = {"model": MODEL, "version": version, "target": target, **plan}
            op("POST", "/v1/rollouts", body)
            what = "fails its health gate on the npu devices" if bad else "good"
            say(f"rollout of {MODEL} v{version} ({what}):")
            for stage in range(len(STAGES)):
                admitted = _admitted(devices, key, version)
                if not admitted:
                    break
                failed = 0
                for d in admitted:
                    if bad and d.npu:
                        reason = f"version {version} failed its health gate"
                        d.report("rolled-back", to_version=version, reason=reason)
                        failed += 1
                    else:
                        d.version = version
                        d.report("updated", to_version=version)
                ever_v3 += len(admitted) if bad else 0
                state = op("GET", f"/v1/rollouts/{MODEL}")
                outcome = {"running": "promoted", "done": "done"}.get(state["state"], "")
                say(
                    f"stage {stage + 1} ({STAGES[stage]}%): {len(admitted)} let through, "
                    f"{len(admitted) - failed} updated, {failed} rolled back -> "
                    f"{outcome or state['state']}",
                    2,
                )
                if state["state"] == "halted":
                    why = halt_reason(state["halt_rule"], state["halt_detail"])
                    say(f"halted: {why}", 2)
                    break
        on_v2 = [d for d in devices if d.version < 3]
        through = _admitted(devices, key, 3)
        say(
            f"v3 reached {ever_v3} of {DEVICES} devices; the halted rollout's signed "
            f"document now lets {len(through)} of the {len(on_v2)} on v2 through",
            2,
        )
        final = op("GET", f"/v1/rollouts/{MODEL}")
    token_file = where / "admin-token"
    write_atomic(token_file, (admin + "\n").encode(), mode=0o600)
    say(f"the fleet is kept in {where}; its dashboard:")
    say(
        f"cd there; edgeinfer fleet serve --db {db.name} --admin-token-file "
        f"{token_file.name}; open http://127.0.0.1:8700/",
        2,
    )
    ctx.artifacts["fleet"] = {
        "db": db,
        "admin_token_file": token_file,
        "ever_installed_bad": ever_v3,
        "devices": DEVICES,
        "halt_rule": final["halt_rule"],
        "state": final["state"],
        "lines": lines,
    }
