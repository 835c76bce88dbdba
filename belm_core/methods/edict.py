"""EDICT (Wallace et al., CVPR 2023): two coupled DDIM sequences with mixing p (docs/math.md §6).

With x_{i−1} = a_i x_i + b_i f(x_i, t_i) one DDIM step in x-space, in the grid's
coordinates (docs/math.md §11): a_i = s_{i−1}/s_i, b_i = −h_i s_{i−1}, the k = 1 row of the
recurrence's x-space table. For ε-prediction that is a_i = α_{i−1}/α_i and
b_i = −α_{i−1}(σ̄_i − σ̄_{i−1}) = σ_{i−1} − σ_i a_i (the paper's form); for a flow's
velocity a_i = 1, b_i = −(σ_i − σ_{i−1}) (an Euler step). A step on the pair (x, y) at
grid index i is

    x' = a_i x + b_i ε(y, t_i);   y' = a_i y + b_i ε(x', t_i)
    x_new = p x' + (1 − p) y';    y_new = p y' + (1 − p) x_new

and the inverse undoes the four lines in reverse order. Two model calls per step.

With `alternate=True` the two chains take turns updating first, as the official EDICT
code does by default ("leapfrog steps"): on every other step, counted from the first
sampling step at i = N (so at the i with N − i odd), the chain updates read

    y' = a_i y + b_i ε(x, t_i);   x' = a_i x + b_i ε(y', t_i)

and the mixing layer is unchanged. The parity is tied to the grid index, so a partial
inversion and the sampling that continues from it agree on it.
The mixing layer has determinant p² per step, so the round-off amplification of a
full inversion is p^{−2N}. First order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .. import recurrence
from ..checks import is_bool, is_real
from ..grid import Grid
from .base import Carry, Evaluate, Method

lc = recurrence.linear_combination


@dataclass(frozen=True, eq=False)
class EdictPlan:
    """EDICT on one grid: the DDIM step a_i = s_{i−1}/s_i, b_i = −h_i s_{i−1} (index i; [0] is NaN)."""

    grid: Grid
    a: tuple[float, ...]
    b: tuple[float, ...]


class EDICT(Method):
    """EDICT with mixing p (default 0.93); `alternate=True` swaps the update order every other step."""

    name = "edict"
    k = 2
    order = 1
    nfe_per_step = 2

    def __init__(self, p: float = 0.93, *, alternate: bool = False):
        if not is_real(p) or not 0.0 < p <= 1.0:
            raise ValueError(f"p={p!r} must be a real number in (0, 1] (EDICT's mixing weight, typically 0.93)")
        if not is_bool(alternate):
            raise TypeError(f"alternate={alternate!r} must be a bool")
        self.p = float(p)
        self.alternate = bool(alternate)

    @property
    def min_steps(self) -> int:
        return 1

    def signature(self) -> str:
        return f"edict(p={self.p!r}" + (", alternate=True)" if self.alternate else ")")

    def prepare(self, grid: Grid) -> EdictPlan:
        s, tau = grid.scale, grid.tau
        a = s[:-1] / s[1:]  # a_i = s_{i−1}/s_i for i = 1 … N at position i − 1
        # b_i = −h_i s_{i−1}, written as s_{i−1}τ_{i−1} − a_i s_i τ_i: for ε-prediction (sτ = σ) this is the
        # paper's σ_{i−1} − σ_i a_i with its rounding; it equals the DDIM row d_{i,1} of the recurrence's table
        b = s[:-1] * tau[:-1] - (s[1:] * tau[1:]) * a
        return EdictPlan(grid=grid, a=(math.nan, *a.tolist()), b=(math.nan, *b.tolist()))

    def start(self, plan, x, index):
        return Carry(index=index, xs=(x, x))

    def from_latent(self, plan, states, index):
        return Carry(index=index, xs=tuple(states))

    def inverse_start(self, plan, x0):
        return Carry(index=0, xs=(x0, x0))

    def latent_states(self, carry):
        return carry.xs

    def head(self, carry, direction):
        return carry.index, carry.xs[0]

    def swapped(self, plan: EdictPlan, i: int) -> bool:
        """y updates first at grid index i (alternate mode, N − i odd)."""
        return self.alternate and (plan.grid.N - i) % 2 == 1

    def step(self, plan: EdictPlan, carry: Carry, evaluate: Evaluate) -> Carry:
        i, (x, y), p = carry.index, carry.xs, self.p
        a, b = plan.a[i], plan.b[i]
        if self.swapped(plan, i):
            y_mid = lc([a, b], [y, evaluate(x, i)])
            x_mid = lc([a, b], [x, evaluate(y_mid, i)])
        else:
            x_mid = lc([a, b], [x, evaluate(y, i)])
            y_mid = lc([a, b], [y, evaluate(x_mid, i)])
        x_new = lc([p, 1.0 - p], [x_mid, y_mid])
        y_new = lc([p, 1.0 - p], [y_mid, x_new])
        return Carry(index=i - 1, xs=(x_new, y_new))

    def inverse_step(self, plan: EdictPlan, carry: Carry, evaluate: Evaluate) -> Carry:
        i, (x_new, y_new), p = carry.index + 1, carry.xs, self.p
        a, b = plan.a[i], plan.b[i]
        y_mid = lc([1.0 / p, -(1.0 - p) / p], [y_new, x_new])
        x_mid = lc([1.0 / p, -(1.0 - p) / p], [x_new, y_mid])
        if self.swapped(plan, i):
            x = lc([1.0 / a, -b / a], [x_mid, evaluate(y_mid, i)])
            y = lc([1.0 / a, -b / a], [y_mid, evaluate(x, i)])
        else:
            y = lc([1.0 / a, -b / a], [y_mid, evaluate(x_mid, i)])
            x = lc([1.0 / a, -b / a], [x_mid, evaluate(y, i)])
        return Carry(index=i, xs=(x, y))

    def amplification(self, plan, until):
        return self.p ** (-2 * until)

