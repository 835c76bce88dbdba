"""The applications on diffusers pipelines as users hold them (backends/pipelines.py, belm/apps.py).

Tiny in-memory pipelines (tests/tiny_pipelines.py): SD (ε), SD 2.x (v), SDXL and a pixel DDPM.
Oracles: the pipeline's own loop (the guided noise prediction its UNet call makes, the
timesteps its scheduler sets), the algebraic exactness of the round trip, DDIM's inexactness.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from backends.config import schedule_from_config, solver_options
from backends.pipelines import PipelineAdapter, adapt, family
from backends.unet import UNetEps, load_pipeline
from belm import apps
from belm.cli import main
from belm_core import Latent, Solver

STEPS = 8

#: pipeline → (prompt, guidance_scale) of the round trips (the acceptance cases of issue 7)
ROUND_TRIPS = {
    "sd": ("a cat", 3.0),
    "sd_v": ("a dog", 1.0),
    "sdxl": ("a cat", 3.0),
    "ddpm": (None, 1.0),
}


def z0_like(pipe, n=1, seed=0, dtype=torch.float64):
    """A model-space sample: Gaussian latents for latent models, a [−1, 1] pattern for pixel ones."""
    c, h, w = adapt(pipe).latent_shape
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    return (z.tanh() if adapt(pipe).vae is None else z).to(dtype)


def mse(a, b) -> float:
    return float(((a.double() - b.double()) ** 2).mean())


# ---------------------------------------------------------------------------------
# invert → sample
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(ROUND_TRIPS))
def test_invert_then_sample_reconstructs_z0(tiny, name):
    pipe = tiny[name]
    prompt, g = ROUND_TRIPS[name]
    z0 = z0_like(pipe)
    latent = apps.invert(pipe, latents=z0, prompt=prompt, guidance_scale=g, steps=STEPS)
    assert isinstance(latent, Latent) and latent.states[0].dtype == torch.float64
    eps = adapt(pipe).eps_fn(prompt, guidance_scale=g)
    z_rec = apps.make_solver(pipe, STEPS, "o-belm").sample(eps, latent)
    assert mse(z_rec, z0) <= 1e-16
    # the same through apps.sample, and DDIM (inexact) as the control
    again = apps.sample(pipe, latent=latent, prompt=prompt, guidance_scale=g, steps=STEPS, output_type="latent")
    assert torch.equal(again, z_rec)
    ddim = apps.invert(pipe, latents=z0, prompt=prompt, guidance_scale=g, steps=STEPS, method="ddim")
    z_ddim = apps.sample(pipe, latent=ddim, prompt=prompt, guidance_scale=g, steps=STEPS, method="ddim",
                         output_type="latent")
    assert mse(z_ddim, z0) > 1e6 * max(mse(z_rec, z0), 1e-30)


@pytest.mark.parametrize("name", ["sd", "sdxl", "ddpm"])
def test_solver_is_the_scheduler_configs_grid(tiny, name):
    """make_solver = Solver(schedule_from_config(cfg), steps, method, **solver_options(cfg)): the grid a
    BELMScheduler builds from the same config, which visits the timesteps diffusers' scheduler sets."""
    pipe = tiny[name]
    cfg = pipe.scheduler.config
    solver = apps.make_solver(pipe, STEPS, "bdia")
    reference = Solver(schedule_from_config(cfg), steps=STEPS, method="bdia", **solver_options(cfg))
    assert solver.grid.key == reference.grid.key
    assert solver.method.signature() == reference.method.signature()
    scheduler = type(pipe.scheduler).from_config(cfg)
    scheduler.set_timesteps(STEPS)
    np.testing.assert_array_equal(solver.timesteps, scheduler.timesteps.numpy().astype(np.float64))
    latent = apps.invert(pipe, latents=z0_like(pipe), steps=STEPS, method="bdia")
    assert latent.grid_key == reference.grid.key and latent.method == reference.method.signature()
    assert apps.make_solver(pipe, STEPS, "bdia", spacing="trailing").grid.key != reference.grid.key


def test_sd_config_without_alpha_one_ends_at_t_min(tiny):
    """SD's DDIM config has set_alpha_to_one=False: the last step ends at ᾱ_0, not at the clean state."""
    sd, ddpm = adapt(tiny["sd"]), adapt(tiny["ddpm"])
    assert sd.scheduler_config["set_alpha_to_one"] is False
    assert sd.solver(STEPS).grid.alpha[0] == pytest.approx(float(np.sqrt(sd.schedule.alphas_cumprod[0])), rel=1e-12)
    assert sd.solver(STEPS).grid.alpha[0] < 1.0
    assert ddpm.solver(STEPS).grid.alpha[0] == 1.0


def test_invert_latents_skips_the_vae_and_image_uses_it(tiny, monkeypatch):
    pipe = tiny["sd"]
    images = adapt(pipe).decode(z0_like(pipe)).clamp(-1, 1)
    z0 = adapt(pipe).encode(images)
    from_image = apps.invert(pipe, image=images, prompt="a cat", guidance_scale=3.0, steps=4)

    def no_vae(*args, **kwargs):
        raise AssertionError("the VAE was called")

    monkeypatch.setattr(pipe.vae, "encode", no_vae)
    from_latents = apps.invert(pipe, latents=z0, prompt="a cat", guidance_scale=3.0, steps=4)
    assert all(torch.equal(a, b) for a, b in zip(from_image.states, from_latents.states))
    half = apps.invert(pipe, latents=z0.half(), prompt="a cat", guidance_scale=3.0, steps=4)
    assert half.states[0].dtype == torch.float64 and half.dtype == "float16"
    with pytest.raises(ValueError, match="exactly one of image= .* and latents="):
        apps.invert(pipe, steps=4)
    with pytest.raises(ValueError, match="exactly one"):
        apps.invert(pipe, image=images, latents=z0, steps=4)
    with pytest.raises(ValueError, match=r"latents must have shape \(N, 4, h, w\)"):
        apps.invert(pipe, latents=torch.zeros(1, 3, 8, 8), steps=4)
    with pytest.raises(TypeError, match="floating-point"):
        apps.invert(pipe, latents=torch.zeros(1, 4, 8, 8, dtype=torch.long), steps=4)


def test_invert_takes_pil_images_through_the_image_processor(tiny):
    from PIL import Image

    pipe = tiny["sd"]
    pil = Image.fromarray((np.random.default_rng(0).uniform(0, 255, (16, 16, 3))).astype(np.uint8))
    tensor = pipe.image_processor.preprocess(pil, height=16, width=16)
    a = apps.invert(pipe, image=pil, steps=3)
    b = apps.invert(pipe, image=tensor, steps=3)
    assert torch.equal(a.states[0], b.states[0])


# ---------------------------------------------------------------------------------
# ε is the pipeline's own guided noise prediction
# ---------------------------------------------------------------------------------
def pipeline_noise_pred(pipe, **call):
    """(UNet input x, t, guided noise prediction) of the first step of the pipeline's own loop."""
    seen: dict = {}

    def pre(module, args, kwargs):
        seen.setdefault("x", (args[0] if args else kwargs["sample"]).clone())
        seen.setdefault("t", args[1] if len(args) > 1 else kwargs["timestep"])

    step = pipe.scheduler.step

    def capture(model_output, timestep, sample, *args, **kwargs):
        seen.setdefault("noise_pred", model_output.clone())
        return step(model_output, timestep, sample, *args, **kwargs)

    hook = pipe.unet.register_forward_pre_hook(pre, with_kwargs=True)
    pipe.scheduler.step = capture
    try:
        pipe(num_inference_steps=2, output_type="latent", generator=torch.Generator().manual_seed(0), **call)
    finally:
        hook.remove()
        del pipe.scheduler.step
    x = seen["x"]
    if call.get("guidance_scale", 1.0) > 1:
        x = x.chunk(2)[0]
    return x, seen["t"], seen["noise_pred"]


@pytest.mark.parametrize(
    "name, call",
    [
        ("sdxl", {"prompt": "a cat", "guidance_scale": 3.0}),
        ("sdxl", {"prompt": "a cat", "negative_prompt": "a dog", "guidance_scale": 5.0}),
        ("sdxl", {"prompt": "a red cat", "guidance_scale": 1.0}),
        ("sd", {"prompt": "a cat", "guidance_scale": 3.0}),
        ("sd_v", {"prompt": "a dog", "guidance_scale": 1.0}),
    ],
)
def test_eps_is_the_pipelines_noise_prediction_bit_for_bit(tiny, name, call):
    pipe = tiny[name]
    x, t, noise_pred = pipeline_noise_pred(pipe, **call)
    eps = adapt(pipe).eps_fn(call["prompt"], call.get("negative_prompt"), call["guidance_scale"])
    out = eps.model_output(x, float(t))
    assert out.dtype == noise_pred.dtype and torch.equal(out, noise_pred)
    # the float64 ε the solver sees converts that output (ε-prediction: the same numbers)
    if adapt(pipe).prediction_type == "epsilon":
        assert torch.equal(eps(x.double(), float(t)), noise_pred.double())


def test_sdxl_unet_gets_the_pipelines_added_conditioning(tiny):
    """One batched UNet call [negative; conditional] with text_embeds and time ids (H, W, 0, 0, H, W)."""
    pipe = tiny["sdxl"]
    sdxl = adapt(pipe)
    kwargs_seen = []
    hook = pipe.unet.register_forward_pre_hook(lambda m, a, k: kwargs_seen.append(k), with_kwargs=True)
    try:
        eps = sdxl.eps_fn("a cat", guidance_scale=2.0, size=(16, 32))
        eps(torch.zeros(2, 4, 8, 16, dtype=torch.float64), 500)
    finally:
        hook.remove()
    assert len(kwargs_seen) == 1
    added = kwargs_seen[0]["added_cond_kwargs"]
    assert added["text_embeds"].shape == (4, 16) and kwargs_seen[0]["encoder_hidden_states"].shape[0] == 4
    expected = torch.tensor([[16.0, 32.0, 0.0, 0.0, 16.0, 32.0]]).expand(4, 6)
    assert torch.equal(added["time_ids"].float(), expected)
    cond, uncond = sdxl.encode_prompt("a cat", guided=True)  # no negative prompt: zeros (force_zeros_for_empty_prompt)
    assert not uncond["encoder_hidden_states"].any() and not uncond["added_cond_kwargs"]["text_embeds"].any()
    assert torch.equal(added["text_embeds"][2:], cond["added_cond_kwargs"]["text_embeds"].expand(2, -1))


def test_unet_eps_conditioning_checks(tiny):
    pipe = tiny["sdxl"]
    sdxl = adapt(pipe)
    cond, uncond = sdxl.encode_prompt("a cat", guided=True)
    emb, added = cond["encoder_hidden_states"], cond["added_cond_kwargs"]
    with pytest.raises(ValueError, match=r"needs negative_conditioning\['added_cond_kwargs'\]"):
        UNetEps(pipe.unet, sdxl.schedule, encoder_hidden_states=emb, negative_encoder_hidden_states=emb,
                conditioning={"added_cond_kwargs": added}, guidance_scale=2.0)
    with pytest.raises(ValueError, match="layout"):
        UNetEps(pipe.unet, sdxl.schedule, encoder_hidden_states=emb, conditioning={"added_cond_kwargs": added},
                negative_conditioning={"added_cond_kwargs": {**added, "time_ids": torch.zeros(1, 5)}})
    with pytest.raises(ValueError, match="named arguments"):
        UNetEps(pipe.unet, sdxl.schedule, encoder_hidden_states=emb, conditioning={"encoder_hidden_states": emb})
    with pytest.raises(TypeError, match="batch dimension"):
        UNetEps(pipe.unet, sdxl.schedule, encoder_hidden_states=emb, conditioning={"added_cond_kwargs": {"x": 1.0}})
    with pytest.raises(ValueError, match="keys must match"):
        UNetEps(pipe.unet, sdxl.schedule, encoder_hidden_states=emb, conditioning={"added_cond_kwargs": added},
                negative_conditioning={"other": added["time_ids"]})


def test_family_and_adapter(tiny):
    assert [family(tiny[n]) for n in ("sd", "sd_v", "sdxl", "ddpm")] == ["sd", "sd", "sdxl", "pixel"]
    a = adapt(tiny["sdxl"])
    assert adapt(a) is a and isinstance(a, PipelineAdapter)
    assert a.is_conditional and a.is_latent and a.resolution == 16 and a.latent_shape == (4, 8, 8)
    assert not adapt(tiny["ddpm"]).is_conditional
    with pytest.raises(TypeError, match="StableDiffusionXLPipeline"):
        adapt(object())
    with pytest.raises(ValueError, match="unconditional"):
        adapt(tiny["ddpm"]).eps_fn("a cat")
    with pytest.raises(ValueError, match="negative_prompt"):
        a.eps_fn("a cat", guidance_scale=0.5)
    a.eps_fn("a cat", "a dog", guidance_scale=0.5)  # defined with a negative prompt


# ---------------------------------------------------------------------------------
# the applications on SDXL
# ---------------------------------------------------------------------------------
def test_sdxl_reconstruct_edit_interpolate_sample(tiny):
    pipe = tiny["sdxl"]
    images = adapt(pipe).decode(z0_like(pipe, n=2, seed=1)).clamp(-1, 1)
    a, b = images[:1], images[1:]
    rec = apps.reconstruct(pipe, a, prompt="a cat", guidance_scale=3.0, steps=STEPS)
    assert rec.metrics["latent_mse"] <= 1e-16
    assert rec.metrics["pixel_mse"] == pytest.approx(rec.metrics["vae_pixel_mse"], rel=1e-6)
    edit = apps.edit(pipe, a, "a cat", "a dog", guidance_scale=3.0, steps=STEPS, freeze=2)
    assert edit.metrics["latent_mse"] <= 1e-16 and apps.pixel_mse(edit.edited, edit.reconstruction) > 0
    interp = apps.interpolate(pipe, a, b, frames=3, prompt="a cat", guidance_scale=2.0, steps=4)
    assert interp.frames.shape == (3, 3, 16, 16)
    vae_only = apps.pixel_mse(a, adapt(pipe).decode(adapt(pipe).encode(a)))
    assert interp.metrics["pixel_mse_first_to_a"] == pytest.approx(vae_only, rel=1e-6)
    x = apps.sample(pipe, num=2, seed=3, steps=3, prompt="a cat", guidance_scale=4.0)
    assert x.shape == (2, 3, 16, 16) and torch.isfinite(x).all()
    assert torch.equal(x, apps.sample(pipe, num=2, seed=3, steps=3, prompt="a cat", guidance_scale=4.0))
    with pytest.raises(ValueError, match="num= and size= come from the latent"):
        apps.sample(pipe, latent=rec.latent, num=2, steps=STEPS)


# ---------------------------------------------------------------------------------
# loading and the CLI on saved folders
# ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sdxl_dir(tiny, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sdxl") / "pipe"
    tiny["sdxl"].save_pretrained(folder)
    return folder


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_load_pipeline_returns_the_diffusers_pipeline(sdxl_dir, tiny):
    from diffusers import StableDiffusionXLPipeline

    pipe = load_pipeline(sdxl_dir, device="cpu", dtype="float32", progress=False)
    assert type(pipe) is StableDiffusionXLPipeline
    x = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    ours, theirs = adapt(pipe).eps_fn("a cat", guidance_scale=3.0), adapt(tiny["sdxl"]).eps_fn("a cat", guidance_scale=3.0)
    assert torch.equal(ours(x, 400), theirs(x, 400))


def test_load_pipeline_passes_null_components(tmp_path):
    """SD3 saved without T5 stores text_encoder_3 as [null, null]; it loads, and belm adapts it."""
    import tiny_pipelines

    tiny_pipelines.tiny_sd3_pipeline(with_t5=False).save_pretrained(tmp_path / "sd3")
    index = json.loads((tmp_path / "sd3" / "model_index.json").read_text())
    assert index["text_encoder_3"] == [None, None]
    pipe = load_pipeline(tmp_path / "sd3", device="cpu", progress=False)
    assert pipe.text_encoder_3 is None
    assert adapt(pipe).family == "sd3"


def test_cli_on_an_sdxl_folder(capsys, sdxl_dir, image_files, tmp_path):
    common = ["--model", sdxl_dir, "--steps", 4, "--no-progress", "--json"]
    code, out, err = run_cli(capsys, "reconstruct", *common, "--image", image_files["a"], "--prompt", "a cat",
                             "--guidance", 3, "--out", tmp_path / "rec")
    assert code == 0, err
    m = json.loads(out.strip().splitlines()[-1])
    assert m["latent_mse"] <= 1e-16 and m["prompt"] == "a cat" and m["guidance_scale"] == 3.0
    code, out, err = run_cli(capsys, "edit", *common, "--image", image_files["a"], "--source-prompt", "a cat",
                             "--target-prompt", "a dog", "--guidance", 2, "--freeze", 1, "--out", tmp_path / "edit")
    assert code == 0, err
    assert (tmp_path / "edit" / "edit.png").is_file()
    code, _, err = run_cli(capsys, "interpolate", *common, "--image", image_files["a"], "--image", image_files["b"],
                           "--frames", 3, "--out", tmp_path / "interp")
    assert code == 0, err
    code, _, err = run_cli(capsys, "sample", *common, "--prompt", "a dog", "--guidance", 4, "--num", 2,
                           "--out", tmp_path / "sample")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "sample").glob("*.png")) == ["grid.png", "sample_000.png", "sample_001.png"]
