"""Noise schedules, each built on one primitive: log α(t).

A diffusion state is x_t = α_t x_0 + σ_t ε. Every schedule here derives

    α(t) = exp(log α(t)),
    σ(t) = sqrt(1 − α(t)²)                 (variance preserving, VP)
    σ(t) = t, α(t) = 1                     (variance exploding, VE / EDM)
    σ̄(t) = σ(t) / α(t)                    (noise-to-signal ratio, e^{−λ})
    λ(t) = log α(t) − log σ(t) = −log σ̄(t)  (half log-SNR)

from `log_alpha` (and `sigma` for VE), computed in log space and float64. The
probability-flow ODE in the "bar" variables x̄ = x/α reads dx̄/dσ̄ = ε(x, t)
(docs/math.md §1); the solver only ever needs α and σ̄ on a grid.

The *model time* `t` is what the network is conditioned on: the integer training
timestep for `DiscreteVP`, continuous time in [t_min, t_max] for `LinearVP` and
`CosineVP`, and σ itself for `VE`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Literal

import numpy as np

__all__ = [
    "Spacing", "Prediction", "NoiseSchedule", "DiscreteVP", "ContinuousVP", "LinearVP", "CosineVP", "VE", "EDM",
    "FlowMatch", "TAIL_FRACTION", "LONG_START",
]

#: grid layouts: "leading", "trailing", "linspace" as in diffusers' DDIMScheduler and
#: "karras" (diffusers' use_karras_sigmas) / "logsnr" (uniform log σ̄) rounded to training
#: timesteps (discrete schedules); "linspace" (uniform t), "logsnr" and "karras" for continuous ones
Spacing = Literal["leading", "trailing", "trailing-tail", "long-start", "linspace", "logsnr", "karras"]

#: what the model function returns, which fixes the coordinates the recurrence runs in
#: (docs/math.md §11): "epsilon" → y = x/α, τ = σ̄, f = ε; "velocity" (flows) → y = x, τ = σ, f = v
Prediction = Literal["epsilon", "velocity"]


class NoiseSchedule(ABC):
    """A noise schedule: α(t), σ(t), σ̄(t) and the grids of model times it offers.

    Subclasses define `log_alpha` and `t_from_sigma_bar`; everything else follows.
    """

    #: model times are integers (discrete training timesteps)
    discrete: bool = False
    #: names accepted by :meth:`timesteps`
    spacings: tuple[str, ...] = ()
    #: the spacing a Solver uses when none is given
    default_spacing: str = "linspace"

    #: model outputs a Solver accepts for this schedule (`prediction=`), and its default
    predictions: tuple[str, ...] = ("epsilon",)
    default_prediction: str = "epsilon"

    t_min: float
    t_max: float

    # -- the primitive -------------------------------------------------------------
    @abstractmethod
    def log_alpha(self, t) -> np.ndarray:
        """log α(t), float64."""

    @abstractmethod
    def t_from_sigma_bar(self, sigma_bar) -> np.ndarray:
        """The model time with σ̄(t) = sigma_bar (inverse of :meth:`sigma_bar`)."""

    # -- derived quantities --------------------------------------------------------
    def alpha(self, t) -> np.ndarray:
        """α(t) = exp(log α(t))."""
        return np.exp(self.log_alpha(t))

    def sigma(self, t) -> np.ndarray:
        """σ(t) = sqrt(1 − α²) = sqrt(−expm1(2 log α)) for VP schedules."""
        return np.sqrt(-np.expm1(2.0 * self.log_alpha(t)))

    def sigma_bar(self, t) -> np.ndarray:
        """σ̄(t) = σ(t)/α(t), the noise-to-signal ratio."""
        return self.sigma(t) / self.alpha(t)

    def log_snr(self, t) -> np.ndarray:
        """λ(t) = −log σ̄(t)."""
        return -np.log(self.sigma_bar(t))

    # -- coordinates of the recurrence (docs/math.md §11) ---------------------------------
    def coordinates(self, t, prediction: Prediction) -> tuple[np.ndarray, np.ndarray]:
        """(s, τ) at model times t: the state is x = s·y and dy/dτ = f(x, t), the model's output.

        "epsilon": s = α, τ = σ̄ (the bar form of docs/math.md §1, dx̄/dσ̄ = ε). Subclasses
        with other native outputs (`FlowMatch`: "velocity") extend this. The clean state
        (α = 1, σ = 0) has s = 1, τ = 0 in every coordinate system offered here.
        """
        self.check_prediction(prediction)
        t = np.asarray(t, dtype=np.float64)
        return self.alpha(t), self.sigma_bar(t)

    def check_prediction(self, prediction: Prediction) -> None:
        """Raise ValueError unless this schedule offers `prediction`."""
        if prediction not in self.predictions:
            raise ValueError(
                f"prediction={prediction!r} is not available for {type(self).__name__}; "
                f"choose one of {list(self.predictions)}"
            )

    # -- grids ---------------------------------------------------------------------
    def timesteps(self, steps: int, spacing: Spacing | None = None) -> np.ndarray:
        """`steps` model times, noisiest first, laid out by `spacing`.

        The clean end state (α = 1, σ̄ = 0) is *not* included: the solver appends it.
        """
        spacing = self.default_spacing if spacing is None else spacing
        if spacing not in self.spacings:
            raise ValueError(
                f"spacing={spacing!r} is not available for {type(self).__name__}; "
                f"choose one of {list(self.spacings)} or pass timesteps= explicitly"
            )
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
            raise ValueError(f"steps={steps!r} must be a positive integer")
        return self._grid(int(steps), spacing)

    @abstractmethod
    def _grid(self, steps: int, spacing: str) -> np.ndarray:
        """Model times for a validated spacing name."""

    def check_grid(self, t: np.ndarray, steps: int, spacing: str) -> None:
        """Raise ValueError, in terms of `steps` and `spacing`, when the grid they give is unusable."""
        self.check_times(t)

    def check_times(self, t: np.ndarray) -> None:
        """Raise ValueError unless every model time lies in [t_min, t_max]."""
        bad = (t < self.t_min) | (t > self.t_max)
        if np.any(bad):
            raise ValueError(
                f"timesteps contain {t[bad][:4].tolist()}, outside the schedule's range "
                f"[{self.t_min}, {self.t_max}]"
            )

    def model_time(self, t):
        """The model time as a Python number (int for discrete schedules)."""
        return int(t) if self.discrete else float(t)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._repr_args()})"

    def _repr_args(self) -> str:
        return ""


# ---------------------------------------------------------------------------------
# Discrete VP (DDPM, Stable Diffusion)
# ---------------------------------------------------------------------------------
class DiscreteVP(NoiseSchedule):
    """Discrete-time VP schedule given by ᾱ_t (`alphas_cumprod`), t = 0 … T−1.

    α_t = sqrt(ᾱ_t). Between integer timesteps log ᾱ is interpolated linearly (as in
    DPM-Solver's discrete schedule), which defines `t_from_sigma_bar`; the solver itself
    only evaluates integer timesteps.

    `steps_offset` is the diffusers scheduler option of the same name (added to the
    "leading" grid; Stable Diffusion uses 1).

    Spacings: "linspace", "leading", "trailing" (diffusers' `timestep_spacing`), "karras"
    (Karras' ρ = 7 law in σ̄ from σ̄(T − 1) to σ̄(0): diffusers' `use_karras_sigmas`
    timesteps) and "logsnr" (uniform in log σ̄, i.e. in log-SNR), both rounded to training
    timesteps; a step count whose rounded grid repeats a timestep is refused.
    "trailing-tail" is "trailing" with a shorter last step: its last model time moves from
    t_{N−2} + 1 − T/N ≈ ½ (t_{N−2} + 1) − 1 to round(`TAIL_FRACTION` · (t_{N−2} + 1)) − 1 (49 → 39 at
    N = 20, 199 → 159 at N = 5); every other model time is trailing's. The grid of
    `belm_core.recommended` (docs/math.md §24). "long-start" is "trailing-tail" with a longer first
    step: t_{N−1} = T − 1 − round(`LONG_START` · T/N), the other N − 2 model times trailing over
    [0, t_{N−1} + 1) with the same last step (999, 699, 524, 349, 139 at N = 5 on T = 1000): the grid
    of `belm_core.recommended` on DDPM's linear schedule at 5–20 steps (docs/math.md §25). At N ≤ 2 it
    is "trailing-tail"; it refuses N = T (no room below the longer first step).
    """

    discrete = True
    spacings = ("leading", "trailing", "trailing-tail", "long-start", "linspace", "karras", "logsnr")
    default_spacing = "linspace"

    def __init__(self, alphas_cumprod, *, steps_offset: int = 0):
        ac = np.asarray(alphas_cumprod, dtype=np.float64)
        if ac.ndim != 1 or ac.size < 2:
            raise ValueError(f"alphas_cumprod must be a 1-D array with at least 2 entries, got shape {ac.shape}")
        if not np.all(np.isfinite(ac)) or np.any(ac <= 0) or np.any(ac >= 1):
            raise ValueError(
                "alphas_cumprod must lie strictly inside (0, 1) (a zero terminal SNR gives σ̄ = ∞, "
                f"which the ODE in σ̄ cannot start from); got range [{ac.min()}, {ac.max()}]"
            )
        if np.any(np.diff(ac) >= 0):
            raise ValueError("alphas_cumprod must be strictly decreasing in t")
        self.alphas_cumprod = ac
        self._log_ac = np.log(ac)
        self.steps_offset = int(steps_offset)
        self.t_min = 0
        self.t_max = ac.size - 1

    # constructors -------------------------------------------------------------------
    # dtype="float32" reproduces diffusers bit for bit: its schedulers compute β with
    # torch.linspace in float32 and ᾱ = torch.cumprod(1 − β) in float32 on the CPU;
    # dtype="float64" (default) computes the same formulas in float64. ᾱ is held in float64 either way.
    @classmethod
    def from_betas(cls, betas, *, dtype: Literal["float64", "float32"] = "float64", **kwargs) -> DiscreteVP:
        """ᾱ_t = Π_{s≤t} (1 − β_s).

        dtype="float32": β and 1 − β are rounded to float32 and each ᾱ_t is the float64 running
        product rounded to float32 (what torch.cumprod does for float32 on the CPU).
        """
        dt = _beta_dtype(dtype)
        betas = np.asarray(betas, dtype=dt)
        if betas.ndim != 1 or np.any(betas <= 0) or np.any(betas >= 1):
            raise ValueError("betas must be a 1-D array with entries in (0, 1)")
        if dt == np.float64:
            return cls(np.exp(np.cumsum(np.log1p(-betas))), **kwargs)
        one_minus = (np.float32(1.0) - betas).astype(np.float64)
        return cls(np.cumprod(one_minus).astype(np.float32).astype(np.float64), **kwargs)

    @classmethod
    def linear(
        cls, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
        *, dtype: Literal["float64", "float32"] = "float64", **kw,
    ):
        """DDPM's linear β schedule: β = linspace(β_start, β_end, T)."""
        betas = _linspace(beta_start, beta_end, num_train_timesteps, _beta_dtype(dtype))
        return cls.from_betas(betas, dtype=dtype, **kw)

    @classmethod
    def scaled_linear(
        cls, num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
        *, dtype: Literal["float64", "float32"] = "float64", **kw,
    ):
        """Stable Diffusion's schedule: β = linspace(√β_start, √β_end, T)²."""
        betas = _linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, _beta_dtype(dtype)) ** 2
        return cls.from_betas(betas, dtype=dtype, **kw)

    @classmethod
    def cosine(
        cls, num_train_timesteps: int = 1000, max_beta: float = 0.999,
        *, dtype: Literal["float64", "float32"] = "float64", **kw,
    ):
        """Nichol & Dhariwal's "squaredcos_cap_v2": β_t = min(1 − ᾱ((t+1)/T)/ᾱ(t/T), max_beta),
        ᾱ(u) = cos²((u + 0.008)/1.008 · π/2). β is computed in float64 (as diffusers does) and
        then rounded to `dtype`."""
        u = np.arange(num_train_timesteps + 1, dtype=np.float64) / num_train_timesteps
        abar = np.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = np.minimum(1.0 - abar[1:] / abar[:-1], max_beta)
        return cls.from_betas(betas, dtype=dtype, **kw)

    @property
    def num_train_timesteps(self) -> int:
        return self.alphas_cumprod.size

    # primitive -------------------------------------------------------------------------
    def log_alpha(self, t) -> np.ndarray:
        """log α_t = ½ log ᾱ_t, linearly interpolated in t between integers."""
        t = np.asarray(t, dtype=np.float64)
        return 0.5 * np.interp(t, np.arange(self.alphas_cumprod.size, dtype=np.float64), self._log_ac)

    def t_from_sigma_bar(self, sigma_bar) -> np.ndarray:
        """Invert σ̄ through log ᾱ = −log(1 + σ̄²) on the interpolated schedule."""
        log_ac = -np.log1p(np.asarray(sigma_bar, dtype=np.float64) ** 2)
        # log ᾱ decreases in t: interpolate on the reversed arrays
        return np.interp(log_ac, self._log_ac[::-1], np.arange(self.alphas_cumprod.size, dtype=np.float64)[::-1])

    # grids (identical to diffusers' DDIMScheduler.set_timesteps) -------------------------
    def _grid(self, steps: int, spacing: str) -> np.ndarray:
        T = self.num_train_timesteps
        if steps > T:
            raise ValueError(f"steps={steps} exceeds the {T} training timesteps of this schedule")
        if spacing == "linspace":
            t = np.linspace(0, T - 1, steps).round()[::-1]
        elif spacing == "leading":
            t = (np.arange(0, steps) * (T // steps)).round()[::-1] + self.steps_offset

        elif spacing in ("trailing", "trailing-tail"):  # T − 1, T − 1 − T/N, … (diffusers' np.arange(T, 0,
            # −T/N) yields N + 1 points for 62 of the N ≤ 1000, ending at −1; we keep exactly N and agree elsewhere)
            delta = (T - T / steps) - T  # the increment np.arange uses, so round-half ties agree
            t = np.round(T + np.arange(steps) * delta) - 1
            if spacing == "trailing-tail" and steps >= 2:
                t[-1] = tail_time(t[-2])
        elif spacing == "long-start":
            t = long_start_grid(T, steps)
        else:  # karras / logsnr: σ̄ from σ̄(T − 1) to σ̄(0), mapped to time by linear interpolation of
            # log σ̄ between training timesteps and rounded (diffusers' use_karras_sigmas /
            # use_exponential_sigmas grids, rounded to training timesteps)
            sb = self.sigma_bar(np.arange(T))
            target = sigma_bar_grid(float(sb[-1]), float(sb[0]), steps, spacing)
            t = np.round(np.interp(np.log(target), np.log(sb), np.arange(T)))
        return t.astype(np.int64)

    def check_grid(self, t: np.ndarray, steps: int, spacing: str) -> None:
        """A "leading" grid shifted by `steps_offset` can start past the last training timestep
        (1000 steps, offset 1: t = 1000; diffusers builds the same grid): say so in those terms."""
        T = self.num_train_timesteps
        if spacing == "leading" and t[0] > T - 1:
            fit = max((n for n in range(1, T + 1) if (n - 1) * (T // n) + self.steps_offset <= T - 1), default=0)
            raise ValueError(
                f"steps={steps} with spacing='leading' and steps_offset={self.steps_offset} would start past the "
                f"last training timestep {T - 1}; use steps ≤ {fit}, spacing='trailing' or 'linspace', "
                "or steps_offset=0"
            )
        if spacing in ("karras", "logsnr") and np.any(np.diff(t) >= 0):
            fit = max(n for n in range(1, T + 1) if n <= steps and np.all(np.diff(self._grid(n, spacing)) < 0))
            raise ValueError(
                f"steps={steps} with spacing={spacing!r} rounds two model times to the same training timestep "
                f"(σ̄ changes faster than its training timesteps resolve there); use steps ≤ {fit} with this spacing, "
                "or 'trailing'/'linspace'"
            )
        super().check_grid(t, steps, spacing)

    def _repr_args(self) -> str:
        return f"T={self.num_train_timesteps}, steps_offset={self.steps_offset}"


def _beta_dtype(dtype) -> type:
    """np.float64 or np.float32 from the `dtype` option of the DiscreteVP constructors."""
    if dtype == "float64":
        return np.float64
    if dtype == "float32":
        return np.float32
    raise ValueError(f"dtype={dtype!r} is not available; choose 'float64' or 'float32'")


def _linspace(start: float, end: float, n: int, dt: type) -> np.ndarray:
    """n points from start to end in dtype `dt`.

    float64: numpy's linspace. float32: torch.linspace's float32 rule, which diffusers uses:
    step h = fl(fl(end − start)/(n − 1)); point i is fl(start + i·h) in the first half and
    fl(end − (n − 1 − i)·h) in the second, each rounded once from float32 start, end and h.
    """
    if dt == np.float64:
        return np.linspace(start, end, n)
    f32 = np.float32
    a, b = f32(start), f32(end)
    h = np.float64(f32((b - a) / f32(n - 1))) if n > 1 else 0.0
    i = np.arange(n, dtype=np.float64)
    # float32 × integer < 2^53: exact in float64, so one rounding to float32 at the end
    first = (np.float64(a) + h * i).astype(f32)
    second = (np.float64(b) - h * (n - 1 - i)).astype(f32)
    return np.where(np.arange(n) < n // 2, first, second)


# ---------------------------------------------------------------------------------
# Continuous VP
# ---------------------------------------------------------------------------------
class ContinuousVP(NoiseSchedule):
    """Continuous-time VP schedule on t ∈ [t_min, t_max].

    Grids: "linspace" (uniform in t), "logsnr" (uniform in λ = −log σ̄) and "karras"
    (σ̄_j = (σ̄_max^{1/ρ} + j/(N−1)(σ̄_min^{1/ρ} − σ̄_max^{1/ρ}))^ρ, ρ = 7, Karras et al. 2022).
    """

    spacings = ("linspace", "logsnr", "karras")
    default_spacing = "logsnr"
    rho: float = 7.0

    def _grid(self, steps: int, spacing: str) -> np.ndarray:
        if spacing == "linspace":
            return np.linspace(self.t_max, self.t_min, steps)
        sb_max, sb_min = float(self.sigma_bar(self.t_max)), float(self.sigma_bar(self.t_min))
        return self.t_from_sigma_bar(sigma_bar_grid(sb_max, sb_min, steps, spacing, self.rho))


#: "trailing-tail": the last model time's fraction of the way from −1 to the one above it
TAIL_FRACTION = 0.4


#: "long-start": the first step's length in units of T/N
LONG_START = 1.5


def long_start_grid(T: int, steps: int) -> np.ndarray:
    """"long-start" model times (`DiscreteVP`): T − 1, then t_{N−1} = T − 1 − round(`LONG_START` · T/N),
    then N − 2 trailing model times round((t_{N−1} + 1) j/(N − 1)) − 1 below it, with "trailing-tail"'s
    last step (at N ≤ 2 that is "trailing-tail")."""
    if steps == 1:
        return np.array([T - 1.0])
    top = T - 1 - round(LONG_START * T / steps)
    if top + 1 < steps - 1:
        raise ValueError(f"steps={steps} is too many for spacing='long-start' on {T} training timesteps "
                         f"(its first step to t = {top} leaves fewer than {steps - 1} timesteps below it); "
                         "use 'trailing-tail'")
    rest = np.round((top + 1) * np.arange(steps - 2, 0, -1) / (steps - 1)) - 1
    t = np.concatenate([[T - 1.0, float(top)], rest])
    t[-1] = tail_time(t[-2])
    return t


def tail_time(t_above: float) -> float:
    """The last model time of a "trailing-tail" grid below the model time `t_above`:
    round(`TAIL_FRACTION` · (t_above + 1)) − 1, in [0, t_above) for every training timestep t_above ≥ 1."""
    return float(np.round(TAIL_FRACTION * (t_above + 1.0)) - 1.0)


def sigma_bar_grid(sb_max: float, sb_min: float, steps: int, spacing: str, rho: float = 7.0) -> np.ndarray:
    """σ̄ values from sb_max down to sb_min: uniform in log σ̄ ("logsnr") or Karras' ρ-spacing."""
    if spacing == "logsnr":
        return np.exp(np.linspace(math.log(sb_max), math.log(sb_min), steps))
    ramp = np.linspace(0.0, 1.0, steps)
    return (sb_max ** (1 / rho) + ramp * (sb_min ** (1 / rho) - sb_max ** (1 / rho))) ** rho


class LinearVP(ContinuousVP):
    """Song et al.'s VP-SDE: β(t) = β_0 + t(β_1 − β_0),
    log α(t) = −(β_1 − β_0) t²/4 − β_0 t/2."""

    def __init__(self, beta_0: float = 0.1, beta_1: float = 20.0, t_min: float = 1e-3, t_max: float = 1.0):
        if not 0 <= beta_0 < beta_1:
            raise ValueError(f"need 0 ≤ beta_0 < beta_1, got beta_0={beta_0}, beta_1={beta_1}")
        if not 0 < t_min < t_max:
            raise ValueError(f"need 0 < t_min < t_max, got t_min={t_min}, t_max={t_max}")
        self.beta_0, self.beta_1, self.t_min, self.t_max = float(beta_0), float(beta_1), float(t_min), float(t_max)

    def log_alpha(self, t) -> np.ndarray:
        t = np.asarray(t, dtype=np.float64)
        return -0.25 * t**2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

    def t_from_sigma_bar(self, sigma_bar) -> np.ndarray:
        """Solve (β_1−β_0)/4 t² + β_0/2 t + log α = 0 with log α = −½ log(1 + σ̄²)."""
        log_a = -0.5 * np.log1p(np.asarray(sigma_bar, dtype=np.float64) ** 2)
        d = self.beta_1 - self.beta_0
        return 2.0 * (-0.5 * self.beta_0 + np.sqrt(0.25 * self.beta_0**2 - d * log_a)) / d

    def _repr_args(self) -> str:
        return f"beta_0={self.beta_0}, beta_1={self.beta_1}"


class CosineVP(ContinuousVP):
    """Nichol & Dhariwal's cosine schedule in continuous time:
    log α(t) = log cos((t + s)/(1 + s) · π/2) − log cos(s/(1 + s) · π/2)."""

    def __init__(self, s: float = 0.008, t_min: float = 1e-3, t_max: float = 0.9946):
        if not 0 < t_min < t_max < 1:
            raise ValueError(f"need 0 < t_min < t_max < 1, got t_min={t_min}, t_max={t_max}")
        self.s, self.t_min, self.t_max = float(s), float(t_min), float(t_max)
        self._log_a0 = math.log(math.cos(self.s / (1 + self.s) * math.pi / 2))

    def log_alpha(self, t) -> np.ndarray:
        t = np.asarray(t, dtype=np.float64)
        return np.log(np.cos((t + self.s) / (1 + self.s) * math.pi / 2)) - self._log_a0

    def t_from_sigma_bar(self, sigma_bar) -> np.ndarray:
        log_a = -0.5 * np.log1p(np.asarray(sigma_bar, dtype=np.float64) ** 2)
        return 2 * (1 + self.s) / math.pi * np.arccos(np.exp(log_a + self._log_a0)) - self.s

    def _repr_args(self) -> str:
        return f"s={self.s}"


# ---------------------------------------------------------------------------------
# VE / EDM
# ---------------------------------------------------------------------------------
class VE(NoiseSchedule):
    """Variance-exploding schedule (EDM, Karras et al. 2022): α = 1, σ = σ̄ = t.

    The model time is σ itself. Default grid: Karras' ρ = 7 spacing.
    """

    spacings = ("karras", "logsnr", "linspace")
    default_spacing = "karras"
    rho: float = 7.0

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.t_min, self.t_max = float(sigma_min), float(sigma_max)

    def log_alpha(self, t) -> np.ndarray:
        return np.zeros_like(np.asarray(t, dtype=np.float64))

    def sigma(self, t) -> np.ndarray:
        return np.asarray(t, dtype=np.float64).copy()

    def t_from_sigma_bar(self, sigma_bar) -> np.ndarray:
        return np.asarray(sigma_bar, dtype=np.float64).copy()

    def _grid(self, steps: int, spacing: str) -> np.ndarray:
        if spacing == "linspace":
            return np.linspace(self.t_max, self.t_min, steps)
        return sigma_bar_grid(self.t_max, self.t_min, steps, spacing, self.rho)

    def _repr_args(self) -> str:
        return f"sigma_min={self.t_min}, sigma_max={self.t_max}"


#: EDM's schedule is the VE one with σ as model time.
EDM = VE


# ---------------------------------------------------------------------------------
# Flow matching / rectified flow (SD3, Flux)
# ---------------------------------------------------------------------------------
class FlowMatch(NoiseSchedule):
    """Rectified flow: x_σ = (1 − σ) x_0 + σ n, i.e. α = 1 − σ and σ = σ, σ ∈ [0, 1].

    The model time is t = T·σ (T = `num_train_timesteps`, 1000): the `timesteps` SD3 and
    Flux pipelines pass to their transformers. σ = 1 (t = T) is pure noise, where α = 0
    and σ̄ = σ/α = ∞, so ε carries no information about x_0. A flow model predicts the
    velocity v = n − x_0 = dx/dσ, and the solver runs the recurrence in the flow's own
    coordinates y = x, τ = σ, f = v (docs/math.md §11): the step from σ = 1 is regular and the
    inverse reaches σ = 1 exactly. `prediction="epsilon"` (y = x/α, τ = σ̄) is offered for
    grids that stay below σ = 1.

    Grids equal diffusers' `FlowMatchEulerDiscreteScheduler.set_timesteps` bit for bit
    (float32 model times), see :meth:`timesteps`. Options, as in that scheduler's config:

    Args:
        shift: σ ↦ shift·σ / (1 + (shift − 1)σ) (SD3: 3.0). As in diffusers, the
            scheduler's σ_min is itself shifted at construction and the grid is
            linspace(σ_max·T, σ_min·T, N)/T shifted again, so the last σ is shifted twice.
        num_train_timesteps: T.
        use_dynamic_shifting: Flux's resolution-dependent shift; then `timesteps` needs
            `mu` (see :meth:`mu_for`) and `shift` is unused.
        base_shift, max_shift, base_image_seq_len, max_image_seq_len: the line that
            :meth:`mu_for` reads mu from (Flux's `calculate_shift`).
        time_shift_type: "exponential" σ ↦ e^μ/(e^μ + (1/σ − 1)) or "linear" σ ↦ μ/(μ + (1/σ − 1)).
    """

    spacings = ("linspace",)
    default_spacing = "linspace"
    predictions = ("velocity", "epsilon")
    default_prediction = "velocity"

    def __init__(
        self,
        shift: float = 1.0,
        num_train_timesteps: int = 1000,
        *,
        use_dynamic_shifting: bool = False,
        base_shift: float = 0.5,
        max_shift: float = 1.15,
        base_image_seq_len: int = 256,
        max_image_seq_len: int = 4096,
        time_shift_type: Literal["exponential", "linear"] = "exponential",
    ):
        if isinstance(shift, bool) or not isinstance(shift, (int, float, np.floating, np.integer)) or not (
            math.isfinite(shift) and shift > 0
        ):
            raise ValueError(f"shift={shift!r} must be a finite number > 0 (SD3 uses 3.0; 1.0 is no shift)")
        if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, (int, np.integer)) or (
            num_train_timesteps < 2
        ):
            raise ValueError(f"num_train_timesteps={num_train_timesteps!r} must be an integer ≥ 2")
        if not isinstance(use_dynamic_shifting, (bool, np.bool_)):
            raise TypeError(f"use_dynamic_shifting={use_dynamic_shifting!r} must be a bool")
        if time_shift_type not in ("exponential", "linear"):
            raise ValueError(f"time_shift_type={time_shift_type!r} must be 'exponential' or 'linear'")
        if base_image_seq_len == max_image_seq_len:
            raise ValueError(
                f"base_image_seq_len and max_image_seq_len must differ (both {base_image_seq_len}): mu_for "
                "interpolates between them"
            )
        self.shift = float(shift)
        self.num_train_timesteps = int(num_train_timesteps)
        self.use_dynamic_shifting = bool(use_dynamic_shifting)
        self.base_shift, self.max_shift = float(base_shift), float(max_shift)
        self.base_image_seq_len, self.max_image_seq_len = int(base_image_seq_len), int(max_image_seq_len)
        self.time_shift_type = time_shift_type
        self.t_min, self.t_max = 0.0, float(self.num_train_timesteps)
        # the scheduler's own σ range (diffusers __init__: float32, shifted unless dynamic)
        T = self.num_train_timesteps
        sig = np.linspace(1, T, T, dtype=np.float32)[::-1] / np.float32(T)
        if not self.use_dynamic_shifting:
            sig = self._shift(sig)
        self.sigma_max, self.sigma_min = float(sig[0]), float(sig[-1])

    # primitive: α = 1 − σ, σ = t/T (closed forms, not through log α) ---------------------
    def log_alpha(self, t) -> np.ndarray:
        """log(1 − t/T); −∞ at t = T."""
        with np.errstate(divide="ignore"):
            return np.log(self.alpha(t))

    def alpha(self, t) -> np.ndarray:
        """α = 1 − σ = 1 − t/T."""
        return 1.0 - self.sigma(t)

    def sigma(self, t) -> np.ndarray:
        """σ = t/T."""
        return np.asarray(t, dtype=np.float64) / self.num_train_timesteps

    def sigma_bar(self, t) -> np.ndarray:
        """σ̄ = σ/(1 − σ); +∞ at t = T."""
        s = self.sigma(t)
        with np.errstate(divide="ignore"):
            return s / (1.0 - s)

    def t_from_sigma_bar(self, sigma_bar) -> np.ndarray:
        """t = T·σ̄/(1 + σ̄)."""
        sb = np.asarray(sigma_bar, dtype=np.float64)
        return self.num_train_timesteps * np.where(np.isinf(sb), 1.0, sb / (1.0 + sb))

    def coordinates(self, t, prediction: Prediction) -> tuple[np.ndarray, np.ndarray]:
        """"velocity": s = 1, τ = σ (dx/dσ = v, regular at σ = 1); "epsilon": s = α, τ = σ̄."""
        self.check_prediction(prediction)
        if prediction == "velocity":
            sigma = self.sigma(t)
            return np.ones_like(sigma), sigma
        return super().coordinates(t, prediction)

    # grids (identical to diffusers' FlowMatchEulerDiscreteScheduler.set_timesteps) -------------
    def mu_for(self, image_seq_len: int) -> float:
        """Flux's mu for an image of `image_seq_len` latent tokens: the line through
        (base_image_seq_len, base_shift) and (max_image_seq_len, max_shift)."""
        if isinstance(image_seq_len, bool) or not isinstance(image_seq_len, (int, np.integer)) or image_seq_len < 1:
            raise ValueError(f"image_seq_len={image_seq_len!r} must be a positive integer (packed latent tokens)")
        m = (self.max_shift - self.base_shift) / (self.max_image_seq_len - self.base_image_seq_len)
        b = self.base_shift - m * self.base_image_seq_len
        return image_seq_len * m + b

    def timesteps(
        self, steps: int | None = None, spacing: Spacing | None = None, *, mu: float | None = None, sigmas=None,
    ) -> np.ndarray:
        """Model times t = T·σ, noisiest first, as diffusers' `set_timesteps(steps, sigmas=, mu=)` makes them.

        Default: σ_j = linspace(σ_max·T, σ_min·T, steps)/T, then shifted: by `shift`
        (σ ↦ shift·σ/(1 + (shift − 1)σ)) or, with `use_dynamic_shifting`, by `mu`
        (σ ↦ e^μ/(e^μ + 1/σ − 1)). `sigmas=` replaces the linspace (Flux passes
        linspace(1, 1/N, N)); they are rounded to float32 and shifted the same way. The
        model times are float32(float32(σ)·T), returned as float64. The clean end state
        (σ = 0) is not included: the solver appends it.
        """
        spacing = self.default_spacing if spacing is None else spacing
        if spacing not in self.spacings:
            raise ValueError(f"spacing={spacing!r} is not available for FlowMatch; choose one of {list(self.spacings)}")
        if self.use_dynamic_shifting and mu is None:
            raise ValueError(
                "mu is required: this FlowMatch has use_dynamic_shifting=True (Flux); pass "
                "timesteps(steps, mu=schedule.mu_for(image_seq_len)) and give the result to Solver(timesteps=...)"
            )
        if not self.use_dynamic_shifting and mu is not None:
            raise ValueError(f"mu={mu!r} is only used with use_dynamic_shifting=True; this FlowMatch shifts by shift={self.shift}")
        if mu is not None and not (isinstance(mu, (int, float, np.floating, np.integer)) and math.isfinite(mu)):
            raise ValueError(f"mu={mu!r} must be a finite real number")
        if sigmas is not None:
            sig = np.asarray(sigmas)
            if sig.ndim != 1 or sig.size < 1 or not np.issubdtype(sig.dtype, np.number):
                raise ValueError(f"sigmas must be a non-empty 1-D array of numbers, got shape {sig.shape}")
            if steps is not None and steps != sig.size:
                raise ValueError(f"steps={steps!r} differs from len(sigmas)={sig.size}; give one of them")
            sig = sig.astype(np.float32)
            if not (np.all(np.isfinite(sig)) and np.all(sig > 0) and np.all(sig <= 1)):
                raise ValueError(f"sigmas must lie in (0, 1] (σ = 1 is pure noise, 0 the clean end the solver appends); "
                                 f"got range [{sig.min()}, {sig.max()}]")
        else:
            if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
                raise ValueError(f"steps={steps!r} must be a positive integer")
            T = self.num_train_timesteps
            sig = np.linspace(self.sigma_max * T, self.sigma_min * T, int(steps)) / T
        sig = self._time_shift(float(mu), sig) if self.use_dynamic_shifting else self._shift(sig)
        sig32 = np.asarray(sig).astype(np.float32)
        return (sig32 * np.float32(self.num_train_timesteps)).astype(np.float64)

    def _grid(self, steps: int, spacing: str) -> np.ndarray:
        return self.timesteps(steps, spacing)

    def _shift(self, sigma: np.ndarray) -> np.ndarray:
        """shift·σ/(1 + (shift − 1)σ), in σ's own dtype (float32 stays float32, as in diffusers)."""
        return self.shift * sigma / (1 + (self.shift - 1) * sigma)

    def _time_shift(self, mu: float, sigma: np.ndarray) -> np.ndarray:
        """e^μ/(e^μ + (1/σ − 1)) ("exponential") or μ/(μ + (1/σ − 1)) ("linear"), in σ's dtype."""
        m = math.exp(mu) if self.time_shift_type == "exponential" else mu
        return m / (m + (1 / sigma - 1) ** 1.0)

    def _repr_args(self) -> str:
        if self.use_dynamic_shifting:
            return f"use_dynamic_shifting=True, time_shift_type={self.time_shift_type!r}"
        return f"shift={self.shift}"
