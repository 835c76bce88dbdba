"""The general k-step linear recurrence and its exact inverse (docs/math.md §3, §11).

The recurrence runs in the grid's coordinates (docs/math.md §11): the state is x = s·y and
dy/dτ = f(x, t) is the model's output, with h_i = τ_i − τ_{i−1}. For ε-prediction
y = x̄ = x/α, τ = σ̄, f = ε (the bar form of docs/math.md §1); for a flow's velocity y = x,
τ = σ, f = v. One step of a k-step method is

    y_{i−1} = Σ_{j=1..k} a_{i,j} y_{i−1+j} + Σ_{j=1..k} b_{i,j} h_{i−1+j} f(x_{i−1+j}, t_{i−1+j}),

written below in the bar notation of the paper (x̄ for y, ε for f):

    x̄_{i−1} = Σ_{j=1..k} a_{i,j} x̄_{i−1+j} + Σ_{j=1..k} b_{i,j} h_{i−1+j} ε(x_{i−1+j}, t_{i−1+j}).

BELM methods have b_{i,k} = 0 (ε is never evaluated at either end), so the same
relation solved for the far end is the exact inverse step

    x̄_{i−1+k} = (x̄_{i−1} − Σ_{j<k} a_{i,j} x̄_{i−1+j} − Σ_{j<k} b_{i,j} h_{i−1+j} ε_{i−1+j}) / a_{i,k}.

DDIM is the k = 1 member with a = (1,), b = (−1,): b_{i,k} ≠ 0, so it has no exact
inverse.

The coefficients a, b depend on the steps h only, so the same tables serve every
coordinate system. The state is stored in x-space. Multiplying the relation by s_{i−1}
gives the x-space coefficients used here, evaluated once per grid in float64:

    c_{i,j} = a_{i,j} s_{i−1} / s_{i−1+j},      d_{i,j} = b_{i,j} h_{i−1+j} s_{i−1},
    x_{i−1} = Σ_j c_{i,j} x_{i−1+j} + Σ_j d_{i,j} f_{i−1+j}

(s = α for ε-prediction: the paper's eq. 18; s = 1 for a flow: c = a, d = b·h).

`step` and `inverse_step` act on arrays only through `+` and multiplication by Python
floats, so they run unchanged on NumPy arrays and torch tensors on any device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .grid import Grid

__all__ = ["Table", "x_space_table", "step", "inverse_step", "linear_combination", "ddim_move"]


@dataclass(frozen=True, eq=False)
class Table:
    """x-space coefficients of a k-step relation on one grid.

    c[i, j−1] = c_{i,j} and d[i, j−1] = d_{i,j} for grid rows i where the relation is
    defined (1 ≤ i, i−1+k ≤ N); other rows are NaN.
    """

    k: int
    c: np.ndarray  # (N+1, k)
    d: np.ndarray  # (N+1, k)

    @property
    def exact(self) -> bool:
        """The relation is invertible: ε never at the far end (d_{i,k} = 0) and c_{i,k} ≠ 0."""
        rows = self.rows()
        return bool(np.all(self.d[rows, -1] == 0) and np.all(self.c[rows, -1] != 0))

    def rows(self) -> np.ndarray:
        """Grid indices i where the relation is defined."""
        return np.flatnonzero(np.isfinite(self.c[:, 0]))

    def eps_slots(self, i: int) -> tuple[int, ...]:
        """The j (1-based) whose ε_{i−1+j} the step at row i needs."""
        return tuple(j + 1 for j in range(self.k) if self.d[i, j] != 0)

    def coefficients(self, i: int) -> tuple[list[float], list[float]]:
        """(c_{i,1..k}, d_{i,1..k}) as Python floats for row i."""
        if not np.isfinite(self.c[i, 0]):
            raise IndexError(f"the {self.k}-step relation is not defined at grid index {i}")
        return self.c[i].tolist(), self.d[i].tolist()


def x_space_table(a: np.ndarray, b: np.ndarray, grid: Grid) -> Table:
    """Carry coefficients a, b in the grid's coordinates (shape (N+1, k), row i) to x-space:
    c_{i,j} = a_{i,j} s_{i−1}/s_{i−1+j}, d_{i,j} = b_{i,j} h_{i−1+j} s_{i−1} (s = `grid.scale`)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    n1, k = a.shape
    if b.shape != (n1, k) or n1 != grid.N + 1:
        raise ValueError(f"coefficient tables must have shape ({grid.N + 1}, k); got a {a.shape}, b {b.shape}")
    c = np.full_like(a, np.nan)
    d = np.full_like(b, np.nan)
    rows = np.arange(1, grid.N - k + 2)  # need i ≥ 1 and i − 1 + k ≤ N
    if rows.size:
        j = np.arange(1, k + 1)
        far = rows[:, None] - 1 + j[None, :]  # grid index i − 1 + j
        scale_near = grid.scale[rows - 1][:, None]
        c[rows] = a[rows] * scale_near / grid.scale[far]
        d[rows] = b[rows] * grid.h[far] * scale_near
    return Table(k=k, c=c, d=d)


def linear_combination(coefficients: Sequence[float], arrays: Sequence[Any]) -> Any:
    """Σ_m coefficients[m] · arrays[m], skipping zero coefficients (uses only + and scalar *)."""
    total = None
    for w, x in zip(coefficients, arrays):
        if w == 0.0:
            continue
        if total is None:
            total = w * x  # a fresh array: accumulate into it in place
        else:
            total += w * x
    if total is None:
        raise ValueError("linear_combination needs at least one non-zero coefficient")
    return total


def ddim_move(x: Any, f: Any, s_from: float, tau_from: float, s_to: float, tau_to: float) -> Any:
    """x at grid coordinates (s_from, τ_from) moved along DDIM's line, f held constant (exact where
    the trajectory is straight in y = x/s, docs/math.md §11):  x_to = s_to (x/s_from + (τ_to − τ_from) f)."""
    return linear_combination([s_to / s_from, s_to * (tau_to - tau_from)], [x, f])


def step(table: Table, i: int, xs: Sequence[Any], eps: Sequence[Any]) -> Any:
    """x_{i−1} = Σ_j c_{i,j} x_{i−1+j} + Σ_j d_{i,j} ε_{i−1+j}.

    `xs[j−1]` is x_{i−1+j} and `eps[j−1]` is ε_{i−1+j} (None where d_{i,j} = 0).
    """
    c, d = table.coefficients(i)
    used = [(w, e) for w, e in zip(d, eps) if w != 0.0]
    return linear_combination(c + [w for w, _ in used], list(xs) + [e for _, e in used])


def inverse_step(
    table: Table, i: int, x_near: Any, xs_inner: Sequence[Any], eps: Sequence[Any], *, eps_far: Any = None
) -> Any:
    """x_{i−1+k} = (x_{i−1} − Σ_{j<k} c_{i,j} x_{i−1+j} − Σ_{j<k} d_{i,j} ε_{i−1+j} − d_{i,k} ε_far) / c_{i,k}.

    `x_near` is x_{i−1}; `xs_inner[j−1]` is x_{i−1+j} and `eps[j−1]` is ε_{i−1+j} for j < k.
    Exact when d_{i,k} = 0. A relation with d_{i,k} ≠ 0 (DDIM) needs ε at the unknown far
    end; `eps_far` supplies a stand-in for it (DDIM inversion passes ε(x_{i−1}, t_i),
    docs/math.md §2), and the result is then only approximate.
    """
    c, d = table.coefficients(i)
    if d[-1] != 0.0 and eps_far is None:
        raise ValueError(f"the relation at grid index {i} evaluates ε at its far end; it has no exact inverse")
    inv = 1.0 / c[-1]
    weights = [inv] + [-w * inv for w in c[:-1]]
    used = [(-w * inv, e) for w, e in zip(d[:-1], eps) if w != 0.0]
    if d[-1] != 0.0:
        used.append((-d[-1] * inv, eps_far))
    return linear_combination(weights + [w for w, _ in used], [x_near, *xs_inner] + [e for _, e in used])
