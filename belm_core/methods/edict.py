"""EDICT (Wallace et al., CVPR 2023): two coupled DDIM sequences with mixing p (MATH.md §6).

With a_i = α_{i−1}/α_i and b_i = σ_{i−1} − σ_i a_i (one DDIM step in x-space), a step
on the pair (x, y) at grid index i is

    x' = a_i x + b_i ε(y, t_i);   y' = a_i y + b_i ε(x', t_i)
    x_new = p x' + (1 − p) y';    y_new = p y' + (1 − p) x_new

and the inverse undoes the four lines in reverse order. Two model calls per step.
The mixing layer has determinant p² per step, so the round-off amplification of a
full inversion is p^{−2N}. First order.
"""

from __future__ import annotations

import math

from .. import recurrence
from ..grid import Grid
from .base import Carry, Method

lc = recurrence.linear_combination


class EDICT(Method):
    """EDICT with mixing p (default 0.93)."""

    name = "edict"
    k = 2
    order = 1
    nfe_per_step = 2

    def __init__(self, p: float = 0.93):
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or not 0.0 <= p <= 1.0:
            raise ValueError(f"p={p!r} must be a real number in (0, 1] (EDICT's mixing weight, typically 0.93)")
        self.p = float(p)

    @property
    def min_steps(self) -> int:
        return 1

    def signature(self) -> str:
        return f"edict(p={self.p!r})"

    def check_invertible(self) -> None:
        if self.p == 0.0:
            raise ValueError("p=0.0 makes EDICT's mixing layer singular; inversion needs p in (0, 1]")

    def prepare(self, grid: Grid):
        a = grid.alpha[:-1] / grid.alpha[1:]  # a_i for i = 1 … N at position i − 1
        b = grid.sigma[:-1] - grid.sigma[1:] * a
        return {"grid": grid, "a": [float("nan")] + a.tolist(), "b": [float("nan")] + b.tolist()}

    def start(self, plan, x, index):
        return Carry(index=index, xs=(x, x))

    def from_latent(self, plan, states, index):
        return Carry(index=index, xs=tuple(states))

    def inverse_start(self, plan, x0):
        return Carry(index=0, xs=(x0, x0))

    def latent_states(self, carry):
        return carry.xs

    def output(self, carry):
        return carry.xs[0]

    def step(self, plan, carry, evaluate):
        i, (x, y), p = carry.index, carry.xs, self.p
        a, b = plan["a"][i], plan["b"][i]
        x_mid = lc([a, b], [x, evaluate(y, i)])
        y_mid = lc([a, b], [y, evaluate(x_mid, i)])
        x_new = lc([p, 1.0 - p], [x_mid, y_mid])
        y_new = lc([p, 1.0 - p], [y_mid, x_new])
        return Carry(index=i - 1, xs=(x_new, y_new))

    def inverse_step(self, plan, carry, evaluate):
        i, (x_new, y_new), p = carry.index + 1, carry.xs, self.p
        a, b = plan["a"][i], plan["b"][i]
        y_mid = lc([1.0 / p, -(1.0 - p) / p], [y_new, x_new])
        x_mid = lc([1.0 / p, -(1.0 - p) / p], [x_new, y_mid])
        y = lc([1.0 / a, -b / a], [y_mid, evaluate(x_mid, i)])
        x = lc([1.0 / a, -b / a], [x_mid, evaluate(y, i)])
        return Carry(index=i, xs=(x, y))

    def amplification(self, plan, until):
        return self.p ** (-2 * until)
