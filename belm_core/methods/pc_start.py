"""The predictor–corrector start-up: the first step from a lone x_N (docs/math.md §12, §13).

The default start (docs/math.md §3) makes the first, largest step with DDIM, which is first
order. This one corrects it for free. With y = x̄/σ̄ and τ = 1/σ̄ the ODE reads
dy/dτ = x̂0(x), x̂0 = x̄ − σ̄ ε, and the trapezoid rule in τ on [τ_N, τ_{N−1}] is

    ε_N = ε(x_N, t_N);   x̃̄ = x̄_N − h_N ε_N  (DDIM predictor);   ε̃ = ε(x̃, t_{N−1})
    x̂0_N = x̄_N − σ̄_N ε_N,   x̂0~ = x̃̄ − σ̄_{N−1} ε̃,   r = σ̄_{N−1}/σ̄_N
    x̄_{N−1} = r x̄_N + (1 − r)(x̂0_N + x̂0~)/2
    ε_eff   = (x̄_{N−1} − x̂0~)/σ̄_{N−1}

ε_eff (the ε that makes x̂0 at x_{N−1} equal x̂0~) stands in for ε(x_{N−1}, t_{N−1}) in
the next step, so the start-up costs the same two model calls as the DDIM start and an
N-step sampler still makes N calls. Only sampling from a lone x_N uses it: inversion and
sampling from a Latent run the method's own rows, so exact inversion is untouched and
the Latent does not depend on the start-up.

The look-ahead variant (startup="lookahead", methods with an evaluation shift) puts the
corrector's node where the first row of the method wants x̂0. A shifted row N−1 reads x̂0
as it is on the trajectory at σ̄_m = `EvaluationShift.level[N−1]` (docs/math.md §13), not
at σ̄_{N−1}, so the start-up predicts to σ̄_m, evaluates there (t_m = t(σ̄_m) rounded to a
training timestep, σ̄_m = σ̄(t_m)) and integrates with the quadrature that is exact for
x̂0 linear in τ from the nodes τ_N and τ_m = 1/σ̄_m:

    x̃̄ = x̂0_N + σ̄_m ε_N;   x̂0* = x̃̄ − σ̄_m ε(α_m x̃̄, t_m)
    c = (τ_m − τ_N)/(τ_{N−1} − τ_N),   w = 1/(2c)
    x̄_{N−1} = r x̄_N + (1 − r)((1 − w) x̂0_N + w x̂0*),   ε_eff = (x̄_{N−1} − x̂0*)/σ̄_{N−1}

so row N−1 receives the x̂0 it asks for (at σ̄_m = σ̄_{N−1}: c = 1, the trapezoid above).
Still two calls; N = 2 (row N−1 is row 1) and levels that round to t_{N−1} or do not lie
below σ̄_N fall back to the plain step.

The ε-bias variant (startup="lookahead-log", docs/math.md §20) keeps the look-ahead node and
changes only the weights: exact for x̂0 = a + b σ̄ instead of a line in τ′. A trained
network whose ε is off by a smooth δ at the top of the grid has x̂0 off by −σ̄ δ, which the
line rule extrapolates from x̂0_N, its worst read; with ∫σ̄ dτ′ = ln(σ̄_N/σ̄_{N−1})

    w = (σ̄_N − ln(σ̄_N/σ̄_{N−1})/(τ′_{N−1} − τ′_N)) / (σ̄_N − σ̄_m)

(at DDPM-linear NFE 5, 0.27 of the weight on x̂0_N at the look-ahead's node, against the
line rule's 0.65 there and the trapezoid's ½). Where the look-ahead falls back, the node is
σ̄_{N−1} with the same rule.

The shifted-corrector variant (startup="pc-shift", methods with an evaluation shift) keeps the
plain step's predictor, node and weights and changes only how the corrector reads the model:
as the method's own row N−1 reads its state x_{N−1} (`EvaluationShift`, docs/math.md §13,
§18), i.e. x̂0 of the fixed predictor state x̃̄ at the row's shifted level σ̄*:

    ε̃ = w_{N−1} ε(κ_{N−1} x̃, t*_{N−1}),   x̂0~ = x̃̄ − σ̄_{N−1} ε̃ = x̃̄ − σ̄* ε(α* x̃̄, t*_{N−1})

and the trapezoid and ε_eff above with this x̂0~. Row N−1 thus receives the x̂0 it would
read from x̃ itself. Where row N−1 has no shift it is the plain step, bit for bit.

The moved-read variant (startup="pc-shift-moved", docs/math.md §22) is "pc-shift" whose reused
read follows the state. Row N−1 receives x̂0~, read at the predictor x̃, as if it were read at
the corrected x_{N−1}; at 5 steps on scaled-linear that substitution costs more than the
state's own error. For data N(μ, v I), x̂0 read at a state x̄ and level ς is
μ + J(x̄ − μ) with J = v/(v + ς²), i.e.

    x̂0 − μ = v d,   d = (x̄ − x̂0)/ς²,

so the two reads the step already has (x̂0_N at x̄_N and σ̄_N; x̂0~ at x̃̄ and the level σ̄* it
was read at) give v per sample by least squares, and the read moves to the corrected state:

    v = max(0, ⟨x̂0~ − x̂0_N, d~ − d_N⟩ / ⟨d~ − d_N, d~ − d_N⟩)   (Σ over each sample's entries)
    x̂0* = x̂0~ + v/(v + σ̄*²) · (x̄_{N−1} − x̃̄),   ε_eff = (x̄_{N−1} − x̂0*)/σ̄_{N−1}

x_{N−1} itself is "pc-shift"'s; only the read row N−1 receives moves. On Gaussian data it is
the read at x_{N−1} exactly; elsewhere v is the variance of the isotropic Gaussian that fits
the two reads. Same two calls; each sample of a batch (first axis) gets its own v.

The code runs in the grid's coordinates (y = x/s, τ; docs/math.md §11), where the data
prediction is x̂0 = y − τ f in every system: bar coordinates (s = α, τ = σ̄, f = ε) give
the formulas above, a flow's (s = 1, τ = σ, f = v) the same step with x̂0 = x − σ v and
r = σ_{N−1}/σ_N, regular at σ_N = 1 (docs/math.md §14).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .. import arrays, recurrence
from .base import Carry, Evaluate, MultistepPlan
from .shift import model_times

__all__ = ["pc_start", "lookahead_start", "lookahead_log_start", "shifted_pc_start", "moved_pc_start", "line_weight",
           "bias_weight", "gaussian_gain"]


@dataclass(frozen=True)
class _Node:
    """The corrector's node: model time t_m, scale s_m and grid coordinate τ_m (= σ̄_m)."""

    time: Any
    scale: float
    tau: float


def pc_start(plan: MultistepPlan, carry: Carry, evaluate: Evaluate) -> Carry:
    """x_N → x_{N−1} by the predictor–corrector step, with ε_eff cached at x_{N−1}."""
    return _corrected_start(plan, carry, evaluate, node=None)


def shifted_pc_start(plan: MultistepPlan, carry: Carry, evaluate: Evaluate) -> Carry:
    """x_N → x_{N−1} by the predictor–corrector step whose corrector reads the predictor as
    the method's row N−1 reads x_{N−1} (its evaluation shift; module docstring)."""
    if plan.shift is None:
        raise ValueError("the shifted-corrector start needs a method with an evaluation shift (e.g. 'dpl-ob-traj')")
    return _corrected_start(plan, carry, evaluate, node=None, shifted=True)


def moved_pc_start(plan: MultistepPlan, carry: Carry, evaluate: Evaluate) -> Carry:
    """"pc-shift" whose reused read is moved from the predictor to the corrected x_{N−1} with the
    per-sample Gaussian gain (module docstring), ε_eff cached at x_{N−1}."""
    if plan.shift is None:
        raise ValueError("the moved-read start needs a method with an evaluation shift (e.g. 'dpl-ob-traj')")
    return _corrected_start(plan, carry, evaluate, node=None, shifted=True, moved=True)


def gaussian_gain(x0_a: Any, d_a: Any, x0_b: Any, d_b: Any, level_b: float) -> Any:
    """J_b = v/(v + level_b²), v ≥ 0 the least-squares variance of N(μ, v I) data that explains two
    reads x̂0 − μ = v d, d = (x̄ − x̂0)/ς² (per sample along the first axis; 0 where d_a = d_b)."""
    dx = x0_b - x0_a
    dd = d_b - d_a
    v = arrays.nonnegative_ratio(arrays.sample_sum(dx * dd), arrays.sample_sum(dd * dd))
    return v / (v + level_b**2)


def lookahead_start(plan: MultistepPlan, carry: Carry, evaluate: Evaluate) -> Carry:
    """x_N → x_{N−1} by the predictor–corrector step whose corrector node is the level
    σ̄_m at which the shifted row N−1 wants x̂0 (module docstring), ε_eff cached at x_{N−1}."""
    return _corrected_start(plan, carry, evaluate, node=lookahead_node(plan, carry.index))


def lookahead_log_start(plan: MultistepPlan, carry: Carry, evaluate: Evaluate) -> Carry:
    """The look-ahead step with the corrector's weight exact for x̂0 = a + b σ̄ (a constant
    error in ε; module docstring), ε_eff cached at x_{N−1}."""
    return _corrected_start(plan, carry, evaluate, node=lookahead_node(plan, carry.index), weight=bias_weight)


def line_weight(tau_N: float, tau_M: float, tau_m: float) -> float:
    """The node's weight w in ∫ over [τ′_N, τ′_{N−1}] ≈ Δτ′((1 − w) x̂0_N + w x̂0_m), exact on
    x̂0 linear in τ′ = 1/τ (the trapezoid, w = ½, at τ_m = τ_{N−1})."""
    return 0.5 * (1.0 / tau_M - 1.0 / tau_N) / (1.0 / tau_m - 1.0 / tau_N)


def bias_weight(tau_N: float, tau_M: float, tau_m: float) -> float:
    """The node's weight exact on x̂0 = a + b τ (τ = σ̄: a constant error in ε):
    w = (τ_N − ln(τ_N/τ_{N−1})/Δτ′)/(τ_N − τ_m), Δτ′ = 1/τ_{N−1} − 1/τ_N."""
    return (tau_N - np.log(tau_N / tau_M) / (1.0 / tau_M - 1.0 / tau_N)) / (tau_N - tau_m)


def lookahead_node(plan: MultistepPlan, N: int) -> _Node | None:
    """Row N−1's trajectory level as a model time, or None where the plain step applies."""
    g = plan.grid
    if plan.shift is None:
        raise ValueError("the look-ahead start needs a method with an evaluation shift (e.g. 'dpl-ob-shift')")
    if N < 3:
        return None
    schedule = g.schedule
    t_m = float(model_times(schedule, np.array([plan.shift.level[N - 1]]))[0])
    sigma_bar_m = float(schedule.sigma_bar(t_m))
    if t_m == float(g.timesteps[g.N - (N - 1)]) or not sigma_bar_m < float(g.sigma_bar[N]):
        return None
    return _Node(time=schedule.model_time(t_m), scale=float(schedule.alpha(t_m)), tau=sigma_bar_m)


def _corrected_start(plan: MultistepPlan, carry: Carry, evaluate: Evaluate, node: _Node | None,
                     shifted: bool = False, weight: Callable[[float, float, float], float] = line_weight,
                     moved: bool = False) -> Carry:
    g = plan.grid
    N = carry.index
    if len(carry.xs) != 1 or N < 2:
        raise ValueError(f"the predictor–corrector start needs a lone state at grid index ≥ 2, got index {N}")
    x = carry.xs[0]
    # the grid's coordinates y = x/s, τ (s = α, τ = σ̄ for ε; s = 1, τ = σ for a flow's v)
    s_N, s_M = float(g.scale[N]), float(g.scale[N - 1])
    tau_N, tau_M = float(g.tau[N]), float(g.tau[N - 1])
    tau_m = tau_M if node is None else node.tau
    eps_N = evaluate.own(evaluate(x, N))
    # DDIM predictor to τ_m, kept at x_{N−1}'s scale: x̃ = s_{N−1}(x_N/s_N − (τ_N − τ_m) f_N)
    x_pred = recurrence.ddim_move(x, eps_N, s_N, tau_N, s_M, tau_m)
    if node is None:
        eps_pred = plan.shift.evaluate(evaluate, x_pred, N - 1) if shifted else evaluate(x_pred, N - 1)
    else:
        eps_pred = evaluate(x_pred, N - 1, t=node.time, scale=node.scale / s_M)
    # the quadrature on [τ′_N, τ′_{N−1}] (τ′ = 1/τ) with nodes τ′_N and τ′_m
    w = weight(tau_N, tau_M, tau_m)
    r = tau_M / tau_N
    # y_{N−1} = r y_N + (1 − r)((1 − w)(y_N − τ_N f_N) + w (ỹ − τ_m f̃))
    y = recurrence.linear_combination(
        [(r + (1 - w) * (1 - r)) / s_N, -(1 - w) * (1 - r) * tau_N, w * (1 - r) / s_M, -w * (1 - r) * tau_m],
        [x, eps_N, x_pred, eps_pred],
    )
    # f_eff = (y_{N−1} − x̂0*)/τ_{N−1},  x̂0* = x̃/s_{N−1} − τ_m f̃
    eps_eff = recurrence.linear_combination([1.0 / tau_M, -1.0 / (s_M * tau_M), tau_m / tau_M], [y, x_pred, eps_pred])
    if moved:  # x̂0* = x̂0~ + J (y_{N−1} − ỹ): f_eff − J (y_{N−1} − ỹ)/τ_{N−1}
        level = float(plan.shift.weight[N - 1]) * tau_M  # σ̄* at which x̂0~ was read (σ̄_{N−1} unshifted)
        x0_N = recurrence.linear_combination([1.0 / s_N, -tau_N], [x, eps_N])
        x0_m = recurrence.linear_combination([1.0 / s_M, -tau_m], [x_pred, eps_pred])  # the x̂0~ f_eff used
        gain = gaussian_gain(x0_N, eps_N / tau_N, x0_m, (tau_m / level**2) * eps_pred, level)
        eps_eff = eps_eff - (gain / tau_M) * recurrence.linear_combination([1.0, -1.0 / s_M], [y, x_pred])
    return Carry(index=N - 1, xs=(s_M * y, x), eps=(eps_eff, None))
