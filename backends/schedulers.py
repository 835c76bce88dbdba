"""Drop-in diffusers schedulers with exact inversion, one model call per step.

VP models (SD 1.x/2.x, SDXL: ε, v or x_0 prediction):  `BELMScheduler`, `BELMInverseScheduler`.
Rectified flows (SD3, Flux: velocity prediction):     `BELMFlowScheduler`, `BELMFlowInverseScheduler`.

    pipe.scheduler = BELMScheduler.from_config(pipe.scheduler.config)           # O-BELM sampling
    image = pipe(prompt, num_inference_steps=20).images[0]
    pipe.scheduler = BELMScheduler.from_config(pipe.scheduler.config, method="recommended")
    image = pipe(prompt, num_inference_steps=8).images[0]                       # the low-step sampler

Exact reconstruction through the pipeline's own loop and guidance (the same for a flow
pipeline with the Flow classes, `latents` then in the pipeline's format, packed for Flux):

    pipe.scheduler = BELMInverseScheduler.from_config(cfg, method="o-belm")
    pipe(prompt, latents=z0, num_inference_steps=N, guidance_scale=g, output_type="latent")
    latent = pipe.scheduler.latent                                            # a belm_core.Latent
    pipe.scheduler = BELMScheduler.from_config(cfg, method="o-belm")
    pipe.scheduler.set_latent(latent)
    z0_again = pipe(prompt, latents=latent.states[0].to(pipe.unet.dtype), num_inference_steps=N,
                    guidance_scale=g, output_type="latent").images                 # == z0 (MSE ~1e-30)

The math lives in `belm_core`: the grid is a `Solver` built from the config the way
`backends.config` reads it for every adapter (`schedule_from_config`, `solver_options`), and
each `step` hands the pipeline's one model output to a `belm_core.stepper.Stepper`, which runs
the method's own step (coefficients, eq. 18 recurrence, start-up) from its explicit carry.
These classes only adapt the step protocol. Each `step` takes the output of ONE model call and
returns, as `prev_sample`, the input of the next one (after the last call, x_0 or, inverting,
x_N); `timesteps` lists the model time of every call, found by a dry run of the walk. For
"o-belm", "bdia" and "ddim" those inputs are the grid states x_{i−1} at their times t_{i−1}.
One design serves both families: the machinery
(grid installation, step checks, the re-sync rule, the two directions) is shared; a family
adds its config keys, `set_timesteps` signature, timestep type and noising formula.

**method="recommended".** `belm_core.recommended(schedule, N)`: the exact sampler most accurate
at 5–20 model calls in benchmarks/RESULTS.md §1–2 (VP: "dpl-ob-curv", on the
"trailing-tail" grid, diffusers' "trailing" with a shorter last step ("long-start", with a longer first
step too, on DDPM's linear schedule at 5–20 steps), which replaces the config's
`timestep_spacing` and starts at T − 1 as DPM-Solver++ and UniPC do, with the predictor–corrector
start-up; flows: O-BELM with that start-up on the config's
grid). Still N model calls and exact inversion, but the model is read away from the grid: the
start-up's corrector at its DDIM predictor, shifted rows at κ_i x_i and model time t*_i,
trajectory rows at an extrapolated state (docs/math.md §12–§16), so `prev_sample` is that
input (κ included: the pipeline feeds it to the model unchanged) and `timesteps` are those
times. Each such input is read as a state at its call's model time. A sample the caller
replaced (img2img's image noised by `add_noise` at `timesteps[begin_index]`, an inpainting
blend, a callback's edit) restarts the walk from it at that model time t: with the model
output at (sample, t) in hand, one DDIM move along x̂0 + σ̄ ε onto the levels of the row that
call belongs to and the one below (`Stepper.resuming`, `LinearMultistep.resume`), then the
method's rows and their published times. Its latents hold five arrays on VP schedules (x_N, x_{N−1},
the velocity register w_N and the rotation register U0, U1 of "dpl-ob-curv").

**VP grid.** N = num_inference_steps, laid out by `timestep_spacing` and `steps_offset`; the last
step ends at ᾱ = 1 (`set_alpha_to_one` True or absent) or at ᾱ_0 (`set_alpha_to_one=False`, as
DDIMScheduler). In the latter case, when the last timestep already is 0 (e.g. "leading" spacing
with steps_offset=0) that zero-length final step is dropped (`belm_core.grid.make_grid`):
`timesteps` then has N − 1 entries and the pipeline makes N − 1 model calls. Pipelines loop over
`scheduler.timesteps`, so they run unchanged; img2img's `strength` counts steps of N.
Timesteps are int64 training timesteps.

**Flow grid.** `FlowMatch.timesteps(N, mu=, sigmas=)`: the model times t = T·σ that diffusers'
`FlowMatchEulerDiscreteScheduler.set_timesteps(N, sigmas=, mu=)` makes (float32, σ = 1 first),
or explicit `timesteps=` used as given (σ = t/T). The recurrence runs in the flow's own
coordinates (x, σ) with the velocity v = dx/dσ as model output (`prediction="velocity"`,
docs/math.md §11), so both sampling from pure noise and inversion up to σ = 1 are regular. `sigmas`
exposes the grid's σ_N … σ_1 and the appended 0 (float32), as diffusers does.

**Precision.** The scheduler keeps its own float64 copy of the states; `prev_sample` is
returned in the dtype of `sample`. The model output is converted to the solver's f in float64
(ε with `backends.config.to_eps` at the float64 state; a flow's velocity as it is).

**Re-sync rule (sampling schedulers).** When the `sample` passed to `step` is the very tensor
the previous `step` returned, unmodified (same object, same `torch` version counter), the
scheduler continues from its float64 states. Otherwise (a `callback_on_step_end` replaced or
edited the latents, or img2img starts mid-grid) it starts a fresh history from the new
sample at the grid position of `timestep`: a DDIM step first, then the method (the start-up
of a lone x_N). The float64 states of the old history are dropped; the result equals a fresh
run started from the edited latents. (method="recommended", whose calls are off the grid:
the restart from the call's model time described above.)

**Inverse timesteps.** An inverse scheduler's `timesteps` are the model times at which each
inversion step needs the model, found by a dry run of the method's inversion: for O-BELM and
BDIA (DDIM-inversion start-up, then exact 2-step inverse steps) (t_1, t_1, t_2, …, t_{N−1}):
the first step x_0 → x_1 evaluates the model at (x_0, t_1) and each exact step producing
x_{i+1} needs it at (x_i, t_i); for DDIM (t_1, …, t_N). With method="recommended" on a VP
schedule the first step takes graded DDIM sub-steps (`Solver(inversion_substeps=8)`,
docs/math.md §28): the published times start with the training times between 0 and t_1 it
visits (1–7 of them) before t_1, so an inversion makes that many calls more than N. The sample passed at each step is the
state the model is evaluated at, so a plain loop `for t in inv.timesteps: z = inv.step(model(z, t), t, z)`
works. `set_timesteps` takes the arguments a pipeline passes for sampling (N; for flows also
`sigmas=` and `mu=`, as Flux's pipeline always passes them): it builds that same sampling grid
and publishes the inversion's evaluation times on it, so the latent fits the sampling run that
the same call builds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin, SchedulerOutput

from belm_core import Latent, Solver, recommended
from belm_core.methods import BDIA, Method, get_method
from belm_core.stepper import Call, Stepper

from .config import FLOW_OPTIONS_UNSUPPORTED, is_flow_config
from .config import prediction_type as config_prediction_type
from .config import schedule_from_config, solver_options, to_eps

__all__ = [
    "BELMScheduler", "BELMInverseScheduler", "BELMFlowScheduler", "BELMFlowInverseScheduler",
    "SchedulerMethod", "SCHEDULER_METHODS", "scheduler_method",
]

SchedulerMethod = Literal["o-belm", "bdia", "ddim", "recommended"]
SCHEDULER_METHODS = ("o-belm", "bdia", "ddim", "recommended")

#: methods a one-model-call-per-step scheduler refuses, and why
REFUSED = {
    "edict": (
        "EDICT runs two coupled chains (x, y) and evaluates ε twice per step, at x' and at y'; a diffusers "
        "pipeline holds one latent tensor and makes one model call per timestep. Use belm_core.Solver(method='edict')"
    ),
    "belm3": (
        "the stable 3-step BELM has constant a's, so its x-space coefficients grow like the squared step ratio and "
        "sampling diverges on grids whose steps change abruptly (h_{i+2}/h_i >> 10: 5–10-step grids on the linear "
        "schedule, the top of the cosine schedule, the σ̄ ≈ 4096 first point of zero-terminal-SNR configs; see "
        "belm_core.methods.BELM.stable), which a drop-in scheduler cannot rule out; and its first step from a 3-state "
        "latent needs ε at two states. Use belm_core.Solver(method='belm3') where the grid suits it"
    ),
}


def scheduler_method(method: str, gamma: float = 1.0, schedule=None) -> Method:
    """The belm_core Method for a scheduler's `method` option ("o-belm", "bdia" with `gamma`, "ddim",
    or "recommended": `belm_core.recommended`'s method for `schedule`, which is then required)."""
    key = _method_key(method)
    if key == "bdia":
        return BDIA(gamma)
    if key == "recommended":
        if schedule is None:
            raise ValueError("method='recommended' depends on the schedule: pass schedule=")
        return get_method(recommended(schedule, 2)["method"])
    return get_method(key)


def _method_key(method: Any) -> str:
    if not isinstance(method, str):
        raise TypeError(f"method={method!r} must be a str, one of {list(SCHEDULER_METHODS)}")
    key = method.strip().lower().replace("_", "-")
    key = {"obelm": "o-belm", "belm-3": "belm3"}.get(key, key)
    if key in REFUSED:
        raise ValueError(f"method={method!r} is not available as a diffusers scheduler: {REFUSED[key]}")
    if key not in SCHEDULER_METHODS:
        raise ValueError(f"method={method!r} is not known; choose one of {list(SCHEDULER_METHODS)}")
    return key


@dataclass
class BELMInverseSchedulerOutput(SchedulerOutput):
    """`prev_sample`: the input of the next model call (the next, noisier state x_{i+1} for "o-belm",
    "bdia" and "ddim"; x_N after the last call), in the dtype of the sample passed in."""


class _SchedulerCore(SchedulerMixin, ConfigMixin):
    """The machinery every BELM scheduler shares: grid installation, diffusers' surface, step checks,
    model output → the solver's f, returned-sample tracking.

    A schedule family (`_VPFamily`, `_FlowFamily`) supplies the registered config, `set_timesteps`,
    `_as_time` (timestep → model time) and `_timestep_dtype`; a direction (`_Sampling`,
    `_Inversion`) supplies `step` and `_set_timesteps_for`.
    """

    config_name = "scheduler_config.json"
    #: convergence order is the method's (`method_order`); diffusers' `order` counts model calls per step
    order = 1
    #: dtype of the published `timesteps`
    _timestep_dtype: torch.dtype = torch.int64
    #: the config keys `backends.config` reads (kept by `from_config`, see there)
    _config_keys_read: tuple[str, ...] = ()

    def _setup(self, method: str, gamma: float) -> None:
        """Common construction from `self.config` (called by the family's registered __init__)."""
        self.schedule = schedule_from_config(self.config)
        self.method = scheduler_method(method, gamma, self.schedule)
        self._recommended = _method_key(method) == "recommended"
        self._options = solver_options(self.config)
        self._kind = config_prediction_type(self.config)
        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        self.solver: Solver | None = None
        self._solvers: dict = {}
        self._dry_runs: dict = {}
        self._device: str | torch.device | None = None
        self._begin_index: int | None = None
        self._clear_run()

    @classmethod
    def _check_family(cls, config: Mapping[str, Any]) -> None:
        raise NotImplementedError

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """diffusers' `from_config`, refusing the other family's config and keeping the keys
        `backends.config` reads even where the source scheduler filled them with its own defaults.

        diffusers drops such default-filled keys (`_use_default_values`) when it moves a config to
        another class; e.g. PNDMScheduler fills `set_alpha_to_one=False` into an SDXL config that
        lacks it. `backends.config.solver_options` (which `belm.apps` uses) reads the key as it
        stands, so the scheduler keeps it too: both build the same grid from the same config.
        """
        if isinstance(config, Mapping):
            cls._check_family(config)
            if config.get("_use_default_values"):
                config = dict(config)
                keep = cls._config_keys_read
                config["_use_default_values"] = [k for k in config["_use_default_values"] if k not in keep]
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    # -- diffusers' scheduler surface -------------------------------------------------------------
    def __len__(self) -> int:
        return self.config.num_train_timesteps

    @property
    def method_order(self) -> int:
        """Convergence order of the method (2 for O-BELM, 1 for BDIA and DDIM)."""
        return self.method.order

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    @property
    def step_index(self) -> int | None:
        """Steps taken since `set_timesteps` (None before the first)."""
        return None if self._stepper is None else self._steps

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Position in `timesteps` of the first step (img2img and Flux pipelines call it); checked at the first step."""
        if isinstance(begin_index, bool) or not isinstance(begin_index, (int, np.integer)) or begin_index < 0:
            raise ValueError(f"begin_index={begin_index!r} must be an integer ≥ 0")
        self._begin_index = int(begin_index)

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        """The identity: the model takes x_t itself (init_noise_sigma = 1)."""
        return sample

    # -- the grid -----------------------------------------------------------------------------------
    def _solver_options(self, steps: int | None) -> dict[str, Any]:
        """Solver keywords besides the grid: the config's, with `recommended`'s start-up (and, for
        `steps` on a VP schedule, its spacing) when method="recommended"."""
        options = dict(self._options)
        if self._recommended:
            rec = recommended(self.schedule, steps if steps is not None else 2)
            if get_method(rec.pop("method")).signature() != self.method.signature():  # (one method at every N)
                raise RuntimeError(f"recommended() changed its method at steps={steps}; rebuild the scheduler")
            if steps is None:
                rec.pop("spacing", None)  # explicit timesteps: no spacing
            options.update(rec)
        return options

    def _cached_solver(self, key: tuple, make: Callable[[], Solver]) -> Solver:
        """The Solver for this grid (cached: a pipeline calls set_timesteps once per call)."""
        if key not in self._solvers:
            self._solvers = {key: make()}  # keep the latest only
        return self._solvers[key]

    def _install(self, solver: Solver, device: str | torch.device | None) -> None:
        """Make `solver` the grid of the next run: reset all history and publish `timesteps`."""
        self.solver = solver
        self.num_inference_steps = solver.grid.N
        self._device = device
        self._begin_index = None
        self._clear_run()
        grid = solver.grid
        self._t = [None] + [grid.t(i) for i in range(1, grid.N + 1)]  # model time of grid index i
        self._set_timesteps_for(solver)

    def _set_timesteps_for(self, solver: Solver) -> None:
        raise NotImplementedError

    def _publish(self, times) -> None:
        self.timesteps = torch.tensor(list(times), dtype=self._timestep_dtype, device=self._device)

    @staticmethod
    def _as_time(timestep: Any):
        raise NotImplementedError

    # -- per-step helpers ----------------------------------------------------------------------
    def _clear_run(self) -> None:
        self._stepper: Stepper | None = None
        self._skip = False  # the next model output is not needed (a set latent's first state)
        self._steps = 0
        self._returned: torch.Tensor | None = None
        self._returned_version = -1
        self._out_dtype: torch.dtype | None = None

    def _check_step_args(self, model_output: Any, timestep: Any, sample: Any):
        if self.solver is None:
            raise ValueError(f"call {type(self).__name__}.set_timesteps(num_inference_steps) before step()")
        for name, value in (("model_output", model_output), ("sample", sample)):
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"{name} must be a torch tensor, got {type(value).__name__}")
        if model_output.shape != sample.shape:
            raise ValueError(
                f"model_output has shape {tuple(model_output.shape)} but sample has {tuple(sample.shape)}; they must match"
            )
        return self._as_time(timestep)

    def _is_returned(self, sample: torch.Tensor) -> bool:
        """`sample` is the tensor the last step returned, not edited since (identity + version counter)."""
        return sample is self._returned and sample._version == self._returned_version

    def _model_f(self, model_output: torch.Tensor, call: Call) -> torch.Tensor:
        """The solver's f (float64) from the model output of `call` (at its input and model time):
        ε (converted with backends.config.to_eps) or, for a flow, the velocity as it is."""
        x = call.x
        out = model_output.to(device=x.device, dtype=x.dtype)
        if self._kind in ("epsilon", "velocity"):
            return out
        t = float(call.time)
        return to_eps(out, call.input, float(self.schedule.alpha(t)), float(self.schedule.sigma(t)), self._kind)

    def _take(self, model_output: torch.Tensor, t) -> None:
        """Hand the model output at timestep t to the Stepper's pending call (checked against its time)."""
        stepper = self._stepper
        call = stepper.next_call()
        if t != self._as_time(call.time):
            raise self._time_error(t, call.time, call.index, "the next model call")
        f = self._model_f(model_output, call)
        stepper.advance(f, owned=f is not model_output)

    def _next_sample(self) -> torch.Tensor:
        """What the caller evaluates the model at next (the next call's input), or the walk's last state."""
        stepper = self._stepper
        return stepper.head[1] if stepper.done else stepper.next_call().input

    def _dry_run(self, key: tuple, make: Callable[[], Stepper]) -> tuple[list, list, bool]:
        """(model time, grid row) of each model call of the walk `make()` builds on zeros (a dry
        run), and whether every call is at a grid state and its model time (`Call.on_grid`).
        Cached per solver and `key`: a pipeline calls set_timesteps once per call."""
        cached = self._dry_runs.get(key)
        if cached is not None and cached[0] is self.solver:
            return cached[1]
        stepper = make()
        times, rows, on_grid = [], [], True
        while not stepper.done:
            call = stepper.next_call()
            times.append(call.time)
            rows.append(call.index)
            on_grid = on_grid and call.on_grid
            stepper.advance(torch.zeros_like(call.x))
        self._dry_runs[key] = (self.solver, (times, rows, on_grid))
        return times, rows, on_grid

    def _restart(self, model_output: torch.Tensor, t, sample: torch.Tensor, index: int) -> None:
        """Walk on from `sample` taken as a state at model time t, the model's output there in hand,
        as grid row `index` (`Stepper.resuming`); that output is used up."""
        x = sample.to(torch.float64)
        f = self._model_f(model_output, Call(x=x, index=index, time=t, scale=1.0, on_grid=False))
        self._stepper = Stepper.resuming(self.solver, x, t, f, index)
        self._skip = True

    def _emit(self, state: torch.Tensor, sample: torch.Tensor, return_dict: bool, output=SchedulerOutput):
        """`state` in the caller's dtype (a fresh tensor), remembered for the identity check."""
        out = state.to(device=sample.device, dtype=sample.dtype, copy=True)
        self._returned, self._returned_version = out, out._version
        self._steps += 1
        return output(prev_sample=out) if return_dict else (out,)

    def _time_error(self, t, expected, index: int, what: str) -> ValueError:
        return ValueError(
            f"timestep={t} does not match the grid: {what} is at t={expected} (grid index {index} of "
            f"{self.solver.grid.N}); step through scheduler.timesteps in order, or call set_timesteps to restart"
        )


class _Sampling(_SchedulerCore):
    """Sampling x_N → x_0, one model call per step, optionally from a `set_latent` Latent."""

    _latent: Latent | None = None  # (set by set_latent; the config-registered __init__ is the family's)

    # -- exact reconstruction -------------------------------------------------------------------
    def set_latent(self, latent: Latent | None) -> None:
        """Reconstruct `latent` (a `belm_core.Latent`) in the next run; None clears it.

        The latent stays set across `set_timesteps` calls (a pipeline calls it first) until
        `set_latent(None)`. Its method must be this scheduler's and its grid the one
        `set_timesteps` builds (checked there). Pass `latents=latent.states[0].to(model dtype)`
        to the pipeline: the first step checks that the sample is that state, ignores the model
        output at x_N (a 2-state latent already holds x_{N−1}: one wasted model call) and
        returns x_{N−1}; later steps continue from the latent's float64 states. A partial
        latent (index K < N, from an inversion stopped at K) makes `timesteps` start at t_K.
        """
        if latent is not None:
            if not isinstance(latent, Latent):
                raise TypeError(f"latent must be a belm_core.Latent or None, got {type(latent).__name__}")
            if not isinstance(latent.states[0], torch.Tensor):
                raise TypeError("latent.states must be torch tensors for a diffusers scheduler (got NumPy arrays)")
            sig = self.method.signature()
            if latent.method is not None and latent.method != sig:
                raise ValueError(
                    f"this Latent was made by method {latent.method!r}, but this scheduler runs {sig!r}; "
                    f"use {type(self).__name__}.from_config(config, method=...) with the inverting method"
                )
            if len(latent.states) != self.method.latent_size:
                raise ValueError(
                    f"latent.states has {len(latent.states)} array(s); {sig} needs {self.method.latent_size}"
                )
        self._latent = latent
        if self.solver is not None:
            self._begin_index = None
            self._clear_run()
            self._set_timesteps_for(self.solver)

    @property
    def latent(self) -> Latent | None:
        """The latent set with `set_latent` (None: sampling from the pipeline's latents)."""
        return self._latent

    def _set_timesteps_for(self, solver: Solver) -> None:
        self._start = solver.grid.N
        zero = torch.zeros(1, dtype=torch.float64)
        if self._latent is None:
            times, self._rows, self._on_grid = self._dry_run(("x_N",), lambda: Stepper.sampling(solver, zero))
            self._publish(times)
            return
        from belm_core.latent import check_for

        try:
            self._start = check_for(self._latent, self.method, solver.grid)
        except ValueError as err:
            raise ValueError(
                f"the latent given to set_latent() does not fit set_timesteps({solver.grid.N}) on this config: {err}"
            ) from err
        dry = self._latent.replace(states=tuple(zero for _ in self._latent.states))
        key = ("latent", self._start, len(dry.states))
        times, rows, self._on_grid = self._dry_run(key, lambda: Stepper.from_latent(solver, dry))
        # the pipeline starts with a model call at the latent's first state x_K; a k-state latent
        # already holds what its first step would compute there, so that output goes unused
        self._wasted_first = not (times and times[0] == self._t[self._start])
        first = [self._start] if self._wasted_first else []
        self._rows = first + rows
        self._publish([self._t[i] for i in first] + times)

    # -- one step -----------------------------------------------------------------------------
    def step(
        self, model_output: torch.Tensor, timestep: int | float | torch.Tensor, sample: torch.Tensor, return_dict: bool = True
    ) -> SchedulerOutput | tuple:
        """The state after the model output at (sample, timestep), by the method's step (eq. 18 for O-BELM).

        Returns `SchedulerOutput(prev_sample=...)` (or a 1-tuple) in the dtype of `sample`: the
        input of the next model call, which for "o-belm", "bdia" and "ddim" is the next grid state
        x_{i−1}; after the last call, x_0.
        """
        t = self._check_step_args(model_output, timestep, sample)
        if self._stepper is None:
            self._begin(t, sample, model_output)
        elif not self._is_returned(sample):
            self._resync(t, sample, model_output)
        elif self._stepper.done:
            raise ValueError(f"all {len(self.timesteps)} steps are done; call set_timesteps to start a new run")
        if self._skip:  # the model output at a set latent's first state: its carry holds what comes next
            self._skip = False
        else:
            self._take(model_output, t)
        return self._emit(self._next_sample(), sample, return_dict)

    def _index_of(self, t) -> int:
        """Grid index of model time t (the sampling grid's times are distinct)."""
        try:
            return self._t.index(t, 1)
        except ValueError:
            raise ValueError(
                f"timestep={t} is not on this scheduler's grid {self._t[:0:-1]}; pass one of scheduler.timesteps"
            ) from None

    def _begin(self, t, sample: torch.Tensor, model_output: torch.Tensor) -> None:
        """The first step of a run: from the set latent, or from the sample at t's grid position."""
        expected = self._start
        if self._begin_index is not None:
            if self._begin_index >= len(self.timesteps):
                raise ValueError(f"begin_index={self._begin_index} is past the {len(self.timesteps)} timesteps")
            expected = self._start - self._begin_index
        if self._latent is not None:
            if t != self._t[expected] or expected != self._start:
                raise self._time_error(t, self._t[self._start], self._start, "the latent's first state")
            first = self._latent.states[0]
            if not torch.equal(sample, first.to(device=sample.device, dtype=sample.dtype)):
                raise ValueError(
                    "the sample at the first step is not the latent's first state: pass "
                    "latents=latent.states[0].to(<the model's dtype>) to the pipeline (same latent as set_latent), "
                    "or call scheduler.set_latent(None) to sample from other latents"
                )
            states = tuple(s.to(sample.device) for s in self._latent.states)
            self._stepper = Stepper.from_latent(self.solver, self._latent.replace(states=states))
            self._skip = self._wasted_first
            return
        if not self._on_grid:  # calls away from the grid: position → row from the dry run
            b = self._begin_index or 0
            if t != self._as_time(self.timesteps[b].item()):
                raise self._time_error(t, self.timesteps[b].item(), self._rows[b], f"timesteps[{b}]")
            if b == 0:
                self._stepper = Stepper.sampling(self.solver, sample, self._start)
            else:  # img2img: the image noised at timesteps[b], a state at that model time
                self._restart(model_output, t, sample, self._rows[b])
            return
        index = self._index_of(t)
        if self._begin_index is not None and index != expected:
            raise self._time_error(t, self._t[expected], expected, f"timesteps[begin_index={self._begin_index}]")
        self._stepper = Stepper.sampling(self.solver, sample, index)

    def _resync(self, t, sample: torch.Tensor, model_output: torch.Tensor) -> None:
        """The caller changed the sample: a fresh history from it (module docstring, re-sync rule)."""
        self._skip = False
        if self._on_grid:  # a state x_i at t_i: the method's start-up from it
            self._stepper = Stepper.sampling(self.solver, sample, self._index_of(t))
            return
        call = self._stepper.next_call()  # the call whose input was replaced
        if t != self._as_time(call.time):
            raise self._time_error(t, call.time, call.index, "the next model call")
        self._restart(model_output, t, sample, call.index)


class _Inversion(_SchedulerCore):
    """Exact inversion x_0 → Latent, one model call per step (module docstring: inverse timesteps)."""

    def _set_timesteps_for(self, solver: Solver) -> None:
        zero = torch.zeros(1, dtype=torch.float64)
        self._publish(self._dry_run(("x_0",), lambda: Stepper.inversion(solver, zero))[0])

    def step(
        self, model_output: torch.Tensor, timestep: int | float | torch.Tensor, sample: torch.Tensor, return_dict: bool = True
    ) -> BELMInverseSchedulerOutput | tuple:
        """The state after the model output at (sample, timestep), by the method's inverse step (eq. 19 for O-BELM).

        `prev_sample` is the input of the next model call (for "o-belm", "bdia" and "ddim" the next
        noisier grid state x_{i+1}); after the last call, the latent's x_N.
        """
        t = self._check_step_args(model_output, timestep, sample)
        if self._stepper is None:
            if self._begin_index not in (None, 0):
                raise ValueError(
                    f"begin_index={self._begin_index}: an inversion starts at x_0, the first of its timesteps "
                    "(set_begin_index(0) or none)"
                )
            self._stepper = Stepper.inversion(self.solver, sample)
            self._out_dtype = sample.dtype
        elif not self._is_returned(sample):
            raise ValueError(
                f"the sample passed to {type(self).__name__}.step is not the one the previous step returned (or it "
                "was edited in place); exact inversion continues only from its own states: do not change the latents "
                "during an inversion, or call set_timesteps to start again"
            )
        if self._stepper.done:
            raise ValueError(f"the inversion is complete ({self.solver.grid.N} steps); read .latent or call set_timesteps")
        self._take(model_output, t)
        return self._emit(self._next_sample(), sample, return_dict, BELMInverseSchedulerOutput)

    @property
    def latent(self) -> Latent:
        """The inverted `Latent` (float64 states, noisiest first; dtype = the samples' dtype)."""
        if self._stepper is None:
            raise ValueError("no inversion has run: call set_timesteps and step through timesteps first")
        latent = self._stepper.latent()
        return latent.replace(dtype=str(self._out_dtype).replace("torch.", ""))


# ---------------------------------------------------------------------------------------------- families
class _VPFamily(_SchedulerCore):
    """VP configs (DDIM, PNDM, Euler, DPM-Solver, UniPC, …): int64 training timesteps, `add_noise`."""

    _compatibles = [e.name for e in KarrasDiffusionSchedulers]
    _timestep_dtype = torch.int64
    _config_keys_read = (
        "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "set_alpha_to_one",
        "steps_offset", "prediction_type", "timestep_spacing", "rescale_betas_zero_snr", "use_karras_sigmas",
        "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas",
    )

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | Sequence[float] | None = None,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: Literal["epsilon", "v_prediction", "sample"] = "epsilon",
        timestep_spacing: Literal["leading", "trailing", "linspace"] = "leading",
        rescale_betas_zero_snr: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_lu_lambdas: bool = False,
        method: SchedulerMethod = "o-belm",
        gamma: float = 1.0,
    ):
        self._setup(method, gamma)
        self.timesteps = torch.from_numpy(self.schedule.timesteps(num_train_timesteps, "linspace").copy())

    @classmethod
    def _check_family(cls, config: Mapping[str, Any]) -> None:
        if is_flow_config(config):
            flow = cls.__name__.replace("BELM", "BELMFlow")
            raise ValueError(
                f"config of {config.get('_class_name', 'a flow scheduler')!r} is a rectified-flow config (SD3, Flux); "
                f"{cls.__name__} reads VP configs only: use backends.schedulers.{flow}.from_config"
            )

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = α_t x_0 + σ_t ε with α_t, σ_t of the schedule (img2img), one t per batch entry or one for all."""
        t = np.asarray(timesteps.detach().cpu() if isinstance(timesteps, torch.Tensor) else timesteps, dtype=np.float64)
        shape = (-1,) + (1,) * (original_samples.ndim - 1)
        coeff = {}
        for name, values in (("alpha", self.schedule.alpha(t)), ("sigma", self.schedule.sigma(t))):
            coeff[name] = torch.as_tensor(np.atleast_1d(values), device=original_samples.device)
            coeff[name] = coeff[name].to(original_samples.dtype).reshape(shape)
        return coeff["alpha"] * original_samples + coeff["sigma"] * noise

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: Sequence[int] | None = None,
    ) -> None:
        """Build the grid (N steps, or explicit `timesteps`, noisiest first) and reset all history."""
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError(
                f"give exactly one of num_inference_steps={num_inference_steps!r} and timesteps={timesteps!r}"
            )
        if timesteps is not None:
            t = _as_numpy(timesteps)
            key = ("timesteps", t.tobytes(), str(t.dtype))
            options = self._solver_options(None)
            options.pop("spacing")  # (the timesteps are given)
            make = lambda: Solver(self.schedule, method=self.method, timesteps=t, **options)  # noqa: E731
        else:
            key = ("steps", num_inference_steps)
            options = self._solver_options(num_inference_steps)
            make = lambda: Solver(self.schedule, num_inference_steps, self.method, **options)  # noqa: E731
        self._install(self._cached_solver(key, make), device)

    @staticmethod
    def _as_time(timestep: Any) -> int:
        """A timestep (int, float or a tensor of equal entries) as an int training timestep."""
        timestep = _scalar(timestep)
        if float(timestep) != round(float(timestep)):
            raise ValueError(f"timestep={timestep!r} must be an integer training timestep")
        return int(round(float(timestep)))


class _FlowFamily(_SchedulerCore):
    """FlowMatchEulerDiscreteScheduler configs (SD3, Flux): float32 model times t = T·σ, `scale_noise`, `sigmas`."""

    _compatibles = ["FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler"]
    _timestep_dtype = torch.float32
    _config_keys_read = (
        "num_train_timesteps", "shift", "use_dynamic_shifting", "base_shift", "max_shift", "base_image_seq_len",
        "max_image_seq_len", "time_shift_type",
    ) + FLOW_OPTIONS_UNSUPPORTED

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        shift: float = 1.0,
        use_dynamic_shifting: bool = False,
        base_shift: float = 0.5,
        max_shift: float = 1.15,
        base_image_seq_len: int = 256,
        max_image_seq_len: int = 4096,
        time_shift_type: Literal["exponential", "linear"] = "exponential",
        method: SchedulerMethod = "o-belm",
        gamma: float = 1.0,
        invert_sigmas: bool = False,
        shift_terminal: float | None = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        stochastic_sampling: bool = False,
    ):
        # (the last six are diffusers' options belm does not reproduce: registered so that a config
        # setting them is refused by backends.config.flow_schedule_from_config, not silently dropped)
        self._setup(method, gamma)
        self.timesteps = torch.empty(0, dtype=torch.float32)
        self.sigmas = torch.empty(0, dtype=torch.float32)

    @classmethod
    def _check_family(cls, config: Mapping[str, Any]) -> None:
        if not is_flow_config(config):
            vp = cls.__name__.replace("BELMFlow", "BELM")
            raise ValueError(
                f"config of {config.get('_class_name', 'a VP scheduler')!r} is not a rectified-flow config "
                f"(FlowMatchEulerDiscreteScheduler: SD3, Flux); for SD/SDXL configs use backends.schedulers.{vp}.from_config"
            )

    def scale_noise(self, sample: torch.Tensor, timestep: Any, noise: torch.Tensor) -> torch.Tensor:
        """x_σ = (1 − σ) x_0 + σ n with σ = t/T (img2img's forward process), one t per batch entry or one for all."""
        if not isinstance(noise, torch.Tensor):
            raise TypeError(f"noise must be a torch tensor, got {type(noise).__name__}")
        t = _as_numpy(timestep).astype(np.float64)
        sigma = self.schedule.sigma(t)
        if not np.all((sigma >= 0) & (sigma <= 1)):
            raise ValueError(f"timestep={t.tolist()} must lie in [0, {self.config.num_train_timesteps}] (σ = t/T in [0, 1])")
        shape = (-1,) + (1,) * (sample.ndim - 1)
        sigma = torch.as_tensor(np.atleast_1d(sigma), device=sample.device).to(sample.dtype).reshape(shape)
        return (1 - sigma) * sample + sigma * noise

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        sigmas: Sequence[float] | np.ndarray | None = None,
        mu: float | None = None,
        timesteps: Sequence[float] | np.ndarray | None = None,
    ) -> None:
        """Build the grid and reset all history, with the arguments of diffusers' flow scheduler.

        N steps laid out as FlowMatchEulerDiscreteScheduler does, from custom `sigmas` (Flux's
        pipeline passes linspace(1, 1/N, N)), shifted by `shift` or, with `use_dynamic_shifting`,
        by `mu` (required then; ignored otherwise, as diffusers does); or explicit model times
        `timesteps` (noisiest first, rounded to float32 and used as given: σ = t/T).
        """
        if sigmas is not None and timesteps is not None:
            raise ValueError(
                "give sigmas= or timesteps=, not both: belm's grid is the model times and σ = t/T on it "
                "(diffusers would shift the sigmas but not the timesteps)"
            )
        given = sigmas if sigmas is not None else timesteps
        if num_inference_steps is None and given is None:
            raise ValueError("give num_inference_steps, sigmas= or timesteps=")
        if given is not None and num_inference_steps is not None and len(given) != num_inference_steps:
            raise ValueError(
                f"num_inference_steps={num_inference_steps!r} differs from the {len(given)} "
                f"{'sigmas' if sigmas is not None else 'timesteps'} given; they must match"
            )
        if timesteps is not None:
            t = _as_numpy(timesteps).astype(np.float32).astype(np.float64)
        else:
            if self.schedule.use_dynamic_shifting and mu is None:
                raise ValueError(
                    "mu is required: this config has use_dynamic_shifting=True (Flux); pass "
                    "set_timesteps(N, mu=schedule.mu_for(image_seq_len)) (Flux's pipeline computes it)"
                )
            mu = mu if self.schedule.use_dynamic_shifting else None  # (SD3's pipeline may pass it; unused)
            sig = None if sigmas is None else _as_numpy(sigmas)
            t = self.schedule.timesteps(num_inference_steps, mu=mu, sigmas=sig)
        key = ("timesteps", t.tobytes())
        options = self._solver_options(None)
        make = lambda: Solver(self.schedule, method=self.method, timesteps=t, **options)  # noqa: E731
        self._install(self._cached_solver(key, make), device)

    def _install(self, solver: Solver, device: str | torch.device | None) -> None:
        super()._install(solver, device)
        # σ_N … σ_1 of the grid and the clean end σ_0 = 0, as diffusers appends it
        self.sigmas = torch.tensor(solver.grid.sigma[::-1].copy(), dtype=torch.float32, device=device)

    @staticmethod
    def _as_time(timestep: Any) -> float:
        """A timestep (number or a tensor of equal entries) as a float32 model time (held as a float)."""
        return float(np.float32(_scalar(timestep)))


# ---------------------------------------------------------------------------------------------- public classes
class BELMScheduler(_Sampling, _VPFamily):
    """Sampling with O-BELM, BDIA, DDIM or the recommended sampler from any SD/SDXL config, one model call per step.

    Args (the DDIM keys; unknown keys of another scheduler's config are ignored by `from_config`):
        num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
        rescale_betas_zero_snr: the training schedule ᾱ_t (`backends.config.schedule_from_config`).
        set_alpha_to_one: the last step ends at ᾱ = 1 (True) or at ᾱ_0 (False).
        steps_offset, timestep_spacing: the grid layout ("leading", "trailing", "linspace");
            use_karras_sigmas=True gives diffusers' Karras timesteps instead (the other σ-grid
            options, use_exponential_sigmas / use_beta_sigmas / use_lu_lambdas, are refused).
        prediction_type: what the model predicts ("epsilon", "v_prediction", "sample").
        method: "o-belm" (default; eq. 18, second order), "bdia" (with `gamma`), "ddim", or
            "recommended" (`belm_core.recommended`: "dpl-ob-curv" on the "trailing-tail" grid with the
            predictor–corrector start-up; module docstring).
        gamma: BDIA's γ (docs/math.md §6); ignored by the other methods.

    Precision and the re-sync rule: see the module docstring. `set_latent(latent)` makes the
    next run reconstruct an inverted latent exactly. A flow config is refused (`BELMFlowScheduler`).
    """


class BELMInverseScheduler(_Inversion, _VPFamily):
    """Exact inversion x_0 → Latent, one model call per step (same config and options as `BELMScheduler`).

    Manual loop (as for DDIMInverseScheduler), or as `pipe.scheduler` for one pipeline call
    (then the pipeline's own classifier-free guidance gives ε, the same bits as when sampling):

        inv.set_timesteps(N)
        for t in inv.timesteps:
            z = inv.step(unet(z, t, ...).sample, t, z).prev_sample
        latent = inv.latent

    `timesteps` lists the model time of each step's ε (module docstring: (t_1, t_1, t_2, …,
    t_{N−1}) for O-BELM and BDIA). `prev_sample` is x_{i+1} (method="recommended": the next call's
    input, module docstring); `latent` is the `Latent` at the
    last completed step (stopping the loop early at grid index K ≥ 1 gives a partial latent,
    which `BELMScheduler.set_latent` samples from t_K). The sample passed to each step must be
    the one the previous step returned: an inversion cannot re-sync from an edited state.
    """


class BELMFlowScheduler(_Sampling, _FlowFamily):
    """Sampling with O-BELM, BDIA, DDIM (= Euler) or the recommended sampler on a rectified flow (SD3, Flux).

    Drop-in for `FlowMatchEulerDiscreteScheduler`: `pipe.scheduler = BELMFlowScheduler.from_config(
    pipe.scheduler.config, method="o-belm")`. The model output is the velocity v = dx/dσ = n − x_0
    and the recurrence runs in (x, σ) (docs/math.md §11); method="ddim" is the Euler step
    x_{i−1} = x_i + (σ_{i−1} − σ_i) v, diffusers' own update.

    Args (FlowMatchEulerDiscreteScheduler's keys, read by `backends.config.flow_schedule_from_config`):
        num_train_timesteps: T (model time t = T·σ).
        shift: σ ↦ shift·σ/(1 + (shift − 1)σ) (SD3: 3.0).
        use_dynamic_shifting, base_shift, max_shift, base_image_seq_len, max_image_seq_len,
        time_shift_type: Flux's resolution-dependent shift by `mu` (passed to `set_timesteps`).
        method: "o-belm" (default; eq. 18, second order), "bdia" (with `gamma`), "ddim" (Euler), or
            "recommended" (O-BELM with the predictor–corrector start-up, `belm_core.recommended`).
        gamma: BDIA's γ (docs/math.md §6); ignored by the other methods.
        invert_sigmas, shift_terminal, use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas,
        stochastic_sampling: not reproduced; a config setting any of them is refused (ValueError).

    `set_timesteps(num_inference_steps, device, sigmas=, mu=, timesteps=)`, `timesteps` as float32
    model times, `sigmas` with the appended 0, `scale_noise` for img2img; `set_latent(latent)`
    makes the next run reconstruct an inverted latent exactly. Precision and the re-sync rule: see
    the module docstring. A VP config is refused (`BELMScheduler`).
    """


class BELMFlowInverseScheduler(_Inversion, _FlowFamily):
    """Exact inversion x_0 → Latent on a rectified flow, one model call per step (config as `BELMFlowScheduler`).

    As `pipe.scheduler` of an SD3 or Flux pipeline for one call with `latents=z0` (Flux: packed),
    or in a manual loop:

        inv.set_timesteps(N)                     # or (sigmas=, mu=) as the pipeline passes them
        for t in inv.timesteps:
            z = inv.step(v_model(z, t), t, z).prev_sample
        latent = inv.latent

    `set_timesteps` builds the sampling grid of the same arguments (t_N = T·σ_N, …, t_1; the
    end σ_0 = 0) and `timesteps` lists, in the order of the steps, the model time at which each
    inversion step needs v: (t_1, t_1, t_2, …, t_{N−1}) for O-BELM and BDIA, (t_1, …, t_N) for
    DDIM (module docstring). The last state x_N is reached at σ_N (σ = 1 on the default grids,
    pure noise) without a model call there. `latent` is the `Latent` at the last completed step;
    `BELMFlowScheduler.set_latent` samples from it on the grid the same set_timesteps call builds.
    The sample passed to each step must be the one the previous step returned.
    """


# ---------------------------------------------------------------------------------------------- helpers
def _as_numpy(values: Any) -> np.ndarray:
    """A tensor, array or sequence as a NumPy array (on the CPU)."""
    return np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values)


def _scalar(timestep: Any) -> int | float:
    """A timestep (number or a tensor of equal entries) as a Python number."""
    if isinstance(timestep, torch.Tensor) and timestep.ndim == 0:
        timestep = timestep.item()
    elif isinstance(timestep, torch.Tensor):
        if timestep.numel() == 0:
            raise ValueError("timestep is an empty tensor")
        flat = timestep.detach().reshape(-1)
        if flat.numel() > 1 and not bool((flat == flat[0]).all()):
            raise ValueError(f"timestep={timestep.tolist()} has different entries; one step takes one timestep")
        timestep = flat[0].item()
    if isinstance(timestep, bool) or not isinstance(timestep, (int, float, np.integer, np.floating)):
        raise TypeError(f"timestep={timestep!r} must be a number or a tensor, got {type(timestep).__name__}")
    return timestep
