"""Properties of belm_core.derivation: closed forms, Taylor conditions, convergence order, stability.

Oracles are independent of the code under test: the paper's closed form (Prop. 4),
hand-derived equal-step numbers (docs/math.md §4–5), the Taylor conditions re-evaluated
numerically, and the local error of one step on exact solutions (exp, sin).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from belm_core.derivation import BEST_STABLE_C3, derive, format_derivation, stable_family, taylor_residuals

C = sympy.Symbol("c")
HSET = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _relative_residuals(a, b, h, orders):
    """R_m with the steps rescaled to H = s_k = 1, divided by the size of the terms of R_m."""
    h = np.asarray(h, float) / np.sum(h, axis=-1, keepdims=True)  # coefficients are scale-free
    s = np.cumsum(h, axis=-1)
    res = taylor_residuals(a, b, h, orders)
    scale = []
    for m in orders:
        t = np.sum(np.abs(a) * s**m, axis=-1) / math.factorial(m)
        if m >= 1:
            t = t + np.sum(np.abs(b) * h[..., :-1] * s[..., :-1] ** (m - 1), axis=-1) / math.factorial(m - 1)
        scale.append(np.maximum(t, 1.0))
    return res / np.stack(scale, axis=-1)


steps = st.floats(min_value=0.2, max_value=5.0, allow_nan=False, allow_infinity=False)


# -- closed forms -------------------------------------------------------------------------


def test_k2_is_the_papers_o_belm():
    d = derive(2)
    h0, h1 = d.symbols
    expected_a = ((h1**2 - h0**2) / h1**2, h0**2 / h1**2)
    expected_b = (-(h0 + h1) / h1,)
    for got, want in zip(d.a + d.b, expected_a + expected_b):
        assert sympy.simplify(got - want) == 0
    assert d.order == 2 and d.lte_order == 3
    assert d.parameters == ()
    np.testing.assert_allclose(d.equal_step_coefficients()[0], [0.0, 1.0], atol=1e-15)
    np.testing.assert_allclose(d.equal_step_coefficients()[1], [-2.0], atol=1e-15)
    assert d.stability().both


def test_k3_lte_optimal_is_unstable():
    d = derive(3)
    a, b = d.equal_step_coefficients()
    np.testing.assert_allclose(a, [-9, 9, 1], atol=1e-12)
    np.testing.assert_allclose(b, [-6, -6], atol=1e-12)
    assert d.order == 4 and d.lte_order == 5
    stab = d.stability()
    assert not stab.sampling and not stab.inverse and not stab.both
    roots = d.roots()
    assert np.min(np.abs(roots - (-5 - 2 * math.sqrt(6)))) < 1e-9  # ≈ −9.899
    assert np.min(np.abs(roots - (-5 + 2 * math.sqrt(6)))) < 1e-9
    assert np.min(np.abs(roots - 1)) < 1e-12
    text = format_derivation(d)
    assert "UNSTABLE" in text and "9.89897" in text and "order 4" in text


def test_bdia_is_the_family_member_with_a2_fixed():
    gamma = sympy.Symbol("gamma")
    d = derive(2, fix={"a2": gamma})
    h0, h1 = d.symbols
    assert d.order == 1 and d.parameters == (gamma,)
    assert sympy.simplify(d.a[0] - (1 - gamma)) == 0
    assert sympy.simplify(d.b[0] + (h0 + gamma * h1) / h0) == 0  # docs/math.md §6 in bar form


@pytest.mark.parametrize("k", [2, 3, 4])
def test_lte_optimal_orders(k):
    d = derive(k)
    assert d.order == 2 * k - 2
    assert len(d.symbols) == k and all(s.is_positive for s in d.symbols)
    assert len(d.a) == k and len(d.b) == k - 1


# -- Taylor conditions on random grids ------------------------------------------------------


@HSET
@given(k=st.sampled_from([2, 3, 4]), data=st.data())
def test_taylor_conditions_hold_up_to_order_and_fail_next(k, data):
    h = np.array(data.draw(st.lists(steps, min_size=k, max_size=k)))
    d = derive(k)
    a, b = d.evaluate(h)
    rel = _relative_residuals(a, b, h, list(range(d.order + 2)))
    assert np.all(np.abs(rel[: d.order + 1]) <= 1e-9), rel
    # the next order fails by exactly the Hermite remainder: with
    # ω(x) = Π_{l<k} (x − s_l)² (x − s_k), R_{2k−1} = −ω(0)/(2k−1)! = s_k Π_{l<k} s_l² / (2k−1)!
    s = np.cumsum(h)
    remainder = s[-1] * np.prod(s[:-1] ** 2) / math.factorial(2 * k - 1)
    r_next = taylor_residuals(a, b, h, [2 * k - 1])[0]
    assert r_next == pytest.approx(remainder, rel=1e-6)


@HSET
@given(h=st.lists(steps, min_size=3, max_size=3), c=st.floats(-1.99, 1.99))
def test_stable_family_taylor_conditions(h, c):
    d = stable_family(3)
    h = np.array(h)
    a, b = d.evaluate(h, c=c)
    np.testing.assert_allclose(a, [c + 1, -(c + 1), 1], rtol=0, atol=1e-15)
    rel = _relative_residuals(a, b, h, [0, 1, 2, 3])
    assert np.all(np.abs(rel[:3]) <= 1e-9)
    # R_3 is linear in c and vanishes near c = −10 (equal steps: exactly there), not in (−2, 2)
    assert abs(rel[3]) > 1e-6


# -- empirical order on exact solutions -------------------------------------------------------


def _one_step_error(d, h, x, dx, sigma0, params):
    a, b = d.evaluate(h, **params)
    s = np.cumsum(h)
    pred = np.sum(a * x(sigma0 + s)) + np.sum(b * h[:-1] * dx(sigma0 + s[:-1]))
    return abs(pred - x(sigma0))


@pytest.mark.parametrize(
    "name, make, params, scales",
    [
        ("o-belm", lambda: derive(2), {}, 5),
        ("lte-optimal k=3", lambda: derive(3), {}, 5),
        ("lte-optimal k=4", lambda: derive(4), {}, 4),
        ("stable k=3", lambda: stable_family(3), {"c": 0.3}, 5),
        ("stable k=3 best", lambda: stable_family(3, c=BEST_STABLE_C3), {}, 5),
        ("stable k=4", lambda: stable_family(4), {"c": -0.5}, 5),
        ("bdia", lambda: derive(2, fix={"a2": 0.7}), {}, 5),
    ],
)
@pytest.mark.parametrize("fn", ["exp", "sin"])
def test_local_error_shrinks_like_h_to_the_lte_order(name, make, params, scales, fn):
    d = make()
    x, dx = (np.exp, np.exp) if fn == "exp" else (np.sin, np.cos)
    rng = np.random.default_rng(1234)
    h0 = rng.uniform(0.5, 1.5, size=d.k) * (0.4 / d.k)
    factors = 2.0 ** -np.arange(scales)
    errs = np.array([_one_step_error(d, h0 * f, x, dx, 0.3, params) for f in factors])
    slope = np.polyfit(np.log(factors), np.log(errs), 1)[0]
    assert abs(slope - d.lte_order) < 0.35, (name, slope, errs)


# -- stability --------------------------------------------------------------------------------


@pytest.mark.parametrize("c", [-1.99, -1.5, BEST_STABLE_C3, -1.0, 0.0, 0.7, 1.99])
def test_stable_family_roots_on_unit_circle_and_simple(c):
    d = stable_family(3)
    assert d.order == 2 and d.parameters == (C,)
    stab = d.stability(c=c)
    assert stab.sampling and stab.inverse and stab.both
    np.testing.assert_allclose(np.abs(stab.roots), 1.0, atol=1e-12)
    assert np.all(stab.multiplicities == 1)
    gaps = np.abs(stab.roots[:, None] - stab.roots[None, :]) + np.eye(3)
    assert gaps.min() > 1e-6
    np.testing.assert_allclose(np.sort_complex(stab.inverse_roots), np.sort_complex(np.conj(stab.roots)), atol=1e-12)
    # equal steps: b_1 = b_2 = c/2 − 1 (docs/math.md §5)
    _, b = d.equal_step_coefficients(c=c)
    np.testing.assert_allclose(b, [c / 2 - 1] * 2, atol=1e-14)


def test_stable_family_symbolic_equal_steps():
    d = stable_family(3)
    h = sympy.Symbol("H", positive=True)
    for bj in d.b:
        assert sympy.simplify(bj.subs({s: h for s in d.symbols}) - (C / 2 - 1)) == 0
    # first unmatched order: C_3 = (c + 10)/12, zero only at the unstable c = −10
    for c in (-1.5, 0.0, 1.5):
        assert d.error_constant(c=c) == pytest.approx((c + 10) / 12, abs=1e-14)


def test_boundary_c_is_not_stable_both_ways():
    d = stable_family(3)
    stab = d.stability(c=-2.0)  # ρ = (ζ−1)(ζ+1)²: double root on the circle
    assert not stab.sampling and not stab.inverse
    assert sorted(stab.multiplicities.tolist()) == [1, 2, 2]
    assert not d.stability(c=2.0).sampling  # triple root at 1
    with pytest.raises(ValueError, match="c"):
        stable_family(3, c=2.0)
    with pytest.raises(ValueError, match="c"):
        stable_family(3, c=-2.5)


def test_stable_family_k4_is_order_3_and_stable_both_ways():
    d = stable_family(4)
    assert d.order == 3
    assert d.stability(c=0.5).both


def test_zero_a_k_has_no_inverse():
    d = derive(3, fix={"a3": 0})  # a two-step method written as k = 3
    stab = d.stability()
    assert not stab.inverse
    assert np.any(np.isinf(stab.inverse_roots))


def _propagation_bound_k3(c):
    """Γ(c) = cos²(θ/4) / (sin(θ/2) sin θ), c = 2 cos θ: sup_n |γ_n| for ρ = (ζ−1)(ζ² − cζ + 1).

    γ_n, the coefficients of 1/((1 − z)(1 − cz + z²)), are the recurrence's response to a
    unit local error (see BEST_STABLE_C3's docstring); the next test checks the closed
    form against the recurrence itself.
    """
    theta = math.acos(c / 2.0)
    return math.cos(theta / 4) ** 2 / (math.sin(theta / 2) * math.sin(theta))


def test_best_stable_c3_minimises_propagated_error():
    def objective(c):
        return _propagation_bound_k3(c) * abs(stable_family(3).error_constant(c=c))

    best = objective(BEST_STABLE_C3)
    for delta in (0.05, 0.01, 1e-3):
        assert objective(BEST_STABLE_C3 - delta) > best
        assert objective(BEST_STABLE_C3 + delta) > best
    # raw |C_3| alone has no interior minimiser: it increases with c
    cs = np.linspace(-1.99, 1.99, 41)
    consts = [stable_family(3).error_constant(c=float(c)) for c in cs]
    assert np.all(np.diff(consts) > 0)


@pytest.mark.parametrize("c", [BEST_STABLE_C3, -1.5, 0.3])
def test_propagation_bound_matches_the_recurrence(c):
    # γ_n from the derived equal-step a's, run as the recurrence γ_n = Σ_j a_j γ_{n−j}
    a, _ = stable_family(3).equal_step_coefficients(c=c)
    g = [1.0, a[0], a[0] ** 2 + a[1]]
    for n in range(3, 60000):
        g.append(a[0] * g[-1] + a[1] * g[-2] + a[2] * g[-3])
    assert max(abs(v) for v in g) == pytest.approx(_propagation_bound_k3(c), rel=1e-3)
    assert _propagation_bound_k3(-1.0) == pytest.approx(1.0, abs=1e-12)


# -- evaluate -----------------------------------------------------------------------------------


@HSET
@given(k=st.sampled_from([2, 3, 4]), n=st.integers(1, 20), seed=st.integers(0, 2**31 - 1))
def test_grid_evaluation_matches_rows(k, n, seed):
    d = derive(k)
    h = np.random.default_rng(seed).uniform(0.01, 2.0, size=(n, k))
    a, b = d.evaluate(h)
    assert a.shape == (n, k) and b.shape == (n, k - 1)
    assert a.dtype == np.float64 and b.dtype == np.float64
    for r in range(n):
        ar, br = d.evaluate(h[r])
        assert ar.shape == (k,) and br.shape == (k - 1,)
        # same formula; SIMD vs scalar numpy kernels may differ in the last bit
        np.testing.assert_allclose(ar, a[r], rtol=1e-13, atol=0)
        np.testing.assert_allclose(br, b[r], rtol=1e-13, atol=0)


def test_evaluate_is_fast_and_compiles_once(monkeypatch):
    d = stable_family(3)
    d.evaluate(np.ones(3), c=0.0)

    def boom(*args, **kwargs):
        raise AssertionError("lambdify called per evaluation")

    monkeypatch.setattr(sympy, "lambdify", boom)
    h = np.random.default_rng(0).uniform(0.1, 1.0, size=(1000, 3))
    for _ in range(10):
        a, b = derive(4).evaluate(np.random.default_rng(1).uniform(0.1, 1.0, size=(1000, 4)))
        a, b = d.evaluate(h, c=0.25)
    assert a.shape == (1000, 3) and np.all(a[:, 2] == 1.0)


def test_constant_coefficients_broadcast():
    d = stable_family(3, c=0.5)
    a, b = d.evaluate(np.full((5, 3), 0.1))
    np.testing.assert_allclose(a, np.tile([1.5, -1.5, 1.0], (5, 1)))
    np.testing.assert_allclose(b, np.full((5, 2), 0.5 / 2 - 1))


# -- bad input --------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [0, 1, -3, 2.0, "3", None, True])
def test_bad_k(k):
    with pytest.raises(ValueError, match="k"):
        derive(k)


@pytest.mark.parametrize("key", ["a9", "z1", "b3", "a0"])
def test_unknown_fix_key(key):
    with pytest.raises(ValueError, match=key):
        derive(3, fix={key: 1})


def test_inconsistent_fix():
    with pytest.raises(ValueError, match="fix"):
        derive(3, fix={"a1": 1, "a2": 1, "a3": 1})  # Σ a_j = 3: R_0 fails
    with pytest.raises(ValueError, match="fix"):
        derive(3, fix={"a1": C, "a2": 0, "a3": 0})  # R_0 only at c = 1
    with pytest.raises(ValueError, match="fix"):
        derive(2, fix={"a1": 0, "a2": 1, "b1": -1})  # R_1 fails


def test_missing_and_unknown_params():
    d = stable_family(3)
    with pytest.raises(ValueError, match="c"):
        d.evaluate(np.ones(3))
    with pytest.raises(ValueError, match="gamma"):
        d.evaluate(np.ones(3), c=0.0, gamma=1.0)
    with pytest.raises(ValueError, match="c"):
        d.stability()
    with pytest.raises(ValueError, match="c"):
        d.equal_step_coefficients()


@pytest.mark.parametrize("h", [np.ones(2), np.ones((4, 4)), np.array([1.0, -1.0, 1.0]), np.array([1.0, np.nan, 1.0])])
def test_bad_h(h):
    with pytest.raises(ValueError, match="h"):
        derive(3).evaluate(h)


# -- caching and printing ---------------------------------------------------------------------------


def test_cache_returns_same_object():
    assert derive(3) is derive(3)
    assert derive(2, fix={"a2": C}) is derive(2, fix={"a2": C})
    first = derive(4)
    assert derive(4) is first


def test_format_stable_family():
    d = stable_family(3)
    text = format_derivation(d)
    assert "c" in text and "order 2" in text
    text = format_derivation(d, c=BEST_STABLE_C3)
    assert "sampling: stable" in text and "inverse:  stable" in text
    assert "UNSTABLE" not in text
    assert str(derive(2)).count("\n  a_{i,") == 2


# -- the shared Stability verdict (belm_core.stability, no sympy) ------------------------------


def test_stability_fills_reciprocal_roots_and_multiplicities():
    from belm_core.stability import Stability

    s = Stability(sampling=True, inverse=False, roots=np.array([1.0, -0.5, 0.0]))
    np.testing.assert_array_equal(s.inverse_roots, [1.0, -2.0, np.inf])
    np.testing.assert_array_equal(s.multiplicities, [1, 1, 1])
    assert not s.both
    with pytest.raises(TypeError, match="sampling"):
        Stability(sampling="yes", inverse=True, roots=np.array([1.0]))
    with pytest.raises(ValueError, match="multiplicities"):
        Stability(sampling=True, inverse=True, roots=np.array([1.0, -1.0]), multiplicities=np.array([1]))


@pytest.mark.parametrize(
    "roots, sampling, inverse",
    [
        ([1.0, -1.0], True, True),  # O-BELM: ρ = (ζ − 1)(ζ + 1)
        ([1.0, -0.5], True, False),  # BDIA γ = 0.5: the inverse grows like 2^n
        ([1.0, -2.0], False, True),
        ([1.0, -1.0, -1.0], False, False),  # double root on the circle: linear growth both ways
        ([1.0, 0.0], True, False),  # a_k = 0: no inverse
    ],
)
def test_stability_from_roots_verdicts(roots, sampling, inverse):
    from belm_core.stability import Stability

    s = Stability.from_roots(np.array(roots))
    assert (s.sampling, s.inverse, s.both) == (sampling, inverse, sampling and inverse)


def test_stability_from_numeric_roots_sees_a_split_triple_root():
    from belm_core.stability import Stability

    # np.roots splits the triple root of (ζ + 1)³ by ~1e-5; it must not pass as three simple roots
    roots = np.roots(np.poly([-1.0, -1.0, -1.0, 1.0]))
    assert np.abs(roots[:, None] - roots[None, :]).max() > 1e-9  # really split
    s = Stability.from_roots(roots)
    assert not s.sampling and not s.inverse
    assert sorted(s.multiplicities.tolist()) == [1, 3, 3, 3]


@pytest.mark.parametrize("c", [-1.5, BEST_STABLE_C3, 0.7])
def test_numeric_and_exact_stability_agree(c):
    from belm_core.methods import BELM
    from belm_core.stability import Stability

    exact = stable_family(3).stability(c=c)
    numeric = Stability.from_roots(np.roots([1.0, *(-stable_family(3).equal_step_coefficients(c=c)[0])]))
    assert exact.both and numeric.both
    method = BELM.stable(c=c).stability()
    assert isinstance(method, Stability) and method.both
