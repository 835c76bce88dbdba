"""Shared fixtures: tiny random diffusers models saved once per test session (see tiny_models.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import settings

sys.path.insert(0, str(Path(__file__).resolve().parent))

# CI replays a fixed set of examples (reproducible verdicts); local runs explore new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def pytest_configure(config):
    """One intra-op thread: the models here are tiny, and on a busy machine torch's thread pool
    spin-waits (measured: 40 tiny-UNet calls 0.2 s with 1 thread, 7 s with 2 on a loaded 2-core box)."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        return
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    """Folders of the tiny pipelines, built lazily: name → path.

    ddpm: pixel DDPM, ε-prediction, linear β · ddpm_v: pixel DDPM, v-prediction, cosine β ·
    sd: tiny Stable Diffusion (ε) · sd_v: the same with a v-prediction scheduler config.
    """
    pytest.importorskip("diffusers")
    import shutil
    import json

    from tiny_models import save_pixel_ddpm, save_tiny_sd

    root = tmp_path_factory.mktemp("models")
    built: dict[str, Path] = {}

    class Dirs:
        def __getitem__(self, name: str) -> Path:
            if name not in built:
                if name == "ddpm":
                    built[name] = save_pixel_ddpm(root / name)
                elif name == "ddpm_v":
                    built[name] = save_pixel_ddpm(root / name, "v_prediction", "squaredcos_cap_v2")
                elif name == "sd":
                    built[name] = save_tiny_sd(root / name)
                elif name == "sd_v":
                    src = self["sd"]
                    dst = root / name
                    shutil.copytree(src, dst)
                    cfg_path = dst / "scheduler" / "scheduler_config.json"
                    cfg = json.loads(cfg_path.read_text())
                    cfg["prediction_type"] = "v_prediction"
                    cfg_path.write_text(json.dumps(cfg))
                    built[name] = dst
                else:
                    raise KeyError(name)
            return built[name]

    return Dirs()


@pytest.fixture(scope="session")
def pipes(model_dirs):
    """Pipelines loaded from the `model_dirs` folders (CPU, float32) by `load_pipeline`, seen
    through their `backends.pipelines` adapter, cached: name → PipelineAdapter."""
    from backends.pipelines import adapt
    from backends.unet import load_pipeline

    loaded = {}

    class Pipes:
        def __getitem__(self, name: str):
            if name not in loaded:
                pipe = load_pipeline(model_dirs[name], device="cpu", dtype="float32")
                pipe.set_progress_bar_config(disable=True)
                loaded[name] = adapt(pipe)
            return loaded[name]

    return Pipes()


@pytest.fixture(scope="session")
def tiny():
    """In-memory tiny diffusers pipelines (tests/tiny_pipelines.py), built once: name → pipeline.

    sd: StableDiffusionPipeline (ε) · sd_v: SD 2.x layout, v-prediction · sdxl: StableDiffusionXLPipeline ·
    ddpm: pixel DDPMPipeline (ε, linear β).
    """
    pytest.importorskip("diffusers")
    import tiny_pipelines

    built: dict = {}

    class Tiny:
        def __getitem__(self, name: str):
            if name not in built:
                if name == "sd":
                    pipe = tiny_pipelines.tiny_sd_pipeline("epsilon")
                elif name == "sd_v":
                    pipe = tiny_pipelines.tiny_sd_pipeline("v_prediction")
                elif name == "sdxl":
                    pipe = tiny_pipelines.tiny_sdxl_pipeline()
                elif name == "ddpm":
                    from diffusers import DDPMPipeline, DDPMScheduler
                    from tiny_models import pixel_unet

                    pipe = DDPMPipeline(unet=pixel_unet(), scheduler=DDPMScheduler(num_train_timesteps=1000))
                else:
                    raise KeyError(name)
                pipe.set_progress_bar_config(disable=True)
                built[name] = pipe
            return built[name]

    return Tiny()


@pytest.fixture(scope="session")
def image_files(tmp_path_factory):
    """Two non-square test images (PNG) and a file that is not an image."""
    from tiny_models import save_test_image

    root = tmp_path_factory.mktemp("images")
    a = save_test_image(root / "a.png", (24, 20), seed=0)
    b = save_test_image(root / "b.png", (20, 28), seed=1)
    bad = root / "broken.png"
    bad.write_bytes(b"this is not a PNG file")
    return {"a": a, "b": b, "broken": bad}
