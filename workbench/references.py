"""``python -m workbench check``: every model trained briefly on its real data, each beside the
reference of its field, with a stated tolerance and a verdict.

A row passes when the workbench number is no worse than the reference by more than its tolerance:

    higher is better (accuracy, MRR)      value >= reference - tolerance
    lower is better (errors), relative    value <= reference * (1 + tolerance)

The references are scikit-learn run live on the same data (logistic regression, NMF), scipy's
L-BFGS-B run live on the same objective (NNMF), and numbers measured with pykeen and a reference
GCN, quoted with their published counterparts where they exist. ``run`` trains the models it is
asked for, prints the table, saves a training-curve figure per row (loss and metric per epoch,
the reference as a horizontal line) and returns 1 if any row falls short.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from workbench.datasets import knowledge, matrices
from workbench.models import gcn, kge, logreg, nmf_dense, nnmf


# ---- a row of the table and its verdict -----------------------------------------------------

@dataclass(frozen=True)
class Tolerance:
    """How far below (``higher_is_better``) or above the reference a value may be: an absolute
    amount, or a fraction of the reference (``relative``)."""

    amount: float
    higher_is_better: bool = True
    relative: bool = False

    def bound(self, reference: float) -> float:
        """The worst value that still passes."""
        slack = self.amount * abs(reference) if self.relative else self.amount
        return reference - slack if self.higher_is_better else reference + slack

    def passes(self, value: float, reference: float) -> bool:
        if not (math.isfinite(value) and math.isfinite(reference)):
            return False
        bound = self.bound(reference)
        return value >= bound if self.higher_is_better else value <= bound

    def text(self) -> str:
        side = "or above" if self.higher_is_better else "or below"
        if self.amount == 0:
            return f"the reference {side}"
        amount = f"{self.amount * 100:g}%" if self.relative else f"{self.amount:g}"
        return f"within {amount} of the reference {side}"


@dataclass(frozen=True)
class Row:
    model: str
    data: str
    metric: str
    value: float
    reference: float
    source: str  # where the reference comes from
    tolerance: Tolerance
    seconds: float = float("nan")  # training and evaluation of this row
    figure: str = ""  # the saved training-curve figure

    @property
    def ok(self) -> bool:
        return self.tolerance.passes(self.value, self.reference)

    @property
    def verdict(self) -> str:
        if self.ok:
            return "meets"
        gap = abs(self.value - self.reference)
        return f"SHORT by {gap:.4g}"


def verdicts(rows: Sequence[Row]) -> int:
    """The exit status of a check: 0 when every row meets its reference, else 1."""
    return 0 if rows and all(r.ok for r in rows) else 1


def _fmt(x: float) -> str:
    if not math.isfinite(x):
        return str(x)
    return f"{x:.5f}" if abs(x) < 10 else f"{x:.6g}"


def table(rows: Sequence[Row]) -> str:
    """The rows as an aligned text table: model, data, metric, workbench, reference (source),
    tolerance, verdict, seconds."""
    head = ("model", "data", "metric", "workbench", "reference (source)", "tolerance", "verdict",
            "seconds")
    body = [(r.model, r.data, r.metric, _fmt(r.value), f"{_fmt(r.reference)} ({r.source})",
             r.tolerance.text(), r.verdict, f"{r.seconds:.1f}") for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(b) for b in body])


# ---- training-curve figures -------------------------------------------------------------------

@dataclass
class Curve:
    """One panel: y against x, and a horizontal reference line (NaN: none)."""

    title: str
    ylabel: str
    x: Sequence[float]
    y: Sequence[float]
    reference: float = float("nan")
    reference_label: str = ""
    xlabel: str = "epoch"
    log: bool = False  # a logarithmic y axis
    extra: list[tuple[Sequence[float], Sequence[float], str]] = field(default_factory=list)


def draw(curves: Sequence[Curve], title: str, path: str | Path | None = None):
    """A matplotlib figure with one panel per curve (workbench as a line, the reference as a
    dashed horizontal line); saved to ``path`` when given. Returns the figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5.2 * len(curves), 3.6), squeeze=False)
    for ax, c in zip(axes[0], curves):
        ax.plot(c.x, c.y, marker="." if len(c.x) < 30 else None, label="workbench")
        for x, y, label in c.extra:
            ax.plot(x, y, marker="o", linestyle="none", label=label)
        if math.isfinite(c.reference):
            ax.axhline(c.reference, color="tab:red", linestyle="--", label=c.reference_label)
        if c.log:
            ax.set_yscale("log")
        ax.set_title(c.title, fontsize=10)
        ax.set_xlabel(c.xlabel)
        ax.set_ylabel(c.ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    return fig


def _save(curves: Sequence[Curve], title: str, out: Path | None, name: str) -> str:
    if out is None:
        return ""
    import matplotlib.pyplot as plt

    path = out / f"check_{name}.png"
    fig = draw(curves, title, path)
    plt.close(fig)
    return str(path)


# ---- the references ---------------------------------------------------------------------------

ABOVE_003 = Tolerance(0.03)  # "within 0.03 of the reference or above"


@dataclass(frozen=True)
class KGEReference:
    pykeen: float  # filtered MRR, both directions, measured with pykeen on this machine kind
    published: float | None = None

    def source(self) -> str:
        pub = f"; published {self.published:.3f}" if self.published is not None else ""
        return f"pykeen{pub}"


# pykeen's TransE scores with the L1 norm by default, so TransE-L1 is the like-for-like model.
KGE_REFERENCES = {
    ("distmult", "nations"): KGEReference(0.736, 0.713),
    ("transe-l1", "nations"): KGEReference(0.513, 0.481),
    ("distmult", "umls"): KGEReference(0.833),
    ("transe-l1", "umls"): KGEReference(0.745),
    ("distmult", "kinships"): KGEReference(0.608, 0.614),
    ("transe-l1", "kinships"): KGEReference(0.362),
}

# 1-N training (inverse relations, softmax cross-entropy, Adam), early stopping on the validation
# MRR (measured every epoch; stop after 10 epochs without improvement, keep the best); settings
# chosen on the validation split.
_EARLY = dict(eval_every=1, patience=10)
KGE_SETTINGS = {
    ("distmult", "nations"): dict(dim=128, epochs=60, batch_size=256, lr=0.01, **_EARLY),
    ("transe-l1", "nations"): dict(dim=32, epochs=40, batch_size=256, lr=0.02, normalize=False,
                                   **_EARLY),
    ("distmult", "umls"): dict(dim=128, epochs=30, batch_size=512, lr=0.01, **_EARLY),
    ("transe-l1", "umls"): dict(dim=32, epochs=15, batch_size=1024, lr=0.02, normalize=False,
                                **_EARLY),
    ("distmult", "kinships"): dict(dim=128, epochs=30, batch_size=512, lr=0.01, **_EARLY),
    ("transe-l1", "kinships"): dict(dim=32, epochs=20, batch_size=1024, lr=0.02, normalize=False,
                                    **_EARLY),
}

GCN_REFERENCE = 0.968  # 31 of the 32 test members; a reference GCN averages 0.9681 over 100 seeds
GCN_SEEDS = tuple(range(10))
NNMF_RANK, NNMF_STEPS, NNMF_SCIPY_ITERATIONS = 6, 1000, 500
NMF_ITERATIONS = 3000  # multiplicative updates from NNDSVDa
NMF_SKLEARN_MAX_ITER = 1000  # scikit-learn's cd solver converges (tol 1e-4) well before this


@dataclass
class Options:
    figures: Path | None = Path("figures")
    progress: bool | None = None
    dtype: str = "float32"  # training precision of the KGE and GCN runs


def check_logreg(opt: Options) -> list[Row]:
    start = time.perf_counter()
    data = logreg.load()
    h = logreg.train(data, progress=opt.progress)
    ref = h.reference
    seconds = time.perf_counter() - start
    it = list(range(len(h.objective)))
    fig = _save([Curve("training objective (C=1)", "objective", it, h.objective, ref.objective,
                       f"scikit-learn {ref.objective:.4f}", xlabel="L-BFGS iteration", log=True),
                 Curve("test accuracy", "accuracy", it, h.test_acc_curve, ref.test_acc,
                       f"scikit-learn {ref.test_acc:.5f}", xlabel="L-BFGS iteration")],
                "logistic regression, breast cancer", opt.figures, "logreg_breast_cancer")
    src = "scikit-learn LogisticRegression(C=1), live"
    return [Row("logistic regression", "breast cancer", "test accuracy", h.test_acc, ref.test_acc,
                src, Tolerance(0.0), seconds, fig),
            Row("logistic regression", "breast cancer", "training objective", h.final_objective,
                ref.objective, src, Tolerance(1e-3, higher_is_better=False, relative=True),
                seconds, fig)]


def check_nmf(opt: Options) -> list[Row]:
    start = time.perf_counter()
    data = nmf_dense.load_digits_relation()
    ref = nmf_dense.reference(data, rank=10, max_iter=NMF_SKLEARN_MAX_ITER)
    h = nmf_dense.train(data, rank=10, iterations=NMF_ITERATIONS, progress=opt.progress)
    seconds = time.perf_counter() - start
    fig = _save([Curve("||X - WH||_F, multiplicative updates", "Frobenius error",
                       list(range(len(h.error))), h.error, ref.error,
                       f"scikit-learn NMF {ref.error:.1f}", xlabel="iteration", log=True)],
                "NMF, digits, rank 10", opt.figures, "nmf_digits")
    return [Row("NMF (dense, rank 10)", "digits", "Frobenius error", h.error[-1], ref.error,
                f'scikit-learn NMF(init="nndsvda", max_iter={NMF_SKLEARN_MAX_ITER}), converged '
                f'in {ref.n_iter}, live', Tolerance(0.01, False, True), seconds,
                fig)]


def check_nnmf(opt: Options) -> list[Row]:
    start = time.perf_counter()
    m = matrices.les_miserables()
    h = nnmf.train(m, NNMF_RANK, "projected", steps=NNMF_STEPS, lr=0.05, dtype="float64",
                   progress=opt.progress)
    ref = nnmf.reference(m, NNMF_RANK, max_iter=NNMF_SCIPY_ITERATIONS)
    seconds = time.perf_counter() - start
    fig = _save([Curve("RMSE at the observed entries, projected Adam", "RMSE",
                       list(range(len(h.rmse))), h.rmse, ref.rmse,
                       f"scipy L-BFGS-B {ref.rmse:.4f}", xlabel="step")],
                f"NNMF, Les Misérables ({m.nnz} observed entries), rank {NNMF_RANK}",
                opt.figures, "nnmf_les_miserables")
    return [Row(f"NNMF (observed entries, rank {NNMF_RANK})", "Les Misérables", "RMSE observed",
                h.rmse[-1], ref.rmse,
                f"scipy L-BFGS-B, {NNMF_SCIPY_ITERATIONS} iterations, same start, live",
                Tolerance(0.05, False, True), seconds, fig)]


def check_gcn(opt: Options) -> list[Row]:
    start = time.perf_counter()
    g = gcn.karate()
    runs = [gcn.train(g, seed=s, dtype=opt.dtype, progress=opt.progress) for s in GCN_SEEDS]
    seconds = time.perf_counter() - start
    mean = float(np.mean([h.test_acc[-1] for h in runs]))
    ep = list(range(1, runs[0].epochs + 1))
    fig = _save([Curve("training loss (mean of seeds)", "loss", ep,
                       np.mean([h.loss for h in runs], axis=0)),
                 Curve(f"test accuracy, 32 nodes (mean of {len(runs)} seeds)", "accuracy", ep,
                       np.mean([h.test_acc for h in runs], axis=0), GCN_REFERENCE,
                       f"reference {GCN_REFERENCE}")],
                "GCN, karate club, labels on nodes 0 and 33", opt.figures, "gcn_karate")
    return [Row("GCN", "karate club (2 labels)", f"test accuracy, {len(runs)} seeds", mean,
                GCN_REFERENCE, "reference GCN: 31/32, mean 0.9681 over 100 seeds", ABOVE_003,
                seconds, fig)]


def kge_curves(h: kge.History, reference: float) -> list[Curve]:
    """Training loss per epoch; validation MRR at each evaluation, the test MRR of the kept
    parameters, and the reference (a test MRR) as a line."""
    ep = list(range(1, len(h.losses) + 1))
    ve, vm = zip(*h.validation) if h.validation else ((), ())
    extra = []
    if h.metrics is not None:
        extra = [([h.best_epoch or len(ep)], [h.metrics.mrr], f"test {h.metrics.mrr:.3f} (kept epoch)")]
    return [Curve("training loss (1-N cross-entropy)", "loss", ep, h.losses),
            Curve("filtered MRR (both directions)", "validation MRR", list(ve), list(vm),
                  reference, f"pykeen test {reference:.3f}", extra=extra)]


def train_kge(model: str, dataset: str, opt: Options | None = None, **overrides) -> kge.History:
    """``kge.train`` with the check's settings for (model, dataset), ``overrides`` on top."""
    opt = opt or Options()
    settings = {"loss": "1-n", "dtype": opt.dtype, "seed": 0, "progress": opt.progress,
                **KGE_SETTINGS[(model, dataset)], **overrides}
    return kge.train(knowledge.load(dataset), model=model, **settings)


def check_kge(model: str, dataset: str, opt: Options) -> list[Row]:
    start = time.perf_counter()
    ref = KGE_REFERENCES[(model, dataset)]
    h = train_kge(model, dataset, opt)
    seconds = time.perf_counter() - start
    fig = _save(kge_curves(h, ref.pykeen), f"{h.model}, {dataset}, 1-N", opt.figures,
                f"{model}_{dataset}")
    return [Row(h.model, dataset, "filtered MRR (both)", h.metrics.mrr, ref.pykeen, ref.source(),
                ABOVE_003, seconds, fig)]


def _kge(model: str, dataset: str) -> Callable[[Options], list[Row]]:
    return lambda opt: check_kge(model, dataset, opt)


CHECKS: dict[str, Callable[[Options], list[Row]]] = {
    "logreg": check_logreg,
    "gcn": check_gcn,
    "nnmf": check_nnmf,
    "nmf": check_nmf,
    **{f"{model}-{dataset}": _kge(model, dataset)
       for dataset in ("nations", "umls", "kinships") for model in ("transe-l1", "distmult")},
}


def select_checks(names: Sequence[str] | None) -> list[str]:
    """The check names to run: all of them, or those named (a name may be a prefix, e.g.
    'transe' for TransE on all three data sets)."""
    if not names:
        return list(CHECKS)
    chosen = []
    for name in names:
        hits = [name] if name in CHECKS else [k for k in CHECKS if k.startswith(name) or k.endswith(name)]
        if not hits:
            raise ValueError(f"check: unknown check {name!r}; choose from {', '.join(CHECKS)}")
        chosen += [k for k in hits if k not in chosen]
    return chosen


def run(names: Sequence[str] | None = None, opt: Options | None = None,
        checks: dict[str, Callable[[Options], list[Row]]] | None = None,
        out: Callable[[str], None] = print) -> tuple[int, list[Row]]:
    """Run the checks, print the table, return (exit status, rows)."""
    opt = opt or Options()
    checks = CHECKS if checks is None else checks
    todo = select_checks(names) if checks is CHECKS else list(names or checks)
    rows: list[Row] = []
    start = time.perf_counter()
    for name in todo:
        rows += checks[name](opt)
    out(table(rows))
    status = verdicts(rows)
    short = [r for r in rows if not r.ok]
    out(f"\n{len(rows) - len(short)} of {len(rows)} rows meet their reference "
        f"({time.perf_counter() - start:.0f} s)" + ("; short: " + ", ".join(
            f"{r.model} on {r.data}" for r in short) if short else ""))
    if opt.figures is not None:
        out(f"training curves: {opt.figures}/check_*.png")
    return status, rows
