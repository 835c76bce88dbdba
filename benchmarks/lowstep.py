"""Low-step accuracy: the recommended exact sampler vs DPM-Solver++(2M), UniPC and DEIS.

`Solver(schedule, steps=N, **belm_core.recommended(schedule, N))` — the exact sampler
"dpl-ob-curv" (the p-family member dpl-ob, docs/math.md §12, whose DPL rows with
σ̄_{i+1}/σ̄_{i−1} < 6 read x̂0 on the trajectory ahead, extrapolated with a velocity register
that travels in the latent, §16, ¾ of the way to their level, half of it on cosine, §21;
the other rows read x̂0 at §13's half-way shifted level; the rows with 1 < σ̄ < 10 (2 < σ̄ < 10
on cosine, §30) also correct their τ-quadrature for x̂0's slope and curvature, read from a rotation register that
travels in the latent as well, §23, with gain ½, ¾ on cosine, §26, §29),
the predictor–corrector start-up (on scaled-linear its corrector reads x̃ at row N−1's
shifted level and the read row N−1 reuses is moved to the corrected state, "pc-shift-moved",
§18, §22; on linear it reads where row N−1 wants x̂0 and weighs
the two reads exactly for a constant error in ε, "lookahead-log", §20) and the
"trailing-tail" grid (diffusers' "trailing" with a shorter last step; the last row then reads
at its shifted level whenever the row above it is a DPL row, §24; on linear at 5–20 steps the
"long-start" grid, whose first step is also longer, §25), N model calls,
first model time T − 1 — against diffusers' DPM-Solver++(2M), UniPC (bh2) and DEIS on
their default grid (`benchmarks.peers`), against "dpl-ob-shift-last" (the previous
recommendation before §16: diffusers' "trailing" grid, the plain predictor–corrector start-up,
no trajectory reading) and against plain
O-BELM on the paper's "linspace" grid (the apps' default before issue #10). Every sampler starts from the same
x_T = α x_0 + σ n at t = T − 1 and is scored by

    RMSE(x_end − x_ref),   x_ref = the DOP853 ODE solution (rtol 1e-11) from x_T to the
    sampler's own end point (σ̄ = 0; for DEIS σ̄(t = 0)),

on held-out Gaussian mixtures that vary the component spread, the dimension and the
weights (none is the project's `default_problem`). A cell is **bold** where the
recommended sampler is at most the better of DPM++2M and UniPC (the issue's acceptance).

Inverted latents: `invert` from x_0 with N steps, then the RMSE of the latent's noisiest
state x_N against the exact ODE inversion of x_0 to t = T − 1 (a latent that means
something for editing shrinks that distance as N grows); the round trip at 50 steps is
exact either way. The recommendation takes inversion's first step in graded sub-steps
(docs/math.md §28); "single-step inversion start" is the same sampler with the paper's
single DDIM step, and the digits tables compare the two on 64 test images of each network
(`digits_latents`, against `ode_inversion`). Digits: the trained class-conditional DDPM of the digits section,
Fréchet distance (classifier features) of 1000 samples from the same x_T and the RMSE of
the first 250 of them against the ODE solution from the same x_T (`digits_scores`; the
reference is DDIM on 1000 and 500 steps, Richardson-extrapolated by `ode_reference`; before
docs/math.md §27 it was a 400-step O-BELM solution, whose rows near t = 0 amplify the network's
irregularities): FD judges the samples, RMSE the solver, at NFE 3/4/5/6/10/20/50/100,
with the recommended sampler's plain "pc" start next to the "lookahead-log" start it uses on
this (linear) schedule. The same network trained on the scaled-linear schedule
(`train_digits --beta-schedule scaled_linear`) checks the "pc-shift-moved" start `recommended`
uses there, against the plain "pc" start, at NFE 4/5/6/10/20.

At 5–20 calls a few points of a batch decide between two mixture components late, and
one point sent to the other component moves a 256-point RMSE by 0.05–0.1: a single RMSE
is partly a lottery. The robustness table therefore repeats the comparison for three x_T
seeds and reports, next to the cells won, the median per-point error and the number of
points whose final component (`GaussianMixture.component`) differs from the ODE
solution's.

Negative results of the study behind this sampler (issue #10; all measured there):
reading x̂0 at the full shift (f = 1 instead of ½) has the smallest median error but
commits points to a component early (more points in the wrong component at 5–10 calls,
and digits FD 1.29 vs 1.25 at NFE 5); extrapolating the start-up's two data predictions
to the level row N−1 wants (docs/math.md §13) wins 18 instead of 12 of 22 scaled-linear
NFE-5 cases but raises the digits network's FD from 1.25 to 1.76 at NFE 5 and 1.15 to
1.34 at NFE 10; evaluating the start-up's corrector at that level instead
(`startup="lookahead"`, opt-in) wins scaled-linear NFE-5 cases 6–8 instead of 4–6 of 11
and linear 9–10 instead of 6 (1024 points, three seeds) but moves the network's FD at
NFE 4/5/6/10 by +0.16/−0.02/+0.07/+0.02; the DDIM start with the shift wins more
mixture cases on scaled-linear and linear at NFE 5 but loses on cosine at NFE 20 (11 vs
19 of 22) and on the network (FD +0.03…0.06 on linear and scaled-linear-like grids);
a smaller last-row p_1 (O-BELM's × ½, nearer DDIM's last step) wins scaled-linear NFE-5
cells 7 instead of 4 of 11 but raises the network's FD at NFE 5 from 1.25 to 1.41.
Earlier:
grid laws other than uniform-in-t (log-SNR-uniform, Karras ρ = 3/5/7, power laws in t,
τ = 1/σ̄-uniform, grids optimised per N with Nelder–Mead) were worse somewhere, often
5–300×, and optimised N = 5 grids came out close to uniform-in-t; p rules outside the
stiff bound p_i ≤ σ̄_{i−1}/σ̄_{i+1} (p = (σ̄_{i−1}/σ̄_{i+1})^m with m < 1, shape-derived
Gaussian-profile p, constant q > 1) win on some mixtures but diverge on the cosine
schedule and on the digits network (FD 4.9 at NFE 10); more damping (m > 1) is worse
everywhere; O-BELM clipped to the bound is worse than DPL (23× on cosine, NFE 20);
3-step τ-Nyström variants (2nd order, exact) are 3–15× worse than DPL at NFE 10–20;
re-evaluating ε after the corrector (+1 call) or several predictor–corrector steps do not
help. On the linear schedule at NFE 5–10 the error grows over all rows: it is the
family's truncation (one ε per row, q ≤ 1), which UniPC's corrector beats. Mixtures with
tiny variances make NFE 5–10 a coin flip (one point switching mode), hence ≥ 256 points.
Later (docs/math.md §15; the random draw below, cases won at NFE 5/10/20 of 30, against
"dpl-ob-shift"'s 16/27/30, 14/25/22 and 30/30/24 on scaled-linear, linear and cosine; the
recommendation before its last row was shifted too, docs/math.md §13): 3-step rows with
two x̂0 nodes (τ-Nyström with x̂0 linear in λ = log τ, roots on the unit circle) win
linear NFE 10–20 (28/27) but lose on cosine (29/18/11) and at NFE 5–10 on scaled-linear
(16/22); 4-step Milne rows with three nodes lose more (scaled-linear 8/15 at NFE 5/10)
and, even with the top step left to the start-up, on the digits network (ODE RMSE 0.037
against 0.023 at NFE 20); a DPM-Solver++-like step plus the defect of its backward step
(roots (ζ − 1)(ζ² + q)) loses everywhere; the start-up's trapezoid weight (½ in τ) moved
to the λ-exact weight or to 0.4/0.6 changes at most one case except cosine NFE 20 (18
instead of 24 with the λ weight); shifting by ¾ or 1 instead of ½ at NFE 10–30 wins only
linear NFE 10–20 with ¾ (26/25 instead of 25/22) and ties or loses the other cells.
A second start-up step that extrapolates x̂0 from the top of the grid (no extra call) wins the
most mixtures of anything measured (all nine cells on 72 instead of 62 of 140 random
mixtures) but raises the digits network's FD at NFE 4/5/6 to 52.7/2.04/6.50 (1/4 of its
slope: 7.90/1.18/2.01); a shift fraction graded in σ̄ won on the problems it was chosen on
and not on 40 fresh ones (docs/math.md §15). With 2048 points per mixture instead of 512
(`python -m benchmarks.lowstep --points 2048`) "dpl-ob-shift-last" passes all nine cells
on 53 of the 140 (linear NFE 20: 88 instead of 106 cells): the cells are lost to a few points
near a separatrix that end in another component, while its median point stays 1.6–5×
more accurate than UniPC's. Reading x̂0 on the trajectory with a velocity register
(docs/math.md §16, the sampler now recommended) lifts the 140 at 512 points from 62 to 71
passes (cells scaled-linear 99/132/135, linear 99/139/134, cosine 140/140/117 at NFE
5/10/20, against 96/120/129, 99/126/106, 140/139/119) and 60 fresh mixtures, a draw no
choice was made on, from 22 to 25; the NFE-5 cells, whose rows are too coarse to read on
the trajectory, are what still loses. Reading the start-up's predictor the way row N−1
reads its state (startup="pc-shift", docs/math.md §18; used where σ̄(T − 1) ≤ 20, i.e. on
scaled-linear) takes scaled-linear NFE 5 from 46 to 61 of the first 70 and the 140 from 71
to 80 passes; on the linear schedule the digits network refuses it (ODE RMSE 0.170 against
0.110 at NFE 5), and on a scaled-linear digits network it is neutral but for the Fréchet
distance at NFE 4 (the tables at the end of this section). On the linear schedule the
look-ahead start whose weights are exact for a constant error in ε (startup="lookahead-log",
docs/math.md §20: a trained network's x̂0 near σ̄ = 157 is off by about −σ̄ δ) takes linear
NFE 5 from 46 and 53 to 60 and 60 of the two halves of the 140 and holds the network (its
tables below); the same weights on cosine, whose top step is 2·10⁴ → 13, lose NFE 20 on
the mixtures (15 instead of 34 of 42 separated ones), so cosine keeps "pc". Correcting the
rows' τ-quadrature for x̂0's slope and curvature from a rotation register ("dpl-ob-curv",
docs/math.md §23) lowers the cosine error at NFE 15–50 on most mixtures (geometric-mean ratio
0.80 at NFE 20, 0.64 at 30) and lifts cosine NFE 20 from 60 to 65 of the first 70 cells; on
scaled-linear and linear it makes most mixtures slightly worse (20–27 of 70 improved at NFE
10–20) while winning a few by much, so only cosine uses it.

The peers on their own best grid laws (the issue's stretch): for each schedule and each
of DPM++2M, UniPC and DEIS, the candidates are the grid laws diffusers itself offers for
that scheduler (`benchmarks.peers.GRID_LAWS`: "linspace", "trailing", Karras, exponential
and beta σ, and λ-uniform for DPM-Solver++ only) whose first state is the noisiest one,
σ̄(T − 1), at every NFE ("leading" starts at ⌊T/(N+1)⌋·N and is excluded: it would skip
part of the trajectory the others integrate). The chosen law is the candidate with the
smallest geometric-mean RMSE over NFE 5/10/20 × the TUNING mixtures (`tuning_problems`:
own seeds and shapes, none of the reported problems; 128 points each, same in --quick);
ties go to the earlier candidate, so the default "linspace" is kept unless another law
is strictly better. The selection table lists every candidate's tuning score; the
best-grid peers are then run on the reported problems, and a cell is **bold** where the
recommended sampler is at most the better of DPM++2M and UniPC on their best grids.

The separated set (`separated_problems`, `SEPARATED`): 40 two-dimensional `default_problem`s, the
family the random draws pass least often. Its table counts, next to the cells won, the points that
end in another mixture component than the ODE solution's. Those points decide the cells lost there;
the median point is closer than the peers' (docs/math.md §30).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import peers
from .report import Section, compose, doc_intro, plot_series, savefig, table

TITLE = "Low-step accuracy: the recommended exact sampler vs DPM++2M, UniPC and DEIS"
NFES = (5, 10, 20)
LATENT_STEPS = (10, 20, 50)
PEERS = ("diffusers-DPM++2M", "diffusers-UniPC", "diffusers-DEIS")
OURS = ("recommended", "dpl-ob-shift-last (trailing)", "o-belm (linspace)")
TUNING_BATCH = 128
#: the recommendation with the paper's single DDIM step as inversion's first step (before docs/math.md §28)
SINGLE_START = "recommended, single-step inversion start"
LATENT_METHODS = ("recommended", SINGLE_START, "dpl-ob-shift-last (trailing)", "dpl (trailing)", "o-belm (linspace)")
#: inverted latents of the digits networks: test images, steps, and the configurations compared
DIGITS_LATENT_N = 64
DIGITS_LATENT_STEPS = (10, 20, 50, 100)
DIGITS_LATENT_METHODS = ("recommended", SINGLE_START)
#: points per problem (fewer make NFE 5–10 a coin flip: one point changing component)
BATCH = 256
#: x_T seeds of the robustness table; the main tables use seed 0
SEEDS = (0, 1, 2)
#: the recommended sampler with the plain predictor–corrector start (what "pc-shift" replaced on scaled-linear
#: and "lookahead-log" on linear)
PLAIN_START = "recommended, startup='pc'"
#: the digits network trained on the scaled-linear schedule: the "pc-shift" start's network check
DIGITS_SL_NFES = (4, 5, 6, 10, 20)
DIGITS_SL_OURS = ("recommended", PLAIN_START)
#: the linear digits network's NFEs and samplers: "lookahead-log"'s network check next to the acceptance's NFE 5
DIGITS_NFES = (3, 4, 5, 6, 10, 20, 50, 100)
DIGITS_OURS = OURS + (PLAIN_START,)
#: the digits network's ODE reference (`ode_reference`): DDIM on this many linspace steps and on half
#: as many, Richardson-extrapolated; and the samples it is computed for
REF_STEPS = 1000
REF_N = 250
#: the O-BELM linspace steps of the reference the digits tables used before (docs/math.md §27), whose
#: distance to `ode_reference` the tables report
OLD_REF_STEPS = 400
#: the methods whose per-point errors the robustness table compares
SWEEP = ("recommended", "dpl-ob-shift-last (trailing)", "diffusers-DPM++2M", "diffusers-UniPC")
#: the random draw of held-out mixtures: how many, points each, NFEs (30 shows where UniPC's
#: higher order takes over), the draw's seed and the x_T seed
RANDOM_COUNT = 30
RANDOM_BATCH = 512
RANDOM_NFES = (5, 10, 20, 30)
RANDOM_SEED = 1234
RANDOM_XT_SEED = 7
RANDOM_FIRST_PROBLEM_SEED = 500  # problem seeds 500 + j: none of `problems` or `tuning_problems`
#: the separated set (dimension, count, first seed): 2-d `default_problem`s, seeds 7000–7039, the set
#: that confirmed docs/math.md §30 (seeds 5000–5039 chose it)
SEPARATED = (2, 40, 7000)
# (count, draw seed, first problem seed) of the draws behind the pass rate of docs/math.md §15:
# the benchmark's own draw first, then three more from the same distribution
PASS_RATE_DRAWS = ((RANDOM_COUNT, RANDOM_SEED, RANDOM_FIRST_PROBLEM_SEED), (30, 4321, 900), (40, 8765, 1500),
                   (40, 2468, 2100))


def schedules():
    from belm_core import DiscreteVP

    return {"scaled-linear": DiscreteVP.scaled_linear(), "linear": DiscreteVP.linear(), "cosine": DiscreteVP.cosine()}


def problems(quick: bool) -> dict:
    """Held-out mixtures: name → GaussianMixture (spread, dimension and weights vary). The same
    eleven in --quick: the sample errors are cheap, and fewer problems make the counts a lottery."""
    from backends.analytic import GaussianMixture, default_problem

    base = default_problem((4,), seed=3)
    out = {
        "R⁴, 5 comps, spread 2": GaussianMixture.random((4,), 5, seed=11, spread=2.0),
        "R¹⁶, 8 tight comps": GaussianMixture.random((16,), 8, seed=12, spread=1.0, min_var=0.02, max_var=0.2),
        "R⁴, skewed weights": GaussianMixture(base.means, base.variances, [8, 1, 1, 0.5, 0.2]),
        "R³², 10 overlapping": GaussianMixture.random((32,), 10, seed=15, spread=0.5, min_var=0.05, max_var=0.5),
        "R⁶⁴, 3 wide comps": GaussianMixture.random((64,), 3, seed=13, spread=3.0, min_var=0.1, max_var=1.0),
        "R⁶, 5 separated comps": default_problem((6,), seed=21),
        "R⁸, 6 comps, spread 3": GaussianMixture.random((8,), 6, seed=41, spread=3.0),
        "R²⁴, 7 comps": GaussianMixture.random((24,), 7, seed=42, spread=1.5, min_var=0.03, max_var=0.3),
        "R³, 4 comps": GaussianMixture.random((3,), 4, seed=43, spread=2.0, min_var=0.05, max_var=0.4),
        "R¹⁰, 5 separated comps": default_problem((10,), seed=5),
        "R⁴, 5 comps, spread 2.5": GaussianMixture.random((4,), 5, seed=44, spread=2.5),
    }
    return out


def tuning_problems() -> dict:
    """The mixtures the peers' grid laws are chosen on: name → GaussianMixture. Own seeds
    and shapes, disjoint from `problems` (so the reported cells are held out)."""
    from backends.analytic import GaussianMixture, default_problem

    return {
        "R², 4 comps, spread 1.5": GaussianMixture.random((2,), 4, seed=101, spread=1.5),
        "R⁸, 6 comps": GaussianMixture.random((8,), 6, seed=102, spread=1.0, min_var=0.05, max_var=0.3),
        "R⁶, 5 separated comps": default_problem((6,), seed=103),
        "R²⁴, 4 wide comps": GaussianMixture.random((24,), 4, seed=104, spread=2.5, min_var=0.1, max_var=0.8),
    }


@dataclass(frozen=True)
class RandomSpec:
    """One draw of `random_problems`' distribution."""

    dim: int
    components: int
    spread: float
    separated: bool  # a `default_problem`-shaped mixture (then components and spread are unused)
    problem_seed: int


def random_specs(count: int = RANDOM_COUNT, seed: int = RANDOM_SEED,
                 first_problem_seed: int = RANDOM_FIRST_PROBLEM_SEED) -> list[RandomSpec]:
    """The draws behind `random_problems(count, seed, first_problem_seed)`, in order."""
    rng = np.random.default_rng(seed)
    out = []
    for j in range(count):
        dim = int(rng.choice([2, 3, 4, 6, 8, 16, 32]))
        comps = int(rng.integers(2, 9))
        spread = float(rng.uniform(0.5, 3.0))
        separated = bool(rng.random() < 0.3)
        out.append(RandomSpec(dim, comps, spread, separated, first_problem_seed + j))
    return out


def random_problems(count: int = RANDOM_COUNT, seed: int = RANDOM_SEED,
                    first_problem_seed: int = RANDOM_FIRST_PROBLEM_SEED) -> list:
    """`count` mixtures drawn from one declared distribution, the nearest stand-in for "a held-out
    problem that is not in the project": the dimension from {2, 3, 4, 6, 8, 16, 32}; with
    probability 0.3 a `default_problem`-shaped mixture of separated components, otherwise
    `GaussianMixture.random` with 2–8 components and spread U(0.5, 3). Problem seeds
    `first_problem_seed` + j."""
    from backends.analytic import GaussianMixture, default_problem

    return [default_problem((sp.dim,), seed=sp.problem_seed) if sp.separated
            else GaussianMixture.random((sp.dim,), sp.components, seed=sp.problem_seed, spread=sp.spread)
            for sp in random_specs(count, seed, first_problem_seed)]


def separated_problems(dim: int = SEPARATED[0], count: int = SEPARATED[1], first_seed: int = SEPARATED[2]) -> list:
    """`count` `default_problem((dim,), seed)` mixtures (five well-separated components), seeds
    `first_seed` + j: the family the random draws pass least often (docs/math.md §30)."""
    from backends.analytic import default_problem

    return [default_problem((dim,), seed=first_seed + j) for j in range(count)]


def all_cells_won(sweeps: dict, nfes) -> tuple[int, int]:
    """(problems where recommended ≤ min(DPM++2M, UniPC) in every schedule and NFE of `nfes`, problems)
    from {(schedule, problem, seed): point_errors(...)} with one seed per problem."""
    by_problem: dict = {}
    for (_, pname, _), r in sweeps.items():
        rms = sweep_rms(r, nfes)
        won = all(rms["recommended"][n] <= best_peer(rms, n) for n in nfes)
        by_problem[pname] = by_problem.get(pname, True) and won
    return sum(by_problem.values()), len(by_problem)


def best_key(peer: str) -> str:
    """The errors' key of `peer` on its own best grid law."""
    return f"{peer} (best grid)"


@dataclass(frozen=True)
class GridChoice:
    """One peer's grid law chosen on the tuning set for one schedule."""

    law: str
    scores: dict  # candidate law → geometric-mean tuning RMSE over (tuning problem, NFE)
    excluded: dict  # law diffusers offers but not a candidate → why


def geo_mean(values) -> float:
    """exp(mean(log v)); inf when any value is not finite or not positive."""
    v = np.asarray(list(values), dtype=np.float64)
    if not np.all(np.isfinite(v) & (v > 0)):
        return float("inf")
    return float(np.exp(np.mean(np.log(v))))


def grid_candidates(peer: str, schedule, nfes) -> tuple[tuple, dict]:
    """(the laws of `peers.grid_laws(peer)` whose first state is σ̄(T − 1) at every NFE,
    {excluded law: reason})."""
    t_T = int(schedule.num_train_timesteps) - 1
    sb_T = float(schedule.sigma_bar(t_T))
    keep, excluded = [], {}
    for law in peers.grid_laws(peer):
        starts = {n: peers.start_sigma_bar(peer, schedule, n, law) for n in nfes}
        off = {n: sb for n, sb in starts.items() if abs(sb / sb_T - 1.0) > 1e-3}  # diffusers: float32 ᾱ, ~1e-5 off
        if off:
            n = min(off)
            t0 = peers.first_timestep(peer, schedule, n, law)
            excluded[law] = f"starts at t = {t0}, σ̄ = {off[n]:.3g}, not σ̄(T − 1) = {sb_T:.3g} (NFE {n})"
        else:
            keep.append(law)
    return tuple(keep), excluded


def peer_error(case: Case, peer: str, nfe: int, law: str) -> float:
    """RMSE of `peer` on grid law `law` with `nfe` model calls from the case's x_T."""
    import torch

    run = peers.sample(peer, case.schedule, case.eps, torch.from_numpy(case.x_T.copy()), nfe, law)
    if run.nfe != nfe:
        raise RuntimeError(f"{peer} on {law!r} made {run.nfe} model calls, not {nfe}")
    return case.error(run.x0.numpy(), run.end_alpha, run.end_sigma_bar)


def choose_grids(schedule, nfes, cases) -> dict:
    """{peer: GridChoice}: per peer in PEERS, the candidate law with the smallest
    geometric-mean RMSE over `cases` (tuning Cases on `schedule`) × `nfes`; ties → the
    earlier candidate ("linspace", diffusers' default, comes first)."""
    out = {}
    for peer in PEERS:
        laws, excluded = grid_candidates(peer, schedule, nfes)
        scores = {law: geo_mean(peer_error(c, peer, n, law) for c in cases for n in nfes) for law in laws}
        out[peer] = GridChoice(min(laws, key=lambda law: scores[law]), scores, excluded)
    return out


def _kwargs(schedule, name: str, steps: int) -> dict:
    """Solver keyword arguments of one of `OURS` / `LATENT_METHODS`."""
    from belm_core import PFamily, recommended

    if name == "recommended":
        return recommended(schedule, steps)
    if name == PLAIN_START:
        return {**recommended(schedule, steps), "startup": "pc"}
    if name == SINGLE_START:
        return {**recommended(schedule, steps), "inversion_substeps": 1}
    if name == "dpl-ob-shift-last (trailing)":
        return {"method": "dpl-ob-shift-last", "spacing": "trailing", "startup": "pc"}
    if name == "dpl (trailing)":
        return {"method": PFamily("dpl"), "spacing": "trailing", "startup": "pc"}
    return {"method": "o-belm", "spacing": "linspace"}


def _solver(schedule, name: str, steps: int):
    from belm_core import Solver

    return Solver(schedule, steps=steps, **_kwargs(schedule, name, steps))


def rmse(a, b) -> float:
    return float(np.sqrt(np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2)))


class Case:
    """One (problem, schedule): x_T at t = T − 1 and the ODE solutions to both end points."""

    def __init__(self, data, schedule, n: int, seed: int = 0):
        from backends.analytic import AnalyticEps

        self.data, self.schedule = data, schedule
        self.eps = AnalyticEps(data, schedule)
        self.t_T = int(schedule.num_train_timesteps) - 1
        x0 = data.sample(n, seed=seed + 1)
        noise = np.random.default_rng(seed + 2).standard_normal(x0.shape)
        a = float(schedule.alpha(self.t_T))
        self.x_T = a * x0 + float(schedule.sigma(self.t_T)) * noise
        self._start = (self.x_T / a, float(schedule.sigma_bar(self.t_T)))
        self._refs: dict = {}

    def reference(self, end_sigma_bar: float = 0.0) -> np.ndarray:
        """The ODE solution from x_T in bar space at σ̄ = end_sigma_bar (cached)."""
        key = round(float(end_sigma_bar), 12)
        if key not in self._refs:
            self._refs[key] = self.data.flow(*self._start, float(end_sigma_bar))
        return self._refs[key]

    def error(self, x, end_alpha: float = 1.0, end_sigma_bar: float = 0.0) -> float:
        """RMSE against the ODE solution at the sampler's own end point (α, σ̄)."""
        return rmse(x, end_alpha * self.reference(end_sigma_bar))

    def point_errors(self, x) -> tuple[np.ndarray, np.ndarray]:
        """(per-point RMS error, per-point "other component than the ODE solution") at σ̄ = 0."""
        ref = self.reference(0.0)
        x = np.asarray(x, dtype=np.float64)
        err = np.sqrt(np.mean((x - ref) ** 2, axis=tuple(range(1, x.ndim))))
        return err, self.data.component(x) != self.data.component(ref)


def sample_errors(case: Case, nfes, grids: dict | None = None) -> dict:
    """{method: {nfe: RMSE}} for ours (N = NFE steps) and the peers (NFE model calls) on
    their default grid, plus `best_key(peer)` on law `grids[peer]` for each peer in `grids`."""
    import torch

    grids = grids or {}
    out: dict = {m: {} for m in OURS + PEERS + tuple(best_key(p) for p in grids)}
    for nfe in nfes:
        for m in OURS:
            solver = _solver(case.schedule, m, nfe)
            assert int(solver.timesteps[0]) == case.t_T
            out[m][nfe] = case.error(solver.sample(case.eps, case.x_T))
        for p in PEERS:
            run = peers.sample(p, case.schedule, case.eps, torch.from_numpy(case.x_T.copy()), nfe, "linspace")
            assert run.nfe == nfe and int(run.timesteps[0]) == case.t_T
            out[p][nfe] = case.error(run.x0.numpy(), run.end_alpha, run.end_sigma_bar)
        for p, law in grids.items():
            out[best_key(p)][nfe] = peer_error(case, p, nfe, law)
    return out


def point_errors(case: Case, nfes) -> dict:
    """{method: {nfe: (per-point error, per-point other component)}} for the `SWEEP` methods
    (the peers on their default grid; DPM++2M and UniPC end at σ = 0, as ours do)."""
    import torch

    out: dict = {m: {} for m in SWEEP}
    for nfe in nfes:
        for m in SWEEP:
            if m in PEERS:
                run = peers.sample(m, case.schedule, case.eps, torch.from_numpy(case.x_T.copy()), nfe, "linspace")
                assert run.end_sigma_bar == 0.0 and run.nfe == nfe
                x = run.x0.numpy()
            else:
                x = _solver(case.schedule, m, nfe).sample(case.eps, case.x_T)
            out[m][nfe] = case.point_errors(x)
    return out


def random_sweep(schedule, probs, nfes, n: int) -> dict:
    """{nfe: [(recommended RMSE, min(DPM++2M, UniPC) RMSE) per problem]}: every problem of
    `probs` with `n` points from x_T seed `RANDOM_XT_SEED`, the peers on their default grid."""
    out: dict = {nfe: [] for nfe in nfes}
    for data in probs:
        case = Case(data, schedule, n, seed=RANDOM_XT_SEED)
        for nfe in nfes:
            ours = case.error(_solver(schedule, "recommended", nfe).sample(case.eps, case.x_T))
            best = min(peer_error(case, p, nfe, "linspace") for p in PEERS[:2])  # DPM++2M, UniPC
            out[nfe].append((ours, best))
    return out


def sweep_rms(r: dict, nfes) -> dict:
    """{method: {nfe: RMSE}} of one case's `point_errors(...)` result `r`."""
    return {m: {nfe: float(np.sqrt(np.mean(r[m][nfe][0] ** 2))) for nfe in nfes} for m in SWEEP}


def robustness(sweeps: dict, nfes) -> dict:
    """{(schedule, nfe): {method: {"won", "cases", "median", "other", "points"}}} from
    {(schedule, problem, seed): point_errors(...)}; "won" counts the cases whose RMSE is
    ≤ min(DPM++2M, UniPC) (meaningful for ours only)."""
    out: dict = {}
    for (sname, _, _), r in sweeps.items():
        rms = sweep_rms(r, nfes)
        for nfe in nfes:
            cell = out.setdefault((sname, nfe), {m: {"won": 0, "cases": 0, "err": [], "other": 0} for m in SWEEP})
            best = best_peer(rms, nfe)
            for m in SWEEP:
                c = cell[m]
                c["cases"] += 1
                c["won"] += rms[m][nfe] <= best
                c["err"].append(r[m][nfe][0])
                c["other"] += int(np.sum(r[m][nfe][1]))
    for cell in out.values():
        for c in cell.values():
            e = np.concatenate(c.pop("err"))
            c["median"], c["points"] = float(np.median(e)), int(e.size)
    return out


def latent_errors(data, schedule, n: int, steps) -> dict:
    """{method: {N: RMSE of the latent's x_N vs the exact ODE inversion}}, plus the round-trip MSE at max(steps)."""
    from backends.analytic import AnalyticEps

    eps = AnalyticEps(data, schedule)
    x0 = data.sample(n, seed=7)
    t_T = int(schedule.num_train_timesteps) - 1
    exact = float(schedule.alpha(t_T)) * data.flow(x0, 0.0, float(schedule.sigma_bar(t_T)))
    out: dict = {m: {} for m in LATENT_METHODS}
    roundtrip = {}
    for m in LATENT_METHODS:
        for N in steps:
            solver = _solver(schedule, m, N)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                latent = solver.invert(eps, x0)
            out[m][N] = rmse(latent.states[0], exact)
            if N == max(steps):
                roundtrip[m] = float(np.mean((solver.sample(eps, latent) - x0) ** 2))
    return {"latent": out, "roundtrip": roundtrip}


def digits_fd(nfes, n: int, progress: bool, beta_schedule: str = "linear", ours=OURS) -> dict:
    """A trained digits DDPM (`train_digits`, on `beta_schedule`): `digits_scores` of `ours` and
    the peers on n samples from x_T seed 0."""
    import torch

    from belm_core import DiscreteVP

    from .digits import Judge
    from .train_digits import TrainConfig, cache_for, ensure_model, load_model, load_split

    torch.set_num_threads(1)
    cfg = TrainConfig(beta_schedule=beta_schedule)
    unet, abar, _ = load_model(ensure_model(cfg, cache_for(beta_schedule), progress=progress))
    x_tr, y_tr, x_te, y_te, _, _ = load_split()
    x_T = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    schedule = DiscreteVP(abar)
    out = digits_scores(unet, schedule, Judge(x_tr, y_tr, x_te, y_te), nfes, x_T, progress=progress, ours=ours)
    x0 = torch.as_tensor(x_te[:DIGITS_LATENT_N], dtype=torch.float64)
    out["latent"] = digits_latents(unet, schedule, x0, np.asarray(y_te[:DIGITS_LATENT_N]), DIGITS_LATENT_STEPS)
    return out


def ode_inversion(schedule, eps, x0, steps: int = REF_STEPS) -> tuple:
    """(x_T, spread): the exact ODE inversion of x0 to model time T − 1 by Richardson extrapolation of
    DDIM inversion, 2 x_DDIM(steps) − x_DDIM(steps // 2) on "linspace" grids (as `ode_reference`), and
    the RMSE of x_DDIM(steps) from it."""
    return _extrapolated(lambda solver: solver.invert(eps, x0).states[0], schedule, steps)


def digits_latents(unet, schedule, x0, labels, steps, methods=DIGITS_LATENT_METHODS, ref_steps: int = REF_STEPS) -> dict:
    """The inverted latents of test images x0 (with their labels) on a digits network: {"rmse": {method:
    {N: RMSE of x_N against `ode_inversion`}}, "ref_spread", "ref_steps", "n"}."""
    from .digits import digits_eps

    eps = digits_eps(unet, schedule, labels)
    ref, spread = ode_inversion(schedule, eps, x0, ref_steps)
    out = {m: {N: rmse(np.asarray(_solver(schedule, m, N).invert(eps, x0).states[0]),
                       np.asarray(ref)) for N in steps} for m in methods}
    return {"rmse": out, "ref_spread": spread, "ref_steps": ref_steps, "n": len(x0)}


def ode_reference(schedule, eps, x_T, steps: int = REF_STEPS) -> tuple:
    """(x_ref, spread): the ODE solution from x_T at model time T − 1 to σ̄ = 0 by Richardson extrapolation
    of DDIM, x_ref = 2 x_DDIM(steps) − x_DDIM(steps // 2) on "linspace" grids, and the RMSE of
    x_DDIM(steps) from it (an estimate of DDIM's own error at `steps`).

    DDIM is a one-step method: it has no parasitic root for the network's irregularities to drive,
    which 2-step relations on fine grids do (O-BELM's rows near the clean end amplify it, docs/math.md
    §27); its error is c/N + O(1/N²), which the extrapolation removes to first order."""
    return _extrapolated(lambda solver: solver.sample(eps, x_T), schedule, steps)


def _extrapolated(run, schedule, steps: int) -> tuple:
    """(2 r(steps) − r(steps // 2), RMSE of r(steps) from it), r(n) = run(DDIM Solver on n "linspace" steps)."""
    from belm_core import Solver
    from belm_core.checks import is_index

    if not is_index(steps) or steps < 4 or steps % 2:
        raise ValueError(f"steps={steps!r} must be an even integer ≥ 4: the extrapolation pairs `steps` with "
                         "steps // 2, whose DDIM error must be exactly twice as large to first order")
    fine, coarse = (run(Solver(schedule, steps=n, method="ddim", spacing="linspace")) for n in (steps, steps // 2))
    ref = 2.0 * fine - coarse
    return ref, rmse(np.asarray(fine), np.asarray(ref))


def digits_scores(unet, schedule, judge, nfes, x_T, ref_n: int = REF_N, ref_steps: int = REF_STEPS,
                  progress: bool = False, ours=OURS, old_ref_steps: int = OLD_REF_STEPS) -> dict:
    """FD of every sample set, and the RMSE of its first `ref_n` samples against the ODE solution.

    Returns {"fd": {method: {nfe: FD}}, "rmse": {method: {nfe: RMSE}}, "floor", "n", "ref_n",
    "ref_steps", "ref_spread", "old_ref_steps", "old_ref"}. The reference is `ode_reference` with
    `ref_steps`; "ref_spread" is DDIM's distance to it at `ref_steps`, "old_ref" the distance of
    O-BELM on `old_ref_steps` linspace steps (the reference before docs/math.md §27).
    """
    from belm_core import Solver

    from .digits import digits_eps

    n = len(x_T)
    labels = np.arange(n) % 10
    eps = digits_eps(unet, schedule, labels)
    head = digits_eps(unet, schedule, labels[:ref_n])
    ref, spread = ode_reference(schedule, head, x_T[:ref_n], ref_steps)
    old = Solver(schedule, steps=old_ref_steps, method="o-belm", spacing="linspace").sample(head, x_T[:ref_n])
    fd: dict = {m: {} for m in tuple(ours) + PEERS[:2]}
    err: dict = {m: {} for m in fd}
    for nfe in nfes:
        if progress:
            print(f"  lowstep: digits NFE {nfe}", flush=True)
        for m in fd:
            if m in ours:
                x = _solver(schedule, m, nfe).sample(eps, x_T)
            else:
                x = peers.sample(m, schedule, eps, x_T, nfe, "linspace").x0
            fd[m][nfe] = judge.score(x.float().numpy(), labels)["fd"]
            err[m][nfe] = rmse(x[:ref_n].numpy(), ref.numpy())
    return {"fd": fd, "rmse": err, "floor": judge.floor_fd, "n": n, "ref_n": ref_n, "ref_steps": ref_steps,
            "ref_spread": spread, "old_ref_steps": old_ref_steps, "old_ref": rmse(old.numpy(), ref.numpy())}


# ------------------------------------------------------------------------ compute
@dataclass
class LowstepData:
    nfes: tuple
    batch: int
    errors: dict  # (schedule, problem) → {method: {nfe: rmse}}
    latent_steps: tuple
    latents: dict  # (schedule, problem) → latent_errors(...)
    digits: dict | None = None
    notes: list = field(default_factory=list)
    grids: dict = field(default_factory=dict)  # schedule → {peer: GridChoice}
    robust: dict = field(default_factory=dict)  # robustness(...) over SEEDS
    random: dict = field(default_factory=dict)  # schedule → random_sweep(...) over random_problems()
    separated: dict = field(default_factory=dict)  # robustness(...) over separated_problems(), x_T seed 7
    separated_passed: tuple | None = None  # all_cells_won(...) over the same sweeps
    digits_sl: dict | None = None  # digits_scores(...) of the network trained on scaled-linear, DIGITS_SL_NFES


def compute(quick: bool = False, progress: bool = True, with_digits: bool | None = None) -> LowstepData:
    batch = BATCH
    probs = problems(quick)
    errors, latents, grids, sweeps, randoms, sep_sweeps = {}, {}, {}, {}, {}, {}
    for sname, sch in schedules().items():
        if progress:
            print(f"  lowstep: {sname} / choosing the peers' grid laws on the tuning set", flush=True)
        tuning = [Case(d, sch, TUNING_BATCH, seed=100) for d in tuning_problems().values()]
        grids[sname] = choose_grids(sch, NFES, tuning)
        chosen = {p: g.law for p, g in grids[sname].items()}
        for pname, data in probs.items():
            if progress:
                print(f"  lowstep: {sname} / {pname}", flush=True)
            errors[(sname, pname)] = sample_errors(Case(data, sch, batch), NFES, chosen)
        if progress:
            print(f"  lowstep: {sname} / x_T seeds {SEEDS}", flush=True)
        for pname, data in probs.items():
            for seed in SEEDS:
                sweeps[(sname, pname, seed)] = point_errors(Case(data, sch, batch, seed=seed), NFES)
        if progress:
            print(f"  lowstep: {sname} / {RANDOM_COUNT} random mixtures", flush=True)
        randoms[sname] = random_sweep(sch, random_problems(), RANDOM_NFES, RANDOM_BATCH)
        if progress:
            print(f"  lowstep: {sname} / {SEPARATED[1]} separated {SEPARATED[0]}-d mixtures", flush=True)
        for j, data in enumerate(separated_problems()):
            case = Case(data, sch, RANDOM_BATCH, seed=RANDOM_XT_SEED)
            sep_sweeps[(sname, f"seed {SEPARATED[2] + j}", RANDOM_XT_SEED)] = point_errors(case, NFES)
        for pname in list(probs)[:3]:
            latents[(sname, pname)] = latent_errors(probs[pname], sch, 32 if quick else 64, LATENT_STEPS)
    digits = digits_sl = None
    if with_digits if with_digits is not None else True:
        digits = digits_fd(DIGITS_NFES, 1000, progress, ours=DIGITS_OURS)  # fewer samples: FD noise hides differences
        digits_sl = digits_fd(DIGITS_SL_NFES, 1000, progress, "scaled_linear", DIGITS_SL_OURS)
    return LowstepData(NFES, batch, errors, LATENT_STEPS, latents, digits, grids=grids,
                       robust=robustness(sweeps, NFES), random=randoms, digits_sl=digits_sl,
                       separated=robustness(sep_sweeps, NFES), separated_passed=all_cells_won(sep_sweeps, NFES))


# ------------------------------------------------------------------------ tables
def best_peer(by_method: dict, nfe: int, best_grid: bool = False) -> float:
    """min(DPM++2M, UniPC) at `nfe`, on their default grid or (`best_grid`) on their best grid law."""
    key = best_key if best_grid else str
    return min(by_method[key("diffusers-DPM++2M")][nfe], by_method[key("diffusers-UniPC")][nfe])


def wins(data: LowstepData, best_grid: bool = False) -> dict:
    """{schedule: (cells where recommended ≤ min(DPM++2M, UniPC), cells)}; `best_grid`:
    the peers on their own best grid laws (the stretch)."""
    out: dict = {}
    for (sname, _), e in data.errors.items():
        w, n = out.get(sname, (0, 0))
        w += sum(e["recommended"][k] <= best_peer(e, k, best_grid) for k in data.nfes)
        out[sname] = (w, n + len(data.nfes))
    return out


def error_table(data: LowstepData, sname: str) -> str:
    cols = OURS + PEERS
    rows = []
    for (s, pname), e in data.errors.items():
        if s != sname:
            continue
        cells = []
        for m in cols:
            vals = []
            for k in data.nfes:
                v = f"{e[m][k]:.3g}"
                vals.append(f"**{v}**" if m == "recommended" and e[m][k] <= best_peer(e, k) else v)
            cells.append(" / ".join(vals))
        rows.append([pname] + cells)
    return table(["problem"] + [f"{m} NFE {'/'.join(map(str, data.nfes))}" for m in cols], rows)


def grid_choice_table(data: LowstepData) -> str:
    """Per schedule and peer: the chosen law, its tuning score, the default's, every candidate's, the excluded laws."""
    rows = []
    for sname, by_peer in data.grids.items():
        for peer, g in by_peer.items():
            rows.append([sname, peer, f"**{g.law}**", g.scores[g.law], g.scores.get("linspace"),
                         ", ".join(f"{law} {v:.3g}" for law, v in g.scores.items()),
                         "; ".join(f"{law}: {why}" for law, why in g.excluded.items()) or "—"])
    return table(["schedule", "peer", "chosen law", "tuning score", "linspace (default) score",
                  "every candidate's tuning score", "excluded"], rows)


def best_grid_table(data: LowstepData, sname: str) -> str:
    """Recommended vs the peers on their best grid laws; **bold** where recommended ≤ min(DPM++2M, UniPC) there."""
    chosen = {p: g.law for p, g in data.grids[sname].items()}
    rows = []
    for (s, pname), e in data.errors.items():
        if s != sname:
            continue
        ours = [f"**{e['recommended'][k]:.3g}**" if e["recommended"][k] <= best_peer(e, k, True)
                else f"{e['recommended'][k]:.3g}" for k in data.nfes]
        rows.append([pname, " / ".join(ours)]
                    + [" / ".join(f"{e[best_key(p)][k]:.3g}" for k in data.nfes) for p in chosen])
    nfes = "/".join(map(str, data.nfes))
    return table(["problem", f"recommended NFE {nfes}"] + [f"{p} ({law}) NFE {nfes}" for p, law in chosen.items()],
                 rows)


def robustness_table(robust: dict) -> str:
    """Markdown: one row per (schedule, NFE) of a `robustness(...)` result."""
    rows = []
    for (sname, nfe), cell in robust.items():
        row = [sname, nfe]
        for m in SWEEP:
            c = cell[m]
            won = "" if m in PEERS else f"**{c['won']}/{c['cases']}** · "
            row.append(f"{won}{c['median']:.3g} · {c['other']}/{c['points']}")
        rows.append(row)
    heads = [f"{m}: {'' if m in PEERS else 'won · '}median · other comp." for m in SWEEP]
    return table(["schedule", "NFE"] + heads, rows)


def cases_won(pairs) -> int:
    """How many (recommended RMSE, min(DPM++2M, UniPC) RMSE) pairs of a random sweep cell ours wins (≤)."""
    return int(sum(ours <= best for ours, best in pairs))


def random_table(data: LowstepData) -> str:
    """Per schedule and NFE: problems where recommended ≤ min(DPM++2M, UniPC), and the
    geometric-mean, median and worst ratio recommended / min(DPM++2M, UniPC)."""
    rows = []
    for sname, by_nfe in data.random.items():
        for nfe, pairs in by_nfe.items():
            ratio = np.array([ours / best for ours, best in pairs])
            rows.append([sname, nfe, f"**{cases_won(pairs)}/{len(pairs)}**", geo_mean(ratio), float(np.median(ratio)),
                         float(ratio.max())])
    return table(["schedule", "NFE", "won", "ratio: geometric mean", "median", "worst"], rows)


def passed_everywhere(random: dict, nfes) -> tuple[int, int, tuple]:
    """(problems where recommended ≤ min(DPM++2M, UniPC) in every cell of every schedule at the
    acceptance NFEs `nfes` the draw ran, problems, those NFEs), from {schedule: random_sweep(...)}:
    the draw's estimate of how often one held-out mixture passes the whole acceptance check."""
    by_schedule = list(random.values())
    nfes = tuple(n for n in nfes if all(n in by_nfe for by_nfe in by_schedule))
    count = len(next(iter(by_schedule[0].values())))
    passed = sum(all(by_nfe[nfe][j][0] <= by_nfe[nfe][j][1] for by_nfe in by_schedule for nfe in nfes)
                 for j in range(count))
    return passed, count, nfes


def subset(sweep: dict, keep) -> dict:
    """{schedule: {nfe: pairs}} of `sweep` restricted to the problems j with keep[j] true."""
    return {sname: {nfe: [pair for pair, k in zip(pairs, keep) if k] for nfe, pairs in by_nfe.items()}
            for sname, by_nfe in sweep.items()}


def pass_rate(draws=PASS_RATE_DRAWS, n: int = RANDOM_BATCH, progress: bool = True) -> str:
    """Markdown: cells won and problems passing all acceptance cells, per draw of `draws`
    ((count, draw seed, first problem seed) each), in total, and in total split into the
    `default_problem`-shaped (separated) mixtures and the others, for `recommended` at NFES.
    About 8 minutes on the 2-core CPU for the default 140 problems (`python -m benchmarks.lowstep`)."""
    scheds = schedules()
    sweeps, separated = [], []
    for count, seed, first in draws:
        probs = random_problems(count, seed, first)
        separated += [sp.separated for sp in random_specs(count, seed, first)]
        if progress:
            print(f"  lowstep: pass rate, draw seed {seed} ({count} problems)", flush=True)
        sweeps.append({sname: random_sweep(sch, probs, NFES, n) for sname, sch in scheds.items()})
    merged = {sname: {nfe: [pair for sw in sweeps for pair in sw[sname][nfe]] for nfe in NFES} for sname in scheds}
    labels = [(str(seed), str(first)) for _, seed, first in draws] + [("—", "—"), ("separated only", "—"),
                                                                      ("the others", "—")]
    parts = [subset(merged, separated), subset(merged, [not s for s in separated])]
    rows = []
    for (seed, first), sw in zip(labels, sweeps + [merged] + parts):
        passed, total, _ = passed_everywhere(sw, NFES)
        cells = [" / ".join(str(cases_won(sw[sname][nfe])) for nfe in NFES) for sname in scheds]
        rows.append([seed, first, str(total), *cells, f"**{passed}/{total}**"])
    head = ["draw seed", "first problem seed", "problems",
            *(f"{s}: won at NFE {'/'.join(map(str, NFES))}" for s in scheds), "all cells"]
    return table(head, rows)


def latent_table(data: LowstepData) -> str:
    rows = []
    for (sname, pname), r in data.latents.items():
        for m in LATENT_METHODS:
            vals = [r["latent"][m][N] for N in data.latent_steps]
            rows.append([sname, pname, m, " / ".join(f"{v:.3g}" for v in vals),
                         "yes" if vals[-1] < vals[-2] else "**no**", f"{r['roundtrip'][m]:.1e}"])
    steps = "/".join(map(str, data.latent_steps))
    return table(["schedule", "problem", "method", f"latent RMSE, N = {steps}", "50 < 20",
                  f"round-trip MSE (N = {data.latent_steps[-1]})"], rows)


def _by_nfe_table(values: dict, nfes) -> str:
    """A table with one row per method of {method: {nfe: value}} and one column per NFE."""
    return table(["method"] + [f"NFE {k}" for k in nfes], [[m] + [v[k] for k in nfes] for m, v in values.items()])


def render(data: LowstepData) -> str:
    body = [doc_intro(__doc__), ""]
    body.append(f"Batch: {data.batch} points per problem; x_T at t = 999; NFE = model calls (ours: N steps = N calls).")
    for sname, (w, n) in wins(data).items():
        body += ["", f"### {sname} schedule — RMSE at NFE {'/'.join(map(str, data.nfes))}", ""]
        body.append(error_table(data, sname))
        body.append(f"\nRecommended ≤ min(DPM++2M, UniPC) in **{w} of {n}** cells.")
    if data.grids:
        body += ["", "### The peers on their own best grid laws", "",
                 (f"Chosen per schedule on the tuning set ({len(tuning_problems())} mixtures × {TUNING_BATCH} "
                  f"points, NFE {'/'.join(map(str, data.nfes))}; score = geometric-mean RMSE):"),
                 "", grid_choice_table(data)]
        stretch = wins(data, best_grid=True)
        for sname, (w, n) in stretch.items():
            body += ["", f"#### {sname} schedule — RMSE at NFE {'/'.join(map(str, data.nfes))}, peers on best grids",
                     "", best_grid_table(data, sname),
                     f"\nRecommended ≤ min(DPM++2M, UniPC), each on its best grid, in **{w} of {n}** cells."]
        w, n = (sum(v[i] for v in stretch.values()) for i in (0, 1))
        body.append(f"\n**Stretch: recommended ≤ the better of DPM++2M and UniPC on their best grid laws in "
                    f"{w} of {n} cells** (default grids: {sum(v[0] for v in wins(data).values())} of {n}).")
    if data.robust:
        body += ["", f"### Robustness over x_T seeds {', '.join(map(str, SEEDS))}", "",
                 (f"Every reported problem × {len(SEEDS)} x_T seeds per cell; ours: cases where the RMSE is ≤ "
                  "min(DPM++2M, UniPC); all: median per-point error over every point of every case, and the "
                  "points that end in another mixture component than the ODE solution's (of all points)."),
                 "", robustness_table(data.robust)]
    if data.random:
        count = len(next(iter(next(iter(data.random.values())).values())))
        body += ["", f"### A random draw of held-out mixtures ({count} problems × {RANDOM_BATCH} points)", "",
                 ("The issue's acceptance is checked on one held-out mixture nobody here has seen. The nearest "
                  "estimate of how often the recommended sampler passes there: problems drawn from one "
                  "declared distribution (`random_problems`: dimension 2–32, 2–8 components, spread 0.5–3, "
                  "30 % separated `default_problem` shapes), x_T seed 7; won = problems where its RMSE is ≤ "
                  "min(DPM++2M, UniPC) on their default grid; ratio = its RMSE / that minimum."),
                 "", random_table(data)]
        passed, count, nfes = passed_everywhere(data.random, data.nfes)
        body.append(f"\nProblems won in every cell of all {len(data.random)} schedules at NFE "
                    f"{'/'.join(map(str, nfes))} (what one acceptance check asks of one mixture): "
                    f"**{passed} of {count}**.")
    if data.separated:
        dim, count, first = SEPARATED
        body += ["", f"### Separated {dim}-d mixtures: the points that end in another component", "",
                 (f"`default_problem(({dim},), seed)` (five components ≥ 3 apart, std ≤ 0.55), seeds {first}–"
                  f"{first + count - 1}, {RANDOM_BATCH} points each, x_T seed {RANDOM_XT_SEED}: the family the random "
                  "draws pass least often. Columns as in the seeds table. Here the cells are lost on the few points "
                  "sent to another mixture component (other comp.), while the median point is closer than the "
                  "peers' (docs/math.md §30)."),
                 "", robustness_table(data.separated)]
        if data.separated_passed is not None:
            passed, count = data.separated_passed
            body.append(f"\nProblems won in every cell of all schedules at NFE {'/'.join(map(str, data.nfes))}: "
                        f"**{passed} of {count}**.")
    body += ["", "### Inverted latents: distance of x_N to the exact ODE inversion (64 points)", "",
             latent_table(data)]
    if data.digits is not None:
        body += digits_tables(data.digits, "Digits DDPM")
    if data.digits_sl is not None:
        body += ["", "The same network trained on Stable Diffusion's scaled-linear schedule (σ̄ ≤ 14.6; "
                 "`python -m benchmarks.train_digits --beta-schedule scaled_linear`), where `recommended` "
                 "uses the \"pc-shift-moved\" start: against the plain \"pc\" start "
                 f"(\"{PLAIN_START}\") and the peers on their default grid (docs/math.md §18, §22)."]
        body += digits_tables(data.digits_sl, "Digits DDPM, scaled-linear schedule")
    return "\n".join(body)


def digits_tables(d: dict, title: str) -> list:
    """Markdown lines: the Fréchet distance and ODE RMSE tables of one `digits_scores` result, one
    column per NFE it was run at, and its "latent" table (`digits_latents`) when it has one."""
    from belm_core.recommend import INVERSION_SUBSTEPS

    nfes = sorted(next(iter(d["fd"].values())))
    out = ["", f"### {title}: Fréchet distance ↓ ({d['n']} samples, same x_T; floor {d['floor']:.3f})", "",
           _by_nfe_table(d["fd"], nfes)]
    if "rmse" in d:
        out += ["", (f"### {title}: RMSE against the ODE solution ↓ (first {d['ref_n']} of the samples; "
                     f"reference: DDIM on {d['ref_steps']} and {d['ref_steps'] // 2} linspace steps, "
                     "Richardson-extrapolated)"), "",
                (f"DDIM on {d['ref_steps']} steps is {d['ref_spread']:.2g} from the reference; O-BELM on "
                 f"{d['old_ref_steps']} linspace steps, the reference before docs/math.md §27, is "
                 f"{d['old_ref']:.2g} from it (its rows near t = 0 amplify the network's irregularities). "
                 "RMSE against the ODE solution is the metric of the mixture tables above."), "",
                _by_nfe_table(d["rmse"], nfes)]
    if "latent" in d:
        lat = d["latent"]
        steps = sorted(next(iter(lat["rmse"].values())))
        out += ["", (f"### {title}: inverted latents, RMSE of x_N against the exact ODE inversion ↓ ({lat['n']} "
                     f"test images; reference: DDIM inversion on {lat['ref_steps']} and {lat['ref_steps'] // 2} "
                     "linspace steps, Richardson-extrapolated)"), "",
                (f"DDIM inversion on {lat['ref_steps']} steps is {lat['ref_spread']:.2g} from the reference. The "
                 f"recommendation takes inversion's first step in {INVERSION_SUBSTEPS} graded DDIM sub-steps "
                 "(docs/math.md §28); "
                 "the single-step row is the paper's first step on the same rows."), "",
                table(["sampler", *(f"N = {N}" for N in steps)],
                      [[m, *(f"{lat['rmse'][m][N]:.3g}" for N in steps)] for m in lat["rmse"]])]
    return out


def draw(data: LowstepData, fig_dir: Path) -> list:
    import matplotlib.pyplot as plt

    names = list(schedules())
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4))
    for ax, sname in zip(np.atleast_1d(axes), names):
        cases = [e for (s, _), e in data.errors.items() if s == sname]
        mean = {m: {k: geo_mean(e[m][k] for e in cases) for k in data.nfes} for m in cases[0]}
        plot_series(ax, data.nfes, mean, OURS)
        ax.set_title(sname)
        ax.set_xlabel("NFE (model calls)")
    np.atleast_1d(axes)[0].set_ylabel("geometric-mean RMSE over the problems")
    np.atleast_1d(axes)[-1].legend(fontsize=7)
    return [(savefig(fig, fig_dir, "lowstep_vs_peers"),
             ("Geometric mean over the held-out mixtures of the RMSE against the ODE solution, per schedule: "
              "the recommended exact sampler and O-BELM (solid) vs diffusers' DPM++2M, UniPC and DEIS on their "
              "default grid and on their own best grid law (dashed). Produced by `benchmarks/lowstep.py`."))]


def run(quick: bool = False, fig_dir=None, progress: bool = True) -> Section:
    return compose(TITLE, lambda: compute(quick, progress), render, draw, fig_dir)


def main(argv=None) -> str:
    """`python -m benchmarks.lowstep [--points N]`: print `pass_rate` with N points per mixture
    (default RANDOM_BATCH = 512; the pass rate's time grows about linearly with N)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks.lowstep", description=pass_rate.__doc__)
    parser.add_argument("--points", type=int, default=RANDOM_BATCH,
                        help=f"points (x_T draws) per mixture and schedule (default {RANDOM_BATCH})")
    args = parser.parse_args(argv)
    if args.points < 1:
        parser.error(f"--points must be a positive integer, got {args.points}")
    out = pass_rate(n=args.points)
    print(out)
    return out


if __name__ == "__main__":
    main()
