"""Blocked matrix products: Y(a, b) = sum_c x(a, c) . z(c, b) for two relations of 2-D blocks,
computed as ONE matmul of the dense matrices the blocks tile.

The key side and the value side are kept apart, as in ``workbench.sparse``: ``product`` works out,
once, from the key frames and heights of the two block relations (numpy / Polars only), the index
arrays that place each side's blocks into its dense matrix (zeros where a block is absent) and
that pick the output groups' blocks out of the dense result; ``apply_product`` computes the values
from those arrays with jnp only, traceable under an outer ``jax.jit``, every index array passable
as an argument.

Which keys index what is a ``Spec``: x's block index along its value axis 0 and along its axis 1
(likewise z), which value axis of each block is summed (the key along it is the contracted block
index c, the other the free one), whether the kernel returns its block transposed, and the
output's keys. The dense matrix of x puts the key along value axis i on dense axis i, so the dense
product is ``lax.dot_general`` with the kernel's own dimension numbers: block (a, b) of the result
is sum_c of the kernel on blocks (a, c) and (c, b), absent blocks contributing zero (exact for a
sum of products).

Each block index is laid out over the keys that occur (``_axis``: the keys themselves when they
fill at least half of 0..max, as block indices 0..n-1 do; else the distinct keys, compacted), so
dense sizes follow the data, not the key extents. When the dense product would do much more work
than the block products that actually meet (at most 1 in ``DENSE_SLACK`` of its block products
used: a block-diagonal or very sparse pattern), ``product`` chooses the gathered form instead:
each meeting pair's product, batched, and a sorted segment sum; the same interface either way.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import polars as pl
import scipy.sparse as sp
from jax import lax

from workbench.table import Table

# the dense product is used while it computes at most this many block products per one that
# meets (a full grid: 1; a half-empty A: 2)
DENSE_SLACK = 4

# the index arrays of a Product, each passable to ``apply_product`` by name
INDEX = ("x_at", "z_at", "out_at")


@dataclass(frozen=True)
class Spec:
    """The layout of a block product, from the schemas and the kernel (never the data).

    The kernel is ``dot_general(x, z)`` contracting value axis ``contract[0]`` of x with axis
    ``contract[1]`` of z (2-D blocks, no batch axes), its result transposed when ``transpose``.
    ``x_keys[i]`` is x's key indexing its blocks along value axis i, so ``x_keys[contract[0]]``
    is x's contracted block index and the other one x's free index (likewise z). The output
    relation has keys ``order`` (its key frame's columns); ``out_keys`` names the output keys
    of x's free index and of z's free index. With a ``filter`` relation (the backward's third
    relation, one tuple per output group), ``filter_keys`` are its keys for those two."""

    x_keys: tuple[str, str]
    z_keys: tuple[str, str]
    contract: tuple[int, int]
    transpose: bool
    out_keys: tuple[str, str]
    order: tuple[str, str]
    x_shape: tuple[int, int]
    z_shape: tuple[int, int]
    dtype: str
    filter_keys: tuple[str, str] | None = None
    precision: Any = None

    @property
    def x_contracted(self) -> str:
        return self.x_keys[self.contract[0]]

    @property
    def x_free(self) -> str:
        return self.x_keys[1 - self.contract[0]]

    @property
    def z_contracted(self) -> str:
        return self.z_keys[self.contract[1]]

    @property
    def z_free(self) -> str:
        return self.z_keys[1 - self.contract[1]]

    @property
    def out_shape(self) -> tuple[int, int]:
        fx = self.x_shape[1 - self.contract[0]]
        fz = self.z_shape[1 - self.contract[1]]
        return (fz, fx) if self.transpose else (fx, fz)


@dataclass
class Product:
    """The key side of a block product, worked out once.

    ``mode == "dense"``: ``x_at`` holds, for each block of x's dense grid (``x_grid``, row-major
    over (key along value axis 0, key along axis 1)), the x tuple placed there (x's height: an
    absent block, zeros; None: x's tuples are that grid in order); ``z_at`` likewise; ``out_at``
    the output groups' blocks in the result's block grid (row-major over ``order``; None: every
    block, in order).

    ``mode == "gather"``: one entry per pair of blocks that meet: ``x_at`` / ``z_at`` the x and
    z tuple, ``out_at`` its output group (ascending).

    Output groups are sorted by the output keys (``order``), as the interpreter numbers the
    groups of a dense key space."""

    mode: str
    x_at: np.ndarray | None
    z_at: np.ndarray | None
    out_at: np.ndarray | None
    x_grid: tuple[int, int]
    z_grid: tuple[int, int]
    out_grid: tuple[int, int]  # the result's block grid, (x free, z free) blocks
    z_first: bool  # the output's first key is z's free index
    out_keys: pl.DataFrame
    matched: int  # block pairs that meet and reach an output group: the logical join's tuples
    spec: Spec

    @property
    def n_out(self) -> int:
        return self.out_keys.height


def _axis(*columns: np.ndarray) -> tuple[np.ndarray | None, list[np.ndarray], int]:
    """One block index's positions over the keys of ``columns``: (the key of each position, or
    None when every key is its own position; each column's positions; the number of positions).
    Keys that fill at least half of 0..max stay as they are; others are compacted to 0..k-1."""
    keys = np.concatenate(columns) if columns else np.zeros(0, np.int64)
    if not len(keys):
        return None, list(columns), 0
    lo, hi = int(keys.min()), int(keys.max())
    if lo >= 0 and hi < 2 * len(keys) + 1024:  # small range: count, no sort
        used = np.bincount(keys, minlength=hi + 1) > 0
        k = int(np.count_nonzero(used))
        if hi + 1 <= 2 * k:
            return None, list(columns), hi + 1
        rank = np.cumsum(used) - 1
        return np.flatnonzero(used), [rank[c] for c in columns], k
    ids = np.unique(keys)
    return ids, [np.searchsorted(ids, c) for c in columns], len(ids)


def _find(keys: np.ndarray, ids: np.ndarray | None, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``keys`` that are on an axis (``ids``, ``size`` as from ``_axis``): (their indices in
    ``keys``, their positions)."""
    if ids is None:
        which = np.flatnonzero((keys >= 0) & (keys < size))
        return which, keys[which]
    pos = np.minimum(np.searchsorted(ids, keys), size - 1)  # ids: not None, so size >= 1
    which = np.flatnonzero(ids[pos] == keys)
    return which, pos[which]


def _index(a: np.ndarray) -> np.ndarray:
    return a.astype(np.int32 if len(a) < 2**31 else np.int64)


def _grid_at(p0: np.ndarray, p1: np.ndarray, n0: int, n1: int, height: int) -> np.ndarray | None:
    """For each cell of an n0 x n1 grid (row-major), the tuple at (p0, p1), ``height`` where none;
    None when the tuples are the whole grid in row-major order."""
    lin = p0.astype(np.int64) * n1 + p1
    if height == n0 * n1 and np.array_equal(lin, np.arange(height)):
        return None
    at = np.full(n0 * n1, height, np.int64)
    at[lin] = np.arange(height)
    return _index(at)


def product(spec: Spec, x: Table, z: Table, filter: Table | None = None) -> Product:
    """The key side of the block product of ``x`` and ``z`` (only their keys and heights are
    read): output groups (a, b) with at least one c where x(a, c) and z(c, b) meet and, given
    ``filter``, a tuple of ``filter`` at (a, b)."""
    xa, xc = (x.keys[k].to_numpy() for k in (spec.x_free, spec.x_contracted))
    zc, zb = (z.keys[k].to_numpy() for k in (spec.z_contracted, spec.z_free))
    a_ids, (xa_pos,), n_a = _axis(xa)
    c_ids, (xc_pos, zc_pos), n_c = _axis(xc, zc)
    b_ids, (zb_pos,), n_b = _axis(zb)
    # block pairs that meet, counted per (a, b): the product of the two presence patterns
    px = sp.csr_matrix((np.ones(len(xa), np.int64), (xa_pos, xc_pos)), shape=(n_a, n_c))
    pz = sp.csr_matrix((np.ones(len(zb), np.int64), (zc_pos, zb_pos)), shape=(n_c, n_b))
    counts = (px @ pz).tocoo()
    ia, ib, n = counts.row.astype(np.int64), counts.col.astype(np.int64), counts.data
    if filter is not None:  # only groups where the filter relation has a tuple
        fa, fb = (filter.keys[k].to_numpy() for k in spec.filter_keys)
        wa, pa = _find(fa, a_ids, n_a)
        wb, pb = _find(fb, b_ids, n_b)
        _, at_a, at_b = np.intersect1d(wa, wb, assume_unique=True, return_indices=True)
        keep = np.isin(ia * n_b + ib, pa[at_a].astype(np.int64) * n_b + pb[at_b])
        ia, ib, n = ia[keep], ib[keep], n[keep]
    z_first = spec.order[0] == spec.out_keys[1]
    lin = ib * n_a + ia if z_first else ia * n_b + ib  # position in the result's block grid
    sort = np.argsort(lin, kind="stable")
    ia, ib, lin, n = ia[sort], ib[sort], lin[sort], n[sort]
    matched = int(n.sum())
    keys_a = ia if a_ids is None else a_ids[ia]
    keys_b = ib if b_ids is None else b_ids[ib]
    cols = {spec.out_keys[0]: keys_a.astype(np.int64), spec.out_keys[1]: keys_b.astype(np.int64)}
    out_keys = pl.DataFrame({k: cols[k] for k in spec.order})
    x_pos = {spec.x_free: xa_pos, spec.x_contracted: xc_pos}
    z_pos = {spec.z_contracted: zc_pos, spec.z_free: zb_pos}
    size = {spec.x_free: n_a, spec.x_contracted: n_c}
    x_grid = tuple(size[k] for k in spec.x_keys)
    size = {spec.z_contracted: n_c, spec.z_free: n_b}
    z_grid = tuple(size[k] for k in spec.z_keys)
    common = dict(x_grid=x_grid, z_grid=z_grid, out_grid=(n_a, n_b), z_first=z_first,
                  out_keys=out_keys, matched=matched, spec=spec)
    if n_a * n_c * n_b <= DENSE_SLACK * matched:
        x_at = _grid_at(x_pos[spec.x_keys[0]], x_pos[spec.x_keys[1]], *x_grid, x.height)
        z_at = _grid_at(z_pos[spec.z_keys[0]], z_pos[spec.z_keys[1]], *z_grid, z.height)
        out_at = None if len(lin) == n_a * n_b else _index(lin)  # sorted and unique: all = in order
        return Product("dense", x_at, z_at, out_at, **common)
    # gathered: every x(a, c), z(c, b) that meet at an output group, by group (ascending)
    groups = pl.DataFrame({"a": ia, "b": ib, "g": np.arange(len(ia))})
    pairs = (pl.DataFrame({"i": np.arange(len(xa)), "c": xc_pos, "a": xa_pos})
             .join(pl.DataFrame({"j": np.arange(len(zb)), "c": zc_pos, "b": zb_pos}), on="c")
             .join(groups, on=["a", "b"]).sort("g", maintain_order=True))
    return Product("gather", _index(pairs["i"].to_numpy()), _index(pairs["j"].to_numpy()),
                   _index(pairs["g"].to_numpy()), **common)


def restrict(p: Product, rows: np.ndarray) -> Product:
    """``p`` computing only its output groups ``rows`` (positions among ``p.out_keys``,
    ascending), in that order: the blocks it reads stay as they are."""
    rows = np.asarray(rows, np.int64)
    out_keys = p.out_keys[rows]
    if p.mode == "dense":
        lin = np.arange(p.out_grid[0] * p.out_grid[1]) if p.out_at is None else p.out_at
        at = np.asarray(lin, np.int64)[rows]
        full = len(at) == len(lin) and p.out_at is None
        return replace(p, out_at=None if full else _index(at), out_keys=out_keys)
    new = np.full(p.n_out, -1, np.int64)
    new[rows] = np.arange(len(rows))
    g = new[p.out_at]
    keep = np.flatnonzero(g >= 0)
    return replace(p, x_at=p.x_at[keep], z_at=p.z_at[keep], out_at=_index(g[keep]),
                   out_keys=out_keys, matched=len(keep))


def _dense(v, at, grid, shape):
    """A relation's blocks as the dense matrix they tile: block (i, j) of the grid is tuple
    ``at[i * n1 + j]`` (zeros out of range)."""
    (n0, n1), (p, q) = grid, shape
    if at is not None:
        v = jnp.take(v, at, axis=0, mode="fill", fill_value=0)
    return v.reshape(n0, n1, p, q).transpose(0, 2, 1, 3).reshape(n0 * p, n1 * q)


def _values(x, z, x_at, z_at, out_at, *, spec: Spec, mode: str, x_grid, z_grid, out_grid,
            z_first: bool, n_out: int):
    out_shape = spec.out_shape
    if not n_out:
        return jnp.zeros((0, *out_shape), spec.dtype)
    cx, cz = spec.contract
    if mode == "gather":
        xs, zs = jnp.take(x, x_at, axis=0), jnp.take(z, z_at, axis=0)
        each = lax.dot_general(xs, zs, (((cx + 1,), (cz + 1,)), ((0,), (0,))),
                               precision=spec.precision, preferred_element_type=spec.dtype)
        if spec.transpose:
            each = each.transpose(0, 2, 1)
        return jax.ops.segment_sum(each, out_at, num_segments=n_out, indices_are_sorted=True)
    X = _dense(x, x_at, x_grid, spec.x_shape)
    Z = _dense(z, z_at, z_grid, spec.z_shape)
    Y = lax.dot_general(X, Z, (((cx,), (cz,)), ((), ())), precision=spec.precision,
                        preferred_element_type=spec.dtype)
    (n_a, n_b), fx, fz = out_grid, spec.x_shape[1 - cx], spec.z_shape[1 - cz]
    grid = (2, 0) if z_first else (0, 2)  # the result's block grid, in the output keys' order
    inner = (3, 1) if spec.transpose else (1, 3)  # each block, as the kernel returns it
    blocks = Y.reshape(n_a, fx, n_b, fz).transpose(*grid, *inner).reshape(n_a * n_b, *out_shape)
    return blocks if out_at is None else jnp.take(blocks, out_at, axis=0)


_STATIC = ("spec", "mode", "x_grid", "z_grid", "out_grid", "z_first", "n_out")
_values_jit = jax.jit(_values, static_argnames=_STATIC)


def static(p: Product) -> dict:
    """The parts of ``p`` a traced program depends on, besides its index arrays."""
    return dict(spec=p.spec, mode=p.mode, x_grid=p.x_grid, z_grid=p.z_grid, out_grid=p.out_grid,
                z_first=p.z_first, n_out=p.n_out)


def apply_product(p: Product, x: jax.Array, z: jax.Array, x_at=None, z_at=None, out_at=None) -> jax.Array:
    """The output groups' blocks (in ``p.out_keys`` order) from the blocks of x and z, traceable:
    any index array of ``p`` (``INDEX``) may be passed in instead, e.g. as an argument of a
    compiled program, so it is not baked in as a constant."""
    return _values(x, z, p.x_at if x_at is None else x_at, p.z_at if z_at is None else z_at,
                   p.out_at if out_at is None else out_at, **static(p))


def run(p: Product, x: jax.Array, z: jax.Array) -> jax.Array:
    """``apply_product`` eagerly: one jitted program per spec and shapes, the index arrays
    passed as arguments (a new key pattern of the same shapes compiles nothing)."""
    index = {k: None if getattr(p, k) is None else jnp.asarray(getattr(p, k)) for k in INDEX}
    return _values_jit(x, z, **index, **static(p))

