"""O-BELM: the LTE-optimal 2-step BELM (paper Prop. 4, eq. 18–19; docs/math.md §4).

    a_{i,1} = (h_{i+1}² − h_i²)/h_{i+1}²,  a_{i,2} = h_i²/h_{i+1}²,  b_{i,1} = −(h_i + h_{i+1})/h_{i+1}

Second order, exactly invertible, stable in both directions (ρ = (ζ−1)(ζ+1) for equal
steps: the leapfrog rule x̄_{i−1} = x̄_{i+1} − 2h ε(x_i)). The coefficients depend on h
only, so they hold in any coordinates (docs/math.md §11): for a flow's velocity h_i = σ_i − σ_{i−1}
and x_{i−1} = a_{i,1} x_i + a_{i,2} x_{i+1} + b_{i,1} h_i v(x_i, t_i).
"""

from __future__ import annotations

import numpy as np

from ..grid import Grid
from .base import LinearMultistep, Stability, nan_tables


def obelm_bar_table(grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 18 coefficients for every row i = 1 … N−1 (h_i, h_{i+1} > 0 read from the grid)."""
    a, b = nan_tables(grid, 2)
    if grid.N >= 2:
        h_i, h_ip1 = grid.h[1:-1], grid.h[2:]
        r2 = (h_i / h_ip1) ** 2
        a[1:-1, 0] = 1.0 - r2
        a[1:-1, 1] = r2
        b[1:-1, 0] = -(h_i + h_ip1) / h_ip1
        b[1:-1, 1] = 0.0
    return a, b


class OBELM(LinearMultistep):
    """O-BELM (k = 2, order 2, 1 NFE per step)."""

    name = "o-belm"
    k = 2
    order = 2

    def bar_table(self, grid):
        return obelm_bar_table(grid)

    def stability(self):
        return Stability(sampling=True, inverse=True, roots=np.array([1.0, -1.0]))

