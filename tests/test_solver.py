"""The Solver/Latent contract: exactness, agreement with the paper and diffusers, and bad input."""

import subprocess
import sys
import warnings

import numpy as np
import pytest

from belm_core import (
    BDIA, BELM, DDIM, EDICT, METHODS, OBELM, AmplificationWarning, DiscreteVP, Latent, LatentMetadataWarning, LinearVP,
    PrecisionWarning, Solver,
)
from helpers import AnalyticEps, held_out_mixture, mse

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

SD = DiscreteVP.scaled_linear()


@pytest.fixture(scope="module")
def problem():
    data = held_out_mixture((4,), seed=77)
    x0 = data.sample(16, seed=5)
    return data, AnalyticEps(data, SD), x0


# -- acceptance: round trips on a held-out mixture, SD schedule, linspace, 50 steps --------------
@pytest.mark.parametrize("method, bound", [("o-belm", 1e-20), ("bdia", 1e-20), ("edict", 1e-18), ("belm3", 1e-20)])
def test_exact_round_trip_float64_numpy(problem, method, bound):
    _, eps, x0 = problem
    solver = Solver(SD, steps=50, method=method, spacing="linspace")
    latent = solver.invert(eps, x0)
    assert mse(solver.sample(eps, latent), x0) <= bound


def test_ddim_round_trip_is_inexact(problem):
    _, eps, x0 = problem
    solver = Solver(SD, steps=50, method="ddim")
    latent = solver.invert(eps, x0)
    assert len(latent.states) == 1
    assert mse(solver.sample(eps, latent), x0) > 1e-7


@pytest.mark.parametrize("method", ["o-belm", "bdia", "edict"])
def test_round_trip_torch_float32_input(problem, method):
    _, eps, x0 = problem
    x = torch.from_numpy(x0).float()
    solver = Solver(SD, steps=50, method=method)
    seen = []
    latent = solver.invert(lambda x, t: (seen.append(x.dtype), eps(x, t))[1], x)
    rec = solver.sample(eps, latent)
    assert rec.dtype == torch.float32 and isinstance(rec, torch.Tensor)
    assert set(seen) == {torch.float64}  # the state stays float64 whatever the input
    assert mse(rec, x) <= 1e-10


# -- the paper's eq. 18 and diffusers' DDIM --------------------------------------------------------
def _diffusers_grid(spacing, steps, **kw):
    ref = diffusers.DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, set_alpha_to_one=True, clip_sample=False,
        timestep_spacing=spacing, **kw,
    )
    ref.set_timesteps(steps)
    return ref


def test_obelm_matches_paper_eq18_on_diffusers_linspace_grid(problem):
    data, _, _ = problem
    ref = _diffusers_grid("linspace", 50)
    ac = ref.alphas_cumprod.double().numpy()
    schedule = DiscreteVP(ac)
    eps = AnalyticEps(data, schedule)
    ts = ref.timesteps.numpy()
    rng = np.random.default_rng(3)
    x_T, x_Tm1 = rng.normal(size=(2, 8, 4))

    # eq. 18 written out, in float32 as the paper's code runs it, on the grid read from diffusers
    def alpha(t):
        return np.float32(1.0) if t is None else np.float32(np.sqrt(ac[t]))

    def sigma_bar(t):
        return np.float32(0.0) if t is None else np.float32(np.sqrt(1 - ac[t]) / np.sqrt(ac[t]))

    times = list(ts) + [None]  # t_N … t_1, clean
    x_next, x_cur = x_T.astype(np.float32), x_Tm1.astype(np.float32)
    for n in range(1, len(times) - 1):
        t_ip1, t_i, t_im1 = times[n - 1], times[n], times[n + 1]
        h_i, h_ip1 = sigma_bar(t_i) - sigma_bar(t_im1), sigma_bar(t_ip1) - sigma_bar(t_i)
        e = eps(x_cur, int(t_i)).astype(np.float32)
        x_prev = (
            (h_i**2 / h_ip1**2) * (alpha(t_im1) / alpha(t_ip1)) * x_next
            + ((h_ip1**2 - h_i**2) / h_ip1**2) * (alpha(t_im1) / alpha(t_i)) * x_cur
            - (h_i * (h_i + h_ip1) / h_ip1) * alpha(t_im1) * e
        )
        x_next, x_cur = x_cur, x_prev
    with pytest.warns(LatentMetadataWarning, match="no index"):  # a hand-built latent: nothing to check it against
        ours = Solver(schedule, method="o-belm", timesteps=ts).sample(eps, Latent((x_T, x_Tm1)))
    scale = np.abs(ours).max()
    assert np.abs(ours - x_cur).max() <= 5e-5 * scale  # float32 rounding of the reference over 49 steps
    assert np.abs(ours - x_cur).max() > 0  # the reference really ran in float32


@pytest.mark.parametrize("spacing, offset, steps", [("leading", 1, 50), ("trailing", 0, 20), ("leading", 0, 10)])
def test_ddim_agrees_with_diffusers_ddim_trajectory(problem, spacing, offset, steps):
    data, _, _ = problem
    ref = _diffusers_grid(spacing, steps, steps_offset=offset)
    schedule = DiscreteVP(ref.alphas_cumprod.double().numpy(), steps_offset=offset)
    eps = AnalyticEps(data, schedule)
    solver = Solver(schedule, steps=steps, method="ddim", spacing=spacing)
    np.testing.assert_array_equal(solver.timesteps, ref.timesteps.numpy())
    x = torch.from_numpy(np.random.default_rng(4).normal(size=(8, 4)))
    ours = []
    solver.sample(eps, x, callback=lambda info: ours.append(info["x"]))
    theirs, y = [], x.clone()
    for t in ref.timesteps:
        y = ref.step(eps(y, int(t)), t, y).prev_sample
        theirs.append(y)
    assert len(ours) == len(theirs) == steps
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b.double(), rtol=2e-6, atol=2e-6)


# -- the driver's contract ----------------------------------------------------------------------------
def test_latent_shapes_and_metadata(problem):
    _, eps, x0 = problem
    for method, k in [("o-belm", 2), ("bdia", 2), ("edict", 2), ("ddim", 1), ("belm3", 3)]:
        solver = Solver(SD, steps=8, method=method)
        latent = solver.invert(eps, x0)
        assert len(latent.states) == k == solver.method.k
        assert all(s.shape == x0.shape and s.dtype == np.float64 for s in latent.states)
        assert latent.index == 8 and latent.method == solver.method.signature()


def test_hand_built_latent_reconstructs(problem):
    _, eps, x0 = problem
    solver = Solver(SD, steps=20, method="o-belm")
    latent = solver.invert(eps, x0)
    rebuilt = Latent(tuple(latent.states))
    with pytest.warns(LatentMetadataWarning, match="no method"):
        assert mse(solver.sample(eps, rebuilt), x0) <= 1e-20


def test_sampling_from_lone_x_T_runs_the_startup(problem):
    _, eps, _ = problem
    x_T = np.random.default_rng(0).normal(size=(4, 4))
    calls = []

    def counting(x, t):
        calls.append(t)
        return eps(x, t)

    for method, per_step in [("o-belm", 1), ("ddim", 1), ("bdia", 1), ("edict", 2), ("belm3", 1)]:
        calls.clear()
        solver = Solver(SD, steps=12, method=method)
        out = solver.sample(counting, x_T)
        assert out.shape == x_T.shape and np.all(np.isfinite(out))
        assert len(calls) == per_step * 12 == solver.method.nfe_per_step * 12
        assert calls[0] == solver.timesteps[0] and all(isinstance(t, int) for t in calls)


@pytest.mark.parametrize("method", ["o-belm", "bdia", "edict", "belm3"])
@pytest.mark.parametrize("until", [3, 7, 10])
def test_partial_trajectories_reconstruct_exactly(problem, method, until):
    _, eps, x0 = problem
    solver = Solver(SD, steps=10, method=method)
    latent = solver.invert(eps, x0, until=until)
    assert latent.index == until
    seen = []
    rec = solver.sample(eps, latent, callback=lambda info: seen.append(info["index"]))
    assert mse(rec, x0) <= 1e-20
    assert seen[-1] == 0 and len(seen) == until - (solver.method.k - 1 if method != "edict" else 0)


def test_partial_latent_equals_prefix_of_full_inversion(problem):
    _, eps, x0 = problem
    solver = Solver(SD, steps=10, method="o-belm")
    path = {}
    solver.invert(eps, x0, callback=lambda info: path.__setitem__(info["index"], info["x"]))
    latent = solver.invert(eps, x0, until=6)
    np.testing.assert_array_equal(latent.states[0], path[6])
    np.testing.assert_array_equal(latent.states[1], path[5])


def test_callback_keys_and_progress(problem):
    _, eps, x0 = problem
    infos = []
    solver = Solver(SD, steps=5, method="o-belm")
    solver.sample(eps, x0, callback=infos.append, progress=True)
    assert [i["step"] for i in infos] == [1, 2, 3, 4, 5]
    assert all(set(i) == {"direction", "step", "total", "index", "t", "sigma_bar", "x"} for i in infos)
    assert infos[-1]["index"] == 0 and infos[-1]["t"] is None and infos[-1]["sigma_bar"] == 0.0
    assert infos[0]["t"] == solver.timesteps[1] and infos[0]["total"] == 5


def test_continuous_schedule_round_trip():
    data = held_out_mixture((3,), seed=9)
    s = LinearVP()
    eps = AnalyticEps(data, s)
    x0 = data.sample(8, seed=1)
    solver = Solver(s, steps=30, method="o-belm", spacing="logsnr")
    assert mse(solver.sample(eps, solver.invert(eps, x0)), x0) <= 1e-20
    assert all(isinstance(solver.grid.t(i), float) for i in (1, 30))


def test_amplification_formulas():
    assert Solver(SD, steps=40, method=BDIA(0.9)).amplification() == pytest.approx(0.9 ** -39, rel=1e-10)
    assert Solver(SD, steps=40, method=EDICT(0.93)).amplification() == pytest.approx(0.93 ** -80, rel=1e-10)
    assert Solver(SD, steps=40, method="bdia").amplification() == pytest.approx(1.0, rel=1e-10)
    assert Solver(SD, steps=40, method="ddim").amplification() == 1.0


def test_amplification_predicts_blow_up_and_warns(problem):
    _, eps, x0 = problem
    small = Solver(SD, steps=20, method=BDIA(0.5))
    with pytest.warns(AmplificationWarning, match="amplifies round-off"):
        big = Solver(SD, steps=200, method=BDIA(0.5))
        rec = big.sample(eps, big.invert(eps, x0))
    err_big = mse(rec, x0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AmplificationWarning)
        err_small = mse(small.sample(eps, small.invert(eps, x0)), x0)
    assert err_big > 1e6 * max(err_small, 1e-32)
    assert big.amplification() > 1e50


def test_import_does_not_import_torch_or_sympy():
    code = "import sys, belm_core; s = belm_core.Solver(belm_core.DiscreteVP.scaled_linear(), 10); print('torch' in sys.modules, 'sympy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


# -- bad input -------------------------------------------------------------------------------------
def test_unknown_method_lists_valid_names():
    with pytest.raises(ValueError, match=r"method='dpm'.*\['bdia', 'belm3', 'ddim', 'dpl-ob', 'dpl-ob-curv', 'dpl-ob-shift', 'dpl-ob-shift-last', 'dpl-ob-traj', 'edict', 'o-belm'\]"):
        Solver(SD, steps=10, method="dpm")
    with pytest.raises(TypeError, match="method must be"):
        Solver(SD, steps=10, method=3)
    assert sorted(METHODS) == ["bdia", "belm3", "ddim", "dpl-ob", "dpl-ob-curv", "dpl-ob-shift", "dpl-ob-shift-last", "dpl-ob-traj", "edict", "o-belm"]


def test_eps_of_wrong_shape_or_non_finite(problem):
    _, eps, x0 = problem
    solver = Solver(SD, steps=10, method="o-belm")
    with pytest.raises(ValueError, match=r"shape \(16, 3\) at sample step 1 \(t=999\)"):
        solver.sample(lambda x, t: eps(x, t)[:, :3], x0)

    def nan_at_500(x, t):
        e = eps(x, t)
        return e * np.nan if t < 500 else e

    with pytest.raises(ValueError, match=r"non-finite.*invert step \d+ \(t=\d+\)"):
        solver.invert(nan_at_500, x0)
    with pytest.raises(TypeError, match="same array type"):
        solver.sample(lambda x, t: torch.zeros(x.shape, dtype=torch.float64), x0)
    with pytest.raises(TypeError, match="eps_fn must be callable"):
        solver.sample(None, x0)


def test_steps_fewer_than_k():
    with pytest.raises(ValueError, match="steps=1 is too few for o-belm"):
        Solver(SD, steps=1, method="o-belm")
    with pytest.raises(ValueError, match="steps=2 is too few for belm"):
        Solver(SD, steps=2, method="belm3")
    Solver(SD, steps=1, method="ddim")
    Solver(SD, steps=2, method="o-belm")


def test_non_invertible_parameters(problem):
    _, eps, x0 = problem
    with pytest.raises(ValueError, match="gamma=0.0"):
        Solver(SD, steps=10, method=BDIA(gamma=0.0)).invert(eps, x0)
    Solver(SD, steps=10, method=BDIA(gamma=0.0)).sample(eps, x0)  # sampling with γ = 0 is DDIM
    with pytest.raises(ValueError, match="p=0.0"):
        Solver(SD, steps=10, method=EDICT(p=0.0)).invert(eps, x0)
    for p in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"p=.*\(0, 1\]"):
            EDICT(p=p)
    with pytest.raises(ValueError, match="gamma=inf"):
        BDIA(gamma=float("inf"))


def test_latent_from_another_solver_is_refused(problem):
    _, eps, x0 = problem
    latent = Solver(SD, steps=10, method="o-belm").invert(eps, x0)
    with pytest.raises(ValueError, match="made by method 'o-belm'.*'bdia"):
        Solver(SD, steps=10, method="bdia").sample(eps, latent)
    with pytest.raises(ValueError, match="different time grid"):
        Solver(SD, steps=12, method="o-belm").sample(eps, latent)
    with pytest.raises(ValueError, match="different time grid"):
        Solver(SD, steps=10, method="o-belm", spacing="trailing").sample(eps, latent)
    with pytest.raises(ValueError, match="needs 2"):
        Solver(SD, steps=10, method="o-belm").sample(eps, Latent((x0,)))
    with pytest.raises(ValueError, match="latent.index=12"):
        Solver(SD, steps=10, method="o-belm").sample(eps, Latent((x0, x0), index=12))
    with pytest.raises(ValueError, match="until=11"):
        Solver(SD, steps=10, method="o-belm").invert(eps, x0, until=11)
    with pytest.raises(ValueError, match="share one shape"):
        Latent((x0, x0[:2]))
    with pytest.raises(TypeError, match="tuple of arrays"):
        Latent(x0)


def test_low_precision_state_warns(problem):
    _, eps, x0 = problem
    with pytest.warns(PrecisionWarning, match="float16"):
        Solver(SD, steps=10, state_dtype="float16")
    with pytest.warns(PrecisionWarning, match="bfloat16"):
        Solver(SD, steps=10, state_dtype="bfloat16")
    with pytest.warns(PrecisionWarning, match="float16"):
        Solver(SD, steps=10, state_dtype=None).sample(eps, torch.zeros(2, 4, dtype=torch.float16))
    with pytest.raises(ValueError, match="state_dtype='int8'"):
        Solver(SD, steps=10, state_dtype="int8")
    with pytest.raises(ValueError, match="bfloat16"):
        with pytest.warns(PrecisionWarning):
            Solver(SD, steps=10, state_dtype="bfloat16").sample(eps, x0)


def test_unstable_method_is_refused_unless_allowed(problem):
    _, eps, _ = problem
    with pytest.raises(ValueError, match="not zero-stable.*allow_unstable=True"):
        Solver(SD, steps=10, method=BELM(3))
    solver = Solver(SD, steps=10, method=BELM(3), allow_unstable=True)
    assert solver.method.order == 4


def test_timesteps_and_steps_conflict():
    with pytest.raises(ValueError, match="timesteps= fixes the grid"):
        Solver(SD, steps=5, timesteps=[999, 500, 0])
    with pytest.raises(ValueError, match="give steps"):
        Solver(SD)
    with pytest.raises(TypeError, match="NoiseSchedule"):
        Solver("sd", steps=5)


def test_methods_declare_order_and_nfe():
    table = {m: (METHODS[m]().order, METHODS[m]().nfe_per_step) for m in METHODS}
    assert table == {"ddim": (1, 1), "bdia": (1, 1), "edict": (1, 2), "o-belm": (2, 1), "belm3": (2, 1),
                     "dpl-ob": (2, 1), "dpl-ob-shift": (2, 1), "dpl-ob-shift-last": (2, 1), "dpl-ob-traj": (2, 1),
                     "dpl-ob-curv": (2, 1)}
    assert not DDIM().exact and OBELM().exact
