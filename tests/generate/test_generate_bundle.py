"""Bundles of generative models: every file hashed and verified, the manifest's generative
section, pack/unpack, tampering refused, and the golden sample checked token for token by
``bundle verify`` and the update agent's health gate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import edgeinfer
from edgeinfer.bundle import Bundle
from edgeinfer.cli.main import main
from edgeinfer.deliver.gate import GateConfig, run_gate
from edgeinfer.errors import BundleError
from edgeinfer.generate import GenerativeModel, create_bundle
from edgeinfer.manifest import Golden

pytestmark = pytest.mark.timeout(300)


def test_manifest_lists_every_file_and_the_generative_facts(tiny_bundle: Bundle) -> None:
    m = tiny_bundle.manifest
    assert m.kind == "generative"
    assert m.format == "onnx" and m.model.file == "model.onnx"
    files = {f.file for f in m.files}
    assert {"model.onnx.data", "genai_config.json", "tokenizer.json"} <= files
    assert "chat_template.jinja" in files or "tokenizer_config.json" in files
    spec = m.generative
    assert spec is not None
    assert (spec.context_length, spec.vocab_size, spec.golden_max_tokens) == (128, 300, 12)
    assert spec.chat_template is not None and "<|im_start|>" in spec.chat_template
    assert spec.quantization == {"precision": "fp32"}
    data = json.loads((tiny_bundle.path / "manifest.json").read_text())
    assert data["kind"] == "generative"
    assert data["generative"]["context_length"] == 128
    assert data["provenance"]["recipe"] == {"precision": "fp32"}


def test_golden_sample_is_the_greedy_continuation(
    tiny_bundle: Bundle, tiny: GenerativeModel
) -> None:
    golden = tiny_bundle.golden()
    assert golden is not None
    assert set(golden.inputs) == {"prompt_0", "prompt_1"}
    want = tiny.generate("the quick brown", max_tokens=12).token_ids
    assert tuple(golden.outputs["prompt_0"].tolist()) == want
    assert tiny_bundle.check_golden(tiny) == []


def test_a_different_continuation_fails_the_golden_check(
    tiny_bundle: Bundle, tiny: GenerativeModel, tmp_path: Path
) -> None:
    golden = tiny_bundle.golden()
    assert golden is not None
    wrong = dict(golden.outputs)
    wrong["prompt_1"] = wrong["prompt_1"].copy()
    wrong["prompt_1"][3] = (wrong["prompt_1"][3] + 1) % 300
    problems = Golden(golden.inputs, wrong).compare(tiny.predict(golden.inputs))
    assert problems == ["output 'prompt_1': values differ from the golden sample"]


def test_pack_unpack_round_trip(tiny_bundle: Bundle, tmp_path: Path) -> None:
    tar = tiny_bundle.pack(tmp_path / "tiny.tar")
    again = Bundle.unpack(tar, tmp_path / "unpacked")
    assert again.manifest == tiny_bundle.manifest
    assert tiny_bundle.pack(tmp_path / "again.tar").read_bytes() == tar.read_bytes()
    with edgeinfer.load(again.path, threads=1) as model:
        assert isinstance(model, GenerativeModel)
        assert again.check_golden(model) == []


@pytest.mark.parametrize("victim", ["tokenizer.json", "genai_config.json", "model.onnx.data"])
def test_a_tampered_file_is_refused(tiny_bundle: Bundle, tmp_path: Path, victim: str) -> None:
    copy = Path(shutil.copytree(tiny_bundle.path, tmp_path / "copy"))
    data = bytearray((copy / victim).read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / victim).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=rf"{victim}: sha256 .* was modified or tampered with"):
        Bundle.open(copy)
    with pytest.raises(BundleError, match="tampered"):
        edgeinfer.load(copy)


def test_a_missing_tokenizer_is_refused(tiny_bundle: Bundle, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(tiny_bundle.path, tmp_path / "copy"))
    (copy / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match=r"tokenizer.json is missing"):
        Bundle.open(copy)


def test_manifest_generative_section_is_checked(tiny_bundle: Bundle, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(tiny_bundle.path, tmp_path / "copy"))
    data = json.loads((copy / "manifest.json").read_text())
    data["generative"]["context_length"] = -1
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match=r"generative.context_length -1 must be an integer"):
        Bundle.open(copy)
    del data["generative"]
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match=r"a generative bundle \(and only one\) has"):
        Bundle.open(copy)
    data["kind"] = "oracle"
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match=r"kind 'oracle' must be one of"):
        Bundle.open(copy)


def test_a_manifest_that_contradicts_the_genai_config_is_refused(
    tiny_bundle: Bundle, tmp_path: Path
) -> None:
    copy = Path(shutil.copytree(tiny_bundle.path, tmp_path / "copy"))
    data = json.loads((copy / "manifest.json").read_text())
    data["generative"]["context_length"] = 4096
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match=r"the manifest says context 4096, vocabulary 300; "):
        edgeinfer.load(copy)


def test_create_bundle_refuses_what_is_not_a_genai_model(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"no genai_config.json"):
        create_bundle(tmp_path, tmp_path / "out", name="x")


def test_bundle_verify_reproduces_the_golden_sample(
    tiny_bundle: Bundle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["bundle", "verify", str(tiny_bundle.path)])
        raise SystemExit(0)
    out = capsys.readouterr()
    assert info.value.code == 0, out.err
    assert "golden sample reproduced" in " ".join(out.out.split())
    # a golden sample the model does not reproduce fails verify (exit 2, one line)
    copy = Path(shutil.copytree(tiny_bundle.path, tmp_path / "copy"))
    golden = Golden.load(copy / "golden.npz")
    outputs = {k: np.zeros_like(v) for k, v in golden.outputs.items()}
    _rewrite_golden(copy, Golden(golden.inputs, outputs))
    with pytest.raises(SystemExit) as info:
        main(["bundle", "verify", str(copy)])
    out = capsys.readouterr()
    assert info.value.code == 2
    assert "golden sample does not reproduce" in out.err
    assert "Traceback" not in out.err


def test_health_gate_checks_the_golden_continuations(tiny_bundle: Bundle, tmp_path: Path) -> None:
    cfg = GateConfig(threads=1, latency_runs=2)
    ok = run_gate(tiny_bundle.path, tiny_bundle.path, cfg)
    assert ok.ok, ok.reason
    copy = Path(shutil.copytree(tiny_bundle.path, tmp_path / "copy"))
    golden = Golden.load(copy / "golden.npz")
    outputs = {k: v[::-1].copy() for k, v in golden.outputs.items()}
    _rewrite_golden(copy, Golden(golden.inputs, outputs))
    bad = run_gate(copy, None, cfg)
    assert not bad.ok
    assert bad.reason is not None and "golden sample mismatch" in bad.reason


def _rewrite_golden(root: Path, golden: Golden) -> None:
    """Replace a bundle's golden sample and re-hash it (a consistent, wrong bundle)."""
    from edgeinfer.manifest import FileRef, sha256_file

    golden.save(root / "golden.npz")
    data = json.loads((root / "manifest.json").read_text())
    ref = FileRef.of(root / "golden.npz")
    data["golden"] = {
        "file": ref.file,
        "size": ref.size,
        "sha256": sha256_file(root / "golden.npz"),
    }
    (root / "manifest.json").write_text(json.dumps(data))
