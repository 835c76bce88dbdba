"""belm_core: exact-inversion diffusion sampling, backend-agnostic (NumPy or torch).

Schedules (α, σ, σ̄ and time grids), the general k-step BELM recurrence with its exact
inverse, sympy-derived coefficients with a stability verdict, and the driver

    solver = Solver(schedule, steps=50, method="o-belm")
    latent = solver.invert(eps_fn, x0)
    x0_rec = solver.sample(eps_fn, latent)

Flow models (SD3, Flux) predict a velocity and run in their own coordinates (x, σ):

    solver = Solver(FlowMatch(shift=3.0), steps=28, method="o-belm", prediction="velocity")
    latent = solver.invert(v_fn, x0)

Importing belm_core imports neither torch nor sympy (sympy loads on first `derive`).
"""

from .grid import Grid, make_grid
from .methods import (BDIA, BELM, DDIM, EDICT, METHODS, OBELM, CurvatureReading, LinearMultistep, Method, PFamily,
                      TrajectoryReading, get_method)
from .recommend import recommended
from .schedules import VE, CosineVP, DiscreteVP, EDM, FlowMatch, LinearVP, NoiseSchedule
from .solver import AmplificationWarning, Latent, LatentMetadataWarning, PrecisionWarning, Solver

__version__ = "0.1.0"


def derive(k: int, *, fix=None):
    """k-step BELM coefficients: LTE-optimal, or with some pinned by `fix`.

    See `belm_core.derivation.derive`; sympy is imported on the first call.
    """
    from .derivation import derive as _derive

    return _derive(k, fix=fix)


__all__ = [
    "Solver", "Latent", "LatentMetadataWarning", "AmplificationWarning", "PrecisionWarning",
    "NoiseSchedule", "DiscreteVP", "LinearVP", "CosineVP", "VE", "EDM", "FlowMatch",
    "Grid", "make_grid",
    "Method", "LinearMultistep", "DDIM", "BDIA", "EDICT", "OBELM", "BELM", "PFamily", "TrajectoryReading", "CurvatureReading", "METHODS", "get_method",
    "derive", "recommended",
]
