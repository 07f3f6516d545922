"""Split computing over an emulated network: latency per cut, the planner's choice, bytes, fidelity.

The model is nudenet's YOLOv8n-style detector (``320n.onnx``, input fixed at 320x320), the
inputs two real photographs (scikit-learn's samples). ``edgeinfer split`` machinery makes
head and tail bundles for a spread of cuts, uncompressed, with uint8 cut compression, and
with uint8 cut compression plus uint8 outputs (``out8``: the server returns the detector's
[1, 22, 2100] output as per-channel uint8 codes, restored on the device; remote-only gets
the same, so the whole-model placement is compared on equal terms);
a real ``edgeinfer serve`` on loopback hosts every tail, behind the user-space network
emulator (``NetemProxy``: fixed RTT, rate limit both ways); the device is this machine made
``slowdown`` times slower (``EmulatedDevice``: it sleeps after each head run;
``EmulatedClient``: likewise after its own HTTP compression work). Remote-only
(send the raw float32 input) and local-only are the extreme cuts.

Reported (issue targets in brackets):
- latency per placement for bandwidth {1, 10, 100} Mbit/s x device slowdown {4x, 16x};
- where a middle cut is measured best, best split vs best whole-model placement [>= 1.5x];
- the planner's choice within 10% of the measured best [>= 90% of conditions]: its
  estimates are what a device learns from its own requests (``LinkLearner``: probes, one
  call of the smallest-upload cut, then a few requests run where the planner says), never
  the measurements scored here;
- bytes sent per request at the chosen cut vs the raw input;
- the fidelity cost of uint8 cut and output compression (errors against the full model).

HTTP compression (zstd both ways) is on by default, as a device on a slow link would use it;
``--http-compress none`` sends raw bodies and writes ``split_no_http_compression.json``.

Run: .venv/bin/python benchmarks/bench_split.py [--quick] [--http-compress zstd|gzip|none]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write

RTT_MS = 10.0  # emulated round trip
BANDWIDTHS = (100.0, 10.0, 1.0)  # Mbit/s, both directions
SLOWDOWNS = (4.0, 16.0)  # device time / this machine's time
SIZE = 320  # detector input height and width
ADAPT = 4  # planned requests the device learns from before its choice is scored


@dataclass
class Placement:
    label: str  # "remote", "local", "cut 22", "cut 22 u8", "remote out8", "cut 22 u8 out8"
    package: Path
    cut: Any  # CutProfile
    compress: str | None
    split: Any = None  # SplitModel with an undecorated head
    head: Any = None  # the head Model (None for remote-only)
    raw_up: int = 0  # bytes of the crossing tensors before HTTP compression


def detector(work: Path) -> Path:
    """nudenet's detector with its input fixed at SIZE x SIZE (batch stays dynamic)."""
    import onnx

    spec = importlib.util.find_spec("nudenet")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("nudenet is not installed: pip install nudenet --no-deps")
    src = Path(next(iter(spec.submodule_search_locations))) / "320n.onnx"
    model = onnx.load(src)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for d, size in zip(dims[2:], (SIZE, SIZE), strict=True):
        d.Clear()
        d.dim_value = size
    out = work / "detector.onnx"
    onnx.save(model, out)
    return out


def photos() -> np.ndarray:
    from sklearn.datasets import load_sample_image

    crops = []
    for name in ("china.jpg", "flower.jpg"):
        img = load_sample_image(name)[:SIZE, 100 : 100 + SIZE]
        crops.append(img.transpose(2, 0, 1).astype(np.float32) / 255.0)
    return np.ascontiguousarray(np.stack(crops))


def build(model: Path, x: np.ndarray, work: Path, k: int, repeats: int) -> tuple[list[Any], Path]:
    """Plain, uint8 and uint8 + uint8-output split packages, and one repository holding
    every tail."""
    from edgeinfer.bundle import Bundle
    from edgeinfer.split import cut_points, select_cuts
    from edgeinfer.split.package import write_split

    cuts = select_cuts(cut_points(model), k)
    one = {"images": x[:1]}
    plain_src = Bundle.create(model, work / "src-plain", name="det", golden_inputs=one)
    u8_src = Bundle.create(model, work / "src-u8", name="det-u8", golden_inputs=one)
    plain = write_split(plain_src, cuts, work / "plain", inputs=one, repeats=repeats)
    u8 = write_split(u8_src, cuts[1:-1], work / "u8", inputs=one, compress="uint8", repeats=repeats)
    u8o_src = Bundle.create(model, work / "src-u8o", name="det-u8o", golden_inputs=one)
    u8o = write_split(
        u8o_src, cuts[:-1], work / "u8o", inputs=one, compress="uint8",
        compress_outputs="uint8", repeats=repeats,
    )  # fmt: skip
    repo = work / "repository"
    repo.mkdir()
    for pkg in (plain, u8, u8o):
        for tail in pkg.tails.values():
            shutil.copytree(tail.parent, repo / tail.parent.name)
    return [plain, u8, u8o], repo


def measure(fn: Any, reps: int) -> tuple[float, Any]:
    times, last = [], None
    for _ in range(reps):
        start = time.perf_counter()
        last = fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), last


def fidelity(model: Path, packages: list[Any], x: np.ndarray) -> list[dict[str, Any]]:
    """Errors of the compressed placements against the full model, on both photos."""
    from edgeinfer.runtime import load
    from edgeinfer.split.compress import restore_outputs

    with load(model, providers=["cpu"]) as full:
        want = full.predict({"images": x})["output0"]  # [N, 4 + classes, anchors]
    rows = []
    for pkg, cut in ((p, c) for p in packages for c in p.profile.cuts):
        feeds = {"images": x}
        if cut.kind != "remote":
            with load(pkg.heads[cut.index], providers=["cpu"]) as h:
                feeds = h.predict(feeds)
        with load(pkg.tails[cut.index], providers=["cpu"]) as t:
            got = restore_outputs(t.predict(feeds))["output0"]
        boxes = np.abs(got[:, :4] - want[:, :4])
        scores = np.abs(got[:, 4:] - want[:, 4:])
        agree = []
        for w, g in zip(want, got, strict=True):  # per photo: the 10 strongest anchors
            top_w = set(np.argsort(-w[4:].max(0))[:10].tolist())
            top_g = set(np.argsort(-g[4:].max(0))[:10].tolist())
            same = [a for a in top_w & top_g if w[4:, a].argmax() == g[4:, a].argmax()]
            agree.append(len(same) / 10)
        rows.append(
            {
                "cut": cut.index,
                "placement": _label(cut, pkg),
                "bytes_up": cut.bytes_up,
                "bytes_down": cut.bytes_down,
                "box_max_abs_error_px": float(boxes.max()),
                "box_mean_abs_error_px": float(boxes.mean()),
                "score_max_abs_error": float(scores.max()),
                "max_score_full": float(want[:, 4:].max()),
                "relative_l2_error": float(np.linalg.norm(got - want) / np.linalg.norm(want)),
                "top10_anchor_agreement": float(np.mean(agree)),
            }
        )
    return rows


def _label(cut: Any, pkg: Any) -> str:
    """ "cut 22", "cut 22 u8", "remote out8", ...: the placement and what it compresses."""
    label = cut.kind if cut.kind != "split" else f"cut {cut.index}"
    if pkg.profile.compress and cut.kind == "split":
        label += " u8"
    if pkg.profile.compress_outputs and cut.kind != "local":
        label += " out8"
    return label


def open_placements(
    packages: list[Any], url: str, one: dict[str, np.ndarray], compress: str | None
) -> list[Placement]:
    """Every placement with its head loaded here and its tail reached through ``url``;
    ``compress``: HTTP request compression (answers are compressed by the server when
    they are long enough, unless the server was told not to)."""
    from edgeinfer.offload.remote import RemoteModel
    from edgeinfer.runtime import load
    from edgeinfer.split.package import head_name, tail_name
    from edgeinfer.split.runner import SplitModel

    placements = []
    for pkg in packages:
        root, name = pkg.profile_path.parent, pkg.profile.model
        restore = pkg.profile.compress_outputs is not None
        on_wire = pkg.profile.over_wire(up=compress is not None, down=compress is not None)
        for cut in on_wire.cuts:
            p = Placement(_label(cut, pkg), root, cut, pkg.profile.compress)
            p.raw_up = pkg.profile.cut(cut.index).bytes_up
            if cut.kind != "remote":
                p.head = load(root / "heads" / head_name(name, cut.index), threads=1)
            tail = None
            if cut.kind != "local":
                tail = RemoteModel(url, tail_name(name, cut.index), timeout=120, compress=compress)
            p.split = SplitModel(p.head, tail, cut, restore_outputs=restore)
            p.split.infer(one)  # warm: connection, metadata, first run
            placements.append(p)
    return placements


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer cuts and repeats")
    parser.add_argument(
        "--http-compress",
        choices=["zstd", "gzip", "none"],
        default="zstd",
        help="HTTP compression of requests and answers (none: raw bodies both ways)",
    )
    args = parser.parse_args()
    compress = None if args.http_compress == "none" else args.http_compress
    from edgeinfer.netem import NetemProxy
    from edgeinfer.protocol import coding
    from edgeinfer.serve.config import ServeConfig
    from edgeinfer.serve.server import BackgroundServer

    k = 5 if args.quick else 6
    reps = {100.0: 3, 10.0: 3, 1.0: 1} if args.quick else {100.0: 7, 10.0: 5, 1.0: 2}
    work = Path(tempfile.mkdtemp(prefix="bench-split-"))
    try:
        model = detector(work)
        x = photos()
        one = {"images": x[:1]}
        t0 = time.perf_counter()
        packages, repo = build(model, x, work, k, repeats=5 if args.quick else 15)
        plain = packages[0]
        n = sum(len(pkg.profile.cuts) for pkg in packages)
        print(f"built and profiled {n} placements in {time.perf_counter() - t0:.1f} s")
        config = ServeConfig(
            repo, port=0, grpc_port=None, poll_interval_s=None, threads=1,
            compress_min_bytes=None if compress is None else coding.MIN_BYTES,
        )  # fmt: skip
        with BackgroundServer(config) as server, NetemProxy(f"127.0.0.1:{server.port}") as proxy:
            placements = open_placements(packages, proxy.url, one, compress)
            conditions = []
            for bw in BANDWIDTHS:
                proxy.set(rtt=RTT_MS / 1e3, rate=f"{bw:g}mbit")
                for slowdown in SLOWDOWNS:
                    conditions.append(run_condition(placements, one, bw, slowdown, reps[bw]))
            stats = proxy.stats
            for p in placements:
                p.split.close()
        fid = fidelity(model, packages[1:], x)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    within = [c["chosen_within_10pct"] for c in conditions]
    within_nominal = [c["nominal_within_10pct"] for c in conditions]
    middle = [c for c in conditions if c["best_kind"] == "split"]
    # Local-only never touches the network: its spread across bandwidths is pure noise
    # (this machine's load, amplified by the emulated slowdown).
    spread = {}
    for slowdown in SLOWDOWNS:
        local = [
            r["measured_ms"]
            for c in conditions
            if c["slowdown"] == slowdown
            for r in c["placements"]
            if r["kind"] == "local"
        ]
        spread[f"x{slowdown:g}"] = max(local) / min(local)
    summary = {
        "noise_local_only_max_over_min": spread,
        "planner_within_10pct_share": sum(within) / len(within),
        "planner_nominal_within_10pct_share": sum(within_nominal) / len(within_nominal),
        "planner_within_10pct_target": 0.9,
        "middle_cut_best_conditions": len(middle),
        "middle_cut_speedups": {
            f"{c['bandwidth_mbps']:g}mbit x{c['slowdown']:g}": c["split_speedup"] for c in middle
        },
        "middle_cut_speedup_target": 1.5,
        "raw_input_bytes": int(x[:1].nbytes),
    }
    payload = {
        "setup": {
            "model": "nudenet 320n.onnx (YOLOv8n-style detector), input fixed at 320x320",
            "inputs": "scikit-learn sample photos china.jpg / flower.jpg, 320x320 crops",
            "rtt_ms": RTT_MS,
            "bandwidths_mbps": list(BANDWIDTHS),
            "slowdowns": list(SLOWDOWNS),
            "repeats": {f"{k:g}mbit": v for k, v in reps.items()},
            "server": "edgeinfer serve on 127.0.0.1 (1 intra-op thread) behind NetemProxy",
            "http_compression": args.http_compress,
            "device": "this machine, EmulatedDevice(slowdown), 1 intra-op thread",
            "planner": "live estimates (LinkLearner, per condition: 3 ready probes, 1 call "
            f"of the smallest-upload cut, then {ADAPT} requests run where the planner said, "
            "learning from each); 'nominal' = the emulator's settings as estimates",
            "proxy_bytes": {"up": stats.bytes_up, "down": stats.bytes_down},
            "quick": args.quick,
        },
        "profile": plain.profile.to_dict(),
        "profile_uint8": packages[1].profile.to_dict(),
        "profile_uint8_outputs": packages[2].profile.to_dict(),
        "conditions": conditions,
        "fidelity_uint8": fid,
        "summary": summary,
    }
    path = write("split" if compress else "split_no_http_compression", payload)
    report(conditions, fid, summary)
    print(f"results: {path}")


def learn_estimates(
    placements: list[Placement], runs: list[Any], one: dict[str, np.ndarray], initial: Any
) -> Any:
    """What a device would come to believe, as AdaptiveSplit does: three probes and one
    call of the smallest-upload cut, then ``ADAPT`` requests each run where the planner
    says from what was learned so far (learning from each)."""
    from edgeinfer.split import cut_cost
    from edgeinfer.split.adaptive import LinkLearner

    learner = LinkLearner(initial)
    remote = [i for i, p in enumerate(placements) if p.cut.kind != "local"]
    probe = min(remote, key=lambda i: placements[i].cut.bytes_up)
    for _ in range(3):
        learner.observe_probe(runs[probe].tail.ready())
    learner.observe(runs[probe].infer(one), placements[probe].cut)
    for _ in range(ADAPT):
        est = learner.estimates()
        i = min(range(len(placements)), key=lambda i: cut_cost(placements[i].cut, est).latency_ms)
        learner.observe(runs[i].infer(one), placements[i].cut)
    return learner.estimates()


def run_condition(
    placements: list[Placement], one: dict[str, np.ndarray], bw: float, slowdown: float, reps: int
) -> dict[str, Any]:
    """Measure every placement (interleaved), then compare with the planner's choice."""
    from edgeinfer.netem import EmulatedClient, EmulatedDevice
    from edgeinfer.split import Estimates, cut_cost
    from edgeinfer.split.runner import SplitModel

    runs = []
    for p in placements:
        head = None if p.head is None else EmulatedDevice(p.head, slowdown)
        # the device's own HTTP compression work is slower too, not only its head
        tail = None if p.split.tail is None else EmulatedClient(p.split.tail, slowdown)
        runs.append(SplitModel(head, tail, p.cut, restore_outputs=p.split.restore_outputs))
    nominal = Estimates(rtt_ms=RTT_MS, up_mbps=bw, down_mbps=bw, device_slowdown=slowdown)
    live = learn_estimates(placements, runs, one, nominal)
    times: list[list[float]] = [[] for _ in placements]
    wire = [(0, 0) for _ in placements]
    for r in range(reps):
        order = list(range(len(placements)))
        if r % 2:
            order.reverse()
        for i in order:
            ms, result = measure(lambda i=i: runs[i].infer(one), 1)
            times[i].append(ms)
            wire[i] = (result.up_bytes, result.down_bytes)
    rows = []
    for p, ts, (up, down) in zip(placements, times, wire, strict=True):
        rows.append(
            {
                "placement": p.label,
                "kind": p.cut.kind,
                "cut": p.cut.index,
                "compress": p.compress,
                "bytes_up": p.cut.bytes_up,  # as sent: after HTTP compression, if on
                "bytes_up_uncompressed": p.raw_up,
                "bytes_down": p.cut.bytes_down,
                "wire_bytes_up": up,
                "wire_bytes_down": down,
                "measured_ms": statistics.median(ts),
                "all_ms": ts,
                "predicted_ms": cut_cost(p.cut, live).latency_ms,
                "predicted_nominal_ms": cut_cost(p.cut, nominal).latency_ms,
            }
        )
    best = min(rows, key=lambda r: r["measured_ms"])
    chosen = min(rows, key=lambda r: (r["predicted_ms"], r["bytes_up"]))
    by_nominal = min(rows, key=lambda r: (r["predicted_nominal_ms"], r["bytes_up"]))
    whole = min((r for r in rows if r["kind"] != "split"), key=lambda r: r["measured_ms"])
    split = min((r for r in rows if r["kind"] == "split"), key=lambda r: r["measured_ms"])
    ratio = chosen["measured_ms"] / best["measured_ms"]
    out = {
        "bandwidth_mbps": bw,
        "slowdown": slowdown,
        "live_estimates": dataclasses.asdict(live),
        "placements": rows,
        "best": best["placement"],
        "best_kind": best["kind"],
        "best_ms": best["measured_ms"],
        "best_whole": whole["placement"],
        "best_whole_ms": whole["measured_ms"],
        "best_split": split["placement"],
        "best_split_ms": split["measured_ms"],
        "split_speedup": whole["measured_ms"] / split["measured_ms"],
        "chosen": chosen["placement"],
        "chosen_predicted_ms": chosen["predicted_ms"],
        "chosen_measured_ms": chosen["measured_ms"],
        "chosen_vs_best": ratio,
        "chosen_within_10pct": ratio <= 1.10,
        "chosen_bytes_up": chosen["bytes_up"],
        "chosen_wire_bytes_up": chosen["wire_bytes_up"],
        "chosen_wire_bytes_down": chosen["wire_bytes_down"],
        "nominal_chosen": by_nominal["placement"],
        "nominal_within_10pct": by_nominal["measured_ms"] / best["measured_ms"] <= 1.10,
    }
    print(
        f"{bw:>5g} Mbit/s x{slowdown:<3g} best {best['placement']:<11} "
        f"{best['measured_ms']:8.1f} ms | planner {chosen['placement']:<11} "
        f"{chosen['measured_ms']:8.1f} ms ({ratio:.2f}x) | whole {whole['placement']} "
        f"{whole['measured_ms']:.1f} ms | est up {live.up_mbps:.1f} Mbit/s "
        f"rtt {live.rtt_ms:.1f} ms x{live.device_slowdown:.1f}",
        flush=True,
    )
    return out


def report(conditions: list[dict[str, Any]], fid: list[dict[str, Any]], summary: Any) -> None:
    labels = [r["placement"] for r in conditions[0]["placements"]]
    head = f"{'placement':<13}{'bytes up':>11}" + "".join(
        f"{c['bandwidth_mbps']:>7g}M x{c['slowdown']:<3g}" for c in conditions
    )
    print(f"\nmeasured latency per placement, ms (RTT {RTT_MS:g} ms)")
    print(head)
    for i, label in enumerate(labels):
        row = conditions[0]["placements"][i]
        cells = "".join(f"{c['placements'][i]['measured_ms']:>13.1f}" for c in conditions)
        print(f"{label:<13}{row['bytes_up']:>11,}{cells}")
    print("\nuint8 cut and output compression, against the full model on both photos:")
    for f in fid:
        print(
            f"  {f['placement']:<15}: box max err {f['box_max_abs_error_px']:.2f} px, score max "
            f"err {f['score_max_abs_error']:.4f} (max score {f['max_score_full']:.3f}), rel L2 "
            f"{f['relative_l2_error']:.4f}, top-10 anchors agree {f['top10_anchor_agreement']:.0%}"
        )
    print(
        f"\nplanner (live estimates) within 10% of best: "
        f"{summary['planner_within_10pct_share']:.0%} of conditions (target >= 90%); "
        f"with the emulator's nominal settings: {summary['planner_nominal_within_10pct_share']:.0%}"
    )
    print(
        "noise: local-only latency (no network involved) max/min across bandwidths: "
        + ", ".join(f"{k} {v:.2f}" for k, v in summary["noise_local_only_max_over_min"].items())
    )
    print(
        f"middle cut best in {summary['middle_cut_best_conditions']} condition(s); "
        f"speedups over best whole-model placement: {summary['middle_cut_speedups']}"
    )


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
