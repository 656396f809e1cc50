"""Bad input to the relation constructors and exports: each is refused with a RelationError that
names the relation, the column or argument at fault and the fix, and its legal neighbours work
and agree with numpy.

- UInt64 key columns above 2**63 - 1 (keys are int64);
- to_tensor() of relations whose dense array cannot be allocated, and bad ``shape`` entries;
- negative or non-integer ``extents`` in from_frame;
- Decimal, String, Date, Object and Struct value columns;
- value columns of nested lists (read as arrays when regular, refused when ragged);
- float64 data while JAX's x64 mode is off (stored as float32 with a warning; run in a child
  process, since this session runs with x64 on).
"""
import datetime
import decimal
import json
import os
import subprocess
import sys

import numpy as np
import polars as pl
import pytest

import workbench as wb
from workbench import relation
from workbench.errors import RelationError


# ---- 1. UInt64 keys ---------------------------------------------------------------------------

def test_uint64_keys_above_int64_are_refused_and_smaller_ones_work():
    big = pl.DataFrame({"node": pl.Series([3, 2**63, 2**64 - 1], dtype=pl.UInt64),
                        "w": [1.0, 2.0, 3.0]})
    with pytest.raises(RelationError, match=r"from_frame 'hashes': key column 'node' \(UInt64\) "
                                            r"holds ids up to 18446744073709551615, above the "
                                            r"int64 maximum.*pl\.col\('node'\)\.rank\('dense'\) - 1"):
        wb.from_frame(big, keys=("node",), value="w", name="hashes")

    # the suggested remap gives keys 0..n-1 that from_frame takes
    remapped = big.with_columns(pl.col("node").rank("dense") - 1)
    R = wb.from_frame(remapped, keys=("node",), value="w", name="hashes")
    np.testing.assert_allclose(R.to_tensor(), [1.0, 2.0, 3.0])

    # UInt64 keys that fit in int64 still work, the largest one included
    ok = pl.DataFrame({"node": pl.Series([4, 0, 2], dtype=pl.UInt64), "w": [1.0, 2.0, 3.0]})
    R = wb.from_frame(ok, keys=("node",), value="w", name="small")
    assert R.frame.collect_schema()["node"] == pl.Int64
    expected = np.zeros(5)
    expected[[4, 0, 2]] = [1.0, 2.0, 3.0]
    np.testing.assert_allclose(R.to_tensor(), expected)
    edge = pl.DataFrame({"node": pl.Series([2**63 - 1], dtype=pl.UInt64), "w": [5.0]})
    E = wb.from_frame(edge, keys=("node",), value="w", name="edge")
    assert E.to_frame()["node"].to_list() == [2**63 - 1]


# ---- 2. to_tensor of huge relations, bad shapes -----------------------------------------------

def test_to_tensor_refuses_dense_arrays_too_big_for_memory_and_bad_shapes():
    sparse_ids = pl.DataFrame({"i": [0, 2**40], "v": [1.0, 2.0]})
    R = wb.from_frame(sparse_ids, keys=("i",), value="v", name="sparse")
    with pytest.raises(RelationError, match=r"to_tensor of relation 'sparse': a dense array of "
                                            r"shape \(1099511627777,\).*extents \(1099511627777,\)"
                                            r".*8,192\.0 GiB.*to_frame\(\).*to_tensor\(shape=\.\.\.\)"):
        R.to_tensor()
    # the product of extents times the value size is what counts: 2**20 x 2**20 x 4 float64
    wide = pl.DataFrame({"a": [0, 2**20 - 1], "b": [2**20 - 1, 0],
                         "v": pl.Series(np.ones((2, 4)), dtype=pl.Array(pl.Float64, 4))})
    W = wb.from_frame(wide, keys=("a", "b"), value="v", name="wide")
    with pytest.raises(RelationError, match=r"relation 'wide'.*shape \(1048576, 1048576, 4\)"
                                            r".*32,768\.0 GiB"):
        W.to_tensor()
    with pytest.raises(RelationError, match=r"relation 'wide'.*8,192\.0 GiB"):
        W.to_tensor(shape=(2**20, 2**18))
    # the sparse export and a small dense corner work
    assert sorted(R.to_frame()["i"].to_list()) == [0, 2**40]
    with pytest.raises(RelationError, match="outside the extent 4"):
        R.to_tensor(shape=(4,))
    small = wb.from_frame(sparse_ids.filter(pl.col("i") < 4), keys=("i",), value="v", name="s")
    np.testing.assert_allclose(small.to_tensor(shape=(4,)), [1.0, 0.0, 0.0, 0.0])

    x = np.arange(6.0).reshape(3, 2)
    T = wb.from_tensor(x, keys=("i",), name="T")
    for bad in [(-1,), (3.5,), ("3",), (True,), (float("nan"),)]:
        with pytest.raises(RelationError, match=r"to_tensor of relation 'T': shape=.* for key 'i'; "
                                                r"extents must be non-negative integers"):
            T.to_tensor(shape=bad)
    with pytest.raises(RelationError, match=r"relation 'T': shape must be a sequence"):
        T.to_tensor(shape="3")
    # integral numbers of any type are fine, and one int stands for a 1-tuple
    padded = np.zeros((4, 2))
    padded[:3] = x
    for shape in [(4,), (np.int64(4),), (4.0,), 4, np.array([4])]:
        np.testing.assert_allclose(T.to_tensor(shape=shape), padded)


def test_to_tensor_turns_a_failed_allocation_into_a_relation_error(monkeypatch):
    monkeypatch.setattr(relation, "_memory_bytes", lambda: 2**100, raising=False)  # endless memory
    R = wb.from_frame(pl.DataFrame({"i": [0, 2**40], "j": [2**40, 0], "v": [1.0, 2.0]}),
                      keys=("i", "j"), value="v", name="pairs")
    with pytest.raises(RelationError, match=r"to_tensor of relation 'pairs'.*could not be allocated"
                                            r".*to_frame\(\)"):
        R.to_tensor()   # 2**80 elements: numpy refuses at once


# ---- 3. extents -------------------------------------------------------------------------------

def test_from_frame_refuses_negative_and_non_integer_extents():
    df = pl.DataFrame({"i": [0, 2], "j": [1, 1], "v": [1.0, 2.0]})
    for bad, which in [((-1, 2), "-1 for key 'i'"), ((3, 2.5), "2.5 for key 'j'"),
                       ((3, "2"), "'2' for key 'j'"), ((3, None), "None for key 'j'")]:
        with pytest.raises(RelationError, match=rf"from_frame 'grid': extents=.* gives {which}; "
                                                r"extents must be non-negative integers.*leave "
                                                r"extents out"):
            wb.from_frame(df, keys=("i", "j"), value="v", extents=bad, name="grid")
    empty = pl.DataFrame({"i": pl.Series([], dtype=pl.Int64), "v": pl.Series([], dtype=pl.Float64)})
    with pytest.raises(RelationError, match=r"from_frame 'none': extents=\(-3,\) gives -3 for key 'i'"):
        wb.from_frame(empty, keys=("i",), value="v", extents=(-3,), name="none")
    with pytest.raises(RelationError, match=r"from_frame 'grid': extents must be a sequence"):
        wb.from_frame(df, keys=("i", "j"), value="v", extents=object(), name="grid")
    # too small: the existing message
    with pytest.raises(RelationError, match="from_frame 'grid': key 'i' reaches 2, outside the "
                                            "given extent 2"):
        wb.from_frame(df, keys=("i", "j"), value="v", extents=(2, 2), name="grid")
    # legal: integral numbers of any type; one int for one key
    R = wb.from_frame(df, keys=("i", "j"), value="v", extents=(np.int32(4), 2.0), name="grid")
    assert R.extents == (4, 2) and all(type(e) is int for e in R.extents)
    expected = np.zeros((4, 2))
    expected[[0, 2], [1, 1]] = [1.0, 2.0]
    np.testing.assert_allclose(R.to_tensor(), expected)
    assert wb.from_frame(df.drop("j"), keys="i", value="v", extents=5).extents == (5,)


# ---- 4. non-numeric value columns -------------------------------------------------------------

def test_decimal_values_name_the_cast_to_float():
    df = pl.DataFrame({"item": [0, 1, 2],
                       "price": [decimal.Decimal("1.25"), decimal.Decimal("2.50"), decimal.Decimal("-3")]})
    assert isinstance(df.schema["price"], pl.Decimal)
    with pytest.raises(RelationError, match=r"from_frame 'prices': value column 'price' holds "
                                            r"Decimal.*Decimal is not supported.*"
                                            r"pl\.col\('price'\)\.cast\(pl\.Float64\)") as err:
        wb.from_frame(df, keys=("item",), value="price", name="prices")
    assert "nested nulls" not in str(err.value)
    fixed = df.with_columns(pl.col("price").cast(pl.Float64))           # the suggested cast
    R = wb.from_frame(fixed, keys=("item",), value="price", name="prices")
    np.testing.assert_allclose(R.to_tensor(), [1.25, 2.5, -3.0])
    nested = pl.DataFrame({"item": [0], "p": [[decimal.Decimal("1.5"), decimal.Decimal("2")]]})
    with pytest.raises(RelationError, match=r"from_frame 'p': value column 'p'.*Decimal is not "
                                            r"supported.*pl\.col\('p'\)\.cast\(pl\.List\(pl\.Float64\)\)"):
        wb.from_frame(nested, keys=("item",), value="p")
    R = wb.from_frame(nested.with_columns(pl.col("p").cast(pl.List(pl.Float64))), keys=("item",),
                      value="p")
    np.testing.assert_allclose(R.to_tensor(), [[1.5, 2.0]])


NON_NUMERIC = [
    ("String", pl.Series(["1.5", "-2"]), r"String.*pl\.col\('v'\)\.cast\(pl\.Float64\)",
     pl.col("v").cast(pl.Float64), [1.5, -2.0]),
    ("Date", pl.Series([datetime.date(1970, 1, 3), datetime.date(1970, 1, 1)]),
     r"Date.*pl\.col\('v'\)\.dt\.epoch\('d'\)\.cast\(pl\.Float64\)",
     pl.col("v").dt.epoch("d").cast(pl.Float64), [2.0, 0.0]),
    ("Object", pl.Series([decimal.Decimal(1), 2], dtype=pl.Object),
     r"Object \(Python objects\).*dtype=pl\.Float64", None, None),
    ("Struct", pl.Series([{"a": 1.0, "b": 2}, {"a": 3.0, "b": 4}]),
     r"Struct.*pl\.col\('v'\)\.struct\.field\('a'\).*pl\.concat_arr",
     pl.concat_arr([pl.col("v").struct.field(f).cast(pl.Float64) for f in ["a", "b"]]),
     [[1.0, 2.0], [3.0, 4.0]]),
]


@pytest.mark.parametrize("kind,values,message,fix,expected", NON_NUMERIC,
                         ids=[case[0] for case in NON_NUMERIC])
def test_non_numeric_value_columns_name_the_dtype_and_the_fix(kind, values, message, fix, expected):
    df = pl.DataFrame({"id": [0, 1], "v": values})
    with pytest.raises(RelationError, match=rf"from_frame 'things': value column 'v' holds .*{message}"):
        wb.from_frame(df, keys=("id",), value="v", name="things")
    if fix is not None:                                                # the suggested fix works
        R = wb.from_frame(df.with_columns(fix.alias("v")), keys=("id",), value="v", name="things")
        np.testing.assert_allclose(R.to_tensor(), expected)


# ---- 5. nested lists --------------------------------------------------------------------------

def test_regular_nested_lists_are_read_as_arrays_and_ragged_ones_refused(rng):
    x = rng.normal(size=(3, 2, 4))
    order = [2, 0, 1]
    df = pl.DataFrame({"i": order, "m": [x[i].tolist() for i in order]})
    assert df.schema["m"] == pl.List(pl.List(pl.Float64))
    R = wb.from_frame(df, keys=("i",), value="m", name="mats")
    assert R.value_shape == (2, 4)
    np.testing.assert_allclose(R.to_tensor(), x)
    # three levels, and lists mixed with arrays, in either order
    y = rng.normal(size=(2, 2, 3, 2))
    deep = wb.from_frame(pl.DataFrame({"i": [0, 1], "t": y.tolist()}), keys="i", value="t")
    assert deep.value_shape == (2, 3, 2)
    np.testing.assert_allclose(deep.to_tensor(), y)
    list_of_arrays = pl.Series(list(x), dtype=pl.List(pl.Array(pl.Float64, 4)))
    outer_array = pl.Series([m.tolist() for m in x], dtype=pl.Array(pl.List(pl.Float64), 2))
    for col in (list_of_arrays, outer_array):
        R = wb.from_frame(pl.DataFrame({"i": [0, 1, 2], "m": col}), keys="i", value="m")
        assert R.value_shape == (2, 4)
        np.testing.assert_allclose(R.to_tensor(), x)
    ints = wb.from_frame(pl.DataFrame({"i": [0], "m": [[[1, 2], [3, 4]]]}), keys="i", value="m")
    np.testing.assert_allclose(ints.to_tensor(), [[[1.0, 2.0], [3.0, 4.0]]])

    ragged = pl.DataFrame({"i": [0, 1], "m": [[[1.0, 2.0], [3.0]], [[4.0, 5.0], [6.0, 7.0]]]})
    with pytest.raises(RelationError, match=r"from_frame 'mats': value column 'm' is ragged "
                                            r"\(lists of lengths 1\.\.2 at depth 2\)"):
        wb.from_frame(ragged, keys=("i",), value="m", name="mats")
    ragged_outer = pl.DataFrame({"i": [0, 1], "m": [[[1.0]], [[2.0], [3.0]]]})
    with pytest.raises(RelationError, match=r"from_frame 'mats': value column 'm' is ragged"):
        wb.from_frame(ragged_outer, keys=("i",), value="m", name="mats")
    ragged_in_array = pl.Series([[[1.0], [2.0]], [[3.0], [4.0, 5.0]]],
                                dtype=pl.Array(pl.List(pl.Float64), 2))
    with pytest.raises(RelationError, match=r"from_frame 'mats': value column 'm' is ragged"):
        wb.from_frame(pl.DataFrame({"i": [0, 1], "m": ragged_in_array}), keys="i", value="m",
                      name="mats")
    holes = pl.DataFrame({"i": [0, 1], "m": [[[1.0, 2.0], None], [[4.0, 5.0], [6.0, None]]]})
    with pytest.raises(RelationError, match=r"from_frame 'mats': value column 'm' has 1 null "
                                            r"entries inside its arrays"):
        wb.from_frame(holes, keys=("i",), value="m", name="mats")


# ---- 6. float64 data with JAX's x64 mode off ------------------------------------------------

X64_OFF = r"""
import json, warnings
import jax
assert not jax.config.read("jax_enable_x64")
import numpy as np, polars as pl
import workbench as wb
from workbench.errors import RelationError

out = {}
x = np.array([[0.1, 0.2], [1.0 / 3.0, 2.5]])
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    R = wb.from_tensor(x, keys=("i",), name="feats")
    F = wb.from_frame(pl.DataFrame({"id": [1, 0], "w": [0.1, 0.7]}), keys="id", value="w",
                      name="weights")
out["warnings"] = [[str(m.message), m.category.__name__, m.filename] for m in w]
out["dtypes"] = [R.dtype, F.dtype, str(R.to_tensor().dtype)]
out["R"], out["F"] = R.to_tensor().tolist(), F.to_tensor().tolist()
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    S = wb.from_tensor(x, keys=("i",), dtype="float32", name="quiet")
    I = wb.from_tensor(np.arange(3), keys=("i",), name="ints")
    P = wb.from_tensor([0.5, 1.5], keys=("i",), name="plain")
out["quiet"] = [len(w), S.dtype, I.dtype, P.dtype]
try:
    wb.from_tensor(x, keys=("i",), dtype="float64", name="strict")
    out["explicit"] = None
except RelationError as e:
    out["explicit"] = str(e)
print(json.dumps(out))
"""


def test_float64_with_x64_off_becomes_float32_with_a_warning():
    env = dict(os.environ, JAX_ENABLE_X64="0")
    done = subprocess.run([sys.executable, "-c", X64_OFF], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["dtypes"] == ["float32", "float32", "float32"]
    x = np.array([[0.1, 0.2], [1.0 / 3.0, 2.5]])
    np.testing.assert_array_equal(np.array(out["R"], np.float32), x.astype(np.float32))
    np.testing.assert_allclose(out["R"], x, rtol=1e-7)
    np.testing.assert_array_equal(np.array(out["F"], np.float32), np.float32([0.7, 0.1]))
    # one warning per call, naming the relation and both ways out, at the caller's line
    assert len(out["warnings"]) == 2
    for (message, category, filename), name in zip(out["warnings"], ["feats", "weights"]):
        assert category == "UserWarning"
        assert filename == "<string>"
        assert f"'{name}': float64 values are stored as float32 because JAX's x64 mode is off" in message
        assert "jax.config.update('jax_enable_x64', True)" in message
        assert "dtype='float32'" in message
    # dtype='float32' silences it; integers and Python floats take the default float quietly
    assert out["quiet"] == [0, "float32", "float32", "float32"]
    # an explicit float64 that cannot be honoured stays an error
    assert out["explicit"] is not None
    assert "from_tensor 'strict': dtype='float64'" in out["explicit"]
    assert "jax_enable_x64" in out["explicit"]
