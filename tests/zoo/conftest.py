"""Session-scoped example-model bundles, built once per test run into a temporary directory.

``digits_bundle`` trains (or takes from the user cache) the digits CNN; ``fraud_bundle`` and
``sensor_bundle`` train their models (a few seconds each). Tests elsewhere can reuse them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeinfer import Bundle


@pytest.fixture(scope="session")
def zoo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("zoo")


@pytest.fixture(scope="session")
def digits_bundle(zoo_dir: Path) -> Bundle:
    from edgeinfer.zoo import digits

    return digits.build(zoo_dir / "digits")


@pytest.fixture(scope="session")
def fraud_bundle(zoo_dir: Path) -> Bundle:
    from edgeinfer.zoo import fraud

    return fraud.build(zoo_dir / "fraud")


@pytest.fixture(scope="session")
def sensor_bundle(zoo_dir: Path) -> Bundle:
    from edgeinfer.zoo import sensor

    return sensor.build(zoo_dir / "sensor")
