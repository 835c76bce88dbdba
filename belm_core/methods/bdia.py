"""BDIA (Zhang et al., ECCV 2024) as a 2-step member of the BELM family (paper eq. 24).

In the grid's coordinates y = x/s, τ, f (docs/math.md §6, §11), with γ' = γ s_{i+1}/s_{i−1}:

    y_{i−1} = γ' y_{i+1} + (1 − γ') y_i − (h_i + γ' h_{i+1}) f(x_i, t_i)

i.e. a_{i,1} = 1 − γ', a_{i,2} = γ', b_{i,1} = −(h_i + γ' h_{i+1})/h_i. For ε-prediction
s = α, so γ' = γ α_{i+1}/α_{i−1} and this is the paper's bar form; for a flow's velocity
s = 1, so γ' = γ: x_{i−1} = γ x_{i+1} + (1 − γ) x_i − (h_i + γ h_{i+1}) v(x_i, t_i), i.e.
γ times the step back to x_{i+1} undone, plus the Euler step (γ = 1: the leapfrog rule
on uneven steps). Either way the x-space coefficient of x_{i+1} is γ itself, so the
inverse divides by γ every step: the round-off amplification is γ^{−N}. γ = 0 is DDIM;
any γ ≠ 0 is exactly invertible. First order.
"""

from __future__ import annotations

import numpy as np

from ..checks import is_real
from ..grid import Grid
from .base import LinearMultistep, Stability, p_family_tables


class BDIA(LinearMultistep):
    """BDIA with mixing γ (default 1.0)."""

    name = "bdia"
    k = 2
    order = 1

    def __init__(self, gamma: float = 1.0):
        if not is_real(gamma) or gamma < 0:
            raise ValueError(
                f"gamma={gamma!r} must be a finite real number ≥ 0 (BDIA uses γ in (0, 1]; γ = 0 is DDIM, "
                "which has no exact inverse, and γ > 1 is unstable when sampling)"
            )
        self.gamma = float(gamma)

    def signature(self) -> str:
        return f"bdia(gamma={self.gamma!r})"

    def check_invertible(self) -> None:
        if self.gamma == 0.0:
            raise ValueError("gamma=0.0 makes BDIA plain DDIM, which has no exact inverse; use gamma in (0, 1]")

    def bar_table(self, grid: Grid):
        # the p-family member p_i = γ' = γ s_{i+1}/s_{i−1}, rows i = 1 … N−1
        return p_family_tables(grid, self.gamma * grid.scale[2:] / grid.scale[:-2])

    def stability(self):
        # equal steps, α ratio → 1: ρ(ζ) = ζ² − (1−γ)ζ − γ = (ζ − 1)(ζ + γ)
        roots = np.array([1.0, -self.gamma])
        # γ ≥ 0 (checked at construction): stable when sampling for γ ≤ 1, inverting for γ ≥ 1
        return Stability(sampling=self.gamma <= 1.0, inverse=self.gamma == 1.0, roots=roots)
