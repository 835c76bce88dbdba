"""python -m benchmarks [--quick] [--only NAME ...] [--out DIR]

Runs the benchmark suite and writes DIR/RESULTS.md (default: benchmarks/RESULTS.md)
and PNG figures under DIR/figures/. Benchmarks: accuracy, lowstep, exactness, cost, digits, scheduler_step, flow
(the digits one trains the DDPM first when `benchmarks/.cache/digits/` lacks it).
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

from .report import ROOT, Section, write_results

BENCHMARKS = ("accuracy", "lowstep", "exactness", "cost", "digits", "scheduler_step", "flow")


def _load(name: str):
    import importlib

    return importlib.import_module(f"benchmarks.{name}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description="belm benchmark suite")
    p.add_argument("--quick", action="store_true", help="small settings (a few minutes on 2 CPU cores)")
    p.add_argument("--only", nargs="+", choices=BENCHMARKS, metavar="NAME",
                   help=f"run only these benchmarks (choose from {', '.join(BENCHMARKS)})")
    p.add_argument("--out", type=Path, default=ROOT, help="folder for RESULTS.md and figures/ (default: benchmarks/)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    a = p.parse_args(argv)
    names = a.only or list(BENCHMARKS)
    fig_dir = a.out / "figures"
    command = "python -m benchmarks" + (" " + " ".join(sys.argv[1:] if argv is None else argv) if (argv or sys.argv[1:]) else "")
    sections: list[Section] = []
    failed = []
    for name in names:
        t0 = time.perf_counter()
        if not a.quiet:
            print(f"[benchmarks] {name} ...", flush=True)
        try:
            sec = _load(name).run(quick=a.quick, fig_dir=fig_dir, progress=not a.quiet)
        except Exception:  # keep the other benchmarks' results; report the failure in RESULTS.md
            tb = traceback.format_exc()
            print(tb, file=sys.stderr)
            failed.append(name)
            sec = Section(f"{name}: FAILED", "```\n" + tb[-3000:] + "\n```", seconds=time.perf_counter() - t0)
        if not a.quiet:
            print(f"[benchmarks] {name} done in {time.perf_counter() - t0:.0f} s", flush=True)
        sections.append(sec)
    note = "Settings: **--quick** (small batches and fewer repetitions)." if a.quick else "Settings: full."
    if a.only:
        note += f" Only these benchmarks were run: {', '.join(names)}."
    path = write_results(sections, a.out / "RESULTS.md", command=command, note=note)
    print(f"[benchmarks] wrote {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
