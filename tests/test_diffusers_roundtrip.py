"""Issue 7's acceptance across the two halves: `belm.apps.invert` on a pipeline, then the
drop-in `BELMScheduler` reconstructs through the pipeline's own `__call__` (its own prompt
encoding and classifier-free guidance), and the inverse scheduler inside `pipe(...)` feeds it."""

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import belm.apps  # noqa: E402
from backends.schedulers import BELMInverseScheduler, BELMScheduler  # noqa: E402
from tiny_pipelines import IMAGE_SIZE, tiny_sd_pipeline, tiny_sdxl_pipeline  # noqa: E402

CASES = {
    "sd-eps-g3": (lambda: tiny_sd_pipeline("epsilon"), 3.0),
    "sd-v-g1": (lambda: tiny_sd_pipeline("v_prediction"), 1.0),
    "sdxl-g3": (tiny_sdxl_pipeline, 3.0),
}


def _z0(pipe):
    c, s = pipe.unet.config.in_channels, pipe.unet.config.sample_size
    return torch.randn((1, c, s, s), generator=torch.Generator().manual_seed(0))


def _mse(a, b) -> float:
    return float(((a.double() - b.double()) ** 2).mean())


def _reconstruct(pipe, cfg, latent, g, method="o-belm"):
    pipe.scheduler = BELMScheduler.from_config(cfg, method=method)
    pipe.scheduler.set_latent(latent)
    return pipe("a cat", latents=latent.states[0].to(pipe.unet.dtype), num_inference_steps=8, guidance_scale=g,
                output_type="latent").images


@pytest.mark.parametrize("case", sorted(CASES))
def test_apps_invert_then_pipeline_call_reconstructs(case):
    make, g = CASES[case]
    pipe = make()
    pipe.set_progress_bar_config(disable=True)
    cfg = pipe.scheduler.config
    z0 = _z0(pipe)
    latent = belm.apps.invert(pipe, latents=z0, prompt="a cat", guidance_scale=g, steps=8)
    assert _mse(_reconstruct(pipe, cfg, latent, g), z0) <= 1e-16
    # control: the same pipeline call from x_T alone (no latent) is an ordinary sample, far from z0
    pipe.scheduler = BELMScheduler.from_config(cfg, method="o-belm")
    plain = pipe("a cat", latents=latent.states[0].to(pipe.unet.dtype), num_inference_steps=8, guidance_scale=g,
                 output_type="latent").images
    assert _mse(plain, z0) > 1e-6


@pytest.mark.parametrize("case", ["sd-eps-g3", "sdxl-g3"])
def test_inverse_scheduler_inside_the_pipeline_matches_apps_invert(case):
    make, g = CASES[case]
    pipe = make()
    pipe.set_progress_bar_config(disable=True)
    cfg = pipe.scheduler.config
    z0 = _z0(pipe)
    pipe.scheduler = BELMInverseScheduler.from_config(cfg, method="o-belm")
    pipe("a cat", latents=z0.clone(), num_inference_steps=8, guidance_scale=g, output_type="latent")
    latent = pipe.scheduler.latent
    ours = belm.apps.invert(pipe, latents=z0, prompt="a cat", guidance_scale=g, steps=8)
    assert latent.grid_key == ours.grid_key and latent.method == ours.method
    for a, b in zip(latent.states, ours.states):
        assert torch.equal(a.cpu(), b.cpu())  # same ε bits in both loops
    assert _mse(_reconstruct(pipe, cfg, latent, g), z0) <= 1e-16


# --- issue 8: the same on rectified-flow pipelines (SD3 true CFG, Flux distilled guidance) ---------
def _flow_case(name):
    from tiny_pipelines import FLUX_SIZE, tiny_flux_pipeline, tiny_sd3_pipeline  # noqa: F401

    if name == "sd3-g3":
        return tiny_sd3_pipeline(), 3.0, {}
    return tiny_flux_pipeline(), 3.5, dict(FLUX_SIZE)


@pytest.mark.parametrize("name", ["sd3-g3", "flux-g3.5"])
def test_flow_apps_invert_then_pipeline_call_reconstructs(name):
    from backends.pipelines import adapt
    from backends.schedulers import BELMFlowScheduler

    pipe, g, size = _flow_case(name)
    pipe.set_progress_bar_config(disable=True)
    cfg = pipe.scheduler.config
    z0 = adapt(pipe).noise(1, IMAGE_SIZE, torch.Generator().manual_seed(0)).float()  # the pipeline's latent format
    latent = belm.apps.invert(pipe, latents=z0, prompt="a cat", guidance_scale=g, steps=8)
    pipe.scheduler = BELMFlowScheduler.from_config(cfg, method="o-belm")
    pipe.scheduler.set_latent(latent)
    out = pipe("a cat", latents=latent.states[0].float(), num_inference_steps=8, guidance_scale=g,
               output_type="latent", **size).images
    assert _mse(out, z0) <= 1e-16


@pytest.mark.parametrize("method", ["o-belm", "recommended"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_low_precision_pipeline_round_trip_is_exact_in_its_dtype(dtype, method):
    """The scheduler keeps float64 states while the pipeline runs in fp16/bf16: the round trip
    through `pipe(...)` gives the pipeline-dtype z0 back bit for bit (also for method="recommended",
    whose model inputs are κ-scaled, off-grid states rounded to the pipeline's dtype)."""
    pipe = tiny_sd_pipeline("epsilon").to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    cfg = pipe.scheduler.config
    z0 = _z0(pipe).to(dtype)
    pipe.scheduler = BELMInverseScheduler.from_config(cfg, method=method)
    pipe("a cat", latents=z0.clone(), num_inference_steps=8, guidance_scale=3.0, output_type="latent")
    latent = pipe.scheduler.latent
    assert latent.states[0].dtype == torch.float64
    out = _reconstruct(pipe, cfg, latent, 3.0, method)
    assert out.dtype == dtype and torch.equal(out, z0)
