"""Classifier-free guidance: the one check of the guidance scale g (docs/math.md §7).

    ε = ε_u + g (ε_c − ε_u)

with ε_c the conditional branch and ε_u the unconditional (or negative) one. The rules,
used by `UNetEps`, `Pipeline.eps_fn` and the `belm` CLI alike:

- g is a finite real number;
- g ≠ 1 needs a conditional model (an unconditional one has no ε_c − ε_u);
- g < 1 needs an explicit negative branch: below 1 the sampler is pushed *towards* ε_u,
  and "no negative prompt" has no defined meaning there (for g > 1 a pipeline may default
  ε_u to the empty prompt, as diffusers does).
"""

from __future__ import annotations

import math
import numbers

__all__ = ["check_guidance"]


def check_guidance(
    scale,
    *,
    negative_given: bool,
    conditional: bool,
    name: str = "guidance_scale",
    negative_name: str = "negative_prompt",
) -> float:
    """The guidance scale g as a float, or an error saying which rule it breaks.

    Args:
        scale: g in ε = ε_u + g (ε_c − ε_u); any real number type (int, float, numpy scalars).
        negative_given: whether the caller supplied the negative/unconditional branch.
        conditional: whether the model takes a condition (prompt, class label).
        name, negative_name: how the caller calls the scale and the negative branch, for messages
            (e.g. "--guidance" and "--negative-prompt" in the CLI).

    Raises:
        TypeError: g is not a real number (a bool or a string included).
        ValueError: g is not finite, g ≠ 1 on an unconditional model, or g < 1 without a
            negative branch.
    """
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"{name}={scale!r} must be a real number, got {type(scale).__name__}")
    g = float(scale)
    if not math.isfinite(g):
        raise ValueError(f"{name}={scale!r} must be a finite number")
    if g != 1.0 and not conditional:
        raise ValueError(
            f"{name}={g} ≠ 1 needs a conditional model; this one is unconditional (use {name}=1)"
        )
    if g < 1.0 and not negative_given:
        raise ValueError(
            f"{name}={g} < 1 needs {negative_name} (ε = ε_u + g (ε_c − ε_u) pushes towards the negative branch, "
            f"which must be given); use {name} ≥ 1 or give {negative_name}"
        )
    return g
