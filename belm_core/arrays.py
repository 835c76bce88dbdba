"""Backend-agnostic array helpers: NumPy arrays and torch tensors, without importing torch.

The recurrence itself only uses `+` and scalar `*`; these helpers cover what the
driver needs around it: dtype conversion of the state, finiteness and shape checks.
A torch tensor is recognised by its type's module, so torch is touched only when the
caller already passed a tensor (and therefore imported torch).
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

__all__ = ["is_torch", "to_state", "cast_to", "copy", "zeros_like", "dtype_name", "all_finite", "resolve_dtype", "finfo_eps"]

FLOAT_NAMES = ("float64", "float32", "float16", "bfloat16")


def is_torch(x: Any) -> bool:
    """True for a torch.Tensor (checked without importing torch)."""
    return type(x).__module__.startswith("torch")


def _torch():
    return sys.modules["torch"]


def dtype_name(x: Any) -> str:
    """'float64', 'float32', … for a NumPy array or torch tensor."""
    return str(x.dtype).replace("torch.", "")


def resolve_dtype(dtype: Any, parameter: str = "state_dtype") -> str | None:
    """Normalise a dtype given as a name, NumPy dtype or torch dtype to its name (None stays None)."""
    if dtype is None:
        return None
    name = str(dtype).replace("torch.", "")
    if name in ("double",):
        name = "float64"
    elif name in ("float", "single"):
        name = "float32"
    elif name == "half":
        name = "float16"
    if name not in FLOAT_NAMES:
        raise ValueError(f"{parameter}={dtype!r} is not a floating dtype; choose one of {list(FLOAT_NAMES)}")
    return name


def to_state(x: Any, dtype: str | None, parameter: str = "x") -> Any:
    """Convert an input array to the solver's state type: same kind (NumPy/torch) and device, `dtype`."""
    if is_torch(x):
        if not x.is_floating_point():
            x = x.to(_torch().float64)
        return x if dtype is None else x.to(getattr(_torch(), dtype))
    if isinstance(x, np.ndarray) or np.isscalar(x):
        arr = np.asarray(x)
        if arr.ndim == 0:
            raise ValueError(f"{parameter} must be an array with at least one dimension, got a scalar")
        if dtype == "bfloat16":
            raise ValueError(f"state_dtype='bfloat16' needs torch tensors; NumPy has no bfloat16 (got {parameter} as a NumPy array)")
        if dtype is None:
            return arr if np.issubdtype(arr.dtype, np.floating) else arr.astype(np.float64)
        return arr.astype(dtype, copy=False)
    raise TypeError(f"{parameter} must be a NumPy array or a torch tensor, got {type(x).__name__}")


def cast_to(x: Any, dtype: str) -> Any:
    """Cast a state back to the caller's dtype (same kind and device)."""
    if is_torch(x):
        return x.to(getattr(_torch(), dtype))
    return x.astype(dtype, copy=False)


def copy(x: Any) -> Any:
    """A fresh array with x's contents (same kind, dtype and device; differentiable for torch)."""
    return x.clone() if is_torch(x) else x.copy()


def zeros_like(x: Any) -> Any:
    """Zeros of x's shape, dtype and device (NumPy array or torch tensor)."""
    return x.new_zeros(x.shape) if is_torch(x) else np.zeros_like(x)


def all_finite(x: Any) -> bool:
    """True when every entry is finite (one reduction; a single device sync for CUDA tensors).

    torch: the sum is finite only if every entry is (an inf or NaN entry makes it inf or NaN),
    and a sum is ~4× cheaper than an element-wise test there; a non-finite sum (a bad entry, or
    finite entries whose sum overflows, e.g. in float16) falls back to the element-wise test.
    NumPy: the element-wise test is the cheaper one (no floating-point error state to manage).
    """
    if is_torch(x):
        torch = _torch()
        return bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all())
    return bool(np.isfinite(x).all())


def sample_sum(x: Any) -> Any:
    """Σ over every axis but the first (the batch axis), kept as size-1 axes so the result
    broadcasts against x; over the whole array when it has at most one axis (one sample)."""
    axes = tuple(range(1, x.ndim)) if x.ndim > 1 else tuple(range(x.ndim))
    if is_torch(x):
        return x.sum(dim=axes, keepdim=True) if axes else x.clone()
    return np.sum(x, axis=axes, keepdims=True)


def nonnegative_ratio(num: Any, den: Any) -> Any:
    """max(num/den, 0) where den > 0, and 0 where den ≤ 0 (no division by zero, no NaN)."""
    if is_torch(num):
        torch = _torch()
        positive = den > 0
        return torch.where(positive, (num / torch.where(positive, den, torch.ones_like(den))).clamp_min(0.0),
                           torch.zeros_like(den))
    positive = den > 0
    return np.where(positive, np.maximum(num / np.where(positive, den, 1.0), 0.0), 0.0)


def finfo_eps(dtype: str) -> float:
    """Machine epsilon of a float dtype name."""
    return {"float64": 2.22e-16, "float32": 1.19e-7, "float16": 9.77e-4, "bfloat16": 7.81e-3}[dtype]
