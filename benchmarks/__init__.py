"""Benchmarks: accuracy, exactness and cost of belm against the samplers people use today."""
