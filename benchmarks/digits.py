"""A real trained network: reconstruction, sample quality and editing on 8×8 digits.

Model: the class-conditional pixel-space DDPM of `benchmarks.train_digits` (diffusers
`UNet2DModel`, ε-prediction, DDPM linear β, labels 0…9 plus a null label 10 learned
with label dropout), rebuilt by `python -m benchmarks.train_digits` and cached in
`benchmarks/.cache/digits/`. `digits_eps` below is the ε-function: `backends.unet.UNetEps`
(the UNet in float32 under `torch.no_grad()`) with a fixed label per batch row; with
guidance g ≠ 1 it is classifier-free guidance ε = ε_null + g (ε_c − ε_null) in one
batched call. The
solver state stays float64 unless stated. Grids: sample quality and editing use the
`linspace` spacing; reconstruction uses `trailing` for our methods (the spacing
diffusers' DDIMInverseScheduler supports), while DPMSolverInverse uses its own
linspace variant and starts/ends at t = 0 instead of the clean state (see
`benchmarks.peers`).

Digit classifier: scikit-learn `MLPClassifier(hidden_layer_sizes=(64,))` trained on the
*train* split only (pixels in [−1, 1]); its accuracy on the held-out test split is
reported. Sample quality compares generated digits (clipped to [−1, 1]) with the
held-out test split:
- accuracy / confidence: the classifier's agreement with the requested label and its
  mean max-probability;
- FD: Fréchet distance between Gaussians fitted to the classifier's 64 hidden ReLU
  features (an "FID" for digits; the train-vs-test floor is given);
- SW: sliced 2-Wasserstein distance on the 64 pixels (256 random directions,
  quantile functions at 101 levels).
Reconstruction MSE is on the [0, 1] pixel scale (like the paper's pixel MSE).
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from .report import Section, savefig, table

NULL = 10


def digits_eps(unet, schedule, labels, guidance: float = 1.0):
    """ε-function of the class-conditional digits UNet: `backends.unet.UNetEps` with one
    label per batch row and, for guidance g ≠ 1, the null label as the unconditional
    branch (ε = ε_null + g (ε_label − ε_null) in one batched call). Returns ε in x's dtype."""
    import torch

    from backends.unet import UNetEps

    labels = torch.as_tensor(labels, dtype=torch.long)
    return UNetEps(unet, schedule, class_labels=labels, negative_class_labels=torch.full_like(labels, NULL),
                   guidance_scale=guidance)


# ------------------------------------------------------------------------ metrics
class Judge:
    """Classifier + feature statistics of the held-out split."""

    def __init__(self, x_tr, y_tr, x_te, y_te, seed: int = 0):
        from sklearn.neural_network import MLPClassifier

        self.clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=600, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.clf.fit(x_tr.reshape(len(x_tr), -1), y_tr)
        self.test_acc = float(self.clf.score(x_te.reshape(len(x_te), -1), y_te))
        self.x_te = x_te.reshape(len(x_te), -1)
        self.f_te = self.features(self.x_te)
        self.dirs = np.random.default_rng(seed).standard_normal((256, 64))
        self.dirs /= np.linalg.norm(self.dirs, axis=1, keepdims=True)
        self.floor_fd = self.fd(x_tr.reshape(len(x_tr), -1))
        self.floor_sw = self.sw(x_tr.reshape(len(x_tr), -1))

    def features(self, x):
        return np.maximum(x @ self.clf.coefs_[0] + self.clf.intercepts_[0], 0.0)

    def fd(self, x) -> float:
        from scipy import linalg

        f1, f2 = self.features(x), self.f_te
        m1, m2 = f1.mean(0), f2.mean(0)
        c1, c2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s = linalg.sqrtm(c1 @ c2)
        return float(((m1 - m2) ** 2).sum() + np.trace(c1 + c2 - 2 * np.real(s)))

    def sw(self, x) -> float:
        q = np.linspace(0, 1, 101)
        a = np.quantile(x @ self.dirs.T, q, axis=0)
        b = np.quantile(self.x_te @ self.dirs.T, q, axis=0)
        return float(np.sqrt(((a - b) ** 2).mean()))

    def score(self, x, labels) -> dict:
        x = np.clip(x.reshape(len(x), -1), -1, 1)
        p = self.clf.predict_proba(x)
        return {"acc": float((p.argmax(1) == labels).mean()), "conf": float(p.max(1).mean()),
                "fd": self.fd(x), "sw": self.sw(x)}


# ------------------------------------------------------------------------ experiments
def _ours(name):
    from belm_core import BDIA, EDICT, get_method

    return {"bdia(γ=0.9)": lambda: BDIA(gamma=0.9), "bdia": lambda: BDIA(gamma=1.0),
            "edict": lambda: EDICT(p=0.93)}.get(name, lambda: get_method(name))()


def sample_quality(unet, schedule, judge, nfes, n, methods, peer_names, seed=0, progress=True):
    import torch

    from belm_core import Solver

    from . import peers

    labels = np.arange(n) % 10
    x_T = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    res, samples = {}, {}
    for nfe in nfes:
        if progress:
            print(f"  digits: sample quality NFE {nfe}", flush=True)
        for m in methods:
            meth = _ours(m)
            steps = nfe // meth.nfe_per_step
            if steps < meth.min_steps:
                continue
            eps = digits_eps(unet, schedule, labels)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                x = Solver(schedule, steps, meth, spacing="linspace").sample(eps, x_T)
            x = x.float().numpy()
            res[(m, nfe)] = judge.score(x, labels)
            samples[(m, nfe)] = x
        for p in peer_names:
            eps = digits_eps(unet, schedule, labels)
            x = peers.sample(p, schedule, eps, x_T, nfe, "linspace").x0.float().numpy()
            res[(p, nfe)] = judge.score(x, labels)
            samples[(p, nfe)] = x
    return res, samples


def reconstruction(unet, schedule, x0, y0, steps_list, methods, peer_names, progress=True):
    import torch

    from belm_core import Solver

    from . import peers

    x0 = torch.from_numpy(x0).double()
    res = {}
    for steps in steps_list:
        if progress:
            print(f"  digits: reconstruction {steps} steps", flush=True)
        for m in methods:
            eps = digits_eps(unet, schedule, y0)
            solver = Solver(schedule, steps, _ours(m), spacing="trailing")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    rec = solver.sample(eps, solver.invert(eps, x0))
                    res[(m, steps)] = float((((rec - x0) / 2) ** 2).mean())
                except ValueError:
                    res[(m, steps)] = float("inf")
            if not np.isfinite(res[(m, steps)]):
                res[(m, steps)] = float("inf")
        for p in peer_names:
            eps = digits_eps(unet, schedule, y0)
            _, rec = peers.roundtrip(p, schedule, eps, x0, steps)
            e = float((((rec.double() - x0) / 2) ** 2).mean())
            res[(p, steps)] = e if np.isfinite(e) else float("inf")
    return res


def dtype_table(unet, schedule, x0, y0, steps, methods):
    import torch

    from belm_core import Solver

    x0 = torch.from_numpy(x0).double()
    res = {}
    for m in methods:
        for d in ("float64", "float32", "float16", "bfloat16"):
            eps = digits_eps(unet, schedule, y0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                solver = Solver(schedule, steps, _ours(m), spacing="trailing", state_dtype=d)
                try:
                    rec = solver.sample(eps, solver.invert(eps, x0))
                    e = float((((rec.double() - x0) / 2) ** 2).mean())
                except ValueError:
                    e = float("inf")
            res[(m, d)] = e if np.isfinite(e) else float("inf")
    return res


def editing(unet, schedule, judge, x_src, y_src, steps=50, guidance=2.0, keep=0.6):
    """Invert each digit with its own label (partial inversion to `keep`·N), resample with other labels."""
    import torch

    from belm_core import Solver

    x_src = torch.from_numpy(x_src).double()
    solver = Solver(schedule, steps, "o-belm", spacing="linspace")
    until = max(2, int(round(keep * steps)))
    eps_src = digits_eps(unet, schedule, y_src, guidance)
    lat = solver.invert(eps_src, x_src, until=until)
    rec = solver.sample(eps_src, lat)
    offsets = (1, 3, 5)
    edits, tgt_all = [], []
    for o in offsets:
        tgt = (y_src + o) % 10
        edits.append(solver.sample(digits_eps(unet, schedule, tgt, guidance), lat).float().numpy())
        tgt_all.append(tgt)
    ed = np.concatenate(edits)
    acc = float((judge.clf.predict(np.clip(ed.reshape(len(ed), -1), -1, 1)) == np.concatenate(tgt_all)).mean())
    rec_mse = float((((rec - x_src) / 2) ** 2).mean())
    return x_src.float().numpy(), rec.float().numpy(), edits, offsets, until, acc, rec_mse


def run(quick: bool = False, fig_dir=None, progress: bool = True) -> Section:
    import matplotlib.pyplot as plt
    import torch

    from belm_core import DiscreteVP

    from .train_digits import CACHE, TrainConfig, ensure_model, load_model, load_split

    t_start = time.perf_counter()
    t0 = time.perf_counter()
    path = ensure_model(TrainConfig(), CACHE, progress=progress)
    train_note = f"(trained in this run: {time.perf_counter() - t0:.0f} s)" if time.perf_counter() - t0 > 5 else "(cached checkpoint)"
    torch.set_num_threads(1)  # tiny 8×8 UNet: one thread is faster than two and immune to oversubscription
    unet, abar, meta = load_model(path)
    schedule = DiscreteVP(abar)
    x_tr, y_tr, x_te, y_te, _, _ = load_split()
    judge = Judge(x_tr, y_tr, x_te, y_te)

    # --- reconstruction
    n_rec = 32 if quick else 200
    rec_steps = (10, 50, 200) if quick else (10, 20, 50, 100, 200, 500)
    rec_methods = ("ddim", "bdia", "bdia(γ=0.9)", "edict", "o-belm", "belm3")
    from . import peers

    rec = reconstruction(unet, schedule, x_te[:n_rec], y_te[:n_rec], rec_steps, rec_methods, peers.INVERTERS, progress)
    dt = dtype_table(unet, schedule, x_te[:n_rec], y_te[:n_rec], 50, ("ddim", "o-belm", "edict") if quick else ("ddim", "bdia", "edict", "o-belm", "belm3"))

    # --- sample quality
    nfes = (5, 10, 20, 50) if quick else (5, 10, 20, 50, 100)
    n_gen = 200 if quick else 1000
    q_methods = ("ddim", "bdia", "edict", "o-belm", "belm3")
    q_peers = ("diffusers-DDIM", "diffusers-DPM++2M", "diffusers-UniPC")
    qual, samples = sample_quality(unet, schedule, judge, nfes, n_gen, q_methods, q_peers, progress=progress)

    # --- editing
    if progress:
        print("  digits: editing", flush=True)
    pick = [int(np.flatnonzero(y_te == c)[0]) for c in (0, 2, 3, 4, 7, 9)]
    x_src, x_rec, edits, offsets, until, edit_acc, edit_rec = editing(unet, schedule, judge, x_te[pick], y_te[pick])

    cfg = meta["config"]
    body = [__doc__.split("\n\n", 1)[1].strip(), ""]
    body += [f"Checkpoint: {path.relative_to(path.parents[2])} {train_note}; {cfg['steps']} steps × batch {cfg['batch_size']}, "
             f"seed {cfg['seed']}, training wall time {meta['train_seconds']:.0f} s, final loss {meta['final_loss_avg100']:.4f}; "
             f"train/test split {meta['n_train']}/{meta['n_test']}. Digit classifier accuracy on the test split: "
             f"{judge.test_acc:.3f}. Data floor (train split vs test split): FD {judge.floor_fd:.2f}, SW {judge.floor_sw:.3f}."]
    body += ["", f"### Reconstruction MSE ([0, 1] scale) on {n_rec} held-out digits, conditional on their labels, float64 state", ""]
    names = list(rec_methods) + list(peers.INVERTERS)
    body.append(table(["method"] + [f"{s} steps" for s in rec_steps], [[m] + [rec.get((m, s)) for s in rec_steps] for m in names], ".2e"))
    ratio = [rec[("ddim", s)] / max(rec[("o-belm", s)], 1e-300) for s in rec_steps]
    body += ["", "**DDIM / O-BELM reconstruction-MSE ratio:** " + ", ".join(f"{s} steps: {r:.1e}" for s, r in zip(rec_steps, ratio)) + "."]
    body += ["", "### Reconstruction MSE vs solver-state dtype (50 steps; the UNet itself runs in float32)", ""]
    dms = sorted({m for m, _ in dt}, key=list(rec_methods).index)
    body.append(table(["method", "float64", "float32", "float16", "bfloat16"], [[m] + [dt[(m, d)] for d in ("float64", "float32", "float16", "bfloat16")] for m in dms], ".1e"))
    body += ["", f"### Sample quality vs NFE ({n_gen} class-conditional samples, labels 0…9 equally often, same x_T for all, guidance 1)", ""]
    rows = []
    for m in list(q_methods) + list(q_peers):
        for nfe in nfes:
            r = qual.get((m, nfe))
            if r is not None:
                rows.append([m, nfe, r["acc"], r["conf"], r["fd"], r["sw"]])
    body.append(table(["method", "NFE", "classifier acc.", "confidence", "FD (features) ↓", "SW (pixels) ↓"], rows, ".3f"))
    body += ["", f"### Editing (O-BELM, {50} steps, guidance 2, partial inversion to grid index {until} of 50)", "",
             f"Reconstruction MSE of the six source digits through the same partial latent: {edit_rec:.2e}. "
             f"Edited digits classified as their target label: {edit_acc:.2f}."]

    figures = []
    # reconstruction plot
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for m in names:
        ys = [max(min(rec[(m, s)], 1e30), 1e-34) for s in rec_steps]
        ax.loglog(rec_steps, ys, marker="o" if m in rec_methods else "x", ls="-" if m in rec_methods else "--", label=m)
    ax.set_xlabel("steps N")
    ax.set_ylabel("reconstruction MSE ([0,1] scale)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("Digits UNet: sample(invert(x0)) error vs steps")
    figures.append((savefig(fig, fig_dir, "digits_reconstruction"),
                    f"Reconstruction MSE of {n_rec} held-out digits through inversion and resampling with the trained "
                    "class-conditional digits UNet (float64 state, float32 network), per method and step count; inf clipped "
                    "to 1e30. Produced by `benchmarks/digits.py`."))
    # quality plot
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for m in list(q_methods) + list(q_peers):
        xs = [n for n in nfes if (m, n) in qual]
        axes[0].semilogx(xs, [qual[(m, n)]["fd"] for n in xs], marker="o" if m in q_methods else "x", label=m)
        axes[1].semilogx(xs, [qual[(m, n)]["acc"] for n in xs], marker="o" if m in q_methods else "x", label=m)
    axes[0].axhline(judge.floor_fd, color="k", ls=":", label="train vs test")
    axes[0].set_ylabel("FD on classifier features ↓")
    axes[0].set_yscale("log")
    axes[1].set_ylabel("classifier accuracy on requested label ↑")
    for ax in axes:
        ax.set_xlabel("NFE")
        ax.grid(True, alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle("Digits UNet: sample quality vs NFE")
    figures.append((savefig(fig, fig_dir, "digits_quality"),
                    f"Sample quality of {n_gen} class-conditional samples vs NFE: Fréchet distance on the digit classifier's "
                    "hidden features against the held-out split (dotted: train-vs-test floor) and the classifier's accuracy "
                    "on the requested label. Produced by `benchmarks/digits.py`."))
    # sample grids at NFE 10
    show = [m for m in ("ddim", "o-belm", "diffusers-DPM++2M") if (m, 10) in samples]
    fig, axes = plt.subplots(1, len(show), figsize=(3.3 * len(show), 3.6))
    for ax, m in zip(np.atleast_1d(axes), show):
        x = samples[(m, 10)][:40].reshape(4, 10, 8, 8).transpose(0, 2, 1, 3).reshape(32, 80)
        ax.imshow(np.clip(x, -1, 1), cmap="gray_r", vmin=-1, vmax=1)
        ax.set_title(f"{m}, NFE 10")
        ax.axis("off")
    figures.append((savefig(fig, fig_dir, "digits_samples_nfe10"),
                    "The first 40 class-conditional samples (columns = labels 0…9) at NFE 10 from the same x_T. "
                    "Produced by `benchmarks/digits.py`."))
    # editing figure
    cols = 2 + len(offsets)
    fig, axes = plt.subplots(len(x_src), cols, figsize=(1.3 * cols, 1.3 * len(x_src)))
    ys = y_te[pick]
    for r in range(len(x_src)):
        imgs = [x_src[r, 0], x_rec[r, 0]] + [e[r, 0] for e in edits]
        titles = [f"source {ys[r]}", "recon."] + [f"→ {(ys[r] + o) % 10}" for o in offsets]
        for c in range(cols):
            axes[r, c].imshow(np.clip(imgs[c], -1, 1), cmap="gray_r", vmin=-1, vmax=1)
            axes[r, c].set_title(titles[c], fontsize=8)
            axes[r, c].axis("off")
    fig.suptitle("Editing: invert with the source label, resample with another", fontsize=9)
    figures.append((savefig(fig, fig_dir, "digits_editing"),
                    f"Editing demo: held-out digits inverted with O-BELM (50 linspace steps, guidance 2, label = source class) "
                    f"up to grid index {until}, then resampled from that latent with the source label (reconstruction) and with "
                    "three other labels. Produced by `benchmarks/digits.py`."))
    return Section("Real network: class-conditional digits DDPM", "\n".join(body), figures, seconds=time.perf_counter() - t_start)
