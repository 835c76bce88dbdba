"""What a hostile caller can do to the solver: misbehaving ε and callbacks, autograd, non-finite
inputs, bad parameters; plus the reference options (EDICT's alternating order, end="t_min")."""

import warnings

import numpy as np
import pytest

from belm_core import BDIA, EDICT, METHODS, AmplificationWarning, DiscreteVP, LinearVP, Solver
from belm_core.solver import until_range
from helpers import AnalyticEps, held_out_mixture, mse

torch = pytest.importorskip("torch")

SD = DiscreteVP.scaled_linear()
EXACT = [m for m in METHODS if m != "ddim"]


@pytest.fixture(scope="module")
def problem():
    data = held_out_mixture((4,), seed=91)
    return data, AnalyticEps(data, SD), data.sample(8, seed=3)


def as_backend(x, backend):
    return torch.from_numpy(x.copy()) if backend == "torch" else x.copy()


# -- 1. what eps_fn and callbacks do cannot reach the solver ----------------------------------------
class InPlace:
    """Scales its input in place before calling ε (a wrapper written carelessly), then undoes
    the scaling on its output: the same ε values, but the argument is overwritten."""

    def __init__(self, eps):
        self.eps = eps

    def __call__(self, x, t):
        x *= 2.0  # (a power of two, so that x * 0.5 is x again bit for bit)
        return self.eps(x * 0.5, t)


class ReusedBuffer:
    """Writes every ε into one output buffer and returns that buffer (as a CUDA-graph or
    preallocated-output wrapper would)."""

    def __init__(self, eps):
        self.eps, self.buffer = eps, None

    def __call__(self, x, t):
        e = self.eps(x, t)
        if self.buffer is None:
            self.buffer = e.clone() if torch.is_tensor(e) else e.copy()
        else:
            self.buffer[...] = e
        return self.buffer


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("wrapper", [InPlace, ReusedBuffer], ids=["in-place", "reused-buffer"])
def test_misbehaving_eps_gives_identical_results(problem, method, backend, wrapper):
    _, eps, x0 = problem
    solver = Solver(SD, steps=12, method=method)
    x0_in = as_backend(x0, backend)
    x_T = as_backend(np.random.default_rng(1).normal(size=x0.shape), backend)
    ref_latent = solver.invert(eps, x0_in)
    ref_sample = solver.sample(eps, x_T)
    latent = solver.invert(wrapper(eps), x0_in)
    sample = solver.sample(wrapper(eps), x_T)
    np.testing.assert_array_equal(np.asarray(x0_in), x0)  # the caller's arrays are untouched
    np.testing.assert_array_equal(np.asarray(sample), np.asarray(ref_sample))
    for a, b in zip(latent.states, ref_latent.states):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    rec = solver.sample(wrapper(eps), latent)
    np.testing.assert_array_equal(np.asarray(rec), np.asarray(solver.sample(eps, ref_latent)))
    if method != "ddim":
        assert mse(rec, x0) < 1e-20


def test_in_place_eps_leaves_caller_arrays_and_latent_intact(problem):
    _, eps, x0 = problem
    solver = Solver(SD, steps=10, method="o-belm")
    latent = solver.invert(eps, x0)
    kept = [s.copy() for s in latent.states]
    solver.sample(InPlace(eps), latent)
    for a, b in zip(latent.states, kept):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("method", ["o-belm", "edict", "belm3"])
def test_callback_writing_to_x_changes_nothing(problem, method):
    _, eps, x0 = problem
    solver = Solver(SD, steps=10, method=method)

    def vandal(info):
        info["x"][...] = 123.0

    latent = solver.invert(eps, x0, callback=vandal)
    ref = solver.invert(eps, x0)
    for a, b in zip(latent.states, ref.states):
        np.testing.assert_array_equal(a, b)
    rec = solver.sample(eps, latent, callback=vandal)
    assert mse(rec, x0) < 1e-20


# -- 2. autograd ---------------------------------------------------------------------------------------
class SmoothEps(torch.nn.Module):
    """A differentiable ε with a parameter: θ tanh(x) + 0.1 x t/1000."""

    def __init__(self):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.tensor(0.7, dtype=torch.float64))

    def forward(self, x, t):
        return self.theta * torch.tanh(x) + 0.1 * x * (t / 1000)


@pytest.mark.parametrize("method", ["o-belm", "edict"])
def test_no_graph_by_default(method):
    eps = SmoothEps()
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    solver = Solver(SD, steps=6, method=method)
    out = solver.sample(eps, x)
    assert not out.requires_grad and out.grad_fn is None
    latent = solver.invert(eps, x)
    assert all(not s.requires_grad for s in latent.states)
    assert torch.is_grad_enabled()  # the caller's mode is restored


@pytest.mark.parametrize("method", ["o-belm", "bdia", "edict", "ddim"])
def test_grad_mode_matches_finite_differences(method):
    torch.manual_seed(0)
    eps = SmoothEps()
    solver = Solver(SD, steps=8, method=method)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 3, dtype=torch.float64)

    def loss(x_in):
        return (solver.sample(eps, x_in, grad=True) * w).sum()

    loss(x).backward()
    g_x, g_theta = x.grad.clone(), eps.theta.grad.clone()
    h = 1e-6
    with torch.no_grad():
        for idx in [(0, 0), (1, 2)]:
            e = torch.zeros_like(x)
            e[idx] = h
            fd = (loss(x + e) - loss(x - e)) / (2 * h)
            assert abs(float(fd) - float(g_x[idx])) <= 1e-6 * (1 + abs(float(fd)))
        theta0 = eps.theta.detach().clone()
        eps.theta.copy_(theta0 + h)
        up = loss(x)
        eps.theta.copy_(theta0 - h)
        down = loss(x)
        eps.theta.copy_(theta0)
    fd_theta = (up - down) / (2 * h)
    assert abs(float(fd_theta) - float(g_theta)) <= 1e-6 * (1 + abs(float(fd_theta)))


def test_grad_mode_through_inversion():
    eps = SmoothEps()
    solver = Solver(SD, steps=6, method="o-belm")
    x0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    latent = solver.invert(eps, x0, grad=True)
    latent.states[0].sum().backward()
    assert x0.grad is not None and torch.isfinite(x0.grad).all() and x0.grad.abs().sum() > 0


def test_grad_mode_refuses_numpy_and_non_bool(problem):
    _, eps, x0 = problem
    solver = Solver(SD, steps=4)
    with pytest.raises(ValueError, match="grad=True needs torch"):
        solver.sample(eps, x0, grad=True)
    with pytest.raises(TypeError, match="grad"):
        solver.invert(eps, torch.from_numpy(x0), grad="yes")


# -- 3. non-finite inputs are the input's fault; a blown-up state is the solver's --------------------
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_inputs_are_named(problem, bad):
    _, eps, x0 = problem
    solver = Solver(SD, steps=6, method="o-belm")
    x_bad = x0.copy()
    x_bad[1, 2] = bad
    with pytest.raises(ValueError, match=r"^x0 contains NaN or inf"):
        solver.invert(eps, x_bad)
    with pytest.raises(ValueError, match=r"^x contains NaN or inf"):
        solver.sample(eps, torch.from_numpy(x_bad))
    latent = solver.invert(eps, x0)
    states = list(latent.states)
    states[1] = x_bad
    with pytest.raises(ValueError, match=r"latent.states\[1\] contains NaN or inf"):
        solver.sample(eps, latent.replace(states=tuple(states)))


def test_eps_fault_is_still_the_models(problem):
    _, eps, x0 = problem
    solver = Solver(SD, steps=6, method="o-belm")
    with pytest.raises(ValueError, match="eps_fn returned non-finite"):
        solver.sample(lambda x, t: eps(x, t) * (np.nan if t < 500 else 1.0), x0)


def test_state_blow_up_is_reported_with_amplification(problem):
    _, eps, x0 = problem
    # a huge guidance-like scale: ε is finite, the state overflows
    solver = Solver(SD, steps=20, method="o-belm")
    with pytest.raises(ValueError, match=r"state became non-finite .* sample step \d+.*amplification\(\)") as info:
        with np.errstate(over="ignore", invalid="ignore"):
            solver.sample(lambda x, t: 1e300 * eps(x, t), x0)
    assert "eps_fn returned" not in str(info.value)
    # BDIA with a tiny gamma: inversion divides by gamma every step
    solver = Solver(SD, steps=200, method=BDIA(gamma=1e-3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AmplificationWarning)
        with pytest.raises(ValueError, match=r"state became non-finite .* invert step \d+"):
            with np.errstate(over="ignore", invalid="ignore"):
                solver.invert(eps, x0)


# -- 7. parameters ---------------------------------------------------------------------------------------
def test_numpy_scalars_are_real_numbers(problem):
    _, eps, x0 = problem
    for gamma in (np.float32(0.9), np.float64(0.9)):
        assert BDIA(gamma).gamma == pytest.approx(0.9)
    for p in (np.float32(0.93), np.float64(0.93)):
        assert EDICT(p).p == pytest.approx(0.93)
    solver = Solver(SD, steps=6, method=BDIA(np.float32(0.9)), amplification_tol=np.float32(1e-3),
                    allow_unstable=np.bool_(False))
    assert mse(solver.sample(eps, solver.invert(eps, x0)), x0) < 1e-20


@pytest.mark.parametrize("make, match", [
    (lambda: BDIA(-0.5), "gamma=-0.5"),
    (lambda: BDIA(True), "gamma=True"),
    (lambda: EDICT(0), "p=0"),
    (lambda: EDICT(0.0), "p=0.0"),
    (lambda: EDICT(np.float32(1.5)), r"p=.*1\.5.* in \(0, 1\]"),
    (lambda: EDICT(0.9, alternate=1), "alternate=1"),
])
def test_method_parameters_refused(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


@pytest.mark.parametrize("kwargs, match", [
    ({"allow_unstable": "no"}, "allow_unstable='no' must be a bool"),
    ({"allow_unstable": 1}, "allow_unstable=1 must be a bool"),
    ({"check_finite": None}, "check_finite=None must be a bool"),
    ({"amplification_tol": 0.0}, "amplification_tol=0.0 must be a finite number > 0"),
    ({"amplification_tol": -1e-6}, "amplification_tol=-1e-06"),
    ({"amplification_tol": float("nan")}, "amplification_tol=nan"),
    ({"amplification_tol": float("inf")}, "amplification_tol=inf"),
    ({"amplification_tol": "1e-6"}, "amplification_tol='1e-6'"),
    ({"end": "zero"}, "end='zero'"),
])
def test_solver_parameters_refused(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        Solver(SD, steps=10, **kwargs)


def test_leading_with_offset_at_full_steps_names_the_cause():
    schedule = DiscreteVP.scaled_linear(steps_offset=1)
    with pytest.raises(ValueError, match=r"steps=1000 with spacing='leading' and steps_offset=1") as info:
        Solver(schedule, steps=1000, spacing="leading")
    assert "outside the schedule's range" not in str(info.value)
    assert "steps ≤ 999" in str(info.value)
    assert Solver(schedule, steps=999, spacing="leading").timesteps[0] == 999  # the bound it names works


# -- 8. the amplification warning uses the effective state dtype ------------------------------------------
def test_amplification_warning_uses_effective_dtype(problem):
    _, eps, x0 = problem
    solver = Solver(SD, steps=100, method=BDIA(0.8), state_dtype=None)
    assert solver.amplification() > 1e9
    with pytest.warns(AmplificationWarning, match="float32"):
        solver.invert(eps, x0.astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error", AmplificationWarning)
        Solver(SD, steps=20, method=BDIA(0.8), state_dtype=None).invert(eps, x0)  # float64: 87, no warning


# -- until range ----------------------------------------------------------------------------------------
def test_until_range_is_what_invert_accepts(problem):
    _, eps, x0 = problem
    for method in sorted(METHODS):
        solver = Solver(SD, steps=6, method=method)
        low, high = solver.until_range
        assert (low, high) == until_range(method, 6) and high == 6
        if solver.method.exact:
            solver.invert(eps, x0, until=low)
        with pytest.raises(ValueError, match="until"):
            solver.invert(eps, x0, until=low - 1)


# -- 9. EDICT's alternating order, written out -------------------------------------------------------------
def edict_by_hand(eps, schedule, timesteps, x, p, alternate):
    """The official EDICT sampling loop (Wallace et al., Alg. 1 with "leapfrog" steps), step by step."""
    ts = list(timesteps)
    alpha = lambda t: float(schedule.alpha(t))  # noqa: E731
    sigma = lambda t: float(schedule.sigma(t))  # noqa: E731
    y = x.copy()
    for n, t in enumerate(ts):
        a_prev, s_prev = (alpha(ts[n + 1]), sigma(ts[n + 1])) if n + 1 < len(ts) else (1.0, 0.0)
        a = a_prev / alpha(t)
        b = s_prev - sigma(t) * a
        if alternate and n % 2 == 1:
            y = a * y + b * eps(x, t)
            x = a * x + b * eps(y, t)
        else:
            x = a * x + b * eps(y, t)
            y = a * y + b * eps(x, t)
        x = p * x + (1 - p) * y
        y = p * y + (1 - p) * x
    return x


@pytest.mark.parametrize("alternate", [False, True])
def test_edict_alternate_matches_hand_written_loop(problem, alternate):
    _, eps, _ = problem
    x_T = np.random.default_rng(2).normal(size=(8, 4))
    solver = Solver(SD, steps=7, method=EDICT(0.93, alternate=alternate))
    ours = solver.sample(eps, x_T)
    ref = edict_by_hand(eps, SD, solver.timesteps, x_T, 0.93, alternate)
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-12)
    other = Solver(SD, steps=7, method=EDICT(0.93, alternate=not alternate)).sample(eps, x_T)
    assert np.abs(other - ours).max() > 1e-6  # the option changes the trajectory


@pytest.mark.parametrize("until", [None, 4, 1])
def test_edict_alternate_inverts_exactly(problem, until):
    _, eps, x0 = problem
    solver = Solver(SD, steps=9, method=EDICT(0.93, alternate=True))
    latent = solver.invert(eps, x0, until=until)
    assert latent.method == "edict(p=0.93, alternate=True)"
    assert mse(solver.sample(eps, latent), x0) < 1e-20
    plain = Solver(SD, steps=9, method=EDICT(0.93))
    with pytest.raises(ValueError, match="method"):
        plain.sample(eps, latent)


# -- 9. end="t_min": diffusers' set_alpha_to_one=False ---------------------------------------------------
# (diffusers' DDIM steps to t − T/N, which is not the next grid point on "linspace" grids: leading and
# trailing only, as in test_solver; leading with offset 0 ends at t = 0, the zero-length last step)
@pytest.mark.parametrize("spacing, offset, steps", [("leading", 1, 20), ("trailing", 0, 10), ("leading", 0, 10)])
def test_end_t_min_matches_diffusers_set_alpha_to_one_false(problem, spacing, offset, steps):
    diffusers = pytest.importorskip("diffusers")
    data, _, _ = problem
    ref = diffusers.DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, set_alpha_to_one=False,
        clip_sample=False, timestep_spacing=spacing, steps_offset=offset,
    )
    ref.set_timesteps(steps)
    schedule = DiscreteVP(ref.alphas_cumprod.double().numpy(), steps_offset=offset)
    eps = AnalyticEps(data, schedule)
    solver = Solver(schedule, steps=steps, method="ddim", spacing=spacing, end="t_min")
    x = torch.from_numpy(np.random.default_rng(4).normal(size=(8, 4)))
    theirs = x.clone()
    for t in ref.timesteps:
        theirs = ref.step(eps(theirs, int(t)), t, theirs).prev_sample
    # the same end state by formula: α_end = sqrt(ᾱ_0), reached from the last model time
    assert solver.grid.alpha[0] == pytest.approx(float(ref.alphas_cumprod.double()[0].sqrt()), rel=1e-12)
    ends_at_t_min = int(ref.timesteps[-1]) == 0
    assert solver.steps == steps - ends_at_t_min  # a zero-length last step is dropped
    ours = solver.sample(eps, x)
    torch.testing.assert_close(ours, theirs.double(), rtol=5e-6, atol=5e-6)
    clean = Solver(schedule, steps=steps, method="ddim", spacing=spacing).sample(eps, x)
    assert float((clean - ours).abs().max()) > 1e-4  # ending at ᾱ_0 is not ending at the clean state


@pytest.mark.parametrize("method", EXACT)
def test_end_t_min_round_trip_exact(problem, method):
    _, eps, x0 = problem
    solver = Solver(SD, steps=10, method=method, end="t_min", spacing="trailing")
    assert solver.grid.sigma_bar[0] > 0
    assert mse(solver.sample(eps, solver.invert(eps, x0)), x0) < 1e-20
    assert solver.grid.key != Solver(SD, steps=10, method=method, spacing="trailing").grid.key


def test_end_t_min_continuous_and_single_step():
    vp = LinearVP()
    solver = Solver(vp, steps=5, method="o-belm", end="t_min")  # logsnr grid ends at t_min: one step dropped
    assert solver.steps == 4 and solver.grid.alpha[0] == pytest.approx(float(vp.alpha(vp.t_min)))
    with pytest.raises(ValueError, match="leave no step"):
        Solver(vp, timesteps=[vp.t_min], method="ddim", end="t_min")
    with pytest.raises(ValueError, match="dropped the zero-length"):
        Solver(vp, steps=2, method="o-belm", end="t_min")
