"""The evaluation shift of the p-family (belm_core.methods.shift, docs/math.md §13).

Oracles: exact round trips for every shift (ε̂_i depends on x_i alone), the hand-derived
τ-midpoint of DPL rows and the zero shift of O-BELM's last row, the model called at
(κ_i x_i, t*_i) with κ_i = α(t*_i)/α_i at training timesteps only, the empirical order,
and a smaller local error of one row started on the exact trajectory.
"""

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from belm_core import DiscreteVP, FlowMatch, Latent, LinearVP, PFamily, Solver, make_grid
from belm_core.methods import get_method
from belm_core.methods.shift import shifted_sigma_bar, trajectory_level
from helpers import AnalyticEps, Spy, held_out_mixture, random_schedule_grid, assert_exact_p_family_round_trip


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), N=st.integers(2, 30), shift=st.floats(0.0, 1.0),
       rule=st.sampled_from(["dpl-ob", "dpl", "o-belm"]), discrete=st.booleans(), last=st.booleans())
def test_every_shift_round_trips_exactly(seed, N, shift, rule, discrete, last):
    sch, t, data, eps, x0 = random_schedule_grid(seed, N, discrete)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        method = PFamily(rule, shift=shift, shift_last=last and shift > 0)  # moves row 1 where σ̄_1 > 0.3
        solver = Solver(sch, method=method, timesteps=t, allow_unstable=True, check_finite=False)
        latent = solver.invert(eps, x0)
        rec = solver.sample(eps, latent)
    assert_exact_p_family_round_trip(solver, latent, rec, x0, N)


def test_dpl_rows_read_x0_at_the_tau_midpoint_and_obelm_row_1_is_not_moved():
    sch = LinearVP()
    grid = make_grid(sch, sch.timesteps(12))
    p = PFamily("dpl").p(grid)
    sb, N = grid.sigma_bar, grid.N
    star = shifted_sigma_bar(grid, p, 1.0)  # rows 1 … N−1
    i = np.arange(2, N)
    m = 2.0 / (1.0 / sb[i - 1] + 1.0 / sb[i + 1])  # σ̄ at the τ-midpoint, τ = 1/σ̄ (hand-derived)
    np.testing.assert_allclose(star[1:], np.sqrt((m**2 + sb[i] ** 2) / 2), rtol=1e-12)
    assert star[0] == pytest.approx(sb[1], rel=1e-14)  # row 1 has O-BELM's p_1: the x̄-quadratic shape needs no shift
    half = shifted_sigma_bar(grid, p, 0.5)[1:]
    np.testing.assert_allclose(half, np.sqrt(((sb[i] + 0.5 * (m - sb[i])) ** 2 + sb[i] ** 2) / 2), rtol=1e-12)
    assert np.all((half < sb[i]) & (half > star[1:]))  # a lower level, half-way


def test_the_model_sees_the_same_bar_state_at_a_training_timestep():
    sch = DiscreteVP.scaled_linear()
    data = held_out_mixture((4,), seed=3)
    spy = Spy(AnalyticEps(data, sch))
    solver = Solver(sch, steps=10, method="dpl-ob-shift-last", spacing="trailing", startup="pc")
    x_T = np.random.default_rng(0).normal(size=(8, 4))
    states = []
    solver.sample(spy, x_T, callback=lambda info: states.append((info["index"], info["x"])))
    assert len(spy.calls) == 10
    grid, shift = solver.grid, solver._plan.shift
    # row N−1 reads the start-up's ε_eff; rows N−2 … 1 are moved (σ̄_1 = 0.34 > s: the last row too)
    assert grid.sigma_bar[1] > solver.method.s
    moved = [i for i in range(grid.N - 1) if shift.time[i] is not None]
    assert moved == list(range(1, grid.N - 1))
    by_index = dict(states)
    for x, t in spy.calls:
        assert isinstance(t, int) and 0 <= t <= 999  # the model only ever sees training timesteps
    for i in moved:
        t_star = shift.time[i]
        x_seen = [x for x, t in spy.calls if t == t_star]
        assert len(x_seen) == 1 and t_star not in grid.timesteps
        # κ_i x_i: the bar state x̄_i = x_i/α_i handed to the model at α(t*)
        np.testing.assert_allclose(x_seen[0] / float(sch.alpha(t_star)), by_index[i] / grid.alpha[i], rtol=1e-12)


def test_the_last_row_reads_x0_where_x0_linear_in_sigma_bar_wants_it_above_s():
    sch = DiscreteVP.linear()
    for N in (5, 8, 10):
        solver = Solver(sch, steps=N, method="dpl-ob-shift-last", spacing="trailing", startup="pc")
        g, p = solver.grid, solver.method.p(solver.grid)
        sb, h = g.sigma_bar, g.h
        m = trajectory_level(g, p, 1.0, last_linear=True)[0]
        # on the shape x̄ = φ(σ̄) = σ̄ ln σ̄ (x̂0 = −σ̄) the row with ε̂_1 = (φ(σ̄_1) − x̂0(σ̄_m))/σ̄_1 is exact
        phi = lambda s: s * np.log(s) if s > 0 else 0.0  # noqa: E731
        eps_row = (phi(sb[1]) + m) / sb[1]
        row = (1 - p[1]) * phi(sb[1]) + p[1] * phi(sb[2]) - (h[1] + p[1] * h[2]) * eps_row
        assert row == pytest.approx(phi(sb[0]), abs=1e-13)
        assert 0.5 * sb[1] < m < sb[1]  # x̂0 is read lower, as on the rows above
        # half-way damped and read at the fixed bar state, at a training timestep below t_1
        star = shifted_sigma_bar(g, p, 0.5, last_linear=True)[0]
        assert star == pytest.approx(np.sqrt(((sb[1] + 0.5 * (m - sb[1])) ** 2 + sb[1] ** 2) / 2), rel=1e-12)
        assert solver._plan.shift.time[1] == round(float(sch.t_from_sigma_bar(star)))
        assert solver._plan.shift.time[1] < g.timesteps[-1]
    # at σ̄_1 ≤ s the last row is an O-BELM row and reads ε at t_1, as "dpl-ob-shift" does
    fine = Solver(sch, steps=20, method="dpl-ob-shift-last", spacing="trailing")
    assert fine.grid.sigma_bar[1] <= fine.method.s and fine._plan.shift.time[1] is None
    plain = Solver(sch, steps=20, method="dpl-ob-shift", spacing="trailing")
    assert fine._plan.shift.time == plain._plan.shift.time
    np.testing.assert_array_equal(fine._plan.shift.weight, plain._plan.shift.weight)


@pytest.mark.parametrize("spacing", ["trailing", "trailing-tail"])
def test_after_dpl_shifts_the_last_row_whenever_the_row_above_is_a_dpl_row(spacing):
    """shift_last="after-dpl" moves row 1 exactly when σ̄_2 > s (the row above it is a DPL row),
    to the same σ̄-linear level as shift_last=True, which asks σ̄_1 > s instead; every other row
    and every p are the same, and it stays exact."""
    sch, data = DiscreteVP.linear(), held_out_mixture((3,), seed=4)
    eps = AnalyticEps(data, sch)
    x0 = data.sample(8, seed=2)
    seen = set()
    for N in (5, 12, 20, 21, 22, 30, 50):
        after = Solver(sch, steps=N, method=PFamily("dpl-ob", shift=0.5, shift_last="after-dpl"), spacing=spacing)
        above = Solver(sch, steps=N, method="dpl-ob-shift-last", spacing=spacing)
        sb, s = after.grid.sigma_bar, after.method.s
        np.testing.assert_array_equal(after.method.p(after.grid), above.method.p(above.grid))
        assert after._plan.shift.time[2:] == above._plan.shift.time[2:]
        assert (after._plan.shift.time[1] is not None) == (sb[2] > s)  # (rounding never lands on t_1 here)
        assert (above._plan.shift.time[1] is not None) == (sb[1] > s)
        if sb[1] > s:
            assert after._plan.shift.time[1] == above._plan.shift.time[1]
        seen.add((bool(sb[1] > s), bool(sb[2] > s)))
        assert np.mean((after.sample(eps, after.invert(eps, x0)) - x0) ** 2) <= 1e-20
    assert seen == {(True, True), (False, True), (False, False)}  # all three cases met


def test_shift_last_is_its_own_method_and_refuses_bad_values():
    last, plain = PFamily.shifted_last(), PFamily.shifted()
    assert last.signature() == "dpl-ob-shift-last" != plain.signature()
    assert get_method("dpl-ob-shift-last").signature() == "dpl-ob-shift-last"
    assert PFamily("dpl", shift=0.25, shift_last=True).signature() == "dpl(shift=0.25, shift_last=True)"
    with pytest.raises(ValueError, match="shift_last=True .* needs shift > 0"):
        PFamily("dpl-ob", shift_last=True)
    with pytest.raises(TypeError, match="shift_last='yes' must be True, False or 'after-dpl'"):
        PFamily("dpl-ob", shift=0.5, shift_last="yes")
    with pytest.raises(ValueError, match="shift_last='after-dpl' shifts .* needs shift > 0"):
        PFamily("dpl-ob", shift_last="after-dpl")
    assert PFamily("dpl-ob", shift=0.5, shift_last="after-dpl").signature() == "dpl-ob(shift=0.5, shift_last='after-dpl')"
    # a latent of one does not reconstruct with the other: the last row reads ε elsewhere
    sch = DiscreteVP.scaled_linear()
    data = held_out_mixture((3,), seed=1)
    eps = AnalyticEps(data, sch)
    x0 = data.sample(6, seed=2)
    a = Solver(sch, steps=6, method=last, spacing="trailing")
    latent = a.invert(eps, x0)
    assert np.max(np.abs(a.sample(eps, latent) - x0)) < 1e-12
    with pytest.raises(ValueError, match="dpl-ob-shift-last"):
        Solver(sch, steps=6, method=plain, spacing="trailing").sample(eps, latent)


def _row_error(shift: float, i: int) -> float:
    """RMSE of x_{i−1} after row i of dpl-ob, started from the exact (x_{i+1}, x_i)."""
    sch = DiscreteVP.linear()
    data = held_out_mixture((4,), seed=11)
    eps = AnalyticEps(data, sch)
    solver = Solver(sch, steps=10, method=PFamily("dpl-ob", shift=shift), spacing="trailing")
    g = solver.grid
    x_bar = data.sample(64, seed=4) + g.sigma_bar[i + 1] * np.random.default_rng(5).normal(size=(64, 4))
    exact = {j: data.flow(x_bar, g.sigma_bar[i + 1], g.sigma_bar[j]) * g.alpha[j] for j in (i, i - 1)}
    latent = Latent(states=(x_bar * g.alpha[i + 1], exact[i]), index=i + 1, method=solver.method.signature(),
                    grid_key=g.key)
    out = []
    solver.sample(eps, latent, callback=lambda info: out.append(info["x"]) if info["step"] == 1 else None)
    return float(np.sqrt(np.mean((out[0] - exact[i - 1]) ** 2)))


@pytest.mark.parametrize("i", [8, 6, 4, 2])
def test_the_shift_lowers_the_local_error_of_dpl_rows(i):
    # rows far from the clean end gain most (about 1.7× here); all gain
    assert _row_error(0.5, i) < (0.7 if i >= 5 else 0.85) * _row_error(0.0, i)


def test_bad_shift_and_velocity_grids_and_steppers_are_refused():
    for bad in (-0.1, 1.5, float("nan"), "half"):
        with pytest.raises(ValueError, match="shift="):
            PFamily("dpl-ob", shift=bad)
    with pytest.raises(ValueError, match="prediction='velocity'"):
        Solver(FlowMatch(shift=3.0), steps=8, method=PFamily("o-belm", shift=0.5))
    assert PFamily("dpl-ob", shift=0.5).signature() == "dpl-ob-shift"
    assert PFamily("dpl", shift=0.25).signature() == "dpl(shift=0.25)"

