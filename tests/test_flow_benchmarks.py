"""Rectified-flow benchmark: the peers' update rules (RF-Solver-2, FireFlow, Euler) against closed
forms and their declared orders, model-call counting, the digits flow model's training objective and
v_fn, and the section's renderers on hand-made data."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("matplotlib")

from backends.analytic import AnalyticVelocity, GaussianMixture, empirical_order  # noqa: E402
from belm_core import FlowMatch  # noqa: E402
from benchmarks import flow, flow_peers  # noqa: E402
from benchmarks.flow_peers import PEERS, FlowGrid  # noqa: E402
from helpers import rmse, rows_of  # noqa: E402

ONE = GaussianMixture.gaussian([0.5, -1.0, 0.2], [0.1, 0.3, 0.05])




class V:
    """The exact velocity of `data` as v(x, σ) (the step functions' signature), counting calls."""

    def __init__(self, data):
        self.data, self.nfe = data, 0

    def __call__(self, x, sigma):
        self.nfe += 1
        return self.data.velocity(x, sigma)


# ------------------------------------------------------------------ one step against the closed form
STEPS = {"euler": flow_peers.euler_step, "rf-solver-2": flow_peers.rf_solver2_step,
         "fireflow-first": lambda v, x, s, h: flow_peers.fireflow_step(v, x, s, h)[0]}


@pytest.mark.parametrize("name, local_order", [("euler", 2), ("rf-solver-2", 3), ("fireflow-first", 3)])
def test_one_step_local_error_order(name, local_order):
    # one step σ → σ + h: error ∝ |h|^(p + 1), against DOP853 at rtol 1e-12 on a mixture (on a single
    # Gaussian the midpoint rule happens to be locally exact to O(h⁴): its V(σ) is quadratic in σ)
    data = flow.problems()["held-out"]
    x = np.random.default_rng(0).normal(size=(16, 4))
    hs = np.array([0.08, 0.04, 0.02, 0.01])
    errs = [rmse(STEPS[name](V(data), x, 0.6, -h), data.rectified_flow(x, 0.6, 0.6 - h)) for h in hs]
    assert empirical_order(1 / hs, errs) == pytest.approx(local_order, abs=0.2)


def test_euler_step_is_exact_on_a_straight_path():
    # a point mass's flow x_σ = (1 − σ) μ + σ n is a straight line: v is constant along it
    point = GaussianMixture.gaussian([0.3, -0.7, 1.1], [1e-300] * 3)
    n = np.random.default_rng(4).normal(size=(5, 3))
    x = 0.2 * point.means[0] + 0.8 * n
    for step in STEPS.values():
        np.testing.assert_allclose(step(V(point), x, 0.8, -0.5), 0.7 * point.means[0] + 0.3 * n, rtol=1e-12, atol=1e-12)


def test_rf_solver2_taylor_step_is_the_explicit_midpoint_rule():
    # x + h v + ½h²·(v_half − v)/(½h) = x + h v_half: the paper's Taylor form collapses to the midpoint rule
    x = np.random.default_rng(1).normal(size=(8, 3))
    v = V(ONE)
    s, h = 0.9, -0.2
    mid = x + h * ONE.velocity(x + 0.5 * h * ONE.velocity(x, s), s + 0.5 * h)
    np.testing.assert_allclose(flow_peers.rf_solver2_step(v, x, s, h), mid, rtol=1e-13, atol=1e-14)
    assert v.nfe == 2


def test_fireflow_reuses_the_previous_midpoint_velocity():
    x = np.random.default_rng(2).normal(size=(8, 3))
    v = V(ONE)
    x1, v_mid = flow_peers.fireflow_step(v, x, 1.0, -0.25)
    assert v.nfe == 2  # first step: v(x, σ) and the midpoint
    np.testing.assert_array_equal(v_mid, ONE.velocity(x + 0.5 * -0.25 * ONE.velocity(x, 1.0), 0.875))
    x2, v_mid2 = flow_peers.fireflow_step(v, x1, 0.75, -0.25, v_mid)
    assert v.nfe == 3  # later steps: the midpoint only, the half-step slope is the reused v_mid
    np.testing.assert_array_equal(x2, x1 - 0.25 * ONE.velocity(x1 - 0.125 * v_mid, 0.625))
    assert not np.allclose(x2, x1 - 0.25 * ONE.velocity(x1 - 0.125 * ONE.velocity(x1, 0.75), 0.625), rtol=0, atol=1e-8)


# ------------------------------------------------------------------ declared global orders
@pytest.fixture(scope="module")
def held_out():
    data = flow.problems()["held-out"]
    x_T = np.random.default_rng(5).normal(size=(32, 4))
    return data, x_T, data.rectified_flow(x_T, 1.0, 0.0)


@pytest.mark.parametrize("name", PEERS)
def test_declared_order_measured_from_pure_noise(held_out, name):
    data, x_T, ref = held_out
    grid = FlowGrid("shift 1", FlowMatch())
    v_fn = AnalyticVelocity(data, grid.schedule)
    ns = [10, 20, 40]
    errs = [rmse(flow_peers.sample(name, v_fn, x_T, grid, n).x, ref) for n in ns]
    p = empirical_order(ns, errs)
    assert flow_peers.ORDER[name] - 0.25 <= p <= flow_peers.ORDER[name] + 0.75, (name, p)


def test_diffusers_loop_is_float64_euler_on_the_same_flux_grid(held_out):
    data, x_T, _ = held_out
    grid = flow.grids()["Flux"]
    v_fn = AnalyticVelocity(data, grid.schedule)
    ours, nfe = flow_peers.integrate("diffusers-FlowMatchEuler", v_fn, x_T, grid.sigma_grid(12))
    run = flow_peers.sample("diffusers-FlowMatchEuler", v_fn, x_T, grid, 12)
    assert nfe == run.nfe == 12
    np.testing.assert_allclose(run.x, ours, rtol=0, atol=1e-5)  # diffusers rounds the state to float32 in step()
    assert np.abs(ours - x_T).max() > 0.1


# ------------------------------------------------------------------ NFE counting, inversion
@pytest.mark.parametrize("name", PEERS)
@pytest.mark.parametrize("steps", [1, 4, 9])
def test_model_calls_are_counted(name, steps):
    grid = flow.grids()["SD3"]
    v_fn = AnalyticVelocity(ONE, grid.schedule)
    x = ONE.sample(4, seed=0)
    run = flow_peers.sample(name, v_fn, x, grid, steps)
    assert run.nfe == v_fn.nfe == flow_peers.nfe_of(name, steps)
    v_fn.reset()
    _, _, both = flow_peers.roundtrip(name, v_fn, x, grid, steps)
    assert both == v_fn.nfe == 2 * flow_peers.nfe_of(name, steps)


@pytest.mark.parametrize("name", PEERS)
def test_steps_for_fills_the_budget(name):
    for nfe in range(2, 60):
        s = flow_peers.steps_for(name, nfe)
        assert flow_peers.nfe_of(name, s) <= nfe < flow_peers.nfe_of(name, s + 1)


def test_peer_inversion_is_inexact_and_converges_ours_is_exact(held_out):
    data, _, _ = held_out
    grid = flow.grids()["SD3"]
    v_fn = AnalyticVelocity(data, grid.schedule)
    x0 = data.sample(16, seed=3)
    for name in PEERS:
        lat, rec, _ = flow_peers.roundtrip(name, v_fn, x0, grid, 10)
        _, rec_fine, _ = flow_peers.roundtrip(name, v_fn, x0, grid, 40)
        assert 0.5 < float(np.std(lat)) < 2.0  # the inverted state is noise-like
        assert rmse(rec, x0) ** 2 > 1e-12 and rmse(rec_fine, x0) < 0.5 * rmse(rec, x0), name
    for name in flow.OURS:
        rec, calls = flow.roundtrip(name, v_fn, x0, grid, 10)
        assert rmse(rec, x0) ** 2 < 1e-20 and calls == 19


@pytest.mark.parametrize("call, match", [
    (lambda: flow_peers.nfe_of("RF-Solver-3", 4), "name='RF-Solver-3'.*FireFlow"),
    (lambda: flow_peers.sample("FireFlow", None, np.zeros(2), flow.grids()["SD3"], 0), "steps=0"),
    (lambda: flow_peers.invert("fireflow", None, np.zeros(2), flow.grids()["SD3"], 3), "name='fireflow'"),
])
def test_bad_peer_input_names_the_parameter(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_analytic_case_counts_every_call_at_equal_nfe():
    grid = flow.grids()["shift 1"]
    case = flow.analytic_case(ONE, grid, (4, 8), (3,), batch=4)
    assert case["calls"]["FireFlow"] == {4: 4, 8: 8} and case["calls"]["RF-Solver-2"] == {4: 4, 8: 8}
    assert case["calls"]["o-belm"] == {4: 4, 8: 8} and case["rt_calls"]["o-belm"] == {3: 5}
    assert case["roundtrip"]["o-belm"][3] < 1e-25 < case["roundtrip"]["FireFlow"][3]
    data = _flow_data()
    data.cases[("p", "shift 1")] = case
    data.problems = {"p": "one Gaussian"}
    assert flow.calls_check(data) == []
    case["calls"]["FireFlow"][8] = 9
    assert flow.calls_check(data) == ["('p', 'shift 1') FireFlow NFE 8: 9 calls"]


# ------------------------------------------------------------------ the digits flow model
def test_flow_loss_is_velocity_matching_on_the_straight_path():
    from benchmarks.train_digits_flow import FlowTrainConfig, draw_sigma, flow_loss

    seen = {}

    class Fake(torch.nn.Module):
        def forward(self, x, t, class_labels):
            seen.update(x=x, t=t)
            return type("Out", (), {"sample": torch.zeros_like(x)})()

    x0 = torch.rand(6, 1, 8, 8) * 2 - 1
    cfg = FlowTrainConfig(sigma_sampling="uniform")
    torch.manual_seed(3)
    loss = flow_loss(cfg)(Fake(), x0, torch.zeros(6, dtype=torch.long))
    torch.manual_seed(3)
    sigma = draw_sigma(6, "uniform")
    noise = torch.randn_like(x0)
    s = sigma.view(-1, 1, 1, 1)
    torch.testing.assert_close(seen["x"], (1 - s) * x0 + s * noise)
    torch.testing.assert_close(seen["t"], 1000 * sigma)
    torch.testing.assert_close(loss, ((noise - x0) ** 2).mean())  # a zero prediction pays |n − x0|²
    z = draw_sigma(4000, "logit-normal")
    assert 0 < float(z.min()) and float(z.max()) < 1 and abs(float(z.mean()) - 0.5) < 0.02
    with pytest.raises(ValueError, match="sigma_sampling='beta'"):
        FlowTrainConfig(sigma_sampling="beta")


def test_tiny_flow_training_saves_and_is_reused(tmp_path):
    from benchmarks.train_digits_flow import DigitsVelocity, FlowTrainConfig, ensure_model, load_model

    cfg = FlowTrainConfig(steps=3, batch_size=8, channels=(8, 16))
    path = ensure_model(cfg, tmp_path / "m", progress=False)
    weights = next((path / "unet").glob("*.safetensors"))
    stamp = weights.stat().st_mtime_ns
    assert ensure_model(cfg, path, progress=False) == path and weights.stat().st_mtime_ns == stamp
    unet, meta = load_model(path)
    assert meta["prediction_type"] == "flow_velocity" and len(meta["loss_every_20"]) == 1
    assert meta["config"]["sigma_sampling"] == "logit-normal" and not unet.training
    v = DigitsVelocity(unet, [1, 2, 3])
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    a, b = v(x, 500.0), v(x, 500.0)
    assert a.dtype == torch.float64 and torch.equal(a, b) and v.nfe == 2
    assert not torch.equal(v(x, 500.5), a)  # fractional model times (half steps) reach the network
    with pytest.raises(ValueError, match="batch size 2"):
        v(x[:2], 500.0)


# ------------------------------------------------------------------ renderers on hand-made data
NFES, RT = (4, 8, 16), (4, 10)


def _case(scale: float) -> dict:
    errors = {m: {n: scale * n ** -2.0 for n in NFES} for m in flow.METHODS}
    errors["diffusers-FlowMatchEuler"] = {n: scale / n for n in NFES}
    errors["RF-Solver-2"][4] = None
    calls = {m: {n: n if m in flow.OURS else flow_peers.nfe_of(m, flow.steps_for(m, n)) for n in NFES}
             for m in flow.METHODS}
    rt = {m: {s: 1e-30 if m in flow.OURS else 1e-3 / s for s in RT} for m in flow.METHODS}
    rt_calls = {m: {s: 2 * s - 1 if m in flow.OURS else 2 * flow_peers.nfe_of(m, s) for s in RT} for m in flow.METHODS}
    return {"errors": errors, "calls": calls, "roundtrip": rt, "rt_calls": rt_calls}


def _digits() -> flow.DigitsFlowData:
    quality = {(m, n): {"acc": 0.9, "conf": 0.8, "fd": 3.0 / n, "sw": 0.1, "calls": n} for m in flow.METHODS for n in (5, 10)}
    rec = {(m, s): 1e-16 if m in flow.OURS else 1e-3 for m in flow.METHODS for s in (10, 28)}
    rec.update({("o-belm" + flow.F64, s): 1e-29 for s in (10, 28)})
    meta = {"config": {"steps": 1500, "batch_size": 128, "seed": 0, "sigma_sampling": "logit-normal"},
            "train_seconds": 170.0, "final_loss_avg100": 0.31}
    return flow.DigitsFlowData(checkpoint="benchmarks/.cache/digits_flow", trained_s=None, meta=meta,
                               classifier_acc=0.95, floor_fd=0.4, n_gen=20, nfes=(5, 10), quality=quality, n_rec=4,
                               rec_steps=(10, 28), rec=rec, rec_calls={(m, s): 2 * s for m in flow.METHODS for s in (10, 28)})


def _flow_data(with_digits: bool = True) -> flow.FlowData:
    return flow.FlowData(nfes=NFES, rt_steps=RT, batch=8, problems={"a": "K = 2, R^4", "b": "K = 1, R^8"},
                         grids=("shift 1", "SD3"),
                         cases={(p, g): _case(1.0 + i) for i, (p, g) in enumerate(
                             [(p, g) for p in ("a", "b") for g in ("shift 1", "SD3")])},
                         digits=_digits() if with_digits else None)


def test_render_names_the_peers_and_tabulates_every_cell():
    text = flow.render(_flow_data())
    for name in ("RF-Solver-2", "FireFlow", "FlowMatchEulerDiscreteScheduler", "Wang et al. 2024", "Deng et al. 2024"):
        assert name in text
    parts = text.split("### ")
    acc_a = rows_of(parts[1])
    assert acc_a["grid · method"] == [f"NFE {n}" for n in NFES] + ["order"]
    assert set(acc_a) == {"grid · method"} | {f"{g} · {m}" for g in ("shift 1", "SD3") for m in flow.METHODS}
    assert acc_a["shift 1 · o-belm"][-1] == "2" and acc_a["SD3 · diffusers-FlowMatchEuler"][-1] == "1"
    assert acc_a["shift 1 · RF-Solver-2"][0] == "—"
    rt_b = rows_of(parts[4])
    assert rt_b["SD3 · o-belm"] == ["1.0e-30", "1.0e-30"] and rt_b["SD3 · FireFlow"] == ["2.5e-04", "1.0e-04"]
    assert "every cell" in parts[0] and "largest MSE of recommended, o-belm and bdia(γ=1)" in parts[4]
    assert "Recommended for flows" in parts[4]
    dig = rows_of(parts[5])
    assert dig["FireFlow"] == ["5", "5", "0.900", "0.800", "0.600"]  # the first (NFE 5) quality row
    rec = rows_of(parts[5].split("Reconstruction MSE")[1])
    assert rec["o-belm"] == ["1.0e-16", "1.0e-16", "56"] and rec["FireFlow"] == ["1.0e-03", "1.0e-03", "56"]
    assert rec["o-belm (float64 network)"] == ["1.0e-29", "1.0e-29", "—"] and "bdia(γ=1) (float64 network)" not in rec
    assert "1.0e-16 with the float32 network, 1.0e-29 with the same checkpoint run in float64" in parts[5]
    assert "(cached checkpoint)" in parts[5] and "logit-normal" in parts[5]
    assert "### Digits" in text and "### Digits" not in flow.render(_flow_data(with_digits=False))


def test_figures_drawn_from_hand_made_data(tmp_path):
    figs = flow.draw(_flow_data(), tmp_path)
    assert len(figs) == 2 and len(flow.draw(_flow_data(with_digits=False), tmp_path)) == 1
    for png, caption in figs:
        assert png.is_file() and png.stat().st_size > 1000 and "Produced by `benchmarks/flow.py`" in caption
