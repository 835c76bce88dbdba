"""diffusers schedulers driven by their own `set_timesteps` / `step` loops on a given ε.

Peers are built from the *same* discrete schedule as our solver (`trained_betas`
recovered from `DiscreteVP.alphas_cumprod`), ε-prediction, no clipping or
thresholding, and asked to end at the clean state α = 1, σ̄ = 0 where they can:

| peer | config | grid ("linspace") | end point |
|---|---|---|---|
| `diffusers-DDIM` | `DDIMScheduler(set_alpha_to_one=True)` | round(linspace(0, T−1, N)) reversed — identical to ours, **but** `step` lands on t − ⌊T/N⌋, not on the next grid point (see below) | clean state (ᾱ = 1) |
| `diffusers-DPM++2M` | `DPMSolverMultistepScheduler(solver_order=2, algorithm_type="dpmsolver++", final_sigmas_type="zero")` | round(linspace(0, T−1, N+1)) reversed, last dropped | σ = 0 (clean) |
| `diffusers-UniPC` | `UniPCMultistepScheduler(solver_order=2, solver_type="bh2", final_sigmas_type="zero")` | as DPM++ | σ = 0 (clean) |
| `diffusers-DEIS` | `DEISMultistepScheduler(solver_order=2)` | as DPM++ | **σ̄(t = 0)** — DEIS has no `final_sigmas_type`; a zero final σ makes its log-ρ step 0·∞ = NaN |

diffusers' `DDIMScheduler.step` computes the previous timestep as t − ⌊T/N⌋ whatever
the spacing. With "leading"/"trailing" that is the next grid point; with "linspace"
it is not (N = 5: grid 999, 749, 500, 250, 0, but the step from 999 lands at noise
level 799 while the next ε is evaluated with model time 749). Its "linspace" results
therefore differ from our `ddim` on the identical grid; with "trailing" they agree to
rounding.

So the multistep peers' last *model* time is ≈ T/N rather than 0 (their last step
jumps from there to σ = 0), and DEIS stops at the first training timestep. The
returned `PeerRun` records the end point (`end_alpha`, `end_sigma_bar`) so the error
is always taken against the exact ODE solution *at that peer's own end point*.

Inversion peers: `DDIMInverseScheduler` (paired with `DDIMScheduler`, both
`set_alpha_to_one=True` and `timestep_spacing="trailing"` — the inverse scheduler
supports only "leading"/"trailing") and `DPMSolverMultistepInverseScheduler` (paired
with `DPMSolverMultistepScheduler`, `final_sigmas_type="sigma_min"`: the inverse
starts from the first training timestep t = 0, σ̄ = σ̄(0), not from the clean state,
so the forward one must end there too).

Grid laws (`GridLaw`, the `spacing` argument): diffusers' own scheduler options, nothing
re-derived here —

| law | option | model times / σ nodes |
|---|---|---|
| `linspace`, `leading`, `trailing` | `timestep_spacing` | the table of "Common Diffusion Noise Schedules and Sample Steps are Flawed" (Lin et al. 2024, Table 2); `leading` starts at ⌊T/(N+1)⌋·N + offset, not at T − 1 |
| `karras` | `use_karras_sigmas=True` | σ_i = (σ_max^{1/ρ} + i/(N−1)(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, ρ = 7 (Karras et al. 2022, eq. 5); model time = round(t(σ_i)) |
| `exponential` | `use_exponential_sigmas=True` | log σ uniform from σ_max to σ_min; model time = ⌊t(σ_i)⌋ (diffusers casts, it does not round) |
| `beta` | `use_beta_sigmas=True` | σ at the quantiles of Beta(0.6, 0.6) (Lee et al. 2024); model time = ⌊t(σ_i)⌋ |
| `lu` | `use_lu_lambdas=True` (DPM-Solver++ only) | λ = −log σ̄ uniform (Lu et al. 2022, "logSNR" steps): the σ nodes of `exponential`, model time rounded instead of cast |

σ_max = σ̄(T − 1) and σ_min = σ̄(0) for the σ laws (the schedule's own ends), so the σ
laws start at the noisiest state whatever their model time. DPM++2M and UniPC then
append σ = 0 (`final_sigmas_type="zero"`) under every law; DEIS repeats its last σ
(σ̄(0) under the σ laws — its last step has length 0 — and σ̄(0) on the spacings), so
it always ends at σ̄(0). `grid_laws(name)` lists the laws the installed scheduler class
accepts. `sample` starts the loop at index 0 (`set_begin_index(0)`): on the cosine
schedule several Karras/exponential/beta/λ nodes round to the same model time 999, and
diffusers' own look-up of the first index then lands on the second copy and runs past
its σ array.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Literal

import numpy as np

#: names of the sampling peers, in table order
SAMPLERS = ("diffusers-DDIM", "diffusers-DPM++2M", "diffusers-UniPC", "diffusers-DEIS")
#: names of the inversion peers
INVERTERS = ("diffusers-DDIMInverse", "diffusers-DPMSolverInverse")

GridLaw = Literal["linspace", "leading", "trailing", "karras", "exponential", "beta", "lu"]
#: each grid law as diffusers' own constructor options (see the module docstring)
GRID_LAWS: dict[str, dict[str, Any]] = {
    "linspace": {"timestep_spacing": "linspace"},
    "leading": {"timestep_spacing": "leading"},
    "trailing": {"timestep_spacing": "trailing"},
    "karras": {"use_karras_sigmas": True},
    "exponential": {"use_exponential_sigmas": True},
    "beta": {"use_beta_sigmas": True},
    "lu": {"use_lu_lambdas": True},
}
_CLASSES = {
    "diffusers-DDIM": "DDIMScheduler",
    "diffusers-DPM++2M": "DPMSolverMultistepScheduler",
    "diffusers-UniPC": "UniPCMultistepScheduler",
    "diffusers-DEIS": "DEISMultistepScheduler",
}


@dataclass
class PeerRun:
    x0: Any  # torch tensor, the sample at the end point
    timesteps: np.ndarray  # model times visited (noisiest first)
    end_alpha: float
    end_sigma_bar: float
    nfe: int


def betas_of(schedule) -> np.ndarray:
    """β_t = 1 − ᾱ_t/ᾱ_{t−1} (β_0 = 1 − ᾱ_0) of a belm_core DiscreteVP."""
    ac = np.asarray(schedule.alphas_cumprod, dtype=np.float64)
    return 1.0 - ac / np.concatenate([[1.0], ac[:-1]])


def _check_sampler(name: str) -> None:
    if name not in SAMPLERS:
        raise ValueError(f"name={name!r} is not a sampling peer; choose one of {list(SAMPLERS)}")


def grid_laws(name: str) -> tuple[str, ...]:
    """The `GRID_LAWS` that the installed diffusers class of peer `name` accepts (its
    constructor has every option the law sets), in `GRID_LAWS` order."""
    import inspect

    import diffusers

    _check_sampler(name)
    params = inspect.signature(getattr(diffusers, _CLASSES[name]).__init__).parameters
    return tuple(law for law, opts in GRID_LAWS.items() if all(k in params for k in opts))


def make_sampler(name: str, schedule, spacing: GridLaw = "linspace", *, final: str = "zero"):
    """A configured diffusers scheduler for one of `SAMPLERS` on `schedule`'s ᾱ, on grid law `spacing`."""
    import diffusers

    _check_sampler(name)
    if spacing not in grid_laws(name):
        raise ValueError(f"spacing={spacing!r} is not a grid law of {name} in diffusers {diffusers.__version__}; "
                         f"choose one of {list(grid_laws(name))}")
    common = dict(
        num_train_timesteps=int(schedule.num_train_timesteps),
        trained_betas=betas_of(schedule).tolist(),
        prediction_type="epsilon",
        steps_offset=int(getattr(schedule, "steps_offset", 0)),
        **GRID_LAWS[spacing],
    )
    if name == "diffusers-DDIM":
        return diffusers.DDIMScheduler(set_alpha_to_one=True, clip_sample=False, thresholding=False, **common)
    if name == "diffusers-DPM++2M":
        return diffusers.DPMSolverMultistepScheduler(
            solver_order=2, algorithm_type="dpmsolver++", thresholding=False, final_sigmas_type=final, **common
        )
    if name == "diffusers-UniPC":
        return diffusers.UniPCMultistepScheduler(
            solver_order=2, solver_type="bh2", predict_x0=True, thresholding=False, final_sigmas_type=final, **common
        )
    return diffusers.DEISMultistepScheduler(solver_order=2, thresholding=False, **common)


def _end_point(sch, schedule) -> tuple[float, float]:
    """(α, σ̄) where a scheduler's trajectory ends (diffusers' σ is our σ̄)."""
    if hasattr(sch, "final_alpha_cumprod"):  # DDIM: the last step lands on final_alpha_cumprod
        ac = float(sch.final_alpha_cumprod)
        return ac**0.5, ((1.0 - ac) / ac) ** 0.5
    sb = float(np.float64(sch.sigmas[-1]))
    return 1.0 / np.sqrt(1.0 + sb * sb), sb


def _configured(name: str, schedule, steps: int, spacing: GridLaw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # diffusers' own numpy-2 DeprecationWarnings
        sch = make_sampler(name, schedule, spacing)
        sch.set_timesteps(steps)
        if hasattr(sch, "set_begin_index"):
            sch.set_begin_index(0)  # the first node, even where the first model time repeats
    return sch


def sample(name: str, schedule, eps_fn: Callable, x_T, steps: int, spacing: GridLaw = "linspace") -> PeerRun:
    """Run peer `name`'s own step loop from x_T (a torch tensor) with `steps` model calls."""

    x = x_T.clone()
    nfe = 0
    sch = _configured(name, schedule, steps, spacing)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in sch.timesteps:
            eps = eps_fn(x, int(t))
            nfe += 1
            x = sch.step(eps, t, x).prev_sample
    ea, esb = _end_point(sch, schedule)
    return PeerRun(x0=x, timesteps=sch.timesteps.numpy().copy(), end_alpha=ea, end_sigma_bar=esb, nfe=nfe)


def first_timestep(name: str, schedule, steps: int, spacing: GridLaw = "linspace") -> int:
    return int(_configured(name, schedule, steps, spacing).timesteps[0])


def start_sigma_bar(name: str, schedule, steps: int, spacing: GridLaw = "linspace") -> float:
    """σ̄ of the state the peer's first step reads (diffusers' σ is our σ̄)."""
    sch = _configured(name, schedule, steps, spacing)
    if hasattr(sch, "sigmas"):
        return float(np.float64(sch.sigmas[0]))
    ac = float(schedule.alphas_cumprod[int(sch.timesteps[0])])
    return ((1.0 - ac) / ac) ** 0.5


def roundtrip(name: str, schedule, eps_fn: Callable, x0, steps: int) -> tuple[Any, Any]:
    """(latent, x0_rec): invert x0 with an inverse scheduler, then sample with its forward pair."""
    import diffusers

    common = dict(
        num_train_timesteps=int(schedule.num_train_timesteps),
        trained_betas=betas_of(schedule).tolist(),
        prediction_type="epsilon",
    )
    if name == "diffusers-DDIMInverse":
        inv = diffusers.DDIMInverseScheduler(set_alpha_to_one=True, clip_sample=False, timestep_spacing="trailing", **common)
        fwd = diffusers.DDIMScheduler(set_alpha_to_one=True, clip_sample=False, timestep_spacing="trailing", **common)
    elif name == "diffusers-DPMSolverInverse":
        kw = dict(solver_order=2, algorithm_type="dpmsolver++", timestep_spacing="linspace", **common)
        inv = diffusers.DPMSolverMultistepInverseScheduler(**kw)
        fwd = diffusers.DPMSolverMultistepScheduler(final_sigmas_type="sigma_min", **kw)
    else:
        raise ValueError(f"name={name!r} is not an inversion peer; choose one of {list(INVERTERS)}")
    x = x0.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inv.set_timesteps(steps)
        fwd.set_timesteps(steps)
        for t in inv.timesteps:
            x = inv.step(eps_fn(x, int(t)), t, x).prev_sample
        latent = x
        for t in fwd.timesteps:
            x = fwd.step(eps_fn(x, int(t)), t, x).prev_sample
    return latent, x
