"""Zero-stability of a derived BELM from its equal-step coefficients, with exact multiplicities (docs/math.md §5).

With equal steps the a_{i,j} are constants and the characteristic polynomial is
ρ(ζ) = ζ^k − a_1 ζ^{k−1} − … − a_k; the verdicts themselves (sampling: roots in the
closed unit disc, simple on the circle; inverse: the reciprocal roots likewise) are
`belm_core.stability.Stability.from_roots`. What this module adds is exactness: when
the a_j are rational, ρ is split into square-free factors over ℚ first, so a double
root is known to be double rather than guessed from two nearby floating-point roots.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import sympy

from ..stability import Stability

__all__ = ["characteristic_polynomial", "equal_step_stability", "roots_with_multiplicity"]

ZETA = sympy.Symbol("zeta")


def characteristic_polynomial(a: Sequence[sympy.Expr]) -> sympy.Expr:
    """ρ(ζ) = ζ^k − a_1 ζ^{k−1} − … − a_k as a sympy expression in the symbol `zeta`."""
    k = len(a)
    return ZETA**k - sum(a[j] * ZETA ** (k - 1 - j) for j in range(k))


def roots_with_multiplicity(a: Sequence[sympy.Expr]) -> tuple[np.ndarray, np.ndarray]:
    """Roots of ρ for the equal-step a_1 … a_k (numbers), sorted, each with its multiplicity.

    Rational a: exact square-free factorisation, then np.roots per factor (whose roots
    are simple, hence accurate). Otherwise np.roots of ρ and numeric multiplicities.
    """
    coeffs = [sympy.Integer(1)] + [-sympy.nsimplify(x) if isinstance(x, sympy.Float) else -x for x in a]
    if all(c.is_Rational for c in coeffs):
        poly = sympy.Poly(coeffs, ZETA, domain=sympy.QQ)
        roots: list[complex] = []
        mult: list[int] = []
        for factor, m in poly.sqf_list()[1]:
            fc = [float(c) for c in factor.all_coeffs()]
            for r in np.roots(fc) if len(fc) > 1 else []:
                roots += [complex(r)] * m
                mult += [m] * m
        roots_arr = np.asarray(roots, dtype=np.complex128)
        mult_arr = np.asarray(mult, dtype=np.int64)
    else:
        roots_arr = np.roots([complex(sympy.N(c, 30)) for c in coeffs]).astype(np.complex128)
        mult_arr = Stability.from_roots(roots_arr).multiplicities
    order = np.lexsort((roots_arr.imag, roots_arr.real))
    return roots_arr[order], mult_arr[order]


def equal_step_stability(a: Sequence[sympy.Expr]) -> Stability:
    """Stability verdicts for the equal-step coefficients a_1 … a_k (sympy numbers)."""
    roots, mult = roots_with_multiplicity(a)
    return Stability.from_roots(roots, mult, a_k_zero=bool(sympy.simplify(a[-1]) == 0))
