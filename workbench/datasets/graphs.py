"""Graphs for node classification: Zachary's karate club (built by networkx, no files), a
stochastic block model with class-dependent features (synthetic, for scale), synthetic graphs of
the sizes of Cora, PubMed and ogbn-arxiv, a loader for the LINQS Cora/CiteSeer files a user drops
into ``datasets/<name>/``, and ``to_relations``: the relations a GCN reads.

A ``Graph`` stores directed edges ``src -> dst``; an undirected graph stores both directions.
Sources and licences are in ``datasets/README.md`` (section "Graphs").
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import polars as pl

from workbench.datasets.text import tab_separated_lines
from workbench.errors import RelationError
from workbench.relation import Relation, default_dtype, from_frame, from_tensor


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
