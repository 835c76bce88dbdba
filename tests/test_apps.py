"""Applications and the `belm` subcommands (belm/apps.py, belm/commands.py, belm/images.py).

Tiny random models (tests/tiny_models.py): the images they make are noise, so the checks
are properties: exact round trips, files written, metrics present and consistent, clear
errors with exit code 2.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from belm import apps
from belm.cli import main
from belm.images import image_grid, image_strip, load_image, save_image, to_unit


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def pngs(folder):
    return sorted(p.name for p in folder.glob("*.png"))


# ---------------------------------------------------------------------------------
# images and metrics
# ---------------------------------------------------------------------------------
def test_load_image_crop_resize(image_files, tmp_path):
    x = load_image(image_files["a"], 16)
    assert x.shape == (1, 3, 16, 16) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert load_image(image_files["b"], (8, 12)).shape == (1, 3, 8, 12)
    # an exact-size crop is lossless: the saved PNG reads back to the same pixels
    save_image(x, tmp_path / "x.png")
    torch.testing.assert_close(load_image(tmp_path / "x.png", 16), x, atol=1 / 127.5, rtol=0)


def test_load_image_errors(image_files, tmp_path):
    with pytest.raises(ValueError, match="broken.png"):
        load_image(image_files["broken"], 16)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png", 16)
    with pytest.raises(ValueError, match="size"):
        load_image(image_files["a"], 0)


def test_strip_and_grid_shapes():
    ims = torch.zeros(5, 3, 4, 6)
    assert image_strip(ims, pad=1).shape == (3, 4, 5 * 6 + 4)
    assert image_grid(ims, ncols=2, pad=1).shape == (3, 3 * 4 + 2, 2 * 6 + 1)
    with pytest.raises(ValueError):
        image_grid([torch.zeros(3, 4, 4), torch.zeros(3, 5, 4)])


def test_metrics():
    a = torch.zeros(1, 3, 2, 2)
    b = torch.full((1, 3, 2, 2), 0.2)  # 0.1 apart on [0, 1]
    assert apps.latent_mse(a, b) == pytest.approx(0.04)
    assert apps.pixel_mse(a, b) == pytest.approx(0.01)
    assert apps.psnr(0.01) == pytest.approx(20.0)
    assert math.isinf(apps.psnr(0.0))
    assert torch.equal(to_unit(torch.tensor([-2.0, 0.0, 2.0])), torch.tensor([0.0, 0.5, 1.0]))


def test_slerp():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 4, 5, generator=g, dtype=torch.float64), torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    torch.testing.assert_close(apps.slerp(a, b, 0.0), a)
    torch.testing.assert_close(apps.slerp(a, b, 1.0), b)
    # orthonormal pair: the arc keeps unit norm
    u = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    v = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    for w in np.linspace(0, 1, 5):
        assert float(apps.slerp(u, v, float(w)).norm()) == pytest.approx(1.0)
    torch.testing.assert_close(apps.slerp(a, a, 0.3), a)  # θ = 0 falls back to lerp


def test_make_method():
    assert apps.make_method("bdia", gamma=0.5).signature() != apps.make_method("bdia").signature()
    assert apps.make_method("edict", p=0.9).p == 0.9
    with pytest.raises(ValueError, match="gamma"):
        apps.make_method("o-belm", gamma=0.5)
    with pytest.raises(ValueError, match="method"):
        apps.make_method("euler")


# ---------------------------------------------------------------------------------
# library functions
# ---------------------------------------------------------------------------------
def test_edit_freeze_and_reconstruction(pipes, image_files):
    pipe = pipes["sd"]
    image = load_image(image_files["a"], pipe.resolution)
    result = apps.edit(pipe, image, "a cat", "a dog", guidance_scale=2.0, freeze=3, steps=8)
    assert result.latent.index == 8 - 3
    assert result.metrics["latent_mse"] <= 1e-12
    assert result.edited.shape == image.shape
    assert apps.pixel_mse(result.edited, result.reconstruction) > 0  # the target prompt changed something
    with pytest.raises(ValueError, match="freeze"):
        apps.edit(pipe, image, "a cat", "a dog", freeze=8, steps=8)
    with pytest.raises(ValueError, match="unconditional"):
        apps.edit(pipes["ddpm"], load_image(image_files["a"], 16), "a", "b", steps=4)


def test_interpolate_endpoints_reconstruct(pipes, image_files):
    pipe = pipes["ddpm"]
    a, b = load_image(image_files["a"], 16), load_image(image_files["b"], 16)
    result = apps.interpolate(pipe, a, b, frames=4, steps=6)
    assert result.frames.shape == (4, 3, 16, 16)
    assert result.weights == [0.0, 1 / 3, 2 / 3, 1.0]
    # w = 0 and w = 1 are the inverted latents themselves: exact reconstruction of A and B
    assert result.metrics["pixel_mse_first_to_a"] <= 1e-10
    assert result.metrics["pixel_mse_last_to_b"] <= 1e-10


def test_sample_seeded(pipes):
    pipe = pipes["ddpm_v"]
    x = apps.sample(pipe, num=2, seed=3, steps=4)
    assert x.shape == (2, 3, 16, 16) and torch.isfinite(x).all()
    assert torch.equal(x, apps.sample(pipe, num=2, seed=3, steps=4))
    assert not torch.equal(x, apps.sample(pipe, num=2, seed=4, steps=4))
    with pytest.raises(ValueError, match="size"):
        apps.sample(pipe, num=1, steps=2, size=15)


def test_inversion_substeps_in_the_apps_make_more_calls_and_stay_exact(pipes, image_files):
    """`inversion_substeps` reaches the Solver of invert / reconstruct (docs/math.md §28): on a "trailing" grid the
    first step takes sub-steps (more ε calls, another latent), the reconstruction stays exact; sampling from that
    latent is the same walk."""
    pipe = pipes["ddpm"]
    image = load_image(image_files["a"], 16)
    single = apps.reconstruct(pipe, image, steps=6, method="o-belm", spacing="trailing")
    sub = apps.reconstruct(pipe, image, steps=6, method="o-belm", spacing="trailing", inversion_substeps=4)
    solver = apps.make_solver(pipe, 6, "o-belm", "trailing")
    extra = len(solver_with(solver, 4).inversion_substep_times)
    assert extra == 3 and sub.metrics["eps_calls"] == single.metrics["eps_calls"] + extra
    assert sub.metrics["latent_mse"] <= 1e-12 and not torch.equal(sub.latent.states[0], single.latent.states[0])
    latent = apps.invert(pipe, image, steps=6, spacing="trailing", inversion_substeps=4)
    assert torch.equal(latent.states[0], sub.latent.states[0])
    with pytest.raises(ValueError, match="inversion_substeps=4 needs a linear multistep method"):
        apps.reconstruct(pipe, image, steps=6, method="ddim", spacing="trailing", inversion_substeps=4)


def solver_with(solver, substeps: int):
    """The same grid and method with another `inversion_substeps`."""
    from belm_core import Solver

    return Solver(solver.schedule, timesteps=solver.timesteps, method=solver.method, end=solver.grid.end,
                  inversion_substeps=substeps)


# ---------------------------------------------------------------------------------
# the CLI, end to end
# ---------------------------------------------------------------------------------
RECON_CASES = {
    "ddpm": [],
    "ddpm_v": [],
    "sd": ["--prompt", "a cat", "--guidance", "3"],
}


@pytest.mark.parametrize("name", list(RECON_CASES))
def test_cli_reconstruct_exact(capsys, model_dirs, image_files, tmp_path, name):
    out = tmp_path / "out"
    code, stdout, _ = run_cli(
        capsys, "reconstruct", "--model", model_dirs[name], "--image", image_files["a"], *RECON_CASES[name],
        "--steps", 10, "--method", "o-belm", "--out", out, "--json",
    )
    assert code == 0
    metrics = last_json(stdout)
    assert metrics["latent_mse"] <= 1e-12
    assert {"latent_mse", "pixel_mse", "psnr"} <= set(metrics)
    assert pngs(out) == ["comparison.png", "input.png", "reconstruction.png"]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["latent_mse"] == metrics["latent_mse"] and saved["method"] == "o-belm"
    if name == "sd":
        assert metrics["pixel_mse"] == pytest.approx(metrics["vae_pixel_mse"], rel=1e-6)  # only the VAE's error
    else:
        assert metrics["pixel_mse"] <= 1e-12


def test_cli_reconstruct_ddim_inexact_and_options(capsys, model_dirs, image_files, tmp_path):
    common = ["reconstruct", "--model", model_dirs["ddpm"], "--image", image_files["a"], "--steps", 10, "--json",
              "--no-progress"]
    code, stdout, _ = run_cli(capsys, *common, "--method", "ddim", "--out", tmp_path / "ddim")
    assert code == 0
    assert last_json(stdout)["latent_mse"] > 1e-6
    code, stdout, _ = run_cli(capsys, *common, "--method", "bdia", "--gamma", "0.9", "--spacing", "trailing",
                              "--out", tmp_path / "bdia")
    assert code == 0
    m = last_json(stdout)
    assert m["latent_mse"] <= 1e-12 and "0.9" in m["method"]
    code, stdout, _ = run_cli(capsys, *common, "--method", "edict", "--p", "0.9", "--size", "32",
                              "--out", tmp_path / "edict")
    assert code == 0 and last_json(stdout)["latent_mse"] <= 1e-12
    code, stdout, _ = run_cli(capsys, *common[:-2], "--method", "o-belm", "--out", tmp_path / "human")
    assert code == 0 and "latent_mse" in stdout and "wrote" in stdout
    # --inversion-substeps: more ε calls in inversion, still exact
    code, stdout, _ = run_cli(capsys, *common, "--method", "o-belm", "--spacing", "trailing", "--out", tmp_path / "one")
    one = last_json(stdout)
    code, stdout, _ = run_cli(capsys, *common, "--method", "o-belm", "--spacing", "trailing", "--inversion-substeps", 4,
                              "--out", tmp_path / "sub")
    sub = last_json(stdout)
    assert code == 0 and sub["latent_mse"] <= 1e-12 and sub["eps_calls"] == one["eps_calls"] + 3


def test_cli_edit(capsys, model_dirs, image_files, tmp_path):
    out = tmp_path / "edit"
    code, stdout, _ = run_cli(
        capsys, "edit", "--model", model_dirs["sd"], "--image", image_files["a"], "--source-prompt", "a cat",
        "--target-prompt", "a dog", "--guidance", "2", "--freeze", "2", "--steps", 6, "--out", out, "--json",
    )
    assert code == 0
    assert pngs(out) == ["comparison.png", "edit.png", "reconstruction.png", "source.png"]
    m = last_json(stdout)
    assert m["freeze"] == 2 and m["latent_mse"] <= 1e-12


def test_cli_interpolate(capsys, model_dirs, image_files, tmp_path):
    out = tmp_path / "interp"
    code, stdout, _ = run_cli(
        capsys, "interpolate", "--model", model_dirs["sd"], "--image", image_files["a"], "--image", image_files["b"],
        "--prompt", "a cat", "--frames", 3, "--steps", 4, "--out", out, "--json",
    )
    assert code == 0
    assert pngs(out) == ["frame_000.png", "frame_001.png", "frame_002.png", "strip.png"]
    assert last_json(stdout)["weights"] == [0.0, 0.5, 1.0]


def test_cli_sample(capsys, model_dirs, tmp_path):
    out = tmp_path / "sample"
    code, _, _ = run_cli(
        capsys, "sample", "--model", model_dirs["sd"], "--prompt", "a dog", "--guidance", "4", "--num", 2,
        "--seed", 1, "--steps", 4, "--method", "edict", "--out", out,
    )
    assert code == 0
    assert pngs(out) == ["grid.png", "sample_000.png", "sample_001.png"]
    assert json.loads((out / "metrics.json").read_text())["num"] == 2


def test_cli_subprocess_reconstruct(model_dirs, image_files, tmp_path):
    exe = shutil.which("belm")
    cmd = [exe] if exe else [sys.executable, "-m", "belm.cli"]
    out = tmp_path / "sub"
    proc = subprocess.run(
        [*cmd, "reconstruct", "--model", str(model_dirs["ddpm_v"]), "--image", str(image_files["b"]), "--steps", "10",
         "--method", "o-belm", "--out", str(out), "--json"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    metrics = last_json(proc.stdout)
    assert metrics["latent_mse"] <= 1e-12
    assert (out / "reconstruction.png").is_file() and (out / "metrics.json").is_file()


# ---------------------------------------------------------------------------------
# bad input: exit code 2 and a message naming the problem
# ---------------------------------------------------------------------------------
def test_cli_bad_input(capsys, model_dirs, image_files, tmp_path):
    ddpm, sd, img = model_dirs["ddpm"], model_dirs["sd"], image_files["a"]
    out = tmp_path / "o"
    cases = [
        (["reconstruct", "--model", tmp_path / "nowhere", "--image", img], "nowhere"),
        (["reconstruct", "--model", ddpm, "--image", image_files["broken"]], "broken.png"),
        (["reconstruct", "--model", ddpm, "--image", tmp_path / "missing.png"], "missing.png"),
        (["reconstruct", "--model", ddpm, "--image", img, "--prompt", "a cat"], "unconditional"),
        (["sample", "--model", ddpm, "--guidance", "3"], "guidance_scale"),
        (["edit", "--model", sd, "--image", img, "--source-prompt", "a", "--target-prompt", "b", "--steps", 5,
          "--freeze", 5], "freeze"),
        (["reconstruct", "--model", sd, "--image", img, "--prompt", "a cat", "--guidance", "0.5"], "negative"),
        (["reconstruct", "--model", ddpm, "--image", img, "--method", "o-belm", "--gamma", "0.5"], "gamma"),
        (["reconstruct", "--model", ddpm, "--image", img, "--size", "15"], "divisible"),
        (["interpolate", "--model", ddpm, "--image", img], "twice"),
        (["reconstruct", "--model", ddpm, "--image", img, "--dtype", "int4"], "dtype"),
        (["reconstruct", "--model", ddpm, "--image", img, "--inversion-substeps", 0], "--inversion-substeps=0"),
        (["reconstruct", "--model", ddpm, "--image", img, "--method", "ddim", "--spacing", "trailing",
          "--inversion-substeps", 4], "inversion_substeps=4 needs a linear multistep method"),
    ]
    broken = tmp_path / "no_vae"
    shutil.copytree(sd, broken)
    shutil.rmtree(broken / "vae")
    cases.append((["reconstruct", "--model", broken, "--image", img], "vae"))
    for argv, needle in cases:
        code, _, err = run_cli(capsys, *argv, "--steps", 3, "--out", out)
        assert code == 2, (argv, err)
        assert needle in err, (argv, err)
        assert "Traceback" not in err
    with pytest.raises(SystemExit) as info:  # argparse rejects an unknown method name
        main(["reconstruct", "--model", str(ddpm), "--image", str(img), "--method", "euler", "--out", str(out)])
    assert info.value.code == 2
    assert "euler" in capsys.readouterr().err


# ---------------------------------------------------------------------------------
# SamplingOptions and input ranges
# ---------------------------------------------------------------------------------
def test_options_object_equals_keywords_and_keywords_override(pipes, image_files):
    import dataclasses

    pipe = pipes["ddpm"]
    image = load_image(image_files["a"], 16)
    options = apps.SamplingOptions(steps=3, method="bdia", spacing="trailing")
    by_options = apps.reconstruct(pipe, image, options=options)
    by_keywords = apps.reconstruct(pipe, image, steps=3, method="bdia", spacing="trailing")
    assert torch.equal(by_options.z0_rec, by_keywords.z0_rec)
    assert by_options.metrics == by_keywords.metrics
    overridden = apps.reconstruct(pipe, image, options=options, steps=4)
    assert overridden.metrics["steps"] == 4 and overridden.metrics["method"] == by_options.metrics["method"]
    assert options.steps == 3  # frozen: the override made a new object
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.steps = 5
    x = apps.sample(pipe, num=1, steps=2, options=apps.SamplingOptions(method="ddim"))
    assert torch.equal(x, apps.sample(pipe, num=1, steps=2, method="ddim"))


def test_options_bad_values():
    S = apps.SamplingOptions
    with pytest.raises(ValueError, match="steps=0"):
        S(steps=0)
    with pytest.raises(ValueError, match="guidance_scale=nan"):
        S(guidance_scale=float("nan"))
    with pytest.raises(TypeError, match="guidance_scale='3'"):
        S(guidance_scale="3")
    with pytest.raises(ValueError, match="euler"):
        S(method="euler")
    with pytest.raises(TypeError, match="prompt"):
        S(prompt=["a", "b"])
    with pytest.raises(TypeError, match="progress"):
        S(progress="yes")
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="inversion_substeps=.*integer ≥ 1"):
            S(inversion_substeps=bad)
    with pytest.raises(TypeError, match="SamplingOptions"):
        S.merge({"steps": 3})
    assert S(guidance_scale=np.float32(2.5), steps=np.int64(7)) == S(guidance_scale=2.5, steps=7)


def test_edit_takes_its_prompts_as_arguments(pipes, image_files):
    pipe = pipes["sd"]
    image = load_image(image_files["a"], 16)
    with pytest.raises(ValueError, match="source_prompt and target_prompt"):
        apps.edit(pipe, image, "a cat", "a dog", options=apps.SamplingOptions(prompt="a cat", steps=2))


def test_unavailable_spacing_is_the_schedules_message(pipes, image_files):
    with pytest.raises(ValueError, match="spacing='beta' is not available for DiscreteVP"):
        apps.reconstruct(pipes["ddpm"], load_image(image_files["a"], 16), steps=2, spacing="beta")


def test_images_outside_minus_one_one_are_refused(pipes, image_files):
    pipe = pipes["ddpm"]
    image = load_image(image_files["a"], 16)
    pixels = (image + 1) * 127.5  # the same picture in [0, 255]
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        apps.reconstruct(pipe, pixels, steps=2)
    with pytest.raises(TypeError, match="uint8"):
        apps.interpolate(pipe, pixels.round().to(torch.uint8), image, steps=2)
    with pytest.raises(ValueError, match="NaN"):
        apps.reconstruct(pipe, image * float("nan"), steps=2)
    with pytest.raises(ValueError, match="clamp"):
        apps.reconstruct(pipe, image * 1.2, steps=2)


def test_load_image_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        load_image(tmp_path, 16)
