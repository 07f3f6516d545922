"""Demo stage: the offloader picks local or edge per request as the network changes, and
rides out a server outage without a single failed prediction.

An edge server (``edgeinfer serve`` in a background thread) runs the digits CNN behind the
network emulator; the device runs the same bundle, emulated 32x slower, on batches of 64
held-out images. The link goes from near, to far, to near again, then dark, then back.
"""

from __future__ import annotations

import shutil
import statistics
import time
from collections import Counter
from typing import Any

import numpy as np
from rich.table import Table

from edgeinfer.demo import DemoContext

TITLE = "Offloading: local or edge server, per request, through a failing network"


def _data(ctx: DemoContext) -> tuple[Any, np.ndarray, np.ndarray]:
    """The digits bundle and held-out data: from the foundation stage, or built here."""
    from edgeinfer import zoo

    bundle = ctx.artifacts.get("digits_bundle")
    if bundle is None:
        out = ctx.workdir / "bundles" / "digits-cnn-offload"
        bundle = zoo.digits.build(out, overwrite=True).path
    data = ctx.artifacts.get("digits_data")
    if data is None:
        _, _, x_test, y_test = zoo.digits.load_data()
    else:
        x_test, y_test = data
    return bundle, x_test, y_test


def run(ctx: DemoContext) -> None:
    import edgeinfer
    from edgeinfer.errors import EdgeInferError
    from edgeinfer.netem import EmulatedDevice, NetemProxy
    from edgeinfer.offload import BreakerConfig, Offloader, OffloaderConfig, RemoteModel
    from edgeinfer.serve import BackgroundServer, ServeConfig

    console = ctx.console
    bundle, x_test, y_test = _data(ctx)
    repo = ctx.workdir / "offload-repository"
    shutil.rmtree(repo, ignore_errors=True)
    shutil.copytree(bundle, repo / "digits" / "1")
    n = 12 if ctx.fast else 30  # requests per phase
    outage_s = 1.0 if ctx.fast else 3.0
    config = OffloaderConfig(
        per_try_timeout_s=0.2,
        probe_after_s=0.3,
        probe_timeout_s=0.2,
        breaker=BreakerConfig(failures=3, open_s=0.2, max_open_s=0.5),
    )
    batch = 64
    rows: list[tuple[str, Counter[str], list[float], float, int, str]] = []
    failed: list[str] = []
    serve_config = ServeConfig(repo, port=0, grpc_port=None, poll_interval_s=None)
    with (
        BackgroundServer(serve_config) as server,
        NetemProxy(server.url.split("//", 1)[1], rtt="1ms", rate="100mbit") as link,
        edgeinfer.load(bundle, threads=1) as model,
    ):
        device = EmulatedDevice(model, slowdown=32)
        offloader = Offloader(device, [RemoteModel(link.url, "digits")], "latency", config=config)
        with offloader:
            first = np.ascontiguousarray(x_test[:batch])
            offloader.calibrate({"pixels": first}, runs=3)

            def phase(name: str, requests: int, pause: float = 0.02) -> None:
                seen: Counter[str] = Counter()
                latencies, correct, fallbacks, reason = [], 0, 0, ""
                for i in range(requests):
                    lo = (i * batch) % (len(x_test) - batch)
                    x = np.ascontiguousarray(x_test[lo : lo + batch])
                    try:
                        p = offloader.predict({"pixels": x})
                    except EdgeInferError:
                        failed.append(name)  # never expected: counted, not hidden
                        continue
                    seen[p.placement] += 1
                    latencies.append(p.latency_s * 1e3)
                    correct += int((p.outputs["logits"].argmax(1) == y_test[lo : lo + batch]).sum())
                    fallbacks += p.fallback
                    reason = reason if p.fallback and not reason else p.reason
                    time.sleep(pause)
                accuracy = correct / max(sum(seen.values()) * batch, 1)
                rows.append((name, seen, latencies, accuracy, fallbacks, reason))

            phase("near: 1 ms, 100 Mbit/s", n)
            link.set(rtt="120ms")
            phase("far: 120 ms RTT", n)
            link.set(rtt="1ms")
            time.sleep(config.probe_after_s * 2)  # the probes notice the link is short again
            phase("near again", n)
            link.outage(outage_s)  # blackhole: nothing gets through
            phase(f"link dark for {outage_s:g} s", n, pause=outage_s / n)
            time.sleep(max(config.breaker.max_open_s, config.probe_after_s) * 2)
            phase("link back", n)
            private = offloader.predict({"pixels": first}, private=True)
            stats = offloader.stats

    table = Table(title=f"digits CNN, batches of {batch}; device emulated 32x slower")
    for col in ("phase", "local", "remote", "fallbacks", "mean ms", "accuracy"):
        table.add_column(col, justify="right")
    for name, seen, latencies, accuracy, fallbacks, _ in rows:
        table.add_row(
            name,
            str(seen["local"]),
            str(seen["remote"]),
            str(fallbacks),
            f"{statistics.fmean(latencies):.1f}",
            f"{accuracy:.1%}",
        )
    console.print(table)
    for name, *_, reason in rows:
        console.print(f"[dim]{name}:[/] {reason[:150]}")
    console.print(
        f"private request: {private.placement} ({private.reason[:80]}); "
        f"{stats.requests} requests, {stats.remote} answered remotely, "
        f"{stats.fallbacks} fell back to local, {len(failed)} failed"
    )
    ctx.artifacts["offload_phases"] = {name: dict(seen) for name, seen, *_ in rows}
    ctx.artifacts["offload_failed"] = len(failed)
