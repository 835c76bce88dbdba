"""The Latent: the states exact reconstruction needs, with what makes them usable again.

A Latent is what `Solver.invert` returns and `Solver.sample` takes back. Besides the
states it records where on the grid they sit (`index`), which method made them
(`method`) and on which grid (`grid_key`): sampling a partial latent (`until=K`) from
index N, or with another method or grid, gives a wrong image without any error, so
`Solver.sample` checks these fields and warns (`LatentMetadataWarning`) when a
hand-built Latent leaves them out.

File format (`Latent.save` / `Latent.load`), a safetensors file:

    tensors   "state_0", "state_1", …   the states, noisiest first (state_0 = states[0])
    metadata  "belm.format"    = "latent"         marks a belm latent (files without it are refused)
              "belm.version"   = "1"              format version (`FORMAT_VERSION`)
              "belm.kind"      = "numpy"|"torch"  array type the states load back as
              "belm.n_states"  = "2"              number of states
              "belm.index"     = "12"             present only when the field is not None
              "belm.method"    = "bdia(gamma=…)"  present only when the field is not None
              "belm.grid_key"  = "…"              present only when the field is not None
              "belm.dtype"     = "float32"        present only when the field is not None

Tensors keep their dtype (bfloat16 included, for torch) and bits; torch states load on
the CPU unless `device=` is given.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import uuid
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from . import arrays

if TYPE_CHECKING:
    from .grid import Grid
    from .methods import Method

__all__ = ["Latent", "LatentMetadataWarning", "FORMAT_VERSION"]

#: version written to "belm.version"; `load` refuses any other
FORMAT_VERSION = 1

_PREFIX = "belm."
DtypeName = Literal["float64", "float32", "float16", "bfloat16"]


class LatentMetadataWarning(UserWarning):
    """A Latent without index, method or grid_key: sampling cannot check where it belongs."""


@dataclass(frozen=True, eq=False)
class Latent:
    """The states exact reconstruction needs, noisiest first.

    `(x_T, x_{T−1})` for 2-step methods, `(x_T, x_{T−1}, w_T)` for "dpl-ob-traj" (w: its
    velocity register, docs/math.md §16), `(x_T, x_{T−1}, w_T, U0_T, U1_T)` for "dpl-ob-curv"
    (U: its rotation register, docs/math.md §23), `(x, y)` for EDICT, `(x_T,)` for DDIM.

    Attributes:
        states: tuple of floating arrays (float64/32/16, or bfloat16 torch tensors), all
            NumPy or all torch, of one shape, dtype and device.
        index: grid index of states[0] (an int ≥ 0); None means the noisiest point N,
            and `Solver.sample` warns that it could not check it.
        method: signature of the method that made it (None: not checked, with a warning).
        grid_key: fingerprint of the grid it was made on (None: not checked, with a warning).
        dtype: dtype `sample` returns, one of "float64", "float32", "float16",
            "bfloat16" (torch only); None: the states' dtype.

    `save(path)` and `Latent.load(path)` keep all of it (format: module docstring).
    """

    states: tuple
    index: int | None = None
    method: str | None = None
    grid_key: str | None = None
    dtype: DtypeName | None = None

    def __post_init__(self):
        object.__setattr__(self, "states", _check_states(self.states))
        object.__setattr__(self, "index", _check_index(self.index))
        for name in ("method", "grid_key"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"Latent {name}={value!r} must be a str or None, got {type(value).__name__}")
        _check_dtype(self.dtype, self.states)

    def replace(self, **changes) -> Latent:
        """A copy with some fields changed (e.g. interpolated states); validated like a new one."""
        return dataclasses.replace(self, **changes)

    @property
    def kind(self) -> Literal["numpy", "torch"]:
        """Array type of the states."""
        return "torch" if arrays.is_torch(self.states[0]) else "numpy"

    def save(self, path: str | os.PathLike) -> None:
        """Write this Latent to a safetensors file (format: `belm_core.latent` docstring).

        The write is atomic: the file is written next to `path` under a temporary name
        and moved over `path` when complete, so an interrupted save leaves any previous
        file at `path` intact. Torch states are copied to the CPU for writing.
        """
        _save(self, os.fspath(path))

    @classmethod
    def load(cls, path: str | os.PathLike, device: Any = None) -> Latent:
        """Read a Latent written by `save`; torch states go to `device` (CPU by default).

        Raises FileNotFoundError for a missing file and ValueError for a file that is not
        a safetensors file, not a belm latent, or of another format version.
        """
        return _load(os.fspath(path), device)


# -- validation at construction ---------------------------------------------------------------
def _check_states(states: Any) -> tuple:
    if arrays.is_torch(states) or isinstance(states, np.ndarray) or not isinstance(states, (tuple, list)):
        raise TypeError(
            f"Latent(states) takes a tuple of arrays, noisiest first, e.g. Latent((x_T, x_T_minus_1)); "
            f"got {type(states).__name__}"
        )
    if len(states) == 0:
        raise ValueError("Latent(states) needs at least one state")
    for i, s in enumerate(states):
        if not (arrays.is_torch(s) or isinstance(s, np.ndarray)):
            raise TypeError(f"Latent states[{i}] must be a NumPy array or a torch tensor, got {type(s).__name__}")
        if arrays.dtype_name(s) not in arrays.FLOAT_NAMES:
            raise TypeError(
                f"Latent states[{i}] has dtype {arrays.dtype_name(s)}; states must be one of {list(arrays.FLOAT_NAMES)}"
            )
        if len(s.shape) == 0:
            raise ValueError(f"Latent states[{i}] is a 0-d scalar; states are arrays with at least one dimension")
    kinds = {"torch" if arrays.is_torch(s) else "numpy" for s in states}
    if len(kinds) != 1:
        raise TypeError("Latent states mix NumPy arrays and torch tensors; give them all as one type")
    for field, get in (("shape", lambda s: tuple(s.shape)), ("dtype", arrays.dtype_name), ("device", _device)):
        values = [get(s) for s in states]
        if len(set(values)) != 1:
            raise ValueError(f"Latent states must share one {field}, got {values}")
    return tuple(states)


def _device(x: Any) -> str:
    return str(x.device) if arrays.is_torch(x) else "cpu"


def _check_index(index: Any) -> int | None:
    if index is None:
        return None
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise ValueError(f"Latent index={index!r} must be an integer grid index ≥ 0 (or None for the noisiest, N)")
    return int(index)


def _check_dtype(dtype: Any, states: tuple) -> None:
    if dtype is None:
        return
    if not isinstance(dtype, str):
        raise TypeError(f"Latent dtype={dtype!r} must be a dtype name (str) or None, got {type(dtype).__name__}")
    if dtype not in arrays.FLOAT_NAMES:
        raise ValueError(f"Latent dtype={dtype!r} is not allowed; choose one of {list(arrays.FLOAT_NAMES)} or None")
    if dtype == "bfloat16" and not arrays.is_torch(states[0]):
        raise ValueError("Latent dtype='bfloat16' needs torch states; NumPy has no bfloat16")


# -- the checks `Solver.sample` makes ---------------------------------------------------------
def check_for(latent: Latent, method: Method, grid: Grid) -> int:
    """The grid index to sample `latent` from with `method` on `grid`, after checking it belongs there.

    Refuses (ValueError) a recorded method or grid that differs, a wrong number of
    states, or an index outside [max(1, k − 1), N]. Fields left as None cannot be
    checked: a `LatentMetadataWarning` names them, since a partial latent (`until=K`)
    sampled from N, or one from another method or grid, gives a wrong x_0 with no error.
    """
    sig = method.signature()
    if latent.method is not None and latent.method != sig:
        raise ValueError(
            f"this Latent was made by method {latent.method!r}, but this solver runs {sig!r}; "
            "sample with the solver that inverted it"
        )
    if latent.grid_key is not None and latent.grid_key != grid.key:
        raise ValueError(
            "this Latent was made on a different time grid (schedule, steps, spacing or timesteps); "
            "sample with the solver that inverted it"
        )
    if len(latent.states) != method.latent_size:
        raise ValueError(
            f"latent.states has {len(latent.states)} array(s); {sig} needs {method.latent_size}, noisiest first"
            + _register_note(method.k, method.latent_size)
        )
    index = grid.N if latent.index is None else latent.index
    low = max(1, method.k - 1)
    if not low <= index <= grid.N:
        raise ValueError(f"latent.index={latent.index!r} must be an integer grid index in [{low}, {grid.N}]")
    _warn_missing_metadata(latent, sig, grid.N)
    return index


def _warn_missing_metadata(latent: Latent, sig: str, N: int) -> None:
    unchecked = []
    if latent.index is None:
        unchecked.append(f"index (assumed the noisiest, N={N}; a partial inversion until=K needs index=K)")
    if latent.method is None:
        unchecked.append(f"method (assumed {sig!r})")
    if latent.grid_key is None:
        unchecked.append("grid_key (assumed this solver's grid)")
    if unchecked:
        warnings.warn(
            "this Latent has no " + "; no ".join(unchecked) + ". If any assumption is wrong the result is a wrong "
            "x_0 without an error. Keep the Latent that invert returned (Latent.save/Latent.load keep all fields), "
            "or set them: latent.replace(index=K, method=solver.method.signature(), grid_key=solver.grid.key)",
            LatentMetadataWarning,
            stacklevel=_caller_stacklevel(),
        )


def _caller_stacklevel() -> int:
    """`stacklevel` that points a warning at the first frame outside belm_core (the user's call)."""
    package = os.path.dirname(os.path.abspath(__file__))
    level, frame = 1, sys._getframe(1)  # level 1: the function that calls warnings.warn
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package + os.sep):
        level, frame = level + 1, frame.f_back
    return level


# -- file format ------------------------------------------------------------------------------
def _safetensors():
    try:
        import safetensors
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("saving and loading a Latent needs the safetensors package: pip install safetensors") from err
    return safetensors


def _metadata(latent: Latent) -> dict[str, str]:
    meta = {
        "format": "latent",
        "version": str(FORMAT_VERSION),
        "kind": latent.kind,
        "n_states": str(len(latent.states)),
    }
    for name in ("index", "method", "grid_key", "dtype"):
        value = getattr(latent, name)
        if value is not None:
            meta[name] = str(value)
    return {_PREFIX + key: value for key, value in meta.items()}


def _save(latent: Latent, path: str) -> None:
    _safetensors()
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot save the Latent to {path!r}: it is a directory; give a file path")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot save the Latent to {path!r}: folder {folder!r} does not exist")
    names = [f"state_{i}" for i in range(len(latent.states))]
    if latent.kind == "torch":
        from safetensors.torch import save_file

        tensors = {n: s.detach().to("cpu", copy=True).contiguous() for n, s in zip(names, latent.states)}
    else:
        from safetensors.numpy import save_file

        tensors = {n: np.ascontiguousarray(s) for n, s in zip(names, latent.states)}
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    try:
        save_file(tensors, tmp, metadata=_metadata(latent))
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _read_metadata(path: str) -> tuple[dict[str, str], list[str]]:
    safetensors = _safetensors()
    if not os.path.exists(path):
        raise FileNotFoundError(f"no Latent file at {path!r}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path!r} is a directory, not a Latent file")
    try:
        with safetensors.safe_open(path, framework="np") as f:
            return dict(f.metadata() or {}), list(f.keys())
    except safetensors.SafetensorError as err:
        raise ValueError(f"{path!r} is not a safetensors file ({err}); Latent.load reads files written by Latent.save") from err


def _load(path: str, device: Any) -> Latent:
    meta, keys = _read_metadata(path)
    if meta.get(_PREFIX + "format") != "latent":
        raise ValueError(
            f"{path!r} is a safetensors file but not a belm latent (no 'belm.format' metadata); plain arrays carry no "
            "grid index, method or grid, so they are not loaded as a Latent. If you know them, build "
            "Latent(states, index=K, method=solver.method.signature(), grid_key=solver.grid.key) yourself"
        )
    version = meta.get(_PREFIX + "version")
    if version != str(FORMAT_VERSION):
        raise ValueError(f"{path!r} is a belm latent of format version {version!r}; this belm reads version {FORMAT_VERSION}")
    kind = meta.get(_PREFIX + "kind")
    if kind not in ("numpy", "torch"):
        raise ValueError(f"{path!r}: belm.kind={kind!r} must be 'numpy' or 'torch'")
    if device is not None and kind == "numpy":
        raise ValueError(f"device={device!r} applies to torch latents; {path!r} holds NumPy states")
    n = _int_field(meta, "n_states", path)
    names = [f"state_{i}" for i in range(n or 0)]
    if not n or sorted(keys) != sorted(names):
        raise ValueError(f"{path!r}: tensors {sorted(keys)} do not match belm.n_states={n!r} (expected {names})")
    states = _read_states(path, kind, names, device)
    return Latent(
        states=states,
        index=_int_field(meta, "index", path),
        method=meta.get(_PREFIX + "method"),
        grid_key=meta.get(_PREFIX + "grid_key"),
        dtype=meta.get(_PREFIX + "dtype"),
    )


def _int_field(meta: dict[str, str], name: str, path: str) -> int | None:
    value = meta.get(_PREFIX + name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{path!r}: belm.{name}={value!r} is not an integer") from None


def _read_states(path: str, kind: str, names: list[str], device: Any) -> tuple:
    safetensors = _safetensors()
    framework = "pt" if kind == "torch" else "np"
    with safetensors.safe_open(path, framework=framework) as f:
        states = [f.get_tensor(n) for n in names]
    if kind == "torch" and device is not None:
        states = [s.to(device) for s in states]
    return tuple(states)


def _register_note(k: int, size: int) -> str:
    """What a latent of `size` arrays holds after its k states, for the size error."""
    extra = size - k
    if extra <= 0:
        return ""
    return f" ({k} states, then its register)" if extra == 1 else f" ({k} states, then its {extra} register arrays)"
