"""The time grid a solver walks: model times plus α, σ, σ̄ at each point.

Points are indexed as in the paper: i = N is the noisiest, i = 1 the last model time,
and i = 0 the end state: by default the clean state with α_0 = 1, σ̄_0 = 0 (MATH.md §1).
With `end="t_min"` the trajectory ends instead at the schedule's smallest model time
t_min (for `DiscreteVP` the first training timestep, ᾱ_0: diffusers'
`set_alpha_to_one=False`). Step sizes are

    h_i = σ̄_i − σ̄_{i−1} > 0,  i = 1 … N.

The grid is data: every method reads neighbours from these arrays.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .schedules import NoiseSchedule

__all__ = ["Grid", "make_grid", "End"]

#: where a trajectory ends: the clean state (α = 1, σ̄ = 0) or the schedule's smallest model time
End = Literal["clean", "t_min"]


@dataclass(frozen=True, eq=False)
class Grid:
    """α, σ̄ and h on the points i = 0 … N (index 0 = the end state).

    Attributes:
        timesteps: (N,) model times, noisiest first (t_N, …, t_1).
        alpha: (N+1,) α_i; alpha[0] = 1 for end="clean", α(t_min) for end="t_min".
        sigma_bar: (N+1,) σ̄_i; sigma_bar[0] = 0 for end="clean", σ̄(t_min) for end="t_min".
        h: (N+1,) h_i = σ̄_i − σ̄_{i−1}; h[0] is NaN (no step ends below the end state).
        end: "clean" or "t_min".
    """

    schedule: NoiseSchedule
    timesteps: np.ndarray
    alpha: np.ndarray
    sigma_bar: np.ndarray
    h: np.ndarray
    key: str = field(repr=False)
    end: End = "clean"

    @property
    def N(self) -> int:
        """Number of steps (and of model times)."""
        return self.timesteps.size

    @property
    def sigma(self) -> np.ndarray:
        """σ_i = α_i σ̄_i."""
        return self.alpha * self.sigma_bar

    def t(self, i: int):
        """Model time at grid index i ≥ 1 as a Python number."""
        if not 1 <= i <= self.N:
            raise IndexError(f"grid index {i} has no model time (valid: 1..{self.N})")
        return self.schedule.model_time(self.timesteps[self.N - i])


def make_grid(schedule: NoiseSchedule, timesteps, end: End = "clean") -> Grid:
    """Validate model times (noisiest first) and tabulate α, σ̄, h with the end state appended.

    end="clean" appends the clean state α = 1, σ̄ = 0. end="t_min" appends the point at
    the schedule's smallest model time t_min. When the last model time already is t_min
    (up to rounding: 1e-9 of the schedule's time range),
    the final step would have zero length: diffusers' DDIM takes it anyway (one more
    model call whose update is the identity, x_{t_min} → x_{t_min}); here that step is
    dropped, so t_min is the end state itself, the grid has one step fewer, and the
    result is the same state without the extra model call.
    """
    if end not in ("clean", "t_min"):
        raise ValueError(f"end={end!r} must be 'clean' or 't_min'")
    t = np.asarray(timesteps)
    if t.ndim != 1 or t.size < 1:
        raise ValueError(f"timesteps must be a non-empty 1-D array, got shape {t.shape}")
    if not np.issubdtype(t.dtype, np.number) or np.issubdtype(t.dtype, np.complexfloating):
        raise ValueError(f"timesteps must be real numbers, got dtype {t.dtype}")
    t = t.astype(np.float64)
    if not np.all(np.isfinite(t)):
        raise ValueError(f"timesteps must be finite, got {t[~np.isfinite(t)][:4].tolist()}")
    if schedule.discrete and np.any(t != np.round(t)):
        raise ValueError(
            f"timesteps for {type(schedule).__name__} must be integers (training timesteps), "
            f"got {t[t != np.round(t)][:4].tolist()}"
        )
    steps = np.diff(t)
    if np.any(steps >= 0):
        j = int(np.argmax(steps >= 0))
        what = "duplicate" if steps[j] == 0 else "increasing"
        raise ValueError(
            f"timesteps must be strictly decreasing (noisiest first); found {what} entries "
            f"{t[j]!r} → {t[j + 1]!r} at positions {j}, {j + 1}"
        )
    schedule.check_times(t)
    if end == "t_min" and t[-1] - schedule.t_min <= 1e-9 * (schedule.t_max - schedule.t_min):  # (rounding)
        t = t[:-1]  # the last model time is the end state itself (zero-length final step)
        if t.size == 0:
            raise ValueError(
                f"timesteps={[float(schedule.t_min)]} with end='t_min' leave no step: the only model time is t_min"
            )

    # paper index order: i = 0 (end state) … N (noisiest)
    t_up = t[::-1]
    if end == "clean":
        alpha_end, sigma_bar_end = 1.0, 0.0
    else:
        alpha_end, sigma_bar_end = float(schedule.alpha(schedule.t_min)), float(schedule.sigma_bar(schedule.t_min))
    alpha = np.concatenate([[alpha_end], schedule.alpha(t_up)])
    sigma_bar = np.concatenate([[sigma_bar_end], schedule.sigma_bar(t_up)])
    h = np.concatenate([[np.nan], np.diff(sigma_bar)])
    if np.any(h[1:] <= 0):
        raise ValueError("σ̄ must increase strictly along the timesteps; the schedule is not monotone there")
    digest = hashlib.sha1(np.ascontiguousarray(np.stack([alpha, sigma_bar])).tobytes()).hexdigest()[:16]
    return Grid(
        schedule=schedule,
        timesteps=t.astype(np.int64) if schedule.discrete else t,
        alpha=alpha,
        sigma_bar=sigma_bar,
        h=h,
        key=digest,
        end=end,
    )
