"""Transformer fusion and quantization on a tiny BERT built in the test (no downloads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import edgeinfer
from edgeinfer.convert import torch_to_onnx
from edgeinfer.optimize.passes import run_pass
from edgeinfer.optimize.passes.dynamic_int8 import DynamicInt8Config
from edgeinfer.optimize.passes.graph import GraphConfig, detect_attention_shape
from edgeinfer.optimize.passes.sensitivity import SensitivityConfig

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

NAMES = ["input_ids", "attention_mask", "token_type_ids"]


class Pooled(torch.nn.Module):  # type: ignore[misc]
    def __init__(self, encoder: object) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: object, attention_mask: object, token_type_ids: object) -> object:
        hidden = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        return hidden.mean(dim=1)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=200,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
        attn_implementation="eager",
    )
    encoder = transformers.BertModel(config).eval()
    ids = torch.randint(1, 200, (2, 16))
    args = (ids, torch.ones_like(ids), torch.zeros_like(ids))
    path = tmp_path_factory.mktemp("bert") / "bert.onnx"
    axes = {n: {1: "sequence"} for n in NAMES}
    torch_to_onnx(
        Pooled(encoder),
        args,
        path,
        input_names=NAMES,
        output_names=["pooled"],
        dynamic_axes=axes,
    )
    return path


def _feeds(n: int = 4, seq: int = 16) -> dict[str, np.ndarray]:
    ids = np.random.default_rng(1).integers(1, 200, (n, seq)).astype(np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": 0 * ids}


@pytest.mark.slow
def test_bert_fusion_then_dynamic_int8(tiny_bert: Path, tmp_path: Path) -> None:
    assert detect_attention_shape(onnx.load(tiny_bert)) == (4, 64)
    fused = tmp_path / "fused.onnx"
    info = run_pass("graph", tiny_bert, GraphConfig(), fused).info
    assert info["fused"].get("Attention", 0) == 2
    assert "onnxruntime only" in info["runs_on"]
    feeds = _feeds()
    with edgeinfer.load(tiny_bert) as a, edgeinfer.load(fused) as b:
        want = a.predict(feeds)["pooled"]
        np.testing.assert_allclose(b.predict(feeds)["pooled"], want, atol=1e-4)
    quant = tmp_path / "q.onnx"
    qinfo = run_pass("dynamic_int8", fused, DynamicInt8Config(per_channel=True), quant).info
    assert qinfo["quantized_ops"].get("QAttention", 0) == 2
    sens = tmp_path / "sens.onnx"
    config = SensitivityConfig(quantization=DynamicInt8Config(), data=feeds, exclude=1)
    sinfo = run_pass("sensitivity", fused, config, sens).info
    assert len(sinfo["excluded"]) == 1
    with edgeinfer.load(sens) as model:
        got = model.predict(feeds)["pooled"]
    cos = np.sum(got * want, 1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() > 0.9


def test_no_fusion_for_a_plain_mlp(mlp_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "mlp.onnx"
    info = run_pass("graph", mlp_path, GraphConfig(), out).info
    assert "fused" not in info
