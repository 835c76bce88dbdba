"""The start-up ladder of a k-step method (docs/math.md §3).

Sampling from a lone x_N has one state where a k-step relation needs k. The missing
states are built one step at a time by methods with 1, 2, …, k−1 states: DDIM, then
O-BELM, then the LTE-optimal BELM-m. Each runs for a single step, so the instability
of the LTE-optimal m ≥ 3 relations never compounds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # base.py imports this module; the ladder's classes are imported at call time
    from .base import LinearMultistep

__all__ = ["startup_ladder"]


def startup_ladder(k: int) -> list[LinearMultistep]:
    """Start-up methods with 1 … k states: DDIM, O-BELM, then LTE-optimal BELM-m."""
    from .ddim import DDIM
    from .obelm import OBELM

    ladder: list[LinearMultistep] = [DDIM(), OBELM()]
    if k > 2:
        from .belm import BELM

        ladder += [BELM(m) for m in range(3, k + 1)]
    return ladder[:k]
