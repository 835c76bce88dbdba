"""`belm reconstruct | edit | interpolate | sample`: the applications on a diffusers model.

    belm reconstruct --model DIR --image cat.png --steps 10 --method o-belm --out out/ --json
    belm edit --model DIR --image cat.png --source-prompt "a cat" --target-prompt "a dog" --freeze 2 --out out/
    belm interpolate --model DIR --image a.png --image b.png --frames 5 --out out/
    belm sample --model DIR --prompt "a cat" --guidance 7.5 --num 4 --seed 0 --out out/
    belm reconstruct --model FLUX_DIR --image cat.png --prompt "a cat" --guidance 3.5 --size 1024 --out out/

Models: Stable Diffusion 1.x/2.x, SDXL, SD3/3.5, Flux and pixel DDPM/DDIM pipelines. For SD3,
--guidance is true classifier-free guidance (as SD1/SDXL); for Flux it is the distilled
guidance the transformer embeds (FLUX.1-dev: about 3.5; any value ≥ 0, no --negative-prompt).
Flux's grid depends on the image size (--size, default the pipeline's 1024 px).

Each writes PNGs and a metrics.json into --out; with --json the metrics are also printed
as one JSON object on the last line of stdout. Progress bars go to stderr.

Arguments that need no model (--out included) are checked before the model is loaded. The
outputs are written into a staging folder next to --out and moved in when the run has
finished (`belm.outputs.OutputFolder`): --out never holds a mix of two runs, a non-empty
--out needs --overwrite, and a failed or interrupted run leaves its previous contents as they were.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from belm_core import METHODS
from belm_core.schedules import DiscreteVP

__all__ = ["register"]


def _common(p: argparse.ArgumentParser, *, prompt: bool = True) -> None:
    p.add_argument("--model", required=True,
                   help="diffusers pipeline folder (save_pretrained layout) or hub id: Stable Diffusion 1.x/2.x, SDXL, "
                        "SD3, Flux, pixel DDPM/DDIM")
    p.add_argument("--out", required=True, help="output folder (created; a non-empty one needs --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the contents of a non-empty --out (only once the new run has finished)")
    p.add_argument("--steps", type=int, default=50, help="number of sampling steps N (default 50)")
    p.add_argument("--method", default=None, choices=sorted(METHODS),
                   help="sampler (default: o-belm on the model's own grid; for `sample` on DDPM/SD-type models "
                        "the recommended low-step exact sampler, belm_core.recommended: dpl-ob-curv (gain 0.75, reach 0.5 on cosine), trailing-tail grid (long-start on DDPM-linear at 5-20 steps), "
                        "predictor-corrector start; on flow models o-belm with the predictor-corrector start)")
    p.add_argument("--gamma", type=float, default=None, help="BDIA's γ (with --method bdia; default 1)")
    p.add_argument("--p", type=float, default=None, help="EDICT's mixing weight (with --method edict; default 0.93)")
    p.add_argument("--spacing", default=None, metavar="SPACING",
                   help=f"timestep spacing, one of {', '.join(DiscreteVP.spacings)} (default the timestep_spacing of "
                        "the model's scheduler config; SD3/Flux: their pipelines' own grid, linspace)")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu … (default cuda when available)")
    p.add_argument("--dtype", default=None, help="model dtype: float32, float16, bfloat16 (default fp16 on CUDA, fp32 on CPU)")
    p.add_argument("--size", type=int, default=None, help="image size in pixels (default the model's native resolution)")
    if prompt:
        p.add_argument("--guidance", type=float, default=1.0,
                       help="classifier-free guidance scale g (default 1: no guidance; e.g. 7.5 for Stable Diffusion); "
                            "for Flux the distilled guidance (e.g. 3.5 for FLUX.1-dev)")
        p.add_argument("--negative-prompt", default=None, help="negative prompt for guidance (default the empty prompt)")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object on the last line")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _inversion(p: argparse.ArgumentParser) -> None:
    p.add_argument("--inversion-substeps", type=int, default=1, metavar="K",
                   help="take inversion's first step x_0 -> x_1 in K graded DDIM sub-steps (up to K - 1 more model "
                        "calls, a latent closer to the exact ODE inversion, docs/math.md §28; default 1, the paper's "
                        "single step; needs room below the grid's last model time, e.g. --spacing trailing)")


def register(subparsers) -> None:
    """Add the reconstruct, edit, interpolate and sample subcommands."""
    p = subparsers.add_parser("reconstruct", help="invert an image and reconstruct it; report the error",
                              description="Invert an image, sample it back, report latent_mse, pixel_mse and psnr.")
    p.add_argument("--image", required=True, type=Path)
    p.add_argument("--prompt", default=None, help="text prompt (conditional models only)")
    _common(p)
    _inversion(p)
    p.set_defaults(func=run_reconstruct)

    p = subparsers.add_parser("edit", help="edit an image: invert with a source prompt, sample with a target prompt",
                              description="Invert with the source prompt and sample with the target prompt.")
    p.add_argument("--image", required=True, type=Path)
    p.add_argument("--source-prompt", required=True)
    p.add_argument("--target-prompt", required=True)
    p.add_argument("--freeze", type=int, default=0,
                   help="leave the last K inversion steps out (start sampling K steps below the top; default 0)")
    _common(p)
    _inversion(p)
    p.set_defaults(func=run_edit)

    p = subparsers.add_parser("interpolate", help="slerp between the inverted latents of two images",
                              description="Invert two images, slerp their latents, sample the frames.")
    p.add_argument("--image", required=True, type=Path, action="append", help="give twice: --image A --image B")
    p.add_argument("--frames", type=int, default=5, help="number of frames including both ends (default 5)")
    p.add_argument("--prompt", default=None, help="text prompt (conditional models only)")
    _common(p)
    _inversion(p)
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
def _prepare(args, images: tuple = ()):
    """Check what needs no model, --out last; returns (method, OutputFolder).

    --out is checked by creating its staging folder: a path that cannot be written fails
    here, before any work. The caller runs inside `with out:` so that any later failure
    removes the staging folder and leaves --out as it was.
    """
    from backends.guidance import check_guidance
    from backends.unet import resolve_device, resolve_dtype

    from .apps import make_method
    from .images import check_image_path
    from .outputs import OutputFolder

    if args.steps < 1:
        raise ValueError(f"--steps={args.steps} must be a positive integer")
    if getattr(args, "inversion_substeps", 1) < 1:
        raise ValueError(f"--inversion-substeps={args.inversion_substeps} must be a positive integer (1: the paper's single step)")
    method = make_method(args.method, gamma=args.gamma, p=args.p)
    if args.size is not None and args.size < 1:
        raise ValueError(f"--size={args.size} must be a positive integer")
    if hasattr(args, "guidance"):  # the model-dependent rule (g ≠ 1 needs a condition) comes after loading
        # Flux's distilled guidance is an input of the model: g < 1 needs no negative branch there
        distilled = _pipeline_class(args.model) == "FluxPipeline"
        check_guidance(args.guidance, negative_given=distilled or args.negative_prompt is not None, conditional=True,
                       name="--guidance", negative_name="--negative-prompt")
    resolve_dtype(args.dtype, resolve_device(args.device))
    for path in images:
        check_image_path(path)
    return method, OutputFolder(args.out, overwrite=args.overwrite, option="--out")


def _pipeline_class(model) -> str | None:
    """`_class_name` of a local pipeline folder's model_index.json (None when it cannot be read:
    the loader reports that)."""
    try:
        return json.loads((Path(model).expanduser() / "model_index.json").read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None


def _setup(args, method):
    """Load the model; returns (pipe, options, size), pipe the `backends.pipelines` adapter of the
    loaded diffusers pipeline. The options are checked against its schedule (steps, spacing)
    before any work."""
    from backends import unet
    from backends.pipelines import adapt

    from .apps import SamplingOptions

    pipe = adapt(unet.load_pipeline(args.model, device=args.device, dtype=args.dtype, progress=not args.no_progress))
    pipe.pipe.set_progress_bar_config(disable=True)  # belm's own loops show progress, not the pipeline's
    options = SamplingOptions(
        prompt=getattr(args, "prompt", None), negative_prompt=getattr(args, "negative_prompt", None),
        guidance_scale=getattr(args, "guidance", 1.0), steps=args.steps, method=method, spacing=args.spacing,
        progress=not args.no_progress, inversion_substeps=getattr(args, "inversion_substeps", 1),
    )
    size = args.size if args.size is not None else pipe.resolution
    pipe.solver(options.steps, options.method, options.spacing, size=size, inversion_substeps=options.inversion_substeps)
    if pipe.family == "flux" and hasattr(args, "guidance"):
        from backends.transformer import check_flux_guidance

        check_flux_guidance(args.guidance, guidance_embeds=bool(pipe.transformer.config.guidance_embeds), name="--guidance")
        if args.negative_prompt is not None:
            raise ValueError(
                "--negative-prompt: Flux takes no negative prompt (its --guidance is the distilled guidance; "
                "FluxPipeline's true CFG is not supported)"
            )
    return pipe, options, size


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # psnr of a zero error: JSON has no infinity
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _finish(args, out, metrics: dict, images: dict) -> int:
    """Write `images` (name → tensor) and metrics.json into the staging folder, move it into
    --out, then report. A write error (full disk, permissions) is one line; --out keeps its
    previous contents."""
    from .images import save_image

    record = _jsonable({"command": args.command, "model": str(args.model), **metrics, "files": list(images)})
    name = "metrics.json"
    try:
        for name, image in images.items():
            save_image(image, out.file(name))
        name = "metrics.json"
        out.file(name).write_text(json.dumps(record, indent=2) + "\n")
        name = "the output folder"
        out.commit()
    except OSError as err:
        reason = err.strerror or str(err) or type(err).__name__
        raise ValueError(
            f"could not write {name} into --out {str(out.target)!r}: {reason}; "
            "its previous contents are unchanged"
        ) from None
    if not args.json:
        for k, v in record.items():
            if k != "files":
                print(f"{k}: {v}")
        for f in images:
            print(f"wrote {out.final(f)}")
        print(f"wrote {out.final('metrics.json')}")
    else:
        print(json.dumps(record))
    return 0


# ---------------------------------------------------------------------------------
# the four commands
# ---------------------------------------------------------------------------------
def run_reconstruct(args) -> int:
    from . import apps
    from .images import image_strip, load_image

    method, out = _prepare(args, images=(args.image,))
    with out:
        pipe, options, size = _setup(args, method)
        image = load_image(args.image, size)
        result = apps.reconstruct(pipe, image, options=options)
        images = {
            "input.png": result.image,
            "reconstruction.png": result.reconstruction,
            "comparison.png": image_strip([result.image, result.reconstruction]),
        }
        return _finish(args, out, result.metrics, images)


def run_edit(args) -> int:
    from . import apps
    from .images import image_strip, load_image

    from belm_core.solver import until_range

    if args.steps >= 1:  # (_prepare reports a bad --steps)
        from .apps import make_method

        low, N = until_range(make_method(args.method, gamma=args.gamma, p=args.p) or "o-belm", args.steps)
        if not 0 <= args.freeze <= N - low:
            raise ValueError(
                f"--freeze={args.freeze} must be in [0, {N - low}] (steps={N}; the method keeps at least {low} "
                "inversion step(s))"
            )
    method, out = _prepare(args, images=(args.image,))
    with out:
        pipe, options, size = _setup(args, method)
        image = load_image(args.image, size)
        result = apps.edit(pipe, image, args.source_prompt, args.target_prompt, freeze=args.freeze, options=options)
        images = {
            "source.png": result.image,
            "reconstruction.png": result.reconstruction,
            "edit.png": result.edited,
            "comparison.png": image_strip([result.image, result.reconstruction, result.edited]),
        }
        return _finish(args, out, result.metrics, images)


def run_interpolate(args) -> int:
    from . import apps
    from .images import image_strip, load_image

    if len(args.image) != 2:
        raise ValueError(f"--image must be given exactly twice (A and B), got {len(args.image)}")
    method, out = _prepare(args, images=tuple(args.image))
    with out:
        pipe, options, size = _setup(args, method)
        a, b = (load_image(path, size) for path in args.image)
        result = apps.interpolate(pipe, a, b, frames=args.frames, options=options)
        images = {f"frame_{k:03d}.png": f for k, f in enumerate(result.frames)}
        images["strip.png"] = image_strip(result.frames)
        return _finish(args, out, {**result.metrics, "weights": result.weights}, images)


def run_sample(args) -> int:
    from . import apps
    from .images import image_grid

    method, out = _prepare(args)
    with out:
        pipe, options, size = _setup(args, method)
        images = apps.sample(pipe, num=args.num, seed=args.seed, size=args.size, options=options)
        files = {f"sample_{k:03d}.png": im for k, im in enumerate(images)}
        files["grid.png"] = image_grid(images)
        solver = pipe.solver(options.steps, options.method, options.spacing, size=size, from_noise=True)
        metrics = {"num": args.num, "seed": args.seed, "method": solver.method.signature(), "steps": args.steps,
                   "first_timestep": float(solver.timesteps[0]), "startup": solver.startup,
                   **apps.prompt_metrics(pipe, args.prompt), "guidance_scale": options.guidance_scale}
        return _finish(args, out, metrics, files)
