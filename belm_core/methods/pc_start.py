"""The predictor–corrector start-up: the first step from a lone x_N (docs/math.md §12).

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

The code runs in the grid's coordinates (y = x/s, τ; docs/math.md §11), where the data
prediction is x̂0 = y − τ f in every system: bar coordinates (s = α, τ = σ̄, f = ε) give
the formulas above, a flow's (s = 1, τ = σ, f = v) the same step with x̂0 = x − σ v and
r = σ_{N−1}/σ_N, regular at σ_N = 1 (docs/math.md §14).
"""

from __future__ import annotations

from .. import recurrence
from .base import Carry, Evaluate, MultistepPlan

__all__ = ["pc_start"]


def pc_start(plan: MultistepPlan, carry: Carry, evaluate: Evaluate) -> Carry:
    """x_N → x_{N−1} by the predictor–corrector step, with ε_eff cached at x_{N−1}."""
    g = plan.grid
    N = carry.index
    if len(carry.xs) != 1 or N < 2:
        raise ValueError(f"the predictor–corrector start needs a lone state at grid index ≥ 2, got index {N}")
    x = carry.xs[0]
    # the grid's coordinates y = x/s, τ (s = α, τ = σ̄ for ε; s = 1, τ = σ for a flow's v)
    s_N, s_M = float(g.scale[N]), float(g.scale[N - 1])
    tau_N, tau_M = float(g.tau[N]), float(g.tau[N - 1])
    eps_N = evaluate.own(evaluate(x, N))
    # DDIM predictor in x-space: x̃ = s_{N−1}(x_N/s_N − h_N f_N)
    x_pred = recurrence.linear_combination([s_M / s_N, -s_M * (tau_N - tau_M)], [x, eps_N])
    eps_pred = evaluate(x_pred, N - 1)
    r = tau_M / tau_N
    # y_{N−1} = r y_N + (1 − r)/2 · (y_N − τ_N f_N + ỹ − τ_{N−1} f̃)
    y = recurrence.linear_combination(
        [(r + 0.5 * (1 - r)) / s_N, -0.5 * (1 - r) * tau_N, 0.5 * (1 - r) / s_M, -0.5 * (1 - r) * tau_M],
        [x, eps_N, x_pred, eps_pred],
    )
    # f_eff = (y_{N−1} − x̂0~)/τ_{N−1},  x̂0~ = x̃/s_{N−1} − τ_{N−1} f̃
    eps_eff = recurrence.linear_combination([1.0 / tau_M, -1.0 / (s_M * tau_M), 1.0], [y, x_pred, eps_pred])
    return Carry(index=N - 1, xs=(s_M * y, x), eps=(eps_eff, None))
