"""Symbolic derivation of k-step BELM coefficients, their order and stability (docs/math.md §3–5).

    derive(k, fix=None) -> Derivation      coefficients as rational functions of h (sympy)
    stable_family(k, c=None) -> Derivation the members stable in both directions
    format_derivation(d, **params) -> str  the report `belm coeffs` prints

Modules, one concern each:

* `conditions`: the Taylor conditions R_m and the names of steps and coefficients;
* `symbolic`: the solve (`derive`) and the `Derivation` it returns (lambdified once);
* `stability`: ρ(ζ), its roots with exact multiplicities, the `Stability` verdict;
* `families`: `stable_family` and the default `BEST_STABLE_C3`;
* `report`: `format_derivation`.

sympy is imported by this package, not by ``import belm_core`` (whose `derive` wrapper
imports it on first call); torch never is.
"""

from ..stability import ROOT_TOL, Stability
from .conditions import coefficient_names, step_symbols, taylor_residuals
from .families import BEST_STABLE_C3, stable_family
from .report import format_derivation
from .symbolic import Derivation, derive

__all__ = [
    "BEST_STABLE_C3",
    "ROOT_TOL",
    "Derivation",
    "Stability",
    "coefficient_names",
    "derive",
    "format_derivation",
    "stable_family",
    "step_symbols",
    "taylor_residuals",
]
