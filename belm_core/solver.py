"""The driver: `Solver.sample(eps_fn, x_T)` and `Solver.invert(eps_fn, x_0)`.

The solver owns the loop (start-up, grid, dtype handling, checks on ε, progress bar,
callback); a method owns one step and its inverse (`belm_core.methods`).

    solver = Solver(DiscreteVP.scaled_linear(), steps=50, method="o-belm")
    latent = solver.invert(eps_fn, x0)        # Latent((x_N, x_{N−1}))
    x0_rec = solver.sample(eps_fn, latent)    # == x0 up to rounding

`eps_fn(x, t)` receives the state (in `state_dtype`, float64 by default) and the
schedule's model time as a Python number, and returns ε with x's shape. Exactness
needs `eps_fn` to be deterministic: the same input must give the same output.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Literal, Sequence

import numpy as np

from . import arrays
from .grid import Grid, make_grid
from .latent import Latent, LatentMetadataWarning, check_for as check_latent
from .methods import Carry, Method, get_method
from .schedules import NoiseSchedule, Spacing

__all__ = ["Solver", "Latent", "LatentMetadataWarning", "AmplificationWarning", "PrecisionWarning", "EpsFn"]

EpsFn = Callable[[Any, Any], Any]
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
            state dtype's epsilon exceeds this relative error.
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
    ):
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a belm_core NoiseSchedule, got {type(schedule).__name__}")
        self.schedule = schedule
        self.method = get_method(method)
        if timesteps is None:
            if steps is None:
                raise ValueError("give steps=N (with an optional spacing=) or timesteps=array")
            timesteps = schedule.timesteps(steps, spacing)
        elif spacing is not None or (steps is not None and steps != len(timesteps)):
            raise ValueError(
                f"timesteps= fixes the grid; do not also pass spacing={spacing!r} or a different steps={steps!r}"
            )
        self.grid: Grid = make_grid(schedule, timesteps)
        if self.grid.N < self.method.min_steps:
            raise ValueError(
                f"steps={self.grid.N} is too few for {self.method.signature()}: it needs at least "
                f"{self.method.min_steps} (k = {self.method.k} states)"
            )
        stability = self.method.stability()
        if stability is not None and not stability.sampling and not allow_unstable:
            raise ValueError(
                f"method {self.method.signature()} is not zero-stable when sampling (roots of ρ for equal steps: "
                f"{np.round(stability.roots, 4).tolist()}); pass allow_unstable=True to run it anyway"
            )
        self.state_dtype = arrays.resolve_dtype(state_dtype)
        if self.state_dtype in ("float16", "bfloat16"):
            warnings.warn(
                f"state_dtype={self.state_dtype!r}: the round trip loses exactness (MATH.md §8); "
                "keep the state in float64 (or float32) and run only the model in low precision",
                PrecisionWarning,
                stacklevel=2,
            )
        self.check_finite = bool(check_finite)
        self.amplification_tol = float(amplification_tol)
        self._plan = self.method.prepare(self.grid)

    # -- public properties ---------------------------------------------------------------
    @property
    def timesteps(self) -> np.ndarray:
        """Model times visited, noisiest first (the clean end state has none)."""
        return self.grid.timesteps

    @property
    def steps(self) -> int:
        return self.grid.N

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
        return (
            f"Solver({self.schedule!r}, steps={self.steps}, method={self.method.signature()!r}, "
            f"state_dtype={self.state_dtype!r})"
        )

    # -- the two directions ----------------------------------------------------------------
    def sample(
        self,
        eps_fn: EpsFn,
        x: Any,
        *,
        progress: bool = False,
        callback: Callback | None = None,
    ) -> Any:
        """x_0 from a Latent (exact reconstruction) or from a lone x_T (start-up from x_T alone).

        Returns x_0 in the input's array type and dtype (a Latent's recorded `dtype`).
        """
        if isinstance(x, Latent):
            index = self._check_latent(x)
            states = [self._to_state(s, "latent.states") for s in x.states]
            out_dtype = x.dtype or arrays.dtype_name(x.states[0])
            carry = self.method.from_latent(self._plan, states, index)
        else:
            out_dtype = self._input_dtype(x, "x")
            carry = self.method.start(self._plan, self._to_state(x, "x"), self.grid.N)
        carry = self._run("sample", eps_fn, carry, 0, progress, callback)
        return arrays.cast_to(self.method.output(carry), out_dtype)

    def invert(
        self,
        eps_fn: EpsFn,
        x0: Any,
        *,
        until: int | None = None,
        progress: bool = False,
        callback: Callback | None = None,
    ) -> Latent:
        """The Latent from which `sample` rebuilds x0 exactly.

        `until` = K stops at grid index K (a partial trajectory for editing, MATH.md §7);
        sampling from that Latent starts at index K.
        """
        self.method.check_invertible()
        until = self._check_until(until)
        out_dtype = self._input_dtype(x0, "x0")
        self._warn_amplification(until)
        carry = self.method.inverse_start(self._plan, self._to_state(x0, "x0"))
        carry = self._run("invert", eps_fn, carry, until, progress, callback)
        return Latent(
            states=self.method.latent_states(carry),
            index=until,
            method=self.method.signature(),
            grid_key=self.grid.key,
            dtype=out_dtype,
        )

    # -- the loop ---------------------------------------------------------------------------
    def _run(self, direction: str, eps_fn: EpsFn, carry: Carry, target: int, progress: bool, callback) -> Carry:
        if not callable(eps_fn):
            raise TypeError(f"eps_fn must be callable as eps_fn(x, t), got {type(eps_fn).__name__}")
        total = abs(carry.index - target)
        counter = {"step": 0}
        evaluate = self._evaluator(eps_fn, counter, direction)
        advance = self.method.step if direction == "sample" else self.method.inverse_step
        from tqdm.auto import tqdm

        with tqdm(total=total, disable=not progress, desc=direction, leave=False) as bar:
            for n in range(1, total + 1):
                counter["step"] = n
                carry = advance(self._plan, carry, evaluate)
                bar.update(1)
                if callback is not None:
                    callback(self._callback_info(direction, n, total, carry))
        return carry

    def _callback_info(self, direction: str, n: int, total: int, carry: Carry) -> dict:
        i = carry.index
        return {
            "direction": direction,
            "step": n,
            "total": total,
            "index": i,
            "t": self.grid.t(i) if i >= 1 else None,
            "sigma_bar": float(self.grid.sigma_bar[i]),
            "x": self.method.output(carry),
        }

    def _evaluator(self, eps_fn: EpsFn, counter: dict, direction: str):
        grid, dtype, check = self.grid, self.state_dtype, self.check_finite

        def evaluate(x, index: int):
            t = grid.t(index)
            eps = eps_fn(x, t)
            where = f"{direction} step {counter['step']}"
            if arrays.is_torch(eps) != arrays.is_torch(x) or not hasattr(eps, "shape"):
                raise TypeError(
                    f"eps_fn returned {type(eps).__name__} at {where} (t={t}); expected the same array type as x "
                    f"({type(x).__name__})"
                )
            if tuple(eps.shape) != tuple(x.shape):
                raise ValueError(
                    f"eps_fn returned shape {tuple(eps.shape)} at {where} (t={t}); expected x's shape {tuple(x.shape)}"
                )
            eps = arrays.to_state(eps, dtype if dtype is not None else arrays.dtype_name(x), "eps")
            if check and not arrays.all_finite(eps):
                raise ValueError(f"eps_fn returned non-finite values (NaN or inf) at {where} (t={t})")
            return eps

        return evaluate

    # -- checks ----------------------------------------------------------------------------
    def _to_state(self, x: Any, parameter: str) -> Any:
        state = arrays.to_state(x, self.state_dtype, parameter)
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
        N, low = self.grid.N, max(1, self.method.k - 1)
        if until is None:
            return N
        if isinstance(until, bool) or not isinstance(until, (int, np.integer)) or not low <= until <= N:
            raise ValueError(f"until={until!r} must be an integer grid index in [{low}, {N}]")
        return int(until)

    def _check_latent(self, latent: Latent) -> int:
        return check_latent(latent, self.method, self.grid)

    def _warn_amplification(self, until: int) -> None:
        amp = self.amplification(until)
        eps = arrays.finfo_eps(self.state_dtype or "float64")
        if amp * eps > self.amplification_tol:
            stability = self.method.stability()
            note = "" if stability is None or stability.inverse else " (the inverse recurrence is not zero-stable)"
            warnings.warn(
                f"inverting {self.method.signature()} over {until} steps amplifies round-off by {amp:.3g}{note}; "
                f"with a {self.state_dtype or 'float64'} state the reconstruction may be off by ~{amp * eps:.1e} "
                "relative. Use fewer steps, BDIA's gamma closer to 1, or O-BELM",
                AmplificationWarning,
                stacklevel=3,
            )
