"""The drop-in diffusers schedulers (backends/schedulers.py) in tiny SD, SD-v and SDXL pipelines."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import tiny_pipelines as tp  # noqa: E402
from backends.config import schedule_from_config, solver_options  # noqa: E402
from backends.schedulers import BELMInverseScheduler, BELMScheduler  # noqa: E402
from backends.unet import UNetEps  # noqa: E402
from belm_core import Latent, Solver, TrajectoryReading, recommended  # noqa: E402
from belm_core.methods.pfamily import AFTER_DPL  # noqa: E402
from belm_core.stepper import Stepper  # noqa: E402

PROMPT = "a photo of a cat"
BUILDERS = {
    "sd": lambda: tp.tiny_sd_pipeline("epsilon"),
    "sd_v": lambda: tp.tiny_sd_pipeline("v_prediction"),
    "sdxl": tp.tiny_sdxl_pipeline,
}
GUIDANCE = {"sd": 3.0, "sd_v": 1.0, "sdxl": 3.0}  # the acceptance cases
STEPS = 8


@pytest.fixture(scope="module")
def built():
    cache = {}

    def get(name):
        if name not in cache:
            pipe = BUILDERS[name]()
            pipe.set_progress_bar_config(disable=True)
            cache[name] = (pipe, pipe.scheduler.config)
        pipe, config = cache[name]
        return pipe, config

    return get


def _z0(seed=0):
    return torch.randn(1, 4, tp.LATENT_SIZE, tp.LATENT_SIZE, generator=torch.Generator().manual_seed(seed))


def _run(pipe, scheduler, latents, g, **kwargs):
    pipe.scheduler = scheduler
    return pipe(PROMPT, latents=latents, num_inference_steps=STEPS, guidance_scale=g, output_type="latent", **kwargs).images


class UNetRecorder:
    """Records what the UNet sees (latents, timestep, conditioning) and returns, call by call."""

    def __init__(self, unet):
        self.calls = []
        self._handle = unet.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output):
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        hidden = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
        out = output[0] if isinstance(output, tuple) else output.sample
        self.calls.append((sample.detach().clone(), int(torch.as_tensor(timestep).reshape(-1)[0]), hidden, out.clone()))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.remove()


# -- construction -------------------------------------------------------------------------------------------
SOURCES = ["DDIMScheduler", "PNDMScheduler", "EulerDiscreteScheduler", "DPMSolverMultistepScheduler", "UniPCMultistepScheduler"]


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("name", list(BUILDERS))
def test_from_config_of_each_scheduler(built, name, source):
    """From any of the five configs: the same schedule, spacing, end and prediction type as the config says."""
    _, config = built(name)
    other = getattr(diffusers, source).from_config(config)
    sched = BELMScheduler.from_config(other.config, method="o-belm")
    assert sched.method.signature() == "o-belm" and sched.config.method == "o-belm"
    for key in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "steps_offset", "timestep_spacing"):
        assert sched.config[key] == other.config[key], key
    assert sched.config.prediction_type == config.prediction_type
    # the grid is the one backends.config reads from the source config (what belm.apps uses too)
    reference = Solver(schedule_from_config(other.config), STEPS, "o-belm", **solver_options(other.config))
    sched.set_timesteps(STEPS)
    assert sched.solver.grid.key == reference.grid.key
    assert sched.timesteps.dtype == torch.int64
    assert sched.timesteps.tolist() == reference.grid.timesteps.tolist()
    # the DDIM configs end at ᾱ_0 (set_alpha_to_one=False); the SDXL Euler config has no such key: ᾱ = 1
    assert sched.solver.grid.alpha[0] == (1.0 if other.config.get("set_alpha_to_one", True) else np.sqrt(sched.schedule.alphas_cumprod[0]))
    np.testing.assert_allclose(sched.schedule.alphas_cumprod, other.alphas_cumprod.double().numpy(), rtol=0, atol=0)


def test_from_config_options_override_and_same_timesteps_as_ddim(built):
    _, config = built("sd")
    sched = BELMScheduler.from_config(config, method="bdia", gamma=0.5, timestep_spacing="trailing")
    assert sched.method.signature() == "bdia(gamma=0.5)"
    ddim = diffusers.DDIMScheduler.from_config(config, timestep_spacing="trailing")
    ddim.set_timesteps(STEPS)
    sched.set_timesteps(STEPS)
    assert sched.timesteps.tolist() == ddim.timesteps.tolist()
    assert len(sched) == 1000 and sched.order == 1 and sched.init_noise_sigma == 1.0
    x = torch.randn(2, 4, 3, 3)
    assert sched.scale_model_input(x, 5) is x


def test_add_noise_uses_the_schedule(built):
    _, config = built("sd")
    sched = BELMScheduler.from_config(config)
    x0, noise = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    t = torch.tensor([10, 700])
    ours = sched.add_noise(x0, noise, t)
    theirs = diffusers.DDIMScheduler.from_config(config).add_noise(x0, noise, t)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


def test_save_and_load_round_trip(built, tmp_path):
    _, config = built("sd_v")
    sched = BELMScheduler.from_config(config, method="bdia", gamma=0.75)
    sched.save_pretrained(tmp_path)
    for cls in (BELMScheduler, BELMInverseScheduler):
        back = cls.from_pretrained(tmp_path)
        assert back.method.signature() == "bdia(gamma=0.75)"
        assert back.config.prediction_type == "v_prediction"
        back.set_timesteps(STEPS)
        sched.set_timesteps(STEPS)
        assert back.solver.grid.key == sched.solver.grid.key


# -- the drop-in trajectory -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["sd", "sd_v"])
def test_drop_in_trajectory_equals_solver_sample(built, name):
    """The latents the UNet sees in the pipeline are the ones Solver.sample with UNetEps makes."""
    pipe, config = built(name)
    x_T = _z0(1)
    with UNetRecorder(pipe.unet) as seen:
        out = _run(pipe, BELMScheduler.from_config(config), x_T, 1.0)
    hidden = seen.calls[0][2]
    solver = Solver(schedule_from_config(config), STEPS, "o-belm", **solver_options(config))
    eps = UNetEps(pipe.unet, solver.schedule, prediction_type=config.prediction_type, encoder_hidden_states=hidden)
    with UNetRecorder(pipe.unet) as ref:
        expected = solver.sample(eps, x_T)
    assert [c[1] for c in seen.calls] == [c[1] for c in ref.calls] == solver.timesteps.tolist()
    for (a, *_), (b, *_) in zip(seen.calls, ref.calls):
        torch.testing.assert_close(a, b, rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(out, expected, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_pipeline_latents_satisfy_eq18(built, name):
    """Eq. 18 written out on what the UNet sees, with α, σ̄ read from diffusers' own ᾱ (with CFG for SD, SDXL)."""
    pipe, config = built(name)
    g = GUIDANCE[name]
    with UNetRecorder(pipe.unet) as seen:
        x0 = _run(pipe, BELMScheduler.from_config(config), _z0(2), g)
    abar = diffusers.DDIMScheduler.from_config(config).alphas_cumprod.double()
    ts = [c[1] for c in seen.calls]
    alpha = [float(abar[t].sqrt()) for t in ts[::-1]]  # grid index 1 … N
    end = 1.0 if config.get("set_alpha_to_one", True) else float(abar[0].sqrt())
    alpha = torch.tensor([end] + alpha, dtype=torch.float64)
    sigma_bar = (1 - alpha**2).sqrt() / alpha
    h = torch.cat([torch.tensor([float("nan")], dtype=torch.float64), sigma_bar.diff()])
    N = len(ts)
    x, eps = {}, {}
    for n, (sample, t, _, out) in enumerate(seen.calls):
        i = N - n
        sample, out = sample.double(), out.double()
        if g != 1.0:
            (x_u, _), (o_u, o_c) = sample.chunk(2), out.chunk(2)
            sample, out = x_u, o_u + g * (o_c - o_u)
        a, s = float(abar[t].sqrt()), float((1 - abar[t]).sqrt())
        x[i], eps[i] = sample, (out if config.prediction_type == "epsilon" else s * sample + a * out)
    x[0] = x0.double()
    scale = float(x[N].abs().max())
    # start-up: one DDIM step from x_N
    ddim = alpha[N - 1] * (x[N] / alpha[N] - h[N] * eps[N])
    torch.testing.assert_close(x[N - 1], ddim, rtol=0, atol=2e-6 * scale)
    for i in range(N - 1, 0, -1):  # eq. 18
        r = h[i] ** 2 / h[i + 1] ** 2
        x_prev = (
            r * (alpha[i - 1] / alpha[i + 1]) * x[i + 1]
            + (1 - r) * (alpha[i - 1] / alpha[i]) * x[i]
            - (h[i] * (h[i] + h[i + 1]) / h[i + 1]) * alpha[i - 1] * eps[i]
        )
        torch.testing.assert_close(x[i - 1], x_prev, rtol=0, atol=2e-6 * scale)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_method_ddim_matches_diffusers_ddim(built, prediction):
    pipe, config = built("sd" if prediction == "epsilon" else "sd_v")
    x_T = _z0(3)
    with UNetRecorder(pipe.unet) as ours:
        a = _run(pipe, BELMScheduler.from_config(config, method="ddim"), x_T, 3.0)
    with UNetRecorder(pipe.unet) as theirs:
        b = _run(pipe, diffusers.DDIMScheduler.from_config(config), x_T, 3.0)
    assert [c[1] for c in ours.calls] == [c[1] for c in theirs.calls]
    for (u, *_), (v, *_) in zip(ours.calls, theirs.calls):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert (a - x_T).abs().max() > 0.1  # (it did sample)


# -- method="recommended": belm_core.recommended through the pipeline -----------------------------------------------
def _recommended_solver(config, steps=STEPS):
    schedule = schedule_from_config(config)
    return Solver(schedule, steps, **{**solver_options(config), **recommended(schedule, steps)})


@pytest.mark.parametrize("name", ["sd", "sd_v"])
def test_recommended_inside_the_pipeline_is_the_recommended_solver(built, name):
    """method="recommended" runs `belm_core.recommended`'s sampler (its grid, start-up, shifted and trajectory
    reads) inside pipe(...): the UNet sees the inputs and times Solver.sample shows it, STEPS calls in all."""
    pipe, config = built(name)
    x_T = _z0(11)
    sched = BELMScheduler.from_config(config, method="recommended")
    with UNetRecorder(pipe.unet) as seen:
        out = _run(pipe, sched, x_T, 1.0)
    solver = _recommended_solver(config)
    assert sched.method.signature() == solver.method.signature() and sched.solver.startup == solver.startup
    assert sched.solver.grid.key == solver.grid.key and solver.timesteps[0] == config.num_train_timesteps - 1
    hidden = seen.calls[0][2]
    eps = UNetEps(pipe.unet, solver.schedule, prediction_type=config.prediction_type, encoder_hidden_states=hidden)
    with UNetRecorder(pipe.unet) as ref:
        expected = solver.sample(eps, x_T)
    times = [c[1] for c in seen.calls]
    assert times == [c[1] for c in ref.calls] == sched.timesteps.tolist() and len(times) == STEPS
    assert times != solver.timesteps.tolist()  # (it reads away from the grid's times)
    for (a, *_), (b, *_) in zip(seen.calls, ref.calls):
        torch.testing.assert_close(a, b, rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(out, expected.float(), rtol=2e-6, atol=2e-6)


def test_recommended_manual_loops_equal_the_solver_bit_for_bit(built):
    """Float64 manual loops (sampling, inversion, sampling the latent) give Solver.sample / Solver.invert exactly;
    the last step returns x_0, the others the next call's model input."""
    pipe, config = built("sd")
    unet = _unet_fn(pipe, config)

    def model(z, t):
        with torch.no_grad():
            return unet(z.float(), t).double()

    solver = _recommended_solver(config)
    x_T = _z0(13).double()
    sched = BELMScheduler.from_config(config, method="recommended")
    sched.set_timesteps(STEPS)
    x = x_T
    for t in sched.timesteps:
        x = sched.step(model(x, t), t, x).prev_sample
    assert torch.equal(x, solver.sample(model, x_T))
    inv = BELMInverseScheduler.from_config(config, method="recommended")
    inv.set_timesteps(STEPS)
    substeps = solver.inversion_substep_times  # inversion's first step in graded sub-steps (docs/math.md §28)
    assert 1 <= len(substeps) <= 7 and inv.timesteps.tolist()[: len(substeps) + 1] == [*substeps, solver.grid.t(1)]
    assert len(inv.timesteps) == STEPS + len(substeps)
    z = x
    for t in inv.timesteps:
        z = inv.step(model(z, t), t, z).prev_sample
    reference = solver.invert(model, x)
    assert all(torch.equal(a, b) for a, b in zip(inv.latent.states, reference.states))
    assert torch.equal(z, reference.states[0])
    sched.set_latent(inv.latent)
    sched.set_timesteps(STEPS)
    y = inv.latent.states[0]
    for t in sched.timesteps:
        y = sched.step(model(y, t), t, y).prev_sample
    assert torch.equal(y, solver.sample(model, reference))


def test_recommended_with_explicit_timesteps(built):
    """set_timesteps(timesteps=...) keeps the given grid and takes recommended's method and start-up."""
    _, config = built("sd")
    schedule = schedule_from_config(config)
    grid = [999, 700, 400, 100]
    sched = BELMScheduler.from_config(config, method="recommended")
    sched.set_timesteps(timesteps=grid)
    options = recommended(schedule, len(grid))
    options.pop("spacing")
    solver = Solver(schedule, timesteps=grid, end=solver_options(config)["end"], **options)
    assert sched.solver.grid.key == solver.grid.key and sched.solver.startup == solver.startup
    eps = _point_mass_eps(schedule, torch.full((1, 2, 3, 3), 0.3, dtype=torch.float64))
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = solver.sample(lambda z, t: torch.sin(z) + eps(z, t), x)
    for t in sched.timesteps:
        x = sched.step(torch.sin(x) + eps(x, t), t, x).prev_sample
    assert torch.equal(x, expected)


def test_recommended_timesteps_follow_each_set_timesteps(built):
    """The call times come from a cached dry run per grid: switching N, setting and clearing a latent
    publish what a fresh scheduler publishes."""
    _, config = built("sd")
    sched = BELMScheduler.from_config(config, method="recommended")

    def fresh(n, latent=None):
        other = BELMScheduler.from_config(config, method="recommended")
        other.set_latent(latent)
        other.set_timesteps(n)
        return other.timesteps.tolist()

    inv = BELMInverseScheduler.from_config(config, method="recommended")
    inv.set_timesteps(6)
    z = torch.zeros(1, 4, 8, 8)
    for t in inv.timesteps:
        z = inv.step(torch.zeros_like(z), t, z).prev_sample
    for n, latent in ((8, None), (6, None), (6, inv.latent), (8, None), (6, None)):
        sched.set_latent(latent)
        sched.set_timesteps(n)
        assert sched.timesteps.tolist() == fresh(n, latent) and len(sched.timesteps) == n
    sched.set_latent(None)
    for n in range(2, 41):  # strictly decreasing, as pipelines' denoising_end / strength cut-offs assume
        sched.set_timesteps(n)
        t = sched.timesteps.tolist()
        assert len(t) == n and t[0] == config.num_train_timesteps - 1 and all(a > b for a, b in zip(t, t[1:]))


def _point_mass_eps(schedule, c):
    """Exact ε of data that is the single point c: every trajectory is the straight line x̄ = c + σ̄ n."""
    def eps(x, t):
        t = float(t)
        return (x / float(schedule.alpha(t)) - c) / float(schedule.sigma_bar(t))
    return eps


@pytest.mark.parametrize("begin", [1, 3, 6])
def test_recommended_img2img_and_edited_latents_restart_from_the_new_state(built, begin):
    """img2img (set_begin_index b, the image noised at timesteps[b] by add_noise) and a sample replaced
    mid-run restart the walk from that state at that call's model time. On point-mass data, whose
    trajectories are straight, the restarted sampler still lands on the point (to rounding)."""
    _, config = built("sd")
    config = {**config, "set_alpha_to_one": True}  # (the walk ends at the clean state, on the point itself)
    sched = BELMScheduler.from_config(config, method="recommended")
    schedule = sched.schedule
    c = torch.linspace(-1.0, 1.0, 48, dtype=torch.float64).reshape(1, 3, 4, 4)
    eps = _point_mass_eps(schedule, c)
    noise = torch.randn(c.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(begin))
    sched.set_timesteps(STEPS)
    sched.set_begin_index(begin)
    ts = sched.timesteps[begin:]
    x = sched.add_noise(c, noise, ts[:1])
    for n, t in enumerate(ts):
        x = sched.step(eps(x, t), t, x).prev_sample
        if n == 1 and n + 1 < len(ts):
            x = 0.5 * x + 0.3  # an edit (a callback, an inpainting blend): a new state at the next call's time
    torch.testing.assert_close(x, c, rtol=0, atol=1e-9)
    plain = BELMScheduler.from_config(config, method="recommended")  # (and an unedited run from x_T, too)
    plain.set_timesteps(STEPS)
    x = torch.randn(c.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(9)) * 14.6
    for t in plain.timesteps:
        x = plain.step(eps(x, t), t, x).prev_sample
    torch.testing.assert_close(x, c, rtol=0, atol=1e-9)


def test_recommended_img2img_start_is_the_ddim_move_onto_the_grid(built):
    """The img2img start: from the noised image x* at t* = timesteps[b] with ε* = ε(x*, t*), the scheduler walks
    on as `Stepper.resuming(x*, t*, ε*)` does; written out for the same rows without the curvature registers
    ("dpl-ob-traj", whose rows "recommended"'s are until its rotation registers are fed): x̂0 = x*/α* − σ̄* ε*,
    the states of the call's row i and of i − 1 on the line x̂0 + σ̄ ε* and the velocity register E_i/2,
    sampled on with Solver.sample from that Latent."""
    pipe, config = built("sd")
    unet = _unet_fn(pipe, config)

    def model(z, t):
        with torch.no_grad():
            return unet(z.float(), t).double()

    sched = BELMScheduler.from_config(config, method="recommended")
    sched.set_timesteps(STEPS)
    b = 3
    sched.set_begin_index(b)
    t_star = int(sched.timesteps[b])
    x_star = sched.add_noise(_z0(14).double(), torch.randn(_z0(14).shape, dtype=torch.float64), sched.timesteps[b:b + 1])
    x = x_star
    for t in sched.timesteps[b:]:
        x = sched.step(model(x, t), t, x).prev_sample
    solver, schedule = sched.solver, sched.schedule
    assert solver.method.signature() == "dpl-ob-curv(band=(1.0, 10.0), shift_last='after-dpl')"
    g = solver.grid
    i = g.N - b  # the row that call b reads (position p ↔ row N − p after the start-up's first call)
    e = model(x_star, t_star)
    torch.testing.assert_close(x, Stepper.resuming(solver, x_star, t_star, e, i).run(model).head[1], rtol=1e-12, atol=1e-12)

    traj = Solver(schedule, steps=STEPS, **{**recommended(schedule, STEPS), "method": TrajectoryReading(shift_last=AFTER_DPL)})
    np.testing.assert_array_equal(np.asarray(traj.timesteps), np.asarray(solver.timesteps))
    assert traj.startup == solver.startup
    g = traj.grid
    x_traj = Stepper.resuming(traj, x_star, t_star, e, i).run(model).head[1]
    x0_hat = x_star / float(schedule.alpha(t_star)) - float(schedule.sigma_bar(t_star)) * e
    bar = {j: x0_hat + float(g.sigma_bar[j]) * e for j in (i, i - 1)}
    register = (bar[i] - bar[i - 1]) / (2 * float(g.h[i]))
    states = (float(g.alpha[i]) * bar[i], float(g.alpha[i - 1]) * bar[i - 1], register)
    latent = Latent(states, index=i, method=traj.method.signature(), grid_key=g.key)
    torch.testing.assert_close(x_traj, traj.sample(model, latent), rtol=1e-12, atol=1e-12)
    assert float((x - x_traj).abs().max()) > 1e-6  # the curvature correction acted on the way down


def test_recommended_in_an_img2img_pipeline(built):
    """StableDiffusionImg2ImgPipeline with method="recommended": the UNet sees the published timesteps
    from timesteps[b] on (strength 0.5: the last N/2 calls), and the result is finite and moved."""
    pipe, config = built("sd")
    img2img = diffusers.StableDiffusionImg2ImgPipeline(**pipe.components)
    img2img.set_progress_bar_config(disable=True)
    img2img.scheduler = BELMScheduler.from_config(config, method="recommended")
    image = _z0(15)  # 4 channels: taken as latents
    with UNetRecorder(img2img.unet) as seen:
        out = img2img(PROMPT, image=image, strength=0.5, num_inference_steps=STEPS, guidance_scale=3.0,
                      output_type="latent").images
    assert [c[1] for c in seen.calls] == img2img.scheduler.timesteps[STEPS // 2:].tolist()
    assert torch.isfinite(out).all() and float((out - image).abs().max()) > 1e-3


# -- exact reconstruction ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("method,arrays", [("o-belm", 2), ("recommended", 5)])
@pytest.mark.parametrize("name", list(BUILDERS))
def test_exact_reconstruction_through_the_pipeline(built, name, method, arrays):
    """Inversion as pipe.scheduler (the pipeline's own CFG), then set_latent and the same pipeline call
    ("recommended": dpl-ob-curv, whose latent carries its velocity register and its two rotation registers
    after the two states)."""
    pipe, config = built(name)
    g, z0 = GUIDANCE[name], _z0(4)
    inv = BELMInverseScheduler.from_config(config, method=method)
    _run(pipe, inv, z0, g)
    latent = inv.latent
    assert latent.index == STEPS and latent.method == inv.method.signature() and latent.dtype == "float32"
    assert [s.dtype for s in latent.states] == [torch.float64] * arrays
    sched = BELMScheduler.from_config(config, method=method)
    sched.set_latent(latent)
    rec = _run(pipe, sched, latent.states[0].to(pipe.unet.dtype), g)
    assert rec.dtype == z0.dtype
    assert float(((rec.double() - z0.double()) ** 2).mean()) <= 1e-16
    if method != "o-belm":
        return
    # DDIM as control: same pipeline, same ε, but inexact inversion
    inv_ddim = BELMInverseScheduler.from_config(config, method="ddim")
    _run(pipe, inv_ddim, z0, g)
    ddim = BELMScheduler.from_config(config, method="ddim")
    ddim.set_latent(inv_ddim.latent)
    rec_ddim = _run(pipe, ddim, inv_ddim.latent.states[0].float(), g)
    assert float(((rec_ddim - z0) ** 2).mean()) > 1e-8


def test_exact_reconstruction_through_the_pipeline_on_a_cosine_config(built):
    """On diffusers' "squaredcos_cap_v2" betas "recommended" is "dpl-ob-curv(gain=0.75, reach=0.5, …)": at 20 steps
    its band rows correct their quadrature, its latent carries five arrays (states, w, U0, U1), and
    the pipeline reconstructs exactly from it."""
    pipe, config = built("sd")
    steps, g, z0 = 20, GUIDANCE["sd"], _z0(4)
    inv = BELMInverseScheduler.from_config(config, method="recommended", beta_schedule="squaredcos_cap_v2")
    pipe.scheduler = inv
    pipe(PROMPT, latents=z0, num_inference_steps=steps, guidance_scale=g, output_type="latent")
    assert inv.method.signature() == "dpl-ob-curv(gain=0.75, reach=0.5, shift_last='after-dpl')" and inv.solver._plan.weights
    latent = inv.latent
    assert len(latent.states) == 5 and float(latent.states[4].abs().max()) > 0
    sched = BELMScheduler.from_config(config, method="recommended", beta_schedule="squaredcos_cap_v2")
    sched.set_latent(latent)
    pipe.scheduler = sched
    rec = pipe(PROMPT, latents=latent.states[0].to(pipe.unet.dtype), num_inference_steps=steps, guidance_scale=g,
               output_type="latent").images
    assert float(((rec.double() - z0.double()) ** 2).mean()) <= 1e-16


def test_recommended_on_a_linear_config_runs_the_long_start_grid(built):
    """On DDPM's "linear" betas at 5–20 steps "recommended" lays out the "long-start" grid (a first step
    1.5 T/N long, docs/math.md §25): the scheduler's solver is `belm_core.recommended`'s, and the
    pipeline reconstructs exactly through it."""
    pipe, config = built("sd")
    steps, g, z0 = STEPS, GUIDANCE["sd"], _z0(5)
    inv = BELMInverseScheduler.from_config(config, method="recommended", beta_schedule="linear")
    pipe.scheduler = inv
    pipe(PROMPT, latents=z0, num_inference_steps=steps, guidance_scale=g, output_type="latent")
    schedule = schedule_from_config({**config, "beta_schedule": "linear"})
    solver = Solver(schedule, steps, **{**solver_options(config), **recommended(schedule, steps)})
    assert recommended(schedule, steps)["spacing"] == "long-start"
    assert inv.solver.grid.key == solver.grid.key and solver.timesteps[:2].tolist() == [999, 999 - round(1.5 * 1000 / steps)]
    sched = BELMScheduler.from_config(config, method="recommended", beta_schedule="linear")
    sched.set_latent(inv.latent)
    pipe.scheduler = sched
    rec = pipe(PROMPT, latents=inv.latent.states[0].to(pipe.unet.dtype), num_inference_steps=steps, guidance_scale=g,
               output_type="latent").images
    assert float(((rec.double() - z0.double()) ** 2).mean()) <= 1e-16


def _unet_fn(pipe, config):
    """unet(z, t) → model output for the SD pipeline's prompt (no guidance), as a user's manual loop."""
    hidden = pipe.encode_prompt(PROMPT, "cpu", 1, False)[0]
    return lambda z, t: pipe.unet(z, t, encoder_hidden_states=hidden).sample


@pytest.mark.parametrize("name", ["sd", "sd_v"])
@pytest.mark.parametrize("method", ["o-belm", "bdia"])
def test_manual_inverse_then_manual_sampling_loop(built, name, method):
    pipe, config = built(name)
    unet = _unet_fn(pipe, config)
    z0 = _z0(5)
    inv = BELMInverseScheduler.from_config(config, method=method, gamma=0.9)
    inv.set_timesteps(STEPS)
    grid_t = inv.solver.timesteps[::-1].tolist()  # t_1 … t_N
    assert inv.timesteps.tolist() == [grid_t[0]] + grid_t[:-1]  # (t_1, t_1, t_2, …, t_{N−1})
    z = z0
    with torch.no_grad():
        for t in inv.timesteps:
            z = inv.step(unet(z, t), t, z).prev_sample
        latent = inv.latent
        assert z.dtype == torch.float32 and torch.equal(z, latent.states[0].float())
        sched = BELMScheduler.from_config(config, method=method, gamma=0.9)
        sched.set_latent(latent)
        sched.set_timesteps(STEPS)
        x = latent.states[0].float()
        for t in sched.timesteps:
            x = sched.step(unet(x, t), t, x).prev_sample
    assert float(((x.double() - z0.double()) ** 2).mean()) <= 1e-16


def test_inverse_timesteps_for_ddim_and_a_partial_latent(built):
    """DDIM inverts with ε(x_{i−1}, t_i); an inversion stopped at K is sampled from t_K back to z0."""
    pipe, config = built("sd")
    unet = _unet_fn(pipe, config)
    inv = BELMInverseScheduler.from_config(config, method="ddim")
    inv.set_timesteps(STEPS)
    assert inv.timesteps.tolist() == inv.solver.timesteps[::-1].tolist()
    K, z0 = 5, _z0(6)
    inv = BELMInverseScheduler.from_config(config)
    inv.set_timesteps(STEPS)
    z = z0
    with torch.no_grad():
        for t in inv.timesteps[:K]:  # K steps reach grid index K
            z = inv.step(unet(z, t), t, z).prev_sample
        latent = inv.latent
        assert latent.index == K
        sched = BELMScheduler.from_config(config)
        sched.set_latent(latent)
        sched.set_timesteps(STEPS)
        assert sched.timesteps.tolist() == inv.solver.timesteps[STEPS - K :].tolist()  # t_K … t_1
        x = latent.states[0].float()
        for t in sched.timesteps:
            x = sched.step(unet(x, t), t, x).prev_sample
    assert float(((x.double() - z0.double()) ** 2).mean()) <= 1e-16


# -- re-sync ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("in_place", [False, True])
def test_resync_after_callback_edits_latents(built, in_place):
    """An edited sample restarts the history from it: the result equals a fresh run from the edited latents."""
    pipe, config = built("sd")
    x_T, at = _z0(7), 2
    edited = {}

    def callback(pipe_, i, t, kwargs):
        latents = kwargs["latents"]
        if i == at:
            if in_place:
                latents.mul_(0.5)
            else:
                latents = latents * 0.5
            edited["x"] = latents.clone()
        return {"latents": latents}

    sched = BELMScheduler.from_config(config)
    out = _run(pipe, sched, x_T, 3.0, callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["latents"])
    rest = sched.timesteps[at + 1 :].tolist()
    pipe.scheduler = BELMScheduler.from_config(config)
    fresh = pipe(PROMPT, latents=edited["x"], timesteps=rest, guidance_scale=3.0, output_type="latent").images
    torch.testing.assert_close(out, fresh, rtol=0, atol=0)
    # the uninterrupted run from x_T (never edited) differs: the edit was not ignored
    plain = _run(pipe, BELMScheduler.from_config(config), x_T, 3.0)
    assert (plain - out).abs().max() > 1e-3


def test_unedited_copy_of_the_sample_also_resyncs(built):
    """A new tensor (even with equal values) is treated as a change: DDIM start-up from its float32 values."""
    pipe, config = built("sd")
    x_T = _z0(8)
    plain = _run(pipe, BELMScheduler.from_config(config), x_T, 3.0)
    copied = _run(
        pipe, BELMScheduler.from_config(config), x_T, 3.0,
        callback_on_step_end=lambda p, i, t, kw: {"latents": kw["latents"].clone()},
        callback_on_step_end_tensor_inputs=["latents"],
    )
    assert not torch.equal(plain, copied)


# -- errors ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method,reason", [("edict", "two coupled chains"), ("belm3", "diverges"), ("heun", "not known")])
def test_unknown_or_unsupported_method(built, method, reason):
    _, config = built("sd")
    with pytest.raises(ValueError, match=reason):
        BELMScheduler.from_config(config, method=method)
    with pytest.raises(ValueError, match="gamma"):
        BELMScheduler.from_config(config, method="bdia", gamma=-1.0)


def test_mismatched_latent_errors(built):
    pipe, config = built("sd")
    states = (torch.randn(1, 4, 8, 8, dtype=torch.float64), torch.randn(1, 4, 8, 8, dtype=torch.float64))
    inv = BELMInverseScheduler.from_config(config)
    inv.set_timesteps(STEPS)
    sched = BELMScheduler.from_config(config, method="bdia")
    latent = Latent(states, index=STEPS, method="o-belm", grid_key=inv.solver.grid.key)
    with pytest.raises(ValueError, match="made by method 'o-belm'"):
        sched.set_latent(latent)
    sched = BELMScheduler.from_config(config)
    sched.set_latent(latent)
    with pytest.raises(ValueError, match="does not fit set_timesteps\\(6\\).*different time grid"):
        sched.set_timesteps(6)
    sched.set_timesteps(STEPS)  # the latent survives set_timesteps
    t = sched.timesteps[0]
    with pytest.raises(ValueError, match="not the latent's first state"):
        sched.step(torch.zeros(1, 4, 8, 8), t, torch.zeros(1, 4, 8, 8))
    with pytest.raises(TypeError, match="belm_core.Latent"):
        sched.set_latent(states)


def test_wrong_timestep_errors(built):
    _, config = built("sd")
    sched = BELMScheduler.from_config(config)
    x = torch.randn(1, 4, 8, 8)
    with pytest.raises(ValueError, match="set_timesteps"):
        sched.step(x, 1, x)
    sched.set_timesteps(STEPS)
    with pytest.raises(ValueError, match="timestep=500 is not on this scheduler's grid"):
        sched.step(x, 500, x)
    ts = sched.timesteps
    x = sched.step(torch.zeros_like(x), ts[0], x).prev_sample
    with pytest.raises(ValueError, match=f"timestep={int(ts[2])} does not match the grid.*t={int(ts[1])}"):
        sched.step(torch.zeros_like(x), ts[2], x)
    inv = BELMInverseScheduler.from_config(config)
    inv.set_timesteps(STEPS)
    with pytest.raises(ValueError, match="does not match the grid"):
        inv.step(torch.zeros_like(x), inv.timesteps[-1], x)
    rec = BELMScheduler.from_config(config, method="recommended")  # calls off the grid: by position
    rec.set_timesteps(STEPS)
    with pytest.raises(ValueError, match=f"timestep={int(rec.timesteps[2])} does not match the grid.*timesteps\\[0\\]"):
        rec.step(torch.zeros_like(x), rec.timesteps[2], x)
    y = rec.step(torch.zeros_like(x), rec.timesteps[0], x).prev_sample
    with pytest.raises(ValueError, match=f"the next model call is at t={int(rec.timesteps[1])}"):
        rec.step(torch.zeros_like(y), rec.timesteps[3], y)


# -- benchmark ------------------------------------------------------------------------------------------------------
def test_step_benchmark_measures_all_schedulers():
    from benchmarks import scheduler_step

    data = scheduler_step.measure(rounds=1)
    names = [r["name"] for r in data["rows"]]
    assert names == list(scheduler_step.schedulers())
    rows = {r["name"]: r for r in data["rows"]}
    assert rows[scheduler_step.REFERENCE]["ratio"] == 1.0
    assert all(r["median_us"] > 0 and r["calls"] == scheduler_step.STEPS for r in data["rows"])
    table = scheduler_step.markdown(data)
    assert all(name in table for name in names)


def test_zero_length_last_step_is_dropped_and_pipelines_still_work(built):
    """set_alpha_to_one=False with a grid ending at t = 0: N − 1 timesteps, N − 1 model calls, still exact."""
    pipe, config = built("sd")
    sched = BELMScheduler.from_config(config, steps_offset=0)
    sched.set_timesteps(STEPS)
    assert len(sched.timesteps) == STEPS - 1 and sched.timesteps[-1] > 0
    assert sched.solver.grid.alpha[0] == np.sqrt(sched.schedule.alphas_cumprod[0])  # ends at ᾱ_0
    z0 = _z0(9)
    inv = BELMInverseScheduler.from_config(config, steps_offset=0)
    with UNetRecorder(pipe.unet) as seen:
        _run(pipe, inv, z0, 3.0)
    assert len(seen.calls) == STEPS - 1
    sched.set_latent(inv.latent)
    rec = _run(pipe, sched, inv.latent.states[0].float(), 3.0)
    assert float(((rec.double() - z0.double()) ** 2).mean()) <= 1e-16
