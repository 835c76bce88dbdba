"""The look-ahead start-up (belm_core.methods.pc_start, startup="lookahead", docs/math.md §13),
and what it shares with the shifted-corrector start (startup="pc-shift", tests/test_shifted_start.py).

Oracles: the model's calls (count, times, the state it sees) against the formulas; the
quadrature is exact when x̂0 is linear in τ = 1/σ̄ (a closed-form trajectory); the error
after the first shifted row against the high-accuracy ODE solution, compared with the
plain predictor–corrector start in the same run; inversion and Latents unchanged.
"""

import numpy as np
import pytest
import torch

from belm_core import DiscreteVP, FlowMatch, LinearVP, PFamily, Solver
from belm_core.methods.shift import model_times
from helpers import AnalyticEps, Count, Spy, held_out_mixture


def solver(sch, N, startup="lookahead", method="dpl-ob-shift"):
    spacing = "trailing" if sch.discrete else "linspace"
    return Solver(sch, steps=N, method=method, spacing=spacing, startup=startup)


def first_states(s, eps, x_T):
    """{step: x after that step} of one sampling run."""
    seen = {}
    s.sample(eps, x_T, callback=lambda info: seen.__setitem__(info["step"], info["x"]))
    return seen


def test_the_corrector_is_evaluated_once_where_row_n_minus_1_reads_x0():
    sch = DiscreteVP.scaled_linear()
    data = held_out_mixture((4,), seed=3)
    spy = Spy(AnalyticEps(data, sch))
    s = solver(sch, 10)
    x_T = np.random.default_rng(0).normal(size=(8, 4))
    s.sample(spy, x_T)
    assert len(spy.calls) == 10
    g, N = s.grid, s.grid.N
    level = s._plan.shift.level[N - 1]
    assert g.sigma_bar[N - 2] <= level < g.sigma_bar[N - 1]  # below row N−1's own level, not past row N−2's
    t_m = float(model_times(sch, np.array([level]))[0])
    (x_N, t_N), (x_seen, t_seen) = spy.calls[:2]
    assert t_N == 999 and t_seen == t_m and t_m not in g.timesteps
    # the model sees α_m (x̂0_N + σ̄_m ε_N): DDIM from x_N to σ̄_m
    eps_N = spy.f(x_T, 999)
    x0_N = x_T / g.alpha[N] - g.sigma_bar[N] * eps_N
    want = float(sch.alpha(t_m)) * (x0_N + float(sch.sigma_bar(t_m)) * eps_N)
    np.testing.assert_allclose(x_seen, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sch", [DiscreteVP.linear(), LinearVP()], ids=["discrete", "continuous"])
@pytest.mark.parametrize("N", [3, 6, 12])
def test_the_start_is_exact_when_x0_is_linear_in_tau(sch, N):
    # x̂0(σ̄) = a + b/σ̄ whatever the state: y = x̄/σ̄ solves dy/dτ = a + bτ, τ = 1/σ̄, in closed form
    a, b = np.array([0.3, -1.2, 2.0]), np.array([-0.7, 0.4, 0.05])

    def eps(x, t):
        alpha, sb = float(sch.alpha(t)), float(sch.sigma_bar(t))
        return (x / alpha - (a + b / sb)) / sb

    x_T = np.random.default_rng(N).normal(size=(5, 3))
    for startup in ("pc", "lookahead"):
        s = solver(sch, N, startup)
        g = s.grid
        tau_N, tau_M = 1 / g.sigma_bar[N], 1 / g.sigma_bar[N - 1]
        y = x_T / g.alpha[N] / g.sigma_bar[N] + a * (tau_M - tau_N) + b * (tau_M**2 - tau_N**2) / 2
        exact = y * g.sigma_bar[N - 1] * g.alpha[N - 1]
        np.testing.assert_allclose(first_states(s, eps, x_T)[1], exact, rtol=1e-11, atol=1e-11 * np.abs(exact).max())


@pytest.mark.parametrize("kind", ["scaled_linear", "linear"])
@pytest.mark.parametrize("N", [5, 8])
def test_the_first_shifted_row_lands_closer_to_the_ode_solution(kind, N):
    # after row N−1 (state x_{N−2}) the look-ahead error is 0.53–0.72× the plain start's on these mixtures
    sch = getattr(DiscreteVP, kind)()
    for seed in range(3):
        data = held_out_mixture((4,), seed=seed)
        eps = AnalyticEps(data, sch)
        x_T = np.random.default_rng(seed).normal(size=(256, 4))
        err = {}
        for startup in ("pc", "lookahead"):
            s = solver(sch, N, startup)
            g = s.grid
            ref = data.flow(x_T / g.alpha[N], g.sigma_bar[N], g.sigma_bar[N - 2]) * g.alpha[N - 2]
            err[startup] = np.sqrt(np.mean((first_states(s, eps, x_T)[2] - ref) ** 2))
        assert err["lookahead"] < 0.8 * err["pc"], (seed, err)


@pytest.mark.parametrize("startup", ["lookahead", "pc-shift"])
def test_inversion_and_latents_are_untouched_and_unshifted_rows_fall_back(startup):
    sch = DiscreteVP.linear()
    data = held_out_mixture((4,), seed=6)
    eps = AnalyticEps(data, sch)
    la, pc = solver(sch, 12, startup), solver(sch, 12, "pc")
    x0 = data.sample(6, seed=1)
    lat_la, lat_pc = la.invert(eps, x0), pc.invert(eps, x0)
    assert lat_la.method == lat_pc.method == "dpl-ob-shift"
    for u, v in zip(lat_la.states, lat_pc.states):
        np.testing.assert_array_equal(u, v)
    rec = la.sample(eps, lat_la)
    np.testing.assert_array_equal(rec, pc.sample(eps, lat_la))
    assert np.mean((rec - x0) ** 2) <= 1e-20
    x_T = np.random.default_rng(2).normal(size=(6, 4))
    assert not np.array_equal(la.sample(eps, x_T), pc.sample(eps, x_T))
    # a shift too small to move t_{N−1}: the plain step, bit for bit
    tiny = PFamily("dpl-ob", shift=1e-9)
    f = Count(eps)
    out = Solver(sch, steps=12, method=tiny, spacing="trailing", startup=startup).sample(f, x_T)
    assert f.n == 12
    np.testing.assert_array_equal(out, Solver(sch, steps=12, method=tiny, spacing="trailing", startup="pc").sample(eps, x_T))


def test_lookahead_on_two_steps_is_the_plain_step():
    # N = 2: row N−1 is row 1, and the look-ahead has no level to go to
    sch = DiscreteVP.linear()
    eps = AnalyticEps(held_out_mixture((4,), seed=6), sch)
    x_T = np.random.default_rng(2).normal(size=(6, 4))
    np.testing.assert_array_equal(solver(sch, 2).sample(eps, x_T), solver(sch, 2, "pc").sample(eps, x_T))


@pytest.mark.parametrize("startup", ["lookahead", "pc-shift"])
def test_torch_states_give_the_numpy_result(startup):
    sch = DiscreteVP.scaled_linear()
    data = held_out_mixture((4,), seed=2)
    eps = AnalyticEps(data, sch)
    x_T = np.random.default_rng(4).normal(size=(6, 4))
    s = solver(sch, 7, startup)
    out = s.sample(lambda x, t: torch.from_numpy(eps(x.numpy(), t)), torch.from_numpy(x_T))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), s.sample(eps, x_T), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("startup", ["lookahead", "pc-shift"])
def test_the_shifted_startups_need_a_method_with_an_evaluation_shift(startup):
    sch = DiscreteVP.linear()
    for method in ("o-belm", "dpl-ob", PFamily("dpl", shift=0.0)):
        with pytest.raises(ValueError, match=f"startup='{startup}'.*no evaluation shift"):
            Solver(sch, steps=8, method=method, startup=startup)
    with pytest.raises(ValueError, match=f"startup='{startup}' needs a linear multistep"):
        Solver(sch, steps=8, method="ddim", startup=startup)
    with pytest.raises(ValueError, match="prediction='velocity'"):
        Solver(FlowMatch(shift=3.0), steps=8, method="dpl-ob-traj", startup=startup)


def test_startup_names_are_checked():
    sch = DiscreteVP.linear()
    with pytest.raises(ValueError, match=r"startup='rk' must be one of \['ddim', 'lookahead', 'lookahead-log', 'pc', 'pc-shift', 'pc-shift-moved'\]"):
        Solver(sch, steps=8, startup="rk")
    with pytest.raises(ValueError, match="must be one of"):
        Solver(sch, steps=8, startup=["pc"])
