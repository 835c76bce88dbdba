"""belm_core.stepper.Stepper: the solver driven one ε at a time gives the Solver's own results bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from belm_core import BDIA, DiscreteVP, FlowMatch, Solver, arrays, recommended
from belm_core.stepper import Stepper

METHODS = ["o-belm", "ddim", "edict", "belm3", BDIA(gamma=0.8)]


def eps_fn(x, t):
    return np.sin(1.7 * x + t / 300.0) + 0.1 * x


@pytest.fixture
def x0():
    return np.random.default_rng(0).standard_normal((2, 3, 4))


@pytest.mark.parametrize("method", METHODS, ids=str)
def test_stepper_equals_solver_both_ways(method, x0):
    solver = Solver(DiscreteVP.scaled_linear(), steps=12, method=method, spacing="linspace")
    latent = solver.invert(eps_fn, x0)
    stepper = Stepper.inversion(solver, x0).run(eps_fn)
    ours = stepper.latent()
    assert (ours.index, ours.method, ours.grid_key) == (latent.index, latent.method, latent.grid_key)
    for a, b in zip(ours.states, latent.states):
        assert np.array_equal(a, b)
    assert np.array_equal(Stepper.from_latent(solver, latent).run(eps_fn).head[1], solver.sample(eps_fn, latent))
    assert np.array_equal(Stepper.sampling(solver, x0).run(eps_fn).head[1], solver.sample(eps_fn, x0))


def test_model_calls_and_multi_eps_steps(x0):
    """One ε per step for O-BELM; EDICT's steps need two `advance` calls before the carry moves."""
    solver = Solver(DiscreteVP.scaled_linear(), steps=6, method="edict", spacing="linspace")
    stepper = Stepper.sampling(solver, x0)
    x, index = stepper.need()
    assert index == 6 and not stepper.advance(eps_fn(x, solver.grid.t(index)))
    assert stepper.head[0] == 6  # not moved yet
    x, index = stepper.need()
    assert stepper.advance(eps_fn(x, solver.grid.t(index))) and stepper.head[0] == 5
    solver = Solver(DiscreteVP.scaled_linear(), steps=6, method="o-belm", spacing="linspace")
    stepper, indices = Stepper.inversion(solver, x0), []
    while not stepper.done:
        x, index = stepper.need()
        indices.append(index)
        assert stepper.advance(eps_fn(x, solver.grid.t(index)))
    assert indices == [1, 1, 2, 3, 4, 5]  # DDIM-inversion start ε(x_0, t_1), then ε(x_i, t_i)


def test_checks_are_the_solvers(x0):
    solver = Solver(DiscreteVP.scaled_linear(), steps=4, spacing="linspace")
    stepper = Stepper.sampling(solver, x0)
    with pytest.raises(ValueError, match="shape"):
        stepper.advance(np.zeros(3))
    with pytest.raises(ValueError, match="non-finite"):
        stepper.advance(np.full_like(x0, np.nan))
    with pytest.raises(ValueError, match="NaN or inf"):
        Stepper.sampling(solver, np.full_like(x0, np.inf))
    stepper.run(eps_fn)
    with pytest.raises(ValueError, match="done"):
        stepper.need()


def test_all_finite_fast_path_is_exact():
    big = np.full(10, 6e4, dtype=np.float16)  # finite entries whose float16 sum overflows
    assert arrays.all_finite(big)
    big[3] = np.inf
    assert not arrays.all_finite(big)
    assert not arrays.all_finite(np.array([1.0, np.nan]))


# -- start-ups, shifted and trajectory reads, steps without a model call -------------------------------------
RECOMMENDED = [DiscreteVP.linear(), DiscreteVP.scaled_linear(), DiscreteVP.cosine(), FlowMatch(shift=3.0)]


def _recommended_solver(schedule, N):
    kw = recommended(schedule, N)
    if isinstance(schedule, FlowMatch):
        kw["prediction"] = "velocity"
    return Solver(schedule, steps=N, **kw)


class _Recorder:
    """eps_fn that records (input, t) of every call."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t):
        self.calls.append((np.array(x, copy=True), t))
        return eps_fn(x, t)


@pytest.mark.parametrize("N", [2, 3, 5, 12])
@pytest.mark.parametrize("schedule", RECOMMENDED, ids=lambda s: getattr(s, "beta_schedule", "flow"))
def test_recommended_configurations_equal_the_solver(schedule, N, x0):
    """Start-ups ("pc", "pc-shift"), shifted and trajectory reads: the Stepper makes the Solver's calls
    (same model inputs, same model times, N of them) and its results, bit for bit, both ways."""
    solver = _recommended_solver(schedule, N)
    ref, ours = _Recorder(), _Recorder()
    expected = solver.sample(ref, x0)
    stepper = Stepper.sampling(solver, x0)
    assert np.array_equal(stepper.run(ours).head[1], expected)
    assert len(ours.calls) == len(ref.calls) == N
    for (a, t), (b, u) in zip(ours.calls, ref.calls):
        assert t == u and np.array_equal(a, b)
    latent = solver.invert(eps_fn, x0)
    mine = Stepper.inversion(solver, x0).run(eps_fn).latent()
    assert all(np.array_equal(a, b) for a, b in zip(mine.states, latent.states))
    assert np.array_equal(Stepper.from_latent(solver, latent).run(eps_fn).head[1], solver.sample(eps_fn, latent))


def test_next_call_says_where_the_model_is_read(x0):
    """The first call is the plain (x_N, t_N); the "pc-shift" corrector reads the DDIM predictor (not a
    carry state) at row N−1's shifted time with input scale κ; `need()` refuses a shifted call."""
    sch = DiscreteVP.scaled_linear()
    solver = _recommended_solver(sch, 6)
    assert solver.startup == "pc-shift-moved"
    stepper = Stepper.sampling(solver, x0)
    first = stepper.next_call()
    assert first.on_grid and first.index == 6 and first.time == solver.grid.t(6) and first.input is first.x
    assert stepper.need() == (first.x, 6)
    assert not stepper.advance(eps_fn(first.input, first.time))  # the start-up needs a second call
    second = stepper.next_call()
    shift = solver._plan.shift
    assert second.index == 5 and not second.on_grid
    assert second.time == shift.time[5] != solver.grid.t(5) and second.scale == shift.scale[5] != 1.0
    np.testing.assert_array_equal(second.input, second.scale * second.x)
    with pytest.raises(ValueError, match="next_call"):
        stepper.need()


def test_a_step_without_a_model_call_is_taken_at_once(x0):
    """N = 2 with the predictor–corrector start: row 1 reuses the start-up's ε, so the walk is done
    with the second call (no third call is asked for)."""
    solver = Solver(DiscreteVP.linear(), steps=2, method="o-belm", startup="pc", spacing="trailing")
    stepper = Stepper.sampling(solver, x0)
    calls = 0
    while not stepper.done:
        call = stepper.next_call()
        stepper.advance(eps_fn(call.input, call.time))
        calls += 1
    assert calls == 2 and stepper.head[0] == 0 and stepper.steps_done == 2
    assert np.array_equal(stepper.head[1], solver.sample(eps_fn, x0))


# -- resuming from a state at any model time ---------------------------------------------------------------------
def test_resuming_at_a_grid_time_is_the_ddim_start(x0):
    """At t = t_index the DDIM move onto the grid is the DDIM start-up itself (same result to rounding)."""
    solver = Solver(DiscreteVP.scaled_linear(), steps=10, method="o-belm", spacing="trailing")
    i = 7
    t = solver.grid.t(i)
    resumed = Stepper.resuming(solver, x0, t, eps_fn(x0, t), i).run(eps_fn).head[1]
    fresh = Stepper.sampling(solver, x0, i).run(eps_fn).head[1]
    np.testing.assert_allclose(resumed, fresh, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("schedule", [DiscreteVP.linear(), FlowMatch(shift=3.0)], ids=["vp", "flow"])
def test_resuming_off_the_grid_follows_straight_trajectories(schedule):
    """Point-mass data (every trajectory a straight line to c): resumed at a model time between grid
    times, in ε or velocity coordinates, the recommended sampler lands on c."""
    solver = _recommended_solver(schedule, 8)
    c = np.linspace(-1.0, 1.0, 12).reshape(3, 4)
    n = np.random.default_rng(3).standard_normal(c.shape)
    i = 5
    t = 0.5 * (float(solver.grid.t(i)) + float(solver.grid.t(i + 1)))  # off the grid
    if isinstance(schedule, FlowMatch):
        s = float(schedule.sigma(t))

        def f(x, t):
            return (x - c) / float(schedule.sigma(t))  # v = n − c on x = (1 − σ) c + σ n
        x = (1 - s) * c + s * n
    else:
        t = float(round(t))

        def f(x, t):
            return (x / float(schedule.alpha(t)) - c) / float(schedule.sigma_bar(t))
        x = float(schedule.alpha(t)) * (c + float(schedule.sigma_bar(t)) * n)
    np.testing.assert_allclose(Stepper.resuming(solver, x, t, f(x, t), i).run(f).head[1], c, atol=1e-10)


def test_resuming_refuses_bad_rows_and_methods(x0):
    solver = Solver(DiscreteVP.scaled_linear(), steps=6, spacing="linspace")
    for bad in (0, 7, 2.0):
        with pytest.raises(ValueError, match="index="):
            Stepper.resuming(solver, x0, 500, x0, bad)
    with pytest.raises(TypeError, match="linear multistep"):
        Stepper.resuming(Solver(DiscreteVP.scaled_linear(), steps=6, method="edict"), x0, 500, x0, 3)
    with pytest.raises(ValueError, match="NaN or inf"):
        Stepper.resuming(solver, x0, 500, np.full_like(x0, np.nan), 3)
