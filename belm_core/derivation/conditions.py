"""The Taylor conditions a k-step BELM's coefficients must meet (docs/math.md §4), and their names.

Bar form (x̄ = x/α, σ̄ = σ/α, ε = dx̄/dσ̄ along the exact solution); sampling walks the
grid index i downward with positive steps h_i = σ̄_i − σ̄_{i−1}, and one step is

    x̄_{i−1} = Σ_{j=1..k} a_{i,j} x̄_{i−1+j} + Σ_{j=1..k−1} b_{i,j} h_{i−1+j} ε(x_{i−1+j}).

Put the exact solution in and expand about σ̄_{i−1}. With the positions
s_j = σ̄_{i−1+j} − σ̄_{i−1} = h_i + … + h_{i−1+j}, the term in x̄^{(m)}(σ̄_{i−1}) vanishes iff

    R_m := Σ_{j=1..k} a_{i,j} s_j^m / m! + Σ_{j=1..k−1} b_{i,j} h_{i−1+j} s_j^{m−1} / (m−1)! − [m = 0] = 0

(the b-sum only for m ≥ 1).
"""

from __future__ import annotations

import math
from numbers import Integral
from typing import Any, Sequence

import numpy as np
import sympy

__all__ = ["coefficient_names", "step_symbols", "taylor_residuals"]


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, Integral):
        raise ValueError(f"k must be an int >= 2 (the number of steps); got k={k!r}")
    k = int(k)
    if k < 2:
        raise ValueError(
            f"k={k}: a BELM needs k >= 2. k = 1 would be x̄_{{i−1}} = a_1 x̄_i with no ε term "
            "(a_1 = 1, no step at all); the one-step sampler is DDIM, which is not a "
            "bidirectional explicit method (its inversion is inexact, docs/math.md §2)."
        )
    return k


def step_symbols(k: int) -> tuple[sympy.Symbol, ...]:
    """The positive sympy symbols (h_i, h_{i+1}, …, h_{i+k−1}), named "h_i", "h_i+1", …."""
    k = _check_k(k)
    return tuple(sympy.Symbol("h_i" if j == 0 else f"h_i+{j}", positive=True) for j in range(k))


def coefficient_names(k: int) -> tuple[str, ...]:
    """("a1", …, "ak", "b1", …, "b{k−1}"): the keys `derive(k, fix=…)` accepts."""
    k = _check_k(k)
    return tuple(f"a{j}" for j in range(1, k + 1)) + tuple(f"b{j}" for j in range(1, k))


def _positions(k: int) -> tuple[sympy.Symbol, ...]:
    # s_j = h_i + … + h_{i−1+j}: used as independent variables while solving, because
    # the Taylor conditions are far sparser in s than in h.
    return tuple(sympy.Symbol(f"s_{j}", positive=True) for j in range(1, k + 1))


def _condition_row(m: int, s: Sequence[sympy.Expr], k: int) -> tuple[list[sympy.Expr], sympy.Expr]:
    """Coefficients of (a_1..a_k, b_1..b_{k−1}) in R_m, and the constant [m = 0], in s."""
    hh = [s[0]] + [s[j] - s[j - 1] for j in range(1, k)]
    row = [s[j] ** m / sympy.factorial(m) for j in range(k)]
    if m == 0:
        row += [sympy.Integer(0)] * (k - 1)
    else:
        row += [sympy.expand(hh[j] * s[j] ** (m - 1)) / sympy.factorial(m - 1) for j in range(k - 1)]
    return row, sympy.Integer(1 if m == 0 else 0)


# ------------------------------------------------------------------------------------
# numeric Taylor residuals (used by tests, and useful for checking any coefficient set)
# ------------------------------------------------------------------------------------


def taylor_residuals(a: Any, b: Any, h: Any, orders: Sequence[int] | int) -> np.ndarray:
    """R_m for numeric coefficients, float64.

    a: (..., k), b: (..., k−1), h: (..., k) with column j = h_{i+j}; returns
    (..., len(orders)) with R_m = Σ_j a_j s_j^m/m! + Σ_{j<k} b_j h_{i−1+j} s_j^{m−1}/(m−1)! − [m=0],
    s_j = h_i + … + h_{i−1+j}. An int `orders` means range(orders + 1).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    h = np.asarray(h, dtype=np.float64)
    ms = list(range(orders + 1)) if isinstance(orders, Integral) else [int(m) for m in orders]
    s = np.cumsum(h, axis=-1)
    out = []
    for m in ms:
        r = np.sum(a * s**m, axis=-1) / math.factorial(m) - (1.0 if m == 0 else 0.0)
        if m >= 1:
            r = r + np.sum(b * h[..., :-1] * s[..., :-1] ** (m - 1), axis=-1) / math.factorial(m - 1)
        out.append(r)
    return np.stack(out, axis=-1)
