"""Per-call overhead of edgeinfer's LiteRT path against the bare interpreter.

The wake-word model (``okay_nabu.tflite``, about 8 us a call) is run interleaved, in
short blocks, by:

- ``raw``: the bare ``ai_edge_litert`` Interpreter, ``set_tensor``/``invoke``/``get_tensor``
- ``floor``: the least a Python wrapper adds to that: one function doing exactly those three
  calls and returning the output by name in a dict (what ``Model.predict`` returns)
- ``native``: the interpreter's native methods (``_interpreter.SetTensor`` ...), which the
  public ones wrap (``invoke`` first counts references to refuse live ``tensor()`` views);
  edgeinfer's backend calls these
- ``edgeinfer``: ``Model.predict(array)``, and ``edgeinfer_dict``: ``Model.predict({name: array})``
- ``edgeinfer_outputs``: ``Model.predict(array, outputs=[name])``, the general path
  (validator, backend ``run``), which every multi-input model takes

Every variant has its own interpreter (the model is stateful). Reported: medians of the
per-call time over blocks, and the median over rounds of each round's ratio to ``raw``
(adjacent blocks, so slow drifts of a shared machine cancel). Target (issue 15):
edgeinfer / raw <= 1.05, or <= 1 us added.
Run: python benchmarks/bench_litert_overhead.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved, median, write


def variants() -> tuple[dict[str, Any], str]:
    from ai_edge_litert.interpreter import Interpreter

    import edgeinfer
    from edgeinfer.zoo import wakeword

    path = wakeword.model_path("okay_nabu")
    x = np.random.default_rng(0).integers(-128, 127, (1, 3, 40)).astype(np.int8)

    def interpreter() -> tuple[Any, int, int, str]:
        it = Interpreter(model_path=str(path), num_threads=1)
        it.allocate_tensors()
        out = it.get_output_details()[0]
        return it, it.get_input_details()[0]["index"], out["index"], out["name"]

    raw, ri, ro, _ = interpreter()

    def raw_call() -> object:
        raw.set_tensor(ri, x)
        raw.invoke()
        return raw.get_tensor(ro)

    flo, fi, fo, fname = interpreter()

    def floor(value: np.ndarray) -> dict[str, np.ndarray]:
        flo.set_tensor(fi, value)
        flo.invoke()
        return {fname: flo.get_tensor(fo)}

    nat, ni, no, _ = interpreter()
    n_set, n_invoke, n_get = (
        nat._interpreter.SetTensor,
        nat._interpreter.Invoke,
        nat._interpreter.GetTensor,
    )

    def native_call() -> object:
        n_set(ni, x)
        n_invoke()
        return n_get(no)

    models = [edgeinfer.load(path, threads=1) for _ in range(3)]
    name = models[0].inputs[0].name
    out_name = models[0].outputs[0].name
    feeds = {name: x}
    fns = {
        "raw": raw_call,
        "floor": lambda: floor(x),
        "native": native_call,
        "edgeinfer": lambda: models[0].predict(x),
        "edgeinfer_dict": lambda: models[1].predict(feeds),
        "edgeinfer_outputs": lambda: models[2].predict(x, outputs=[out_name]),
    }
    return fns, path.name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    args = parser.parse_args()
    calls, rounds = (200, 9) if args.quick else (300, 61)
    fns, model = variants()
    times = interleaved(fns, calls=calls, repeats=rounds, warmup=50)
    med = {k: median(v) for k, v in times.items()}
    raw = times["raw"]
    paired = {k: median([a / b for a, b in zip(v, raw, strict=True)]) for k, v in times.items()}
    results: dict[str, Any] = {
        "model": model,
        "threads": 1,
        "calls_per_block": calls,
        "rounds": rounds,
        "median_us": {k: v * 1e6 for k, v in med.items()},
        "ratio_to_raw": {k: v / med["raw"] for k, v in med.items()},
        "paired_ratio_to_raw": paired,
        "added_us": {k: (v - med["raw"]) * 1e6 for k, v in med.items()},
        "edgeinfer_over_floor_us": (med["edgeinfer"] - med["floor"]) * 1e6,
        "edgeinfer_over_native_us": (med["edgeinfer"] - med["native"]) * 1e6,
    }
    e = results["paired_ratio_to_raw"]["edgeinfer"]
    results["target_ratio_le_1.05_or_le_1us"] = e <= 1.05 or results["added_us"]["edgeinfer"] <= 1
    print(json.dumps(results, indent=1))
    print(f"results written to {write('litert_overhead', results)}")


if __name__ == "__main__":
    main()
