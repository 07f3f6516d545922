"""``Model``: the one way edgeinfer runs a model on this device.

``load(path)`` opens a bundle (verifying it) or a bare model file and picks the backend by
format: ONNX Runtime for ``.onnx``, LiteRT for ``.tflite``. ``Model.predict`` validates and
converts inputs (:class:`~edgeinfer.tensors.InputValidator`), runs the backend and returns
a dict name -> array. It is safe to call from many threads at once.

>>> model = edgeinfer.load("bundles/digits-cnn", threads=2)   # doctest: +SKIP
>>> model.predict(x_test[:4])["logits"].argmax(1)            # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from edgeinfer.errors import BackendError, BundleError, InputError
from edgeinfer.manifest import MANIFEST_FILE, MODEL_FORMATS
from edgeinfer.runtime.backends import backend_for
from edgeinfer.runtime.base import Backend
from edgeinfer.runtime.bundle import Bundle
from edgeinfer.tensors import InputValidator, TensorSpec

__all__ = ["Model", "backend_for", "dim_name", "load", "sample_shapes"]

_CHECKED = 64  # input shapes a one-input model remembers as valid
_ndarray = np.ndarray


def dim_name(spec: TensorSpec, axis: int) -> str:
    """How ``--dim`` names one dynamic axis: its symbol, else ``INPUT.AXIS`` (``x.2``)."""
    d = spec.shape[axis] if spec.shape is not None else None
    return d if isinstance(d, str) else f"{spec.name}.{axis}"


def sample_shapes(
    specs: Sequence[TensorSpec],
    batch: int = 1,
    dims: Mapping[str, int] | None = None,
    *,
    strict: bool = False,
) -> dict[str, tuple[int, ...]]:
    """Concrete shapes for a signature: fixed dims as declared, dynamic ones chosen.

    ``dims`` names a size by symbol (``{"sequence": 128}``) or by ``INPUT.AXIS`` for an
    unnamed dim (``{"x.2": 48}``). A dynamic first axis not named there is the batch axis
    and takes ``batch``. Any other dynamic dim takes 1, unless ``strict``: then an
    :class:`InputError` lists every dim that needs a size (a benchmark of a 1-pixel image
    measures nothing a user runs), and names in ``dims`` the model lacks are refused.
    """
    given = dict(dims or {})
    symbols = {d for s in specs for d in (s.shape or ()) if isinstance(d, str)}
    axes = {f"{s.name}.{i}" for s in specs for i in range(len(s.shape or ()))}
    unknown = [k for k in given if k not in symbols and k not in axes]
    if unknown and strict:
        dynamic = [
            dim_name(s, i)
            for s in specs
            for i, d in enumerate(s.shape or ())
            if not isinstance(d, int)
        ]
        raise InputError(
            f"unknown dimension(s) {', '.join(map(repr, unknown))}; this model's dynamic "
            f"dimensions are {', '.join(dict.fromkeys(dynamic)) or '(none)'}"
        )
    sizes: dict[str, int] = {}  # symbol -> size, so one symbol has one size everywhere
    missing: list[str] = []
    shapes: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        if spec.shape is None:
            if strict:
                missing.append(f"{spec.name} (rank unknown)")
            shapes[spec.name] = (batch,)
            continue
        shape = []
        for axis, d in enumerate(spec.shape):
            key = f"{spec.name}.{axis}"
            if isinstance(d, int):
                size = d
            elif key in given:
                size = given[key]
            elif isinstance(d, str) and d in given:
                size = given[d]
            elif isinstance(d, str) and d in sizes:
                size = sizes[d]
            elif axis == 0:
                size = batch
            else:
                if strict and dim_name(spec, axis) not in missing:
                    missing.append(dim_name(spec, axis))
                size = 1
            if isinstance(d, str):
                sizes.setdefault(d, size)
            shape.append(size)
        shapes[spec.name] = tuple(shape)
    if missing:
        example = ",".join(f"{m}=N" for m in missing if " " not in m) or "NAME=N"
        raise InputError(
            f"no size for dynamic dimension(s) {', '.join(missing)}; give each a size "
            f"(--dim {example}, or dims= from Python) or time real inputs (--input FILE)"
        )
    return shapes


class Model:
    """A loaded model: validated inputs in, a dict of named outputs out."""

    def __init__(self, backend: Backend, bundle: Bundle | None = None) -> None:
        self.backend = backend
        self.bundle = bundle
        self._validate = InputValidator(backend.inputs)
        self._output_names = tuple(s.name for s in backend.outputs)
        self._output_set = frozenset(self._output_names)
        # The fast path of a one-input model whose backend has run_one (LiteRT). An array
        # of the exact dtype goes straight to a backend that checks its shape itself
        # (run_one returns None for one it refuses; the validator then says why). For
        # other backends the validator's checks are a function of an array's type, dtype,
        # shape and contiguity, so a C-contiguous array of a shape that passed them once
        # goes straight through (bounded: a model with dynamic dims sees many shapes).
        # The backend rebuilds run_one when its interpreter changes: looked up per call.
        fast = len(backend.inputs) == 1 and hasattr(backend, "run_one")
        self._fast: Any = backend if fast else None
        self._shape_checked = bool(getattr(backend, "run_one_checks_shape", False))
        self._in0 = backend.inputs[0].name if backend.inputs else ""
        self._dtype0 = backend.inputs[0].dt.numpy if backend.inputs else None
        self._checked: set[tuple[int, ...]] = set()

    def __repr__(self) -> str:
        sig = ", ".join(f"{s.name}: {s.describe()}" for s in self.inputs)
        return f"Model({self.name!r}, backend={self.backend.name}, inputs=({sig}))"

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def name(self) -> str:
        if self.bundle is not None:
            return self.bundle.name
        return Path(getattr(self.backend, "path", "model")).stem

    @property
    def version(self) -> int | None:
        return None if self.bundle is None else self.bundle.version

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self.backend.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self.backend.outputs

    @property
    def providers(self) -> tuple[str, ...]:
        """What actually runs the model, best first (e.g. ``('CPUExecutionProvider',)``)."""
        return self.backend.providers

    def validate(self, inputs: Any) -> dict[str, np.ndarray]:
        """Check and convert inputs as ``predict`` would, without running the model."""
        return self._validate(inputs)

    def predict(self, inputs: Any, outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run the model.

        ``inputs``: a dict name -> array-like, or one array-like for a one-input model.
        ``outputs``: the output names wanted (default: all). Raises :class:`InputError`
        for inputs that do not fit the model and ``BackendError`` if the runtime fails.
        """
        fast = self._fast
        if fast is None:
            feeds = self._validate(inputs)
            names = self._output_names if outputs is None else self._wanted(outputs)
            return dict(zip(names, self.backend.run(feeds, names), strict=True))
        if outputs is not None:  # the runtime computes every output anyway
            wanted = self._wanted(outputs)
            every = self.predict(inputs)
            return {n: every[n] for n in wanted}
        x: Any
        if type(inputs) is _ndarray:
            x = inputs
        elif type(inputs) is dict and len(inputs) == 1:
            x = inputs.get(self._in0)
        else:
            x = None
        if (
            type(x) is _ndarray
            and x.dtype is self._dtype0
            and (self._shape_checked or (x.shape in self._checked and x.flags.c_contiguous))
        ):
            out = fast.run_one(x)
            if out is not None:
                return out  # type: ignore[no-any-return]
        feeds = self._validate(inputs)
        value = feeds[self._in0]
        checked = self._checked
        if not self._shape_checked and value.dtype is self._dtype0 and len(checked) < _CHECKED:
            checked.add(value.shape)
        out = fast.run_one(value)
        if out is None:
            raise BackendError(
                f"{self.name}: the runtime refused input {self._in0!r} "
                f"{list(value.shape)} that the model's signature accepts"
            )
        return out  # type: ignore[no-any-return]

    def _wanted(self, outputs: Sequence[str]) -> tuple[str, ...]:
        names = tuple(outputs)
        unknown = [n for n in names if n not in self._output_set]
        if unknown:
            raise InputError(
                f"unknown output(s) {', '.join(map(repr, unknown))}; the model has "
                f"{', '.join(map(repr, self._output_names))}"
            )
        return names

    def sample_inputs(
        self,
        batch: int = 1,
        dims: Mapping[str, int] | None = None,
        seed: int = 0,
        *,
        strict: bool = False,
    ) -> dict[str, np.ndarray]:
        """Random inputs that fit the signature (for warm-up and benchmarks).

        Sizes come from :func:`sample_shapes` (``strict``: refuse to guess a dynamic dim
        other than the batch axis). Inputs named like a mask are all ones, token-type inputs
        zeros, other integer inputs small ids. An integer scalar (a sample rate, a count, a
        mode) has no random value worth timing: with ``strict`` it is taken from the
        bundle's golden sample, and without one it is an :class:`InputError`.
        """
        rng = np.random.default_rng(seed)
        shapes = sample_shapes(self.inputs, batch, dims, strict=strict)
        out = {}
        for spec in self.inputs:
            shape = shapes[spec.name]
            dt = spec.dt.numpy
            if spec.dtype == "bytes":
                out[spec.name] = np.full(shape, b"edgeinfer", dtype=object)
            elif "mask" in spec.name.lower():
                out[spec.name] = np.ones(shape, dtype=dt)
            elif "type" in spec.name.lower() or "segment" in spec.name.lower():
                out[spec.name] = np.zeros(shape, dtype=dt)  # token_type_ids: segment 0
            elif dt.kind == "f":
                out[spec.name] = rng.standard_normal(shape).astype(dt)
            elif dt.kind == "b":
                out[spec.name] = rng.integers(0, 2, shape).astype(dt)
            elif dt.kind in "iu" and shape == () and strict:
                out[spec.name] = self._known_scalar(spec)
            elif dt.kind in "iu":
                info = np.iinfo(dt)
                lo = max(info.min, 0)
                out[spec.name] = rng.integers(lo, min(info.max, lo + 100), shape).astype(dt)
        return out

    def _known_scalar(self, spec: TensorSpec) -> np.ndarray:
        golden = self.bundle.golden() if self.bundle is not None else None
        if golden is not None and spec.name in golden.inputs:
            value = np.asarray(golden.inputs[spec.name])
            if value.shape == ():
                return value.astype(spec.dt.numpy)
        raise InputError(
            f"input {spec.name!r} is an integer scalar whose valid values cannot be guessed; "
            "time real inputs with --input FILE (inputs= from Python)"
        )

    def warmup(self, runs: int = 1) -> None:
        """Run the model on sample inputs so the first real call does not pay for setup."""
        feeds = self.sample_inputs()
        for _ in range(runs):
            self.predict(feeds)

    def close(self) -> None:
        self.backend.close()


# Bundle kinds a pillar above the runtime runs, imported by name on first use: the runtime
# opens and verifies every bundle but must not import the pillars (ADR 0012).
KIND_OPENERS: dict[str, str] = {"generative": "edgeinfer.generate.model:open_generative"}


def load(
    path: str | os.PathLike[str],
    *,
    providers: str | Sequence[str] | None = "auto",
    threads: int | None = None,
    fallback: bool = False,
    **options: Any,
) -> Model:
    """Load a bundle directory, a packed bundle ``.tar``, or a bare ``.onnx``/``.tflite`` file.

    A bundle's hashes are verified and its manifest's signature and labels are compared
    with the model's (:meth:`~edgeinfer.manifest.Manifest.signature_mismatches`): a
    disagreement is a :class:`~edgeinfer.errors.BundleError` naming it.

    ``providers``: ``"auto"`` (best available accelerator, then CPU), or an explicit list
    such as ``["cuda", "cpu"]``; an unavailable provider is an error unless ``fallback``.
    ``threads``: intra-op threads (``None``: the runtime's default).
    Further ``options`` go to the backend (``graph_optimization``, ``spinning``).

    A bundle of kind ``"generative"`` (a language model) opens as
    :class:`edgeinfer.generate.GenerativeModel` (``generate``, ``stream``), not as a
    ``Model``; it needs the ``generate`` extra.
    """
    p = Path(path)
    bundle = None
    if p.is_file() and p.suffix.lower() in MODEL_FORMATS:
        model_file = p  # a bare model: nothing to verify against, load it directly
    else:
        bundle = Bundle.open(p)
        model_file = bundle.model_path
        opener = KIND_OPENERS.get(bundle.manifest.kind)
        if opener is not None:
            module, _, func = opener.partition(":")
            open_kind = getattr(importlib.import_module(module), func)
            # Typed as Model for the many callers of predictive bundles; a generative
            # bundle's caller asked for one (edgeinfer.generate.load types it exactly).
            return cast(Model, open_kind(bundle, providers=providers, threads=threads, **options))
    backend = backend_for(
        model_file, providers=providers, threads=threads, fallback=fallback, **options
    )
    if bundle is not None:
        # A manifest edited by hand can promise a signature the model does not have.
        problems = bundle.manifest.signature_mismatches(backend.inputs, backend.outputs)
        if problems:
            backend.close()
            raise BundleError(
                f"{bundle.path}: {MANIFEST_FILE} does not match {bundle.manifest.model.file}: "
                + "; ".join(problems)
            )
    return Model(backend, bundle)
