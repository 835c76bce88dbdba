"""The time grid a solver walks: model times plus α, σ, σ̄ at each point.

Points are indexed as in the paper: i = N is the noisiest, i = 1 the last model time,
and i = 0 the clean end state with α_0 = 1, σ̄_0 = 0 (MATH.md §1). Step sizes are

    h_i = σ̄_i − σ̄_{i−1} > 0,  i = 1 … N.

The grid is data: every method reads neighbours from these arrays.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from .schedules import NoiseSchedule

__all__ = ["Grid", "make_grid"]


@dataclass(frozen=True, eq=False)
class Grid:
    """α, σ̄ and h on the points i = 0 … N (index 0 = clean state).

    Attributes:
        timesteps: (N,) model times, noisiest first (t_N, …, t_1).
        alpha: (N+1,) α_i, alpha[0] = 1.
        sigma_bar: (N+1,) σ̄_i, sigma_bar[0] = 0.
        h: (N+1,) h_i = σ̄_i − σ̄_{i−1}; h[0] is NaN (no step ends below the clean state).
    """

    schedule: NoiseSchedule
    timesteps: np.ndarray
    alpha: np.ndarray
    sigma_bar: np.ndarray
    h: np.ndarray
    key: str = field(repr=False)

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


def make_grid(schedule: NoiseSchedule, timesteps) -> Grid:
    """Validate model times (noisiest first) and tabulate α, σ̄, h with the clean end appended."""
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

    # paper index order: i = 0 (clean) … N (noisiest)
    t_up = t[::-1]
    alpha = np.concatenate([[1.0], schedule.alpha(t_up)])
    sigma_bar = np.concatenate([[0.0], schedule.sigma_bar(t_up)])
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
    )
