"""Every corpus model through every command, each answer checked against plain ONNX Runtime or
LiteRT on the same inputs.

A command that cannot support a model must say why in one line and exit with code 2 (the
model's ``refuses`` row names what the line must mention); nothing is skipped.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from corpus_build import reference
from corpus_fixtures import Corpus, Prepared, Served
from corpus_models import MODELS, CorpusModel

from edgeinfer.cli.main import main
from edgeinfer.optimize.plan import DEFAULT_CANDIDATES

IDS = [m.id for m in MODELS]
# Every candidate optimize tries by default, but for the entropy and percentile calibrations
# of static INT8 (histograms take a minute per convolutional model on 2 cores): minmax stands
# for them here; test_optimize_every_calibration_method and benchmarks/bench_corpus.py run them.
CANDIDATES = [c for c in DEFAULT_CANDIDATES if "entropy" not in c and "percentile" not in c]


def cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    """Run ``edgeinfer ARGS`` in-process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0) if not isinstance(exc.code, str) else 1
    out, err = capsys.readouterr()
    return code, out, err


def assert_refused(result: tuple[int, str, str], fragment: str) -> None:
    code, out, err = result
    # Progress lines ("benchmarking ...") may come before it; the error is one line.
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2, f"expected a refusal (exit 2), got {code}:\n{out}\n{err}"
    assert len(lines) == 1 and "Traceback" not in err, f"expected one error line:\n{err}"
    assert fragment in lines[0], lines[0]


def assert_close(got: dict[str, np.ndarray], want: dict[str, np.ndarray], what: str) -> None:
    assert set(got) == set(want), f"{what}: outputs {sorted(got)} != {sorted(want)}"
    for name, value in want.items():
        actual = np.asarray(got[name])
        assert actual.shape == value.shape, f"{what}: {name} shape {actual.shape}"
        if value.dtype.kind in "iub":
            np.testing.assert_array_equal(actual, value, err_msg=f"{what}: {name}")
        else:
            np.testing.assert_allclose(actual, value, rtol=1e-3, atol=1e-4, err_msg=name)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    x, y = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(x @ y / max(np.linalg.norm(x) * np.linalg.norm(y), 1e-30))


@pytest.fixture(params=IDS)
def prepared(request: pytest.FixtureRequest, corpus: Corpus) -> Prepared:
    return corpus.get(request.param)


def _refusal(model: CorpusModel, command: str) -> str | None:
    return model.refuses.get(command)


def test_manifest_rows_are_complete() -> None:
    assert len(IDS) == len(set(IDS))
    for model in MODELS:
        assert model.source and model.path and model.exporter and model.inputs, model.id
        assert set(model.refuses) <= {"inspect", "run", "bench", "optimize", "split",
                                      "bundle", "serve", "convert"}  # fmt: skip
        assert model.build is not None or "==" in model.source, model.id


def test_inspect(prepared: Prepared, capsys: pytest.CaptureFixture[str]) -> None:
    model = prepared.model
    result = cli(capsys, "inspect", prepared.path, "--json")
    if (fragment := _refusal(model, "inspect")) is not None:
        assert_refused(result, fragment)
        return
    code, out, err = result
    assert code == 0, err
    facts = json.loads(out)
    assert facts["format"] == model.format
    assert [i["name"] for i in facts["inputs"]] == list(prepared.feeds)
    assert [o["name"] for o in facts["outputs"]] == list(prepared.expected)
    for spec in facts["inputs"]:
        assert spec["dtype"] == str(prepared.feeds[spec["name"]].dtype), spec
        assert len(spec["shape"]) == prepared.feeds[spec["name"]].ndim, spec


def test_run(prepared: Prepared, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    model = prepared.model
    out_file = tmp_path / "out.npz"
    result = cli(capsys, "run", prepared.path, "--input", prepared.sample, "-o", out_file)
    if (fragment := _refusal(model, "run")) is not None:
        assert_refused(result, fragment)
        return
    code, _, err = result
    assert code == 0, err
    with np.load(out_file) as z:
        got = {k: z[k] for k in z.files}
    assert_close(got, prepared.expected, f"{model.id} run")


def test_bench(prepared: Prepared, capsys: pytest.CaptureFixture[str]) -> None:
    model = prepared.model
    args = ["bench", prepared.path, "--seconds", "0.1", "--json"]
    result = cli(capsys, *args, "--input", prepared.sample)
    if (fragment := _refusal(model, "bench")) is not None:
        assert_refused(result, fragment)
        return
    code, out, err = result
    assert code == 0, err
    facts = json.loads(out)
    assert facts["calls"] >= 1 and facts["p50_ms"] > 0
    shapes = {i["name"]: list(i["shape"]) for i in facts["inputs"]}
    assert shapes == {k: list(v.shape) for k, v in prepared.feeds.items()}
    # Without real inputs: dynamic sizes besides the batch are never guessed.
    code, out, err = cli(capsys, *args)
    if code != 0:
        assert_refused((code, out, err), "dynamic dimension")
        sized = [f"{k}={v}" for k, v in model.dims.items()]
        if sized:
            code, out, err = cli(capsys, *args, "--dim", ",".join(sized))
            assert code == 0, err


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("model_id", IDS)
def test_optimize(
    model_id: str, corpus: Corpus, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    prepared = corpus.get(model_id)
    model = prepared.model
    out = tmp_path / "opt"
    tflite = prepared.path.suffix == ".tflite"  # LiteRT's own candidates, its defaults
    args: list[str | Path] = ["optimize", prepared.path, "--max-drop", "1%", "--out", out,
                              "--repeats", "2", "--no-memory", "--threads", "1"]  # fmt: skip
    if not tflite:
        args += ["--candidates", ",".join(CANDIDATES)]
    if prepared.eval_set is None:  # a fixed-batch model: its one sample is the eval set
        args += ["--eval", prepared.sample]
    else:
        args += ["--eval", prepared.eval_set, "--calibration", prepared.calibration or ""]
    args += ["--metric", model.metric]
    if model.output:
        args += ["--output", model.output]
    result = cli(capsys, *args)
    if (fragment := _refusal(model, "optimize")) is not None:
        assert_refused(result, fragment)
        return
    code, stdout, err = result
    assert code == 0, f"{stdout}\n{err}"
    report = json.loads((tmp_path / "opt-report" / "report.json").read_text())
    # Each candidate is measured, or skipped with the reason it does not apply; a candidate
    # whose pass broke on this model ("failed") is a bug of that pass.
    for candidate in report["candidates"]:
        assert candidate["status"] in ("ok", "skipped"), (candidate["name"], candidate["reason"])
        if candidate["status"] == "skipped":
            assert candidate["reason"], f"{candidate['name']} has no reason"
    measured = [c for c in report["candidates"] if c["status"] == "ok"]
    if tflite:
        from edgeinfer.convert import inspect_tflite

        if inspect_tflite(prepared.path).float16_weights:  # float arithmetic: quantizable
            assert any("float16 weights" in note for note in report["notes"]), report["notes"]
            assert {"aeq-weight-only-int8", "aeq-dynamic-int8"} <= {c["name"] for c in measured}
    if tflite and len(measured) == 1:
        # an int8 .tflite, or one ai-edge-quantizer cannot take (each skip names why above):
        # kept as it is, and the report says so
        assert any(".tflite" in note for note in report["notes"]), report["notes"]
    else:
        assert len(measured) >= 2, "no candidate besides the original was measured"
    # The chosen bundle answers like the original within the budget on a real sample.
    chosen = reference(out / ("model.tflite" if tflite else "model.onnx"), prepared.feeds)
    assert list(chosen) == list(prepared.expected)
    name = model.output or next(iter(prepared.expected))
    if model.metric == "cosine" and not np.array_equal(chosen[name], prepared.expected[name]):
        assert cosine(chosen[name], prepared.expected[name]) >= 0.98
    elif model.metric == "accuracy":
        got, want = chosen[name], prepared.expected[name]
        np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))


TFLITE_IDS = [m.id for m in MODELS if m.format == "tflite"]


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("model_id", TFLITE_IDS)
def test_convert_tflite_to_onnx(
    model_id: str, corpus: Corpus, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Every .tflite of the corpus through tf2onnx (``edgeinfer convert --to onnx``): the ONNX
    file answers as LiteRT does on the real sample, layout kept; or the operators tf2onnx
    has no handler for are named."""
    prepared = corpus.get(model_id)
    model = prepared.model
    out = tmp_path / "model.onnx"
    result = cli(capsys, "convert", prepared.path, "--to", "onnx", "--out", out,
                 "--inputs", prepared.sample)  # fmt: skip
    if (fragment := _refusal(model, "convert")) is not None:
        assert_refused(result, fragment)
        return
    code, text, err = result
    assert code == 0, f"{text}\n{err}"
    from edgeinfer.convert import inspect_tflite

    info = inspect_tflite(prepared.path)
    # QDQ kernels round an integer model's steps apart from LiteRT's: ~2.5 int8 steps
    tol = 1e-2 if info.quantized and not info.float16_weights else 2e-4
    got = reference(out, prepared.feeds)
    assert list(got) == list(prepared.expected)
    for name, want in prepared.expected.items():
        scale = max(1.0, float(np.max(np.abs(want))))
        np.testing.assert_allclose(got[name], want, rtol=1e-3, atol=tol * scale, err_msg=name)
        if tol > 2e-4 and want.ndim == 2:  # a quantized classifier still picks the same class
            np.testing.assert_array_equal(got[name].argmax(-1), want.argmax(-1))
    words = " ".join(text.split())
    if any(len(v.shape) == 4 for v in prepared.feeds.values()):
        assert "layout NHWC" in words, text
    if info.float16_weights:  # said as what it is, not as integer operators
        assert "float16 weights" in words and "QDQ" not in words, text


_CUTS = re.compile(r"^\S+: (\d+) cut points", re.MULTILINE)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_split(prepared: Prepared, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    model = prepared.model
    result = cli(capsys, "split", prepared.path, "--list", "-i", prepared.sample)
    if (fragment := _refusal(model, "split")) is not None:
        assert_refused(result, fragment)
        return
    code, out, err = result
    assert code == 0, err
    if not model.interior_cuts:
        assert "no cut points besides remote-only and local-only" in " ".join(out.split())
        return
    match = _CUTS.search(out)
    assert match, out
    n_cuts = int(match.group(1))
    assert n_cuts > 2, out  # remote-only, local-only and at least one between
    cut = n_cuts // 2
    code, out, err = cli(
        capsys, "split", prepared.path, "--cut", str(cut), "--out", tmp_path / "s",
        "-i", prepared.sample, "--repeats", "2",
    )  # fmt: skip
    assert code == 0, err
    head = next((tmp_path / "s" / "heads").glob(f"*-head-{cut}")) / "model.onnx"
    tail = next((tmp_path / "s" / "tails").glob(f"*-tail-{cut}")) / "1" / "model.onnx"
    crossing = reference(head, prepared.feeds)
    import onnx

    tail_inputs = [i.name for i in onnx.load(tail, load_external_data=False).graph.input]
    feeds = {n: crossing[n] if n in crossing else prepared.feeds[n] for n in tail_inputs}
    got = reference(tail, feeds)
    assert_close(got, prepared.expected, f"{model.id} head+tail at cut {cut}")


def test_bundle(prepared: Prepared, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    model = prepared.model
    out = tmp_path / "b"
    result = cli(
        capsys, "bundle", "create", prepared.path, "--out", out, "--name", model.id,
        "--golden", prepared.sample,
    )  # fmt: skip
    if (fragment := _refusal(model, "bundle")) is not None:
        assert_refused(result, fragment)
        return
    code, _, err = result
    assert code == 0, err
    code, text, err = cli(capsys, "bundle", "verify", out)
    assert code == 0 and "golden sample reproduced" in " ".join(text.split()), err
    with np.load(out / "golden.npz") as z:
        names = [str(n) for n in z["output_names"]]
        recorded = {n: z[f"output_{i}"] for i, n in enumerate(names)}
    assert_close(recorded, prepared.expected, f"{model.id} golden outputs")


def _infer(client_mod: object, url: str, model_id: str, feeds: dict[str, np.ndarray]) -> dict:
    from tritonclient.utils import np_to_triton_dtype

    client = client_mod.InferenceServerClient(url)  # type: ignore[attr-defined]
    inputs = []
    for name, value in feeds.items():
        item = client_mod.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))  # type: ignore[attr-defined]
        item.set_data_from_numpy(value)
        inputs.append(item)
    try:
        result = client.infer(model_id, inputs)
        return {o: result.as_numpy(o) for o in _output_names(result)}
    finally:
        client.close()


def _output_names(result: object) -> list[str]:
    response = result.get_response()  # type: ignore[attr-defined]
    if isinstance(response, dict):
        return [o["name"] for o in response["outputs"]]
    return [o.name for o in response.outputs]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_serve(prepared: Prepared, served: Served) -> None:
    import httpx
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    model = prepared.model
    ready = httpx.get(f"http://{served.rest}/v2/models/{model.id}/ready", timeout=30)
    if (fragment := _refusal(model, "run")) is not None:
        # A model the runtime cannot run is not served, and says why; the rest of the
        # repository is served.
        assert ready.status_code != 200
        body = httpx.post(
            f"http://{served.rest}/v2/models/{model.id}/infer", json={"inputs": []}, timeout=30
        )
        assert 400 <= body.status_code < 500 or body.status_code == 503, body.text
        assert fragment in body.json()["error"], body.text
        return
    assert ready.status_code == 200, served.log.read_text()[-2000:]
    got = _infer(httpclient, served.rest, model.id, prepared.feeds)
    assert_close(got, prepared.expected, f"{model.id} served over REST")
    got = _infer(grpcclient, served.grpc, model.id, prepared.feeds)
    assert_close(got, prepared.expected, f"{model.id} served over gRPC")


@pytest.mark.timeout(300)
def test_optimize_every_calibration_method(
    corpus: Corpus, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Entropy and percentile calibration on a calibration set that is not a whole number of
    calibration batches (10 samples): every static INT8 candidate is measured."""
    prepared = corpus.get("torch-cnn")
    model = prepared.model
    calibration = tmp_path / "calibration.npz"
    np.savez(calibration, **model.make(10, 2))
    statics = ("static-int8-minmax", "static-int8-entropy", "static-int8-percentile")
    code, out, err = cli(
        capsys, "optimize", prepared.path, "--eval", prepared.eval_set or "", "--calibration",
        calibration, "--metric", "accuracy", "--out", tmp_path / "opt", "--repeats", "2",
        "--no-memory", "--threads", "1", "--candidates", ",".join(statics),
    )  # fmt: skip
    assert code == 0, f"{out}\n{err}"
    report = json.loads((tmp_path / "opt-report" / "report.json").read_text())
    status = {c["name"]: (c["status"], c["reason"]) for c in report["candidates"]}
    for name in statics:
        assert status[name][0] == "ok", f"{name}: {status[name]}"
