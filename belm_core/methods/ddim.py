"""DDIM (Song et al. 2021): the k = 1 member, x̄_{i−1} = x̄_i − h_i ε(x_i, t_i) (docs/math.md §2).

Its inversion x̄_i ≈ x̄_{i−1} + h_i ε(x_{i−1}, t_i) evaluates ε at the point it starts
from, so sample(invert(x_0)) ≠ x_0: the O(h) baseline the exact methods are measured
against.

In the grid's coordinates (docs/math.md §11) the same rule is y_{i−1} = y_i − h_i f(x_i, t_i):
for a flow's velocity (y = x, τ = σ) it is the Euler step x_{i−1} = x_i + (σ_{i−1} − σ_i) v,
i.e. diffusers' `FlowMatchEulerDiscreteScheduler`.
"""

from __future__ import annotations

import numpy as np

from ..grid import Grid
from .base import LinearMultistep, nan_tables


def ddim_bar_table(grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """a_{i,1} = 1, b_{i,1} = −1 for i = 1 … N."""
    a, b = nan_tables(grid, 1)
    a[1:], b[1:] = 1.0, -1.0
    return a, b


class DDIM(LinearMultistep):
    """Deterministic DDIM; its `invert` is the usual inexact DDIM inversion."""

    name = "ddim"
    k = 1
    order = 1
    exact = False

    def bar_table(self, grid):
        return ddim_bar_table(grid)

    def amplification(self, plan, until):
        return 1.0
