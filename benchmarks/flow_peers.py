"""Rectified-flow peers: diffusers' Euler loop, RF-Solver-2 and FireFlow, each with its inversion.

All integrate the flow ODE dx/dσ = v(x, σ) of x_σ = (1 − σ) x_0 + σ n on a grid
σ_N = 1 > σ_{N−1} > … > σ_1 > σ_0 = 0 (the `FlowMatch` grid of the same steps, `mu` and
`sigmas`, σ = t/1000, followed by the clean state), calling the model at model time
t = 1000·σ; the step from σ to σ' has h = σ' − σ (negative when sampling). Sampling walks
the grid from σ = 1 to 0; inversion runs *the same update* from σ = 0 to 1 on the
reversed grid, as the papers do for inversion (the model is then called at σ = 0 first).

| peer | update, one step σ → σ' = σ + h | NFE for N steps | declared order |
|---|---|---|---|
| `diffusers-FlowMatchEuler` | x' = x + h v(x, σ): `FlowMatchEulerDiscreteScheduler`'s own `set_timesteps` / `step` loop (it rounds the state to float32 inside `step`); its inversion is the same Euler step in float64 on the reversed grid (diffusers has no inverse flow scheduler) | N | 1 |
| `RF-Solver-2` | Wang et al. 2024, "Taming Rectified Flow for Inversion and Editing" (arXiv 2411.04746), second-order Taylor expansion of the ODE: x' = x + h v + ½ h² v⁽¹⁾, with v = v(x, σ) and v⁽¹⁾ ≈ (v(x + ½h v, σ + ½h) − v) / (½h), a finite difference with one extra model call at the half step | 2N | 2 |
| `FireFlow` | Deng et al. 2024, "FireFlow: Fast Inversion of Rectified Flow for Image Semantic Editing" (arXiv 2412.07517), midpoint step whose half-step slope reuses the previous step's midpoint velocity: x_m = x + ½h v̂, v̂' = v(x_m, σ + ½h), x' = x + h v̂'; v̂ = v(x, σ) (a model call) only at the first step | N + 1 | 2 (claimed by the paper) |

RF-Solver-2's update simplifies to x' = x + h v(x + ½h v, σ + ½h), the explicit midpoint
rule: the code keeps the paper's Taylor form. None of these updates is exactly invertible:
inverting with the same rule evaluates v at other points than sampling does, so
sample(invert(x_0)) ≠ x_0 with an error of the method's order. Every peer counts its model
calls (`PeerRun.nfe`), and the benchmark compares methods at equal NFE: N steps of Euler
or O-BELM, ⌊N/2⌋ of RF-Solver-2, N − 1 of FireFlow (`steps_for`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Literal

import numpy as np

PeerName = Literal["diffusers-FlowMatchEuler", "RF-Solver-2", "FireFlow"]
#: names of the peers, in table order
PEERS: tuple[PeerName, ...] = ("diffusers-FlowMatchEuler", "RF-Solver-2", "FireFlow")
#: convergence order each peer's paper declares
ORDER = {"diffusers-FlowMatchEuler": 1, "RF-Solver-2": 2, "FireFlow": 2}


def _check(name: str) -> None:
    if name not in PEERS:
        raise ValueError(f"name={name!r} is not a flow peer; choose one of {list(PEERS)}")


def nfe_of(name: str, steps: int) -> int:
    """Model calls of `steps` steps of peer `name` (one direction)."""
    _check(name)
    return {"diffusers-FlowMatchEuler": steps, "RF-Solver-2": 2 * steps, "FireFlow": steps + 1}[name]


def steps_for(name: str, nfe: int) -> int:
    """The most steps of peer `name` that fit in `nfe` model calls (0 when none fits)."""
    _check(name)
    return {"diffusers-FlowMatchEuler": nfe, "RF-Solver-2": nfe // 2, "FireFlow": max(nfe - 1, 0)}[name]


@dataclass(frozen=True)
class FlowGrid:
    """A named FlowMatch grid rule: `schedule.timesteps(steps, mu=mu, sigmas=sigmas(steps))`.

    `sigmas` maps a step count to the custom σ list a pipeline passes (Flux:
    linspace(1, 1/N, N)), or is None for the scheduler's own linspace."""

    name: str
    schedule: Any  # belm_core.FlowMatch
    mu: float | None = None
    sigmas: Callable[[int], np.ndarray] | None = None

    def kwargs(self, steps: int) -> dict:
        return {"mu": self.mu, "sigmas": None if self.sigmas is None else self.sigmas(steps)}

    def timesteps(self, steps: int) -> np.ndarray:
        """Model times t = 1000·σ, noisiest first (diffusers' `set_timesteps`)."""
        return self.schedule.timesteps(steps, **self.kwargs(steps))

    def sigma_grid(self, steps: int) -> np.ndarray:
        """σ_N = 1, …, σ_1, σ_0 = 0 in float64 (σ = t/T, then the clean state)."""
        return np.concatenate([self.schedule.sigma(self.timesteps(steps)), [0.0]])


class Counted:
    """v_fn wrapper counting model calls; calls v_fn(x, T·σ)."""

    def __init__(self, v_fn: Callable, T: int):
        self.v_fn, self.T, self.nfe = v_fn, T, 0

    def __call__(self, x, sigma: float):
        self.nfe += 1
        return self.v_fn(x, self.T * sigma)


# ------------------------------------------------------------------------ one step of each rule
def euler_step(v, x, sigma: float, h: float):
    """x' = x + h v(x, σ)."""
    return x + h * v(x, sigma)


def rf_solver2_step(v, x, sigma: float, h: float):
    """RF-Solver-2 (Wang et al. 2024, eq. of the second-order Taylor expansion):
    x' = x + h v + ½ h² v⁽¹⁾,  v⁽¹⁾ = (v(x + ½h v, σ + ½h) − v) / (½h)."""
    v0 = v(x, sigma)
    v_half = v(x + 0.5 * h * v0, sigma + 0.5 * h)
    dv = (v_half - v0) / (0.5 * h)
    return x + h * v0 + 0.5 * h * h * dv


def fireflow_step(v, x, sigma: float, h: float, v_hat=None):
    """FireFlow (Deng et al. 2024, modified midpoint with velocity reuse): returns (x', v̂')
    with x_m = x + ½h v̂, v̂' = v(x_m, σ + ½h), x' = x + h v̂'; v̂ = v(x, σ) when None (first step)."""
    if v_hat is None:
        v_hat = v(x, sigma)
    v_mid = v(x + 0.5 * h * v_hat, sigma + 0.5 * h)
    return x + h * v_mid, v_mid


def integrate(name: str, v_fn: Callable, x, sigmas, T: int = 1000) -> tuple[Any, int]:
    """(x at sigmas[-1], model calls): peer `name`'s own rule along `sigmas` (either
    direction; the float64 rules, also for `diffusers-FlowMatchEuler`)."""
    _check(name)
    v = Counted(v_fn, T)
    s = [float(z) for z in np.asarray(sigmas, dtype=np.float64)]
    v_hat = None
    for a, b in zip(s[:-1], s[1:]):
        if name == "RF-Solver-2":
            x = rf_solver2_step(v, x, a, b - a)
        elif name == "FireFlow":
            x, v_hat = fireflow_step(v, x, a, b - a, v_hat)
        else:
            x = euler_step(v, x, a, b - a)
    return x, v.nfe


def make_diffusers_scheduler(schedule):
    """diffusers' `FlowMatchEulerDiscreteScheduler` with a `FlowMatch`'s configuration."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=schedule.num_train_timesteps, shift=schedule.shift,
        use_dynamic_shifting=schedule.use_dynamic_shifting, base_shift=schedule.base_shift,
        max_shift=schedule.max_shift, base_image_seq_len=schedule.base_image_seq_len,
        max_image_seq_len=schedule.max_image_seq_len, time_shift_type=schedule.time_shift_type,
    )


def diffusers_euler(v_fn: Callable, x_T, grid: FlowGrid, steps: int) -> tuple[Any, int]:
    """(x_0, model calls) from diffusers' own loop: `set_timesteps(steps, sigmas=, mu=)`, then
    `step(v_fn(x, t), t, x)` for each of its timesteps. x_T is a torch tensor."""
    kw = grid.kwargs(steps)
    sch = make_diffusers_scheduler(grid.schedule)
    nfe = 0
    x = x_T
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sch.set_timesteps(steps, sigmas=None if kw["sigmas"] is None else list(kw["sigmas"]), mu=kw["mu"])
        for t in sch.timesteps:
            v = v_fn(x, float(t))
            nfe += 1
            x = sch.step(v, t, x).prev_sample
    return x, nfe


@dataclass
class PeerRun:
    x: Any  # the end state, in the input's array type
    nfe: int


def sample(name: str, v_fn: Callable, x_T, grid: FlowGrid, steps: int) -> PeerRun:
    """Peer `name` from x_T at σ = 1 to σ = 0 in `steps` steps of `grid`."""
    _check(name)
    if steps < 1:
        raise ValueError(f"steps={steps} must be ≥ 1")
    if name == "diffusers-FlowMatchEuler":
        import torch

        x, nfe = diffusers_euler(v_fn, torch.as_tensor(x_T), grid, steps)
        return PeerRun(x if isinstance(x_T, torch.Tensor) else x.double().numpy(), nfe)
    x, nfe = integrate(name, v_fn, x_T, grid.sigma_grid(steps), grid.schedule.num_train_timesteps)
    return PeerRun(x, nfe)


def invert(name: str, v_fn: Callable, x0, grid: FlowGrid, steps: int) -> PeerRun:
    """Peer `name`'s inversion: its own rule from σ = 0 to σ = 1 on the reversed grid."""
    _check(name)
    if steps < 1:
        raise ValueError(f"steps={steps} must be ≥ 1")
    x, nfe = integrate(name, v_fn, x0, grid.sigma_grid(steps)[::-1], grid.schedule.num_train_timesteps)
    return PeerRun(x, nfe)


def roundtrip(name: str, v_fn: Callable, x0, grid: FlowGrid, steps: int) -> tuple[Any, Any, int]:
    """(latent at σ = 1, sample(invert(x0)), model calls of both directions)."""
    lat = invert(name, v_fn, x0, grid, steps)
    rec = sample(name, v_fn, lat.x, grid, steps)
    return lat.x, rec.x, lat.nfe + rec.nfe
