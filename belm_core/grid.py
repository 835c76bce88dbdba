"""The time grid a solver walks: model times plus α, σ, σ̄ and the coordinates (s, τ) at each point.

Points are indexed as in the paper: i = N is the noisiest, i = 1 the last model time,
and i = 0 the end state: by default the clean state with α_0 = 1, σ̄_0 = 0 (docs/math.md §1).
With `end="t_min"` the trajectory ends instead at the schedule's smallest model time
t_min (for `DiscreteVP` the first training timestep, ᾱ_0: diffusers'
`set_alpha_to_one=False`).

The recurrence runs in coordinates (docs/math.md §11): each point carries a scale s_i and an
ODE time τ_i such that the state is x = s·y and dy/dτ = f(x, t) is the model's output
(`schedule.coordinates(t, prediction)`): s = α, τ = σ̄ for ε-prediction (the bar form of
docs/math.md §1), s = 1, τ = σ for a flow's velocity. Step sizes are

    h_i = τ_i − τ_{i−1} > 0,  i = 1 … N   (h_i = σ̄_i − σ̄_{i−1} for ε-prediction).

The grid is data: every method reads neighbours from these arrays.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .schedules import NoiseSchedule, Prediction

__all__ = ["Grid", "make_grid", "End"]

#: where a trajectory ends: the clean state (α = 1, σ̄ = 0) or the schedule's smallest model time
End = Literal["clean", "t_min"]


@dataclass(frozen=True, eq=False)
class Grid:
    """α, σ, σ̄, the coordinates (s, τ) and h on the points i = 0 … N (index 0 = the end state).

    Attributes:
        timesteps: (N,) model times, noisiest first (t_N, …, t_1).
        alpha: (N+1,) α_i; alpha[0] = 1 for end="clean", α(t_min) for end="t_min".
        sigma_bar: (N+1,) σ̄_i; sigma_bar[0] = 0 for end="clean", σ̄(t_min) for end="t_min"
            (+∞ at a flow's pure-noise point σ = 1).
        h: (N+1,) h_i = τ_i − τ_{i−1}; h[0] is NaN (no step ends below the end state).
        end: "clean" or "t_min".
        sigma: (N+1,) σ_i (α_i σ̄_i when not given).
        scale: (N+1,) s_i with x = s·y (α_i for ε-prediction; alpha when not given).
        tau: (N+1,) τ_i, the ODE time of dy/dτ = f (σ̄_i for ε-prediction; sigma_bar when not given).
        prediction: what the model function returns: "epsilon" or "velocity".
    """

    schedule: NoiseSchedule
    timesteps: np.ndarray
    alpha: np.ndarray
    sigma_bar: np.ndarray
    h: np.ndarray
    key: str = field(repr=False)
    end: End = "clean"
    sigma: np.ndarray | None = None
    scale: np.ndarray | None = None
    tau: np.ndarray | None = None
    prediction: Prediction = "epsilon"

    def __post_init__(self):
        defaults = {"sigma": lambda: self.alpha * self.sigma_bar, "scale": lambda: self.alpha, "tau": lambda: self.sigma_bar}
        for name, value in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value())

    @property
    def N(self) -> int:
        """Number of steps (and of model times)."""
        return self.timesteps.size

    def t(self, i: int):
        """Model time at grid index i ≥ 1 as a Python number."""
        if not 1 <= i <= self.N:
            raise IndexError(f"grid index {i} has no model time (valid: 1..{self.N})")
        return self.schedule.model_time(self.timesteps[self.N - i])


def make_grid(
    schedule: NoiseSchedule, timesteps, end: End = "clean", prediction: Prediction | None = None
) -> Grid:
    """Validate model times (noisiest first) and tabulate α, σ, σ̄, s, τ, h with the end state appended.

    `prediction` (default: the schedule's `default_prediction`) picks the coordinates
    (s, τ) = `schedule.coordinates(t, prediction)`. ε-prediction needs α > 0 at every
    model time: a flow grid that starts at σ = 1 (α = 0, σ̄ = ∞) is refused with a
    ValueError that points to prediction="velocity".

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
    prediction = schedule.default_prediction if prediction is None else prediction
    schedule.check_prediction(prediction)
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
    if end == "clean":  # α = 1, σ = σ̄ = 0; s = 1, τ = 0 in every coordinate system (docs/math.md §11)
        alpha_end, sigma_end, sigma_bar_end, scale_end, tau_end = 1.0, 0.0, 0.0, 1.0, 0.0
    else:
        alpha_end, sigma_end = float(schedule.alpha(schedule.t_min)), float(schedule.sigma(schedule.t_min))
        sigma_bar_end = float(schedule.sigma_bar(schedule.t_min))
        scale_end, tau_end = (float(v) for v in schedule.coordinates(schedule.t_min, prediction))
    alpha = np.concatenate([[alpha_end], schedule.alpha(t_up)])
    sigma_bar = np.concatenate([[sigma_bar_end], schedule.sigma_bar(t_up)])
    sigma = np.concatenate([[sigma_end], schedule.sigma(t_up)])
    scale_up, tau_up = schedule.coordinates(t_up, prediction)
    scale = np.concatenate([[scale_end], scale_up])
    tau = np.concatenate([[tau_end], tau_up])
    _check_coordinates(t, scale, tau, prediction)
    h = np.concatenate([[np.nan], np.diff(tau)])
    if np.any(h[1:] <= 0):
        what = "σ̄" if prediction == "epsilon" else f"the ODE time τ of prediction={prediction!r}"
        raise ValueError(f"{what} must increase strictly along the timesteps; the schedule is not monotone there")
    data = np.ascontiguousarray(np.stack([alpha, sigma_bar])).tobytes()
    if prediction != "epsilon":  # (ε-prediction keys are what they always were)
        data += prediction.encode() + np.ascontiguousarray(np.stack([scale, tau])).tobytes()
    digest = hashlib.sha1(data).hexdigest()[:16]
    return Grid(
        schedule=schedule,
        timesteps=t.astype(np.int64) if schedule.discrete else t,
        alpha=alpha,
        sigma_bar=sigma_bar,
        h=h,
        key=digest,
        end=end,
        sigma=sigma,
        scale=scale,
        tau=tau,
        prediction=prediction,
    )


def _check_coordinates(t: np.ndarray, scale: np.ndarray, tau: np.ndarray, prediction: str) -> None:
    """Refuse coordinates in which the recurrence cannot run: s must be finite and > 0, τ finite.

    The case that reaches here in practice is ε-prediction on a flow grid that starts at
    pure noise (σ = 1: α = 0, σ̄ = ∞), where ε alone says nothing about x_0.
    """
    bad = ~(np.isfinite(scale) & (scale > 0) & np.isfinite(tau))
    if not np.any(bad):
        return
    t_bad = t[::-1][bad[1:]] if np.any(bad[1:]) else t[-1:]
    if prediction == "epsilon":
        raise ValueError(
            f"prediction='epsilon' needs α > 0 at every model time, but timesteps contain {t_bad[:4].tolist()} where "
            "α = 0 (pure noise, σ̄ = σ/α = ∞): there ε carries no information about x_0 and the bar coordinates "
            "x/α, σ̄ do not exist. Use prediction='velocity' with a flow model's v = dx/dσ, or timesteps below "
            "the pure-noise end"
        )
    raise ValueError(
        f"prediction={prediction!r} gives unusable coordinates (scale s ≤ 0 or non-finite, or τ non-finite) at "
        f"model times {t_bad[:4].tolist()}"
    )
