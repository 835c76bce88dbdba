"""What a diffusers scheduler config means for belm: schedule, grid options, prediction type.

One place reads a diffusers `scheduler_config` (DDIM, PNDM, Euler, DPM-Solver, UniPC, …):

    schedule_from_config(config)   → DiscreteVP with the ᾱ_t diffusers computes, or
                                     FlowMatch for a FlowMatchEulerDiscreteScheduler config
    solver_options(config)         → {"spacing": …, "end": …} for `belm_core.Solver`
                                     ({"prediction": "velocity"} for a flow)
    prediction_type(config)        → "epsilon" | "v_prediction" | "sample" | "velocity" (flow)
    to_eps(output, x, α, σ, kind)  → ε from the model's native output

Every adapter (UNetEps, the drop-in schedulers, the applications) builds its grid and
converts model outputs through these functions, so a latent inverted by one of them is
sampled on the same grid, with the same ε, by another.
"""

from __future__ import annotations

from typing import Any, Literal, Mapping

import numpy as np

from belm_core.schedules import DiscreteVP, FlowMatch

__all__ = [
    "PredictionType", "PREDICTION_TYPES", "ZERO_SNR_ALPHA_BAR", "FLOW_OPTIONS_UNSUPPORTED",
    "is_flow_config", "flow_schedule_from_config", "schedule_from_config", "solver_options", "prediction_type", "to_eps", "rescale_zero_terminal_snr",
]

PredictionType = Literal["epsilon", "v_prediction", "sample"]
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")

#: ᾱ that replaces the exact zero of a zero-terminal-SNR schedule (diffusers' Euler
#: scheduler uses the same value): σ̄ = sqrt(1/ᾱ − 1) ≈ 4096 instead of ∞
ZERO_SNR_ALPHA_BAR = 2.0**-24


def rescale_zero_terminal_snr(alphas_cumprod: np.ndarray) -> np.ndarray:
    """Lin et al. 2024 (Algorithm 1): shift and scale √ᾱ so that √ᾱ_{T−1} = 0, √ᾱ_0 unchanged.

        √ᾱ'_t = (√ᾱ_t − √ᾱ_{T−1}) · √ᾱ_0 / (√ᾱ_0 − √ᾱ_{T−1})
    """
    root = np.sqrt(np.asarray(alphas_cumprod, dtype=np.float64))
    first, last = root[0], root[-1]
    return ((root - last) * first / (first - last)) ** 2


#: FlowMatchEulerDiscreteScheduler options that change the grid or the update in ways belm
#: does not reproduce (refused with a clear error rather than silently ignored)
FLOW_OPTIONS_UNSUPPORTED = (
    "shift_terminal", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas",
    "stochastic_sampling",
)


#: diffusers' `timestep_spacing` values (DDIM, PNDM, Euler, DPM-Solver, UniPC configs)
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
#: σ-grid options of DPM-Solver/UniPC/DEIS configs other than use_karras_sigmas
VP_SIGMA_OPTIONS_UNSUPPORTED = ("use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas", "use_flow_sigmas")


def is_flow_config(config: Mapping[str, Any]) -> bool:
    """True for a rectified-flow scheduler config (FlowMatchEulerDiscreteScheduler and kin)."""
    name = str(config.get("_class_name", "") or "")
    return name.startswith("FlowMatch") or ("shift" in config and "beta_schedule" not in config)


def flow_schedule_from_config(config: Mapping[str, Any]) -> FlowMatch:
    """The `FlowMatch` a FlowMatchEulerDiscreteScheduler config describes (SD3: shift = 3;
    Flux: use_dynamic_shifting with base/max shift and image sequence lengths)."""
    used = sorted(k for k in FLOW_OPTIONS_UNSUPPORTED if config.get(k))
    if used:
        raise ValueError(
            f"scheduler config sets {used}; belm's FlowMatch reproduces diffusers' default, shifted and "
            "dynamically shifted grids only"
        )
    defaults = {"base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096}
    return FlowMatch(
        shift=float(config.get("shift", 1.0) or 1.0),
        num_train_timesteps=int(config.get("num_train_timesteps", 1000)),
        use_dynamic_shifting=bool(config.get("use_dynamic_shifting", False)),
        time_shift_type=config.get("time_shift_type", "exponential") or "exponential",
        **{k: (config.get(k) if config.get(k) is not None else v) for k, v in defaults.items()},
    )


def schedule_from_config(
    config: Mapping[str, Any], *, precision: Literal["float32", "float64"] = "float32"
) -> DiscreteVP | FlowMatch:
    """The `DiscreteVP` a diffusers scheduler config describes (a `FlowMatch` for a flow
    config: see `flow_schedule_from_config`).

    Reads num_train_timesteps, beta_start, beta_end, beta_schedule ("linear",
    "scaled_linear", "squaredcos_cap_v2"), trained_betas, steps_offset and
    rescale_betas_zero_snr.

    precision="float32" (default) reproduces diffusers: β and ᾱ_t = Π(1 − β) are computed
    in float32 (as every diffusers scheduler does, so these are the ᾱ the model was run
    with in diffusers) and then held in float64. precision="float64" computes them in
    float64 from the same formulas. The two differ by ~1e-7 relative, far below anything
    a sampler notices; exactness of the round trip does not depend on this choice.

    rescale_betas_zero_snr=True rescales ᾱ to a zero terminal SNR (Lin et al. 2024). The
    ODE in σ̄ = σ/α cannot start at α = 0 (σ̄ = ∞), so the exact zero at t = T−1 is
    replaced by ᾱ = 2⁻²⁴ (σ̄ ≈ 4096), as diffusers' Euler scheduler does; x_T is then
    pure noise to float32 precision.
    """
    if precision not in ("float32", "float64"):
        raise ValueError(f"precision={precision!r} must be 'float32' or 'float64'")
    if is_flow_config(config):
        return flow_schedule_from_config(config)
    T = int(config.get("num_train_timesteps", 1000))
    options = {"dtype": precision, "steps_offset": int(config.get("steps_offset", 0) or 0)}
    schedule = _beta_schedule(config, T, options)
    if config.get("rescale_betas_zero_snr", False):
        ac = rescale_zero_terminal_snr(schedule.alphas_cumprod)
        ac[-1] = ZERO_SNR_ALPHA_BAR
        schedule = DiscreteVP(ac, steps_offset=options["steps_offset"])
    return schedule


def _beta_schedule(config: Mapping[str, Any], T: int, options: dict) -> DiscreteVP:
    if config.get("trained_betas") is not None:
        return DiscreteVP.from_betas(config["trained_betas"], **options)
    schedule = config.get("beta_schedule", "linear")
    # diffusers' defaults for a config without them, whatever the schedule
    beta_range = {"beta_start": float(config.get("beta_start", 0.0001)), "beta_end": float(config.get("beta_end", 0.02))}
    if schedule == "linear":
        return DiscreteVP.linear(T, **beta_range, **options)
    if schedule == "scaled_linear":
        return DiscreteVP.scaled_linear(T, **beta_range, **options)
    if schedule == "squaredcos_cap_v2":
        return DiscreteVP.cosine(T, **options)
    raise ValueError(
        f"beta_schedule={schedule!r} in the scheduler config is not supported; "
        "choose one of ['linear', 'scaled_linear', 'squaredcos_cap_v2'] or give trained_betas"
    )


def solver_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """`Solver` keywords a config fixes: the grid layout and where trajectories end.

    spacing: `timestep_spacing` (diffusers' default "leading" when absent).
    end: "t_min" when `set_alpha_to_one` is False (the last step ends at ᾱ_0, as
    DDIMScheduler does), "clean" when it is True or absent (ᾱ = 1).
    A flow config fixes only the prediction ("velocity"): its grid comes from
    `FlowMatch.timesteps(steps, mu=, sigmas=)` and always ends at the clean state.
    """
    if is_flow_config(config):
        return {"prediction": "velocity"}
    spacing = config.get("timestep_spacing", "leading") or "leading"
    if spacing not in TIMESTEP_SPACINGS:
        raise ValueError(
            f"timestep_spacing={spacing!r} in the scheduler config is not supported; choose one of {list(TIMESTEP_SPACINGS)}"
        )
    if config.get("use_karras_sigmas"):
        spacing = "karras"  # DiscreteVP's "karras" grid is diffusers' use_karras_sigmas timesteps
    for option in VP_SIGMA_OPTIONS_UNSUPPORTED:
        if config.get(option):
            raise ValueError(
                f"{option}=True in the scheduler config lays out a grid belm does not reproduce; "
                "use use_karras_sigmas or timestep_spacing ('leading', 'trailing', 'linspace')"
            )
    end = "t_min" if config.get("set_alpha_to_one", True) is False else "clean"
    return {"spacing": spacing, "end": end}


def prediction_type(config: Mapping[str, Any]) -> str:
    """The config's `prediction_type` (default "epsilon"), checked; "velocity" for a flow config."""
    if is_flow_config(config):
        return "velocity"
    kind = config.get("prediction_type", "epsilon") or "epsilon"
    if kind not in PREDICTION_TYPES:
        raise ValueError(
            f"prediction_type={kind!r} in the scheduler config is not supported; choose one of {list(PREDICTION_TYPES)}"
        )
    return kind


def to_eps(output: Any, x: Any, alpha: float, sigma: float, kind: str) -> Any:
    """ε from a model output at x_t = α x_0 + σ ε, in x's dtype (float64 for the solver state).

        "epsilon":       ε = output
        "v_prediction":  ε = σ x_t + α v            (v = α ε − σ x_0)
        "sample":        ε = (x_t − α x̂_0) / σ      (x_0-prediction)
    """
    if kind == "epsilon":
        return output
    if kind == "v_prediction":
        return sigma * x + alpha * output
    if kind == "sample":
        return (x - alpha * output) / sigma
    raise ValueError(f"prediction_type={kind!r} is not known; choose one of {list(PREDICTION_TYPES)}")
