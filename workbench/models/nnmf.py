"""Non-negative matrix factorization over the observed entries of a sparse matrix.

Relations: ``Entry(i, j) -> x_ij`` (observed entries only), ``W(i) -> w_i`` and ``H(j) -> h_j``
(vectors of length k, the rank). The prediction is the join ``Entry ⋈_i W ⋈_j H`` with kernel
``<w_i, h_j>``, so inner products are evaluated only at the observed entries, and the loss is

    L(W, H) = sum_{(i,j) observed} (<w_i, h_j> - x_ij)^2 + l2 (sum_i |w_i|^2 + sum_j |h_j|^2).

Its gradient splits into a negative and a positive part,

    dL/dw_i = 2 (D_i - N_i),  N_i = sum_j x_ij h_j,  D_i = sum_j <w_i, h_j> h_j + l2 w_i,

(and symmetrically for h_j), both joins followed by a sum. Non-negativity is kept in one of two
ways: projected gradient (a step of SGD or Adam on the relational gradient, then max(., 0)) or
Lee and Seung's multiplicative update w_i <- w_i * N_i / (D_i + eps), which is a gradient step
with the per-entry step size w_i / (2 (D_i + eps)) and never increases the loss.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import jax.numpy as jnp
import numpy as np

from workbench import optim
from workbench.datasets.matrices import SparseMatrix, to_relation
from workbench.ops import aggregate, join, select
from workbench.relation import Relation, from_tensor
from workbench.api import jit, value_and_grad
from workbench.progress import progress_bar

METHODS = ("projected", "multiplicative")
ENTRY_KEYS = {"i": "left.i", "j": "left.j"}


# ---- kernels (per tuple) ---------------------------------------------------------------------

def _row_factor(x, w):
    return w  # Entry(i, j) ⋈ W(i): the factor w_i at each observed entry


def _squared_error(p, x):
    return (p - x) ** 2


def _squared_norm(v):
    return jnp.sum(v ** 2)


def _scaled(s, v):
    return s * v  # a scalar at an entry times the other side's factor


def _pair(n, d):
    return jnp.stack([n, d])


def _add(a, b):
    return a + b


def _nonnegative(v):
    return jnp.maximum(v, 0.0)


# ---- the relational program ------------------------------------------------------------------

def init_factors(shape: tuple[int, int], rank: int, mean: float = 1.0, seed: int = 0,
                 dtype: str | None = None) -> tuple[Relation, Relation]:
    """W(i), H(j) uniform on [0, a) with a = 2 sqrt(mean / rank), so E[<w_i, h_j>] = mean."""
    if rank < 1:
        raise ValueError(f"init_factors: rank must be a positive integer, got {rank}")
    rng = np.random.default_rng([seed, 1])  # a stream of its own, not a data generator's
    a = 2.0 * np.sqrt(max(mean, 1e-12) / rank)
    w = rng.uniform(size=(shape[0], rank)) * a
    h = rng.uniform(size=(shape[1], rank)) * a
    return (from_tensor(w, keys=("i",), dtype=dtype, name="W"),
            from_tensor(h, keys=("j",), dtype=dtype, name="H"))


def _check_factors(Entry: Relation, W: Relation, H: Relation) -> None:
    for role, R, key in (("entries", Entry, ("i", "j")), ("row factor W", W, ("i",)),
                         ("column factor H", H, ("j",))):
        if R.keys != key:
            raise ValueError(f"nnmf: the {role} (relation '{R.name}') has keys {R.keys}; expected "
                             f"{key} (Entry(i, j) -> x, W(i) -> vector, H(j) -> vector). Rename "
                             f"keys with wb.select(R, keys={{...}}).")
    if W.value_shape != H.value_shape or len(W.value_shape) != 1:
        raise ValueError(f"nnmf: factors '{W.name}' {W.value_shape} and '{H.name}' {H.value_shape} "
                         f"must be vectors of one length (the rank)")
    if Entry.value_shape != ():
        raise ValueError(f"nnmf: relation '{Entry.name}' must hold scalars x_ij, got values of "
                         f"shape {Entry.value_shape}")


def predict(Entry: Relation, W: Relation, H: Relation) -> Relation:
    """P(i, j) = <w_i, h_j> at the observed entries: Entry ⋈_i W ⋈_j H."""
    _check_factors(Entry, W, H)
    EW = join(Entry, W, on={"i": "i"}, keys=ENTRY_KEYS, kernel=_row_factor)
    return join(EW, H, on={"j": "j"}, keys=ENTRY_KEYS, kernel=jnp.dot)


def sse(Entry: Relation, W: Relation, H: Relation) -> Relation:
    """sum_{(i,j) observed} (<w_i, h_j> - x_ij)^2, a scalar relation."""
    err = join(predict(Entry, W, H), Entry, on={"i": "i", "j": "j"}, kernel=_squared_error)
    return aggregate(err, by=())


def penalty(R: Relation) -> Relation:
    """sum over tuples of |v|^2."""
    return aggregate(select(R, kernel=_squared_norm), by=())


def loss(W: Relation, H: Relation, Entry: Relation, l2: float = 0.0) -> Relation:
    """L = SSE at the observed entries + l2 (|W|^2 + |H|^2)."""
    out = sse(Entry, W, H)
    if l2:
        reg = join(penalty(W), penalty(H), on={}, kernel=_add)
        out = join(out, reg, on={}, kernel=lambda e, r: e + l2 * r)
    return out


def objective(Entry: Relation, l2: float = 0.0):
    """``f(W, H)``: the loss with the entries a constant (only W and H are differentiated)."""
    return lambda W, H: loss(W, H, Entry, l2)


def loss_twin(w, h, rows, cols, x, l2: float = 0.0):
    """The dense JAX twin of ``loss``: gather w_i and h_j at the observed entries."""
    pred = jnp.sum(w[rows] * h[cols], axis=1)  # <w_i, h_j> for each observed (i, j)
    return jnp.sum((pred - x) ** 2) + l2 * (jnp.sum(w ** 2) + jnp.sum(h ** 2))


def twin(matrix: SparseMatrix, l2: float = 0.0):
    """``f(w, h)``: the twin of ``objective(to_relation(matrix), l2)`` on dense factors."""
    rows, cols, x = jnp.asarray(matrix.rows), jnp.asarray(matrix.cols), jnp.asarray(matrix.values)
    return lambda w, h: loss_twin(w, h, rows, cols, x, l2)


# ---- keeping the factors non-negative -------------------------------------------------------

def project(R: Relation) -> Relation:
    """Π(R) = max(R, 0) tuple by tuple, stored as a new relation with R's keys."""
    return R.with_values(_nonnegative(R.table().values))


def _sides(side: str, W: Relation, H: Relation):
    if side == "W":
        return W, H, "i", "j"
    if side == "H":
        return H, W, "j", "i"
    raise ValueError(f"nnmf: side must be 'W' or 'H', got {side!r}")


def gradient_parts(Entry: Relation, W: Relation, H: Relation, side: str = "W",
                   l2: float = 0.0) -> tuple[Relation, Relation]:
    """(N, D) keyed by the factor's key, with dL/dF = 2 (D - N) for F = W (side 'W') or H:
    N_i = sum_j x_ij h_j and D_i = sum_j <w_i, h_j> h_j + l2 w_i, each a join and a sum.
    Rows with no observed entry have no tuple (their sums are empty)."""
    F, G, fk, gk = _sides(side, W, H)
    P = predict(Entry, W, H)
    N = aggregate(join(Entry, G, on={gk: gk}, keys=ENTRY_KEYS, kernel=_scaled), by=(fk,))
    D = aggregate(join(P, G, on={gk: gk}, keys=ENTRY_KEYS, kernel=_scaled), by=(fk,))
    if l2:
        D = join(D, F, on={fk: fk}, kernel=lambda d, f: d + l2 * f)
    return N, D


def multiplicative_update(Entry: Relation, W: Relation, H: Relation, side: str = "W",
                          eps: float = 1e-12, l2: float = 0.0) -> Relation:
    """F <- F * N / (D + eps) for F = W or H (Lee and Seung, restricted to observed entries).
    A row with no observed entry has N = 0 and gets 0, as the formula gives."""
    F, _, fk, _ = _sides(side, W, H)
    N, D = gradient_parts(Entry, W, H, side, l2)
    ND = join(N, D, on={fk: fk}, kernel=_pair)
    new = join(F, ND, on={fk: fk}, kernel=lambda f, nd: f * nd[0] / (nd[1] + eps))
    return F.with_values(new.values_like(F))


# ---- training ---------------------------------------------------------------------------------

@dataclass
class History:
    """Per step t = 0..steps: the loss, and the RMSE at the training entries and at held-out
    entries (if given), for the factors after t steps; seconds[t] is the wall time of step t
    (seconds[0] = 0)."""

    method: str
    rank: int
    loss: list[float] = field(default_factory=list)
    rmse: list[float] = field(default_factory=list)
    test_rmse: list[float] | None = None
    seconds: list[float] = field(default_factory=list)
    W: Relation | None = None
    H: Relation | None = None

    @property
    def total_seconds(self) -> float:
        return float(np.sum(self.seconds))

    def __repr__(self) -> str:
        test = f", test RMSE {self.test_rmse[0]:.4g} -> {self.test_rmse[-1]:.4g}" if self.test_rmse else ""
        return (f"History({self.method}, rank {self.rank}, {len(self.loss) - 1} steps: loss "
                f"{self.loss[0]:.6g} -> {self.loss[-1]:.6g}, RMSE {self.rmse[0]:.4g} -> "
                f"{self.rmse[-1]:.4g}{test}, {self.total_seconds:.2f} s)")


def _scalar(R: Relation) -> float:
    return float(R.to_tensor())


def train(matrix: SparseMatrix, rank: int, method: str = "projected", steps: int = 100,
          lr: float = 0.02, seed: int = 0, test: SparseMatrix | None = None, l2: float = 0.0,
          optimizer: str = "adam", eps: float = 1e-12, dtype: str | None = None,
          compiled: bool = True, progress: bool | None = False) -> History:
    """Factorize the observed entries of ``matrix`` as <w_i, h_j> with W, H >= 0.

    ``method='projected'``: Adam (or ``optimizer='sgd'``) with learning rate ``lr`` on the
    relational gradient, then max(., 0). ``method='multiplicative'``: Lee and Seung's updates,
    W then H (``lr`` is not used). ``test``: held-out entries whose RMSE is recorded each step.
    ``compiled``: every step is ``wb.jit`` of it (one XLA program); else the interpreter runs it.
    ``progress``: a tqdm bar over the steps (None: only on a terminal)."""
    if method not in METHODS:
        raise ValueError(f"train: method must be one of {METHODS}, got {method!r}")
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"train: optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    if test is not None and test.shape != matrix.shape:
        raise ValueError(f"train: held-out matrix '{test.name}' has shape {test.shape}, the "
                         f"training matrix '{matrix.name}' {matrix.shape}")
    Entry = to_relation(matrix, dtype=dtype)
    Test = to_relation(test, dtype=dtype, name="Test") if test is not None else None
    W, H = init_factors(matrix.shape, rank, float(np.mean(matrix.values)), seed, Entry.dtype)
    f = objective(Entry, l2)
    hist = History(method, rank, test_rmse=[] if test is not None else None)
    maybe_jit = jit if compiled else (lambda g: g)
    train_sse = maybe_jit(lambda W, H: sse(Entry, W, H))
    test_sse = maybe_jit(lambda W, H: sse(Test, W, H)) if Test is not None else None

    bar = progress_bar(steps, f"NNMF {matrix.name} ({method})", progress)

    def record(value: float, W, H, seconds: float):
        hist.loss.append(value)
        err = value if not l2 else _scalar(train_sse(W, H))
        hist.rmse.append(float(np.sqrt(err / matrix.nnz)))
        if Test is not None:
            hist.test_rmse.append(float(np.sqrt(_scalar(test_sse(W, H)) / test.nnz)))
        hist.seconds.append(seconds)
        if len(hist.loss) > 1:
            bar.update(loss=value, rmse=hist.rmse[-1])

    if method == "projected":
        opt = optim.Adam(lr=lr) if optimizer == "adam" else optim.SGD(lr=lr)
        state = opt.init([W, H])
        grad_fn = maybe_jit(value_and_grad(f, argnums=(0, 1)))
        start = time.perf_counter()
        for t in range(steps + 1):
            value, (gW, gH) = grad_fn(W, H)
            record(_scalar(value), W, H, time.perf_counter() - start if t else 0.0)
            if t == steps:
                break
            start = time.perf_counter()
            (W, H), state = opt.update([W, H], [gW, gH], state)
            W, H = project(W), project(H)  # projected gradient: step, then max(., 0)
    else:
        loss_fn = maybe_jit(f)
        start = time.perf_counter()
        for t in range(steps + 1):
            record(_scalar(loss_fn(W, H)), W, H, time.perf_counter() - start if t else 0.0)
            if t == steps:
                break
            start = time.perf_counter()
            W = multiplicative_update(Entry, W, H, "W", eps, l2)
            H = multiplicative_update(Entry, W, H, "H", eps, l2)
    bar.close()
    hist.W, hist.H = W, H
    return hist


# ---- a reference optimum from scipy ----------------------------------------------------------

@dataclass(frozen=True)
class Reference:
    """scipy's L-BFGS-B with the bounds W, H >= 0 on the dense JAX twin (value and gradient by
    jax.value_and_grad), from the same start as ``train``: the same objective at the same
    observed entries, minimized by a projected quasi-Newton method to its tolerance."""

    loss: float
    rmse: float  # sqrt(SSE / nnz) at the observed entries
    iterations: int
    seconds: float
    message: str


def reference(matrix: SparseMatrix, rank: int, seed: int = 0, l2: float = 0.0,
              max_iter: int = 5000) -> Reference:
    import jax
    from scipy.optimize import minimize

    W, H = init_factors(matrix.shape, rank, float(np.mean(matrix.values)), seed, "float64")
    w0, h0 = np.asarray(W.to_tensor(), np.float64), np.asarray(H.to_tensor(), np.float64)
    n_w = w0.size
    f = jax.jit(jax.value_and_grad(lambda th: twin(matrix, l2)(th[:n_w].reshape(w0.shape),
                                                              th[n_w:].reshape(h0.shape))))

    def fg(theta):
        value, grad = f(jnp.asarray(theta))
        return float(value), np.asarray(grad, np.float64)

    start = time.perf_counter()
    res = minimize(fg, np.concatenate([w0.ravel(), h0.ravel()]), jac=True, method="L-BFGS-B",
                   bounds=[(0.0, None)] * (w0.size + h0.size),
                   options={"maxiter": max_iter, "maxfun": 2 * max_iter, "ftol": 1e-12,
                            "gtol": 1e-8})
    seconds = time.perf_counter() - start
    w, h = res.x[:n_w].reshape(w0.shape), res.x[n_w:].reshape(h0.shape)
    pred = np.sum(w[matrix.rows] * h[matrix.cols], axis=1)
    rmse = float(np.sqrt(np.mean((pred - matrix.values) ** 2)))
    return Reference(float(res.fun), rmse, int(res.nit), seconds, str(res.message))
