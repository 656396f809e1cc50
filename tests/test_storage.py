"""Stored relations as hash-partitioned Parquet (``workbench.storage``): written chunk by chunk,
read back whole or one partition at a time, scanned by the local executor; the generators (R-MAT
and block-model graphs, knowledge graphs, low-rank matrices) and the loaders of user files that
write them."""
import jax
import numpy as np
import polars as pl
import pytest

import workbench as wb
from workbench import storage
from workbench.check import assert_relations_equal as assert_same
from workbench.datasets import graphs, knowledge, matrices
from workbench.models import gcn

jax.config.update("jax_enable_x64", True)


def _relation(rng, n=60, m=5):
    """R(i, j) -> 2x3 values at a random 40% of an n x m grid."""
    mask = rng.uniform(size=(n, m)) < 0.4
    i, j = np.nonzero(mask)
    values = rng.normal(size=(len(i), 2, 3))
    return i, j, values


def test_a_relation_written_in_chunks_reads_back_whole_and_by_partition(tmp_path, rng):
    i, j, values = _relation(rng)
    with storage.DatasetWriter(tmp_path / "R", ("i", "j"), (2, 3), "float64", partitions=3,
                               hash_by=("i",), extents=(60, 5)) as w:
        for start in range(0, len(i), 17):  # chunks of 17 tuples
            w.write({"i": i[start:start + 17], "j": j[start:start + 17]}, values[start:start + 17])
    ds = storage.Dataset(tmp_path / "R")
    assert ds.meta.partitions == 3 and ds.meta.hash_by == ("i",) and ds.rows == len(i)
    assert ds.meta.extents == (60, 5) and ds.meta.value_shape == (2, 3)
    frame = pl.DataFrame({"i": i, "j": j, "v": values.reshape(len(i), 6)})
    want = wb.from_frame(frame.with_columns(pl.col("v").reshape((-1, 2, 3))), keys=("i", "j"), value="v",
                         extents=(60, 5), dtype="float64")
    got = wb.from_dataset(tmp_path / "R")
    assert got.schema == want.schema
    assert_same(got, want)
    for s, lf in enumerate(ds.shards()):  # each shard holds the tuples whose i hashes to it
        keys = lf.select("i", "j").collect()
        assert (storage.shard_hash(keys, ("i",), keys.height, 3) == s).all()
    for parts in (3, 2):  # a divisor-free count reads every shard and filters
        pieces = [ds.read_partition(p, parts, ("i",)) for p in range(parts)]
        assert sum(t.height for t in pieces) == len(i)
        for p, t in enumerate(pieces):
            assert (storage.shard_hash(t.keys, ("i",), t.height, parts) == p).all()
        both = pl.concat([t.keys for t in pieces])
        assert both.sort(["i", "j"]).equals(pl.DataFrame({"i": i, "j": j}).sort(["i", "j"]))


def test_the_local_executor_reads_a_dataset_on_first_use(tmp_path, rng):
    i, j, values = _relation(rng)
    table = wb.from_frame(pl.DataFrame({"i": i, "j": j, "v": values[:, 0, 0]}), keys=("i", "j"), value="v",
                          dtype="float64").table()
    storage.write_relation(table, tmp_path / "R", ("i", "j"), partitions=4, chunk_rows=10)
    R = wb.from_dataset(tmp_path / "R", name="R")
    assert R.node.table._table is None  # building the relation read nothing
    f = lambda R: wb.aggregate(wb.select(R, kernel=lambda v: v ** 2), by=())  # noqa: E731
    value, grad = wb.value_and_grad(f)(R)
    np.testing.assert_allclose(float(value.to_tensor()), np.sum(values[:, 0, 0] ** 2), rtol=1e-12)
    assert_same(grad, wb.from_frame(pl.DataFrame({"i": i, "j": j, "g": 2 * values[:, 0, 0]}),
                                    keys=("i", "j"), value="g", dtype="float64"))


def test_bad_writes_are_refused_with_the_reason(tmp_path, rng):
    with pytest.raises(wb.RelationError, match=r"duplicate keys \('i',\) = \(3,\)"):
        with storage.DatasetWriter(tmp_path / "D", ("i",), partitions=2) as w:
            w.write({"i": [1, 3]}, np.ones(2))
            w.write({"i": [3]}, np.ones(1))  # 3 again, in another chunk
    assert not (tmp_path / "D").exists()  # nothing half written is left
    with pytest.raises(wb.RelationError, match="key column 'i' has dtype Float64; keys must be integers"):
        with storage.DatasetWriter(tmp_path / "F", ("i",)) as w:
            w.write({"i": [1.5]}, np.ones(1))
    with pytest.raises(wb.RelationError, match="key 'i' reaches 7, outside the given extent 5"):
        with storage.DatasetWriter(tmp_path / "E", ("i",), extents=(5,)) as w:
            w.write({"i": [7]}, np.ones(1))
    with pytest.raises(wb.RelationError, match=r"hash columns \['k'\] are not keys"):
        storage.DatasetWriter(tmp_path / "H", ("i",), hash_by=("k",))
    storage.DatasetWriter(tmp_path / "X", ("i",)).close()
    with pytest.raises(wb.RelationError, match="exists; pass overwrite=True"):
        storage.DatasetWriter(tmp_path / "X", ("i",))
    with pytest.raises(wb.RelationError, match="no meta.json"):
        wb.from_dataset(tmp_path)


def test_a_keyless_relation_round_trips(tmp_path):
    W = wb.from_tensor(np.arange(6.0).reshape(2, 3), dtype="float64", name="W")
    storage.write_relation(W.table(), tmp_path / "W", (), partitions=4)
    assert_same(wb.from_dataset(tmp_path / "W"), W)


def test_a_graph_written_as_datasets_gives_the_gcn_relations(tmp_path):
    g = graphs.sbm(150, 3, 6, 5, seed=3, n_val=20, n_test=40)
    out = graphs.graph_to_dataset(g, tmp_path / "g", partitions=3, dtype="float64")
    rels, targets = graphs.graph_relations(tmp_path / "g")
    mem = graphs.to_relations(g, dtype="float64")
    for a, b in zip(rels, mem):
        assert_same(a, b)
    assert_same(targets, gcn.train_targets(mem))
    assert out.n_edges == len(rels.edge)


def test_rmat_edges_are_normalized_as_in_memory(tmp_path):
    """The three passes over shards give D^-1/2 (A + I) D^-1/2 of the same edges built in memory."""
    scale, factor = 9, 4
    out = graphs.rmat_dataset(tmp_path / "r", scale, factor, n_features=4, n_classes=3, partitions=3,
                              dtype="float64", chunk=300)
    src, dst = map(np.concatenate, zip(*graphs.rmat_chunks(scale, factor, chunk=300)))
    n = 1 << scale
    s, d = graphs._undirected(src, dst, n)
    graph = graphs.Graph("rmat", n, s, d, np.zeros((n, 1)), np.zeros(n, np.int64), 1,
                         np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, bool))
    es, ed, ew = graphs.normalized_edges(graph)
    want = wb.from_frame(pl.DataFrame({"src": es, "dst": ed, "w": ew}), keys=("src", "dst"), value="w",
                         extents=(n, n), dtype="float64")
    rels, targets = graphs.graph_relations(tmp_path / "r")
    assert_same(rels.edge, want)
    assert out.n_nodes == n and len(rels.node) == n and rels.node.value_shape == (4,)
    labels = rels.label.to_tensor().argmax(axis=1)
    t = targets.to_frame()
    assert (labels[t["id"].to_numpy()] == np.stack(t["value"].to_numpy()).argmax(axis=1)).all()
    # R-MAT skew: the busiest node has far more than the average degree
    deg = np.bincount(ed, minlength=n)
    assert deg.max() > 5 * deg.mean()


def test_user_edge_lists_and_triple_files(tmp_path, rng):
    src = rng.integers(0, 50, size=120)
    dst = rng.integers(0, 50, size=120)
    (tmp_path / "e.csv").write_text("src,dst\n" + "\n".join(f"{a},{b}" for a, b in zip(src, dst)))
    (tmp_path / "e.tsv").write_text("\n".join(f"{a}\t{b}" for a, b in zip(src, dst)))  # no header
    pl.DataFrame({"src": src, "dst": dst}).write_parquet(tmp_path / "e.parquet")
    edges = []
    for name in ("e.csv", "e.tsv", "e.parquet"):
        out = graphs.edge_list_dataset(tmp_path / name, tmp_path / f"g_{name}", n_nodes=50, partitions=2)
        rels, _ = graphs.graph_relations(out.path)
        edges.append(rels.edge)
    assert_same(edges[0], edges[1])
    assert_same(edges[0], edges[2])
    s, d = graphs._undirected(src, dst, 50)
    assert len(edges[0]) == len(s) + 50  # distinct undirected edges, both ways, and self-loops

    triples = np.unique(rng.integers(0, 6, size=(40, 3)), axis=0)
    (tmp_path / "t.tsv").write_text("\n".join("\t".join(map(str, t)) for t in triples))
    ds = knowledge.triples_dataset(tmp_path / "t.tsv", tmp_path / "T", partitions=2, n_entities=6, n_relations=6)
    assert_same(wb.from_dataset(ds), knowledge.to_relations(triples, 6, 6, dtype="float32"))
    with pytest.raises(wb.RelationError, match=r"column\(s\) \[.weight.\] not in the file.s columns"):
        storage.import_file(tmp_path / "e.csv", tmp_path / "bad", keys=("src",), value="weight")


def test_synthetic_knowledge_graphs_and_matrices(tmp_path):
    ds = knowledge.synthetic_dataset(tmp_path / "k", 300, 5, 3000, partitions=3, chunk=700)
    f = wb.from_dataset(ds).to_frame()
    assert f.select("h", "r", "t").is_unique().all() and 0.8 * 3000 < f.height <= 3000
    assert f["h"].max() < 300 and f["r"].max() < 5 and (f["value"] == 1.0).all()
    assert ds.meta.hash_by == ("h",)
    m = matrices.low_rank_dataset(tmp_path / "m", 40, 30, 3, 500, partitions=2, seed=5, chunk=128)
    e = wb.from_dataset(m, dtype="float64").to_frame()
    assert e.select("i", "j").is_unique().all() and 0.6 * 500 < e.height <= 500
    rng = np.random.default_rng([5, 0])  # the factors, regenerated from the seed
    w, h = rng.uniform(size=(40, 3)) / np.sqrt(3), rng.uniform(size=(30, 3)) / np.sqrt(3)
    x = np.einsum("ek,ek->e", w[e["i"].to_numpy()], h[e["j"].to_numpy()])
    np.testing.assert_allclose(e["value"].to_numpy(), x, rtol=1e-6)  # stored as float32


def _ten_rows(rng) -> "wb.Relation":
    return wb.from_tensor(rng.normal(size=(10, 3)), keys=("i",), dtype="float64", name="Ten")


def test_many_shards_of_a_small_relation_write_and_read_only_the_shards_that_hold_tuples(tmp_path, rng,
                                                                                         monkeypatch):
    """Ten tuples in MAX_SHARDS shards: at most ten shard files exist, an empty shard reads as no
    rows, and every read opens only the files that hold tuples."""
    R = _ten_rows(rng)
    ds = storage.write_relation(R.table(), tmp_path / "R", ("i",), partitions=storage.MAX_SHARDS)
    stored = ds.stored_shards()
    assert ds.meta.partitions == storage.MAX_SHARDS and 1 <= len(stored) <= 10
    assert sorted(f.name for f in (tmp_path / "R").iterdir()) == sorted(
        ["meta.json"] + [storage.shard_name(s) for s in stored])
    assert sum(ds.meta.rows[s] for s in stored) == ds.rows == 10
    empty = next(s for s in range(ds.meta.partitions) if s not in stored)
    assert ds.shard(empty).collect().height == 0
    assert ds.shard(empty).collect_schema() == ds.shard(stored[0]).collect_schema()
    assert_same(wb.from_dataset(ds), R)

    opened = []
    read_parquet = pl.read_parquet
    monkeypatch.setattr(pl, "read_parquet",
                        lambda source, *a, **k: opened.append(source) or read_parquet(source, *a, **k))
    for parts in (4, 3):  # 4 divides the shard count (whole shards), 3 does not (filtered)
        pieces = [ds.read_partition(p, parts, ("i",)) for p in range(parts)]
        got = pl.concat([t.keys for t in pieces])["i"].sort().to_list()
        assert got == list(range(10))
    assert len(opened) == len(stored) + 3 * len(stored)  # never an empty shard


def test_the_shard_count_is_checked_where_a_dataset_is_written(tmp_path, rng):
    table = _ten_rows(rng).table()
    for bad, what in ((0, "must be between 1 and"), (storage.MAX_SHARDS + 1, "must be between 1 and"),
                      (True, "must be an int"),
                      (4.0, "must be an int")):
        with pytest.raises(wb.RelationError, match=rf"'{tmp_path / 'R'}': partitions \(the number of shards\) "
                                                   rf"{what}.*partitions="):
            storage.write_relation(table, tmp_path / "R", ("i",), partitions=bad)
        assert not (tmp_path / "R").exists()
    with pytest.raises(wb.RelationError, match=r"write_graph_dataset .*partitions \(the number of shards\)"):
        graphs.rmat_dataset(tmp_path / "g", 3, 2, 4, 2, partitions=storage.MAX_SHARDS * 2)


def test_a_graph_in_many_shards_scans_each_shard_a_bounded_number_of_times(tmp_path, monkeypatch):
    """The passes over the raw edges open each shard once per pass, not once per shard per
    pass; shards no edge hashes to are never opened and have no file."""
    scans = []
    scan_parquet = pl.scan_parquet
    monkeypatch.setattr(pl, "scan_parquet",
                        lambda source, *a, **k: scans.append(source) or scan_parquet(source, *a, **k))
    shards = 256
    out = graphs.rmat_dataset(tmp_path / "g", scale=4, edge_factor=2, n_features=3, n_classes=2, partitions=shards)
    assert len(scans) <= 8 * 16  # 16 nodes: at most 16 shards hold tuples; 8 passes read them
    for name in ("node", "edge", "train"):
        ds = storage.Dataset(out.path / name)
        assert len(list((out.path / name).glob("part-*.parquet"))) == len(ds.stored_shards()) <= 16
    rels, _ = graphs.graph_relations(out.path)
    assert len(rels.node) == 16 and len(rels.edge) == out.n_edges


def test_datasets_written_and_read_with_progress_show_a_bar_of_rows(tmp_path, rng, capsys):
    R = _ten_rows(rng)
    storage.write_relation(R.table(), tmp_path / "quiet", ("i",), partitions=2)
    storage.Dataset(tmp_path / "quiet").read()
    assert capsys.readouterr().err == ""  # off by default
    storage.write_relation(R.table(), tmp_path / "R", ("i",), partitions=2, name="Ten", progress=True)
    err = capsys.readouterr().err
    assert "writing Ten" in err and "rows" in err
    storage.Dataset(tmp_path / "R").read(progress=True)
    assert "reading Ten" in capsys.readouterr().err
    (tmp_path / "e.csv").write_text("src,dst\n" + "\n".join(f"{a},{a + 1}" for a in range(30)))
    storage.import_file(tmp_path / "e.csv", tmp_path / "E", keys=("src", "dst"), name="Edges", progress=True)
    assert "writing Edges" in capsys.readouterr().err
    graphs.rmat_dataset(tmp_path / "g", scale=4, edge_factor=2, n_features=3, n_classes=2, partitions=2,
                        progress=True)
    err = capsys.readouterr().err
    assert "writing raw edges" in err and "writing Edge" in err and "writing Node" in err


def test_a_training_loop_shows_epoch_loss_and_time_only_when_asked(capsys):
    graph = graphs.karate_club()
    gcn.train(graph, hidden=4, epochs=2, compiled=False)
    assert capsys.readouterr().err == ""
    gcn.train(graph, hidden=4, epochs=2, compiled=False, progress=True)
    err = capsys.readouterr().err
    assert "2/2" in err and "loss=" in err and "00:0" in err  # epoch, loss, elapsed time
