"""A solver driven one model call at a time: `Stepper`.

`Solver.sample` / `Solver.invert` own the loop and call ε themselves. A diffusers
scheduler works the other way round: the pipeline calls the model and hands the
scheduler ONE model output per `step`. `Stepper` turns the solver inside out:

    stepper = Stepper.sampling(solver, x_T)          # or .from_latent / .inversion
    while not stepper.done:
        call = stepper.next_call()                   # ε is needed at call.input, model time call.time
        stepper.advance(eps_fn(call.input, call.time))
    x_0 = stepper.head[1]

The methods are explicit-state (`carry = method.step(plan, carry, evaluate)`), so a
step is a pure function of its carry. `next_call()` runs the step with a probing
`evaluate` that stops at the first ε it was not given and reports where it is needed;
`advance(eps)` records that ε and runs the step again, replaying the ε given so far. A
step that needs m model calls (EDICT: 2; a k-state latent's first BELM step; a
predictor–corrector start-up) completes after m `advance` calls; until then the carry is
unchanged. A step that needs none (the first multistep row after a predictor–corrector
start-up, which reuses the start-up's ε) is taken as soon as the call before it completes,
so `done` turns True with the last model call. Coefficients, recurrence, evaluation shifts
and start-up all stay in `belm_core.methods`: nothing here knows a formula.

A call need not be at a grid state and the grid's model time: a shifted row (docs/math.md
§13) reads ε(κ x_i, t*_i), a trajectory row (§16) reads at an extrapolated state, the
predictor–corrector start-up at its DDIM predictor. `Call` says which: `input` is the
array the model must see (κ·x), `time` its model time, `on_grid` whether it is the plain
(x_index, t_index). Sampling from a lone state runs the solver's `startup` first, as
`Solver.sample` does.

The checks are the solver's own: states go through `Solver._to_state` (dtype
`state_dtype`, float64 by default, finite), ε through the solver's evaluator
(array type, shape, cast to the state dtype, finite, copied once if it is a buffer
the caller may reuse).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from .latent import Latent
from .methods import Carry, LinearMultistep
from .solver import STARTUPS, Solver, _Evaluator, _max_abs

__all__ = ["Stepper", "Direction", "Call"]

Direction = Literal["sample", "invert"]


def _check_row(solver: Solver, index: Any) -> int:
    """`index`, checked to be a grid index in [1, N]: a state with a model time."""
    N = solver.grid.N
    if not (isinstance(index, int) and 1 <= index <= N):
        raise ValueError(f"index={index!r} must be a grid index in [1, {N}] (a state with a model time)")
    return index


class _Need(Exception):
    """Raised by the probing evaluate: ε is needed at (x, index), model time t (None: t_index), input scale."""

    def __init__(self, x: Any, index: int, t: Any = None, scale: float = 1.0):
        super().__init__(index)
        self.x, self.index, self.t, self.scale = x, index, t, scale


@dataclass(frozen=True)
class Call:
    """One model call a method asks for: the model sees `input` = scale·x at model time `time`.

    x: the state the method evaluates (the solver's dtype); index: the grid row it belongs to;
    time: the model time (t_index unless the row reads at a shifted level); scale: κ (1 unless
    shifted); on_grid: x is the carry's grid state x_index and (time, scale) = (t_index, 1).
    """

    x: Any
    index: int
    time: Any
    scale: float
    on_grid: bool

    @property
    def input(self) -> Any:
        """The model's input κ·x (x itself when κ = 1; callers must not write to it)."""
        return self.x if self.scale == 1.0 else self.scale * self.x


class _Replay:
    """`evaluate` that hands back the ε supplied so far, in order, and stops at the next one."""

    def __init__(self, supplied: list):
        self.supplied, self.n = supplied, 0

    def __call__(self, x: Any, index: int, t: Any = None, scale: float = 1.0) -> Any:
        if self.n < len(self.supplied):
            self.n += 1
            return self.supplied[self.n - 1]
        raise _Need(x, index, t, scale)

    @staticmethod
    def own(eps: Any) -> Any:
        return eps  # supplied ε are already owned (see Stepper.advance)


class Stepper:
    """One direction of a `Solver`, advanced by one ε at a time (module docstring).

    Build it with `Stepper.sampling`, `Stepper.from_latent`, `Stepper.resuming` or `Stepper.inversion`.

    Attributes:
        solver: the Solver whose grid, plan and checks are used.
        direction: "sample" (grid index decreasing to 0) or "invert" (increasing to `target`).
        target: the grid index at which the walk is done (0 when sampling).
    """

    def __init__(self, solver: Solver, direction: Direction, carry: Carry, target: int, first=None):
        if direction not in ("sample", "invert"):
            raise ValueError(f"direction={direction!r} must be 'sample' or 'invert'")
        self.solver, self.direction, self.target = solver, direction, int(target)
        self._carry = carry
        self._supplied: list = []
        self._need: _Need | None = None
        self._advance = solver.method.step if direction == "sample" else solver.method.inverse_step
        self._first = first  # the start-up's step (sampling from a lone state, inverting x_0), or None
        self._given_eps: Any = None
        # `_given` hands over the ε given to `advance` and ignores its input: no copy is made
        self._evaluator = _Evaluator(solver, self._given, direction, _max_abs(self.head[1]), pass_input=False)
        self.steps_done = 0

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def sampling(cls, solver: Solver, x: Any, index: int | None = None) -> Stepper:
        """Sample from a lone state x at grid index `index` (default N; the method's start-up runs first)."""
        index = _check_row(solver, solver.grid.N if index is None else index)
        carry = solver.method.start(solver._plan, solver._to_state(x, "x"), index)
        return cls(solver, "sample", carry, 0, first=STARTUPS[solver.startup])

    @classmethod
    def from_latent(cls, solver: Solver, latent: Latent) -> Stepper:
        """Sample from a Latent (checked against the solver's method and grid, as `Solver.sample` does)."""
        index = solver._check_latent(latent)
        states = [solver._to_state(s, f"latent.states[{n}]") for n, s in enumerate(latent.states)]
        return cls(solver, "sample", solver.method.from_latent(solver._plan, states, index), 0)

    @classmethod
    def resuming(cls, solver: Solver, x: Any, t: Any, f: Any, index: int) -> Stepper:
        """Sample on from a state x at model time t whose model output f = f(x, t) is already
        known, as the state of grid row `index` (`LinearMultistep.resume`: one DDIM move along
        x̂0 + τ f onto x_index and x_{index−1}, no model call; then the method's rows).

        A drop-in scheduler restarts here when its caller replaced a sample at a model call
        that is not at the grid's states and times (docs/math.md §13, §16).
        """
        method = solver.method
        if not isinstance(method, LinearMultistep):
            raise TypeError(f"resuming needs a linear multistep method, not {method.signature()}")
        _check_row(solver, index)
        carry = method.resume(solver._plan, solver._to_state(x, "x"), float(t), solver._to_state(f, "f"), index)
        return cls(solver, "sample", carry, 0)

    @classmethod
    def inversion(cls, solver: Solver, x0: Any, until: int | None = None) -> Stepper:
        """Invert x0 (at grid index 0) up to grid index `until` (default N), as `Solver.invert` does."""
        solver.method.check_invertible()
        until = solver._check_until(until)
        carry = solver.method.inverse_start(solver._plan, solver._to_state(x0, "x0"))
        return cls(solver, "invert", carry, until, first=solver._inverse_first())

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
    def next_call(self) -> Call:
        """The next model call: where (input, time) and for which grid row (`Call`)."""
        if self._need is None:
            if self.done:
                raise ValueError(f"the {self.direction} walk is done (grid index {self.target}); nothing needs ε")
            self._settle()
        need = self._need
        t_grid = self.solver.grid.t(need.index)
        time = t_grid if need.t is None else need.t
        on_grid = need.scale == 1.0 and time == t_grid and self._holds(need.index, need.x)
        return Call(x=need.x, index=need.index, time=time, scale=float(need.scale), on_grid=on_grid)

    def need(self) -> tuple[Any, int]:
        """(x, index): the state at which the next ε is needed and the grid index of its model time.

        Only for calls at the grid's model times; a shifted call (docs/math.md §13) raises
        ValueError: use `next_call()`, which also gives its model time and input scale.
        """
        call = self.next_call()
        if call.scale != 1.0 or call.time != self.solver.grid.t(call.index):
            raise ValueError(
                f"the next model call is at a shifted level (t={call.time}, input scale {call.scale:.6g}), not at "
                f"grid index {call.index}'s model time; use Stepper.next_call()"
            )
        return call.x, call.index

    def advance(self, eps: Any, *, owned: bool = False) -> bool:
        """Give ε at `next_call()`'s input and time; True when this completed a step (the carry moved on).

        The Stepper may keep ε past this call; it copies ε once unless `owned=True` says ε is a
        fresh array nobody else will write to (e.g. a dtype conversion the caller just made).
        """
        call = self.next_call()
        self._evaluator.step = self.steps_done + 1
        self._given_eps = eps
        try:  # the solver's checks: type, shape, dtype, finite
            checked = self._evaluator(call.x, call.index, t=call.time, scale=call.scale)
        finally:
            self._given_eps = None
        self._supplied.append(checked if owned else self._evaluator.own(checked))
        self._need = None
        try:
            carry = self._step(_Replay(self._supplied))
        except _Need as need:  # the step needs more ε (EDICT, a latent's first multistep step, a start-up)
            self._need = need
            return False
        self._commit(carry)
        if not self.done:
            self._settle()
        return True

    def _step(self, evaluate: _Replay) -> Carry:
        first = self._first if self.steps_done == 0 else None
        return (first or self._advance)(self.solver._plan, self._carry, evaluate)

    def _commit(self, carry: Carry) -> None:
        self._carry, self._supplied = carry, []
        self.steps_done += 1

    def _settle(self) -> None:
        """Find the next model call, taking the steps that need none on the way."""
        while not self.done:
            try:
                carry = self._step(_Replay(self._supplied))
            except _Need as need:
                self._need = need
                return
            self._commit(carry)

    def _holds(self, index: int, x: Any) -> bool:
        """x is the carry's own state at grid index `index` (the same array)."""
        carry = self._carry
        if not isinstance(self.solver.method, LinearMultistep):
            return self.head[0] == index and self.head[1] is x
        j = index - carry.index
        return 0 <= j < len(carry.xs) and carry.xs[j] is x

    def run(self, eps_fn) -> Stepper:
        """Drive the walk to `target` with eps_fn(x, t) (what `Solver._run` does, one call at a time)."""
        while not self.done:
            call = self.next_call()
            self.advance(eps_fn(call.input, call.time))
        return self

    def _given(self, x: Any, t: Any) -> Any:
        """The solver evaluator's eps_fn: the ε handed to `advance`."""
        return self._given_eps
