"""Runtime overhead of edgeinfer.Model against the raw runtimes, side by side in one run.

Measures (issue targets in brackets):
- MiniLM, batch 1, sequence 128: Model.predict / InferenceSession.run median ratio [<= 1.03]
- a tiny 2-layer MLP: added overhead per call, median [<= 15 us]
- cold start (load + first inference, fresh processes): edgeinfer / raw ratio [<= 1.10]
- peak RSS of a process that loaded MiniLM: edgeinfer - raw [<= 30 MB]
- LiteRT wake-word model: Model.predict / raw interpreter median ratio [<= 1.05]

Both sides use the same session options (2 intra-op threads, spinning off, all graph
optimizations); the raw side with ONNX Runtime's default options is reported too.
Run: python benchmarks/bench_runtime.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved, median, write

THREADS = 2


def ort_session(path: Path, *, defaults: bool = False) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if not defaults:
        opts.intra_op_num_threads = THREADS
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def compare_onnx(
    path: Path, feeds: dict[str, np.ndarray], calls: int, repeats: int, sessions: int = 3
) -> dict[str, Any]:
    """Median per-call time through edgeinfer vs raw ONNX Runtime.

    Identical sessions differ by 10-20% on a shared machine (memory placement, thread
    pools), so each side gets ``sessions`` sessions and every block rotates over all of
    them, interleaved with the other side.
    """
    import edgeinfer

    models = [edgeinfer.load(path, providers=["cpu"], threads=THREADS) for _ in range(sessions)]
    raws = [ort_session(path) for _ in range(sessions)]
    raw_default = ort_session(path, defaults=True)
    fns: dict[str, Any] = {}
    for i in range(sessions):
        fns[f"edgeinfer/{i}"] = lambda m=models[i]: m.predict(feeds)
        fns[f"raw/{i}"] = lambda r=raws[i]: r.run(None, feeds)
    fns["raw_default_options/0"] = lambda: raw_default.run(None, feeds)
    times = interleaved(fns, calls=calls, repeats=repeats)
    pooled: dict[str, list[float]] = {}
    for key, values in times.items():
        pooled.setdefault(key.split("/")[0], []).extend(values)
    med = {k: median(v) for k, v in pooled.items()}
    return {
        "median_us": {k: v * 1e6 for k, v in med.items()},
        "ratio": med["edgeinfer"] / med["raw"],
        "overhead_us": (med["edgeinfer"] - med["raw"]) * 1e6,
        "per_session_median_us": {k: median(v) * 1e6 for k, v in times.items()},
        "sessions_per_side": sessions,
        "calls_per_block": calls,
        "repeats": repeats,
    }


CHILD = r"""
import json, resource, sys, time
mode, path, feeds_path = sys.argv[1], sys.argv[2], sys.argv[3]
import numpy as np
import onnxruntime as ort
feeds = dict(np.load(feeds_path))
if mode == "edgeinfer":
    import edgeinfer
t0 = time.perf_counter()
if mode == "edgeinfer":
    m = edgeinfer.load(path, providers=["cpu"], threads=2)
    m.predict(feeds)
else:
    o = ort.SessionOptions()
    o.intra_op_num_threads = 2
    o.inter_op_num_threads = 1
    o.add_session_config_entry("session.intra_op.allow_spinning", "0")
    o.add_session_config_entry("session.inter_op.allow_spinning", "0")
    s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
    s.run(None, feeds)
t1 = time.perf_counter()
# VmHWM, not ru_maxrss: a forked child inherits its parent's ru_maxrss across exec.
try:
    with open("/proc/self/status") as f:
        rss = next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) / 1024
except OSError:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"cold_s": t1 - t0, "peak_rss_mb": rss}))
"""


def cold_and_rss(path: Path, feeds: dict[str, np.ndarray], repeats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        fpath = Path(tmp) / "feeds.npz"
        np.savez(fpath, **feeds)
        runs: dict[str, list[dict[str, float]]] = {"edgeinfer": [], "raw": []}
        for r in range(repeats):
            order = ["edgeinfer", "raw"] if r % 2 == 0 else ["raw", "edgeinfer"]
            for mode in order:
                out = subprocess.run(
                    [sys.executable, "-c", CHILD, mode, str(path), str(fpath)],
                    check=True,
                    capture_output=True,
                    text=True,
                )
                runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    cold = {k: median([r["cold_s"] for r in v]) for k, v in runs.items()}
    rss = {k: median([r["peak_rss_mb"] for r in v]) for k, v in runs.items()}
    return {
        "cold_start_s": cold,
        "cold_start_ratio": cold["edgeinfer"] / cold["raw"],
        "peak_rss_mb": rss,
        "peak_rss_delta_mb": rss["edgeinfer"] - rss["raw"],
        "repeats": repeats,
        "note": "fresh process per run; time from after imports to the first inference's end; "
        "peak RSS is the child's VmHWM and includes the interpreter and imports",
    }


def compare_litert(calls: int, repeats: int) -> dict[str, Any]:
    from ai_edge_litert.interpreter import Interpreter

    import edgeinfer
    from edgeinfer.zoo import wakeword

    path = wakeword.model_path("okay_nabu")
    model = edgeinfer.load(path, threads=1)
    raw = Interpreter(model_path=str(path), num_threads=1)
    raw.allocate_tensors()
    ind = raw.get_input_details()[0]["index"]
    outd = raw.get_output_details()[0]["index"]
    x = np.random.default_rng(0).integers(-128, 127, (1, 3, 40)).astype(np.int8)

    def raw_call() -> object:
        raw.set_tensor(ind, x)
        raw.invoke()
        return raw.get_tensor(outd)

    times = interleaved(
        {"edgeinfer": lambda: model.predict(x), "raw": raw_call}, calls=calls, repeats=repeats
    )
    med = {k: median(v) for k, v in times.items()}
    return {
        "model": path.name,
        "median_us": {k: v * 1e6 for k, v in med.items()},
        "ratio": med["edgeinfer"] / med["raw"],
        "overhead_us": (med["edgeinfer"] - med["raw"]) * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    args = parser.parse_args()
    q = args.quick
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from edgeinfer.zoo import minilm
    from onnx_builders import make_mlp

    results: dict[str, Any] = {"threads": THREADS}
    minilm_path = minilm.export()
    feeds = minilm.tokenize(minilm.sentences(1), seq_len=128)
    print("MiniLM, batch 1, sequence 128 ...", flush=True)
    results["minilm"] = compare_onnx(
        minilm_path, feeds, calls=5 if q else 20, repeats=5 if q else 15
    )
    print(json.dumps(results["minilm"], indent=1), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        mlp = make_mlp(Path(tmp) / "mlp.onnx", n_in=16, n_hidden=32, n_out=2)
        x = {"x": np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)}
        print("tiny MLP ...", flush=True)
        results["tiny_mlp"] = compare_onnx(mlp, x, calls=500 if q else 2000, repeats=5 if q else 15)
        print(json.dumps(results["tiny_mlp"], indent=1), flush=True)
    print("cold start and peak RSS (MiniLM, fresh processes) ...", flush=True)
    results["minilm_process"] = cold_and_rss(minilm_path, feeds, repeats=3 if q else 7)
    print(json.dumps(results["minilm_process"], indent=1), flush=True)
    print("LiteRT wake word ...", flush=True)
    results["litert"] = compare_litert(calls=200 if q else 1000, repeats=7 if q else 21)
    print(json.dumps(results["litert"], indent=1), flush=True)
    results["targets"] = {
        "minilm_ratio_le_1.03": results["minilm"]["ratio"] <= 1.03,
        "tiny_overhead_le_15us": results["tiny_mlp"]["overhead_us"] <= 15,
        "cold_start_ratio_le_1.10": results["minilm_process"]["cold_start_ratio"] <= 1.10,
        "rss_delta_le_30mb": results["minilm_process"]["peak_rss_delta_mb"] <= 30,
        "litert_ratio_le_1.05": results["litert"]["ratio"] <= 1.05,
    }
    path = write("runtime", results)
    print(json.dumps(results["targets"], indent=1))
    print(f"results written to {path}")


if __name__ == "__main__":
    main()
