"""The paper's experiments as figures, at this machine's scale: ``python -m workbench reproduce``.

Each figure is a function that measures, writes ``figures/paper_<name>.png``, the numbers behind it
(``.csv``) and a markdown summary quoting the paper's result beside ours (``.md``). ``quick``
shrinks every experiment to run in a few minutes (CI); the full run is the one shown in the
README. Measurements that need a fresh process (peak memory, a per-process memory cap) run each
configuration in its own Python subprocess, which the parent watches and kills when its resident
memory passes the cap: an out-of-memory mark.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import workbench as wb  # noqa: E402
from workbench import api, grid, optim  # noqa: E402
from workbench.datasets import graphs, knowledge, matrices  # noqa: E402
from workbench.models import gcn, kge, nnmf  # noqa: E402
from workbench.storage import Dataset  # noqa: E402


@dataclass
class Figure:
    """What one experiment wrote: its picture, its numbers and its summary."""

    name: str
    png: Path
    csv: Path
    md: Path
    rows: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def _write(out: Path, name: str, rows: list[dict], summary: str, fig) -> Figure:
    out.mkdir(parents=True, exist_ok=True)
    png, table, md = out / f"paper_{name}.png", out / f"paper_{name}.csv", out / f"paper_{name}.md"
    fig.savefig(png, dpi=110, bbox_inches="tight")
    plt.close(fig)
    with open(table, "w", newline="") as f:
        if rows:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    md.write_text(summary.rstrip() + "\n")
    return Figure(name, png, table, md, rows)


# ---- figures 1 and 4: epochs on the resident-partition runner, against one process -----------------

GIB_MB = 1024.0
DATA = Path(tempfile.gettempdir()) / "workbench_reproduce"  # the generated Parquet datasets, reused
SCALING_CAP_MB = 2048  # the full run's per-process cap (see the scaling figure)


class _Peaks:
    """Largest unshared resident size (``_resident_mb``) of this process and of each actor,
    sampled every 20 ms in a thread. When an actor passes ``cap_mb`` (or all of them and the
    driver together pass ``total_mb``, this machine's share) it kills the runner's actors, with
    no restart: the run fails, and is marked out of memory (or stopped)."""

    def __init__(self, actors: dict, cap_mb: float, total_mb: float):
        self.actors, self.cap_mb, self.total_mb = actors, cap_mb, total_mb  # pid -> actor handle
        self.driver, self.workers, self.killed = 0.0, {p: 0.0 for p in actors}, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import ray  # only where the runner runs: the CLI does not import Ray
        while not self._stop.wait(0.02) and self.killed is None:
            self.driver = max(self.driver, _resident_mb(os.getpid()))
            now = {p: _resident_mb(p) for p in self.workers}
            for p, m in now.items():
                self.workers[p] = max(self.workers[p], m)
            over = "process" if max(now.values(), default=0.0) > self.cap_mb else (
                "total" if sum(now.values()) + self.driver > self.total_mb else None)
            if over:
                self.killed = over
                for a in self.actors.values():
                    ray.kill(a, no_restart=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _epochs(step, params, repeat: int) -> tuple[float, float, list[float]]:
    """Run 1 + ``repeat`` epochs of ``params = step(params) -> (loss, params)``: (median seconds
    after the first, the first's seconds (compiling, reading shards), the losses)."""
    times, losses = [], []
    for _ in range(1 + repeat):
        start = time.perf_counter()
        loss, params = step(params)
        losses.append(float(loss))  # waits for the epoch's results
        times.append(time.perf_counter() - start)
    return float(np.median(times[1:])), times[0], losses


def _gcn_problem(path: str, hidden: int):
    rels, targets = graphs.graph_relations(path)
    W1, W2 = gcn.init_params(rels.node.value_shape[0], hidden, targets.value_shape[0], seed=0, dtype="float32")
    return rels, targets, (W1, W2), gcn.loss_program(rels, None, None, 5e-4, targets)


def _nnmf_problem(path: str, rank: int):
    entry = wb.from_dataset(path, name="Entry")
    W, H = nnmf.init_factors(tuple(entry.extents), rank, mean=0.25, seed=0, dtype="float32")
    return (W, H), nnmf.objective(entry)


def _kge_problem(path: str, dim: int):
    """DistMult with a logistic loss: mean softplus(-score) over the triples of ``path/pos`` plus
    mean softplus(score) over those of ``path/neg`` (random triples drawn like them)."""
    pos = wb.from_dataset(Path(path) / "pos", name="Pos")
    neg = wb.from_dataset(Path(path) / "neg", name="Neg")
    n_entities, n_relations = pos.extents[0], pos.extents[1]
    m = kge.get_model("distmult")
    E, R = kge.init_embeddings(m, n_entities, n_relations, dim, np.random.default_rng(0))
    Entity = wb.from_tensor(E, keys=("e",), dtype="float32", name="Entity")
    Rel = wb.from_tensor(R, keys=("r",), dtype="float32", name="Rel")
    return (Entity, Rel), kge.logistic_loss_program(m, pos, neg)


def model_epochs(model: str, path: str, width: int, system: str, repeat: int = 2,
                 partitions: tuple[int, ...] = (), cap_mb: float = 1e9, total_mb: float = 1e9) -> list[dict]:
    """Epochs (forward, backward and an Adam step) of ``model`` ("gcn", "nnmf" or "kge") on the
    dataset at ``path``: on the local executor (``system="local"``, one compiled ``api.jit`` step),
    on the dense JAX twin (``"jax"``, GCN only: gathers and ``segment_sum``, which build the
    per-edge messages) or on the resident runner (``"runner"``, once per partition count in
    ``partitions``; Ray must be running). One row per run: epoch seconds (median of ``repeat``
    after a warm-up epoch), the warm-up's seconds, the losses, and for the runner the peak
    resident memory of the driver and of every actor, with an out-of-memory mark when one
    process passed ``cap_mb``."""
    if system == "jax":
        if model != "gcn":
            raise ValueError(f"model_epochs: the dense twin is written for the GCN only, not {model!r}")
        seconds, first, losses = _epochs(*_gcn_twin(path, width), repeat)
        return [dict(seconds=seconds, first=first, losses=losses)]
    if model == "gcn":
        rels, _, params, loss_fn = _gcn_problem(path, width)
        argnums, inputs = (1, 2), lambda p: (rels.node, *p)
    elif model == "nnmf":
        params, loss_fn = _nnmf_problem(path, width)
        argnums, inputs = (0, 1), lambda p: p
    else:
        params, loss_fn = _kge_problem(path, width)
        argnums, inputs = (0, 1), lambda p: p
    partitioned = model != "gcn"  # factors and embeddings are keyed like the data
    if system == "local":
        opt = optim.Adam(lr=0.01)
        grad = api.jit(api.value_and_grad(loss_fn, argnums=argnums))
        state = opt.init(params)

        def step(p):
            nonlocal state
            loss, grads = grad(*inputs(p))
            p, state = opt.update(p, grads, state)
            if model == "nnmf":  # projected onto W, H >= 0
                p = tuple(r.with_values(jnp.maximum(r.table().values, 0.0)) for r in p)
            return loss.to_tensor(), p
        seconds, first, losses = _epochs(step, params, repeat)
        return [dict(seconds=seconds, first=first, losses=losses)]
    rows = []
    for P in partitions:
        with wb.RayRunner(partitions=P, retries=0) as runner:  # an actor killed at the cap ends the run
            opt, state = optim.Adam(lr=0.01), None
            if not partitioned:
                state = opt.init(params)

            def step(p):
                nonlocal state
                loss, grads = api.value_and_grad(loss_fn, argnums=argnums, executor=runner)(*inputs(p))
                if partitioned:  # the optimizer step runs on the actors that hold the parameters
                    p, state = runner.update(p, grads, "adam", state, lr=0.01, nonnegative=(model == "nnmf"))
                else:  # two weight matrices: on the driver
                    p, state = opt.update(p, grads, state)
                return loss.to_tensor(), p
            actors = {pid: runner.actor(i) for i, pid in enumerate(runner.pids())}
            row = dict(partitions=P)
            with _Peaks(actors, cap_mb, total_mb) as peaks:
                try:
                    row.update(zip(("seconds", "first", "losses"), _epochs(step, params, repeat)))
                except Exception as exc:  # noqa: BLE001 - a killed actor fails the run
                    if peaks.killed is None:
                        raise
                    row["error"] = type(exc).__name__
            row.update(driver_mb=peaks.driver, actor_mb=sorted(peaks.workers.values(), reverse=True),
                       oom=peaks.killed == "process", over_total=peaks.killed == "total")
            rows.append(row)
    return rows


def _gcn_twin(path: str, hidden: int):
    """The dense JAX twin of the GCN epoch on the dataset at ``path``, read into arrays: one
    jitted step of value_and_grad and Adam (lr 0.01) on W1, W2."""
    def frame(name):
        return Dataset(Path(path) / name).scan().collect()
    node, edge, lab = frame("node"), frame("edge"), frame("label_train")
    n = Dataset(Path(path) / "node").meta.extents[0]
    x = np.zeros((n, node["value"].dtype.shape[0]), np.float32)
    x[node["id"].to_numpy()] = node["value"].to_numpy()
    y = np.zeros((n, lab["value"].dtype.shape[0]), np.float32)
    y[lab["id"].to_numpy()] = lab["value"].to_numpy()
    g = gcn.DenseGraph(jnp.asarray(edge["src"].to_numpy(), jnp.int32), jnp.asarray(edge["dst"].to_numpy(), jnp.int32),
                       jnp.asarray(edge["value"].to_numpy(), jnp.float32), jnp.asarray(y),
                       jnp.asarray(float(lab.height), jnp.float32))
    del node, edge, lab
    W1, W2 = gcn.init_params(x.shape[1], hidden, y.shape[1], seed=0, dtype="float32")
    w = (W1.table().values[0], W2.table().values[0])
    x = jnp.asarray(x)

    @jax.jit
    def step(w, m, v, t):  # Adam (Kingma and Ba), b1 0.9, b2 0.999, eps 1e-8
        loss, gw = jax.value_and_grad(lambda w: gcn.dense_loss(x, w[0], w[1], g, weight_decay=5e-4))(w)
        m = jax.tree.map(lambda m, d: 0.9 * m + 0.1 * d, m, gw)
        v = jax.tree.map(lambda v, d: 0.999 * v + 0.001 * d * d, v, gw)
        w = jax.tree.map(lambda w, m, v: w - 0.01 * (m / (1 - 0.9 ** t)) / (jnp.sqrt(v / (1 - 0.999 ** t)) + 1e-8),
                         w, m, v)
        return loss, w, m, v
    zeros = jax.tree.map(jnp.zeros_like, w)
    state = {"m": zeros, "v": zeros, "t": 0}

    def run(w):
        state["t"] += 1
        loss, w, state["m"], state["v"] = step(w, state["m"], state["v"], state["t"])
        return loss, w
    return run, w


# ---- figure 5: RJP = VJP over the random program grid -------------------------------------------

EPS = {"float64": float(np.finfo(np.float64).eps), "float32": float(np.finfo(np.float32).eps)}


def rjp_equals_vjp(out: Path, quick: bool) -> Figure:
    """The largest relative error per program (loss and every input's gradient) of the RJP
    backward plan against ``jax.grad`` of the program's dense twin, over the random program grid,
    run in float64 and in float32 (the twin always in float64)."""
    if not jax.config.jax_enable_x64:
        raise RuntimeError("reproduce: the RJP = VJP figure needs JAX's x64 mode "
                           "(jax.config.update('jax_enable_x64', True) before building relations)")
    n = 40 if quick else 300
    programs = grid.draw_programs(n)
    rows = []
    for i, (metas, spec, seed, density) in enumerate(programs):
        ops = sum(1 for s in spec if not isinstance(s, grid.Input))
        for dtype in ("float64", "float32"):
            err = grid.measure(metas, spec, seed, density, dtype=dtype)
            if err is not None:
                rows.append(dict(program=i, dtype=dtype, operators=ops, inputs=len(metas),
                                 max_relative_error=err))
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    zero = 1e-19  # where programs whose every value is exact are drawn
    bins = np.logspace(-19.25, -3, 66)
    summary_lines = []
    for dtype, color in (("float64", "tab:blue"), ("float32", "tab:orange")):
        errs = np.array([r["max_relative_error"] for r in rows if r["dtype"] == dtype])
        ax.hist(np.where(errs > 0, np.maximum(errs, 2e-19), zero), bins=bins, color=color, alpha=0.7,
                label=f"{dtype}: {len(errs)} programs (dashed: machine epsilon {EPS[dtype]:.1e})")
        ax.axvline(EPS[dtype], color=color, ls="--", lw=1)
        worst = float(errs.max()) if errs.size else float("nan")
        summary_lines.append(f"| {dtype} | {len(errs)} | {np.median(errs):.2e} | {worst:.2e} | "
                             f"{worst / EPS[dtype]:.1f} |")
    ax.set_xscale("log")
    ticks = [zero] + [10.0 ** e for e in range(-17, -2, 2)]
    ax.set_xticks(ticks, ["exact"] + [f"1e{e}" for e in range(-17, -2, 2)])
    ax.set_xlabel("largest relative error per program (loss and every gradient), vs jax.grad of the dense twin")
    ax.set_ylabel("programs")
    ax.set_title("RJP = VJP: random relational programs, differentiated relationally")
    ax.legend(loc="upper right", fontsize=8)
    summary = f"""# RJP = VJP over the random program grid

The paper's method claims that the relation-Jacobian products derive the same gradient as the
vector-Jacobian product of the dense program. Here {len(programs)} random programs of the grid
(`workbench.grid`: 1-3 inputs, 1-4 selects, joins and aggregates over earlier results, random
keys, predicates and kernels) are differentiated by the RJP rules, run in float64 and float32,
and compared with `jax.grad` of each program's dense twin in float64. Error: max |got - want| /
max |want| over the loss and every input's gradient.

| dtype | programs | median error | largest error | largest / machine epsilon |
|---|---|---|---|---|
{chr(10).join(summary_lines)}

Programs whose mean aggregates an empty relation are undefined and not counted.
"""
    return _write(out, "rjp_vjp", rows, summary, fig)


# ---- figure 2: width: peak memory and step time against hidden size ----------------------------

def _rss_mb(pid: int, field_name: str = "VmRSS") -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _resident_mb(pid: int) -> float:
    """Resident memory of a process that no other process shares (MB): VmRSS without RssShmem,
    the pages of Ray's object store that every process reading an object maps (counted once,
    in the store, not in each reader)."""
    return max(_rss_mb(pid) - _rss_mb(pid, "RssShmem"), 0.0)


def peak_mb(pid: int) -> float:
    """Peak resident memory of process ``pid`` so far (VmHWM, MB; 0 once it has exited)."""
    return _rss_mb(pid, "VmHWM")


def own_peak_mb() -> float:
    """This process's peak resident memory (VmHWM, MB). Not ``getrusage``'s ``ru_maxrss``, which
    keeps the high-water mark across ``execve``: a process started from a large parent would
    report the parent's size."""
    return peak_mb(os.getpid())


def run_capped(code: str, cap_mb: float, timeout: float = 1800.0) -> dict:
    """Run ``code`` in a fresh Python process that prints one JSON line last; kill it when its
    resident memory passes ``cap_mb`` (an out-of-memory result) or after ``timeout`` seconds.
    Returns the JSON (plus ``peak_mb``, the largest resident size seen) or {"oom": True, ...}."""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    peak, start, killed = 0.0, time.monotonic(), None
    while proc.poll() is None:
        rss = _resident_mb(proc.pid)
        peak = max(peak, rss)
        if rss > cap_mb:
            killed = "oom"
        elif time.monotonic() - start > timeout:
            killed = "timeout"
        if killed:
            proc.kill()
            break
        time.sleep(0.05)
    stdout, stderr = proc.communicate()
    if killed:
        return {"oom": killed == "oom", "timeout": killed == "timeout", "peak_mb": peak}
    if proc.returncode != 0:
        tail = stderr.strip().splitlines()[-3:]
        raise RuntimeError(f"reproduce: a measurement process failed ({proc.returncode}): {' | '.join(tail)}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["peak_mb"] = max(peak, result.get("peak_mb", 0.0))
    result["oom"] = False
    return result


WIDTH_SYSTEMS = ("workbench", "jax_segment_sum", "jax_bcsr")

_WIDTH_WORKER = """
import json
from workbench.reproduce import gcn_width_step, own_peak_mb
seconds, first = gcn_width_step(**{args!r})
print(json.dumps(dict(seconds=seconds, first=first, peak_mb=own_peak_mb())))
"""


def gcn_width_step(system: str, n_nodes: int, n_edges: int, n_features: int, hidden: int,
                   n_classes: int = 16, steps: int = 2) -> tuple[float, float]:
    """Build a synthetic graph and run ``steps`` GCN training steps (forward and backward) of
    ``system`` at ``hidden`` width, float32: (median seconds of the steps after the first, the
    first step's seconds, which include compiling)."""
    step = _width_programs(system, n_nodes, n_edges, n_features, hidden, n_classes)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        jax.block_until_ready(step())
        times.append(time.perf_counter() - start)
    rest = times[1:] or times
    return float(np.median(rest)), times[0]


def _width_programs(system, n_nodes, n_edges, n_features, hidden, n_classes):
    graph = _graph(n_nodes, n_edges, n_features, n_classes)
    if system == "workbench":
        return _workbench_step(graph, hidden)
    segment_sum, bcsr = gcn.jax_peers(graph, hidden)
    return bcsr if system == "jax_bcsr" else segment_sum


def _graph(n_nodes, n_edges, n_features, n_classes):
    return graphs.sbm(n_nodes, n_classes, 2 * n_edges / n_nodes, n_features, n_edges=n_edges, seed=0,
                      name=f"sbm-{n_nodes}")


def _workbench_step(graph, hidden: int):
    rels = graphs.to_relations(graph, dtype="float32")
    W1, W2 = gcn.init_params(graph.n_features, hidden, graph.n_classes, seed=0, dtype="float32")
    step = api.jit(api.value_and_grad(gcn.loss_program(rels), argnums=(1, 2)))

    def run():
        loss, (g1, g2) = step(rels.node, W1, W2)
        return loss.table().values, g1.table().values, g2.table().values
    return run


SYSTEM_LABELS = {"workbench": "workbench (compiled, SpMM rewrite)", "jax_segment_sum": "JAX segment_sum",
                 "jax_bcsr": "JAX BCSR"}


def width(out: Path, quick: bool) -> Figure:
    """Peak resident memory and step time of one process training a GCN, against the hidden
    width, for the workbench and the two hand-written JAX programs, each under a memory cap."""
    if quick:
        n_nodes, n_edges, n_features, hiddens, cap = 20_000, 200_000, 64, (64, 256, 1024), 3072
    else:
        n_nodes, n_edges, n_features, hiddens, cap = 200_000, 2_000_000, 128, (64, 128, 256, 512, 1024), 8192
    rows = []
    for hidden in hiddens:
        for system in WIDTH_SYSTEMS:
            args = dict(system=system, n_nodes=n_nodes, n_edges=n_edges, n_features=n_features,
                        hidden=hidden)
            r = run_capped(_WIDTH_WORKER.format(args=args), cap_mb=cap)
            rows.append(dict(system=system, hidden=hidden, nodes=n_nodes, edges=n_edges,
                             features=n_features, cap_mb=cap, oom=r["oom"], timeout=r.get("timeout", False),
                             peak_mb=round(r["peak_mb"], 1), step_seconds=r.get("seconds", float("nan")),
                             first_step_seconds=r.get("first", float("nan"))))
    fig, (mem, sec) = plt.subplots(1, 2, figsize=(11, 3.8))
    for system, marker in zip(WIDTH_SYSTEMS, "osD"):
        mine = [r for r in rows if r["system"] == system]
        ok = [r for r in mine if not r["oom"] and not r["timeout"]]
        mem.plot([r["hidden"] for r in ok], [r["peak_mb"] / 1024 for r in ok], marker=marker,
                 label=SYSTEM_LABELS[system])
        sec.plot([r["hidden"] for r in ok], [r["step_seconds"] for r in ok], marker=marker,
                 label=SYSTEM_LABELS[system])
        failed = [r for r in mine if r["oom"]]
        if failed:
            mem.scatter([r["hidden"] for r in failed], [cap / 1024] * len(failed), marker="x", s=80,
                        color=mem.get_lines()[-1].get_color(), zorder=5)
    mem.axhline(cap / 1024, color="grey", ls="--", lw=1)
    mem.text(hiddens[0], cap / 1024 * 1.02, f"per-process cap {cap / 1024:.0f} GiB (x: out of memory)",
             fontsize=8, color="grey")
    for ax in (mem, sec):
        ax.set_xscale("log", base=2)
        ax.set_xticks(hiddens, [str(h) for h in hiddens])
        ax.set_xlabel("hidden width")
    mem.set_ylabel("peak resident memory (GiB)")
    sec.set_ylabel("training step (s)")
    sec.set_yscale("log")
    mem.legend(fontsize=8)
    fig.suptitle(f"GCN at growing width: {n_nodes:,} nodes, {n_edges:,} edges, {n_features} features, one process")
    table = "\n".join(
        f"| {h} | " + " | ".join(
            ("out of memory" if r["oom"] else f"{r['peak_mb'] / 1024:.2f} GiB, {r['step_seconds']:.2f} s")
            for r in rows if r["hidden"] == h) + " |" for h in hiddens)
    summary = f"""# Width: only the relational system trains the widest model

**Paper.** On ogbn-products, a two-layer GCN improves from 72.5% accuracy at hidden size 64 to
76.6% at 1024, and only the relational system trains the 1024-wide model: DGL and AliGraph run
out of memory.

**Here**, one process, two training steps (forward and backward) of a two-layer GCN on a
synthetic stochastic block model graph ({n_nodes:,} nodes, {n_edges:,} edges, {n_features}
features, 16 classes, float32), under a per-process cap of {cap / 1024:.0f} GiB on resident
memory (the process is killed when it passes the cap: out of memory). The workbench's SpMM
rewrite never builds the per-edge messages that a gather / `segment_sum` program materializes.

| hidden | {" | ".join(SYSTEM_LABELS[s] for s in WIDTH_SYSTEMS)} |
|---|{"---|" * len(WIDTH_SYSTEMS)}
{table}

Peak memory is the process's largest resident size (data, compiled programs, Python and JAX
included); a step's time is the median after the first (compiling) step.
"""
    return _write(out, "width", rows, summary, fig)


# ---- figure 3: width helps on real data: filtered MRR against embedding size -------------------

KGE_DTYPE = "float32"  # as pykeen trains (the CLI turns on x64, whose default would be float64)


def kge_width(out: Path, quick: bool) -> Figure:
    """Filtered MRR (head and tail, test split) against the embedding size for DistMult and
    TransE trained by 1-N scoring on the knowledge graphs that ship with the package."""
    if quick:
        plan = [("umls", "distmult")]
        dims, epochs = (16, 64), 10
    else:
        plan = [(d, m) for d in ("umls", "kinships") for m in ("distmult", "transe-l1")]
        dims, epochs = (16, 32, 64, 128, 256, 512), 60
    # each trained row is kept in a journal as soon as it is done, so an interrupted run resumes
    journal = out / "paper_kge_width.rows.jsonl"
    done = {}
    if journal.exists():
        for line in journal.read_text().splitlines():
            r = json.loads(line)
            done[(r["dataset"], r["model"], r["dim"], r["max_epochs"], r["dtype"])] = r
    rows = []
    for data, model in plan:
        triples = knowledge.load(data)
        for dim in dims:
            key = (data, model, dim, epochs, KGE_DTYPE)
            if key not in done:
                h = kge.train(triples, model=model, dim=dim, epochs=epochs, seed=0, dtype=KGE_DTYPE)
                done[key] = dict(dataset=data, model=model, dim=dim, max_epochs=epochs, dtype=KGE_DTYPE,
                                 epochs=len(h.losses), mrr=h.metrics.mrr, hits_at_10=h.metrics.hits_at_10,
                                 seconds=round(sum(h.seconds), 2))
                out.mkdir(parents=True, exist_ok=True)
                with open(journal, "a") as f:
                    f.write(json.dumps(done[key]) + "\n")
            rows.append(done[key])
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for (data, model), marker in zip(plan, "osD^"):
        mine = [r for r in rows if r["dataset"] == data and r["model"] == model]
        ax.plot([r["dim"] for r in mine], [r["mrr"] for r in mine], marker=marker,
                label=f"{model}, {data}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(dims, [str(d) for d in dims])
    ax.set_xlabel("embedding size")
    ax.set_ylabel("filtered MRR (test, head and tail)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("Embedding size on real knowledge graphs, trained relationally (1-N scoring)")
    table = "\n".join(f"| {r['model']} | {r['dataset']} | {r['dim']} | {r['mrr']:.3f} | "
                       f"{r['hits_at_10']:.3f} | {r['epochs']} | {r['seconds']:.0f} |" for r in rows)
    shape = []  # where each curve peaks, and where it ends
    for data, model in plan:
        mine = [r for r in rows if r["dataset"] == data and r["model"] == model]
        best = max(mine, key=lambda r: r["mrr"])
        shape.append(f"- {model} on {data}: {mine[0]['mrr']:.3f} at size {mine[0]['dim']}, best "
                     f"{best['mrr']:.3f} at {best['dim']}, {mine[-1]['mrr']:.3f} at {mine[-1]['dim']}.")
    shape = "\n".join(shape)
    summary = f"""# Embedding size on real data

**Paper.** On ogbn-products, the GCN's accuracy grows from 72.5% at hidden size 64 to 76.6% at
1024, a model only the relational system could train. No real citation graph with features
ships here, so this figure stands in for it with the real knowledge graphs that do (UMLS,
Kinships): the filtered MRR of DistMult and TransE against the embedding size, each trained by
the relational backward plan (1-N scoring with inverse relations, softmax cross-entropy, Adam,
batch 256, up to {epochs} epochs with early stopping on validation MRR, {KGE_DTYPE}). TransE
scores with the L1 norm, as pykeen's TransE does.

{shape}

On these small graphs (UMLS: 135 entities, Kinships: 104) a larger size helps up to a point
and then hurts. Every size is trained alike (one learning rate, no regularization, one epoch
budget), not tuned per size; whether the wider models overfit was not measured (the training
set's MRR is not recorded). So this figure does not show the paper's "accuracy grows with
width"; that claim is about ogbn-products, a graph large enough to use a 1024-wide model. What
carries over is the memory side, shown by the `width` figure: the relational plan trains the
wide models where the hand-written JAX programs run out of memory.

| model | data | size | MRR | Hits@10 | epochs | seconds |
|---|---|---|---|---|---|---|
{table}

References at their own sizes (pykeen, LCWA, measured on this machine kind): DistMult UMLS
0.833, Kinships 0.608; TransE (L1) UMLS 0.745, Kinships 0.362.

The rows took {sum(r['seconds'] for r in rows):.0f} s of training in all (wall-clock, on a machine
shared with other work). Each row is journalled in `paper_kge_width.rows.jsonl` when trained, and
a run trains only the rows missing there, so the run line below may count only some of them.
"""
    return _write(out, "kge_width", rows, summary, fig)


_EPOCHS_WORKER = """
import json
from workbench.reproduce import model_epochs, own_peak_mb
rows = model_epochs(**{args!r})
print(json.dumps(dict(rows=rows, peak_mb=own_peak_mb())))
"""

_RUNNER_WORKER = """
import json, ray
from workbench.execute import ray_cluster
from workbench.reproduce import model_epochs
ray_cluster.start({cpus!r})
try:
    rows = [model_epochs(**job) for job in {jobs!r}]
finally:
    ray.shutdown()
print(json.dumps(dict(rows=rows)))
"""


def _one_process(model: str, path: Path, width: int, system: str, repeat: int, cap_mb: float) -> dict:
    """``model_epochs`` of one process ("local", "jax") in a fresh process under the cap: epoch
    seconds and its peak resident memory, or an out-of-memory mark if it was killed at the cap."""
    args = dict(model=model, path=str(path), width=width, system=system, repeat=repeat)
    r = run_capped(_EPOCHS_WORKER.format(args=args), cap_mb=cap_mb)
    row = r["rows"][0] if "rows" in r else {}
    return dict(system=system, partitions=1, oom=r["oom"], timeout=r.get("timeout", False), over_machine=False,
                seconds=row.get("seconds", float("nan")), first=row.get("first", float("nan")),
                process_mb=round(r["peak_mb"], 1), driver_mb=float("nan"), actor_mb=float("nan"),
                losses=row.get("losses", []))


def _on_runner(jobs: list[tuple[str, Path, int]], partitions: tuple[int, ...], repeat: int, cap_mb: float,
               total_mb: float = 11 * 1024) -> list[list[dict]]:
    """``model_epochs`` on the resident runner for each (model, path, width) of ``jobs`` and each
    partition count, in one fresh process that starts Ray once (on loopback) and stops it. The
    driver is under the cap by ``run_capped``, the actors by ``model_epochs``'s own watch (and
    all together under ``total_mb``, this machine's share). One list of rows per job."""
    args = [dict(model=m, path=str(p), width=w, system="runner", repeat=repeat, partitions=tuple(partitions),
                 cap_mb=cap_mb, total_mb=total_mb) for m, p, w in jobs]
    code = _RUNNER_WORKER.format(cpus=os.cpu_count(), jobs=args)
    timeout = 1800.0 * len(jobs)  # half an hour per job
    try:
        r = run_capped(code, cap_mb=cap_mb, timeout=timeout)
    except RuntimeError as exc:  # Ray failing to start on a loaded machine: once more, said aloud
        print(f"reproduce: the runner's process failed, running it again: {exc}", file=sys.stderr, flush=True)
        r = run_capped(code, cap_mb=cap_mb, timeout=timeout)
    if "rows" not in r:  # the driver itself passed the cap (or the time limit)
        return [[dict(system="runner", partitions=P, oom=r["oom"], timeout=r.get("timeout", False),
                      over_machine=False, seconds=float("nan"), first=float("nan"), process_mb=round(r["peak_mb"], 1),
                      driver_mb=round(r["peak_mb"], 1), actor_mb=float("nan"), losses=[]) for P in partitions]
                for _ in jobs]
    out = []
    for job_rows in r["rows"]:
        out.append([])
        for row in job_rows:
            actor = max(row["actor_mb"], default=0.0)
            out[-1].append(dict(system="runner", partitions=row["partitions"], oom=row["oom"],
                                timeout=False, over_machine=row["over_total"], seconds=row.get("seconds", float("nan")),
                                first=row.get("first", float("nan")),
                                process_mb=round(max(actor, row["driver_mb"]), 1), driver_mb=round(row["driver_mb"], 1),
                                actor_mb=round(actor, 1), losses=row.get("losses", [])))
    return out


def _ok(r: dict) -> bool:
    return not r["oom"] and not r["timeout"] and not r.get("over_machine") and r["seconds"] == r["seconds"]


def _fmt(r: dict | None) -> str:
    if r is None:
        return "-"
    if r["oom"]:
        return f"out of memory ({r['process_mb'] / GIB_MB:.1f} GiB)"
    if r["timeout"]:
        return "timed out"
    if r.get("over_machine"):
        return "stopped: all processes together passed this machine's share"
    return f"{r['seconds']:.3g} s, {r['process_mb'] / GIB_MB:.2f} GiB"


PAPER_SCALING = """| data set | system | 1 | 2 | 4 | 8 | 16 machines |
|---|---|---|---|---|---|---|
| ogbn-papers100M (0.1B nodes, 1.6B edges) | RA-GCN | ≈295 | ≈155 | ≈78 | ≈52 | ≈35 |
| | DGL | OOM | OOM | ≈72 | ≈57 | ≈40 |
| | AliGraph | OOM | OOM | OOM | OOM | ≈43 |
| friendster (65.6M nodes, 3.6B edges) | RA-GCN | ≈370 | ≈193 | ≈125 | ≈88 | ≈62 |
| | DGL | OOM | OOM | OOM | ≈93 | ≈72 |"""


def _scaling_plot(rows: list[dict], scales, parts, cap: float, hidden: int, features: int):
    """Epoch seconds and peak memory per process against partitions, one colour per graph."""
    fig, (sec, mem) = plt.subplots(1, 2, figsize=(12, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    where = {"local": parts[0] * 0.5, "jax": parts[0] * 0.7}  # the one-process systems, left of P = 1
    marks = {"local": "s", "jax": "D"}
    failed = []
    for scale, color in zip(scales, colors):
        mine = [r for r in rows if r["scale"] == scale]
        ok = [r for r in mine if r["system"] == "runner" and _ok(r)]
        label = f"2^{scale} nodes, {mine[0]['edges']:,} edges"
        sec.plot([r["partitions"] for r in ok], [r["seconds"] for r in ok], marker="o", color=color, label=label)
        mem.plot([r["partitions"] for r in ok], [r["actor_mb"] / GIB_MB for r in ok], marker="o", color=color)
        mem.plot([r["partitions"] for r in ok], [r["driver_mb"] / GIB_MB for r in ok], marker=".", ls=":",
                 color=color)
        for r in mine:
            x = where.get(r["system"], r["partitions"])
            if r["system"] != "runner" and _ok(r):
                sec.scatter([x], [r["seconds"]], marker=marks[r["system"]], s=40, color=color, zorder=4)
                mem.scatter([x], [r["process_mb"] / GIB_MB], marker=marks[r["system"]], s=40, color=color, zorder=4)
            if r["oom"]:  # killed when it passed the cap
                failed.append((x, color))
                mem.scatter([x], [cap / GIB_MB], marker="x", s=90, color=color, zorder=5)
    for x, color in failed:
        sec.text(x, 0.98, "OOM", transform=sec.get_xaxis_transform(), fontsize=7, color=color, ha="center",
                 va="top", rotation=90)
    mem.axhline(cap / GIB_MB, color="grey", ls="--", lw=1)
    mem.text(where["local"], cap / GIB_MB * 0.97, f"per-process cap {cap / GIB_MB:.1f} GiB", fontsize=8,
             color="grey", va="top")
    for ax in (sec, mem):
        ax.set_xscale("log", base=2)
        ax.set_xticks([where["local"], where["jax"], *parts], ["local", "JAX", *[str(p) for p in parts]])
        ax.set_xlabel("one process (local executor, JAX twin) | partitions of the runner")
    sec.set_ylabel("epoch: forward, backward, Adam (s)")
    sec.set_yscale("log")
    mem.set_ylabel("peak resident memory per process (GiB)")
    fig.legend(*sec.get_legend_handles_labels(), loc="lower center", ncol=len(scales), fontsize=8,
               bbox_to_anchor=(0.5, -0.1), title="runner (o, dotted: its driver); local executor (square), "
               "JAX twin (diamond); x, OOM: out of memory", title_fontsize=8)
    fig.suptitle(f"GCN on R-MAT graphs, hidden {hidden}, {features} features, {os.cpu_count()} cores: "
                 f"epoch time and memory against partitions")

    return fig


def scaling(out: Path, quick: bool, data: Path | None = None) -> Figure:
    """GCN epoch time (forward, backward, Adam) against partitions on the resident runner, for
    R-MAT graphs of growing size written as Parquet, with the local executor (compiled step)
    and the dense JAX twin as one-process baselines, every process under one memory cap."""
    if quick:
        scales, edge_factor, features, hidden, parts, repeat, cap = (10, 11), 8, 16, 32, (1, 2), 1, 3072
    else:
        scales, edge_factor, features, hidden, parts, repeat = (16, 17, 18, 19), 16, 128, 256, (1, 2, 4, 8), 2
        cap = SCALING_CAP_MB
    data = Path(data or DATA)
    paths = {s: data / f"rmat{s}_{edge_factor}_{features}_p{max(parts)}" for s in scales}
    for scale, path in paths.items():
        if not (path / "test" / "meta.json").is_file():
            graphs.rmat_dataset(path, scale, edge_factor, features, 16, partitions=max(parts), overwrite=True)
    found = {s: [_one_process("gcn", p, hidden, system, repeat, cap) for system in ("local", "jax")]
             for s, p in paths.items()}
    # eight actors under a 2 GiB cap each: all processes together may use up to 18 GiB here
    per_graph = _on_runner([("gcn", paths[s], hidden) for s in scales], parts, repeat, cap,
                           total_mb=(11 if quick else 18) * 1024)
    for s, runs in zip(scales, per_graph):
        found[s] += runs
    rows = [dict(scale=s, nodes=1 << s, edges=Dataset(paths[s] / "edge").rows, features=features, hidden=hidden,
                 cap_mb=cap, **{k: v for k, v in r.items() if k != "losses"},
                 first_loss=r["losses"][0] if r["losses"] else float("nan"))
            for s in scales for r in found[s]]
    fig = _scaling_plot(rows, scales, parts, cap, hidden, features)
    def cell(scale, system, P=None):
        r = [x for x in rows if x["scale"] == scale and x["system"] == system and (P is None or x["partitions"] == P)]
        return _fmt(r[0] if r else None)
    header = " | ".join(["local", "JAX twin"] + [f"runner P={p}" for p in parts])
    table = "\n".join(f"| 2^{s} nodes, {next(r['edges'] for r in rows if r['scale'] == s):,} edges | "
                      + " | ".join([cell(s, "local"), cell(s, "jax")] + [cell(s, "runner", p) for p in parts]) + " |"
                      for s in scales)
    largest = [r for r in rows if r["scale"] == scales[-1]]
    single_oom = [r["system"] for r in largest if r["system"] != "runner" and r["oom"]]
    runner_ok = [r["partitions"] for r in largest if r["system"] == "runner" and _ok(r)]
    headline = (f"At the largest graph, {' and '.join(single_oom) or 'no single-process system'} passed the "
                f"cap; the runner trained it at P = {', '.join(map(str, runner_ok)) or 'none'}.")
    summary = f"""# Scaling: GCN epoch time against partitions, and out of memory

**Paper** (GCN epoch seconds against machines, read from its figure; OOM: out of memory):

{PAPER_SCALING}

**Here**, a two-layer GCN (hidden {hidden}, float32, weight decay 5e-4, no dropout, Adam on the
driver) on SYNTHETIC R-MAT graphs ({edge_factor} draws per node, undirected, self-loops,
{features} block-model features, 16 classes) written as hash-partitioned Parquet
(`graphs.rmat_dataset`). An epoch is forward, backward and the Adam step, the median of
{repeat} epochs after a warm-up epoch. Systems: the resident runner (`wb.RayRunner`, one Ray
actor per partition reading its own shards; the driver reads no data), the local executor (one
compiled `wb.jit` step, one process) and the dense JAX twin (gathers and `segment_sum`, which
build the per-edge messages; one process). Every process is capped at **{cap / GIB_MB:.1f} GiB**
of resident memory that it does not share (VmRSS without RssShmem, sampled every 20-50 ms): the
baselines' processes, the runner's driver and each of its actors are killed when they pass it
(out of memory). Ray's object store (the rows moving between partitions) is shared memory,
counted once for the machine, not in each process that maps it. Cell: epoch seconds, peak
memory of the largest process (for the runner, its largest actor or the driver).

| graph | {header} |
|---|{"---|" * (2 + len(parts))}
{table}

{headline}

This machine has {os.cpu_count()} cores and one memory: every actor runs on them, so more
partitions do not make an epoch faster here (the paper's machines each brought 20 cores). What
partitions buy on one machine is memory headroom per process: each actor holds only its shards
and its share of the intermediates, plus a fixed runtime (Python, JAX, Polars, Ray) of about
0.4-0.5 GiB that every process pays. Times are wall-clock seconds on a machine shared with
other work, so they vary from run to run.
"""
    return _write(out, "scaling", rows, summary, fig)


def other_models(out: Path, quick: bool, data: Path | None = None) -> Figure:
    """NNMF and KGE (DistMult) epoch time against data size: SYNTHETIC sparse low-rank matrices
    and knowledge graphs written as Parquet, the local executor against the resident runner."""
    if quick:
        sizes, rank, dim, parts, repeat, cap = (20_000, 80_000), 8, 16, (2,), 1, 3072
    else:
        sizes, rank, dim, parts, repeat, cap = (100_000, 300_000, 1_000_000, 3_000_000), 32, 32, (2, 4), 2, 6144
    data = Path(data or DATA)
    made = []
    for model in ("nnmf", "kge"):
        for n in sizes:
            path = data / f"{model}_{n}_p{max(parts)}"
            if model == "nnmf":
                side = max(100, int(np.sqrt(n * 20)))  # about 5% of the entries observed
                if not (path / "meta.json").is_file():
                    matrices.low_rank_dataset(path, side, side, rank, n, partitions=max(parts), overwrite=True)
                shape = f"{side:,} x {side:,}"
                width = rank
            else:
                entities = max(100, n // 10)
                for kind, seed in (("pos", 0), ("neg", 1)):
                    if not (path / kind / "meta.json").is_file():
                        knowledge.synthetic_dataset(path / kind, entities, 32, n, partitions=max(parts), seed=seed,
                                                    overwrite=True)
                shape = f"{entities:,} entities, 32 relations"
                width = dim
            stored = (Dataset(path).rows if model == "nnmf"
                      else Dataset(path / "pos").rows + Dataset(path / "neg").rows)
            made.append((model, n, path, width, stored, shape))
    runner = _on_runner([(m, p, w) for m, _, p, w, _, _ in made], parts, repeat, cap)
    rows = []
    for (model, n, path, width, stored, shape), on_runner in zip(made, runner):
        for r in [_one_process(model, path, width, "local", repeat, cap)] + on_runner:
            rows.append(dict(model=model, size=n, rows=stored, shape=shape, width=width, cap_mb=cap,
                             **{k: v for k, v in r.items() if k != "losses"},
                             first_loss=r["losses"][0] if r["losses"] else float("nan")))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, model, title in zip(axes, ("nnmf", "kge"), (f"NNMF, rank {rank}, projected Adam",
                                                          f"KGE: DistMult, dim {dim}, logistic loss")):
        mine = [r for r in rows if r["model"] == model]
        keys = [("local", 1)] + [("runner", p) for p in parts]
        for (system, P), marker in zip(keys, "osD^v"):
            line = [r for r in mine if r["system"] == system and r["partitions"] == P]
            ok = [r for r in line if _ok(r)]
            name = "local (one compiled step)" if system == "local" else f"runner, P={P}"
            ax.plot([r["rows"] for r in ok], [r["seconds"] for r in ok], marker=marker, label=name)
            bad = [r for r in line if r["oom"]]
            if bad:
                top = max((x["seconds"] for x in mine if _ok(x)), default=1.0)
                ax.scatter([r["rows"] for r in bad], [top] * len(bad),
                           marker="x", s=80, color=ax.get_lines()[-1].get_color(), label=f"{name}: out of memory")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("stored tuples (observed entries; triples and negatives)")
        ax.set_ylabel("epoch: forward, backward, Adam (s)")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle(f"The other two models at growing size, local executor against the resident runner "
                 f"({os.cpu_count()} cores)")
    cols = [("local", 1)] + [("runner", p) for p in parts]
    table = "\n".join(
        f"| {m} | {next(r['shape'] for r in rows if r['model'] == m and r['size'] == n)} | "
        f"{next(r['rows'] for r in rows if r['model'] == m and r['size'] == n):,} | "
        + " | ".join(_fmt(next((r for r in rows if r["model"] == m and r["size"] == n and r["system"] == s
                                and r["partitions"] == p), None)) for s, p in cols) + " |"
        for m in ("nnmf", "kge") for n in sizes)
    summary = f"""# The other two models at scale: NNMF and KGE

**Paper.** The relational system also trains non-negative matrix factorization and knowledge
graph embeddings at scale: KGE on Freebase, 1.9 billion triples (split 90/5/5), on the same
cluster of up to 16 machines.

**Here**, epochs (forward, backward, Adam step; median of {repeat} after a warm-up epoch) on
SYNTHETIC data written as hash-partitioned Parquet: NNMF (rank {rank}, squared error at the
observed entries of a low-rank matrix, `matrices.low_rank_dataset`, Adam projected onto
W, H >= 0) and KGE (DistMult, dimension {dim}, logistic loss: softplus(-score) over the
triples plus softplus(score) over as many random triples, `knowledge.synthetic_dataset`, Zipf
skewed entities). Local: one compiled `wb.jit` step in one process, Adam on the driver. Runner:
`wb.RayRunner`, the factors and embeddings keyed like the data and updated on the actors that
hold them (`runner.update`). Every process is capped at {cap / GIB_MB:.1f} GiB of unshared resident
memory (as in the scaling figure). Cell: epoch seconds, peak memory of the largest process.

| model | data | stored tuples | local | {" | ".join(f"runner P={p}" for p in parts)} |
|---|---|---|---|{"---|" * len(parts)}
{table}

On this machine's {os.cpu_count()} cores the runner pays for its partitions (tasks, shuffles
through Ray's object store) and is not faster; the sizes are thousands of times smaller than
Freebase.
"""
    return _write(out, "other_models", rows, summary, fig)


FIGURES = {"scaling": scaling, "width": width, "kge_width": kge_width, "other_models": other_models,
           "rjp_vjp": rjp_equals_vjp}


def reproduce(out: str | Path = "figures", quick: bool = False, only: list[str] | None = None) -> list[Figure]:
    """Run the experiments (``only`` some of ``FIGURES``), write their figures, numbers and
    summaries into ``out``, and the summaries together into ``out/paper_summary.md``."""
    out = Path(out)
    unknown = sorted(set(only or ()) - set(FIGURES))
    if unknown:
        raise ValueError(f"reproduce: no figure named {unknown}; choose from {sorted(FIGURES)}")
    done = []
    for name, make in FIGURES.items():
        if only and name not in only:
            continue
        start, load_before = time.perf_counter(), os.getloadavg()[0]
        figure = make(out, quick)
        figure.seconds = time.perf_counter() - start
        # how the machine was: other jobs slow the timed figures (memory figures are unaffected)
        with open(figure.md, "a") as f:
            f.write(f"\n*Run {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC"
                    f"{' (--quick)' if quick else ''}: {figure.seconds:.0f} s on {os.cpu_count()} cores, "
                    f"load average {load_before:.1f} at the start and {os.getloadavg()[0]:.1f} at the end.*\n")
        print(f"{name}: {figure.png} ({figure.seconds:.0f} s)", flush=True)
        done.append(figure)
    write_summary(out)
    return done


def write_summary(out: str | Path = "figures") -> Path:
    """``out/paper_summary.md``: the summary of every figure written so far in ``out``, in
    ``FIGURES`` order (figures run separately, or copied in, are collected too)."""
    out = Path(out)
    parts = [(out / f"paper_{name}.md").read_text() + f"\n![{name}](paper_{name}.png)\n"
             for name in FIGURES if (out / f"paper_{name}.md").exists()]
    (out / "paper_summary.md").write_text("\n".join(parts))
    return out / "paper_summary.md"
