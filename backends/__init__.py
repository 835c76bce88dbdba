"""Backends that turn a model (analytic or neural) into an ε-prediction function eps_fn(x, t)."""
