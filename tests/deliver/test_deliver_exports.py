"""edgeinfer.deliver's public face and its branch of the error tree."""

from __future__ import annotations

import edgeinfer.deliver as deliver
from edgeinfer.deliver import errors
from edgeinfer.errors import EdgeInferError


def test_all_is_sorted_and_importable() -> None:
    names = list(deliver.__all__)
    assert names == sorted(names)
    for name in names:
        assert hasattr(deliver, name), name


def test_error_branch_is_drawn_and_rooted() -> None:
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.DeliverError) and issubclass(cls, EdgeInferError)
        assert name in (errors.__doc__ or ""), f"{name} is not drawn in the docstring"
