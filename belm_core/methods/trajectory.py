"""Reading x̂0 on the trajectory ahead, with a velocity register in the latent (docs/math.md §16).

The evaluation shift (`belm_core.methods.shift`, docs/math.md §13) reads x̂0 of the *fixed*
bar state x̄_i at another noise level and corrects for not having moved along the
trajectory with a Gaussian rule of thumb (the half-way level). A row that knew the
trajectory's velocity dx̄/dσ̄ = ε near x_i could instead read x̂0 where the trajectory *is*
at the level σ̄_m,i the row wants it:

    P̄_i = x̄_i + (σ̄_m,i − σ̄_i) ε̃_i,     x̂0_i = P̄_i − σ̄_m,i ε(α_m P̄_i, t_m),
    ε̂_i = (x̄_i − x̂0_i)/σ̄_i = (σ̄_m,i/σ̄_i) ε(α_m P̄_i, t_m) − ((σ̄_m,i − σ̄_i)/σ̄_i) ε̃_i.

A p-family row (docs/math.md §12) stays exactly invertible as long as ε̂_i is a function of
what *both* directions know when they reach row i. The states x_{i+1} (sampling) and
x_{i−1} (inversion) are not shared, so ε̃_i cannot be a finite difference of them. It comes
from a register w that travels with the states, an alternating sum of the secant
velocities of the rows already taken:

    E_i = (x̄_i − x̄_{i−1})/h_i,       w_i = E_i − w_{i+1}       (sampling, after row i)
                                     w_{i+1} = E_i − w_i       (inversion, before row i)

Both directions know E_i when they need it, and |−1| = 1 keeps the register bounded in
both. For smooth secants the alternating sum has the smooth part
w_{i+1} ≈ ¾ E_{i+1} − ¼ E_{i+2} (Abel summation: Σ(−1)^k g_k = g_0/2 − Δg_0/4 + 0·Δ²g_0 + …),
so ε̃_i = 2 w_{i+1} ≈ 3/2 E_{i+1} − 1/2 E_{i+2} extrapolates the secants to x_i. The register
starts at w = E/2 (its smooth part for a constant velocity) from the first two states either
direction holds; the difference oscillates as (−1)^i and stays bounded.

Which rows read on the trajectory: the DPL rows (σ̄_i > s, i ≥ 2) whose step ratio
σ̄_{i+1}/σ̄_{i−1} is below `max_ratio` (6): on coarser rows the secant velocity is a poor
guide and the fixed-state shift stays. Their level is the τ-midpoint of §13 damped by
`reach` (¾): σ̄_m = σ̄_i + ¾ (2/(τ_{i−1} + τ_{i+1}) − σ̄_i), rounded to a training timestep
on a discrete schedule (σ̄_m = σ̄(t_m)). Every other row is the recommended "dpl-ob-shift-last"
row (fixed-state half-way shift, the last row moved when σ̄_1 > s). One model call per row.

The Latent holds three arrays: (x_N, x_{N−1}, w_N). Order 2 (the reading moves x̂0 by
O(h²) on smoothly graded grids). ε-prediction only, like the evaluation shift.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .. import recurrence
from ..checks import is_real
from ..grid import Grid
from .base import Carry, Evaluate, MultistepPlan
from .pfamily import DEFAULT_S, DEFAULT_SHIFT, PFamily
from .shift import model_times, trajectory_level

__all__ = ["TrajectoryReading", "DEFAULT_REACH", "DEFAULT_MAX_RATIO"]

DEFAULT_REACH = 0.75
DEFAULT_MAX_RATIO = 6.0


@dataclass(frozen=True, eq=False)
class ReadingPlan(MultistepPlan):
    """A p-family plan plus, for the rows that read on the trajectory, their model level:
    `reading[i] = (t_m, α_m/s_i, σ̄_m)`."""

    reading: dict = field(default_factory=dict)


class TrajectoryReading(PFamily):
    """"dpl-ob-traj": dpl-ob-shift-last whose fine DPL rows read x̂0 on the trajectory ahead,
    extrapolated with a velocity register carried in the latent (module docstring).

    Args:
        reach: fraction f ∈ (0, 1] of the way from σ̄_i to the τ-midpoint level at which
            trajectory rows read x̂0 (0.75).
        max_ratio: trajectory rows need σ̄_{i+1}/σ̄_{i−1} < max_ratio (> 1; 6).
        s: the σ̄ below which rows are O-BELM rows (as "dpl-ob").
        shift_last: when the last row reads at its shifted level: True (σ̄_1 > s) or "after-dpl"
            (σ̄_2 > s; the recommended rows, docs/math.md §24), as `PFamily`.
    """

    def __init__(self, reach: float = DEFAULT_REACH, max_ratio: float = DEFAULT_MAX_RATIO, *, s: float = DEFAULT_S,
                 shift_last: bool | str = True):
        super().__init__("dpl-ob", s=s, shift=DEFAULT_SHIFT, shift_last=shift_last)
        if not is_real(reach) or not 0.0 < reach <= 1.0:
            raise ValueError(f"reach={reach!r} must be a real number in (0, 1] (the fraction of the way to the τ-midpoint)")
        if not is_real(max_ratio) or not max_ratio > 1.0:
            raise ValueError(f"max_ratio={max_ratio!r} must be a real number > 1 (the largest σ̄_(i+1)/σ̄_(i−1) read on the trajectory)")
        self.reach, self.max_ratio = float(reach), float(max_ratio)
        extra = [f"reach={self.reach!r}"] * (self.reach != DEFAULT_REACH) + [f"max_ratio={self.max_ratio!r}"] * (
            self.max_ratio != DEFAULT_MAX_RATIO) + [f"s={self.s!r}"] * (self.s != DEFAULT_S) + [
            f"shift_last={self.shift_last!r}"] * (self.shift_last is not True)
        self.name = "dpl-ob-traj" + (f"({', '.join(extra)})" if extra else "")

    @property
    def latent_size(self) -> int:
        return 3

    def prepare(self, grid: Grid) -> ReadingPlan:
        plan = super().prepare(grid)
        return ReadingPlan(grid=plan.grid, tables=plan.tables, shift=plan.shift, reading=self.reading_rows(grid))

    def reading_rows(self, grid: Grid) -> dict:
        """{i: (t_m, α_m/s_i, σ̄_m)} for the rows that read x̂0 on the trajectory (module docstring)."""
        N, sb = grid.N, grid.sigma_bar
        if N < 3:
            return {}
        p = self.p(grid)
        level = trajectory_level(grid, p, self.reach)  # rows 1 … N−1
        rows = [i for i in range(2, N) if sb[i] > self.s and sb[i + 1] / sb[i - 1] < self.max_ratio]
        if not rows:
            return {}
        schedule = grid.schedule
        times = model_times(schedule, np.array([level[i - 1] for i in rows]))
        return {i: (schedule.model_time(t), float(schedule.alpha(t)) / float(grid.scale[i]), float(schedule.sigma_bar(t)))
                for i, t in zip(rows, times)}

    # -- the register -----------------------------------------------------------------------
    @staticmethod
    def secant(grid: Grid, i: int, x_lo: Any, x_hi: Any) -> Any:
        """E_i = (x̄_i − x̄_{i−1})/h_i from x_{i−1} = x_lo and x_i = x_hi (x-space states)."""
        h = float(grid.h[i])
        return recurrence.linear_combination([1.0 / (float(grid.scale[i]) * h), -1.0 / (float(grid.scale[i - 1]) * h)],
                                             [x_hi, x_lo])

    @classmethod
    def register_start(cls, grid: Grid, i: int, x_lo: Any, x_hi: Any) -> Any:
        """The register's first value, E_i/2 (its smooth part for a constant velocity)."""
        return 0.5 * cls.secant(grid, i, x_lo, x_hi)

    @classmethod
    def register_next(cls, grid: Grid, i: int, x_lo: Any, x_hi: Any, w: Any) -> Any:
        """E_i − w: w_i from w_{i+1} (sampling) and w_{i+1} from w_i (inversion) alike."""
        return recurrence.linear_combination([1.0, -1.0], [cls.secant(grid, i, x_lo, x_hi), w])

    def _read(self, plan: ReadingPlan, evaluate: Evaluate, i: int, x_i: Any, w: Any) -> Any:
        """ε̂_i read at P̄_i = x̄_i + (σ̄_m − σ̄_i)·2w on the trajectory (module docstring)."""
        t_m, kappa, sb_m = plan.reading[i]
        g = plan.grid
        sb_i, s_i = float(g.sigma_bar[i]), float(g.scale[i])
        move = sb_m - sb_i
        x_p = recurrence.linear_combination([1.0, 2.0 * move * s_i], [x_i, w])
        eps_m = evaluate(x_p, i, t=t_m, scale=kappa)
        return recurrence.linear_combination([sb_m / sb_i, -2.0 * move / sb_i], [eps_m, w])

    # -- sampling ------------------------------------------------------------------------------
    def from_latent(self, plan, states, index):
        carry = super().from_latent(plan, states[:2], index)
        return replace(carry, aux=states[2])

    def step(self, plan: ReadingPlan, carry: Carry, evaluate: Evaluate) -> Carry:
        if len(carry.xs) < 2:  # the DDIM start from a lone x_N
            return super().step(plan, carry, evaluate)
        i, g = carry.index, plan.grid
        w, extra = self.unpack(carry.aux)  # w_{i+1}
        if w is None:
            w = self.register_start(g, i + 1, carry.xs[0], carry.xs[1])
        eps = carry.eps[0]
        if eps is None and i in plan.reading:
            eps = self._read(plan, evaluate, i, carry.xs[0], w)
        eps, extra = self.sample_row(plan, evaluate, i, carry.xs[0], eps, extra)
        if eps is not None and eps is not carry.eps[0]:
            carry = replace(carry, eps=(evaluate.own(eps), *carry.eps[1:]))
        new = super().step(plan, carry, evaluate)  # x_{i−1}
        return replace(new, aux=self.pack(self.register_next(g, i, new.xs[0], new.xs[1], w), extra))

    # -- inversion -----------------------------------------------------------------------------
    def inverse_step(self, plan: ReadingPlan, carry: Carry, evaluate: Evaluate) -> Carry:
        if len(carry.xs) < 2:  # DDIM inversion x_0 → x_1 (`inverse_begin` starts the register)
            return super().inverse_step(plan, carry, evaluate)
        i, g = carry.index + 1, plan.grid  # the row whose far end x_{i+1} is computed
        w_i, extra = self.unpack(carry.aux)
        w = self.register_next(g, i, carry.xs[0], carry.xs[1], w_i)  # w_{i+1}
        eps = self._read(plan, evaluate, i, carry.xs[1], w) if i in plan.reading else None
        eps, extra = self.invert_row(plan, evaluate, i, carry.xs[1], eps, extra)
        if eps is not None:
            carry = replace(carry, eps=(*carry.eps[:-1], evaluate.own(eps)))
        new = super().inverse_step(plan, carry, evaluate)
        return replace(new, aux=self.pack(w, extra))

    def inverse_begin(self, plan: ReadingPlan, carry: Carry, x_new: Any, evaluate: Evaluate) -> Carry:
        """The inversion carry after x_0 → x_1, with the register started at E_1/2."""
        new = super().inverse_begin(plan, carry, x_new, evaluate)
        return replace(new, aux=self.pack(self.register_start(plan.grid, 1, new.xs[0], new.xs[1]), None))

    # -- hooks for a subclass that carries more than the velocity register -----------------------
    def unpack(self, aux: Any) -> tuple[Any, Any]:
        """(w, extra) from a carry's aux; "dpl-ob-traj" carries w alone."""
        return aux, None

    def pack(self, w: Any, extra: Any) -> Any:
        """A carry's aux from (w, extra)."""
        return w

    def sample_row(self, plan: ReadingPlan, evaluate: Evaluate, i: int, x_i: Any, eps: Any, extra: Any) -> tuple[Any, Any]:
        """(ε̂_i row i uses, extra after it) while sampling; ε̂_i None: the row evaluates its own."""
        return eps, extra

    def invert_row(self, plan: ReadingPlan, evaluate: Evaluate, i: int, x_i: Any, eps: Any, extra: Any) -> tuple[Any, Any]:
        """(ε̂_i row i uses, extra before it) while inverting row i; ε̂_i None: the row evaluates its own."""
        return eps, extra

    def latent_states(self, carry: Carry) -> tuple:
        return (*super().latent_states(carry), carry.aux)
