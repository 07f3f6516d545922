"""Triton Inference Server as a peer in the server benchmark, where it runs here.

The ``nvidia-pytriton`` wheel ships the ``tritonserver`` binary (2.51 in pytriton 0.7) with
only the Python backend (no ONNX Runtime backend), and the Python backend's stub for each
Python version. PyTriton's own proxy model fails to initialize in a pyenv Python 3.11.7
(``'_thread.RLock' object has no attribute '_recursion_count'``): the stub links the system's
``libpython3.11.so`` (Debian's 3.11.2) but imported the pyenv interpreter's 3.11.7 standard
library, whose ``threading`` (3.11.7's ``RLock._recursion_count``) calls what 3.11.2's
``_thread`` lacks. So this peer does without the proxy: a model repository with Triton's own
Python-backend ``model.py`` that runs the ONNX file with ONNX Runtime (1 intra-op thread,
spinning off, as every server here); the stub runs it on the system Python (3.11.2 and its
own standard library), importing numpy and onnxruntime from a virtual environment of that
same Python, which ``model.py`` puts on ``sys.path`` (``TRITON_MODEL_VENV``, default
/tmp/triton-model-venv:
``/usr/bin/python3.11 -m venv /tmp/triton-model-venv && /tmp/triton-model-venv/bin/pip
install "numpy<2" onnxruntime``; the stub hands tensors over as numpy 1.x arrays, and with
numpy 2 every answer fails with "output tensor shape does not match size of output"). The
wheel itself lives in another venv (``TRITON_VENV``, default /tmp/triton-venv).

Triton's defaults for such a model: one instance (``instance_group`` count 1, CPU), no
dynamic batching; its best setting for the tiny model here is measured beside: dynamic
batching up to 8 rows with no added delay (edgeinfer's own defaults) -- see ``SETTINGS``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

TRITON_VENV = Path(os.environ.get("TRITON_VENV", "/tmp/triton-venv"))
MODEL_VENV = Path(os.environ.get("TRITON_MODEL_VENV", "/tmp/triton-model-venv"))
SYSTEM_LIBPYTHON = Path("/lib/x86_64-linux-gnu/libpython3.11.so.1.0")

MODEL_PY = """
import json
import os
import sys

sys.path.insert(0, {site!r})  # the stub's own Python has no numpy or onnxruntime

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.outputs = [o["name"] for o in config["output"]]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def execute(self, requests):
        # one run for every request Triton hands over (several with dynamic batching)
        arrays = {n: [pb_utils.get_input_tensor_by_name(r, n).as_numpy() for r in requests]
                  for n in self.inputs}
        feeds = {n: a[0] if len(a) == 1 else np.concatenate(a) for n, a in arrays.items()}
        results = self.session.run(self.outputs, feeds)
        if len(requests) == 1:
            parts = [[a] for a in results]
        else:
            bounds = np.cumsum([a.shape[0] for a in arrays[self.inputs[0]]])[:-1]
            parts = [np.split(a, bounds) for a in results]
        return [
            pb_utils.InferenceResponse(
                [pb_utils.Tensor(n, parts[j][k]) for j, n in enumerate(self.outputs)]
            )
            for k in range(len(requests))
        ]
"""

# name -> (label, extra config.pbtxt lines)
SETTINGS = {
    "triton_defaults": ("defaults (1 instance, no dynamic batching)", ""),
    "triton_batch8": (
        "dynamic batching up to 8 rows, no added delay",
        "dynamic_batching { max_queue_delay_microseconds: 0 }\n",
    ),
}


class TritonUnavailable(RuntimeError):
    """Triton cannot run here; the message says why."""


def _root() -> Path:
    return TRITON_VENV / "lib" / "python3.11" / "site-packages" / "pytriton"


def _config(name: str, extra: str, batching: bool) -> str:
    # the tiny MLP: x FP32 [N, 4] -> logits FP32 [N, 3]
    dims_in, dims_out = ("[ 4 ]", "[ 3 ]") if batching else ("[ -1, 4 ]", "[ -1, 3 ]")
    return (
        f'name: "{name}"\nbackend: "python"\nmax_batch_size: {8 if batching else 0}\n'
        f'input [ {{ name: "x" data_type: TYPE_FP32 dims: {dims_in} }} ]\n'
        f'output [ {{ name: "logits" data_type: TYPE_FP32 dims: {dims_out} }} ]\n'
        "instance_group [ { count: 1 kind: KIND_CPU } ]\n" + extra
    )


def start_triton(work: Path, models: dict[str, Path], setting: str = "triton_defaults") -> Any:
    """Start tritonserver serving the tiny model with ``setting``; a bench_server.Server."""
    from bench_server import Server, free_port, wait_ready

    root = _root()
    binary = root / "tritonserver" / "bin" / "tritonserver"
    stub = root / "tritonserver" / "python_backend_stubs" / "3.11" / "triton_python_backend_stub"
    if not binary.is_file():
        raise TritonUnavailable(
            f"{binary} not found (pip install nvidia-pytriton in {TRITON_VENV})"
        )
    site = next(iter((MODEL_VENV / "lib").glob("python3*/site-packages")), None)
    if site is None or not (site / "onnxruntime").is_dir():
        raise TritonUnavailable(
            f"{MODEL_VENV} lacks onnxruntime: /usr/bin/python3.11 -m venv {MODEL_VENV} && "
            f"{MODEL_VENV}/bin/pip install 'numpy<2' onnxruntime"
        )
    label, extra = SETTINGS[setting]
    work.mkdir(parents=True, exist_ok=True)
    backends = work / "backends"
    if not backends.exists():
        shutil.copytree(root / "tritonserver" / "backends", backends)
        shutil.copy(stub, backends / "python" / "triton_python_backend_stub")
    repo = work / f"models-{setting}"
    for name, path in models.items():
        (repo / name / "1").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, repo / name / "1" / "model.onnx")
        (repo / name / "1" / "model.py").write_text(MODEL_PY.replace("{site!r}", repr(str(site))))
        (repo / name / "config.pbtxt").write_text(_config(name, extra, bool(extra)))
    http, grpc, metrics = free_port(), free_port(), free_port()
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = str(
        TRITON_VENV / "lib" / "python3.11" / "site-packages" / "nvidia_pytriton.libs"
    )
    log = work / f"{setting}.log"
    cmd = [
        str(binary),
        f"--model-repository={repo}",
        f"--backend-directory={backends}",
        f"--http-port={http}",
        f"--grpc-port={grpc}",
        f"--metrics-port={metrics}",
        "--http-address=127.0.0.1",
        "--grpc-address=127.0.0.1",
        "--allow-metrics=false",
        "--allow-gpu-metrics=false",
        "--log-verbose=0",
    ]
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    try:
        wait_ready(http, list(models), proc, 120)
    except RuntimeError as exc:
        proc.kill()
        proc.wait()
        tail = log.read_text(errors="replace")[-1500:]
        raise TritonUnavailable(f"{exc}; log: {tail}") from None
    return Server(setting, proc, http, grpc), label
