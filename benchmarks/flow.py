"""Rectified flows (SD3, Flux): accuracy and round trips next to RF-Solver-2 and FireFlow.

Flow-matching models are trained on x_σ = (1 − σ) x_0 + σ n and predict v = n − x_0 =
dx/dσ; belm runs its recurrences in the flow's own coordinates (x, σ) with
`Solver(FlowMatch(...), ..., prediction="velocity")` (docs/math.md §11). Our methods:
`recommended` (`belm_core.recommended(FlowMatch, N)`: O-BELM with the predictor–corrector
start-up, docs/math.md §14), `o-belm` (the paper's DDIM = Euler start) and `bdia(γ=1)` (BDIA
with γ = 1: the leapfrog rule on uneven steps). Peers
(`benchmarks.flow_peers`, implemented here from the papers' formulas): diffusers'
`FlowMatchEulerDiscreteScheduler` driven by its own step loop (Euler, 1 NFE per step),
**RF-Solver-2** (Wang et al. 2024, second-order Taylor step with a finite-difference
derivative, 2 NFE per step) and **FireFlow** (Deng et al. 2024, midpoint step reusing the
previous midpoint velocity, N + 1 NFE for N steps); each peer inverts by running its own
update from σ = 0 to σ = 1, as the papers do.

Grids (model times t = 1000·σ, identical to diffusers' `set_timesteps`): `shift 1`
(`FlowMatch()`), `SD3` (`FlowMatch(shift=3.0)`) and `Flux` (dynamic shifting with
mu = 1.15, Flux's value for a 1024² image, and the pipeline's sigmas = linspace(1, 1/N, N)).

Analytic problems, float64 NumPy, velocity in closed form (`GaussianMixture.velocity`):
`flow_problem` (`backends.analytic.flow_problem((4,), seed=0)`: five well separated
components in R⁴), `held-out` (four overlapping components in R⁴ drawn here with seed
2024: means N(0, 0.8²), variances U(0.03, 0.3), weights U(0.5, 2)) and `gaussian` (one
anisotropic Gaussian in R⁸, whose flow has a closed form). Accuracy: a batch of x_T ~ N(0, I)
at σ = 1, every method integrates to σ = 0 and

    error = RMSE(x_0 − x_ref),   x_ref = the exact ODE solution from the same x_T
            (`GaussianMixture.rectified_flow`: closed form for one Gaussian, DOP853 at rtol 1e-12 otherwise),

at equal NFE (model calls, counted by a wrapper around v_fn): N steps of our methods and of
Euler, ⌊NFE/2⌋ steps of RF-Solver-2, NFE − 1 steps of FireFlow. Empirical order = −slope of
log error vs log NFE. Round trip: a batch x_0 from the data, invert to σ = 1 and sample
back with the same method and grid (ours: `Solver.invert` / `Solver.sample`, the latent is
the state tuple), error = MSE(sample(invert(x_0)) − x_0), vs the number of steps N.
Two things to know when reading the tables: RF-Solver-2's update is the explicit midpoint
rule, which on a single Gaussian (V(σ) quadratic in σ) is locally exact to O(h⁴), so its
order on `gaussian` exceeds 2; and on `flow_problem` a few points of the batch lie near
the boundary between two modes, which Euler sends to the wrong mode until N is large
(its RMSE then falls slower than 1/N).

Digits: a class-conditional rectified-flow UNet trained here
(`python -m benchmarks.train_digits_flow`, cached in `benchmarks/.cache/digits_flow/`),
run through `DigitsVelocity` (float32 network, float64 solver state) on the shift-1 grid.
Sample quality is scored like the DDPM section (`benchmarks.digits.Judge`: the digit
classifier's accuracy on the requested label and the Fréchet distance on its hidden
features against the held-out split); reconstruction MSE of held-out digits is on the
[0, 1] pixel scale.
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import flow_peers
from .accuracy import order_fit, rmse
from .flow_peers import PEERS, FlowGrid
from .report import Section, compose, doc_intro, plot_series, savefig, table

TITLE = "Rectified flows (SD3, Flux): accuracy and exact inversion vs RF-Solver-2 and FireFlow"
OURS = ("recommended", "o-belm", "bdia(γ=1)")
METHODS = OURS + PEERS
F64 = " (float64 network)"
FLUX_MU = 1.15  # Flux's mu for 4096 latent tokens (a 1024² image)


def grids() -> dict[str, FlowGrid]:
    from belm_core import FlowMatch

    flux = FlowMatch(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
    return {
        "shift 1": FlowGrid("shift 1", FlowMatch(shift=1.0)),
        "SD3": FlowGrid("SD3", FlowMatch(shift=3.0)),
        "Flux": FlowGrid("Flux", flux, mu=FLUX_MU, sigmas=lambda n: np.linspace(1.0, 1.0 / n, n)),
    }


def problems() -> dict:
    """name → GaussianMixture (see the module docstring)."""
    from backends.analytic import GaussianMixture, flow_problem

    rng = np.random.default_rng(2024)
    K, D = 4, 4
    held_out = GaussianMixture(rng.normal(scale=0.8, size=(K, D)), rng.uniform(0.03, 0.3, size=(K, D)),
                               rng.uniform(0.5, 2.0, size=K))
    g = np.random.default_rng(7)
    gaussian = GaussianMixture.gaussian(g.normal(scale=0.7, size=8), g.uniform(0.02, 0.5, size=8))
    return {"flow_problem": flow_problem((4,), seed=0), "held-out": held_out, "gaussian": gaussian}


# ------------------------------------------------------------------------ running one method
class Counter:
    """v_fn wrapper counting calls."""

    def __init__(self, v_fn: Callable):
        self.v_fn, self.nfe = v_fn, 0

    def __call__(self, x, t):
        self.nfe += 1
        return self.v_fn(x, t)


def _method(name: str):
    from belm_core import BDIA

    return BDIA(gamma=1.0) if name == "bdia(γ=1)" else name


def steps_for(name: str, nfe: int) -> int:
    """Steps of `name` at `nfe` model calls: N = NFE for ours, the peer's own rule otherwise."""
    return nfe if name in OURS else flow_peers.steps_for(name, nfe)


def _solver(name: str, grid: FlowGrid, steps: int):
    """Our method `name` on `steps` steps of `grid`, in the flow's velocity coordinates."""
    from belm_core import Solver, recommended

    if name == "recommended":
        return Solver(grid.schedule, timesteps=grid.timesteps(steps), prediction="velocity",
                      **recommended(grid.schedule, steps))
    return Solver(grid.schedule, timesteps=grid.timesteps(steps), method=_method(name), prediction="velocity")


def solve(name: str, v_fn: Callable, x_T, grid: FlowGrid, steps: int):
    """(x_0, model calls) of method `name` from x_T at σ = 1 in `steps` steps of `grid`."""
    v = Counter(v_fn)
    if name in OURS:
        solver = _solver(name, grid, steps)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            x = solver.sample(v, x_T)
        return x, v.nfe
    run = flow_peers.sample(name, v, x_T, grid, steps)
    return run.x, v.nfe


def roundtrip(name: str, v_fn: Callable, x0, grid: FlowGrid, steps: int):
    """(sample(invert(x0)), model calls of both directions) with method `name`."""
    v = Counter(v_fn)
    if name in OURS:
        solver = _solver(name, grid, steps)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rec = solver.sample(v, solver.invert(v, x0))
        return rec, v.nfe
    _, rec, _ = flow_peers.roundtrip(name, v, x0, grid, steps)
    return rec, v.nfe


def _mse(a, b) -> float:
    e = float(np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2))
    return e if np.isfinite(e) else float("inf")


def analytic_case(data, grid: FlowGrid, nfes: Sequence[int], rt_steps: Sequence[int], batch: int, seed: int = 0):
    """{"errors", "calls", "roundtrip", "rt_calls"}: {method: {nfe or steps: value}} for one problem and grid."""
    from backends.analytic import AnalyticVelocity

    v_fn = AnalyticVelocity(data, grid.schedule)
    x_T = np.random.default_rng(seed).standard_normal((batch,) + data.event_shape)
    ref = data.rectified_flow(x_T, 1.0, 0.0)
    x0 = data.sample(batch, seed=seed + 1)
    out = {k: {m: {} for m in METHODS} for k in ("errors", "calls", "roundtrip", "rt_calls")}
    for m in METHODS:
        for nfe in nfes:
            steps = steps_for(m, nfe)
            if steps < 1:
                out["errors"][m][nfe] = None
                continue
            x, calls = solve(m, v_fn, x_T, grid, steps)
            out["errors"][m][nfe], out["calls"][m][nfe] = rmse(x, ref), calls
        for steps in rt_steps:
            rec, calls = roundtrip(m, v_fn, x0, grid, steps)
            out["roundtrip"][m][steps], out["rt_calls"][m][steps] = _mse(rec, x0), calls
    return out


# ------------------------------------------------------------------------ digits
@dataclass
class DigitsFlowData:
    """The digits flow model's numbers: `quality[(method, nfe)]` is `Judge.score`'s dict plus
    "calls" (model calls actually made); `rec[(method, steps)]` a reconstruction MSE on the
    [0, 1] scale and `rec_calls[(method, steps)]` the calls of invert + sample."""

    checkpoint: str
    trained_s: float | None
    meta: dict
    classifier_acc: float
    floor_fd: float
    n_gen: int
    nfes: tuple[int, ...]
    quality: dict
    n_rec: int
    rec_steps: tuple[int, ...]
    rec: dict
    rec_calls: dict


def digits_compute(quick: bool, progress: bool) -> DigitsFlowData:
    import torch

    from .digits import Judge
    from .train_digits import load_split
    from .train_digits_flow import CACHE, DigitsVelocity, FlowTrainConfig, ensure_model, load_model

    t0 = time.perf_counter()
    path = ensure_model(FlowTrainConfig(), CACHE, progress=progress)
    trained_s = time.perf_counter() - t0
    torch.set_num_threads(1)  # tiny 8×8 UNet: one thread is faster and immune to oversubscription
    unet, meta = load_model(path)
    x_tr, y_tr, x_te, y_te, _, _ = load_split()
    judge = Judge(x_tr, y_tr, x_te, y_te)
    grid = grids()["shift 1"]

    nfes = (5, 10, 20) if quick else (5, 10, 20, 50)
    n_gen = 200 if quick else 1000
    labels = np.arange(n_gen) % 10
    x_T = torch.randn(n_gen, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    quality = {}
    for nfe in nfes:
        if progress:
            print(f"  flow digits: sample quality NFE {nfe}", flush=True)
        for m in METHODS:
            x, calls = solve(m, DigitsVelocity(unet, labels), x_T, grid, steps_for(m, nfe))
            quality[(m, nfe)] = dict(judge.score(torch.as_tensor(x).float().numpy(), labels), calls=calls)

    n_rec = 32 if quick else 200
    rec_steps = (10, 28, 50) if quick else (10, 28, 50, 100)
    x0 = torch.from_numpy(x_te[:n_rec]).double()
    v_fn = DigitsVelocity(unet, y_te[:n_rec])
    rec, rec_calls = {}, {}
    for steps in rec_steps:
        if progress:
            print(f"  flow digits: reconstruction {steps} steps", flush=True)
        for m in METHODS:
            x, calls = roundtrip(m, v_fn, x0, grid, steps)
            rec[(m, steps)] = _mse((torch.as_tensor(x) - x0) / 2, 0.0)
            rec_calls[(m, steps)] = calls
    # the same round trips with the network itself in float64: no float32 rounding of the inputs
    unet64 = copy.deepcopy(unet).double()
    v64 = DigitsVelocity(unet64, y_te[:n_rec])
    for steps in rec_steps:
        for m in OURS:
            x, calls = roundtrip(m, v64, x0, grid, steps)
            rec[(m + F64, steps)] = _mse((torch.as_tensor(x) - x0) / 2, 0.0)
            rec_calls[(m + F64, steps)] = calls
    return DigitsFlowData(
        checkpoint=str(path.relative_to(path.parents[2])), trained_s=trained_s if trained_s > 5 else None, meta=meta,
        classifier_acc=judge.test_acc, floor_fd=judge.floor_fd, n_gen=n_gen, nfes=nfes, quality=quality,
        n_rec=n_rec, rec_steps=rec_steps, rec=rec, rec_calls=rec_calls)


# ------------------------------------------------------------------------ compute
@dataclass
class FlowData:
    """Everything the tables and figures show.

    `cases[(problem, grid)]` is :func:`analytic_case`'s dict; `problems` describes each
    problem in words; `digits` is None when the digits part was not run."""

    nfes: tuple[int, ...]
    rt_steps: tuple[int, ...]
    batch: int
    problems: dict
    grids: tuple[str, ...]
    cases: dict
    digits: DigitsFlowData | None


def compute(quick: bool = False, progress: bool = True, with_digits: bool = True) -> FlowData:
    nfes = (4, 8, 16, 28, 50)
    rt_steps = (4, 8, 16, 28, 50)
    batch = 64 if quick else 256
    probs = problems()
    gr = grids()
    cases = {}
    for pname, data in probs.items():
        for gname, grid in gr.items():
            if progress:
                print(f"  flow: {pname} / {gname}", flush=True)
            cases[(pname, gname)] = analytic_case(data, grid, nfes, rt_steps, batch)
    described = {p: f"K = {d.n_components}, R^{int(np.prod(d.event_shape))}" for p, d in probs.items()}
    dig = digits_compute(quick, progress) if with_digits else None
    return FlowData(nfes=nfes, rt_steps=rt_steps, batch=batch, problems=described, grids=tuple(gr), cases=cases,
                    digits=dig)


# ------------------------------------------------------------------------ tables
def accuracy_table(data: FlowData, problem: str) -> str:
    """RMSE per (grid, method) and NFE, then the empirical order over all NFE."""
    rows = []
    for g in data.grids:
        errors = data.cases[(problem, g)]["errors"]
        for m in METHODS:
            e = [errors[m].get(n) for n in data.nfes]
            rows.append([f"{g} · {m}"] + e + [order_fit(data.nfes, e)])
    return table(["grid · method"] + [f"NFE {n}" for n in data.nfes] + ["order"], rows)


def roundtrip_table(data: FlowData, problem: str) -> str:
    rows = []
    for g in data.grids:
        rt = data.cases[(problem, g)]["roundtrip"]
        rows += [[f"{g} · {m}"] + [rt[m].get(s) for s in data.rt_steps] for m in METHODS]
    return table(["grid · method"] + [f"{s} steps" for s in data.rt_steps], rows, ".1e")


def calls_check(data: FlowData) -> list[str]:
    """Cells whose counted model calls differ from the nominal NFE (sampling) or from the
    nominal round-trip cost: 2N − 1 for ours (N to invert, N − 1 to sample back from the
    state tuple, which needs no call at σ = 1), twice the peer's one-way count otherwise."""
    bad = []
    for key, case in data.cases.items():
        for m in METHODS:
            for n, c in case["calls"][m].items():
                want = n if m in OURS else flow_peers.nfe_of(m, steps_for(m, n))
                if c != want:
                    bad.append(f"{key} {m} NFE {n}: {c} calls")
            for s, c in case["rt_calls"][m].items():
                want = 2 * s - 1 if m in OURS else 2 * flow_peers.nfe_of(m, s)
                if c != want:
                    bad.append(f"{key} {m} round trip {s} steps: {c} calls")
    return bad


def nfe_note(data: FlowData) -> str:
    bad = calls_check(data)
    ok = ("the counted model calls equal the nominal ones in every cell" if not bad
          else "counted calls differ from the nominal ones in: " + "; ".join(bad))
    return (f"**NFE accounting.** At NFE n: o-belm, bdia(γ=1) and Euler run n steps (n calls); RF-Solver-2 "
            f"⌊n/2⌋ steps (2 calls each, so NFE 2⌊n/2⌋); FireFlow n − 1 steps (n calls: one extra at the first "
            f"step, then one per step). A round trip of N steps costs 2N − 1 calls for ours (N to invert; "
            f"sampling back from the inverted state tuple needs none at σ = 1), 2N for Euler, 4N for RF-Solver-2 and "
            f"2(N + 1) for FireFlow. Counted by a wrapper around v_fn: {ok}.")


def recommended_note(data: FlowData) -> str:
    """How often `recommended` is at or below the better peer, and below plain o-belm, over every analytic cell."""
    won = vs_ob = cells = 0
    for case in data.cases.values():
        e = case["errors"]
        for n in data.nfes:
            peers = [e[m].get(n) for m in PEERS if e[m].get(n) is not None]
            r = e["recommended"].get(n)
            if r is None or not peers:
                continue
            cells += 1
            won += r <= min(peers)
            vs_ob += r < e["o-belm"][n]
    return (f"**Recommended for flows** (`belm_core.recommended`: O-BELM with the predictor–corrector start): at or "
            f"below the better of Euler, RF-Solver-2 and FireFlow in {won} of {cells} (problem, grid, NFE) cells, and "
            f"below O-BELM with the paper's Euler start in {vs_ob} of {cells}. Round trips are O-BELM's: the start-up "
            "is used only when sampling from a lone x_T.")


def digits_tables(d: DigitsFlowData) -> list[str]:
    cfg = d.meta["config"]
    note = f"(trained in this run: {d.trained_s:.0f} s)" if d.trained_s is not None else "(cached checkpoint)"
    body = ["### Digits rectified-flow UNet", "",
            f"Checkpoint: {d.checkpoint} {note}; {cfg['steps']} steps × batch {cfg['batch_size']}, σ "
            f"{cfg['sigma_sampling']}, seed {cfg['seed']}, training wall time {d.meta['train_seconds']:.0f} s, final "
            f"loss {d.meta['final_loss_avg100']:.4f}. Digit classifier accuracy on the test split: {d.classifier_acc:.3f}; "
            f"FD floor (train split vs test split): {d.floor_fd:.2f}.", "",
            f"Sample quality ({d.n_gen} class-conditional samples, labels 0…9 equally often, same x_T for all, "
            "shift-1 grid):", ""]
    rows = []
    for m in METHODS:
        for n in d.nfes:
            r = d.quality.get((m, n))
            if r is not None:
                rows.append([m, n, r["calls"], r["acc"], r["conf"], r["fd"]])
    body.append(table(["method", "NFE budget", "calls made", "classifier acc.", "confidence", "FD (features) ↓"],
                      rows, ".3f"))
    body += ["", f"Reconstruction MSE ([0, 1] scale) of {d.n_rec} held-out digits, invert then sample, conditional "
             "on their labels, float64 state (calls = both directions):", ""]
    names = list(METHODS) + [m + F64 for m in OURS if (m + F64, d.rec_steps[0]) in d.rec]
    rows = [[m] + [d.rec.get((m, s)) for s in d.rec_steps] + [d.rec_calls.get((m, d.rec_steps[-1]))] for m in names]
    body.append(table(["method"] + [f"{s} steps" for s in d.rec_steps] + [f"calls at {d.rec_steps[-1]} steps"],
                      rows, ".1e"))
    f32 = max(d.rec[(m, s)] for m in OURS for s in d.rec_steps)
    f64 = [d.rec[(m + F64, s)] for m in OURS for s in d.rec_steps if (m + F64, s) in d.rec]
    body += ["", f"Largest round-trip MSE of ours: {f32:.1e} with the float32 network"
             + (f", {max(f64):.1e} with the same checkpoint run in float64 (rows \"(float64 network)\")." if f64 else ".")
             + " With a float32 network the float64 states of sampling differ from those of inversion by a float64 "
             "ulp, which now and then rounds to a different float32 network input; the network's response to that "
             "change is then carried along the remaining steps. In float64 both directions see identical inputs."]
    return body


def render(data: FlowData) -> str:
    body = [doc_intro(__doc__), ""]
    body.append(f"Batch: {data.batch} points per case. Problems: "
                + "; ".join(f"`{p}` ({desc})" for p, desc in data.problems.items()) + ".")
    body += ["", nfe_note(data)]
    for p in data.problems:
        body += ["", f"### Accuracy vs NFE, `{p}` — RMSE against the exact ODE solution from σ = 1", "",
                 accuracy_table(data, p)]
    for p in data.problems:
        body += ["", f"### Round trip sample(invert(x_0)) vs steps, `{p}` — MSE", "", roundtrip_table(data, p)]
    body += ["", recommended_note(data)]
    worst_ours = max(v for c in data.cases.values() for m in OURS for v in c["roundtrip"][m].values())
    best_peer = min(v for c in data.cases.values() for m in PEERS for v in c["roundtrip"][m].values())
    body += ["", f"**Round trips:** the largest MSE of recommended, o-belm and bdia(γ=1) over every problem, grid and step count "
             f"is {worst_ours:.1e}; the smallest of Euler, RF-Solver-2 and FireFlow is {best_peer:.1e}."]
    if data.digits is not None:
        body += [""] + digits_tables(data.digits)
    body += ["", "### Peers: update rules and model calls", "", doc_intro(flow_peers.__doc__)]
    return "\n".join(body)


# ------------------------------------------------------------------------ figures
def draw(data: FlowData, fig_dir: Path) -> list:
    import matplotlib.pyplot as plt

    figures = []
    main = next(iter(data.problems))
    fig, axes = plt.subplots(2, len(data.grids), figsize=(4.2 * len(data.grids), 7.5))
    axes = np.atleast_2d(axes)
    for j, g in enumerate(data.grids):
        case = data.cases[(main, g)]
        plot_series(axes[0, j], data.nfes, case["errors"], OURS)
        axes[0, j].set_title(f"{g}: error vs NFE")
        axes[0, j].set_xlabel("NFE (model calls)")
        plot_series(axes[1, j], data.rt_steps, case["roundtrip"], OURS, clip=True)
        axes[1, j].set_title(f"{g}: round trip vs steps")
        axes[1, j].set_xlabel("steps N")
    axes[0, 0].set_ylabel("RMSE vs exact ODE solution")
    axes[1, 0].set_ylabel("MSE of sample(invert(x0))")
    axes[0, -1].legend(fontsize=7)
    fig.suptitle(f"Rectified flow, analytic `{main}`")
    figures.append((savefig(fig, fig_dir, "flow_analytic"),
                    f"Top: RMSE against the exact rectified-flow ODE solution from σ = 1 vs model calls on `{main}`, "
                    "for the shift-1, SD3 (shift 3) and Flux (mu 1.15) grids. Bottom: round-trip MSE vs steps (0 "
                    "clipped to 1e-34). Solid with circles: this project's methods; dashed with crosses: diffusers' "
                    "Euler loop, RF-Solver-2 and FireFlow. Produced by `benchmarks/flow.py`."))
    d = data.digits
    if d is not None:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for m in METHODS:
            marker = "o" if m in OURS else "x"
            axes[0].semilogx(d.nfes, [d.quality[(m, n)]["fd"] for n in d.nfes], marker=marker, label=m)
        axes[0].axhline(d.floor_fd, color="k", ls=":", label="train vs test")
        axes[0].set_xlabel("NFE budget")
        axes[0].set_ylabel("FD on classifier features ↓")
        axes[0].set_yscale("log")
        axes[0].grid(True, alpha=0.3)
        plot_series(axes[1], d.rec_steps, {m: {s: d.rec[(m, s)] for s in d.rec_steps} for m in METHODS}, OURS,
                    clip=True)
        axes[1].set_xlabel("steps N")
        axes[1].set_ylabel("reconstruction MSE ([0,1] scale)")
        axes[0].legend(fontsize=7)
        fig.suptitle("Digits rectified-flow UNet")
        figures.append((savefig(fig, fig_dir, "flow_digits"),
                        f"Left: Fréchet distance of {d.n_gen} class-conditional samples vs NFE budget (dotted: "
                        f"train-vs-test floor). Right: reconstruction MSE of {d.n_rec} held-out digits through "
                        "inversion and resampling (float64 state, float32 network). Produced by `benchmarks/flow.py`."))
    return figures


def run(quick: bool = False, fig_dir=None, progress: bool = True) -> Section:
    return compose(TITLE, lambda: compute(quick, progress), render, draw, fig_dir)
