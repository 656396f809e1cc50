"""Logistic regression, the paper's first model, on scikit-learn's breast cancer data.

The objective is the one scikit-learn's ``LogisticRegression(C=C)`` minimizes (L2 penalty,
``l1_ratio=0``, the intercept not penalized; the formula of its user guide and of the comment in
``sklearn/linear_model/_logistic.py``):

    L(w, b) = C sum_i log(1 + exp(-s_i (x_i . w + b))) + 0.5 ||w||²,   s_i = 2 y_i - 1 in {-1, +1}

(its lbfgs solver minimizes L / (C n), the same minimizer; ``reference`` evaluates L itself at
scikit-learn's solution, so the two numbers compare directly).

Relationally, as the paper stores it, the data is a relation of row blocks: ``X(block) -> (k, d)``
(k rows of the standardized features) and ``S(block) -> (k,)`` (their signs s_i; the padding rows
of the last block have s = 0, and every per-row loss is multiplied by s², so they add nothing).
The weights ``W() -> (d,)`` and the intercept ``Bias() -> scalar`` are one-tuple relations:

    Z     = X ⋈ W ⋈ Bias                   (cross joins; kernel X_b @ w + b)  Z(block) -> (k,)
    nll   = Z ⋈_block S                    (kernel sum_r s_r² log(1 + exp(-s_r z_r)))
    L     = C · Σ_block nll + select(W, 0.5 |w|²)

``dense_objective`` is the same function on dense arrays (the twin the gradients are tested
against). ``train`` minimizes L with L-BFGS (a small numpy implementation here) whose every value
and gradient comes from the compiled relational step ``wb.jit(wb.value_and_grad(...))``: the
gradient is the RJP backward plan, numpy only does the L-BFGS bookkeeping on the 31 numbers.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import jax.numpy as jnp
import numpy as np

from workbench.ops import aggregate, join, select
from workbench.relation import Relation, default_dtype, from_tensor
from workbench.api import jit, value_and_grad
from workbench.progress import progress_bar

BLOCK = 64  # rows per block of the data relations
BLOCK_KEY = "block"


# ---- data --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Data:
    """The breast cancer data split and standardized as in the scikit-learn reference: labels
    y in {0, 1} (1 = benign), features standardized with the training part's mean and scale."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str = "breast cancer"

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]


def load(test_size: float = 0.2, random_state: int = 0) -> Data:
    """``load_breast_cancer`` (shipped with scikit-learn), ``train_test_split(..., stratify=y)``,
    ``StandardScaler`` fit on the training part."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    x, y = load_breast_cancer(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_size, stratify=y,
                                              random_state=random_state)
    scaler = StandardScaler().fit(x_tr)
    return Data(scaler.transform(x_tr), y_tr.astype(np.int64), scaler.transform(x_te),
                y_te.astype(np.int64))


def signs(y: np.ndarray) -> np.ndarray:
    """Labels {0, 1} as signs {-1, +1}."""
    return 2.0 * np.asarray(y, np.float64) - 1.0


def to_relations(x: np.ndarray, y: np.ndarray, block: int = BLOCK, dtype=None,
                 name: str = "X") -> tuple[Relation, Relation]:
    """``X(block) -> (k, d)`` and ``S(block) -> (k,)`` with k = ``block`` rows each; the last
    block is padded with zero rows whose sign is 0."""
    if not isinstance(block, (int, np.integer)) or block < 1:
        raise ValueError(f"logreg.to_relations: block must be a positive integer, got {block!r}")
    x, s = np.asarray(x, np.float64), signs(y)
    if x.ndim != 2 or s.shape != (x.shape[0],):
        raise ValueError(f"logreg.to_relations: features of shape {x.shape} and labels of shape "
                         f"{np.shape(y)}; expected (n, d) and (n,)")
    n, d = x.shape
    nb = -(-n // block)
    xp = np.zeros((nb * block, d))
    sp = np.zeros(nb * block)
    xp[:n], sp[:n] = x, s
    return (from_tensor(xp.reshape(nb, block, d), keys=(BLOCK_KEY,), dtype=dtype, name=name),
            from_tensor(sp.reshape(nb, block), keys=(BLOCK_KEY,), dtype=dtype, name=f"S_{name}"))


def init_params(n_features: int, dtype=None) -> tuple[Relation, Relation]:
    """W() -> zeros(d) and Bias() -> 0.0, one tuple each (scikit-learn also starts at zero)."""
    dtype = dtype or default_dtype()
    return (from_tensor(np.zeros(n_features), dtype=dtype, name="W"),
            from_tensor(np.zeros(()), dtype=dtype, name="Bias"))


# ---- kernels (per tuple) ---------------------------------------------------------------------

def _affine(z, c):
    return z + c


def _block_nll(z, s):
    # s² masks the padding rows (s = 0); log(1 + exp(-s z)) computed stably
    return jnp.sum(s * s * jnp.logaddexp(0.0, -s * z))


def _half_squared_norm(w):
    return 0.5 * jnp.sum(w * w)


# ---- the relational program ------------------------------------------------------------------

def logits(X: Relation, W: Relation, Bias: Relation) -> Relation:
    """Z(block) = X_block @ w + b: two cross joins with the one-tuple parameter relations."""
    keys = {BLOCK_KEY: f"left.{BLOCK_KEY}"}
    XW = join(X, W, on={}, keys=keys, kernel=jnp.matmul)
    return join(XW, Bias, on={}, keys=keys, kernel=_affine)


def data_loss(X: Relation, S: Relation, W: Relation, Bias: Relation) -> Relation:
    """sum_i log(1 + exp(-s_i (x_i . w + b))): a join on the block, a select-like kernel per
    block, an aggregate over all blocks."""
    nll = join(logits(X, W, Bias), S, on={BLOCK_KEY: BLOCK_KEY}, keys={BLOCK_KEY: f"left.{BLOCK_KEY}"},
               kernel=_block_nll)
    return aggregate(nll, by=())


def penalty(W: Relation) -> Relation:
    """0.5 ||w||², a select over the one-tuple weight relation."""
    return select(W, kernel=_half_squared_norm)


def loss(W: Relation, Bias: Relation, X: Relation, S: Relation, C: float = 1.0) -> Relation:
    """scikit-learn's objective C sum_i log(1 + exp(-s_i (x_i . w + b))) + 0.5 ||w||²."""
    C = float(C)
    if not C > 0:
        raise ValueError(f"logreg.loss: C must be a positive float, got {C}")
    return join(data_loss(X, S, W, Bias), penalty(W), on={}, kernel=lambda l, p: C * l + p)


def objective(X: Relation, S: Relation, C: float = 1.0) -> Callable:
    """``f(W, Bias)``: the loss with the data a captured constant."""
    return lambda W, Bias: loss(W, Bias, X, S, C)


# ---- the dense JAX twin ----------------------------------------------------------------------

def dense_objective(w, b, x, s, C: float = 1.0):
    """The twin of ``loss`` on dense arrays: x (n, d), s (n,) signs."""
    return C * jnp.sum(jnp.logaddexp(0.0, -s * (x @ w + b))) + 0.5 * jnp.sum(w * w)


def twin(x: np.ndarray, y: np.ndarray, C: float = 1.0) -> Callable:
    """``f(w, b)``: the twin of ``objective(*to_relations(x, y), C)``."""
    xd, sd = jnp.asarray(x), jnp.asarray(signs(y))
    return lambda w, b: dense_objective(w, b, xd, sd, C)


def numpy_objective(w, b, x, y, C: float = 1.0) -> float:
    """The objective in float64 numpy, for scikit-learn's ``coef_`` and ``intercept_``."""
    w = np.asarray(w, np.float64).ravel()
    return float(C * np.sum(np.logaddexp(0.0, -signs(y) * (x @ w + float(b)))) + 0.5 * w @ w)


def accuracy(z: np.ndarray, y: np.ndarray) -> float:
    """Fraction of rows whose logit has the sign of the label (z > 0 predicts 1)."""
    return float(np.mean((np.asarray(z) > 0).astype(np.int64) == np.asarray(y)))


# ---- the scikit-learn reference --------------------------------------------------------------

@dataclass(frozen=True)
class Reference:
    """scikit-learn's ``LogisticRegression(C=C)`` (lbfgs, L2) fit live on the same split."""

    objective: float  # L(coef_, intercept_), the formula of ``loss``
    train_acc: float
    test_acc: float
    coef: np.ndarray
    intercept: float
    n_iter: int
    seconds: float


def reference(data: Data | None = None, C: float = 1.0) -> Reference:
    from sklearn.linear_model import LogisticRegression

    data = data if data is not None else load()
    start = time.perf_counter()
    model = LogisticRegression(C=C).fit(data.x_train, data.y_train)
    seconds = time.perf_counter() - start
    w, b = model.coef_[0], float(model.intercept_[0])
    return Reference(numpy_objective(w, b, data.x_train, data.y_train, C),
                     float(model.score(data.x_train, data.y_train)),
                     float(model.score(data.x_test, data.y_test)), w.copy(), b,
                     int(model.n_iter_[0]), seconds)


# ---- L-BFGS over the parameter vector ----------------------------------------------------------

@dataclass
class LBFGSResult:
    x: np.ndarray
    f: float
    g: np.ndarray
    iterations: int
    evaluations: int
    converged: bool  # max |grad| <= gtol
    message: str


def lbfgs(fg: Callable[[np.ndarray], tuple[float, np.ndarray]], x0: np.ndarray, memory: int = 10,
          max_iter: int = 200, gtol: float = 1e-6, ftol: float = 64 * np.finfo(np.float64).eps,
          c1: float = 1e-4, max_backtracks: int = 30,
          callback: Callable[[int, np.ndarray, float, np.ndarray], None] | None = None) -> LBFGSResult:
    """Minimize a smooth function given ``fg(x) -> (f, grad)``: the two-loop recursion over the
    last ``memory`` pairs (s, y), a backtracking line search with the Armijo condition, pairs with
    s.y <= 0 skipped. Stops when max |grad| <= ``gtol``, when an iteration lowers f by at most
    ``ftol`` max(|f|, 1) (the precision limit, as scipy's L-BFGS-B ``ftol``; float32 values need
    a larger one), when no step decreases f, or after ``max_iter`` iterations.
    ``callback(k, x, f, g)`` runs at the start point (k = 0) and after every iteration."""
    x = np.asarray(x0, np.float64).copy()
    f, g = fg(x)
    evals = 1
    pairs: deque = deque(maxlen=memory)
    if callback is not None:
        callback(0, x, f, g)
    k, message = 0, "max_iter reached"
    while True:
        if np.max(np.abs(g)) <= gtol:
            message = "max |grad| <= gtol"
            break
        if k >= max_iter:
            break
        q = g.copy()
        alphas = []
        for s, y, rho in reversed(pairs):
            a = rho * (s @ q)
            q -= a * y
            alphas.append(a)
        if pairs:
            s, y, _ = pairs[-1]
            q *= (s @ y) / (y @ y)
        else:
            q /= max(np.linalg.norm(g), 1.0)  # first step: at most unit length
        for (s, y, rho), a in zip(pairs, reversed(alphas)):
            q += s * (a - rho * (y @ q))
        d = -q
        slope = g @ d
        if not slope < 0:  # not a descent direction: forget the curvature pairs
            pairs.clear()
            d = -g / max(np.linalg.norm(g), 1.0)
            slope = g @ d
        t = 1.0
        for _ in range(max_backtracks):
            x_new = x + t * d
            f_new, g_new = fg(x_new)
            evals += 1
            if f_new <= f + c1 * t * slope:
                break
            t *= 0.5
        else:
            message = "no decrease along the search direction"
            break
        small = f - f_new <= ftol * max(abs(f), abs(f_new), 1.0)
        s, y = x_new - x, g_new - g
        if s @ y > 1e-12 * np.linalg.norm(s) * np.linalg.norm(y):
            pairs.append((s, y, 1.0 / (s @ y)))
        x, f, g = x_new, f_new, g_new
        k += 1
        if callback is not None:
            callback(k, x, f, g)
        if small:
            message = "relative decrease <= ftol"
            break
    return LBFGSResult(x, float(f), g, k, evals, bool(np.max(np.abs(g)) <= gtol), message)


# ---- training ---------------------------------------------------------------------------------

@dataclass
class History:
    """Per L-BFGS iteration t = 0..iterations: the training objective L and max |grad L| at the
    parameters after t iterations, and the wall time of iteration t (seconds[0] = 0: the first
    evaluation, which includes tracing and compiling the step, is in ``compile_seconds``)."""

    C: float
    block: int
    objective: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    evaluations: int = 0
    converged: bool = False
    stop: str = ""
    compile_seconds: float = 0.0
    train_acc: float = float("nan")
    test_acc: float = float("nan")
    test_acc_curve: list[float] = field(default_factory=list)  # test accuracy per iteration
    W: Relation | None = None
    Bias: Relation | None = None
    reference: Reference | None = None

    @property
    def final_objective(self) -> float:
        return self.objective[-1]

    @property
    def iterations(self) -> int:
        return len(self.objective) - 1

    @property
    def total_seconds(self) -> float:
        return float(np.sum(self.seconds))

    @property
    def relative_gap(self) -> float:
        """(L_workbench - L_sklearn) / L_sklearn (negative: lower than scikit-learn's)."""
        if self.reference is None:
            return float("nan")
        return (self.final_objective - self.reference.objective) / self.reference.objective

    def summary(self) -> str:
        lines = [f"logistic regression, C={self.C:g}, blocks of {self.block} rows: L-BFGS "
                 f"{self.iterations} iterations ({self.evaluations} relational value-and-grads, "
                 f"stopped: {self.stop}), "
                 f"{self.total_seconds:.3f} s + {self.compile_seconds:.2f} s first step",
                 f"  objective {self.objective[0]:.10g} -> {self.final_objective:.10g}, "
                 f"max |grad| {self.grad_norm[-1]:.2e}",
                 f"  accuracy train {self.train_acc:.5f}, test {self.test_acc:.5f}"]
        if self.reference is not None:
            r = self.reference
            lines.append(f"  scikit-learn: objective {r.objective:.10g} (relative gap "
                         f"{self.relative_gap:+.2e}), accuracy train {r.train_acc:.5f}, test "
                         f"{r.test_acc:.5f}, {r.n_iter} lbfgs iterations, {r.seconds:.3f} s")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _scalar(R: Relation) -> float:
    return float(R.to_tensor())


def train(data: Data | None = None, C: float = 1.0, block: int = BLOCK, max_iter: int = 200,
          gtol: float = 1e-6, memory: int = 10, dtype=None, compiled: bool = True,
          with_reference: bool = True, progress: bool | None = False) -> History:
    """Minimize scikit-learn's objective over (W, Bias) with full-batch L-BFGS; every value and
    gradient is ``wb.value_and_grad`` of the relational loss (``wb.jit`` of it when
    ``compiled``). Stops when max |grad| <= ``gtol`` (L is strictly convex, so a small gradient
    means a point near the minimum), at the precision limit of the relations' dtype, or after
    ``max_iter`` iterations. ``with_reference``: also fit scikit-learn on the same split
    (``reference``). ``progress``: a tqdm bar over the iterations (None: only on a terminal)."""
    data = data if data is not None else load()
    dtype = dtype or default_dtype()
    X, S = to_relations(data.x_train, data.y_train, block, dtype, "X")
    Xt, _ = to_relations(data.x_test, data.y_test, block, dtype, "X_test")
    W, Bias = init_params(data.n_features, dtype)
    maybe_jit = jit if compiled else (lambda g: g)
    step = maybe_jit(value_and_grad(objective(X, S, C), argnums=(0, 1)))
    forward = maybe_jit(logits)
    d = data.n_features
    hist = History(float(C), block)

    def fg(theta: np.ndarray) -> tuple[float, np.ndarray]:
        W_ = W.with_values(theta[None, :d])
        B_ = Bias.with_values(theta[d:])
        value, (gW, gB) = step(W_, B_)
        g = np.concatenate([np.asarray(gW.values_like(W_), np.float64).ravel(),
                            np.asarray(gB.values_like(B_), np.float64).ravel()])
        return _scalar(value), g

    clock = {"t": time.perf_counter()}
    bar = progress_bar(max_iter, "logistic regression (L-BFGS)", progress)

    def test_accuracy(theta: np.ndarray) -> float:
        z = forward(Xt, W.with_values(theta[None, :d]), Bias.with_values(theta[d:]))
        return accuracy(z.to_tensor().reshape(-1)[:len(data.y_test)], data.y_test)

    def record(k, theta, f, g):
        now = time.perf_counter()
        if k == 0:
            hist.compile_seconds = now - clock["t"]
        hist.objective.append(float(f))
        hist.grad_norm.append(float(np.max(np.abs(g))))
        hist.seconds.append(now - clock["t"] if k else 0.0)
        hist.test_acc_curve.append(test_accuracy(theta))  # a read-out, not timed
        if k:
            bar.update(objective=float(f), test_acc=hist.test_acc_curve[-1])
        clock["t"] = time.perf_counter()

    ftol = 64 * float(np.finfo(np.dtype(dtype)).eps)  # the values' precision limit
    result = lbfgs(fg, np.zeros(d + 1), memory=memory, max_iter=max_iter, gtol=gtol, ftol=ftol,
                   callback=record)
    bar.close()
    hist.evaluations, hist.converged, hist.stop = result.evaluations, result.converged, result.message
    hist.W = W.with_values(result.x[None, :d])
    hist.Bias = Bias.with_values(result.x[d:])

    def predict(Xr: Relation, n: int) -> np.ndarray:
        return forward(Xr, hist.W, hist.Bias).to_tensor().reshape(-1)[:n]

    hist.train_acc = accuracy(predict(X, len(data.y_train)), data.y_train)
    hist.test_acc = accuracy(predict(Xt, len(data.y_test)), data.y_test)
    if with_reference:
        hist.reference = reference(data, C)
    return hist
