"""Images in and out: load → center crop → resize → tensor in [−1, 1]; PNGs, strips and grids.

Tensors are (N, 3, H, W) float32 in [−1, 1] (pixel value p ∈ [0, 255] ↦ p/127.5 − 1).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

__all__ = ["check_image_path", "load_image", "save_image", "to_unit", "image_strip", "image_grid"]


def _size(size) -> tuple[int, int]:
    """(H, W) from an int (square) or a pair; ValueError for anything else."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        h = w = int(size)
    elif isinstance(size, (tuple, list)) and len(size) == 2:
        h, w = (int(v) for v in size)
    else:
        raise ValueError(f"size={size!r} must be an int or an (H, W) pair")
    if h < 1 or w < 1:
        raise ValueError(f"size={size!r} must be positive")
    return h, w


def check_image_path(path: str | os.PathLike) -> Path:
    """The path of an existing image file: FileNotFoundError when missing, ValueError for a folder."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"image {str(path)!r} is a directory, not an image file")
    if not path.is_file():
        raise FileNotFoundError(f"image {str(path)!r} does not exist")
    return path


def load_image(path: str | os.PathLike, size: int | tuple[int, int]) -> torch.Tensor:
    """Read an image file as a (1, 3, H, W) float32 tensor in [−1, 1].

    The largest centred crop with the target aspect ratio H/W is taken, then resized to
    (H, W) with Lanczos filtering. Transparency is dropped (RGB conversion).
    A missing file is a FileNotFoundError, a folder or an unreadable file a ValueError, all
    naming the path.
    """
    from PIL import Image, UnidentifiedImageError

    h, w = _size(size)
    path = check_image_path(path)
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ValueError(f"image {str(path)!r} could not be read as an image ({type(err).__name__}: {err})") from None
    W0, H0 = im.size
    # centre crop to the target aspect ratio h/w
    if W0 * h > H0 * w:  # too wide
        cw, ch = max(1, round(H0 * w / h)), H0
    else:
        cw, ch = W0, max(1, round(W0 * h / w))
    left, top = (W0 - cw) // 2, (H0 - ch) // 2
    im = im.crop((left, top, left + cw, top + ch))
    if (cw, ch) != (w, h):
        im = im.resize((w, h), Image.Resampling.LANCZOS)
    arr = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous()


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """[−1, 1] → [0, 1], clamped."""
    return ((images + 1.0) / 2.0).clamp(0.0, 1.0)


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [−1, 1] → (H, W, 3) uint8."""
    if image.ndim != 3:
        raise ValueError(f"expected one image (3, H, W), got shape {tuple(image.shape)}")
    unit = to_unit(image.detach().to("cpu", torch.float64))
    return (unit * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()


def save_image(image: torch.Tensor, path: str | os.PathLike) -> Path:
    """Write one image (3, H, W) or (1, 3, H, W) in [−1, 1] as a PNG; returns the path."""
    from PIL import Image

    if image.ndim == 4:
        if image.shape[0] != 1:
            raise ValueError(f"save_image takes one image; got a batch of {image.shape[0]} (use image_grid)")
        image = image[0]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_to_uint8(image)).save(path, format="PNG")
    return path


def _as_list(images: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        if images.ndim == 3:
            return [images]
        return list(images)
    out: list[torch.Tensor] = []
    for im in images:
        out.extend(_as_list(im))
    return out


def image_grid(images: torch.Tensor | Sequence[torch.Tensor], ncols: int | None = None, pad: int = 2) -> torch.Tensor:
    """Tile images (all of one size) in rows of `ncols` (default ⌈√n⌉), `pad` white pixels apart.

    Returns one (3, H', W') image in [−1, 1].
    """
    ims = _as_list(images)
    if not ims:
        raise ValueError("image_grid needs at least one image")
    shapes = {tuple(im.shape) for im in ims}
    if len(shapes) != 1:
        raise ValueError(f"images must share one shape, got {sorted(shapes)}")
    c, h, w = ims[0].shape
    n = len(ims)
    ncols = int(np.ceil(np.sqrt(n))) if ncols is None else int(ncols)
    if ncols < 1:
        raise ValueError(f"ncols={ncols} must be ≥ 1")
    nrows = -(-n // ncols)
    canvas = torch.ones(c, nrows * h + (nrows - 1) * pad, ncols * w + (ncols - 1) * pad)
    for k, im in enumerate(ims):
        r, q = divmod(k, ncols)
        canvas[:, r * (h + pad): r * (h + pad) + h, q * (w + pad): q * (w + pad) + w] = im.detach().to("cpu", torch.float32)
    return canvas


def image_strip(images: torch.Tensor | Sequence[torch.Tensor], pad: int = 2) -> torch.Tensor:
    """Images side by side in one row."""
    return image_grid(images, ncols=len(_as_list(images)), pad=pad)
