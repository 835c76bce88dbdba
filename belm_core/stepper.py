"""A solver driven one model call at a time: `Stepper`.

`Solver.sample` / `Solver.invert` own the loop and call ε themselves. A diffusers
scheduler works the other way round: the pipeline calls the model and hands the
scheduler ONE model output per `step`. `Stepper` turns the solver inside out:

    stepper = Stepper.sampling(solver, x_T)          # or .from_latent / .inversion
    while not stepper.done:
        x, index = stepper.need()                    # ε is needed at state x, model time t_index
        stepper.advance(eps_fn(x, solver.grid.t(index)))
    x_0 = stepper.head[1]

The methods are explicit-state (`carry = method.step(plan, carry, evaluate)`), so a
step is a pure function of its carry. `need()` runs the step with a probing `evaluate`
that stops at the first ε it was not given and reports (x, index); `advance(eps)`
records that ε and runs the step again, replaying the ε given so far. A step that
needs m model calls (EDICT: 2; a k-state latent's first BELM step) completes after m
`advance` calls; until then the carry is unchanged. Coefficients, recurrence and
start-up all stay in `belm_core.methods`: nothing here knows a formula.

The checks are the solver's own: states go through `Solver._to_state` (dtype
`state_dtype`, float64 by default, finite), ε through the solver's evaluator
(array type, shape, cast to the state dtype, finite, copied once if it is a buffer
the caller may reuse).
"""

from __future__ import annotations

from typing import Any, Literal

from .latent import Latent
from .methods import Carry, LinearMultistep
from .solver import Solver, _Evaluator, _max_abs

__all__ = ["Stepper", "Direction"]

Direction = Literal["sample", "invert"]


class _Need(Exception):
    """Raised by the probing evaluate: ε is needed at (x, index)."""

    def __init__(self, x: Any, index: int):
        super().__init__(index)
        self.x, self.index = x, index


class _Replay:
    """`evaluate` that hands back the ε supplied so far, in order, and stops at the next one."""

    def __init__(self, supplied: list):
        self.supplied, self.n = supplied, 0

    def __call__(self, x: Any, index: int) -> Any:
        if self.n < len(self.supplied):
            self.n += 1
            return self.supplied[self.n - 1]
        raise _Need(x, index)

    @staticmethod
    def own(eps: Any) -> Any:
        return eps  # supplied ε are already owned (see Stepper.advance)


class Stepper:
    """One direction of a `Solver`, advanced by one ε at a time (module docstring).

    Build it with `Stepper.sampling`, `Stepper.from_latent` or `Stepper.inversion`.

    Attributes:
        solver: the Solver whose grid, plan and checks are used.
        direction: "sample" (grid index decreasing to 0) or "invert" (increasing to `target`).
        target: the grid index at which the walk is done (0 when sampling).
    """

    def __init__(self, solver: Solver, direction: Direction, carry: Carry, target: int):
        if direction not in ("sample", "invert"):
            raise ValueError(f"direction={direction!r} must be 'sample' or 'invert'")
        if getattr(solver._plan, "shift", None) is not None:
            raise ValueError(
                f"{solver.method.signature()} evaluates ε at shifted noise levels (docs/math.md §13), not at the grid's "
                "states and model times a Stepper hands out; run it with Solver.sample / Solver.invert"
            )
        self.solver, self.direction, self.target = solver, direction, int(target)
        self._carry = carry
        self._supplied: list = []
        self._need: _Need | None = None
        self._advance = solver.method.step if direction == "sample" else solver.method.inverse_step
        self._given_eps: Any = None
        self._evaluator = _Evaluator(solver, self._given, direction, _max_abs(self.head[1]))
        self.steps_done = 0

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def sampling(cls, solver: Solver, x: Any, index: int | None = None) -> Stepper:
        """Sample from a lone state x at grid index `index` (default N; the method's start-up runs first)."""
        N = solver.grid.N
        index = N if index is None else index
        if not (isinstance(index, int) and 1 <= index <= N):
            raise ValueError(f"index={index!r} must be a grid index in [1, {N}] (a state with a model time)")
        carry = solver.method.start(solver._plan, solver._to_state(x, "x"), index)
        return cls(solver, "sample", carry, 0)

    @classmethod
    def from_latent(cls, solver: Solver, latent: Latent) -> Stepper:
        """Sample from a Latent (checked against the solver's method and grid, as `Solver.sample` does)."""
        index = solver._check_latent(latent)
        states = [solver._to_state(s, f"latent.states[{n}]") for n, s in enumerate(latent.states)]
        return cls(solver, "sample", solver.method.from_latent(solver._plan, states, index), 0)

    @classmethod
    def inversion(cls, solver: Solver, x0: Any, until: int | None = None) -> Stepper:
        """Invert x0 (at grid index 0) up to grid index `until` (default N), as `Solver.invert` does."""
        solver.method.check_invertible()
        until = solver._check_until(until)
        carry = solver.method.inverse_start(solver._plan, solver._to_state(x0, "x0"))
        return cls(solver, "invert", carry, until)

    # -- where the walk stands -------------------------------------------------------------------
    @property
    def carry(self) -> Carry:
        """The method's explicit state after the last completed step."""
        return self._carry

    @property
    def head(self) -> tuple[int, Any]:
        """(grid index, state) of the newest state in the walking direction."""
        return self.solver.method.head(self._carry, self.direction)

    @property
    def done(self) -> bool:
        """True once the head has reached `target`."""
        return self.head[0] == self.target

    def state(self, index: int) -> Any | None:
        """The carry's state at grid index `index`, or None when the carry does not hold it.

        Linear multistep carries hold xs[j] at grid index carry.index + j.
        """
        if not isinstance(self.solver.method, LinearMultistep):
            raise TypeError(f"state(index) needs a linear multistep method, not {self.solver.method.signature()}")
        j = index - self._carry.index
        return self._carry.xs[j] if 0 <= j < len(self._carry.xs) else None

    def latent(self) -> Latent:
        """The Latent of an inversion at its current head (index = head index, valid for sampling)."""
        if self.direction != "invert":
            raise ValueError("latent() belongs to an inversion Stepper")
        index = self.head[0]
        low, _ = self.solver.until_range
        if index < low or self._supplied:
            raise ValueError(
                f"the inversion stands at grid index {index}{' inside a step' if self._supplied else ''}; "
                f"a Latent needs a completed step at index ≥ {low}"
            )
        return Latent(
            states=self.solver.method.latent_states(self._carry),
            index=index,
            method=self.solver.method.signature(),
            grid_key=self.solver.grid.key,
        )

    # -- one model call at a time ----------------------------------------------------------------
    def need(self) -> tuple[Any, int]:
        """(x, index): the state at which the next ε is needed and the grid index of its model time."""
        if self._need is None:
            if self.done:
                raise ValueError(f"the {self.direction} walk is done (grid index {self.target}); nothing needs ε")
            try:
                self._advance(self.solver._plan, self._carry, _Replay(self._supplied))
            except _Need as need:
                self._need = need
            else:  # (a step that needs no ε: a method without one would loop forever in a driver)
                raise RuntimeError(f"{self.solver.method.signature()} took a step without evaluating ε")
        return self._need.x, self._need.index

    def advance(self, eps: Any, *, owned: bool = False) -> bool:
        """Give ε at `need()`'s (x, index); True when this completed a step (the carry moved on).

        The Stepper may keep ε past this call; it copies ε once unless `owned=True` says ε is a
        fresh array nobody else will write to (e.g. a dtype conversion the caller just made).
        """
        x, index = self.need()
        self._evaluator.step = self.steps_done + 1
        self._given_eps = eps
        try:
            checked = self._evaluator(x, index)  # the solver's checks: type, shape, dtype, finite
        finally:
            self._given_eps = None
        self._supplied.append(checked if owned else self._evaluator.own(checked))
        self._need = None
        try:
            carry = self._advance(self.solver._plan, self._carry, _Replay(self._supplied))
        except _Need as need:  # the step needs more ε (EDICT, a latent's first multistep step)
            self._need = need
            return False
        self._carry, self._supplied = carry, []
        self.steps_done += 1
        return True

    def run(self, eps_fn) -> Stepper:
        """Drive the walk to `target` with eps_fn(x, t) (what `Solver._run` does, one call at a time)."""
        while not self.done:
            x, index = self.need()
            self.advance(eps_fn(x, self.solver.grid.t(index)))
        return self

    def _given(self, x: Any, t: Any) -> Any:
        """The solver evaluator's eps_fn: the ε handed to `advance`."""
        return self._given_eps
