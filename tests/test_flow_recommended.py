"""The p-family and the predictor–corrector start on rectified flows, and `recommended(FlowMatch, N)`.

Oracles: the trapezoid start written independently in x-space from the data-prediction
coordinates (x/σ, α/σ), the closed-form flow of one Gaussian (`GaussianMixture.rectified_flow`),
DOP853 references for a mixture, round trips at rounding level and counted model calls.
"""

import warnings

import numpy as np
import pytest

from backends.analytic import AnalyticVelocity, GaussianMixture
from belm_core import FlowMatch, PFamily, Solver, make_grid, recommended
from helpers import Count

GRIDS = {"shift 1": FlowMatch(), "SD3": FlowMatch(shift=3.0)}


def mixture():
    rng = np.random.default_rng(2024)
    return GaussianMixture(rng.normal(scale=0.8, size=(4, 4)), rng.uniform(0.03, 0.3, size=(4, 4)),
                           rng.uniform(0.5, 2.0, size=4))


def first_state(solver, v_fn, x_T):
    """x_{N−1} of solver.sample from x_T, read by the callback."""
    seen = {}

    def grab(info):
        seen.setdefault(info["index"], info["x"])

    solver.sample(v_fn, x_T, callback=grab)
    return seen[solver.grid.N - 1]


def test_pc_start_on_a_flow_is_the_trapezoid_on_x0_in_alpha_over_sigma():
    sch = FlowMatch(shift=3.0)
    data = mixture()
    v = AnalyticVelocity(data, sch)
    solver = Solver(sch, steps=6, method="o-belm", startup="pc")
    x_T = np.random.default_rng(0).normal(size=(8, 4))
    g = solver.grid
    N = g.N
    s_N, s_M = g.sigma[N], g.sigma[N - 1]
    a_N, a_M = 1 - s_N, 1 - s_M
    t_N, t_M = g.timesteps[0], g.timesteps[1]
    # written here in x-space: Euler predictor, then y′ = x/σ advanced by the trapezoid in τ′ = α/σ on x̂0 = x − σ v
    v_N = v(x_T, t_N)
    x0_N = x_T - s_N * v_N
    x_pred = x_T + (s_M - s_N) * v_N
    x0_pred = x_pred - s_M * v(x_pred, t_M)
    want = s_M * (x_T / s_N + (a_M / s_M - a_N / s_N) * (x0_N + x0_pred) / 2)
    np.testing.assert_allclose(first_state(solver, v, x_T), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("grid", sorted(GRIDS))
def test_pc_start_beats_the_euler_start_on_a_gaussian_flow(grid):
    sch = GRIDS[grid]
    g = np.random.default_rng(7)
    data = GaussianMixture.gaussian(g.normal(scale=0.7, size=8), g.uniform(0.02, 0.5, size=8))
    v = AnalyticVelocity(data, sch)
    x_T = np.random.default_rng(1).normal(size=(64, 8))
    for N in (4, 6, 10):
        errs = {}
        for startup in ("ddim", "pc"):
            solver = Solver(sch, steps=N, method="o-belm", startup=startup)
            x = first_state(solver, v, x_T)
            ref = data.rectified_flow(x_T, 1.0, float(solver.grid.sigma[N - 1]))
            errs[startup] = np.sqrt(np.mean((x - ref) ** 2))
        assert errs["pc"] < 0.5 * errs["ddim"], (N, errs)


def test_dpl_on_a_flow_grid_is_the_x_space_relation_of_bar_coordinates():
    sch = FlowMatch(shift=3.0)
    t = sch.timesteps(12)[1:]  # below σ = 1, where bar coordinates exist
    gv, ge = make_grid(sch, t, prediction="velocity"), make_grid(sch, t, prediction="epsilon")
    i = np.arange(1, gv.N)
    pv, pe = PFamily("dpl").p(gv), PFamily("dpl").p(ge)
    np.testing.assert_allclose(pv[i[1:]], gv.sigma[i[1:] - 1] / gv.sigma[i[1:] + 1], rtol=1e-14)
    # the x_{i+1} weight in x-space, p·s_{i−1}/s_{i+1}, is the same in both coordinate systems
    np.testing.assert_allclose(pv[i[1:]], pe[i[1:]] * ge.alpha[i[1:] - 1] / ge.alpha[i[1:] + 1], rtol=1e-12)
    np.testing.assert_allclose(PFamily("dpl").stiff_ratio(gv)[i[1:]], 1.0, rtol=1e-13)
    np.testing.assert_allclose(PFamily("bdia").p(gv)[i], 1.0)


@pytest.mark.parametrize("grid", sorted(GRIDS))
def test_recommended_on_flows_is_exact_within_budget_and_starts_at_pure_noise(grid):
    sch = GRIDS[grid]
    data = mixture()
    v = AnalyticVelocity(data, sch)
    x0 = data.sample(4, seed=2)
    rng = np.random.default_rng(3)
    for N in sorted({2, 3, 4, 5, 200, *rng.integers(6, 200, 4).tolist()}):
        rec = recommended(sch, N)
        solver = Solver(sch, steps=N, **rec)
        assert solver.grid.sigma[N] == 1.0 and solver.grid.prediction == "velocity"
        f = Count(v)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            x = solver.sample(f, np.random.default_rng(N).normal(size=(4, 4)))
            assert f.n <= N and np.all(np.isfinite(x))
            latent = solver.invert(v, x0)
            assert np.mean((solver.sample(v, latent) - x0) ** 2) <= 1e-20, N


def test_recommended_on_flows_takes_dynamic_shift_grids_and_beats_plain_obelm():
    flux = FlowMatch(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
    data = mixture()
    v = AnalyticVelocity(data, flux)
    x_T = np.random.default_rng(0).normal(size=(128, 4))
    ref = data.rectified_flow(x_T, 1.0, 0.0)
    errs = {}
    for name, kw in {"recommended": recommended(flux, 10), "o-belm": {"method": "o-belm"}}.items():
        solver = Solver(flux, timesteps=flux.timesteps(10, mu=1.15), **kw)
        errs[name] = np.sqrt(np.mean((solver.sample(v, x_T) - ref) ** 2))
    assert errs["recommended"] < errs["o-belm"], errs
    with pytest.raises(ValueError, match="steps=1"):
        recommended(FlowMatch(), 1)
