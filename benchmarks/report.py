"""RESULTS.md writer: sections of markdown plus captioned figures, under a provenance header.

Every benchmark module has three pieces: a compute function returning plain data, a
renderer turning that data into markdown tables, and a function drawing its figures
from the same data; :func:`compose` times them and returns a :class:`Section`.
:func:`write_results` stamps the machine, the date (UTC), the git commit and the exact
command, and writes one markdown file. Tables: :func:`table`, :func:`grid_table`.
Figures are PNGs saved with matplotlib's Agg backend (:func:`figure_path`,
:func:`savefig`); :func:`plot_series` draws the log-log "ours vs peers" curves.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Hashable, Mapping, Sequence, TypeVar

import matplotlib

matplotlib.use("Agg")

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent

D = TypeVar("D")
LOG_FLOOR, LOG_CEIL = 1e-34, 1e30  # where log-scale plots clip 0 and inf


@dataclass
class Section:
    """One benchmark's output: a title, markdown body and (png path, caption) figures."""

    title: str
    body: str
    figures: list = field(default_factory=list)
    seconds: float | None = None


def table(headers: Sequence[str], rows: Sequence[Sequence], floatfmt: str = ".3g") -> str:
    """A GitHub markdown table; floats are formatted with `floatfmt`, None as '—'."""

    def cell(v):
        if v is None:
            return "—"
        if isinstance(v, float):
            if v != v:
                return "nan"
            return format(v, floatfmt)
        return str(v)

    out = ["| " + " | ".join(map(str, headers)) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(out)


def grid_table(
    label: str,
    rows: Sequence[Any],
    cols: Sequence[Any],
    value: Callable[[Any, Any], Any],
    header: Callable[[Any], str] = str,
    floatfmt: str = ".3g",
) -> str:
    """A :func:`table` with one row per entry of `rows` (named in the first column,
    headed `label`) and one column per entry of `cols` (headed `header(col)`); the cell
    is `value(row, col)`."""
    return table([label] + [header(c) for c in cols], [[r] + [value(r, c) for c in cols] for r in rows], floatfmt)


def doc_intro(doc: str | None) -> str:
    """A benchmark module's docstring without its one-line title: the method paragraph(s)
    each section opens with."""
    return (doc or "").split("\n\n", 1)[-1].strip()


def compose(
    title: str,
    compute: Callable[[], D],
    render: Callable[[D], str],
    draw: Callable[[D, Path], list],
    fig_dir: Path,
) -> Section:
    """Section `title` from `render(data)` and `draw(data, fig_dir)` with `data = compute()`;
    its `seconds` is the wall time of all three."""
    t_start = time.perf_counter()
    data = compute()
    body = render(data)
    figures = draw(data, Path(fig_dir))
    return Section(title, body, figures, seconds=time.perf_counter() - t_start)


def log_clip(y: float | None) -> float:
    """y for a log-scale axis: None → NaN (a gap), 0 → LOG_FLOOR, inf → LOG_CEIL."""
    if y is None:
        return float("nan")
    return max(min(float(y), LOG_CEIL), LOG_FLOOR)


def plot_series(ax, xs: Sequence, series: Mapping[str, Mapping[Hashable, float | None]], ours: Collection[str],
                clip: bool = False) -> None:
    """One log-log curve per name in `series` ({name: {x: y}}) over the x in `xs` where
    y is not None: this project's methods (`ours`) solid with circles, peers dashed with
    crosses; `clip` maps 0 and inf onto the axis (:func:`log_clip`)."""
    for name, by_x in series.items():
        pts = [x for x in xs if by_x.get(x) is not None]
        if not pts:
            continue
        ys = [log_clip(by_x[x]) if clip else by_x[x] for x in pts]
        mine = name in ours
        ax.loglog(pts, ys, marker="o" if mine else "x", ls="-" if mine else "--", label=name)
    ax.grid(True, which="both", alpha=0.3)


def figure_path(fig_dir: Path, name: str) -> Path:
    fig_dir.mkdir(parents=True, exist_ok=True)
    return fig_dir / f"{name}.png"


def savefig(fig, fig_dir: Path, name: str) -> Path:
    path = figure_path(fig_dir, name)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def git_commit(repo: Path = REPO) -> str:
    """`<sha> (+ uncommitted changes)`, or a note when the checkout has no commit yet."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10
        )
        if sha.returncode != 0:
            return "no commit yet (working tree only)"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        return sha.stdout.strip() + (" (+ uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown (git not available)"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = [f"Python {platform.python_version()}"]
    for mod in ("numpy", "torch", "diffusers", "sklearn"):
        try:
            versions.append(f"{mod} {__import__(mod).__version__}")
        except ImportError:
            pass
    gpu = "no GPU used (CPU only)"
    return f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} logical CPUs; {', '.join(versions)}; {gpu}"


def write_results(sections: Sequence[Section], path: Path, command: str | None = None, note: str = "") -> Path:
    """Write RESULTS.md with the provenance header, a table of contents and every section."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    command = command or " ".join(["python -m benchmarks"] + sys.argv[1:])
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# belm benchmark results",
        "",
        "Generated by `benchmarks/` — do not edit by hand; rerun the command below.",
        "",
        f"- **Command:** `{command}`",
        f"- **Date:** {now}",
        f"- **Git commit:** {git_commit()}",
        f"- **Machine:** {machine()}",
    ]
    total = sum(s.seconds or 0.0 for s in sections)
    if total:
        lines.append(f"- **Wall time of this run:** {total:.0f} s (" + ", ".join(
            f"{s.title.split(':')[0]} {s.seconds:.0f} s" for s in sections if s.seconds is not None) + ")")
    if note:
        lines += ["", note]
    lines += ["", "## Contents", ""]
    lines += [f"{i + 1}. {s.title}" for i, s in enumerate(sections)]
    for i, s in enumerate(sections):
        lines += ["", f"## {i + 1}. {s.title}", "", s.body.strip(), ""]
        for j, (fig, caption) in enumerate(s.figures):
            rel = os.path.relpath(Path(fig), path.parent)
            lines += [f"![{s.title} — figure {i + 1}.{j + 1}]({rel})", "", f"*Figure {i + 1}.{j + 1}.* {caption}", ""]
    path.write_text("\n".join(lines) + "\n")
    return path
