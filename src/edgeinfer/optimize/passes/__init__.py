"""Optimization passes: one module per pass, one contract for all.

Each pass module has a frozen dataclass config and ``run(model, config, out_path) ->
PassResult`` (model in, config, model out). :data:`PASSES` names them;
:func:`get_pass` returns a pass's config class and ``run`` function, and
:func:`make_config` builds a config from options, refusing unknown names.

=============  ==================================================================
``graph``      transformer fusions, ONNX Runtime offline optimization, shape inference
``dynamic_int8``  INT8 weights, activations quantized at run time
``static_int8``   INT8 weights and activations (QDQ), calibrated on real inputs
``sensitivity``   quantize, find the nodes that add the most error, keep them in float
``fp16``       float16 weights and compute, float32 inputs/outputs (GPU/NPU providers)
``prune``      magnitude pruning (and structured channel pruning of PyTorch modules)
``distill``    train a smaller PyTorch student on a teacher's outputs
``compact``    short internal names, no doc strings (matters for tiny models)
=============  ==================================================================
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from edgeinfer.errors import InputError
from edgeinfer.optimize.passes.base import PassResult, config_from_options

__all__ = ["PASSES", "PassResult", "get_pass", "make_config", "run_pass"]

PASSES: dict[str, tuple[str, str]] = {
    "graph": ("edgeinfer.optimize.passes.graph", "GraphConfig"),
    "dynamic_int8": ("edgeinfer.optimize.passes.dynamic_int8", "DynamicInt8Config"),
    "static_int8": ("edgeinfer.optimize.passes.static_int8", "StaticInt8Config"),
    "sensitivity": ("edgeinfer.optimize.passes.sensitivity", "SensitivityConfig"),
    "fp16": ("edgeinfer.optimize.passes.fp16", "Fp16Config"),
    "prune": ("edgeinfer.optimize.passes.prune", "PruneConfig"),
    "distill": ("edgeinfer.optimize.passes.distill", "DistillConfig"),
    "compact": ("edgeinfer.optimize.passes.compact", "CompactConfig"),
}


def get_pass(name: str) -> tuple[type[Any], Callable[[Path, Any, Path], PassResult]]:
    """``(ConfigClass, run)`` of the pass called ``name``."""
    try:
        module_name, config_name = PASSES[name]
    except KeyError:
        raise InputError(
            f"unknown pass {name!r}; expected one of {', '.join(sorted(PASSES))}"
        ) from None
    module = importlib.import_module(module_name)
    return getattr(module, config_name), module.run


def make_config(name: str, options: Mapping[str, Any] | None = None) -> Any:
    """The config of pass ``name`` from ``options``; unknown options are an InputError."""
    cls, _ = get_pass(name)
    return config_from_options(cls, dict(options or {}), name)


def run_pass(name: str, model: Path, config: Any, out_path: Path) -> PassResult:
    """Run pass ``name`` (its config must be of the pass's config class)."""
    cls, run = get_pass(name)
    if not isinstance(config, cls):
        raise InputError(f"pass {name!r} takes a {cls.__name__}, got a {type(config).__name__}")
    return run(Path(model), config, Path(out_path))
