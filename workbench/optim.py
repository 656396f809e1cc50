"""First-order optimizers over parameter relations.

A model's parameters are relations (a weight matrix is a one-tuple relation, node embeddings a
relation keyed by node). ``update`` takes the parameters and their gradient relations, lines each
gradient up with its parameter's tuples (a gradient may list its tuples in another order, or
leave out tuples whose gradient is zero) and returns new parameter relations with the same keys.
The arithmetic runs in one compiled JAX function per parameter shape.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp

from workbench.relation import Relation


def _check(params: Sequence[Relation], grads: Sequence[Relation], what: str) -> None:
    if len(params) != len(grads):
        raise ValueError(f"{what}: {len(params)} parameter relation(s) but {len(grads)} gradient(s)")


@partial(jax.jit, static_argnames=("lr", "momentum"))
def _sgd_step(p, g, velocity, lr, momentum):
    velocity = momentum * velocity + g  # v <- mu v + g;  p <- p - lr v
    return p - lr * velocity, velocity


@dataclass(frozen=True)
class SGD:
    """Gradient descent with optional momentum."""

    lr: float = 0.01
    momentum: float = 0.0

    def init(self, params: Sequence[Relation]):
        return tuple(jnp.zeros_like(p.table().values) for p in params)

    def update(self, params: Sequence[Relation], grads: Sequence[Relation], state):
        _check(params, grads, "SGD.update")
        new, vel = [], []
        for p, g, v in zip(params, grads, state):
            value, v = _sgd_step(p.table().values, g.values_like(p), v, self.lr, self.momentum)
            new.append(p.with_values(value))
            vel.append(v)
        return tuple(new), tuple(vel)


@partial(jax.jit, static_argnames=("lr", "b1", "b2", "eps"))
def adam_step(p, g, m, v, t, lr, b1, b2, eps):
    m = b1 * m + (1 - b1) * g  # first and second moment estimates
    v = b2 * v + (1 - b2) * g * g
    m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)  # bias correction at step t
    return p - lr * m_hat / (jnp.sqrt(v_hat) + eps), m, v


@dataclass(frozen=True)
class Adam:
    """Adam (Kingma and Ba, 2015), the optimizer of the paper's GCN experiments."""

    lr: float = 0.01
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8

    def init(self, params: Sequence[Relation]):
        zeros = tuple(jnp.zeros_like(p.table().values) for p in params)
        return (0, zeros, zeros)

    def update(self, params: Sequence[Relation], grads: Sequence[Relation], state):
        _check(params, grads, "Adam.update")
        step, ms, vs = state
        step += 1
        new, new_m, new_v = [], [], []
        for p, g, m, v in zip(params, grads, ms, vs):
            value, m, v = adam_step(p.table().values, g.values_like(p), m, v, step,
                                     self.lr, self.b1, self.b2, self.eps)
            new.append(p.with_values(value))
            new_m.append(m)
            new_v.append(v)
        return tuple(new), (step, tuple(new_m), tuple(new_v))
