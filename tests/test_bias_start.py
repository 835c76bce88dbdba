"""The ε-bias look-ahead start-up (startup="lookahead-log", belm_core.methods.pc_start,
docs/math.md §20): the look-ahead node with weights exact for x̂0 = a + b σ̄.

Oracles: a closed-form trajectory whose ε is off by a constant (x̂0 = a − c σ̄, the shape a
trained network's x̂0 has at the top of a DDPM grid), where the start is exact and the
line-weighted starts are not; the weight formulas against their defining moments; the
model's calls; inversion and Latents unchanged; `recommended`'s choice by σ̄(T − 1).
"""

import numpy as np
import pytest

from belm_core import DiscreteVP, LinearVP, Solver, recommended
from belm_core.methods.pc_start import bias_weight, line_weight
from belm_core.recommend import BIAS_TOP, TRUSTED_TOP
from helpers import AnalyticEps, Count, Spy, held_out_mixture


def solver(sch, N, startup="lookahead-log"):
    spacing = "trailing" if sch.discrete else "linspace"
    return Solver(sch, steps=N, method="dpl-ob-traj", spacing=spacing, startup=startup)


def first_state(s, eps, x_T):
    seen = {}
    s.sample(eps, x_T, callback=lambda info: seen.__setitem__(info["step"], info["x"]))
    return seen[1]


def biased(sch, a, c):
    """ε whose data prediction is x̂0 = a − c σ̄ at every state: ε = (x̄ − a)/σ̄ + c."""
    def eps(x, t):
        alpha, sb = float(sch.alpha(t)), float(sch.sigma_bar(t))
        return (x / alpha - a) / sb + c
    return eps


@pytest.mark.parametrize("sch", [DiscreteVP.linear(), DiscreteVP.scaled_linear(), LinearVP()],
                         ids=["linear", "scaled-linear", "continuous"])
@pytest.mark.parametrize("N", [2, 3, 5, 12])
def test_the_start_is_exact_for_a_constant_error_in_eps(sch, N):
    # y = x̄/σ̄ solves dy/dτ′ = a − c/τ′ (τ′ = 1/σ̄): y_{N−1} = y_N + a Δτ′ − c ln(τ′_{N−1}/τ′_N)
    a, c = np.array([0.3, -1.2, 2.0]), np.array([0.02, -0.03, 0.05])
    eps = biased(sch, a, c)
    x_T = np.random.default_rng(N).normal(size=(5, 3))
    errors = {}
    for startup in ("lookahead-log", "lookahead", "pc"):
        s = solver(sch, N, startup)
        g = s.grid
        tau_N, tau_M = 1 / g.sigma_bar[N], 1 / g.sigma_bar[N - 1]
        y = x_T / g.alpha[N] / g.sigma_bar[N] + a * (tau_M - tau_N) - c * np.log(tau_M / tau_N)
        exact = y * g.sigma_bar[N - 1] * g.alpha[N - 1]
        errors[startup] = np.abs(first_state(s, eps, x_T) - exact).max() / np.abs(exact).max()
    assert errors["lookahead-log"] < 1e-11, errors
    assert errors["lookahead"] > 1e-4 and errors["pc"] > 1e-4, errors


def test_the_weights_meet_their_moments():
    rng = np.random.default_rng(0)
    for _ in range(50):
        tau_N, tau_M = np.sort(rng.uniform(0.1, 200.0, 2))[::-1]
        tau_m = rng.uniform(0.5, 1.5) * tau_M
        D = 1 / tau_M - 1 / tau_N
        # ∫ over [τ′_N, τ′_{N−1}] of 1 and of f ≈ D((1 − w) f(τ′_N) + w f(τ′_m))
        w = line_weight(tau_N, tau_M, tau_m)  # f = τ′
        assert D * ((1 - w) / tau_N + w / tau_m) == pytest.approx((1 / tau_M**2 - 1 / tau_N**2) / 2, rel=1e-10)
        w = bias_weight(tau_N, tau_M, tau_m)  # f = 1/τ′ = σ̄
        assert D * ((1 - w) * tau_N + w * tau_m) == pytest.approx(np.log(tau_N / tau_M), rel=1e-10)
    assert line_weight(3.0, 2.0, 2.0) == 0.5  # the trapezoid at the grid's node
    # DDPM-linear NFE 5 (σ̄ 157 → 25.5): a quarter of the weight on the top read instead of half
    g = Solver(DiscreteVP.linear(), steps=5, spacing="trailing").grid
    assert 0.2 < 1 - bias_weight(g.sigma_bar[5], g.sigma_bar[4], g.sigma_bar[4]) < 0.3


def test_two_calls_at_the_look_ahead_node_then_the_method():
    sch = DiscreteVP.linear()
    spy = Spy(AnalyticEps(held_out_mixture((4,), seed=3), sch))
    x_T = np.random.default_rng(0).normal(size=(8, 4))
    s, la = solver(sch, 6), solver(sch, 6, "lookahead")
    s.sample(spy, x_T)
    la_spy = Spy(AnalyticEps(held_out_mixture((4,), seed=3), sch))
    la.sample(la_spy, x_T)
    assert len(spy.calls) == 6
    # the same node and the same predictor as the line-weighted look-ahead; only the weights differ
    for (x1, t1), (x2, t2) in zip(spy.calls[:2], la_spy.calls[:2]):
        assert t1 == t2
        np.testing.assert_array_equal(x1, x2)
    assert spy.calls[1][1] not in s.grid.timesteps
    assert not np.array_equal(spy.calls[2][0], la_spy.calls[2][0])


def test_inversion_and_latents_are_untouched():
    sch = DiscreteVP.linear()
    data = held_out_mixture((4,), seed=6)
    eps = AnalyticEps(data, sch)
    s, pc = solver(sch, 12), solver(sch, 12, "pc")
    x0 = data.sample(6, seed=1)
    lat, lat_pc = s.invert(eps, x0), pc.invert(eps, x0)
    for u, v in zip(lat.states, lat_pc.states):
        np.testing.assert_array_equal(u, v)
    assert np.mean((s.sample(eps, lat) - x0) ** 2) <= 1e-20


@pytest.mark.parametrize("N", [5, 8])
def test_only_x_n_minus_1_moves_row_n_minus_1_lands_where_the_look_ahead_does(N):
    # a DPL row N−1 reads x̂0 through ε_eff and steps from x_N: x_{N−2} is the look-ahead's, x_{N−1} is not
    sch = DiscreteVP.linear()
    eps = AnalyticEps(held_out_mixture((4,), seed=2), sch)
    x_T = np.random.default_rng(2).normal(size=(64, 4))
    runs = {}
    for startup in ("lookahead", "lookahead-log"):
        seen = {}
        solver(sch, N, startup).sample(eps, x_T, callback=lambda info: seen.__setitem__(info["step"], info["x"]))
        runs[startup] = seen
    scale = np.abs(runs["lookahead"][2]).max()
    np.testing.assert_allclose(runs["lookahead-log"][2], runs["lookahead"][2], rtol=0, atol=1e-12 * scale)
    assert np.abs(runs["lookahead-log"][1] - runs["lookahead"][1]).max() > 1e-5 * np.abs(runs["lookahead"][1]).max()


def test_recommended_picks_the_start_by_the_top_of_the_schedule():
    assert recommended(DiscreteVP.scaled_linear(), 5)["startup"] == "pc-shift-moved"  # σ̄(999) = 14.6
    assert recommended(DiscreteVP.linear(), 5)["startup"] == "lookahead-log"  # 157
    assert recommended(DiscreteVP.cosine(), 5)["startup"] == "pc"  # 2·10⁴
    # schedules whose last ᾱ puts σ̄(T − 1) just inside / outside the bounds
    for base, top, want in (("scaled_linear", 1.01 * TRUSTED_TOP, "lookahead-log"), ("linear", 0.99 * BIAS_TOP, "lookahead-log"),
                            ("linear", 1.01 * BIAS_TOP, "pc")):
        abar = getattr(DiscreteVP, base)().alphas_cumprod.copy()
        abar[-1] = 1 / (1 + top**2)  # σ̄² = (1 − ᾱ)/ᾱ
        sch = DiscreteVP(abar)
        assert float(sch.sigma_bar(999)) == pytest.approx(top)
        rec = recommended(sch, 6)
        assert rec["startup"] == want
        f = Count(AnalyticEps(held_out_mixture((3,), seed=1), sch))
        assert np.all(np.isfinite(Solver(sch, steps=6, **rec).sample(f, np.ones((2, 3))))) and f.n == 6
