"""belm_core.stepper.Stepper: the solver driven one ε at a time gives the Solver's own results bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from belm_core import BDIA, DiscreteVP, Solver, arrays
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
