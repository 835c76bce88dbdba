"""Reading x̂0 on the trajectory with a velocity register (belm_core.methods.trajectory, docs/math.md §16).

Oracles: exact round trips on random grids and partial latents; the model input rebuilt
independently from the sampled states and the register recurrence written out by hand;
the hand-derived reading level; the register actually carried in the Latent; convergence
of the inverted latent to the exact ODE inversion.
"""


import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from belm_core import DiscreteVP, FlowMatch, Latent, LinearVP, Solver, TrajectoryReading, make_grid, recommended
from belm_core.methods import get_method
from helpers import (AnalyticEps, Count, Spy, held_out_mixture, partial_round_trip, assert_exact_p_family_round_trip,
                     latent_distances)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), N=st.integers(2, 30), reach=st.floats(0.05, 1.0),
       max_ratio=st.floats(1.5, 50.0), discrete=st.booleans(), until_frac=st.floats(0.0, 1.0))
def test_round_trips_exactly_on_random_grids_and_partial_latents(seed, N, reach, max_ratio, discrete, until_frac):
    solver, latent, rec, x0, until = partial_round_trip(TrajectoryReading(reach, max_ratio), seed, N, discrete, until_frac)
    assert len(latent.states) == 3 and latent.index == until
    assert_exact_p_family_round_trip(solver, latent, rec, x0, N)


def test_reading_rows_and_their_level_are_the_hand_derived_ones():
    sch = LinearVP()
    grid = make_grid(sch, sch.timesteps(40))
    m = TrajectoryReading()
    rows = m.reading_rows(grid)
    sb, N = grid.sigma_bar, grid.N
    expected = [i for i in range(2, N) if sb[i] > m.s and sb[i + 1] / sb[i - 1] < 6.0]
    assert sorted(rows) == expected and expected  # some rows read, the clean end (σ̄ ≤ 0.3) does not
    assert all(sb[i] <= 0.3 for i in range(2, N) if i not in rows)
    for i in expected:
        t_m, kappa, sb_m = rows[i]
        mid = 2.0 / (1.0 / sb[i - 1] + 1.0 / sb[i + 1])  # σ̄ at the τ-midpoint, τ = 1/σ̄
        assert sb_m == pytest.approx(sb[i] + 0.75 * (mid - sb[i]), rel=1e-9)  # continuous: no rounding
        assert kappa == pytest.approx(float(sch.alpha(t_m)) / grid.alpha[i], rel=1e-12)
    coarse = TrajectoryReading(max_ratio=1.01).reading_rows(grid)
    assert coarse == {}


def test_the_model_sees_the_state_moved_along_the_register_velocity():
    sch = DiscreteVP.scaled_linear()
    data = held_out_mixture((4,), seed=3)
    spy = Spy(AnalyticEps(data, sch))
    solver = Solver(sch, steps=12, **recommended(sch, 12))
    assert solver.method.signature() == "dpl-ob-curv(band=(1.0, 10.0), shift_last='after-dpl')"  # its rows read as dpl-ob-traj's do
    x_T = np.random.default_rng(0).normal(size=(8, 4))
    states = {}
    solver.sample(spy, x_T, callback=lambda info: states.update({info["index"]: info["x"]}))
    states[solver.grid.N] = x_T
    assert len(spy.calls) == 12  # N model calls: row N−1 reuses the start-up's ε_eff
    g, reading = solver.grid, solver._plan.reading
    N, sb, h = g.N, g.sigma_bar, g.h
    bar = {i: states[i] / g.alpha[i] for i in states}
    E = {i: (bar[i] - bar[i - 1]) / h[i] for i in range(1, N + 1)}
    w = {N: 0.5 * E[N]}  # the register starts at E_N/2, then w_i = E_i − w_{i+1}
    for i in range(N - 1, 0, -1):
        w[i] = E[i] - w[i + 1]
    read = [i for i in range(2, N - 1) if i in reading]
    assert read  # rows N−2 … that read on the trajectory
    for i in read:
        t_m, _, sb_m = reading[i]
        seen = [x for x, t in spy.calls if t == t_m]
        assert len(seen) == 1
        moved = bar[i] + (sb_m - sb[i]) * 2.0 * w[i + 1]  # P̄_i = x̄_i + (σ̄_m − σ̄_i) ε̃, ε̃ = 2 w_{i+1}
        np.testing.assert_allclose(seen[0] / float(sch.alpha(t_m)), moved, rtol=1e-10, atol=1e-12)
        assert np.max(np.abs(moved - bar[i])) > 1e-3  # really moved off the fixed state


def test_the_latent_carries_the_register_and_sampling_reads_it(tmp_path):
    sch = DiscreteVP.linear()
    data = held_out_mixture((4,), seed=8)
    eps = AnalyticEps(data, sch)
    x0 = data.sample(16, seed=1)
    solver = Solver(sch, steps=20, **recommended(sch, 20))
    latent = solver.invert(eps, x0)
    assert len(latent.states) == 5 and all(s.shape == x0.shape for s in latent.states)  # x_N, x_{N−1}, w, U0, U1
    assert np.mean((solver.sample(eps, latent) - x0) ** 2) <= 1e-20
    path = tmp_path / "z.safetensors"
    latent.save(path)
    again = Latent.load(path)
    assert np.mean((solver.sample(eps, again) - x0) ** 2) <= 1e-20
    nudged = Latent(states=(*latent.states[:2], latent.states[2] + 0.1, *latent.states[3:]), index=latent.index, method=latent.method,
                    grid_key=latent.grid_key)
    assert np.mean((solver.sample(eps, nudged) - x0) ** 2) > 1e-8  # the register is part of the latent
    with pytest.raises(ValueError, match=r"latent.states has 2 array\(s\); dpl-ob-curv\(.*\) needs 5.*then its 3 register arrays"):
        solver.sample(eps, Latent(states=latent.states[:2], index=latent.index, method=latent.method,
                                  grid_key=latent.grid_key))


@pytest.mark.parametrize("kind", ["scaled_linear", "linear"])
def test_recommended_latent_converges_to_the_exact_ode_inversion(kind):
    sch = getattr(DiscreteVP, kind)()
    err = latent_distances(sch, lambda N: recommended(sch, N))
    assert err[50] < 0.7 * err[20]


def test_within_budget_and_refusals():
    sch = DiscreteVP.cosine()
    eps = Count(AnalyticEps(held_out_mixture((3,), seed=4), sch))
    for N in (2, 3, 7, 33):
        eps.n = 0
        Solver(sch, steps=N, **recommended(sch, N)).sample(eps, np.random.default_rng(N).normal(size=(2, 3)))
        assert eps.n == N
    assert get_method("dpl-ob-traj").signature() == "dpl-ob-traj"
    assert TrajectoryReading(reach=0.5).signature() == "dpl-ob-traj(reach=0.5)"
    for bad in (0.0, 1.5, float("nan"), "1"):
        with pytest.raises(ValueError, match="reach="):
            TrajectoryReading(reach=bad)
    for bad in (1.0, -2.0, float("inf")):
        with pytest.raises(ValueError, match="max_ratio="):
            TrajectoryReading(max_ratio=bad)
    with pytest.raises(ValueError, match="ε-prediction"):
        Solver(FlowMatch(shift=3.0), steps=8, method="dpl-ob-traj", prediction="velocity")


def test_recommended_reads_half_way_on_cosine_and_three_quarters_below_the_bound():
    """`recommended` keeps reach ¾ where σ̄(T − 1) ≤ REACH_TOP (scaled-linear, linear) and reads at
    WIDE_REACH = ½ of the way above it (cosine): the trajectory rows' model levels are the
    hand-computed damped levels, the sampler stays exact with N calls, and the schedules just
    inside / outside the bound get the one and the other."""
    from belm_core.recommend import REACH_TOP, WIDE_REACH
    from belm_core.methods.shift import model_times, trajectory_level

    assert WIDE_REACH == 0.5
    for sch, reach in ((DiscreteVP.scaled_linear(), 0.75), (DiscreteVP.linear(), 0.75), (DiscreteVP.cosine(), WIDE_REACH)):
        N = 20
        solver = Solver(sch, steps=N, **recommended(sch, N))
        assert solver.method.reach == reach
        plan = solver._plan
        level = trajectory_level(solver.grid, solver.method.p(solver.grid), reach)
        assert plan.reading, "N = 20 has trajectory rows on every schedule"
        for i, (t_m, _, sb_m) in plan.reading.items():
            assert float(t_m) == float(model_times(sch, np.array([level[i - 1]]))[0])
            assert sb_m == pytest.approx(float(sch.sigma_bar(t_m)), rel=1e-12)
        # the half-way reach reads strictly nearer σ̄_i than ¾ would on some row
        if reach == WIDE_REACH:
            three_quarters = TrajectoryReading().reading_rows(solver.grid)
            assert any(plan.reading[i][2] > three_quarters[i][2] for i in plan.reading)
    for base, top, want in (("linear", 0.99 * REACH_TOP, "dpl-ob-curv(band=(1.0, 10.0), shift_last='after-dpl')"), ("linear", 1.01 * REACH_TOP, "dpl-ob-curv(gain=0.75, reach=0.5, shift_last='after-dpl')")):
        abar = getattr(DiscreteVP, base)().alphas_cumprod.copy()
        abar[-1] = 1 / (1 + top**2)
        sch = DiscreteVP(abar)
        rec = recommended(sch, 7)
        assert get_method(rec["method"]).signature() == want
        data = held_out_mixture((3,), seed=2)
        f = Count(AnalyticEps(data, sch))
        solver = Solver(sch, steps=7, **rec)
        assert np.all(np.isfinite(solver.sample(f, np.ones((2, 3))))) and f.n == 7
        x0 = data.sample(4, seed=3)
        assert np.mean((solver.sample(AnalyticEps(data, sch), solver.invert(AnalyticEps(data, sch), x0)) - x0) ** 2) <= 1e-20


def test_recommended_scheduler_on_a_cosine_config_runs_the_half_way_reader():
    """BELMScheduler(method="recommended") on diffusers' "squaredcos_cap_v2" config samples with the
    cosine recommendation (half-way reach, curvature-corrected band rows), bit for bit the Solver's."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from backends.config import schedule_from_config
    from backends.schedulers import BELMScheduler

    sched = BELMScheduler(beta_schedule="squaredcos_cap_v2", method="recommended")
    schedule = schedule_from_config(sched.config)
    steps = 20
    sched.set_timesteps(steps)
    data = held_out_mixture((4,), seed=6)
    eps = AnalyticEps(data, schedule)

    def model(x, t):
        return torch.from_numpy(eps(x.numpy(), float(t)))

    x_T = torch.from_numpy(np.random.default_rng(1).normal(size=(3, 4)))
    x = x_T
    for t in sched.timesteps:
        x = sched.step(model(x, t), t, x).prev_sample
    solver = Solver(schedule, steps=steps, **recommended(schedule, steps))
    assert solver.method.signature() == "dpl-ob-curv(gain=0.75, reach=0.5, shift_last='after-dpl')" and solver._plan.weights  # rows corrected
    assert torch.equal(x, solver.sample(model, x_T))
