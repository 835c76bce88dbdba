"""Sampling methods and their registry.

Every method declares `order` (convergence order), `nfe_per_step` (model calls per
step), `k` (states in an inverted latent) and `exact` (exact inversion).
"""

from __future__ import annotations

from typing import Callable

from .base import Carry, LinearMultistep, Method, Stability
from .bdia import BDIA
from .belm import BELM
from .curvature import CurvatureReading
from .ddim import DDIM
from .edict import EDICT
from .obelm import OBELM
from .pfamily import PFamily
from .trajectory import TrajectoryReading

__all__ = ["Method", "LinearMultistep", "Carry", "Stability", "DDIM", "BDIA", "EDICT", "OBELM", "BELM",
           "PFamily", "TrajectoryReading", "CurvatureReading", "METHODS", "get_method"]

#: name → factory with the default parameters
METHODS: dict[str, Callable[[], Method]] = {
    "ddim": DDIM,
    "bdia": BDIA,
    "edict": EDICT,
    "o-belm": OBELM,
    "belm3": BELM.stable,
    "dpl-ob": PFamily,  # rule="dpl-ob", s=0.3
    "dpl-ob-shift": PFamily.shifted,  # rule="dpl-ob", shift=0.5
    "dpl-ob-shift-last": PFamily.shifted_last,  # and the last row shifted
    "dpl-ob-traj": TrajectoryReading,  # fine rows read x̂0 on the trajectory (recommended on scaled-linear, linear)
    "dpl-ob-curv": CurvatureReading,  # and correct their quadrature for x̂0's slope and curvature (on cosine)
}


def get_method(method: str | Method) -> Method:
    """A Method from a registered name (case-insensitive) or a Method instance."""
    if isinstance(method, Method):
        return method
    if isinstance(method, str):
        key = method.strip().lower().replace("_", "-")
        key = {"obelm": "o-belm", "belm-3": "belm3", "dplob": "dpl-ob"}.get(key, key)
        if key in METHODS:
            return METHODS[key]()
        raise ValueError(f"method={method!r} is not a known method; choose one of {sorted(METHODS)} or pass a Method instance")
    raise TypeError(f"method must be a name or a belm_core Method, got {type(method).__name__}")
