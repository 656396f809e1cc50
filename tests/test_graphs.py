"""Graph data: the karate club, the stochastic block model and its real-size twins, the LINQS
loader on small files, and the relations a GCN reads (normalized adjacency, labels, splits)."""
import numpy as np
import pytest

from workbench.datasets import graphs as G


def dense_normalized(graph: G.Graph) -> np.ndarray:
    """D^-1/2 (A + I) D^-1/2 with A[dst, src] = 1 per stored edge."""
    a = np.zeros((graph.n_nodes, graph.n_nodes))
    a[graph.dst, graph.src] = 1.0
    a += np.eye(graph.n_nodes)
    d = a.sum(axis=1)
    return a / np.sqrt(np.outer(d, d))


def test_karate_club():
    g = G.karate_club(train_per_class=4, n_val=6, seed=0)
    assert (g.n_nodes, g.n_edges, g.n_features, g.n_classes) == (34, 156, 34, 2)
    assert not g.synthetic and "Zachary" in g.source
    np.testing.assert_array_equal(g.features, np.eye(34))
    # the two leaders: node 0 (Mr. Hi) and node 33 (the officer) end up in different clubs
    assert (g.labels[0], g.labels[33]) == (0, 1) and np.bincount(g.labels).tolist() == [17, 17]
    assert np.bincount(g.labels[g.train]).tolist() == [4, 4]
    assert (g.train.sum(), g.val.sum(), g.test.sum()) == (8, 6, 20)
    assert not np.any(g.train & g.test) and np.all(g.train | g.val | g.test)
    # undirected: every edge stored in both directions, no self-loops
    pairs = set(zip(g.src.tolist(), g.dst.tolist()))
    assert all((d, s) in pairs for s, d in pairs) and all(s != d for s, d in pairs)


def test_splits_depend_on_the_seed():
    assert not np.array_equal(G.karate_club(seed=0).train, G.karate_club(seed=1).train)


def test_sbm_sizes_homophily_and_features():
    g = G.sbm(5000, 4, avg_degree=10, n_features=8, homophily=0.9, seed=3)
    assert g.synthetic and g.n_nodes == 5000 and g.n_edges == 50_000
    assert g.features.shape == (5000, 8) and g.labels.max() == 3
    assert 0.88 < np.mean(g.labels[g.src] == g.labels[g.dst]) < 0.92
    lo, hi = np.minimum(g.src, g.dst), np.maximum(g.src, g.dst)
    assert len(np.unique(lo * g.n_nodes + hi)) == g.n_edges // 2 and np.all(lo != hi)  # distinct
    # class means differ: per-class feature means are far apart compared to their standard error
    means = np.stack([g.features[g.labels == c].mean(axis=0) for c in range(4)])
    assert np.abs(means[0] - means[1]).max() > 10 * (1 / np.sqrt(1000))
    assert np.bincount(g.labels[g.train]).tolist() == [20] * 4
    same = G.sbm(5000, 4, avg_degree=10, n_features=8, homophily=0.9, seed=3)
    np.testing.assert_array_equal(same.src, g.src)


def test_sbm_at_scale():
    g = G.sbm(100_000, 10, avg_degree=10, n_features=4, seed=0)
    assert g.n_edges == 1_000_000 and g.n_nodes == 100_000


@pytest.mark.parametrize("name, nodes, edges, features, classes", [
    ("cora", 2708, 5278, 1433, 7), ("pubmed", 19717, 44324, 500, 3)])
def test_synthetic_like_sizes(name, nodes, edges, features, classes):
    g = G.synthetic_like(name, seed=0)
    assert g.synthetic and "synthetic" in g.name and "synthetic" in g.source
    assert (g.n_nodes, g.n_edges, g.n_features, g.n_classes) == (nodes, 2 * edges, features, classes)


def test_synthetic_like_unknown_name():
    with pytest.raises(ValueError, match="ogbn-arxiv"):
        G.synthetic_like("citeseer")


def test_to_relations_normalization_equals_dense():
    g = G.karate_club()
    rels = G.to_relations(g, dtype="float64")
    edge = rels.edge.to_tensor()  # Edge(src, dst) -> Â[dst, src]
    np.testing.assert_allclose(edge.T, dense_normalized(g), rtol=1e-12, atol=0)
    np.testing.assert_allclose(rels.node.to_tensor(), g.features)
    np.testing.assert_allclose(rels.label.to_tensor(), np.eye(2)[g.labels])
    for split in ("train", "val", "test"):
        rel = getattr(rels, split)
        assert len(rel) == getattr(g, split).sum()
        np.testing.assert_allclose(rel.to_tensor(), getattr(g, split).astype(float))


def test_to_relations_weighted_and_existing_self_loops():
    # a path 0 - 1 - 2 with weights 2 and 3, and a stored self-loop at 2 (weight 1, added to I)
    g = G.Graph("path", 3, np.array([0, 1, 1, 2, 2]), np.array([1, 0, 2, 1, 2]), np.eye(3),
                np.array([0, 1, 0]), 2, np.array([True, False, False]), np.array([False, True, False]),
                np.array([False, False, True]), weights=np.array([2.0, 2.0, 3.0, 3.0, 1.0]))
    a = np.array([[1.0, 2.0, 0.0], [2.0, 1.0, 3.0], [0.0, 3.0, 2.0]])  # A + I
    d = a.sum(axis=1)
    edge = G.to_relations(g, dtype="float64").edge.to_tensor()
    np.testing.assert_allclose(edge.T, a / np.sqrt(np.outer(d, d)), rtol=1e-12)


def test_graph_checks_its_fields():
    with pytest.raises(ValueError, match="'labels'"):
        G.Graph("bad", 2, np.array([0]), np.array([1]), np.eye(2), np.array([0, 5]), 2,
                np.zeros(2, bool), np.zeros(2, bool), np.zeros(2, bool))
    with pytest.raises(ValueError, match="'src/dst'"):
        G.Graph("bad", 2, np.array([0]), np.array([2]), np.eye(2), np.array([0, 1]), 2,
                np.zeros(2, bool), np.zeros(2, bool), np.zeros(2, bool))


# ---- LINQS files ---------------------------------------------------------------------------------

CONTENT = """p10\t1\t0\t0\t1\tNeural_Networks
p20\t0\t1\t0\t0\tTheory
p30\t1\t1\t0\t0\tNeural_Networks
p40\t0\t0\t1\t0\tTheory
p50\t0\t0\t0\t1\tRule_Learning
"""
CITES = """p10\tp20
p20\tp10
p30\tp10
p40\tp40
p50\tp99
p30\tp40
"""


def write_linqs(directory, name="tiny", content=CONTENT, cites=CITES):
    directory.mkdir(exist_ok=True)
    if content is not None:
        (directory / f"{name}.content").write_text(content)
    if cites is not None:
        (directory / f"{name}.cites").write_text(cites)
    return directory


def test_load_linqs(tmp_path):
    g = G.load_linqs(write_linqs(tmp_path / "tiny"), train_per_class=1, n_val=1, n_test=None)
    assert g.name == "tiny" and g.n_nodes == 5 and g.n_features == 4
    assert g.class_names == ("Neural_Networks", "Rule_Learning", "Theory")
    np.testing.assert_array_equal(g.labels, [0, 2, 0, 2, 1])
    np.testing.assert_array_equal(g.features[2], [1, 1, 0, 0])
    # p10-p20 (cited both ways: one edge), p30-p10, p30-p40; p40's self-citation and the
    # citation of the unknown p99 are dropped
    edges = set(zip(g.src.tolist(), g.dst.tolist()))
    assert edges == {(0, 1), (1, 0), (0, 2), (2, 0), (2, 3), (3, 2)}
    assert "1 citation(s)" in g.source
    assert g.train.sum() == 3 and g.val.sum() == 1 and g.test.sum() == 1


@pytest.mark.parametrize("missing", ["content", "cites"])
def test_load_linqs_missing_file(tmp_path, missing):
    d = write_linqs(tmp_path / "cora", name="cora", **{missing: None})
    with pytest.raises(FileNotFoundError, match=rf"cora\.{missing}.*linqs.*cora\.tgz"):
        G.load_linqs(d)


def test_load_linqs_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"citeseer\.content.*citeseer\.tgz"):
        G.load_linqs(tmp_path / "citeseer")


def test_load_linqs_bad_features(tmp_path):
    d = write_linqs(tmp_path / "tiny", content=CONTENT.replace("p20\t0\t1", "p20\tx\t1"))
    with pytest.raises(ValueError, match=r"tiny\.content.*numbers"):
        G.load_linqs(d)
