"""Method interface and the shared linear-multistep machinery.

A method owns its coefficients; the driver (`belm_core.solver`) owns the loop. The
solver state is an explicit `Carry` that `start`/`step` create and return, so nothing
hidden is mutated (diffrax's init/step style).

Linear multistep methods (DDIM, BDIA, O-BELM, BELM-k) only provide bar-space
coefficient tables `a, b` (MATH.md §3); `LinearMultistep` turns them into x-space
tables once per grid and runs the recurrence and its exact inverse from
`belm_core.recurrence`, with the start-up of MATH.md §3: a lone x_N is advanced by
DDIM, then by lower-k BELM steps until k states exist; inversion starts with one
DDIM-inversion step x_0 → x_1 and continues with exact inverse steps.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .. import recurrence
from ..grid import Grid
from ..stability import Stability

__all__ = ["Carry", "Method", "LinearMultistep", "Stability", "Evaluate"]

#: evaluate(x, grid_index) -> ε at x with the model time of that grid index
Evaluate = Callable[[Any, int], Any]


@dataclass(frozen=True)
class Carry:
    """Explicit solver state.

    index: grid index of the newest state (the lowest one while sampling, the highest
        one while inverting).
    xs: states, oldest first in the walking direction (so xs[-1] is the newest).
    eps: ε already evaluated at those states (None where not yet needed).
    """

    index: int
    xs: tuple
    eps: tuple = ()


class Method(ABC):
    """One sampler. Subclasses declare `name`, `k`, `order`, `nfe_per_step`, `exact`."""

    name: str
    #: number of states in an inverted latent
    k: int
    #: convergence order (global)
    order: int
    #: model calls per step
    nfe_per_step: int = 1
    #: sample(invert(x_0)) == x_0 up to rounding
    exact: bool = True

    @property
    def min_steps(self) -> int:
        """Fewest grid steps the method can run (a k-step latent needs N ≥ k)."""
        return self.k

    def signature(self) -> str:
        """Identifies the method and its parameters (stored in a Latent)."""
        return self.name

    def __repr__(self) -> str:
        return f"<{self.signature()}: order {self.order}, {self.nfe_per_step} NFE/step, k={self.k}>"

    def stability(self) -> Stability | None:
        """Verdict for sampling and inversion with equal steps (None: not a linear multistep)."""
        return None

    def check_invertible(self) -> None:
        """Raise ValueError when this parameter choice has no exact inverse."""

    # -- explicit-state interface used by the driver --------------------------------------
    @abstractmethod
    def prepare(self, grid: Grid) -> Any:
        """Precompute everything a grid needs (coefficient tables in float64)."""

    @abstractmethod
    def start(self, plan: Any, x: Any, index: int) -> Carry:
        """Sampling state from a lone x at grid index `index`."""

    @abstractmethod
    def step(self, plan: Any, carry: Carry, evaluate: Evaluate) -> Carry:
        """One sampling step: the newest index goes from i to i − 1."""

    @abstractmethod
    def inverse_start(self, plan: Any, x0: Any) -> Carry:
        """Inversion state at the clean end, grid index 0."""

    @abstractmethod
    def inverse_step(self, plan: Any, carry: Carry, evaluate: Evaluate) -> Carry:
        """One inversion step: the newest index goes from i to i + 1."""

    @abstractmethod
    def latent_states(self, carry: Carry) -> tuple:
        """The states exact reconstruction needs, noisiest first, from an inversion carry."""

    @abstractmethod
    def from_latent(self, plan: Any, states: Sequence[Any], index: int) -> Carry:
        """Sampling state from a latent whose first (noisiest) state sits at `index`."""

    def output(self, carry: Carry) -> Any:
        """x_0 from the final sampling carry."""
        return carry.xs[-1]

    @abstractmethod
    def amplification(self, plan: Any, until: int) -> float:
        """Round-off amplification of inverting up to grid index `until`: Π |1/c_{i,k}|."""


class LinearMultistep(Method):
    """A k-step method given by bar-space tables a, b (MATH.md §3)."""

    @abstractmethod
    def bar_table(self, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
        """(a, b), each of shape (N+1, k): a[i, j−1] = a_{i,j}, b[i, j−1] = b_{i,j} (NaN where undefined)."""

    def ladder(self) -> list[LinearMultistep]:
        """Methods with 1, 2, …, k states: the start-up steps, then this method."""
        from .obelm import startup_ladder

        return startup_ladder(self.k)[: self.k - 1] + [self]

    def prepare(self, grid: Grid) -> dict[int, recurrence.Table]:
        tables = {}
        for m in self.ladder():
            tables[m.k] = recurrence.x_space_table(*m.bar_table(grid), grid)
        return {"grid": grid, "tables": tables}

    # sampling ------------------------------------------------------------------------
    def start(self, plan, x, index):
        return Carry(index=index, xs=(x,), eps=(None,))

    def from_latent(self, plan, states, index):
        return Carry(index=index - self.k + 1, xs=tuple(states), eps=(None,) * len(states))

    def step(self, plan, carry, evaluate):
        i = carry.index  # newest state x_i; compute x_{i−1}
        kk = min(len(carry.xs), self.k)
        table = plan["tables"][kk]
        xs = carry.xs[::-1][:kk]  # xs[j−1] = x_{i−1+j}
        eps = list(carry.eps[::-1][:kk])
        for j in table.eps_slots(i):
            if eps[j - 1] is None:
                eps[j - 1] = evaluate(xs[j - 1], i - 1 + j)
        x_new = recurrence.step(table, i, xs, eps)
        new_eps = carry.eps[: len(carry.xs) - kk] + tuple(eps[::-1])
        return self._advance(i - 1, carry.xs + (x_new,), new_eps + (None,))

    # inversion -----------------------------------------------------------------------
    def inverse_start(self, plan, x0):
        return Carry(index=0, xs=(x0,), eps=(None,))

    def inverse_step(self, plan, carry, evaluate):
        top = carry.index
        grid: Grid = plan["grid"]
        if len(carry.xs) == 1:
            # DDIM inversion x̄_{top+1} ≈ x̄_top + h_{top+1} ε(x_top, t_{top+1}) (MATH.md §2)
            x = carry.xs[-1]
            e = evaluate(x, top + 1)
            r = float(grid.alpha[top + 1])
            x_new = recurrence.linear_combination(
                [r / float(grid.alpha[top]), r * float(grid.h[top + 1])], [x, e]
            )
            # ε(x_top, t_{top+1}) is not ε at x_top's own time: nothing to cache
            return self._advance(top + 1, carry.xs + (x_new,), (None,) * (len(carry.xs) + 1))
        kk = min(len(carry.xs), self.k)  # known states the relation uses
        table = plan["tables"][kk]
        i = top + 2 - kk
        window = carry.xs[-kk:]  # (x_{i−1}, x_i, …, x_{top})
        eps = list(carry.eps[-kk:])
        for j in table.eps_slots(i):
            if eps[j] is None:
                eps[j] = evaluate(window[j], i - 1 + j)
        x_new = recurrence.inverse_step(table, i, window[0], window[1:], eps[1:])
        new_eps = carry.eps[: len(carry.xs) - kk] + tuple(eps)
        return self._advance(top + 1, carry.xs + (x_new,), new_eps + (None,))

    def _advance(self, index: int, xs: tuple, eps: tuple) -> Carry:
        """Keep the k newest states; drop ε of the oldest kept one (no later step reads it)."""
        xs, eps = xs[-self.k :], eps[-self.k :]
        if len(xs) == self.k:
            eps = (None,) + eps[1:]
        return Carry(index=index, xs=xs, eps=eps)

    def latent_states(self, carry):
        return tuple(carry.xs[::-1])

    def amplification(self, plan, until):
        product = 1.0
        for top in range(1, until):
            kk = min(top + 1, self.k)
            c = plan["tables"][kk].c
            product *= abs(1.0 / c[top + 2 - kk, kk - 1])
        return product
