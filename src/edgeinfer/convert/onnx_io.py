"""Reading and writing ONNX files that the installed ONNX Runtime can load.

Recent ``onnx`` releases stamp new models with an IR version newer than what the installed
``onnxruntime`` reads; a model that ORT refuses to load is useless on a device.
:func:`max_ir_version` asks the runtime once (by loading a one-node probe model) and
:func:`save_onnx` / :func:`cap_ir_version` keep every file edgeinfer writes at or below it.
Writes go to a temporary file beside the target, then ``os.replace``.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from edgeinfer._atomic import replacing
from edgeinfer.errors import BundleError

__all__ = ["cap_ir_version", "load_onnx", "max_ir_version", "save_onnx"]

_TWO_GB = 2 << 30  # protobuf's limit for a single serialized message, bytes


@functools.lru_cache(maxsize=1)
def max_ir_version() -> int:
    """The newest ONNX IR version the installed onnxruntime loads (probed once)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    for ir in range(onnx.IR_VERSION, 6, -1):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=ir)
        try:
            ort.InferenceSession(
                model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
            )
        except Exception:
            continue
        return ir
    return 7


def load_onnx(path: str | os.PathLike[str]) -> Any:
    """``onnx.load`` with a :class:`BundleError` that names the file on failure."""
    import onnx

    try:
        return onnx.load(os.fspath(path))
    except Exception as exc:
        raise BundleError(f"{path}: not a readable ONNX model ({exc})") from exc


def _cap(model: Any) -> bool:
    limit = max_ir_version()
    if model.ir_version > limit:
        model.ir_version = limit
        return True
    return False


def save_onnx(model: Any, path: str | os.PathLike[str]) -> Path:
    """Save an ``onnx.ModelProto`` atomically with an IR version ONNX Runtime reads.

    Models above 2 GB keep their weights in a ``<name>.data`` file beside the model.
    """
    import onnx

    _cap(model)
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with replacing(dest, suffix=".tmp") as tmp:
        large = model.ByteSize() >= _TWO_GB
        onnx.save_model(
            model,
            os.fspath(tmp),
            save_as_external_data=large,
            location=f"{dest.name}.data" if large else None,
        )
    return dest


def cap_ir_version(path: str | os.PathLike[str]) -> Path:
    """Rewrite a model file in place if its IR version is newer than ORT reads."""
    import onnx

    # Reading only the header would be cheaper, but ModelProto has no lazy parse.
    model = onnx.load(os.fspath(path), load_external_data=False)
    if model.ir_version > max_ir_version():
        model = onnx.load(os.fspath(path))
        save_onnx(model, path)
    return Path(path)
