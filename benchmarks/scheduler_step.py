"""Time per `scheduler.step` call: the BELM drop-in schedulers next to diffusers' own.

    python -m benchmarks.scheduler_step [--quick]

One SD-sized latent (1×4×64×64, float32, CPU) and SD 1.5's scheduler config. Every
scheduler runs whole 50-step loops (`set_timesteps`, then `step` on the sample it returned,
with a fixed model output), and each `step` call is timed on its own. The loops of all
schedulers are interleaved, round after round in a rotating order, so that a busy machine
slows them alike; the figure is the median over all calls, and ratios are taken to
DPMSolverMultistepScheduler's median in the same run.

`measure()` returns the data, `markdown(data)` renders the table, `run()` is the
`python -m benchmarks` entry point.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

SHAPE = (1, 4, 64, 64)
STEPS = 50
#: SD 1.5's scheduler config (DDIM keys)
SD15 = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "set_alpha_to_one": False, "steps_offset": 1, "clip_sample": False, "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}
REFERENCE = "DPMSolverMultistepScheduler"


def schedulers() -> dict:
    """name → a factory of a fresh scheduler from SD 1.5's config."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    from backends.schedulers import BELMScheduler

    return {
        "BELMScheduler(o-belm)": lambda: BELMScheduler.from_config(SD15, method="o-belm"),
        "BELMScheduler(bdia)": lambda: BELMScheduler.from_config(SD15, method="bdia", gamma=1.0),
        "BELMScheduler(ddim)": lambda: BELMScheduler.from_config(SD15, method="ddim"),
        "BELMScheduler(recommended)": lambda: BELMScheduler.from_config(SD15, method="recommended"),
        "DDIMScheduler": lambda: DDIMScheduler.from_config(SD15),
        REFERENCE: lambda: DPMSolverMultistepScheduler.from_config(SD15),
    }


def _loop(scheduler, x_T, model_output, times: list) -> None:
    """One sampling loop; appends the seconds of each step call to `times`."""
    scheduler.set_timesteps(STEPS)
    x = x_T
    for t in scheduler.timesteps:
        start = time.perf_counter()
        x = scheduler.step(model_output, t, x, return_dict=False)[0]
        times.append(time.perf_counter() - start)


def measure(rounds: int = 20, threads: int | None = 1, seed: int = 0) -> dict:
    """Median seconds per step call of each scheduler, and the ratio to DPM-Solver's median.

    Returns {"shape", "steps", "rounds", "threads", "machine", "rows": [{name, median_us,
    p10_us, p90_us, calls, ratio}]}. `threads` sets torch's intra-op threads (None keeps them).
    """
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn(SHAPE, generator=g)
    model_output = 0.1 * torch.randn(SHAPE, generator=g)
    factories = schedulers()
    names = list(factories)
    built = {name: factories[name]() for name in names}
    times: dict[str, list] = {name: [] for name in names}
    for name in names:  # warm-up (first calls build caches, import lazily)
        _loop(built[name], x_T, model_output, [])
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            _loop(built[name], x_T, model_output, times[name])
    rows = []
    ref = float(np.median(times[REFERENCE]))
    for name in names:
        t = np.asarray(times[name])
        rows.append({
            "name": name,
            "median_us": float(np.median(t)) * 1e6,
            "p10_us": float(np.percentile(t, 10)) * 1e6,
            "p90_us": float(np.percentile(t, 90)) * 1e6,
            "calls": int(t.size),
            "ratio": float(np.median(t)) / ref,
        })
    return {
        "shape": SHAPE, "steps": STEPS, "rounds": rounds, "threads": torch.get_num_threads(),
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}", "rows": rows,
    }


def markdown(data: dict) -> str:
    """The measurement as a markdown table."""
    from .report import table

    head = (
        f"Time per `step` call, {'×'.join(map(str, data['shape']))} float32 latent on the CPU "
        f"({data['threads']} torch thread(s)), SD 1.5 config, {data['steps']}-step loops × {data['rounds']} rounds "
        f"interleaved; median over {data['rows'][0]['calls']} calls each; ratio to {REFERENCE}'s median.\n\n"
    )
    rows = [(r["name"], r["median_us"], r["p10_us"], r["p90_us"], r["ratio"]) for r in data["rows"]]
    return head + table(["scheduler", "median µs", "p10 µs", "p90 µs", f"÷ {REFERENCE}"], rows, floatfmt=".3g")


def run(quick: bool = False, fig_dir=None, progress: bool = False):
    """`python -m benchmarks` entry point: a Section with the table."""
    from .report import Section

    start = time.perf_counter()
    data = measure(rounds=5 if quick else 20)
    return Section("Scheduler step time (drop-in diffusers schedulers)", markdown(data), seconds=time.perf_counter() - start)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scheduler_step", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 rounds instead of 20")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    print(markdown(measure(rounds=args.rounds or (5 if args.quick else 20))))
