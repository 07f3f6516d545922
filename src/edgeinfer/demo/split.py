"""Demo stage: split a convolutional model between the device and an edge server, and
watch the cut move as the emulated bandwidth changes.

The model is nudenet's YOLOv8n-style detector on a real photo (``make demo`` installs
nudenet for its ``.onnx`` alone); without nudenet, a small convolutional network built
here on the spot, on a real photo too (:func:`scene_cnn`). Either is cut at a few points,
uint8-compressing the tensors that cross. A real ``edgeinfer serve`` on loopback hosts
the tails behind the network emulator; the device is this machine made 8x slower.
``AdaptiveSplit`` learns the link from its own requests and plans every request; as the
bandwidth drops, the cut moves toward the device (remote-only or a middle cut on a fast
link, local-only on a slow one), and only features (never the raw photo) leave the
device at a split.
"""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from edgeinfer.demo import DemoContext

TITLE = "Split computing: the head on the device, the tail on the edge server"

SLOWDOWN = 8.0  # the emulated device is this many times slower than this machine
RTT = "10ms"
# The slow link: at 0.5 Mbit/s even the smallest cut's features (37-46 kB) take longer
# than the device's own run, with a margin for a busy machine whose timings run high.
SLOW = "0.5mbit"
CNN_SIZE = 192  # pixels: the built network's input is CNN_SIZE x CNN_SIZE


@dataclass(frozen=True)
class Setup:
    """What the stage splits, on what, and over which links (``None``: loopback speed)."""

    name: str
    model: Path
    inputs: dict[str, np.ndarray]
    bandwidths: tuple[str | None, ...]
    note: str = ""


def _photo(height: int, width: int, step: int = 1) -> np.ndarray:
    """A crop of scikit-learn's sample photo, float32 [1,3,height,width] in [0, 1]."""
    from sklearn.datasets import load_sample_image

    img = load_sample_image("china.jpg")[: height * step : step, 100 : 100 + width * step : step]
    return np.ascontiguousarray(img.transpose(2, 0, 1)[None].astype(np.float32) / 255.0)


def detector(workdir: Path) -> Setup | None:
    """nudenet's detector at 320x320 and a real photo, or None without nudenet."""
    spec = importlib.util.find_spec("nudenet")
    if spec is None or not spec.submodule_search_locations:
        return None
    src = Path(next(iter(spec.submodule_search_locations))) / "320n.onnx"
    if not src.is_file():
        return None
    import onnx

    model = onnx.load(src)
    for d in model.graph.input[0].type.tensor_type.shape.dim[2:]:
        d.Clear()
        d.dim_value = 320  # a fixed input size: the profile holds for it
    path = workdir / "detector.onnx"
    onnx.save(model, path)
    return Setup("detector", path, {"images": _photo(320, 320)}, (None, "50mbit", SLOW, None))


def scene_cnn(workdir: Path) -> Setup:
    """A small convolutional network (a patchifying stem, then 3x3 convolutions halving
    the size and doubling the channels, a fully connected layer to 10 logits) at 192x192,
    built here with seeded random weights, and a real photo.

    Where the cut goes depends on compute and bytes, not on what the weights learned: the
    stem quarters the size and shrinks the photo twelvefold (uint8 against float32) for
    little compute (a middle cut on a medium link), the rest is most of the compute (local
    on a slow link). No pooling to a few hundred bytes at the end: every cut sends 37 kB
    or more, so a slow link costs any split more than the device's own run even when a
    busy machine's timings are off by a few times, and the smallest upload, through which
    the link is measured, takes a measurable time.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng, size = np.random.default_rng(0), CNN_SIZE
    layers = [  # name, channels in, out, kernel, stride
        ("stem", 3, 16, 4, 4), ("c2", 16, 64, 3, 1), ("c3", 64, 64, 3, 1),
        ("c4", 64, 128, 3, 2), ("c5", 128, 128, 3, 1), ("c6", 128, 128, 3, 1),
        ("c7", 128, 256, 3, 2), ("c8", 256, 256, 3, 1),
    ]  # fmt: skip
    nodes, inits, x = [], [], "images"
    for name, cin, cout, k, stride in layers:
        w = rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))  # He init
        inits += [
            numpy_helper.from_array(w.astype(np.float32), f"{name}.weight"),
            numpy_helper.from_array(np.zeros(cout, np.float32), f"{name}.bias"),
        ]
        conv, relu = f"/{name}/Conv_output_0", f"/{name}/Relu_output_0"
        nodes += [
            helper.make_node(
                "Conv", [x, f"{name}.weight", f"{name}.bias"], [conv], name=f"/{name}/Conv",
                kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2 if k == 3 else 0] * 4,
            ),
            helper.make_node("Relu", [conv], [relu], name=f"/{name}/Relu"),
        ]  # fmt: skip
        x = relu
    flat = layers[-1][2] * (size // 16) ** 2  # the last feature map, 12x12 at 192x192
    fc = rng.standard_normal((10, flat)) / np.sqrt(flat)
    inits += [
        numpy_helper.from_array(fc.astype(np.float32), "fc.weight"),
        numpy_helper.from_array(np.zeros(10, np.float32), "fc.bias"),
    ]
    nodes += [
        helper.make_node("Flatten", [x], ["features"], name="/flatten"),
        helper.make_node("Gemm", ["features", "fc.weight", "fc.bias"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "scene_cnn",
        [
            helper.make_tensor_value_info(
                "images", TensorProto.FLOAT, ["batch", 3, CNN_SIZE, CNN_SIZE]
            )
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    path = workdir / "scene_cnn.onnx"
    onnx.save(model, path)
    photo = _photo(CNN_SIZE, CNN_SIZE, step=2)  # a wider view of the same photo
    note = "(nudenet not installed: a convolutional network built here, random weights)"
    return Setup("scene-cnn", path, {"images": photo}, (None, "10mbit", SLOW, None), note)


def _mbps(value: float) -> str:
    return f"{value:.1f}" if value < 1000 else "> 1000"


def run(ctx: DemoContext) -> None:
    work = ctx.workdir / "split"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    play(ctx, detector(work) or scene_cnn(work))


def play(ctx: DemoContext, setup: Setup) -> None:
    """Split ``setup``'s model, serve the tails behind the emulator and plan each request
    as the bandwidth changes; ``ctx.artifacts["split_cuts"]`` gets (link, cut, kind) of
    every request."""
    from edgeinfer.bundle import Bundle
    from edgeinfer.netem import NetemProxy
    from edgeinfer.serve import BackgroundServer, ServeConfig
    from edgeinfer.split import Estimates, cut_points, select_cuts
    from edgeinfer.split.adaptive import AdaptiveSplit
    from edgeinfer.split.package import write_split

    console = ctx.console
    work = setup.model.parent
    name, inputs, bandwidths = setup.name, setup.inputs, setup.bandwidths
    if setup.note:
        console.print(f"[dim]{setup.note}[/]")
    source = Bundle.create(setup.model, work / "source", name=name, golden_inputs=inputs)
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
        # every cut once: the device's and the server's times as this machine runs them
        # now (a busy machine runs both slower than the profile says, and the plan must see
        # both), and the link
        proxy.set(rate=bandwidths[0])
        adaptive.calibrate(inputs, runs=1)
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
