"""INT4 blocks with a float offset (``rtn-asymf``): GGUF Q4_1's own quantizer, in ONNX Runtime.

Each block of ``block`` consecutive input-dimension weights of a MatMul's ``[K, N]`` weight is
stored as ``w = d * q + m``: ``q`` in 0..15, ``m`` the block's minimum and ``d`` =
(max - min) / 15, both float32, ``q`` the nearest integer to (w - m) / d. This is
llama.cpp's Q4_1 quantizer (there ``d`` and ``m`` are float16): the zero point -m / d is a
float, never rounded to an integer as ONNX Runtime's asymmetric RTN rounds it. Weights that
are themselves a dequantized Q4_1 GGUF (SmolLM2's "float" model) come back exactly: their
blocks' minimum is ``m`` and their maximum ``m + 15 d``, so :func:`quantize_blocks` finds the
file's own ``q``, ``d`` and ``m``.

MatMulNBits takes float zero points, but ONNX Runtime's CPU kernel has no fast path for
them (it dequantizes the whole weight on every call: 1.6 ms for one token of a 576x1536
MatMul here, against 0.02-0.1 ms with integer zero points; ``bench_generate.py --kernel``).
So the offset is taken out of the 4-bit product, exactly::

    x @ W = MatMulNBits(x, q, scales=d, zero_points=0) + blocksum(x) @ M

where ``blocksum(x)`` sums x over each block of the input dimension (a MatMul with a
constant ``[K, K/block]`` matrix of ones, shared by every MatMul reading the same ``x``)
and ``M`` is the ``[K/block, N]`` float32 matrix of the blocks' ``m``. MatMulNBits keeps
MLAS's integer kernels (``accuracy_level`` 4 quantizes ``x`` to int8 in the first term only);
the offset costs one float32 per block, about one bit per weight, beside the scale's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeinfer.optimize.errors import NotApplicable

__all__ = ["apply", "dequantize", "quantize_blocks"]


def quantize_blocks(w: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``w`` ``[K, N]`` as ``q`` (uint8 ``[N, K/block, block]``, 0..15), ``d`` and ``m``
    (float32 ``[N, K/block]``), so that ``w[k, n] = d * q + m`` within each block. A last
    partial block is padded with its own last weight (which changes neither its minimum
    nor its maximum); MatMulNBits never reads the padding."""
    k, n = w.shape
    blocks = -(-k // block)
    wt = np.asarray(w, np.float32).T  # [N, K]
    if blocks * block != k:
        wt = np.pad(wt, ((0, 0), (0, blocks * block - k)), mode="edge")
    b = wt.reshape(n, blocks, block)
    lo, hi = b.min(axis=2), b.max(axis=2)
    d = ((hi - lo) / np.float32(15.0)).astype(np.float32)
    safe = np.where(d > 0, d, np.float32(1.0))
    q = np.rint((b - lo[:, :, None]) / safe[:, :, None])
    q = np.where(d[:, :, None] > 0, q, 0.0).clip(0, 15).astype(np.uint8)
    return q, d, lo.astype(np.float32)


def dequantize(q: np.ndarray, d: np.ndarray, m: np.ndarray, k: int) -> np.ndarray:
    """The ``[K, N]`` float32 weight that ``q``, ``d``, ``m`` stand for."""
    w = q.astype(np.float32) * d[:, :, None] + m[:, :, None]
    return np.ascontiguousarray(w.reshape(w.shape[0], -1)[:, :k].T)


def _pack(q: np.ndarray) -> np.ndarray:
    """Two 4-bit values a byte, low nibble first, as MatMulNBits reads ``B``."""
    if q.shape[2] % 2:
        q = np.pad(q, ((0, 0), (0, 0), (0, 1)))
    packed: np.ndarray = (q[:, :, 0::2] | (q[:, :, 1::2] << 4)).astype(np.uint8)
    return packed


def apply(model: Any, names: list[str], block: int, accuracy_level: int) -> tuple[Any, list[str]]:
    """Rewrite the MatMul nodes ``names`` of ``model`` (an ONNX ModelProto, changed in
    place) as MatMulNBits plus the offset term; return it and the names of the float
    MatMuls added (the block sums and the offsets), which later passes must leave alone."""
    from onnx import TensorProto, helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node if n.op_type == "MatMul"}
    other = sorted(
        {
            TensorProto.DataType.Name(inits[nodes[name].input[1]].data_type).lower()
            for name in names
            if inits[nodes[name].input[1]].data_type != TensorProto.FLOAT
        }
    )
    if other:  # MatMulNBits' scales and offsets take the activations' type
        raise NotApplicable(
            f"rtn-asymf quantizes float32 weights; this model's MatMuls have {', '.join(other)}"
        )
    users: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    wanted = set(names)
    ones: dict[int, str] = {}  # K -> the [K, blocks] block-sum matrix
    sums: dict[str, str] = {}  # x -> blocksum(x)
    added: list[str] = []
    new_nodes: list[Any] = []
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.name not in wanted:
            new_nodes.append(node)
            continue
        x, wname = node.input[0], node.input[1]
        w = numpy_helper.to_array(inits[wname])
        k, n = w.shape
        blocks = -(-k // block)
        q, d, m = quantize_blocks(w, block)
        base = node.name.replace("/", "_").strip("_") or wname
        packed = numpy_helper.from_array(_pack(q), f"{base}.q4")
        scales = numpy_helper.from_array(d.reshape(-1), f"{base}.scales")
        zeros = numpy_helper.from_array(np.zeros(n * -(-blocks // 2), np.uint8), f"{base}.zp0")
        offsets = numpy_helper.from_array(np.ascontiguousarray(m.T), f"{base}.offsets")
        model.graph.initializer.extend([packed, scales, zeros, offsets])
        if k not in ones:
            e = np.zeros((k, blocks), np.float32)
            e[np.arange(k), np.arange(k) // block] = 1.0
            ones[k] = f"blocksum_ones_k{k}_b{block}"
            model.graph.initializer.append(numpy_helper.from_array(e, ones[k]))
        if x not in sums:
            sums[x] = f"{x}/blocksum_b{block}"
            name = f"{node.name}/blocksum"
            new_nodes.append(helper.make_node("MatMul", [x, ones[k]], [sums[x]], name=name))
            added.append(name)
        y = node.output[0]
        new_nodes.append(
            helper.make_node(
                "MatMulNBits",
                [x, packed.name, scales.name, zeros.name],
                [f"{y}/q4"],
                name=f"{node.name}_Q4",
                domain="com.microsoft",
                K=k,
                N=n,
                bits=4,
                block_size=block,
                accuracy_level=accuracy_level,
            )
        )
        offset = f"{node.name}/offset"
        new_nodes.append(
            helper.make_node("MatMul", [sums[x], offsets.name], [f"{y}/offset"], name=offset)
        )
        added.append(offset)
        new_nodes.append(
            helper.make_node("Add", [f"{y}/q4", f"{y}/offset"], [y], name=f"{node.name}/add")
        )
        users[wname] -= 1
        if users[wname] == 0:
            model.graph.initializer.remove(inits[wname])
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model, added
