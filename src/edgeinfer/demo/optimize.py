"""Demo stage: shrink the digits CNN within an accuracy budget and show every candidate."""

from __future__ import annotations

from edgeinfer.demo import DemoContext

TITLE = "Optimize the model for the device, gated on accuracy"


def run(ctx: DemoContext) -> None:
    from edgeinfer import zoo
    from edgeinfer.optimize import SearchConfig, optimize
    from edgeinfer.optimize.report import candidate_table

    console = ctx.console
    bundle_path = ctx.artifacts.get("digits_bundle")
    if bundle_path is None:
        bundle_path = zoo.digits.build(ctx.workdir / "bundles" / "digits-cnn").path
    if "digits_data" in ctx.artifacts:
        x_test, y_test = ctx.artifacts["digits_data"]
    else:
        _, _, x_test, y_test = zoo.digits.load_data()
    x_train = zoo.digits.load_data()[0]
    candidates = None
    if ctx.fast:
        candidates = ("dynamic-int8-per-channel", "static-int8-minmax", "static+exclude-sensitive")
    config = SearchConfig(
        metric="accuracy",
        max_drop=0.005,  # half a point of held-out accuracy
        objective="size",
        candidates=candidates,
        threads=2,
        repeats=10 if ctx.fast else 30,
        memory=not ctx.fast,
    )
    console.print(
        f"searching INT8 recipes for {bundle_path.name}: metric accuracy on {len(y_test)} "
        "held-out digits, at most 0.5 points lost, objective: smallest file"
    )
    with console.status("building and measuring candidates..."):
        outcome = optimize(
            bundle_path,
            {"pixels": x_test},
            ctx.workdir / "bundles" / "digits-cnn-int8",
            labels=y_test,
            calibration={"pixels": x_train[:256]},
            config=config,
            overwrite=True,
        )
    result = outcome.result
    console.print(candidate_table(result, title="digits CNN: candidates"))
    console.print(f"[green]{result.message}[/]" if not result.kept_original else result.message)
    console.print(f"bundle: {outcome.bundle.path}; report: {outcome.report_dir}")
    ctx.artifacts["digits_int8_bundle"] = outcome.bundle.path
