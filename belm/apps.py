"""Applications (docs/math.md §7): reconstruction, editing, interpolation and sampling.

Each function takes a loaded diffusers pipeline as it is (StableDiffusionPipeline,
StableDiffusionXLPipeline, StableDiffusion3Pipeline, FluxPipeline, DDPMPipeline or
DDIMPipeline; see `backends.pipelines`) and images as (N, 3, H, W) tensors in [−1, 1] (see
`belm.images.load_image`), runs a `belm_core.Solver` with the state in float64 on the grid of
the pipeline's scheduler config, and returns a small result object with the images and metrics.

SD3 and Flux are rectified flows: the solver takes their velocity v (docs/math.md §11) on the
grid their pipelines' own calls set (`PipelineAdapter.flow_timesteps`; Flux's depends on
the image size). Model-space tensors (`latents=`, `output_type="latent"`) are in the
pipeline's own format: SD3 (N, 16, h, w), Flux packed (N, (h/2)(w/2), 64).

    pipe = DiffusionPipeline.from_pretrained("path/to/pipeline")   # or backends.unet.load_pipeline
    image = load_image("cat.png", 512)
    result = reconstruct(pipe, image, steps=10, method="o-belm")
    result.metrics["latent_mse"]        # ≈ 1e-28 for exact methods, ≫ for DDIM

    latent = invert(pipe, latents=z0, prompt="a cat", guidance_scale=3.0, steps=8)   # a belm_core.Latent

The shared settings (prompt, negative_prompt, guidance_scale, steps, method, spacing,
progress) come as one `SamplingOptions` (`options=`) or as keyword arguments; keywords that
are given override the fields of `options`.

Metrics: `latent_mse` is the mean squared error in the model's space (VAE latents or
pixels in [−1, 1]); `pixel_mse` is on images mapped to [0, 1] (clamped); `psnr` =
10 log10(1 / pixel_mse) in dB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from backends.pipelines import PipelineAdapter, adapt
from belm_core import BDIA, EDICT, Latent, Method, Solver, get_method

from .images import to_unit
from .options import SamplingOptions

__all__ = [
    "SamplingOptions", "make_method", "make_solver", "prompt_metrics", "latent_mse", "pixel_mse", "psnr", "round_trip_metrics", "slerp",
    "invert", "reconstruct", "edit", "interpolate", "sample",
    "Reconstruction", "Edit", "Interpolation",
]


# ---------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------
def latent_mse(a: torch.Tensor, b: torch.Tensor) -> float:
    """mean((a − b)²) in float64."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    d = a.detach().to("cpu", torch.float64) - b.detach().to("cpu", torch.float64)
    return float((d * d).mean())


def pixel_mse(a: torch.Tensor, b: torch.Tensor) -> float:
    """MSE of two image batches in [−1, 1] after mapping both to [0, 1] (clamped)."""
    return latent_mse(to_unit(a.detach().to("cpu", torch.float64)), to_unit(b.detach().to("cpu", torch.float64)))


def psnr(mse: float) -> float:
    """Peak signal-to-noise ratio in dB for a [0, 1] MSE: 10 log10(1 / mse) (inf when mse = 0)."""
    return math.inf if mse <= 0 else 10.0 * math.log10(1.0 / mse)


def round_trip_metrics(image: torch.Tensor, z0: torch.Tensor, z_rec: torch.Tensor, rec: torch.Tensor) -> dict[str, float]:
    """latent_mse between z0 and its reconstruction, pixel_mse and psnr of the decoded image."""
    p_mse = pixel_mse(image, rec)
    return {"latent_mse": latent_mse(z0, z_rec), "pixel_mse": p_mse, "psnr": psnr(p_mse)}


def slerp(a: torch.Tensor, b: torch.Tensor, w: float) -> torch.Tensor:
    """Spherical interpolation per batch item: sin((1−w)θ)/sin θ · a + sin(wθ)/sin θ · b,
    cos θ = ⟨a, b⟩ / (|a| |b|); linear interpolation when θ is tiny."""
    fa, fb = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    cos = (fa * fb).sum(1) / (fa.norm(dim=1) * fb.norm(dim=1)).clamp_min(1e-300)
    theta = torch.arccos(cos.clamp(-1.0, 1.0))
    sin = torch.sin(theta)
    small = sin.abs() < 1e-6
    ca = torch.where(small, torch.full_like(theta, 1.0 - w), torch.sin((1.0 - w) * theta) / sin.where(~small, 1.0))
    cb = torch.where(small, torch.full_like(theta, w), torch.sin(w * theta) / sin.where(~small, 1.0))
    shape = (-1,) + (1,) * (a.ndim - 1)
    return ca.reshape(shape) * a + cb.reshape(shape) * b


# ---------------------------------------------------------------------------------
# Solvers
# ---------------------------------------------------------------------------------
def make_method(
    method: str | Method | None = "o-belm", *, gamma: float | None = None, p: float | None = None
) -> Method | None:
    """A Method from a registered name; `gamma` sets BDIA's γ, `p` EDICT's mixing weight.
    None stays None (the application's default choice, see `SamplingOptions.method`)."""
    if method is None:
        if gamma is not None or p is not None:
            raise ValueError("gamma= and p= need an explicit method ('bdia' or 'edict')")
        return None
    m = get_method(method)
    if gamma is not None:
        if not isinstance(m, BDIA):
            raise ValueError(f"gamma={gamma!r} applies to method 'bdia' only (method is {m.signature()!r})")
        m = BDIA(gamma=gamma)
    if p is not None:
        if not isinstance(m, EDICT):
            raise ValueError(f"p={p!r} applies to method 'edict' only (method is {m.signature()!r})")
        m = EDICT(p=p)
    return m


def make_solver(
    pipe, steps: int, method: str | Method = "o-belm", spacing: str | None = None, size=None,
) -> Solver:
    """The float64-state Solver for a pipeline: with cfg = `pipe.scheduler.config`,

        Solver(schedule_from_config(cfg), steps=steps, method=method, **solver_options(cfg))

    (`backends.config`), the grid `BELMScheduler.from_config(cfg)` builds, so latents move
    between the two. `spacing` replaces the config's `timestep_spacing` (an unavailable one:
    the schedule's message). SD3/Flux: the grid of the pipeline's own call for images of
    `size` (H, W) pixels (default the native resolution; Flux's grid depends on it), the one
    `BELMFlowScheduler` builds inside that call (`PipelineAdapter.solver`)."""
    return adapt(pipe).solver(steps, method, spacing, size=size)


def _solver(pipe: PipelineAdapter, options: SamplingOptions, size: tuple[int, int], *, from_noise: bool = False) -> Solver:
    """The Solver for `options` (method None: the adapter's default choice, see `PipelineAdapter.solver`)."""
    return pipe.solver(options.steps, options.method, options.spacing, size=size, from_noise=from_noise,
                       inversion_substeps=None if from_noise else options.inversion_substeps)


def prompt_metrics(pipe, prompt: str | None, key: str = "prompt") -> dict[str, Any]:
    """What the text encoder used of `prompt`: {key: the text used, key_tokens: its token count,
    key_truncated: the text cut off, or None}. Unconditional models and no prompt: {key: prompt}."""
    pipe = adapt(pipe)
    if prompt is None or not pipe.is_conditional:
        return {key: prompt}
    used = pipe.prompt_tokens(prompt)
    return {key: used.text, f"{key}_tokens": used.tokens, f"{key}_truncated": used.truncated or None}


def _eps(pipe: PipelineAdapter, options: SamplingOptions, prompt: str | None, size: tuple[int, int]):
    """ε (v for SD3/Flux) for `prompt` on images of `size` (H, W) pixels (SDXL's time ids and
    Flux's image ids depend on it)."""
    return pipe.model_fn(prompt, options.negative_prompt, options.guidance_scale, size=size)


#: tolerance on the [−1, 1] range of input images (rounding of a conversion, not a different range)
_RANGE_TOL = 1e-4


def _check_image_batch(pipe, images: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{name} must be a tensor (N, 3, H, W) in [-1, 1], got {shape}")
    if not images.is_floating_point():
        raise TypeError(
            f"{name} has dtype {images.dtype}; images must be floating point in [-1, 1] "
            "(from 8-bit pixels p: p / 127.5 − 1, see belm.images.load_image)"
        )
    lo, hi = float(images.min()), float(images.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name} contains NaN or inf values")
    if lo < -1 - _RANGE_TOL or hi > 1 + _RANGE_TOL:
        hint = " (this looks like [0, 255] pixels: use p / 127.5 − 1)" if hi > 2 else " (clamp it to [-1, 1])"
        raise ValueError(f"{name} has values in [{lo:.4g}, {hi:.4g}]; images must lie in [-1, 1]{hint}")
    m = size_multiple(pipe)
    if images.shape[2] % m or images.shape[3] % m:
        raise ValueError(
            f"{name} is {images.shape[2]}×{images.shape[3]} px; this model needs sizes divisible by {m} "
            f"(native resolution {pipe.resolution})"
        )
    return images


def size_multiple(pipe) -> int:
    """Image sizes must be multiples of this (VAE factor × the UNet's downsampling)."""
    return adapt(pipe).size_multiple


def _size(images: torch.Tensor) -> tuple[int, int]:
    return int(images.shape[-2]), int(images.shape[-1])


# ---------------------------------------------------------------------------------
# Inversion
# ---------------------------------------------------------------------------------
def invert(
    pipe,
    image: Any = None,
    latents: torch.Tensor | None = None,
    prompt: str | None = None,
    negative_prompt: str | None = None,
    guidance_scale: float = 1.0,
    steps: int = 50,
    method: str | Method = "o-belm",
    *,
    spacing: str | None = None,
    until: int | None = None,
    size: int | tuple[int, int] | None = None,
    progress: bool = False,
    inversion_substeps: int = 1,
) -> Latent:
    """The `Latent` from which sampling with the same ε rebuilds the input exactly.

    Give exactly one of `image` — a tensor (N, 3, H, W) in [−1, 1], or PIL images / NumPy
    arrays for the pipeline's `image_processor` — encoded by the VAE (posterior mean ×
    scaling), or `latents`: model-space z0 of any float dtype in the pipeline's own format
    ((N, C, h, w); Flux: packed (N, (h/2)(w/2), 64)), which skips the VAE. The solver state
    is float64; the Latent records `dtype` of the input. `size` (H, W) pixels: the image size
    of `latents` (default from their shape; needed only for non-square packed Flux latents).

    The grid is `make_solver(pipe, steps, method, spacing)`: by default the one
    `BELMScheduler.from_config(pipe.scheduler.config, method=method)` walks, so
    `scheduler.set_latent(latent)` followed by `pipe(prompt, latents=latent.states[0], …,
    guidance_scale=guidance_scale)` reconstructs z0 (same prompt, guidance and steps).
    `until` = K stops at grid index K (partial inversion for editing). `inversion_substeps` = K > 1
    takes the first step x_0 → x_1 in graded sub-steps (`SamplingOptions`, docs/math.md §28).

    SD3 and Flux: the same with `BELMFlowScheduler.from_config(cfg, method=method)` and
    `pipe(prompt, latents=latent.states[0].float(), num_inference_steps=steps,
    guidance_scale=guidance_scale, output_type="latent")` (Flux: with the same height/width).
    """
    pipe = adapt(pipe)
    options = SamplingOptions(
        prompt=prompt, negative_prompt=negative_prompt, guidance_scale=guidance_scale, steps=steps, method=method,
        spacing=spacing, progress=progress, inversion_substeps=inversion_substeps,
    )
    if (image is None) == (latents is None):
        raise ValueError("give exactly one of image= (encoded by the VAE) and latents= (model-space z0)")
    if latents is not None:
        z0, size = _check_latents(pipe, latents, size)
    else:
        if size is not None and isinstance(image, torch.Tensor):
            raise ValueError("size= applies to latents= (and to PIL/NumPy images, resized to it); a tensor image has its own size")
        images = _check_image_batch(pipe, pipe.preprocess(image, size), "image")
        z0, size = pipe.encode(images), _size(images)
    solver = _solver(pipe, options, size)
    return solver.invert(_eps(pipe, options, options.prompt, size), z0, until=until, progress=options.progress)


def _check_latents(pipe: PipelineAdapter, latents, size=None) -> tuple[torch.Tensor, tuple[int, int]]:
    """latents on the model's device and the image size (H, W) they stand for."""
    packed = pipe.family == "flux"
    layout = "(N, L, C) packed" if packed else "(N, C, h, w)"
    if not isinstance(latents, torch.Tensor) or not latents.is_floating_point():
        kind = f"a {latents.dtype} tensor" if isinstance(latents, torch.Tensor) else type(latents).__name__
        raise TypeError(f"latents must be a floating-point torch tensor {layout}, got {kind}")
    native = pipe.latent_shape
    channels = native[-1] if packed else native[0]
    if latents.ndim != 1 + len(native) or latents.shape[-1 if packed else 1] != channels:
        want = f"(N, L, {channels}) (packed 2×2 patches)" if packed else f"(N, {channels}, h, w)"
        raise ValueError(f"latents must have shape {want} for this model, got {tuple(latents.shape)}")
    if size is None:
        size = pipe.image_size(latents)
    else:
        from .images import _size as image_size

        size = image_size(size)
        if pipe.model_shape(size) != tuple(latents.shape[1:]):
            raise ValueError(
                f"size={size} gives model-space samples of shape {pipe.model_shape(size)}, but the latents are "
                f"{tuple(latents.shape)}"
            )
    return latents.to(pipe.device), size


# ---------------------------------------------------------------------------------
# Reconstruction
# ---------------------------------------------------------------------------------
@dataclass
class Reconstruction:
    """x_0 → invert → sample → x_0'. Images in [−1, 1] on the CPU; z in model space (float64)."""

    image: torch.Tensor
    reconstruction: torch.Tensor
    z0: torch.Tensor
    z0_rec: torch.Tensor
    latent: Latent
    metrics: dict[str, Any] = field(default_factory=dict)


def reconstruct(
    pipe,
    image: torch.Tensor,
    *,
    options: SamplingOptions | None = None,
    prompt: str | None = None,
    negative_prompt: str | None = None,
    guidance_scale: float | None = None,
    steps: int | None = None,
    method: str | Method | None = None,
    spacing: str | None = None,
    progress: bool | None = None,
    inversion_substeps: int | None = None,
) -> Reconstruction:
    """Invert `image` and sample it back with the same ε (same prompt and guidance).

    Settings: `options`, with the keyword arguments given overriding its fields (see `SamplingOptions`).

    metrics: latent_mse (model space), pixel_mse ([0, 1]), psnr (dB), for latent models
    vae_pixel_mse (the error of the VAE round trip alone, the floor of pixel_mse), and
    eps_calls (ε evaluations for inversion + sampling; a guided call is one batched UNet call);
    prompt (the text used, after truncation), prompt_tokens, prompt_truncated.
    """
    options = SamplingOptions.merge(
        options, prompt=prompt, negative_prompt=negative_prompt, guidance_scale=guidance_scale, steps=steps,
        method=method, spacing=spacing, progress=progress,
        inversion_substeps=inversion_substeps,
    )
    pipe = adapt(pipe)
    image = _check_image_batch(pipe, image, "image")
    solver = _solver(pipe, options, _size(image))
    eps_model = _eps(pipe, options, options.prompt, _size(image))
    calls = [0]

    def eps(x, t):
        calls[0] += 1
        return eps_model(x, t)

    z0 = pipe.encode(image)
    latent = solver.invert(eps, z0, progress=options.progress)
    z0_rec = solver.sample(eps, latent, progress=options.progress)
    rec = pipe.decode(z0_rec, _size(image))
    metrics: dict[str, Any] = round_trip_metrics(image, z0, z0_rec, rec)
    if pipe.is_latent:
        metrics["vae_pixel_mse"] = pixel_mse(image, pipe.decode(z0, _size(image)))
    metrics.update(
        method=solver.method.signature(), steps=solver.steps, eps_calls=calls[0],
        **prompt_metrics(pipe, options.prompt), guidance_scale=options.guidance_scale,
    )
    return Reconstruction(image.cpu(), rec, z0, z0_rec, latent, metrics)


# ---------------------------------------------------------------------------------
# Editing
# ---------------------------------------------------------------------------------
@dataclass
class Edit:
    """Inversion with the source prompt, sampling with the target (and the source: reconstruction)."""

    image: torch.Tensor
    reconstruction: torch.Tensor
    edited: torch.Tensor
    latent: Latent
    metrics: dict[str, Any] = field(default_factory=dict)


def edit(
    pipe,
    image: torch.Tensor,
    source_prompt: str,
    target_prompt: str,
    *,
    options: SamplingOptions | None = None,
    negative_prompt: str | None = None,
    guidance_scale: float | None = None,
    freeze: int = 0,
    steps: int | None = None,
    method: str | Method | None = None,
    spacing: str | None = None,
    progress: bool | None = None,
    inversion_substeps: int | None = None,
) -> Edit:
    """Prompt-to-prompt editing by exact inversion (docs/math.md §7).

    Inverts with ε(·; source_prompt) up to grid index N − freeze (the last `freeze`
    inversion steps are left out, so the first `freeze` sampling steps are skipped), then
    samples from that latent with ε(·; target_prompt). The reconstruction (sampling with
    the source prompt) is returned too; it equals the input up to rounding for exact methods.
    Settings: `options` (its `prompt` must be None: the two prompts are arguments here), with the
    keyword arguments given overriding its fields.
    """
    options = SamplingOptions.merge(
        options, negative_prompt=negative_prompt, guidance_scale=guidance_scale, steps=steps, method=method,
        spacing=spacing, progress=progress,
        inversion_substeps=inversion_substeps,
    )
    if options.prompt is not None:
        raise ValueError(
            f"options.prompt={options.prompt!r}: edit takes source_prompt and target_prompt instead; leave prompt None"
        )
    pipe = adapt(pipe)
    if not pipe.is_conditional:
        raise ValueError(f"edit needs a text-conditional model; {pipe.name} is unconditional (no prompts)")
    image = _check_image_batch(pipe, image, "image")
    solver = _solver(pipe, options, _size(image))
    low, N = solver.until_range
    if isinstance(freeze, bool) or not isinstance(freeze, (int, np.integer)) or not 0 <= freeze <= N - low:
        raise ValueError(
            f"freeze={freeze!r} must be an integer in [0, {N - low}] (fewer than steps={N}; "
            f"{solver.method.signature()} keeps at least {low} inversion step(s))"
        )
    until = N - int(freeze)
    eps_src = _eps(pipe, options, source_prompt, _size(image))
    eps_tgt = _eps(pipe, options, target_prompt, _size(image))
    z0 = pipe.encode(image)
    latent = solver.invert(eps_src, z0, until=until, progress=options.progress)
    z_rec = solver.sample(eps_src, latent, progress=options.progress)
    z_edit = solver.sample(eps_tgt, latent, progress=options.progress)
    rec, edited = pipe.decode(z_rec, _size(image)), pipe.decode(z_edit, _size(image))
    metrics = {
        **round_trip_metrics(image, z0, z_rec, rec),
        "edit_pixel_mse": pixel_mse(image, edited),
        "method": solver.method.signature(), "steps": solver.steps, "freeze": int(freeze),
        **prompt_metrics(pipe, source_prompt, "source_prompt"), **prompt_metrics(pipe, target_prompt, "target_prompt"),
        "guidance_scale": options.guidance_scale,
    }
    return Edit(image.cpu(), rec, edited, latent, metrics)


# ---------------------------------------------------------------------------------
# Interpolation
# ---------------------------------------------------------------------------------
@dataclass
class Interpolation:
    """Frames sampled from slerp(latent_A, latent_B, w), w = 0 … 1."""

    images: torch.Tensor
    frames: torch.Tensor
    weights: list[float]
    metrics: dict[str, Any] = field(default_factory=dict)


def interpolate(
    pipe,
    image_a: torch.Tensor,
    image_b: torch.Tensor,
    *,
    frames: int = 5,
    options: SamplingOptions | None = None,
    prompt: str | None = None,
    negative_prompt: str | None = None,
    guidance_scale: float | None = None,
    steps: int | None = None,
    method: str | Method | None = None,
    spacing: str | None = None,
    progress: bool | None = None,
    inversion_substeps: int | None = None,
) -> Interpolation:
    """Invert A and B (one batch), slerp every state of the latent tuple with the same
    weight w_f = f/(F−1), and sample all F frames (one batch). Frames 0 and F−1
    reconstruct A and B. Settings: `options`, with the keyword arguments given overriding its fields."""
    options = SamplingOptions.merge(
        options, prompt=prompt, negative_prompt=negative_prompt, guidance_scale=guidance_scale, steps=steps,
        method=method, spacing=spacing, progress=progress,
        inversion_substeps=inversion_substeps,
    )
    if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or frames < 2:
        raise ValueError(f"frames={frames!r} must be an integer ≥ 2")
    pipe = adapt(pipe)
    image_a = _check_image_batch(pipe, image_a, "image_a")
    image_b = _check_image_batch(pipe, image_b, "image_b")
    if image_a.shape != image_b.shape or image_a.shape[0] != 1:
        raise ValueError(
            f"image_a and image_b must be single images of one size, got {tuple(image_a.shape)} and {tuple(image_b.shape)}"
        )
    solver = _solver(pipe, options, _size(image_a))
    eps = _eps(pipe, options, options.prompt, _size(image_a))
    images = torch.cat([image_a, image_b])
    latent = solver.invert(eps, pipe.encode(images), progress=options.progress)
    weights = [f / (frames - 1) for f in range(frames)]
    states = tuple(
        torch.cat([slerp(s[0:1], s[1:2], w) for w in weights]) for s in latent.states
    )
    z = solver.sample(eps, latent.replace(states=states), progress=options.progress)
    out = pipe.decode(z, _size(image_a))
    metrics = {
        "pixel_mse_first_to_a": pixel_mse(image_a, out[:1]),
        "pixel_mse_last_to_b": pixel_mse(image_b, out[-1:]),
        "frames": int(frames), "method": solver.method.signature(), "steps": solver.steps,
        **prompt_metrics(pipe, options.prompt), "guidance_scale": options.guidance_scale,
    }
    return Interpolation(images.cpu(), out, weights, metrics)


# ---------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------
def sample(
    pipe,
    *,
    num: int | None = None,
    seed: int = 0,
    latent: Latent | None = None,
    options: SamplingOptions | None = None,
    prompt: str | None = None,
    negative_prompt: str | None = None,
    guidance_scale: float | None = None,
    steps: int | None = None,
    method: str | Method | None = None,
    spacing: str | None = None,
    size: int | tuple[int, int] | None = None,
    output_type: Literal["image", "latent"] = "image",
    progress: bool | None = None,
) -> torch.Tensor:
    """Images (num, 3, H, W) in [−1, 1] (`output_type="image"`) or model-space z0 (float64,
    `output_type="latent"`).

    From x_T ~ N(0, I) (`num` images, default 4, of `size` pixels, default the native resolution;
    float64 noise from a CPU generator seeded with `seed`, so results do not depend on the
    device; Flux: drawn unpacked and packed), or from a `latent` made by `invert` (its batch;
    exact reconstruction with the same prompt, guidance, steps and method; `size` only for a
    non-square Flux latent). Settings:
    `options`, with the keyword arguments given overriding its fields."""
    options = SamplingOptions.merge(
        options, prompt=prompt, negative_prompt=negative_prompt, guidance_scale=guidance_scale, steps=steps,
        method=method, spacing=spacing, progress=progress,
    )
    if output_type not in ("image", "latent"):
        raise ValueError(f"output_type={output_type!r} must be 'image' or 'latent'")
    pipe = adapt(pipe)
    if latent is not None:
        if not isinstance(latent, Latent):
            raise TypeError(f"latent must be a belm_core.Latent (from invert), got {type(latent).__name__}")
        if num is not None or (size is not None and pipe.family != "flux"):
            raise ValueError("num= and size= come from the latent; leave them None when latent= is given "
                             "(size= is taken only for a non-square Flux latent)")
        start = latent
        # Flux's packed latents keep only their token count: size= names a non-square image size
        _, size = _check_latents(pipe, latent.states[0], size)
    else:
        num = 4 if num is None else num
        if isinstance(num, bool) or not isinstance(num, (int, np.integer)) or num < 1:
            raise ValueError(f"num={num!r} must be a positive integer")
        from .images import _size as image_size

        size = image_size(pipe.resolution if size is None else size)
        m = pipe.size_multiple
        if size[0] % m or size[1] % m:
            raise ValueError(f"size={size!r}: this model needs sizes divisible by {m}")
        start = pipe.noise(int(num), size, torch.Generator().manual_seed(int(seed)))
    solver = _solver(pipe, options, size, from_noise=not isinstance(start, Latent))
    eps = _eps(pipe, options, options.prompt, size)
    z = solver.sample(eps, start, progress=options.progress)
    return z if output_type == "latent" else pipe.decode(z, size)
