"""Demo stage: split a detector between the device and an edge server, and watch the cut
move as the emulated bandwidth changes.

nudenet's YOLOv8n-style detector (when the ``nudenet`` package is installed; otherwise the
digits CNN) is cut at a few points, uint8-compressing the tensors that cross. A real
``edgeinfer serve`` on loopback hosts the tails behind the network emulator; the device is
this machine made 8x slower. ``AdaptiveSplit`` learns the link from its own requests and
plans every request; as the bandwidth drops, the cut moves toward the device (remote-only
or a middle cut on a fast link, local-only on a slow one), and only features (never the
raw photo) leave the device at a split.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from edgeinfer.demo import DemoContext

TITLE = "Split computing: the head on the device, the tail on the edge server"

SLOWDOWN = 8.0  # the emulated device is this many times slower than this machine
RTT = "10ms"


def _detector(workdir: Path) -> tuple[Path, dict[str, np.ndarray]] | None:
    """nudenet's detector at 320x320 and a real photo, or None without nudenet."""
    spec = importlib.util.find_spec("nudenet")
    if spec is None or not spec.submodule_search_locations:
        return None
    src = Path(next(iter(spec.submodule_search_locations))) / "320n.onnx"
    try:
        from sklearn.datasets import load_sample_image
    except ImportError:
        return None
    import onnx

    model = onnx.load(src)
    for d in model.graph.input[0].type.tensor_type.shape.dim[2:]:
        d.Clear()
        d.dim_value = 320  # a fixed input size: the profile holds for it
    path = workdir / "detector.onnx"
    onnx.save(model, path)
    photo = load_sample_image("china.jpg")[:320, 100:420].transpose(2, 0, 1)
    return path, {"images": (photo[None].astype(np.float32) / 255.0)}


def _mbps(value: float) -> str:
    return f"{value:.1f}" if value < 1000 else "> 1000"


def run(ctx: DemoContext) -> None:
    from edgeinfer.bundle import Bundle
    from edgeinfer.netem import NetemProxy
    from edgeinfer.serve import BackgroundServer, ServeConfig
    from edgeinfer.split import Estimates, cut_points, select_cuts
    from edgeinfer.split.adaptive import AdaptiveSplit
    from edgeinfer.split.package import write_split

    console = ctx.console
    work = ctx.workdir / "split"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    found = _detector(work)
    bandwidths: tuple[str | None, ...]  # None: as fast as loopback goes
    if found is not None:
        model, inputs = found
        name, bandwidths = "detector", (None, "50mbit", "2mbit", None)
    else:
        x_test, _ = ctx.artifacts["digits_data"]
        model = Bundle.open(ctx.artifacts["digits_bundle"]).model_path
        inputs = {"pixels": x_test[:1]}
        name, bandwidths = "digits", (None, "0.1mbit", None)
        console.print("[dim](nudenet not installed: splitting the digits CNN instead)[/]")
    source = Bundle.create(model, work / "source", name=name, golden_inputs=inputs)
    cuts = select_cuts(cut_points(source.model_path), 4 if ctx.fast else 5)
    package = write_split(
        source, cuts, work / "out", inputs=inputs, compress="uint8", compress_outputs="uint8",
        repeats=2 if ctx.fast else 10,
    )  # fmt: skip
    profile = package.profile
    table = Table(title=f"{name}: the cuts profiled (head/tail ms on this machine)")
    for col in ("cut", "kind", "bytes sent", "bytes back", "head ms", "tail ms"):
        table.add_column(col, justify="right")
    for c in profile.cuts:
        table.add_row(
            str(c.index), c.kind, f"{c.bytes_up:,}", f"{c.bytes_down:,}", f"{c.head_ms:.1f}",
            f"{c.tail_ms:.1f}",
        )  # fmt: skip
    console.print(table)
    console.print(
        f"raw input: {profile.input_bytes:,} bytes, raw output: {profile.output_bytes:,} bytes "
        f"(cut tensors and outputs cross as uint8); device emulated {SLOWDOWN:g}x slower"
    )

    config = ServeConfig(package.repository, port=0, grpc_port=None, poll_interval_s=None)
    rows: list[tuple[Any, ...]] = []
    chosen: list[tuple[str, int, str]] = []  # (link, cut, kind) of every request
    requests = 2 if ctx.fast else 3
    with (
        BackgroundServer(config) as server,
        NetemProxy(f"127.0.0.1:{server.port}", rtt=RTT) as proxy,
        AdaptiveSplit(
            package.profile_path.parent,
            proxy.url,
            initial=Estimates(rtt_ms=10, device_slowdown=SLOWDOWN),
            slowdown=SLOWDOWN,
            explore_every=None,  # the link is re-measured below, at each change
            timeout=60,
            window=3,  # adapt within a few requests
            alpha=1.0,
        ) as adaptive,
    ):
        if not ctx.fast:
            proxy.set(rate=bandwidths[0])
            adaptive.calibrate(inputs, runs=1)  # every cut once: link, device, server
        for rate in bandwidths:
            proxy.set(rate=rate)
            est = adaptive.measure_link(inputs)  # the device notices the change
            for i in range(requests):
                r = adaptive.predict(inputs)
                chosen.append((rate or "unlimited", r.cut, r.result.kind))
                rows.append(
                    (
                        ("unlimited" if rate is None else rate) if i == 0 else "",
                        _mbps(est.up_mbps) if i == 0 else "",
                        f"{r.cut} ({r.result.kind})",
                        f"{r.plan.chosen.latency_ms:.0f}",
                        f"{r.result.seconds * 1e3:.0f}",
                        f"{r.result.up_bytes:,}",
                    )
                )
    table = Table(title=f"one request at a time, RTT {RTT}: the planner re-plans each request")
    for col in ("link", "measured Mbit/s", "cut", "expected ms", "took ms", "bytes sent"):
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    ctx.artifacts["split_profile"] = package.profile_path
    ctx.artifacts["split_cuts"] = chosen
