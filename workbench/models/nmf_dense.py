"""Dense non-negative matrix factorization X ~ W H in the paper's blocked layout, on
scikit-learn's handwritten digits, beside scikit-learn's own ``NMF``.

Relations (``br`` rows per block, ``bc`` columns per block, rank ``r``):

    X(row, col) -> br x bc block of the data      (the matrix, zero rows padded at the bottom)
    W(row)      -> br x r  block of rows of W
    H(col)      -> r x bc  block of columns of H  (one tuple when the columns are one block)

The product is a cross join ``P(row, col) = W(row) H(col)`` (kernel matmul), and the loss joins
it with X on the block keys, maps each block pair to its squared error and sums:

    L(W, H) = sum_{row, col} |X(row, col) - W(row) H(col)|_F^2 = ||X - W H||_F^2.

The gradient splits into a negative and a positive part, each a join followed by a sum,

    dL/dW(row) = 2 (D - N),  N(row) = sum_col X(row, col) H(col)^T,  D(row) = sum_col P(row, col) H(col)^T
    dL/dH(col) = 2 (D - N),  N(col) = sum_row W(row)^T X(row, col),  D(col) = sum_row W(row)^T P(row, col)

and Lee and Seung's multiplicative update F <- F * N / (D + eps) is the gradient step with the
per-entry step size F / (2 (D + eps)); it keeps F >= 0 and never increases L. ``train`` starts
from scikit-learn's NNDSVDa initialization (the start its ``NMF(init='nndsvda')`` uses) and runs
the updates as compiled relational programs (``wb.jit``), one for W, one for H and one for the
loss; ``method='projected'`` instead takes Adam steps on the relational gradient
(``wb.value_and_grad``) followed by max(., 0).

Padding: the 1797 digit rows are not a multiple of a useful block size, so X gets zero rows at
the bottom and W zero rows there. A zero row of W has N = D = 0 and stays zero under the
multiplicative update (and has a zero gradient), so the padded rows add nothing to the loss.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import jax.numpy as jnp
import numpy as np

from workbench import optim
from workbench.api import jit, value_and_grad
from workbench.progress import progress_bar
from workbench.ops import aggregate, join
from workbench.relation import Relation, default_dtype, from_matrix, from_tensor

METHODS = ("multiplicative", "projected")
BLOCK_KEYS = {"row": "left.row", "col": "left.col"}


# ---- the data --------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class BlockedMatrix:
    """A dense non-negative matrix ``x`` (n x m) and its blocked relation ``X(row, col)``, padded
    with zero rows to a multiple of ``block_rows``."""

    name: str
    x: np.ndarray
    X: Relation
    block_rows: int
    block_cols: int

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.x.shape)

    @property
    def padded_rows(self) -> int:
        return self.X.extents[0] * self.block_rows

    def __repr__(self) -> str:
        return (f"BlockedMatrix('{self.name}', shape={self.shape}, blocks "
                f"{self.X.extents[0]} x {self.X.extents[1]} of {self.block_rows} x "
                f"{self.block_cols}, {self.X.dtype})")


def _padded(x: np.ndarray, rows: int) -> np.ndarray:
    out = np.zeros((rows, x.shape[1]), dtype=np.float64)
    out[: x.shape[0]] = x
    return out


def blocked(x, block_rows: int = 128, block_cols: int | None = None, dtype: str | None = None,
            name: str = "X") -> BlockedMatrix:
    """``X(row, col) -> block_rows x block_cols`` blocks of a dense non-negative matrix; the
    columns are one block unless ``block_cols`` (a divisor of the column count) is given."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or not x.size:
        raise ValueError(f"nmf_dense: expects a non-empty 2-D matrix, got shape {x.shape}")
    if not np.all(np.isfinite(x)) or x.min() < 0:
        raise ValueError(f"nmf_dense: matrix '{name}' must be finite and non-negative (min "
                         f"{np.nanmin(x):.4g})")
    n, m = x.shape
    bc = m if block_cols is None else int(block_cols)
    br = int(block_rows)
    if br < 1 or bc < 1 or m % bc:
        raise ValueError(f"nmf_dense: block ({block_rows}, {block_cols}) must be positive and the "
                         f"column block must divide the {m} columns")
    rows = -(-n // br) * br
    X = from_matrix(_padded(x, rows), block=(br, bc), dtype=dtype or default_dtype(), name=name)
    return BlockedMatrix(name, x, X, br, bc)


def load_digits_relation(block_rows: int = 128, n_rows: int | None = None,
                         dtype: str | None = None) -> BlockedMatrix:
    """scikit-learn's 8x8 handwritten digits (1797 x 64 pixel intensities 0..16, shipped with
    scikit-learn; UCI Optical Recognition of Handwritten Digits, CC BY 4.0) as ``X(row, col)``:
    rows in blocks of ``block_rows`` (zero-padded), the 64 columns one block. ``n_rows``: the
    first rows only."""
    from sklearn.datasets import load_digits

    x = load_digits().data
    if n_rows is not None:
        x = x[: int(n_rows)]
    return blocked(x, block_rows, dtype=dtype, name="digits")


# ---- kernels (per tuple) ---------------------------------------------------------------------

def _block_squared_error(p, x):
    return jnp.sum((p - x) ** 2)


def _x_ht(x, h):
    return x @ h.T  # X(row, col) H(col)^T: a br x r block


def _wt_x(x, w):
    return w.T @ x  # W(row)^T X(row, col): an r x bc block


def _pair(n, d):
    return jnp.stack([n, d])


def _multiplicative(f, nd, eps):
    return f * nd[0] / (nd[1] + eps)


def _nonnegative(v):
    return jnp.maximum(v, 0.0)


# ---- the relational program ------------------------------------------------------------------

def _check(X: Relation, W: Relation, H: Relation) -> None:
    for role, R, key in (("data X", X, ("row", "col")), ("row factor W", W, ("row",)),
                         ("column factor H", H, ("col",))):
        if R.keys != key:
            raise ValueError(f"nmf_dense: the {role} (relation '{R.name}') has keys {R.keys}; "
                             f"expected {key}")
    if len(X.value_shape) != 2 or len(W.value_shape) != 2 or len(H.value_shape) != 2:
        raise ValueError("nmf_dense: X, W and H must hold matrix blocks")
    (br, bc), (wr, r), (hr, hc) = X.value_shape, W.value_shape, H.value_shape
    if wr != br or hc != bc or hr != r:
        raise ValueError(f"nmf_dense: blocks X {X.value_shape}, W {W.value_shape} and H "
                         f"{H.value_shape} do not fit X ~ W H")


def product(W: Relation, H: Relation) -> Relation:
    """P(row, col) = W(row) H(col): the cross join of the row blocks of W with H."""
    return join(W, H, on={}, keys={"row": "left.row", "col": "right.col"}, kernel=jnp.matmul)


def loss(W: Relation, H: Relation, X: Relation) -> Relation:
    """||X - W H||_F^2 as a scalar relation: (W ⋈ H) ⋈_{row, col} X, squared error per block,
    summed."""
    _check(X, W, H)
    err = join(product(W, H), X, on={"row": "row", "col": "col"}, kernel=_block_squared_error)
    return aggregate(err, by=())


def objective(X: Relation):
    """``f(W, H)``: the loss with X a constant (only W and H are differentiated)."""
    return lambda W, H: loss(W, H, X)


def loss_twin(w, h, x):
    """The dense JAX twin of ``loss``: ||x - w h||_F^2 for w (n x r), h (r x m)."""
    return jnp.sum((x - w @ h) ** 2)


def gradient_parts(X: Relation, W: Relation, H: Relation, side: str = "W") -> tuple[Relation, Relation]:
    """(N, D) keyed like the factor, with dL/dF = 2 (D - N) for F = W (side 'W') or H."""
    _check(X, W, H)
    P = product(W, H)
    if side == "W":  # N(row) = sum_col X H^T, D(row) = sum_col P H^T
        N = aggregate(join(X, H, on={"col": "col"}, keys=BLOCK_KEYS, kernel=_x_ht), by=("row",))
        D = aggregate(join(P, H, on={"col": "col"}, keys=BLOCK_KEYS, kernel=_x_ht), by=("row",))
    elif side == "H":  # N(col) = sum_row W^T X, D(col) = sum_row W^T P
        N = aggregate(join(X, W, on={"row": "row"}, keys=BLOCK_KEYS, kernel=_wt_x), by=("col",))
        D = aggregate(join(P, W, on={"row": "row"}, keys=BLOCK_KEYS, kernel=_wt_x), by=("col",))
    else:
        raise ValueError(f"nmf_dense: side must be 'W' or 'H', got {side!r}")
    return N, D


def multiplicative_update(X: Relation, W: Relation, H: Relation, side: str = "W",
                          eps: float = 1e-12) -> Relation:
    """The relation of new values F * N / (D + eps) for F = W or H, keyed like F (a program:
    wrap it in ``wb.jit`` and store it with ``F.with_values(new.values_like(F))``)."""
    F, key = (W, "row") if side == "W" else (H, "col")
    N, D = gradient_parts(X, W, H, side)
    ND = join(N, D, on={key: key}, kernel=_pair)
    return join(F, ND, on={key: key}, kernel=lambda f, nd: _multiplicative(f, nd, eps))


# ---- factors ---------------------------------------------------------------------------------

def factor_relations(w: np.ndarray, h: np.ndarray, data: BlockedMatrix) -> tuple[Relation, Relation]:
    """Dense w (n x r), h (r x m) as ``W(row) -> br x r`` (zero rows padded) and
    ``H(col) -> r x bc``."""
    w, h = np.asarray(w, dtype=np.float64), np.asarray(h, dtype=np.float64)
    n, m = data.shape
    if w.shape[0] != n or h.shape[1] != m or w.shape[1] != h.shape[0]:
        raise ValueError(f"nmf_dense: factors {w.shape} and {h.shape} do not fit a {n} x {m} matrix")
    br, bc, r = data.block_rows, data.block_cols, w.shape[1]
    wb_ = _padded(w, data.padded_rows).reshape(-1, br, r)
    hb = h.reshape(r, -1, bc).transpose(1, 0, 2)
    return (from_tensor(wb_, keys=("row",), dtype=data.X.dtype, name="W"),
            from_tensor(hb, keys=("col",), dtype=data.X.dtype, name="H"))


def dense_factors(W: Relation, H: Relation, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(w, h) as dense arrays, w cut to the first ``n_rows`` rows (the padding dropped)."""
    wt, ht = np.asarray(W.to_tensor()), np.asarray(H.to_tensor())
    w = wt.reshape(-1, wt.shape[-1])[:n_rows]
    h = ht.transpose(1, 0, 2).reshape(ht.shape[1], -1)
    return w, h


def nndsvda(x: np.ndarray, rank: int, random_state: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's NNDSVDa start (zeros of NNDSVD filled with the mean of x), the one its
    ``NMF(init='nndsvda')`` begins from."""
    from sklearn.decomposition._nmf import _initialize_nmf

    return _initialize_nmf(np.asarray(x, dtype=np.float64), rank, init="nndsvda",
                           random_state=random_state)


# ---- training --------------------------------------------------------------------------------

@dataclass
class History:
    """error[t] = ||X - W H||_F after t iterations (t = 0..iterations); seconds[t] the wall time
    of iteration t's updates (seconds[0] = 0; the loss evaluations are not counted), ``compile``
    the time of the first iteration's tracing and XLA compile (included in seconds[1])."""

    method: str
    rank: int
    error: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    W: Relation | None = None
    H: Relation | None = None
    n_rows: int = 0

    @property
    def iterations(self) -> int:
        return len(self.error) - 1

    @property
    def total_seconds(self) -> float:
        return float(np.sum(self.seconds))

    def first_within(self, reference: float, rtol: float = 0.01) -> int | None:
        """The first iteration whose error is at most (1 + rtol) * reference, or None."""
        hits = np.flatnonzero(np.asarray(self.error) <= (1 + rtol) * reference)
        return int(hits[0]) if len(hits) else None

    def factors(self) -> tuple[np.ndarray, np.ndarray]:
        return dense_factors(self.W, self.H, self.n_rows)

    def __repr__(self) -> str:
        return (f"History({self.method}, rank {self.rank}, {self.iterations} iterations: "
                f"||X - WH||_F {self.error[0]:.6g} -> {self.error[-1]:.6g}, "
                f"{self.total_seconds:.2f} s)")


def _scalar(R: Relation) -> float:
    return float(R.to_tensor())


def train(data: BlockedMatrix | None = None, rank: int = 10, iterations: int = 400,
          method: str = "multiplicative", target: float | None = None, eps: float = 1e-12,
          lr: float = 0.05, random_state: int = 0, compiled: bool = True,
          progress: bool | None = False) -> History:
    """Factorize ``data`` (default: the full digits) as W H, W, H >= 0, from the NNDSVDa start.

    ``method='multiplicative'``: Lee and Seung's updates from the relational gradient's parts,
    H then W each iteration. ``method='projected'``: Adam (``lr``) on the relational gradient,
    then max(., 0). Stops after ``iterations``, or once the error is at most ``target``.
    ``compiled``: each step is a ``wb.jit`` program (else the interpreter runs it).
    ``progress``: a tqdm bar over the iterations (None: only on a terminal)."""
    if method not in METHODS:
        raise ValueError(f"train: method must be one of {METHODS}, got {method!r}")
    data = load_digits_relation() if data is None else data
    X = data.X
    W, H = factor_relations(*nndsvda(data.x, rank, random_state), data)
    maybe_jit = jit if compiled else (lambda g: g)
    hist = History(method, rank, n_rows=data.shape[0])
    bar = progress_bar(iterations, f"NMF {data.name} ({method})", progress)

    if method == "multiplicative":
        loss_fn = maybe_jit(objective(X))
        update_H = maybe_jit(lambda W, H: multiplicative_update(X, W, H, "H", eps))
        update_W = maybe_jit(lambda W, H: multiplicative_update(X, W, H, "W", eps))
        hist.error.append(float(np.sqrt(_scalar(loss_fn(W, H)))))
        hist.seconds.append(0.0)
        for _ in range(iterations):
            if target is not None and hist.error[-1] <= target:
                break
            start = time.perf_counter()
            H = H.with_values(update_H(W, H).values_like(H))
            W = W.with_values(update_W(W, H).values_like(W))
            W.table().values.block_until_ready()
            hist.seconds.append(time.perf_counter() - start)
            hist.error.append(float(np.sqrt(_scalar(loss_fn(W, H)))))
            bar.update(error=hist.error[-1])
    else:
        opt = optim.Adam(lr=lr)
        state = opt.init([W, H])
        grad_fn = maybe_jit(value_and_grad(objective(X), argnums=(0, 1)))
        value, grads = grad_fn(W, H)
        hist.error.append(float(np.sqrt(_scalar(value))))
        hist.seconds.append(0.0)
        for _ in range(iterations):
            if target is not None and hist.error[-1] <= target:
                break
            start = time.perf_counter()
            (W, H), state = opt.update([W, H], list(grads), state)
            W = W.with_values(_nonnegative(W.table().values))
            H = H.with_values(_nonnegative(H.table().values))
            value, grads = grad_fn(W, H)  # the gradient for the next step, and this step's loss
            hist.seconds.append(time.perf_counter() - start)
            hist.error.append(float(np.sqrt(_scalar(value))))
            bar.update(error=hist.error[-1])
    bar.close()
    hist.W, hist.H = W, H
    return hist


# ---- scikit-learn, live ----------------------------------------------------------------------

@dataclass(frozen=True)
class Reference:
    """scikit-learn's ``NMF`` on the same data: its ``reconstruction_err_`` (= ||X - W H||_F),
    iterations run and wall time of ``fit_transform``."""

    error: float
    n_iter: int
    seconds: float
    params: dict


def reference(data: BlockedMatrix | None = None, rank: int = 10, random_state: int = 0,
              **params) -> Reference:
    """Run ``sklearn.decomposition.NMF(n_components=rank, init='nndsvda', random_state=...)``
    (its defaults otherwise: solver 'cd', Frobenius loss, tol 1e-4, max_iter 200) on ``data.x``."""
    import warnings

    from sklearn.decomposition import NMF
    from sklearn.exceptions import ConvergenceWarning

    data = load_digits_relation() if data is None else data
    model = NMF(n_components=rank, init="nndsvda", random_state=random_state, **params)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter=200 is reached on digits
        model.fit_transform(data.x)
    seconds = time.perf_counter() - start
    return Reference(float(model.reconstruction_err_), int(model.n_iter_), seconds,
                     model.get_params())
