"""``edgeinfer serve --follow``: serving the bundle an update agent committed, hot-swapped.

The state directory is a real one: bundles are packed, installed into the A/B slots, switched
to and committed through the delivery side's ``SlotStore``, the steps the agent takes around
its health gate. Requests go over real HTTP to a real server while it swaps.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import serve_helpers as h

from edgeinfer.bundle import Bundle, sha256_file
from edgeinfer.cli.main import main
from edgeinfer.deliver.slots import SlotInfo, SlotStore
from edgeinfer.runtime import load
from edgeinfer.serve.batching import Batcher
from edgeinfer.serve.config import BatchConfig, ServeConfig
from edgeinfer.serve.metrics import Metrics
from edgeinfer.serve.repository import ModelRepository

X = np.random.default_rng(7).standard_normal((1, 4)).astype(np.float32)


def _install(tmp: Path, state: Path, version: int) -> tuple[SlotInfo, np.ndarray]:
    """Build, pack and install ``mlp`` v``version`` (weights differ per version), on trial.

    Returns the slot and the version's own answer to ``X`` (computed from the model file).
    """
    model = h.mlp(tmp / f"mlp-{version}.onnx", seed=version)
    bundle = Bundle.create(model, tmp / f"bundle-{version}", name="mlp", version=version)
    packed = bundle.pack(tmp / f"mlp-{version}.tar")
    store = SlotStore(state)
    info = store.install(packed, "mlp", version, sha256_file(packed))
    store.switch(info, 1)
    with load(model, providers=["cpu"]) as m:
        out: np.ndarray = m.predict({"x": X})["logits"]
    return info, out


def _commit(tmp: Path, state: Path, version: int) -> np.ndarray:
    _, out = _install(tmp, state, version)
    SlotStore(state).commit()
    return out


def _eventually(check: Callable[[], bool], timeout_s: float = 60.0) -> None:
    """Poll until ``check()`` holds (the server rescans every 0.05 s); not a timing test."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("the server did not pick up the committed bundle")
        time.sleep(0.02)


def _infer(client: httpx.Client) -> tuple[str, np.ndarray]:
    r = client.post("/v2/models/mlp/infer", json=h.infer_body(X, outputs=[{"name": "logits"}]))
    assert r.status_code == 200, r.text
    doc = r.json()
    return doc["model_version"], np.array(doc["outputs"][0]["data"], np.float32).reshape(1, 3)


def _versions(client: httpx.Client) -> list[str] | None:
    r = client.get("/v2/models/mlp")
    return r.json()["versions"] if r.status_code == 200 else None


def test_serve_follows_the_committed_bundle_without_failing_requests(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    cfg = ServeConfig(
        None, port=0, grpc_port=None, poll_interval_s=0.05, threads=1, follow=(state,)
    )
    with h.running(cfg) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        # nothing committed yet: not ready, and not an error
        assert client.get("/v2/health/ready").status_code == 503
        assert client.get("/v2/models/mlp/ready").status_code == 404
        _install(tmp_path, state, 1)  # on trial: never served
        assert client.get("/v2/health/ready").status_code == 503

        SlotStore(state).commit()
        _eventually(lambda: client.get("/v2/health/ready").status_code == 200)
        with load(tmp_path / "mlp-1.onnx", providers=["cpu"]) as m:
            want1 = m.predict({"x": X})["logits"]
        version, first = _infer(client)
        assert version == "1"
        np.testing.assert_array_equal(first, want1)
        assert _versions(client) == ["1"]

        errors: list[BaseException] = []
        answers: list[tuple[str, np.ndarray]] = []
        stop = threading.Event()

        def user() -> None:
            with httpx.Client(base_url=srv.url, timeout=30) as own:
                while not stop.is_set():
                    try:
                        answers.append(_infer(own))
                    except BaseException as exc:  # any failed request
                        errors.append(exc)
                        return

        users = [threading.Thread(target=user) for _ in range(3)]
        for t in users:
            t.start()
        try:
            _eventually(lambda: len(answers) >= 5)  # requests in flight on v1 ...
            want2 = _commit(tmp_path, state, 2)  # ... while the agent commits v2
            _eventually(lambda: _versions(client) == ["2"])
            seen = len(answers)
            _eventually(lambda: len(answers) >= seen + 5 or bool(errors))  # and more on v2
        finally:
            stop.set()
            for t in users:
                t.join()

        assert errors == []
        assert not np.array_equal(want1, want2)
        # every answer came whole from the version it names, never a failure
        for version, out in answers:
            np.testing.assert_array_equal(out, want1 if version == "1" else want2)
            assert version in ("1", "2")
        assert answers[-1][0] == "2"
        version, after = _infer(client)
        assert version == "2"
        np.testing.assert_array_equal(after, want2)
        meta = client.get("/v2/models/mlp").json()
        assert meta["name"] == "mlp" and meta["versions"] == ["2"]
        assert client.get("/v2/models/mlp/versions/1/ready").status_code == 404


def _make_batcher(model: object, name: str, config: BatchConfig) -> Batcher:
    return Batcher(model, name, config, Metrics())  # type: ignore[arg-type]


def test_a_trial_or_a_broken_commit_never_replaces_the_committed_model(tmp_path: Path) -> None:
    state = tmp_path / "state"

    async def scenario() -> None:
        repo = ModelRepository(None, _make_batcher, threads=1, follow=(state,))
        try:
            await repo.refresh()
            assert repo.scanned and not repo.all_ready() and repo.names() == []
            _commit(tmp_path, state, 1)
            await repo.refresh()
            assert repo.all_ready() and repo.get("mlp").version == 1

            _install(tmp_path, state, 2)  # on trial
            await repo.refresh()
            assert repo.versions("mlp") == [1]

            SlotStore(state).rollback()  # the gate failed
            await repo.refresh()
            assert repo.versions("mlp") == [1]

            info, _ = _install(tmp_path, state, 3)
            SlotStore(state).commit()
            # damaged after the commit: the load verifies the bundle and refuses it
            (SlotStore(state).bundle_dir(info) / "model.onnx").write_bytes(b"not a model")
            await repo.refresh()
            assert repo.versions("mlp") == [1] and repo.get("mlp").version == 1
            (row,) = [r for r in repo.index() if r.get("version") == "3"]
            assert row["state"] == "UNAVAILABLE"
        finally:
            await repo.close()

    asyncio.run(scenario())


def test_each_switch_is_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "state"

    def switches() -> list[str]:
        return [r.getMessage() for r in caplog.records if "switched" in r.getMessage()]

    async def scenario() -> None:
        repo = ModelRepository(None, _make_batcher, threads=1, follow=(state,))
        try:
            _commit(tmp_path, state, 1)
            await repo.refresh()
            assert switches() == []  # the first version is a load, not a switch
            _commit(tmp_path, state, 2)
            await repo.refresh()
            await repo.refresh()  # nothing changed: nothing more to say
            assert switches() == [
                f"model mlp: switched from version 1 to version 2 (committed in {state})"
            ]
            (record,) = [r for r in caplog.records if "switched" in r.getMessage()]
            assert record.levelname == "INFO"
        finally:
            await repo.close()

    with caplog.at_level("INFO", logger="edgeinfer.serve.repository"):
        asyncio.run(scenario())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--follow", "{tmp}/missing"], "--follow"),
        (["--follow", "{tmp}/missing"], "no such directory"),
        (["--follow", "{tmp}", "--poll", "0"], "--follow needs --poll"),
        ([], "pass a model REPOSITORY, --follow STATE_DIR, or both"),
    ],
)
def test_follow_arguments_are_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    with pytest.raises(SystemExit) as info:
        main(["serve", *args])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"port": -1}, "port -1"), ({"grpc_port": -1}, "None to run without gRPC")],
)
def test_config_refuses_out_of_range_ports(kwargs: dict[str, int], match: str) -> None:
    from edgeinfer.errors import InputError
    from edgeinfer.serve.config import ServeConfig

    with pytest.raises(InputError, match=match):
        ServeConfig(None, **kwargs)
