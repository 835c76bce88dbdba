"""The p of a 2-step p-family member from a shape φ(σ̄) (docs/math.md §12).

Every row of the one-parameter family

    x̄_{i−1} = (1 − p_i) x̄_i + p_i x̄_{i+1} − (h_i + p_i h_{i+1}) ε(x_i, t_i)

is exact on x̄ = 1 and x̄ = σ̄ (where ε = dx̄/dσ̄). Asking it to be exact on one more
solution x̄ = φ(σ̄) (ε = φ′(σ̄)) fixes p_i. Here the three conditions

    1        = A_1 + A_2
    σ̄_{i−1}  = A_1 σ̄_i + A_2 σ̄_{i+1} + B
    φ(σ̄_{i−1}) = A_1 φ(σ̄_i) + A_2 φ(σ̄_{i+1}) + B φ′(σ̄_i)

are solved with sympy for (A_1, A_2, B) and A_2 is returned as p. It equals

    p_i = R_φ(σ̄_{i−1}, σ̄_i) / R_φ(σ̄_{i+1}, σ̄_i),   R_φ(a, b) = φ(a) − φ(b) − (a − b) φ′(b),

the ratio of φ's remainders after its tangent at σ̄_i. φ = σ̄² gives R = (a − b)², so
p_i = (h_i/h_{i+1})²: O-BELM. The result is lambdified once per φ and evaluated in
float64 on a grid's σ̄ arrays.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import sympy

__all__ = ["ShapeP", "shape_p", "SIGMA_BAR"]

#: the symbol a φ given as a callable receives
SIGMA_BAR = sympy.Symbol("sigma_bar", positive=True)
_PREV, _MID, _NEXT = sympy.symbols("sigma_bar_prev sigma_bar_mid sigma_bar_next", positive=True)


@dataclass(frozen=True, eq=False)
class ShapeP:
    """p_i of the member exact on φ, as a function of (σ̄_{i−1}, σ̄_i, σ̄_{i+1}).

    phi: φ as a sympy expression in `SIGMA_BAR`; p: sympy expression in the symbols
    `symbols` = (σ̄_{i−1}, σ̄_i, σ̄_{i+1}).
    """

    phi: sympy.Expr
    p: sympy.Expr
    symbols: tuple[sympy.Symbol, sympy.Symbol, sympy.Symbol] = (_PREV, _MID, _NEXT)
    _fn: Callable[..., Any] = field(default=None, repr=False)  # type: ignore[assignment]

    def evaluate(self, sigma_bar_prev: Any, sigma_bar_mid: Any, sigma_bar_next: Any) -> np.ndarray:
        """p in float64 for arrays of (σ̄_{i−1}, σ̄_i, σ̄_{i+1})."""
        args = [np.asarray(v, dtype=np.float64) for v in (sigma_bar_prev, sigma_bar_mid, sigma_bar_next)]
        return np.broadcast_to(np.asarray(self._fn(*args), dtype=np.float64), np.broadcast(*args).shape).copy()


def _as_phi(phi: Any) -> sympy.Expr:
    """φ as an expression in SIGMA_BAR from an expression in one symbol or a callable."""
    if callable(phi) and not isinstance(phi, sympy.Basic):
        expr = phi(SIGMA_BAR)
    else:
        expr = phi
    if isinstance(expr, str) or not isinstance(expr, sympy.Expr):
        raise TypeError(
            f"phi={phi!r} must be a sympy expression in one symbol (σ̄) or a callable taking a sympy symbol, "
            "e.g. lambda s: sympy.sqrt(s**2 + 1); strings are not parsed"
        )
    free = sorted(expr.free_symbols, key=str)
    if len(free) > 1:
        raise ValueError(f"phi={expr} must depend on one symbol (σ̄) only; it has {[str(s) for s in free]}")
    if free and free[0] != SIGMA_BAR:
        expr = expr.subs(free[0], SIGMA_BAR)
    if sympy.simplify(sympy.diff(expr, SIGMA_BAR, 2)) == 0:
        raise ValueError(
            f"phi={expr} is a straight line in σ̄: every member is already exact on it, so it fixes no p "
            "(choose a φ with φ″ ≠ 0, e.g. σ̄**2 for O-BELM)"
        )
    return expr


@functools.lru_cache(maxsize=64)
def _solve(phi: sympy.Expr) -> ShapeP:
    A1, A2, B = sympy.symbols("A1 A2 B")
    at = {s: phi.subs(SIGMA_BAR, s) for s in (_PREV, _MID, _NEXT)}
    dphi_mid = sympy.diff(phi, SIGMA_BAR).subs(SIGMA_BAR, _MID)
    equations = [
        sympy.Eq(1, A1 + A2),
        sympy.Eq(_PREV, A1 * _MID + A2 * _NEXT + B),
        sympy.Eq(at[_PREV], A1 * at[_MID] + A2 * at[_NEXT] + B * dphi_mid),
    ]
    solution = sympy.solve(equations, [A1, A2, B], dict=True)
    if len(solution) != 1:
        raise ValueError(f"phi={phi}: the exactness conditions have no unique solution")
    p = sympy.factor(sympy.simplify(solution[0][A2]))
    fn = sympy.lambdify((_PREV, _MID, _NEXT), p, modules="numpy")
    return ShapeP(phi=phi, p=p, _fn=fn)


def shape_p(phi: Any) -> ShapeP:
    """The p-family member exact on x̄ = φ(σ̄) (module docstring); derived once per φ and cached."""
    return _solve(_as_phi(phi))
