"""Placement on a partitioned runner: which hash columns an operator's inputs must share for it
to run partition by partition, and which columns its output stays hashed on. Pure functions of
plan nodes; the runner moves the data."""
from __future__ import annotations

from workbench.physical import PairJoin
from workbench.plan import Join, Node


def renamed(by: tuple[str, ...], pairs) -> tuple[str, ...] | None:
    """``by`` under an (out, in) key projection, or None when a column does not survive it."""
    out = []
    for b in by:
        names = [o for o, i in pairs if i == b]
        if not names:
            return None
        out.append(names[0])
    return tuple(out)


def keyless_output(node: Node, by) -> tuple[str, ...] | None:
    """A keyed output must stay hashed on some key: () is only right for a keyless output."""
    if by == () and node.schema.keys:
        return None
    return by


def join_output_columns(node: Join, side: str, by: tuple[str, ...]) -> tuple[str, ...] | None:
    """The output keys that carry ``side``'s hash columns ``by`` (directly or through a key
    joined on), or None when the projection drops one."""
    cls = node.pair_classes()
    out_cls = {}
    for o, s, k in node.keys:
        out_cls.setdefault(cls[(s, k)], o)
    names = [out_cls.get(cls[(side, b)]) for b in by]
    return None if any(n is None for n in names) else tuple(names)


def pair_columns(node: PairJoin):
    """How a PairJoin is partitioned: hash columns of (L, R, C), None for a broadcast side, and
    the pairs' hash columns; or None when the pairs cannot be co-partitioned with C (then the
    runner leaves the join RJP unfused)."""
    name = {(s, k): o for o, s, k in node.pair_keys}  # (side, key) -> the pairs' key name
    for l, r in node.pair_on:
        name.setdefault(("right", r), name[("left", l)])
    ckey = dict(node.on)  # pair key -> C key
    lkeys, rkeys = node.left.schema.keys, node.right.schema.keys
    if not node.cotangent.schema.keys or (not lkeys and not rkeys):
        return None
    if not lkeys or not rkeys:  # a keyless side (a weight) is broadcast
        side, keys = ("left", lkeys) if lkeys else ("right", rkeys)
        cols = tuple(k for k in keys if name[(side, k)] in ckey)
        if not cols:
            return None
        pcols = tuple(name[(side, k)] for k in cols)
        return ((cols, None) if side == "left" else (None, cols)) + (tuple(ckey[c] for c in pcols), pcols)
    if not node.pair_on or any(name[("left", l)] not in ckey for l, _ in node.pair_on):
        return None
    pcols = tuple(name[("left", l)] for l, _ in node.pair_on)
    return (tuple(l for l, _ in node.pair_on), tuple(r for _, r in node.pair_on),
            tuple(ckey[c] for c in pcols), pcols)
