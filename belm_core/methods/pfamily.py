"""The one-parameter family of exact 2-step methods with ε at the middle state (docs/math.md §12).

Row i (1 ≤ i ≤ N−1) of every member, in bar form (x̄ = x/α, h_i = σ̄_i − σ̄_{i−1}):

    x̄_{i−1} = (1 − p_i) x̄_i + p_i x̄_{i+1} − (h_i + p_i h_{i+1}) ε(x_i, t_i)

i.e. a_{i,1} = 1 − p_i, a_{i,2} = p_i, b_{i,1} = −(h_i + p_i h_{i+1})/h_i, b_{i,2} = 0.
These are all the 2-step relations of this shape that are exact on x̄ = const and on
x̄ = a + bσ̄ (where DDIM is exact); each p_i ≠ 0 is exactly invertible:

    x̄_{i+1} = (x̄_{i−1} − (1 − p_i) x̄_i + (h_i + p_i h_{i+1}) ε(x_i, t_i)) / p_i.

Members (`rule=`):

* "o-belm": p_i = (h_i/h_{i+1})² — O-BELM (paper eq. 18), order 2;
* "bdia":   p_i = α_{i+1}/α_{i−1} — BDIA with γ = 1 (docs/math.md §6), order 1;
* "dpl":    p_i = σ̄_{i−1}/σ̄_{i+1} — the data-prediction leapfrog
            y_{i−1} = y_{i+1} + (τ_{i−1} − τ_{i+1}) x̂0(x_i), y = x/σ, τ = α/σ; it sits on
            the stiff stability bound p_i ≤ σ̄_{i−1}/σ̄_{i+1}; row 1 uses O-BELM's p_1
            (σ̄_0 = 0 makes DPL's p_1 = 0, which has no inverse); order 1 (the clean end
            degrades it; order 2 where σ̄ stays away from 0);
* "dpl-ob": DPL where σ̄_i > s, O-BELM's (h_i/h_{i+1})² where σ̄_i ≤ s (and on row 1);
            s = 0.3 by default (σ̄ in data units). DPL's accuracy at low NFE, O-BELM's
            order 2 near the clean end, and inverted latents that converge to the exact
            ODE inversion. Order 2 on smoothly graded grids (every spacing the schedules
            offer). Registered as "dpl-ob". On the clean end of a uniform-in-t grid
            (σ̄_i ∝ √i) O-BELM's rows have q_i ≈ 1 + 2/i > 1 (`stiff_ratio`): sampling
            multiplies the parasitic component arriving from the DPL rows by Π q_i, and
            inversion divides the one its first step makes by it, which is what makes the
            latents converge (docs/math.md §27).

`shift=f` (0 ≤ f ≤ 1) reads ε̂_i = (σ̄*_i/σ̄_i) ε(α(t*_i) x̄_i, t*_i) at a shifted noise level
σ̄*_i instead of ε(x_i, t_i) (docs/math.md §13, `belm_core.methods.shift`): still a function
of x_i alone, so still exact, and with f = 1 exact on one more shape on any p. "dpl-ob-shift"
(registered; `PFamily.shifted()`) is dpl-ob with f = ½: order 2 on smooth grids, as dpl-ob.
Its last row keeps σ̄*_1 = σ̄_1 (O-BELM's p_1 is already exact on the shape x̂0 = a − cσ̄²).
`shift_last=True` moves that row too when σ̄_1 > s, to where x̂0 linear in σ̄ wants it
(about 0.93 σ̄_1 with f = ½ on a trailing grid): "dpl-ob-shift-last" (registered;
`PFamily.shifted_last()`), the rows of "dpl-ob-traj" (`belm_core.methods.trajectory`) that
do not read on the trajectory, and the recommended sampler before it. One row with an
O(h_1²) local error, so still order 2. `shift_last="after-dpl"` moves it whenever the row
above it is a DPL row (σ̄_2 > s), the crossing §13's rule is about, also where σ̄_1 ≤ s: the
recommended sampler's rows (docs/math.md §24).

DPL's rows are neutral in the stiff directions (q_i = 1, see `stiff_ratio`), as the
leapfrog is: on grids whose step ratio jumps from step to step (alternating or jittered
steps, only reachable through `timesteps=`) "dpl" and "dpl-ob" stop converging, while
O-BELM keeps order 2 (tests/test_pfamily.py). The research prototype's bottom rule
max((h_i/h_{i+1})², σ̄_{i−1}/σ̄_{i+1}) equals O-BELM's on every spacing grid but its
parasitic product Π p_i grows like (4·σ̄_{i−1}/σ̄_{i+1})^{N/2} on alternating steps, so
it is not used.

On a flow's velocity grid (y = x, τ = σ, f = v; docs/math.md §11, §14) the rows are the same
relations written in (x, σ): p is the x_{i+1} weight in the grid's y = x/s, O-BELM's p uses
h in σ, BDIA's is s_{i+1}/s_{i−1} = 1, and DPL's is ν_{i−1}/ν_{i+1} with ν = σ/s (σ̄ in
bar coordinates, σ on a flow), the same x-space relation as in bar coordinates. The
evaluation shift is ε-prediction only.

Or `phi=`: the member also exact on x̄ = φ(σ̄) (`belm_core.derivation.shapes`):

    p_i = R_φ(σ̄_{i−1}, σ̄_i) / R_φ(σ̄_{i+1}, σ̄_i),   R_φ(a, b) = φ(a) − φ(b) − (a − b) φ′(b);

φ = σ̄² is O-BELM. Order 2 for φ with φ″ ≠ 0 on the grid's range. Beware: shapes whose p
exceeds σ̄_{i−1}/σ̄_{i+1} (e.g. √(c² + σ̄²)) break the stiff bound and diverge on trained
networks (`PFamily.stiff_ratio`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

import numpy as np

from ..checks import is_real
from ..grid import Grid
from .base import LinearMultistep, MultistepPlan, Stability, p_family_tables
from .shift import evaluation_shift

__all__ = ["PFamily", "PRule", "P_RULES", "AFTER_DPL"]

PRule = Literal["o-belm", "bdia", "dpl", "dpl-ob"]
P_RULES: tuple[str, ...] = ("o-belm", "bdia", "dpl", "dpl-ob")
_ORDER = {"o-belm": 2, "bdia": 1, "dpl": 1, "dpl-ob": 2}
DEFAULT_S = 0.3
DEFAULT_SHIFT = 0.5
#: `shift_last`'s value that shifts the last row whenever the row above it is a DPL row (σ̄_2 > s)
AFTER_DPL = "after-dpl"


class PFamily(LinearMultistep):
    """A p-family member (k = 2, 1 NFE per step) from a named `rule` or a shape `phi`.

    Args:
        rule: "dpl-ob" (default), "dpl", "o-belm" or "bdia" (module docstring).
        phi: a sympy expression in one symbol (σ̄), or a callable taking a sympy symbol;
            instead of `rule`. sympy is imported only when `phi` is given.
        s: the σ̄ threshold of "dpl-ob" below which O-BELM's p may take over (and above which
            `shift_last` moves the last row).
        shift: the fraction f ∈ [0, 1] of the evaluation shift (0: ε at (x_i, t_i)); ε-prediction only.
        shift_last: also shift the last row (row 1) when σ̄_1 > s, to where x̂0 linear in σ̄ wants
            it (`belm_core.methods.shift`, docs/math.md §13); needs shift > 0. "after-dpl": shift it
            whenever the row above it is a DPL row, σ̄_2 > s (docs/math.md §24).
    """

    k = 2

    def __init__(self, rule: PRule | None = "dpl-ob", *, phi: Any = None, s: float = DEFAULT_S, shift: float = 0.0,
                 shift_last: bool | str = False):
        if phi is not None:
            from ..derivation.shapes import shape_p

            self.rule, self.shape = None, shape_p(phi)
            self.order = 2
            self.name = f"p-family(phi={self.shape.phi})"
        elif rule in P_RULES:
            self.rule, self.shape = rule, None
            self.order = _ORDER[rule]
            self.name = rule if rule in ("dpl", "dpl-ob") else f"p-family({rule})"
        else:
            raise ValueError(f"rule={rule!r} must be one of {list(P_RULES)} (or pass phi=)")
        if not is_real(s) or s < 0:
            raise ValueError(f"s={s!r} must be a finite real number ≥ 0 (the σ̄ below which dpl-ob uses O-BELM's p)")
        self.s = float(s)
        if self.rule == "dpl-ob" and self.s != DEFAULT_S:
            self.name = f"dpl-ob(s={self.s!r})"
        if not is_real(shift) or not 0.0 <= shift <= 1.0:
            raise ValueError(f"shift={shift!r} must be a real number in [0, 1] (0: ε at t_i; 1: the full shift of docs/math.md §13)")
        self.shift = float(shift)
        if not isinstance(shift_last, (bool, np.bool_)) and shift_last != AFTER_DPL:
            raise TypeError(f"shift_last={shift_last!r} must be True, False or {AFTER_DPL!r}")
        if shift_last and not self.shift:
            raise ValueError(f"shift_last={shift_last!r} shifts the last row like the others: it needs shift > 0 (e.g. 0.5)")
        self.shift_last = AFTER_DPL if shift_last == AFTER_DPL else bool(shift_last)
        if self.name == "dpl-ob" and self.shift == DEFAULT_SHIFT and self.shift_last != AFTER_DPL:
            self.name = "dpl-ob-shift-last" if self.shift_last else "dpl-ob-shift"
        elif self.shift:
            extra = f"shift={self.shift!r}" + (f", shift_last={self.shift_last!r}" if self.shift_last else "")
            self.name = f"{self.name}({extra})" if "(" not in self.name else f"{self.name[:-1]}, {extra})"

    @classmethod
    def shifted(cls) -> PFamily:
        """"dpl-ob-shift": dpl-ob with ε read at the half-way shifted noise level (shift = 0.5,
        docs/math.md §13); the last row reads ε at t_1."""
        return cls("dpl-ob", shift=DEFAULT_SHIFT)

    @classmethod
    def shifted_last(cls) -> PFamily:
        """"dpl-ob-shift-last": "dpl-ob-shift" whose last row, too, reads x̂0 at a shifted level
        when σ̄_1 > s (docs/math.md §13), the sampler `belm_core.recommended` returns."""
        return cls("dpl-ob", shift=DEFAULT_SHIFT, shift_last=True)

    def p(self, grid: Grid) -> np.ndarray:
        """p_i for rows i = 1 … N−1, as an array of shape (N+1,) (NaN outside the rows)."""
        N = grid.N
        p = np.full(N + 1, np.nan)
        if N < 2:
            return p
        i = np.arange(1, N)
        sb, h = grid.sigma_bar, grid.h
        obelm = (h[i] / h[i + 1]) ** 2
        nu = _noise_per_scale(grid)
        dpl = nu[i - 1] / nu[i + 1]
        if self.shape is not None:
            p[i] = self.shape.evaluate(sb[i - 1], sb[i], sb[i + 1])
        elif self.rule == "o-belm":
            p[i] = obelm
        elif self.rule == "bdia":
            p[i] = grid.scale[i + 1] / grid.scale[i - 1]
        else:
            p[i] = dpl if self.rule == "dpl" else np.where(sb[i] <= self.s, obelm, dpl)
            p[1] = obelm[0]  # σ̄_0 = 0 would make DPL's p_1 = 0: no inverse
        bad = i[~(np.isfinite(p[i]) & (p[i] != 0))]
        if bad.size:
            raise ValueError(
                f"{self.signature()}: p_i is zero or not finite on rows {bad[:5].tolist()} of this grid "
                f"(p = {p[bad[:5]].tolist()}); a p-family row is invertible only for a finite p_i ≠ 0"
            )
        return p

    def stiff_ratio(self, grid: Grid) -> np.ndarray:
        """q_i = p_i σ̄_{i+1}/σ̄_{i−1}: the parasitic root in y = x/σ (stiff directions); stable needs q_i ≤ 1."""
        p = self.p(grid)
        q = np.full_like(p, np.nan)
        i = np.arange(1, grid.N)
        with np.errstate(divide="ignore"):
            nu = _noise_per_scale(grid)
            q[i] = p[i] * nu[i + 1] / nu[i - 1]
        return q

    def bar_table(self, grid: Grid):
        return p_family_tables(grid, self.p(grid)[1:-1])

    def prepare(self, grid: Grid) -> MultistepPlan:
        plan = super().prepare(grid)
        if not self.shift or grid.N < 2:
            return plan
        if grid.prediction != "epsilon":
            raise ValueError(
                f"{self.signature()}: the evaluation shift reads x̂0 at another noise level in bar coordinates "
                f"(ε-prediction); this grid runs prediction={grid.prediction!r}: use shift=0"
            )
        return replace(plan, shift=evaluation_shift(grid, self.p(grid), self.shift, self.shifts_last(grid)))

    def shifts_last(self, grid: Grid) -> bool:
        """Whether the last row reads x̂0 at its σ̄-linear shifted level (`shift_last`): σ̄_1 > s, or
        with "after-dpl" σ̄_2 > s (the row above it is a DPL row)."""
        if not self.shift_last:
            return False
        return bool(grid.sigma_bar[2 if self.shift_last == AFTER_DPL else 1] > self.s)

    def stability(self):
        # equal steps far from the clean end: p → 1, ρ(ζ) = (ζ − 1)(ζ + 1), the leapfrog's roots
        return Stability(sampling=True, inverse=True, roots=np.array([1.0, -1.0]))


def _noise_per_scale(grid: Grid) -> np.ndarray:
    """ν_i = σ_i/s_i: σ̄_i in bar coordinates (ε-prediction), σ_i on a flow's (x, σ) coordinates.

    The data-prediction coordinates y′ = x/σ, τ′ = α/σ relate to the grid's y = x/s by
    y′ = y/ν, so the x_{i+1} weight p in y is the weight p ν_{i−1}/ν_{i+1} in y′: DPL
    (weight 1 in y′) is p_i = ν_{i−1}/ν_{i+1}, and the stiff ratio is q_i = p_i ν_{i+1}/ν_{i−1}.
    """
    return grid.sigma_bar if grid.prediction == "epsilon" else grid.sigma / grid.scale
