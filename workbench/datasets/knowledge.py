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

from workbench.relation import Relation, default_dtype, from_frame

ROOT = Path(__file__).resolve().parents[2] / "datasets"
SHIPPED = ("nations", "kinships", "umls")
SPLITS = ("train", "valid", "test")
COLUMNS = ("h", "r", "t")


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


def _read(path: Path) -> pl.DataFrame:
    """One split file: three tab-separated string columns, no header, duplicates dropped."""
    if not path.is_file():
        raise FileNotFoundError(f"knowledge graph split file {str(path)!r} does not exist; give the "
                                f"path of a tab-separated file with one 'head<TAB>relation<TAB>tail' "
                                f"line per triple")
    lines = pl.DataFrame({"line": path.read_text(encoding="utf-8").splitlines()},
                         schema={"line": pl.String})
    parts = lines.with_row_index("line_no", offset=1).filter(
        pl.col("line").str.strip_chars() != "").with_columns(pl.col("line").str.split("\t").alias("parts"))
    bad = parts.filter(pl.col("parts").list.len() != 3)
    if bad.height:
        no, line = bad["line_no"][0], bad["line"][0]
        raise ValueError(f"{str(path)!r}, line {no}: expected 3 tab-separated fields (head, relation, "
                         f"tail), got {len(line.split(chr(9)))}: {line!r} ({bad.height} such line(s))")
    frame = parts.select(pl.col("parts").list.to_struct(fields=list(COLUMNS))).unnest("parts")
    return frame.unique(maintain_order=True)


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
    ``test`` may be left out (empty splits). Repeated triples within a file are kept once."""
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
