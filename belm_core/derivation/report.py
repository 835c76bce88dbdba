"""The human-readable report of a derivation: what `belm coeffs` prints (docs/math.md §3–5).

Formulas of a_{i,j}, b_{i,j} in the step sizes, the order matched, and for equal steps
the constant coefficients, the error constant C_{p+1}, ρ(ζ) factored, its roots and
the sampling / inverse verdicts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import sympy

from .stability import characteristic_polynomial

if TYPE_CHECKING:
    from .symbolic import Derivation

__all__ = ["format_derivation"]


def _fmt_complex(z: complex) -> str:
    tiny = 1e-12 * max(1.0, abs(z))
    re = 0.0 if abs(z.real) < tiny else z.real
    if abs(z.imag) < tiny:
        return f"{re:+.6g}"
    return f"{re:+.6g}{z.imag:+.6g}j"


def format_derivation(d: Derivation, **params: Any) -> str:
    """Human-readable report: formulas, order, equal-step numbers, roots and verdicts.

    This is what `belm coeffs --k K` prints. Parameters of a parametric derivation may
    be given as keyword arguments; without them the equal-step part stays symbolic.
    """
    k = d.k
    lines = [f"BELM, k = {k}" + (f"  (fix: {', '.join(f'{n} = {v}' for n, v in d.fix)})" if d.fix else "  (LTE-optimal)")]
    lines.append(
        "  x̄_{i−1} = Σ_{j=1..k} a_{i,j} x̄_{i−1+j} + Σ_{j=1..k−1} b_{i,j} h_{i−1+j} ε(x_{i−1+j}),"
        "  h_i = σ̄_i − σ̄_{i−1} > 0"
    )
    names = [f"a_{{i,{j}}}" for j in range(1, k + 1)] + [f"b_{{i,{j}}}" for j in range(1, k)]
    for name, expr in zip(names, d.a + d.b):
        lines.append(f"  {name} = {expr}")
    lines.append(f"  order {d.order} (Taylor orders 0..{d.order} matched; local error O(H^{d.lte_order}))")
    if d.parameters:
        lines.append(f"  free parameters: {', '.join(d.parameter_names)}")
    missing = [n for n in d.parameter_names if n not in params]
    if d._equal is None:
        lines.append("  equal steps: coefficients depend on the step size (fix involves h)")
        return "\n".join(lines)
    if missing:
        ea, eb = d._equal
        rho = characteristic_polynomial(ea)
        lines.append(f"  equal steps: a = ({', '.join(map(str, ea))}), b = ({', '.join(map(str, eb))})")
        lines.append(f"  rho(zeta) = {sympy.factor(rho)}")
        lines.append(f"  roots and stability need values for {', '.join(missing)}")
        return "\n".join(lines)
    if params:
        lines.append(f"  with {', '.join(f'{n} = {params[n]}' for n in d.parameter_names)}:")
    ea, eb = d._equal_exact(params)
    a, b = d.equal_step_coefficients(**params)
    lines.append(f"  equal steps: a = ({', '.join(map(str, ea))}), b = ({', '.join(map(str, eb))})")
    lines.append(f"  error constant C_{d.lte_order} = {d.error_constant(**params):.6g}")
    rho = characteristic_polynomial(ea)
    lines.append(f"  rho(zeta) = {sympy.factor(rho)}")
    st = d.stability(**params)
    for r, m in zip(st.roots, st.multiplicities):
        lines.append(f"    root {_fmt_complex(complex(r))}  |zeta| = {abs(r):.9g}" + (f"  (multiplicity {m})" if m > 1 else ""))
    lines.append(f"  sampling: {'stable' if st.sampling else 'UNSTABLE'}")
    lines.append(f"  inverse:  {'stable' if st.inverse else 'UNSTABLE'}" + ("  (a_k = 0: no inverse)" if np.any(np.isinf(st.inverse_roots)) else ""))
    return "\n".join(lines)
