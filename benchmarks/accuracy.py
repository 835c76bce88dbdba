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

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from backends.analytic import empirical_order

from . import peers
from .report import Section, compose, doc_intro, plot_series, savefig, table

OURS = ("ddim", "bdia", "edict", "o-belm", "belm3")
NFES_FULL = (5, 10, 20, 50, 100)
NFES_QUICK = (5, 10, 20, 50, 100)
TITLE = "Accuracy vs model calls (analytic Gaussian mixture)"


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


def order_fit(nfes: Sequence[int], errors: Sequence[float | None]) -> float | None:
    """`empirical_order` over the points whose error is a finite number > 0 (None when
    fewer than two are left: a method that failed or is exact there has no order)."""
    pts = [(n, e) for n, e in zip(nfes, errors) if e is not None and np.isfinite(e) and e > 0]
    if len(pts) < 2:
        return None
    ns, es = zip(*pts)
    return empirical_order(ns, es)


def run_case(problem: Problem, spacing: str, nfes: Sequence[int], with_peers: bool, methods: Sequence[str] = OURS) -> dict:
    """{"errors": {method: {nfe: error or None}}, "notes": {method: why it has no error}}
    for one schedule/spacing."""
    import torch

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


# ------------------------------------------------------------------------ compute
@dataclass
class AccuracyData:
    """Everything the tables and the figure show.

    `cases[(schedule, spacing)]` is :func:`run_case`'s {"errors", "notes"} dict;
    `batch` is the number of points per case."""

    nfes: tuple[int, ...]
    batch: int
    cases: dict


def compute(quick: bool = False, progress: bool = True) -> AccuracyData:
    nfes = NFES_QUICK if quick else NFES_FULL
    cases = [("scaled-linear", "linspace"), ("scaled-linear", "trailing"), ("scaled-linear", "leading"),
             ("linear", "linspace"), ("cosine", "linspace")]
    if not quick:
        cases += [("linear", "trailing"), ("cosine", "trailing")]
    batch = 64 if quick else 256
    problems = {name: Problem(s, n=batch) for name, s in schedules(quick).items()}
    results = {}
    for sname, spacing in cases:
        if progress:
            print(f"  accuracy: {sname} / {spacing}", flush=True)
        results[(sname, spacing)] = run_case(problems[sname], spacing, nfes, with_peers=True)
    return AccuracyData(nfes=tuple(nfes), batch=batch, cases=results)


# ------------------------------------------------------------------------ tables
def error_table(errors: dict, nfes: Sequence[int]) -> str:
    """RMSE per method and NFE, then the empirical order over all NFE and over NFE ≥ 20."""
    rows = []
    hi = [n for n in nfes if n >= 20]
    for m, by_nfe in errors.items():
        e = [by_nfe.get(n) for n in nfes]
        rows.append([m] + e + [order_fit(nfes, e), order_fit(hi, [by_nfe.get(n) for n in hi])])
    return table(["method"] + [f"NFE {n}" for n in nfes] + ["order (all NFE)", "order (NFE ≥ 20)"], rows)


def obelm_wins(data: AccuracyData) -> tuple[int, int]:
    """(cells where O-BELM's error is below DDIM's, cells where both have one)."""
    wins = []
    for r in data.cases.values():
        e = r["errors"]
        for n in data.nfes:
            if e["o-belm"].get(n) is not None and e["ddim"].get(n) is not None:
                wins.append(e["o-belm"][n] < e["ddim"][n])
    return sum(wins), len(wins)


def render(data: AccuracyData) -> str:
    body = [doc_intro(__doc__), ""]
    body.append(
        f"Batch: {data.batch} points in R⁴. Methods: this project's "
        + ", ".join(f"`{m}`" for m in OURS)
        + "; peers: "
        + ", ".join(f"`{p}`" for p in peers.SAMPLERS)
        + " (diffusers' own loops; configuration and end points in the peers note below)."
    )
    for (sname, spacing), r in data.cases.items():
        body += ["", f"### {sname} schedule, `{spacing}` spacing — RMSE vs NFE", ""]
        body.append(error_table(r["errors"], data.nfes))
        for m, why in r["notes"].items():
            body.append(f"\n`{m}`: {why}.")
    won, cells = obelm_wins(data)
    body += ["", f"**O-BELM beats DDIM at equal NFE in {won} of {cells} (schedule, spacing, NFE) cells.**"]
    body += ["", "### Peers: configuration and end points", "", doc_intro(peers.__doc__)]
    return "\n".join(body)


# ------------------------------------------------------------------------ figure
def draw(data: AccuracyData, fig_dir: Path) -> list:
    import matplotlib.pyplot as plt

    n_cases = len(data.cases)
    fig, axes = plt.subplots(1, n_cases, figsize=(4.2 * n_cases, 4), sharey=False)
    axes = np.atleast_1d(axes)
    for ax, ((sname, spacing), r) in zip(axes, data.cases.items()):
        plot_series(ax, data.nfes, r["errors"], OURS)
        ax.set_title(f"{sname}, {spacing}")
        ax.set_xlabel("NFE (model calls)")
    axes[0].set_ylabel("RMSE vs reference ODE solution")
    axes[-1].legend(fontsize=7)
    fig.suptitle("Accuracy vs NFE on analytic Gaussian-mixture data (R⁴, K = 5)")
    return [(savefig(fig, fig_dir, "accuracy_vs_nfe"),
             "RMSE of x_0 against the DOP853 reference ODE solution vs number of model calls, per schedule and "
             "timestep spacing; solid lines with circles: this project's methods; dashed with crosses: "
             "diffusers schedulers driven by their own step loops on the same exact ε. "
             "Produced by `benchmarks/accuracy.py`.")]


def run(quick: bool = False, fig_dir=None, progress: bool = True) -> Section:
    return compose(TITLE, lambda: compute(quick, progress), render, draw, fig_dir)
