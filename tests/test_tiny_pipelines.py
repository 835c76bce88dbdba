"""The tiny in-memory pipelines (tiny_pipelines.py): deterministic, prompt- and time-dependent,
and unchanged by a save_pretrained / DiffusionPipeline.from_pretrained round trip."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import tiny_pipelines as tp  # noqa: E402

# name → (builder, guidance scale, extra call kwargs, latent shape returned by output_type="latent")
CASES = {
    "sd": (lambda: tp.tiny_sd_pipeline(), 3.0, {}, (1, 4, 8, 8)),
    "sd_v": (lambda: tp.tiny_sd_pipeline("v_prediction"), 3.0, {}, (1, 4, 8, 8)),
    "sdxl": (tp.tiny_sdxl_pipeline, 3.0, {}, (1, 4, 8, 8)),
    "sd3": (lambda: tp.tiny_sd3_pipeline(with_t5=False), 3.0, {}, (1, 16, 8, 8)),
    "sd3_t5": (lambda: tp.tiny_sd3_pipeline(with_t5=True), 3.0, {}, (1, 16, 8, 8)),
    "flux": (tp.tiny_flux_pipeline, 3.5, tp.FLUX_SIZE, (1, 16, 64)),  # packed: 4×4 patches of 16·2·2
}
DENOISER = {"sd": "unet", "sd_v": "unet", "sdxl": "unet", "sd3": "transformer", "sd3_t5": "transformer", "flux": "transformer"}


@pytest.fixture(scope="module")
def built():
    cache = {}

    def get(name):
        if name not in cache:
            pipe = CASES[name][0]()
            pipe.set_progress_bar_config(disable=True)
            cache[name] = pipe
        return cache[name]

    return get


def _call(pipe, name, prompt="a photo of a cat", seed=0, **overrides):
    _, g, extra, _ = CASES[name]
    kwargs = {"num_inference_steps": 2, "guidance_scale": g, "output_type": "latent", **extra, **overrides}
    return pipe(prompt, generator=torch.Generator().manual_seed(seed), **kwargs).images


@pytest.mark.parametrize("name", list(CASES))
def test_deterministic_and_prompt_dependent(built, name):
    pipe = built(name)
    a, b = _call(pipe, name), _call(pipe, name)
    assert a.shape == CASES[name][3] and a.dtype == torch.float32
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)
    other = _call(pipe, name, prompt="a red dog")
    assert (a - other).abs().max() > 1e-3


@pytest.mark.parametrize("name", list(CASES))
def test_denoiser_depends_on_latents_and_time(built, name):
    """The first denoiser call, replayed with its own inputs, with other latents and at another time."""
    pipe = built(name)
    model = getattr(pipe, DENOISER[name])
    seen = []
    handle = model.register_forward_pre_hook(lambda m, args, kwargs: seen.append((args, kwargs)), with_kwargs=True)
    try:
        _call(pipe, name)
    finally:
        handle.remove()
    args, kwargs = seen[0]
    kwargs = {**kwargs, "return_dict": False}

    def run(args, kwargs):
        with torch.no_grad():
            return model(*args, **kwargs)[0]

    base = run(args, kwargs)
    assert torch.equal(base, run(args, kwargs))
    if args:  # UNet: (sample, t)
        x, t = args[0], args[1]
        shifted_x, shifted_t = (x + 0.5, t), (x, t - 300)
        assert (base - run(shifted_x, kwargs)).abs().max() > 1e-3
        assert (base - run(shifted_t, kwargs)).abs().max() > 1e-3
    else:  # transformers: hidden_states=..., timestep=...
        x, t = kwargs["hidden_states"], kwargs["timestep"]
        assert (base - run((), {**kwargs, "hidden_states": x + 0.5})).abs().max() > 1e-3
        assert (base - run((), {**kwargs, "timestep": t * 0.5})).abs().max() > 1e-3


def test_flux_guidance_embedding_changes_the_output(built):
    """FLUX.1-dev is guidance-distilled: guidance_scale enters the transformer, with no CFG batch."""
    pipe = built("flux")
    assert pipe.transformer.config.guidance_embeds
    assert (_call(pipe, "flux", guidance_scale=1.0) - _call(pipe, "flux", guidance_scale=5.0)).abs().max() > 1e-3


@pytest.mark.parametrize("name", list(CASES))
def test_save_load_round_trip(built, name, tmp_path):
    from diffusers import DiffusionPipeline

    pipe = built(name)
    pipe.save_pretrained(tmp_path)
    # Components saved as null (safety checker, SD3 without T5) must be passed as None again:
    # diffusers refuses a missing non-optional component (text_encoder_3 / tokenizer_3).
    index = json.loads((tmp_path / "model_index.json").read_text())
    nulls = {k: None for k, v in index.items() if isinstance(v, list) and v[0] is None}
    loaded = DiffusionPipeline.from_pretrained(tmp_path, **nulls)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded) is type(pipe)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.scheduler.config) == public(pipe.scheduler.config)
    assert torch.equal(_call(loaded, name), _call(pipe, name))
