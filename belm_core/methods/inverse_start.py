"""Inversion's first step x_0 → x_1 in graded DDIM sub-steps (docs/math.md §28).

Inversion starts from x_0 alone, so its first step cannot be a 2-step row. It is DDIM's
inversion step (docs/math.md §2), which reads the model at the far end's time with the state
it has (y = x/s in the grid's coordinates, docs/math.md §11; ε-prediction: y = x̄, τ = σ̄):

    y_1 = y_0 + (τ_1 − τ_0) f(x_0, t_1)

It is first order, and on the √-graded clean end of a trailing grid it makes much of the
inverted latent's error, on trained networks most of it (docs/math.md §27, §28). Sampling's last row reads
x_2 and x_1 and never asks how x_1 was found, so any map x_0 → x_1 keeps the round trip
exact. With K sub-steps the step runs through the levels

    σ̄_(j) = σ̄_0 + (σ̄_1 − σ̄_0)(j/K)²,   j = 1 … K

at model times t_(j) = t(σ̄_(j)) (rounded to training timesteps on a discrete schedule; only
the distinct ones strictly between the end state and t_1 are kept, and the last level is t_1
itself), each a DDIM inversion step reading the model at its far end:

    y_(j) = y_(j−1) + (τ_(j) − τ_(j−1)) f(x_(j−1), t_(j))

The quadratic grading follows σ̄ ∝ √t near the clean end (levels about evenly spaced in t).
It costs one more model call per extra level kept: K − 1 at most, none where t_1 is already
the smallest model time. K = 1 is the paper's single step.
"""

from __future__ import annotations

import numpy as np

from .. import recurrence
from ..grid import Grid
from .base import Carry, Evaluate, LinearMultistep, MultistepPlan
from .shift import model_times

__all__ = ["substep_times", "substepped_inverse_start", "GRADING"]

#: the sub-step levels' grading: σ̄_(j) − σ̄_0 ∝ (j/K)**GRADING
GRADING = 2.0


def substep_times(grid: Grid, substeps: int) -> tuple:
    """The model times of the sub-steps below t_1 (ascending; t_1 itself excluded): the
    distinct t(σ̄_(j)), j = 1 … substeps − 1, strictly between the end state and t_1."""
    schedule = grid.schedule
    low, high = float(grid.sigma_bar[0]), float(grid.sigma_bar[1])
    levels = low + (high - low) * (np.arange(1, substeps) / substeps) ** GRADING
    times: list = []
    for t in model_times(schedule, levels):
        sigma_bar = float(schedule.sigma_bar(t))
        if low < sigma_bar < high and (not times or sigma_bar > float(schedule.sigma_bar(times[-1]))):
            times.append(schedule.model_time(t))
    return tuple(times)


def substepped_inverse_start(plan: MultistepPlan, carry: Carry, evaluate: Evaluate, *, method: LinearMultistep,
                             times: tuple) -> Carry:
    """x_0 → x_1 by DDIM inversion sub-steps through the model times `times` (from `substep_times`)
    and then t_1, the carry `method.inverse_begin` builds from x_0 and x_1."""
    g = plan.grid
    if len(carry.xs) != 1 or carry.index != 0:
        raise ValueError(f"the sub-stepped inversion start needs the lone end state x_0, got a carry at index {carry.index}")
    x0 = carry.xs[0]
    x, s_from, tau_from = x0, float(g.scale[0]), float(g.tau[0])
    for t in (*times, None):
        if t is None:  # the last sub-step lands on the grid's own x_1
            s_to, tau_to = float(g.scale[1]), float(g.tau[1])
        else:
            s_to, tau_to = (float(v) for v in g.schedule.coordinates(t, g.prediction))
        f = evaluate(x, 1, t=t)
        x = recurrence.ddim_move(x, f, s_from, tau_from, s_to, tau_to)
        s_from, tau_from = s_to, tau_to
    return method.inverse_begin(plan, carry, x, evaluate)

