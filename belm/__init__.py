"""belm: the user-facing layer — applications (reconstruct, edit, interpolate, sample) and the `belm` CLI.

The math lives in `belm_core`; model adapters in `backends`.
"""
