"""Relations: constructors, exports, dtype rules and the validation of bad input."""
import numpy as np
import polars as pl
import pytest

import workbench as wb
from workbench.errors import RelationError


# ---- from_tensor / to_tensor ------------------------------------------------------------------

def test_from_tensor_keys_take_the_leading_axes(rng):
    x = rng.normal(size=(3, 4, 2, 5))
    R = wb.from_tensor(x, keys=("i", "j"))
    assert R.keys == ("i", "j")
    assert R.extents == (3, 4)
    assert R.value_shape == (2, 5)
    assert len(R) == 12
    df = R.to_frame()
    assert df.height == 12
    row = df.filter((pl.col("i") == 2) & (pl.col("j") == 1))
    np.testing.assert_allclose(row["value"].to_numpy()[0], x[2, 1])
    np.testing.assert_allclose(R.to_tensor(), x)


def test_from_tensor_scalar_values(rng):
    x = rng.normal(size=(4, 3))
    R = wb.from_tensor(x, keys=("i", "j"))
    assert R.value_shape == ()
    df = R.to_frame()
    assert df.schema["value"] == pl.Float64
    np.testing.assert_allclose(df.sort("i", "j")["value"].to_numpy(), x.ravel())


def test_from_tensor_without_keys_holds_one_tuple(rng):
    w = rng.normal(size=(3, 2))
    W = wb.from_tensor(w)
    assert W.keys == () and W.extents == () and W.value_shape == (3, 2)
    assert len(W) == 1
    np.testing.assert_allclose(W.to_tensor(), w)
    s = wb.from_tensor(2.5)
    assert s.value_shape == ()
    assert float(s.to_tensor()) == 2.5


def test_from_tensor_needs_enough_axes():
    with pytest.raises(RelationError, match="axes"):
        wb.from_tensor(np.ones(3), keys=("i", "j"))


def test_to_tensor_with_a_larger_shape_pads_with_zeros(rng):
    x = rng.normal(size=(3, 2))
    R = wb.from_tensor(x, keys=("i",))
    dense = R.to_tensor(shape=(5,))
    assert dense.shape == (5, 2)
    np.testing.assert_allclose(dense[:3], x)
    np.testing.assert_array_equal(dense[3:], 0.0)


def test_to_tensor_shape_must_cover_the_keys(rng):
    R = wb.from_tensor(rng.normal(size=(4, 2)), keys=("i",))
    with pytest.raises(RelationError, match="extent 2"):
        R.to_tensor(shape=(2,))
    with pytest.raises(RelationError, match="one extent per key"):
        R.to_tensor(shape=(4, 4))


# ---- from_matrix / to_matrix ------------------------------------------------------------------

@pytest.mark.parametrize("block", [(1, 1), (2, 3), (4, 6), (1, 6), (4, 1)])
def test_from_matrix_blocks(rng, block):
    x = rng.normal(size=(4, 6))
    A = wb.from_matrix(x, block=block)
    br, bc = block
    assert A.keys == ("row", "col")
    assert A.extents == (4 // br, 6 // bc)
    assert A.value_shape == (br, bc)
    df = A.to_frame().filter((pl.col("row") == A.extents[0] - 1) & (pl.col("col") == 0))
    np.testing.assert_allclose(df["value"].to_numpy()[0].reshape(br, bc), x[-br:, :bc])
    np.testing.assert_allclose(wb.to_matrix(A), x)


def test_to_matrix_of_scalar_blocks_and_swapped_keys(rng):
    x = rng.normal(size=(3, 5))
    S = wb.from_tensor(x, keys=("row", "col"))          # scalar "blocks"
    np.testing.assert_allclose(wb.to_matrix(S), x)
    A = wb.from_matrix(x, block=(3, 1))
    swapped = wb.select(A, keys={"col": "col", "row": "row"})
    assert swapped.keys == ("col", "row")
    np.testing.assert_allclose(wb.to_matrix(swapped), x)


def test_to_matrix_needs_row_and_col_keys(rng):
    R = wb.from_tensor(rng.normal(size=(3, 2, 2)), keys=("i",))
    with pytest.raises(RelationError, match="'row' and 'col'"):
        wb.to_matrix(R)


def test_from_matrix_refuses_bad_blocks(rng):
    x = rng.normal(size=(6, 4))
    with pytest.raises(RelationError, match=r"block shape \(4, 2\) does not divide"):
        wb.from_matrix(x, block=(4, 2))
    with pytest.raises(RelationError, match="block"):
        wb.from_matrix(x, block=(0, 2))
    with pytest.raises(RelationError, match="block"):
        wb.from_matrix(x, block=(2,))
    with pytest.raises(RelationError, match="positive integers"):
        wb.from_matrix(x, block=(1.5, 2))               # would silently truncate to 1
    with pytest.raises(RelationError, match="2-D"):
        wb.from_matrix(np.ones((2, 2, 2)), block=(1, 1))


# ---- from_frame -------------------------------------------------------------------------------

def test_from_frame_scalar_values_and_default_extents():
    df = pl.DataFrame({"src": [0, 3, 1], "dst": [2, 0, 4], "w": [0.5, 1.5, -2.0]})
    E = wb.from_frame(df, keys=("src", "dst"), value="w")
    assert E.keys == ("src", "dst")
    assert E.extents == (4, 5)                          # max(key) + 1
    assert E.value_shape == ()
    expected = np.zeros((4, 5))
    expected[[0, 3, 1], [2, 0, 4]] = [0.5, 1.5, -2.0]
    np.testing.assert_allclose(E.to_tensor(), expected)


def test_from_frame_explicit_extents():
    df = pl.DataFrame({"i": [0, 2], "v": [1.0, 2.0]})
    R = wb.from_frame(df, keys=("i",), value="v", extents=(6,))
    assert R.extents == (6,)
    np.testing.assert_allclose(R.to_tensor(), [1.0, 0, 2.0, 0, 0, 0])


def test_from_frame_extents_too_small_are_refused():
    df = pl.DataFrame({"i": [0, 5], "v": [1.0, 2.0]})
    with pytest.raises(RelationError, match="key 'i' reaches 5, outside the given extent 3"):
        wb.from_frame(df, keys=("i",), value="v", extents=(3,))
    with pytest.raises(RelationError, match="one per key"):
        wb.from_frame(df, keys=("i",), value="v", extents=(6, 6))


def test_from_lazy_frame(rng):
    x = rng.normal(size=(4, 3))
    lf = pl.LazyFrame({"id": [3, 1, 0, 2], "vec": x[[3, 1, 0, 2]]})
    R = wb.from_frame(lf, keys=("id",), value="vec")
    assert R.value_shape == (3,)
    np.testing.assert_allclose(R.to_tensor(), x)


def test_from_frame_array_values_with_two_axes(rng):
    x = rng.normal(size=(3, 2, 4))
    df = pl.DataFrame({"i": [0, 1, 2], "m": pl.Series(x, dtype=pl.Array(pl.Float64, (2, 4)))})
    R = wb.from_frame(df, keys=("i",), value="m")
    assert R.value_shape == (2, 4)
    np.testing.assert_allclose(R.to_tensor(), x)


def test_from_frame_list_values_become_fixed_size():
    df = pl.DataFrame({"i": [1, 0], "v": [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]})
    assert isinstance(df.schema["v"], pl.List)
    R = wb.from_frame(df, keys=("i",), value="v")
    assert R.value_shape == (3,)
    np.testing.assert_allclose(R.to_tensor(), [[4.0, 5.0, 6.0], [1.0, 2.0, 3.0]])


def test_from_frame_keyless_needs_one_row():
    R = wb.from_frame(pl.DataFrame({"v": [[1.0, 2.0]]}), keys=(), value="v")
    assert R.keys == ()
    np.testing.assert_allclose(R.to_tensor(), [1.0, 2.0])
    with pytest.raises(RelationError, match="exactly one tuple"):
        wb.from_frame(pl.DataFrame({"v": [1.0, 2.0]}), keys=(), value="v")


def test_from_frame_empty():
    df = pl.DataFrame({"i": pl.Series([], dtype=pl.Int64), "v": pl.Series([], dtype=pl.Float64)})
    R = wb.from_frame(df, keys=("i",), value="v")
    assert len(R) == 0 and R.extents == (0,)
    assert R.to_tensor().shape == (0,)
    assert R.to_tensor(shape=(3,)).tolist() == [0.0, 0.0, 0.0]


def test_from_frame_unsigned_and_small_int_keys_become_int64():
    df = pl.DataFrame({"i": pl.Series([1, 0], dtype=pl.UInt8),
                       "j": pl.Series([0, 2], dtype=pl.Int16), "v": [1.0, 2.0]})
    R = wb.from_frame(df, keys=("i", "j"), value="v")
    schema = R.frame.collect_schema()
    assert schema["i"] == pl.Int64 and schema["j"] == pl.Int64
    np.testing.assert_allclose(R.to_tensor(), [[0, 0, 2.0], [1.0, 0, 0]])


# ---- exports ----------------------------------------------------------------------------------

def test_frame_is_lazy_with_int64_keys_and_array_values(rng):
    x = rng.normal(size=(2, 3, 4))
    R = wb.from_tensor(x, keys=("a", "b"))
    lf = R.frame
    assert isinstance(lf, pl.LazyFrame)
    schema = lf.collect_schema()
    assert list(schema.names()) == ["a", "b", "value"]
    assert schema["a"] == pl.Int64 and schema["b"] == pl.Int64
    assert schema["value"] == pl.Array(pl.Float64, 4)
    got = lf.sort("a", "b").collect()
    np.testing.assert_allclose(np.stack(got["value"].to_numpy()), x.reshape(6, 4))


def test_frame_round_trips_through_from_frame(rng):
    x = rng.normal(size=(5, 2, 3))
    R = wb.from_tensor(x, keys=("k",))
    back = wb.from_frame(R.frame.filter(pl.col("k") != 2), keys=("k",), value="value")
    expected = x.copy()
    expected[2] = 0.0
    np.testing.assert_allclose(back.to_tensor(), expected)


def test_to_frame_of_a_computed_relation_has_int64_keys(rng):
    A = wb.from_matrix(rng.normal(size=(4, 4)), block=(2, 2))
    C = wb.aggregate(A, by=("col",))
    df = C.to_frame()
    assert isinstance(df, pl.DataFrame)
    assert df.schema["col"] == pl.Int64
    assert df.schema["value"] == pl.Array(pl.Float64, (2, 2))


# ---- dtypes -----------------------------------------------------------------------------------

def test_integer_and_boolean_values_become_float64_under_x64():
    R = wb.from_tensor(np.arange(6).reshape(3, 2), keys=("i",))
    assert R.dtype == "float64"
    assert R.to_tensor().dtype == np.float64
    np.testing.assert_allclose(R.to_tensor(), np.arange(6.0).reshape(3, 2))
    B = wb.from_tensor(np.array([True, False]), keys=("i",))
    assert B.dtype == "float64"
    np.testing.assert_allclose(B.to_tensor(), [1.0, 0.0])
    F = wb.from_frame(pl.DataFrame({"i": [0, 1], "v": [3, 4]}), keys=("i",), value="v")
    assert F.dtype == "float64"
    np.testing.assert_allclose(F.to_tensor(), [3.0, 4.0])


def test_float32_input_stays_float32(rng):
    x = rng.normal(size=(4, 3)).astype(np.float32)
    R = wb.from_tensor(x, keys=("i",))
    assert R.dtype == "float32"
    assert R.to_tensor().dtype == np.float32
    np.testing.assert_array_equal(R.to_tensor(), x)
    A = wb.from_matrix(rng.normal(size=(4, 4)).astype(np.float32), block=(2, 2))
    assert A.dtype == "float32"
    df = pl.DataFrame({"i": [0, 1], "v": pl.Series([1.5, 2.5], dtype=pl.Float32)})
    F = wb.from_frame(df, keys=("i",), value="v")
    assert F.dtype == "float32"
    assert F.to_frame().schema["value"] == pl.Float32


def test_float64_input_stays_float64_and_explicit_dtype_converts(rng):
    x = rng.normal(size=(3,))
    assert wb.from_tensor(x, keys=("i",)).dtype == "float64"
    R = wb.from_tensor(x, keys=("i",), dtype="float32")
    assert R.dtype == "float32"
    np.testing.assert_allclose(R.to_tensor(), x.astype(np.float32))
    with pytest.raises(RelationError, match="float32 or float64"):
        wb.from_tensor(x, keys=("i",), dtype="int32")


def test_complex_values_are_refused():
    with pytest.raises(RelationError, match="complex"):
        wb.from_tensor(np.array([1 + 2j, 3j]), keys=("i",))


# ---- validation -------------------------------------------------------------------------------

def test_duplicate_keys_are_named():
    df = pl.DataFrame({"a": [0, 1, 0], "b": [2, 2, 2], "v": [1.0, 2.0, 3.0]})
    with pytest.raises(RelationError, match=r"duplicate keys \('a', 'b'\) = \(0, 2\).*aggregate"):
        wb.from_frame(df, keys=("a", "b"), value="v", name="edges").to_frame()


def test_a_duplicate_on_some_key_columns_only_is_fine():
    df = pl.DataFrame({"a": [0, 0], "b": [0, 1], "v": [1.0, 2.0]})
    R = wb.from_frame(df, keys=("a", "b"), value="v")
    np.testing.assert_allclose(R.to_tensor(), [[1.0, 2.0]])


@pytest.mark.parametrize("keys,value,missing", [(("id",), "nope", "nope"), (("idx",), "v", "idx")])
def test_missing_columns_are_named(keys, value, missing):
    df = pl.DataFrame({"id": [0, 1], "v": [1.0, 2.0]})
    with pytest.raises(RelationError, match=f"column '{missing}' is not in the frame"):
        wb.from_frame(df, keys=keys, value=value)


def test_value_column_cannot_be_a_key():
    df = pl.DataFrame({"id": [0, 1], "v": [1.0, 2.0]})
    with pytest.raises(RelationError, match="both key and value"):
        wb.from_frame(df, keys=("id", "v"), value="v")


@pytest.mark.parametrize("col", [[0.0, 1.0], ["a", "b"], [True, False]])
def test_non_integer_key_columns_are_refused(col):
    df = pl.DataFrame({"id": col, "v": [1.0, 2.0]})
    with pytest.raises(RelationError, match="key column 'id' has dtype .*must be integers.*cast"):
        wb.from_frame(df, keys=("id",), value="v")


def test_negative_keys_are_refused():
    df = pl.DataFrame({"id": [0, -3], "v": [1.0, 2.0]})
    with pytest.raises(RelationError, match="key column 'id' has negative keys"):
        wb.from_frame(df, keys=("id",), value="v")


def test_null_keys_are_refused():
    df = pl.DataFrame({"id": [0, None], "v": [1.0, 2.0]})
    with pytest.raises(RelationError, match="key column 'id' has 1 nulls"):
        wb.from_frame(df, keys=("id",), value="v")


def test_null_values_are_refused():
    df = pl.DataFrame({"id": [0, 1], "v": [1.0, None]})
    with pytest.raises(RelationError, match="value column 'v' has 1 nulls"):
        wb.from_frame(df, keys=("id",), value="v")
    nested = pl.DataFrame({"id": [0, 1], "v": [[1.0, None], [2.0, 3.0]]})
    with pytest.raises(RelationError, match="value column 'v' has 1 null entries"):
        wb.from_frame(nested, keys=("id",), value="v")


def test_ragged_list_values_are_refused():
    df = pl.DataFrame({"id": [0, 1], "v": [[1.0, 2.0], [3.0]]})
    with pytest.raises(RelationError, match="value column 'v' is ragged"):
        wb.from_frame(df, keys=("id",), value="v")


def test_string_values_are_refused():
    df = pl.DataFrame({"id": [0, 1], "v": ["a", "b"]})
    with pytest.raises(RelationError, match="value column 'v' holds String.*numbers"):
        wb.from_frame(df, keys=("id",), value="v")
    with pytest.raises(RelationError, match="values must be numeric"):
        wb.from_tensor(np.array(["a", "b"]), keys=("i",))


def test_not_a_frame_is_refused():
    with pytest.raises(RelationError, match="expects a Polars DataFrame or LazyFrame, got dict"):
        wb.from_frame({"id": [0], "v": [1.0]}, keys=("id",), value="v")


def test_key_names_must_be_distinct_strings():
    with pytest.raises(RelationError, match="repeat"):
        wb.from_tensor(np.ones((2, 2)), keys=("i", "i"))
    with pytest.raises(RelationError, match="non-empty strings"):
        wb.from_tensor(np.ones((2, 2)), keys=("i", 3))


def test_relation_error_is_a_value_error():
    assert issubclass(RelationError, ValueError)
