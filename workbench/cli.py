"""``python -m workbench tour``: the paper's example relations and programs, each result printed
beside numpy's with the difference, then the gradient-equivalence table (RJP vs jax.vjp).
``python -m workbench check``: every model trained on its real data beside its field's reference
(``workbench.references``); exits 1 if any falls short by more than its stated tolerance.
``python -m workbench figures``: the plan pictures.
``python -m workbench reproduce [--quick]``: the paper's experiments as figures
(``workbench.reproduce``), written to ``figures/paper_*``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)  # the tour compares in float64

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

import workbench as wb  # noqa: E402
from workbench import check, programs, references, reproduce  # noqa: E402
from workbench.datasets import knowledge, matrices  # noqa: E402
from workbench.models import gcn, kge, nnmf  # noqa: E402


def _show(title: str, code: str, got: np.ndarray, want: np.ndarray) -> float:
    diff = float(np.max(np.abs(got - want))) if want.size else 0.0
    print(f"\n== {title}\n   {code}")
    g, w = np.ravel(got)[:4], np.ravel(want)[:4]
    print(f"   workbench: {np.array2string(g, precision=6)}{' ...' if got.size > 4 else ''}")
    print(f"   numpy:     {np.array2string(w, precision=6)}{' ...' if want.size > 4 else ''}")
    print(f"   shape {got.shape}, max |difference| = {diff:.2e}")
    return diff


def forward_tour(rng) -> float:
    worst = 0.0
    a, b = rng.normal(size=(6, 8)), rng.normal(size=(8, 4))
    A, B = wb.from_matrix(a, block=(3, 4), name="A"), wb.from_matrix(b, block=(4, 2), name="B")
    print(f"A = wb.from_matrix(a, block=(3, 4)): {A}, {len(A)} tuples")
    print(A.to_frame().head(2))
    worst = max(worst, _show("blocked matrix multiply", "aggregate(join(A, B, on={'col': 'row'}, kernel=matmul), by=(row, col))",
                             wb.to_matrix(programs.matmul(A, B)), a @ b))
    T = wb.select(A, keys={"row": "col", "col": "row"}, kernel=jnp.transpose)
    worst = max(worst, _show("transpose", "select(A, keys={'row': 'col', 'col': 'row'}, kernel=transpose)",
                             wb.to_matrix(T), a.T))
    x = rng.normal(size=(12, 5))
    X = wb.from_tensor(x, keys=("i",), name="X")
    worst = max(worst, _show("column mean", "aggregate(X, by=(), kernel='mean')",
                             wb.aggregate(X, by=(), kernel="mean").to_tensor(), x.mean(axis=0)))
    theta = rng.normal(size=(5,))
    P = wb.join(X, wb.from_tensor(theta, name="theta"), on={}, keys={"id": "left.i"},
                kernel=lambda v, t: jax.nn.sigmoid(v @ t))
    worst = max(worst, _show("logistic regression forward", "join(X, theta, on={}, kernel=sigmoid(x . theta))",
                             P.to_tensor(), 1 / (1 + np.exp(-x @ theta))))
    n, d, h = 7, 5, 3
    src, dst = np.array([0, 1, 2, 3, 4, 5, 6, 0, 2]), np.array([1, 2, 3, 4, 5, 6, 0, 3, 5])
    w_edge = rng.uniform(0.1, 1.0, size=len(src))
    feats, w = rng.normal(size=(n, d)), rng.normal(size=(d, h))
    Node = wb.from_tensor(feats, keys=("id",), name="Node")
    Edge = wb.from_frame(pl.DataFrame({"src": src, "dst": dst, "w": w_edge}), keys=("src", "dst"), value="w")
    H = wb.join(programs.propagate(Edge, Node), wb.from_tensor(w, name="W"), on={},
                keys={"id": "left.id"}, kernel=lambda v, m: jax.nn.relu(v @ m))
    adj = np.zeros((n, n))
    adj[dst, src] = w_edge
    worst = max(worst, _show("GCN layer", "relu(aggregate(join(Edge, Node, on={'src': 'id'}), by=(id,)) @ W)",
                             H.to_tensor(shape=(n,)), np.maximum(adj @ feats @ w, 0.0)))
    return worst


def gradient_tour() -> bool:
    print("\n\n### Gradient equivalence: RJP (relational backward plan) vs jax.vjp (dense twin), float64")
    ok = True
    for p in programs.examples(seed=0):
        report = check.program_report(p)
        print(f"\n{report}")
        ok &= report.ok
    return ok


def models_tour() -> None:
    """The paper's three models, trained briefly on real data through the relational backward."""
    print("\n\n### The paper's models on real data, trained with RJP gradients")
    karate = gcn.karate()
    h = gcn.train(karate, seed=0)
    print(f"\nGCN, Zachary's karate club ({karate.n_nodes} nodes, {len(karate.src)} directed edges), "
          f"labels on nodes 0 and 33 only, two layers, Adam, 200 epochs; test: the other 32 "
          f"members:\n{h.table(every=40)}")
    lesmis = matrices.les_miserables()
    for method in nnmf.METHODS:
        print(f"\nNNMF, Les Misérables co-occurrence ({lesmis.shape[0]}x{lesmis.shape[1]}, "
              f"{lesmis.nnz} entries), rank 6, {method}: {nnmf.train(lesmis, 6, method, steps=60, lr=0.05)}")
    nations = knowledge.load("nations")
    for model in ("transe", "distmult"):
        print()
        print(kge.train(nations, model=model, dim=32, epochs=40, lr=0.05, seed=0).summary())
    print("\nThe same training steps compiled (wb.jit: the key plan once, then one XLA program per "
          "step) and interpreted (node by node), median time per step (KGE: per epoch) after two:")
    runs = {
        "GCN, karate club, 40 epochs": lambda c: gcn.train(karate, epochs=40, lr=0.05, seed=0, compiled=c).seconds,
        "NNMF, Les Misérables, 60 projected steps":
            lambda c: nnmf.train(lesmis, 6, "projected", steps=60, lr=0.05, compiled=c).seconds,
        "DistMult 1-N, Nations, an epoch of 13 batches":
            lambda c: kge.train(nations, model="distmult", dim=32, epochs=5, seed=0, compiled=c,
                                eval_every=0).seconds,
    }
    for label, run in runs.items():
        compiled, interpreted = np.median(run(True)[2:]), np.median(run(False)[2:])
        print(f"  {label:<46} interpreted {interpreted * 1e3:7.2f} ms, compiled {compiled * 1e3:6.2f} ms "
              f"({interpreted / compiled:.0f}x)")


def tour() -> int:
    rng = np.random.default_rng(0)
    print("workbench tour: relations, the four operators, and their gradients\n")
    worst = forward_tour(rng)
    ok = gradient_tour()
    models_tour()
    print(f"\nforward: worst difference from numpy {worst:.2e}; gradients: "
          f"{'all equal to JAX within 1e-9' if ok else 'MISMATCH'}")
    return 0 if ok and worst < 1e-9 else 1


def figures(out_dir: str = "figures") -> int:
    """Draw the forward, backward and combined plans of the paper's examples as PNG files."""
    from pathlib import Path

    out = Path(out_dir)
    for name, make in programs.FIGURES.items():
        p = make(np.random.default_rng(0))
        both = wb.plans(p.fn, *p.rels, argnums=p.argnums)
        for view, plan in (("forward", both.forward), ("backward", both.backward), ("combined", both)):
            path = out / f"{name}_{view}.png"
            wb.render(plan, format="png", path=path)
            print(f"wrote {path}")
    return 0


def check_models(names=None, figures_dir: str | None = "figures", progress: bool | None = None) -> int:
    """Train the models (all, or ``names``), print the table against the references, save the
    training curves into ``figures_dir``; 0 when every row meets its reference, else 1."""
    import matplotlib

    matplotlib.use("Agg")  # files only
    opt = references.Options(figures=Path(figures_dir) if figures_dir else None, progress=progress)
    status, _ = references.run(names, opt)
    return status


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workbench")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("tour", help="run the paper's example programs beside numpy and JAX")
    fig = sub.add_parser("figures", help="draw the forward and backward plans of the examples")
    fig.add_argument("--out", default="figures", help="directory for the PNG files")
    chk = sub.add_parser("check", help="train every model on its real data beside its reference")
    chk.add_argument("names", nargs="*", help="only these checks (e.g. logreg gcn nnmf nmf "
                     "transe-umls, or a prefix such as transe); all by default")
    chk.add_argument("--figures", default="figures", help="directory for the training curves")
    chk.add_argument("--no-figures", action="store_true", help="save no figures")
    chk.add_argument("--no-progress", action="store_true", help="no progress bars")
    rep = sub.add_parser("reproduce", help="the paper's experiments as figures (figures/paper_*)")
    rep.add_argument("--quick", action="store_true", help="small sizes, a few minutes (CI)")
    rep.add_argument("--out", default="figures", help="directory for the figures, CSV and summaries")
    rep.add_argument("--only", nargs="+", choices=list(reproduce.FIGURES), help="only these figures")
    args = parser.parse_args(argv)
    if args.command == "reproduce":
        reproduce.reproduce(args.out, quick=args.quick, only=args.only)
        return 0
    if args.command == "check":
        return check_models(args.names, None if args.no_figures else args.figures,
                            False if args.no_progress else None)
    if args.command == "tour":
        return tour()
    if args.command == "figures":
        return figures(args.out)
    return 2


if __name__ == "__main__":
    sys.exit(main())
