"""The serve demo stage, on the real digits bundle."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from edgeinfer.demo import STAGES, DemoContext

pytestmark = pytest.mark.slow


def test_serve_stage(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from edgeinfer.demo import serve as stage
    from edgeinfer.zoo import digits

    assert "edgeinfer.demo.serve" in STAGES
    console = Console(record=True, width=120)
    ctx = DemoContext(console, tmp_path, fast=True)
    bundle = digits.build(tmp_path / "bundles" / "digits-cnn")
    _, _, x_test, y_test = digits.load_data()
    ctx.artifacts.update(digits_bundle=bundle.path, digits_data=(x_test, y_test))
    stage.run(ctx)
    text = console.export_text()
    for row in ("REST, JSON tensors", "REST, binary tensors", "gRPC, raw tensors"):
        assert row in text
    assert ctx.artifacts["serve_repository"].is_dir()
