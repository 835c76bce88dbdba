"""Noise schedules, each built on one primitive: log α(t).

A diffusion state is x_t = α_t x_0 + σ_t ε. Every schedule here derives

    α(t) = exp(log α(t)),
    σ(t) = sqrt(1 − α(t)²)                 (variance preserving, VP)
    σ(t) = t, α(t) = 1                     (variance exploding, VE / EDM)
    σ̄(t) = σ(t) / α(t)                    (noise-to-signal ratio, e^{−λ})
    λ(t) = log α(t) − log σ(t) = −log σ̄(t)  (half log-SNR)

from `log_alpha` (and `sigma` for VE), computed in log space and float64. The
probability-flow ODE in the "bar" variables x̄ = x/α reads dx̄/dσ̄ = ε(x, t)
(MATH.md §1); the solver only ever needs α and σ̄ on a grid.

The *model time* `t` is what the network is conditioned on: the integer training
timestep for `DiscreteVP`, continuous time in [t_min, t_max] for `LinearVP` and
`CosineVP`, and σ itself for `VE`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Literal

import numpy as np

__all__ = ["Spacing", "NoiseSchedule", "DiscreteVP", "ContinuousVP", "LinearVP", "CosineVP", "VE", "EDM"]

#: grid layouts: "leading", "trailing", "linspace" as in diffusers' DDIMScheduler (discrete
#: schedules); "linspace" (uniform t), "logsnr" and "karras" for continuous ones
Spacing = Literal["leading", "trailing", "linspace", "logsnr", "karras"]


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
    """

    discrete = True
    spacings = ("leading", "trailing", "linspace")
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

        else:  # trailing: T − 1, T − 1 − T/N, … (diffusers' np.arange(T, 0, −T/N) yields N + 1
            # points for 62 of the N ≤ 1000, ending at −1; we keep exactly N and agree elsewhere)
            delta = (T - T / steps) - T  # the increment np.arange uses, so round-half ties agree
            t = np.round(T + np.arange(steps) * delta) - 1
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
