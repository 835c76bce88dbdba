"""Shared test helpers: problems, grids and error measures (not a test module)."""

from __future__ import annotations

import numpy as np

from backends.analytic import AnalyticEps, GaussianMixture, empirical_order


def held_out_mixture(event_shape=(4,), seed=1234) -> GaussianMixture:
    """A mixture the library's defaults never see (own seed, uneven weights)."""
    rng = np.random.default_rng(seed)
    K = 4
    means = rng.normal(scale=1.5, size=(K, *event_shape))
    variances = rng.uniform(0.05, 0.4, size=(K,))
    weights = rng.uniform(0.5, 2.0, size=K)
    return GaussianMixture(means, variances, weights)


def irregular_timesteps(schedule, N: int, seed: int = 0, jitter: float = 0.3) -> np.ndarray:
    """N model times, noisiest first, uniform in log-SNR but each interior node jittered
    by up to ±jitter of a step: an irregular grid whose steps still shrink like 1/N."""
    rng = np.random.default_rng(seed * 100003 + N)
    j = np.arange(N, dtype=np.float64)
    u = (j + jitter * rng.uniform(-1, 1, N) * ((j > 0) & (j < N - 1))) / (N - 1)
    lam_noisy, lam_clean = schedule.log_snr(schedule.t_max), schedule.log_snr(schedule.t_min)
    lam = lam_noisy + u * (lam_clean - lam_noisy)
    return schedule.t_from_sigma_bar(np.exp(-lam))


def random_schedule_grid(seed: int, N: int, discrete: bool, discrete_schedule=None):
    """(schedule, N model times noisiest first, a held-out 3-D mixture, its ε, 4 data points)
    for round-trip property tests: distinct training timesteps of `discrete_schedule`
    (default DDPM linear) or uniform times of a continuous LinearVP."""
    from belm_core import DiscreteVP, LinearVP

    rng = np.random.default_rng(seed)
    if discrete:
        sch = discrete_schedule or DiscreteVP.linear()
        t = np.sort(rng.choice(np.arange(1, 1000), N, replace=False))[::-1]
    else:
        sch = LinearVP()
        t = np.sort(rng.uniform(sch.t_min, sch.t_max, N))[::-1]
    data = held_out_mixture((3,), seed=seed % 5)
    return sch, t, data, AnalyticEps(data, sch), data.sample(4, seed=seed)


def rmse(a, b) -> float:
    """Root-mean-square of a − b over every entry."""
    return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


def assert_exact_p_family_round_trip(solver, latent, rec, x0, N: int) -> None:
    """rec == x0 to rounding, scaled by the p-family's round-off amplification Π max(|p|, 1/|p|)
    and the latent's size; grids whose amplification exceeds 1e6 are not judged."""
    p = np.abs(solver.method.p(solver.grid)[1:-1])
    scale = float(np.prod(np.maximum(p, 1 / p))) * float(np.max(np.abs(latent.states[0])) + 1)
    if scale < 1e6:
        assert np.max(np.abs(rec - x0)) <= 1e-10 * scale * N


def partial_round_trip(method, seed: int, N: int, discrete: bool, until_frac: float):
    """Invert `random_schedule_grid`'s points (scaled-linear when discrete) with `method` up to the
    index `until_frac` of the way through its `until_range`, then sample back from that latent:
    (solver, latent, reconstruction, x0, until), for the p-family round-trip property tests."""
    import warnings

    from belm_core import DiscreteVP, Solver

    sch, t, data, eps, x0 = random_schedule_grid(seed, N, discrete, DiscreteVP.scaled_linear())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        solver = Solver(sch, method=method, timesteps=t, allow_unstable=True, check_finite=False)
        low, high = solver.until_range
        until = int(round(low + until_frac * (high - low)))
        latent = solver.invert(eps, x0, until=until)
        rec = solver.sample(eps, latent)
    return solver, latent, rec, x0, until


def latent_distances(sch, solver_kwargs, steps=(20, 50), seed: int = 21) -> dict:
    """{N: RMSE of the inverted latent's x_N against the exact ODE inversion of 64 points of a
    held-out mixture to t = T − 1}, for `Solver(sch, steps=N, **solver_kwargs(N))`."""
    from belm_core import Solver

    data = held_out_mixture((4,), seed=seed)
    eps = AnalyticEps(data, sch)
    x0 = data.sample(64, seed=5)
    exact = float(sch.alpha(999)) * data.flow(x0, 0.0, float(sch.sigma_bar(999)))
    return {N: float(np.sqrt(np.mean((Solver(sch, steps=N, **solver_kwargs(N)).invert(eps, x0).states[0] - exact) ** 2)))
            for N in steps}


def error_ratios(sch, cases, new: dict, old: dict) -> list:
    """RMSE(Solver(sch, **new)) / RMSE(Solver(sch, **old)) against the ODE solution from x_T at model
    time T − 1, for each (mixture, x_T) in `cases`."""
    from belm_core import Solver

    ratios = []
    for data, x_T in cases:
        eps = AnalyticEps(data, sch)
        ref = data.reference_sample(sch, x_T, sch.num_train_timesteps - 1)
        ratios.append(rmse(Solver(sch, **new).sample(eps, x_T), ref) / rmse(Solver(sch, **old).sample(eps, x_T), ref))
    return ratios


def rows_of(markdown: str) -> dict[str, list[str]]:
    """{first cell: other cells} of every body row of the markdown tables in `markdown`."""
    out = {}
    for line in markdown.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            out.setdefault(cells[0], cells[1:])
    return out


def mse(a, b) -> float:
    a = np.asarray(a.detach().cpu().double() if hasattr(a, "detach") else a, dtype=np.float64)
    b = np.asarray(b.detach().cpu().double() if hasattr(b, "detach") else b, dtype=np.float64)
    return float(np.mean((a - b) ** 2))


class Count:
    """A model function wrapper that counts its calls (`n`)."""

    def __init__(self, f):
        self.f, self.n = f, 0

    def __call__(self, x, t):
        self.n += 1
        return self.f(x, t)


class Spy:
    """A model function wrapper that records a NumPy copy of each (x, t) it is called with (`calls`)."""

    def __init__(self, f):
        self.f, self.calls = f, []

    def __call__(self, x, t):
        self.calls.append((np.array(x, copy=True), t))
        return self.f(x, t)


__all__ = ["AnalyticEps", "Count", "Spy", "held_out_mixture", "random_schedule_grid", "assert_exact_p_family_round_trip", "irregular_timesteps", "mse", "empirical_order", "rows_of", "latent_distances", "error_ratios"]


def separated_error_ratios(sch, N: int, make_solver, new: str, old: str, seeds, first_problem_seed: int) -> list:
    """RMSE(new start-up) / RMSE(old) against the ODE solution from x_T, 256 points on each
    `default_problem((4,), seed=first_problem_seed + k)` (x_T seed k); `make_solver(sch, N, startup)`."""
    from backends.analytic import default_problem

    ratios = []
    for k in seeds:
        data = default_problem((4,), seed=first_problem_seed + k)
        eps = AnalyticEps(data, sch)
        x_T = np.random.default_rng(k).normal(size=(256, 4)) * float(sch.sigma(sch.num_train_timesteps - 1))
        g = make_solver(sch, N, old).grid
        ref = data.flow(x_T / g.alpha[N], g.sigma_bar[N], 0.0)
        err = {st: np.sqrt(np.mean((make_solver(sch, N, st).sample(eps, x_T) - ref) ** 2)) for st in (new, old)}
        ratios.append(err[new] / err[old])
    return ratios

