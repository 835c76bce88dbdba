"""The generic step and its exact inverse, on NumPy and torch, for any k."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from belm_core import DiscreteVP, Solver, recurrence
from belm_core.recurrence import Table

torch = pytest.importorskip("torch")


def random_table(k: int, rng) -> Table:
    """A one-row k-step relation at grid index 1 with d_{1,k} = 0 and |c_{1,k}| bounded away from 0."""
    c = np.full((2, k), np.nan)
    d = np.full((2, k), np.nan)
    c[1] = rng.uniform(-2, 2, k)
    c[1, -1] = rng.choice([-1, 1]) * rng.uniform(0.3, 2.0)
    d[1] = rng.uniform(-3, 3, k)
    d[1, -1] = 0.0
    return Table(k=k, c=c, d=d)


@settings(max_examples=60, deadline=None)
@given(k=st.integers(2, 6), seed=st.integers(0, 2**31), torch_input=st.booleans(), shape=st.sampled_from([(3,), (2, 5), (1, 3, 4, 4)]))
def test_inverse_step_undoes_step(k, seed, torch_input, shape):
    rng = np.random.default_rng(seed)
    table = random_table(k, rng)
    xs = [rng.normal(size=shape) for _ in range(k)]  # xs[j−1] = x_{i−1+j}
    eps = [rng.normal(size=shape) for _ in range(k)]
    eps[-1] = None  # ε is never needed at the far end
    if torch_input:
        xs = [torch.from_numpy(x) for x in xs]
        eps = [None if e is None else torch.from_numpy(e) for e in eps]
    x_new = recurrence.step(table, 1, xs, eps)
    x_far = recurrence.inverse_step(table, 1, x_new, xs[:-1], eps[:-1])
    assert type(x_far) is type(xs[-1]) and x_far.dtype == xs[-1].dtype
    scale = 1 + sum(float(abs(x).max()) for x in xs) + sum(float(abs(e).max()) for e in eps if e is not None)
    assert float(abs(x_far - xs[-1]).max()) <= 1e-13 * scale / abs(table.c[1, -1])


def test_step_is_the_stated_formula():
    rng = np.random.default_rng(0)
    table = random_table(3, rng)
    xs = [rng.normal(size=4) for _ in range(3)]
    eps = [rng.normal(size=4), rng.normal(size=4), None]
    expect = sum(table.c[1, j] * xs[j] for j in range(3)) + table.d[1, 0] * eps[0] + table.d[1, 1] * eps[1]
    np.testing.assert_allclose(recurrence.step(table, 1, xs, eps), expect, rtol=1e-14)


def test_x_space_table_carries_alpha_and_h():
    solver = Solver(DiscreteVP.scaled_linear(), steps=6, method="o-belm")
    g = solver.grid
    a, b = solver.method.bar_table(g)
    table = recurrence.x_space_table(a, b, g)
    for i in range(1, g.N):
        for j in (1, 2):
            assert table.c[i, j - 1] == pytest.approx(a[i, j - 1] * g.alpha[i - 1] / g.alpha[i - 1 + j], rel=1e-15)
        assert table.d[i, 0] == pytest.approx(b[i, 0] * g.h[i] * g.alpha[i - 1], rel=1e-15)
    assert table.exact
    ddim = Solver(DiscreteVP.scaled_linear(), steps=6, method="ddim")
    ddim_table = recurrence.x_space_table(*ddim.method.bar_table(ddim.grid), ddim.grid)
    assert not ddim_table.exact  # ε at the far end: no exact inverse
    with pytest.raises(ValueError, match="no exact inverse"):
        recurrence.inverse_step(ddim_table, 1, np.zeros(2), [], [])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_step_on_cuda_keeps_device_and_dtype():
    rng = np.random.default_rng(1)
    table = random_table(2, rng)
    xs = [torch.randn(8, dtype=torch.float64, device="cuda") for _ in range(2)]
    eps = [torch.randn(8, dtype=torch.float64, device="cuda"), None]
    x_new = recurrence.step(table, 1, xs, eps)
    assert x_new.device.type == "cuda" and x_new.dtype == torch.float64
    back = recurrence.inverse_step(table, 1, x_new, xs[:1], eps[:1])
    assert torch.allclose(back, xs[1], rtol=0, atol=1e-12)
