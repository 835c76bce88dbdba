"""`belm reconstruct | edit | interpolate | sample`: the applications on a diffusers model.

    belm reconstruct --model DIR --image cat.png --steps 10 --method o-belm --out out/ --json
    belm edit --model DIR --image cat.png --source-prompt "a cat" --target-prompt "a dog" --freeze 2 --out out/
    belm interpolate --model DIR --image a.png --image b.png --frames 5 --out out/
    belm sample --model DIR --prompt "a cat" --guidance 7.5 --num 4 --seed 0 --out out/

Each writes PNGs and a metrics.json into --out; with --json the metrics are also printed
as one JSON object on the last line of stdout. Progress bars go to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from belm_core import METHODS

__all__ = ["register"]

SPACINGS = ("linspace", "leading", "trailing")


def _common(p: argparse.ArgumentParser, *, prompt: bool = True) -> None:
    p.add_argument("--model", required=True, help="diffusers pipeline folder (save_pretrained layout) or hub id")
    p.add_argument("--out", required=True, type=Path, help="output folder (created)")
    p.add_argument("--steps", type=int, default=50, help="number of sampling steps N (default 50)")
    p.add_argument("--method", default="o-belm", choices=sorted(METHODS), help="sampler (default o-belm)")
    p.add_argument("--gamma", type=float, default=None, help="BDIA's γ (with --method bdia; default 1)")
    p.add_argument("--p", type=float, default=None, help="EDICT's mixing weight (with --method edict; default 0.93)")
    p.add_argument("--spacing", default=None, choices=SPACINGS, help="timestep spacing (default linspace)")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu … (default cuda when available)")
    p.add_argument("--dtype", default=None, help="model dtype: float32, float16, bfloat16 (default fp16 on CUDA, fp32 on CPU)")
    p.add_argument("--size", type=int, default=None, help="image size in pixels (default the model's native resolution)")
    if prompt:
        p.add_argument("--guidance", type=float, default=1.0,
                       help="classifier-free guidance scale g (default 1: no guidance; e.g. 7.5 for Stable Diffusion)")
        p.add_argument("--negative-prompt", default=None, help="negative prompt for guidance (default the empty prompt)")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object on the last line")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def register(subparsers) -> None:
    """Add the reconstruct, edit, interpolate and sample subcommands."""
    p = subparsers.add_parser("reconstruct", help="invert an image and reconstruct it; report the error",
                              description="Invert an image, sample it back, report latent_mse, pixel_mse and psnr.")
    p.add_argument("--image", required=True, type=Path)
    p.add_argument("--prompt", default=None, help="text prompt (conditional models only)")
    _common(p)
    p.set_defaults(func=run_reconstruct)

    p = subparsers.add_parser("edit", help="edit an image: invert with a source prompt, sample with a target prompt",
                              description="Invert with the source prompt and sample with the target prompt.")
    p.add_argument("--image", required=True, type=Path)
    p.add_argument("--source-prompt", required=True)
    p.add_argument("--target-prompt", required=True)
    p.add_argument("--freeze", type=int, default=0,
                   help="leave the last K inversion steps out (start sampling K steps below the top; default 0)")
    _common(p)
    p.set_defaults(func=run_edit)

    p = subparsers.add_parser("interpolate", help="slerp between the inverted latents of two images",
                              description="Invert two images, slerp their latents, sample the frames.")
    p.add_argument("--image", required=True, type=Path, action="append", help="give twice: --image A --image B")
    p.add_argument("--frames", type=int, default=5, help="number of frames including both ends (default 5)")
    p.add_argument("--prompt", default=None, help="text prompt (conditional models only)")
    _common(p)
    p.set_defaults(func=run_interpolate)

    p = subparsers.add_parser("sample", help="sample images from noise", description="Sample a grid of images.")
    p.add_argument("--prompt", default=None, help="text prompt (conditional models only)")
    p.add_argument("--num", type=int, default=4, help="number of images (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial noise (default 0)")
    _common(p)
    p.set_defaults(func=run_sample)


# ---------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------
def _setup(args):
    """Validate cheap arguments first, then load the model. Returns (pipe, method, size)."""
    from backends.unet import load_pipeline

    from .apps import make_method

    if args.steps < 1:
        raise ValueError(f"--steps={args.steps} must be a positive integer")
    method = make_method(args.method, gamma=args.gamma, p=args.p)
    if args.size is not None and args.size < 1:
        raise ValueError(f"--size={args.size} must be a positive integer")
    guidance = getattr(args, "guidance", 1.0)
    if not math.isfinite(guidance) or guidance < 0:
        raise ValueError(f"--guidance={guidance} must be a finite number ≥ 0")
    if guidance < 1 and getattr(args, "negative_prompt", None) is None and _has_prompt(args):
        raise ValueError(f"--guidance={guidance} < 1 needs a --negative-prompt (no negative prompt is defined)")
    pipe = load_pipeline(args.model, device=args.device, dtype=args.dtype)
    return pipe, method, (args.size if args.size is not None else pipe.resolution)


def _has_prompt(args) -> bool:
    return any(getattr(args, k, None) is not None for k in ("prompt", "source_prompt", "target_prompt"))


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # psnr of a zero error: JSON has no infinity
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _finish(args, metrics: dict, files: list[Path]) -> int:
    out: Path = args.out
    record = _jsonable({"command": args.command, "model": str(args.model), **metrics,
                        "files": [f.name for f in files]})
    (out / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")
    if not args.json:
        for k, v in record.items():
            if k != "files":
                print(f"{k}: {v}")
        for f in files:
            print(f"wrote {f}")
        print(f"wrote {out / 'metrics.json'}")
    else:
        print(json.dumps(record))
    return 0


def _outdir(args) -> Path:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


# ---------------------------------------------------------------------------------
# the four commands
# ---------------------------------------------------------------------------------
def run_reconstruct(args) -> int:
    from . import apps
    from .images import image_strip, load_image, save_image

    pipe, method, size = _setup(args)
    image = load_image(args.image, size)
    result = apps.reconstruct(
        pipe, image, prompt=args.prompt, negative_prompt=args.negative_prompt, guidance_scale=args.guidance,
        steps=args.steps, method=method, spacing=args.spacing, progress=not args.no_progress,
    )
    out = _outdir(args)
    files = [
        save_image(result.image, out / "input.png"),
        save_image(result.reconstruction, out / "reconstruction.png"),
        save_image(image_strip([result.image, result.reconstruction]), out / "comparison.png"),
    ]
    return _finish(args, result.metrics, files)


def run_edit(args) -> int:
    from . import apps
    from .images import image_strip, load_image, save_image

    from belm_core.solver import until_range

    from .apps import make_method

    if args.steps >= 1:  # (_setup reports a bad --steps)
        low, N = until_range(make_method(args.method, gamma=args.gamma, p=args.p), args.steps)
        if not 0 <= args.freeze <= N - low:
            raise ValueError(
                f"--freeze={args.freeze} must be in [0, {N - low}] (steps={N}; the method keeps at least {low} "
                "inversion step(s))"
            )
    pipe, method, size = _setup(args)
    image = load_image(args.image, size)
    result = apps.edit(
        pipe, image, args.source_prompt, args.target_prompt, negative_prompt=args.negative_prompt,
        guidance_scale=args.guidance, freeze=args.freeze, steps=args.steps, method=method, spacing=args.spacing,
        progress=not args.no_progress,
    )
    out = _outdir(args)
    files = [
        save_image(result.image, out / "source.png"),
        save_image(result.reconstruction, out / "reconstruction.png"),
        save_image(result.edited, out / "edit.png"),
        save_image(image_strip([result.image, result.reconstruction, result.edited]), out / "comparison.png"),
    ]
    return _finish(args, result.metrics, files)


def run_interpolate(args) -> int:
    from . import apps
    from .images import image_strip, load_image, save_image

    if len(args.image) != 2:
        raise ValueError(f"--image must be given exactly twice (A and B), got {len(args.image)}")
    pipe, method, size = _setup(args)
    a, b = (load_image(path, size) for path in args.image)
    result = apps.interpolate(
        pipe, a, b, frames=args.frames, prompt=args.prompt, negative_prompt=args.negative_prompt,
        guidance_scale=args.guidance, steps=args.steps, method=method, spacing=args.spacing,
        progress=not args.no_progress,
    )
    out = _outdir(args)
    files = [save_image(f, out / f"frame_{k:03d}.png") for k, f in enumerate(result.frames)]
    files.append(save_image(image_strip(result.frames), out / "strip.png"))
    return _finish(args, {**result.metrics, "weights": result.weights}, files)


def run_sample(args) -> int:
    from . import apps
    from .images import image_grid, save_image

    pipe, method, size = _setup(args)
    images = apps.sample(
        pipe, num=args.num, seed=args.seed, prompt=args.prompt, negative_prompt=args.negative_prompt,
        guidance_scale=args.guidance, steps=args.steps, method=method, spacing=args.spacing,
        size=args.size, progress=not args.no_progress,
    )
    out = _outdir(args)
    files = [save_image(im, out / f"sample_{k:03d}.png") for k, im in enumerate(images)]
    files.append(save_image(image_grid(images), out / "grid.png"))
    metrics = {"num": args.num, "seed": args.seed, "method": method.signature(), "steps": args.steps,
               "prompt": args.prompt, "guidance_scale": args.guidance}
    return _finish(args, metrics, files)
