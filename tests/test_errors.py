"""Bad programs fail where they are written, with a message naming the operator, relation, key or
kernel, and saying what to do instead."""
import jax.numpy as jnp
import numpy as np
import polars as pl
import pytest

import workbench as wb
from workbench.errors import KernelError, PlanError


@pytest.fixture
def X(rng):
    return wb.from_tensor(rng.normal(size=(4, 3)), keys=("i",), name="X")


@pytest.fixture
def A(rng):
    return wb.from_tensor(rng.normal(size=(2, 3)), keys=("i", "j"), name="A")


@pytest.fixture
def B(rng):
    return wb.from_tensor(rng.normal(size=(3, 2)), keys=("j", "k"), name="B")


# ---- unknown key names -------------------------------------------------------------------------

def test_unknown_key_in_join_on_left(A, B):
    with pytest.raises(PlanError, match=r"join: on names key 'zz', which relation 'A' does not "
                                        r"have; its keys are \('i', 'j'\)"):
        wb.join(A, B, on={"zz": "j"}, kernel=jnp.multiply)


def test_unknown_key_in_join_on_right(A, B):
    with pytest.raises(PlanError, match=r"join: on names key 'i', which relation 'B' does not have"):
        wb.join(A, B, on={"j": "i"}, kernel=jnp.multiply)


def test_unknown_key_in_join_keys(A, B):
    with pytest.raises(PlanError, match=r"join: keys \('right.i'\) names key 'i', which relation "
                                        r"'B' does not have"):
        wb.join(A, B, on={"j": "j"}, keys={"i": "right.i"}, kernel=jnp.multiply)


@pytest.mark.parametrize("spec", ["i", "middle.i", "", 3])
def test_join_key_source_must_name_a_side(A, B, spec):
    with pytest.raises(PlanError, match="must be 'left.<key>' or 'right.<key>'"):
        wb.join(A, B, on={"j": "j"}, keys={"i": spec}, kernel=jnp.multiply)


def test_unknown_key_in_select_keys(X):
    with pytest.raises(PlanError, match=r"select: keys names key 'row', which relation 'X' does "
                                        r"not have; its keys are \('i',\)"):
        wb.select(X, keys={"i": "row"})


def test_unknown_key_in_select_pred(X):
    with pytest.raises(PlanError, match=r"select: pred names key 'row', which relation 'X'"):
        wb.select(X, pred=pl.col("row") == 0)
    with pytest.raises(PlanError, match=r"pred names key 'value'"):   # values are not keys
        wb.select(X, pred=pl.col("value") > 0)


def test_unknown_key_in_aggregate_by(A):
    with pytest.raises(PlanError, match=r"aggregate: by names key 'k', which relation 'A' does not "
                                        r"have; its keys are \('i', 'j'\)"):
        wb.aggregate(A, by=("i", "k"))


def test_aggregate_by_must_be_key_names(A):
    with pytest.raises(PlanError, match=r"aggregate over 'A'.*by=\(\)"):
        wb.aggregate(A, by=None)


def test_unknown_key_after_a_rename_names_the_computed_relation(X):
    Y = wb.select(X, keys={"n": "i"})
    with pytest.raises(PlanError, match=r"which relation 'select' does not have; its keys are "
                                        r"\('n',\)"):
        wb.aggregate(Y, by=("i",))


# ---- output key names --------------------------------------------------------------------------

def test_join_default_keys_that_clash_ask_for_keys(A, B):
    with pytest.raises(PlanError, match=r"join of 'A' and 'B': both have a key 'j'; name the "
                                        r"output keys with keys="):
        wb.join(A, B, on={}, kernel=jnp.multiply)
    with pytest.raises(PlanError, match="both have a key 'i'"):
        wb.join(A, A, on={"j": "j"}, kernel=jnp.multiply)


def test_repeated_output_key_names_in_select(A):
    with pytest.raises(PlanError, match=r"select: output key names \['a', 'a'\] repeat"):
        wb.select(A, keys=[("a", "i"), ("a", "j")])


def test_repeated_output_key_names_in_join(A, B):
    with pytest.raises(PlanError, match=r"join: output key names \['a', 'a'\] repeat"):
        wb.join(A, B, on={"j": "j"}, keys=[("a", "left.i"), ("a", "right.k")], kernel=jnp.multiply)


def test_repeated_key_in_aggregate_by(A):
    with pytest.raises(PlanError, match=r"aggregate over 'A': by=\('i', 'i'\) repeats a key"):
        wb.aggregate(A, by=("i", "i"))


# ---- projections that merge tuples -------------------------------------------------------------

def test_select_projection_that_merges_tuples_names_aggregate(A):
    S = wb.select(A, keys={"i": "i"})                    # two j's per i
    with pytest.raises(PlanError, match=r"select over 'A'.*several tuples to one key.*"
                                        r"wb\.aggregate\(\.\.\., by=\('i',\)\)"):
        S.to_tensor()


def test_select_dropping_every_key_of_several_tuples_names_aggregate(X):
    with pytest.raises(PlanError, match=r"select over 'X'.*wb\.aggregate"):
        wb.select(X, keys={}).to_frame()


def test_join_projection_that_merges_tuples_names_aggregate(A, B):
    P = wb.join(A, B, on={"j": "j"}, keys={"i": "left.i", "k": "right.k"}, kernel=jnp.multiply)
    with pytest.raises(PlanError, match=r"join of 'A' and 'B'.*several tuples to one key.*"
                                        r"wb\.aggregate"):
        P.to_frame()


def test_merging_projection_fails_even_when_read_as_a_frame(A):
    with pytest.raises(PlanError, match="aggregate"):
        wb.select(A, keys={"j": "j"}).frame


# ---- kernels -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kernel,dtype", [(lambda v: v > 0, "bool"),
                                          (lambda v: jnp.argmax(v), "int"),
                                          (lambda v: jnp.round(v).astype(jnp.int32), "int32")])
def test_kernel_output_must_be_floating(X, kernel, dtype):
    with pytest.raises(KernelError, match=f"select over 'X': kernel 'lambda' returns {dtype}.*"
                                          f"floating point.*astype"):
        wb.select(X, kernel=kernel)


def test_join_kernel_output_must_be_floating(A, B):
    with pytest.raises(KernelError, match="join of 'A' and 'B': kernel 'lambda' returns bool"):
        wb.join(A, B, on={"j": "j"}, kernel=lambda a, b: a > b)


def test_kernel_returning_a_tuple_is_refused(X):
    def two_outputs(v):
        return v, 2 * v

    with pytest.raises(KernelError, match="select over 'X': kernel 'two_outputs' returned tuple, "
                                          "not one array"):
        wb.select(X, kernel=two_outputs)


def test_kernel_returning_nothing_is_refused(X):
    with pytest.raises(KernelError, match="returned NoneType, not one array"):
        wb.select(X, kernel=lambda v: None)


def test_kernel_whose_shape_depends_on_the_data_nonzero(X):
    def positives(v):
        return v[jnp.nonzero(v > 0)]

    with pytest.raises(KernelError, match=r"(?s)select over 'X': kernel 'positives' failed to trace.*"
                                          r"shape does not depend on the data"):
        wb.select(X, kernel=positives)


def test_kernel_whose_shape_depends_on_the_data_boolean_mask(A, B):
    def masked(a, b):
        return a[a > b]

    with pytest.raises(KernelError, match=r"join of 'A' and 'B': kernel 'masked' failed to trace"):
        wb.join(A, B, on={"j": "j"}, keys={"i": "left.i", "j": "left.j", "k": "right.k"},
                kernel=masked)


def test_kernel_that_fails_to_trace_names_operator_and_function(rng):
    V = wb.from_tensor(rng.normal(size=(4, 3)), keys=("i",), name="V")

    def project(v):
        return v @ jnp.ones((5, 2))                    # a 3-vector times a 5x2 matrix

    with pytest.raises(KernelError, match=r"select over 'V': kernel 'project' failed to trace on "
                                          r"one tuple's value\(s\) \(float64\[3\]\)"):
        wb.select(V, kernel=project)


def test_join_kernel_that_fails_to_trace_names_operator_and_function(A, B):
    def bad_matmul(a, b):
        return jnp.matmul(a, jnp.ones((4,)))

    with pytest.raises(KernelError, match=r"join of 'A' and 'B': kernel 'bad_matmul' failed to "
                                          r"trace on one tuple's value\(s\) \(float64\[\], "
                                          r"float64\[\]\)"):
        wb.join(A, B, on={"j": "j"}, kernel=bad_matmul)


def test_kernel_that_changes_the_dtype_is_refused(rng):
    X32 = wb.from_tensor(rng.normal(size=(3, 2)).astype(np.float32), keys=("i",), name="X32")
    w64 = np.ones((2, 2))

    def project(v):
        return v @ w64

    with pytest.raises(KernelError, match="select over 'X32': kernel 'project' turns float32 "
                                          "values into float64"):
        wb.select(X32, kernel=project)


def test_kernel_must_be_callable(X, A, B):
    with pytest.raises(PlanError, match="select: kernel must be a JAX-traceable function"):
        wb.select(X, kernel="relu")
    with pytest.raises(PlanError, match="join: kernel must be a JAX-traceable function"):
        wb.join(A, B, on={"j": "j"}, kernel=3.0)


def test_join_needs_a_kernel(A, B):
    with pytest.raises(PlanError, match=r"join of 'A' and 'B': a kernel f\(left_value, "
                                        r"right_value\) is required"):
        wb.join(A, B, on={"j": "j"})


def test_aggregate_kernel_must_be_sum_or_mean(A):
    with pytest.raises(PlanError, match=r"aggregate over 'A': kernel must be one of \('sum', "
                                        r"'mean'\), got 'max'"):
        wb.aggregate(A, by=("i",), kernel="max")


# ---- dtypes, predicates, arguments -------------------------------------------------------------

def test_mixed_dtypes_in_a_join_are_refused(rng):
    L = wb.from_tensor(rng.normal(size=(3,)).astype(np.float32), keys=("i",), name="L32")
    R = wb.from_tensor(rng.normal(size=(3,)), keys=("i",), name="R64")
    with pytest.raises(PlanError, match=r"join of 'L32' \(float32\) with 'R64' \(float64\): mixed "
                                        r"dtypes"):
        wb.join(L, R, on={"i": "i"}, kernel=jnp.add)
    ok = wb.join(L, wb.from_tensor(R.to_tensor(), keys=("i",), dtype="float32"), on={"i": "i"},
                 kernel=jnp.add)
    assert ok.dtype == "float32"


def test_pred_must_be_a_polars_expression(X):
    with pytest.raises(PlanError, match=r"select: pred must be a Polars expression.*got function"):
        wb.select(X, pred=lambda k: k == 0)
    with pytest.raises(PlanError, match=r"got str"):
        wb.select(X, pred="i == 0")


def test_pred_that_is_not_boolean_names_select(X):
    with pytest.raises(PlanError, match=r"select over 'X': pred .* failed on the key columns"):
        wb.select(X, pred=pl.col("i") + 1).to_frame()


def test_mean_of_an_empty_relation_is_refused(X):
    E = wb.select(X, pred=pl.col("i") < 0)
    with pytest.raises(PlanError, match=r"aggregate mean over 'select': the relation is empty"):
        wb.aggregate(E, by=(), kernel="mean").to_tensor()


@pytest.mark.parametrize("bad", [np.ones((3, 2)), pl.DataFrame({"i": [0]}), [1.0, 2.0], None])
def test_non_relation_arguments_are_refused(X, bad):
    kind = type(bad).__name__
    with pytest.raises(PlanError, match=f"select: argument 'R' must be a workbench Relation, got "
                                        f"{kind}.*wb.from_tensor"):
        wb.select(bad)
    with pytest.raises(PlanError, match=f"join: argument 'L' must be a workbench Relation, got "
                                        f"{kind}"):
        wb.join(bad, X, on={}, kernel=jnp.add)
    with pytest.raises(PlanError, match=f"join: argument 'R' must be a workbench Relation, got "
                                        f"{kind}"):
        wb.join(X, bad, on={}, kernel=jnp.add)
    with pytest.raises(PlanError, match=f"aggregate: argument 'R' must be a workbench Relation, "
                                        f"got {kind}"):
        wb.aggregate(bad, by=())


def test_join_on_must_be_a_mapping(A, B):
    with pytest.raises(PlanError, match=r"join: on must be a dict of key names, got 5 \(int\)"):
        wb.join(A, B, on=5, kernel=jnp.multiply)


def test_errors_are_value_and_type_errors():
    assert issubclass(PlanError, ValueError) and issubclass(KernelError, TypeError)
