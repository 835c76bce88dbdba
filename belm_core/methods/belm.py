"""The general k-step BELM with coefficients from `belm_core.derive` (docs/math.md §3–5).

    x̄_{i−1} = Σ_{j=1..k} a_{i,j} x̄_{i−1+j} + Σ_{j=1..k−1} b_{i,j} h_{i−1+j} ε(x_{i−1+j})

`BELM(k)` is the LTE-optimal member (order 2k−2 locally matched; unstable for k ≥ 3,
so the Solver refuses it unless told otherwise). `BELM(k, fix=…)` pins coefficients
and trades order for stability; `BELM.stable()` is the stable k = 3 family
ρ = (ζ−1)(ζ² − cζ + 1), order 2, with the c of smallest error constant.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ..grid import Grid
from .base import LinearMultistep, nan_tables


class BELM(LinearMultistep):
    """k-step BELM from a sympy derivation; `params` give values to free symbols in `fix`."""

    name = "belm"
    order: int

    def __init__(self, k: int = 2, *, fix: Mapping | None = None, derivation=None, **params: float):
        from ..derivation import derive

        self.derivation = derivation if derivation is not None else derive(k, fix=fix)
        self.k = self.derivation.k
        self.order = self.derivation.order
        self.params = {name: float(v) for name, v in params.items()}
        missing = sorted(str(s) for s in self.derivation.parameters if str(s) not in self.params)
        if missing:
            raise ValueError(f"BELM coefficients contain free parameters {missing}; pass values, e.g. BELM(..., {missing[0]}=0.5)")
        self._fix = dict(fix or {}) if derivation is None else {"a": self.derivation.a}

    @classmethod
    def stable(cls, k: int = 3, c: float | None = None) -> BELM:
        """The stable k = 3 family ρ = (ζ−1)(ζ² − cζ + 1), |c| < 2: order 2, stable both ways.

        The default c = BEST_STABLE_C3 minimises the error constant times the recurrence's
        error growth (see `belm_core.derivation`).

        Its a's are constants, so the b's must absorb the grid's step ratios: on grids
        whose steps change abruptly (h_{i+2}/h_i ≫ 10, e.g. the cosine schedule's top end
        where σ̄ ≈ 2·10⁴, or any 5–10-step grid on the linear schedule) its x-space
        coefficients grow like the ratio squared and sampling diverges (benchmarks/RESULTS.md).
        O-BELM, whose a_{i,2} = h_i²/h_{i+1}² damps the far state, has no such limit.

        The analogous k = 4 family (order 3 on
        paper) is not offered: measured on the analytic problem it diverges even on
        uniform grids, because ε's Lipschitz constant (~1/σ̄, stiff near the clean end)
        pushes its parasitic roots off the unit circle.
        """
        from ..derivation import BEST_STABLE_C3, stable_family

        if k != 3:
            raise ValueError(f"k={k!r}: BELM.stable implements the k = 3 family; use derive(k, fix=...) for others")
        c = BEST_STABLE_C3 if c is None else float(c)
        if not -2.0 < c < 2.0:
            raise ValueError(f"c={c!r} must lie in (−2, 2) for roots on the unit circle that are simple")
        method = cls(derivation=stable_family(k, c=c))
        method._fix = {"stable": True, "c": c}
        return method

    def signature(self) -> str:
        extra = "".join(f", {k}={v}" for k, v in sorted(self._fix.items(), key=str))
        extra += "".join(f", {k}={v!r}" for k, v in sorted(self.params.items()))
        return f"belm(k={self.k}{extra})"

    def bar_table(self, grid: Grid):
        k = self.k
        a, b = nan_tables(grid, k)
        n = grid.N - k + 1  # rows i = 1 … N−k+1
        if n > 0:
            H = np.stack([grid.h[1 + j : 1 + j + n] for j in range(k)], axis=1)  # H[r, j] = h_{i+j}
            a_rows, b_rows = self.derivation.evaluate(H, **self.params)
            a[1 : 1 + n] = a_rows
            b[1 : 1 + n, : k - 1] = b_rows
            b[1 : 1 + n, k - 1] = 0.0
        return a, b

    def stability(self):
        return self.derivation.stability(**self.params)
