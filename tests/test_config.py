"""backends.config: the meaning of a diffusers scheduler config for belm."""

import numpy as np
import pytest

from backends.config import (
    ZERO_SNR_ALPHA_BAR, prediction_type, schedule_from_config, solver_options, to_eps,
)

diffusers = pytest.importorskip("diffusers")


def test_zero_snr_schedule_matches_diffusers_but_the_last_alpha_bar():
    ref = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                  rescale_betas_zero_snr=True)
    sched = schedule_from_config(dict(ref.config))
    theirs = ref.alphas_cumprod.double().numpy()
    assert theirs[-1] < 1e-12  # diffusers: an exact zero terminal SNR
    np.testing.assert_allclose(sched.alphas_cumprod[:-1], theirs[:-1], rtol=2e-5, atol=1e-10)
    assert sched.alphas_cumprod[-1] == ZERO_SNR_ALPHA_BAR
    assert np.all(np.diff(sched.alphas_cumprod) < 0)


@pytest.mark.parametrize("config, spacing, end", [
    ({}, "leading", "clean"),
    ({"timestep_spacing": "trailing", "set_alpha_to_one": False}, "trailing", "t_min"),
    ({"timestep_spacing": "linspace", "set_alpha_to_one": True}, "linspace", "clean"),
    ({"timestep_spacing": "linspace", "use_karras_sigmas": True}, "karras", "clean"),
])
def test_solver_options_read_spacing_and_end(config, spacing, end):
    assert solver_options(config) == {"spacing": spacing, "end": end}


def test_bad_config_values_are_named():
    with pytest.raises(ValueError, match="timestep_spacing='karras'"):
        solver_options({"timestep_spacing": "karras"})  # not a diffusers timestep_spacing
    for option in ("use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas"):
        with pytest.raises(ValueError, match=f"{option}=True"):
            solver_options({"timestep_spacing": "linspace", option: True})
    with pytest.raises(ValueError, match="prediction_type='flow'"):
        prediction_type({"prediction_type": "flow"})
    assert prediction_type({}) == "epsilon"


def test_to_eps_inverts_the_forward_parametrisations():
    rng = np.random.default_rng(0)
    x0, eps = rng.normal(size=(2, 5))
    alpha = 0.6
    sigma = 0.8
    x = alpha * x0 + sigma * eps
    np.testing.assert_allclose(to_eps(eps, x, alpha, sigma, "epsilon"), eps)
    np.testing.assert_allclose(to_eps(alpha * eps - sigma * x0, x, alpha, sigma, "v_prediction"), eps, atol=1e-14)
    np.testing.assert_allclose(to_eps(x0, x, alpha, sigma, "sample"), eps, atol=1e-14)


def test_flow_configs_give_flowmatch_with_diffusers_grids():
    from backends.config import flow_schedule_from_config

    sd3 = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched = schedule_from_config(dict(sd3.config))
    assert type(sched).__name__ == "FlowMatch" and sched.shift == 3.0
    assert solver_options(dict(sd3.config)) == {"prediction": "velocity"}
    assert prediction_type(dict(sd3.config)) == "velocity"
    sd3.set_timesteps(10)
    np.testing.assert_array_equal(sched.timesteps(10), sd3.timesteps.double().numpy())
    flux = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                     max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    fsched = flow_schedule_from_config(dict(flux.config))
    mu = fsched.mu_for(16)
    sigmas = np.linspace(1.0, 1 / 6, 6)
    flux.set_timesteps(sigmas=sigmas, mu=mu)
    np.testing.assert_array_equal(fsched.timesteps(sigmas=sigmas, mu=mu), flux.timesteps.double().numpy())
    with pytest.raises(ValueError, match="use_karras_sigmas"):
        schedule_from_config({**dict(sd3.config), "use_karras_sigmas": True})


def test_a_karras_config_gives_diffusers_karras_timesteps():
    diffusers = pytest.importorskip("diffusers")
    from backends.schedulers import BELMScheduler

    ref = diffusers.DPMSolverMultistepScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                                use_karras_sigmas=True)
    ours = BELMScheduler.from_config(ref.config)
    for n in (8, 20):
        ref.set_timesteps(n)
        ours.set_timesteps(n)
        np.testing.assert_array_equal(ours.timesteps.numpy(), ref.timesteps.numpy())
