"""Symbolic solve for k-step BELM coefficients: `derive` and the `Derivation` it returns (docs/math.md §3–4).

One step (bar form, positive steps h_i = σ̄_i − σ̄_{i−1}, docs/math.md §3):

    x̄_{i−1} = Σ_{j=1..k} a_{i,j} x̄_{i−1+j} + Σ_{j=1..k−1} b_{i,j} h_{i−1+j} ε(x_{i−1+j}).

The unknowns solve the Taylor conditions R_0 = … = R_p = 0 of `conditions` (linear in
a, b; coefficients polynomial in the positions s_j = h_i + … + h_{i−1+j}). A method
meeting R_0 … R_p has local error R_{p+1} x̄^{(p+1)} + … = O(H^{p+1}), H = s_k, and
global order p if zero-stable. All 2k−1 conditions R_0 … R_{2k−2} fix all 2k−1
unknowns: the LTE-optimal method of order 2k−2. That solve is Hermite interpolation
(Σ a_j p(s_j) + Σ b_j h_{i−1+j} p'(s_j) = p(0) for every polynomial p of degree
≤ 2k−2), so it has a closed form, and no k-step BELM reaches order 2k−1.

`fix=` pins coefficients (numbers or expressions in free symbols) and the rest are
solved from the longest prefix R_0 … R_p that can still hold for all positive h:
fixing trades order for stability (docs/math.md §5). Two known members, as checks:

* ``derive(2)`` is O-BELM (paper Prop. 4);
* ``derive(2, fix={"a2": gamma})`` is BDIA in bar form (docs/math.md §6, with γ' = γ):
  a = (1 − γ, γ), b_1 = −(h_i + γ h_{i+1}) / h_i, order 1.
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass, field
from fractions import Fraction
from numbers import Integral, Real
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import sympy
from sympy.polys.matrices import DomainMatrix

from ..stability import Stability
from .conditions import _check_k, _condition_row, _positions, coefficient_names, step_symbols
from .report import format_derivation
from .stability import equal_step_stability, roots_with_multiplicity

__all__ = ["Derivation", "derive"]


def _exact_number(name: str, value: Any) -> sympy.Expr:
    """A parameter value as an exact sympy number (floats exactly, in binary)."""
    if isinstance(value, sympy.Basic):
        return value
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"parameter {name!r} must be a real number; got {value!r}")
    if isinstance(value, Integral):
        return sympy.Integer(int(value))
    if not math.isfinite(float(value)):
        raise ValueError(f"parameter {name!r} must be finite; got {value!r}")
    fr = Fraction(float(value))
    return sympy.Rational(fr.numerator, fr.denominator)


@dataclass(frozen=True, eq=False)
class Derivation:
    """k-step BELM coefficients as rational functions of the step sizes.

    k: number of steps; symbols: (h_i, h_{i+1}, …, h_{i+k−1}), positive sympy symbols;
    a: (a_{i,1}, …, a_{i,k}); b: (b_{i,1}, …, b_{i,k−1}) — sympy expressions in `symbols`
    and `parameters`, for the step
        x̄_{i−1} = Σ_j a_{i,j} x̄_{i−1+j} + Σ_{j<k} b_{i,j} h_{i−1+j} ε(x_{i−1+j});
    order: p, the highest Taylor order matched (R_0 … R_p = 0 for all h): global
    convergence order; lte_order = p + 1 (local error O(H^{p+1}), H = h_i + … + h_{i+k−1});
    parameters: free user symbols (from `fix`), sorted by name;
    fix: the pinned coefficients as (name, value) pairs.
    """

    k: int
    symbols: tuple[sympy.Symbol, ...]
    a: tuple[sympy.Expr, ...]
    b: tuple[sympy.Expr, ...]
    order: int
    parameters: tuple[sympy.Symbol, ...]
    fix: tuple[tuple[str, sympy.Expr], ...] = ()
    _fn: Callable[..., Any] = field(default=None, repr=False, compare=False)  # type: ignore[assignment]
    _equal: tuple[tuple[sympy.Expr, ...], tuple[sympy.Expr, ...]] | None = field(default=None, repr=False, compare=False)

    # -- derived facts ----------------------------------------------------------------

    @property
    def lte_order(self) -> int:
        """p + 1: the local truncation error is O(H^{p+1})."""
        return self.order + 1

    @property
    def parameter_names(self) -> tuple[str, ...]:
        return tuple(str(p) for p in self.parameters)

    # -- numeric evaluation -------------------------------------------------------------

    def _param_values(self, params: Mapping[str, Any], *, exact: bool) -> list[Any]:
        names = self.parameter_names
        missing = [n for n in names if n not in params]
        unknown = sorted(set(params) - set(names))
        if missing:
            raise ValueError(
                f"missing value for parameter(s) {', '.join(missing)} (this derivation's free "
                f"parameters are {list(names)}); pass them as keyword arguments, e.g. {missing[0]}=0.5"
            )
        if unknown:
            raise ValueError(f"unknown parameter(s) {', '.join(unknown)}; valid parameters: {list(names)}")
        if exact:
            return [_exact_number(n, params[n]) for n in names]
        return [np.asarray(params[n], dtype=np.float64) for n in names]

    def evaluate(self, h: Any, **params: Any) -> tuple[np.ndarray, np.ndarray]:
        """(a, b) in float64 for step sizes h of shape (n, k) — column j is h_{i+j} — or (k,).

        Returns a of shape (n, k) and b of shape (n, k−1) (or (k,), (k−1,) for 1-D h).
        `params` give values (scalars or arrays broadcastable to (n,)) to `parameters`.
        All h must be finite and > 0 (docs/math.md §4: negative h silently gives O(1) errors).
        """
        h = np.asarray(h, dtype=np.float64)
        if h.ndim == 0 or h.shape[-1] != self.k:
            raise ValueError(f"h must have shape (n, {self.k}) or ({self.k},); got shape {h.shape}")
        if not np.all(np.isfinite(h)) or not np.all(h > 0):
            raise ValueError("h must be finite and > 0 (h_i = σ̄_i − σ̄_{i−1} with σ̄ decreasing along sampling)")
        values = self._param_values(params, exact=False)
        lead = h.shape[:-1]
        cols = [h[..., j] for j in range(self.k)]
        out = self._fn(*cols, *values)
        a = np.empty(lead + (self.k,), dtype=np.float64)
        b = np.empty(lead + (self.k - 1,), dtype=np.float64)
        for j in range(self.k):
            a[..., j] = out[j]
        for j in range(self.k - 1):
            b[..., j] = out[self.k + j]
        return a, b

    # -- equal steps ------------------------------------------------------------------

    def _equal_exact(self, params: Mapping[str, Any]) -> tuple[list[sympy.Expr], list[sympy.Expr]]:
        if self._equal is None:
            raise ValueError(
                "the coefficients depend on the overall step size (a `fix` value contains h), "
                "so equal-step coefficients are not constants"
            )
        values = dict(zip(self.parameters, self._param_values(params, exact=True)))
        ea, eb = self._equal
        return [sympy.nsimplify(x.subs(values)) if values else x for x in ea], [
            sympy.nsimplify(x.subs(values)) if values else x for x in eb
        ]

    def equal_step_coefficients(self, **params: Any) -> tuple[np.ndarray, np.ndarray]:
        """(a, b) as float64 arrays for h_i = h_{i+1} = … (they do not depend on h)."""
        ea, eb = self._equal_exact(params)
        return np.array([float(x) for x in ea]), np.array([float(x) for x in eb])

    def error_constant(self, **params: Any) -> float:
        """C_{p+1} = R_{p+1} at equal unit steps: local error ≈ C_{p+1} h^{p+1} x̄^{(p+1)}."""
        ea, eb = self._equal_exact(params)
        m = self.order + 1
        c = sum(ea[j] * sympy.Integer(j + 1) ** m for j in range(self.k)) / sympy.factorial(m)
        c += sum(eb[j] * sympy.Integer(j + 1) ** (m - 1) for j in range(self.k - 1)) / sympy.factorial(m - 1)
        return float(c)

    def roots(self, **params: Any) -> np.ndarray:
        """Roots of ρ(ζ) = ζ^k − a_1 ζ^{k−1} − … − a_k for equal steps (complex array)."""
        ea, _ = self._equal_exact(params)
        return roots_with_multiplicity(ea)[0]

    def stability(self, **params: Any) -> Stability:
        """Zero-stability of the sampling and the inverse direction for equal steps."""
        ea, _ = self._equal_exact(params)
        return equal_step_stability(ea)

    def __str__(self) -> str:
        return format_derivation(self)


# ------------------------------------------------------------------------------------
# solving
# ------------------------------------------------------------------------------------


def _normalise_fix(k: int, fix: Mapping[str, Any] | None) -> tuple[tuple[str, sympy.Expr], ...]:
    if fix is None:
        return ()
    if not isinstance(fix, Mapping):
        raise ValueError(f"fix must be a mapping from coefficient names to values; got {type(fix).__name__}")
    valid = coefficient_names(k)
    items = []
    for name, value in fix.items():
        if name not in valid:
            raise ValueError(f"fix: unknown coefficient {name!r} for k={k}; valid names: {', '.join(valid)}")
        if isinstance(value, bool):
            raise ValueError(f"fix[{name!r}] must be a number or sympy expression; got {value!r}")
        if isinstance(value, (float, np.floating)):
            if not math.isfinite(float(value)):
                raise ValueError(f"fix[{name!r}] must be finite; got {value!r}")
            # a float is read as the decimal it prints as (0.1 -> 1/10)
            expr = sympy.Rational(repr(float(value)))
        else:
            try:
                expr = sympy.sympify(value, strict=True)
            except (sympy.SympifyError, TypeError) as exc:
                raise ValueError(f"fix[{name!r}] must be a number or sympy expression; got {value!r}") from exc
            if not isinstance(expr, sympy.Expr):
                raise ValueError(f"fix[{name!r}] must be a scalar expression; got {value!r}")
        if expr.has(sympy.zoo, sympy.oo, -sympy.oo, sympy.nan):
            raise ValueError(f"fix[{name!r}] must be finite; got {value!r}")
        items.append((name, expr))
    return tuple(sorted(items))


def _hermite(k: int, s: Sequence[sympy.Symbol]) -> list[tuple[sympy.Expr, dict]]:
    """LTE-optimal (a_1..a_k, b_1..b_{k−1}) in the positions s: Hermite weights at 0.

    Nodes s_1..s_{k−1} carry value and slope, s_k only a value. With
    q_j(x) = Π_{l<k, l≠j} (x − s_l)² (x − s_k):
        a_j = q_j(0)/q_j(s_j) · (1 + s_j q_j'(s_j)/q_j(s_j)),   b_j h_{i−1+j} = −s_j q_j(0)/q_j(s_j),
        a_k = Π_{l<k} (s_l/(s_l − s_k))².
    Each coefficient is returned factored, as (constant, {factor: exponent}), because
    expanding and re-factoring these rational functions is what makes k ≥ 5 slow.
    """
    hh = [s[0]] + [s[j] - s[j - 1] for j in range(1, k)]
    last = s[k - 1]
    a, b = [], []
    for j in range(k - 1):
        others = [l for l in range(k - 1) if l != j]
        # q_j(0)/q_j(s_j) = −Π s_l² · s_k / (Π (s_j − s_l)² · (s_j − s_k))
        base: list[tuple[sympy.Expr, int]] = [(s[l], 2) for l in others] + [(last, 1)]
        base += [(s[j] - s[l], -2) for l in others] + [(s[j] - last, -1)]
        # 1 + s_j q_j'/q_j = N_j / D_j with D_j = Π_{l≠j} (s_j − s_l) (s_k once)
        diffs = [(s[j] - s[l], 2) for l in others] + [(s[j] - last, 1)]
        d_j = sympy.Mul(*[d for d, _ in diffs])
        n_j = sympy.expand(d_j + s[j] * sum(w * sympy.cancel(d_j / d) for d, w in diffs))
        cn, fn = sympy.factor_list(n_j)
        a.append((-cn, base + [(f, e) for f, e in fn] + [(d, -1) for d, _ in diffs]))
        b.append((sympy.Integer(1), base + [(s[j], 1), (hh[j], -1)]))
    a.append((sympy.Integer(1), [(s[l], 2) for l in range(k - 1)] + [(s[l] - last, -2) for l in range(k - 1)]))
    return a + b


def _assemble(coeff: sympy.Expr, factors: Sequence[tuple[sympy.Expr, int]], k: int) -> sympy.Expr:
    """coeff · Π f^e with each factor f (in s) rewritten in h, expanded, sign-normalised."""
    h = step_symbols(k)
    s = _positions(k)
    merged: dict[sympy.Expr, int] = {}
    coeff = sympy.sympify(coeff)
    for f, e in factors:
        g = _s_to_h(sympy.sympify(f), s, h)
        if g.is_number:
            coeff *= g**e
            continue
        if g.could_extract_minus_sign():
            g = sympy.expand(-g)
            coeff *= sympy.Integer(-1) ** e
        merged[g] = merged.get(g, 0) + e
    return coeff * sympy.Mul(*[g**e for g, e in merged.items() if e != 0])


def _s_to_h(f: sympy.Expr, s: Sequence[sympy.Symbol], h: Sequence[sympy.Symbol]) -> sympy.Expr:
    """Polynomial f(s_1..s_k) rewritten in h (s_j = h_i + … + h_{i−1+j}), expanded.

    Done in a sparse polynomial ring: sympy's Expr.expand is the bottleneck otherwise.
    """
    if not f.has(*s):
        return sympy.expand(f)
    poly = sympy.Poly(f, *s)
    ring, *hr = sympy.ring(list(h), poly.domain)
    pos = [sum(hr[: j + 1], ring.zero) for j in range(len(s))]
    out = ring.zero
    for monom, c in poly.terms():
        term = ring.ground_new(poly.domain.convert(c))
        for p, e in zip(pos, monom):
            if e:
                term *= p**e
        out += term
    return sympy.expand(out.as_expr())


def _factor_list_s(f: sympy.Expr, s: Sequence[sympy.Symbol]) -> tuple[sympy.Expr, list[tuple[sympy.Expr, int]]]:
    """Factor a polynomial in s cheaply: (constant, [(factor, exponent)]).

    Full multivariate factorisation costs tens of seconds for k = 5, and the factors
    that matter are the linear forms s_j and s_j − s_l (sums of consecutive h's).
    Those are divided out by trial division; a small cofactor is factored fully, a
    large one is kept expanded.
    """
    if not f.has(*s):
        return f, []
    P = sympy.Poly(f, *s)
    factors: list[tuple[sympy.Expr, int]] = []
    k = len(s)
    candidates = list(s) + [s[j] - s[l] for j in range(k) for l in range(j)]
    for lin in candidates:
        L = sympy.Poly(lin, *s, domain=P.domain)
        e = 0
        while P.total_degree() >= 1:
            q, r = P.div(L)
            if not r.is_zero:
                break
            P, e = q, e + 1
        if e:
            factors.append((lin, e))
    if P.total_degree() < 1:
        return P.as_expr(), factors
    if len(P.terms()) <= 40:
        c, rest = sympy.factor_list(P.as_expr(), *s)
        return c, factors + list(rest)
    c, P = P.primitive() if P.domain.is_ZZ or P.domain.is_QQ else (sympy.Integer(1), P)
    return sympy.sympify(c), factors + [(P.as_expr(), 1)]


def _factored(expr: sympy.Expr, s: Sequence[sympy.Symbol]) -> tuple[sympy.Expr, list[tuple[sympy.Expr, int]]]:
    """A rational function in s as (constant, [(factor, exponent)])."""
    num, den = sympy.fraction(sympy.cancel(sympy.together(expr)))
    return _factored_nd(num, den, s)


def _factored_nd(num: sympy.Expr, den: sympy.Expr, s: Sequence[sympy.Symbol]) -> tuple[sympy.Expr, list[tuple[sympy.Expr, int]]]:
    """num/den (in lowest terms) as (constant, [(factor, exponent)])."""
    cn, fn = _factor_list_s(num, s)
    cd, fd = _factor_list_s(den, s)
    return cn / cd, [(f, e) for f, e in fn] + [(f, -e) for f, e in fd]


def _generic_rank(rows: list[list[sympy.Expr]], syms: Sequence[sympy.Symbol], rng: random.Random) -> int:
    """Rank over the rational-function field, from two random rational points (Schwartz–Zippel)."""
    if not rows or not rows[0]:
        return 0
    best = 0
    for _ in range(2):
        point = {x: sympy.Rational(rng.randint(1, 10**9), rng.randint(1, 10**6)) for x in syms}
        mat = sympy.Matrix([[sympy.sympify(e).subs(point) for e in row] for row in rows])
        best = max(best, DomainMatrix.from_Matrix(mat).rank())
    return best


def _solve_fixed(
    k: int, fix: tuple[tuple[str, sympy.Expr], ...]
) -> tuple[list[tuple[sympy.Expr, list[tuple[sympy.Expr, int]]]], int]:
    """Solve the unknowns not in `fix` from the longest satisfiable prefix R_0 … R_p."""
    names = coefficient_names(k)
    fixed = dict(fix)
    h = step_symbols(k)
    s = _positions(k)
    # fix values are written in h; rewrite them in s (h_{i−1+j} = s_j − s_{j−1})
    h_in_s = {h[0]: s[0], **{h[j]: s[j] - s[j - 1] for j in range(1, k)}}
    fixed_s = {n: v.subs(h_in_s) for n, v in fixed.items()}
    unknown = [n for n in names if n not in fixed]
    free = sorted(set().union(*[v.free_symbols for v in fixed_s.values()]) | set(s), key=str)
    rng = random.Random(20241010)
    rows: list[list[sympy.Expr]] = []
    rhs: list[sympy.Expr] = []
    order = -1
    for m in range(2 * k):  # R_{2k−1} can never hold (module docstring)
        coeffs, const = _condition_row(m, s, k)
        by_name = dict(zip(names, coeffs))
        row = [by_name[n] for n in unknown]
        r = const - sum((by_name[n] * fixed_s[n] for n in fixed_s), sympy.Integer(0))
        trial_rows, trial_rhs = rows + [row], rhs + [r]
        rank_a = _generic_rank(trial_rows, free, rng) if unknown else 0
        rank_ab = _generic_rank([rw + [c] for rw, c in zip(trial_rows, trial_rhs)], free, rng)
        if rank_ab > rank_a:
            break
        rows, rhs, order = trial_rows, trial_rhs, m
    if order < 1:
        what = "R_0 (Σ_j a_j = 1)" if order < 0 else "R_1 (Σ_j a_j s_j + Σ_j b_j h_{i−1+j} = 0)"
        raise ValueError(
            f"fix={dict(fix)!r} makes the method inconsistent: the Taylor condition {what} "
            "cannot be met, so the step would not converge. Pin fewer coefficients or other values."
        )
    if not unknown:
        return [_factored(fixed_s[n], s) for n in names], order
    rank = _generic_rank(rows, free, rng)
    if rank < len(unknown):
        raise ValueError(
            f"fix={dict(fix)!r} leaves the coefficients {unknown} underdetermined: Taylor orders "
            f"0..{order} give only {rank} independent equations for {len(unknown)} unknowns. "
            "Pin more coefficients."
        )
    # pick `rank` independent rows of the prefix (greedily, at a random point) and solve
    chosen: list[int] = []
    for idx in range(len(rows)):
        if _generic_rank([rows[i] for i in chosen + [idx]], free, rng) > len(chosen):
            chosen.append(idx)
    A = DomainMatrix.from_Matrix(sympy.Matrix([rows[i] for i in chosen]))
    B = DomainMatrix.from_Matrix(sympy.Matrix([rhs[i] for i in chosen]))
    dom = A.domain.unify(B.domain)
    A, B = A.convert_to(dom).to_field(), B.convert_to(dom).to_field()
    x = A.lu_solve(B)
    sol = {}
    for i, n in enumerate(unknown):
        el = x[i, 0].element
        if hasattr(el, "numer") and hasattr(el, "denom"):  # lowest terms already
            sol[n] = _factored_nd(el.numer.as_expr(), el.denom.as_expr(), s)
        else:
            sol[n] = _factored(A.domain.to_sympy(el), s)
    return [_factored(fixed_s[n], s) if n in fixed_s else sol[n] for n in names], order


@functools.lru_cache(maxsize=64)
def _derive_cached(k: int, fix: tuple[tuple[str, sympy.Expr], ...]) -> Derivation:
    h = step_symbols(k)
    s = _positions(k)
    if fix:
        coeffs_s, order = _solve_fixed(k, fix)
        coeffs = [_assemble(c, f, k) for c, f in coeffs_s]
    else:
        coeffs, order = [_assemble(c, f, k) for c, f in _hermite(k, s)], 2 * k - 2
    a, b = tuple(coeffs[:k]), tuple(coeffs[k:])
    params = tuple(sorted(set().union(*[c.free_symbols for c in coeffs]) - set(h), key=str))
    # equal steps: every h -> one symbol H; the coefficients are homogeneous of degree 0
    # in h (R_m scales as H^m) unless a fix value itself involves h.
    big_h = sympy.Dummy("H", positive=True)
    eq = [sympy.cancel(c.subs({x: big_h for x in h})) for c in coeffs]
    equal = None if any(big_h in e.free_symbols for e in eq) else (tuple(eq[:k]), tuple(eq[k:]))
    fn = sympy.lambdify([*h, *params], list(coeffs), modules="numpy", cse=True, dummify=True)
    return Derivation(
        k=k, symbols=h, a=a, b=b, order=order, parameters=params, fix=fix, _fn=fn, _equal=equal
    )


def derive(k: int, *, fix: Mapping[str, sympy.Expr | float] | None = None) -> Derivation:
    """Coefficients of the k-step BELM (bar form, docs/math.md §3–4), derived with sympy.

    k: number of steps, int ≥ 2 (k = 1 would be DDIM, not a bidirectional explicit
    method; see `ValueError`).
    fix: optional mapping from coefficient names "a1".."ak", "b1".."b{k−1}" to numbers
    or sympy expressions (which may contain free symbols such as sympy.Symbol("c"), and
    the step symbols of `step_symbols(k)`). Floats are read as the decimal they print
    as. The other coefficients are solved from the longest prefix R_0, R_1, …, R_p of
    Taylor conditions that can hold for all positive h (and all parameter values);
    p is the resulting `order`. Without `fix` all 2k−1 coefficients are free and the
    method is LTE-optimal, p = 2k − 2.

    Raises ValueError for a bad k, unknown fix keys, a fix that makes even R_0 or R_1
    unsatisfiable (an inconsistent method), or one that leaves unknowns undetermined.
    Results are cached per (k, fix): derive(3) is derive(3).

    Cost (first call; cached afterwards): LTE-optimal k = 2..5 in 0.05–0.4 s (closed
    Hermite form), k = 6 ≈ 1 s, k = 7 ≈ 3.5 s; with `fix` a generic linear solve,
    ≈ 0.2 s (k = 3), 1 s (k = 4), 8 s (k = 5, one coefficient pinned).
    """
    k = _check_k(k)
    return _derive_cached(k, _normalise_fix(k, fix))

