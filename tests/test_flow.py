"""Flow matching (SD3, Flux): FlowMatch grids against diffusers, the velocity protocol, BELM in the
flow's own coordinates (x, σ), and the analytic rectified-flow problem (docs/math.md §11)."""

import numpy as np
import pytest

from backends.analytic import AnalyticEps, AnalyticVelocity, GaussianMixture
from belm_core import BDIA, EDICT, DiscreteVP, FlowMatch, Latent, Solver, make_grid
from helpers import empirical_order, mse

diffusers = pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")


def diffusers_timesteps(steps=None, sigmas=None, mu=None, **config) -> np.ndarray:
    ref = diffusers.FlowMatchEulerDiscreteScheduler(**config)
    ref.set_timesteps(steps, sigmas=sigmas, mu=mu)
    return ref.timesteps.double().numpy()


def flux_sigmas(n: int) -> np.ndarray:
    """What the Flux pipeline passes as sigmas=."""
    return np.linspace(1.0, 1 / n, n)


FLUX = dict(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)


# -- 1. grids: identical to diffusers' FlowMatchEulerDiscreteScheduler ---------------------------------
@pytest.mark.parametrize("steps", [10, 28])
def test_acceptance_solver_timesteps_equal_diffusers_shift_3(steps):
    solver = Solver(FlowMatch(shift=3.0), steps=steps, method="o-belm", prediction="velocity")
    np.testing.assert_array_equal(solver.timesteps, diffusers_timesteps(steps, shift=3.0))


@pytest.mark.parametrize("shift", [1.0, 3.0, 2.5, 0.7])
@pytest.mark.parametrize("steps", [1, 2, 10, 28, 50, 333])
def test_shift_grids_equal_diffusers(shift, steps):
    np.testing.assert_array_equal(FlowMatch(shift=shift).timesteps(steps), diffusers_timesteps(steps, shift=shift))


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("steps", [4, 28])
def test_custom_sigmas_equal_diffusers(shift, steps):
    sigmas = flux_sigmas(steps) ** 1.3  # not the default layout
    ours = FlowMatch(shift=shift).timesteps(sigmas=sigmas)
    np.testing.assert_array_equal(ours, diffusers_timesteps(steps, sigmas=sigmas, shift=shift))
    assert not np.array_equal(ours, FlowMatch(shift=shift).timesteps(steps))


@pytest.mark.parametrize("mu", [0.5, 1.15, 0.83])
@pytest.mark.parametrize("steps", [4, 10, 28])
@pytest.mark.parametrize("custom", [False, True], ids=["linspace", "flux-sigmas"])
def test_dynamic_shift_mu_grids_equal_diffusers(mu, steps, custom):
    sigmas = flux_sigmas(steps) if custom else None
    schedule = FlowMatch(**FLUX)
    ts = schedule.timesteps(steps, mu=mu, sigmas=sigmas)
    np.testing.assert_array_equal(ts, diffusers_timesteps(steps, sigmas=sigmas, mu=mu, **FLUX))
    solver = Solver(schedule, timesteps=ts, method="o-belm", prediction="velocity")
    np.testing.assert_array_equal(solver.timesteps, ts)
    assert ts[0] == 1000.0  # every such grid starts at pure noise


def test_linear_time_shift_equals_diffusers():
    ours = FlowMatch(use_dynamic_shifting=True, time_shift_type="linear").timesteps(12, mu=2.0)
    np.testing.assert_array_equal(ours, diffusers_timesteps(12, mu=2.0, use_dynamic_shifting=True, time_shift_type="linear"))


def test_mu_for_is_fluxs_calculate_shift():
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    schedule = FlowMatch(**FLUX)
    for seq_len in (256, 1024, 4096, 777):
        assert schedule.mu_for(seq_len) == pytest.approx(calculate_shift(seq_len), rel=1e-15)


def test_last_sigma_is_shifted_twice_as_in_diffusers():
    # __init__ shifts σ_min = 1/T; set_timesteps shifts the linspace ending there once more
    shift, T = 3.0, 1000

    def shifted(s):
        return shift * s / (1 + (shift - 1) * s)

    last = FlowMatch(shift=shift).timesteps(28)[-1] / T
    assert last == pytest.approx(shifted(shifted(1 / T)), rel=1e-6)
    assert last > 2 * shifted(1 / T)


def test_flow_grid_runs_in_x_sigma_coordinates():
    schedule = FlowMatch(shift=3.0)
    grid = make_grid(schedule, schedule.timesteps(10), prediction="velocity")
    sigma = np.concatenate([[0.0], grid.timesteps[::-1] / 1000])
    np.testing.assert_array_equal(grid.scale, 1.0)
    np.testing.assert_array_equal(grid.tau, sigma)
    np.testing.assert_allclose(grid.h[1:], np.diff(sigma))
    assert grid.tau[-1] == 1.0 and grid.alpha[-1] == 0.0 and grid.sigma_bar[-1] == np.inf
    # VP schedules keep the bar coordinates
    vp = make_grid(DiscreteVP.scaled_linear(), [999, 500, 1])
    np.testing.assert_array_equal(vp.scale, vp.alpha)
    np.testing.assert_array_equal(vp.tau, vp.sigma_bar)


# -- 2. the velocity protocol and its bad input ------------------------------------------------------
def test_epsilon_on_a_grid_from_pure_noise_is_a_clear_error():
    with pytest.raises(ValueError, match=r"prediction='epsilon'.*α = 0.*prediction='velocity'"):
        Solver(FlowMatch(shift=3.0), steps=28, method="o-belm", prediction="epsilon")


def test_velocity_on_a_vp_schedule_is_refused():
    with pytest.raises(ValueError, match=r"prediction='velocity' is not available for DiscreteVP.*\['epsilon'\]"):
        Solver(DiscreteVP.scaled_linear(), steps=10, prediction="velocity")
    assert Solver(DiscreteVP.scaled_linear(), steps=10).prediction == "epsilon"
    assert Solver(FlowMatch(), steps=10).prediction == "velocity"


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: FlowMatch(shift=0.0), "shift=0.0"),
        (lambda: FlowMatch(shift=float("nan")), "shift=nan"),
        (lambda: FlowMatch(time_shift_type="cubic"), "time_shift_type='cubic'"),
        (lambda: FlowMatch(**FLUX).timesteps(10), "mu is required"),
        (lambda: Solver(FlowMatch(**FLUX), steps=10), "mu is required"),
        (lambda: FlowMatch(shift=3.0).timesteps(10, mu=1.0), "mu=1.0 is only used with use_dynamic_shifting"),
        (lambda: FlowMatch().timesteps(sigmas=[1.0, 0.5, 0.0]), r"sigmas must lie in \(0, 1\]"),
        (lambda: FlowMatch().timesteps(sigmas=[1.2, 0.5]), r"sigmas must lie in \(0, 1\]"),
        (lambda: FlowMatch().timesteps(3, sigmas=[1.0, 0.5]), "steps=3 differs from len"),
        (lambda: FlowMatch().timesteps(0), "steps=0"),
        (lambda: FlowMatch().mu_for(0), "image_seq_len=0"),
    ],
)
def test_bad_flow_input_names_the_parameter(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_epsilon_below_pure_noise_agrees_with_velocity(flow_data):
    # ε = n̂ = x + (1 − σ) v: both coordinate systems integrate the same ODE from σ = 0.9
    schedule = FlowMatch(shift=1.0)
    v_fn = AnalyticVelocity(flow_data, schedule)

    def eps_fn(x, t):
        return x + (1 - t / 1000) * v_fn(x, t)

    ts = schedule.timesteps(sigmas=np.linspace(0.9, 0.02, 60))
    x = np.random.default_rng(3).normal(size=(16, 4))
    ref = flow_data.rectified_flow(x, float(ts[0]) / 1000, 0.0)
    by_eps = Solver(schedule, timesteps=ts, prediction="epsilon").sample(eps_fn, x)
    by_v = Solver(schedule, timesteps=ts, prediction="velocity").sample(v_fn, x)
    assert np.sqrt(mse(by_eps, ref)) < 2e-3 and np.sqrt(mse(by_v, ref)) < 2e-3


def test_latents_of_the_two_predictions_do_not_mix(flow_data):
    schedule = FlowMatch()
    ts = schedule.timesteps(sigmas=np.linspace(0.9, 0.1, 8))
    v_fn = AnalyticVelocity(flow_data, schedule)
    latent = Solver(schedule, timesteps=ts).invert(v_fn, flow_data.sample(4, seed=0))
    with pytest.raises(ValueError, match="different time grid"):
        Solver(schedule, timesteps=ts, prediction="epsilon").sample(v_fn, latent)


def test_ddim_on_the_flow_is_diffusers_flow_match_euler(flow_data):
    schedule = FlowMatch(shift=3.0)
    v_fn = AnalyticVelocity(flow_data, schedule)
    x = np.random.default_rng(0).normal(size=(8, 4))
    ours = Solver(schedule, steps=12, method="ddim", prediction="velocity").sample(v_fn, x)
    ref = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    ref.set_timesteps(12)
    sample = torch.from_numpy(x)
    for t in ref.timesteps:
        sample = ref.step(v_fn(sample, float(t)), t, sample).prev_sample
    # diffusers steps in float32 with float32 σ; ours is float64 with σ = t/T
    np.testing.assert_allclose(ours, sample.double().numpy(), rtol=0, atol=2e-5)
    assert np.abs(ours - x).max() > 0.1


# -- 3. exact inversion through the Solver, from and to σ = 1 -----------------------------------------
@pytest.fixture(scope="module")
def flow_data():
    """A held-out mixture: own seed, unit-order data as flow models see."""
    rng = np.random.default_rng(8080)
    K, D = 4, 4
    return GaussianMixture(rng.normal(scale=0.8, size=(K, D)), rng.uniform(0.03, 0.3, size=(K, D)),
                           rng.uniform(0.5, 2.0, size=K))


GRIDS = {
    "shift1": lambda n: FlowMatch(shift=1.0).timesteps(n),
    "shift3": lambda n: FlowMatch(shift=3.0).timesteps(n),
    "flux-mu": lambda n: FlowMatch(**FLUX).timesteps(sigmas=flux_sigmas(n), mu=1.15),
}
METHODS = {"o-belm": "o-belm", "bdia": BDIA(0.9), "edict": EDICT(0.93), "belm3": "belm3"}


@pytest.mark.parametrize("grid", sorted(GRIDS))
@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("steps", [5, 28])
def test_exact_round_trip_through_pure_noise(flow_data, grid, method, steps):
    schedule = FlowMatch(**FLUX) if grid == "flux-mu" else FlowMatch()
    solver = Solver(schedule, timesteps=GRIDS[grid](steps), method=METHODS[method], prediction="velocity")
    v_fn = AnalyticVelocity(flow_data, schedule)
    x0 = flow_data.sample(32, seed=steps)
    latent = solver.invert(v_fn, x0)
    assert latent.index == steps and solver.grid.tau[steps] == 1.0  # the latent sits at σ = 1
    assert mse(solver.sample(v_fn, latent), x0) <= 1e-20
    # and the inverted state is noise-like (the data mapped through the flow), not the data
    assert 0.5 < float(np.std(latent.states[0])) < 2.0


@pytest.mark.parametrize("until", [1, 9, 14])
def test_partial_flow_inversion_is_exact(flow_data, until):
    schedule = FlowMatch(shift=3.0)
    solver = Solver(schedule, steps=15, method="o-belm")
    v_fn = AnalyticVelocity(flow_data, schedule)
    x0 = flow_data.sample(8, seed=1)
    assert mse(solver.sample(v_fn, solver.invert(v_fn, x0, until=until)), x0) <= 1e-20


def test_torch_round_trip_on_the_flow(flow_data):
    schedule = FlowMatch(shift=3.0)
    solver = Solver(schedule, steps=10, method="o-belm")
    v_fn = AnalyticVelocity(flow_data, schedule)
    x0 = torch.from_numpy(flow_data.sample(8, seed=2)).float()
    rec = solver.sample(v_fn, solver.invert(v_fn, x0))
    assert rec.dtype == torch.float32 and mse(rec, x0) <= 1e-13


def test_ddim_inversion_on_the_flow_is_inexact(flow_data):
    schedule = FlowMatch(shift=3.0)
    v_fn = AnalyticVelocity(flow_data, schedule)
    x0 = flow_data.sample(16, seed=4)
    solver = Solver(schedule, steps=28, method="ddim")
    assert mse(solver.sample(v_fn, solver.invert(v_fn, x0)), x0) > 1e-8


def test_edict_steps_are_the_ddim_row_in_any_coordinates():
    for schedule, ts, pred in [
        (FlowMatch(shift=3.0), FlowMatch(shift=3.0).timesteps(9), "velocity"),
        (DiscreteVP.scaled_linear(), DiscreteVP.scaled_linear().timesteps(9), "epsilon"),
    ]:
        solver = Solver(schedule, timesteps=ts, method="edict", prediction=pred)
        ddim = Solver(schedule, timesteps=ts, method="ddim", prediction=pred)
        table = ddim._plan.tables[1]
        np.testing.assert_allclose(solver._plan.a[1:], table.c[1:, 0], rtol=1e-12)
        np.testing.assert_allclose(solver._plan.b[1:], table.d[1:, 0], rtol=1e-9, atol=1e-15)


def test_bdia_far_weight_is_gamma_in_both_coordinate_systems():
    for schedule in (FlowMatch(shift=3.0), DiscreteVP.scaled_linear()):
        solver = Solver(schedule, steps=12, method=BDIA(0.8))
        c = solver._plan.tables[2].c
        np.testing.assert_allclose(c[1:-1, 1], 0.8, rtol=1e-12)


# -- 4. acceptance: accuracy and order on a held-out rectified-flow mixture, from σ = 1 ------------------
@pytest.fixture(scope="module")
def from_noise(flow_data):
    x_T = np.random.default_rng(11).normal(size=(64, 4))
    return x_T, flow_data.rectified_flow(x_T, 1.0, 0.0)


NS = [10, 20, 40]


def rmse_from_noise(flow_data, from_noise, shift, method, N):
    x_T, ref = from_noise
    schedule = FlowMatch(shift=shift)
    solver = Solver(schedule, steps=N, method=method, prediction="velocity")
    assert solver.timesteps[0] == 1000.0
    return float(np.sqrt(mse(solver.sample(AnalyticVelocity(flow_data, schedule), x_T), ref)))


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_acceptance_obelm_order_and_error_against_euler(flow_data, from_noise, shift):
    obelm = [rmse_from_noise(flow_data, from_noise, shift, "o-belm", N) for N in NS]
    euler = [rmse_from_noise(flow_data, from_noise, shift, "ddim", N) for N in NS]
    assert empirical_order(NS, obelm) >= 1.6
    assert 0.8 <= empirical_order(NS, euler) <= 1.2  # Euler is first order: the comparison is fair
    assert obelm[1] <= 0.75 * euler[1]
    assert obelm[2] <= 0.3 * euler[2]


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_acceptance_round_trip_28_steps(flow_data, shift):
    schedule = FlowMatch(shift=shift)
    solver = Solver(schedule, steps=28, method="o-belm", prediction="velocity")
    v_fn = AnalyticVelocity(flow_data, schedule)
    x0 = flow_data.sample(64, seed=5)
    assert mse(solver.sample(v_fn, solver.invert(v_fn, x0)), x0) <= 1e-20


# -- 5. the analytic rectified flow ---------------------------------------------------------------------
def test_velocity_matches_the_eps_form_inside_the_interval(flow_data):
    # n = x + (1 − σ) v and ε*(x̄, σ̄) with x̄ = x/(1 − σ), σ̄ = σ/(1 − σ) is E[n | x]
    x = np.random.default_rng(1).normal(size=(20, 4))
    for sigma in (0.05, 0.3, 0.7, 0.95):
        v = flow_data.velocity(x, sigma)
        eps = flow_data.eps(x / (1 - sigma), sigma / (1 - sigma))
        np.testing.assert_allclose(x + (1 - sigma) * v, eps, rtol=1e-10, atol=1e-12)


def test_velocity_at_both_ends(flow_data):
    x = np.random.default_rng(2).normal(size=(10, 4))
    np.testing.assert_allclose(flow_data.velocity(x, 1.0), x - flow_data.weights @ flow_data.means, atol=1e-13)
    np.testing.assert_allclose(flow_data.velocity(x, 0.0), -x, atol=1e-13)
    with pytest.raises(ValueError, match="sigma=1.5"):
        flow_data.velocity(x, 1.5)


def test_rectified_flow_reference_agrees_with_the_bar_flow(flow_data):
    x = np.random.default_rng(3).normal(size=(8, 4))
    ours = flow_data.rectified_flow(x, 0.9, 0.0)
    bar = flow_data.flow(x / 0.1, 9.0, 0.0)  # x = (1 − σ) x̄; x̄ = x at σ = 0
    np.testing.assert_allclose(ours, bar, rtol=1e-8, atol=1e-9)
    back = flow_data.rectified_flow(flow_data.rectified_flow(x, 1.0, 0.0), 0.0, 1.0)
    np.testing.assert_allclose(back, x, atol=1e-8)


def test_single_gaussian_closed_form_matches_dop853():
    one = GaussianMixture.gaussian([0.5, -1.0, 0.2], [0.1, 0.3, 0.05])
    twin = GaussianMixture(np.stack([one.means[0]] * 2), np.stack([one.variances[0]] * 2))  # K = 2: DOP853
    x = np.random.default_rng(4).normal(size=(6, 3))
    np.testing.assert_allclose(one.rectified_flow(x, 1.0, 0.0), twin.rectified_flow(x, 1.0, 0.0), atol=1e-9)


def test_analytic_velocity_counts_and_keeps_array_type(flow_data):
    schedule = FlowMatch(shift=3.0)
    v_fn = AnalyticVelocity(flow_data, schedule)
    x = np.random.default_rng(5).normal(size=(3, 4))
    out = v_fn(torch.from_numpy(x).float(), 500.0)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    np.testing.assert_allclose(out.double().numpy(), flow_data.velocity(x, 0.5), rtol=1e-6, atol=1e-6)
    assert v_fn.nfe == 1
    with pytest.raises(ValueError, match="velocity"):
        AnalyticVelocity(flow_data, DiscreteVP.scaled_linear())
    assert isinstance(AnalyticEps(flow_data, schedule), AnalyticEps)  # ε stays available below σ = 1


def test_latent_dtype_and_index_recorded(flow_data):
    schedule = FlowMatch()
    solver = Solver(schedule, steps=6)
    latent = solver.invert(AnalyticVelocity(flow_data, schedule), flow_data.sample(2, seed=0))
    assert isinstance(latent, Latent) and latent.index == 6 and latent.grid_key == solver.grid.key
