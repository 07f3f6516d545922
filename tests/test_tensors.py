from __future__ import annotations

import numpy as np
import pytest

from edgeinfer import InputError, TensorSpec
from edgeinfer.tensors import (
    DTYPES,
    InputValidator,
    dtype_from_numpy,
    dtype_from_oip,
    dtype_from_onnx,
    is_anonymous,
)


def test_dtype_table_round_trips_between_numpy_onnx_and_oip() -> None:
    import onnx

    for name, dt in DTYPES.items():
        assert dtype_from_oip(dt.oip) is dt
        assert dtype_from_onnx(dt.onnx) is dt
        assert dtype_from_onnx(dt.ort) is dt
        if name != "bytes":
            assert dtype_from_numpy(dt.numpy) is dt
            assert onnx.helper.tensor_dtype_to_np_dtype(dt.onnx) == dt.numpy
    assert {d.oip for d in DTYPES.values()} == {
        "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
        "FP16", "FP32", "FP64", "BYTES",
    }  # fmt: skip
    assert dtype_from_numpy(np.dtype("<U3")).name == "bytes"


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: dtype_from_oip("FP8"), "unknown datatype 'FP8'"),
        (lambda: dtype_from_onnx(999), "unknown ONNX element type 999"),
        (lambda: TensorSpec("x", "float128", (1,)), "unknown dtype 'float128'"),
        (lambda: TensorSpec("x", "float32", (-2,)), "dimension -2 is not a size"),
    ],
)
def test_bad_dtype_names(call: object, match: str) -> None:
    with pytest.raises(InputError, match=match):
        call()  # type: ignore[operator]


def test_spec_dict_round_trip_and_oip_shape() -> None:
    spec = TensorSpec("ids", "int64", ("batch", None, 128))
    assert TensorSpec.from_dict(spec.to_dict()) == spec
    assert spec.oip_shape() == [-1, -1, 128]
    assert spec.describe() == "int64 [batch,?,128]"
    assert spec.is_dynamic


SPECS = [TensorSpec("pixels", "float32", ("N", 1, 8, 8))]


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (np.ones((2, 1, 8, 8), np.int64) + 0.5, None),  # float64 -> float32 is fine
        (np.ones((2, 1, 8, 8), np.float32).astype(str), r"got str \[2,1,8,8\].*strings"),
        (np.ones((1, 8, 8), np.float32), r"got float32 \[1,8,8\]: rank 3, expected rank 4"),
        (np.ones((2, 1, 8, 7), np.float32), r"dimension 3 is 7, expected 8"),
        (np.ones((0, 1, 8, 8), np.float32), r"empty"),
        (np.ones((1, 1, 8, 8), np.float64)[:, :, ::2, :].repeat(2, 2), None),  # non-contiguous
        ("a string", r"expected float32 \[N,1,8,8\], got a str"),
        ([[1, 2], [3]], "cannot read as an array"),
        (np.array([None] * 64, dtype=object).reshape(1, 1, 8, 8), "got object"),
    ],
)
def test_validator_cases(value: object, match: str | None) -> None:
    v = InputValidator(SPECS)
    if match is None:
        out = v(value)
        assert out["pixels"].dtype == np.float32
        assert out["pixels"].flags.c_contiguous
    else:
        with pytest.raises(InputError, match=match):
            v(value)


def test_integers_feed_floats_but_floats_never_feed_integers() -> None:
    v = InputValidator([TensorSpec("ids", "int32", ("b", 3))])
    assert v([[1, 2, 3]])["ids"].dtype == np.int32  # python ints (int64) that fit int32
    with pytest.raises(InputError, match=r"float -> integer would truncate"):
        v([[1.0, 2.0, 3.0]])
    with pytest.raises(InputError, match=r"do not fit int32"):
        v(np.array([[1, 2, 2**40]]))
    f = InputValidator([TensorSpec("x", "float32", (None,))])
    assert f([1, 2, 3])["x"].dtype == np.float32
    with pytest.raises(InputError, match="expected float32"):
        f(np.array([True, False]))


def test_names_missing_unknown_and_symbol_agreement() -> None:
    specs = [
        TensorSpec("input_ids", "int64", ("batch", "sequence")),
        TensorSpec("attention_mask", "int64", ("batch", "sequence")),
    ]
    v = InputValidator(specs)
    ids = np.ones((2, 5), np.int64)
    with pytest.raises(InputError, match=r"missing input\(s\) 'attention_mask'"):
        v({"input_ids": ids})
    with pytest.raises(InputError, match=r"unknown input\(s\) 'token_type_ids'"):
        v({"input_ids": ids, "attention_mask": ids, "token_type_ids": ids})
    with pytest.raises(InputError, match=r"'sequence'\) is 4, but input 'input_ids' has"):
        v({"input_ids": ids, "attention_mask": np.ones((2, 4), np.int64)})
    with pytest.raises(InputError, match="pass a dict name -> array"):
        v(ids)
    out = v({"input_ids": ids, "attention_mask": ids})
    assert list(out) == ["input_ids", "attention_mask"]


def test_nan_and_inf_are_allowed() -> None:
    v = InputValidator([TensorSpec("x", "float32", ("N", 2))])
    out = v(np.array([[np.nan, np.inf]]))
    assert np.isnan(out["x"][0, 0]) and np.isinf(out["x"][0, 1])


def test_bytes_inputs() -> None:
    v = InputValidator([TensorSpec("text", "bytes", (None,))])
    out = v(["hello", "world"])
    assert out["text"].dtype == object


@pytest.mark.parametrize("unknown", [None, "?", "", " ? ", "-1", -1, "unk__0", "unk__17"])
def test_every_spelling_of_an_unknown_dim_is_its_own_size(unknown: object) -> None:
    assert is_anonymous(unknown)
    spec = TensorSpec("x", "float32", (None, 3, unknown, unknown))  # type: ignore[arg-type]
    assert spec.shape == (None, 3, None, None)
    assert spec.describe() == "float32 [?,3,?,?]"
    out = InputValidator([spec])(np.zeros((1, 3, 48, 192), np.float32))
    assert out["x"].shape == (1, 3, 48, 192)


@pytest.mark.parametrize("name", ["batch", "p2o.DynamicDimension.1", "unk", "unk__x", "?x"])
def test_named_dims_stay_shared_symbols(name: str) -> None:
    assert not is_anonymous(name)
    v = InputValidator([TensorSpec("a", "float32", (name,)), TensorSpec("b", "float32", (name,))])
    assert v({"a": np.zeros(2, np.float32), "b": np.zeros(2, np.float32)})["b"].shape == (2,)
    with pytest.raises(InputError, match=r"input 'b': dimension 0 .* is 3, but input 'a' has"):
        v({"a": np.zeros(2, np.float32), "b": np.zeros(3, np.float32)})


def test_a_symbol_repeated_in_one_input_must_agree_with_itself() -> None:
    v = InputValidator([TensorSpec("square", "float32", ("side", "side"))])
    assert v(np.zeros((4, 4), np.float32))["square"].shape == (4, 4)
    with pytest.raises(InputError, match=r"dimension 1 \('side'\) is 5, but input 'square'"):
        v(np.zeros((4, 5), np.float32))
