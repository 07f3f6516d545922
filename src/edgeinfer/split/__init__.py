"""Split computing: run the first layers of a model on the device and the rest on an edge
server, at the cut the network favors.

:func:`cut_points` lists where a graph can be cut, :func:`extract` writes the head and
tail models of a cut, :mod:`~edgeinfer.split.compress` shrinks the tensors that cross,
:func:`profile_cuts` measures each cut, :func:`plan` picks one for the current network
estimates, :func:`write_split` packages head and tail bundles with the profile (what
``edgeinfer split`` does), :class:`SplitModel` runs one cut against a server,
:class:`AdaptiveSplit` re-plans every request from live estimates, and :class:`SplitSet`
/ :func:`split_options` give the offloader its split placements.

>>> cuts = split.cut_points("digits.onnx")                            # doctest: +SKIP
>>> head, tail = split.extract("digits.onnx", cuts[3], "out/cut-3")   # doctest: +SKIP
"""

from edgeinfer.split.adaptive import AdaptiveResult, AdaptiveSplit, LinkLearner
from edgeinfer.split.extract import SplitFiles, extract
from edgeinfer.split.graph import Cut, CutTensor, cut_points, input_dims, select_cuts
from edgeinfer.split.package import SplitPackage, write_split
from edgeinfer.split.placements import SplitSet, estimates_from, split_options
from edgeinfer.split.planner import CutCost, Energy, Estimates, Plan, cut_cost, plan
from edgeinfer.split.profile import CutProfile, SplitProfile, profile_cuts
from edgeinfer.split.runner import SplitModel, SplitResult

__all__ = [
    "AdaptiveResult",
    "AdaptiveSplit",
    "Cut",
    "CutCost",
    "CutProfile",
    "CutTensor",
    "Energy",
    "Estimates",
    "LinkLearner",
    "Plan",
    "SplitFiles",
    "SplitModel",
    "SplitPackage",
    "SplitProfile",
    "SplitResult",
    "SplitSet",
    "cut_cost",
    "cut_points",
    "estimates_from",
    "extract",
    "input_dims",
    "plan",
    "profile_cuts",
    "select_cuts",
    "split_options",
    "write_split",
]
