"""A GCN training epoch on the local executor and on the partitioned Ray runner (P partitions),
with epoch seconds and peak resident memory of the driver and of the largest Ray worker.
float32 throughout.

    .venv/bin/python bench/ray_scale.py                                   # ogbn-arxiv-sized, P = 2, 4
    .venv/bin/python bench/ray_scale.py --graph pubmed --hidden 16 --partitions 2 4 --repeat 3

An epoch is ``models/gcn.py``'s: draw the two dropout masks, the relational forward plan and the
backward plan the RJP rules derive (``wb.value_and_grad(gcn.loss_program(...))``, locally or with
``executor=wb.RayRunner(P)``, or ``--runner tasks``: the task-per-node runner), then Adam over W1
and W2 on the driver. The local epoch is the interpreter's, the executor each partition runs.
The graph is a SYNTHETIC stochastic block model with the size of the named data set
(``graphs.synthetic_like``).

Each configuration runs in a fresh process (so the driver's peak is its own): one warm-up epoch
(kernel compilation in every process), then the median of ``--repeat`` epochs. Peak resident
memory is VmHWM from /proc: the driver's, and the largest over Ray's worker processes (which
counts the object-store pages a worker mapped); "private" is the largest RssAnon sampled every
20 ms, without those shared pages. Ray's startup is not in the epoch time. On a
2-core machine the runner cannot be faster: what partitions buy is that no one process holds a
whole intermediate relation.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path


def _hwm(pid: int | str = "self") -> int:
    """Peak resident set size of a process in bytes (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _anon(pid: int | str) -> int:
    """Private (anonymous) resident memory of a process in bytes: RSS without the object store's
    shared pages, which every process that reads an object maps and counts."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class _Sampler(threading.Thread):
    """The largest private RSS of the driver and of any Ray worker, sampled every 20 ms."""

    def __init__(self):
        super().__init__(daemon=True)
        self.driver = self.worker = 0
        self.stop = threading.Event()

    def run(self):
        workers, listed = [], 0.0
        while not self.stop.wait(0.02):
            if time.monotonic() - listed > 1.0:  # listing /proc costs more than sampling: once a second
                workers, listed = _ray_workers(), time.monotonic()
            self.driver = max(self.driver, _anon("self"))
            self.worker = max([self.worker, *(_anon(p) for p in workers)])


def _ray_workers() -> list[int]:
    """Pids of Ray worker processes (their command line starts with 'ray::', agents excluded)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if cmd.startswith("ray::") and "Agent" not in cmd and "RuntimeEnv" not in cmd:
            pids.append(int(d.name))
    return pids


def one(graph_name: str, hidden: int, partitions: int, repeat: int, dropout: float,
        runner_kind: str = "resident") -> dict:
    """Run the epochs of one configuration (partitions 0: the local executor) in this process."""
    import numpy as np

    import workbench as wb
    from workbench.datasets import graphs
    from workbench.models import gcn
    from workbench.optim import Adam

    graph = graphs.synthetic_like(graph_name)
    rels = graphs.to_relations(graph, dtype="float32")
    targets = gcn.train_targets(rels)
    W1, W2 = gcn.init_params(graph.n_features, hidden, graph.n_classes, seed=0, dtype="float32")
    opt = Adam(lr=0.01)
    state = opt.init((W1, W2))
    rng = np.random.default_rng(1)

    def epochs(runner):
        nonlocal W1, W2, state
        times, losses, peaks = [], [], []
        # one program for every epoch, as gcn.train builds it: the masks are arguments
        if dropout:
            step = wb.value_and_grad(gcn.masked_loss_program(rels, 5e-4, targets), argnums=(1, 2),
                                     executor=runner)
        else:
            step = wb.value_and_grad(gcn.loss_program(rels, None, None, 5e-4, targets), argnums=(1, 2),
                                     executor=runner)
        for e in range(1 + repeat):
            start = time.perf_counter()
            masks = ()
            if dropout:
                masks = (gcn.dropout_mask(rels.node, dropout, rng, "M1"),
                         gcn.dropout_mask(rels.node, dropout, rng, "M2", width=hidden))
            loss, grads = step(rels.node, W1, W2, *masks)
            (W1, W2), state = opt.update((W1, W2), grads, state)
            W1.table().values.block_until_ready()
            if e:
                times.append(time.perf_counter() - start)
            losses.append(float(loss.to_tensor()))
            peaks.append(max([_hwm(p) for p in _ray_workers()], default=0))
        return times, losses, max(peaks)

    before = _hwm()  # the graph and its relations, built before any epoch
    sampler = _Sampler()
    sampler.start()
    if partitions:
        if runner_kind == "tasks":
            from workbench.execute.ray import RayRunner
        else:
            RayRunner = wb.RayRunner

        with RayRunner(partitions=partitions, num_cpus=2) as runner:
            times, losses, worker = epochs(runner)
    else:
        times, losses, worker = epochs(None)
    sampler.stop.set()
    sampler.join()
    return {"graph": graph.name, "nodes": graph.n_nodes, "edges": graph.n_edges + graph.n_nodes,
            "features": graph.n_features, "hidden": hidden, "partitions": partitions,
            "epoch_s": statistics.median(times), "driver_peak": _hwm(), "driver_before": before,
            "driver_anon": sampler.driver, "worker_peak": worker, "worker_anon": sampler.worker,
            "losses": losses[:2]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--graph", default="ogbn-arxiv", choices=["cora", "pubmed", "ogbn-arxiv"])
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--partitions", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--dropout", type=float, default=0.5)
    ap.add_argument("--runner", default="resident", choices=["resident", "tasks"],
                    help="wb.RayRunner (one actor per partition, default) or the task-per-node runner")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # run one configuration, print JSON
    args = ap.parse_args(argv)
    if args.one is not None:
        print(json.dumps(one(args.graph, args.hidden, args.one, args.repeat, args.dropout, args.runner)))
        return
    rows = []
    for p in [0, *args.partitions]:
        cmd = [sys.executable, __file__, "--graph", args.graph, "--hidden", str(args.hidden),
               "--repeat", str(args.repeat), "--dropout", str(args.dropout), "--runner", args.runner,
               "--one", str(p)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    g = rows[0]
    gib = 2.0 ** 30
    print(f"GCN training epoch on {g['graph']} ({g['nodes']} nodes, {g['edges']} edges with self-loops, "
          f"{g['features']} features), hidden {args.hidden}, float32; median of {args.repeat} epochs "
          f"after 1 warm-up; peak RSS from /proc VmHWM")
    print(f"{'executor':<12} {'epoch s':>8} {'vs local':>8} | {'driver peak RSS':>15} {'vs local':>8} "
          f"{'private':>8} | {'max worker RSS':>14} {'private':>8} | {'first losses':>16}")
    for r in rows:
        name = "local" if not r["partitions"] else f"{args.runner} P={r['partitions']}"
        worker = (f"{r['worker_peak'] / gib:>14.2f} {r['worker_anon'] / gib:>8.2f}" if r["partitions"]
                  else f"{'-':>14} {'-':>8}")
        print(f"{name:<12} {r['epoch_s']:>8.2f} {r['epoch_s'] / g['epoch_s']:>7.2f}x | "
              f"{r['driver_peak'] / gib:>15.2f} {r['driver_peak'] / g['driver_peak']:>7.2f}x "
              f"{r['driver_anon'] / gib:>8.2f} | {worker} | {r['losses'][0]:.4f}, {r['losses'][1]:.4f}")
    print(f"GiB. The driver held {g['driver_before'] / gib:.2f} GiB (peak) after building the graph "
          f"and its relations, before the first epoch. 'private' is the largest RssAnon sampled every "
          f"20 ms (without shared object-store pages).")


if __name__ == "__main__":
    main()
