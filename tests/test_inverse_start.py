"""Inversion's first step in graded DDIM sub-steps (belm_core.methods.inverse_start, docs/math.md §28).

Oracles: the exact round trip (sampling never reads how x_1 was found), counted model calls and
their times, the Stepper's one-call-at-a-time walk against `Solver.invert`, and the latent's
distance to the exact ODE inversion of held-out mixtures against the single DDIM step's.
"""

import numpy as np
import pytest
import torch

from backends.analytic import AnalyticVelocity, flow_problem
from belm_core import EDICT, DiscreteVP, FlowMatch, Solver, recommended
from belm_core.methods.inverse_start import substep_times
from belm_core.recommend import INVERSION_SUBSTEPS
from belm_core.stepper import Stepper
from helpers import AnalyticEps, Spy, held_out_mixture, latent_distances, mse

DISCRETE = {"scaled_linear": DiscreteVP.scaled_linear(), "linear": DiscreteVP.linear(), "cosine": DiscreteVP.cosine()}


def configurations(sch, N: int, substeps: int) -> dict:
    """Solver keyword arguments of the methods checked, with `substeps`: the recommendation and plain O-BELM."""
    return {"recommended": dict(recommended(sch, N), inversion_substeps=substeps),
            "o-belm": {"method": "o-belm", "spacing": "trailing", "inversion_substeps": substeps}}


@pytest.mark.parametrize("kind", sorted(DISCRETE))
def test_substepped_inversion_round_trips_exactly_and_calls_the_substep_times_first(kind):
    sch = DISCRETE[kind]
    data = held_out_mixture((3,), seed=4)
    eps = AnalyticEps(data, sch)
    x0 = data.sample(8, seed=1)
    for N in (3, 10, 25):
        for name, kwargs in configurations(sch, N, 4).items():
            solver = Solver(sch, steps=N, **kwargs)
            times = solver.inversion_substep_times
            t_1 = solver.grid.t(1)
            assert 1 <= len(times) <= 3 and list(times) == sorted(set(times)) and times[-1] < t_1, (name, N, times)
            assert all(isinstance(t, int) and t >= 0 for t in times)
            spy = Spy(eps)
            latent = solver.invert(spy, x0)
            assert len(spy.calls) == N + len(times), (name, N)  # one extra call per sub-step time
            assert [t for _, t in spy.calls[: len(times) + 1]] == [*times, t_1]
            np.testing.assert_array_equal(spy.calls[0][0], x0)  # the first sub-step reads the model at x_0
            assert mse(solver.sample(eps, latent), x0) <= 1e-20, (name, N)
            single = Solver(sch, steps=N, **dict(kwargs, inversion_substeps=1)).invert(eps, x0)
            assert len(latent.states) == len(single.states) and not np.allclose(latent.states[0], single.states[0])


def test_one_substep_is_the_papers_ddim_step_bit_for_bit():
    sch = DISCRETE["scaled_linear"]
    data = held_out_mixture((4,), seed=2)
    eps = AnalyticEps(data, sch)
    x0 = data.sample(16, seed=3)
    for kwargs in configurations(sch, 12, 1).values():
        one = Solver(sch, steps=12, **kwargs)
        assert one.inversion_substep_times == () and one._inverse_first() is None
        kwargs.pop("inversion_substeps")
        default = Solver(sch, steps=12, **kwargs)  # O-BELM: the paper's single step by default
        for a, b in zip(one.invert(eps, x0).states, default.invert(eps, x0).states):
            np.testing.assert_array_equal(a, b)



@pytest.mark.parametrize("substeps", [1, 3])
def test_the_first_step_by_hand(substeps):
    """x_1 by the module docstring's formula: x̄ ← x̄ + (σ̄_(j) − σ̄_(j−1)) ε(x_(j−1), t_(j)), the model fed the
    state at its own scale, from x̄_0 = x_0 (clean end) through the sub-step times to t_1."""
    sch = DISCRETE["linear"]
    eps = AnalyticEps(held_out_mixture((3,), seed=8), sch)
    x0 = eps.data.sample(5, seed=6)
    solver = Solver(sch, steps=10, method="o-belm", spacing="trailing", inversion_substeps=substeps)
    x1 = solver.invert(eps, x0, until=1).states[0]
    x, sigma_bar, alpha = x0, 0.0, 1.0
    for t in (*solver.inversion_substep_times, solver.grid.t(1)):
        x_bar = x / alpha + (float(sch.sigma_bar(t)) - sigma_bar) * eps(x, t)
        sigma_bar, alpha = float(sch.sigma_bar(t)), float(sch.alpha(t))
        x = alpha * x_bar
    np.testing.assert_allclose(x1, x, rtol=1e-13, atol=1e-13)


def test_substep_times_keep_only_distinct_training_times_below_t1():
    sch = DISCRETE["linear"]
    # t_1 = 0: no training time lies between the clean end and t_1, so no extra call
    solver = Solver(sch, timesteps=[999, 500, 0], method="o-belm", inversion_substeps=8)
    assert solver.inversion_substep_times == ()
    eps = AnalyticEps(held_out_mixture((2,), seed=1), sch)
    x0 = eps.data.sample(4, seed=0)
    eps.reset()
    solver.invert(eps, x0)
    assert eps.nfe == 3
    # t_1 = 2: at most the times 0 and 1, however many sub-steps are asked for
    for K, want in ((2, 1), (64, 2)):
        times = Solver(sch, timesteps=[999, 500, 2], method="o-belm", inversion_substeps=K).inversion_substep_times
        assert len(times) == want and set(times) <= {0, 1}
    # levels graded quadratically in σ̄ from the clean end, σ̄_(j) = σ̄_1 (j/K)², rounded to training times
    times = substep_times(Solver(sch, timesteps=[999, 600, 300], method="o-belm").grid, 6)
    assert len(times) == 5
    for j, t in enumerate(times, start=1):
        target = float(sch.sigma_bar(300)) * (j / 6) ** 2
        assert float(sch.sigma_bar(t - 1)) < target < float(sch.sigma_bar(t + 1)), (j, t)


def test_substeps_from_an_end_state_at_t_min_stay_above_it_and_round_trip():
    """end="t_min" (diffusers' set_alpha_to_one=False): x_0 sits at σ̄(0) > 0, so the sub-steps' times lie in
    1 … t_1 − 1 and the first one moves x_0 from its own level, not from σ̄ = 0."""
    sch = DISCRETE["scaled_linear"]
    eps = AnalyticEps(held_out_mixture((3,), seed=3), sch)
    x0 = eps.data.sample(8, seed=2)
    solver = Solver(sch, steps=10, method="o-belm", spacing="trailing", end="t_min", inversion_substeps=4)
    times = solver.inversion_substep_times
    assert len(times) == 3 and min(times) >= 1 and float(solver.grid.sigma_bar[0]) == float(sch.sigma_bar(0))
    latent = solver.invert(eps, x0)
    assert mse(solver.sample(eps, latent), x0) <= 1e-20


def test_flow_inversion_with_substeps_round_trips_exactly_at_continuous_times():
    schedule = FlowMatch(shift=3.0)
    data = flow_problem((3,), seed=2)
    v_fn = AnalyticVelocity(data, schedule)
    x0 = data.sample(8, seed=4)
    solver = Solver(schedule, steps=8, method="o-belm", prediction="velocity", inversion_substeps=4)
    times = solver.inversion_substep_times
    assert len(times) == 3 and all(isinstance(t, float) for t in times) and 0 < times[0] < times[-1] < solver.grid.t(1)
    v_fn.reset()
    latent = solver.invert(v_fn, x0)
    assert v_fn.nfe == 8 + 3
    assert mse(solver.sample(v_fn, latent), x0) <= 1e-20


def test_the_stepper_walks_the_substeps_one_call_at_a_time_like_invert():
    sch = DISCRETE["linear"]
    data = held_out_mixture((4,), seed=5)
    eps = AnalyticEps(data, sch)
    x0 = torch.as_tensor(data.sample(6, seed=2))
    solver = Solver(sch, steps=9, **recommended(sch, 9))
    assert len(solver.inversion_substep_times) == 7  # the recommendation: 8 sub-steps
    stepper = Stepper.inversion(solver, x0)
    calls = []
    while not stepper.done:
        call = stepper.next_call()
        calls.append(call.time)
        stepper.advance(eps(call.input, call.time))
    assert calls[: len(solver.inversion_substep_times) + 1] == [*solver.inversion_substep_times, solver.grid.t(1)]
    for a, b in zip(stepper.latent().states, solver.invert(eps, x0).states):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("kind", sorted(DISCRETE))
def test_substeps_bring_the_recommended_latent_closer_to_the_exact_ode_inversion(kind):
    """On held-out mixtures the first step's error is a large part of the latent's distance to the exact
    ODE inversion: the recommendation's 8 sub-steps shrink it at 20 steps on every schedule (measured
    0.37–0.87× on these six mixtures), on scaled-linear at 50 steps about 5× and on linear at 100 steps
    about 2× in the geometric mean (docs/math.md §28)."""
    sch = DISCRETE[kind]
    assert recommended(sch, 20)["inversion_substeps"] == INVERSION_SUBSTEPS == 8
    steps = {"scaled_linear": (20, 50), "linear": (20, 100), "cosine": (20,)}[kind]
    ratios = {N: [] for N in steps}
    for seed in range(21, 27):
        single = latent_distances(sch, lambda N: dict(recommended(sch, N), inversion_substeps=1), steps=steps, seed=seed)
        sub = latent_distances(sch, lambda N: recommended(sch, N), steps=steps, seed=seed)
        for N in steps:
            ratios[N].append(sub[N] / single[N])
    gm = {N: float(np.exp(np.mean(np.log(r)))) for N, r in ratios.items()}
    assert max(ratios[20]) < 0.95 and gm[20] < 0.85, ratios
    if kind != "cosine":
        assert gm[steps[1]] < {"scaled_linear": 0.35, "linear": 0.65}[kind], (gm, ratios)


@pytest.mark.parametrize("bad", [0, -2, 2.5, True, "4", None])
def test_bad_inversion_substeps_are_refused(bad):
    with pytest.raises(ValueError, match="inversion_substeps=.*integer ≥ 1"):
        Solver(DISCRETE["linear"], steps=10, inversion_substeps=bad)


@pytest.mark.parametrize("method", ["ddim", EDICT()])
def test_substeps_need_a_two_state_linear_multistep_method(method):
    with pytest.raises(ValueError, match="inversion_substeps=4 needs a linear multistep method with k ≥ 2"):
        Solver(DISCRETE["linear"], steps=10, method=method, inversion_substeps=4)
