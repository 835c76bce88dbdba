"""Benchmarks: accuracy, exactness and cost of belm against the samplers people use today.

    python -m benchmarks [--quick] [--only accuracy exactness cost digits]
    python -m benchmarks.train_digits          # (re)build the cached digits DDPM

Modules: `accuracy` (error vs NFE on analytic Gaussian-mixture data, empirical orders),
`exactness` (round-trip error vs steps and state dtype, amplification factors),
`cost` (UNet wall time, solver overhead, peak memory, derivation time vs k),
`digits` (a trained class-conditional DDPM: reconstruction, sample quality, editing),
`peers` (diffusers schedulers driven by their own step loops), `report` (RESULTS.md).
"""
