"""The shifted-corrector start-up (startup="pc-shift", belm_core.methods.pc_start, docs/math.md §18)
and `recommended`'s choice of it.

Oracles: the model's calls (count, time, the state it sees) against the formulas; x_{N−1}
against the trapezoid written out by hand; the error against the high-accuracy ODE
solution on separated mixtures, compared with the plain start in the same run. Torch states,
the refusals, inversion and the fall-back to the plain step are tested with the look-ahead
start's (tests/test_lookahead.py).
"""

import numpy as np
import pytest

from belm_core import DiscreteVP, Solver, recommended
from belm_core.recommend import TRUSTED_TOP
from helpers import AnalyticEps, Count, Spy, held_out_mixture, separated_error_ratios


def solver(sch, N, startup="pc-shift", method="dpl-ob-traj"):
    return Solver(sch, steps=N, method=method, spacing="trailing", startup=startup)


def state_after_first_step(s, eps, x_T):
    seen = {}
    s.sample(eps, x_T, callback=lambda info: seen.__setitem__(info["step"], info["x"]))
    return seen[1]


@pytest.mark.parametrize("N", [3, 5, 12])
def test_the_corrector_reads_the_predictor_as_row_n_minus_1_reads_its_state(N):
    sch = DiscreteVP.scaled_linear()
    data = held_out_mixture((4,), seed=3)
    spy = Spy(AnalyticEps(data, sch))
    s = solver(sch, N)
    x_T = np.random.default_rng(N).normal(size=(8, 4))
    x_1 = state_after_first_step(s, spy, x_T)
    assert len(spy.calls) == N
    g, shift = s.grid, s._plan.shift
    t_star = shift.time[N - 1]
    assert t_star is not None and t_star != g.timesteps[1]  # the row is shifted on this grid
    (_, t_N), (x_seen, t_seen) = spy.calls[:2]
    assert t_N == 999 and t_seen == t_star
    a_s, sb_s = float(sch.alpha(t_star)), float(sch.sigma_bar(t_star))
    # the DDIM predictor x̃̄ = x̂0_N + σ̄_{N−1} ε_N, seen by the model at (α* x̃̄, t*)
    eps_N = spy.f(x_T, 999)
    x0_N = x_T / g.alpha[N] - g.sigma_bar[N] * eps_N
    x_pred = x0_N + g.sigma_bar[N - 1] * eps_N
    np.testing.assert_allclose(x_seen, a_s * x_pred, rtol=1e-12, atol=1e-12)
    # x̂0~ = x̃̄ − σ̄* ε(α* x̃̄, t*); x̄_{N−1} = r x̄_N + (1 − r)(x̂0_N + x̂0~)/2
    x0_pred = x_pred - sb_s * spy.f(a_s * x_pred, t_star)
    r = g.sigma_bar[N - 1] / g.sigma_bar[N]
    want = g.alpha[N - 1] * (r * x_T / g.alpha[N] + (1 - r) * (x0_N + x0_pred) / 2)
    np.testing.assert_allclose(x_1, want, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("N", [4, 5])
def test_separated_mixtures_end_closer_to_the_ode_solution(N):
    # default_problem-shaped mixtures (5 components ≥ 5 standard deviations apart), the
    # scaled-linear schedule: the shifted corrector is closer on 3 or 4 of these 4, 0.83× in the mean
    ratios = separated_error_ratios(DiscreteVP.scaled_linear(), N, solver, "pc-shift", "pc", range(4), 40)
    assert sum(r < 1 for r in ratios) >= 3 and float(np.exp(np.mean(np.log(ratios)))) < 0.9, ratios


def test_recommended_uses_it_only_where_the_top_of_the_schedule_is_trusted():
    assert recommended(DiscreteVP.scaled_linear(), 5)["startup"] == "pc-shift-moved"  # σ̄(999) = 14.6
    assert recommended(DiscreteVP.linear(), 5)["startup"] == "lookahead-log"  # 157 (tests/test_bias_start.py)
    assert recommended(DiscreteVP.cosine(), 5)["startup"] == "pc"  # 2·10⁴
    # the bound itself: a scaled-linear schedule whose last ᾱ puts σ̄(T − 1) just inside / outside it
    for top, want in ((0.99 * TRUSTED_TOP, "pc-shift-moved"), (1.01 * TRUSTED_TOP, "lookahead-log")):
        abar = DiscreteVP.scaled_linear().alphas_cumprod.copy()
        abar[-1] = 1 / (1 + top**2)  # σ̄² = (1 − ᾱ)/ᾱ
        sch = DiscreteVP(abar)
        assert float(sch.sigma_bar(999)) == pytest.approx(top)
        rec = recommended(sch, 6)
        assert rec["startup"] == want
        s = Solver(sch, steps=6, **rec)
        f = Count(AnalyticEps(held_out_mixture((3,), seed=1), sch))
        assert np.all(np.isfinite(s.sample(f, np.ones((2, 3))))) and f.n == 6
