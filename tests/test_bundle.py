from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

import edgeinfer
from edgeinfer import Bundle, BundleError
from edgeinfer.bundle import MANIFEST_FILE, Golden


@pytest.fixture
def bundle(mlp_path: Path, tmp_path: Path) -> Bundle:
    x = np.random.default_rng(1).standard_normal((4, 4)).astype(np.float32)
    return Bundle.create(
        mlp_path,
        tmp_path / "mlp-bundle",
        name="mlp",
        version=3,
        golden_inputs=x,
        labels=["a", "b", "c"],
        metrics={"accuracy": 0.9},
        recipe={"pass": "none"},
    )


def test_create_writes_manifest_model_and_golden(bundle: Bundle, mlp_path: Path) -> None:
    files = sorted(p.name for p in bundle.path.iterdir())
    assert files == ["golden.npz", "manifest.json", "model.onnx"]
    data = json.loads((bundle.path / MANIFEST_FILE).read_text())
    assert data["schema_version"] == 1
    assert data["name"] == "mlp" and data["version"] == 3 and data["format"] == "onnx"
    assert data["model"]["size"] == mlp_path.stat().st_size
    assert data["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["N", 4]}]
    assert data["labels"] == ["a", "b", "c"]
    assert data["metrics"] == {"accuracy": 0.9}
    assert data["provenance"]["recipe"] == {"pass": "none"}
    assert len(data["provenance"]["source_sha256"]) == 64
    golden = bundle.golden()
    assert isinstance(golden, Golden)
    with edgeinfer.load(bundle.path) as model:
        assert bundle.check_golden(model) == []
        np.testing.assert_allclose(model.predict(golden.inputs)["logits"], golden.outputs["logits"])


def test_no_leftovers_and_refuses_to_overwrite(bundle: Bundle, mlp_path: Path) -> None:
    with pytest.raises(BundleError, match="already exists and is not empty"):
        Bundle.create(mlp_path, bundle.path, name="mlp", version=4)
    again = Bundle.create(mlp_path, bundle.path, name="mlp", version=4, overwrite=True)
    assert again.version == 4
    assert [p.name for p in bundle.path.parent.iterdir() if p.name.startswith(".")] == []


def test_failed_create_leaves_nothing(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"not a model")
    with pytest.raises(BundleError, match="not a loadable ONNX model"):
        Bundle.create(bogus, tmp_path / "out", name="bogus")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bogus.onnx"]


def test_golden_mismatch_is_reported(bundle: Bundle, tmp_path: Path) -> None:
    from onnx_builders import make_other_mlp

    other = make_other_mlp(tmp_path / "other.onnx")
    with edgeinfer.load(other) as model:
        problems = bundle.check_golden(model)
    assert problems and "max abs error" in problems[0]


def test_tampered_model_is_refused(bundle: Bundle) -> None:
    model_file = bundle.path / "model.onnx"
    data = bytearray(model_file.read_bytes())
    data[-5] ^= 0xFF
    model_file.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256 .* does not match .* tampered"):
        Bundle.open(bundle.path)
    with pytest.raises(BundleError, match="tampered"):
        edgeinfer.load(bundle.path)


def test_truncated_model_is_refused(bundle: Bundle) -> None:
    model_file = bundle.path / "model.onnx"
    model_file.write_bytes(model_file.read_bytes()[:50])
    with pytest.raises(BundleError, match="size 50 bytes does not match .* truncated"):
        Bundle.open(bundle.path)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: d.update(schema_version=99), "unsupported schema_version 99"),
        (lambda d: d.pop("name"), "missing field 'name'"),
        (lambda d: d.update(version="1"), "version '1' must be an integer"),
        (lambda d: d.update(format="pt"), "format 'pt' must be one of"),
        (lambda d: d["model"].update(file="../model.onnx"), "must be a plain name"),
        (lambda d: d.update(name="../x"), "bundle name '../x' is not allowed"),
        (lambda d: d["inputs"].append({"name": "y", "dtype": "float99"}), "unknown dtype"),
    ],
)
def test_bad_manifests_are_refused(bundle: Bundle, edit: object, match: str) -> None:
    path = bundle.path / MANIFEST_FILE
    data = json.loads(path.read_text())
    edit(data)  # type: ignore[operator]
    path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match=match):
        Bundle.open(bundle.path)


def test_manifest_not_json(bundle: Bundle) -> None:
    (bundle.path / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        Bundle.open(bundle.path)


def test_pack_is_deterministic_and_round_trips(bundle: Bundle, tmp_path: Path) -> None:
    a = bundle.pack(tmp_path / "a.tar")
    b = bundle.pack(tmp_path / "b.tar")
    assert a.read_bytes() == b.read_bytes()
    out = Bundle.unpack(a, tmp_path / "unpacked")
    assert out.manifest == bundle.manifest
    with edgeinfer.load(a) as model:  # a packed bundle loads directly
        assert model.name == "mlp" and model.version == 3


def _tar_with(tmp_path: Path, member: tarfile.TarInfo, data: bytes = b"x") -> Path:
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as tar:
        member.size = len(data) if member.isfile() else 0
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


@pytest.mark.parametrize(
    ("member", "match"),
    [
        (_member("../evil.txt"), "escapes the bundle with '..'"),
        (_member("a/../../evil.txt"), "escapes the bundle"),
        (_member("/etc/evil"), "absolute path"),
        (_member("link", tarfile.SYMTYPE, "/etc/passwd"), "is a link"),
        (_member("hard", tarfile.LNKTYPE, "manifest.json"), "is a link"),
        (_member("dev", tarfile.CHRTYPE), "device"),
        (_member("sub/file"), "bundles are flat"),
    ],
)
def test_unpack_refuses_unsafe_members(tmp_path: Path, member: tarfile.TarInfo, match: str) -> None:
    evil = _tar_with(tmp_path, member)
    with pytest.raises(BundleError, match=match):
        Bundle.unpack(evil, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not (tmp_path.parent / "evil.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["evil.tar"]


def test_unpack_refuses_corrupt_archives(bundle: Bundle, tmp_path: Path) -> None:
    packed = bundle.pack(tmp_path / "b.tar")
    cut = tmp_path / "cut.tar"
    cut.write_bytes(packed.read_bytes()[:700])
    with pytest.raises(BundleError):
        Bundle.unpack(cut, tmp_path / "out")
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"\0garbage" * 10)
    with pytest.raises(BundleError, match="not a readable bundle archive|missing"):
        Bundle.unpack(junk, tmp_path / "out2")


def test_bare_model_files_work_as_bundles(mlp_path: Path) -> None:
    b = Bundle.open(mlp_path)
    assert b.bare and b.name == "mlp" and b.version == 0
    assert b.model_path == mlp_path and b.golden() is None
    with pytest.raises(BundleError, match="create a bundle before packing"):
        b.pack(mlp_path.with_suffix(".tar"))


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("missing.onnx", None, "no such bundle or model file"),
        ("model.pt", b"torch", "unsupported model file type '.pt'"),
        ("notes.onnx", b"hello, I am text", "not a loadable ONNX model"),
        ("empty.onnx", b"", "not a loadable ONNX model"),
        ("bad.tflite", b"\x00" * 64, "not a loadable TFLite model"),
        ("dir", "dir", "not a bundle"),
    ],
)
def test_not_a_model(tmp_path: Path, name: str, content: object, match: str) -> None:
    path = tmp_path / name
    if content == "dir":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(BundleError, match=match):
        edgeinfer.load(path)


def test_with_metrics_rewrites_manifest_atomically(bundle: Bundle) -> None:
    updated = bundle.with_metrics(latency_ms=1.5)
    assert Bundle.open(bundle.path).manifest.metrics == {"accuracy": 0.9, "latency_ms": 1.5}
    assert updated.manifest.metrics["latency_ms"] == 1.5


def _edit_manifest(bundle: Bundle, edit: object) -> None:
    path = bundle.path / MANIFEST_FILE
    data = json.loads(path.read_text())
    edit(data)  # type: ignore[operator]
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (
            lambda d: d["inputs"][0].update(shape=["N", 5]),
            r"input 'x' is float32 \[N,5\] in the manifest, float32 \[N,4\] in the model "
            r"\(dimension 1: 5 vs 4\)",
        ),
        (lambda d: d["inputs"][0].update(shape=["N"]), r"\(rank 1 vs 2\)"),
        (lambda d: d["inputs"][0].update(shape=["N", None]), r"\(dimension 1: \? vs 4\)"),
        (lambda d: d["inputs"][0].update(dtype="float64"), r"\(dtype float64 vs float32\)"),
        (
            lambda d: d["inputs"][0].update(name="pixels"),
            r"the model's input\(s\) 'x' missing; input\(s\) 'pixels' not in the model",
        ),
        (lambda d: d["outputs"][0].update(shape=["N", 10]), r"output 'logits' is .*10 vs 3"),
        (
            lambda d: d.update(labels=["a", "b", "c", "d"]),
            r"4 labels, but the model's class output\(s\) 'logits' \[N,3\] have 3 classes",
        ),
    ],
)
def test_manifest_that_disagrees_with_the_model_is_refused(
    bundle: Bundle, edit: object, match: str
) -> None:
    _edit_manifest(bundle, edit)
    Bundle.open(bundle.path)  # hashes still match: only the model can tell
    with pytest.raises(BundleError, match=r"manifest\.json does not match model\.onnx: .*" + match):
        edgeinfer.load(bundle.path)


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d["inputs"][0].update(shape=[2, 4]),  # pins a size the model leaves open
        lambda d: d["inputs"][0].update(shape=["?", 4]),  # Paddle's spelling of unknown
        lambda d: d.update(labels=None),
    ],
)
def test_manifest_may_be_narrower_than_the_model(bundle: Bundle, edit: object) -> None:
    _edit_manifest(bundle, edit)
    with edgeinfer.load(bundle.path) as model:
        assert model.predict(np.ones((2, 4), np.float32))["logits"].shape == (2, 3)
