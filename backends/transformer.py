"""Diffusers backend: an SD3 or Flux transformer as the velocity function `v_fn(x, t)`.

Rectified-flow models (docs/math.md §11) predict the velocity v = n − x_0 = dx/dσ at
x_σ = (1 − σ) x_0 + σ n, and `belm_core.Solver(..., prediction="velocity")` calls
v_fn(x, t) with the model time t = 1000·σ. Two wrappers, the analogues of `UNetEps`:

- `SD3Velocity` (`SD3Transformer2DModel`): joint attention over the prompt's token
  embeddings, pooled projections, true classifier-free guidance
      v = v_u + g (v_c − v_u)
  with the negative and the conditional branch in ONE batched call ([negative; conditional],
  the batch order of StableDiffusion3Pipeline), timestep = t as float32.
- `FluxVelocity` (`FluxTransformer2DModel`): packed latents (B, (h/2)(w/2), 4C), image and
  text position ids, and, for guidance-distilled checkpoints (FLUX.1-dev), the guidance
  scale g as an *input* embedding (no negative branch, one call); timestep = t/1000 in the
  model dtype, as FluxPipeline passes it.

The calls are those of the pipelines' own loops, so v is the pipeline's noise_pred bit for
bit for the same latents and t (tests/test_flow_pipelines.py checks this inside `pipe(...)`).

Determinism and precision are as for `UNetEps`: no_grad, eval mode, a contiguous copy of x
in the model dtype; v is returned in x's dtype (float64 for the solver state).
"""

from __future__ import annotations

import math
import numbers

import torch

__all__ = ["SD3Velocity", "FluxVelocity", "check_flux_guidance"]


def check_flux_guidance(scale, *, guidance_embeds: bool, name: str = "guidance_scale") -> float:
    """Flux's guidance scale g as a float, or an error naming the rule it breaks.

    FLUX.1-dev is guidance-distilled: g is an input of the transformer (its guidance
    embedding), not a mix v_u + g (v_c − v_u) of two branches, so g < 1 needs no negative
    prompt; it must be a finite real number ≥ 0. A checkpoint without a guidance embedding
    (FLUX.1-schnell) takes no guidance: g must be 1.
    """
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"{name}={scale!r} must be a real number, got {type(scale).__name__}")
    g = float(scale)
    if not math.isfinite(g):
        raise ValueError(f"{name}={scale!r} must be a finite number")
    if not guidance_embeds and g != 1.0:
        raise ValueError(
            f"{name}={g}: this Flux transformer has no guidance embedding (guidance_embeds=False, e.g. "
            f"FLUX.1-schnell) and takes no guidance; use {name}=1"
        )
    if g < 0:
        raise ValueError(
            f"{name}={g} must be ≥ 0: Flux's distilled guidance is the scale embedded into the transformer "
            "(FLUX.1-dev uses about 3.5), not a mix of a conditional and a negative branch"
        )
    return g


class _Velocity:
    """What both wrappers share: the transformer, its device and dtype, the deterministic call."""

    def __init__(self, transformer):
        if not isinstance(transformer, torch.nn.Module):
            raise TypeError(f"transformer must be a torch module (a diffusers transformer), got {type(transformer).__name__}")
        transformer.eval()
        param = next(transformer.parameters())
        self.transformer = transformer
        self.device, self.model_dtype = param.device, param.dtype

    def _input(self, x) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch tensor, got {type(x).__name__}")
        # contiguous: another memory layout may pick kernels that round differently
        return x.to(device=self.device, dtype=self.model_dtype, memory_format=torch.contiguous_format)

    def _cast(self, value: torch.Tensor, name: str) -> torch.Tensor:
        if not isinstance(value, torch.Tensor) or value.ndim < 2:
            raise TypeError(f"{name} must be a tensor with a batch dimension, got {value!r}")
        return value.to(self.device, self.model_dtype)

    def model_output(self, x: torch.Tensor, t) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        """v(x, t) in x's dtype and device."""
        return self.model_output(x, t).to(device=x.device, dtype=x.dtype)


def _expand(value: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    """`value` with batch size `batch` (a batch of 1 is broadcast)."""
    if value.shape[0] == batch:
        return value
    if value.shape[0] == 1:
        return value.expand(batch, *value.shape[1:])
    raise ValueError(f"{name} has batch size {value.shape[0]}; expected 1 or the batch size of x ({batch})")


class SD3Velocity(_Velocity):
    """v(x, t) of an `SD3Transformer2DModel`, with true classifier-free guidance (docs/math.md §7, §11).

        v = v_u + g (v_c − v_u),   [v_u; v_c] = transformer([x; x], t, [e_u; e_c], [p_u; p_c])

    in one batched call (the order and formula of StableDiffusion3Pipeline's loop); g = 1 is
    one unguided call. Embeddings e (B or 1, tokens, joint_attention_dim) and pooled
    projections p (B or 1, pooled_projection_dim) come from the pipeline's `encode_prompt`.
    The timestep is t (= 1000·σ) as float32, the dtype of the pipeline's scheduler timesteps.
    """

    def __init__(
        self,
        transformer,
        encoder_hidden_states: torch.Tensor,
        pooled_projections: torch.Tensor,
        negative_encoder_hidden_states: torch.Tensor | None = None,
        negative_pooled_projections: torch.Tensor | None = None,
        guidance_scale: float = 1.0,
    ):
        super().__init__(transformer)
        from .guidance import check_guidance

        negatives = (negative_encoder_hidden_states is None, negative_pooled_projections is None)
        if len(set(negatives)) != 1:
            raise ValueError("give both negative_encoder_hidden_states and negative_pooled_projections, or neither")
        g = check_guidance(guidance_scale, negative_given=not negatives[0], conditional=True)
        if g != 1.0 and negatives[0]:
            raise ValueError(
                f"guidance_scale={g} needs the negative branch (negative_encoder_hidden_states and "
                "negative_pooled_projections; the pipeline's default is the empty prompt encoded)"
            )
        self.cond = (self._cast(encoder_hidden_states, "encoder_hidden_states"),
                     self._cast(pooled_projections, "pooled_projections"))
        self.uncond = None if g == 1.0 else (
            self._cast(negative_encoder_hidden_states, "negative_encoder_hidden_states"),
            self._cast(negative_pooled_projections, "negative_pooled_projections"),
        )
        if self.uncond is not None:
            for a, b, name in zip(self.cond, self.uncond, ("encoder_hidden_states", "pooled_projections")):
                if a.shape[1:] != b.shape[1:]:
                    raise ValueError(f"negative_{name} has shape {tuple(b.shape)}, incompatible with {name} {tuple(a.shape)}")
        self.guidance_scale = g

    def __repr__(self) -> str:
        return (f"SD3Velocity({type(self.transformer).__name__}, guidance_scale={self.guidance_scale}, "
                f"model_dtype={self.model_dtype}, device={self.device})")

    def model_output(self, x: torch.Tensor, t) -> torch.Tensor:
        """The guided transformer output at (x, t), in the model dtype and device."""
        xm = self._input(x)
        batch = xm.shape[0]
        embeds, pooled = (_expand(v, batch, n) for v, n in zip(self.cond, ("encoder_hidden_states", "pooled_projections")))
        if self.uncond is not None:
            neg_embeds, neg_pooled = (_expand(v, batch, "negative_" + n)
                                      for v, n in zip(self.uncond, ("encoder_hidden_states", "pooled_projections")))
            xm = torch.cat([xm, xm])
            embeds, pooled = torch.cat([neg_embeds, embeds]), torch.cat([neg_pooled, pooled])
        timestep = torch.full((xm.shape[0],), float(t), dtype=torch.float32, device=self.device)
        with torch.no_grad():
            out = self.transformer(
                hidden_states=xm, timestep=timestep, encoder_hidden_states=embeds, pooled_projections=pooled,
                return_dict=False,
            )[0]
        if self.uncond is None:
            return out
        out_u, out_c = out.chunk(2)
        return out_u + self.guidance_scale * (out_c - out_u)


class FluxVelocity(_Velocity):
    """v(x, t) of a `FluxTransformer2DModel` on packed latents x (B, (h/2)(w/2), 4C) (docs/math.md §11).

        v = transformer(x, t/1000, guidance=g, pooled, embeds, txt_ids, img_ids)

    as FluxPipeline's loop calls it: the timestep t (= 1000·σ) in the model dtype divided by
    1000; `guidance` a float32 tensor of g per image when the transformer has a guidance
    embedding (FLUX.1-dev; see `check_flux_guidance`), None otherwise. `img_ids`
    ((h/2)(w/2), 3) fix the image size (the pipeline's `_prepare_latent_image_ids`);
    `txt_ids` (tokens, 3) come with the prompt from `encode_prompt`.
    """

    def __init__(
        self,
        transformer,
        encoder_hidden_states: torch.Tensor,
        pooled_projections: torch.Tensor,
        txt_ids: torch.Tensor,
        img_ids: torch.Tensor,
        guidance_scale: float = 1.0,
    ):
        super().__init__(transformer)
        self.guidance_embeds = bool(getattr(transformer.config, "guidance_embeds", False))
        self.guidance_scale = check_flux_guidance(guidance_scale, guidance_embeds=self.guidance_embeds)
        self.encoder_hidden_states = self._cast(encoder_hidden_states, "encoder_hidden_states")
        self.pooled_projections = self._cast(pooled_projections, "pooled_projections")
        for name, ids in (("txt_ids", txt_ids), ("img_ids", img_ids)):
            if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or ids.shape[1] != 3:
                raise ValueError(f"{name} must be a tensor (tokens, 3), got {getattr(ids, 'shape', ids)!r}")
        self.txt_ids = txt_ids.to(self.device, self.model_dtype)
        self.img_ids = img_ids.to(self.device, self.model_dtype)

    def __repr__(self) -> str:
        return (f"FluxVelocity({type(self.transformer).__name__}, guidance_scale={self.guidance_scale}, "
                f"image_tokens={self.img_ids.shape[0]}, model_dtype={self.model_dtype}, device={self.device})")

    def model_output(self, x: torch.Tensor, t) -> torch.Tensor:
        """The transformer output at (x, t), in the model dtype and device."""
        xm = self._input(x)
        if xm.ndim != 3 or xm.shape[1] != self.img_ids.shape[0]:
            raise ValueError(
                f"x has shape {tuple(xm.shape)}; this FluxVelocity is for packed latents (B, {self.img_ids.shape[0]}, C) "
                "(its img_ids fix the image size)"
            )
        batch = xm.shape[0]
        timestep = torch.full((batch,), float(t), dtype=self.model_dtype, device=self.device) / 1000
        guidance = None
        if self.guidance_embeds:
            guidance = torch.full([1], self.guidance_scale, dtype=torch.float32, device=self.device).expand(batch)
        with torch.no_grad():
            return self.transformer(
                hidden_states=xm, timestep=timestep, guidance=guidance,
                pooled_projections=_expand(self.pooled_projections, batch, "pooled_projections"),
                encoder_hidden_states=_expand(self.encoder_hidden_states, batch, "encoder_hidden_states"),
                txt_ids=self.txt_ids, img_ids=self.img_ids, return_dict=False,
            )[0]
