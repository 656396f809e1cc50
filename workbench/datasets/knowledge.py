"""Knowledge graphs: triples (head, relation, tail) with train/valid/test splits.

Three small real graphs ship in ``datasets/`` at the repository root (from the pykeen wheel, MIT
licence; see ``datasets/README.md``): Nations, Kinships and UMLS. ``load(name)`` reads one of
them, ``from_tsv(train, valid, test)`` reads files a user drops in (one ``head<TAB>relation<TAB>
tail`` line per triple), and ``to_relations`` turns an array of triples into the key-only relation
``Triple(h, r, t) -> 1.0`` that the relational KGE programs join with the embeddings.

Entity and relation ids index the sorted names of the union of all splits, so ids are the same on
every run and for every split.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from workbench.datasets.text import tab_separated_lines
from workbench.errors import RelationError
from workbench.relation import Relation, default_dtype, from_frame
from workbench.storage import Dataset, import_file, write_distinct

ROOT = Path(__file__).resolve().parents[2] / "datasets"
SHIPPED = ("nations", "kinships", "umls")
SPLITS = ("train", "valid", "test")
COLUMNS = ("h", "r", "t")
COLUMNS_LONG = ("head", "relation", "tail")


@dataclass(frozen=True)
class Triples:
    """A knowledge graph: names of entities and relations, and each split as an int64 array of
    shape (n, 3) whose rows are (head id, relation id, tail id)."""

    name: str
    entities: tuple[str, ...]
    relations: tuple[str, ...]
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray

    @property
    def n_entities(self) -> int:
        return len(self.entities)

    @property
    def n_relations(self) -> int:
        return len(self.relations)

    def split(self, which: str) -> np.ndarray:
        if which not in SPLITS:
            raise ValueError(f"Triples '{self.name}': unknown split {which!r}; the splits are {SPLITS}")
        return getattr(self, which)

    def known(self) -> np.ndarray:
        """Every true triple of every split, (n, 3): the set a filtered ranking leaves out."""
        return np.concatenate([self.train, self.valid, self.test])

    def summary(self) -> str:
        return (f"{self.name}: {self.n_entities} entities, {self.n_relations} relations, "
                f"{len(self.train)} / {len(self.valid)} / {len(self.test)} train / valid / test "
                f"triples")

    def __repr__(self) -> str:
        return f"Triples({self.summary()})"


# Column names of a header line, per field, in lower case; a leading '#' is ignored.
HEADER = (("head", "head_entity", "subject", "source"),
          ("relation", "rel", "predicate"),
          ("tail", "tail_entity", "object", "target"))


def _is_header() -> pl.Expr:
    def field(i: int) -> pl.Expr:
        name = pl.col("parts").list.get(i, null_on_oob=True).str.to_lowercase()
        return name.str.strip_chars_start("#").str.strip_chars().is_in(HEADER[i])
    return pl.all_horizontal(field(i) for i in range(3)).fill_null(False)


def _read(path: Path) -> pl.DataFrame:
    """One split file as a frame of (h, r, t) names, repeated triples kept once; the format and
    the checks are in ``from_tsv``."""
    if not path.is_file():
        raise FileNotFoundError(f"knowledge graph split file {str(path)!r} does not exist; give the "
                                f"path of a tab-separated file with one 'head<TAB>relation<TAB>tail' "
                                f"line per triple")
    rows = tab_separated_lines(path).with_columns(_is_header().alias("header"))
    if rows.height and rows["header"][0]:
        rows = rows.slice(1)
    count = pl.col("parts").list.len()
    empty = pl.col("parts").list.eval(pl.element() == "").list.any()
    bad = rows.filter((count != 3) | pl.col("header") | empty)
    if bad.height:
        raise RelationError(_bad_line(path, bad.row(0, named=True), bad.height))
    frame = rows.select(pl.col("parts").list.to_struct(fields=list(COLUMNS))).unnest("parts")
    return frame.unique(maintain_order=True)


def _bad_line(path: Path, row: dict, n_bad: int) -> str:
    """The message for the first bad line of a split file."""
    where = f"{str(path)!r}, line {row['line_no']}"
    parts, line = row["parts"], row["line"]
    more = f" ({n_bad} bad line(s) in the file)" if n_bad > 1 else ""
    if len(parts) != 3:
        hint = ""
        if len(parts) == 1 and " " in line.strip():
            hint = "; separate the fields with tabs, not spaces"
        elif len(parts) > 3 and all(p == "" for p in parts[3:]):
            hint = "; remove the trailing tab(s)"
        return (f"{where}: expected 3 tab-separated fields (head, relation, tail), got "
                f"{len(parts)}: {line!r}{hint}{more}")
    if row["header"]:
        return (f"{where}: {line!r} looks like a header; only the first line of a file may name "
                f"the columns: remove this line{more}")
    field = COLUMNS_LONG[parts.index("")]
    return f"{where}: the {field} name is empty: {line!r}{more}"


def _encode(frames: dict[str, pl.DataFrame], name: str) -> Triples:
    """Map names to ids: sorted names of the union of the splits."""
    stacked = pl.concat(list(frames.values()))
    entities = pl.concat([stacked["h"], stacked["t"]]).unique().sort()
    relations = stacked["r"].unique().sort()
    ent = pl.DataFrame({"name": entities, "id": np.arange(len(entities), dtype=np.int64)})
    rel = pl.DataFrame({"name": relations, "id": np.arange(len(relations), dtype=np.int64)})

    def ids(frame: pl.DataFrame) -> np.ndarray:
        if frame.height == 0:
            return np.zeros((0, 3), np.int64)
        coded = frame.with_row_index("_row").select(
            "_row",
            pl.col("h").replace_strict(ent["name"], ent["id"]).alias("h"),
            pl.col("r").replace_strict(rel["name"], rel["id"]).alias("r"),
            pl.col("t").replace_strict(ent["name"], ent["id"]).alias("t")).sort("_row")
        return coded.select(COLUMNS).to_numpy().astype(np.int64)

    return Triples(name, tuple(entities.to_list()), tuple(relations.to_list()),
                   *(ids(frames[s]) if s in frames else np.zeros((0, 3), np.int64) for s in SPLITS))


def from_tsv(train, valid=None, test=None, name: str | None = None) -> Triples:
    """A knowledge graph from tab-separated files of (head, relation, tail) names; ``valid`` and
    ``test`` may be left out (empty splits). Repeated triples within a file are kept once.

    Each file has one ``head<TAB>relation<TAB>tail`` line per triple. The whitespace around each
    name is stripped (``'b '`` is ``'b'``) and blank lines are skipped. A header is optional: a
    first non-blank line whose fields name the columns (the names in ``HEADER``, e.g.
    ``head<TAB>relation<TAB>tail`` or ``subject<TAB>predicate<TAB>object``, any case, an optional
    leading ``#``) is skipped, and such a line anywhere else is refused. Any other header is read
    as a triple. ``RelationError`` (a ``ValueError``) names the file and the 1-based line of the
    first line that does not have exactly 3 fields or has an empty name, or of a file that is not
    UTF-8."""
    paths = {"train": train, "valid": valid, "test": test}
    frames = {s: _read(Path(p)) for s, p in paths.items() if p is not None}
    return _encode(frames, name or Path(train).parent.name or "triples")


def load(name: str, root: str | Path | None = None) -> Triples:
    """One of the shipped knowledge graphs: 'nations', 'kinships' or 'umls' (case-insensitive),
    read from ``root/<name>/{train,valid,test}.txt`` (``root`` defaults to ``datasets/``)."""
    key = str(name).lower()
    base = Path(root) if root is not None else ROOT
    if key not in SHIPPED and not (base / key).is_dir():
        raise ValueError(f"unknown knowledge graph {name!r}; the shipped ones are {SHIPPED}. For "
                         f"your own files use workbench.datasets.knowledge.from_tsv(train, valid, "
                         f"test), or put them in {str(base / key)!r}/{{train,valid,test}}.txt")
    missing = [str(base / key / f"{s}.txt") for s in SPLITS if not (base / key / f"{s}.txt").is_file()]
    if missing:
        raise FileNotFoundError(f"knowledge graph {name!r}: missing split file(s) {missing}; each "
                                f"data set needs train.txt, valid.txt and test.txt in "
                                f"{str(base / key)!r}")
    return from_tsv(*(base / key / f"{s}.txt" for s in SPLITS), name=key)


def to_relations(triples, n_entities: int, n_relations: int, name: str = "Triple",
                 dtype=None) -> Relation:
    """The key-only relation ``Triple(h, r, t) -> 1.0`` of an (n, 3) array of distinct triples,
    with extents (entities, relations, entities)."""
    arr = np.asarray(triples)
    if arr.ndim != 2 or arr.shape[1] != 3 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"to_relations '{name}': triples must be an integer array of shape (n, 3) "
                         f"with rows (head, relation, tail), got {arr.dtype} {arr.shape}")
    frame = pl.DataFrame({c: arr[:, i].astype(np.int64) for i, c in enumerate(COLUMNS)})
    frame = frame.with_columns(pl.lit(1.0).alias("one"))
    return from_frame(frame, keys=COLUMNS, value="one", extents=(n_entities, n_relations, n_entities),
                      dtype=dtype or default_dtype(), name=name)


def synthetic_dataset(path, n_entities: int, n_relations: int, n_triples: int, partitions: int = 4,
                      seed: int = 0, chunk: int = 1 << 20, dtype: str = "float32",
                      overwrite: bool = False, progress: bool | None = False) -> Dataset:
    """A SYNTHETIC knowledge graph ``Triple(h, r, t) -> 1.0`` written as a dataset hashed on ``h``,
    chunk by chunk: about ``n_triples`` distinct triples, heads and tails drawn with a Zipf-like
    skew (entity e with weight 1 / (e + 1)), relations uniformly; repeats are dropped.
    ``progress=True``: a bar of the rows written."""
    if min(n_entities, n_relations, n_triples) < 1:
        raise ValueError(f"synthetic_dataset: n_entities, n_relations and n_triples must be positive, "
                         f"got {(n_entities, n_relations, n_triples)}")
    perm = np.random.default_rng([seed, 0]).permutation(n_entities)

    def skewed(r, m):  # inverse CDF of weights 1/(e+1): e = floor((n+1)^u) - 1
        return perm[np.minimum(np.floor((n_entities + 1.0) ** r.random(m)).astype(np.int64) - 1,
                               n_entities - 1)]

    def chunks():
        for k, start in enumerate(range(0, n_triples, chunk)):
            r = np.random.default_rng([seed, 1, k])
            m = min(chunk, n_triples - start)
            yield {"h": skewed(r, m), "r": r.integers(0, n_relations, size=m), "t": skewed(r, m)}, np.ones(m)
    return write_distinct(chunks(), path, COLUMNS, partitions, ("h",), (n_entities, n_relations, n_entities),
                          dtype, "Triple", overwrite, progress, total=n_triples)


def triples_dataset(source, path, partitions: int = 4, n_entities: int | None = None,
                    n_relations: int | None = None, dtype: str = "float32", overwrite: bool = False,
                    chunk: int = 1 << 20, progress: bool | None = False) -> Dataset:
    """A user's triple file (CSV/TSV with or without a header line, or Parquet) whose first three
    columns are integer ids of head, relation and tail, written as ``Triple(h, r, t) -> 1.0``,
    hashed on ``h``, streamed ``chunk`` rows at a time. Files of names (Nations' TSVs) are read
    with ``from_tsv``, which numbers the names. Extents default to max(id) + 1. ``progress=True``:
    a bar of the rows written."""
    extents = None
    if n_entities is not None and n_relations is not None:
        extents = (n_entities, n_relations, n_entities)
    return import_file(source, path, keys=COLUMNS, partitions=partitions, hash_by=("h",), extents=extents,
                       columns=COLUMNS, dtype=dtype, name="Triple", chunk_rows=chunk, overwrite=overwrite,
                       progress=progress)
