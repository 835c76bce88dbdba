"""What belm needs of a loaded diffusers pipeline, through the pipeline's own parts.

    adapter = adapt(pipe)                        # StableDiffusionPipeline, StableDiffusionXLPipeline,
                                                 # StableDiffusion3Pipeline, FluxPipeline,
                                                 # DDPMPipeline or DDIMPipeline, as loaded
    solver = adapter.solver(steps=50, method="o-belm")
    fn = adapter.model_fn("a cat", guidance_scale=3.0)   # ε (VP families) or v (flows)
    z0 = adapter.encode(images)                  # (VAE posterior mean − shift) × scaling (float64)
    latent = solver.invert(fn, z0)

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

Rectified flows (SD3, Flux; docs/math.md §11) give v instead of ε (`model_fn` = `velocity_fn`,
`backends.transformer`) and the solver runs with `prediction="velocity"`. Their grid is the
one the pipeline's own call asks its scheduler for: SD3 `FlowMatch.timesteps(N)` (with `mu`
from the latent's token count only when the config has `use_dynamic_shifting`); Flux
`FlowMatch.timesteps(sigmas=linspace(1, 1/N, N), mu=mu_for((h/2)(w/2)))`. **Flux's grid
depends on the image size** (through mu): a latent inverted at one size is sampled at that
size (`size=` of `solver`, `model_fn`; its grid_key differs at another). Model-space tensors
are in the pipeline's own format: SD3 (N, 16, h, w); Flux packed (N, (h/2)(w/2), 64), packed
after the VAE encodes and unpacked before it decodes (`pack`, `unpack`).

Guidance differs from the pipelines in one case: diffusers runs no guidance at all for
g < 1, while here g < 1 with a negative prompt is ε = ε_u + g (ε_c − ε_u) (docs/math.md §7).
SD3 guides v the same way (true CFG, one batched call). Flux's g is the distilled guidance
embedded into the transformer (`backends.transformer.check_flux_guidance`: any finite g ≥ 0,
no negative branch); Flux's true CFG (`true_cfg_scale` with a negative prompt) is not supported.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from typing import Any, Literal

import numpy as np
import torch

from belm_core import DiscreteVP, FlowMatch, Method, Solver, recommended

from .config import prediction_type as config_prediction_type
from .config import schedule_from_config, solver_options
from .guidance import check_guidance
from .transformer import FluxVelocity, SD3Velocity, check_flux_guidance
from .unet import PromptTokens, UNetEps, prompt_tokens

__all__ = ["Family", "FLOW_FAMILIES", "PipelineAdapter", "adapt", "family"]

Family = Literal["sd", "sdxl", "pixel", "sd3", "flux"]
#: the rectified-flow families (velocity models, FlowMatch grids)
FLOW_FAMILIES = ("sd3", "flux")


def family(pipe) -> Family:
    """The pipeline family: "sd" (StableDiffusionPipeline), "sdxl" (StableDiffusionXLPipeline),
    "sd3" (StableDiffusion3Pipeline), "flux" (FluxPipeline) or "pixel" (DDPMPipeline,
    DDIMPipeline); a TypeError naming the class for anything else."""
    from diffusers import (
        DDIMPipeline, DDPMPipeline, FluxPipeline, StableDiffusion3Pipeline, StableDiffusionPipeline,
        StableDiffusionXLPipeline,
    )

    if isinstance(pipe, StableDiffusion3Pipeline):
        return "sd3"
    if isinstance(pipe, FluxPipeline):
        return "flux"
    if isinstance(pipe, StableDiffusionXLPipeline):
        return "sdxl"
    if isinstance(pipe, StableDiffusionPipeline):
        return "sd"
    if isinstance(pipe, (DDPMPipeline, DDIMPipeline)):
        return "pixel"
    raise TypeError(
        f"pipe is a {type(pipe).__name__}; supported are StableDiffusionPipeline, StableDiffusionXLPipeline, "
        "StableDiffusion3Pipeline, FluxPipeline, DDPMPipeline and DDIMPipeline (load one with backends.unet.load_pipeline or DiffusionPipeline.from_pretrained)"
    )


def adapt(pipe) -> PipelineAdapter:
    """`pipe` itself when it already is a `PipelineAdapter`, else `PipelineAdapter(pipe)`."""
    return pipe if isinstance(pipe, PipelineAdapter) else PipelineAdapter(pipe)


class PipelineAdapter:
    """A diffusers pipeline seen as belm needs it: ε- or v-functions, the grid, images ↔ model space.

    Attributes:
        pipe: the diffusers pipeline (its components are used, never copied).
        family: "sd", "sdxl", "sd3", "flux" or "pixel".
        unet, transformer, vae: the pipeline's networks (unet None for the flows, transformer
            None for the UNet families, vae None for pixel models).
        denoiser: the network that runs (the UNet or the transformer).
        scheduler_config: `dict(pipe.scheduler.config)`, read once when the adapter is made.
        schedule: `schedule_from_config(scheduler_config)` (`FlowMatch` for SD3 and Flux).
        prediction_type: "epsilon", "v_prediction", "sample" or "velocity" (flows).
        device, dtype: where and in which dtype the denoiser runs.
        name: where the pipeline was loaded from (its class name when built in memory).
    """

    def __init__(self, pipe):
        self.family: Family = family(pipe)
        self.pipe = pipe
        self.unet = None if self.is_flow else pipe.unet
        self.transformer = pipe.transformer if self.is_flow else None
        self.denoiser = self.transformer if self.is_flow else self.unet
        self.vae = getattr(pipe, "vae", None) if self.family != "pixel" else None
        if self.is_flow and self.vae is None:
            raise ValueError(f"{type(pipe).__name__} has no vae; belm needs it to map images to latents")
        self.scheduler_config = dict(pipe.scheduler.config)
        self.schedule = schedule_from_config(self.scheduler_config)
        self.prediction_type = config_prediction_type(self.scheduler_config)
        if self.is_flow != (self.prediction_type == "velocity"):
            raise ValueError(
                f"{type(pipe).__name__} has a {type(pipe.scheduler).__name__} ({self.scheduler_config.get('_class_name')}); "
                + ("a flow model needs a FlowMatchEulerDiscreteScheduler config" if self.is_flow
                   else "a flow-matching scheduler does not fit this ε/v-prediction UNet")
            )
        param = next(self.denoiser.parameters())
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
    def is_flow(self) -> bool:
        """A rectified flow (SD3, Flux): the model gives v, the solver runs with prediction="velocity"."""
        return self.family in FLOW_FAMILIES

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
    def latent_shape(self) -> tuple[int, ...]:
        """Shape of one model-space sample at the native resolution: (C, h, w); Flux packed (L, 4C)."""
        return self.model_shape(self.resolution)

    def model_shape(self, size) -> tuple[int, ...]:
        """Shape of one model-space sample for images of `size` (H, W) pixels (an int: square).

        (C, H/f, W/f) with f the VAE factor; Flux: packed (L, 4C), L = (h/2)(w/2) tokens of
        2×2 patches, h = 2⌊H/(2f)⌋ as FluxPipeline rounds it."""
        H, W = _pair(size)
        f = self.vae_scale_factor
        if self.family == "flux":
            h, w = 2 * (H // (2 * f)), 2 * (W // (2 * f))
            return ((h // 2) * (w // 2), int(self.transformer.config.in_channels))
        return (int(self.denoiser.config.in_channels), H // f, W // f)

    def image_size(self, z: torch.Tensor) -> tuple[int, int]:
        """(H, W) pixels of the images a model-space tensor `z` stands for. Flux's packed
        latents keep only the token count L: they are taken as square ((h/2)² = L), and a
        non-square one is a ValueError asking for the size."""
        f = self.vae_scale_factor
        if self.family != "flux":
            return int(z.shape[-2]) * f, int(z.shape[-1]) * f
        tokens = int(z.shape[1])
        side = math.isqrt(tokens)
        if side * side != tokens:
            raise ValueError(
                f"packed Flux latents with {tokens} tokens are not square; give the image size (size=(H, W) pixels, "
                "as the pipeline's height= and width=)"
            )
        return 2 * side * f, 2 * side * f

    def _sample_size(self) -> tuple[int, int]:
        """The latent size the pipeline uses when no height/width is given."""
        if self.family == "flux":
            return _pair(self.pipe.default_sample_size)
        return _pair(self.denoiser.config.sample_size)

    @property
    def resolution(self) -> int | tuple[int, int]:
        """Native image size (the denoiser's sample_size × VAE scale factor; Flux: the pipeline's
        default_sample_size × factor, its default height/width); an int for square models."""
        h, w = (s * self.vae_scale_factor for s in self._sample_size())
        return h if h == w else (h, w)

    @property
    def size_multiple(self) -> int:
        """Image sizes must be multiples of this (VAE factor × the UNet's downsampling, × the
        transformer's patch size for SD3, × 2 for Flux's packing)."""
        if self.family == "sd3":
            return self.vae_scale_factor * int(self.transformer.config.patch_size)
        if self.family == "flux":
            return self.vae_scale_factor * 2
        return self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    # -- the grid ------------------------------------------------------------------------------
    def solver(
        self, steps: int, method: str | Method | None = "o-belm", spacing: str | None = None, size=None,
        *, from_noise: bool = False, inversion_substeps: int | None = None,
    ) -> Solver:
        """`Solver(schedule_from_config(cfg), steps=steps, method=method, **solver_options(cfg))`, cfg the
        pipeline's scheduler config (float64 state); `spacing` replaces the config's `timestep_spacing`.

        Flows: `Solver(schedule, timesteps=flow_timesteps(steps, size), method=method,
        prediction="velocity")`, the grid the pipeline's own call sets; `size` (H, W) pixels
        (default the native resolution) matters for Flux (mu) and dynamically shifted SD3.

        method=None is the default choice: with `from_noise=True` on a `DiscreteVP` or `FlowMatch`
        schedule, `belm_core.recommended(schedule, steps)` (the exact sampler most accurate at low
        step counts in benchmarks/RESULTS.md; its spacing unless `spacing` is given); otherwise
        O-BELM, whose inverted latents match what `BELMScheduler.from_config(cfg)` samples.
        `inversion_substeps` (None: the recommendation's where it applies, else 1) is the Solver's
        option of that name (docs/math.md §28).
        """
        options = solver_options(self.scheduler_config)
        if method is None:
            method = "o-belm"
            if from_noise and isinstance(self.schedule, (DiscreteVP, FlowMatch)):
                options.update(recommended(self.schedule, steps))
                method = options.pop("method")
        if inversion_substeps is not None:
            options["inversion_substeps"] = inversion_substeps
        if self.is_flow:
            return Solver(self.schedule, timesteps=self.flow_timesteps(steps, size, spacing), method=method, **options)
        if spacing is not None:
            options["spacing"] = spacing
        return Solver(self.schedule, steps=steps, method=method, **options)

    def flow_timesteps(self, steps: int, size=None, spacing: str | None = None) -> np.ndarray:
        """Model times 1000·σ of the flow pipeline's own call with `num_inference_steps=steps` on
        images of `size` (H, W) pixels (default the native resolution), as `FlowMatch.timesteps`:

        - SD3: `timesteps(steps)`; with `use_dynamic_shifting` in the config,
          mu = `mu_for((h/p)(w/p))` (p the patch size), as StableDiffusion3Pipeline computes it;
        - Flux: `timesteps(sigmas=linspace(1, 1/N, N), mu=mu_for(L))` with L = (h/2)(w/2) the
          packed token count (sigmas None when the config sets `use_flow_sigmas`). **The grid
          depends on the image size.**
        """
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
            raise ValueError(f"steps={steps!r} must be a positive integer")
        H, W = _pair(self.resolution if size is None else size)
        mu, sigmas = None, None
        if self.family == "flux":
            if not self.scheduler_config.get("use_flow_sigmas"):
                sigmas = np.linspace(1.0, 1 / steps, steps)
            mu = self.schedule.mu_for(self.model_shape((H, W))[0]) if self.schedule.use_dynamic_shifting else None
        elif self.schedule.use_dynamic_shifting:
            p = int(self.transformer.config.patch_size)
            _, h, w = self.model_shape((H, W))
            mu = self.schedule.mu_for((h // p) * (w // p))
        return self.schedule.timesteps(None if sigmas is not None else steps, spacing, mu=mu, sigmas=sigmas)

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
        if self.is_flow:
            raise TypeError(f"encode_prompt gives UNet keywords; {self.family} is a flow model: use velocity_fn")
        prompts = self._prompts(prompt, negative_prompt, guided)
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

    def _prompts(self, prompt, negative_prompt, guided: bool) -> list[str]:
        """[prompt] or [prompt, negative] with None as "", checked; warns about CLIP's truncation."""
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
                    UserWarning, stacklevel=4,
                )
        return prompts

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
        """ε(x, t) for a prompt with classifier-free guidance g (docs/math.md §7).

        Conditional models: no prompt is the empty prompt; g > 1 without a negative prompt
        guides away from the pipeline's default negative (SD: the empty prompt; SDXL base:
        zeros); g < 1 needs a negative prompt. Unconditional models take neither a prompt nor
        g ≠ 1. `size`: the image size in pixels (SDXL's time ids; default the native resolution).
        """
        if self.is_flow:
            raise TypeError(f"{self.family} is a flow model; it gives v, not ε: use velocity_fn (or model_fn)")
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

    def model_fn(
        self,
        prompt: str | None = None,
        negative_prompt: str | None = None,
        guidance_scale: float = 1.0,
        size: int | tuple[int, int] | None = None,
    ):
        """What the solver calls: `eps_fn(...)` for the ε/v/x_0-prediction UNets, `velocity_fn(...)` for
        the flows (the solver of `solver` takes ε or v accordingly)."""
        fn = self.velocity_fn if self.is_flow else self.eps_fn
        return fn(prompt, negative_prompt, guidance_scale, size=size)

    def velocity_fn(
        self,
        prompt: str | None = None,
        negative_prompt: str | None = None,
        guidance_scale: float = 1.0,
        size: int | tuple[int, int] | None = None,
    ) -> SD3Velocity | FluxVelocity:
        """v(x, t) of SD3 or Flux for a prompt (docs/math.md §11), through the pipeline's `encode_prompt`.

        SD3: true classifier-free guidance v = v_u + g (v_c − v_u) (`SD3Velocity`, one batched
        call); g > 1 without a negative prompt guides away from the empty prompt encoded (the
        pipeline's default); g < 1 needs a negative prompt; g = 1 is one unguided call.
        Flux: g is the distilled guidance embedded into the transformer (`FluxVelocity`;
        any finite g ≥ 0, see `check_flux_guidance`); a negative prompt (Flux's true CFG,
        `true_cfg_scale`) is not supported. `size` (H, W) pixels fixes Flux's image ids
        (default the native resolution).
        """
        if not self.is_flow:
            raise TypeError(f"velocity_fn is for the flow families (sd3, flux); {self.family} gives ε: use eps_fn")
        device = self.pipe._execution_device
        if self.family == "sd3":
            g = check_guidance(guidance_scale, negative_given=negative_prompt is not None, conditional=True)
            guided = g != 1.0
            prompts = self._prompts(prompt, negative_prompt, guided)
            with _quiet(self.pipe.encode_prompt), torch.no_grad():
                embeds, neg_embeds, pooled, neg_pooled = self.pipe.encode_prompt(
                    prompt=prompts[0], prompt_2=None, prompt_3=None, device=device, num_images_per_prompt=1,
                    do_classifier_free_guidance=guided, negative_prompt=negative_prompt,
                )
            return SD3Velocity(
                self.transformer, embeds, pooled,
                neg_embeds if guided else None, neg_pooled if guided else None, guidance_scale=g,
            )
        if negative_prompt is not None:
            raise ValueError(
                f"negative_prompt={negative_prompt!r}: Flux takes no negative prompt here (its guidance is the "
                "distilled guidance_scale; FluxPipeline's true CFG with true_cfg_scale is not supported)"
            )
        g = check_flux_guidance(guidance_scale, guidance_embeds=bool(self.transformer.config.guidance_embeds))
        prompts = self._prompts(prompt, None, False)
        with _quiet(self.pipe.encode_prompt), torch.no_grad():
            embeds, pooled, text_ids = self.pipe.encode_prompt(
                prompt=prompts[0], prompt_2=None, device=device, num_images_per_prompt=1,
            )
        return FluxVelocity(self.transformer, embeds, pooled, text_ids, self._image_ids(size), guidance_scale=g)

    def _image_ids(self, size) -> torch.Tensor:
        """Flux's image position ids for images of `size` pixels (the pipeline's `_prepare_latent_image_ids`)."""
        H, W = _pair(self.resolution if size is None else size)
        f = self.vae_scale_factor
        h, w = 2 * (H // (2 * f)), 2 * (W // (2 * f))
        return self.pipe._prepare_latent_image_ids(1, h // 2, w // 2, self.device, self.dtype)

    def _check_conditional(self, label: str, value) -> None:
        if value is not None and not self.is_conditional:
            raise ValueError(
                f"{label}={value!r} was given, but {self.name} is an unconditional model "
                f"({type(self.denoiser).__name__}) and takes no prompt"
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
        return self.pack((mean.to(torch.float64) - shift) * scale)

    def decode(self, z: torch.Tensor, size=None) -> torch.Tensor:
        """Model space → images (N, 3, H, W) in [−1, 1] (not clamped), float32 on the CPU.

        Flux: z is unpacked first (`unpack(z, size)`; `size` (H, W) pixels, default square)."""
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"z must be a torch tensor, got {type(z).__name__}")
        if self.vae is None:
            return z.detach().to("cpu", torch.float32)
        z = self.unpack(z, size)
        shift, scale = self._latent_affine(z.ndim)
        m = z.to(self.device, torch.float64) / scale + shift
        with _vae_precision(self.vae) as vae, torch.no_grad():
            images = vae.decode(m.to(vae.dtype)).sample
        return images.to("cpu", torch.float32)

    def pack(self, z: torch.Tensor) -> torch.Tensor:
        """Flux: latents (N, C, h, w) → packed 2×2 patches (N, (h/2)(w/2), 4C) (FluxPipeline's
        `_pack_latents`); the identity for the other families."""
        if self.family != "flux":
            return z
        n, c, h, w = z.shape
        return self.pipe._pack_latents(z, n, c, h, w)

    def unpack(self, z: torch.Tensor, size=None) -> torch.Tensor:
        """Flux: packed (N, L, 4C) → (N, C, h, w) for images of `size` (H, W) pixels (default:
        square, `image_size`) (FluxPipeline's `_unpack_latents`); the identity elsewhere."""
        if self.family != "flux":
            return z
        if z.ndim != 3:
            raise ValueError(f"Flux latents must be packed (N, L, C), got shape {tuple(z.shape)}")
        size = self.image_size(z) if size is None else _pair(size)
        if self.model_shape(size)[0] != z.shape[1]:
            raise ValueError(f"size={size} gives {self.model_shape(size)[0]} packed tokens, but z has {z.shape[1]}")
        return self.pipe._unpack_latents(z, size[0], size[1], self.vae_scale_factor)

    def noise(self, num: int, size, generator: torch.Generator) -> torch.Tensor:
        """x_T ~ N(0, I), float64 on the denoiser's device: `num` samples for images of `size`
        pixels (Flux: drawn as (num, C, h, w) and packed, as FluxPipeline does)."""
        shape = self.model_shape(size)
        if self.family == "flux":
            H, W = _pair(size)
            f = self.vae_scale_factor
            h, w = 2 * (H // (2 * f)), 2 * (W // (2 * f))
            z = torch.randn((num, shape[1] // 4, h, w), generator=generator, dtype=torch.float64)
            return self.pack(z).to(self.device)
        return torch.randn((num, *shape), generator=generator, dtype=torch.float64).to(self.device)

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

