"""The p-family (belm_core.methods.pfamily), the predictor–corrector start and `recommended`.

Oracles: the family's defining property (exact on constants and straight lines x̄ = a + bσ̄,
for every p), round trips at rounding level, O-BELM's hand-derived p from φ = σ̄², the
empirical order against the high-accuracy ODE solution, and counted model calls.
"""

import subprocess
import sys
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from belm_core import EDICT, OBELM, VE, DiscreteVP, LinearVP, PFamily, Solver, get_method, make_grid, recommended
from belm_core.methods.pfamily import P_RULES
from backends.analytic import default_problem
from helpers import AnalyticEps, Count, empirical_order, error_ratios, held_out_mixture

DISCRETE = {"scaled_linear": DiscreteVP.scaled_linear(), "linear": DiscreteVP.linear(), "cosine": DiscreteVP.cosine()}


class GivenP(PFamily):
    """A member with an arbitrary p per row (the family's general element)."""

    def __init__(self, p_of_row):
        super().__init__("o-belm")
        self.name, self._p = "p-family(given)", p_of_row

    def p(self, grid):
        p = np.full(grid.N + 1, np.nan)
        p[1:-1] = self._p(grid.N - 1)
        return p


def random_grid(seed: int, N: int):
    """A random strictly decreasing LinearVP grid (irregular steps)."""
    rng = np.random.default_rng(seed)
    sch = LinearVP()
    t = np.sort(rng.uniform(sch.t_min, sch.t_max, N))[::-1]
    return sch, t


def members(draw_p=None):
    out = [PFamily(r) for r in P_RULES] + [PFamily("dpl-ob", s=1.5), PFamily(phi=lambda s: s**3)]
    if draw_p is not None:
        out.append(GivenP(draw_p))
    return out


# ----------------------------------------------------------------------------- exactness
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), N=st.integers(2, 25), lo=st.floats(0.05, 1.0), span=st.floats(0.0, 2.0))
@example(seed=9047, N=23, lo=1.0, span=0.0)  # a row with |p_i| ~ 1e4: the old absolute tolerance failed
def test_every_member_is_exact_on_lines_and_round_trips(seed, N, lo, span):
    sch, t = random_grid(seed, N)
    grid = make_grid(sch, t)
    rng = np.random.default_rng(seed + 1)
    draw_p = lambda n: rng.uniform(lo, lo + span, n) * rng.choice([-1.0, 1.0], n)  # noqa: E731 any p ≠ 0
    sb = grid.sigma_bar
    mixture = held_out_mixture((3,), seed=seed % 7)
    eps = AnalyticEps(mixture, sch)
    x0 = mixture.sample(4, seed=seed)
    for m in members(draw_p):
        a, b = m.bar_table(grid)
        i = np.arange(1, N)
        # x̄ = c0 + c1 σ̄ (ε = c1) is reproduced row by row: the family's definition
        c0, c1 = 0.7, -1.3
        lhs = c0 + c1 * sb[i - 1]
        terms = (a[i, 0] * (c0 + c1 * sb[i]), a[i, 1] * (c0 + c1 * sb[i + 1]), b[i, 0] * grid.h[i] * c1)
        rhs = terms[0] + terms[1] + terms[2]
        # rounding of a sum is relative to its terms' size (|p_i| is large where h_{i+1} ≪ h_i)
        size = np.abs(terms[0]) + np.abs(terms[1]) + np.abs(terms[2])
        assert np.all(np.abs(lhs - rhs) <= 1e-13 * (size + 1)), np.max(np.abs(lhs - rhs) / (size + 1))
        assert np.all(a[i, 1] != 0) and np.all(b[i, 1] == 0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            solver = Solver(sch, method=m, timesteps=t, allow_unstable=True, check_finite=False)
            latent = solver.invert(eps, x0)
            rec = solver.sample(eps, latent)
        # rounding, amplified both ways by the parasitic roots −p_i (|p_i| up to 3 here) and by ε's
        # Lipschitz constant (~1/σ̄ near the clean end, docs/math.md §8): far below
        # the O(h) error of an inexact inverse such as DDIM's (~1e-2 on these grids)
        p = np.abs(a[i, 1])
        scale = float(np.prod(np.maximum(p, 1 / p))) * float(np.max(np.abs(latent.states[0])) + 1)
        if scale < 1e6:
            assert np.max(np.abs(rec - x0)) <= 1e-10 * scale * N, m.signature()


def test_members_reproduce_obelm_and_bdia_tables():
    sch = DiscreteVP.scaled_linear()
    grid = make_grid(sch, sch.timesteps(17, "trailing"))
    from belm_core import BDIA

    for rule, ref in (("o-belm", OBELM()), ("bdia", BDIA(1.0))):
        for mine, theirs in zip(PFamily(rule).bar_table(grid), ref.bar_table(grid)):
            np.testing.assert_allclose(mine, theirs, rtol=1e-13, equal_nan=True)


def test_dpl_p_is_the_stiff_bound_and_dpl_ob_switches_at_s():
    sch = DiscreteVP.linear()
    grid = make_grid(sch, sch.timesteps(50, "trailing"))
    q = PFamily("dpl").stiff_ratio(grid)
    np.testing.assert_allclose(q[2:-1], 1.0, rtol=1e-13)  # q_i = p_i σ̄_{i+1}/σ̄_{i−1} = 1 on DPL rows
    p, sb, h = PFamily("dpl-ob").p(grid), grid.sigma_bar, grid.h
    i = np.arange(1, grid.N)
    low = (sb[i] <= 0.3) | (i == 1)
    assert low.any() and (~low).any()
    np.testing.assert_allclose(p[i][low], (h[i] / h[i + 1])[low] ** 2, rtol=1e-13)
    np.testing.assert_allclose(p[i][~low], (sb[i - 1] / sb[i + 1])[~low], rtol=1e-13)


# --------------------------------------------------------------------------- p from φ
def test_p_from_phi_sigma_bar_squared_is_obelm():
    import sympy

    from belm_core.derivation.shapes import shape_p

    shape = shape_p(lambda s: s**2)
    prev, mid, nxt = shape.symbols
    # by hand: R(a, b) = a² − b² − 2b(a − b) = (a − b)², so p = (σ̄_{i−1} − σ̄_i)²/(σ̄_{i+1} − σ̄_i)² = (h_i/h_{i+1})²
    assert sympy.simplify(shape.p - (prev - mid) ** 2 / (nxt - mid) ** 2) == 0
    sch = DiscreteVP.cosine()
    grid = make_grid(sch, sch.timesteps(23, "linspace"))
    for mine, theirs in zip(PFamily(phi=sympy.Symbol("x") ** 2).bar_table(grid), OBELM().bar_table(grid)):
        np.testing.assert_allclose(mine, theirs, rtol=1e-10, equal_nan=True)


def test_p_from_phi_matches_the_remainder_ratio_and_is_exact_on_phi():
    from belm_core.derivation.shapes import shape_p

    c = 0.5
    phi = lambda s: np.sqrt(c**2 + s**2)  # noqa: E731
    dphi = lambda s: s / np.sqrt(c**2 + s**2)  # noqa: E731
    R = lambda a, b: phi(a) - phi(b) - (a - b) * dphi(b)  # noqa: E731
    import sympy

    member = PFamily(phi=lambda s: sympy.sqrt(sympy.Rational(1, 4) + s**2))
    sch = DiscreteVP.scaled_linear()
    grid = make_grid(sch, sch.timesteps(12, "trailing"))
    sb, i = grid.sigma_bar, np.arange(1, 12)
    p = member.p(grid)[i]
    np.testing.assert_allclose(p, R(sb[i - 1], sb[i]) / R(sb[i + 1], sb[i]), rtol=1e-9)
    a, b = member.bar_table(grid)
    rhs = a[i, 0] * phi(sb[i]) + a[i, 1] * phi(sb[i + 1]) + b[i, 0] * grid.h[i] * dphi(sb[i])
    np.testing.assert_allclose(phi(sb[i - 1]), rhs, rtol=1e-9)
    assert shape_p(lambda s: sympy.sqrt(sympy.Rational(1, 4) + s**2)) is shape_p(lambda s: sympy.sqrt(sympy.Rational(1, 4) + s**2))


@pytest.mark.parametrize(
    "phi, error",
    [("s**2", TypeError), (lambda s: 3 * s + 1, ValueError), (lambda s: s**2 + s * __import__("sympy").Symbol("y"), ValueError)],
)
def test_bad_phi_is_refused(phi, error):
    with pytest.raises(error, match="phi"):
        PFamily(phi=phi)


def test_bad_rule_and_s_are_refused():
    with pytest.raises(ValueError, match="rule='dpm'"):
        PFamily("dpm")
    with pytest.raises(ValueError, match="s=-1"):
        PFamily("dpl-ob", s=-1)


def test_importing_and_named_rules_do_not_import_sympy():
    code = (
        "import sys, belm_core\n"
        "from belm_core import Solver, DiscreteVP, recommended\n"
        "s = DiscreteVP.linear(); Solver(s, steps=10, **recommended(s, 10))\n"
        "assert 'sympy' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------ order
def _smooth_timesteps(sch, N):
    """A smooth graded grid: uniform in σ̄^(1/7) (Karras ρ = 7) from t_max to t_min."""
    s0, s1 = float(sch.sigma_bar(sch.t_max)), float(sch.sigma_bar(sch.t_min))
    u = np.linspace(0.0, 1.0, N)
    return sch.t_from_sigma_bar((s0 ** (1 / 7) + u * (s1 ** (1 / 7) - s0 ** (1 / 7))) ** 7)


@pytest.mark.parametrize("member", ["dpl-ob", "phi-cubic"])
@pytest.mark.parametrize("sch", [LinearVP(), VE(0.01, 50.0)], ids=["linear-vp", "ve"])
def test_declared_order_is_measured_on_smooth_grids(member, sch):
    m = get_method(member) if member == "dpl-ob" else PFamily(phi=lambda s: s**3)
    data = held_out_mixture((4,), seed=2024)
    eps = AnalyticEps(data, sch)
    ns, errs = [40, 80, 160], []
    for N in ns:
        solver = Solver(sch, method=m, timesteps=_smooth_timesteps(sch, N))
        x_T = np.random.default_rng(0).normal(size=(16, 4)) * float(sch.sigma(solver.timesteps[0]))
        ref = data.reference_sample(sch, x_T, solver.timesteps[0])
        errs.append(np.sqrt(np.mean((solver.sample(eps, x_T) - ref) ** 2)))
    assert abs(empirical_order(ns, errs) - m.order) < 0.25


def test_dpl_ob_is_second_order_on_the_recommended_grid():
    sch = DiscreteVP.linear()
    data = held_out_mixture((4,), seed=77)
    eps = AnalyticEps(data, sch)
    ns, errs = [50, 100, 200], []
    x_T = np.random.default_rng(3).normal(size=(32, 4))
    ref = data.reference_sample(sch, x_T, 999)
    for N in ns:
        solver = Solver(sch, steps=N, method="dpl-ob-shift-last", spacing="trailing", startup="pc")
        errs.append(np.sqrt(np.mean((solver.sample(eps, x_T) - ref) ** 2)))
    assert abs(empirical_order(ns, errs) - 2) < 0.3


# ------------------------------------------------------------------------- PC start
def test_pc_start_uses_n_calls_beats_the_ddim_start_and_never_touches_inversion():
    sch = DiscreteVP.scaled_linear()
    data = held_out_mixture((4,), seed=5)
    eps = AnalyticEps(data, sch)
    x_T = np.random.default_rng(0).normal(size=(64, 4))
    pc = Solver(sch, steps=10, method="dpl-ob", spacing="trailing", startup="pc")
    ddim = Solver(sch, steps=10, method="dpl-ob", spacing="trailing", startup="ddim")
    # the first step alone (x_N → x_{N−1}) against the ODE solution
    sb = pc.grid.sigma_bar
    ref1 = data.flow(x_T / pc.grid.alpha[-1], sb[-1], sb[-2]) * pc.grid.alpha[-2]
    first = {}
    for name, s in (("pc", pc), ("ddim", ddim)):
        f = Count(eps)
        seen = []
        s.sample(f, x_T, callback=lambda info: seen.append(info["x"]) if info["step"] == 1 else None)
        assert f.n == 10
        first[name] = np.sqrt(np.mean((seen[0] - ref1) ** 2))
    assert first["pc"] < 0.5 * first["ddim"]
    x0 = data.sample(8, seed=1)
    lat_pc, lat_ddim = pc.invert(eps, x0), ddim.invert(eps, x0)
    assert lat_pc.method == lat_ddim.method == "dpl-ob"
    for u, v in zip(lat_pc.states, lat_ddim.states):
        np.testing.assert_array_equal(u, v)
    np.testing.assert_array_equal(pc.sample(eps, lat_pc), ddim.sample(eps, lat_pc))
    assert ddim.sample(eps, lat_pc) is not None and np.mean((pc.sample(eps, lat_ddim) - x0) ** 2) < 1e-26


def test_pc_start_works_for_obelm_and_belm3_and_refuses_others():
    sch = DiscreteVP.linear()
    data = held_out_mixture((4,), seed=6)
    eps = AnalyticEps(data, sch)
    for method in ("o-belm", "belm3", "bdia"):
        f = Count(eps)
        x = Solver(sch, steps=8, method=method, spacing="trailing", startup="pc").sample(f, np.ones((2, 4)))
        assert f.n == 8 and np.all(np.isfinite(x))
    for method in ("ddim", EDICT()):
        with pytest.raises(ValueError, match="startup='pc'"):
            Solver(sch, steps=8, method=method, startup="pc")
    with pytest.raises(ValueError, match="startup='rk'"):
        Solver(sch, steps=8, startup="rk")


# ---------------------------------------------------------------------- recommended
@pytest.mark.parametrize("kind", sorted(DISCRETE))
def test_recommended_is_exact_within_budget_and_starts_at_t_max(kind):
    sch = DISCRETE[kind]
    data = held_out_mixture((3,), seed=9)
    eps = AnalyticEps(data, sch)
    x0 = data.sample(4, seed=2)
    rng = np.random.default_rng(len(kind))
    for N in sorted({2, 3, 4, 5, 200, *rng.integers(6, 200, 5).tolist()}):
        solver = Solver(sch, steps=N, **recommended(sch, N))
        assert int(solver.timesteps[0]) == sch.num_train_timesteps - 1
        f = Count(eps)
        x = solver.sample(f, np.random.default_rng(N).normal(size=(4, 3)))
        assert f.n <= N and np.all(np.isfinite(x))
        latent = solver.invert(eps, x0)
        assert np.mean((solver.sample(eps, latent) - x0) ** 2) <= 1e-20, N


@pytest.mark.parametrize("kind", ["scaled_linear", "linear"])
def test_recommended_tail_grid_and_last_row_beat_the_trailing_configuration(kind):
    """The recommendation's "trailing-tail" grid with the last row shifted after a DPL row
    (docs/math.md §24) against the same rows on diffusers' "trailing" grid with the σ̄_1 > s rule
    (the recommendation before it): closer to the ODE solution at NFE 5 and 10 on held-out mixtures."""
    sch = DISCRETE[kind]
    cases = [(held_out_mixture((4,), seed=100 + seed), np.random.default_rng(seed).normal(size=(256, 4))) for seed in range(6)]
    for N in (5, 10):
        new = dict(recommended(sch, N), steps=N)
        before = dict(new, method="dpl-ob-traj", spacing="trailing")
        solver = Solver(sch, **new)
        assert solver.timesteps[-1] < Solver(sch, **before).timesteps[-1] and solver._plan.shift.time[1] is not None
        ratios = np.array(error_ratios(sch, cases, new, before))
        assert (ratios < 1).sum() >= 5 and np.exp(np.mean(np.log(ratios))) < 0.85, (N, ratios)


def test_recommended_long_start_on_linear_at_5_to_20_steps_only():
    """`spacing_for`: "long-start" on DDPM's linear schedule at 5–20 steps (docs/math.md §25), where the
    start-up is "lookahead-log"; "trailing-tail" below and above, and on scaled-linear and cosine."""
    from belm_core.recommend import spacing_for

    for kind, sch in DISCRETE.items():
        for N in range(2, 60):
            want = "long-start" if kind == "linear" and 5 <= N <= 20 else "trailing-tail"
            assert spacing_for(sch, N) == recommended(sch, N)["spacing"] == want, (kind, N)
            if want == "long-start":
                assert recommended(sch, N)["startup"] == "lookahead-log"
    with pytest.raises(ValueError, match="steps=2.5"):
        spacing_for(DISCRETE["linear"], 2.5)
    with pytest.raises(TypeError, match="DiscreteVP"):
        spacing_for(LinearVP(), 10)


@pytest.mark.parametrize("family", ["2-d separated", "4-d"])
def test_recommended_long_start_beats_trailing_tail_on_linear(family):
    """The longer first step against the same sampler on "trailing-tail", linear schedule, NFE 5 and 6:
    closer to the ODE solution on held-out mixtures of both kinds (separated 2-d `default_problem`s and
    the tests' own 4-d mixtures)."""
    sch = DISCRETE["linear"]
    problems = [default_problem((2,), seed=7100 + seed) if family == "2-d separated" else held_out_mixture((4,), seed=100 + seed)
                for seed in range(6)]
    cases = [(data, np.random.default_rng(seed).normal(size=(256, data.sample(1, seed=0).shape[1])))
             for seed, data in enumerate(problems)]
    for N in (5, 6):
        new = dict(recommended(sch, N), steps=N)
        before = dict(new, spacing="trailing-tail")
        t_new, t_before = Solver(sch, **new).timesteps, Solver(sch, **before).timesteps
        assert t_new[1] < t_before[1] and t_new[0] == t_before[0] == 999
        ratios = np.array(error_ratios(sch, cases, new, before))
        assert (ratios < 1).sum() >= 5 and np.exp(np.mean(np.log(ratios))) < 0.85, (N, ratios)


def test_recommended_refuses_what_it_has_no_answer_for():
    sch = DiscreteVP.scaled_linear()
    with pytest.raises(ValueError, match="steps=1"):
        recommended(sch, 1)
    with pytest.raises(ValueError, match="steps=2.5"):
        recommended(sch, 2.5)
    with pytest.raises(ValueError, match="LinearVP"):
        recommended(LinearVP(), 10)
    with pytest.raises(TypeError, match="schedule"):
        recommended("sd", 10)
