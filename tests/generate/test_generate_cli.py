"""``edgeinfer generate``: text on stdout (streamed or whole), a summary line on stderr,
one-line errors with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeinfer.bundle import Bundle
from edgeinfer.cli.main import main
from edgeinfer.generate import GenerativeModel
from onnx_builders import make_mlp

pytestmark = pytest.mark.timeout(300)


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(["generate", *args])
        raise SystemExit(0)
    out = capsys.readouterr()
    return int(info.value.code or 0), out.out, out.err


@pytest.mark.parametrize("stream", [False, True])
def test_generate_prints_the_text_and_a_summary(
    tiny_bundle: Bundle, tiny: GenerativeModel, capsys: pytest.CaptureFixture[str], stream: bool
) -> None:
    want = tiny.generate("the quick brown", max_tokens=16)
    args = [str(tiny_bundle.path), "--prompt", "the quick brown", "-n", "16", "--threads", "1"]
    code, out, err = run(args + (["--stream"] if stream else []), capsys)
    assert code == 0, err
    assert out == want.text + "\n"
    assert err.startswith(f"16 tokens after {want.prompt_tokens} of prompt, first in ")
    assert err.rstrip().endswith("stop: max_tokens")
    assert len(err.rstrip()) <= 80 and err.count("\n") == 1


def test_generate_chat_and_stop(
    tiny_bundle: Bundle, tiny: GenerativeModel, capsys: pytest.CaptureFixture[str]
) -> None:
    messages = [{"role": "user", "content": "the quick"}]
    want = tiny.generate(messages, max_tokens=12, stop=["zz", "jumps"])
    args = [str(tiny_bundle.path), "-p", "the quick", "--chat", "-n", "12"]
    code, out, err = run([*args, "--stop", "zz", "--stop", "jumps"], capsys)
    assert code == 0, err
    assert out == want.text + "\n"
    assert f"stop: {want.stop_reason}" in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--prompt", ""], "error: prompt is empty; expected some text to continue"),
        (["-p", "the", "--top-p", "2"], "error: top_p 2.0 is invalid; expected a number in (0, 1]"),
        (["-p", "the", "-n", "0"], "error: max_tokens 0 is invalid; expected an integer >= 1"),
        (["-p", "the " * 200], "error: prompt is "),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tiny_bundle: Bundle, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    code, out, err = run([str(tiny_bundle.path), *extra], capsys)
    assert code == 2
    assert err.startswith(message), err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert out == ""


def test_a_predictive_bundle_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = Bundle.create(make_mlp(tmp_path / "mlp.onnx"), tmp_path / "mlp", name="mlp")
    code, _, err = run([str(bundle.path), "-p", "hello"], capsys)
    assert code == 2
    assert "a predictive bundle, not a generative one" in err


def test_tools_for_predictive_models_handle_a_generative_bundle(
    tiny_bundle: Bundle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """inspect and bench show and time it (greedy continuations); run refuses an array."""
    with pytest.raises(SystemExit) as info:
        main(["inspect", str(tiny_bundle.path), "--json"])
        raise SystemExit(0)
    out = capsys.readouterr()
    assert info.value.code == 0, out.err
    facts = json.loads(out.out)
    assert facts["backend"] == "onnxruntime-genai"
    assert facts["inputs"] == [{"name": "input_ids", "dtype": "int64", "shape": ["prompt"]}]
    with pytest.raises(SystemExit) as info:
        main(["bench", str(tiny_bundle.path), "--json", "--threads", "1"])
        raise SystemExit(0)
    out = capsys.readouterr()
    assert info.value.code == 0, out.err
    assert json.loads(out.out)["calls"] >= 1
    np.save(tmp_path / "x.npy", np.array([1, 2, 3]))
    with pytest.raises(SystemExit) as info:
        main(["run", str(tiny_bundle.path), "-i", str(tmp_path / "x.npy")])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert (
        err.startswith("error: inputs must map names to token-id prompts")
        and "Traceback" not in err
    )
