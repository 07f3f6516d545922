"""The public face: __all__ is sorted and every name in it imports (as httpx checks)."""

from __future__ import annotations

import edgeinfer
from edgeinfer import errors


def test_all_is_sorted_and_importable() -> None:
    names = list(edgeinfer.__all__)
    assert names == sorted(names)
    for name in names:
        assert hasattr(edgeinfer, name), name


def test_error_tree() -> None:
    root = errors.EdgeInferError
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, root)
        assert name in (errors.__doc__ or ""), f"{name} is not drawn in the errors docstring"
    assert issubclass(errors.InputError, ValueError)
    assert issubclass(errors.ProviderError, errors.BackendError)
    assert issubclass(errors.MissingDependencyError, ImportError)
    err = errors.MissingDependencyError("torch", "torch", "Exporting PyTorch models")
    assert "pip install 'edgeinfer[torch]'" in str(err)


def test_core_import_stays_light() -> None:
    """`import edgeinfer` must work on the core install: no extras imported eagerly."""
    import subprocess
    import sys

    code = (
        "import sys, edgeinfer; "
        "heavy = [m for m in ('torch', 'httpx', 'grpc', 'tuf', 'sklearn', 'ai_edge_litert', "
        "'starlette', 'ray', 'transformers') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
