"""The resident runner beyond one Ray instance it starts: joining a two-node cluster simulated on
this machine (``ray.cluster_utils.Cluster``, every node on 127.0.0.1), a clear error for a
cluster that does not answer, and Ctrl-C leaving no process behind."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import pytest

import workbench as wb
from workbench.check import assert_relations_equal as assert_same
from workbench.datasets import graphs
from workbench.models import gcn

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

jax.config.update("jax_enable_x64", True)
ROOT = Path(__file__).resolve().parent.parent


def test_a_runner_joins_a_two_node_cluster(tmp_path):
    """Two nodes of one CPU each; the runner joins with ``address=`` and its two partition
    actors land on different nodes; a GCN epoch on datasets equals the local one."""
    assert not ray.is_initialized()
    node = dict(num_cpus=1, node_ip_address="127.0.0.1")
    for attempt in range(2):  # Ray waits 30 s for a raylet: a loaded machine may miss it once
        try:
            cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
            break
        except Exception as exc:  # noqa: BLE001
            if attempt or "timed out during startup" not in str(exc):
                raise
    try:
        cluster.add_node(**node)
        cluster.wait_for_nodes()
        g = graphs.sbm(200, 3, 5, 6, seed=4, n_val=30, n_test=60)
        graphs.graph_to_dataset(g, tmp_path / "g", partitions=2, dtype="float64")
        rels, targets = graphs.graph_relations(tmp_path / "g")
        W1, W2 = gcn.init_params(g.n_features, 4, g.n_classes, seed=0, dtype="float64")
        loss = gcn.loss_program(rels, None, None, 0.0, targets)
        want, wgrads = wb.value_and_grad(loss, argnums=(1, 2))(rels.node, W1, W2)
        rels, targets = graphs.graph_relations(tmp_path / "g")  # fresh: the driver reads none
        loss = gcn.loss_program(rels, None, None, 0.0, targets)
        with wb.RayRunner(partitions=2, address=cluster.address) as runner:
            nodes = ray.nodes()
            assert len([n for n in nodes if n["Alive"]]) == 2
            assert all(n["NodeManagerAddress"] == "127.0.0.1" for n in nodes)
            assert len(set(ray.get([runner.actor(p).node_id.remote() for p in range(2)]))) == 2
            got, grads = wb.value_and_grad(loss, argnums=(1, 2), executor=runner)(rels.node, W1, W2)
            assert_same(got, want)
            for a, b in zip(grads, wgrads):
                assert_same(a, b)
        assert not ray.is_initialized()  # the runner disconnected; the cluster still runs
        assert rels.node.node.table._table is None
    finally:
        cluster.shutdown()


def test_a_cluster_that_does_not_answer_is_a_clear_error():
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"could not join the Ray cluster at '127.0.0.1:9'.*ray start --head"):
        with wb.RayRunner(partitions=2, address="127.0.0.1:9"):
            pass
    assert time.monotonic() - start < 60
    with pytest.raises(ValueError, match="num_cpus is set by each node"):
        with wb.RayRunner(partitions=2, address="127.0.0.1:9", num_cpus=2):
            pass


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_ctrl_c_leaves_no_process_behind():
    """A training script interrupted (SIGINT) inside the runner's ``with`` block: the runner
    kills its actors and stops Ray, and every process Ray started is gone."""
    script = textwrap.dedent("""
        import sys, time
        import workbench as wb
        with wb.RayRunner(partitions=2, num_cpus=2) as runner:
            print(" ".join(map(str, runner.pids())), flush=True)
            while True:
                time.sleep(0.05)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        actors = {int(p) for p in proc.stdout.readline().split()}
        assert len(actors) == 2
        spawned = _descendants(proc.pid)
        assert actors <= spawned and len(spawned) > 2  # the actors, raylet, GCS, ...
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
        deadline = time.monotonic() + 60
        while any(_alive(p) for p in spawned) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = sorted(p for p in spawned if _alive(p))
        assert not left, f"processes left behind: {left}"
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
