"""Errors of the optimization step.

``OptimizeError`` hangs under the root of edgeinfer's error tree::

    EdgeInferError
    └── OptimizeError   a pass could not transform a model (the tool's own exception is
        │               kept as ``__cause__``), or a search could not run
        └── NotApplicable  a pass has nothing to do on this model (no operator it
                           handles); a search lists the candidate as skipped, with why

Bad user input (data that does not fit the model, unknown metrics or pass options) is an
``InputError``, as everywhere in edgeinfer.
"""

from __future__ import annotations

from edgeinfer.errors import EdgeInferError

__all__ = ["NotApplicable", "OptimizeError"]


class OptimizeError(EdgeInferError):
    """An optimization pass or search failed; the underlying exception is the cause."""


class NotApplicable(OptimizeError):
    """A pass has nothing to do on this model; the message says why."""
