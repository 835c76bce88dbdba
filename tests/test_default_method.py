"""The applications' default method (SamplingOptions.method=None): the recommended exact low-step
sampler when sampling from noise on a DDPM/SD-type schedule or a flow, O-BELM on the pipeline's grid otherwise."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from backends.pipelines import adapt  # noqa: E402
from belm import apps  # noqa: E402
from belm_core import recommended  # noqa: E402


def test_sampling_from_noise_defaults_to_recommended(tiny):
    pipe = adapt(tiny["sd"])
    solver = pipe.solver(6, None, from_noise=True)
    rec = recommended(pipe.schedule, 6)
    assert solver.method.signature() == rec["method"].signature() and solver.startup == rec["startup"] == "pc-shift-moved"  # SD: scaled-linear, σ̄(999) = 14.6
    assert solver.timesteps[0] == pipe.schedule.num_train_timesteps - 1  # trailing-tail: starts at T − 1
    # an explicit method or an inversion keeps what was asked / O-BELM on the config's grid
    assert pipe.solver(6, None).method.signature() == "o-belm"
    assert pipe.solver(6, "bdia", from_noise=True).method.signature().startswith("bdia")


def test_sample_app_uses_the_recommended_solver(tiny, monkeypatch):
    pipe = adapt(tiny["sd"])
    seen = []
    original = type(pipe).solver

    def spy(self, *args, **kwargs):
        solver = original(self, *args, **kwargs)
        seen.append(solver)
        return solver

    monkeypatch.setattr(type(pipe), "solver", spy)
    z = apps.sample(pipe, num=1, steps=5, prompt="a cat", guidance_scale=2.0, output_type="latent")
    assert torch.isfinite(z).all()
    assert [s.method.signature() for s in seen] == ["dpl-ob-curv(band=(1.0, 10.0), shift_last='after-dpl')"]
    latent = apps.invert(pipe, latents=z, prompt="a cat", guidance_scale=2.0, steps=5)
    assert latent.method == "o-belm"  # inversion keeps O-BELM (the drop-in scheduler's default)


def test_flow_models_sample_with_the_flow_recommendation(tiny_flow):
    pipe = adapt(tiny_flow)
    solver = pipe.solver(6, None, from_noise=True)
    assert recommended(pipe.schedule, 6) == {"method": "o-belm", "startup": "pc"}
    assert solver.method.signature() == "o-belm" and solver.startup == "pc"
    np.testing.assert_array_equal(solver.timesteps, pipe.flow_timesteps(6))  # the pipeline's own grid
    # inversion keeps the DDIM start (which it never uses anyway) and O-BELM
    assert pipe.solver(6, None).startup == "ddim"


@pytest.fixture(scope="module")
def tiny_flow():
    from tiny_pipelines import tiny_sd3_pipeline

    return tiny_sd3_pipeline()


def test_cli_sample_records_the_default(tmp_path, tiny):
    from belm.cli import main

    folder = tmp_path / "sd"
    tiny["sd"].save_pretrained(folder)
    out = tmp_path / "out"
    code = main(["sample", "--model", str(folder), "--prompt", "a cat", "--num", "1", "--steps", "4",
                 "--out", str(out), "--json", "--no-progress"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "dpl-ob-curv(band=(1.0, 10.0), shift_last='after-dpl')" and metrics["startup"] == "pc-shift-moved" and metrics["first_timestep"] == 999.0
