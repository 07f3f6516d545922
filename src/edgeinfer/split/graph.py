"""Cut points of an ONNX graph: where a model can be split into a head and a tail.

Split computing runs the first part of a model (the *head*) on the device and the rest (the
*tail*) on an edge server; only the tensors that cross the cut travel. Nodes are taken in a
topological order (the file's own order when it is one). A *position* ``p`` puts the first
``p`` nodes in the head; the tensors crossing it are those produced before ``p`` and used at
or after ``p`` (or being model outputs), plus the model inputs still needed later (the
attention mask of a transformer, say). Initializers never cross: each side has its own.

Two refinements keep the crossing sets few and small:

* *Rematerialization*: a tensor computed only by cheap shape/elementwise operators from
  model inputs and constants (an extended attention mask, a reshape target) is recomputed
  in the tail from the inputs it derives from instead of being sent, when those inputs
  cost no more bytes (nothing, if they cross anyway).
* Positions with the same crossing set give the same head and tail: only the first is kept.

Position 0 (everything on the server: the raw inputs cross) and the last position
(everything on the device: the outputs "cross", nothing is sent) are always cuts; in
between, a position is a cut when at most ``max_tensors`` tensors cross it.

Sizes come from shape inference with the batch at 1 (and 2, to tell batched tensors from
per-request shape tensors) and the other dynamic dimensions at the given ``dims`` (and
doubled, to find the axes that follow them); what inference cannot resolve is measured
by one ONNX Runtime run on sample inputs. A crossing tensor is declared with the inputs'
symbols where its axes follow them (``["batch", "sequence", 384]``), dynamic where they
follow a dynamic input dimension otherwise (a conv feature map's width in a model that
takes any image width) and with the measured size elsewhere: the halves take every size
the whole model takes, and ``dims`` only sizes the bytes in the profile.

>>> cuts = cut_points("digits.onnx")                                      # doctest: +SKIP
>>> [(c.index, c.tensors, c.bytes_per_sample) for c in cuts][:2]          # doctest: +SKIP
[(0, ('pixels',), 256), (1, ('/conv1/Conv_output_0',), 4096)]
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeinfer.errors import InputError
from edgeinfer.split._inputs import dims_from_inputs
from edgeinfer.split._shapes import TensorInfo, tensor_infos
from edgeinfer.split._sort import node_inputs, topological_nodes

if TYPE_CHECKING:
    import onnx

__all__ = [
    "CHEAP_OPS",
    "DEFAULT_MAX_TENSORS",
    "Cut",
    "CutTensor",
    "GraphIndex",
    "cut_points",
    "input_dims",
    "load_model",
    "select_cuts",
]

DEFAULT_MAX_TENSORS = 4  # tensors allowed to cross an interior cut

# Operators cheap enough to recompute in the tail rather than send what they produce.
CHEAP_OPS = frozenset(
    {
        "Abs", "Add", "And", "Cast", "CastLike", "Ceil", "Clip", "Concat", "Constant",
        "ConstantOfShape", "Div", "Equal", "Expand", "Flatten", "Floor", "Gather",
        "GatherElements", "GatherND", "Greater", "GreaterOrEqual", "Identity", "Less",
        "LessOrEqual", "Max", "Min", "Mod", "Mul", "Neg", "Not", "Or", "Range",
        "Reciprocal", "Reshape", "Shape", "Size", "Slice", "Sqrt", "Squeeze", "Sub",
        "Tile", "Transpose", "Unsqueeze", "Where", "Xor",
    }
)  # fmt: skip


@dataclass(frozen=True)
class CutTensor:
    """One tensor crossing a cut."""

    name: str
    dtype: str  # numpy-style name, e.g. "float32"
    shape: tuple[int | str | None, ...] | None  # input symbols where axes follow them
    bytes_per_sample: int  # at batch 1 (and the given sizes for other dynamic dims)
    batched: bool  # grows with the batch size (False: a per-request shape tensor)


@dataclass(frozen=True)
class Cut:
    """A place to split a model: the first ``position`` nodes run on the device."""

    index: int  # position of this cut in the list ``cut_points`` returns
    position: int  # nodes (in topological order) in the head
    total_nodes: int  # nodes in the whole graph
    crossing: tuple[CutTensor, ...]

    @property
    def tensors(self) -> tuple[str, ...]:
        """Names of the tensors that cross the cut (head outputs = tail inputs)."""
        return tuple(t.name for t in self.crossing)

    @property
    def bytes_per_sample(self) -> int:
        """Bytes that cross the cut per sample, uncompressed."""
        return sum(t.bytes_per_sample for t in self.crossing)

    @property
    def is_remote_only(self) -> bool:
        """Nothing runs on the device: the raw inputs are sent."""
        return self.position == 0

    @property
    def is_local_only(self) -> bool:
        """Everything runs on the device: nothing is sent."""
        return self.position == self.total_nodes

    @property
    def kind(self) -> str:
        """``"remote"``, ``"local"`` or ``"split"``."""
        if self.is_remote_only:
            return "remote"
        return "local" if self.is_local_only else "split"

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "position": self.position,
            "total_nodes": self.total_nodes,
            "tensors": [
                {
                    "name": t.name,
                    "dtype": t.dtype,
                    "shape": None if t.shape is None else list(t.shape),
                    "bytes_per_sample": t.bytes_per_sample,
                    "batched": t.batched,
                }
                for t in self.crossing
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Cut:
        """Inverse of :meth:`to_dict`; raises ``KeyError``/``TypeError`` on bad data."""
        crossing = tuple(
            CutTensor(
                str(t["name"]),
                str(t["dtype"]),
                None if t["shape"] is None else tuple(t["shape"]),
                int(t["bytes_per_sample"]),
                bool(t["batched"]),
            )
            for t in data["tensors"]
        )
        return cls(int(data["index"]), int(data["position"]), int(data["total_nodes"]), crossing)


# Formats people hand to ``split`` by mistake, and the way each reaches ONNX.
_OTHER_FORMATS = {
    ".tflite": "a TFLite model (convert it to ONNX with tf2onnx first)",
    ".lite": "a TFLite model (convert it to ONNX with tf2onnx first)",
    ".pb": "a TensorFlow graph (convert it to ONNX with tf2onnx first)",
    ".h5": "a Keras model (convert it to ONNX with tf2onnx first)",
    ".keras": "a Keras model (convert it to ONNX with tf2onnx first)",
    ".pt": "a PyTorch file (export the model to ONNX with torch.onnx.export first)",
    ".pth": "a PyTorch file (export the model to ONNX with torch.onnx.export first)",
    ".pdmodel": "a PaddlePaddle model (convert it to ONNX with paddle2onnx first)",
    ".mlmodel": "a Core ML model (split needs the ONNX model it came from)",
    ".gguf": "a GGUF language model (split needs an ONNX export of it)",
    ".safetensors": "a safetensors weights file, no graph (export the model to ONNX first)",
}


def _other_format(path: Path) -> str | None:
    """What a known non-ONNX model file is (by suffix, or a TFLite file by its
    ``TFL3`` identifier whatever its name), or None."""
    found = _OTHER_FORMATS.get(path.suffix.lower())
    if found is not None:
        return found
    try:
        with path.open("rb") as f:
            head = f.read(8)
    except OSError:
        return None
    return _OTHER_FORMATS[".tflite"] if head[4:8] == b"TFL3" else None


def require_onnx(path: str | os.PathLike[str]) -> None:
    """Raise ``BundleError`` saying what a known non-ONNX model file is and how to get
    its ONNX form, rather than failing to decode it as a protobuf."""
    from edgeinfer.errors import BundleError

    other = _other_format(Path(path))
    if other is not None:
        raise BundleError(f"{path}: split works on ONNX models; this is {other}")


def load_model(path: str | os.PathLike[str], *, weights: bool = True) -> onnx.ModelProto:
    """Read an ONNX file (with its external data), or raise ``BundleError`` saying why not."""
    import onnx

    from edgeinfer.errors import BundleError

    p = Path(path)
    if not p.is_file():
        raise BundleError(f"{p}: no such ONNX model file")
    require_onnx(p)
    try:
        model = onnx.load(str(p), load_external_data=weights)
    except Exception as exc:  # protobuf's DecodeError, missing external data, ...
        if type(exc).__name__ == "DecodeError":
            raise BundleError(f"{p}: not an ONNX model (protobuf decode failed)") from None
        raise BundleError(
            f"{p}: could not read the ONNX model or its external data ({exc})"
        ) from exc
    if not model.graph.output or not model.opset_import:
        raise BundleError(f"{p}: not an ONNX model (no graph outputs or no opset import)")
    return model


class GraphIndex:
    """Who produces and who uses each tensor, over a topological order of the nodes."""

    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        self.model = model
        self.nodes = topological_nodes(g)
        self.initializers = {t.name for t in g.initializer} | {
            t.values.name for t in g.sparse_initializer
        }
        self.inputs = [i.name for i in g.input if i.name not in self.initializers]
        self.outputs = [o.name for o in g.output]
        self.producer: dict[str, int] = {}
        end = len(self.nodes)
        self.last_use: dict[str, int] = {}
        for i, node in enumerate(self.nodes):
            for t in node_inputs(node):
                self.last_use[t] = i
            for t in node.output:
                if t:
                    self.producer[t] = i
        for t in self.outputs:
            self.last_use[t] = end
        self._sources: dict[str, frozenset[str] | None] = {}

    def base_crossing(self) -> list[list[str]]:
        """For every position 0..n, the tensors crossing it before rematerialization."""
        n = len(self.nodes)
        live: dict[str, None] = {}  # insertion-ordered set of produced, still-needed tensors
        result = []
        for p in range(n + 1):
            if p > 0:
                for t in self.nodes[p - 1].output:
                    if t and self.last_use.get(t, -1) >= p and t not in self.initializers:
                        live[t] = None
                for t in [t for t in live if self.last_use[t] < p]:
                    del live[t]
            needed = [t for t in self.inputs if self.last_use.get(t, -1) >= p]
            result.append(needed + list(live))
        return result

    def sources(self, tensor: str) -> frozenset[str] | None:
        """The model inputs ``tensor`` can be recomputed from with cheap operators only.

        ``None`` when it needs an expensive operator or a subgraph on its way.
        """
        if tensor in self._sources:
            return self._sources[tensor]
        stack = [tensor]
        while stack:  # iterative post-order: graphs can be deeper than Python's recursion
            t = stack[-1]
            if t in self._sources:
                stack.pop()
                continue
            if t in self.initializers or not t:
                self._sources[t] = frozenset()
                stack.pop()
                continue
            if t not in self.producer:
                self._sources[t] = frozenset({t}) if t in self.inputs else None
                stack.pop()
                continue
            node = self.nodes[self.producer[t]]
            if (
                node.op_type not in CHEAP_OPS
                or node.domain not in ("", "ai.onnx")
                or any(a.g.node or a.graphs for a in node.attribute)
            ):
                self._sources[t] = None
                stack.pop()
                continue
            pending = [i for i in node.input if i and i not in self._sources]
            if pending:
                stack.extend(pending)
                continue
            found: set[str] = set()
            result: frozenset[str] | None = None
            for i in node.input:
                src = self._sources[i] if i else frozenset()
                if src is None:
                    break
                found |= src
            else:
                result = frozenset(found)
            for out in node.output:
                self._sources[out] = result
            stack.pop()
        return self._sources[tensor]


def _rematerialize(
    graph: GraphIndex, crossing: list[str], info: Mapping[str, TensorInfo]
) -> list[str]:
    """Replace cheaply recomputable tensors by the model inputs they come from, where
    that sends no more bytes (largest first; inputs already crossing cost nothing)."""
    chosen = dict.fromkeys(crossing)
    changed = True
    while changed:
        changed = False
        candidates = [t for t in chosen if t not in graph.inputs]
        for t in sorted(candidates, key=lambda t: -info[t].bytes):
            src = graph.sources(t)
            if src is None:
                continue
            extra = [s for s in sorted(src) if s not in chosen]
            if sum(info[s].bytes for s in extra) <= info[t].bytes:
                del chosen[t]
                chosen.update(dict.fromkeys(extra))
                changed = True
                break
    ordered = [t for t in graph.inputs if t in chosen]
    return ordered + [t for t in crossing if t in chosen and t not in graph.inputs]


def cut_points(
    model_path: str | os.PathLike[str],
    *,
    dims: Mapping[str, int] | None = None,
    max_tensors: int = DEFAULT_MAX_TENSORS,
    inputs: Any = None,
) -> list[Cut]:
    """The cuts of an ONNX model, in topological order, from remote-only to local-only.

    ``dims`` sizes the dynamic dimensions other than the batch (``{"sequence": 128}``,
    ``{"height": 320, "width": 320}``, ``{"x.2": 48}`` for axis 2 of input ``x`` when it
    has no name; :func:`input_dims` reads them off real inputs); the batch (a dynamic
    first axis) is taken as 1, so ``bytes_per_sample`` is per sample. ``max_tensors``
    bounds the tensors crossing an interior cut. ``inputs`` (name -> array): real inputs,
    run where shape inference falls short instead of sample ones (a model may take only
    real values: a sample rate, token ids). Raises ``BundleError`` for a file that
    is not an ONNX model and :class:`InputError` for a dynamic dimension with no size.
    """
    if max_tensors < 1:
        raise InputError(f"max_tensors must be >= 1, got {max_tensors}")
    model = load_model(model_path)
    return cuts_of(model, dims=dims, max_tensors=max_tensors, where=str(model_path), inputs=inputs)


def input_dims(model_path: str | os.PathLike[str], inputs: Any) -> dict[str, int]:
    """The ``dims`` that real ``inputs`` (input name -> array, or one array) give the
    model's dynamic dimensions besides the batch, for :func:`cut_points` to size cuts as
    they will run.

    >>> input_dims("rec.onnx", {"x": np.zeros((1, 3, 48, 320), np.float32)})  # doctest: +SKIP
    {'x.2': 48, 'p2o.DynamicDimension.1': 320}
    """
    model = load_model(model_path, weights=False)
    return dims_from_inputs(model, inputs, where=str(model_path))


def cuts_of(
    model: onnx.ModelProto,
    *,
    dims: Mapping[str, int] | None = None,
    max_tensors: int = DEFAULT_MAX_TENSORS,
    where: str = "model",
    inputs: Any = None,
) -> list[Cut]:
    """:func:`cut_points` on a model already in memory (weights loaded)."""
    graph = GraphIndex(model)
    n = len(graph.nodes)
    base = graph.base_crossing()
    wanted = sorted({t for ts in base for t in ts} | set(graph.inputs), key=str)
    info = tensor_infos(model, wanted, dims or {}, where=where, inputs=inputs)
    cuts: list[Cut] = []
    seen: set[frozenset[str]] = set()
    for p, crossing in enumerate(base):
        names = crossing if p in (0, n) else _rematerialize(graph, crossing, info)
        key = frozenset(names)
        interior = 0 < p < n
        if interior and (len(names) > max_tensors or key in seen):
            continue
        seen.add(key)
        tensors = tuple(
            CutTensor(t, info[t].dtype, info[t].declared, info[t].bytes, info[t].batched)
            for t in names
        )
        cuts.append(Cut(len(cuts), p, n, tensors))
    return cuts


def select_cuts(cuts: Sequence[Cut], k: int) -> list[Cut]:
    """At most ``k`` (>= 2) of ``cuts``: both extremes, and the cheapest-to-send cut of each
    of ``k - 2`` equal stretches of the graph in between. Indices keep their values.
    """
    if k < 2:
        raise InputError(f"max cuts must be >= 2 (remote-only and local-only), got {k}")
    if len(cuts) <= k:
        return list(cuts)
    first, last, middle = cuts[0], cuts[-1], list(cuts[1:-1])
    picked: list[Cut] = []
    span = last.position - first.position
    for j in range(k - 2):
        lo = first.position + span * j / (k - 2)
        hi = first.position + span * (j + 1) / (k - 2)
        stretch = [c for c in middle if lo <= c.position < hi or (j == k - 3 and c.position == hi)]
        if stretch:
            picked.append(min(stretch, key=lambda c: (c.bytes_per_sample, c.position)))
    return [first, *sorted(set(picked), key=lambda c: c.position), last]
