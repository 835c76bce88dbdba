"""Accuracy vs model calls on analytic Gaussian-mixture data.

Problem: `backends.analytic.default_problem((4,), seed=0)` — five well separated
Gaussian components in R⁴ — whose exact ε is known in closed form. For each schedule
and spacing, a batch of x_T is drawn at the grid's first model time t_T as
x_T = α_T x_0 + σ_T n (x_0 from the data, n ~ N(0, I), fixed seeds), every sampler
integrates the probability-flow ODE to its end point, and

    error = RMSE(x_end − x_ref),   x_ref = the ODE solution from the same x_T (DOP853,
            rtol 1e-11) at the *same end point* (the clean state α = 1, σ̄ = 0 for all
            but diffusers-DEIS, which stops at σ̄(t = 0); see `benchmarks.peers`).

NFE = number of ε evaluations; EDICT makes 2 per step, so at NFE n it runs ⌊n/2⌋
steps. Empirical order = −slope of log error vs log NFE (least squares over the NFE
values listed in the table header).
"""

from __future__ import annotations

import time
import warnings
from typing import Sequence

import numpy as np

from .report import Section, savefig, table

OURS = ("ddim", "bdia", "edict", "o-belm", "belm3")
NFES_FULL = (5, 10, 20, 50, 100)
NFES_QUICK = (5, 10, 20, 50, 100)


def schedules(quick: bool):
    from belm_core import DiscreteVP

    return {
        "scaled-linear": DiscreteVP.scaled_linear(),
        "linear": DiscreteVP.linear(),
        "cosine": DiscreteVP.cosine(),
    }


def _solver(schedule, method: str, nfe: int, spacing: str):
    """(Solver, steps) for `method` at `nfe` model calls, or (None, reason)."""
    from belm_core import Solver, get_method

    try:
        m = get_method(method)
    except Exception as exc:  # e.g. belm3 while belm_core.derive is missing
        return None, f"unavailable ({type(exc).__name__}: {exc})"
    steps = nfe // m.nfe_per_step
    if steps < m.min_steps:
        return None, f"needs ≥ {m.min_steps} steps"
    return Solver(schedule, steps, m, spacing=spacing), steps


class Problem:
    """Data, seeds and cached reference solutions for one schedule."""

    def __init__(self, schedule, n: int = 128, seed: int = 0):
        from backends.analytic import AnalyticEps, default_problem

        self.schedule = schedule
        self.data = default_problem((4,), seed=seed)
        self.eps = AnalyticEps(self.data, schedule)
        self.x0 = self.data.sample(n, seed=seed + 1)
        self.noise = np.random.default_rng(seed + 2).standard_normal(self.x0.shape)
        self._ref: dict = {}

    def x_T(self, t_T) -> np.ndarray:
        s = self.schedule
        return float(s.alpha(t_T)) * self.x0 + float(s.sigma(t_T)) * self.noise

    def reference(self, t_T, end_alpha: float = 1.0, end_sigma_bar: float = 0.0) -> np.ndarray:
        key = (float(t_T), round(end_sigma_bar, 12))
        if key not in self._ref:
            s = self.schedule
            x_bar = self.x_T(t_T) / float(s.alpha(t_T))
            self._ref[key] = self.data.flow(x_bar, float(s.sigma_bar(t_T)), end_sigma_bar)
        return end_alpha * self._ref[key]


def rmse(a, b) -> float:
    return float(np.sqrt(np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2)))


def order_fit(nfes: Sequence[int], errors: Sequence[float]) -> float | None:
    """−slope of log(error) against log(NFE) by least squares (None with < 2 finite points)."""
    x = np.log(np.asarray(nfes, dtype=float))
    y = np.asarray(errors, dtype=float)
    ok = np.isfinite(y) & (y > 0)
    if ok.sum() < 2:
        return None
    return float(-np.polyfit(x[ok], np.log(y[ok]), 1)[0])


def run_case(problem: Problem, spacing: str, nfes: Sequence[int], with_peers: bool, methods: Sequence[str] = OURS) -> dict:
    """{method: {nfe: error}} for one schedule/spacing."""
    import torch

    from . import peers

    res: dict = {}
    notes: dict = {}
    for method in methods:
        res[method] = {}
        for nfe in nfes:
            solver, steps = _solver(problem.schedule, method, nfe, spacing)
            if solver is None:
                notes[method] = steps
                res[method][nfe] = None
                continue
            t_T = solver.timesteps[0]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                x = solver.sample(problem.eps, problem.x_T(t_T))
            res[method][nfe] = rmse(x, problem.reference(t_T))
    if with_peers:
        for name in peers.SAMPLERS:
            res[name] = {}
            for nfe in nfes:
                t_T = peers.first_timestep(name, problem.schedule, nfe, spacing)
                run = peers.sample(name, problem.schedule, problem.eps, torch.from_numpy(problem.x_T(t_T)), nfe, spacing)
                ref = problem.reference(t_T, run.end_alpha, run.end_sigma_bar)
                res[name][nfe] = rmse(run.x0.numpy(), ref)
    return {"errors": res, "notes": notes}


def run(quick: bool = False, fig_dir=None, progress: bool = True) -> Section:
    import matplotlib.pyplot as plt

    t_start = time.perf_counter()
    nfes = NFES_QUICK if quick else NFES_FULL
    cases = [("scaled-linear", "linspace"), ("scaled-linear", "trailing"), ("scaled-linear", "leading"),
             ("linear", "linspace"), ("cosine", "linspace")]
    if not quick:
        cases += [("linear", "trailing"), ("cosine", "trailing")]
    scheds = schedules(quick)
    problems = {name: Problem(s, n=64 if quick else 256) for name, s in scheds.items()}
    results = {}
    for sname, spacing in cases:
        if progress:
            print(f"  accuracy: {sname} / {spacing}", flush=True)
        results[(sname, spacing)] = run_case(problems[sname], spacing, nfes, with_peers=True)

    body = [__doc__.split("\n\n", 1)[1].strip(), ""]
    body.append(
        f"Batch: {64 if quick else 256} points in R⁴. Methods: this project's "
        + ", ".join(f"`{m}`" for m in OURS)
        + "; peers: "
        + ", ".join(f"`{p}`" for p in __import__('benchmarks.peers', fromlist=['SAMPLERS']).SAMPLERS)
        + " (diffusers' own loops; configuration and end points in the peers note below)."
    )
    order_rows = []
    for (sname, spacing), r in results.items():
        errs = r["errors"]
        rows = []
        for m, by_nfe in errs.items():
            e = [by_nfe[n] for n in nfes]
            p_all = order_fit(nfes, [np.nan if v is None else v for v in e])
            hi = [n for n in nfes if n >= 20]
            p_hi = order_fit(hi, [np.nan if by_nfe[n] is None else by_nfe[n] for n in hi])
            rows.append([m] + e + [p_all, p_hi])
            order_rows.append((sname, spacing, m, p_all, p_hi))
        body += ["", f"### {sname} schedule, `{spacing}` spacing — RMSE vs NFE", ""]
        body.append(table(["method"] + [f"NFE {n}" for n in nfes] + ["order (all NFE)", "order (NFE ≥ 20)"], rows))
        for m, why in r["notes"].items():
            body.append(f"\n`{m}`: {why}.")
    # O-BELM vs DDIM summary
    wins = []
    for (sname, spacing), r in results.items():
        e = r["errors"]
        for n in nfes:
            if e["o-belm"].get(n) is not None and e["ddim"].get(n) is not None:
                wins.append(e["o-belm"][n] < e["ddim"][n])
    body += ["", f"**O-BELM beats DDIM at equal NFE in {sum(wins)} of {len(wins)} (schedule, spacing, NFE) cells.**"]
    from . import peers as _peers

    body += ["", "### Peers: configuration and end points", "", _peers.__doc__.split("\n\n", 1)[1].strip()]

    figures = []
    n_cases = len(results)
    fig, axes = plt.subplots(1, n_cases, figsize=(4.2 * n_cases, 4), sharey=False)
    for ax, ((sname, spacing), r) in zip(np.atleast_1d(axes), results.items()):
        for m, by_nfe in r["errors"].items():
            xs = [n for n in nfes if by_nfe.get(n) is not None]
            if not xs:
                continue
            ax.loglog(xs, [by_nfe[n] for n in xs], marker="o" if m in OURS else "x",
                      ls="-" if m in OURS else "--", label=m)
        ax.set_title(f"{sname}, {spacing}")
        ax.set_xlabel("NFE (model calls)")
        ax.grid(True, which="both", alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("RMSE vs reference ODE solution")
    np.atleast_1d(axes)[-1].legend(fontsize=7)
    fig.suptitle("Accuracy vs NFE on analytic Gaussian-mixture data (R⁴, K = 5)")
    figures.append((savefig(fig, fig_dir, "accuracy_vs_nfe"),
                    "RMSE of x_0 against the DOP853 reference ODE solution vs number of model calls, per schedule and "
                    "timestep spacing; solid lines with circles: this project's methods; dashed with crosses: "
                    "diffusers schedulers driven by their own step loops on the same exact ε. "
                    "Produced by `benchmarks/accuracy.py`."))
    return Section("Accuracy vs model calls (analytic Gaussian mixture)", "\n".join(body), figures,
                   seconds=time.perf_counter() - t_start)
