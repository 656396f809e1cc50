"""Graphs for node classification: Zachary's karate club (built by networkx, no files), a
stochastic block model with class-dependent features (synthetic, for scale), synthetic graphs of
the sizes of Cora, PubMed and ogbn-arxiv, a loader for the LINQS Cora/CiteSeer files a user drops
into ``datasets/<name>/``, and ``to_relations``: the relations a GCN reads.

A ``Graph`` stores directed edges ``src -> dst``; an undirected graph stores both directions.
Sources and licences are in ``datasets/README.md`` (section "Graphs").
"""
from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import polars as pl

from workbench.datasets.text import tab_separated_lines
from workbench.errors import RelationError
from workbench.relation import Relation, default_dtype, from_dataset, from_frame, from_tensor
from workbench.storage import Dataset, DatasetWriter, check_shards, import_file, shard_hash


@dataclass(frozen=True, eq=False)
class Graph:
    """A node-classification graph: directed edges (both directions when undirected), node
    features, integer labels and boolean train/val/test masks over the nodes."""

    name: str
    n_nodes: int
    src: np.ndarray  # (m,) int64
    dst: np.ndarray  # (m,) int64
    features: np.ndarray  # (n, d) float
    labels: np.ndarray  # (n,) int64 in 0..n_classes-1
    n_classes: int
    train: np.ndarray  # (n,) bool
    val: np.ndarray  # (n,) bool
    test: np.ndarray  # (n,) bool
    weights: np.ndarray | None = None  # (m,) edge weights; None means 1
    class_names: tuple[str, ...] = ()
    synthetic: bool = False
    source: str = ""
    licence: str = ""

    def __post_init__(self):
        n, m = self.n_nodes, len(self.src)
        _expect(self.name, "src", self.src.shape == (m,) and len(self.dst) == m, "src and dst of one length")
        if m:
            lo, hi = min(self.src.min(), self.dst.min()), max(self.src.max(), self.dst.max())
            _expect(self.name, "src/dst", lo >= 0 and hi < n, f"node ids in 0..{n - 1}, got {lo}..{hi}")
        _expect(self.name, "features", self.features.ndim == 2 and self.features.shape[0] == n,
                f"shape (n_nodes={n}, d), got {self.features.shape}")
        _expect(self.name, "labels", self.labels.shape == (n,), f"shape ({n},), got {self.labels.shape}")
        if n:
            _expect(self.name, "labels", 0 <= self.labels.min() and self.labels.max() < self.n_classes,
                    f"values in 0..{self.n_classes - 1}")
        for split in ("train", "val", "test"):
            mask = getattr(self, split)
            _expect(self.name, split, mask.shape == (n,) and mask.dtype == np.bool_,
                    f"a boolean mask of shape ({n},), got {mask.dtype} {mask.shape}")
        _expect(self.name, "train/val/test", not np.any((self.train & self.val) | (self.train & self.test)
                                                        | (self.val & self.test)), "disjoint masks")
        if self.weights is not None:
            _expect(self.name, "weights", self.weights.shape == (m,), f"shape ({m},)")

    @property
    def n_edges(self) -> int:
        """Directed edges stored (an undirected edge counts twice)."""
        return len(self.src)

    @property
    def n_features(self) -> int:
        return self.features.shape[1]

    def __repr__(self) -> str:
        kind = ", synthetic" if self.synthetic else ""
        return (f"Graph({self.name!r}: {self.n_nodes} nodes, {self.n_edges} directed edges, "
                f"{self.n_features} features, {self.n_classes} classes, train/val/test "
                f"{int(self.train.sum())}/{int(self.val.sum())}/{int(self.test.sum())}{kind})")


def _expect(name: str, field: str, ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(f"Graph '{name}': field '{field}' must have {what}")


# ---- splits ------------------------------------------------------------------------------------

def stratified_split(labels: np.ndarray, n_classes: int, train_per_class: int, n_val: int,
                     n_test: int | None, rng: np.random.Generator):
    """``train_per_class`` random nodes of each class for training (Planetoid style), then
    ``n_val`` and ``n_test`` (None: all the rest) of the remaining nodes, at random."""
    n = len(labels)
    order = rng.permutation(n)
    # rank of each node within its class, in the random order
    by_class = order[np.argsort(labels[order], kind="stable")]
    starts = np.searchsorted(labels[by_class], np.arange(n_classes))
    rank = np.empty(n, np.int64)
    rank[by_class] = np.arange(n) - starts[labels[by_class]]
    train = rank < train_per_class
    rest = order[~train[order]]
    n_val = min(n_val, len(rest))
    val_ids = rest[:n_val]
    test_ids = rest[n_val:] if n_test is None else rest[n_val:n_val + n_test]
    val, test = np.zeros(n, bool), np.zeros(n, bool)
    val[val_ids], test[test_ids] = True, True
    return train, val, test


def _undirected(a: np.ndarray, b: np.ndarray, n: int):
    """Distinct undirected pairs {a, b} without self-loops, stored in both directions."""
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    pair = np.unique(lo[lo != hi] * n + hi[lo != hi])
    lo, hi = pair // n, pair % n
    return np.concatenate([lo, hi]), np.concatenate([hi, lo])


# ---- real graphs -------------------------------------------------------------------------------

KARATE_SOURCE = ("W. W. Zachary, An information flow model for conflict and fission in small groups, "
                 "J. Anthropological Research 33(4):452-473 (1977); built by networkx."
                 "karate_club_graph()")
KARATE_LICENCE = ("Facts from a published study; networkx (BSD-3-Clause) builds the graph in code. "
                  "No data file is shipped.")


def karate_club(train_per_class: int = 4, n_val: int = 6, seed: int = 0) -> Graph:
    """Zachary's karate club: 34 members, 78 friendships (undirected, unweighted as in Kipf and
    Welling), labels the two clubs after the split ('Mr. Hi' = 0, 'Officer' = 1), features the
    identity (one-hot node ids). ``train_per_class`` members of each club train, ``n_val``
    validate, the rest test."""
    import networkx as nx

    g = nx.karate_club_graph()
    n = g.number_of_nodes()
    edges = np.asarray(list(g.edges()), np.int64)
    src, dst = _undirected(edges[:, 0], edges[:, 1], n)
    clubs = ("Mr. Hi", "Officer")
    club = nx.get_node_attributes(g, "club")
    labels = np.asarray([clubs.index(club[i]) for i in range(n)], np.int64)  # 34 attributes
    train, val, test = stratified_split(labels, 2, train_per_class, n_val, None,
                                        np.random.default_rng(seed))
    return Graph("karate club", n, src, dst, np.eye(n, dtype=np.float32), labels, 2, train, val, test,
                 class_names=clubs, source=KARATE_SOURCE, licence=KARATE_LICENCE)


LINQS = {
    "cora": "https://linqs-data.soe.ucsc.edu/public/lbc/cora.tgz",
    "citeseer": "https://linqs-data.soe.ucsc.edu/public/lbc/citeseer.tgz",
}


def _missing(path: Path, name: str) -> FileNotFoundError:
    url = LINQS.get(name, "https://linqs.org/datasets/")
    return FileNotFoundError(
        f"load_linqs: file '{path}' not found. The LINQS {name} data cannot be downloaded at run "
        f"time here; get {url} on a machine with network access, extract it, and copy "
        f"'{name}.content' and '{name}.cites' into '{path.parent}/'.")


def load_linqs(directory: str | Path, name: str | None = None, train_per_class: int = 20,
               n_val: int = 500, n_test: int = 1000, seed: int = 0) -> Graph:
    """Cora or CiteSeer in the LINQS format from ``directory`` (e.g. ``datasets/cora``):
    ``<name>.content`` has one line per paper, tab separated: paper id, word features (numbers,
    0/1 in LINQS), label; ``<name>.cites`` has one line per citation: cited id, citing id. ``name``
    defaults to the directory's name. The whitespace around each field is stripped and blank lines
    are skipped. Citations are made undirected; self-citations are dropped, and so are citations
    naming papers that are not in the content file (CiteSeer has some), with a ``UserWarning``
    giving their count, which ``Graph.source`` also records. The split is random and stratified
    (``train_per_class`` per class, then ``n_val`` and ``n_test``), not Planetoid's fixed indices.

    ``RelationError`` (a ``ValueError``) names the file and the 1-based line of the first
    malformed line: a content line whose field count differs from the other lines' (truncated or
    extra fields), a feature that is not a finite number, an empty id or label, a paper id listed
    twice, or a cites line without exactly two ids."""
    directory = Path(directory)
    name = name or directory.name
    content, cites = directory / f"{name}.content", directory / f"{name}.cites"
    for path in (content, cites):
        if not path.is_file():
            raise _missing(path, name)
    ids, features, labels, class_names = _read_content(content)
    links = _read_cites(cites)
    index = pl.DataFrame({"id": ids, "i": np.arange(len(ids), dtype=np.int64)})
    pairs = (links.join(index.rename({"id": "cited", "i": "dst"}), on="cited", how="inner")
             .join(index.rename({"id": "citing", "i": "src"}), on="citing", how="inner"))
    unknown = links.join(pairs.select("line_no"), on="line_no", how="anti").sort("line_no")
    dropped = unknown.height
    if dropped:
        first = unknown.row(0, named=True)
        warnings.warn(f"load_linqs: {dropped} of {links.height} citation(s) in '{cites}' name a paper "
                      f"id missing from '{content}' and are dropped (the first on line "
                      f"{first['line_no']}: cited {first['cited']!r}, citing {first['citing']!r})", stacklevel=2)
    n = len(ids)
    src, dst = _undirected(pairs["src"].to_numpy(), pairs["dst"].to_numpy(), n)
    train, val, test = stratified_split(labels, len(class_names), train_per_class, n_val, n_test,
                                        np.random.default_rng(seed))
    return Graph(name, n, src, dst, features, labels, len(class_names), train, val, test,
                 class_names=class_names,
                 source=f"LINQS {name} ({LINQS.get(name, 'https://linqs.org/datasets/')}), read from "
                        f"{directory}; {dropped} citation(s) naming unknown papers dropped",
                 licence="as distributed by LINQS; see datasets/README.md")


def _read_tsv(path: Path) -> pl.DataFrame:
    """The non-blank lines of a LINQS file (``tab_separated_lines``); an empty file is refused."""
    lines = tab_separated_lines(path)
    if lines.height == 0:
        raise RelationError(f"load_linqs: '{path}' is empty")
    return lines


def _line_error(path: Path, row: dict, what: str, n_bad: int = 1) -> RelationError:
    more = f" ({n_bad} such line(s))" if n_bad > 1 else ""
    line = row["line"] if len(row["line"]) <= 80 else row["line"][:77] + "..."
    return RelationError(f"load_linqs: '{path}', line {row['line_no']}: {what}: {line!r}{more}")


def _read_content(path: Path):
    """Paper ids (a String Series), features (n, d) float32, labels (n,) int64 and the sorted
    class names of a ``.content`` file."""
    rows = _read_tsv(path).with_columns(pl.col("parts").list.len().alias("width"))
    # the expected width is the most common one (the larger on a tie): the odd lines are reported
    widths = rows.group_by("width").len().sort(["len", "width"], descending=True)
    width = widths["width"][0]
    if width < 3:
        row = rows.filter(pl.col("width") == width).row(0, named=True)
        hint = "; separate the fields with tabs, not spaces" if " " in row["line"].strip() else ""
        raise _line_error(path, row, f"{width} tab-separated field(s); expected a paper id, at least "
                                     f"one feature and a label{hint}")
    odd = rows.filter(pl.col("width") != width)
    if odd.height:
        row = odd.row(0, named=True)
        raise _line_error(path, row, f"{row['width']} tab-separated field(s) where most lines have "
                                     f"{width} (paper id, {width - 2} features, label); the line is "
                                     f"truncated or has extra fields", odd.height)
    rows = rows.with_columns(pl.col("parts").list.first().alias("id"),
                             pl.col("parts").list.last().alias("label"),
                             pl.col("parts").list.slice(1, width - 2).alias("raw"))
    for column, what in (("id", "the paper id"), ("label", "the label")):
        empty = rows.filter(pl.col(column) == "")
        if empty.height:
            raise _line_error(path, empty.row(0, named=True), f"{what} is empty", empty.height)
    rows = rows.with_columns(pl.col("raw").list.eval(pl.element().cast(pl.Float32, strict=False))
                             .alias("x"))
    bad = pl.element().is_null() | pl.element().is_nan() | pl.element().is_infinite()
    wrong = rows.filter(pl.col("x").list.eval(bad).list.any())
    if wrong.height:
        row = wrong.row(0, named=True)
        k = next(i for i, v in enumerate(row["x"]) if v is None or not np.isfinite(v))
        raise _line_error(path, row, f"feature {k + 1} (field {k + 2}) is {row['raw'][k]!r}, not a "
                                     f"finite float32 number; the features between the paper id and the "
                                     f"label must be numbers (0/1 word indicators)", wrong.height)
    twice = rows.filter(pl.col("id").is_duplicated())
    if twice.height:
        first = twice.row(0, named=True)
        again = twice.filter(pl.col("id") == first["id"]).row(1, named=True)
        raise _line_error(path, again, f"paper id {first['id']!r} is already on line "
                                       f"{first['line_no']}; list each paper once")
    features = rows.select(pl.col("x").list.to_array(width - 2)).to_series().to_numpy()
    class_names = tuple(sorted(rows["label"].unique().to_list()))
    labels = rows["label"].replace_strict(class_names, list(range(len(class_names))),
                                          return_dtype=pl.Int64).to_numpy()
    return rows["id"], features.reshape(rows.height, width - 2), labels, class_names


def _read_cites(path: Path) -> pl.DataFrame:
    """The citations of a ``.cites`` file: ``line_no``, ``cited`` and ``citing`` paper ids."""
    rows = _read_tsv(path)
    odd = rows.filter(pl.col("parts").list.len() != 2)
    if odd.height:
        row = odd.row(0, named=True)
        raise _line_error(path, row, f"expected 2 tab-separated fields (cited paper id, citing paper "
                                     f"id), got {len(row['parts'])}; the line is truncated or has "
                                     f"extra fields", odd.height)
    empty = rows.filter(pl.col("parts").list.eval(pl.element() == "").list.any())
    if empty.height:
        raise _line_error(path, empty.row(0, named=True), "a paper id is empty", empty.height)
    return rows.select("line_no", pl.col("parts").list.first().alias("cited"),
                       pl.col("parts").list.last().alias("citing"))


# ---- synthetic graphs --------------------------------------------------------------------------

def sbm(n_nodes: int, n_classes: int, avg_degree: float, n_features: int, homophily: float = 0.8,
        seed: int = 0, n_edges: int | None = None, signal: float = 1.0, train_per_class: int = 20,
        n_val: int = 500, n_test: int = 1000, name: str = "sbm") -> Graph:
    """A stochastic block model, synthetic. Labels are uniform over ``n_classes``; each undirected
    edge picks a uniform endpoint, then its other endpoint in the same class with probability
    ``homophily`` and in a uniformly chosen other class otherwise (uniform within the class).
    ``n_edges`` undirected edges (default ``n_nodes * avg_degree / 2``), distinct, no self-loops.
    Features are Gaussian around a class mean: x = mu_y + N(0, I), mu_c ~ N(0, signal^2 / d I),
    so two class means lie about ``signal * sqrt(2)`` apart: features alone classify poorly and
    neighbours' features help. Vectorized: 100k nodes and 1M directed edges take about a second."""
    if n_classes < 2 or n_nodes < n_classes:
        raise ValueError(f"sbm: need n_classes >= 2 and n_nodes >= n_classes, got {n_nodes}, {n_classes}")
    if not 0.0 <= homophily <= 1.0:
        raise ValueError(f"sbm: homophily is a probability, got {homophily}")
    rng = np.random.default_rng(seed)
    n, c = int(n_nodes), int(n_classes)
    labels = rng.integers(0, c, size=n)
    members = np.argsort(labels, kind="stable")  # nodes grouped by class
    size = np.bincount(labels, minlength=c)
    start = np.concatenate([[0], np.cumsum(size)[:-1]])
    target = int(n_edges if n_edges is not None else round(n * avg_degree / 2))
    if target > n * (n - 1) // 4:
        raise ValueError(f"sbm: {target} undirected edges is too dense for {n} nodes")
    pairs = np.zeros(0, np.int64)
    while len(pairs) < target:  # a few rounds: duplicates and self-loops are redrawn
        k = int((target - len(pairs)) * 1.1) + 16
        a = rng.integers(0, n, size=k)
        same = rng.random(k) < homophily
        cls = np.where(same, labels[a], (labels[a] + rng.integers(1, c, size=k)) % c)
        b = members[start[cls] + (rng.random(k) * size[cls]).astype(np.int64)]
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        pairs = np.concatenate([pairs, lo[lo != hi] * n + hi[lo != hi]])  # pair id lo * n + hi
        _, first = np.unique(pairs, return_index=True)
        pairs = pairs[np.sort(first)]  # distinct, in order of drawing
    pairs = pairs[:target]
    lo, hi = pairs // n, pairs % n
    src, dst = np.concatenate([lo, hi]), np.concatenate([hi, lo])
    means = rng.normal(0.0, signal / np.sqrt(n_features), size=(c, n_features)).astype(np.float32)
    features = means[labels] + rng.standard_normal((n, n_features), dtype=np.float32)
    train, val, test = stratified_split(labels, c, train_per_class, n_val, n_test, rng)
    return Graph(name, n, src, dst, features, labels.astype(np.int64), c, train, val, test,
                 class_names=tuple(f"class {i}" for i in range(c)), synthetic=True,
                 source=f"synthetic stochastic block model (seed {seed}, homophily {homophily})",
                 licence="generated; no licence needed")


# name -> (nodes, undirected edges, features, classes, edge homophily of the real data set)
SIZES = {
    "cora": (2708, 5278, 1433, 7, 0.81),
    "pubmed": (19717, 44324, 500, 3, 0.80),
    "ogbn-arxiv": (169343, 1166243, 128, 40, 0.65),
}


def synthetic_like(name: str, seed: int = 0, **kwargs) -> Graph:
    """A SYNTHETIC stochastic block model with the size of a real data set ('cora', 'pubmed',
    'ogbn-arxiv'): its node, undirected edge, feature and class counts and about its edge
    homophily. Not the real data: the features are Gaussian, not bag-of-words or embeddings,
    and the labels carry no meaning. For timing and for checking that training learns."""
    key = name.lower()
    if key not in SIZES:
        raise ValueError(f"synthetic_like: unknown data set {name!r}; choose one of {tuple(SIZES)}")
    n, m, d, c, h = SIZES[key]
    args = dict(n_nodes=n, n_classes=c, avg_degree=2 * m / n, n_features=d, homophily=h, seed=seed,
                n_edges=m, name=f"synthetic {key}")
    args.update(kwargs)
    return sbm(**args)


# ---- relations -----------------------------------------------------------------------------------

class GraphRelations(NamedTuple):
    """What a GCN reads. ``node``: Node(id) -> features; ``edge``: Edge(src, dst) -> normalized
    weight; ``label``: Label(id) -> one-hot; ``train``/``val``/``test``: Split(id) -> 1.0 for the
    nodes in the split only."""

    node: Relation
    edge: Relation
    label: Relation
    train: Relation
    val: Relation
    test: Relation


def normalized_edges(graph: Graph):
    """src, dst, w of D^-1/2 (A + I) D^-1/2 with D_ii = sum_j (A + I)_ij: every node gets a
    self-loop (added to a stored one), degrees counted at the destination (the row of A + I)."""
    n = graph.n_nodes
    w = np.ones(graph.n_edges) if graph.weights is None else np.asarray(graph.weights, np.float64)
    loops = np.arange(n, dtype=np.int64)
    src = np.concatenate([graph.src, loops])
    dst = np.concatenate([graph.dst, loops])
    w = np.concatenate([w, np.ones(n)])
    lin, inverse = np.unique(src * n + dst, return_inverse=True)  # merge repeated (src, dst)
    w = np.bincount(inverse, weights=w, minlength=len(lin))
    src, dst = lin // n, lin % n
    deg = np.bincount(dst, weights=w, minlength=n)  # (A + I) 1, A[dst, src] = w
    return src, dst, w / np.sqrt(deg[dst] * deg[src])


def to_relations(graph: Graph, dtype=None) -> GraphRelations:
    """The relations of ``graph`` for a GCN, with values of ``dtype`` (default: float64 under
    JAX's x64 mode, else float32)."""
    dtype = dtype or default_dtype()
    n = graph.n_nodes
    src, dst, w = normalized_edges(graph)
    node = from_tensor(graph.features, keys=("id",), dtype=dtype, name="Node")
    edge = from_frame(pl.DataFrame({"src": src, "dst": dst, "w": w}), keys=("src", "dst"), value="w",
                      extents=(n, n), dtype=dtype, name="Edge")
    label = from_tensor(np.eye(graph.n_classes)[graph.labels], keys=("id",), dtype=dtype, name="Label")

    def split(mask: np.ndarray, name: str) -> Relation:
        ids = np.flatnonzero(mask).astype(np.int64)
        return from_frame(pl.DataFrame({"id": ids, "m": np.ones(len(ids))}), keys=("id",), value="m",
                          extents=(n,), dtype=dtype, name=name)

    return GraphRelations(node, edge, label, split(graph.train, "Train"), split(graph.val, "Val"),
                          split(graph.test, "Test"))


# ---- graphs written as partitioned datasets (workbench.storage), in bounded memory ---------------

def rmat_chunks(scale: int, edge_factor: int = 16, seed: int = 0, chunk: int = 1 << 20,
                abc: tuple[float, float, float] = (0.57, 0.19, 0.19)):
    """R-MAT edges (Chakrabarti, Zhan and Faloutsos, SDM 2004), SYNTHETIC: ``edge_factor * 2**scale``
    draws over ``2**scale`` nodes, yielded as (src, dst) chunks of ``chunk`` draws. Each draw picks
    one quadrant of the adjacency matrix per bit, with probabilities a, b, c and 1 - a - b - c, so
    degrees follow a power law. Node ids are scrambled by a fixed permutation (so high degree is
    not low id). Chunk k uses its own seed: the same chunks in any order, in any process."""
    a, b, c = abc
    n, total = 1 << scale, edge_factor << scale
    perm = np.random.default_rng([seed, 1]).permutation(n)
    for k, start in enumerate(range(0, total, chunk)):
        m = min(chunk, total - start)
        rng = np.random.default_rng([seed, 2, k])
        src = np.zeros(m, np.int64)
        dst = np.zeros(m, np.int64)
        for bit in range(scale):
            r = rng.random(m)
            down = r >= a + b  # quadrants c and d: the row bit is 1
            right = ((r >= a) & (r < a + b)) | (r >= a + b + c)  # quadrants b and d: the column bit is 1
            src |= down.astype(np.int64) << bit
            dst |= right.astype(np.int64) << bit
        yield perm[src], perm[dst]


class GraphDataset(NamedTuple):
    """A graph written as datasets: the relations a GCN reads (``graph_relations`` opens them)."""

    path: Path
    n_nodes: int
    n_edges: int  # stored edges of the normalized adjacency, self-loops included
    n_features: int
    n_classes: int


def write_graph_dataset(path, n_nodes: int, edge_chunks, features, n_classes: int,
                        partitions: int = 4, train_fraction: float = 0.1, val_fraction: float = 0.1,
                        seed: int = 0, dtype: str = "float32", undirected: bool = True,
                        overwrite: bool = False, progress: bool | None = False) -> GraphDataset:
    """Write the GCN relations of a graph under ``path`` (one dataset each: node, edge, label,
    train, val, test, label_train), each hashed on its first key into ``partitions`` shards, in
    memory bounded by one chunk plus O(n_nodes) per-node arrays, never the whole edge list.

    ``edge_chunks`` yields (src, dst) arrays (repeats and self-loops allowed; both directions are
    stored when ``undirected``). ``features(start, stop)`` returns (features, labels) of nodes
    start..stop-1. Edges become Â = D^-1/2 (A + I) D^-1/2 as ``normalized_edges`` computes it
    (distinct edges of weight 1, a self-loop per node, degrees at the destination): pass 1
    hashes the raw edges into shards on src, pass 2 counts each shard's distinct edges per
    destination, pass 3 writes each shard's weights. The splits are random (``train_fraction``,
    ``val_fraction`` of the nodes, the rest test). ``progress=True``: a bar of the rows each pass
    writes (raw edges, Edge, Node)."""
    path = Path(path)
    partitions = check_shards(partitions, f"write_graph_dataset '{path}'")
    if path.exists() and not overwrite:
        raise RelationError(f"write_graph_dataset: '{path}' exists; pass overwrite=True to replace it")
    path.mkdir(parents=True, exist_ok=True)
    n = int(n_nodes)
    raw = path / "_raw_edges"
    with DatasetWriter(raw, ("src", "dst"), (), "float32", partitions, ("src",), (n, n), "raw edges",
                       overwrite=True, check_unique=False, progress=progress) as w:
        for src, dst in edge_chunks:
            src, dst = np.asarray(src, np.int64), np.asarray(dst, np.int64)
            if undirected:
                src, dst = np.concatenate([src, dst]), np.concatenate([dst, src])
            keep = src != dst  # self-loops are added once per node below
            w.write({"src": src[keep], "dst": dst[keep]}, np.ones(int(keep.sum()), np.float32))
    raw_ds = Dataset(raw)

    def distinct(s: int) -> pl.DataFrame:
        return raw_ds.shard(s).select("src", "dst").unique().collect()

    deg = np.ones(n)  # the self-loop
    n_distinct = 0
    for s in raw_ds.stored_shards():
        dst = distinct(s)["dst"].to_numpy()
        deg += np.bincount(dst, minlength=n)
        n_distinct += len(dst)
    # the self-loop (i, i) goes to the shard that i hashes to: node ids grouped by shard, once
    home = shard_hash(pl.DataFrame({"src": np.arange(n)}), ("src",), n, partitions)
    by_home = np.argsort(home, kind="stable")
    home_bounds = np.searchsorted(home[by_home], np.arange(partitions + 1))
    n_edges = 0
    with DatasetWriter(path / "edge", ("src", "dst"), (), dtype, partitions, ("src",), (n, n), "Edge",
                       overwrite=True, progress=progress, total=n_distinct + n) as w:
        for s in range(partitions):
            e = distinct(s)
            loops = by_home[home_bounds[s]:home_bounds[s + 1]]
            if not (len(e) or len(loops)):
                continue
            src = np.concatenate([e["src"].to_numpy(), loops])
            dst = np.concatenate([e["dst"].to_numpy(), loops])
            w.write({"src": src, "dst": dst}, 1.0 / np.sqrt(deg[dst] * deg[src]))
            n_edges += len(src)
    shutil.rmtree(raw)

    rng = np.random.default_rng([seed, 3])
    split = rng.random(n)
    train, val = split < train_fraction, (split >= train_fraction) & (split < train_fraction + val_fraction)
    test = ~(train | val)
    names = ("node", "label", "label_train")
    d = None
    writers = {}
    try:
        for start in range(0, n, 1 << 18):
            stop = min(n, start + (1 << 18))
            x, y = features(start, stop)
            x, y = np.asarray(x), np.asarray(y, np.int64)
            if d is None:
                d = x.shape[1]
                shapes = {"node": (d,), "label": (n_classes,), "label_train": (n_classes,)}
                for name in names:  # one bar, the nodes'
                    writers[name] = DatasetWriter(path / name, ("id",), shapes[name], dtype, partitions,
                                                  extents=(n,), name=name.capitalize(), overwrite=True,
                                                  progress=progress if name == "node" else False, total=n)
            ids = np.arange(start, stop, dtype=np.int64)
            onehot = np.eye(n_classes, dtype=np.float32)[y]
            writers["node"].write({"id": ids}, x)
            writers["label"].write({"id": ids}, onehot)
            t = train[start:stop]
            writers["label_train"].write({"id": ids[t]}, onehot[t])
        for name in names:
            writers[name].close(check_unique=False)  # ids written once each, in order
    except BaseException:
        for wr in writers.values():
            wr._abort()
        raise
    for name, mask in (("train", train), ("val", val), ("test", test)):
        ids = np.flatnonzero(mask).astype(np.int64)
        with DatasetWriter(path / name, ("id",), (), dtype, partitions, extents=(n,),
                           name=name.capitalize(), overwrite=True) as w:
            w.write({"id": ids}, np.ones(len(ids)))
    return GraphDataset(path, n, n_edges, int(d), int(n_classes))


def block_features(n_classes: int, n_features: int, seed: int = 0, signal: float = 1.0):
    """``features(start, stop)`` for ``write_graph_dataset``: uniform labels and Gaussian features
    around a class mean, as ``sbm`` draws them; each block of nodes from its own seed."""
    means = np.random.default_rng([seed, 4]).normal(0.0, signal / np.sqrt(n_features),
                                                    size=(n_classes, n_features)).astype(np.float32)

    def features(start: int, stop: int):
        rng = np.random.default_rng([seed, 5, start])
        y = rng.integers(0, n_classes, size=stop - start)
        return means[y] + rng.standard_normal((stop - start, n_features), dtype=np.float32), y
    return features


def rmat_dataset(path, scale: int, edge_factor: int = 16, n_features: int = 128, n_classes: int = 16,
                 partitions: int = 4, seed: int = 0, dtype: str = "float32", chunk: int = 1 << 20,
                 overwrite: bool = False, progress: bool | None = False) -> GraphDataset:
    """A SYNTHETIC R-MAT graph (``rmat_chunks``, undirected) with block-model features, written
    as GCN datasets under ``path`` (``write_graph_dataset``), chunk by chunk; ``progress=True``
    shows the rows written."""
    return write_graph_dataset(path, 1 << scale, rmat_chunks(scale, edge_factor, seed, chunk),
                               block_features(n_classes, n_features, seed), n_classes, partitions,
                               seed=seed, dtype=dtype, overwrite=overwrite, progress=progress)


def graph_to_dataset(graph: Graph, path, partitions: int = 4, dtype: str = "float32",
                     overwrite: bool = False, progress: bool | None = False) -> GraphDataset:
    """A ``Graph`` in memory (e.g. ``sbm``) written as GCN datasets; the edges as stored (both
    directions already), the splits the graph's own."""
    path = Path(path)

    def features(start, stop):
        return graph.features[start:stop], graph.labels[start:stop]

    chunks = ((graph.src[i:i + (1 << 20)], graph.dst[i:i + (1 << 20)]) for i in range(0, graph.n_edges, 1 << 20))
    out = write_graph_dataset(path, graph.n_nodes, chunks, features, graph.n_classes, partitions,
                              dtype=dtype, undirected=False, overwrite=overwrite, progress=progress)
    if graph.weights is not None:
        raise RelationError(f"graph_to_dataset '{graph.name}': weighted edges are not written yet; "
                            f"use to_relations for a weighted graph")
    onehot = np.eye(graph.n_classes)
    for name, mask in (("train", graph.train), ("val", graph.val), ("test", graph.test)):
        ids = np.flatnonzero(mask).astype(np.int64)
        with DatasetWriter(path / name, ("id",), (), dtype, partitions, extents=(graph.n_nodes,),
                           name=name.capitalize(), overwrite=True) as w:
            w.write({"id": ids}, np.ones(len(ids)))
    ids = np.flatnonzero(graph.train).astype(np.int64)
    with DatasetWriter(path / "label_train", ("id",), (graph.n_classes,), dtype, partitions,
                       extents=(graph.n_nodes,), name="Label_train", overwrite=True) as w:
        w.write({"id": ids}, onehot[graph.labels[ids]])
    return out


def edge_list_dataset(source, path, n_nodes: int | None = None, n_features: int = 16, n_classes: int = 2,
                      partitions: int = 4, columns: tuple[str, str] = ("src", "dst"), seed: int = 0,
                      dtype: str = "float32", undirected: bool = True, overwrite: bool = False,
                      chunk: int = 1 << 20, progress: bool | None = False) -> GraphDataset:
    """A user's edge list (CSV/TSV with or without a header, or Parquet; two integer node-id
    columns named by ``columns``) written as GCN datasets, streamed ``chunk`` rows at a time; the
    node features and labels are SYNTHETIC (``block_features``) unless you write your own with
    ``write_graph_dataset``. ``n_nodes`` defaults to the largest id + 1 (one extra pass).
    ``progress=True``: a bar of the rows each pass writes."""
    tmp = Path(path) / "_edges"
    Path(path).mkdir(parents=True, exist_ok=True)
    ds = import_file(source, tmp, keys=columns, partitions=partitions, hash_by=(columns[0],),
                     columns=columns, chunk_rows=chunk, overwrite=True, check_unique=False, progress=progress)
    n = int(n_nodes if n_nodes is not None else max(ds.meta.extents))
    if max(ds.meta.extents) > n:
        raise RelationError(f"edge_list_dataset '{source}': node ids reach {max(ds.meta.extents) - 1}, "
                            f"outside n_nodes={n}")

    def chunks():
        for s in ds.stored_shards():
            e = ds.shard(s).collect()
            yield e[columns[0]].to_numpy(), e[columns[1]].to_numpy()
    out = write_graph_dataset(path, n, chunks(), block_features(n_classes, n_features, seed), n_classes,
                              partitions, seed=seed, dtype=dtype, undirected=undirected, overwrite=True,
                              progress=progress)
    shutil.rmtree(tmp)
    return out


def graph_relations(path, dtype=None) -> tuple[GraphRelations, Relation]:
    """The GCN relations of a graph dataset (``write_graph_dataset``), and its training targets
    (Label of the training nodes): stored relations naming the datasets, read by whoever runs
    the plan (``wb.from_dataset``); nothing is read here."""
    path = Path(path)
    rel = {name: from_dataset(path / name, dtype=dtype, name=name.capitalize())
           for name in ("node", "edge", "label", "train", "val", "test", "label_train")}
    return (GraphRelations(rel["node"], rel["edge"], rel["label"], rel["train"], rel["val"], rel["test"]),
            rel["label_train"])
