"""`recommended(schedule, steps)`: the Solver keyword arguments the benchmarks found best.

    solver = Solver(schedule, steps=N, **recommended(schedule, N))

For discrete VP schedules (DDPM "linear", SD "scaled_linear", "cosine"), at every N ≥ 2:
"dpl-ob-curv" (`belm_core.methods.curvature`, docs/math.md §23, §29, §30): "dpl-ob-traj"
(`belm_core.methods.trajectory`, docs/math.md §16) whose rows with 1 < σ̄ < 10 (`BAND`; on cosine
2 < σ̄ < 10) also correct their τ-quadrature for x̂0's slope and curvature (gain ½; above `REACH_TOP`, i.e. on cosine,
gain `WIDE_GAIN` = ¾ and trajectory rows that read half of the way to their level instead of
¾, `method_for`, docs/math.md §21, §26), a predictor–corrector
start-up chosen by the schedule's noisiest level σ̄(T − 1) (`startup_for`: "pc-shift-moved",
whose corrector reads the predictor the way row N−1 reads its state and whose read, reused by
row N−1, is moved to the corrected state with a per-sample Gaussian gain, up to `TRUSTED_TOP`;
"lookahead-log", whose corrector reads where row N−1 wants x̂0 and weighs the two reads
exactly for a constant error in ε, up to `BIAS_TOP`; the plain "pc" above) and
the "trailing-tail" spacing (`SPACING`): diffusers' "trailing" grid, which starts at the
noisiest model time T − 1 like DPM-Solver++ and UniPC do, with its last model time moved
from T/N − 1 to round(0.4 (t_{N−2} + 1)) − 1 ≈ 0.8 T/N − 1; its last row reads x̂0 at the
σ̄-linear shifted level whenever the row above it is a DPL row (shift_last="after-dpl",
docs/math.md §24). Its rows are the exact p-family member dpl-ob
(docs/math.md §12); the DPL rows with σ̄_{i+1}/σ̄_{i−1} < 6 read x̂0 on the trajectory ahead,
at a state extrapolated with a velocity register that travels in the latent (with the
curvature correction's two rotation registers its Latent holds five arrays), and the other
rows read x̂0 at §13's half-way shifted level, the last one included when σ̄_1 > s ("dpl-ob-shift-last", the previous recommendation). Sampling makes
exactly N model calls (inversion N + 1–7, below), calls the model at training timesteps only, and its inverted
latents converge to the exact ODE inversion as N grows (2–10× closer than
"dpl-ob-shift-last"'s at N = 20–50). Evidence: benchmarks/lowstep.py (RESULTS.md, "Low-step
accuracy") and docs/math.md §16: on 140 random held-out mixtures it is at or below the better
of DPM-Solver++(2M) and UniPC in all nine cells (three schedules × NFE 5/10/20) on 71 of
140 with the plain predictor–corrector start (80 with "pc-shift" on scaled-linear, below)
against 62 for "dpl-ob-shift-last", the gain at NFE 10–20 (NFE 5 is unchanged: its rows
are too coarse to read on the trajectory); on the digits network it is stable at every N
and has the same Fréchet distance at NFE 4–5, within ±0.03 at 6–50. Earlier evidence for
the shifted rows it keeps: the shift raised the cells from 64–69 to 79–84 of 99 and
lowered the digits network's Fréchet distance at NFE 5/10; shifting the last row as well
(it moves only where σ̄_1 > s: N ≤ 12, 11 and 5 on scaled-linear, linear and cosine) wins
more cases at NFE 5 and 10 (docs/math.md §13). No per-N tuning of the grid, p rule or
start-up paid off (the look-ahead start, docs/math.md §13, wins mixtures at NFE 5–8 but
loses on the digits network at NFE 4, 6 and 10, so the plain predictor–corrector start
stays). The shifted corrector ("pc-shift", docs/math.md §18) lifts the mixtures on
scaled-linear (NFE-5 cells 46 → 61 of 70; 0.87–0.93× the plain start's error at N = 2–15)
and is neutral on a digits network trained on that schedule (ODE RMSE 0.92–1.05× the plain
start's at NFE 4–20; Fréchet distance the same except at NFE 4, 1.73 against 1.63), but
the linear-schedule digits network, whose reads at the top of its grid (σ̄ up to 157) are
far off, is 1.4–1.6× further from its ODE solution with it at NFE 3–6: hence the bound on
σ̄(T − 1). On DDPM's linear schedule (σ̄(T − 1) = 157) "lookahead-log" (docs/math.md §20)
takes the NFE-5 cells of the pass rate's first and second 70 mixtures from 46 and 53 to 60
and 60, and the separated bench's from 11 to 22 of 42, where the line-weighted look-ahead
and "pc-shift" were refused by the linear digits network; that network is closer to its
ODE solution with it at NFE 4–8 and 20 (RMSE 0.161 / 0.104 / 0.083 / 0.049 against 0.164 /
0.110 / 0.087 / 0.051, x_T seed 0; seed 1 the same), further at NFE 3 (0.330 against
0.292) and level at 10; its Fréchet distance at NFE 5 stays below the peers' (1.27 against
DPM++2M 1.78 and UniPC 1.69). With it the pass rate's 140 mixtures pass all nine cells on
94 (against 80), the 60 fresh ones on 36 (against 29) and the 42 separated ones on 16
(against 8). On cosine (σ̄(T − 1) = 2·10⁴) the ε-bias weights put nearly all the weight on
the corrector's read and lose the mixtures at NFE 20 (15 of 42 separated cells against 34),
hence the bound. On cosine the trajectory rows read half of the way to their level
(`WIDE_REACH`, docs/math.md §21): against ¾, cosine NFE-20 cells 60 / 60 / 49 / 34 against
59 / 58 / 47 / 33 on the pass rate's first and second 70, 60 fresh and 42 separated mixtures
(geometric-mean ratio to the better peer 0.47 / 0.45 / 0.49 / 0.43 against 0.52 / 0.52 /
0.59 / 0.47) and 70 / 66 / 42 / 25 against 69 / 64 / 37 / 23 of the first 70 at NFE 8 / 15 /
30 / 50, NFE 5–10 unchanged; reach ½ loses on scaled-linear and linear (NFE-5 cells 57
against 61; linear NFE 10 62 against 70), hence `REACH_TOP`. No cosine network exists
here to check it (docs/math.md §17; §26 trains one). Above `REACH_TOP` the method is "dpl-ob-curv"
(`belm_core.methods.curvature`, docs/math.md §23): the trajectory rows with 2 < σ̄_i < 10
correct their τ-quadrature for x̂0's slope and curvature, estimated from a quarter-turn
rotation register fed with the rows' reads, which travels in the latent (five arrays). On
cosine it lowers the error at NFE 15 / 20 / 30 / 50 on 49 / 42 / 54 / 61 of the first 70
mixtures (geometric-mean ratio 0.97 / 0.80 / 0.64 / 0.80; NFE ≤ 10 has no corrected rows) and
takes cosine NFE 20 from 60 / 60 / 49 / 28 to 65 / 63 / 54 / 30 cells on the first and second
70, the fresh 60 and the 35 separated among the 140 (all nine cells: 49 / 50 / 36 / 14 against
44 / 49 / 34 / 14); on scaled-linear and linear it improves only 20–27 of 70 mixtures at NFE
10–20, so they kept "dpl-ob-traj" until the grid and the last row changed (§24; docs/math.md §29,
below). On scaled-linear the start-up's read that row N−1
reuses is moved from the predictor to the corrected state ("pc-shift-moved", docs/math.md
§22): scaled-linear NFE-5 cells 63 / 65 / 56 / 32 against 61 / 63 / 53 / 26 on the same four
sets (NFE 10 and 20 within one cell); on the scaled-linear digits network the ODE RMSE is
unchanged (0.080 / 0.075 / 0.053 / 0.038 / 0.036 at NFE 4 / 5 / 6 / 10 / 20; x_T seed 1 at
NFE 5 0.074 against 0.073) and the Fréchet distance is the same except at NFE 4 (1.78 / 1.66
against 1.73 / 1.61 on x_T seeds 0 / 1). All nine cells pass together on 44 / 49 / 34 / 16 of
those sets against 44 / 50 / 34 / 14 (93 against 94 of the 140).

The grid and the last row (docs/math.md §24): on scaled-linear at 20 steps the last row, x_2, x_1 →
x_0, carries most of the error (from the exact x_2, x_1 it alone is 3.7× further from the ODE
solution than the exact flow from the sampler's own x_1). The shorter last step and the shift after a
DPL row lower the error against the same rows on "trailing" (σ̄_1 > s rule) at NFE 5 / 10 / 20 by the
geometric-mean factors 0.77 / 0.82 / 0.79 (scaled-linear), 0.86 / 0.82 / 0.92 (linear) and 0.95 /
0.84 / 1.01 (cosine) on the pass rate's first 40 mixtures; the cells on the four sets go from 49 / 50 /
36 / 14 to 53 / 54 / 39 / 19 all nine (scaled-linear NFE 5: 63 → 70 of the first 70; linear NFE 5:
60 → 65), and both digits networks come closer to their ODE solution at every NFE from 5 on (linear:
RMSE 0.094 / 0.071 / 0.030 / 0.014 against 0.095 / 0.078 / 0.038 / 0.026 at NFE 5 / 6 / 10 / 20;
scaled-linear 0.057 / 0.035 / 0.033 against 0.076 / 0.038 / 0.036 at NFE 5 / 10 / 20), with the
Fréchet distance at NFE 5 at 1.31 / 1.10 against 1.27 / 1.08 (DPM++2M 1.78 on the linear network).
The price is in the inverted latents at 10–20 steps, where inversion's row 1 divides by the smaller
p_1: on linear N = 20 and cosine N = 10 they are 1.2–1.9× and 1.4–1.7× further from the exact ODE
inversion than before; they still converge, and at 50 steps they are 1.3–2.4× closer.

The first step on DDPM's linear schedule (docs/math.md §25): at 5–20 steps where σ̄(T − 1) lies in
(`TRUSTED_TOP`, `BIAS_TOP`] the grid is "long-start" (`spacing_for`): the start-up's step is 1.5 T/N
long (999 → 699 at N = 5) and the other model times are trailing below it, with the same short last
step. Linear NFE-5 cells on the pass rate's first and second 70, the fresh 60 and the 35 separated
mixtures 66 / 64 / 57 / 30 against 65 / 64 / 53 / 26; on 30 fresh 2-d `default_problem`s 24 against
10 (all nine 13 against 6). The linear digits network is closer to its ODE solution at NFE 6–20
(RMSE 0.060 / 0.037 / 0.028 / 0.013 at NFE 6 / 8 / 10 / 20 against 0.071 / 0.038 / 0.030 / 0.014),
level at 5 (0.0946 against 0.0940), with a lower Fréchet distance at NFE 5 / 6 / 10 (1.24 / 1.21 /
1.12 against 1.31 / 1.27 / 1.14); it refuses the longer first step at NFE 3–4 (RMSE 0.59 / 0.21
against 0.35 / 0.15), and at N = 30 the mixtures are 6–11 % and the network 8 % further from the ODE
with it, hence the range.
The random draws pass all nine cells on 4 fewer of 200 mixtures (a reshuffle: linear NFE 20 loses
up to two cells per set); separated mixtures gain 22 of 137. RESULTS.md's eleven mixtures lose two
cells with it (linear NFE 5 on 64-d wide components, NFE 20 on one 24-d mixture: 95 of 99 against 97).

On cosine the curvature correction runs at gain γ = `WIDE_GAIN` = ¾ instead of the method's
default ½ (docs/math.md §26): cosine NFE-20 cells on the pass rate's first and second 70, the
fresh 60, §21's 42 and 30 fresh 2-d and 3-d `default_problem`s 68 / 66 / 56 / 37 / 24 / 30 against
65 / 64 / 54 / 36 / 23 / 29 (12 gained, 2 lost); the same at NFE ≤ 15 within one cell; geometric-mean
error ratio to γ = ½ 0.89–0.96 at NFE 25–50. A digits network trained on cosine (x̂0 clipped to
[−1, 1], as diffusers' DDPMScheduler does) samples the same with either gain at NFE 4–50.

Large N on a trained network (docs/math.md §27): the rows below σ̄ = s keep O-BELM's p, whose
parasitic root on the √-graded clean end of a uniform-in-t grid exceeds the stiff bound (q_i ≈ 1 + 2/i)
and multiplies what the DPL rows above pass down by Π q_i ≈ 30–40 at N = 100: on the linear digits
network the ODE RMSE is 0.012 at N = 50 and 0.023 at 100 (UniPC 0.013 / 0.0066, DDIM 0.020 / 0.011),
erratic from one N to the next. DPL's p there is smooth and closer than both peers at N = 50–300,
but in inversion the same product is what damps the first step's error, and the inverted latents
stop converging (0.2–0.5 from the exact inversion at N ≥ 100 on mixtures), so O-BELM's rows stay.

Inversion's first step (docs/math.md §28): `INVERSION_SUBSTEPS` = 8 graded DDIM sub-steps from x_0 to x_1
(`belm_core.methods.inverse_start`) instead of the paper's single DDIM step, which makes most of the
inverted latent's error. Inversion then makes N + at most 7 model calls (one per distinct training
time the sub-steps visit below t_1: on scaled-linear 6 / 5 / 4 / 3 at N = 10 / 20 / 50 / 100); sampling,
the Latent and the exact round trip are unchanged. On the three digits networks, 64 test images, the latent's RMSE
against the exact ODE inversion (DDIM on 1000 and 500 steps, Richardson-extrapolated) at N = 10 / 20 /
50 / 100: linear 0.27 / 0.18 / 0.096 / 0.033 against 0.46 / 0.40 / 0.31 / 0.18 with the single step,
scaled-linear 0.14 / 0.093 / 0.057 / 0.023 against 0.35 / 0.28 / 0.21 / 0.13, cosine 0.31 / 0.23 / 0.14 /
0.096 against 0.51 / 0.46 / 0.32 / 0.18 (4 sub-steps: in between). On held-out 4-d mixtures (seeds 21–28)
8 sub-steps make the latent's distance 0.37–0.81× the single step's at N = 20 on scaled-linear and linear
(cosine 0.64–1.01×) and 0.15–0.31× on scaled-linear at N = 50; on cosine at N = 50 / 100, where the single
step's latent is already within 0.001–0.04, it is 0.47–2.18× / 1.4–1.7× (the rows' own error, which the
first step's partly cancelled, remains).

The curvature correction on scaled-linear and linear (docs/math.md §29): once the grid was
"trailing-tail" with the shifted last row (§24), the band rows' correction (gain ½, reach ¾) that
§23 had kept for cosine also wins there. On the pass rate's four draws and 60 fresh mixtures (200;
draw seed 9999, problem seeds 3000 + j) all nine cells pass together on 166 against 156 with
"dpl-ob-traj" (scaled-linear NFE 5 / 10 / 20 all three: 189 against 184; linear 182 against 177;
cells lost at NFE 10 / 20: scaled-linear 6 / 4 against 8 / 8, linear 0 / 7 against 1 / 11; NFE 5
has no corrected rows); the geometric-mean ratio to the better peer at NFE 10 is 0.29–0.36 against
0.31–0.41 on scaled-linear, and at NFE 20 it moves either way by up to 0.07 per draw. Scaled-linear
NFE 8 / 15 / 30 / 50 cells 199 / 198 / 196 / 199 against 199 / 196 / 193 / 192. The digits networks
are level (x_T seed 0, 250 samples against the extrapolated ODE solution): linear RMSE 0.0269 /
0.0168 / 0.0130 / 0.0121 against 0.0268 / 0.0166 / 0.0130 / 0.0120 at NFE 10 / 15 / 20 / 50 and the
same Fréchet distance (±0.002); scaled-linear 0.0272 / 0.0226 / 0.0299 against 0.0272 / 0.0223 /
0.0286 at NFE 10 / 20 / 50, Fréchet distance within 0.004 up to NFE 20 and 1.119 against 1.107 at
50; NFE ≤ 6 has no corrected rows. The inverted latents of held-out 4-d mixtures are 0.96–1.34×
as far from the exact inversion at N = 10–20 as before and still converge; round trips stay at 2–5·10⁻²⁹
(scaled-linear) and 3–13·10⁻³¹ (linear) at N = 50. On cosine the same gain ½ and reach ¾ lose
(all three NFEs 181 against 192 of 200), so cosine keeps ¾ and ½.

The band's bottom on scaled-linear and linear (docs/math.md §30): the cells still lost at NFE 10–20 are
lost on a few points near a separatrix that end in another mixture component than the ODE solution's
(on the others the sampler is 1.4–3.6× closer than UniPC), and the first uncorrected row below σ̄ = 2
is where most of them cross. Correcting the rows with 1 < σ̄_i < 2 too (`BAND` = (1, 10)) takes those
points from 32 to 17 at linear NFE 20 and from 48 to 19 at scaled-linear NFE 10 on 40 separated 2-d
mixtures (UniPC 20 and 34). All nine cells pass on 24 / 21 / 35 of three separated sets of 40 (2-d, 2-d,
3-d) against 22 / 16 / 34, and on 168 of §29's 200 random mixtures against 166. The digits networks are
level (ODE RMSE within 3 % and Fréchet distance within 0.012 at NFE 5–50; NFE 5–6 unchanged). Cosine
keeps (2, 10): with (1, 10) its NFE-20 cells on the 200 fall from 192 to 186.

For rectified flows (`FlowMatch`: SD3, Flux), at every N ≥ 2: O-BELM in the flow's own
coordinates (x, σ) with the predictor–corrector start-up, which on a flow is the trapezoid
rule in τ′ = α/σ on x̂0 = x − σ v (docs/math.md §14); the grid is the schedule's own
(diffusers' `set_timesteps`: its shift, or `timesteps=FlowMatch.timesteps(N, mu=…)` for
dynamic shifting), so no spacing is returned. N model calls. Evidence:
benchmarks/flow.py (RESULTS.md §7, "Recommended for flows"): against plain O-BELM it
halves the digits flow network's Fréchet distance excess at NFE 5 and wins more mixture
cells than O-BELM, dpl-ob and their DDIM-start variants; FireFlow stays ahead on
analytic mixtures at NFE ≤ 10 (it is not exact). Flows keep the single-step inversion start: on the digits
flow network 8 sub-steps bring the latents of 64 test images 1.4–1.6× closer to the exact inversion on
the SD3 grid (shift 3) but take them 1.7–2.0× further on the unshifted one at N = 10–50 (docs/math.md §28).

N = 1 has no exact sampler (a 2-state latent needs two steps) and raises ValueError.
Other schedules (continuous VP, VE/EDM) have no benchmarked recommendation yet and raise
ValueError.
"""

from __future__ import annotations

from typing import Any

from .checks import is_index
from .methods.curvature import CurvatureReading
from .methods.pfamily import AFTER_DPL
from .schedules import DiscreteVP, FlowMatch, NoiseSchedule

__all__ = ["recommended", "startup_for", "method_for", "spacing_for", "SPACING", "LONG_START_SPACING", "LONG_START_STEPS",
           "TRUSTED_TOP", "BIAS_TOP", "REACH_TOP", "WIDE_REACH", "WIDE_GAIN", "BAND", "INVERSION_SUBSTEPS"]

#: the VP grid: diffusers' "trailing" (it starts at T − 1 like DPM-Solver++ and UniPC) with a
#: shorter last step (`belm_core.schedules.TAIL_FRACTION`, docs/math.md §24)
SPACING = "trailing-tail"

#: the VP grid where σ̄(T − 1) lies in (`TRUSTED_TOP`, `BIAS_TOP`] (DDPM's linear schedule) and
#: `LONG_START_STEPS`[0] ≤ N ≤ `LONG_START_STEPS`[1]: "trailing-tail" with a first step 1.5 T/N long
#: (`belm_core.schedules.LONG_START`), which the linear digits network and the separated mixtures
#: both take there and the network refuses at N ≤ 4 (docs/math.md §25)
LONG_START_SPACING = "long-start"
LONG_START_STEPS = (5, 20)

#: the largest σ̄(T − 1) at which the start-up's corrector reads x̃ at row N−1's shifted level
#: ("pc-shift"): SD's scaled-linear schedule (14.6) but not DDPM's linear (157) nor cosine
#: (2·10⁴); measured on two trained networks (docs/math.md §18)
TRUSTED_TOP = 20.0

#: the largest σ̄(T − 1) at which the start-up weighs its reads for a constant error in ε
#: ("lookahead-log"): DDPM's linear schedule (157) but not cosine (2·10⁴), where those weights
#: put nearly all of x̄_{N−1} on one read and lose the mixtures at NFE 20 (docs/math.md §20)
BIAS_TOP = 1000.0

#: the largest σ̄(T − 1) at which the trajectory rows read x̂0 ¾ of the way to their τ′-midpoint
#: level (`belm_core.TrajectoryReading`'s default reach): scaled-linear (14.6) and linear (157), which
#: lose cells with less reach; above it (cosine, 2·10⁴) they read `WIDE_REACH` of the way, which
#: wins cosine cells at NFE 8–50 on every mixture draw measured (docs/math.md §21)
REACH_TOP = 1000.0
#: the trajectory rows' reach above `REACH_TOP`
WIDE_REACH = 0.5
#: the curvature correction's gain γ above `REACH_TOP` (`CurvatureReading`'s default is ½): ¾ wins
#: cosine NFE-20 cells on six mixture sets (+10 net of 302 mixtures), is level at NFE ≤ 15 and
#: closer at NFE 25–50, and leaves a cosine digits network unchanged at NFE 4–50 (docs/math.md §26)
WIDE_GAIN = 0.75

#: the σ̄ band of the curvature-corrected rows up to `REACH_TOP` (`CurvatureReading`'s default is (2, 10),
#: which cosine keeps): the rows with 1 < σ̄_i < 2 corrected too, which halves the points that end in
#: another mixture component than the ODE solution's at scaled-linear NFE 10 and linear NFE 20 and
#: leaves both digits networks level (docs/math.md §30)
BAND = (1.0, 10.0)

#: graded DDIM sub-steps of inversion's first step x_0 → x_1 on VP schedules (`Solver(inversion_substeps=)`):
#: the inverted latents of three digits networks come 1.6–5.7× closer to the exact ODE inversion at
#: N = 10–100 than with the single step, and closer than with 4 (docs/math.md §28)
INVERSION_SUBSTEPS = 8


def recommended(schedule: NoiseSchedule, steps: int) -> dict[str, Any]:
    """Keyword arguments for `Solver(schedule, steps=steps, **kwargs)`: method (a registered name,
    or a `Method` where a parameter differs from the name's default), spacing, startup and, on VP
    schedules, inversion_substeps."""
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a belm_core NoiseSchedule, got {type(schedule).__name__}")
    if not isinstance(schedule, (DiscreteVP, FlowMatch)):
        raise ValueError(
            f"recommended() has no benchmarked recommendation for {type(schedule).__name__} schedules yet "
            "(only DiscreteVP: linear, scaled_linear, cosine; and FlowMatch); choose method= and spacing= "
            "yourself, e.g. 'o-belm'"
        )
    T = int(schedule.num_train_timesteps)
    if not is_index(steps) or not 2 <= steps <= T:
        grid = "'trailing'" if isinstance(schedule, DiscreteVP) else "flow"
        raise ValueError(
            f"steps={steps!r} must be an integer in [2, {T}]: an exact 2-step sampler needs at least 2 steps "
            f"(its latent holds 2 states), and the {grid} grid at most T = {T}"
        )
    if isinstance(schedule, FlowMatch):
        return {"method": "o-belm", "startup": "pc"}
    return {"method": method_for(schedule), "spacing": spacing_for(schedule, steps), "startup": startup_for(schedule),
            "inversion_substeps": INVERSION_SUBSTEPS}


def spacing_for(schedule: DiscreteVP, steps: int) -> str:
    """The VP grid: `LONG_START_SPACING` where the start-up is "lookahead-log" (TRUSTED_TOP < σ̄(T − 1) ≤
    BIAS_TOP) and `LONG_START_STEPS`[0] ≤ steps ≤ `LONG_START_STEPS`[1], else `SPACING`."""
    if not isinstance(schedule, DiscreteVP):
        raise TypeError(f"spacing_for needs a DiscreteVP schedule (a flow keeps its own grid), got {type(schedule).__name__}")
    if not is_index(steps) or steps < 1:
        raise ValueError(f"steps={steps!r} must be a positive integer (the number of sampling steps)")
    low, high = LONG_START_STEPS
    if TRUSTED_TOP < _top(schedule) <= BIAS_TOP and low <= steps <= high:
        return LONG_START_SPACING
    return SPACING


def method_for(schedule: DiscreteVP) -> CurvatureReading:
    """The VP method: "dpl-ob-curv", the trajectory rows whose band rows correct their τ-quadrature
    for x̂0's slope and curvature (docs/math.md §23, §29), with the default gain ½ and reach ¾ and
    the band `BAND` (1 < σ̄ < 10, docs/math.md §30) up to `REACH_TOP` in σ̄(T − 1); above it the
    default band (2 < σ̄ < 10), reading `WIDE_REACH` of the way to their level with gain
    `WIDE_GAIN` (`CurvatureReading(gain=¾, reach=½)`, docs/math.md §21, §26).
    Either way the last row reads at its shifted level whenever the row above it is a DPL row
    (shift_last="after-dpl", docs/math.md §24)."""
    if _top(schedule) <= REACH_TOP:
        return CurvatureReading(band=BAND, shift_last=AFTER_DPL)
    return CurvatureReading(gain=WIDE_GAIN, reach=WIDE_REACH, shift_last=AFTER_DPL)


def startup_for(schedule: DiscreteVP) -> str:
    """The VP start-up by the noisiest level σ̄_max = σ̄(T − 1): "pc-shift-moved" up to `TRUSTED_TOP`,
    "lookahead-log" up to `BIAS_TOP`, "pc" above."""
    top = _top(schedule)
    if top <= TRUSTED_TOP:
        return "pc-shift-moved"
    return "lookahead-log" if top <= BIAS_TOP else "pc"


def _top(schedule: DiscreteVP) -> float:
    """The schedule's noisiest level σ̄(T − 1), by which the VP recommendation is chosen."""
    return float(schedule.sigma_bar(int(schedule.num_train_timesteps) - 1))
