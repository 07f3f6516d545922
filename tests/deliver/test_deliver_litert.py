"""A ``.tflite`` model through the delivery loop: bundle with golden sample, verify,
publish with a tensor-aware delta (the flatbuffer's buffers, not its bytes), and the
device agent's install, delta update and health gate running the model on LiteRT."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from deliver_support import committed, run_agent, serve, temp_files

from edgeinfer.bundle import GOLDEN_FILE, MANIFEST_FILE, Bundle, FileRef, Golden
from edgeinfer.deliver import DeltaConfig, KeyStore, Publisher, apply_delta, make_delta
from edgeinfer.deliver._onnx_wire import tensor_spans
from edgeinfer.deliver._tflite_wire import tflite_spans
from edgeinfer.runtime import load

pytest.importorskip("ai_edge_litert", reason="needs the 'litert' extra")
oww = pytest.importorskip("wyoming_openwakeword", reason="wyoming-openwakeword (--no-deps)")
micro = pytest.importorskip("pymicro_wakeword", reason="needs the 'models' extra")

# openWakeWord's "ok nabu" classifier: float32 [1, 16, 96] speech embeddings -> [1, 1]
OK_NABU = Path(oww.__file__).parent / "models" / "ok_nabu_v0.1.tflite"
# microWakeWord's streaming detector: int8 [1, 3, 40] feature rows -> uint8 [1, 1]
OKAY_NABU = Path(micro.__file__).parent / "models" / "okay_nabu.tflite"
EMBEDDINGS = np.random.default_rng(0).standard_normal((1, 16, 96)).astype(np.float32)


def nudged(src: Path, dst: Path, *, seed: int, head_only: bool, scale: float = 0.01) -> Path:
    """A fine-tune step in place: float32 weights of ``src`` moved by ``scale`` of their
    standard deviation, every other byte of the flatbuffer kept. ``head_only``: every
    weight but the largest (the layers after the first: a fine-tuned head); else only the
    largest (the first layer, most of the model)."""
    data = bytearray(src.read_bytes())
    floats = [s for s in tflite_spans(memoryview(data), 0, len(data)) if s[3] == 1]
    largest = max(floats, key=lambda s: s[2])
    rng = np.random.default_rng(seed)
    for _, off, n, _ in [s for s in floats if (s != largest) == head_only]:
        w = np.frombuffer(bytes(data[off : off + n]), np.float32)
        noise = rng.standard_normal(w.shape).astype(np.float32) * scale * max(w.std(), 1e-3)
        data[off : off + n] = (w + noise).astype(np.float32).tobytes()
    dst.write_bytes(bytes(data))
    return dst


def bundle(model: Path, out: Path, version: int, golden: np.ndarray) -> Path:
    b = Bundle.create(model, out, name="ok-nabu", version=version, golden_inputs=golden)
    return b.path


def break_golden(path: Path) -> Path:
    """Keep the bundle consistent (hashes fine) but record outputs the model does not give."""
    b = Bundle.open(path)
    golden = b.golden()
    assert golden is not None
    wrong = {k: v + 0.5 for k, v in golden.outputs.items()}
    Golden(golden.inputs, wrong, golden.atol, golden.rtol).save(path / GOLDEN_FILE)
    manifest = dataclasses.replace(b.manifest, golden=FileRef.of(path / GOLDEN_FILE))
    (path / MANIFEST_FILE).write_text(json.dumps(manifest.to_dict(), indent=2))
    return path


@pytest.mark.parametrize(
    ("model", "golden"),
    [
        (OK_NABU, EMBEDDINGS),
        (OKAY_NABU, np.random.default_rng(1).integers(-128, 127, (1, 3, 40)).astype(np.int8)),
    ],
    ids=["openwakeword-float", "microwakeword-int8-streaming"],
)
def test_tflite_bundle_records_and_reproduces_its_golden_sample(
    model: Path, golden: np.ndarray, tmp_path: Path
) -> None:
    path = bundle(model, tmp_path / "b", 1, golden)
    b = Bundle.open(path)  # hashes verified
    assert b.manifest.model.file.endswith(".tflite")
    with load(path) as m:
        assert m.backend.name == "litert" and m.version == 1
        assert b.check_golden(m) == []
        recorded = b.golden()
        assert recorded is not None
        (out,) = recorded.outputs.values()
        with load(model) as bare:
            np.testing.assert_array_equal(out, next(iter(bare.predict(golden).values())))
    with load(break_golden(path)) as m:
        problems = Bundle.open(path).check_golden(m)
    assert problems and "\n" not in problems[0]


def test_tflite_delta_ships_the_changed_buffer_and_beats_bsdiff(tmp_path: Path) -> None:
    v1 = Bundle.open(bundle(OK_NABU, tmp_path / "b1", 1, EMBEDDINGS)).pack(tmp_path / "1.tar")
    tuned = nudged(OK_NABU, tmp_path / "tuned.tflite", seed=1, head_only=False)
    v2 = Bundle.open(bundle(tuned, tmp_path / "b2", 2, EMBEDDINGS)).pack(tmp_path / "2.tar")
    spans = tensor_spans(v2, memoryview(v2.read_bytes()))
    assert len(spans) >= 5  # the .tflite member's buffers, found inside the tar
    info = make_delta(v1, v2, tmp_path / "d", DeltaConfig(methods=("tensor",)))
    assert info.stats["changed"] == 1 and info.stats["referenced"] == len(spans) - 1
    bsdiff = make_delta(v1, v2, tmp_path / "b", DeltaConfig(methods=("bsdiff",)))
    assert info.size < bsdiff.size < v2.stat().st_size
    kept = make_delta(v1, v2, tmp_path / "k")
    assert kept.method == "tensor" and kept.size == info.size
    apply_delta(v1, tmp_path / "k", tmp_path / "rebuilt.tar")
    assert (tmp_path / "rebuilt.tar").read_bytes() == v2.read_bytes()


def test_tflite_publish_agent_delta_update_and_health_gate(tmp_path: Path) -> None:
    store = KeyStore.init(tmp_path / "keys")
    repo, state = tmp_path / "repo", tmp_path / "device"
    pub = Publisher(repo, store)
    pub.publish(bundle(OK_NABU, tmp_path / "b1", 1, EMBEDDINGS))
    tuned = nudged(OK_NABU, tmp_path / "tuned.tflite", seed=2, head_only=True)
    with serve(repo) as server:
        first = run_agent(server, state, repo)
        assert (first.result, first.via) == ("updated", "full")
        published = pub.publish(bundle(tuned, tmp_path / "b2", 2, EMBEDDINGS))
        (delta,) = published.deltas
        assert delta.method == "tensor" and delta.size < 0.05 * published.length
        second = run_agent(server, state, repo)
        assert (second.result, second.via, second.to_version) == ("updated", "delta", 2)
        assert second.bytes_downloaded == delta.size
        # The gate ran the new .tflite on LiteRT against its golden sample and timed it
        # against v1; a v3 whose golden sample it does not reproduce is rolled back.
        status = json.loads((state / "status.json").read_text())
        active = status["active"]
        assert (active["version"], active["sha256"]) == (2, published.sha256)
        with load(active["bundle_path"]) as m:
            assert m.backend.name == "litert"
            with load(tuned) as bare:
                np.testing.assert_array_equal(
                    next(iter(m.predict(EMBEDDINGS).values())),
                    next(iter(bare.predict(EMBEDDINGS).values())),
                )
        pub.publish(break_golden(bundle(tuned, tmp_path / "b3", 3, EMBEDDINGS)))
        third = run_agent(server, state, repo)
        assert third.result == "rolled-back"
        assert "golden sample mismatch" in (third.reason or "")
    assert committed(state)[1] == 2  # type: ignore[index]
    assert temp_files(state) == []


def test_a_damaged_tflite_is_shipped_as_literal_bytes(tmp_path: Path) -> None:
    """Bytes that claim to be TFLite (the ``TFL3`` identifier) but do not parse -- cut
    short, scrambled, a root table outside the file -- have no tensor spans; the delta
    still rebuilds them byte for byte."""
    good = OK_NABU.read_bytes()
    rng = np.random.default_rng(3)
    damaged = {
        "cut": good[: len(good) // 3],
        "scrambled": good[:8] + rng.integers(0, 256, len(good) - 8, dtype=np.uint8).tobytes(),
        "root-outside": (len(good) * 2).to_bytes(4, "little") + good[4:],
    }
    base = tmp_path / "base.tflite"
    base.write_bytes(good)
    for name, data in damaged.items():
        path = tmp_path / f"{name}.tflite"
        path.write_bytes(data)
        spans = tensor_spans(path, memoryview(data))
        assert all(s.offset + s.length <= len(data) for s in spans), name
        make_delta(base, path, tmp_path / f"{name}.delta", DeltaConfig(methods=("tensor",)))
        apply_delta(base, tmp_path / f"{name}.delta", tmp_path / f"{name}.out")
        assert (tmp_path / f"{name}.out").read_bytes() == data, name
    assert tensor_spans(base, memoryview(good))  # the intact model has spans
