"""Demo stage: ship the digits CNN securely, then a fine-tuned v2 as a small delta.

Makes signing keys, publishes v1 to a TUF repository served on 127.0.0.1, provisions a
device agent with the repository's root, and installs v1. Then it fine-tunes only the
last layer of the CNN on the training images (:func:`finetune_last_layer`), publishes v2,
and the agent updates by delta: bytes on the wire against the full bundle, the health
gate, and a hot swap of the running :class:`~edgeinfer.runtime.model.Model`.
"""

from __future__ import annotations

import functools
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from edgeinfer.demo import DemoContext

TITLE = "Ship it: signed TUF repository, delta update, health gate, hot swap"

__all__ = ["TITLE", "finetune_last_layer", "run"]


def finetune_last_layer(
    model_path: Path,
    out_path: Path,
    x: np.ndarray,
    y: np.ndarray,
    *,
    output: str = "logits",
    steps: int = 60,
    lr: float = 0.05,  # gradient-descent step on the softmax cross-entropy
) -> Path:
    """Retrain only the final ``Gemm`` (weights and bias) of a classifier on ``(x, y)``.

    The features feeding that layer are computed once with ONNX Runtime; the layer is then
    fitted by plain gradient descent from its current weights, and written back under the
    same initializer names, so everything but the last layer stays byte for byte the same.
    """
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    model = onnx.load(str(model_path))
    graph = model.graph
    node = next((n for n in graph.node if output in n.output), None)
    if node is None or node.op_type != "Gemm" or len(node.input) < 3:
        raise ValueError(f"{model_path}: output {output!r} does not come from a Gemm with bias")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
        raise ValueError(f"{model_path}: only Gemm with alpha=beta=1 and no transA is supported")
    inits = {i.name: i for i in graph.initializer}
    w_name, b_name = node.input[1], node.input[2]
    w = numpy_helper.to_array(inits[w_name]).astype(np.float64)
    b = numpy_helper.to_array(inits[b_name]).astype(np.float64)
    trans_b = bool(attrs.get("transB", 0))
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(
        onnx.helper.make_tensor_value_info(node.input[0], onnx.TensorProto.FLOAT, None)
    )
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {session.get_inputs()[0].name: x.astype(np.float32)}
    feats = session.run([node.input[0]], feeds)[0].astype(np.float64)
    onehot = np.eye(int(b.shape[0]))[y]
    wt = w.T if trans_b else w  # [features, classes]
    for _ in range(steps):
        logits = feats @ wt + b
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        g = (p - onehot) / len(y)
        wt = wt - lr * feats.T @ g
        b = b - lr * g.sum(axis=0)
    new_w = (wt.T if trans_b else wt).astype(np.float32)
    inits[w_name].CopyFrom(numpy_helper.from_array(new_w, w_name))
    inits[b_name].CopyFrom(numpy_helper.from_array(b.astype(np.float32), b_name))
    onnx.save(model, str(out_path))
    return out_path


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def run(ctx: DemoContext) -> None:
    from edgeinfer import zoo
    from edgeinfer.bundle import Bundle
    from edgeinfer.deliver import ActiveBundleWatcher, Agent, AgentConfig, KeyStore, Publisher
    from edgeinfer.runtime.model import load

    console = ctx.console
    work = ctx.workdir / "deliver"
    shutil.rmtree(work, ignore_errors=True)  # a fresh repository, keys and device each run
    x_train, y_train, x_test, y_test = zoo.digits.load_data()
    v1_path = ctx.artifacts.get("digits_bundle") or zoo.digits.build(work / "digits-v1").path
    v1 = Bundle.open(v1_path)

    keys = KeyStore.init(work / "keys")
    repo = work / "repo"
    pub = Publisher(repo, keys)
    first = pub.publish(v1.path, channel="stable")
    console.print(
        f"keys in {keys.path} (ed25519, outside the repository); published {first.model} "
        f"v{first.version} ({first.length / 1e3:.1f} kB) to {repo}"
    )

    handler = functools.partial(_Quiet, directory=str(repo))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        config = AgentConfig(
            url, work / "device", root=repo / "metadata" / "root.json", device_id="demo-device"
        )
        agent = Agent(config)
        r1 = agent.run_once()
        console.print(
            f"device agent: {r1.result} to v{r1.to_version} via {r1.via} "
            f"({r1.bytes_downloaded / 1e3:.1f} kB downloaded)"
        )
        watcher = ActiveBundleWatcher(
            config.state_dir, loader=lambda p: load(p, providers=["cpu"], threads=1)
        )
        acc1 = float((watcher.model.predict(x_test)["logits"].argmax(1) == y_test).mean())

        steps = 30 if ctx.fast else 60
        tuned = finetune_last_layer(
            v1.model_path, work / "digits-v2.onnx", x_train, y_train, steps=steps
        )
        v2 = Bundle.create(
            tuned,
            work / "digits-v2",
            name=v1.name,
            version=v1.version + 1,
            golden_inputs={"pixels": x_test[:8]},
            labels=v1.manifest.labels,
            recipe={"fine_tune": "last layer (fc2), gradient descent", "steps": steps},
            overwrite=True,
        )
        second = pub.publish(v2.path)
        r2 = agent.run_once()
        swapped = watcher.check()
        acc2 = float((watcher.model.predict(x_test)["logits"].argmax(1) == y_test).mean())
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)

    table = Table(title=f"update v{first.version} -> v{second.version} (last layer fine-tuned)")
    for col in ("what", "bytes", "share of full"):
        table.add_column(col, justify="right")
    table.add_row("full bundle", f"{second.length:,}", "100%")
    for d in second.deltas:
        table.add_row(
            f"delta from v{d.from_version} ({d.method})",
            f"{d.size:,}",
            f"{d.size / second.length:.1%}",
        )
    table.add_row(
        f"downloaded by the agent ({r2.via})",
        f"{r2.bytes_downloaded:,}",
        f"{r2.bytes_downloaded / second.length:.1%}",
    )
    console.print(table)
    status = agent.status() or {}
    active = status.get("active") or {}
    console.print(
        f"agent: {r2.result} (health gate: bundle loads, golden sample, latency budget passed); "
        f"active {active.get('name')} v{active.get('version')} sha256 "
        f"{str(active.get('sha256'))[:12]}..."
    )
    console.print(
        f"hot swap of the running model: {'done' if swapped else 'not needed'}; held-out "
        f"accuracy v1 {acc1:.2%} -> v2 {acc2:.2%}"
    )
    ctx.artifacts["deliver_repo"] = repo
    ctx.artifacts["deliver_state"] = config.state_dir
    ctx.artifacts["deliver_bytes"] = {"full": second.length, "delta": r2.bytes_downloaded}
