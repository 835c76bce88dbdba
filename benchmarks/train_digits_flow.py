"""Train a small class-conditional rectified-flow model on scikit-learn's 8×8 digits.

    python -m benchmarks.train_digits_flow [--steps 1500] [--seed 0] [--force]

Data, split, network and optimiser are the DDPM's (`benchmarks.train_digits`: the same
`load_split`, `build_unet` and training loop `fit`): diffusers `UNet2DModel` at 8×8,
channels 32/64, labels 0…9 plus the null label 10 learned by label dropout (0.1),
AdamW lr 2e−3 with warm-up and cosine decay, batch 128, EMA 0.995, one torch thread.

Only the objective differs (rectified flow / flow matching, as SD3 and Flux are trained,
docs/math.md §11): with x_0 a digit, n ~ N(0, I) and σ ∈ (0, 1),

    x_σ = (1 − σ) x_0 + σ n,     loss = ‖v_θ(x_σ, 1000·σ, label) − (n − x_0)‖²,

the network seeing the model time t = 1000·σ (a float, as SD3 and Flux transformers
receive it). σ is drawn logit-normal (σ = sigmoid(z), z ~ N(0, 1), SD3's default) or
uniform (`--sigma-sampling uniform`).

The checkpoint goes to `benchmarks/.cache/digits_flow/` (git-ignored): unet/ (the EMA
weights, `save_pretrained`), scheduler/ (a `FlowMatchEulerDiscreteScheduler` config,
shift 1) and meta.json; `ensure_model()` reuses a cached checkpoint whose settings match.
`DigitsVelocity` turns the network into the v_fn(x, t) → v that `belm_core.Solver`
(prediction="velocity") and the peers of `benchmarks.flow_peers` take.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .train_digits import _matches, fit, write_meta

CACHE = Path(__file__).resolve().parent / ".cache" / "digits_flow"
SigmaSampling = Literal["logit-normal", "uniform"]


@dataclass(frozen=True)
class FlowTrainConfig:
    steps: int = 1500
    batch_size: int = 128
    lr: float = 2e-3
    seed: int = 0
    label_dropout: float = 0.1
    ema: float = 0.995
    channels: tuple = (32, 64)
    sigma_sampling: SigmaSampling = "logit-normal"
    num_train_timesteps: int = 1000  # model time t = T·σ
    threads: int = 1

    def __post_init__(self):
        if self.sigma_sampling not in ("logit-normal", "uniform"):
            raise ValueError(f"sigma_sampling={self.sigma_sampling!r} must be 'logit-normal' or 'uniform'")


def draw_sigma(n: int, sampling: SigmaSampling):
    """n training σ in (0, 1): sigmoid(N(0, 1)) ("logit-normal") or U(0, 1) ("uniform")."""
    import torch

    if sampling == "logit-normal":
        return torch.sigmoid(torch.randn(n))
    if sampling == "uniform":
        return torch.rand(n)
    raise ValueError(f"sampling={sampling!r} must be 'logit-normal' or 'uniform'")


def flow_loss(cfg: FlowTrainConfig):
    """loss_fn(unet, x0, y) for `fit`: MSE between v_θ(x_σ, T·σ, y) and n − x0."""
    import torch

    def loss(unet, x0, y):
        sigma = draw_sigma(len(x0), cfg.sigma_sampling)
        noise = torch.randn_like(x0)
        s = sigma.view(-1, 1, 1, 1)
        x_sigma = (1 - s) * x0 + s * noise
        v = unet(x_sigma, sigma * cfg.num_train_timesteps, class_labels=y).sample
        return torch.nn.functional.mse_loss(v, noise - x0)

    return loss


def train(cfg: FlowTrainConfig = FlowTrainConfig(), out: Path = CACHE, progress: bool = True) -> dict:
    """Train and save; returns the meta dict written to out/meta.json."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    run = fit(cfg, flow_loss(cfg), "train digits flow", progress)
    out.mkdir(parents=True, exist_ok=True)
    run.ema.save_pretrained(str(out / "unet"))
    FlowMatchEulerDiscreteScheduler(num_train_timesteps=cfg.num_train_timesteps, shift=1.0).save_pretrained(
        str(out / "scheduler"))
    return write_meta(out, cfg, run, "flow_velocity")


def ensure_model(cfg: FlowTrainConfig = FlowTrainConfig(), out: Path = CACHE, progress: bool = True) -> Path:
    """Path of a checkpoint trained with `cfg`, training it first when the cache lacks one."""
    if not _matches(out, cfg):
        train(cfg, out, progress)
    return out


def load_model(path: Path = CACHE):
    """(unet in eval mode without gradients, meta dict)."""
    from diffusers import UNet2DModel

    unet = UNet2DModel.from_pretrained(str(path / "unet")).eval()
    unet.requires_grad_(False)
    return unet, json.loads((path / "meta.json").read_text())


class DigitsVelocity:
    """v_fn(x, t) of the digits flow network with one class label per batch row.

    x (B, 1, 8, 8) of any float dtype is cast to the network's dtype in contiguous
    layout and the network runs in eval mode under `torch.no_grad()` at the float model
    time t = 1000·σ (fractional times, e.g. RF-Solver's half steps, are passed as they
    are); v comes back in x's dtype (float64 for the solver state). Deterministic: the
    same input gives the same output bit for bit, which exact inversion needs. `nfe`
    counts calls (one batched network call each).
    """

    def __init__(self, unet, labels):
        import torch

        if unet.training:
            unet.eval()
        self.unet = unet
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.dtype = next(unet.parameters()).dtype
        self.nfe = 0

    def __call__(self, x, t):
        import torch

        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch tensor, got {type(x).__name__}")
        if x.shape[0] != len(self.labels):
            raise ValueError(f"x has batch size {x.shape[0]}; the labels have {len(self.labels)}")
        xm = x.to(dtype=self.dtype, memory_format=torch.contiguous_format)
        t = float(t.item() if isinstance(t, torch.Tensor) else t)
        with torch.no_grad():
            v = self.unet(xm, torch.full((x.shape[0],), t, dtype=self.dtype), class_labels=self.labels).sample
        self.nfe += 1
        return v.to(dtype=x.dtype)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_digits_flow", description=__doc__.splitlines()[0])
    d = FlowTrainConfig()
    p.add_argument("--steps", type=int, default=d.steps, help=f"optimiser steps (default {d.steps})")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--sigma-sampling", choices=("logit-normal", "uniform"), default=d.sigma_sampling)
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads")
    p.add_argument("--out", type=Path, default=CACHE)
    p.add_argument("--force", action="store_true", help="retrain even if a matching checkpoint is cached")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    cfg = FlowTrainConfig(steps=a.steps, batch_size=a.batch_size, lr=a.lr, seed=a.seed,
                          sigma_sampling=a.sigma_sampling, threads=a.threads)
    if not a.force and _matches(a.out, cfg):
        print(f"cached checkpoint with these settings: {a.out} (use --force to retrain)")
        return 0
    meta = train(cfg, a.out, progress=not a.no_progress)
    print(f"saved {a.out}  ({meta['train_seconds']:.0f} s, final loss {meta['final_loss_avg100']:.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
