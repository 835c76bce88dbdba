"""Benchmark suite: smoke tests on tiny settings, and the table renderers on hand-made
data (properties, not golden numbers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("matplotlib")

from belm_core import DiscreteVP, Solver, recommended  # noqa: E402

from backends.analytic import empirical_order  # noqa: E402
from benchmarks import accuracy, cost, digits, exactness, peers, report  # noqa: E402
from helpers import held_out_mixture, rows_of, rmse  # noqa: E402


@pytest.fixture(scope="module")
def problem():
    return accuracy.Problem(DiscreteVP.scaled_linear(), n=16, seed=0)




@pytest.mark.parametrize("p", [0.5, 1.0, 2.0, 3.7])
def test_empirical_order_recovers_slope(p):
    n = np.array([7, 10, 20, 50, 100])
    c = np.random.default_rng(int(p * 10)).uniform(0.1, 10.0)
    assert empirical_order(n, c * n**-p) == pytest.approx(p, abs=1e-12)
    wobble = 1 + 0.05 * np.sin(n)  # a least-squares fit, not the end points' slope
    assert abs(empirical_order(n, c * n**-p * wobble) - p) < 0.05


@pytest.mark.parametrize("ns, errors, word", [
    ([10], [1.0], "ns"), ([10, 10], [1.0, 0.5], "ns"), ([10, 20], [1.0], "equal length"),
    ([10, 20], [1.0, 0.0], "errors"), ([10, 20], [1.0, float("inf")], "errors"), ([0, 20], [1.0, 0.5], "ns"),
])
def test_empirical_order_rejects_points_without_a_logarithm(ns, errors, word):
    with pytest.raises(ValueError, match=word):
        empirical_order(ns, errors)


def test_order_fit_skips_missing_points():
    n = [10, 20, 50, 100]
    e = [3.0 * k**-2.0 for k in n]
    assert accuracy.order_fit(n, e) == pytest.approx(2.0)
    assert accuracy.order_fit(n, [None, e[1], float("inf"), e[3]]) == pytest.approx(2.0)
    assert accuracy.order_fit(n, [None, 0.0, float("nan"), e[3]]) is None
    assert accuracy.order_fit([10], [1.0]) is None


# ------------------------------------------------------------------ table renderers on hand-made data
NFES = (5, 10, 20, 40)


def _accuracy_data() -> accuracy.AccuracyData:
    first = {"ddim": {n: 2.0 / n for n in NFES}, "o-belm": {n: 5.0 * n**-2.0 for n in NFES},
             "belm3": {n: None for n in NFES}}
    second = {"ddim": {n: 1.0 / n for n in NFES}, "o-belm": {5: 1.0, 10: 0.01, 20: 0.001, 40: None}}
    return accuracy.AccuracyData(nfes=NFES, batch=7, cases={
        ("linear", "linspace"): {"errors": first, "notes": {"belm3": "unavailable (no derivation)"}},
        ("cosine", "trailing"): {"errors": second, "notes": {}},
    })


def test_accuracy_table_lists_every_method_with_errors_and_orders():
    data = _accuracy_data()
    errors = data.cases[("linear", "linspace")]["errors"]
    rows = rows_of(accuracy.error_table(errors, NFES))
    assert set(rows) == {"method", "ddim", "o-belm", "belm3"}
    assert rows["method"] == [f"NFE {n}" for n in NFES] + ["order (all NFE)", "order (NFE ≥ 20)"]
    for m in ("ddim", "o-belm"):
        assert rows[m][: len(NFES)] == [format(errors[m][n], ".3g") for n in NFES]
    assert [float(v) for v in rows["ddim"][-2:]] == pytest.approx([1.0, 1.0], abs=1e-3)
    assert [float(v) for v in rows["o-belm"][-2:]] == pytest.approx([2.0, 2.0], abs=1e-3)
    assert rows["belm3"] == ["—"] * (len(NFES) + 2)  # no error → no order either


def test_accuracy_render_has_one_table_per_case_and_counts_wins():
    text = accuracy.render(_accuracy_data())
    assert "### linear schedule, `linspace` spacing" in text and "### cosine schedule, `trailing` spacing" in text
    assert text.count("| method |") == 2
    assert "`belm3`: unavailable (no derivation)." in text
    # first case: o-belm below ddim at NFE 5? 0.2 vs 0.4 yes, and at 10, 20, 40; second: 1 > 0.2, 0.01 < 0.1, 0.001 < 0.05
    assert "in 6 of 7 (schedule, spacing, NFE) cells" in text
    assert "Batch: 7 points" in text and all(f"`{p}`" in text for p in peers.SAMPLERS)


def test_exactness_render_formats_errors_and_finds_the_failures():
    steps = exactness.STEPS
    ours, theirs = ("o-belm", "bdia(γ=0.5)", "ddim"), ("diffusers-DDIMInverse",)
    err = {}
    for s in steps:
        for d in exactness.DTYPES:
            err[("o-belm", s, d)] = 1e-30 * s
            err[("bdia(γ=0.5)", s, d)] = 1e-30 if s < 50 else float("inf")
            err[("ddim", s, d)] = 1e-3 / s
            err[("diffusers-DDIMInverse", s, d)] = 2e-3 / s if d != "bfloat16" else None
    amp = {(n, s): 2.0**s if n == "bdia(γ=0.5)" else 1.0 for n in ours for s in steps}
    data = exactness.ExactnessData(steps=steps, ours=ours, peers=theirs, err=err, amp=amp)
    text = exactness.render(data)
    tables = text.split("### ")
    f64 = rows_of(tables[1])
    assert f64["method"] == [f"{s} steps" for s in steps]
    assert set(f64) == {"method", *ours, *theirs}
    assert f64["o-belm"] == [format(1e-30 * s, ".2e") for s in steps]
    assert f64["bdia(γ=0.5)"][-1] == "inf"
    by_dtype = rows_of(tables[3])
    assert by_dtype["method"][:4] == [f"{d}, 50" for d in exactness.DTYPES]
    assert by_dtype["diffusers-DDIMInverse"][3] == "—"  # no bfloat16 run
    assert by_dtype["ddim"][0] == format(1e-3 / 50, ".1e")
    amps = rows_of(tables[4])
    assert set(amps) == {"method", *ours}  # the peers have no amplification factor
    assert amps["bdia(γ=0.5)"][0] == format(2.0**10, ".3g")
    assert "`o-belm`: MSE ≤ 1e−6 at every step count" in text
    assert "`bdia(γ=0.5)`: MSE > 1e−6 from 50 steps on" in text
    assert "`ddim`: MSE > 1e−6 from 10 steps on (inexact by construction)" in text


def _cost_data() -> cost.CostData:
    names = ("ddim", "o-belm", "edict", "diffusers DDIM loop")
    times = {n: [1.0 + i, 1.5 + i, 0.9 + i] for i, n in enumerate(names)}
    return cost.CostData(
        times=times, ratios={"ddim": 1.0, "o-belm": 1.0123, "edict": 2.04, "diffusers DDIM loop": 3.0},
        forward_s=0.0123, rounds=3,
        overhead={(kind, m): 1e-5 * (i + 1) * (2 if kind == "numpy" else 1) for kind in ("torch", "numpy")
                  for i, m in enumerate(names[:3])},
        profile="ncalls  tottime  percall  cumtime  percall filename:lineno(function)",
        memory={"ddim": {"before_kib": 2048.0, "after_kib": 3072.0}, "o-belm": None},
        memory_free={"ddim": {"before_kib": 0.0, "after_kib": 2 * 65536.0, "state_kib": 65536.0}},
        tracemalloc={"ddim": 3 * 2**20, "o-belm": 2**21}, state_bytes=2**20,
        derive={2: 0.5, 3: "> 240 s"}, coefficients={2: 2e-6, 3: "ValueError: unstable"},
    )


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_peak_rss_is_the_childs_own_not_the_parents():
    """A fresh interpreter started by a process that held 200 MiB reads its own peak (the
    kernel's ru_maxrss would report the parent's 200 MiB+ as the child's)."""
    import resource
    import subprocess
    import sys

    held = np.ones(200 * 2**20 // 8)  # touched: resident
    parent = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    code = "from benchmarks.cost import peak_rss_kib; print(peak_rss_kib())"
    out = subprocess.run([sys.executable, "-c", code], cwd=cost.REPO, capture_output=True, text=True, check=True)
    child = int(out.stdout.strip().splitlines()[-1])
    del held
    assert 0 < child < parent - 150 * 1024


def test_cost_render_tables():
    data = _cost_data()
    text = cost.render(data)
    sections = text.split("### ")
    times = rows_of(sections[1])
    assert set(times) - {"method"} == set(data.times)
    assert times["o-belm"] == ["20", "2.000", "1.900", "1.012"]  # median, min, ratio at .3f
    assert times["edict"][0] == "40"  # two model calls per step
    assert "**o-belm / ddim = 1.012**" in text and "**edict / ddim = 2.04**" in text
    assert "One UNet forward pass alone: 12.3 ms" in text
    overhead = rows_of(sections[2])
    assert overhead["method"] == ["torch [µs/step]", "NumPy [µs/step]"]
    assert overhead["edict"] == ["30", "60"]
    assert data.profile in sections[2]
    unet, large, traced = (rows_of(t) for t in cost.memory_tables(data))
    assert unet["ddim"] == ["2.0", "3.0", "1.0"]  # MiB before, after, added
    assert unet["o-belm"] == ["—", "—", "—"]  # the child failed
    assert large["ddim"] == ["128.0", "2.0"]  # 128 MiB added = 2 states
    assert traced["ddim"] == ["3072.0", "3.0"] and traced["o-belm"] == ["2048.0", "2.0"]
    assert all(t in sections[3] for t in cost.memory_tables(data))
    derivation = rows_of(sections[4])
    assert derivation["2"] == ["0.5", "2"] and derivation["3"] == ["> 240 s", "ValueError: unstable"]


def _digits_data() -> digits.DigitsData:
    rec_steps, rec_methods, inverters = (10, 50), ("ddim", "o-belm"), ("diffusers-DDIMInverse",)
    rec = {("ddim", 10): 1e-3, ("ddim", 50): 4e-4, ("o-belm", 10): 1e-30, ("o-belm", 50): 0.0,
           ("diffusers-DDIMInverse", 10): float("inf"), ("diffusers-DDIMInverse", 50): 2e-3}
    dtype_rec = {("o-belm", d): 10.0 ** -(30 - 5 * i) for i, d in enumerate(digits.STATE_DTYPES)}
    quality = {("ddim", 5): {"acc": 0.5, "conf": 0.61234, "fd": 12.3456, "sw": 0.1}, ("diffusers-DDIM", 10):
               {"acc": 0.9, "conf": 0.9, "fd": 1.0, "sw": 0.05}}
    img = np.zeros((2, 1, 8, 8), dtype=np.float32)
    edit = digits.EditData(labels=np.array([3, 7]), x_src=img, x_rec=img, edits=[img], offsets=(1,), until=30, steps=50,
                           guidance=2.0, accuracy=0.75, rec_mse=1.5e-29)
    meta = {"config": {"steps": 1500, "batch_size": 128, "seed": 0}, "train_seconds": 150.2,
            "final_loss_avg100": 0.0412, "n_train": 1437, "n_test": 360}
    return digits.DigitsData(
        checkpoint="benchmarks/.cache/digits", trained_s=None, meta=meta, classifier_acc=0.95, floor_fd=0.5,
        floor_sw=0.02, n_rec=4, rec_steps=rec_steps, rec_methods=rec_methods, inverters=inverters, rec=rec,
        zero_pixels=7, edict_off={("edict", 10): 2.5e-29, ("edict", 50): 1.25e-28}, dtype_steps=50, dtype_methods=("o-belm",), dtype_rec=dtype_rec, nfes=(5, 10), n_gen=20,
        q_methods=("ddim",), q_peers=("diffusers-DDIM",), quality=quality,
        samples={("ddim", 10): np.zeros((40, 1, 8, 8), dtype=np.float32)}, edit=edit)


def test_digits_render_tables():
    data = _digits_data()
    text = digits.render(data)
    sections = text.split("### ")
    assert "(cached checkpoint)" in sections[0] and "1500 steps × batch 128" in sections[0]
    rec = rows_of(sections[1])
    assert set(rec) == {"method", "ddim", "o-belm", "diffusers-DDIMInverse"}
    assert rec["ddim"] == ["1.00e-03", "4.00e-04"] and rec["diffusers-DDIMInverse"][0] == "inf"
    assert "10 steps: 1.0e+27, 50 steps: 4.0e+296" in sections[1]  # a zero MSE is floored at 1e-300
    assert "7 of the 256 held-out pixels are exactly 0" in sections[1]
    assert "round trip is 2.50e-29 / 1.25e-28 at 10 / 50 steps" in sections[1]
    dtypes = rows_of(sections[2])
    assert dtypes["method"] == list(digits.STATE_DTYPES) and set(dtypes) == {"method", "o-belm"}
    assert dtypes["o-belm"] == ["1.0e-30", "1.0e-25", "1.0e-20", "1.0e-15"]
    quality = rows_of(sections[3])
    assert quality["ddim"] == ["5", "0.500", "0.612", "12.346", "0.100"]
    assert quality["diffusers-DDIM"][0] == "10" and len(quality) == 3  # only measured (method, NFE) cells
    assert "partial inversion to grid index 30 of 50" in sections[4] and "guidance 2," in sections[4]
    assert "1.50e-29" in sections[4] and "target label: 0.75" in sections[4]


def test_figures_drawn_from_hand_made_data(tmp_path):
    figs = accuracy.draw(_accuracy_data(), tmp_path) + digits.draw(_digits_data(), tmp_path)
    assert len(figs) == 5
    for png, caption in figs:
        assert png.is_file() and png.stat().st_size > 1000 and "Produced by `benchmarks/" in caption


def test_grid_table_and_log_clip():
    text = report.grid_table("k", [1, 2], ("a", "b"), lambda r, c: r / 3 if c == "a" else None,
                             lambda c: c.upper(), ".2f")
    assert text.splitlines()[0] == "| k | A | B |"
    assert rows_of(text)["2"] == ["0.67", "—"]
    assert report.log_clip(0.0) == report.LOG_FLOOR and report.log_clip(float("inf")) == report.LOG_CEIL
    assert np.isnan(report.log_clip(None)) and report.log_clip(0.5) == 0.5
    assert report.doc_intro("Title.\n\nBody text.\n") == "Body text."


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


def test_lowstep_marks_only_cells_at_or_below_the_better_peer():
    from benchmarks import lowstep

    def errs(ours):
        e = {m: {5: 1.0, 10: 1.0} for m in lowstep.OURS + lowstep.PEERS}
        e["diffusers-UniPC"] = {5: 0.5, 10: 0.2}
        e["recommended"] = dict(zip((5, 10), ours))
        return e

    data = lowstep.LowstepData((5, 10), 4, {("cosine", "a"): errs((0.4, 0.3)), ("cosine", "b"): errs((0.5, 0.1))},
                               (10, 20), {})
    assert lowstep.wins(data) == {"cosine": (3, 4)}
    rows = rows_of(lowstep.error_table(data, "cosine"))
    assert rows["a"][0] == "**0.4** / 0.3" and rows["b"][0] == "**0.5** / **0.1**"


def test_peer_grid_laws_are_diffusers_own_options():
    assert peers.grid_laws("diffusers-DPM++2M") == tuple(peers.GRID_LAWS)  # λ-uniform is DPM-Solver++ only
    for name in ("diffusers-UniPC", "diffusers-DEIS"):
        assert "lu" not in peers.grid_laws(name) and {"trailing", "karras", "exponential"} <= set(peers.grid_laws(name))
    sch = DiscreteVP.scaled_linear()
    assert peers.make_sampler("diffusers-UniPC", sch, "karras").config.use_karras_sigmas
    assert peers.make_sampler("diffusers-DEIS", sch, "trailing").config.timestep_spacing == "trailing"
    with pytest.raises(ValueError, match="spacing='lu'.*diffusers-UniPC"):
        peers.make_sampler("diffusers-UniPC", sch, "lu")
    with pytest.raises(ValueError, match="name='heun'"):
        peers.grid_laws("heun")


def test_peer_sample_starts_at_the_first_node_when_model_times_repeat():
    from backends.analytic import GaussianMixture
    from benchmarks import lowstep

    case = lowstep.Case(GaussianMixture.random((2,), 2, seed=5), DiscreteVP.cosine(), 4)
    run = peers.sample("diffusers-UniPC", case.schedule, case.eps, torch.from_numpy(case.x_T), 10, "karras")
    assert len(set(run.timesteps.tolist())) < 10  # Karras σ nodes near σ̄(999) share model time 999 on cosine
    assert run.nfe == 10 and run.end_sigma_bar == 0.0 and torch.isfinite(run.x0).all()
    assert peers.start_sigma_bar("diffusers-UniPC", case.schedule, 10, "karras") == pytest.approx(
        case.schedule.sigma_bar(999), rel=1e-4)  # diffusers' ᾱ is a float32 cumprod


def test_tuning_mixtures_are_not_the_reported_problems():
    from benchmarks import lowstep

    reported = list(lowstep.problems(quick=False).values())
    for tuned in lowstep.tuning_problems().values():
        for r in reported:
            assert tuned.means.shape != r.means.shape or not np.allclose(tuned.means, r.means)


def test_choose_grids_takes_the_smallest_tuning_score_among_candidates_that_start_at_t_max():
    from backends.analytic import GaussianMixture
    from benchmarks import lowstep

    sch = DiscreteVP.scaled_linear()
    cases = [lowstep.Case(GaussianMixture.random((2,), 3, seed=21), sch, 8, seed=100)]
    grids = lowstep.choose_grids(sch, (5, 10), cases)
    assert set(grids) == set(lowstep.PEERS)
    for peer, g in grids.items():
        assert set(g.scores) | set(g.excluded) == set(peers.grid_laws(peer))
        assert "leading" in g.excluded and "linspace" in g.scores  # leading starts below t = 999
        assert g.scores[g.law] == min(g.scores.values()) <= g.scores["linspace"]
        errs = [lowstep.peer_error(cases[0], peer, n, g.law) for n in (5, 10)]
        assert g.scores[g.law] == pytest.approx(float(np.sqrt(errs[0] * errs[1])), rel=1e-12)


def test_lowstep_counts_the_stretch_against_the_peers_on_their_best_grids():
    from benchmarks import lowstep

    def errs(ours, best_unipc):
        e = {m: {5: 1.0, 10: 1.0} for m in lowstep.OURS + lowstep.PEERS}
        e.update({lowstep.best_key(p): {5: 1.0, 10: 1.0} for p in lowstep.PEERS})
        e["recommended"] = dict(zip((5, 10), ours))
        e[lowstep.best_key("diffusers-UniPC")] = dict(zip((5, 10), best_unipc))
        return e

    choice = {p: lowstep.GridChoice("karras", {"linspace": 0.2, "karras": 0.1}, {}) for p in lowstep.PEERS}
    data = lowstep.LowstepData((5, 10), 4, {("cosine", "a"): errs((0.4, 0.3), (0.5, 0.2)),
                                            ("cosine", "b"): errs((0.5, 0.1), (0.4, 0.1))},
                               (10, 20), {}, grids={"cosine": choice})
    assert lowstep.wins(data) == {"cosine": (4, 4)} and lowstep.wins(data, best_grid=True) == {"cosine": (2, 4)}
    rows = rows_of(lowstep.best_grid_table(data, "cosine"))
    assert rows["a"][:2] == ["**0.4** / 0.3", "1 / 1"] and rows["b"][:3] == ["0.5 / **0.1**", "1 / 1", "0.4 / 0.1"]
    text = lowstep.render(data)
    assert "diffusers-UniPC (karras) NFE 5/10" in text
    assert "on their best grid laws in 2 of 4 cells** (default grids: 4 of 4)" in text


def test_lowstep_compute_reports_the_peers_on_their_chosen_laws(monkeypatch):
    from backends.analytic import GaussianMixture
    from benchmarks import lowstep

    monkeypatch.setattr(lowstep, "schedules", lambda: {"linear": DiscreteVP.linear()})
    monkeypatch.setattr(lowstep, "problems", lambda quick: {"tiny": GaussianMixture.random((2,), 2, seed=31)})
    monkeypatch.setattr(lowstep, "tuning_problems", lambda: {"tune": GaussianMixture.random((2,), 3, seed=32)})
    monkeypatch.setattr(lowstep, "TUNING_BATCH", 8)
    monkeypatch.setattr(lowstep, "NFES", (5, 10))
    monkeypatch.setattr(lowstep, "LATENT_STEPS", (4, 6))
    monkeypatch.setattr(lowstep, "BATCH", 64)
    monkeypatch.setattr(lowstep, "SEEDS", (0, 1))
    monkeypatch.setattr(lowstep, "random_problems", lambda: [GaussianMixture.random((3,), 2, seed=33)])
    monkeypatch.setattr(lowstep, "RANDOM_NFES", (5,))
    monkeypatch.setattr(lowstep, "RANDOM_BATCH", 16)
    data = lowstep.compute(quick=True, progress=False, with_digits=False)
    text = lowstep.render(data)
    # the robustness table: every (schedule, NFE), all points of both seeds, wins only for ours
    assert set(data.robust) == {("linear", 5), ("linear", 10)}
    for cell in data.robust.values():
        assert all(c["points"] == 2 * 64 and 0 <= c["other"] <= c["points"] for c in cell.values())
        assert all(0 <= c["won"] <= c["cases"] == 2 for c in cell.values())
    seed0 = data.robust[("linear", 5)]["recommended"]
    rms = data.errors[("linear", "tiny")]
    assert (rms["recommended"][5] <= min(rms["diffusers-DPM++2M"][5], rms["diffusers-UniPC"][5])) <= seed0["won"]
    assert "### Robustness over x_T seeds 0, 1" in text
    # the random draw: recommended and the better peer, recomputed independently
    case = lowstep.Case(GaussianMixture.random((3,), 2, seed=33), DiscreteVP.linear(), 16, seed=lowstep.RANDOM_XT_SEED)
    [(ours, best)] = data.random["linear"][5]
    solver = Solver(case.schedule, steps=5, **recommended(case.schedule, 5))
    assert ours == pytest.approx(case.error(solver.sample(case.eps, case.x_T)), rel=1e-12)
    assert best == pytest.approx(min(lowstep.peer_error(case, p, 5, "linspace") for p in lowstep.PEERS[:2]), rel=1e-12)
    assert "### A random draw of held-out mixtures (1 problems × 16 points)" in text
    assert "### The peers on their own best grid laws" in text and "Stretch: recommended ≤" in text
    rows = [line.strip("|").split("|") for line in text.splitlines() if line.startswith("| linear | diffusers-")]
    assert [r[1].strip() for r in rows] == list(lowstep.PEERS)
    for r in rows:
        law, score, default = r[2].strip().strip("*"), float(r[3]), float(r[4])
        assert law in peers.grid_laws(r[1].strip()) and f"{law} " in r[5]
        assert score <= default
    for p, g in data.grids["linear"].items():
        assert data.errors[("linear", "tiny")][lowstep.best_key(p)][5] == pytest.approx(
            lowstep.peer_error(lowstep.Case(GaussianMixture.random((2,), 2, seed=31), DiscreteVP.linear(), 64),
                               p, 5, g.law), rel=1e-12)


def test_random_problems_are_a_fixed_draw_disjoint_from_the_reported_and_tuning_mixtures():
    from benchmarks import lowstep

    draw = lowstep.random_problems()
    assert len(draw) == lowstep.RANDOM_COUNT
    again = lowstep.random_problems()
    assert all(np.array_equal(a.means, b.means) and np.array_equal(a.weights, b.weights) for a, b in zip(draw, again))
    assert {d.means.shape[1] for d in draw} <= {2, 3, 4, 6, 8, 16, 32}
    assert all(2 <= len(d.weights) <= 8 for d in draw)
    assert len({d.means.shape for d in draw}) > 5  # dimensions and component counts vary
    others = list(lowstep.problems(quick=False).values()) + list(lowstep.tuning_problems().values())
    for d in draw:
        assert all(d.means.shape != o.means.shape or not np.allclose(d.means, o.means) for o in others)


def test_lowstep_random_table_counts_wins_and_ratios():
    from benchmarks import lowstep

    data = lowstep.LowstepData((5,), 4, {}, (10, 20), {},
                               random={"linear": {5: [(0.1, 0.2), (0.3, 0.2), (0.2, 0.2)], 10: [(0.5, 0.1)]}})
    rows = rows_of(lowstep.random_table(data))
    assert rows["linear"][:5] == ["5", "**2/3**", f"{np.cbrt(0.5 * 1.5 * 1.0):.3g}", "1", "1.5"]
    assert "### A random draw of held-out mixtures (3 problems" in lowstep.render(data)


def test_lowstep_passed_everywhere_needs_every_schedule_and_acceptance_nfe():
    from benchmarks import lowstep

    win, lose = (0.1, 0.2), (0.3, 0.2)
    random = {"sl": {5: [win, win, lose], 10: [win, win, win], 30: [lose, lose, lose]},
              "cos": {5: [win, lose, win], 10: [win, win, win], 30: [lose, lose, lose]}}
    data = lowstep.LowstepData((5, 10), 4, {}, (10, 20), {}, random=random)
    # problem 0 only; NFE 30 is not an acceptance cell
    assert lowstep.passed_everywhere(data.random, data.nfes) == (1, 3, (5, 10))
    assert "at NFE 5/10 (what one acceptance check asks of one mixture): **1 of 3**" in lowstep.render(data)
    assert lowstep.passed_everywhere(random, (5, 10, 30)) == (0, 3, (5, 10, 30))
    assert lowstep.passed_everywhere(random, (10, 20)) == (3, 3, (10,))  # the draw has no NFE 20


def test_lowstep_pass_rate_counts_cells_and_passes_per_draw_and_in_total(monkeypatch):
    from benchmarks import lowstep

    seen = []

    def fake_sweep(schedule, probs, nfes, n):
        seen.append((schedule, len(probs), n))
        # problem j wins every cell unless j is odd on the "b" schedule at NFE 5
        return {nfe: [((0.3 if schedule == "b" and nfe == 5 and j % 2 else 0.1), 0.2) for j in range(len(probs))]
                for nfe in nfes}

    monkeypatch.setattr(lowstep, "schedules", lambda: {"a": "a", "b": "b"})
    monkeypatch.setattr(lowstep, "random_sweep", fake_sweep)
    monkeypatch.setattr(lowstep, "random_problems", lambda count, seed, first: [None] * count)
    # problems 0 and 1 of each draw are the separated ones
    monkeypatch.setattr(lowstep, "random_specs", lambda count, seed, first: [
        lowstep.RandomSpec(2, 3, 1.0, j < 2, first + j) for j in range(count)])
    rows = lowstep.pass_rate(draws=((3, 11, 100), (4, 12, 200)), n=8, progress=False).splitlines()[2:]
    cells = [[c.strip() for c in r.strip("|").split("|")] for r in rows]
    assert cells[0] == ["11", "100", "3", "3 / 3 / 3", "2 / 3 / 3", "**2/3**"]
    assert cells[1] == ["12", "200", "4", "4 / 4 / 4", "2 / 4 / 4", "**2/4**"]
    assert cells[2][2:] == ["7", "7 / 7 / 7", "4 / 7 / 7", "**4/7**"]  # the total row merges the draws
    # split: separated j = 0, 1 of both draws (j = 1 loses), the others j = 2 (wins) and 3 (loses)
    assert cells[3] == ["separated only", "—", "4", "4 / 4 / 4", "2 / 4 / 4", "**2/4**"]
    assert cells[4] == ["the others", "—", "3", "3 / 3 / 3", "2 / 3 / 3", "**2/3**"]
    assert seen == [("a", 3, 8), ("b", 3, 8), ("a", 4, 8), ("b", 4, 8)]


def test_lowstep_main_passes_points_to_pass_rate_and_refuses_non_positive(monkeypatch, capsys):
    from benchmarks import lowstep

    seen = []
    monkeypatch.setattr(lowstep, "pass_rate", lambda n: seen.append(n) or f"table at {n}")
    assert lowstep.main(["--points", "2048"]) == "table at 2048"
    assert lowstep.main([]) == f"table at {lowstep.RANDOM_BATCH}"
    assert seen == [2048, lowstep.RANDOM_BATCH]
    with pytest.raises(SystemExit):
        lowstep.main(["--points", "0"])
    assert "--points must be a positive integer, got 0" in capsys.readouterr().err


def test_lowstep_random_problems_first_seed_moves_the_draw_and_keeps_the_default():
    from benchmarks import lowstep

    specs = lowstep.random_specs()
    assert 0 < sum(sp.separated for sp in specs) < len(specs)
    for sp, mix in zip(specs, lowstep.random_problems()):  # the specs are the draws the problems come from
        assert mix.means.shape[1:] == (sp.dim,) and len(mix.weights) == (5 if sp.separated else sp.components)
    default = lowstep.random_problems()
    head = lowstep.random_problems(3, lowstep.RANDOM_SEED, lowstep.RANDOM_FIRST_PROBLEM_SEED)
    other = lowstep.random_problems(3, lowstep.RANDOM_SEED, 900)
    assert all(np.array_equal(a.means, b.means) for a, b in zip(head, default[:3]))
    assert all(a.means.shape == b.means.shape for a, b in zip(head, other))  # same shapes from the draw seed
    assert not any(np.allclose(a.means, b.means) for a, b in zip(head, other))
    assert lowstep.PASS_RATE_DRAWS[0] == (lowstep.RANDOM_COUNT, lowstep.RANDOM_SEED, 500)  # the benchmark's draw


def test_lowstep_separated_set_counts_problems_won_in_every_cell_and_renders():
    from backends.analytic import default_problem
    from benchmarks import lowstep

    def case(ours, dpm, unipc):
        pts = {"recommended": ours, "dpl-ob-shift-last (trailing)": ours, "diffusers-DPM++2M": dpm, "diffusers-UniPC": unipc}
        return {m: {n: (np.full(4, v[i]), np.arange(4) < 1) for i, n in enumerate((5, 10))} for m, v in pts.items()}

    good, bad = case((0.1, 0.1), (0.3, 0.3), (0.2, 0.2)), case((0.1, 0.3), (0.3, 0.3), (0.2, 0.2))  # bad: NFE 10 lost
    sweeps = {("sl", "p", 7): good, ("cos", "p", 7): good, ("sl", "q", 7): good, ("cos", "q", 7): bad, ("sl", "r", 7): good}
    assert lowstep.all_cells_won(sweeps, (5, 10)) == (2, 3)  # q loses one cell on one schedule
    assert lowstep.all_cells_won(sweeps, (5,)) == (3, 3)
    data = lowstep.LowstepData((5, 10), 4, {}, (10, 20), {}, separated=lowstep.robustness(sweeps, (5, 10)),
                               separated_passed=(2, 3))
    text = lowstep.render(data)
    dim, count, first = lowstep.SEPARATED
    assert f"### Separated {dim}-d mixtures" in text and f"seeds {first}–{first + count - 1}" in text
    assert "at NFE 5/10: **2 of 3**" in text
    assert "| cos | 10 | **1/2** · 0.2 · 2/8 |" in text and "| cos | 5 | **2/2** · 0.1 · 2/8 |" in text
    probs = lowstep.separated_problems(2, 3, 11)
    assert all(np.array_equal(p.means, default_problem((2,), seed=11 + j).means) for j, p in enumerate(probs))


def test_lowstep_robustness_counts_wins_medians_and_other_components():
    from benchmarks import lowstep

    def case(ours, dpm, unipc, other):
        pts = {"recommended": ours, "dpl-ob-shift-last (trailing)": ours * 3, "diffusers-DPM++2M": dpm, "diffusers-UniPC": unipc}
        return {m: {5: (np.full(4, v), np.arange(4) < other)} for m, v in pts.items()}

    sweeps = {("sl", "a", 0): case(0.1, 0.3, 0.2, 1), ("sl", "a", 1): case(0.3, 0.3, 0.2, 2)}
    r = lowstep.robustness(sweeps, (5,))[("sl", 5)]
    assert r["recommended"] == {"won": 1, "cases": 2, "other": 3, "median": pytest.approx(0.2), "points": 8}
    assert r["dpl-ob-shift-last (trailing)"]["won"] == 0 and r["diffusers-UniPC"]["median"] == pytest.approx(0.2)


def test_digits_sample_quality_runs_recommended_on_its_own_grid(monkeypatch):
    from belm_core import DiscreteVP, Solver, recommended

    from benchmarks.digits import sample_quality
    from benchmarks.train_digits import TrainConfig, build_unet

    torch.manual_seed(0)
    unet = build_unet(TrainConfig(channels=(8, 16))).eval()
    schedule = DiscreteVP.linear()
    seen = []

    class Judge:
        def score(self, x, labels):
            return {"acc": 0.0, "conf": 0.0, "fd": float(np.abs(x).mean()), "sw": 0.0}

    real_init = Solver.__init__

    def spy_init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        seen.append(self)

    monkeypatch.setattr(Solver, "__init__", spy_init)
    res, samples = sample_quality(unet, schedule, Judge(), (3, 6), 4, ("recommended", "o-belm"), (), progress=False)
    assert set(res) == {("recommended", 3), ("recommended", 6), ("o-belm", 3), ("o-belm", 6)}
    rec = [s for s in seen if s.method.signature() == "dpl-ob-curv(band=(1.0, 10.0), shift_last='after-dpl')"]
    assert [s.steps for s in rec] == [3, 6] and all(s.startup == "lookahead-log" for s in rec)
    for s in rec:  # recommended's own grid, not linspace
        want = Solver(schedule, steps=s.steps, **recommended(schedule, s.steps))
        np.testing.assert_array_equal(s.timesteps, want.timesteps)
        assert s.timesteps[0] == 999
    assert np.all(np.isfinite(samples[("recommended", 6)]))


class MeanAbsJudge:
    """A stand-in for digits.Judge: the "FD" of a sample set is its mean |x|."""

    floor_fd = 0.5

    def score(self, x, labels):
        return {"fd": float(np.abs(x).mean())}


def tiny_digits_unet():
    from benchmarks.train_digits import TrainConfig, build_unet

    torch.manual_seed(0)
    return build_unet(TrainConfig(channels=(8, 16))).eval()


def test_lowstep_digits_scores_measure_rmse_against_the_long_reference():
    from belm_core import DiscreteVP, Solver

    from benchmarks import lowstep
    from benchmarks.digits import digits_eps

    unet, Judge = tiny_digits_unet(), MeanAbsJudge
    schedule = DiscreteVP.linear()
    x_T = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    d = lowstep.digits_scores(unet, schedule, Judge(), (3,), x_T, ref_n=4, ref_steps=12)
    assert set(d["rmse"]) == set(d["fd"]) == set(lowstep.OURS + lowstep.PEERS[:2])
    labels = np.arange(6) % 10
    head = digits_eps(unet, schedule, labels[:4])
    ddim = {N: Solver(schedule, steps=N, method="ddim", spacing="linspace").sample(head, x_T[:4]) for N in (12, 6)}
    ref = 2 * ddim[12] - ddim[6]
    x = Solver(schedule, steps=3, **lowstep._kwargs(schedule, "recommended", 3)).sample(digits_eps(unet, schedule, labels), x_T)
    assert d["rmse"]["recommended"][3] == pytest.approx(float(((x[:4] - ref) ** 2).mean().sqrt()), rel=1e-12)
    assert d["fd"]["recommended"][3] == pytest.approx(float(x.float().abs().mean()), rel=1e-6)
    assert d["ref_n"] == 4 and d["ref_steps"] == 12 and d["old_ref_steps"] == lowstep.OLD_REF_STEPS
    assert d["ref_spread"] == pytest.approx(float(((ddim[12] - ref) ** 2).mean().sqrt()), rel=1e-12)
    old = Solver(schedule, steps=lowstep.OLD_REF_STEPS, method="o-belm", spacing="linspace").sample(head, x_T[:4])
    assert d["old_ref"] == pytest.approx(float(((old - ref) ** 2).mean().sqrt()), rel=1e-12)
    data = lowstep.LowstepData((3,), 6, {}, (10,), {}, digits=d)
    text = lowstep.render(data)
    assert "### Digits DDPM: RMSE against the ODE solution" in text and "first 4 of the samples" in text
    assert "DDIM on 12 and 6 linspace steps, Richardson-extrapolated" in text


def test_ode_reference_is_closer_to_the_ode_solution_than_ddim_and_estimates_ddims_error():
    """Richardson extrapolation of DDIM removes its first-order error: on held-out mixtures the
    reference's median per-point error is several times below DDIM's on the same steps, and the
    spread it reports is DDIM's own distance to the ODE solution. (Per-point medians: a point that
    settles in another component at 100 than at 200 steps is no smooth error to extrapolate. The last
    step, t = 0 → σ̄ = 0, is the same in both runs, so its error stays: 1e-3 on scaled-linear.)"""
    from backends.analytic import AnalyticEps
    from belm_core import DiscreteVP, Solver

    from benchmarks import lowstep

    def per_point(a, b):
        return np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2, axis=1))

    for name in ("linear", "scaled_linear", "cosine"):
        sch = getattr(DiscreteVP, name)()
        for seed in (3, 4):
            data = held_out_mixture((4,), seed=seed)
            x_T = np.random.default_rng(seed).standard_normal((64, 4))
            exact = data.reference_sample(sch, x_T, 999)
            eps = AnalyticEps(data, sch)
            ref, spread = lowstep.ode_reference(sch, eps, x_T, steps=200)
            ddim = Solver(sch, steps=200, method="ddim", spacing="linspace").sample(eps, x_T)
            err_ref, err_ddim = np.median(per_point(ref, exact)), np.median(per_point(ddim, exact))
            assert err_ref < err_ddim / 4, (name, seed, err_ref, err_ddim)
            assert np.median(per_point(ddim, ref)) == pytest.approx(err_ddim, rel=0.25), (name, seed)
            assert spread == pytest.approx(rmse(ddim, ref), rel=1e-12)
    for bad in (201, 2, 0, 200.0, "200"):
        with pytest.raises(ValueError, match="steps=.*even integer"):
            lowstep.ode_reference(sch, eps, x_T, steps=bad)


def test_lowstep_digits_latents_measure_against_the_extrapolated_ode_inversion():
    from belm_core import DiscreteVP, Solver

    from benchmarks import lowstep
    from benchmarks.digits import digits_eps

    unet, schedule = tiny_digits_unet(), DiscreteVP.linear()
    x0 = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 2 - 1
    labels = np.arange(4) % 10
    d = lowstep.digits_latents(unet, schedule, x0, labels, (10,), ref_steps=12)
    eps = digits_eps(unet, schedule, labels)
    ddim = {N: Solver(schedule, steps=N, method="ddim", spacing="linspace").invert(eps, x0).states[0] for N in (12, 6)}
    ref = 2 * ddim[12] - ddim[6]
    for m in lowstep.DIGITS_LATENT_METHODS:
        latent = Solver(schedule, steps=10, **lowstep._kwargs(schedule, m, 10)).invert(eps, x0)
        assert d["rmse"][m][10] == pytest.approx(float(((latent.states[0] - ref) ** 2).mean().sqrt()), rel=1e-12)
    assert d["rmse"]["recommended"][10] != d["rmse"][lowstep.SINGLE_START][10]
    assert d["ref_spread"] == pytest.approx(float(((ddim[12] - ref) ** 2).mean().sqrt()), rel=1e-12)
    text = "\n".join(lowstep.digits_tables({"fd": {"x": {3: 1.0}}, "n": 4, "floor": 0.5, "latent": d}, "Digits DDPM"))
    assert "### Digits DDPM: inverted latents" in text and "DDIM inversion on 12 and 6 linspace steps" in text
    assert f"| {lowstep.SINGLE_START} |" in text


def test_ode_inversion_is_closer_to_the_exact_inversion_than_ddim():
    """The extrapolated DDIM inversion (the digits latents' reference) against the exact ODE inversion of
    held-out mixture samples: several times closer than DDIM inversion on the same steps."""
    from backends.analytic import AnalyticEps
    from belm_core import DiscreteVP, Solver

    from benchmarks import lowstep

    for name in ("linear", "scaled_linear", "cosine"):
        sch = getattr(DiscreteVP, name)()
        data = held_out_mixture((4,), seed=3)
        x0 = data.sample(64, seed=1)
        exact = float(sch.alpha(999)) * data.flow(x0, 0.0, float(sch.sigma_bar(999)))
        eps = AnalyticEps(data, sch)
        ref, spread = lowstep.ode_inversion(sch, eps, x0, steps=200)
        ddim = Solver(sch, steps=200, method="ddim", spacing="linspace").invert(eps, x0).states[0]
        assert rmse(ref, exact) < rmse(ddim, exact) / 4, (name, rmse(ref, exact), rmse(ddim, exact))
        assert spread == pytest.approx(rmse(ddim, ref), rel=1e-12)


def test_lowstep_digits_scores_compare_the_plain_start_on_a_scaled_linear_network():
    from belm_core import DiscreteVP, Solver, recommended

    from benchmarks import lowstep
    from benchmarks.digits import digits_eps

    unet, Judge = tiny_digits_unet(), MeanAbsJudge
    schedule = DiscreteVP.scaled_linear()
    x_T = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    d = lowstep.digits_scores(unet, schedule, Judge(), (4,), x_T, ref_n=4, ref_steps=12, ours=lowstep.DIGITS_SL_OURS)
    assert set(d["fd"]) == {"recommended", lowstep.PLAIN_START, *lowstep.PEERS[:2]}
    eps = digits_eps(unet, schedule, np.arange(6) % 10)
    rec, plain = recommended(schedule, 4), lowstep._kwargs(schedule, lowstep.PLAIN_START, 4)
    assert rec["startup"] == "pc-shift-moved" and plain["startup"] == "pc"
    assert plain["method"].signature() == rec["method"].signature() and plain["spacing"] == rec["spacing"]
    for name, kw in (("recommended", rec), (lowstep.PLAIN_START, plain)):
        x = Solver(schedule, steps=4, **kw).sample(eps, x_T)
        assert d["fd"][name][4] == pytest.approx(float(x.float().abs().mean()), rel=1e-6)
    assert d["fd"]["recommended"][4] != d["fd"][lowstep.PLAIN_START][4]  # the start-ups differ on this grid
    data = lowstep.LowstepData((4,), 6, {}, (10,), {}, digits_sl=d)
    text = lowstep.render(data)
    assert "### Digits DDPM, scaled-linear schedule: Fréchet distance" in text
    assert "### Digits DDPM, scaled-linear schedule: RMSE against the ODE solution" in text
    assert "### Digits DDPM: Fréchet" not in text  # the linear network's tables only when it ran


def test_train_digits_beta_schedules_and_cached_checkpoints(tmp_path):
    import json

    from benchmarks import train_digits as T
    from benchmarks.train_digits_flow import FlowTrainConfig

    assert T.cache_for("linear") == T.CACHE and T.cache_for("scaled_linear") == T.CACHE_SL
    assert T.cache_for("squaredcos_cap_v2") == T.CACHE_COS != T.CACHE
    assert T.TrainConfig(beta_schedule="squaredcos_cap_v2").beta_schedule in T.BETA_SCHEDULES
    with pytest.raises(ValueError, match="beta_schedule='cosine' must be one of"):
        T.TrainConfig(beta_schedule="cosine")
    # a checkpoint written before the field existed was trained on linear: it still matches
    (tmp_path / "unet").mkdir()
    old = {k: v for k, v in json.loads(json.dumps(T.asdict(T.TrainConfig()))).items() if k != "beta_schedule"}
    (tmp_path / "meta.json").write_text(json.dumps({"config": old}))
    assert T._matches(tmp_path, T.TrainConfig())
    assert not T._matches(tmp_path, T.TrainConfig(beta_schedule="scaled_linear"))
    flow = json.loads(json.dumps(T.asdict(FlowTrainConfig())))
    (tmp_path / "meta.json").write_text(json.dumps({"config": flow}))
    assert T._matches(tmp_path, FlowTrainConfig())  # the flow config has no β schedule
