"""Properties of the analytic Gaussian-mixture backend (backends/analytic.py).

Oracles: the closed forms for one Gaussian, ε* = −σ̄ ∇ log p_σ̄ by torch autograd on an
independently written log-density, ODE reversibility, and preservation of the marginals
p_σ̄ by the probability-flow map (moment and mass checks with tolerances from the
sample size). No numbers are copied from a run.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.analytic import AnalyticEps, GaussianMixture, default_problem
from belm_core.schedules import VE, CosineVP, DiscreteVP, LinearVP

REPO = Path(__file__).resolve().parents[1]

SCHEDULES = {
    "ddpm-scaled-linear": DiscreteVP.scaled_linear(),
    "ddpm-linear": DiscreteVP.linear(),
    "ddpm-cosine": DiscreteVP.cosine(),
    "linear-vp": LinearVP(),
    "cosine-vp": CosineVP(),
    "ve": VE(),
}


def model_times(schedule):
    """A few model times across the schedule's range, as the Python numbers a solver passes."""
    ts = np.linspace(schedule.t_min, schedule.t_max, 4)
    return [schedule.model_time(t) for t in ts]


def torch_log_density(gm: GaussianMixture, x: torch.Tensor, sigma_bar: float) -> torch.Tensor:
    """log Σ_k w_k N(x; μ_k, diag(s_k² + σ̄²)), written independently of the module."""
    K = gm.n_components
    mu = torch.from_numpy(gm.means.reshape(K, -1))
    var = torch.from_numpy(gm.variances.reshape(K, -1)) + sigma_bar**2
    log_w = torch.log(torch.from_numpy(gm.weights))
    diff = x[:, None, :] - mu
    log_n = -0.5 * ((diff**2 / var).sum(-1) + torch.log(2 * math.pi * var).sum(-1))
    return torch.logsumexp(log_w + log_n, dim=1)


# ---------------------------------------------------------------------------------
# One Gaussian: closed forms
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("diagonal", [False, True])
@pytest.mark.parametrize("sigma_bar", [0.0, 1e-3, 0.3, 1.0, 7.0, 1e3])
def test_gaussian_eps_closed_form(diagonal, sigma_bar):
    rng = np.random.default_rng(1)
    mu = rng.standard_normal(5)
    s2 = rng.uniform(0.1, 2.0, size=5) if diagonal else 0.7
    gm = GaussianMixture.gaussian(mu, s2)
    x = rng.standard_normal((8, 5)) * 3
    expected = sigma_bar * (x - mu) / (s2 + sigma_bar**2)
    np.testing.assert_allclose(gm.eps(x, sigma_bar), expected, rtol=1e-14, atol=0)


@pytest.mark.parametrize("a, b", [(10.0, 0.0), (0.0, 10.0), (0.5, 3.0), (80.0, 0.02)])
def test_gaussian_flow_closed_form_solves_the_ode(a, b):
    rng = np.random.default_rng(2)
    mu, s2 = rng.standard_normal(3), rng.uniform(0.05, 1.0, size=3)
    gm = GaussianMixture.gaussian(mu, s2)
    x = rng.standard_normal((6, 3)) * max(a, 1.0)
    y = gm.flow(x, a, b)
    np.testing.assert_allclose(y - mu, np.sqrt((s2 + b**2) / (s2 + a**2)) * (x - mu), rtol=1e-13, atol=1e-13)
    # d/dσ̄ flow(x, a, σ̄) = ε*(flow(x, a, σ̄), σ̄): central difference at an interior σ̄
    sb, d = 0.5 * (a + b) + 0.1, 1e-4
    dy = (gm.flow(x, a, sb + d) - gm.flow(x, a, sb - d)) / (2 * d)
    np.testing.assert_allclose(dy, gm.eps(gm.flow(x, a, sb), sb), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("weights", [None, [0.3, 0.7]])
@pytest.mark.parametrize("a, b", [(150.0, 0.0), (0.0, 20.0), (2.0, 0.1)])
def test_mixture_ode_path_matches_closed_form(weights, a, b):
    """Two identical components run the numerical ODE path but define one Gaussian."""
    rng = np.random.default_rng(3)
    mu, s2 = rng.standard_normal(4), rng.uniform(0.05, 0.5, size=4)
    single = GaussianMixture.gaussian(mu, s2)
    twin = GaussianMixture(np.stack([mu, mu]), np.stack([s2, s2]), weights)
    x = mu + np.sqrt(s2 + a**2) * rng.standard_normal((16, 4))
    np.testing.assert_allclose(twin.eps(x, a), single.eps(x, a), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(twin.flow(x, a, b), single.flow(x, a, b), rtol=0, atol=1e-9)


def test_gaussian_flow_maps_marginal_to_marginal():
    rng = np.random.default_rng(4)
    mu, s2 = np.array([1.0, -2.0]), np.array([0.2, 1.5])
    gm = GaussianMixture.gaussian(mu, s2)
    a, b, n = 6.0, 0.3, 20000
    x = mu + np.sqrt(s2 + a**2) * rng.standard_normal((n, 2))
    y = gm.flow(x, a, b)
    var_b = s2 + b**2
    # sample mean: SE sqrt(v/n); sample variance of a Gaussian: SE v sqrt(2/n)
    assert np.all(np.abs(y.mean(0) - mu) < 5 * np.sqrt(var_b / n))
    assert np.all(np.abs(y.var(0) - var_b) < 5 * var_b * np.sqrt(2 / n))


# ---------------------------------------------------------------------------------
# Mixtures: ε* is the scaled score; the flow is reversible and preserves marginals
# ---------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    K=st.integers(1, 4),
    D=st.integers(1, 5),
    log10_sigma_bar=st.floats(-2.0, 2.0),
)
def test_eps_is_minus_sigma_bar_times_score(seed, K, D, log10_sigma_bar):
    sb = 10.0**log10_sigma_bar
    gm = GaussianMixture.random(event_shape=(D,), n_components=K, seed=seed)
    rng = np.random.default_rng(seed + 1)
    near = gm.sample(12, seed=seed) + sb * rng.standard_normal((12, D))
    far = 30.0 * rng.standard_normal((4, D))
    x = np.concatenate([near, far])
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(torch_log_density(gm, xt, sb).sum(), xt)
    expected = -sb * grad.numpy()
    scale = np.abs(expected).max() + sb / (gm.variances.min() + sb**2)
    np.testing.assert_allclose(gm.eps(x, sb), expected, rtol=1e-9, atol=1e-12 * scale)
    # and log_prob agrees with the independent density
    np.testing.assert_allclose(gm.log_prob(x, sb), torch_log_density(gm, xt, sb).detach().numpy(), rtol=1e-12)


@pytest.mark.parametrize("a, b", [(120.0, 0.0), (0.0, 50.0), (3.0, 0.05), (0.05, 3.0)])
def test_flow_is_reversible(a, b):
    gm = default_problem((4,), seed=1)
    rng = np.random.default_rng(5)
    x = gm.sample(64, seed=2) + a * rng.standard_normal((64, 4))
    back = gm.flow(gm.flow(x, a, b), b, a)
    np.testing.assert_allclose(back, x, rtol=0, atol=1e-8 * max(1.0, a))


def test_flow_direction_and_endpoint_checks():
    gm = GaussianMixture.random((2,), 3, seed=6)
    x = gm.sample(5, seed=0) + 2.0 * np.random.default_rng(0).standard_normal((5, 2))
    np.testing.assert_array_equal(gm.flow(x, 2.0, 2.0), x)
    # composition: a → c equals a → b → c
    np.testing.assert_allclose(gm.flow(gm.flow(x, 2.0, 0.7), 0.7, 0.0), gm.flow(x, 2.0, 0.0), atol=1e-9)


def test_mixture_flow_maps_marginal_to_marginal():
    """Exact samples of p_σ̄₁ (x_0 + σ̄₁ n) flowed to σ̄₂ are samples of p_σ̄₂."""
    gm = GaussianMixture.random((2,), n_components=3, seed=7, spread=2.5, min_var=0.05, max_var=0.2)
    n, a, b = 3000, 5.0, 0.05
    rng = np.random.default_rng(8)
    x = gm.sample(n, seed=9) + a * rng.standard_normal((n, 2))
    y = gm.flow(x, a, b)
    w, mu, var_b = gm.weights, gm.means, gm.variances + b**2
    mean = w @ mu
    second = w @ (var_b + mu**2)
    variance = second - mean**2
    # mean: SE sqrt(var/n); variance: SE sqrt((m4 − var²)/n), m4 estimated from the sample
    assert np.all(np.abs(y.mean(0) - mean) < 5 * np.sqrt(variance / n))
    m4 = ((y - y.mean(0)) ** 4).mean(0)
    assert np.all(np.abs(y.var(0) - variance) < 5 * np.sqrt((m4 - variance**2).clip(min=1e-12) / n))
    # mass of each component (assign by the largest responsibility): binomial SE
    log_n = -0.5 * (((y[:, None, :] - mu) ** 2 / var_b).sum(-1) + np.log(var_b).sum(-1))
    frac = np.bincount(np.argmax(np.log(w) + log_n, axis=1), minlength=3) / n
    assert np.all(np.abs(frac - w) < 5 * np.sqrt(w * (1 - w) / n) + 0.01)


# ---------------------------------------------------------------------------------
# Numerical robustness
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("sigma_bar", [0.0, 1e-4, 1e-3, 1.0, 1e3, 1e6])
def test_far_points_and_extreme_sigma_bar_are_finite(sigma_bar):
    gm = GaussianMixture.random((3,), n_components=4, seed=10)
    rng = np.random.default_rng(11)
    u = rng.standard_normal((20, 3))
    x = 1e3 * u / np.linalg.norm(u, axis=1, keepdims=True)
    e = gm.eps(x, sigma_bar)
    assert np.all(np.isfinite(e))
    # far away one component dominates: ε* is that component's Gaussian ε
    v = gm.variances + sigma_bar**2
    log_n = -0.5 * (((x[:, None, :] - gm.means) ** 2 / v).sum(-1) + np.log(v).sum(-1)) + np.log(gm.weights)
    k = np.argmax(log_n, axis=1)
    second = np.sort(log_n, axis=1)[:, -2]
    dominant = log_n[np.arange(20), k] - second > 50  # other components below e^-50
    expected = sigma_bar * (x - gm.means[k]) / v[k]
    np.testing.assert_allclose(e[dominant], expected[dominant], rtol=1e-12, atol=0)
    assert dominant.sum() >= 10 or sigma_bar >= 1e3


def test_eps_at_sigma_bar_zero_is_zero():
    gm = default_problem((4,))
    assert np.all(gm.eps(gm.sample(10), 0.0) == 0.0)


# ---------------------------------------------------------------------------------
# AnalyticEps: types, dtypes, devices, shapes, schedules
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("event_shape, batch", [((4,), (64,)), ((3, 4, 4), (2, 3)), ((3, 4, 4), ())])
def test_analytic_eps_numpy_and_torch_agree(name, event_shape, batch):
    schedule = SCHEDULES[name]
    gm = GaussianMixture.random(event_shape, n_components=3, seed=12)
    f = AnalyticEps(gm, schedule)
    rng = np.random.default_rng(13)
    for t in model_times(schedule):
        assert isinstance(t, int) == schedule.discrete
        x64 = rng.standard_normal(batch + event_shape) * float(schedule.sigma(t) + schedule.alpha(t))
        ref = gm.eps(x64 / float(schedule.alpha(t)), float(schedule.sigma_bar(t)))
        out = f(x64, t)
        assert type(out) is np.ndarray and out.dtype == np.float64 and out.shape == x64.shape
        np.testing.assert_array_equal(out, ref)

        x32 = x64.astype(np.float32)
        ref32 = gm.eps(x32.astype(np.float64) / float(schedule.alpha(t)), float(schedule.sigma_bar(t)))
        out = f(x32, t)
        assert out.dtype == np.float32 and out.shape == x32.shape
        np.testing.assert_allclose(out, ref32, rtol=1e-6, atol=1e-6 * np.abs(ref32).max())

        for dtype, rtol in [(torch.float64, 0.0), (torch.float32, 1e-6)]:
            xt = torch.from_numpy(x64).to(dtype)
            out = f(xt, t)
            assert isinstance(out, torch.Tensor) and out.dtype == dtype and out.shape == xt.shape
            assert out.device == xt.device
            reft = gm.eps(xt.double().numpy() / float(schedule.alpha(t)), float(schedule.sigma_bar(t)))
            np.testing.assert_allclose(out.double().numpy(), reft, rtol=rtol, atol=rtol * np.abs(reft).max())


def test_analytic_eps_is_deterministic_counts_calls_and_accepts_grad_tensors():
    gm = default_problem((4,))
    f = AnalyticEps(gm, DiscreteVP.scaled_linear())
    x = torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    a, b = f(x, 500), f(x, 500)
    assert torch.equal(a, b) and not a.requires_grad
    assert f.nfe == 2
    f(x.detach().numpy(), np.int64(10))
    f(x, torch.tensor(10))
    assert f.nfe == 4
    f.reset()
    assert f.nfe == 0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_analytic_eps_keeps_cuda_device():
    gm = default_problem((4,))
    f = AnalyticEps(gm, LinearVP())
    x = torch.randn(16, 4, device="cuda", dtype=torch.float16)
    out = f(x, 0.5)
    assert out.device == x.device and out.dtype == torch.float16


def test_import_does_not_import_torch():
    code = "import sys, backends, backends.analytic; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_reference_sample_matches_closed_form(name):
    schedule = SCHEDULES[name]
    mu, s2 = np.array([0.5, -1.0, 2.0]), np.array([0.1, 0.4, 0.9])
    gm = GaussianMixture.gaussian(mu, s2)
    t_T = schedule.model_time(schedule.t_max)
    x_T = np.random.default_rng(14).standard_normal((10, 3)) * float(schedule.sigma(t_T))
    alpha, sb = float(schedule.alpha(t_T)), float(schedule.sigma_bar(t_T))
    expected = mu + np.sqrt(s2 / (s2 + sb**2)) * (x_T / alpha - mu)
    np.testing.assert_allclose(gm.reference_sample(schedule, x_T, t_T), expected, rtol=1e-12, atol=1e-12)


def test_reference_sample_of_a_mixture_lands_near_the_data():
    gm = default_problem((4,), seed=3)
    schedule = DiscreteVP.scaled_linear()
    x_T = np.random.default_rng(15).standard_normal((64, 4))
    x0 = gm.reference_sample(schedule, x_T, 999)
    np.testing.assert_allclose(x0, gm.flow(x_T / float(schedule.alpha(999)), float(schedule.sigma_bar(999)), 0.0))
    # every end point is within a few standard deviations of some component mean
    z2 = ((x0[:, None, :] - gm.means) ** 2 / gm.variances).sum(-1).min(axis=1)
    assert np.all(z2 < 60.0)


# ---------------------------------------------------------------------------------
# Constructors
# ---------------------------------------------------------------------------------
def test_random_and_sample_are_reproducible():
    a = GaussianMixture.random((3, 2), n_components=4, seed=5)
    b = GaussianMixture.random((3, 2), n_components=4, seed=5)
    c = GaussianMixture.random((3, 2), n_components=4, seed=6)
    assert a.event_shape == (3, 2) and a.means.shape == (4, 3, 2)
    np.testing.assert_array_equal(a.means, b.means)
    assert not np.array_equal(a.means, c.means)
    assert np.isclose(a.weights.sum(), 1.0)
    assert np.all((a.variances >= 0.05) & (a.variances <= 0.5))
    np.testing.assert_array_equal(a.sample(7, seed=1), b.sample(7, seed=1))
    n = 20000
    x = a.sample(n, seed=2)
    mean = np.tensordot(a.weights, a.means, 1)
    var = np.tensordot(a.weights, a.variances + a.means**2, 1) - mean**2
    assert x.shape == (n, 3, 2)
    assert np.all(np.abs(x.mean(0) - mean) < 5 * np.sqrt(var / n))


@pytest.mark.parametrize("event_shape", [(1,), (2,), (4,), (3, 4, 4)])
def test_default_problem_is_well_separated(event_shape):
    gm = default_problem(event_shape, seed=0)
    assert gm.event_shape == event_shape and gm.n_components >= 3
    m = gm.means.reshape(gm.n_components, -1)
    dist = np.linalg.norm(m[:, None] - m[None], axis=-1) + np.eye(gm.n_components) * 1e9
    assert dist.min() >= 5 * np.sqrt(gm.variances.max())
    np.testing.assert_array_equal(default_problem(event_shape, seed=0).means, gm.means)


def test_weights_are_normalised_and_isotropic_variances_broadcast():
    gm = GaussianMixture(np.zeros((2, 3)), [0.5, 2.0], [1.0, 3.0])
    np.testing.assert_allclose(gm.weights, [0.25, 0.75])
    np.testing.assert_array_equal(gm.variances, [[0.5] * 3, [2.0] * 3])


# ---------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(means=np.zeros(3), variances=[1.0]), "means"),
        (dict(means=np.zeros((2, 3)), variances=[1.0, 1.0, 1.0]), "variances"),
        (dict(means=np.zeros((2, 3)), variances=np.ones((2, 4))), "variances"),
        (dict(means=np.zeros((2, 3)), variances=[1.0, -0.1]), "variances"),
        (dict(means=np.zeros((2, 3)), variances=[1.0, 0.0]), "variances"),
        (dict(means=np.zeros((2, 3)), variances=[1.0, 1.0], weights=[1.0]), "weights"),
        (dict(means=np.zeros((2, 3)), variances=[1.0, 1.0], weights=[1.0, 0.0]), "weights"),
        (dict(means=np.zeros((2, 3)), variances=[1.0, 1.0], weights=[1.0, -2.0]), "weights"),
        (dict(means=np.full((2, 3), np.nan), variances=[1.0, 1.0]), "means"),
    ],
)
def test_bad_mixture_parameters_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        GaussianMixture(**kwargs)


def test_bad_shapes_and_sigma_bar_raise():
    gm = GaussianMixture.random((3, 4, 4), n_components=2, seed=0)
    f = AnalyticEps(gm, VE())
    with pytest.raises(ValueError, match="x_bar"):
        gm.eps(np.zeros((2, 4, 4, 3)), 1.0)
    with pytest.raises(ValueError, match="x_bar"):
        gm.flow(np.zeros((4, 4)), 1.0, 0.0)
    with pytest.raises(ValueError, match="sigma_bar"):
        gm.eps(np.zeros((3, 4, 4)), -1.0)
    with pytest.raises(ValueError, match="sigma_bar_to"):
        gm.flow(np.zeros((3, 4, 4)), 1.0, float("nan"))
    with pytest.raises(ValueError, match="x"):
        f(np.zeros((2, 3, 4, 5)), 1.0)
    with pytest.raises(ValueError, match="x"):
        f(torch.zeros(2, 48), 1.0)
    with pytest.raises(ValueError, match="t"):
        f(np.zeros((3, 4, 4)), np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="variance"):
        GaussianMixture.gaussian(np.zeros(3), np.ones(2))


def test_component_is_the_component_a_point_was_drawn_near():
    data = GaussianMixture([[-6.0, 0.0], [6.0, 0.0], [0.0, 6.0]], [0.1, 0.2, 0.3], [1, 2, 3])
    rng = np.random.default_rng(0)
    k = rng.integers(0, 3, 50)
    x = data.means[k] + 0.2 * rng.standard_normal((50, 2))
    np.testing.assert_array_equal(data.component(x), k)
    # at a high noise level the heaviest component wins at the origin; the result has the batch shape
    assert data.component(np.zeros((2, 3, 2)), sigma_bar=100.0).shape == (2, 3)
    assert np.all(data.component(np.zeros((4, 2)), sigma_bar=100.0) == 2)
