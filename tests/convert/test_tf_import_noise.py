"""TensorFlow 2.21 writes two start-up notes to stderr as its C++ libraries load, whatever
TF_CPP_MIN_LOG_LEVEL says; edgeinfer drops those two and gives back everything else."""

from __future__ import annotations

import os

import pytest

from edgeinfer.convert._tf import drop_import_noise


def test_only_tensorflows_start_up_notes_are_dropped(capfd: pytest.CaptureFixture[str]) -> None:
    with drop_import_noise():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are x\n")
        os.write(2, b"I0000 00:00:1.0 1 port.cc:153] oneDNN custom operations are on. y\n")
        os.write(2, b"a real warning from a library\n")
    os.write(2, b"after\n")
    err = capfd.readouterr().err
    assert err == "a real warning from a library\nafter\n"
