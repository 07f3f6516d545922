"""Bringing a model exported elsewhere to where ONNX Runtime's quantizers expect it.

Models come from many exporters, and the quantizers assume what a recent exporter writes:

* one entry for the default (``ai.onnx``) domain in ``opset_import``. Some converters write
  two (``""`` and ``""`` again, or ``""`` and ``"ai.onnx"``); ONNX Runtime runs such a model
  but every quantizer stops with "Failed to find proper ai.onnx domain";
* weights and biases as initializers. Paddle writes them as ``Constant`` nodes; the
  quantizers only quantize initializers and would treat such a weight as an activation;
* opset 13 or newer. Per-channel QuantizeLinear/DequantizeLinear (the ``axis`` attribute)
  arrived in opset 13; on an older graph (Paddle exports at 11 and 12) the quantizer still
  writes per-axis INT32 bias DequantizeLinear nodes, and ONNX Runtime refuses the result
  (``InvalidGraph ... DequantizeLinear ... tensor(int32)``). The field's recipe is the
  same as here: ``onnx.version_converter`` to opset 13, then ``quant_pre_process``.

:func:`prepare` fixes both on a ``ModelProto`` and says what it did; the graph pass runs it
first, and the INT8 passes run it again on whatever they are given.
"""

from __future__ import annotations

from typing import Any

__all__ = ["QDQ_OPSET", "constants_to_initializers", "default_opset", "merge_opsets", "prepare"]

QDQ_OPSET = 13  # per-axis QuantizeLinear/DequantizeLinear need opset 13
_DEFAULT = ("", "ai.onnx")


def default_opset(model: Any) -> int:
    """The model's default-domain opset (the highest, if it names the domain twice)."""
    versions = [int(o.version) for o in model.opset_import if o.domain in _DEFAULT]
    return max(versions) if versions else 0


def merge_opsets(model: Any) -> bool:
    """Keep one ``opset_import`` entry per domain (the highest version); True if changed."""
    best: dict[str, int] = {}
    for entry in model.opset_import:
        domain = "" if entry.domain in _DEFAULT else entry.domain
        best[domain] = max(best.get(domain, 0), int(entry.version))
    if len(best) == len(model.opset_import) and all(
        o.domain != "ai.onnx" for o in model.opset_import
    ):
        return False
    del model.opset_import[:]
    for domain, version in best.items():
        entry = model.opset_import.add()
        entry.domain, entry.version = domain, version
    return True


def constants_to_initializers(model: Any) -> int:
    """Turn the main graph's tensor-valued ``Constant`` nodes into initializers; how many."""
    if model.ir_version < 4:  # initializers had to be graph inputs too
        return 0
    names = {i.name for i in model.graph.initializer}
    keep, moved = [], 0
    for node in model.graph.node:
        value = next((a for a in node.attribute if a.name == "value" and a.HasField("t")), None)
        constant = node.op_type == "Constant" and not node.domain
        if constant and value is not None and node.output[0] not in names:
            tensor = model.graph.initializer.add()
            tensor.CopyFrom(value.t)
            tensor.name = node.output[0]
            moved += 1
        else:
            keep.append(node)
    if moved:
        del model.graph.node[:]
        model.graph.node.extend(keep)
    return moved


def prepare(model: Any, min_opset: int = QDQ_OPSET) -> tuple[Any, dict[str, Any]]:
    """``(model, info)`` with one default-domain opset entry and opset >= ``min_opset``.

    ``info`` says what changed: ``opset_imports_merged``, ``opset`` ("12 -> 13"), or
    ``opset_kept`` with the converter's reason when the conversion failed (the model is
    then returned at its own opset; callers that need per-channel QDQ fall back to
    per-tensor scales).
    """
    from onnx import version_converter

    info: dict[str, Any] = {}
    if merge_opsets(model):
        info["opset_imports_merged"] = True
    moved = constants_to_initializers(model)
    if moved:
        info["constants_to_initializers"] = moved
    have = default_opset(model)
    if min_opset and 0 < have < min_opset:
        try:
            converted = version_converter.convert_version(model, min_opset)
        except Exception as exc:  # the converter has no adapter for some operator
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            info["opset_kept"] = f"{have} (conversion to {min_opset} failed: {first[:160]})"
        else:
            info["opset"] = f"{have} -> {min_opset}"
            return converted, info
    return model, info
