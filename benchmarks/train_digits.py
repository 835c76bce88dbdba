"""Train a small class-conditional pixel-space DDPM on scikit-learn's 8×8 digits.

    python -m benchmarks.train_digits [--steps 1500] [--seed 0] [--force]

The data (sklearn.datasets.load_digits, bundled with scikit-learn, no download) are
1797 grey 8×8 images with values 0…16, mapped to [−1, 1]. A stratified 80/20 split
(seed 0) gives a train split (used for the DDPM and for the benchmark's digit
classifier) and a held-out test split (used only for evaluation).

Model: diffusers `UNet2DModel` at 8×8 (two resolution levels 8 → 4, channels 32/64,
one ResNet per level, no attention), ε-prediction, class-conditional through
`num_class_embeds = 11`: labels 0…9 plus a null label 10. During training the label
is replaced by the null label with probability `--label-dropout` (0.1), so the model
also learns the unconditional ε and classifier-free guidance works.
Noise schedule: DDPM linear β from 1e−4 to 0.02 over T = 1000 steps (diffusers'
DDPMScheduler defaults), or with `--beta-schedule scaled_linear` Stable Diffusion's
scaled-linear β (√β linear from √0.00085 to √0.012; σ̄ ≤ 14.6 instead of 157), cached in
`benchmarks/.cache/digits_sl/`, or with `--beta-schedule squaredcos_cap_v2` the cosine ᾱ
(σ̄(T − 1) ≈ 2·10⁴), cached in `benchmarks/.cache/digits_cos/`; sampling that one from T − 1
needs x̂0 clipped to [−1, 1] inside the model function, as DDPMScheduler's `clip_sample` does,
or x̂0 = x̄ − σ̄ε multiplies the network's ε error by 2·10⁴ (docs/math.md §26). Loss: MSE between ε and the prediction at uniform t.
An exponential moving average of the weights (decay 0.995) is what gets saved.
AdamW, lr 2e−3 with 5 % warm-up and cosine decay, batch 128, gradient clipping at 1.
One torch thread: faster than two for this tiny model and immune to oversubscription
on a busy machine (≈ 10 steps/s on an idle 2-core CPU, so the default 1500 steps take
about 2.5 minutes).

The checkpoint is written with `DDPMPipeline.save_pretrained` (model_index.json,
unet/, scheduler/) to `benchmarks/.cache/digits/` (git-ignored) together with
`meta.json` (seed, steps, loss curve, wall time, split indices). `ensure_model()`
reuses a cached checkpoint whose settings match, and trains otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

CACHE = Path(__file__).resolve().parent / ".cache" / "digits"
CACHE_SL = Path(__file__).resolve().parent / ".cache" / "digits_sl"
CACHE_COS = Path(__file__).resolve().parent / ".cache" / "digits_cos"
#: diffusers `DDPMScheduler` arguments per β schedule: DDPM's linear default, Stable Diffusion's scaled-linear,
#: the cosine ᾱ of Nichol & Dhariwal (β capped at 0.999)
BETA_SCHEDULES = {"linear": {"beta_schedule": "linear"},
                  "scaled_linear": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
                  "squaredcos_cap_v2": {"beta_schedule": "squaredcos_cap_v2"}}
#: the default checkpoint folder per β schedule
CACHES = {"linear": CACHE, "scaled_linear": CACHE_SL, "squaredcos_cap_v2": CACHE_COS}
NULL_LABEL = 10  # the "no class" label used for classifier-free guidance


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1500
    batch_size: int = 128
    lr: float = 2e-3
    seed: int = 0
    label_dropout: float = 0.1
    ema: float = 0.995
    channels: tuple = (32, 64)
    num_train_timesteps: int = 1000
    threads: int = 1  # 1 thread: faster than 2 for this tiny model and immune to oversubscription
    beta_schedule: str = "linear"  # a key of BETA_SCHEDULES

    def __post_init__(self):
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule={self.beta_schedule!r} must be one of {sorted(BETA_SCHEDULES)}")


def cache_for(beta_schedule: str) -> Path:
    """The default checkpoint folder of a digits DDPM trained on `beta_schedule`."""
    return CACHES.get(beta_schedule, CACHE)


@dataclass
class Fit:
    """What `fit` returns: the EMA model (eval mode), the per-step losses, the wall time
    in seconds, the train-split size and the held-out indices."""

    ema: Any
    losses: list
    seconds: float
    n_train: int
    test_indices: np.ndarray


def load_split(seed: int = 0, test_size: float = 0.2):
    """(x_train, y_train, x_test, y_test, idx_train, idx_test); images (n, 1, 8, 8) in [−1, 1], float32."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0) * 2.0 - 1.0
    idx = np.arange(len(x))
    i_tr, i_te = train_test_split(idx, test_size=test_size, random_state=seed, stratify=d.target)
    return x[i_tr, None], d.target[i_tr], x[i_te, None], d.target[i_te], i_tr, i_te


def build_unet(cfg: TrainConfig):
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=tuple(cfg.channels),
        down_block_types=("DownBlock2D",) * len(cfg.channels),
        up_block_types=("UpBlock2D",) * len(cfg.channels),
        norm_num_groups=8,
        num_class_embeds=NULL_LABEL + 1,
    )


def _matches(path: Path, cfg: TrainConfig) -> bool:
    meta = path / "meta.json"
    if not meta.is_file() or not (path / "unet").is_dir():
        return False
    try:
        saved = json.loads(meta.read_text())["config"]
    except (ValueError, KeyError):
        return False
    want = json.loads(json.dumps(asdict(cfg)))
    if "beta_schedule" in want:  # DDPM checkpoints from before the field were trained on linear
        saved.setdefault("beta_schedule", "linear")
    ignore = ("threads",)  # does not change the model
    return {k: v for k, v in saved.items() if k not in ignore} == {k: v for k, v in want.items() if k not in ignore}


def fit(cfg, loss_fn: Callable, desc: str, progress: bool = True) -> Fit:
    """The training loop both digits models share: AdamW with warm-up and cosine decay,
    gradient clipping at 1, label dropout to the null label, an EMA of the weights.

    Each step draws a batch of train-split digits x0 (n, 1, 8, 8) and labels y (those
    with probability `cfg.label_dropout` set to the null label) and minimises
    `loss_fn(unet, x0, y)`; the loss function draws its own noise and times from
    torch's global generator (seeded with `cfg.seed`). `cfg` needs the fields of
    `TrainConfig` except `num_train_timesteps`."""
    import torch
    from tqdm.auto import tqdm

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    x_tr, y_tr, _, _, i_tr, i_te = load_split()
    x_tr_t, y_tr_t = torch.from_numpy(x_tr), torch.from_numpy(y_tr.astype(np.int64))

    unet = build_unet(cfg)
    ema = build_unet(cfg)
    ema.load_state_dict(unet.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.0)
    warmup = max(1, cfg.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps))
    )
    losses = []
    t0 = time.perf_counter()
    unet.train()
    bar = tqdm(range(cfg.steps), desc=desc, disable=not progress)
    for step in bar:
        idx = torch.from_numpy(rng.integers(0, len(x_tr), cfg.batch_size))
        x0, y = x_tr_t[idx], y_tr_t[idx].clone()
        y[torch.from_numpy(rng.random(cfg.batch_size) < cfg.label_dropout)] = NULL_LABEL
        loss = loss_fn(unet, x0, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            d = min(cfg.ema, (1 + step) / (10 + step))
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.mul_(d).add_(p.detach(), alpha=1 - d)
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    ema.eval()
    return Fit(ema=ema, losses=losses, seconds=time.perf_counter() - t0, n_train=len(i_tr), test_indices=i_te)


def write_meta(out: Path, cfg, run: Fit, prediction_type: str) -> dict:
    """Write and return out/meta.json: the config, loss curve, wall time and split of a `fit` run."""
    meta = {
        "config": json.loads(json.dumps(asdict(cfg))),
        "train_seconds": run.seconds,
        "final_loss_avg100": float(np.mean(run.losses[-100:])),
        "loss_every_20": [float(np.mean(run.losses[i : i + 20])) for i in range(0, len(run.losses), 20)],
        "n_train": int(run.n_train),
        "n_test": int(len(run.test_indices)),
        "test_indices": run.test_indices.tolist(),
        "null_label": NULL_LABEL,
        "prediction_type": prediction_type,
        "torch_threads": cfg.threads,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


def train(cfg: TrainConfig = TrainConfig(), out: Path = CACHE, progress: bool = True) -> dict:
    """Train and save; returns the meta dict written to out/meta.json."""
    import torch
    from diffusers import DDPMPipeline, DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, **BETA_SCHEDULES[cfg.beta_schedule])
    abar = scheduler.alphas_cumprod.float()

    def ddpm_loss(unet, x0, y):  # ε-prediction at uniform integer t
        t = torch.randint(0, cfg.num_train_timesteps, (len(x0),))
        noise = torch.randn_like(x0)
        a = abar[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        return torch.nn.functional.mse_loss(unet(xt, t, class_labels=y).sample, noise)

    run = fit(cfg, ddpm_loss, "train digits DDPM", progress)
    out.mkdir(parents=True, exist_ok=True)
    DDPMPipeline(unet=run.ema, scheduler=scheduler).save_pretrained(str(out))
    return write_meta(out, cfg, run, "epsilon")


def ensure_model(cfg: TrainConfig = TrainConfig(), out: Path = CACHE, progress: bool = True) -> Path:
    """Path of a checkpoint trained with `cfg`, training it first when the cache lacks one."""
    if not _matches(out, cfg):
        train(cfg, out, progress)
    return out


def load_model(path: Path = CACHE):
    """(unet in eval mode, alphas_cumprod float64 numpy, meta dict)."""
    from diffusers import DDPMScheduler, UNet2DModel

    unet = UNet2DModel.from_pretrained(str(path / "unet")).eval()
    unet.requires_grad_(False)
    sch = DDPMScheduler.from_pretrained(str(path / "scheduler"))
    betas = sch.betas.double().numpy()
    abar = np.exp(np.cumsum(np.log1p(-betas)))
    return unet, abar, json.loads((path / "meta.json").read_text())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_digits", description=__doc__.splitlines()[0])
    d = TrainConfig()
    p.add_argument("--steps", type=int, default=d.steps, help=f"optimiser steps (default {d.steps})")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads")
    p.add_argument("--beta-schedule", choices=sorted(BETA_SCHEDULES), default=d.beta_schedule,
                   help="β schedule of the training noise (default linear)")
    p.add_argument("--out", type=Path, default=None, help="checkpoint folder (default: benchmarks/.cache/digits, "
                   "digits_sl for scaled_linear, digits_cos for squaredcos_cap_v2)")
    p.add_argument("--force", action="store_true", help="retrain even if a matching checkpoint is cached")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    cfg = TrainConfig(steps=a.steps, batch_size=a.batch_size, lr=a.lr, seed=a.seed, threads=a.threads,
                      beta_schedule=a.beta_schedule)
    a.out = a.out or cache_for(cfg.beta_schedule)
    if not a.force and _matches(a.out, cfg):
        print(f"cached checkpoint with these settings: {a.out} (use --force to retrain)")
        return 0
    meta = train(cfg, a.out, progress=not a.no_progress)
    print(f"saved {a.out}  ({meta['train_seconds']:.0f} s, final loss {meta['final_loss_avg100']:.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
