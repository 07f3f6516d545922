"""Hot swap: a Model follows the committed bundle without failing in-flight requests."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
from deliver_support import GOLDEN_X, fleet

from edgeinfer.deliver import ActiveBundleWatcher, committed_bundle
from edgeinfer.runtime.model import Model, load


def test_hot_swap_keeps_in_flight_requests_alive(tmp_path: Path, make_model: Any) -> None:
    with fleet(tmp_path, make_model) as f:
        swaps: list[tuple[int | None, int | None]] = []
        watcher = ActiveBundleWatcher(
            f.state,
            loader=lambda p: load(p, providers=["cpu"], threads=1),
            on_swap=lambda old, new: swaps.append((old and old.version, new.version)),
            interval=0.05,
        )
        assert watcher.model.version == 1 and swaps == [(None, 1)]
        seen: set[int] = set()
        errors: list[BaseException] = []
        stop = threading.Event()

        def client() -> None:
            while not stop.is_set():
                model = watcher.model  # once per request
                try:
                    out = model.predict({"x": GOLDEN_X})["logits"]
                    assert out.shape == (4, 3) and np.isfinite(out).all()
                    seen.add(int(model.version or 0))
                except BaseException as exc:  # any failure of an in-flight request
                    errors.append(exc)
                    return
                stop.wait(0.002)  # a steady stream of requests, not a busy loop

        threads = [threading.Thread(target=client) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            in_flight = watcher.model  # a request that started before the swap ...
            f.pub.publish(f.bundle(2))
            assert f.agent().result == "updated"
            assert watcher.check() is True
            assert in_flight.version == 1  # ... finishes on the old model, which still works
            in_flight.predict({"x": GOLDEN_X})
            del in_flight
            assert watcher.check() is False  # nothing new
            f.pub.publish(f.bundle(3))
            assert f.agent().result == "updated"
            watcher.start()  # the background thread picks up the next commit
            for _ in range(200):
                if watcher.model.version == 3:
                    break
                stop.wait(0.05)
        finally:
            stop.set()
            for t in threads:
                t.join()
            watcher.stop()
        assert errors == []
        assert watcher.model.version == 3
        assert swaps == [(None, 1), (1, 2), (2, 3)]
        assert seen and seen <= {1, 2, 3}
        assert watcher.current is not None
        assert committed_bundle(f.state) == watcher.store.bundle_dir(watcher.current)


def test_a_bundle_that_does_not_load_keeps_the_old_model(tmp_path: Path, make_model: Any) -> None:
    with fleet(tmp_path, make_model) as f:

        def picky(path: Path) -> Model:
            model = load(path, providers=["cpu"])
            if model.version == 2:
                model.close()
                raise RuntimeError("out of memory")
            return model

        watcher = ActiveBundleWatcher(f.state, loader=picky)
        f.pub.publish(f.bundle(2))
        assert f.agent().result == "updated"
        assert watcher.check() is False
        assert watcher.model.version == 1
        assert "out of memory" in str(watcher.last_error)


def test_no_committed_bundle_yet(tmp_path: Path) -> None:
    import pytest

    from edgeinfer.deliver import DeliverError

    watcher = ActiveBundleWatcher(tmp_path)
    assert watcher.current is None and committed_bundle(tmp_path) is None
    with pytest.raises(DeliverError, match="no committed bundle"):
        _ = watcher.model
