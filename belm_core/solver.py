"""The driver: `Solver.sample(eps_fn, x_T)` and `Solver.invert(eps_fn, x_0)`.

The solver owns the loop (start-up, grid, dtype handling, checks on ε, progress bar,
callback); a method owns one step and its inverse (`belm_core.methods`).

    solver = Solver(DiscreteVP.scaled_linear(), steps=50, method="o-belm")
    latent = solver.invert(eps_fn, x0)        # Latent((x_N, x_{N−1}))
    x0_rec = solver.sample(eps_fn, latent)    # == x0 up to rounding

`eps_fn(x, t)` receives the state (in `state_dtype`, float64 by default) and the
schedule's model time as a Python number, and returns the model's output with x's
shape: ε for `prediction="epsilon"` (the default for VP/VE schedules), the velocity
v = dx/dσ = n − x_0 for `prediction="velocity"` (flows, `FlowMatch`'s default):

    solver = Solver(FlowMatch(shift=3.0), steps=28, method="o-belm", prediction="velocity")
    latent = solver.invert(v_fn, x0)          # exact all the way to σ = 1 (pure noise)
    x0_rec = solver.sample(v_fn, latent)

The prediction fixes the coordinates the recurrence runs in (docs/math.md §11). Exactness
needs `eps_fn` to be deterministic: the same input must give the same output.

What `eps_fn` and a callback do to their arguments cannot reach the solver: `eps_fn`
gets a copy of the state (one state-sized copy per model call, so an ε that writes to
its input, `x *= c`, is harmless), an ε the solver keeps past the next model call is
copied once when the model's output is the very buffer it returned (so an ε that reuses
one output buffer is harmless; ε converted to another dtype is already a fresh array),
and a callback gets a copy of the state.

Autograd (torch): by default both directions run under `torch.no_grad()`, as diffusers
pipelines do, and return tensors without a graph even for a `requires_grad` input.
`grad=True` (on `sample` and `invert`) records the graph instead, so gradients flow
through every step to the input and to whatever ε depends on (its parameters, a
conditioning tensor). That keeps every intermediate state and ε's own activations
alive until `backward()`: memory grows like O(N) states plus N model graphs. Exact
inversion would allow O(1)-memory backpropagation (recompute each state from the next
one with the inverse step instead of storing it, as reversible networks do); that is
not implemented here.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import warnings
from typing import Any, Callable, Literal, Sequence

import numpy as np

from . import arrays
from .checks import is_bool, is_index, is_real
from .grid import End, Grid, make_grid
from .latent import Latent, LatentMetadataWarning, check_for as check_latent
from .methods import Carry, LinearMultistep, Method, get_method
from .methods.inverse_start import substep_times, substepped_inverse_start
from .methods.pc_start import lookahead_log_start, lookahead_start, moved_pc_start, pc_start, shifted_pc_start
from .schedules import NoiseSchedule, Prediction, Spacing

__all__ = [
    "Solver", "Latent", "LatentMetadataWarning", "AmplificationWarning", "PrecisionWarning", "EpsFn", "until_range",
]

EpsFn = Callable[[Any, Any], Any]
#: how sampling from a lone x_N builds the first step: the paper's DDIM step ("ddim"), the
#: predictor–corrector step of `belm_core.methods.pc_start` ("pc") or its variant whose
#: corrector node is the level a shifted method's first row reads ("lookahead"; "lookahead-log"
#: with weights exact for a constant error in ε) or whose corrector reads the predictor as a
#: shifted method's first row reads its state ("pc-shift"); none costs an extra call
Startup = Literal["ddim", "pc", "lookahead", "lookahead-log", "pc-shift", "pc-shift-moved"]
STARTUPS = {"ddim": None, "pc": pc_start, "lookahead": lookahead_start, "lookahead-log": lookahead_log_start,
            "pc-shift": shifted_pc_start, "pc-shift-moved": moved_pc_start}
#: the start-ups that read the model where a shifted method's first row does
SHIFTED_STARTUPS = ("lookahead", "lookahead-log", "pc-shift", "pc-shift-moved")
Callback = Callable[[dict], None]

#: keys of the dict a callback receives
CALLBACK_KEYS = ("direction", "step", "total", "index", "t", "sigma_bar", "x")


class AmplificationWarning(RuntimeWarning):
    """Inversion may amplify round-off beyond what the state dtype can absorb."""


class PrecisionWarning(UserWarning):
    """The solver state is held in a low-precision dtype."""


class Solver:
    """A sampler with exact inversion on one time grid.

    Args:
        schedule: a `belm_core.schedules` schedule.
        steps: number of steps N (with `spacing`), or give `timesteps`.
        method: a registered name ("o-belm", "bdia", "edict", "ddim", "belm3") or a
            Method instance such as `BDIA(gamma=0.9)`.
        spacing: grid layout; the schedule's default when None.
        timesteps: explicit model times, noisiest first (instead of steps/spacing).
        state_dtype: dtype of the solver state ("float64" default; None keeps the input's).
        allow_unstable: run a method whose sampling recurrence is not zero-stable.
        check_finite: check every ε for NaN/inf (one reduction per model call).
        amplification_tol: warn when inversion's round-off amplification times the
            state dtype's epsilon exceeds this relative error (a finite number > 0).
        end: where trajectories end: "clean" (α = 1, σ̄ = 0, the default) or "t_min",
            the schedule's smallest model time (for `DiscreteVP` ᾱ_0, diffusers'
            `set_alpha_to_one=False`). If the last model time already is t_min, that
            zero-length final step is dropped (see `belm_core.grid.make_grid`).
        prediction: what the model function returns: "epsilon" (ε; coordinates
            y = x/α, τ = σ̄) or "velocity" (a flow's v = dx/dσ; y = x, τ = σ), one of
            `schedule.predictions`; None takes `schedule.default_prediction` ("epsilon"
            for VP/VE, "velocity" for `FlowMatch`). ε on a grid that starts at pure
            noise (α = 0) is refused with a ValueError.

        startup: first step of sampling from a lone x_T: "ddim" (the paper's, default) or
            "pc" (predictor–corrector, `belm_core.methods.pc_start`; linear multistep
            methods with k ≥ 2; ε-prediction and flows' velocity alike). Same model calls
            either way; inversion and sampling from a Latent never use it, so it changes
            neither exactness nor the Latent. "lookahead": the "pc" step with its corrector
            evaluated at the noise level the method's first row reads x̂0 (methods with an
            evaluation shift, e.g. "dpl-ob-shift"; docs/math.md §13). "lookahead-log": the
            same node with weights exact for a constant error in ε (x̂0 = a + b σ̄ near the
            top of the grid, as a trained network's is; docs/math.md §20). "pc-shift": the "pc"
            step whose corrector reads the predictor as the method's first row reads its
            state, at that row's shifted level (methods with an evaluation shift;
            docs/math.md §18). "pc-shift-moved": "pc-shift" whose read, reused by the first
            row, is moved from the predictor to the corrected state with a per-sample
            Gaussian gain fitted to the step's two reads (docs/math.md §22).
        inversion_substeps: how many graded DDIM sub-steps inversion's first step x_0 → x_1
            takes (`belm_core.methods.inverse_start`, docs/math.md §28; linear multistep
            methods with k ≥ 2). 1 is the paper's single step. K > 1 adds one model call per
            distinct training time it finds between the end state and t_1 (K − 1 at most,
            `inversion_substep_times`) and brings the inverted latent closer to the exact
            ODE inversion; sampling, the Latent's layout and the exact round trip are unchanged.

    Flow grids with diffusers' options: `Solver(FlowMatch(shift=3.0), steps=28)`, or
    `Solver(schedule, timesteps=schedule.timesteps(28, mu=..., sigmas=...))`.
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        steps: int | None = None,
        method: str | Method = "o-belm",
        *,
        spacing: Spacing | None = None,
        timesteps: Sequence[float] | np.ndarray | None = None,
        state_dtype: Literal["float64", "float32", "float16", "bfloat16"] | None = "float64",
        allow_unstable: bool = False,
        check_finite: bool = True,
        amplification_tol: float = 1e-6,
        end: End = "clean",
        prediction: Prediction | None = None,
        startup: Startup = "ddim",
        inversion_substeps: int = 1,
    ):
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a belm_core NoiseSchedule, got {type(schedule).__name__}")
        self.schedule = schedule
        self.method = get_method(method)
        if timesteps is None:
            if steps is None:
                raise ValueError("give steps=N (with an optional spacing=) or timesteps=array")
            timesteps = schedule.timesteps(steps, spacing)
            schedule.check_grid(timesteps, steps, spacing if spacing is not None else schedule.default_spacing)
        elif spacing is not None or (steps is not None and steps != len(timesteps)):
            raise ValueError(
                f"timesteps= fixes the grid; do not also pass spacing={spacing!r} or a different steps={steps!r}"
            )
        _check_flag(allow_unstable, "allow_unstable")
        _check_flag(check_finite, "check_finite")
        if not is_real(amplification_tol, finite=False):
            raise TypeError(f"amplification_tol={amplification_tol!r} must be a real number (a relative error, e.g. 1e-6)")
        if not (np.isfinite(amplification_tol) and amplification_tol > 0):
            raise ValueError(f"amplification_tol={amplification_tol!r} must be a finite number > 0 (e.g. 1e-6)")
        self.grid: Grid = make_grid(schedule, timesteps, end=end, prediction=prediction)
        if self.grid.N < self.method.min_steps:
            dropped = " (end='t_min' dropped the zero-length last step)" if self.grid.N < len(timesteps) else ""
            raise ValueError(
                f"steps={self.grid.N}{dropped} is too few for {self.method.signature()}: it needs at least "
                f"{self.method.min_steps} (k = {self.method.k} states)"
            )
        stability = self.method.stability()
        if stability is not None and not stability.sampling and not allow_unstable:
            raise ValueError(
                f"method {self.method.signature()} is not zero-stable when sampling (roots of ρ for equal steps: "
                f"{np.round(stability.roots, 4).tolist()}); pass allow_unstable=True to run it anyway"
            )
        if not isinstance(startup, str) or startup not in STARTUPS:
            raise ValueError(f"startup={startup!r} must be one of {sorted(STARTUPS)}")
        if startup != "ddim" and not (isinstance(self.method, LinearMultistep) and self.method.k >= 2):
            raise ValueError(
                f"startup={startup!r} needs a linear multistep method with k ≥ 2 (e.g. 'dpl-ob', 'o-belm'); "
                f"{self.method.signature()} has its own start"
            )
        self.startup: Startup = startup
        if not is_index(inversion_substeps) or inversion_substeps < 1:
            raise ValueError(f"inversion_substeps={inversion_substeps!r} must be an integer ≥ 1 (1: the paper's single DDIM step)")
        if inversion_substeps > 1 and not (isinstance(self.method, LinearMultistep) and self.method.k >= 2):
            raise ValueError(
                f"inversion_substeps={inversion_substeps!r} needs a linear multistep method with k ≥ 2 (e.g. 'dpl-ob', "
                f"'o-belm'); {self.method.signature()} inverts with its own first step (use inversion_substeps=1)"
            )
        self.inversion_substeps = int(inversion_substeps)
        self.state_dtype = arrays.resolve_dtype(state_dtype)
        if self.state_dtype in ("float16", "bfloat16"):
            warnings.warn(
                f"state_dtype={self.state_dtype!r}: the round trip loses exactness (docs/math.md §8); "
                "keep the state in float64 (or float32) and run only the model in low precision",
                PrecisionWarning,
                stacklevel=2,
            )
        self.check_finite = bool(check_finite)
        self.amplification_tol = float(amplification_tol)
        self._plan = self.method.prepare(self.grid)
        self._inverse_times = substep_times(self.grid, self.inversion_substeps) if self.inversion_substeps > 1 else ()
        if startup in SHIFTED_STARTUPS and getattr(self._plan, "shift", None) is None:
            raise ValueError(
                f"startup={startup!r} evaluates the start-up where a shifted method's first row reads x̂0; "
                f"{self.method.signature()} on this grid has no evaluation shift: use a shifted p-family member "
                "(e.g. 'dpl-ob-shift', ε-prediction) or startup='pc'"
            )

    # -- public properties ---------------------------------------------------------------
    @property
    def timesteps(self) -> np.ndarray:
        """Model times visited, noisiest first (the clean end state has none)."""
        return self.grid.timesteps

    @property
    def steps(self) -> int:
        return self.grid.N

    @property
    def prediction(self) -> str:
        """What the model function returns: "epsilon" or "velocity" (fixes the coordinates, docs/math.md §11)."""
        return self.grid.prediction

    @property
    def inversion_substep_times(self) -> tuple:
        """Model times of the extra calls inversion's first step makes below t_1, ascending (empty for
        `inversion_substeps=1`, or where no training time lies between the end state and t_1)."""
        return self._inverse_times

    def _inverse_first(self):
        """Inversion's first step for `_run` and `Stepper.inversion`: the sub-stepped start, or None (the
        method's own DDIM inversion step)."""
        if not self._inverse_times:
            return None
        return functools.partial(substepped_inverse_start, method=self.method, times=self._inverse_times)

    @property
    def until_range(self) -> tuple[int, int]:
        """(low, N): the grid indices `invert(until=K)` accepts, low ≤ K ≤ N.

        A partial latent must hold k states above the end state, so K ≥ max(1, k − 1).
        Editing's `freeze` (inversion steps left out) is N − K, in [0, N − low].
        """
        return until_range(self.method, self.grid.N)

    def amplification(self, until: int | None = None) -> float:
        """Round-off amplification of inverting to grid index `until` (default N): Π|1/c_{i,k}|.

        c_{i,k} is the coefficient of the oldest state in x-space (the paper's a_{i,k}
        times α_{i−1}/α_{i−1+k}). It is the determinant growth of the inverse recurrence:
        γ^{−N} for BDIA and p^{−2N} for EDICT, whose parasitic modes it tracks, and the
        warning in `invert` rests on it. It is not a bound: rounding also passes through
        ε's Lipschitz constant (~1/σ̄ near the clean end), which it ignores; for O-BELM
        it stays O(1) while float32 round-trip errors still grow with N. Measured
        round-trip errors per method, step count and dtype: benchmarks/RESULTS.md §2.
        """
        return self.method.amplification(self._plan, self.grid.N if until is None else until)

    def __repr__(self) -> str:
        extra = "" if self.prediction == "epsilon" else f", prediction={self.prediction!r}"
        return (
            f"Solver({self.schedule!r}, steps={self.steps}, method={self.method.signature()!r}, "
            f"state_dtype={self.state_dtype!r}{extra})"
        )

    # -- the two directions ----------------------------------------------------------------
    def sample(
        self,
        eps_fn: EpsFn,
        x: Any,
        *,
        progress: bool = False,
        callback: Callback | None = None,
        grad: bool = False,
    ) -> Any:
        """x_0 from a Latent (exact reconstruction) or from a lone x_T (start-up from x_T alone).

        Returns x_0 in the input's array type and dtype (a Latent's recorded `dtype`).
        `grad=True` (torch only) records the autograd graph; by default none is built
        (see the module docstring for what the graph costs in memory).
        """
        with self._autograd(grad, x.states[0] if isinstance(x, Latent) else x):
            if isinstance(x, Latent):
                index = self._check_latent(x)
                states = [self._to_state(s, f"latent.states[{n}]") for n, s in enumerate(x.states)]
                out_dtype = x.dtype or arrays.dtype_name(x.states[0])
                carry = self.method.from_latent(self._plan, states, index)
            else:
                out_dtype = self._input_dtype(x, "x")
                carry = self.method.start(self._plan, self._to_state(x, "x"), self.grid.N)
            first = None if isinstance(x, Latent) else STARTUPS[self.startup]
            carry = self._run("sample", eps_fn, carry, 0, progress, callback, first=first)
            return arrays.cast_to(self.method.output(carry), out_dtype)

    def invert(
        self,
        eps_fn: EpsFn,
        x0: Any,
        *,
        until: int | None = None,
        progress: bool = False,
        callback: Callback | None = None,
        grad: bool = False,
    ) -> Latent:
        """The Latent from which `sample` rebuilds x0 exactly.

        `until` = K stops at grid index K (a partial trajectory for editing, docs/math.md §7);
        sampling from that Latent starts at index K (valid K: `until_range`).
        `grad=True` (torch only) records the autograd graph, as in `sample`.
        """
        self.method.check_invertible()
        until = self._check_until(until)
        out_dtype = self._input_dtype(x0, "x0")
        with self._autograd(grad, x0):
            state = self._to_state(x0, "x0")
            self._warn_amplification(until, arrays.dtype_name(state))
            carry = self.method.inverse_start(self._plan, state)
            carry = self._run("invert", eps_fn, carry, until, progress, callback, first=self._inverse_first())
        return Latent(
            states=self.method.latent_states(carry),
            index=until,
            method=self.method.signature(),
            grid_key=self.grid.key,
            dtype=out_dtype,
        )

    # -- the loop ---------------------------------------------------------------------------
    def _run(
        self, direction: str, eps_fn: EpsFn, carry: Carry, target: int, progress: bool, callback, first=None
    ) -> Carry:
        if not callable(eps_fn):
            name = _fn_name(self.prediction)
            raise TypeError(f"{name} must be callable as {name}(x, t), got {type(eps_fn).__name__}")
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable as callback(info), got {type(callback).__name__}")
        total = abs(self.method.head(carry, direction)[0] - target)
        evaluate = _Evaluator(self, eps_fn, direction, _max_abs(self.method.head(carry, direction)[1]))
        advance = self.method.step if direction == "sample" else self.method.inverse_step
        from tqdm.auto import tqdm

        with tqdm(total=total, disable=not progress, desc=direction, leave=False) as bar:
            for n in range(1, total + 1):
                evaluate.step = n
                carry = (first if n == 1 and first is not None else advance)(self._plan, carry, evaluate)
                bar.update(1)
                if callback is not None:
                    callback(self._callback_info(direction, n, total, carry))
        if self.check_finite:
            index, x = self.method.head(carry, direction)
            if not arrays.all_finite(x):
                raise ValueError(self._blow_up_message(direction, total, index, evaluate.scale, _max_abs(x)))
        return carry

    def _callback_info(self, direction: str, n: int, total: int, carry: Carry) -> dict:
        i, x = self.method.head(carry, direction)
        return {
            "direction": direction,
            "step": n,
            "total": total,
            "index": i,
            "t": self.grid.t(i) if i >= 1 else None,
            "sigma_bar": float(self.grid.sigma_bar[i]),
            "x": arrays.copy(x),  # the callback may write to it; the state stays untouched
        }

    def _blow_up_message(self, direction: str, step: int, index: int, start: float, now: float) -> str:
        t = self.grid.t(index) if index >= 1 else "end"
        return (
            f"the solver state became non-finite (NaN or inf) or blew up by {direction} step {step} "
            f"(grid index {index}, t={t}): max |x| went from {start:.3g} at the start to {now:.3g}, with finite "
            "inputs. The recurrence amplifies what it is given: check solver.amplification() "
            f"(= {self.amplification():.3g} over the full inversion; e.g. BDIA with a small gamma or EDICT with a "
            "small p divide by it every step) and the scale of ε (e.g. an extreme guidance scale)"
        )

    @contextlib.contextmanager
    def _autograd(self, grad: bool, x: Any):
        """no_grad by default, enable_grad with grad=True (torch inputs); nothing for NumPy."""
        _check_flag(grad, "grad")
        if not arrays.is_torch(x):
            if grad:
                raise ValueError(f"grad=True needs torch tensors; got {type(x).__name__} (NumPy has no autograd)")
            yield
            return
        torch = sys.modules["torch"]
        with torch.enable_grad() if grad else torch.no_grad():
            yield

    # -- checks ----------------------------------------------------------------------------
    def _to_state(self, x: Any, parameter: str) -> Any:
        state = arrays.to_state(x, self.state_dtype, parameter)
        if self.check_finite and not arrays.all_finite(state):
            overflow = " (it was finite before the cast to state_dtype: its values overflow it)"
            raise ValueError(
                f"{parameter} contains NaN or inf values: the input must be finite"
                + (overflow if arrays.all_finite(x) else "")
            )
        if self.state_dtype is None and arrays.dtype_name(state) in ("float16", "bfloat16"):
            warnings.warn(
                f"{parameter} is {arrays.dtype_name(state)} and state_dtype=None keeps it: the round trip loses "
                "exactness; use state_dtype='float64'",
                PrecisionWarning,
                stacklevel=4,
            )
        return state

    @staticmethod
    def _input_dtype(x: Any, parameter: str) -> str:
        if not (arrays.is_torch(x) or isinstance(x, np.ndarray)):
            raise TypeError(f"{parameter} must be a NumPy array or a torch tensor, got {type(x).__name__}")
        name = arrays.dtype_name(x)
        return name if name in arrays.FLOAT_NAMES else "float64"

    def _check_until(self, until: int | None) -> int:
        low, N = self.until_range
        if until is None:
            return N
        if not is_index(until) or not low <= until <= N:
            raise ValueError(f"until={until!r} must be an integer grid index in [{low}, {N}]")
        return int(until)

    def _check_latent(self, latent: Latent) -> int:
        return check_latent(latent, self.method, self.grid)

    def _warn_amplification(self, until: int, dtype: str) -> None:
        """Warn when Π|1/c_{i,k}| times the epsilon of the effective state dtype exceeds the tolerance."""
        amp = self.amplification(until)
        eps = arrays.finfo_eps(dtype)
        if amp * eps > self.amplification_tol:
            stability = self.method.stability()
            note = "" if stability is None or stability.inverse else " (the inverse recurrence is not zero-stable)"
            warnings.warn(
                f"inverting {self.method.signature()} over {until} steps amplifies round-off by {amp:.3g}{note}; "
                f"with a {dtype} state the reconstruction may be off by ~{amp * eps:.1e} "
                "relative. Use fewer steps, BDIA's gamma closer to 1, or O-BELM",
                AmplificationWarning,
                stacklevel=4,
            )


def until_range(method: str | Method, steps: int) -> tuple[int, int]:
    """(low, N) of `Solver.until_range` for a method on an N-step grid, without building a Solver
    (the CLI checks `--freeze` before loading a model): low = max(1, k − 1)."""
    return max(1, get_method(method).k - 1), int(steps)


def _fn_name(prediction: str) -> str:
    """How messages name the model function: eps_fn for ε, v_fn for a velocity."""
    return "v_fn" if prediction == "velocity" else "eps_fn"


def _max_abs(x: Any) -> float:
    """max |x| as a Python float (NaN if x has NaN); never part of an autograd graph."""
    return float(abs(x.detach() if arrays.is_torch(x) else x).max())


def _check_flag(value: Any, name: str) -> None:
    if not is_bool(value):
        raise TypeError(f"{name}={value!r} must be a bool (True or False)")


class _Evaluator:
    """`evaluate(x, index)` for the methods: ε from `eps_fn`, checked and cast to the state
    dtype, with the solver's state shielded from what `eps_fn` does.

    `eps_fn` gets a copy of x. The returned ε may be the model's own output buffer
    ("borrowed": at most one at a time, the latest); `own(eps)` copies it once when a
    method keeps it past the next model call.
    """

    def __init__(self, solver: Solver, eps_fn: EpsFn, direction: str, scale: float, pass_input: bool = True):
        self.solver, self.eps_fn, self.direction = solver, eps_fn, direction
        self.name = _fn_name(solver.prediction)
        self.scale = scale  # max |x| of the starting state (read only when ε is non-finite)
        self.step = 0
        self._borrowed = None
        self.pass_input = pass_input  # False: eps_fn ignores its input (a Stepper's hand-over), so none is made

    def __call__(self, x: Any, index: int, t: Any = None, scale: float = 1.0) -> Any:
        solver = self.solver
        t = solver.grid.t(index) if t is None else t
        if not self.pass_input:
            x_in = None
        else:  # eps_fn may write to its input: never pass x itself
            x_in = arrays.copy(x) if scale == 1.0 else scale * x
        raw = self.eps_fn(x_in, t)
        returned_input = raw is x_in  # (an ε that returns its argument returns our copy)
        del x_in  # free the copy before ε is cast and checked: the peak stays where it was
        where = f"{self.direction} step {self.step}"
        if arrays.is_torch(raw) != arrays.is_torch(x) or not hasattr(raw, "shape"):
            raise TypeError(
                f"{self.name} returned {type(raw).__name__} at {where} (t={t}); expected the same array type as x "
                f"({type(x).__name__})"
            )
        if tuple(raw.shape) != tuple(x.shape):
            raise ValueError(
                f"{self.name} returned shape {tuple(raw.shape)} at {where} (t={t}); expected x's shape {tuple(x.shape)}"
            )
        dtype = solver.state_dtype if solver.state_dtype is not None else arrays.dtype_name(x)
        eps = arrays.to_state(raw, dtype, "eps")
        if solver.check_finite and not arrays.all_finite(eps):
            if not arrays.all_finite(x) or _max_abs(x) > 1e6 * self.scale:
                raise ValueError(solver._blow_up_message(self.direction, self.step, index, self.scale, _max_abs(x)))
            raise ValueError(f"{self.name} returned non-finite values (NaN or inf) at {where} (t={t}) for a finite input")
        # remember the buffer by id only: holding it would keep it alive and raise the peak
        self._borrowed = id(eps) if (eps is raw and not returned_input) else None
        return eps

    def own(self, eps: Any) -> Any:
        """eps, copied if it is the model's output buffer (which its next call may overwrite)."""
        if eps is not None and id(eps) == self._borrowed:  # (a reused id of a freed buffer: one copy too many)
            self._borrowed = None
            return arrays.copy(eps)
        return eps
