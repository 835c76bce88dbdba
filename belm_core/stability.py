"""Zero-stability verdicts of a linear multistep recurrence from its characteristic roots (docs/math.md §5).

With equal steps a k-step BELM's a_{i,j} are constants a_1 … a_k and its characteristic
polynomial is

    ρ(ζ) = ζ^k − a_1 ζ^{k−1} − … − a_k.

Sampling (the recurrence run as written) is zero-stable iff every root has |ζ| ≤ 1 and
the roots on |ζ| = 1 are simple. The exact inverse runs the same relation solved for
the other end; its roots are 1/ζ, so it needs a_k ≠ 0 (no root at 0), every |ζ| ≥ 1,
and simple roots on the circle. Stable both ways ⇔ all roots simple and on |ζ| = 1.

This module is pure NumPy: the methods use it without importing sympy, and
`belm_core.derivation` builds the same object from exact (sympy) multiplicities.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ROOT_TOL", "CLUSTER_TOL", "Stability"]

#: Tolerance on ||ζ| − 1| for "on the unit circle", and on the distance of two roots for
#: "not simple" when the multiplicities are known.
ROOT_TOL = 1e-9

#: Numeric roots closer than this count as one repeated root when no multiplicities are
#: given: np.roots splits a root of multiplicity m by about ε_mach^{1/m} (≈ 1e-8 for m = 2,
#: ≈ 6e-6 for m = 3), so a tighter tolerance would call a perturbed double root simple.
CLUSTER_TOL = 1e-5


def _numeric_multiplicities(roots: np.ndarray) -> np.ndarray:
    """For each root, how many roots (itself included) lie within CLUSTER_TOL of it."""
    if roots.size == 0:
        return np.zeros(0, dtype=np.int64)
    close = np.abs(roots[:, None] - roots[None, :]) <= CLUSTER_TOL
    return close.sum(axis=1).astype(np.int64)


def _reciprocal(roots: np.ndarray) -> np.ndarray:
    """1/ζ, with inf where ζ = 0 (a_k = 0: the inverse recurrence does not exist)."""
    zero = roots == 0
    safe = np.where(zero, 1.0, roots)
    return np.where(zero, np.inf, 1.0 / safe)


@dataclass(frozen=True, eq=False)
class Stability:
    """Zero-stability verdict for equal steps.

    sampling: |ζ| ≤ 1 for every root, and the roots with |ζ| = 1 are simple;
    inverse: a_k ≠ 0, |ζ| ≥ 1 for every root, and the roots with |ζ| = 1 are simple;
    roots: the roots ζ of ρ(ζ) = ζ^k − a_1 ζ^{k−1} − … − a_k (sampling direction), a
        root of multiplicity m listed m times;
    inverse_roots: 1/ζ, the roots of the inverse recurrence (inf where ζ = 0); computed
        from `roots` when not given;
    multiplicities: the multiplicity of each entry of `roots`; when not given, roots
        closer than CLUSTER_TOL count as one repeated root.

    `Stability(sampling=…, inverse=…, roots=…)` records verdicts a method knows in closed
    form; `Stability.from_roots(roots)` decides them from the roots.
    """

    sampling: bool
    inverse: bool
    roots: np.ndarray
    inverse_roots: np.ndarray | None = None
    multiplicities: np.ndarray | None = None

    def __post_init__(self) -> None:
        for name in ("sampling", "inverse"):
            value = getattr(self, name)
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"Stability.{name} must be a bool; got {value!r}")
            object.__setattr__(self, name, bool(value))
        roots = np.asarray(self.roots)
        if roots.ndim != 1 or not np.issubdtype(roots.dtype, np.number):
            raise ValueError(f"Stability.roots must be a 1-D numeric array; got {self.roots!r}")
        if not np.issubdtype(roots.dtype, np.inexact):
            roots = roots.astype(np.float64)
        object.__setattr__(self, "roots", roots)
        if self.inverse_roots is None:
            object.__setattr__(self, "inverse_roots", _reciprocal(roots))
        else:
            object.__setattr__(self, "inverse_roots", np.asarray(self.inverse_roots))
        if self.multiplicities is None:
            object.__setattr__(self, "multiplicities", _numeric_multiplicities(roots))
        else:
            mult = np.asarray(self.multiplicities, dtype=np.int64)
            if mult.shape != roots.shape:
                raise ValueError(f"Stability.multiplicities must have the shape of roots {roots.shape}; got {mult.shape}")
            object.__setattr__(self, "multiplicities", mult)

    @property
    def both(self) -> bool:
        """Stable for sampling and for inversion: all roots simple and on |ζ| = 1."""
        return self.sampling and self.inverse

    @classmethod
    def from_roots(cls, roots: Any, multiplicities: Any = None, *, a_k_zero: bool = False) -> Stability:
        """Verdicts decided from the roots of ρ (docs/math.md §5).

        roots: the roots ζ (a root of multiplicity m listed m times); multiplicities: the
        exact multiplicity of each entry when known (else numeric clustering, CLUSTER_TOL);
        a_k_zero: a_k is exactly 0, so the inverse recurrence does not exist even if
        rounding put the root at 0 a hair off.
        """
        roots = np.asarray(roots)
        if not np.issubdtype(roots.dtype, np.inexact):
            roots = roots.astype(np.float64)
        mult = _numeric_multiplicities(roots) if multiplicities is None else np.asarray(multiplicities, dtype=np.int64)
        if mult.shape != roots.shape:
            raise ValueError(f"multiplicities must have the shape of roots {roots.shape}; got {mult.shape}")
        mod = np.abs(roots)
        on_circle = np.abs(mod - 1.0) <= ROOT_TOL
        near = (np.abs(roots[:, None] - roots[None, :]) <= ROOT_TOL).sum(axis=1)
        simple = (mult == 1) & (near == 1)
        simple_on_circle = bool(np.all(simple[on_circle]))
        sampling = bool(np.all(mod <= 1.0 + ROOT_TOL)) and simple_on_circle
        inverse = (not a_k_zero) and bool(np.all(mod >= 1.0 - ROOT_TOL)) and simple_on_circle
        return cls(sampling=sampling, inverse=inverse, roots=roots, multiplicities=mult)
