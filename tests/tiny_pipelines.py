"""Tiny, randomly initialised diffusers pipelines, built in memory from configs (no downloads).

Each builder returns a ready pipeline object (CPU, float32, eval mode, seeded weights) whose
components have the real model's *layout* and scheduler config at toy sizes:

- `tiny_sd_pipeline(prediction_type)`: SD 1.5 (ε, DDIM config of SD 1.5) or SD 2.x (v-prediction,
  linear-projection transformer blocks, DDIM config of SD 2.1).
- `tiny_sdxl_pipeline()`: SDXL base (two CLIP text encoders, `text_time` added conditioning,
  Euler "leading" config, `force_zeros_for_empty_prompt=True`).
- `tiny_sd3_pipeline(with_t5)`: SD3 (MM-DiT, 16-channel VAE with SD3's shift/scaling factors, two
  CLIP encoders with projection, T5 optional, `FlowMatchEulerDiscreteScheduler(shift=3.0)`).
- `tiny_flux_pipeline()`: FLUX.1-dev (guidance-distilled, packed 2×2 latents, CLIP + T5, dynamic
  shifting with Flux's `mu` settings).

Tokenizers are built from vocabularies written here: the byte-level CLIP BPE of
`tiny_models.clip_vocab`, and a T5 Unigram vocabulary (`t5_vocab`). Zero-initialised output
layers are perturbed (`tiny_models._randomise_output`) so that the model output depends on the
latents, the timestep and the prompt.

Image sizes: SD, SDXL and SD3 default to `IMAGE_SIZE`×`IMAGE_SIZE` pixels (latent `LATENT_SIZE`²,
VAE factor 2). FluxPipeline hard-codes its default size (`default_sample_size = 128`, i.e. 256 px
here and 4096 packed tokens), so pass `height=IMAGE_SIZE, width=IMAGE_SIZE` (`FLUX_SIZE`) to it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch

from tiny_models import _randomise_output, clip_vocab

if TYPE_CHECKING:  # pragma: no cover
    from diffusers import FluxPipeline, StableDiffusion3Pipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

LATENT_SIZE = 8  # latents are LATENT_SIZE × LATENT_SIZE
IMAGE_SIZE = 16  # VAE factor 2
FLUX_SIZE = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}  # FluxPipeline ignores the model's sample size
CLIP_LENGTH = 12  # tokenizer.model_max_length = CLIP max_position_embeddings
CLIP_DIM = 16  # hidden size (and projection size) of every tiny CLIP text encoder
T5_DIM = 32  # T5 d_model = the transformers' joint_attention_dim

# Scheduler and VAE constants copied from the real checkpoints' config files.
SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}
SDXL_VAE_SCALING = 0.13025
SD3_VAE = {"scaling_factor": 1.5305, "shift_factor": 0.0609}
FLUX_VAE = {"scaling_factor": 0.3611, "shift_factor": 0.1159}
FLUX_SHIFT = {
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}


# ---------------------------------------------------------------- tokenizers and text encoders


def clip_tokenizer():
    """A CLIPTokenizer over the tiny byte-level BPE vocabulary, `model_max_length = CLIP_LENGTH`."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=CLIP_LENGTH)


def t5_vocab() -> list[tuple[str, float]]:
    """A T5 Unigram vocabulary: (piece, log-probability), with T5's ids <pad>=0, </s>=1, <unk>=2."""
    words = ["a", "the", "of", "photo", "cat", "dog", "on", "red", "blue"]
    chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'-"
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + w, -3.0 - 0.1 * len(w)) for w in words]
    pieces += [("▁" + c, -6.0) for c in chars if ("▁" + c) not in dict(pieces)]
    pieces += [(c, -5.0) for c in chars]
    return pieces


def t5_tokenizer(model_max_length: int = 512):
    """A T5 tokenizer (transformers' tokenizers-backed T5Tokenizer = T5TokenizerFast) over `t5_vocab()`."""
    from transformers import T5TokenizerFast

    return T5TokenizerFast(vocab=t5_vocab(), extra_ids=0, model_max_length=model_max_length)


def _clip_text_encoder(tokenizer, seed: int, with_projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=CLIP_DIM,
        intermediate_size=2 * CLIP_DIM,
        projection_dim=CLIP_DIM,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=CLIP_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)
    return model.eval()


def _t5_encoder(tokenizer, seed: int):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=T5_DIM,
        d_kv=8,
        d_ff=2 * T5_DIM,
        num_layers=1,
        num_heads=2,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return T5EncoderModel(config).eval()


# ---------------------------------------------------------------- image models


def _vae(latent_channels: int, seed: int, **factors):
    """A two-level AutoencoderKL (factor 2). SD3/Flux VAEs have no (post-)quant convs."""
    from diffusers import AutoencoderKL

    no_quant = latent_channels == 16
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=IMAGE_SIZE,
        use_quant_conv=not no_quant,
        use_post_quant_conv=not no_quant,
        **factors,
    )
    return vae.eval()


def _unet(seed: int, cross_attention_dim: int, sdxl: bool = False, linear_projection: bool = False):
    from diffusers import UNet2DConditionModel

    extra = {}
    if sdxl:
        # time ids (6 numbers, each embedded in addition_time_embed_dim) + text_encoder_2's projection
        addition_time_embed_dim = 4
        extra = {
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": addition_time_embed_dim,
            "projection_class_embeddings_input_dim": 6 * addition_time_embed_dim + CLIP_DIM,
            "transformer_layers_per_block": (1, 2),
        }
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D") if sdxl else ("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D") if sdxl else ("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=2,
        norm_num_groups=4,
        use_linear_projection=sdxl or linear_projection,
        **extra,
    )
    _randomise_output(unet, seed)
    return unet.eval()


# ---------------------------------------------------------------- pipelines


def tiny_sd_pipeline(prediction_type: Literal["epsilon", "v_prediction"] = "epsilon") -> StableDiffusionPipeline:
    """SD 1.5 layout (ε) or SD 2.x layout (v-prediction), with the DDIM config of those checkpoints.

    Scheduler: DDIMScheduler, scaled-linear β ∈ [0.00085, 0.012], `steps_offset=1`,
    `set_alpha_to_one=False`, `clip_sample=False`, `timestep_spacing="leading"` (SD 1.5 and 2.1
    both use the "leading" default).
    """
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    if prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {prediction_type!r}")
    tokenizer = clip_tokenizer()
    scheduler = DDIMScheduler(
        **SD_BETAS,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="leading",
        prediction_type=prediction_type,
    )
    return StableDiffusionPipeline(
        vae=_vae(4, seed=1),
        text_encoder=_clip_text_encoder(tokenizer, seed=2, with_projection=False),
        tokenizer=tokenizer,
        unet=_unet(seed=0, cross_attention_dim=CLIP_DIM, linear_projection=prediction_type == "v_prediction"),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def tiny_sdxl_pipeline() -> StableDiffusionXLPipeline:
    """SDXL base layout: CLIPTextModel + CLIPTextModelWithProjection, UNet with `text_time` conditioning.

    cross_attention_dim = 2·CLIP_DIM (both encoders' penultimate hidden states, concatenated);
    the added embedding takes 6 time ids × `addition_time_embed_dim` + text_encoder_2's projection.
    Scheduler: EulerDiscreteScheduler with SDXL's config (scaled-linear β, `steps_offset=1`,
    `timestep_spacing="leading"`). `force_zeros_for_empty_prompt=True`: without a negative prompt the
    unconditional embeddings are zeros, as in the real SDXL base.
    """
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    tokenizer, tokenizer_2 = clip_tokenizer(), clip_tokenizer()
    scheduler = EulerDiscreteScheduler(
        **SD_BETAS,
        steps_offset=1,
        timestep_spacing="leading",
        interpolation_type="linear",
        use_karras_sigmas=False,
        prediction_type="epsilon",
    )
    return StableDiffusionXLPipeline(
        vae=_vae(4, seed=1, scaling_factor=SDXL_VAE_SCALING),
        text_encoder=_clip_text_encoder(tokenizer, seed=2, with_projection=False),
        text_encoder_2=_clip_text_encoder(tokenizer_2, seed=3, with_projection=True),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=_unet(seed=0, cross_attention_dim=2 * CLIP_DIM, sdxl=True),
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
    )


def tiny_sd3_pipeline(with_t5: bool = False) -> StableDiffusion3Pipeline:
    """SD3 layout: SD3Transformer2DModel (patch 2), two CLIPTextModelWithProjection, optional T5.

    joint_attention_dim = T5_DIM ≥ 2·CLIP_DIM (the CLIP hidden states are concatenated and zero-padded
    to it); pooled_projection_dim = 2·CLIP_DIM (both projections concatenated). Without T5 the pipeline
    uses zeros for the T5 tokens. Scheduler: FlowMatchEulerDiscreteScheduler(shift=3.0), as SD3.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    tokenizer, tokenizer_2 = clip_tokenizer(), clip_tokenizer()
    tokenizer_3 = t5_tokenizer() if with_t5 else None
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=LATENT_SIZE,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=T5_DIM,
        caption_projection_dim=16,  # = num_attention_heads · attention_head_dim
        pooled_projection_dim=2 * CLIP_DIM,
        pos_embed_max_size=16,
    )
    _randomise_output(transformer, 0)
    return StableDiffusion3Pipeline(
        transformer=transformer.eval(),
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=_vae(16, seed=1, **SD3_VAE),
        text_encoder=_clip_text_encoder(tokenizer, seed=2, with_projection=True),
        tokenizer=tokenizer,
        text_encoder_2=_clip_text_encoder(tokenizer_2, seed=3, with_projection=True),
        tokenizer_2=tokenizer_2,
        text_encoder_3=_t5_encoder(tokenizer_3, seed=4) if with_t5 else None,
        tokenizer_3=tokenizer_3,
    )


def tiny_flux_pipeline() -> FluxPipeline:
    """FLUX.1-dev layout: FluxTransformer2DModel with `guidance_embeds=True`, CLIP (pooled) + T5.

    in_channels = 16·4 (2×2 patches packed by the pipeline); joint_attention_dim = T5_DIM;
    pooled_projection_dim = CLIP_DIM; RoPE axes (2, 2, 4) sum to attention_head_dim = 8.
    Scheduler: FlowMatchEulerDiscreteScheduler with Flux's dynamic shifting (the pipeline computes
    `mu` from the packed sequence length). Call it with `**FLUX_SIZE` (see the module docstring).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    tokenizer, tokenizer_2 = clip_tokenizer(), t5_tokenizer()
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=T5_DIM,
        pooled_projection_dim=CLIP_DIM,
        guidance_embeds=True,
        axes_dims_rope=(2, 2, 4),
    )
    _randomise_output(transformer, 0)
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, **FLUX_SHIFT),
        vae=_vae(16, seed=1, **FLUX_VAE),
        text_encoder=_clip_text_encoder(tokenizer, seed=2, with_projection=False),
        tokenizer=tokenizer,
        text_encoder_2=_t5_encoder(tokenizer_2, seed=3),
        tokenizer_2=tokenizer_2,
        transformer=transformer.eval(),
    )
