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
same Python, which ``model.py`` puts on ``sys.path`` (numpy < 2 there: the stub hands
tensors over as numpy 1.x arrays, and with numpy 2 every answer fails with "output tensor
shape does not match size of output"). The wheel itself lives in another venv.

Both environments are made by ``benchmarks/peers/setup.sh DIR`` (versions pinned, the stub's
libpython checked against the Python the model's venv is made with): ``DIR/triton-venv`` and
``DIR/triton-model-venv``, the peers' directory being /tmp unless ``--peers-dir`` or
``EDGEINFER_PEERS_DIR`` says otherwise (``TRITON_VENV`` / ``TRITON_MODEL_VENV`` override each).

Triton's defaults for such a model: one instance (``instance_group`` count 1, CPU), no
dynamic batching; its best setting is measured beside: dynamic batching up to the batch size
every batching server gets (8 rows for the tiny model, edgeinfer's own default; MiniLM's best
in-process batch) with no added delay -- see ``SETTINGS``. The model's ``config.pbtxt`` is
written from the ONNX file's own inputs and outputs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

SETUP = "benchmarks/peers/setup.sh"


def venvs(peers_dir: Path) -> tuple[Path, Path]:
    """The wheel's venv and the model's venv: ``TRITON_VENV`` / ``TRITON_MODEL_VENV`` if set,
    else ``triton-venv`` / ``triton-model-venv`` in ``peers_dir``."""
    wheel = os.environ.get("TRITON_VENV") or peers_dir / "triton-venv"
    model = os.environ.get("TRITON_MODEL_VENV") or peers_dir / "triton-model-venv"
    return Path(wheel), Path(model)


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

# setting -> label; "triton_batch" serves as triton_batch<N>, N the workload's batch size
SETTINGS = {
    "triton_defaults": "defaults (1 instance, no dynamic batching)",
    "triton_batch": "dynamic batching up to {n} rows, no added delay",
}
_TYPES = {  # ONNX element type -> Triton data type
    1: "TYPE_FP32",
    2: "TYPE_UINT8",
    3: "TYPE_INT8",
    6: "TYPE_INT32",
    7: "TYPE_INT64",
    9: "TYPE_BOOL",
    10: "TYPE_FP16",
    11: "TYPE_FP64",
}


class TritonUnavailable(RuntimeError):
    """Triton cannot run here; the message says why."""


def _tensors(values: Any, batching: bool) -> str:
    """config.pbtxt entries for ONNX graph inputs or outputs (the batch dimension is
    Triton's own when it batches)."""
    entries = []
    for v in values:
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        if batching:
            dims = dims[1:]
        entries.append(
            f'{{ name: "{v.name}" data_type: {_TYPES[t.elem_type]} '
            f"dims: [ {', '.join(map(str, dims))} ] }}"
        )
    return ", ".join(entries)


def _config(name: str, path: Path, max_batch: int) -> str:
    """The model's config.pbtxt; ``max_batch`` 0: no dynamic batching (Triton's default)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    batching = max_batch > 0
    return (
        f'name: "{name}"\nbackend: "python"\nmax_batch_size: {max_batch}\n'
        f"input [ {_tensors(inputs, batching)} ]\n"
        f"output [ {_tensors(graph.output, batching)} ]\n"
        "instance_group [ { count: 1 kind: KIND_CPU } ]\n"
        + ("dynamic_batching { max_queue_delay_microseconds: 0 }\n" if batching else "")
    )


def start_triton(
    work: Path,
    models: dict[str, Path],
    setting: str = "triton_defaults",
    max_batch: int = 8,
    peers_dir: Path = Path("/tmp"),
) -> Any:
    """Start tritonserver serving ``models`` with ``setting`` (``max_batch``: rows per
    dynamic batch); a bench_server.Server and its label."""
    from bench_server import Server, free_port, wait_ready

    wheel_venv, model_venv = venvs(peers_dir)
    root = wheel_venv / "lib" / "python3.11" / "site-packages" / "pytriton"
    binary = root / "tritonserver" / "bin" / "tritonserver"
    stub = root / "tritonserver" / "python_backend_stubs" / "3.11" / "triton_python_backend_stub"
    if not binary.is_file():
        raise TritonUnavailable(f"{binary} not found: create it with {SETUP} {peers_dir}")
    site = next(iter((model_venv / "lib").glob("python3*/site-packages")), None)
    if site is None or not (site / "onnxruntime").is_dir():
        raise TritonUnavailable(
            f"{model_venv} lacks onnxruntime: create it with {SETUP} {peers_dir}"
        )
    batch = max_batch if setting == "triton_batch" else 0
    name = f"triton_batch{batch}" if batch else setting
    label = SETTINGS[setting].format(n=batch)
    work.mkdir(parents=True, exist_ok=True)
    backends = work / "backends"
    if not backends.exists():
        shutil.copytree(root / "tritonserver" / "backends", backends)
        shutil.copy(stub, backends / "python" / "triton_python_backend_stub")
    repo = work / f"models-{name}"
    for model, path in models.items():
        (repo / model / "1").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, repo / model / "1" / "model.onnx")
        (repo / model / "1" / "model.py").write_text(MODEL_PY.replace("{site!r}", repr(str(site))))
        (repo / model / "config.pbtxt").write_text(_config(model, path, batch))
    http, grpc, metrics = free_port(), free_port(), free_port()
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = str(
        wheel_venv / "lib" / "python3.11" / "site-packages" / "nvidia_pytriton.libs"
    )
    log = work / f"{name}.log"
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
    with log.open("wb") as out:  # the server writes to its own copy of the descriptor
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_ready(http, list(models), proc, 120)
    except RuntimeError as exc:
        proc.kill()
        proc.wait()
        tail = log.read_text(errors="replace")[-1500:]
        raise TritonUnavailable(f"{exc}; log: {tail}") from None
    return Server(name, proc, http, grpc), label
