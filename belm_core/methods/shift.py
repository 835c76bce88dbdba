"""The evaluation shift of the p-family: x̂0 read at another noise level, from x_i alone (docs/math.md §13).

A p-family row (docs/math.md §12) needs one function of x_i, ε̂_i(x̄_i). Reading the model
at the grid's own (x_i, t_i) is one choice; any other function of x_i keeps the row exactly
invertible. This module chooses the noise level σ̄*_i at which x̂0 of the *same* bar state
x̄_i is read, one model call per row:

    ε̂_i = (x̄_i − x̂0(x̄_i; σ̄*_i))/σ̄_i = (σ̄*_i/σ̄_i) · ε(α*_i x̄_i, t*_i),   α*_i = α(t*_i).

1. Where the row wants x̂0. With y = x̄/σ̄ and τ = 1/σ̄ the ODE is dy/dτ = x̂0. If x̂0 were
   read on the trajectory at σ̄_m,i, the row would also be exact on x̂0 linear in τ
   (the shape x̄ = X(σ̄) = σ̄ (1/σ̄ − τ_i)²/2) when, for rows i ≥ 2,

       τ_m = τ_i + (X(σ̄_{i−1}) − p_i X(σ̄_{i+1})) / ((h_i + p_i h_{i+1}) τ_i),   σ̄_m = 1/τ_m

   (for DPL's p_i = σ̄_{i−1}/σ̄_{i+1} this is the τ-midpoint (τ_{i−1} + τ_{i+1})/2). Row 1
   (σ̄_0 = 0, τ_0 = ∞) uses the shape x̄ = (σ̄ − σ̄_1)² instead (x̂0 = a − cσ̄², even in σ̄,
   as for smooth data at σ̄ → 0): σ̄_m = σ̄_1 + (p_1 h_2² − h_1²) / (2 (h_1 + p_1 h_2)), which
   is σ̄_1 for O-BELM's p_1. With `last_linear` it uses x̂0 linear in σ̄ instead, the shape
   x̄ = φ(σ̄) = σ̄ ln σ̄ (x̂0 = x̄ − σ̄φ′ = −σ̄): the row reads ε̂_1 = (φ(σ̄_1) + σ̄_m)/σ̄_1 and
   is exact when

       σ̄_m = σ̄_1 (((1 − p_1) φ(σ̄_1) + p_1 φ(σ̄_2) − φ(σ̄_0)) / (h_1 + p_1 h_2) − ln σ̄_1),   φ(0) = 0

   (about 0.69 σ̄_1 on a trailing grid; scale-free: σ̄_m/σ̄_1 depends on σ̄_2/σ̄_1 and p_1
   only). The last step crosses from the τ-linear regime of the rows above into the
   σ̄-quadratic one at the clean end; PFamily(shift_last=True) asks for it when σ̄_1 > s,
   where the rows above it are DPL rows (docs/math.md §13).
   The shift is then damped to a fraction f: σ̄_m ← σ̄_i + f (σ̄_m − σ̄_i), and kept in
   [σ̄_{i−1}, σ̄_{i+1}].
2. Where to read it at fixed x̄_i. Moving the noise level at a fixed bar state moves x̂0
   about twice as fast as moving along the trajectory does (exactly so for Gaussian data
   of large variance), so the trajectory's x̂0 at σ̄_m is read at the half-way level

       σ̄*_i = sqrt((σ̄_m² + σ̄_i²) / 2).

3. On a discrete schedule t*_i = t(σ̄*_i) is rounded to the nearest training timestep (the
   model is only ever called at integer times), then α*_i, σ̄*_i are those of the rounded
   t*_i, so κ_i = α*_i/α_i and w_i = σ̄*_i/σ̄_i are exact for the time the model sees. A row
   whose t*_i rounds to t_i is not shifted.

σ̄_m − σ̄_i is O(h²) on smoothly graded grids, so the order of the row is unchanged.
"""

from __future__ import annotations

import numpy as np

from ..grid import Grid
from ..schedules import NoiseSchedule
from .base import EvaluationShift

__all__ = ["evaluation_shift", "shifted_sigma_bar", "trajectory_level", "model_times"]


def _sigma_bar_m(grid: Grid, p: np.ndarray, last_linear: bool = False) -> np.ndarray:
    """σ̄_m,i for rows i = 1 … N−1 (shape (N−1,)): where the row wants x̂0 on the trajectory."""
    sb, h = grid.sigma_bar, grid.h
    N = grid.N
    i = np.arange(1, N)
    p_i = p[i]
    den = h[i] + p_i * h[i + 1]
    m = np.empty(N - 1)
    if last_linear:  # row 1: exact on x̂0 linear in σ̄, x̄ = σ̄ ln σ̄
        phi = ((1.0 - p_i[0]) * _xlogx(sb[1]) + p_i[0] * _xlogx(sb[2]) - _xlogx(sb[0])) / den[0]
        m[0] = sb[1] * (phi - np.log(sb[1]))
    else:  # row 1: exact on x̄ = (σ̄ − σ̄_1)²
        m[0] = sb[1] + (p_i[0] * h[2] ** 2 - h[1] ** 2) / (2.0 * den[0])
    if N > 2:
        r = i[1:]
        tau_i = 1.0 / sb[r]

        def X(s):
            return s * (1.0 / s - tau_i) ** 2 / 2.0

        tau_m = tau_i + (X(sb[r - 1]) - p_i[1:] * X(sb[r + 1])) / (den[1:] * tau_i)
        with np.errstate(divide="ignore"):
            m[1:] = np.where(tau_m > 0, 1.0 / tau_m, np.inf)
    return np.clip(m, sb[i - 1], sb[i + 1])


def _xlogx(x: float) -> float:
    """x ln x, continued by 0 at x = 0."""
    return float(x * np.log(x)) if x > 0 else 0.0


def trajectory_level(grid: Grid, p: np.ndarray, fraction: float, last_linear: bool = False) -> np.ndarray:
    """σ̄_m,i for rows i = 1 … N−1, damped by `fraction`: σ̄_i + f (σ̄_m,i − σ̄_i) (module docstring, 1)."""
    sb_i = grid.sigma_bar[1 : grid.N]
    return sb_i + fraction * (_sigma_bar_m(grid, p, last_linear) - sb_i)


def shifted_sigma_bar(grid: Grid, p: np.ndarray, fraction: float, last_linear: bool = False) -> np.ndarray:
    """σ̄*_i for rows i = 1 … N−1: sqrt((σ̄_m² + σ̄_i²)/2) with σ̄_m damped by `fraction` (module docstring)."""
    m, sb_i = trajectory_level(grid, p, fraction, last_linear), grid.sigma_bar[1 : grid.N]
    return np.sqrt((m**2 + sb_i**2) / 2.0)


def model_times(schedule: NoiseSchedule, sigma_bar: np.ndarray) -> np.ndarray:
    """The model times of noise levels σ̄ (float64): t(σ̄), rounded to training timesteps on a
    discrete schedule (the model is only ever called there), clipped to [t_min, t_max]."""
    t = np.asarray(schedule.t_from_sigma_bar(sigma_bar), dtype=np.float64)
    if schedule.discrete:
        t = np.round(t)
    return np.clip(t, schedule.t_min, schedule.t_max)


def evaluation_shift(grid: Grid, p: np.ndarray, fraction: float, last_linear: bool = False) -> EvaluationShift:
    """The `EvaluationShift` of the p-family rows with p_i = p[i] (shape (N+1,)) on `grid`;
    `last_linear`: row 1 reads x̂0 where x̂0 linear in σ̄ wants it (module docstring, 1)."""
    schedule, N = grid.schedule, grid.N
    t_star = model_times(schedule, shifted_sigma_bar(grid, p, fraction, last_linear))
    time: list = [None] * (N + 1)
    scale, weight = np.ones(N + 1), np.ones(N + 1)
    for i, t in zip(range(1, N), t_star):
        t_i = float(grid.timesteps[N - i])
        if t == t_i:
            continue
        time[i] = schedule.model_time(t)
        scale[i] = float(schedule.alpha(t)) / grid.alpha[i]
        weight[i] = float(schedule.sigma_bar(t)) / grid.sigma_bar[i]
    level = np.full(N + 1, np.nan)
    level[1:N] = trajectory_level(grid, p, fraction, last_linear)
    return EvaluationShift(time=tuple(time), scale=scale, weight=weight, level=level)
