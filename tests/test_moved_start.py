"""The moved-read start-up (startup="pc-shift-moved", belm_core.methods.pc_start, docs/math.md §22):
"pc-shift" whose read, reused by row N−1, is moved to the corrected state with a per-sample gain.

Oracles: on isotropic Gaussian data (x̂0 linear in x̄) the moved read is the read at the
corrected state, which "pc-shift"'s is not; the gain against its defining identity; the state,
the calls, the latents and the round trip untouched; every sample of a batch on its own; NumPy
and torch alike; mixtures closer to the ODE solution than with "pc-shift"; `recommended`'s choice.
"""

import numpy as np
import pytest

from belm_core import DiscreteVP, Solver, recommended
from belm_core.methods.pc_start import gaussian_gain
from belm_core.solver import STARTUPS, _Evaluator
from backends.analytic import GaussianMixture, default_problem
from helpers import AnalyticEps, Count, separated_error_ratios

SL = DiscreteVP.scaled_linear()


def solver(sch, N, startup="pc-shift-moved"):
    return Solver(sch, steps=N, method="dpl-ob-traj", spacing="trailing", startup=startup)


def start(s, eps, x_T):
    """The start-up's carry (x_{N−1}, x_N; ε_eff) and the evaluator it used."""
    ev = _Evaluator(s, eps, "sample", 1.0)
    ev.step = 1
    carry = s.method.start(s._plan, np.array(x_T, dtype=np.float64), s.grid.N)
    return STARTUPS[s.startup](s._plan, carry, ev), ev


@pytest.mark.parametrize("N", [3, 5, 8, 20])
def test_on_gaussian_data_the_reused_read_is_the_read_at_the_corrected_state(N):
    data = GaussianMixture([[1.5, -2.0, 0.5, 3.0]], [4.0])  # N(μ, 4 I): x̂0 = μ + J (x̄ − μ)
    eps = AnalyticEps(data, SL)
    x_T = np.random.default_rng(N).normal(size=(6, 4)) * float(SL.sigma(999))
    gap = {}
    for startup in ("pc-shift-moved", "pc-shift"):
        s = solver(SL, N, startup)
        out, ev = start(s, eps, x_T)
        fresh = s._plan.shift.evaluate(ev, out.xs[0], N - 1)  # row N−1's own read at x_{N−1}
        gap[startup] = np.abs(out.eps[0] - fresh).max() / np.abs(fresh).max()
    assert gap["pc-shift-moved"] < 1e-11, gap
    assert gap["pc-shift"] > 1e-7 and gap["pc-shift"] > 1e4 * gap["pc-shift-moved"], gap


def test_the_gain_recovers_the_variance_of_gaussian_reads():
    rng = np.random.default_rng(3)
    mu, v = rng.normal(size=(1, 5)), np.array([[0.3], [2.0], [7.5]])  # three samples, three variances
    d_a, d_b = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
    x0_a, x0_b = mu + v * d_a, mu + v * d_b  # x̂0 − μ = v d at both reads
    for level in (0.5, 3.0):
        np.testing.assert_allclose(gaussian_gain(x0_a, d_a, x0_b, d_b, level), v / (v + level**2), rtol=1e-12)
    # no information (d_a = d_b) or a negative fit gives no move
    assert np.all(gaussian_gain(x0_a, d_a, x0_b, d_a, 1.0) == 0.0)
    assert np.all(gaussian_gain(x0_a, d_a, mu - v * d_b, -d_b + 2 * d_a, 1.0) >= 0.0)


def test_only_the_reused_read_moves_and_inversion_is_untouched():
    data = default_problem((4,), seed=2)
    eps = AnalyticEps(data, SL)
    x_T = np.random.default_rng(0).normal(size=(8, 4)) * float(SL.sigma(999))
    moved, ev = start(solver(SL, 6), eps, x_T)
    plain, _ = start(solver(SL, 6, "pc-shift"), eps, x_T)
    assert np.array_equal(moved.xs[0], plain.xs[0]) and np.array_equal(moved.xs[1], plain.xs[1])
    assert np.abs(moved.eps[0] - plain.eps[0]).max() > 1e-6
    x0 = data.sample(16, seed=4)
    for N in (2, 5, 50):
        a, b = solver(SL, N), solver(SL, N, "pc-shift")
        f = Count(eps)
        a.sample(f, x_T)
        assert f.n == N
        la, lb = a.invert(eps, x0), b.invert(eps, x0)
        assert all(np.array_equal(p, q) for p, q in zip(la.states, lb.states))
        assert np.mean((a.sample(eps, la) - x0) ** 2) <= 1e-20


def test_each_sample_of_a_batch_gets_its_own_gain():
    data = default_problem((3,), seed=5)
    eps = AnalyticEps(data, SL)
    s = solver(SL, 5)
    x_T = np.random.default_rng(1).normal(size=(5, 3)) * float(SL.sigma(999))
    batch = s.sample(eps, x_T)
    alone = np.stack([s.sample(eps, x_T[j : j + 1])[0] for j in range(5)])
    np.testing.assert_allclose(batch, alone, rtol=0, atol=1e-13)
    np.testing.assert_allclose(s.sample(eps, x_T[2]), batch[2], rtol=0, atol=1e-13)  # one unbatched sample


def test_torch_states_give_the_numpy_result():
    torch = pytest.importorskip("torch")
    data = default_problem((4,), seed=6)
    eps = AnalyticEps(data, SL)

    def eps_t(x, t):
        return torch.from_numpy(eps(x.numpy(), t))

    x_T = np.random.default_rng(2).normal(size=(7, 4)) * float(SL.sigma(999))
    s = solver(SL, 5)
    np.testing.assert_allclose(s.sample(eps_t, torch.from_numpy(x_T)).numpy(), s.sample(eps, x_T), rtol=0, atol=1e-12)


def test_mixtures_land_closer_to_the_ode_solution_than_with_pc_shift():
    ratios = separated_error_ratios(SL, 5, solver, "pc-shift-moved", "pc-shift", range(6), 60)
    assert sum(r < 1 for r in ratios) >= 4 and float(np.exp(np.mean(np.log(ratios)))) < 0.97, ratios


def test_recommended_uses_it_on_scaled_linear_and_it_needs_a_shifted_method():
    assert recommended(SL, 5)["startup"] == "pc-shift-moved"
    assert recommended(DiscreteVP.linear(), 5)["startup"] == "lookahead-log"
    with pytest.raises(ValueError, match="startup='pc-shift-moved'"):
        Solver(SL, steps=5, method="o-belm", startup="pc-shift-moved")
