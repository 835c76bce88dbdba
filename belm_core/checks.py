"""Small checks on user parameters, shared by the solver and the methods.

NumPy scalars count as what they hold: np.float32(0.9) is a real number, np.bool_(True)
a bool. A bool is never accepted as a number.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

__all__ = ["is_bool", "is_real", "is_index"]


def is_bool(value: Any) -> bool:
    """True for Python and NumPy bools."""
    return isinstance(value, (bool, np.bool_))


def is_real(value: Any, *, finite: bool = True) -> bool:
    """True for a real number (Python or NumPy, not a bool), finite unless `finite=False`."""
    if is_bool(value) or not isinstance(value, numbers.Real):
        return False
    return not finite or math.isfinite(float(value))


def is_index(value: Any) -> bool:
    """True for an integer (Python or NumPy, not a bool)."""
    return not is_bool(value) and isinstance(value, (int, np.integer))
