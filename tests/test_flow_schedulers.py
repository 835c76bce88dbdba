"""The drop-in flow schedulers (backends/schedulers.py): BELMFlowScheduler and BELMFlowInverseScheduler
against diffusers' FlowMatchEulerDiscreteScheduler, `belm_core.Solver`, and inside tiny SD3 and Flux pipelines."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import tiny_pipelines as tp  # noqa: E402
from backends.config import flow_schedule_from_config  # noqa: E402
from backends.schedulers import (  # noqa: E402
    BELMFlowInverseScheduler,
    BELMFlowScheduler,
    BELMInverseScheduler,
    BELMScheduler,
)
from belm_core import FlowMatch, Latent, Solver, recommended  # noqa: E402

PROMPT = "a photo of a cat"
STEPS = 8
GUIDANCE = {"sd3": 3.0, "flux": 3.5}  # the acceptance cases
CALL = {"sd3": {}, "flux": tp.FLUX_SIZE}  # FluxPipeline needs the size on every call
SD3_CONFIG = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}
FLUX_CONFIG = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, **tp.FLUX_SHIFT}
FLUX_SEQ = (tp.LATENT_SIZE // 2) ** 2  # packed 2×2 tokens of an 8×8 latent


def _flux_set_timesteps_args(N: int, seq: int = FLUX_SEQ) -> dict:
    """What FluxPipeline passes to set_timesteps (via retrieve_timesteps): sigmas and mu, no N."""
    return {"sigmas": np.linspace(1.0, 1 / N, N), "mu": FlowMatch(**tp.FLUX_SHIFT).mu_for(seq)}


# -- the tiny pipelines, their velocity functions and latents --------------------------------------------------
class _Case:
    """A tiny pipeline, its scheduler config, a z0 in the pipeline's latent format and v(x, t) on its transformer."""

    def __init__(self, name: str):
        self.name, self.g = name, GUIDANCE[name]
        self.pipe = tp.tiny_sd3_pipeline() if name == "sd3" else tp.tiny_flux_pipeline()
        self.pipe.set_progress_bar_config(disable=True)
        self.config = self.pipe.scheduler.config
        shape = (1, 16, tp.LATENT_SIZE, tp.LATENT_SIZE) if name == "sd3" else (1, FLUX_SEQ, 64)
        self.z0 = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():  # (as in the pipeline: grad mode changes the text encoders' rounding)
            self.v = self._sd3_v() if name == "sd3" else self._flux_v()

    def run(self, scheduler, latents, **kwargs):
        self.pipe.scheduler = scheduler
        return self.pipe(
            PROMPT, latents=latents, num_inference_steps=STEPS, guidance_scale=self.g, output_type="latent",
            **CALL[self.name], **kwargs,
        ).images

    def _sd3_v(self):
        """The velocity SD3's pipeline computes: true CFG in one batch (uncond, cond), model time t as given."""
        pipe, g = self.pipe, self.g
        cond, neg, pooled, neg_pooled = pipe.encode_prompt(PROMPT, None, None, do_classifier_free_guidance=True)
        embeds, pooled = torch.cat([neg, cond]), torch.cat([neg_pooled, pooled])

        def v(x, t):
            out = pipe.transformer(
                hidden_states=torch.cat([x.float()] * 2), timestep=torch.tensor(t, dtype=torch.float32).expand(2),
                encoder_hidden_states=embeds, pooled_projections=pooled, return_dict=False,
            )[0]
            uncond, text = out.chunk(2)
            return uncond + g * (text - uncond)

        return v

    def _flux_v(self):
        """The velocity Flux's pipeline computes: distilled guidance embedding, model time t/1000, packed latents."""
        pipe = self.pipe
        embeds, pooled, text_ids = pipe.encode_prompt(PROMPT, None)
        image_ids = pipe._prepare_latent_image_ids(1, tp.LATENT_SIZE // 2, tp.LATENT_SIZE // 2, "cpu", torch.float32)
        guidance = torch.full([1], self.g, dtype=torch.float32)

        def v(x, t):
            return pipe.transformer(
                hidden_states=x.float(), timestep=torch.tensor([t], dtype=torch.float32) / 1000, guidance=guidance,
                pooled_projections=pooled, encoder_hidden_states=embeds, txt_ids=text_ids, img_ids=image_ids,
                return_dict=False,
            )[0]

        return v


@pytest.fixture(scope="module")
def case():
    cache: dict[str, _Case] = {}

    def get(name: str) -> _Case:
        if name not in cache:
            cache[name] = _Case(name)
        return cache[name]

    return get


def _analytic_v(x, t):
    """A smooth, nonlinear velocity field in torch (deterministic: exact inversion needs that)."""
    s = t / 1000.0
    return torch.sin(1.3 * x + s) - 0.4 * x * (1.0 - 0.5 * s)


def _model(x, t):
    """`_analytic_v` as a float32 model: float32 state in, float32 velocity out."""
    return _analytic_v(x.float().double(), float(t)).float()


def _loop(scheduler, x):
    """The pipeline's loop: for t in timesteps, x = step(model(x, t), t, x)."""
    for t in scheduler.timesteps:
        x = scheduler.step(_model(x, t), t, x, return_dict=False)[0]
    return x


# -- construction and grids ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_from_config_of_sd3_and_flux(case, name):
    """From the pipelines' own configs: the FlowMatch that backends.config reads, velocity, diffusers' surface."""
    config = case(name).config
    sched = BELMFlowScheduler.from_config(config, method="o-belm")
    inv = BELMFlowInverseScheduler.from_config(config)
    reference = flow_schedule_from_config(config)
    for s in (sched, inv):
        assert s.method.signature() == "o-belm" and s.config.method == "o-belm"
        for key in ("num_train_timesteps", "shift", "use_dynamic_shifting", "base_shift", "max_shift",
                    "base_image_seq_len", "max_image_seq_len"):
            assert s.config[key] == config[key], key
            assert getattr(s.schedule, key) == getattr(reference, key), key
        assert isinstance(s.schedule, FlowMatch) and s._options == {"prediction": "velocity"}
        assert len(s) == 1000 and s.order == 1 and s.init_noise_sigma == 1.0
        x = torch.randn(1, 4, 2, 2)
        assert s.scale_model_input(x, 500.0) is x
    assert "FlowMatchEulerDiscreteScheduler" in BELMFlowScheduler._compatibles
    sched.set_timesteps(**(_flux_set_timesteps_args(STEPS) if name == "flux" else {"num_inference_steps": STEPS}))
    assert sched.solver.prediction == "velocity" and sched.solver.grid.sigma[-1] == 1.0  # starts at pure noise


GRID_CASES = [
    ("sd3", {"num_inference_steps": 8}),
    ("sd3", {"num_inference_steps": 28}),
    ("sd3", {"num_inference_steps": 10, "mu": 0.9}),  # mu ignored without dynamic shifting (as diffusers)
    ("sd3", {"sigmas": [1.0, 0.8, 0.55, 0.3, 0.1]}),
    ("flux", _flux_set_timesteps_args(8)),
    ("flux", _flux_set_timesteps_args(28, seq=1024)),
    ("flux", {"num_inference_steps": 10, "mu": 1.1}),
]


@pytest.mark.parametrize(
    "name, kwargs", GRID_CASES, ids=["sd3-8", "sd3-28", "sd3-mu-ignored", "sd3-sigmas", "flux-8", "flux-28", "flux-N-mu"]
)
def test_timesteps_and_sigmas_equal_diffusers(name, kwargs):
    """After the same set_timesteps call: diffusers' float32 timesteps bit for bit, its sigmas (with the
    appended 0) to float32 rounding (ours are t/T of those timesteps); the inverse scheduler builds the same
    grid and publishes the inversion's evaluation times on it."""
    config = SD3_CONFIG if name == "sd3" else FLUX_CONFIG
    theirs = diffusers.FlowMatchEulerDiscreteScheduler.from_config(config)
    theirs.set_timesteps(**kwargs)
    ours = BELMFlowScheduler.from_config(config)
    ours.set_timesteps(**kwargs)
    assert ours.timesteps.dtype == torch.float32 and torch.equal(ours.timesteps, theirs.timesteps)
    assert ours.sigmas.dtype == torch.float32 and ours.sigmas[-1] == 0 and len(ours.sigmas) == len(theirs.sigmas)
    torch.testing.assert_close(ours.sigmas, theirs.sigmas, rtol=2.4e-7, atol=0)  # ≤ 2 ulp
    t = ours.timesteps.tolist()  # t_N … t_1
    for method, expected in (("o-belm", [t[-1]] + t[::-1][:-1]), ("ddim", t[::-1])):
        inv = BELMFlowInverseScheduler.from_config(config, method=method)
        inv.set_timesteps(**kwargs)
        sampler = BELMFlowScheduler.from_config(config, method=method)
        sampler.set_timesteps(**kwargs)
        assert inv.solver.grid.key == sampler.solver.grid.key
        assert inv.timesteps.dtype == torch.float32 and inv.timesteps.tolist() == expected
        torch.testing.assert_close(inv.sigmas, ours.sigmas, rtol=0, atol=0)


def test_explicit_timesteps_are_used_as_given():
    ours = BELMFlowScheduler.from_config(SD3_CONFIG)
    ours.set_timesteps(timesteps=[1000.0, 700.5, 400.0, 90.25])
    assert ours.timesteps.tolist() == [1000.0, 700.5, 400.0, 90.25]
    np.testing.assert_array_equal(ours.solver.grid.sigma[::-1], [1.0, 0.7005, 0.4, 0.09025, 0.0])


def test_scale_noise_matches_diffusers():
    theirs = diffusers.FlowMatchEulerDiscreteScheduler.from_config(SD3_CONFIG)
    ours = BELMFlowScheduler.from_config(SD3_CONFIG)
    for s in (theirs, ours):
        s.set_timesteps(10)
    x0, noise = torch.randn(2, 16, 4, 4), torch.randn(2, 16, 4, 4)
    t = ours.timesteps[3:4].repeat(2)
    torch.testing.assert_close(ours.scale_noise(x0, t, noise), theirs.scale_noise(x0, t, noise), rtol=1e-6, atol=1e-6)
    sigma = ours.sigmas[3].double()
    torch.testing.assert_close(ours.scale_noise(x0.double(), t, noise.double()), (1 - sigma) * x0.double() + sigma * noise.double())


# -- the step protocol against belm_core ----------------------------------------------------------------------
@pytest.mark.parametrize("method", ["o-belm", "bdia", "ddim", "recommended"])
def test_manual_loops_equal_solver(method):
    """A pipeline-style loop through either scheduler gives Solver.sample / Solver.invert bit for bit
    ("recommended": `belm_core.recommended`'s method and predictor–corrector start-up)."""
    kw = {"gamma": 0.9} if method == "bdia" else {}
    sched = BELMFlowScheduler.from_config(FLUX_CONFIG, method=method, **kw)
    sched.set_timesteps(**_flux_set_timesteps_args(12))
    options = recommended(sched.schedule, 12) if method == "recommended" else {"method": sched.method}
    assert method != "recommended" or options == {"method": "o-belm", "startup": "pc"}
    solver = Solver(sched.schedule, timesteps=sched.solver.timesteps, prediction="velocity", **options)
    x = torch.randn(2, FLUX_SEQ, 8, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(_loop(sched, x), solver.sample(_model, x).float(), rtol=0, atol=0)
    inv = BELMFlowInverseScheduler.from_config(FLUX_CONFIG, method=method, **kw)
    inv.set_timesteps(**_flux_set_timesteps_args(12))
    _loop(inv, x)
    ours, reference = inv.latent, solver.invert(_model, x)
    assert (ours.index, ours.method, ours.grid_key) == (reference.index, reference.method, reference.grid_key)
    for a, b in zip(ours.states, reference.states):
        assert a.dtype == torch.float64 and torch.equal(a, b)


def test_resync_after_an_edit_equals_a_fresh_run():
    """The shared re-sync rule: an edited sample restarts the history there (a fresh run from it)."""
    sched = BELMFlowScheduler.from_config(SD3_CONFIG)
    sched.set_timesteps(8)
    x = torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    ts = sched.timesteps
    for t in ts[:3]:
        x = sched.step(_model(x, t), t, x).prev_sample
    edited = x * 0.5
    y = edited
    for t in ts[3:]:
        y = sched.step(_model(y, t), t, y).prev_sample
    fresh = BELMFlowScheduler.from_config(SD3_CONFIG)
    fresh.set_timesteps(8)
    fresh.set_begin_index(3)
    z = edited
    for t in ts[3:]:
        z = fresh.step(_model(z, t), t, z).prev_sample
    assert torch.equal(y, z)


@pytest.mark.parametrize("begin", [0, 2, 5])
def test_recommended_img2img_and_edits_on_a_flow(begin):
    """method="recommended" on a flow (O-BELM with the predictor–corrector start, every call at a grid
    time): img2img from timesteps[b] and an edit mid-run restart with the start-up there; on point-mass
    data (straight trajectories x = (1 − σ) c + σ n) the walk lands on the point."""
    sched = BELMFlowScheduler.from_config(SD3_CONFIG, method="recommended")
    sched.set_timesteps(8)
    sched.set_begin_index(begin)
    c = torch.linspace(-1.0, 1.0, 18, dtype=torch.float64).reshape(1, 2, 3, 3)
    ts = sched.timesteps[begin:]
    x = sched.scale_noise(c, ts[:1], torch.randn(c.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    for n, t in enumerate(ts):
        sigma = float(t) / 1000.0
        x = sched.step((x - c) / sigma, t, x).prev_sample
        if n == 1 and n + 1 < len(ts):
            x = 0.5 * x
    torch.testing.assert_close(x, c, rtol=0, atol=1e-9)


# -- inside the pipelines ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_pipeline_runs_equal_solver_and_ddim_is_diffusers_euler(case, name):
    """O-BELM inside pipe(...) is Solver.sample with the pipeline's velocity, bit for bit; method="ddim" is
    diffusers' FlowMatchEulerDiscreteScheduler to float32 rounding (and O-BELM is not)."""
    c = case(name)
    z = torch.randn(c.z0.shape, generator=torch.Generator().manual_seed(1))
    obelm = c.run(BELMFlowScheduler.from_config(c.config, method="o-belm"), z)
    grid = c.pipe.scheduler.solver.timesteps
    solver = Solver(flow_schedule_from_config(c.config), method="o-belm", timesteps=grid, prediction="velocity")
    with torch.no_grad():
        assert torch.equal(obelm, solver.sample(c.v, z).float())
    ddim = c.run(BELMFlowScheduler.from_config(c.config, method="ddim"), z)
    euler = c.run(diffusers.FlowMatchEulerDiscreteScheduler.from_config(c.config), z)
    scale = float(euler.abs().max())
    assert float((ddim - euler).abs().max()) <= 16 * 2**-23 * scale  # 8 steps × float32 rounding
    assert float((obelm - euler).abs().max()) > 1e-3 * scale  # (a different, second-order method)


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_exact_reconstruction_through_the_pipelines(case, name):
    """Invert z0 with BELMFlowInverseScheduler as pipe.scheduler, sample it back with BELMFlowScheduler.set_latent:
    z0 again (acceptance: MSE ≤ 1e-16; SD3 g = 3 with true CFG, Flux g = 3.5 packed latents)."""
    c = case(name)
    recorded = []
    hook = c.pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: recorded.append(float(kwargs["timestep"].reshape(-1)[0])), with_kwargs=True
    )
    try:
        c.run(BELMFlowInverseScheduler.from_config(c.config), c.z0)
    finally:
        hook.remove()
    inverse = c.pipe.scheduler
    latent = inverse.latent
    assert isinstance(latent, Latent) and latent.index == STEPS and latent.method == "o-belm"
    assert latent.dtype == "float32" and all(s.dtype == torch.float64 for s in latent.states)
    # the transformer saw the inversion's evaluation times (Flux divides them by 1000)
    per = 1.0 if name == "sd3" else 1000.0
    assert [round(t * per, 3) for t in recorded] == [round(t, 3) for t in inverse.timesteps.tolist()]
    sampler = BELMFlowScheduler.from_config(c.config, method="o-belm")
    sampler.set_latent(latent)
    z0_again = c.run(sampler, latent.states[0].float())
    mse = float(((z0_again.double() - c.z0.double()) ** 2).mean())
    assert mse <= 1e-16, mse
    assert sampler.solver.grid.key == inverse.solver.grid.key


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_recommended_inside_the_pipelines(case, name):
    """method="recommended" inside pipe(...) is Solver.sample with `recommended`'s start-up ("pc", whose
    corrector reads the predictor: not a state the Euler-style loop would hold), and it inverts and
    reconstructs through the pipeline."""
    c = case(name)
    z = torch.randn(c.z0.shape, generator=torch.Generator().manual_seed(2))
    out = c.run(BELMFlowScheduler.from_config(c.config, method="recommended"), z)
    grid = c.pipe.scheduler.solver.timesteps
    schedule = flow_schedule_from_config(c.config)
    solver = Solver(schedule, timesteps=grid, prediction="velocity", **recommended(schedule, STEPS))
    with torch.no_grad():
        assert torch.equal(out, solver.sample(c.v, z).float())
    assert not torch.equal(out, c.run(BELMFlowScheduler.from_config(c.config, method="o-belm"), z))
    c.run(BELMFlowInverseScheduler.from_config(c.config, method="recommended"), c.z0)
    latent = c.pipe.scheduler.latent
    sampler = BELMFlowScheduler.from_config(c.config, method="recommended")
    sampler.set_latent(latent)
    again = c.run(sampler, latent.states[0].float())
    assert float(((again.double() - c.z0.double()) ** 2).mean()) <= 1e-16


# -- config persistence ---------------------------------------------------------------------------------------
def test_save_and_load_config(tmp_path):
    sched = BELMFlowScheduler.from_config(FLUX_CONFIG, method="bdia", gamma=0.8)
    sched.save_config(tmp_path)
    loaded = BELMFlowScheduler.from_pretrained(tmp_path)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(sched.config) and loaded.method.signature() == "bdia(gamma=0.8)"
    for s in (sched, loaded):
        s.set_timesteps(**_flux_set_timesteps_args(8))
    assert torch.equal(loaded.timesteps, sched.timesteps)
    inverse = BELMFlowInverseScheduler.from_config(loaded.config)  # the same config, either direction
    assert inverse.method.signature() == "bdia(gamma=0.8)" and inverse.config.use_dynamic_shifting
    back = diffusers.FlowMatchEulerDiscreteScheduler.from_config(sched.config)  # and back to diffusers
    back.set_timesteps(**_flux_set_timesteps_args(8))
    assert torch.equal(back.timesteps, sched.timesteps)


# -- bad input ------------------------------------------------------------------------------------------------
def test_family_and_option_errors():
    with pytest.raises(ValueError, match="not a rectified-flow config.*BELMScheduler"):
        BELMFlowScheduler.from_config({"_class_name": "DDIMScheduler", **tp.SD_BETAS})
    with pytest.raises(ValueError, match="rectified-flow config.*BELMFlowInverseScheduler"):
        BELMInverseScheduler.from_config(SD3_CONFIG)
    with pytest.raises(ValueError, match="rectified-flow config.*BELMFlowScheduler"):
        BELMScheduler.from_config(FLUX_CONFIG)
    for option, value in (("use_karras_sigmas", True), ("shift_terminal", 0.1), ("invert_sigmas", True),
                          ("stochastic_sampling", True)):
        with pytest.raises(ValueError, match=option):
            BELMFlowScheduler.from_config({**SD3_CONFIG, option: value})
    with pytest.raises(ValueError, match="edict"):
        BELMFlowScheduler.from_config(SD3_CONFIG, method="edict")
    with pytest.raises(ValueError, match="not known"):
        BELMFlowInverseScheduler.from_config(SD3_CONFIG, method="euler")


def test_set_timesteps_errors():
    flux = BELMFlowScheduler.from_config(FLUX_CONFIG)
    with pytest.raises(ValueError, match="mu is required"):
        flux.set_timesteps(8)
    with pytest.raises(ValueError, match="not both"):
        flux.set_timesteps(sigmas=[1.0, 0.5], timesteps=[1000.0, 500.0], mu=0.5)
    with pytest.raises(ValueError, match="num_inference_steps=3 differs"):
        flux.set_timesteps(3, sigmas=[1.0, 0.5], mu=0.5)
    with pytest.raises(ValueError, match="give num_inference_steps"):
        flux.set_timesteps()
    with pytest.raises(ValueError, match="sigmas must lie in"):
        flux.set_timesteps(sigmas=[1.5, 0.5], mu=0.5)
    with pytest.raises(ValueError, match="strictly decreasing"):
        flux.set_timesteps(timesteps=[500.0, 800.0])
    with pytest.raises(ValueError, match="set_timesteps"):
        BELMFlowScheduler.from_config(SD3_CONFIG).step(torch.zeros(1), 1000.0, torch.zeros(1))


def test_step_errors():
    sched = BELMFlowScheduler.from_config(SD3_CONFIG)
    sched.set_timesteps(4)
    x = torch.randn(1, 2, 2, 2)
    with pytest.raises(ValueError, match="not on this scheduler's grid"):
        sched.step(x, 123.0, x)
    with pytest.raises(TypeError, match="timestep"):
        sched.step(x, "1000", x)
    with pytest.raises(ValueError, match="shape"):
        sched.step(x[0], sched.timesteps[0], x)
    x1 = sched.step(x, sched.timesteps[0], x).prev_sample
    with pytest.raises(ValueError, match="does not match the grid"):
        sched.step(x1, sched.timesteps[2], x1)
    inv = BELMFlowInverseScheduler.from_config(SD3_CONFIG)
    inv.set_timesteps(4)
    with pytest.raises(ValueError, match="no inversion has run"):
        inv.latent
    y1 = inv.step(x, inv.timesteps[0], x).prev_sample
    with pytest.raises(ValueError, match="not the one the previous step returned"):
        inv.step(y1, inv.timesteps[1], y1.clone())
    with pytest.raises(ValueError, match="does not match the grid"):
        inv.step(y1, inv.timesteps[3], y1)
    inv.set_timesteps(4)
    inv.set_begin_index(2)
    with pytest.raises(ValueError, match="begin_index=2"):
        inv.step(x, inv.timesteps[2], x)


def test_latent_on_another_grid_is_refused():
    inv = BELMFlowInverseScheduler.from_config(SD3_CONFIG)
    inv.set_timesteps(4)
    _loop(inv, torch.randn(1, 2, 2, 2))
    sched = BELMFlowScheduler.from_config(SD3_CONFIG)
    sched.set_latent(inv.latent)
    with pytest.raises(ValueError, match="does not fit set_timesteps"):
        sched.set_timesteps(5)
    with pytest.raises(ValueError, match="made by method"):
        BELMFlowScheduler.from_config(SD3_CONFIG, method="ddim").set_latent(inv.latent)
    sched.set_timesteps(4)
    with pytest.raises(ValueError, match="latent's first state"):
        sched.step(torch.zeros(1, 2, 2, 2), sched.timesteps[0], torch.zeros(1, 2, 2, 2))
