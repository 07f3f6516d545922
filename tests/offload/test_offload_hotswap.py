"""Hot swap: an Offloader's local model follows the bundle the update agent committed.

The state directory is a real one: bundles are packed, installed into the A/B slots and
committed through the delivery side's ``SlotStore``, exactly the steps the agent takes
after its health gate.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from offload_helpers import Served, mlp

from edgeinfer.bundle import Bundle, sha256_file
from edgeinfer.deliver import ActiveBundleWatcher
from edgeinfer.deliver.slots import SlotStore
from edgeinfer.offload import Offloader, RemoteModel
from edgeinfer.runtime import load


def _commit(tmp: Path, state: Path, version: int) -> np.ndarray:
    """Build, pack, install and commit ``mlp`` v``version``; its weights differ per version.

    Returns the version's own answer to ``_X`` (computed from the model file).
    """
    model = mlp(tmp / f"mlp-{version}.onnx", seed=version)
    bundle = Bundle.create(model, tmp / f"bundle-{version}", name="mlp", version=version)
    packed = bundle.pack(tmp / f"mlp-{version}.tar")
    store = SlotStore(state)
    info = store.install(packed, "mlp", version, sha256_file(packed))
    store.switch(info, 1)
    store.commit()
    with load(model, providers=["cpu"]) as m:
        out: np.ndarray = m.predict({"x": _X})["logits"]
    return out


_X = np.random.default_rng(7).standard_normal((2, 4)).astype(np.float32)


def _loader(path: Path) -> Any:
    return load(path, providers=["cpu"], threads=1)


def test_offloader_follows_the_committed_bundle_without_failing_requests(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    want1 = _commit(tmp_path, state, 1)
    with Offloader.follow(state, policy="local", interval=0.02, loader=_loader) as off:
        assert off.local.version == 1 and off.watcher is not None
        first = off.predict({"x": _X})
        assert first.placement == "local"
        np.testing.assert_array_equal(first.outputs["logits"], want1)
        assert off.local_est.by_signature  # measured on v1

        errors: list[BaseException] = []
        answers: list[np.ndarray] = []
        stop = threading.Event()

        def client() -> None:
            while not stop.is_set():
                try:
                    answers.append(off.predict({"x": _X}).outputs["logits"])
                except BaseException as exc:  # any failed request
                    errors.append(exc)
                    return
                stop.wait(0.001)

        threads = [threading.Thread(target=client) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            stop.wait(0.05)  # requests in flight on v1 ...
            want2 = _commit(tmp_path, state, 2)  # ... while the agent commits v2
            for _ in range(400):
                if off.local.version == 2:
                    break
                stop.wait(0.02)
            stop.wait(0.05)  # and more requests on v2
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert errors == []
        assert off.local.version == 2 and off.stats.swaps == 1
        assert not np.array_equal(want1, want2)
        # every answer came whole from one version or the other, never a failure
        assert all(np.array_equal(a, want1) or np.array_equal(a, want2) for a in answers)
        after = off.predict({"x": _X})
        np.testing.assert_array_equal(after.outputs["logits"], want2)
    assert off.watcher._thread is None  # close() stopped the watching follow() started


def test_local_estimates_start_afresh_after_a_swap(tmp_path: Path, served: Served) -> None:
    state = tmp_path / "state"
    _commit(tmp_path, state, 1)
    watcher = ActiveBundleWatcher(state, loader=_loader)
    remote = RemoteModel(served.url, "mlp")
    with Offloader(watcher, remote, policy="latency") as off:
        off.calibrate({"x": _X}, runs=2)
        sig = (_X.shape,)
        assert off.local_est.predict(sig, _X.size) is not None
        before = off.decide({"x": _X})
        assert before.placement.kind in ("local", "remote")
        want2 = _commit(tmp_path, state, 2)
        assert watcher.check() is True
        # the new model's latency is unknown: the policy measures it rather than assume v1's
        decision = off.decide({"x": _X})
        assert decision.placement.kind == "local" and "measuring" in decision.reason
        assert off.stats.swaps == 1 and off.local_est.predict(sig, _X.size) is None
        p = off.predict({"x": _X})
        assert p.placement == "local"
        np.testing.assert_array_equal(p.outputs["logits"], want2)
        assert off.local_est.predict(sig, _X.size) is not None
    watcher.stop()


def test_a_watcher_with_nothing_committed_means_no_local_model(
    tmp_path: Path, served: Served
) -> None:
    watcher = ActiveBundleWatcher(tmp_path / "empty")
    with Offloader(watcher, RemoteModel(served.url, "mlp")) as off:
        assert off.local is None
        p = off.predict({"x": _X})
        assert p.placement == "remote"
    with pytest.raises(Exception, match="needs a local model"):
        Offloader(ActiveBundleWatcher(tmp_path / "empty"), served.url)
