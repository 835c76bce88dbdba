"""Schedules and time grids: agreement with diffusers, inverses, and bad input."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from belm_core import VE, CosineVP, DiscreteVP, LinearVP, Solver, make_grid

diffusers = pytest.importorskip("diffusers")


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("steps", [1, 7, 10, 50, 333, 1000])
@pytest.mark.parametrize("offset", [0, 1])
def test_timesteps_identical_to_diffusers_ddim(spacing, steps, offset):
    ref = diffusers.DDIMScheduler(timestep_spacing=spacing, steps_offset=offset)
    ref.set_timesteps(steps)
    ours = DiscreteVP.scaled_linear(steps_offset=offset).timesteps(steps, spacing)
    np.testing.assert_array_equal(ours, ref.timesteps.numpy())


@pytest.mark.parametrize("steps", range(1, 1001))
def test_trailing_grid_has_exactly_steps_points(steps):
    # diffusers' trailing grid gains a spurious timestep −1 for 62 step counts (61, 103, …):
    # ours keeps exactly `steps` points and equals diffusers' first `steps` points everywhere
    ref = diffusers.DDIMScheduler(timestep_spacing="trailing")
    ref.set_timesteps(steps)
    ours = DiscreteVP.scaled_linear().timesteps(steps, "trailing")
    assert ours.size == steps and ours.min() >= 0
    np.testing.assert_array_equal(ours, ref.timesteps.numpy()[:steps])


def test_trailing_tail_is_trailing_with_a_shorter_last_step():
    """"trailing-tail" keeps every trailing model time but the last, which moves to
    round(0.4 (t_{N−2} + 1)) − 1: strictly decreasing and a training timestep at every N ≤ T."""
    from belm_core.schedules import TAIL_FRACTION

    assert TAIL_FRACTION == 0.4
    for sch in (DiscreteVP.scaled_linear(), DiscreteVP.linear(), DiscreteVP.cosine()):
        for steps in range(1, 1001):
            trailing, tail = sch.timesteps(steps, "trailing"), sch.timesteps(steps, "trailing-tail")
            assert tail.dtype == trailing.dtype and tail.size == steps
            np.testing.assert_array_equal(tail[:-1], trailing[:-1])
            if steps == 1:
                assert tail.tolist() == [999]
                continue
            assert tail[-1] == round(0.4 * (int(tail[-2]) + 1)) - 1
            assert 0 <= tail[-1] <= trailing[-1] and np.all(np.diff(tail) < 0)
    sch = DiscreteVP.scaled_linear()
    assert sch.timesteps(5, "trailing-tail").tolist() == [999, 799, 599, 399, 159]  # trailing: …, 199
    assert sch.timesteps(20, "trailing-tail")[-3:].tolist() == [149, 99, 39]  # trailing: …, 49
    assert sch.timesteps(1000, "trailing-tail")[-2:].tolist() == [1, 0]
    # a Solver takes it by name, and its grid ends at the clean state like every VP grid
    solver = Solver(sch, steps=20, spacing="trailing-tail")
    assert solver.grid.sigma_bar[0] == 0.0 and solver.timesteps[-1] == 39


def test_long_start_is_trailing_tail_with_a_longer_first_step():
    """"long-start": T − 1, then t_{N−1} = T − 1 − round(1.5 T/N), then N − 2 trailing model times over
    [0, t_{N−1} + 1) with the tail's last step; strictly decreasing training timesteps at every N < T,
    "trailing-tail" at N ≤ 2, and N = T refused with the spacing named."""
    from belm_core.schedules import LONG_START, tail_time

    assert LONG_START == 1.5
    for sch in (DiscreteVP.scaled_linear(), DiscreteVP.linear(), DiscreteVP.cosine()):
        for steps in range(1, 1000):
            t = sch.timesteps(steps, "long-start")
            if steps <= 2:
                np.testing.assert_array_equal(t, sch.timesteps(steps, "trailing-tail"))
                continue
            top = 999 - round(1.5 * 1000 / steps)
            assert t.size == steps and t[0] == 999 and t[1] == top and np.all(np.diff(t) < 0) and t[-1] >= 0
            assert t[-1] == tail_time(t[-2])
            inner = np.round((top + 1) * np.arange(steps - 2, 0, -1) / (steps - 1)) - 1
            np.testing.assert_array_equal(t[2:-1], inner[:-1])
        with pytest.raises(ValueError, match="steps=1000 is too many for spacing='long-start'"):
            sch.timesteps(1000, "long-start")
    sch = DiscreteVP.linear()
    assert sch.timesteps(5, "long-start").tolist() == [999, 699, 524, 349, 139]  # trailing-tail: 799, 599, 399, 159
    assert sch.timesteps(10, "long-start").tolist() == [999, 849, 755, 660, 566, 471, 377, 282, 188, 75]
    solver = Solver(sch, steps=5, spacing="long-start")
    assert solver.grid.sigma_bar[0] == 0.0 and solver.timesteps[1] == 699


@pytest.mark.parametrize(
    "ctor, name",
    [(DiscreteVP.linear, "linear"), (DiscreteVP.scaled_linear, "scaled_linear"), (DiscreteVP.cosine, "squaredcos_cap_v2")],
)
def test_alphas_cumprod_match_diffusers(ctor, name):
    kwargs = {} if name == "squaredcos_cap_v2" else {
        "beta_start": 1e-4 if name == "linear" else 0.00085, "beta_end": 0.02 if name == "linear" else 0.012}
    ref = diffusers.DDIMScheduler(beta_schedule=name, **kwargs).alphas_cumprod.double().numpy()
    ours = ctor().alphas_cumprod
    # diffusers accumulates in float32; we accumulate in float64
    np.testing.assert_allclose(ours, ref, rtol=2e-5, atol=1e-7)


def test_from_betas_is_cumulative_product():
    betas = np.linspace(0.001, 0.3, 50)
    s = DiscreteVP.from_betas(betas)
    np.testing.assert_allclose(s.alphas_cumprod, np.cumprod(1 - betas), rtol=1e-13)
    np.testing.assert_allclose(s.alpha(10) ** 2 + s.sigma(10) ** 2, 1.0, rtol=1e-14)


SCHEDULES = [DiscreteVP.scaled_linear(), DiscreteVP.linear(), DiscreteVP.cosine(), LinearVP(), CosineVP(), VE()]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: repr(s))
@settings(max_examples=30, deadline=None)
@given(u=st.floats(0.0, 1.0))
def test_t_from_sigma_bar_inverts_sigma_bar(schedule, u):
    t = schedule.t_min + u * (schedule.t_max - schedule.t_min)
    back = schedule.t_from_sigma_bar(schedule.sigma_bar(t))
    assert abs(back - t) <= 1e-7 * max(1.0, abs(t))


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: repr(s))
def test_grid_ends_at_clean_state_with_positive_steps(schedule):
    for spacing in schedule.spacings:
        if schedule.discrete and spacing in ("karras", "logsnr") and np.any(np.diff(schedule._grid(12, spacing)) >= 0):
            with pytest.raises(ValueError, match="same training timestep"):  # cosine: crowded at t = T − 1
                Solver(schedule, steps=12, method="ddim", spacing=spacing)
            continue
        g = Solver(schedule, steps=12, method="ddim", spacing=spacing).grid
        assert g.N == 12 and g.alpha[0] == 1.0 and g.sigma_bar[0] == 0.0
        assert np.all(g.h[1:] > 0)
        np.testing.assert_allclose(g.alpha[1:], schedule.alpha(g.timesteps[::-1]))
        assert g.t(g.N) == g.timesteps[0] and g.t(1) == g.timesteps[-1]
        assert isinstance(g.t(1), int if schedule.discrete else float)


def test_logsnr_and_karras_grids():
    s = LinearVP()
    t = s.timesteps(20, "logsnr")
    lam = s.log_snr(t)
    np.testing.assert_allclose(np.diff(lam), np.diff(lam)[0], rtol=1e-9)
    np.testing.assert_allclose([t[0], t[-1]], [s.t_max, s.t_min], rtol=1e-9)
    ve = VE(0.002, 80.0)
    sig = ve.timesteps(10, "karras")
    ramp = np.linspace(0, 1, 10)
    expect = (80 ** (1 / 7) + ramp * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    np.testing.assert_allclose(sig, expect, rtol=1e-12)
    np.testing.assert_array_equal(ve.sigma(sig), sig)
    np.testing.assert_array_equal(ve.alpha(sig), 1.0)


@pytest.mark.parametrize(
    "timesteps, match",
    [
        ([500, 600, 100], "strictly decreasing"),
        ([500, 500, 100], "duplicate"),
        ([1200, 500, 100], "outside the schedule's range"),
        ([500, -3], "outside the schedule's range"),
        ([500.5, 100], "integers"),
        ([500, np.nan], "finite"),
        ([], "non-empty"),
    ],
)
def test_bad_timesteps(timesteps, match):
    with pytest.raises(ValueError, match=match):
        make_grid(DiscreteVP.scaled_linear(), np.array(timesteps, dtype=float))


def test_bad_spacing_and_steps():
    s = DiscreteVP.scaled_linear()
    with pytest.raises(ValueError, match="spacing='beta'.*linspace"):
        s.timesteps(10, "beta")
    with pytest.raises(ValueError, match="steps=0"):
        s.timesteps(0)
    with pytest.raises(ValueError, match="exceeds"):
        s.timesteps(1001)
    with pytest.raises(ValueError, match="alphas_cumprod"):
        DiscreteVP([0.9, 0.5, 0.0])
    with pytest.raises(ValueError, match="beta_0"):
        LinearVP(beta_0=5, beta_1=1)


@pytest.mark.parametrize("kind", ["scaled_linear", "linear"])
@pytest.mark.parametrize("steps", [5, 10, 20, 25])
def test_karras_grid_is_diffusers_use_karras_sigmas(kind, steps):
    diffusers = pytest.importorskip("diffusers")
    sch = getattr(DiscreteVP, kind)()
    betas = 1.0 - sch.alphas_cumprod / np.concatenate([[1.0], sch.alphas_cumprod[:-1]])
    ref = diffusers.DPMSolverMultistepScheduler(trained_betas=betas.tolist(), use_karras_sigmas=True)
    ref.set_timesteps(steps)
    np.testing.assert_array_equal(sch.timesteps(steps, "karras"), ref.timesteps.numpy())


@pytest.mark.parametrize("steps", [3, 8, 20])
def test_logsnr_grid_is_uniform_in_log_sigma_bar_up_to_rounding(steps):
    sch = DiscreteVP.linear()
    t = sch.timesteps(steps, "logsnr")
    assert t[0] == 999 and t[-1] == 0 and np.all(np.diff(t) < 0)
    target = np.linspace(np.log(sch.sigma_bar(999)), np.log(sch.sigma_bar(0)), steps)
    # rounding t moves log σ̄ by at most half a training step's log-σ̄ increment
    slope = np.abs(np.gradient(np.log(sch.sigma_bar(np.arange(1000)))))
    assert np.all(np.abs(np.log(sch.sigma_bar(t)) - target) <= 0.5 * slope[t] + 1e-12)


def test_crowded_karras_grid_is_refused_with_the_largest_usable_steps():
    sch = DiscreteVP.scaled_linear()
    with pytest.raises(ValueError, match=r"steps=60 with spacing='karras'.*steps ≤ 44"):
        Solver(sch, steps=60, method="o-belm", spacing="karras")
    solver = Solver(sch, steps=44, method="dpl-ob-shift", spacing="karras")
    from helpers import AnalyticEps, held_out_mixture

    data = held_out_mixture((3,), seed=4)
    eps = AnalyticEps(data, sch)
    x0 = data.sample(4, seed=0)
    assert np.mean((solver.sample(eps, solver.invert(eps, x0)) - x0) ** 2) < 1e-20
