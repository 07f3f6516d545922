"""Demo stage 1: build a real model, bundle it, run it locally on held-out data."""

from __future__ import annotations

import time

import numpy as np
from rich.table import Table

from edgeinfer.demo import DemoContext

TITLE = "Build, bundle and run a model on this device"


def run(ctx: DemoContext) -> None:
    from edgeinfer import load, zoo
    from edgeinfer.runtime.bench import bench

    console = ctx.console
    with console.status("training a small CNN on scikit-learn's digits images..."):
        start = time.perf_counter()
        bundle = zoo.digits.build(ctx.workdir / "bundles" / "digits-cnn")
        built = time.perf_counter() - start
    _, _, x_test, y_test = zoo.digits.load_data()
    m = bundle.manifest
    console.print(
        f"bundle [bold]{m.name}[/] v{m.version}: {m.model.size / 1e3:.1f} kB, "
        f"sha256 {m.model.sha256[:12]}..., golden sample recorded ({built:.1f} s)"
    )
    model = load(bundle.path, threads=2)
    problems = bundle.check_golden(model)
    console.print(
        "golden sample: "
        + ("[green]reproduced[/]" if not problems else f"[red]{'; '.join(problems)}[/]")
    )
    logits = model.predict(x_test)["logits"]
    accuracy = float((logits.argmax(axis=1) == y_test).mean())
    console.print(
        f"held-out accuracy on {len(y_test)} real digit images: [bold]{accuracy:.2%}[/] "
        f"(providers: {', '.join(model.providers)})"
    )
    table = Table(title="local latency (edgeinfer.Model, 2 threads)")
    for col in ("batch", "p50 ms", "p90 ms", "p99 ms", "images/s"):
        table.add_column(col, justify="right")
    seconds = 0.3 if ctx.fast else 1.5
    for batch in (1, 8, 64):
        r = bench(
            bundle.path,
            inputs={"pixels": np.ascontiguousarray(x_test[:batch])},
            threads=2,
            min_seconds=seconds,
            min_calls=20,
        )
        table.add_row(
            str(batch),
            f"{r.p50_ms:.3f}",
            f"{r.p90_ms:.3f}",
            f"{r.p99_ms:.3f}",
            f"{r.throughput_per_s:,.0f}",
        )
    console.print(table)
    model.close()
    ctx.artifacts["digits_bundle"] = bundle.path
    ctx.artifacts["digits_data"] = (x_test, y_test)
    ctx.artifacts["digits_accuracy"] = accuracy
