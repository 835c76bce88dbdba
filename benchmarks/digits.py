"""A real trained network: reconstruction, sample quality and editing on 8×8 digits.

Model: the class-conditional pixel-space DDPM of `benchmarks.train_digits` (diffusers
`UNet2DModel`, ε-prediction, DDPM linear β, labels 0…9 plus a null label 10 learned
with label dropout), rebuilt by `python -m benchmarks.train_digits` and cached in
`benchmarks/.cache/digits/`. `digits_eps` below is the ε-function: `backends.unet.UNetEps`
(the UNet in float32 under `torch.no_grad()`) with a fixed label per batch row; with
guidance g ≠ 1 it is classifier-free guidance ε = ε_null + g (ε_c − ε_null) in one
batched call. The
solver state stays float64 unless stated. Grids: sample quality and editing use the
`linspace` spacing, except "recommended" (`belm_core.recommended(schedule, N)`: the
exact dpl-ob-curv sampler on its "trailing-tail" grid ("long-start" at NFE 5–20 on this linear
schedule) with the predictor–corrector start, as
an app runs it when the user chooses nothing); reconstruction uses `trailing` for our
methods (the spacing diffusers' DDIMInverseScheduler supports), while DPMSolverInverse
uses its own linspace variant and starts/ends at t = 0 instead of the clean state (see
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import peers
from .report import Section, compose, doc_intro, grid_table, plot_series, savefig, table

NULL = 10
TITLE = "Real network: class-conditional digits DDPM"
STATE_DTYPES = ("float64", "float32", "float16", "bfloat16")
ZERO_NUDGE = 1e-3  # where the EDICT check moves the held-out digits' exact-zero pixels


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

    from belm_core import Solver, recommended

    labels = np.arange(n) % 10
    x_T = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    res, samples = {}, {}
    for nfe in nfes:
        if progress:
            print(f"  digits: sample quality NFE {nfe}", flush=True)
        for m in methods:
            if m == "recommended":
                solver = Solver(schedule, steps=nfe, **recommended(schedule, nfe))
            else:
                meth = _ours(m)
                steps = nfe // meth.nfe_per_step
                if steps < meth.min_steps:
                    continue
                solver = Solver(schedule, steps, meth, spacing="linspace")
            eps = digits_eps(unet, schedule, labels)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                x = solver.sample(eps, x_T)
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
        for d in STATE_DTYPES:
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


@dataclass
class EditData:
    """Editing demo: sources, their reconstructions and one edit per label offset
    (images in [−1, 1], shape (n, 1, 8, 8)); `until` is the partial-inversion index."""

    labels: np.ndarray
    x_src: np.ndarray
    x_rec: np.ndarray
    edits: list
    offsets: tuple[int, ...]
    until: int
    steps: int
    guidance: float
    accuracy: float
    rec_mse: float


def editing(unet, schedule, judge, x_src, y_src, steps=50, guidance=2.0, keep=0.6) -> EditData:
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
    return EditData(labels=np.asarray(y_src), x_src=x_src.float().numpy(), x_rec=rec.float().numpy(), edits=edits,
                    offsets=offsets, until=until, steps=steps, guidance=guidance, accuracy=acc, rec_mse=rec_mse)


# ------------------------------------------------------------------------ compute
@dataclass
class DigitsData:
    """Everything the tables and figures show.

    Checkpoint: `checkpoint` (path relative to the repository), `trained_s` (seconds
    spent training in this run, None for a cached checkpoint), `meta` (the checkpoint's
    meta.json). Classifier: `classifier_acc` on the test split, `floor_fd` / `floor_sw`
    of the train split against the test split. `rec[(method, steps)]` and
    `dtype_rec[(method, dtype)]` are reconstruction MSEs (inf on failure); `edict_off[("edict", steps)]`
    the same for EDICT with the `zero_pixels` exact-zero pixels moved to `ZERO_NUDGE`;
    `quality[(method, nfe)]` is `Judge.score`'s dict and `samples[(method, nfe)]` the
    generated digits."""

    checkpoint: str
    trained_s: float | None
    meta: dict
    classifier_acc: float
    floor_fd: float
    floor_sw: float
    n_rec: int
    rec_steps: tuple[int, ...]
    rec_methods: tuple[str, ...]
    inverters: tuple[str, ...]
    rec: dict
    zero_pixels: int
    edict_off: dict
    dtype_steps: int
    dtype_methods: tuple[str, ...]
    dtype_rec: dict
    nfes: tuple[int, ...]
    n_gen: int
    q_methods: tuple[str, ...]
    q_peers: tuple[str, ...]
    quality: dict
    samples: dict
    edit: EditData


def compute(quick: bool = False, progress: bool = True) -> DigitsData:
    import torch

    from belm_core import DiscreteVP

    from .train_digits import CACHE, TrainConfig, ensure_model, load_model, load_split

    t0 = time.perf_counter()
    path = ensure_model(TrainConfig(), CACHE, progress=progress)
    trained_s = time.perf_counter() - t0
    torch.set_num_threads(1)  # tiny 8×8 UNet: one thread is faster than two and immune to oversubscription
    unet, abar, meta = load_model(path)
    schedule = DiscreteVP(abar)
    x_tr, y_tr, x_te, y_te, _, _ = load_split()
    judge = Judge(x_tr, y_tr, x_te, y_te)

    # --- reconstruction
    n_rec = 32 if quick else 200
    rec_steps = (10, 50, 200) if quick else (10, 20, 50, 100, 200, 500)
    rec_methods = ("ddim", "bdia", "bdia(γ=0.9)", "edict", "o-belm", "belm3")
    rec = reconstruction(unet, schedule, x_te[:n_rec], y_te[:n_rec], rec_steps, rec_methods, peers.INVERTERS, progress)
    # EDICT's last sampling read is at its second chain's y ≈ x_0: exact-zero pixels come back as ±1e-14
    # there, which the float32 UNet input keeps; the same round trips with those pixels moved off zero
    zero_pixels = int((x_te[:n_rec] == 0).sum())
    x_off = np.where(x_te[:n_rec] == 0, ZERO_NUDGE, x_te[:n_rec])
    edict_off = reconstruction(unet, schedule, x_off, y_te[:n_rec], rec_steps[:2], ("edict",), (), progress=False)
    dtype_steps = 50
    dtype_methods = ("ddim", "o-belm", "edict") if quick else ("ddim", "bdia", "edict", "o-belm", "belm3")
    dt = dtype_table(unet, schedule, x_te[:n_rec], y_te[:n_rec], dtype_steps, dtype_methods)

    # --- sample quality
    nfes = (5, 10, 20, 50) if quick else (5, 10, 20, 50, 100)
    n_gen = 200 if quick else 1000
    q_methods = ("ddim", "bdia", "edict", "o-belm", "belm3", "recommended")
    q_peers = ("diffusers-DDIM", "diffusers-DPM++2M", "diffusers-UniPC")
    qual, samples = sample_quality(unet, schedule, judge, nfes, n_gen, q_methods, q_peers, progress=progress)

    # --- editing
    if progress:
        print("  digits: editing", flush=True)
    pick = [int(np.flatnonzero(y_te == c)[0]) for c in (0, 2, 3, 4, 7, 9)]
    edit = editing(unet, schedule, judge, x_te[pick], y_te[pick])

    return DigitsData(
        checkpoint=str(path.relative_to(path.parents[2])), trained_s=trained_s if trained_s > 5 else None, meta=meta,
        classifier_acc=judge.test_acc, floor_fd=judge.floor_fd, floor_sw=judge.floor_sw,
        n_rec=n_rec, rec_steps=rec_steps, rec_methods=rec_methods, inverters=tuple(peers.INVERTERS), rec=rec,
        zero_pixels=zero_pixels, edict_off=edict_off, dtype_steps=dtype_steps, dtype_methods=dtype_methods, dtype_rec=dt,
        nfes=nfes, n_gen=n_gen, q_methods=q_methods, q_peers=q_peers, quality=qual, samples=samples, edit=edit,
    )


# ------------------------------------------------------------------------ tables
def quality_table(data: DigitsData) -> str:
    rows = []
    for m in data.q_methods + data.q_peers:
        for nfe in data.nfes:
            r = data.quality.get((m, nfe))
            if r is not None:
                rows.append([m, nfe, r["acc"], r["conf"], r["fd"], r["sw"]])
    return table(["method", "NFE", "classifier acc.", "confidence", "FD (features) ↓", "SW (pixels) ↓"], rows, ".3f")


def render(data: DigitsData) -> str:
    cfg, meta, rec, ed = data.meta["config"], data.meta, data.rec, data.edit
    train_note = f"(trained in this run: {data.trained_s:.0f} s)" if data.trained_s is not None else "(cached checkpoint)"
    body = [doc_intro(__doc__), ""]
    body += [f"Checkpoint: {data.checkpoint} {train_note}; {cfg['steps']} steps × batch {cfg['batch_size']}, "
             f"seed {cfg['seed']}, training wall time {meta['train_seconds']:.0f} s, final loss {meta['final_loss_avg100']:.4f}; "
             f"train/test split {meta['n_train']}/{meta['n_test']}. Digit classifier accuracy on the test split: "
             f"{data.classifier_acc:.3f}. Data floor (train split vs test split): FD {data.floor_fd:.2f}, SW {data.floor_sw:.3f}."]
    body += ["", f"### Reconstruction MSE ([0, 1] scale) on {data.n_rec} held-out digits, conditional on their labels, float64 state", ""]
    body.append(grid_table("method", data.rec_methods + data.inverters, data.rec_steps, lambda m, s: rec.get((m, s)),
                           lambda s: f"{s} steps", ".2e"))
    ratio = [rec[("ddim", s)] / max(rec[("o-belm", s)], 1e-300) for s in data.rec_steps]
    body += ["", "**DDIM / O-BELM reconstruction-MSE ratio:** "
             + ", ".join(f"{s} steps: {r:.1e}" for s, r in zip(data.rec_steps, ratio)) + "."]
    off = [data.edict_off[("edict", s)] for s in data.rec_steps[:2]]
    body += ["", f"EDICT's last sampling step reads the model at its second chain, which is x_0 itself up to the "
             f"round-off of 2N mixing layers. {data.zero_pixels} of the {data.n_rec * 64} held-out pixels are exactly 0; "
             "they come back as about ±1e-14, which the UNet's float32 input keeps, so ε moves by a float32 rounding "
             "step there. With those pixels moved to "
             f"{ZERO_NUDGE:g} EDICT's round trip is {off[0]:.2e} / {off[1]:.2e} at {data.rec_steps[0]} / "
             f"{data.rec_steps[1]} steps. The other methods never read the model at x_0 when sampling."]
    body += ["", f"### Reconstruction MSE vs solver-state dtype ({data.dtype_steps} steps; the UNet itself runs in float32)", ""]
    dms = [m for m in data.rec_methods if any((m, d) in data.dtype_rec for d in STATE_DTYPES)]
    body.append(grid_table("method", dms, STATE_DTYPES, lambda m, d: data.dtype_rec.get((m, d)), floatfmt=".1e"))
    body += ["", f"### Sample quality vs NFE ({data.n_gen} class-conditional samples, labels 0…9 equally often, same x_T "
             "for all, guidance 1)", "", quality_table(data)]
    body += ["", f"### Editing (O-BELM, {ed.steps} steps, guidance {ed.guidance:g}, partial inversion to grid index "
             f"{ed.until} of {ed.steps})", "",
             f"Reconstruction MSE of the six source digits through the same partial latent: {ed.rec_mse:.2e}. "
             f"Edited digits classified as their target label: {ed.accuracy:.2f}."]
    return "\n".join(body)


# ------------------------------------------------------------------------ figures
def _digit(ax, img, title: str, fontsize=None) -> None:
    ax.imshow(np.clip(img, -1, 1), cmap="gray_r", vmin=-1, vmax=1)
    ax.set_title(title, fontsize=fontsize)
    ax.axis("off")


def draw(data: DigitsData, fig_dir: Path) -> list:
    import matplotlib.pyplot as plt

    figures = []
    # reconstruction plot
    fig, ax = plt.subplots(figsize=(6.5, 4))
    series = {m: {s: data.rec[(m, s)] for s in data.rec_steps} for m in data.rec_methods + data.inverters}
    plot_series(ax, data.rec_steps, series, data.rec_methods, clip=True)
    ax.set_xlabel("steps N")
    ax.set_ylabel("reconstruction MSE ([0,1] scale)")
    ax.legend(fontsize=7)
    ax.set_title("Digits UNet: sample(invert(x0)) error vs steps")
    figures.append((savefig(fig, fig_dir, "digits_reconstruction"),
                    f"Reconstruction MSE of {data.n_rec} held-out digits through inversion and resampling with the trained "
                    "class-conditional digits UNet (float64 state, float32 network), per method and step count; inf clipped "
                    "to 1e30. Produced by `benchmarks/digits.py`."))
    # quality plot
    qual = data.quality
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for m in data.q_methods + data.q_peers:
        xs = [n for n in data.nfes if (m, n) in qual]
        marker = "o" if m in data.q_methods else "x"
        axes[0].semilogx(xs, [qual[(m, n)]["fd"] for n in xs], marker=marker, label=m)
        axes[1].semilogx(xs, [qual[(m, n)]["acc"] for n in xs], marker=marker, label=m)
    axes[0].axhline(data.floor_fd, color="k", ls=":", label="train vs test")
    axes[0].set_ylabel("FD on classifier features ↓")
    axes[0].set_yscale("log")
    axes[1].set_ylabel("classifier accuracy on requested label ↑")
    for ax in axes:
        ax.set_xlabel("NFE")
        ax.grid(True, alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle("Digits UNet: sample quality vs NFE")
    figures.append((savefig(fig, fig_dir, "digits_quality"),
                    f"Sample quality of {data.n_gen} class-conditional samples vs NFE: Fréchet distance on the digit classifier's "
                    "hidden features against the held-out split (dotted: train-vs-test floor) and the classifier's accuracy "
                    "on the requested label. Produced by `benchmarks/digits.py`."))
    # sample grids at NFE 10
    show = [m for m in ("ddim", "o-belm", "diffusers-DPM++2M") if (m, 10) in data.samples]
    if show:
        fig, axes = plt.subplots(1, len(show), figsize=(3.3 * len(show), 3.6))
        for ax, m in zip(np.atleast_1d(axes), show):
            grid = data.samples[(m, 10)][:40].reshape(4, 10, 8, 8).transpose(0, 2, 1, 3).reshape(32, 80)
            _digit(ax, grid, f"{m}, NFE 10")
        figures.append((savefig(fig, fig_dir, "digits_samples_nfe10"),
                        "The first 40 class-conditional samples (columns = labels 0…9) at NFE 10 from the same x_T. "
                        "Produced by `benchmarks/digits.py`."))
    # editing figure
    ed = data.edit
    cols = 2 + len(ed.offsets)
    fig, axes = plt.subplots(len(ed.x_src), cols, figsize=(1.3 * cols, 1.3 * len(ed.x_src)))
    for r, y in enumerate(ed.labels):
        imgs = [ed.x_src[r, 0], ed.x_rec[r, 0]] + [e[r, 0] for e in ed.edits]
        titles = [f"source {y}", "recon."] + [f"→ {(y + o) % 10}" for o in ed.offsets]
        for c in range(cols):
            _digit(axes[r, c], imgs[c], titles[c], fontsize=8)
    fig.suptitle("Editing: invert with the source label, resample with another", fontsize=9)
    figures.append((savefig(fig, fig_dir, "digits_editing"),
                    f"Editing demo: held-out digits inverted with O-BELM ({ed.steps} linspace steps, guidance {ed.guidance:g}, "
                    f"label = source class) up to grid index {ed.until}, then resampled from that latent with the source "
                    "label (reconstruction) and with three other labels. Produced by `benchmarks/digits.py`."))
    return figures


def run(quick: bool = False, fig_dir=None, progress: bool = True) -> Section:
    return compose(TITLE, lambda: compute(quick, progress), render, draw, fig_dir)
