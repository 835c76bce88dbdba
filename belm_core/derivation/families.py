"""Families of BELMs that are zero-stable in both directions, and the default k = 3 member (docs/math.md §5).

The LTE-optimal k = 3 method has ρ = (ζ−1)(ζ² + 10ζ + 1), a root near −9.9, so it
diverges both ways. Pinning all a_j so that ρ's roots are simple and on |ζ| = 1, and
solving only the b's, gives methods stable for sampling and inversion at the price of
order: k − 1 instead of 2k − 2.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import sympy

from .conditions import _check_k
from .stability import ZETA
from .symbolic import Derivation, derive

__all__ = ["BEST_STABLE_C3", "stable_family"]


def stable_family(k: int = 3, c: Any = None) -> Derivation:
    """BELMs whose equal-step ρ has all roots simple and on |ζ| = 1 (stable both ways).

    All a_j are pinned (independent of h) by
        ρ(ζ) = (ζ − 1) · [(ζ + 1) if k even] · Π_{m=1..q} (ζ² − c_m ζ + 1),  q = ⌊(k−1)/2⌋,
    and the k−1 b's are solved from R_1 … R_{k−1} (R_0 holds as ρ(1) = 0), so the order
    is k − 1 for any positive steps. |c_m| < 2 and distinct c_m keep the roots simple.

    k = 3 (docs/math.md §5): ρ = (ζ − 1)(ζ² − cζ + 1), a = (c + 1, −(c + 1), 1), order 2;
    with equal steps b_1 = b_2 = c/2 − 1 and error constant C_3 = (c + 10)/12.

    c: for q = 1 (k = 3, 4) a number or sympy expression, for q > 1 a sequence of q;
    None gives free symbols ("c", or "c1".."cq") to be passed to evaluate/stability.
    Numeric c must satisfy |c| < 2 (else ValueError). k = 2 gives a = (0, 1), order 1.
    """
    k = _check_k(k)
    q = (k - 1) // 2
    if c is None:
        cs = [sympy.Symbol("c")] if q == 1 else [sympy.Symbol(f"c{m}") for m in range(1, q + 1)]
    elif q == 1 and not isinstance(c, (list, tuple)):
        cs = [c]
    else:
        cs = list(c) if isinstance(c, (list, tuple)) else [c]
        if len(cs) != q:
            raise ValueError(f"c: k={k} needs {q} value(s) c_1..c_{q}; got {c!r}")
    exprs = []
    for m, cm in enumerate(cs, start=1):
        if isinstance(cm, (float, np.floating)):
            if not math.isfinite(float(cm)):
                raise ValueError(f"c={cm!r} must be finite")
            cm = sympy.Rational(repr(float(cm)))
        try:
            cm = sympy.sympify(cm, strict=True)  # strict: a string is refused, never parsed
        except (sympy.SympifyError, TypeError) as exc:
            raise ValueError(f"c={cm!r} must be a real number or a sympy expression") from exc
        if not isinstance(cm, sympy.Expr):
            raise ValueError(f"c={cm!r} must be a real number or a sympy expression")
        if cm.is_number and not (abs(float(cm)) < 2):
            raise ValueError(f"c={cm}: need |c| < 2 for roots on the unit circle that are simple")
        exprs.append(cm)
    numeric = [float(e) for e in exprs if e.is_number]
    if len(set(numeric)) != len(numeric):
        raise ValueError(f"c={c!r}: equal c_m give double roots; choose distinct values")
    z = ZETA
    rho = (z - 1) * ((z + 1) if k % 2 == 0 else 1) * sympy.Mul(*[z**2 - cm * z + 1 for cm in exprs])
    poly = sympy.Poly(sympy.expand(rho), z)
    coeffs = poly.all_coeffs()  # ζ^k, ζ^{k−1}, …, 1
    fix = {f"a{j}": sympy.expand(-coeffs[j]) for j in range(1, k + 1)}
    return derive(k, fix=fix)


BEST_STABLE_C3: float = -1.19184
"""Default c of the stable k = 3 family ρ = (ζ−1)(ζ² − cζ + 1) (`stable_family(3, c)`).

How it was found. With equal steps the family's local error constant is
C_3(c) = R_3 = (c + 10)/12 (order 2; it would vanish only at the unstable c = −10).
On (−2, 2) |C_3| is strictly increasing in c, and so is |C_3|/|ρ'(1)| =
(c + 10)/(12 (2 − c)), and so is the RMS of R_3/H³ over random variable grids: the
local error alone has no minimiser in (−2, 2) — its infimum 2/3 sits at the excluded
c = −2, where the parasitic roots e^{±iθ} merge into a double root at −1 and the
recurrence amplifies perturbations without bound. So c is chosen to minimise the
worst-case *propagated* local error Γ(c) · |C_3(c)|, where Γ(c) bounds how far one
local error is amplified by the recurrence, the same for sampling and inversion (the
roots are conjugate-symmetric on |ζ| = 1). The response to a unit local error is
γ_n, the coefficients of 1/((1 − z)(1 − cz + z²)) = Σ γ_n z^n; with c = 2 cos θ,
γ_n = sin((n+1)θ/2) sin((n+2)θ/2) / (sin(θ/2) sin θ), whose supremum over n is
Γ(c) = cos²(θ/4) / (sin(θ/2) sin θ). tests/test_derive.py checks Γ against the
recurrence itself and that this c minimises Γ · |C_3|.
scipy.optimize.minimize_scalar (bounded, xatol 1e-10) gives c = −1.191836, rounded
here to −1.19184:

    Γ = 1.0103,  C_3 = 0.734013,  Γ · C_3 = 0.741582.

For comparison c = −1 (roots = cube roots of unity, a = (0, 0, 1)) has Γ = 1,
C_3 = 0.75, Γ · C_3 = 0.75; c = 0 has C_3 = 0.8333, Γ = 1.21; O-BELM (k = 2) has
C_3 = 1/3. b_1 = b_2 = c/2 − 1 = −1.59592 with equal steps.
"""
