"""The DPL rows' τ-quadrature corrected for the slope and curvature of x̂0, from a rotation register (docs/math.md §23).

A DPL row of "dpl-ob-traj" (`belm_core.methods.trajectory`) is the midpoint rule in τ = 1/σ̄ on
y = x̄/σ̄, whose ODE is dy/dτ = x̂0 (docs/math.md §12):

    y_{i−1} = y_{i+1} + (τ_{i−1} − τ_{i+1}) r_i,     r_i = x̂0_i = x̄_i − σ̄_i ε̂_i

It is exact when r_i is the τ-average of the trajectory's x̂0 over [τ_{i+1}, τ_{i−1}]. The read
r_i is taken at one node ν_i (ν_i = 1/σ̄_m,i, the level a trajectory row reads at; 1/σ̄_i on other
rows). With x̂0(τ) ≈ r_i + g_τ (τ − ν_i) + ½ g_ττ (τ − ν_i)² the average is

    r*_i = r_i + g_τ (a + b)/2 + g_ττ (a² + a b + b²)/6,    a = τ_{i+1} − ν_i,  b = τ_{i−1} − ν_i.

The row uses r_i + γ (r*_i − r_i) (gain γ, ½), i.e. ε̂*_i = ε̂_i − γ (r*_i − r_i)/σ̄_i.

The slope and curvature must be functions of what both directions know at row i: x_i and the
reads of the rows already taken in the walking direction. They come from two registers
U = (U0, U1) that travel with the states (the latent holds them). After each band row, sampling
rotates them by a quarter turn and feeds the row's read in,

    U0 ← r_i − U1,   U1 ← U0          (sampling, after row i)
    U0 ← U1,         U1 ← r_i − U0    (inversion, before row i: the exact inverse)

The map has roots ±i (modulus 1, bounded both ways) and, unlike the velocity register's −1,
does not resonate with the leapfrog's parasitic root −1. For reads smooth in the row index the
registers before row i have the smooth parts U0 ≈ ½ r − ¼ r″, U1 ≈ ½ r − ½ r′ (derivatives by
row index in the sampling direction, at row i; exact for quadratics), so

    r′ ≈ r_i − 2 U1,   r″ ≈ 2 r_i − 4 U0,
    g_τ = r′/n1,   g_ττ = (r″ − g_τ n2)/n1²,   n1 = (ν_{i−1} − ν_{i+1})/2,  n2 = ν_{i−1} − 2ν_i + ν_{i+1}.

Which rows: the band of trajectory rows with `band[0]` < σ̄_i < `band[1]` (2, 10), the top
contiguous run. Only band rows feed the registers, and the top two band rows are not
corrected (their registers are still a guess). Fresh sampling starts the registers at the
second band row from its two reads by a straight line, U = (r₂ − ½ r₁, ½ r₂); inversion starts
them at the band's bottom row b from the reads r_b and r_{b−1} (the row below, one model call
that row makes anyway): U = (½ r_{b−1}, ½ r_b); with no row below, (½ r_b, ½ r_b). Above the
band the reads at σ̄ ≫ 1 are the network's least reliable (a slope fitted there seeds the
registers with bias). Below σ̄ = 2 the default band stops: on mixtures with smooth components the
rows there gain little RMSE from the fit, and on cosine they lose. `belm_core.recommended` lowers the
bottom to σ̄ = 1 on scaled-linear and linear, where the rows with 1 < σ̄_i < 2 are where points near a
separatrix cross into another component (docs/math.md §30).

The Latent holds five arrays: (x_N, x_{N−1}, w_N, U0, U1); zeros stand for registers an
inversion that stopped below the band never started. One model call per row; exact
inversion as for every p-family row (ε̂*_i is a function of x_i and the registers). Order 2,
like "dpl-ob-traj" (the correction moves r_i by O(h²)). ε-prediction only.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from .. import recurrence
from ..arrays import zeros_like
from ..checks import is_real
from ..grid import Grid
from .base import Carry, Evaluate, row_eps
from .pfamily import DEFAULT_S
from .trajectory import DEFAULT_MAX_RATIO, DEFAULT_REACH, ReadingPlan, TrajectoryReading

__all__ = ["CurvatureReading", "Registers", "DEFAULT_GAIN", "DEFAULT_BAND"]

DEFAULT_GAIN = 0.5
DEFAULT_BAND = (2.0, 10.0)
#: band rows at the top (sampling order) that feed the registers but are not corrected
UNCORRECTED_TOP = 2


@dataclass(frozen=True)
class Registers:
    """What the correction carries besides the velocity register w: the rotation register U =
    (u0, u1), or before it starts, the first band read `pending` (sampling) or the read of the
    row below the band (inversion)."""

    u0: Any = None
    u1: Any = None
    pending: Any = None

    @property
    def ready(self) -> bool:
        return self.u0 is not None


@dataclass(frozen=True, eq=False)
class CurvaturePlan(ReadingPlan):
    """A trajectory-reading plan plus the band: `band` (rows, descending), `weights[i] = (k_r, k_1,
    k_0)` for the corrected rows (γ(r*_i − r_i) = k_r r_i − k_1 U1 − k_0 U0)."""

    band: tuple = ()
    weights: dict = field(default_factory=dict)


class CurvatureReading(TrajectoryReading):
    """"dpl-ob-curv": "dpl-ob-traj" whose band rows correct their read for the slope and curvature
    of x̂0 over the row's τ-interval, from a rotation register carried in the latent (module docstring).

    Args:
        gain: γ > 0, the fraction of the estimated correction applied (½).
        band: (low, high), 0 < low < high: the σ̄ range of the corrected rows ((2, 10)).
        reach, max_ratio, s, shift_last: as `TrajectoryReading`.
    """

    def __init__(self, gain: float = DEFAULT_GAIN, band: tuple = DEFAULT_BAND, *, reach: float = DEFAULT_REACH,
                 max_ratio: float = DEFAULT_MAX_RATIO, s: float = DEFAULT_S, shift_last: bool | str = True):
        super().__init__(reach, max_ratio, s=s, shift_last=shift_last)
        if not is_real(gain) or not gain > 0.0:
            raise ValueError(f"gain={gain!r} must be a real number > 0 (the fraction of the correction applied)")
        if (not isinstance(band, (tuple, list)) or len(band) != 2 or not all(is_real(v) for v in band)
                or not 0.0 < band[0] < band[1]):
            raise ValueError(f"band={band!r} must be a pair (low, high) of real numbers with 0 < low < high (σ̄ of the corrected rows)")
        self.gain, self.band = float(gain), (float(band[0]), float(band[1]))
        extra = [f"gain={self.gain!r}"] * (self.gain != DEFAULT_GAIN) + [f"band={self.band!r}"] * (self.band != DEFAULT_BAND)
        base = self.name[len("dpl-ob-traj"):].strip("()")
        extra += [base] if base else []
        self.name = "dpl-ob-curv" + (f"({', '.join(extra)})" if extra else "")

    @property
    def latent_size(self) -> int:
        return 5

    def prepare(self, grid: Grid) -> CurvaturePlan:
        plan = super().prepare(grid)
        band = self.band_rows(grid, plan.reading)
        weights = {i: self.row_weights(grid, plan.reading, i) for i in band[UNCORRECTED_TOP:]}
        return CurvaturePlan(grid=plan.grid, tables=plan.tables, shift=plan.shift, reading=plan.reading,
                             band=band, weights=weights)

    def band_rows(self, grid: Grid, reading: dict) -> tuple:
        """The band's rows, descending: the top contiguous run of trajectory rows with low < σ̄_i < high."""
        low, high = self.band
        rows = sorted((i for i in reading if low < grid.sigma_bar[i] < high), reverse=True)
        run = rows[:1]
        for i in rows[1:]:
            if i != run[-1] - 1:
                break
            run.append(i)
        return tuple(run)

    def row_weights(self, grid: Grid, reading: dict, i: int) -> tuple[float, float, float]:
        """(k_r, k_1, k_0) of row i: γ(r*_i − r_i) = k_r r_i − k_1 U1 − k_0 U0 (module docstring)."""
        nu = [1.0 / (reading[j][2] if j in reading else float(grid.sigma_bar[j])) for j in (i - 1, i, i + 1)]
        tau = 1.0 / grid.sigma_bar[[i + 1, i - 1]]
        a, b = tau[0] - nu[1], tau[1] - nu[1]
        n1, n2 = 0.5 * (nu[0] - nu[2]), nu[0] - 2.0 * nu[1] + nu[2]
        mean, square = 0.5 * (a + b), (a * a + a * b + b * b) / 6.0
        slope = mean / n1 - square * n2 / n1**3  # weight of r′
        curve = square / n1**2  # weight of r″
        g = self.gain
        return g * (slope + 2.0 * curve), g * 2.0 * slope, g * 4.0 * curve

    # -- the registers ----------------------------------------------------------------------------
    @staticmethod
    def read_of(grid: Grid, i: int, x_i: Any, eps: Any) -> Any:
        """r_i = x̄_i − σ̄_i ε̂_i."""
        return recurrence.linear_combination([1.0 / float(grid.scale[i]), -float(grid.sigma_bar[i])], [x_i, eps])

    @staticmethod
    def corrected(plan: CurvaturePlan, i: int, eps: Any, r: Any, regs: Registers) -> Any:
        """ε̂*_i = ε̂_i − γ(r*_i − r_i)/σ̄_i, or ε̂_i where row i is not corrected."""
        if i not in plan.weights:
            return eps
        k_r, k_1, k_0 = plan.weights[i]
        sb = float(plan.grid.sigma_bar[i])
        return recurrence.linear_combination([1.0, -k_r / sb, k_1 / sb, k_0 / sb], [eps, r, regs.u1, regs.u0])

    def sample_row(self, plan: CurvaturePlan, evaluate: Evaluate, i: int, x_i: Any, eps: Any, regs: Registers):
        if i not in plan.band:
            return eps, regs
        r = self.read_of(plan.grid, i, x_i, eps)
        if regs.ready:
            eps = self.corrected(plan, i, eps, r, regs)
            return eps, Registers(u0=recurrence.linear_combination([1.0, -1.0], [r, regs.u1]), u1=regs.u0)
        if regs.pending is None:
            return eps, Registers(pending=r)
        # the second band row: a straight line through the two reads
        return eps, Registers(u0=recurrence.linear_combination([1.0, -0.5], [r, regs.pending]), u1=0.5 * r)

    def invert_row(self, plan: CurvaturePlan, evaluate: Evaluate, i: int, x_i: Any, eps: Any, regs: Registers):
        if not plan.band:
            return eps, regs
        if i == plan.band[-1] - 1:  # the row below the band: keep its read
            if eps is None:
                eps = row_eps(plan.shift, evaluate, x_i, i)
            return eps, Registers(pending=self.read_of(plan.grid, i, x_i, eps))
        if i not in plan.band:
            return eps, regs
        r = self.read_of(plan.grid, i, x_i, eps)
        if not regs.ready:  # the band's bottom row: the registers after it, from a straight line
            below = regs.pending if regs.pending is not None else r
            regs = Registers(u0=0.5 * below, u1=0.5 * r)
        before = Registers(u0=regs.u1, u1=recurrence.linear_combination([1.0, -1.0], [r, regs.u0]))
        return self.corrected(plan, i, eps, r, before), before

    # -- carry and latent -------------------------------------------------------------------------
    def unpack(self, aux: Any) -> tuple[Any, Registers]:
        w, regs = (None, None) if aux is None else aux
        return w, regs if regs is not None else Registers()

    def pack(self, w: Any, extra: Any) -> Any:
        return (w, extra)

    def from_latent(self, plan, states, index):
        carry = super().from_latent(plan, states[:3], index)
        return replace(carry, aux=(carry.aux, Registers(u0=states[3], u1=states[4])))

    def latent_states(self, carry: Carry) -> tuple:
        xs = tuple(reversed(carry.xs))
        w, regs = self.unpack(carry.aux)
        if not regs.ready:
            zero = zeros_like(xs[0])
            return (*xs, w, zero, zero)
        return (*xs, w, regs.u0, regs.u1)

