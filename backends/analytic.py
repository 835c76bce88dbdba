"""Exact ε-prediction and exact flow velocity of Gaussian-mixture data: model-free backends with a known answer.

A diffusion state is x_t = α_t x_0 + σ_t n (n ~ N(0, I)). In the "bar" variables
(docs/math.md §1)

    x̄ = x / α,    σ̄ = σ / α,    x̄ = x_0 + σ̄ n,

the probability-flow ODE is dx̄/dσ̄ = ε*(x̄, σ̄), where the exact (Bayes-optimal)
ε-prediction is

    ε*(x̄, σ̄) = −σ̄ ∇_x̄ log p_σ̄(x̄) = (x̄ − E[x_0 | x̄]) / σ̄,

and p_σ̄ is the data density convolved with N(0, σ̄² I). This depends on (x̄, σ̄) only,
never on the schedule, so one data distribution serves every schedule.

For data Σ_k w_k N(μ_k, diag(s_k²)) (weights w_k, means μ_k, per-coordinate variances s_k²)

    p_σ̄(x̄) = Σ_k w_k N(x̄; μ_k, diag(s_k² + σ̄²)),
    ε*(x̄, σ̄) = σ̄ Σ_k r_k(x̄) (x̄ − μ_k) / (s_k² + σ̄²),
    r_k(x̄) = w_k N(x̄; μ_k, s_k² + σ̄²) / Σ_j w_j N(x̄; μ_j, s_j² + σ̄²)

(the responsibilities r_k are computed with log-sum-exp). For a single Gaussian (K = 1)
the ODE has the closed-form flow, coordinate by coordinate,

    x̄(σ̄₂) − μ = sqrt((s² + σ̄₂²) / (s² + σ̄₁²)) · (x̄(σ̄₁) − μ).

For K > 1 :meth:`GaussianMixture.flow` integrates the ODE with DOP853 at tight
tolerances; it is the reference solution samplers are measured against.

:class:`AnalyticEps` wraps a mixture and a schedule into the ``eps_fn(x, t)`` that
``belm_core`` solvers call; it accepts numpy arrays or torch tensors (torch is imported
lazily, only when a tensor comes in).

Rectified flow (docs/math.md §11). The same data under x_σ = (1 − σ) x_0 + σ n, σ ∈ [0, 1]
(α = 1 − σ), has the exact velocity v*(x, σ) = E[n − x_0 | x_σ = x], the derivative of the
flow ODE dx/dσ = v*. Per component k, x_σ | k ~ N((1 − σ) μ_k, V_k), V_k = (1 − σ)² s_k² + σ²,
with Cov(x_0, x_σ) = (1 − σ) s_k² and Cov(n, x_σ) = σ, so

    v*(x, σ) = Σ_k r_k(x) [ (σ − (1 − σ) s_k²)/V_k · (x − (1 − σ) μ_k) − μ_k ],
    r_k(x) = w_k N(x; (1 − σ) μ_k, V_k) / Σ_j w_j N(x; (1 − σ) μ_j, V_j).

V_k ≥ min(s_k², 1)/(1 + s_k²) > 0 on all of [0, 1], so this is regular at both ends
(σ = 1: v* = x − Σ_k w_k μ_k; σ = 0: v* = −x), unlike ε* = (x̄ − E[x_0|x̄])/σ̄, whose bar
variables do not exist at σ = 1. For one Gaussian z = x − (1 − σ)μ obeys
dz/dσ = ½ (dV/dσ)/V · z, the closed form z(σ₂) = sqrt(V(σ₂)/V(σ₁)) z(σ₁).
:meth:`GaussianMixture.rectified_flow` is the reference solution (closed form for K = 1,
DOP853 otherwise); :class:`AnalyticVelocity` is the ``v_fn(x, t)`` for a `FlowMatch` schedule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.integrate import solve_ivp

if TYPE_CHECKING:  # pragma: no cover - typing only
    from belm_core.schedules import NoiseSchedule

__all__ = ["GaussianMixture", "AnalyticEps", "AnalyticVelocity", "default_problem", "flow_problem", "empirical_order"]


def _scalar(value: Any, name: str, *, allow_zero: bool = True) -> float:
    """A finite non-negative (or positive) Python float, else ValueError naming `name`."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} must be a real number") from None
    if arr.ndim != 0:
        raise ValueError(f"{name} must be a scalar, got an array of shape {arr.shape}")
    v = float(arr)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        need = "≥ 0" if allow_zero else "> 0"
        raise ValueError(f"{name}={v!r} must be a finite number {need}")
    return v


class GaussianMixture:
    """Data distribution Σ_k w_k N(μ_k, diag(s_k²)) on arrays of shape `event_shape`.

    Args:
        means: (K, *event_shape) component means μ_k.
        variances: (K,) one variance per component (isotropic, s_k² I) or
            (K, *event_shape) per-coordinate variances; all finite and > 0.
        weights: (K,) positive mixture weights, normalised to sum to one;
            None gives uniform weights.

    Attributes:
        event_shape: shape of one data point (means.shape[1:]).
        n_components: K.
        means: (K, *event_shape) float64.
        variances: (K, *event_shape) float64 (isotropic input broadcast).
        weights: (K,) float64, summing to one.
    """

    def __init__(self, means, variances, weights=None):
        mu = np.asarray(means, dtype=np.float64)
        if mu.ndim < 2 or mu.shape[0] < 1 or mu.size == 0:
            raise ValueError(
                f"means must have shape (K, *event_shape) with K ≥ 1 and a non-empty event shape, "
                f"got shape {mu.shape}"
            )
        if not np.all(np.isfinite(mu)):
            raise ValueError("means must be finite")
        K, event_shape = mu.shape[0], tuple(mu.shape[1:])

        var = np.asarray(variances, dtype=np.float64)
        if var.shape == (K,):
            var = np.broadcast_to(var.reshape((K,) + (1,) * len(event_shape)), mu.shape).copy()
        elif var.shape != mu.shape:
            raise ValueError(
                f"variances has shape {var.shape}; with means of shape {mu.shape} it must be "
                f"({K},) (isotropic per component) or {mu.shape} (diagonal)"
            )
        if not np.all(np.isfinite(var)) or np.any(var <= 0):
            bad = var[~(np.isfinite(var) & (var > 0))]
            raise ValueError(
                f"variances must be finite and > 0, got {bad[:4].tolist()} "
                "(point masses are not supported; use a small positive variance)"
            )

        if weights is None:
            w = np.full(K, 1.0 / K)
        else:
            w = np.asarray(weights, dtype=np.float64)
            if w.shape != (K,):
                raise ValueError(f"weights has shape {w.shape}; it must be ({K},), one per component of means")
            if not np.all(np.isfinite(w)) or np.any(w <= 0):
                raise ValueError(f"weights must be finite and > 0, got {w.tolist()[:8]}")
            w = w / w.sum()

        self.event_shape: tuple[int, ...] = event_shape
        self.n_components: int = K
        self.means = mu
        self.variances = var
        self.weights = w
        # flattened float64 tables used by eps/flow: (K, D)
        self._dim = int(np.prod(event_shape))
        self._mu = mu.reshape(K, self._dim)
        self._var = var.reshape(K, self._dim)
        self._log_w = np.log(w)

    # -- constructors -------------------------------------------------------------------
    @classmethod
    def gaussian(cls, mean, variance) -> GaussianMixture:
        """A single Gaussian N(mean, variance): `variance` is a scalar (isotropic) or has mean's shape."""
        mean = np.asarray(mean, dtype=np.float64)
        variance = np.asarray(variance, dtype=np.float64)
        if variance.ndim == 0:
            variance = variance.reshape(1)
        elif variance.shape == mean.shape:
            variance = variance[None]
        else:
            raise ValueError(
                f"variance has shape {variance.shape}; it must be a scalar or match mean's shape {mean.shape}"
            )
        return cls(mean[None], variance)

    @classmethod
    def random(
        cls,
        event_shape: Sequence[int] = (2,),
        n_components: int = 3,
        seed: int = 0,
        spread: float = 2.0,
        min_var: float = 0.05,
        max_var: float = 0.5,
    ) -> GaussianMixture:
        """A reproducible random mixture.

        μ_k ~ N(0, spread² I); per-coordinate variances s_k² ~ U[min_var, max_var];
        weights ~ U[0.5, 1.5] then normalised. Same arguments, same mixture.
        """
        event_shape = tuple(int(n) for n in event_shape)
        if not event_shape or any(n < 1 for n in event_shape):
            raise ValueError(f"event_shape={event_shape} must be a non-empty tuple of positive sizes")
        if isinstance(n_components, bool) or not isinstance(n_components, (int, np.integer)) or n_components < 1:
            raise ValueError(f"n_components={n_components!r} must be a positive integer")
        if not 0 < min_var <= max_var:
            raise ValueError(f"need 0 < min_var ≤ max_var, got min_var={min_var}, max_var={max_var}")
        rng = np.random.default_rng(seed)
        shape = (int(n_components),) + event_shape
        means = spread * rng.standard_normal(shape)
        variances = rng.uniform(min_var, max_var, size=shape)
        weights = rng.uniform(0.5, 1.5, size=int(n_components))
        return cls(means, variances, weights)

    # -- the exact ε-prediction ---------------------------------------------------------
    def _flat(self, x_bar, name: str) -> tuple[np.ndarray, tuple[int, ...]]:
        """(B, D) float64 view of x_bar with trailing shape event_shape, plus the batch shape."""
        x = np.asarray(x_bar, dtype=np.float64)
        n = len(self.event_shape)
        if x.ndim < n or tuple(x.shape[x.ndim - n :]) != self.event_shape:
            raise ValueError(
                f"{name} has shape {x.shape}; its trailing dimensions must equal the event shape "
                f"{self.event_shape}, i.e. shape (..., {', '.join(map(str, self.event_shape))})"
            )
        batch = tuple(x.shape[: x.ndim - n])
        return x.reshape(-1, self._dim), batch

    def _logits(self, x: np.ndarray, sigma_bar: float) -> tuple[np.ndarray, np.ndarray]:
        """(z, logits) on a (B, D) batch: z = (x̄ − μ_k)/(s_k² + σ̄²) of shape (B, K, D) and
        log w_k + log N(x̄; μ_k, s_k² + σ̄²) of shape (B, K), without the common −D/2 log 2π."""
        v = self._var + sigma_bar * sigma_bar  # (K, D): s_k² + σ̄²
        diff = x[:, None, :] - self._mu  # (B, K, D)
        z = diff / v
        return z, self._log_w - 0.5 * (np.einsum("bkd,bkd->bk", diff, z) + np.log(v).sum(axis=1))

    def _eps_flat(self, x: np.ndarray, sigma_bar: float) -> np.ndarray:
        """ε*(x̄, σ̄) on a (B, D) float64 batch (no validation)."""
        if self.n_components == 1:
            return sigma_bar * (x - self._mu[0]) / (self._var[0] + sigma_bar * sigma_bar)
        z, logits = self._logits(x, sigma_bar)
        logits -= logits.max(axis=1, keepdims=True)
        r = np.exp(logits)
        r /= r.sum(axis=1, keepdims=True)
        return sigma_bar * np.einsum("bk,bkd->bd", r, z)

    def eps(self, x_bar: np.ndarray, sigma_bar: float) -> np.ndarray:
        """ε*(x̄, σ̄) = σ̄ Σ_k r_k(x̄) (x̄ − μ_k)/(s_k² + σ̄²), float64, same shape as x_bar.

        Args:
            x_bar: (..., *event_shape) points x̄ = x/α.
            sigma_bar: σ̄ ≥ 0 (ε* = 0 at σ̄ = 0).
        """
        sb = _scalar(sigma_bar, "sigma_bar")
        x, batch = self._flat(x_bar, "x_bar")
        return self._eps_flat(x, sb).reshape(batch + self.event_shape)

    def log_prob(self, x_bar: np.ndarray, sigma_bar: float = 0.0) -> np.ndarray:
        """log p_σ̄(x̄) = log Σ_k w_k N(x̄; μ_k, diag(s_k² + σ̄²)), shape = batch shape."""
        sb = _scalar(sigma_bar, "sigma_bar")
        x, batch = self._flat(x_bar, "x_bar")
        logits = self._logits(x, sb)[1] - 0.5 * self._dim * math.log(2 * math.pi)
        m = logits.max(axis=1, keepdims=True)
        return (m[:, 0] + np.log(np.exp(logits - m).sum(axis=1))).reshape(batch)

    def component(self, x_bar: np.ndarray, sigma_bar: float = 0.0) -> np.ndarray:
        """argmax_k of the responsibility w_k N(x̄; μ_k, s_k² + σ̄²): the component x̄ belongs to
        (integer array of the batch shape). Two samplers "flip" a point when they send it to
        different components."""
        sb = _scalar(sigma_bar, "sigma_bar")
        x, batch = self._flat(x_bar, "x_bar")
        return np.argmax(self._logits(x, sb)[1], axis=1).reshape(batch)

    # -- data and reference trajectories ------------------------------------------------
    def sample(self, n: int, seed=0) -> np.ndarray:
        """n data samples x_0, shape (n, *event_shape), float64, reproducible from `seed`."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n={n!r} must be a non-negative integer")
        rng = np.random.default_rng(seed)
        k = rng.choice(self.n_components, size=int(n), p=self.weights)
        x = self._mu[k] + np.sqrt(self._var[k]) * rng.standard_normal((int(n), self._dim))
        return x.reshape((int(n),) + self.event_shape)

    def flow(self, x_bar, sigma_bar_from, sigma_bar_to, rtol: float = 1e-11, atol: float = 1e-12) -> np.ndarray:
        """Solve dx̄/dσ̄ = ε*(x̄, σ̄) from σ̄ = sigma_bar_from to sigma_bar_to (either direction).

        K = 1 uses the closed form x̄₂ − μ = sqrt((s² + σ̄₂²)/(s² + σ̄₁²)) (x̄₁ − μ);
        K > 1 integrates the whole flattened batch as one system with DOP853 (points do not
        interact, so each keeps its own accuracy). Returns float64 with x_bar's shape.
        """
        sb_from = _scalar(sigma_bar_from, "sigma_bar_from")
        sb_to = _scalar(sigma_bar_to, "sigma_bar_to")
        x, batch = self._flat(x_bar, "x_bar")
        out_shape = batch + self.event_shape
        if sb_from == sb_to or x.size == 0:
            return x.copy().reshape(out_shape)
        if self.n_components == 1:
            ratio = np.sqrt((self._var[0] + sb_to**2) / (self._var[0] + sb_from**2))
            return (self._mu[0] + ratio * (x - self._mu[0])).reshape(out_shape)

        return _dop853(self._eps_flat, x, sb_from, sb_to, rtol, atol).reshape(out_shape)

    def reference_sample(self, schedule: NoiseSchedule, x_T, t_T) -> np.ndarray:
        """The exact ODE sample: x at the clean state (α = 1, σ̄ = 0) from x_T at model time t_T.

        x̄_T = x_T / α(t_T), then flow from σ̄(t_T) to 0; α = 1 there, so x = x̄.
        """
        x_T = np.asarray(x_T, dtype=np.float64)
        return self.flow(x_T / float(schedule.alpha(t_T)), float(schedule.sigma_bar(t_T)), 0.0)

    # -- rectified flow: x_σ = (1 − σ) x_0 + σ n ------------------------------------------
    def _velocity_flat(self, x: np.ndarray, sigma: float) -> np.ndarray:
        """v*(x, σ) on a (B, D) float64 batch (no validation)."""
        one_m = 1.0 - sigma
        v = one_m * one_m * self._var + sigma * sigma  # (K, D): V_k
        slope = (sigma - one_m * self._var) / v  # (σ − (1 − σ) s_k²)/V_k
        if self.n_components == 1:
            return slope[0] * (x - one_m * self._mu[0]) - self._mu[0]
        diff = x[:, None, :] - one_m * self._mu  # (B, K, D)
        logits = self._log_w - 0.5 * (np.einsum("bkd,bkd->bk", diff, diff / v) + np.log(v).sum(axis=1))
        logits -= logits.max(axis=1, keepdims=True)
        r = np.exp(logits)
        r /= r.sum(axis=1, keepdims=True)
        return np.einsum("bk,bkd->bd", r, slope * diff - self._mu)

    def velocity(self, x: np.ndarray, sigma: float) -> np.ndarray:
        """v*(x, σ) = E[n − x_0 | x_σ = x] of the rectified flow x_σ = (1 − σ) x_0 + σ n, float64.

        Args:
            x: (..., *event_shape) states.
            sigma: σ ∈ [0, 1] (1 = pure noise, 0 = data); both ends included.
        """
        sg = _scalar(sigma, "sigma")
        if sg > 1.0:
            raise ValueError(f"sigma={sg!r} must lie in [0, 1] (σ = 1 is pure noise, 0 the data)")
        xf, batch = self._flat(x, "x")
        return self._velocity_flat(xf, sg).reshape(batch + self.event_shape)

    def rectified_flow(
        self, x, sigma_from: float, sigma_to: float, rtol: float = 1e-12, atol: float = 1e-13
    ) -> np.ndarray:
        """Solve dx/dσ = v*(x, σ) from σ = sigma_from to sigma_to (either direction, ends in [0, 1] included).

        K = 1 uses the closed form x₂ − (1 − σ₂)μ = sqrt(V(σ₂)/V(σ₁)) (x₁ − (1 − σ₁)μ),
        V(σ) = (1 − σ)² s² + σ²; K > 1 integrates the flattened batch as one system with
        DOP853 (points do not interact). Returns float64 with x's shape.
        """
        s_from = _scalar(sigma_from, "sigma_from")
        s_to = _scalar(sigma_to, "sigma_to")
        for name, v in (("sigma_from", s_from), ("sigma_to", s_to)):
            if v > 1.0:
                raise ValueError(f"{name}={v!r} must lie in [0, 1]")
        xf, batch = self._flat(x, "x")
        out_shape = batch + self.event_shape
        if s_from == s_to or xf.size == 0:
            return xf.copy().reshape(out_shape)
        if self.n_components == 1:
            mu, var = self._mu[0], self._var[0]

            def V(s: float) -> np.ndarray:
                return (1 - s) ** 2 * var + s * s

            z = np.sqrt(V(s_to) / V(s_from)) * (xf - (1 - s_from) * mu)
            return ((1 - s_to) * mu + z).reshape(out_shape)

        return _dop853(self._velocity_flat, xf, s_from, s_to, rtol, atol).reshape(out_shape)

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.n_components}, event_shape={self.event_shape})"


def empirical_order(ns: Sequence[float], errors: Sequence[float]) -> float:
    """Empirical convergence order p of errors that behave like C · N^(−p).

    p is the least-squares slope of −log(error) against log(N) over all given points
    (the order check diffrax runs on each of its solvers). `ns` are step counts or
    model calls; both sequences must hold at least two points with at least two
    distinct N, every N > 0 and every error finite and > 0 (a zero or non-finite error
    has no logarithm: filter such points out first).
    """
    n = np.asarray(ns, dtype=np.float64)
    e = np.asarray(errors, dtype=np.float64)
    if n.ndim != 1 or e.shape != n.shape:
        raise ValueError(f"ns and errors must be 1-d sequences of equal length, got shapes {n.shape} and {e.shape}")
    if not (np.isfinite(n).all() and (n > 0).all()) or np.unique(n).size < 2:
        raise ValueError(f"ns={n.tolist()} must be finite, > 0 and hold at least two distinct values")
    if not (np.isfinite(e).all() and (e > 0).all()):
        raise ValueError(f"errors={e.tolist()} must all be finite and > 0")
    slope = np.polyfit(np.log(n), np.log(e), 1)[0]
    return float(-slope)


def default_problem(event_shape: Sequence[int] = (4,), seed: int = 0) -> GaussianMixture:
    """The standard test distribution for demos and benchmarks.

    K = 5 components with
      * means drawn uniformly in the box [−4, 4]^D (enlarged if needed, e.g. for D = 1) and
        kept only if at least 3.0 (Euclidean) from every earlier mean — well separated;
      * per-coordinate variances s² ~ U[0.05, 0.3] (std ≤ 0.55, so the separation is
        ≥ 5 standard deviations);
      * unequal weights ~ U[0.5, 1.5], normalised.
    Reproducible from `seed`; no sampler is tuned on it.
    """
    event_shape = tuple(int(n) for n in event_shape)
    if not event_shape or any(n < 1 for n in event_shape):
        raise ValueError(f"event_shape={event_shape} must be a non-empty tuple of positive sizes")
    K, min_dist, half = 5, 3.0, 4.0
    D = int(np.prod(event_shape))
    rng = np.random.default_rng(seed)
    while True:
        means: list[np.ndarray] = []
        for _ in range(2000):
            c = rng.uniform(-half, half, size=D)
            if all(np.linalg.norm(c - m) >= min_dist for m in means):
                means.append(c)
                if len(means) == K:
                    break
        if len(means) == K:
            break
        half *= 1.5
    variances = rng.uniform(0.05, 0.3, size=(K, D))
    weights = rng.uniform(0.5, 1.5, size=K)
    return GaussianMixture(
        np.stack(means).reshape((K,) + event_shape), variances.reshape((K,) + event_shape), weights
    )


def flow_problem(event_shape: Sequence[int] = (4,), seed: int = 0) -> GaussianMixture:
    """The standard rectified-flow test distribution: `default_problem` scaled to unit-order data.

    Flow models (SD3, Flux) are trained on latents of roughly unit scale mixed with unit
    noise, so the means of `default_problem` (in [−4, 4]^D) are halved and the variances
    quartered (std ≤ 0.28, separation ≥ 1.5, still ≥ 5 standard deviations). Reproducible
    from `seed`; no sampler is tuned on it.
    """
    base = default_problem(event_shape, seed)
    return GaussianMixture(0.5 * base.means, 0.25 * base.variances, base.weights)


class AnalyticEps:
    """eps_fn(x, t) for belm_core: the exact ε-prediction of `data` under `schedule`.

    ε(x, t) = ε*(x / α(t), σ̄(t)), computed in float64 and returned in x's own type
    (numpy array or torch tensor), dtype and device. `nfe` counts calls; `reset()`
    sets it back to zero.
    """

    def __init__(self, data: GaussianMixture, schedule: NoiseSchedule):
        if not isinstance(data, GaussianMixture):
            raise ValueError(f"data must be a GaussianMixture, got {type(data).__name__}")
        for attr in ("alpha", "sigma_bar"):
            if not callable(getattr(schedule, attr, None)):
                raise ValueError(f"schedule must provide alpha(t) and sigma_bar(t); {schedule!r} lacks {attr}")
        self.data = data
        self.schedule = schedule
        self.nfe = 0

    def reset(self) -> None:
        """Set the call counter `nfe` back to zero."""
        self.nfe = 0

    def _time(self, t) -> tuple[float, float]:
        """(α(t), σ̄(t)) as Python floats for a scalar model time."""
        if getattr(t, "ndim", 0) != 0:
            raise ValueError(f"t must be a scalar model time, got an array of shape {tuple(t.shape)}")
        if type(t).__module__.startswith("torch"):
            t = t.item()
        alpha = float(self.schedule.alpha(t))
        sigma_bar = float(self.schedule.sigma_bar(t))
        if not (math.isfinite(alpha) and alpha > 0 and math.isfinite(sigma_bar)):
            raise ValueError(f"t={t!r} gives α={alpha}, σ̄={sigma_bar}; need finite α > 0 and σ̄")
        return alpha, sigma_bar

    def __call__(self, x, t):
        """ε(x, t) for x of shape (..., *event_shape); t is a scalar model time."""
        alpha, sigma_bar = self._time(t)
        if type(x).__module__.startswith("torch"):
            import torch  # lazy: only when a tensor comes in

            x64 = x.detach().to(device="cpu", dtype=torch.float64).numpy()
            xb, batch = self.data._flat(x64, "x")
            e = self.data._eps_flat(xb / alpha, sigma_bar).reshape(batch + self.data.event_shape)
            self.nfe += 1
            out_dtype = x.dtype if x.is_floating_point() else torch.float64
            return torch.from_numpy(e).to(device=x.device, dtype=out_dtype)
        arr = np.asarray(x)
        xb, batch = self.data._flat(arr, "x")
        e = self.data._eps_flat(xb / alpha, sigma_bar).reshape(batch + self.data.event_shape)
        self.nfe += 1
        out_dtype = arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.float64
        return e.astype(out_dtype, copy=False)

    def __repr__(self) -> str:
        return f"AnalyticEps({self.data!r}, {self.schedule!r})"


class AnalyticVelocity:
    """v_fn(x, t) for belm_core: the exact flow velocity of `data` under a `FlowMatch` schedule.

    v(x, t) = v*(x, σ(t)) with σ(t) = t/T the schedule's σ at model time t (T·σ, what SD3
    and Flux transformers receive), computed in float64 and returned in x's own type
    (numpy array or torch tensor), dtype and device. `nfe` counts calls; `reset()` sets it
    back to zero. Use it with `Solver(schedule, ..., prediction="velocity")`.
    """

    def __init__(self, data: GaussianMixture, schedule):
        if not isinstance(data, GaussianMixture):
            raise ValueError(f"data must be a GaussianMixture, got {type(data).__name__}")
        if not callable(getattr(schedule, "sigma", None)) or "velocity" not in getattr(schedule, "predictions", ()):
            raise ValueError(f"schedule must be a flow schedule with a velocity prediction (FlowMatch), got {schedule!r}")
        self.data = data
        self.schedule = schedule
        self.nfe = 0

    def reset(self) -> None:
        """Set the call counter `nfe` back to zero."""
        self.nfe = 0

    def _sigma(self, t) -> float:
        if getattr(t, "ndim", 0) != 0:
            raise ValueError(f"t must be a scalar model time, got an array of shape {tuple(t.shape)}")
        if type(t).__module__.startswith("torch"):
            t = t.item()
        sigma = float(self.schedule.sigma(t))
        if not (math.isfinite(sigma) and 0.0 <= sigma <= 1.0):
            raise ValueError(f"t={t!r} gives σ={sigma}; need σ in [0, 1]")
        return sigma

    def __call__(self, x, t):
        """v(x, t) for x of shape (..., *event_shape); t is a scalar model time."""
        sigma = self._sigma(t)
        if type(x).__module__.startswith("torch"):
            import torch  # lazy: only when a tensor comes in

            x64 = x.detach().to(device="cpu", dtype=torch.float64).numpy()
            xb, batch = self.data._flat(x64, "x")
            v = self.data._velocity_flat(xb, sigma).reshape(batch + self.data.event_shape)
            self.nfe += 1
            out_dtype = x.dtype if x.is_floating_point() else torch.float64
            return torch.from_numpy(v).to(device=x.device, dtype=out_dtype)
        arr = np.asarray(x)
        xb, batch = self.data._flat(arr, "x")
        v = self.data._velocity_flat(xb.astype(np.float64, copy=False), sigma).reshape(batch + self.data.event_shape)
        self.nfe += 1
        out_dtype = arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.float64
        return v.astype(out_dtype, copy=False)

    def __repr__(self) -> str:
        return f"AnalyticVelocity({self.data!r}, {self.schedule!r})"


def _dop853(field, x: np.ndarray, s_from: float, s_to: float, rtol: float, atol: float) -> np.ndarray:
    """The reference ODE solution dx/ds = field(x, s) from s_from to s_to for a (B, D) batch
    (DOP853 at the given tolerances): the ε-ODE in σ̄ and the flow's velocity ODE in σ."""
    B, D = x.shape

    def rhs(s: float, y: np.ndarray) -> np.ndarray:
        return field(y.reshape(B, D), s).ravel()

    sol = solve_ivp(rhs, (s_from, s_to), x.ravel(), method="DOP853", rtol=rtol, atol=atol)
    if not sol.success:  # pragma: no cover - DOP853 on this smooth ODE does not fail
        raise RuntimeError(f"reference ODE solve failed: {sol.message}")
    return sol.y[:, -1]
