"""What belm needs of a loaded diffusers pipeline, through the pipeline's own parts.

    adapter = adapt(pipe)                        # StableDiffusionPipeline, StableDiffusionXLPipeline,
                                                 # DDPMPipeline or DDIMPipeline, as loaded
    solver = adapter.solver(steps=50, method="o-belm")
    eps = adapter.eps_fn("a cat", guidance_scale=3.0)
    z0 = adapter.encode(images)                  # VAE posterior mean × scaling (float64)
    latent = solver.invert(eps, z0)

One small adapter per pipeline family; nothing is re-implemented:

- prompts go through the pipeline's own `encode_prompt` (SD: one CLIP encoder; SDXL: both
  encoders, pooled embeddings, zeros for an absent negative prompt when
  `force_zeros_for_empty_prompt`), SDXL's time ids through `pipe._get_add_time_ids`;
- ε is `backends.unet.UNetEps` on `pipe.unet` with those tensors as UNet keywords, the same
  CFG batch ([negative; conditional]) and formula as the pipeline's loop, so the guided
  noise prediction is the pipeline's own bit for bit;
- the grid is `Solver(schedule_from_config(cfg), steps=N, method=m, **solver_options(cfg))`
  with cfg = `pipe.scheduler.config` (`backends.config`), the grid the drop-in
  `BELMScheduler` builds from the same config: a latent made here is accepted there;
- images go through `pipe.vae` (and `pipe.image_processor` for PIL/NumPy input).

Guidance differs from the pipelines in one case: diffusers runs no guidance at all for
g < 1, while here g < 1 with a negative prompt is ε = ε_u + g (ε_c − ε_u) (MATH.md §7).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Any, Literal

import torch

from belm_core import Method, Solver

from .config import prediction_type as config_prediction_type
from .config import schedule_from_config, solver_options
from .guidance import check_guidance
from .unet import PromptTokens, UNetEps, prompt_tokens

__all__ = ["Family", "PipelineAdapter", "adapt", "family"]

Family = Literal["sd", "sdxl", "pixel"]


def family(pipe) -> Family:
    """The pipeline family: "sd" (StableDiffusionPipeline), "sdxl" (StableDiffusionXLPipeline) or
    "pixel" (DDPMPipeline, DDIMPipeline); a TypeError naming the class for anything else."""
    from diffusers import DDIMPipeline, DDPMPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

    if isinstance(pipe, StableDiffusionXLPipeline):
        return "sdxl"
    if isinstance(pipe, StableDiffusionPipeline):
        return "sd"
    if isinstance(pipe, (DDPMPipeline, DDIMPipeline)):
        return "pixel"
    raise TypeError(
        f"pipe is a {type(pipe).__name__}; supported are StableDiffusionPipeline, StableDiffusionXLPipeline, "
        "DDPMPipeline and DDIMPipeline (load one with backends.unet.load_pipeline or DiffusionPipeline.from_pretrained)"
    )


def adapt(pipe) -> PipelineAdapter:
    """`pipe` itself when it already is a `PipelineAdapter`, else `PipelineAdapter(pipe)`."""
    return pipe if isinstance(pipe, PipelineAdapter) else PipelineAdapter(pipe)


class PipelineAdapter:
    """A diffusers pipeline seen as belm needs it: ε-functions, the grid, images ↔ model space.

    Attributes:
        pipe: the diffusers pipeline (its components are used, never copied).
        family: "sd", "sdxl" or "pixel".
        unet, vae: the pipeline's networks (vae None for pixel models).
        scheduler_config: `dict(pipe.scheduler.config)`, read once when the adapter is made.
        schedule: `schedule_from_config(scheduler_config)`.
        prediction_type: "epsilon", "v_prediction" or "sample" (from the scheduler config).
        device, dtype: where and in which dtype the UNet runs.
        name: where the pipeline was loaded from (its class name when built in memory).
    """

    def __init__(self, pipe):
        self.family: Family = family(pipe)
        self.pipe = pipe
        self.unet = pipe.unet
        self.vae = getattr(pipe, "vae", None) if self.family != "pixel" else None
        self.scheduler_config = dict(pipe.scheduler.config)
        self.schedule = schedule_from_config(self.scheduler_config)
        self.prediction_type = config_prediction_type(self.scheduler_config)
        param = next(self.unet.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.name = str(getattr(pipe, "name_or_path", None) or type(pipe).__name__)

    def __repr__(self) -> str:
        return (
            f"PipelineAdapter({type(self.pipe).__name__} {self.name!r}, family={self.family!r}, "
            f"prediction_type={self.prediction_type!r}, resolution={self.resolution}, device={self.device}, "
            f"dtype={self.dtype})"
        )

    # -- shape ---------------------------------------------------------------------------------
    @property
    def is_conditional(self) -> bool:
        """Text-conditional (takes prompts)."""
        return self.family != "pixel"

    @property
    def is_latent(self) -> bool:
        return self.vae is not None

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent pixel (1 for pixel models)."""
        return 1 if self.vae is None else 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of one model-space sample at the native resolution."""
        h, w = _pair(self.unet.config.sample_size)
        return (int(self.unet.config.in_channels), h, w)

    @property
    def resolution(self) -> int | tuple[int, int]:
        """Native image size (UNet sample_size × VAE scale factor); an int for square models."""
        h, w = (s * self.vae_scale_factor for s in _pair(self.unet.config.sample_size))
        return h if h == w else (h, w)

    @property
    def size_multiple(self) -> int:
        """Image sizes must be multiples of this (VAE factor × the UNet's downsampling)."""
        return self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    # -- the grid ------------------------------------------------------------------------------
    def solver(self, steps: int, method: str | Method = "o-belm", spacing: str | None = None) -> Solver:
        """`Solver(schedule_from_config(cfg), steps=steps, method=method, **solver_options(cfg))`, cfg the
        pipeline's scheduler config (float64 state); `spacing` replaces the config's `timestep_spacing`."""
        options = solver_options(self.scheduler_config)
        if spacing is not None:
            options["spacing"] = spacing
        return Solver(self.schedule, steps=steps, method=method, **options)

    # -- prompts -------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        """The tokenizer whose limit applies to the prompt (SDXL: the first one that exists)."""
        return getattr(self.pipe, "tokenizer", None) or getattr(self.pipe, "tokenizer_2", None)

    @property
    def max_prompt_tokens(self) -> int:
        """Tokens the text encoder takes, start and end tokens included."""
        encoder = getattr(self.pipe, "text_encoder", None) or getattr(self.pipe, "text_encoder_2", None)
        return int(min(self.tokenizer.model_max_length, encoder.config.max_position_embeddings))

    def prompt_tokens(self, prompt: str) -> PromptTokens:
        """The prompt as the text encoder uses it (see `backends.unet.prompt_tokens`); no warning."""
        self._check_conditional("prompt", prompt)
        return prompt_tokens(self.tokenizer, prompt, self.max_prompt_tokens)

    def encode_prompt(
        self, prompt: str | None = None, negative_prompt: str | None = None, guided: bool = False
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """UNet keyword tensors of the conditional and (when `guided`) the negative branch.

        Made by the pipeline's own `encode_prompt` (one prompt, one image; None is the empty
        prompt). SD: {"encoder_hidden_states"}. SDXL: {"encoder_hidden_states",
        "added_cond_kwargs": {"text_embeds", "time_ids"}} with the time ids of the native size
        (`conditioning_size` gives those of another size). A prompt longer than the encoder's
        limit is cut there with a UserWarning naming the cut text (diffusers' own wording).
        """
        self._check_conditional("prompt", prompt)
        prompts = ["" if prompt is None else prompt]
        if guided:
            prompts.append("" if negative_prompt is None else negative_prompt)
        for p in dict.fromkeys(prompts):
            if not isinstance(p, str):
                raise TypeError(f"prompt={p!r} must be a string")
            cut = self.prompt_tokens(p).truncated
            if cut:
                warnings.warn(
                    "The following part of your input was truncated because CLIP can only handle sequences up to "
                    f"{self.max_prompt_tokens} tokens: {cut!r}",
                    UserWarning, stacklevel=3,
                )
        device = self.pipe._execution_device
        with _quiet(self.pipe.encode_prompt), torch.no_grad():  # its truncation message is the warning above
            if self.family == "sd":
                pos, neg = self.pipe.encode_prompt(prompts[0], device, 1, guided, negative_prompt)
                return {"encoder_hidden_states": pos}, ({"encoder_hidden_states": neg} if guided else None)
            pos, neg, pooled, neg_pooled = self.pipe.encode_prompt(
                prompt=prompts[0], device=device, num_images_per_prompt=1, do_classifier_free_guidance=guided,
                negative_prompt=negative_prompt,
            )
        time_ids = self._time_ids(self.resolution, pooled, pos.dtype)
        cond = {"encoder_hidden_states": pos, "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}
        if not guided:
            return cond, None
        return cond, {"encoder_hidden_states": neg, "added_cond_kwargs": {"text_embeds": neg_pooled, "time_ids": time_ids}}

    def _time_ids(self, size, pooled: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """SDXL's micro-conditioning as the pipeline makes it by default: original and target size
        (H, W) = `size`, crop (0, 0)."""
        h, w = _pair(size)
        encoder_2 = getattr(self.pipe, "text_encoder_2", None)
        projection_dim = int(pooled.shape[-1]) if encoder_2 is None else encoder_2.config.projection_dim
        return self.pipe._get_add_time_ids(
            (h, w), (0, 0), (h, w), dtype=dtype, text_encoder_projection_dim=projection_dim
        ).to(self.device)

    def conditioning_size(self, conditioning: dict[str, Any] | None, size) -> dict[str, Any] | None:
        """`conditioning` with SDXL's time ids for images of `size` (H, W) pixels (a no-op elsewhere)."""
        if conditioning is None or "added_cond_kwargs" not in conditioning:
            return conditioning
        added = conditioning["added_cond_kwargs"]
        ids = self._time_ids(size, added["text_embeds"], added["time_ids"].dtype)
        return {**conditioning, "added_cond_kwargs": {**added, "time_ids": ids}}

    def eps_fn(
        self,
        prompt: str | None = None,
        negative_prompt: str | None = None,
        guidance_scale: float = 1.0,
        size: int | tuple[int, int] | None = None,
    ) -> UNetEps:
        """ε(x, t) for a prompt with classifier-free guidance g (MATH.md §7).

        Conditional models: no prompt is the empty prompt; g > 1 without a negative prompt
        guides away from the pipeline's default negative (SD: the empty prompt; SDXL base:
        zeros); g < 1 needs a negative prompt. Unconditional models take neither a prompt nor
        g ≠ 1. `size`: the image size in pixels (SDXL's time ids; default the native resolution).
        """
        if not self.is_conditional:
            for label, value in (("prompt", prompt), ("negative_prompt", negative_prompt)):
                self._check_conditional(label, value)
        g = check_guidance(guidance_scale, negative_given=negative_prompt is not None, conditional=self.is_conditional)
        kw: dict[str, Any] = {"prediction_type": self.prediction_type, "guidance_scale": g}
        if not self.is_conditional:
            return UNetEps(self.unet, self.schedule, **kw)
        cond, uncond = self.encode_prompt(prompt, negative_prompt, guided=g != 1.0)
        if size is not None:
            cond, uncond = self.conditioning_size(cond, size), self.conditioning_size(uncond, size)
        uncond = uncond or {}
        return UNetEps(
            self.unet, self.schedule,
            encoder_hidden_states=cond.pop("encoder_hidden_states"),
            negative_encoder_hidden_states=uncond.pop("encoder_hidden_states", None),
            conditioning=cond or None, negative_conditioning=uncond or None, **kw,
        )

    def _check_conditional(self, label: str, value) -> None:
        if value is not None and not self.is_conditional:
            raise ValueError(
                f"{label}={value!r} was given, but {self.name} is an unconditional model "
                f"({type(self.unet).__name__}) and takes no prompt"
            )

    # -- images <-> model space ----------------------------------------------------------------
    def preprocess(self, image, size: int | tuple[int, int] | None = None) -> torch.Tensor:
        """A tensor (N, 3, H, W) in [−1, 1] as it is; PIL images / NumPy arrays through the pipeline's
        `image_processor.preprocess` (resized to `size`, default the native resolution)."""
        if isinstance(image, torch.Tensor):
            return image
        from diffusers.image_processor import VaeImageProcessor

        processor = getattr(self.pipe, "image_processor", None) or VaeImageProcessor(vae_scale_factor=1)
        h, w = _pair(self.resolution if size is None else size)
        return processor.preprocess(image, height=h, width=w).to(torch.float32)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W) in [−1, 1] → model space, float64 on the UNet's device.

        Latent models: z = (μ − shift) · scale with μ the VAE posterior mean (deterministic, not a
        sample), shift = `shift_factor` or the per-channel `latents_mean`, scale =
        `scaling_factor` (/ `latents_std`), as the pipelines decode. Pixel models: the images.
        """
        images = _check_images(images)
        if self.vae is None:
            return images.to(self.device, torch.float64)
        with _vae_precision(self.vae) as vae, torch.no_grad():
            mean = vae.encode(images.to(self.device, vae.dtype)).latent_dist.mean
        shift, scale = self._latent_affine(mean.ndim)
        return (mean.to(torch.float64) - shift) * scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Model space → images (N, 3, H, W) in [−1, 1] (not clamped), float32 on the CPU."""
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"z must be a torch tensor, got {type(z).__name__}")
        if self.vae is None:
            return z.detach().to("cpu", torch.float32)
        shift, scale = self._latent_affine(z.ndim)
        m = z.to(self.device, torch.float64) / scale + shift
        with _vae_precision(self.vae) as vae, torch.no_grad():
            images = vae.decode(m.to(vae.dtype)).sample
        return images.to("cpu", torch.float32)

    def _latent_affine(self, ndim: int):
        config = self.vae.config
        scale: Any = float(config.scaling_factor)
        shift: Any = float(getattr(config, "shift_factor", None) or 0.0)
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        if mean is not None and std is not None:
            view = (1, -1) + (1,) * (ndim - 2)
            shift = torch.tensor(mean, dtype=torch.float64, device=self.device).view(view)
            scale = scale / torch.tensor(std, dtype=torch.float64, device=self.device).view(view)
        return shift, scale


@contextlib.contextmanager
def _vae_precision(vae):
    """The VAE in float32 while it runs when it is float16 with `force_upcast` (SDXL's VAE
    overflows in float16), as the pipelines do; back to float16 afterwards."""
    upcast = vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
    if upcast:
        vae.to(torch.float32)
    try:
        yield vae
    finally:
        if upcast:
            vae.to(torch.float16)


@contextlib.contextmanager
def _quiet(method):
    """Silence the loggers that report a long prompt: that of the module defining `method` (diffusers'
    truncation notice) and transformers' tokenizer length notice."""
    loggers = [logging.getLogger(getattr(method, "__module__", "diffusers")),
               logging.getLogger("transformers.tokenization_utils_base")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _pair(size) -> tuple[int, int]:
    if isinstance(size, (list, tuple)):
        return int(size[0]), int(size[1])
    return int(size), int(size)


def _check_images(images) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch tensor (N, 3, H, W) in [-1, 1], got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
    return images

