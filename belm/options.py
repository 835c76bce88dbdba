"""`SamplingOptions`: the settings the applications share, in one frozen object.

    options = SamplingOptions(prompt="a cat", guidance_scale=3.0, steps=20, method="bdia")
    reconstruct(pipe, image, options=options)
    reconstruct(pipe, image, options=options, steps=50)   # a keyword overrides one field
    reconstruct(pipe, image, prompt="a cat", steps=20)    # or keywords alone, as before

The object says nothing about the model: the same options serve any pipeline, however it
was loaded. Checks that need the model (a prompt on an unconditional model, a spacing the
schedule does not offer, g ≠ 1 without a condition) happen when the options are used.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from belm_core import Method, get_method
from belm_core.schedules import Spacing

__all__ = ["SamplingOptions"]


@dataclass(frozen=True)
class SamplingOptions:
    """What to sample with.

    Attributes:
        prompt: text prompt (conditional models; None: the empty prompt there, nothing elsewhere).
        negative_prompt: the negative branch of classifier-free guidance (None: the empty prompt).
        guidance_scale: g in ε = ε_u + g (ε_c − ε_u) (docs/math.md §7); 1 is no guidance.
        steps: number of sampling steps N.
        method: a registered method name ("o-belm", "dpl-ob-traj", "dpl-ob-curv", "dpl-ob-shift-last", "dpl-ob-shift", "dpl-ob", "bdia", "edict",
            "ddim", "belm3") or a `Method`; None (default) is the application's choice: `belm_core.recommended` (dpl-ob-curv,
            trailing-tail grid, long-start on DDPM-linear at 5–20 steps, predictor–corrector start) when
            sampling from noise on a DDPM/SD-type
            schedule, O-BELM with the predictor–corrector start on the pipeline's own grid when
            sampling from noise with a flow model (SD3, Flux), plain O-BELM on the pipeline's
            own grid otherwise (inversion, reconstruction, editing, interpolation): see
            `backends.pipelines.PipelineAdapter.solver`.
        spacing: timestep layout; one of the model schedule's `spacings` (None: its default).
        progress: show progress bars (on stderr).
        inversion_substeps: graded DDIM sub-steps of inversion's first step x_0 → x_1
            (`Solver(inversion_substeps=)`, docs/math.md §28): closer latents for a few more model
            calls in inversion; 1 (default) is the paper's single step. Sampling, the Latent and the
            exact round trip do not depend on it. A grid whose t_1 is 0 or 1 ("linspace", SD's
            "leading") has no room for sub-steps; "trailing" grids do.
    """

    prompt: str | None = None
    negative_prompt: str | None = None
    guidance_scale: float = 1.0
    steps: int = 50
    method: str | Method | None = None
    spacing: Spacing | None = None
    progress: bool = False
    inversion_substeps: int = 1

    def __post_init__(self) -> None:
        for name in ("prompt", "negative_prompt"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name}={value!r} must be a string or None, got {type(value).__name__}")
        g = self.guidance_scale
        if isinstance(g, bool) or not isinstance(g, numbers.Real):
            raise TypeError(f"guidance_scale={g!r} must be a real number, got {type(g).__name__}")
        if not math.isfinite(float(g)):
            raise ValueError(f"guidance_scale={g!r} must be a finite number")
        object.__setattr__(self, "guidance_scale", float(g))
        steps = self.steps
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
            raise ValueError(f"steps={steps!r} must be a positive integer")
        object.__setattr__(self, "steps", int(steps))
        if self.method is not None and not isinstance(self.method, Method):
            get_method(self.method)  # an unknown name: ValueError listing the registered ones
        if self.spacing is not None and not isinstance(self.spacing, str):
            raise TypeError(f"spacing={self.spacing!r} must be a string or None")
        if not isinstance(self.progress, bool):
            raise TypeError(f"progress={self.progress!r} must be a bool")
        k = self.inversion_substeps
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"inversion_substeps={k!r} must be an integer ≥ 1 (1: the paper's single DDIM step)")
        object.__setattr__(self, "inversion_substeps", int(k))

    @classmethod
    def merge(cls, options: SamplingOptions | None = None, **overrides: Any) -> SamplingOptions:
        """`options` (default: all defaults) with the keyword arguments that are not None replacing
        its fields. This is how the applications combine `options=` with their keyword arguments."""
        if options is not None and not isinstance(options, SamplingOptions):
            raise TypeError(f"options must be a SamplingOptions, got {type(options).__name__}")
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise TypeError(f"unknown sampling option(s) {unknown}")
        given = {k: v for k, v in overrides.items() if v is not None}
        base = options if options is not None else cls()
        return dataclasses.replace(base, **given) if given else base
