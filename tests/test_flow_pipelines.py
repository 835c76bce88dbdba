"""SD3 and Flux through belm: velocity functions, grids, the applications and the CLI.

Properties:
- v from `PipelineAdapter.velocity_fn` is the pipeline's own noise_pred bit for bit, on the
  grid the pipeline's own call walks (captured inside a real `pipe(...)` by wrapping
  `scheduler.step`): SD3 with true CFG (one batched call), Flux with distilled guidance;
- `belm.apps.invert` → `belm.apps.sample` rebuilds z0 (MSE ≤ 1e-16) on both, in the
  pipelines' own latent formats (Flux packed, also non-square);
- DDIM in the flow's coordinates is the pipeline's own Euler sampler;
- reconstruct / edit / sample / interpolate and the CLI work on SD3 and Flux (saved folders);
- bad input is a clear error naming the parameter.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from backends.pipelines import adapt
from belm import apps

tiny_pipelines = pytest.importorskip("tiny_pipelines")
FLUX_SIZE = tiny_pipelines.FLUX_SIZE
SIZE = tiny_pipelines.IMAGE_SIZE
STEPS = 8
GUIDANCE = {"sd3": 3.0, "flux": 3.5}


@pytest.fixture(scope="module")
def flow_pipes():
    """The tiny SD3 (no T5) and Flux pipelines, built once: family → pipeline."""
    built = {}

    class Pipes:
        def __getitem__(self, name):
            if name not in built:
                pipe = tiny_pipelines.tiny_sd3_pipeline() if name == "sd3" else tiny_pipelines.tiny_flux_pipeline()
                pipe.set_progress_bar_config(disable=True)
                built[name] = pipe
            return built[name]

    return Pipes()


def pipe_call(pipe, family, latents, g, steps=STEPS, prompt="a cat"):
    """pipe(...) → (z0 as the pipeline returns it, [(noise_pred, t, sample) per step])."""
    steps_seen = []
    original = pipe.scheduler.step

    def step(noise_pred, t, sample, *args, **kwargs):
        steps_seen.append((noise_pred.clone(), float(t), sample.clone()))
        return original(noise_pred, t, sample, *args, **kwargs)

    pipe.scheduler.step = step
    try:
        extra = FLUX_SIZE if family == "flux" else {}
        out = pipe(prompt, latents=latents, num_inference_steps=steps, guidance_scale=g, output_type="latent",
                   **extra).images
    finally:
        del pipe.scheduler.step
    return out, steps_seen


def noise(family, shape_seed=0, size=SIZE):
    return torch.randn((1, *adapt_shape(family, size)), generator=torch.Generator().manual_seed(shape_seed))


def adapt_shape(family, size):
    f = 2  # the tiny VAEs' factor
    if family == "flux":
        return ((size // (2 * f)) ** 2, 64)
    return (16, size // f, size // f)


# ---------------------------------------------------------------------------------
# the velocity function and the grid are the pipeline's own
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("family,g", [("sd3", 3.0), ("sd3", 1.0), ("flux", 3.5)])
def test_velocity_is_the_pipelines_noise_pred_on_its_grid(flow_pipes, family, g):
    pipe = flow_pipes[family]
    adapter = adapt(pipe)
    _, seen = pipe_call(pipe, family, noise(family), g)
    solver = adapter.solver(STEPS, size=SIZE)
    v = adapter.velocity_fn("a cat", guidance_scale=g, size=SIZE)
    np.testing.assert_array_equal(np.array([t for _, t, _ in seen]), solver.timesteps)
    for noise_pred, t, sample in seen:
        ours = v(sample.to(torch.float64), t)
        assert ours.dtype == torch.float64
        assert torch.equal(ours.to(noise_pred.dtype), noise_pred), f"v differs from the pipeline's at t={t}"


def test_flux_grid_depends_on_the_image_size(flow_pipes):
    adapter = adapt(flow_pipes["flux"])
    small, large = adapter.solver(STEPS, size=16).timesteps, adapter.solver(STEPS, size=64).timesteps
    assert small[0] == large[0] == 1000.0
    assert not np.array_equal(small, large)  # mu grows with the packed token count
    assert np.all(large[1:] > small[1:])


def test_ddim_in_flow_coordinates_is_the_pipelines_euler(flow_pipes):
    pipe = flow_pipes["sd3"]
    x_T = noise("sd3", 3)
    z_pipe, _ = pipe_call(pipe, "sd3", x_T, 3.0)
    adapter = adapt(pipe)
    v = adapter.velocity_fn("a cat", guidance_scale=3.0)
    z = adapter.solver(STEPS, method="ddim").sample(v, x_T.to(torch.float64))
    # the pipeline's state is float32, ours float64: the same steps, up to float32 rounding
    assert float((z - z_pipe.double()).abs().max()) < 1e-5


# ---------------------------------------------------------------------------------
# exact round trips through the applications
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_invert_then_sample_rebuilds_z0(flow_pipes, family):
    pipe = flow_pipes[family]
    z0 = noise(family, 1)
    g = GUIDANCE[family]
    latent = apps.invert(pipe, latents=z0, prompt="a cat", guidance_scale=g, steps=STEPS)
    assert latent.states[0].shape == z0.shape  # the pipeline's own format (packed for Flux)
    z = apps.sample(pipe, latent=latent, prompt="a cat", guidance_scale=g, steps=STEPS, output_type="latent")
    assert apps.latent_mse(z, z0) <= 1e-16
    # another prompt gives another image: the round trip is not trivial
    other = apps.sample(pipe, latent=latent, prompt="a dog", guidance_scale=g, steps=STEPS, output_type="latent")
    assert apps.latent_mse(other, z0) > 1e-6


def test_flux_non_square_latents_need_their_size(flow_pipes):
    pipe = flow_pipes["flux"]
    size = (16, 32)  # packed: 4 × 8 = 32 tokens
    z0 = torch.randn((1, 32, 64), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with pytest.raises(ValueError, match="not square"):
        apps.invert(pipe, latents=z0, prompt="a cat", guidance_scale=3.5, steps=4)
    latent = apps.invert(pipe, latents=z0, prompt="a cat", guidance_scale=3.5, steps=4, size=size)
    z = apps.sample(pipe, latent=latent, size=size, prompt="a cat", guidance_scale=3.5, steps=4, output_type="latent")
    assert apps.latent_mse(z, z0) <= 1e-16
    with pytest.raises(ValueError, match="size"):
        apps.invert(pipe, latents=z0, prompt="a cat", guidance_scale=3.5, steps=4, size=(16, 16))


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_reconstruct_edit_sample_interpolate(flow_pipes, family):
    pipe = flow_pipes[family]
    g = GUIDANCE[family]
    image = torch.rand((1, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(0)) * 2 - 1
    rec = apps.reconstruct(pipe, image, prompt="a cat", guidance_scale=g, steps=4)
    assert rec.metrics["latent_mse"] <= 1e-16
    assert rec.metrics["pixel_mse"] == pytest.approx(rec.metrics["vae_pixel_mse"], abs=1e-10)
    assert rec.z0.shape == (1, *adapt_shape(family, SIZE))
    edit = apps.edit(pipe, image, "a cat", "a dog", guidance_scale=g, steps=4, freeze=1)
    assert edit.metrics["latent_mse"] <= 1e-16
    assert float((edit.edited - edit.reconstruction).abs().max()) > 1e-4
    a = apps.sample(pipe, num=2, seed=5, size=SIZE, prompt="a cat", guidance_scale=g, steps=4)
    b = apps.sample(pipe, num=2, seed=5, size=SIZE, prompt="a cat", guidance_scale=g, steps=4)
    assert a.shape == (2, 3, SIZE, SIZE) and torch.equal(a, b) and not torch.equal(a[0], a[1])
    frames = apps.interpolate(pipe, image, -image, frames=3, prompt="a cat", guidance_scale=g, steps=4)
    assert frames.frames.shape == (3, 3, SIZE, SIZE)
    assert frames.metrics["pixel_mse_first_to_a"] == pytest.approx(rec.metrics["pixel_mse"], abs=1e-6)


# ---------------------------------------------------------------------------------
# the CLI on saved folders
# ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def flow_dirs(flow_pipes, tmp_path_factory):
    root = tmp_path_factory.mktemp("flow_models")
    for family in ("sd3", "flux"):
        flow_pipes[family].save_pretrained(root / family)
    return root


@pytest.fixture(scope="module")
def png(tmp_path_factory):
    from belm.images import save_image

    path = tmp_path_factory.mktemp("img") / "a.png"
    save_image(torch.rand((1, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(3)) * 2 - 1, path)
    return path


def run_cli(capsys, *argv):
    from belm.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_cli_reconstruct_and_sample_on_saved_folders(capsys, flow_dirs, png, tmp_path, family):
    common = ["--model", flow_dirs / family, "--steps", 3, "--size", SIZE, "--guidance", GUIDANCE[family],
              "--device", "cpu", "--dtype", "float32", "--no-progress", "--json"]
    code, out, err = run_cli(capsys, "reconstruct", "--image", png, "--prompt", "a cat", "--out", tmp_path / "r", *common)
    assert code == 0, err
    record = json.loads(out.strip().splitlines()[-1])
    assert record["latent_mse"] <= 1e-16 and record["guidance_scale"] == GUIDANCE[family]
    code, out, err = run_cli(capsys, "sample", "--prompt", "a cat", "--num", 2, "--out", tmp_path / "s", *common)
    assert code == 0, err
    assert (tmp_path / "s" / "sample_001.png").is_file()
    code, out, err = run_cli(capsys, "edit", "--image", png, "--source-prompt", "a cat", "--target-prompt", "a dog",
                             "--freeze", 1, "--out", tmp_path / "e", *common)
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["latent_mse"] <= 1e-16


def test_cli_flux_guidance_rules(capsys, flow_dirs, png, tmp_path):
    common = ["--model", flow_dirs / "flux", "--image", png, "--prompt", "a cat", "--steps", 2, "--size", SIZE,
              "--device", "cpu", "--dtype", "float32", "--no-progress", "--json"]
    # distilled guidance below 1 is an input of the model: no negative prompt needed
    code, out, err = run_cli(capsys, "reconstruct", "--guidance", 0.5, "--out", tmp_path / "a", *common)
    assert code == 0, err
    code, out, err = run_cli(capsys, "reconstruct", "--guidance", 3.5, "--negative-prompt", "blur",
                             "--out", tmp_path / "b", *common)
    assert code != 0 and "--negative-prompt" in err and "Flux" in err
    assert not (tmp_path / "b").exists()


# ---------------------------------------------------------------------------------
# clear errors
# ---------------------------------------------------------------------------------
def test_bad_input_is_a_clear_error(flow_pipes):
    from backends.transformer import check_flux_guidance

    sd3, flux = adapt(flow_pipes["sd3"]), adapt(flow_pipes["flux"])
    with pytest.raises(ValueError, match="negative_prompt"):
        flux.velocity_fn("a cat", negative_prompt="blur", guidance_scale=3.5)
    with pytest.raises(ValueError, match=r"guidance_scale=-1.0 must be ≥ 0"):
        flux.velocity_fn("a cat", guidance_scale=-1.0)
    with pytest.raises(ValueError, match="no guidance embedding"):
        check_flux_guidance(3.5, guidance_embeds=False)
    assert check_flux_guidance(0.5, guidance_embeds=True) == 0.5
    with pytest.raises(ValueError, match="needs negative_prompt"):
        sd3.velocity_fn("a cat", guidance_scale=0.5)
    with pytest.raises(TypeError, match="velocity_fn"):
        sd3.eps_fn("a cat")
    with pytest.raises(ValueError, match="linspace"):
        sd3.solver(4, spacing="leading")
    unpacked = torch.zeros((1, 16, 8, 8))
    with pytest.raises(ValueError, match=r"\(N, L, 64\)"):
        apps.invert(flux.pipe, latents=unpacked, prompt="a cat", guidance_scale=3.5, steps=4)
    with pytest.raises(ValueError, match=r"\(N, 16, h, w\)"):
        apps.invert(sd3.pipe, latents=torch.zeros((1, 4, 8, 8)), prompt="a cat", guidance_scale=3.0, steps=4)
    # a Flux latent sampled at another size (another mu, another grid) is refused by the grid check
    latent = apps.invert(flux.pipe, latents=noise("flux"), prompt="a cat", guidance_scale=3.5, steps=4)
    bigger = latent.replace(states=tuple(torch.zeros((1, 64, 64), dtype=s.dtype) for s in latent.states))
    with pytest.raises(ValueError, match="grid"):
        apps.sample(flux.pipe, latent=bigger, prompt="a cat", guidance_scale=3.5, steps=4, output_type="latent")
