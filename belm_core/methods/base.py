"""Method interface, the typed plans, and the shared linear-multistep machinery.

A method owns its coefficients; the driver (`belm_core.solver`) owns the loop. The
solver state is an explicit `Carry` that `start`/`step` create and return, so nothing
hidden is mutated (diffrax's init/step style). What a method precomputes for one grid
is a small frozen *plan*: `MultistepPlan` (grid + x-space tables by k) for the linear
multistep family, `EdictPlan` (grid + a_i, b_i) for EDICT.

Linear multistep methods (DDIM, BDIA, O-BELM, BELM-k) only provide coefficient tables
`a, b` in the grid's coordinates (bar space for ε-prediction, (x, σ) for a flow's
velocity; docs/math.md §3, §11); `LinearMultistep` turns them into x-space
tables once per grid and runs the recurrence and its exact inverse from
`belm_core.recurrence`, with the start-up of docs/math.md §3 (`methods.startup`): a lone
x_N is advanced by DDIM, then by lower-k BELM steps until k states exist; inversion
starts with one DDIM-inversion step x_0 → x_1 (the k = 1 relation solved for its far
end) and continues with exact inverse steps.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from .. import recurrence
from ..grid import Grid
from ..stability import Stability
from .startup import startup_ladder

__all__ = [
    "Carry", "Method", "LinearMultistep", "Stability", "Evaluate", "MultistepPlan", "EvaluationShift",
    "nan_tables", "p_family_tables", "row_eps",
]


class Evaluate(Protocol):
    """ε at a state with the model time of a grid index, as the driver hands it to a method.

    `evaluate(x, index)` may return the model's own output buffer, which the model may
    reuse on its next call; `evaluate.own(eps)` returns an ε that the method may keep
    past the next evaluation (a copy only when needed). `evaluate(x, index, t=t*,
    scale=κ)` calls the model at (κ·x, t*) instead of (x, t_index) (`EvaluationShift`).
    """

    def __call__(self, x: Any, index: int, t: Any = None, scale: float = 1.0) -> Any: ...

    def own(self, eps: Any) -> Any: ...


@dataclass(frozen=True)
class Carry:
    """Explicit solver state.

    index: grid index of xs[0].
    xs: states in ascending grid index, in both directions: xs[j] sits at index + j
        (linear multistep); EDICT's pair (x, y) both sit at `index`.
    eps: eps[j] is ε(xs[j]) at xs[j]'s own model time, or None where not evaluated.
    aux: what else a method carries between steps (the register of "dpl-ob-traj",
        `belm_core.methods.trajectory`), or None.
    """

    index: int
    xs: tuple
    eps: tuple = ()
    aux: Any = None


@dataclass(frozen=True, eq=False)
class EvaluationShift:
    """Where a method's own rows evaluate ε_i: at another noise level, from x_i alone
    (docs/math.md §13). For grid index i with `time[i]` set,

        ε̂_i = w_i · ε(κ_i x_i, t*_i),   κ_i = α(t*_i)/α_i,   w_i = σ̄(t*_i)/σ̄_i,

    i.e. x̂0 of the same bar state x̄_i read at noise level σ̄*_i = σ̄(t*_i), turned back
    into an ε at σ̄_i: ε̂_i = (x̄_i − x̂0(x̄_i; σ̄*_i))/σ̄_i. ε̂_i is a function of x_i alone,
    so a relation with ε at the middle state stays exactly invertible.

    time: per grid index, the model time t*_i (None: evaluate at t_i as usual).
    scale, weight: κ_i and w_i (1 where `time[i]` is None).
    level: per grid index, the noise level σ̄_m,i on the trajectory whose x̂0 row i stands
        for (NaN where undefined); the look-ahead start-up evaluates the model there.
    """

    time: tuple
    scale: np.ndarray
    weight: np.ndarray
    level: np.ndarray

    def evaluate(self, evaluate: "Evaluate", x: Any, index: int) -> Any:
        """ε̂_index of the state x at grid index `index`."""
        t = self.time[index]
        if t is None:
            return evaluate(x, index)
        return float(self.weight[index]) * evaluate(x, index, t=t, scale=float(self.scale[index]))


@dataclass(frozen=True, eq=False)
class MultistepPlan:
    """A linear multistep method on one grid: x-space tables by k (start-up and own), and
    where the method's own rows evaluate ε (None: at the grid's states and model times)."""

    grid: Grid
    tables: Mapping[int, recurrence.Table]
    shift: EvaluationShift | None = None


def nan_tables(grid: Grid, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Bar-space tables a, b of shape (N+1, k), all NaN: rows are filled where defined."""
    return np.full((grid.N + 1, k), np.nan), np.full((grid.N + 1, k), np.nan)


def p_family_tables(grid: Grid, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 2-step relation with ε at the middle state, exact on constants and straight lines
    (docs/math.md §12), for p_i on rows i = 1 … N−1 (`p` of shape (N−1,)):

        a_{i,1} = 1 − p_i,   a_{i,2} = p_i,   b_{i,1} = −(h_i + p_i h_{i+1}) / h_i,   b_{i,2} = 0.

    BDIA is the member p_i = γ s_{i+1}/s_{i−1}; the p-family's named rules choose other p_i.
    """
    a, b = nan_tables(grid, 2)
    if grid.N >= 2:
        h_i, h_ip1 = grid.h[1:-1], grid.h[2:]
        a[1:-1, 0] = 1.0 - p
        a[1:-1, 1] = p
        b[1:-1, 0] = -(h_i + p * h_ip1) / h_i
        b[1:-1, 1] = 0.0
    return a, b


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
    def latent_size(self) -> int:
        """Number of arrays in an inverted Latent: the k states, plus any register."""
        return self.k

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
        """Precompute everything a grid needs (a frozen plan; coefficients in float64)."""

    @abstractmethod
    def start(self, plan: Any, x: Any, index: int) -> Carry:
        """Sampling state from a lone x at grid index `index`."""

    @abstractmethod
    def step(self, plan: Any, carry: Carry, evaluate: Evaluate) -> Carry:
        """One sampling step: the newest index goes from i to i − 1."""

    @abstractmethod
    def inverse_start(self, plan: Any, x0: Any) -> Carry:
        """Inversion state at the end of the trajectory, grid index 0."""

    @abstractmethod
    def inverse_step(self, plan: Any, carry: Carry, evaluate: Evaluate) -> Carry:
        """One inversion step: the newest index goes from i to i + 1."""

    @abstractmethod
    def latent_states(self, carry: Carry) -> tuple:
        """The states exact reconstruction needs, noisiest first, from an inversion carry."""

    @abstractmethod
    def from_latent(self, plan: Any, states: Sequence[Any], index: int) -> Carry:
        """Sampling state from a latent whose first (noisiest) state sits at `index`."""

    def head(self, carry: Carry, direction: str) -> tuple[int, Any]:
        """(grid index, state) of the newest state in the walking direction."""
        if direction == "sample":
            return carry.index, carry.xs[0]
        return carry.index + len(carry.xs) - 1, carry.xs[-1]

    def output(self, carry: Carry) -> Any:
        """x_0 from the final sampling carry."""
        return carry.xs[0]

    @abstractmethod
    def amplification(self, plan: Any, until: int) -> float:
        """Round-off amplification of inverting up to grid index `until`: Π |1/c_{i,k}|."""


class LinearMultistep(Method):
    """A k-step method given by bar-space tables a, b (docs/math.md §3)."""

    @abstractmethod
    def bar_table(self, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
        """(a, b), each of shape (N+1, k): a[i, j−1] = a_{i,j}, b[i, j−1] = b_{i,j} (NaN where undefined),
        in the grid's coordinates y = x/s, τ (functions of h = Δτ and, for BDIA, of s)."""

    def ladder(self) -> list[LinearMultistep]:
        """Methods with 1, 2, …, k states: the start-up steps, then this method."""
        return startup_ladder(self.k)[: self.k - 1] + [self]

    def prepare(self, grid: Grid) -> MultistepPlan:
        tables = {m.k: recurrence.x_space_table(*m.bar_table(grid), grid) for m in self.ladder()}
        return MultistepPlan(grid=grid, tables=tables)

    # sampling ------------------------------------------------------------------------
    def start(self, plan, x, index):
        return Carry(index=index, xs=(x,), eps=(None,))

    def from_latent(self, plan, states, index):
        return Carry(index=index - self.k + 1, xs=tuple(reversed(states)), eps=(None,) * len(states))

    def resume(self, plan: MultistepPlan, x: Any, t: float, f: Any, index: int) -> Carry:
        """The sampling carry at grid index `index` − 1 from a state x at model time t (on the
        grid or not) whose model output f = f(x, t) is known, without a model call.

        x and f give the data prediction and the line through x along which f is constant, in
        the grid's coordinates (y = x/s, docs/math.md §11; DDIM's step, exact on straight
        trajectories):  x̂0 = x/s(t) − τ(t) f,  y_j = x̂0 + τ_j f.  The walk goes on from
        x_index and x_{index−1} on that line (the states a 2-step row reads; one for k = 1),
        i.e. the DDIM start-up taken from level t instead of t_index. A replaced state in a
        drop-in scheduler (img2img's noised image, an edited latent) restarts here.
        """
        g = plan.grid
        s_t, tau_t = (float(v) for v in g.schedule.coordinates(t, g.prediction))
        xs = [recurrence.ddim_move(x, f, s_t, tau_t, float(g.scale[j]), float(g.tau[j]))
              for j in (index - 1, index)[: self.k]]
        return Carry(index=index - 1, xs=tuple(xs), eps=(None,) * len(xs))

    def step(self, plan: MultistepPlan, carry: Carry, evaluate: Evaluate) -> Carry:
        i = carry.index  # newest state x_i; compute x_{i−1}
        kk = min(len(carry.xs), self.k)
        table = plan.tables[kk]
        xs = carry.xs[:kk]  # xs[j−1] = x_{i−1+j}
        eps = _fill_eps(table, i, xs, list(carry.eps[:kk]), self._shift(plan, kk), evaluate)
        x_new = recurrence.step(table, i, xs, eps)
        return self._keep(evaluate, i - 1, (x_new, *carry.xs), (None, *eps, *carry.eps[kk:]), lowest=True)

    # inversion -----------------------------------------------------------------------
    def inverse_start(self, plan, x0):
        return Carry(index=0, xs=(x0,), eps=(None,))

    def inverse_step(self, plan: MultistepPlan, carry: Carry, evaluate: Evaluate) -> Carry:
        top = carry.index + len(carry.xs) - 1
        if len(carry.xs) == 1:
            # DDIM inversion (docs/math.md §2): the k = 1 relation solved for x_{top+1}, with
            # ε(x_top, t_{top+1}) standing in for ε at the unknown far end; ε at x_top's
            # own time is still unknown, so nothing is cached
            x = carry.xs[0]
            x_new = recurrence.inverse_step(plan.tables[1], top + 1, x, (), (), eps_far=evaluate(x, top + 1))
            return self.inverse_begin(plan, carry, x_new, evaluate)
        kk = min(len(carry.xs), self.k)  # known states the relation uses
        table = plan.tables[kk]
        i = top + 2 - kk
        window = carry.xs[-kk:]  # (x_{i−1}, x_i, …, x_{top})
        eps = _fill_eps(table, i, window[1:], list(carry.eps[-kk + 1 :]) if kk > 1 else [], self._shift(plan, kk), evaluate)
        x_new = recurrence.inverse_step(table, i, window[0], window[1:], eps)
        eps_all = (*carry.eps[: len(carry.xs) - kk + 1], *eps, None)
        return self._keep(evaluate, carry.index, (*carry.xs, x_new), eps_all, lowest=False)

    def inverse_begin(self, plan: MultistepPlan, carry: Carry, x_new: Any, evaluate: Evaluate) -> Carry:
        """The inversion carry once a step from a lone state x_top has found x_{top+1} (DDIM's inversion
        step, or `belm_core.methods.inverse_start`'s sub-steps from x_0); no ε is cached (ε at x_top's
        own time is unknown)."""
        return self._keep(evaluate, carry.index, (carry.xs[0], x_new), (None, None), lowest=False)

    def _shift(self, plan: MultistepPlan, kk: int) -> EvaluationShift | None:
        """The evaluation shift for a step with `kk` states: the method's own rows only
        (the start-up's DDIM step keeps ε at (x_N, t_N))."""
        return plan.shift if kk == self.k else None

    def _keep(self, evaluate: Evaluate, index: int, xs: tuple, eps: tuple, lowest: bool) -> Carry:
        """Keep the k newest states (the lowest while sampling); drop ε of the state that
        leaves next (no later step reads it), and own the ε that stay."""
        k = self.k
        if len(xs) > k:
            if lowest:
                xs, eps = xs[:k], eps[:k]
            else:
                index, xs, eps = index + len(xs) - k, xs[-k:], eps[-k:]
        if len(xs) == k:
            eps = (*eps[:-1], None) if lowest else (None, *eps[1:])
        eps = tuple(None if e is None else evaluate.own(e) for e in eps)
        return Carry(index=index, xs=xs, eps=eps)

    def latent_states(self, carry):
        return tuple(reversed(carry.xs))

    def amplification(self, plan: MultistepPlan, until: int) -> float:
        product = 1.0
        for top in range(1, until):
            kk = min(top + 1, self.k)
            c = plan.tables[kk].c
            product *= abs(1.0 / c[top + 2 - kk, kk - 1])
        return product


def row_eps(shift: EvaluationShift | None, evaluate: Evaluate, x: Any, index: int) -> Any:
    """ε of the state x at grid index `index` as a method's own row reads it: where `shift` says
    (`EvaluationShift`), or at (x, t_index) without one."""
    return evaluate(x, index) if shift is None else shift.evaluate(evaluate, x, index)


def _fill_eps(
    table: recurrence.Table, i: int, xs: Sequence[Any], eps: list, shift: EvaluationShift | None, evaluate: Evaluate
) -> list:
    """ε_{i−1+j} for the slots j the relation at row i reads, evaluating the missing ones.

    `xs[j−1]` is x_{i−1+j} (j = 1 … len(xs)); ε kept in `eps` is reused. Every ε but the
    last one evaluated is owned, since a later evaluation may overwrite the model's buffer.
    With a `shift`, ε is read where it says (`EvaluationShift`).
    """
    eps = eps + [None] * (len(xs) - len(eps))
    missing = [j for j in table.eps_slots(i) if j <= len(xs) and eps[j - 1] is None]
    for n, j in enumerate(missing):
        e = row_eps(shift, evaluate, xs[j - 1], i - 1 + j)
        eps[j - 1] = e if n == len(missing) - 1 else evaluate.own(e)
    return eps
