"""GCN training epochs on a graph written to Parquet (``graphs.rmat_dataset``): the local
executor, the task runner (``workbench.execute.ray.RayRunner``: one task per node and partition,
the driver reads and splits every relation) and the resident runner (``wb.RayRunner``: one actor
per partition reading its own shards; the driver reads nothing), with epoch seconds and the peak
memory of the driver and of every worker. float32, no dropout (as in the scaling figure), Adam
on W1 and W2 on the driver.

    .venv/bin/python bench/ray_resident.py --scale 17 --hidden 256 --partitions 2 4

The graph is SYNTHETIC: R-MAT edges (a=0.57, b=c=0.19, undirected, repeats dropped, self-loops
added, Â = D^-1/2 (A + I) D^-1/2) and block-model features. Each configuration runs in a fresh
process: one warm-up epoch (kernel compilation everywhere), then the median of ``--repeat``
epochs. Peak memory is VmHWM from /proc (of the driver, and of each partition's actor or, for
the task runner, of every Ray worker); "private" is the largest RssAnon sampled every 20 ms
(without the object store's shared pages).
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

from ray_scale import _anon, _hwm, _ray_workers

GIB = 2.0 ** 30


class _Sampler(threading.Thread):
    """The largest private RSS of the driver and of each process in ``pids()``."""

    def __init__(self, pids):
        super().__init__(daemon=True)
        self.pids = pids
        self.driver = 0
        self.workers: dict[int, int] = {}
        self.stop = threading.Event()

    def run(self):
        while not self.stop.wait(0.02):
            self.driver = max(self.driver, _anon("self"))
            for p in self.pids():
                self.workers[p] = max(self.workers.get(p, 0), _anon(p))


def one(path: str, kind: str, partitions: int, hidden: int, repeat: int) -> dict:
    import numpy as np  # noqa: F401

    import workbench as wb
    from workbench.datasets import graphs
    from workbench.models import gcn
    from workbench.optim import Adam

    rels, targets = graphs.graph_relations(path)
    n_features, n_classes = rels.node.value_shape[0], targets.value_shape[0]
    W1, W2 = gcn.init_params(n_features, hidden, n_classes, seed=0, dtype="float32")
    opt = Adam(lr=0.01)
    state = opt.init((W1, W2))
    loss_fn = gcn.loss_program(rels, None, None, 5e-4, targets)
    before = _hwm()

    def epochs(runner):
        nonlocal W1, W2, state
        times, losses = [], []
        for e in range(1 + repeat):
            start = time.perf_counter()
            loss, grads = wb.value_and_grad(loss_fn, argnums=(1, 2), executor=runner)(rels.node, W1, W2)
            (W1, W2), state = opt.update((W1, W2), grads, state)
            W1.table().values.block_until_ready()
            losses.append(float(loss.to_tensor()))
            if e:
                times.append(time.perf_counter() - start)
        return times, losses

    worker_peaks: dict[int, int] = {}
    if kind == "local":
        sampler = _Sampler(lambda: [])
        sampler.start()
        times, losses = epochs(None)
    elif kind == "tasks":
        from workbench.execute.ray import RayRunner as TaskRunner

        sampler = _Sampler(_ray_workers)
        sampler.start()
        with TaskRunner(partitions=partitions, num_cpus=2) as runner:
            times, losses = epochs(runner)
            worker_peaks = {p: _hwm(p) for p in _ray_workers()}
    else:
        with wb.RayRunner(partitions=partitions, num_cpus=2) as runner:
            pids = runner.pids()
            sampler = _Sampler(lambda: pids)
            sampler.start()
            times, losses = epochs(runner)
            worker_peaks = {p: _hwm(p) for p in pids}
    sampler.stop.set()
    sampler.join()
    read = [r.node.table._table is not None for r in (rels.node, rels.edge, targets)]
    return {"kind": kind, "partitions": partitions, "epoch_s": statistics.median(times), "epochs": times,
            "driver_peak": _hwm(), "driver_before": before, "driver_anon": sampler.driver,
            "worker_peaks": sorted(worker_peaks.values(), reverse=True),
            "worker_anon": sorted(sampler.workers.values(), reverse=True)[:max(partitions, 1) if kind == "resident" else 8],
            "losses": losses, "driver_read_data": any(read)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=int, default=17, help="2**scale nodes")
    ap.add_argument("--edge-factor", type=int, default=16, help="R-MAT draws per node")
    ap.add_argument("--features", type=int, default=128)
    ap.add_argument("--classes", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--partitions", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--runners", nargs="+", default=["local", "resident", "tasks"],
                    choices=["local", "resident", "tasks"])
    ap.add_argument("--dir", default="/tmp/wb_rmat", help="where the Parquet dataset is written")
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # kind partitions: one configuration, as JSON
    args = ap.parse_args(argv)
    path = Path(args.dir) / f"rmat{args.scale}_{args.edge_factor}_{args.features}"
    if args.one:
        print(json.dumps(one(str(path), args.one[0], int(args.one[1]), args.hidden, args.repeat)))
        return
    from workbench.datasets import graphs

    start = time.perf_counter()
    if not (path / "edge" / "meta.json").is_file():
        shards = max(args.partitions) if args.partitions else 4
        graphs.rmat_dataset(path, args.scale, args.edge_factor, args.features, args.classes,
                            partitions=shards, overwrite=True)
    written = time.perf_counter() - start
    from workbench.storage import Dataset

    edges, nodes = Dataset(path / "edge"), Dataset(path / "node")
    disk = sum(f.stat().st_size for f in path.rglob("*.parquet"))
    configs = [("local", 0)] if "local" in args.runners else []
    for p in args.partitions:
        configs += [(k, p) for k in ("resident", "tasks") if k in args.runners]
    rows = []
    for kind, p in configs:
        cmd = [sys.executable, __file__, "--scale", str(args.scale), "--edge-factor", str(args.edge_factor),
               "--features", str(args.features), "--classes", str(args.classes), "--hidden", str(args.hidden),
               "--repeat", str(args.repeat), "--dir", args.dir, "--one", kind, str(p)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            print(f"{kind} P={p} failed:\n{out.stderr[-3000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"GCN training epoch, R-MAT scale {args.scale} ({nodes.rows} nodes, {edges.rows} stored edges with "
          f"self-loops), {args.features} features, hidden {args.hidden}, {args.classes} classes, float32, no "
          f"dropout; Parquet dataset {disk / GIB:.2f} GiB in {edges.meta.partitions} shards per relation, written "
          f"in {written:.1f} s (0 if it existed); median of {args.repeat} epochs after 1 warm-up")
    local = next((r for r in rows if r["kind"] == "local"), None)
    print(f"{'executor':<16} {'epoch s':>8} {'vs local':>8} | {'driver peak':>11} {'private':>8} | "
          f"{'max worker':>10} {'private':>8} | {'largest process':>15} {'vs local':>8} | {'driver read data':>16} | "
          f"first losses")
    for r in rows:
        name = "local" if r["kind"] == "local" else f"{r['kind']} P={r['partitions']}"
        wmax = max(r["worker_peaks"], default=0)
        wanon = max(r["worker_anon"], default=0)
        largest = max(r["driver_peak"], wmax)
        rel = f"{r['epoch_s'] / local['epoch_s']:>7.2f}x" if local else f"{'-':>8}"
        lrel = f"{largest / local['driver_peak']:>7.2f}x" if local else f"{'-':>8}"
        print(f"{name:<16} {r['epoch_s']:>8.2f} {rel} | {r['driver_peak'] / GIB:>11.2f} {r['driver_anon'] / GIB:>8.2f} | "
              f"{wmax / GIB:>10.2f} {wanon / GIB:>8.2f} | {largest / GIB:>15.2f} {lrel} | "
              f"{str(r['driver_read_data']):>16} | {', '.join(f'{x:.4f}' for x in r['losses'][:3])}")
    for r in rows:
        if r["worker_peaks"]:
            print(f"  {r['kind']} P={r['partitions']}: worker peaks (GiB) "
                  f"{[round(w / GIB, 2) for w in r['worker_peaks']]}, private {[round(w / GIB, 2) for w in r['worker_anon']]}")
    print("GiB; peak = VmHWM (counts object-store pages a process mapped); private = largest RssAnon "
          "sampled every 20 ms.")


if __name__ == "__main__":
    main()
