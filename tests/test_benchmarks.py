"""Smoke tests of the benchmark suite on tiny settings (properties, not golden numbers)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("matplotlib")

from belm_core import DiscreteVP  # noqa: E402

from benchmarks import accuracy, exactness, peers, report  # noqa: E402


@pytest.fixture(scope="module")
def problem():
    return accuracy.Problem(DiscreteVP.scaled_linear(), n=16, seed=0)


def test_order_fit_recovers_slope():
    n = np.array([10, 20, 50, 100])
    assert accuracy.order_fit(n, 3.0 * n**-2.0) == pytest.approx(2.0)
    assert accuracy.order_fit([10], [1.0]) is None


def test_obelm_beats_ddim_and_peers_converge(problem):
    r = accuracy.run_case(problem, "linspace", (10, 40), with_peers=True, methods=("ddim", "o-belm"))["errors"]
    for nfe in (10, 40):
        assert r["o-belm"][nfe] < r["ddim"][nfe]
    assert r["o-belm"][40] < 0.5 * r["o-belm"][10]
    for name in peers.SAMPLERS:
        assert np.isfinite(r[name][10]) and np.isfinite(r[name][40])
        assert r[name][40] < r[name][10], name  # converging toward the reference ODE solution


def test_peer_end_points(problem):
    x_T = torch.from_numpy(problem.x_T(999))
    ddim = peers.sample("diffusers-DDIM", problem.schedule, problem.eps, x_T, 5)
    deis = peers.sample("diffusers-DEIS", problem.schedule, problem.eps, x_T, 5)
    assert ddim.nfe == 5 and ddim.end_sigma_bar == 0.0 and ddim.end_alpha == 1.0
    assert deis.end_sigma_bar > 0.0  # DEIS stops at the first training timestep (documented)
    assert torch.isfinite(deis.x0).all()


def test_roundtrip_exact_vs_inexact(problem):
    x0 = torch.from_numpy(problem.x0)
    methods = exactness.methods()
    e_obelm, amp = exactness.roundtrip_ours(problem.schedule, problem.eps, x0, methods["o-belm"], 20, "float64")
    e_ddim, _ = exactness.roundtrip_ours(problem.schedule, problem.eps, x0, methods["ddim"], 20, "float64")
    assert e_obelm < 1e-20 < 1e-6 < e_ddim
    assert np.isfinite(amp)
    e_peer, _ = exactness.roundtrip_peer("diffusers-DDIMInverse", problem.schedule, problem.eps, x0, 20, "float64")
    assert np.isfinite(e_peer) and e_peer > 1e-8  # DDIM inversion is inexact
    e_bdia, _ = exactness.roundtrip_ours(problem.schedule, problem.eps, x0, methods["bdia(γ=0.5)"], 80, "float64")
    assert not e_bdia < 1e-6  # γ^−N amplification: 0.5^−80 ≈ 1e24 destroys the round trip


def test_digits_eps_is_guided_unet_eps_and_deterministic():
    from belm_core import DiscreteVP

    from benchmarks.digits import NULL, digits_eps
    from benchmarks.train_digits import TrainConfig, build_unet

    torch.manual_seed(0)
    unet = build_unet(TrainConfig(channels=(8, 16))).eval()
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    labels = torch.tensor([1, 2, 3])
    eps = digits_eps(unet, DiscreteVP.linear(), labels, guidance=2.0)
    e1, e2 = eps(x, 500), eps(x, 500)
    assert e1.dtype == torch.float64 and e1.shape == x.shape
    assert torch.equal(e1, e2)
    t = torch.full((3,), 500)
    with torch.no_grad():
        e_c = unet(x.float(), t, class_labels=labels).sample.double()
        e_u = unet(x.float(), t, class_labels=torch.full_like(labels, NULL)).sample.double()
    torch.testing.assert_close(e1, e_u + 2.0 * (e_c - e_u), rtol=1e-5, atol=1e-5)


def test_report_written(tmp_path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([1, 2], [3, 4])
    png = report.savefig(fig, tmp_path / "figures", "demo")
    sec = report.Section("Demo", report.table(["a", "b"], [[1, 0.5], ["x", None]]), [(png, "a demo figure")], seconds=1.0)
    out = report.write_results([sec], tmp_path / "RESULTS.md", command="python -m benchmarks --test")
    text = out.read_text()
    assert png.is_file()
    for needle in ("Command:** `python -m benchmarks --test`", "Git commit", "Machine", "Date", "| a | b |",
                   "figures/demo.png", "a demo figure"):
        assert needle in text
