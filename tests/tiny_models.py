"""Tiny, randomly initialised diffusers models, saved with `save_pretrained` (no downloads).

`save_pixel_ddpm(folder, prediction_type=...)` writes a DDPM pipeline (UNet2DModel + scheduler);
`save_tiny_sd(folder, prediction_type=...)` a Stable-Diffusion layout (UNet2DConditionModel,
AutoencoderKL, CLIPTextModel, a CLIP tokenizer built from a vocabulary written here, scheduler).
Weights are seeded, and the UNets' zero-initialised output convolutions are re-randomised so
that ε actually depends on x, t and the prompt.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

PIXEL_SIZE = 16  # pixel DDPM: 16×16 RGB
SD_LATENT = 8  # tiny SD: 8×8×4 latents, VAE factor 2 → 16×16 images


def _randomise_output(module: torch.nn.Module, seed: int) -> None:
    """Give every parameter a small random perturbation (diffusers zero-inits some outputs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def pixel_unet(seed: int = 0):
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=PIXEL_SIZE,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        attention_head_dim=4,
    )
    _randomise_output(unet, seed)
    return unet.eval()


def save_pixel_ddpm(folder: Path, prediction_type: str = "epsilon", beta_schedule: str = "linear") -> Path:
    from diffusers import DDPMPipeline, DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule, prediction_type=prediction_type)
    DDPMPipeline(unet=pixel_unet(), scheduler=scheduler).save_pretrained(folder)
    return Path(folder)


def tiny_tokenizer(folder: Path, model_max_length: int = 12):
    """A byte-level CLIP BPE tokenizer: the 256 byte symbols (plain and word-final) and a few merges."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocab()
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    tokenizer = CLIPTokenizer.from_pretrained(folder, model_max_length=model_max_length)
    return tokenizer, len(vocab)


def clip_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The tiny CLIP BPE vocabulary (token → id) and its merges, shared by every tiny CLIP tokenizer."""
    symbols = _byte_symbols()
    vocab: dict[str, int] = {}
    for s in symbols + [s + "</w>" for s in symbols]:
        vocab.setdefault(s, len(vocab))
    merges = [("c", "a"), ("ca", "t</w>"), ("d", "o"), ("do", "g</w>")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab, merges


def _byte_symbols() -> list[str]:
    """Byte-level BPE's printable stand-in for each of the 256 bytes (printable bytes map to themselves)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return [out[b] for b in range(256)]


def save_tiny_sd(folder: Path, prediction_type: str = "epsilon") -> Path:
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = Path(folder)
    tokenizer, vocab_size = tiny_tokenizer(folder.parent / (folder.name + "_vocab"))
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=SD_LATENT,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=2,
        norm_num_groups=4,
    )
    _randomise_output(unet, 1)
    torch.manual_seed(1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=SD_LATENT * 2,
    )
    torch.manual_seed(2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=12,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )
    pipe = StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder


def save_test_image(path: Path, size: tuple[int, int] = (24, 20), seed: int = 0) -> Path:
    """A smooth colour image (not square, so cropping is exercised)."""
    import numpy as np
    from PIL import Image

    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, 3)
    img = np.stack(
        [127.5 + 120 * np.sin(xx / (3 + c) + yy / (4 + c) + phase[c]) for c in range(3)], axis=-1
    ).astype(np.uint8)
    Image.fromarray(img).save(path)
    return Path(path)
