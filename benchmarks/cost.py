"""Cost: wall time and peak memory of sampling, solver overhead, and coefficient derivation.

1. **UNet sampling time.** A small randomly initialised diffusers `UNet2DModel`
   (3×32×32, channels 32/64/64, one ResNet per level, no attention, float32, batch 2,
   one torch thread so that timings are not at the mercy of thread oversubscription)
   wrapped by `backends.unet.UNetEps`, SD scaled-linear schedule, 20 steps, solver state
   float64 (the default). Methods o-belm, ddim, bdia, edict and diffusers'
   `DDIMScheduler` loop on the same UNet. Repetitions are interleaved (every round runs
   every method once, in a rotated order) and the median per method is reported; ratios
   are medians of per-round ratios to ddim measured in the same round.
2. **Solver overhead.** The same methods with a nearly free ε (`eps_fn = lambda x, t: x`)
   on a (4, 3, 32, 32) torch tensor and NumPy array: time per step of `Solver.sample`,
   plus a cProfile breakdown of where an o-belm step spends it.
3. **Peak memory.** One subprocess per method (fresh interpreter): resident-set peak
   (`VmHWM` of /proc/self/status, the process's own high-water mark; elsewhere than Linux
   `ru_maxrss`, which Linux carries over from the parent through fork and exec, so that a
   parent that once held more than the child reads as the child's peak) after a warm-up
   UNet call and after the full sampling run; the difference is what sampling adds on top of the model
   (torch CPU allocations are invisible to tracemalloc). Repeated with a large state
   and a cheap ε to expose the solver's own footprint in units of the state size; for
   NumPy states the same with `tracemalloc` (exact peak of Python-visible allocations). For NumPy states on the
   analytic model, `tracemalloc` peaks are reported as well.
4. **Derivation cost.** `belm_core.derive(k)` for k = 2…5, first call in a fresh
   subprocess (sympy already imported), and the per-step time to evaluate the k-step
   coefficient tables when a `Solver` is built on a 100-step grid (derivation cached).
"""

from __future__ import annotations

import cProfile
import io
import json
import pstats
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .report import REPO, Section, compose, doc_intro, grid_table, savefig, table

METHODS = ("ddim", "o-belm", "bdia", "edict")
STEPS = 20
OVERHEAD_STEPS = 50
TITLE = "Cost: time, memory, overhead, derivation"


def build_unet(seed: int = 0):
    import torch
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=32, in_channels=3, out_channels=3, layers_per_block=1,
        block_out_channels=(32, 64, 64), down_block_types=("DownBlock2D",) * 3,
        up_block_types=("UpBlock2D",) * 3, norm_num_groups=8,
    ).eval()
    unet.requires_grad_(False)
    return unet


def diffusers_ddim_loop(unet, schedule, x_T, steps: int):
    """diffusers' own DDIM loop (DDIMScheduler.step on the same UNet, float32 state as in its pipelines)."""
    import torch

    from .peers import make_sampler

    sch = make_sampler("diffusers-DDIM", schedule, "linspace")
    sch.set_timesteps(steps)
    x = x_T.float()
    with torch.no_grad():
        for t in sch.timesteps:
            x = sch.step(unet(x, t).sample, t, x).prev_sample
    return x


def _time_unet(quick: bool, progress: bool):
    import torch

    from backends.unet import UNetEps
    from belm_core import DiscreteVP, Solver

    torch.set_num_threads(1)
    schedule = DiscreteVP.scaled_linear()
    unet = build_unet()
    eps = UNetEps(unet, schedule)
    x_T = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    solvers = {m: Solver(schedule, STEPS, m) for m in METHODS}
    runners = {m: (lambda s=s: s.sample(eps, x_T)) for m, s in solvers.items()}
    runners["diffusers DDIM loop"] = lambda: diffusers_ddim_loop(unet, schedule, x_T, STEPS)
    names = list(runners)
    for n in names:  # warm-up
        runners[n]()
    rounds = 5 if quick else 11
    times = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            t0 = time.perf_counter()
            runners[n]()
            times[n].append(time.perf_counter() - t0)
        if progress:
            print(f"  cost: UNet round {r + 1}/{rounds}", flush=True)
    # forward-pass time alone, for reference
    t_fwd = []
    with torch.no_grad():
        for _ in range(10):
            t0 = time.perf_counter()
            unet(x_T.float(), torch.full((2,), 500))
            t_fwd.append(time.perf_counter() - t0)
    ratios = {n: statistics.median(a / b for a, b in zip(times[n], times["ddim"])) for n in names}
    return times, ratios, statistics.median(t_fwd), rounds


def _overhead(quick: bool):
    import torch

    from belm_core import DiscreteVP, Solver

    schedule = DiscreteVP.scaled_linear()
    steps = OVERHEAD_STEPS
    out = {}

    def free_eps(x, t):
        return x

    for kind in ("torch", "numpy"):
        x = torch.randn(4, 3, 32, 32, dtype=torch.float64) if kind == "torch" else np.random.default_rng(0).standard_normal((4, 3, 32, 32))
        for m in METHODS:
            s = Solver(schedule, steps, m)
            s.sample(free_eps, x)
            reps = []
            for _ in range(5 if quick else 15):
                t0 = time.perf_counter()
                s.sample(free_eps, x)
                reps.append(time.perf_counter() - t0)
            out[(kind, m)] = statistics.median(reps) / steps
    # where does an o-belm step spend its time?
    s = Solver(schedule, 200, "o-belm")
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    prof = cProfile.Profile()
    prof.enable()
    s.sample(free_eps, x)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(12)
    lines = [ln for ln in buf.getvalue().splitlines() if ln.strip()]
    start = next(i for i, ln in enumerate(lines) if ln.strip().startswith("ncalls"))
    prof_txt = "\n".join(lines[start:start + 13])
    return out, prof_txt


def peak_rss_kib() -> int:
    """This process's resident-set peak in KiB: `VmHWM` of /proc/self/status where it exists.

    Not `ru_maxrss` on Linux: the kernel keeps it across fork and exec, so a child started
    by a process that once held more memory reports the parent's peak as its own (a
    fresh interpreter then reads, e.g., 785 MiB before and after any sampling run).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _child_memory(method: str) -> dict:
    """Run inside a subprocess: maxrss before/after a full sampling run."""
    import torch

    from backends.unet import UNetEps
    from belm_core import DiscreteVP, Solver

    torch.set_num_threads(1)
    schedule = DiscreteVP.scaled_linear()
    unet = build_unet()
    eps = UNetEps(unet, schedule)
    x_T = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        unet(x_T.float(), torch.full((2,), 500))  # warm-up: the model's own working set
    before = peak_rss_kib()
    if method == "diffusers DDIM loop":
        diffusers_ddim_loop(unet, schedule, x_T, STEPS)
    else:
        Solver(schedule, STEPS, method).sample(eps, x_T)
    after = peak_rss_kib()
    return {"before_kib": before, "after_kib": after}


def _child_memory_free(method: str) -> dict:
    """In a subprocess: maxrss growth of sampling a large state (64 MiB) with a cheap ε (a new tensor per call)."""
    import torch

    from belm_core import DiscreteVP, Solver

    x_T = torch.randn(1024, 8192, dtype=torch.float64)  # 64 MiB

    def eps(x, t):
        return x * 0.5  # like a model: a fresh tensor every call

    solver = Solver(DiscreteVP.scaled_linear(), STEPS, method)
    before = peak_rss_kib()
    solver.sample(eps, x_T)
    after = peak_rss_kib()
    return {"before_kib": before, "after_kib": after, "state_kib": x_T.numel() * 8 / 1024}


def _children(flag: str, methods) -> dict:
    """Run `python -m benchmarks.cost FLAG METHOD` in a fresh interpreter per method; its last
    stdout line is a JSON record (None when the child failed)."""
    out = {}
    for m in methods:
        p = subprocess.run([sys.executable, "-m", "benchmarks.cost", flag, m],
                           cwd=REPO, capture_output=True, text=True, timeout=300)
        try:
            out[m] = json.loads(p.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            out[m] = None
    return out


def _memory_free():
    return _children("--child-memory-free", METHODS)


def _memory():
    return _children("--child-memory", METHODS + ("diffusers DDIM loop",))


def _tracemalloc_numpy():
    """tracemalloc peak of Solver.sample on a NumPy state (8 MiB) with a cheap ε returning a fresh array."""
    import tracemalloc

    from belm_core import DiscreteVP, Solver

    schedule = DiscreteVP.scaled_linear()
    x = np.random.default_rng(0).standard_normal((256, 4096))

    def eps(x, t):
        return x * 0.5

    out = {}
    for m in METHODS:
        s = Solver(schedule, STEPS, m)
        tracemalloc.start()
        s.sample(eps, x)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        out[m] = peak
    return out, x.nbytes


def _derive_times(ks=(2, 3, 4, 5), timeout: int = 240):
    code = ("import sympy, time, belm_core; t = time.perf_counter(); belm_core.derive({k}); "
            "print(time.perf_counter() - t)")
    out = {}
    for k in ks:
        try:
            p = subprocess.run([sys.executable, "-c", code.format(k=k)], cwd=REPO, capture_output=True,
                               text=True, timeout=timeout)
            out[k] = float(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else f"error: {p.stderr.strip().splitlines()[-1][:120]}"
        except subprocess.TimeoutExpired:
            out[k] = f"> {timeout} s"
        except (IndexError, ValueError):
            out[k] = "error"
    return out


def _coefficient_times(ks=(2, 3, 4, 5), steps: int = 100):
    from belm_core import BELM, DiscreteVP, Solver

    schedule = DiscreteVP.scaled_linear()
    out = {}
    for k in ks:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                method = BELM(k)
                Solver(schedule, steps, method, allow_unstable=True)  # warm
                reps = []
                for _ in range(5):
                    t0 = time.perf_counter()
                    Solver(schedule, steps, method, allow_unstable=True)
                    reps.append(time.perf_counter() - t0)
            out[k] = statistics.median(reps) / steps
        except Exception as exc:
            out[k] = f"{type(exc).__name__}: {str(exc)[:100]}"
    return out


# ------------------------------------------------------------------------ compute
@dataclass
class CostData:
    """Measurements behind the tables and the figure (seconds, KiB, bytes).

    `times[name]` lists one wall time per round (`rounds` of them) and `ratios[name]` is
    the median per-round ratio to ddim; `forward_s` is one UNet call. `overhead[(kind,
    method)]` is seconds per step with a free ε on a torch or NumPy state; `profile` the
    cProfile text. `memory` / `memory_free` map a method to its child process's
    {"before_kib", "after_kib"(, "state_kib")} record (None when the child failed);
    `tracemalloc[method]` is a peak in bytes for a NumPy state of `state_bytes`.
    `derive[k]` and `coefficients[k]` are seconds, or a string saying why not."""

    times: dict
    ratios: dict
    forward_s: float
    rounds: int
    overhead: dict
    profile: str
    memory: dict
    memory_free: dict
    tracemalloc: dict
    state_bytes: int
    derive: dict
    coefficients: dict


def compute(quick: bool = False, progress: bool = True) -> CostData:
    times, ratios, t_fwd, rounds = _time_unet(quick, progress)
    if progress:
        print("  cost: overhead", flush=True)
    overhead, prof_txt = _overhead(quick)
    if progress:
        print("  cost: memory", flush=True)
    mem = _memory()
    mem_free = _memory_free()
    tm, state_bytes = _tracemalloc_numpy()
    if progress:
        print("  cost: derivation", flush=True)
    ks = (2, 3, 4) if quick else (2, 3, 4, 5)
    return CostData(times=times, ratios=ratios, forward_s=t_fwd, rounds=rounds, overhead=overhead, profile=prof_txt,
                    memory=mem, memory_free=mem_free, tracemalloc=tm, state_bytes=state_bytes,
                    derive=_derive_times(ks), coefficients=_coefficient_times(ks))


# ------------------------------------------------------------------------ tables
def time_table(data: CostData) -> str:
    rows = []
    for n, ts in data.times.items():
        nfe = STEPS * (2 if n == "edict" else 1)
        rows.append([n, nfe, statistics.median(ts), min(ts), data.ratios[n]])
    return table(["method", "NFE", "median wall time [s]", "min [s]", "ratio to ddim (median of per-round ratios)"],
                 rows, ".3f")


def memory_tables(data: CostData) -> tuple[str, str, str]:
    """(UNet maxrss, large-state maxrss, NumPy tracemalloc) tables."""
    rows = []
    for m, r in data.memory.items():
        if r is None:
            rows.append([m, None, None, None])
        else:
            rows.append([m, r["before_kib"] / 1024, r["after_kib"] / 1024, (r["after_kib"] - r["before_kib"]) / 1024])
    unet = table(["method (subprocess, UNet as in 1)", "maxrss after warm-up [MiB]", "maxrss after sampling [MiB]",
                  "added by sampling [MiB]"], rows, ".1f")
    rows = []
    for m, r in data.memory_free.items():
        if r is None:
            rows.append([m, None, None])
        else:
            d = (r["after_kib"] - r["before_kib"]) / 1024
            rows.append([m, d, d * 1024 / r["state_kib"]])
    large = table(["method", "maxrss added by sampling [MiB]",
                   "in units of the state size (x_T allocated before the first reading)"], rows, ".1f")
    tm = data.tracemalloc
    traced = table(["method", "peak [KiB]", "peak / state size"],
                   [[m, tm[m] / 1024, tm[m] / data.state_bytes] for m in tm], ".1f")
    return unet, large, traced


def render(data: CostData) -> str:
    ratios, t_fwd, oh, ct = data.ratios, data.forward_s, data.overhead, data.coefficients
    unet_mem, large_mem, traced_mem = memory_tables(data)
    body = [doc_intro(__doc__), ""]
    body += [f"### 1. Sampling time with a small UNet ({STEPS} steps, batch 2×3×32×32, {data.rounds} interleaved rounds)", ""]
    body.append(time_table(data))
    body += ["", f"One UNet forward pass alone: {t_fwd * 1e3:.1f} ms (median of 10) → {STEPS} calls ≈ {STEPS * t_fwd:.3f} s.",
             f"**o-belm / ddim = {ratios['o-belm']:.3f}** (target ≤ 1.03); **edict / ddim = {ratios['edict']:.2f}** (2 calls per step).",
             "The diffusers loop keeps a float32 state (as its pipelines do); ours keep float64 and cast ε."]
    body += ["", f"### 2. Solver overhead per step with a nearly free ε (`lambda x, t: x`), (4, 3, 32, 32) float64 state, "
             f"{OVERHEAD_STEPS} steps", ""]
    methods = list(dict.fromkeys(m for _, m in oh))
    body.append(grid_table("method", methods, ("torch", "numpy"), lambda m, kind: oh[(kind, m)] * 1e6,
                           {"torch": "torch [µs/step]", "numpy": "NumPy [µs/step]"}.get, ".0f"))
    body += ["", "cProfile of 200 o-belm steps (torch state, free ε), top functions by own time:", "", "```", data.profile, "```"]
    body += ["", "### 3. Peak memory", "", unet_mem]
    body += ["", "The UNet's own working set (activations of one forward pass) sets the peak; the solver's states "
             "(a few × 48 KiB here) are invisible next to it. To see the solver's own footprint, the same measurement "
             "with a 64 MiB float64 state and a cheap ε that returns a fresh tensor per call (`x * 0.5`):", "", large_mem]
    body += ["", f"tracemalloc peak during `Solver.sample` with a NumPy state and the same cheap ε "
                 f"(x: 256×4096 float64 = {data.state_bytes / 2**20:.0f} MiB, allocated before tracing; {STEPS} steps):", "",
             traced_mem]
    body += ["", "### 4. Coefficient derivation vs k", ""]
    body.append(table(["k", "derive(k), first call in a fresh process [s]", "coefficient tables per step when building a Solver [µs]"],
                      [[k, data.derive.get(k), (ct.get(k) * 1e6 if isinstance(ct.get(k), float) else ct.get(k))]
                       for k in data.derive], ".3g"))
    return "\n".join(body)


# ------------------------------------------------------------------------ figure
def draw(data: CostData, fig_dir: Path) -> list:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    names = list(data.times)
    ax.boxplot([data.times[n] for n in names])
    ax.set_xticks(range(1, len(names) + 1), names)
    ax.set_ylabel("wall time per sampling run [s]")
    ax.set_title(f"Sampling wall time, small UNet on CPU, {STEPS} steps")
    plt.setp(ax.get_xticklabels(), rotation=15, fontsize=8)
    return [(savefig(fig, fig_dir, "cost_unet_time"),
             f"Wall time of one full {STEPS}-step sampling run (batch 2×3×32×32) with a small random-weight "
             f"UNet2DModel on CPU, {data.rounds} interleaved rounds per method. EDICT makes 2 UNet calls per step. "
             "Produced by `benchmarks/cost.py`.")]


def run(quick: bool = False, fig_dir=None, progress: bool = True) -> Section:
    return compose(TITLE, lambda: compute(quick, progress), render, draw, fig_dir)


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--child-memory-free":
        print(json.dumps(_child_memory_free(sys.argv[2])))
    elif len(sys.argv) >= 3 and sys.argv[1] == "--child-memory":
        print(json.dumps(_child_memory(sys.argv[2])))
    else:
        print("usage: python -m benchmarks.cost --child-memory METHOD   (internal; run `python -m benchmarks --only cost`)")
