"""Model delivery: delta sizes and speeds, and a whole agent update, for real models.

For the digits CNN and all-MiniLM-L6-v2, three updates from v1:

- ``finetune_last_layer``: digits: the final Gemm retrained on the training images
  (edgeinfer.demo.deliver.finetune_last_layer); MiniLM: the last dense layer (FFN output
  MatMul weight and its bias) moved by 1% of its standard deviation, as a fine-tune step;
- ``requantize``: v2 = onnxruntime.quantization.quantize_dynamic(v1) (fp32 -> int8 weights);
- ``retrain``: digits: trained again from another seed; MiniLM: every float weight moved
  by half its standard deviation (a full retrain changes every tensor).

Measured (issue targets in brackets): bytes of each delta against the full packed bundle
[fine-tune <= 5%]; tensor-aware delta against bsdiff4+zstd, size [no larger] and compute
time [>= 10x faster on MiniLM]; delta apply time on this device [<= 2 s for MiniLM]; and an
end-to-end ``edgeinfer agent --once`` subprocess per update (metadata refresh, download,
verify, install, health gate) with its wall time and peak RSS.

Run: .venv/bin/python benchmarks/bench_delta.py [--models digits,minilm]
Writes benchmarks/results/delta.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import median, write
from edgeinfer.bundle import Bundle
from edgeinfer.deliver import DeltaConfig, KeyStore, Publisher, apply_delta, make_delta


# ---------------------------------------------------------------- model variants
def _rewrite(src: Path, dst: Path, change: dict[str, Any]) -> Path:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    for init in model.graph.initializer:
        if init.name in change:
            arr = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array(change[init.name](arr), init.name))
    onnx.save(model, str(dst))
    return dst


def _noise(scale: float, seed: int) -> Any:
    rng = np.random.default_rng(seed)

    def f(a: np.ndarray) -> np.ndarray:
        std = float(a.std()) or 1.0
        return (a + scale * std * rng.standard_normal(a.shape)).astype(a.dtype)

    return f


def _last_dense(path: Path) -> list[str]:
    """The last MatMul/Gemm weight initializer and the bias added right after it."""
    import onnx

    model = onnx.load(str(path))
    inits = {i.name for i in model.graph.initializer}
    node = [
        n
        for n in model.graph.node
        if n.op_type in ("MatMul", "Gemm") and any(i in inits for i in n.input)
    ][-1]
    names = [i for i in node.input if i in inits]
    for n in model.graph.node:
        if n.op_type == "Add" and node.output[0] in n.input:
            names += [i for i in n.input if i in inits]
    return names


def _quantize(src: Path, dst: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"]
    )
    return dst


def _bundle_like(v1: Bundle, model: Path, out: Path, version: int) -> Bundle:
    golden = v1.golden()
    extra = {r.file: v1.path / r.file for r in v1.manifest.files}
    return Bundle.create(
        model,
        out,
        name=v1.name,
        version=version,
        golden_inputs=None if golden is None else golden.inputs,
        labels=v1.manifest.labels,
        extra_files=extra,
        overwrite=True,
    )


def variants(name: str, work: Path) -> tuple[Bundle, dict[str, Bundle]]:
    from edgeinfer import zoo

    if name == "digits":
        from edgeinfer.demo.deliver import finetune_last_layer

        v1 = zoo.digits.build(work / "v1", overwrite=True)
        x_train, y_train, _, _ = zoo.digits.load_data()
        tuned = finetune_last_layer(v1.model_path, work / "ft.onnx", x_train, y_train)
        retrained = zoo.digits.model_path(seed=1)
    else:
        v1 = zoo.minilm.build(work / "v1", overwrite=True)
        last = _last_dense(v1.model_path)
        tuned = _rewrite(v1.model_path, work / "ft.onnx", {n: _noise(0.01, 1) for n in last})
        import onnx

        floats = [
            i.name
            for i in onnx.load(str(v1.model_path)).graph.initializer
            if i.data_type == onnx.TensorProto.FLOAT
        ]
        retrained = _rewrite(v1.model_path, work / "rt.onnx", {n: _noise(0.5, 2) for n in floats})
    quant = _quantize(v1.model_path, work / "q.onnx")
    models = {"finetune_last_layer": tuned, "requantize": quant, "retrain": retrained}
    return v1, {k: _bundle_like(v1, m, work / k, 2) for k, m in models.items()}


# ---------------------------------------------------------------- measurements
# bsdiff runs in a child process so that a pathological case can be stopped at a time limit.
_BSDIFF = """
import json, sys, time
from edgeinfer.deliver.delta import DeltaConfig, make_delta
start = time.perf_counter()
info = make_delta(sys.argv[1], sys.argv[2], sys.argv[3],
                  DeltaConfig(methods=("bsdiff",), bsdiff_max_bytes=1 << 40))
print(json.dumps({"bytes": info.size, "compute_s": time.perf_counter() - start}))
"""


def _bsdiff(base: Path, target: Path, out: Path, limit: float) -> dict[str, Any]:
    cmd = [sys.executable, "-c", _BSDIFF, str(base), str(target), str(out)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, check=True)
    except subprocess.TimeoutExpired:
        return {"bytes": None, "compute_s": limit, "timed_out": True}
    return {**json.loads(proc.stdout), "timed_out": False}


def delta_figures(base: Path, target: Path, work: Path, bsdiff_limit: float) -> dict[str, Any]:
    full = target.stat().st_size
    cfg = DeltaConfig(methods=("tensor",))
    start = time.perf_counter()
    info = make_delta(base, target, work / "tensor.delta", cfg)
    tensor = {
        "bytes": info.size,
        "share_of_full": info.size / full,
        "compute_s": time.perf_counter() - start,
        "stats": info.stats,
    }
    applies = []
    for _ in range(3):
        start = time.perf_counter()
        apply_delta(base, work / "tensor.delta", work / "rebuilt.tar")
        applies.append(time.perf_counter() - start)
    tensor["apply_s"] = median(applies)
    bsdiff = _bsdiff(base, target, work / "bsdiff.delta", bsdiff_limit)
    out: dict[str, Any] = {"full_bytes": full, "tensor": tensor, "bsdiff": bsdiff}
    if bsdiff["bytes"] is not None:
        bsdiff["share_of_full"] = bsdiff["bytes"] / full
        out["tensor_vs_bsdiff_size"] = tensor["bytes"] / bsdiff["bytes"]
    # a lower bound when bsdiff hit the time limit
    out["tensor_speedup_vs_bsdiff"] = bsdiff["compute_s"] / tensor["compute_s"]
    return out


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


# Runs `edgeinfer agent` in a fresh interpreter and reports its VmHWM, the peak RSS of the new
# process image (getrusage's ru_maxrss would count the parent's pages from before exec).
_WRAPPER = """
import sys
from edgeinfer.cli.main import main
try:
    main(sys.argv[1:])
finally:
    hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM")][0].split()[1]
    print("PEAK_RSS_KB=" + hwm, file=sys.stderr)
"""


def _agent(url: str, state: Path, root: Path) -> dict[str, Any]:
    args = ["agent", "--repo-url", url, "--state-dir", str(state), "--root", str(root)]
    cmd = [sys.executable, "-c", _WRAPPER, *args, "--once", "--min-free-mb", "0"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"agent failed ({proc.returncode}): {proc.stderr[-2000:]}")
    peak = int(proc.stderr.rsplit("PEAK_RSS_KB=", 1)[1].split()[0])
    return {**json.loads(proc.stdout), "wall_s": wall, "peak_rss_mb": peak / 1024}


def end_to_end(v1: Bundle, v2: Bundle, work: Path) -> dict[str, Any]:
    repo = work / "repo"
    pub = Publisher(repo, KeyStore.init(work / "keys"))
    pub.publish(v1.path)
    handler = functools.partial(_Quiet, directory=str(repo))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        root = repo / "metadata" / "root.json"
        first = _agent(url, work / "device", root)
        start = time.perf_counter()
        published = pub.publish(v2.path)
        publish_s = time.perf_counter() - start
        second = _agent(url, work / "device", root)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    return {
        "publish_s": publish_s,
        "published_deltas": [
            {"from": d.from_version, "bytes": d.size, "method": d.method} for d in published.deltas
        ],
        "install_v1": {
            k: first[k] for k in ("result", "via", "bytes_downloaded", "wall_s", "peak_rss_mb")
        },
        "update": {
            "result": second["result"],
            "via": second["via"],
            "bytes_downloaded": second["bytes_downloaded"],
            "share_of_full": second["bytes_downloaded"] / published.length,
            "agent_cycle_s": second["seconds"],
            "wall_s": second["wall_s"],
            "peak_rss_mb": second["peak_rss_mb"],
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="digits,minilm")
    parser.add_argument(
        "--bsdiff-limit", type=float, default=900.0, help="seconds before bsdiff is stopped"
    )
    args = parser.parse_args()
    results: dict[str, Any] = {}
    for name in args.models.split(","):
        work = Path(tempfile.mkdtemp(prefix=f"bench-delta-{name}-"))
        try:
            print(f"== {name}: building v1 and three v2 variants", flush=True)
            v1, updates = variants(name, work)
            base = v1.pack(work / "v1.tar")
            results[name] = {"full_v1_bytes": base.stat().st_size, "updates": {}}
            for update, v2 in updates.items():
                target = v2.pack(work / f"{update}.tar")
                scratch = work / f"scratch-{update}"
                scratch.mkdir()
                print(f"-- {name} {update}: deltas", flush=True)
                figures = delta_figures(base, target, scratch, args.bsdiff_limit)
                print(f"-- {name} {update}: agent end to end", flush=True)
                figures["end_to_end"] = end_to_end(v1, v2, work / f"e2e-{update}")
                results[name]["updates"][update] = figures
                t, b = figures["tensor"], figures["bsdiff"]
                e = figures["end_to_end"]["update"]
                if b["timed_out"]:
                    bs = f"bsdiff stopped after {b['compute_s']:.0f} s"
                else:
                    bs = (
                        f"bsdiff {b['bytes']:,} B ({b['share_of_full']:.2%}) "
                        f"in {b['compute_s']:.2f} s"
                    )
                print(
                    f"   full {figures['full_bytes']:,} B | tensor {t['bytes']:,} B "
                    f"({t['share_of_full']:.2%}) in {t['compute_s']:.2f} s, apply "
                    f"{t['apply_s']:.2f} s | {bs} | agent: {e['via']} {e['bytes_downloaded']:,} "
                    f"B, {e['wall_s']:.2f} s wall, {e['peak_rss_mb']:.0f} MB peak RSS",
                    flush=True,
                )
        finally:
            shutil.rmtree(work, ignore_errors=True)
    checks: dict[str, Any] = {}
    for name, r in results.items():
        ups = r["updates"]
        checks[f"{name}_finetune_share_le_5pct"] = (
            ups["finetune_last_layer"]["end_to_end"]["update"]["share_of_full"] <= 0.05
        )
        checks[f"{name}_tensor_no_larger_than_bsdiff"] = all(
            u["bsdiff"]["bytes"] is None or u["tensor"]["bytes"] <= u["bsdiff"]["bytes"]
            for u in ups.values()
        )
    if "minilm" in results:
        ups = results["minilm"]["updates"]
        checks["minilm_tensor_10x_faster"] = all(
            u["tensor_speedup_vs_bsdiff"] >= 10 for u in ups.values()
        )
        checks["minilm_apply_le_2s"] = all(u["tensor"]["apply_s"] <= 2.0 for u in ups.values())
    path = write("delta", {"results": results, "targets": checks})
    print(json.dumps(checks, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
