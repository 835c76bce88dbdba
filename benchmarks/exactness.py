"""Exactness: round-trip error sample(invert(x_0)) vs x_0, over step counts and state dtypes.

Analytic model: the closed-form ε of `default_problem((4,), seed=0)` (five Gaussians
in R⁴) under Stable Diffusion's scaled-linear schedule, `trailing` spacing (the only
one shared by our solver and both diffusers inverse schedulers), 64 data points x_0.
Error = MSE(x_0_rec − x_0) in float64 (the float16/bfloat16 rows include rounding
x_0 itself to that dtype, MSE ≈ 1e−7 / 1e−5 for unit-size data).

Methods: this project's `ddim` (the usual inexact inversion), `bdia` with γ = 1,
0.9 and 0.5, `edict` (p = 0.93), `o-belm`, `belm3`; peers: diffusers'
`DDIMInverseScheduler` → `DDIMScheduler` and `DPMSolverMultistepInverseScheduler` →
`DPMSolverMultistepScheduler` (see `benchmarks.peers` for their end points). The
state dtype is the solver's `state_dtype` (torch tensors; ε is computed in float64
and cast to it); for the peers it is the dtype of the tensor their `step` loops
carry. The amplification factor is `Solver.amplification()` = Π |1/c_{i,k}|, the
growth of round-off through the inverse recurrence; BDIA's is γ^{−N}, EDICT's p^{−2N}.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import peers
from .report import Section, compose, doc_intro, grid_table, log_clip, plot_series, savefig

STEPS = (10, 20, 50, 100, 200, 500)
DTYPES = ("float64", "float32", "float16", "bfloat16")
STEPS_LOW_PRECISION = (10, 50, 200, 500)  # float16 / bfloat16 rows
TITLE = "Exactness of inversion (round trip)"


def methods():
    from belm_core import BDIA, EDICT, get_method

    out = {
        "ddim": lambda: get_method("ddim"),
        "bdia(γ=1)": lambda: BDIA(gamma=1.0),
        "bdia(γ=0.9)": lambda: BDIA(gamma=0.9),
        "bdia(γ=0.5)": lambda: BDIA(gamma=0.5),
        "edict(p=0.93)": lambda: EDICT(p=0.93),
        "o-belm": lambda: get_method("o-belm"),
        "belm3": lambda: get_method("belm3"),
    }
    return out


def roundtrip_ours(schedule, eps_fn, x0, method_factory, steps: int, dtype: str, spacing: str = "trailing"):
    """(mse, amplification) of one round trip with the belm_core Solver (None, reason on failure)."""
    import torch

    from belm_core import Solver

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PrecisionWarning for float16/bfloat16 states: that is the point here
        try:
            solver = Solver(schedule, steps, method_factory(), spacing=spacing, state_dtype=dtype)
        except Exception as exc:
            return None, f"{type(exc).__name__}: {exc}"
        amp = float(solver.amplification())
        try:
            lat = solver.invert(eps_fn, x0)
            rec = solver.sample(eps_fn, lat)
        except (ValueError, FloatingPointError):  # non-finite ε: the round trip blew up
            return float("inf"), amp
    rec = rec.double() if isinstance(rec, torch.Tensor) else torch.from_numpy(np.asarray(rec, dtype=np.float64))
    err = float(((rec - x0.double()) ** 2).mean())
    return (err if np.isfinite(err) else float("inf")), amp


def roundtrip_peer(name: str, schedule, eps_fn, x0, steps: int, dtype: str):
    """(mse, None) of one diffusers inverse → forward round trip (None, reason on failure)."""
    import torch

    try:
        with np.errstate(all="ignore"):
            _, rec = peers.roundtrip(name, schedule, eps_fn, x0.to(getattr(torch, dtype)), steps)
    except Exception as exc:
        return None, f"{type(exc).__name__}"
    err = float(((rec.double() - x0.double()) ** 2).mean())
    return (err if np.isfinite(err) else float("inf")), None


# ------------------------------------------------------------------------ compute
@dataclass
class ExactnessData:
    """Round-trip errors and amplification factors.

    `err[(name, steps, dtype)]` is the round-trip MSE (inf when the run blew up, None
    when it could not run); `amp[(name, steps)]` is this project's methods' float64
    amplification factor. `ours` and `peers` are the method names, in table order."""

    steps: tuple[int, ...]
    ours: tuple[str, ...]
    peers: tuple[str, ...]
    err: dict
    amp: dict

    @property
    def names(self) -> tuple[str, ...]:
        return self.ours + self.peers


def compute(quick: bool = False, progress: bool = True) -> ExactnessData:
    import torch

    from backends.analytic import AnalyticEps, default_problem
    from belm_core import DiscreteVP

    schedule = DiscreteVP.scaled_linear()
    data = default_problem((4,), seed=0)
    eps = AnalyticEps(data, schedule)
    x0 = torch.from_numpy(data.sample(64, seed=3))
    meths = methods()
    err: dict = {}
    amp: dict = {}
    for dtype in DTYPES:
        steps_here = STEPS if dtype in ("float64", "float32") else STEPS_LOW_PRECISION
        if progress:
            print(f"  exactness: {dtype}", flush=True)
        for s in steps_here:
            for name, factory in meths.items():
                e, a = roundtrip_ours(schedule, eps, x0, factory, s, dtype)
                err[(name, s, dtype)] = e
                if dtype == "float64":
                    amp[(name, s)] = a if not isinstance(a, str) else None
            for name in peers.INVERTERS:
                e, _ = roundtrip_peer(name, schedule, eps, x0, s, dtype)
                err[(name, s, dtype)] = e
    return ExactnessData(steps=STEPS, ours=tuple(meths), peers=tuple(peers.INVERTERS), err=err, amp=amp)


# ------------------------------------------------------------------------ tables
def failure_summary(data: ExactnessData, tol: float = 1e-6) -> str:
    """Per method of ours, the first step count from which the float64 round trip fails."""
    blow = []
    for n in data.ours:
        bad = [s for s in data.steps if (data.err.get((n, s, "float64")) is None or data.err[(n, s, "float64")] > tol)]
        blow.append(f"`{n}`: " + (f"MSE > 1e−6 from {bad[0]} steps on" if bad else "MSE ≤ 1e−6 at every step count")
                    + (" (inexact by construction)" if n == "ddim" else ""))
    return "; ".join(blow)


def render(data: ExactnessData) -> str:
    err, steps = data.err, data.steps

    def steps_table(dtype: str) -> str:
        return grid_table("method", data.names, steps, lambda n, s: err.get((n, s, dtype)), lambda s: f"{s} steps", ".2e")

    by_dtype = [(s, d) for s in (50, 500) for d in DTYPES]
    body = [doc_intro(__doc__), ""]
    body += ["### Round-trip MSE vs steps, float64 state", "", steps_table("float64")]
    body += ["", "### Round-trip MSE vs steps, float32 state", "", steps_table("float32")]
    body += ["", "### Round-trip MSE vs state dtype (50 and 500 steps)", ""]
    body.append(grid_table("method", data.names, by_dtype, lambda n, sd: err.get((n, *sd)),
                           lambda sd: f"{sd[1]}, {sd[0]}", ".1e"))
    body += ["", "### Amplification factor `Solver.amplification()` (float64 plan)", ""]
    body.append(grid_table("method", data.ours, steps, lambda n, s: data.amp.get((n, s)), lambda s: f"{s} steps", ".3g"))
    body += ["", "**Where the round trip fails (float64 state, MSE > 1e−6):** " + failure_summary(data) + ".",
             "", "`inf` means the run produced non-finite values (the solver's finiteness check stopped it).",
             "The real-network version of this measurement (trained digits UNet) is in the digits section."]
    return "\n".join(body)


# ------------------------------------------------------------------------ figures
def draw(data: ExactnessData, fig_dir: Path) -> list:
    import matplotlib.pyplot as plt

    figures = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, dtype in zip(axes, ("float64", "float32")):
        series = {n: {s: data.err.get((n, s, dtype)) for s in data.steps} for n in data.names}
        plot_series(ax, data.steps, series, data.ours, clip=True)
        ax.set_title(f"state dtype {dtype}")
        ax.set_xlabel("steps N")
    axes[0].set_ylabel("round-trip MSE  (inf/NaN clipped to 1e30)")
    axes[1].legend(fontsize=7)
    fig.suptitle("Exactness: MSE(sample(invert(x0)), x0) on the analytic Gaussian mixture, SD scaled-linear, trailing")
    figures.append((savefig(fig, fig_dir, "exactness_vs_steps"),
                    "Round-trip MSE vs number of steps for float64 and float32 solver states on the analytic "
                    "Gaussian-mixture ε (64 points in R⁴, SD scaled-linear schedule, trailing spacing). Exact methods sit at "
                    "rounding level until their amplification factor (γ^−N for BDIA, p^−2N for EDICT) makes round-off "
                    "explode; DDIM and the diffusers inverse schedulers are inexact at every N. Produced by "
                    "`benchmarks/exactness.py`."))
    fig, ax = plt.subplots(figsize=(6.5, 4))
    x = np.arange(len(DTYPES))
    w = 0.8 / len(data.names)
    for j, n in enumerate(data.names):
        ax.bar(x + j * w, [log_clip(data.err.get((n, 50, d))) for d in DTYPES], w, label=n)
    ax.set_yscale("log")
    ax.set_xticks(x + 0.4 - w / 2, DTYPES)
    ax.set_ylabel("round-trip MSE (50 steps)")
    ax.legend(fontsize=6, ncol=2)
    ax.set_title("Round-trip MSE vs state dtype (analytic, 50 steps)")
    figures.append((savefig(fig, fig_dir, "exactness_vs_dtype"),
                    "Round-trip MSE at 50 steps for each solver-state dtype; ε itself is exact (float64) and cast to the "
                    "state dtype. Produced by `benchmarks/exactness.py`."))
    return figures


def run(quick: bool = False, fig_dir=None, progress: bool = True) -> Section:
    return compose(TITLE, lambda: compute(quick, progress), render, draw, fig_dir)
