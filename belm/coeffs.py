"""`belm coeffs`: print BELM coefficients, order, characteristic roots and stability verdicts.

    belm coeffs --k 3                      # LTE-optimal 3-step BELM (unstable)
    belm coeffs --k 3 --stable             # the stable family ρ = (ζ−1)(ζ²−cζ+1), c symbolic
    belm coeffs --k 3 --stable --c -1.19   # … at one c
    belm coeffs --k 3 --fix a3=1 a1=c+1 a2=-c-1 --param c=0.5
"""

from __future__ import annotations

import argparse


def _pairs(items: list[str], parameter: str) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ValueError(f"{parameter} {item!r} must look like NAME=VALUE")
        out[name.strip()] = value.strip()
    return out


def _main(args: argparse.Namespace) -> int:
    import sympy

    from belm_core.derivation import derive, format_derivation, stable_family

    params = {name: float(v) for name, v in _pairs(args.param, "--param").items()}
    if args.stable:
        if args.fix:
            raise ValueError("--stable pins every a_{i,j}; do not combine it with --fix")
        d = stable_family(args.k, c=args.c)
    else:
        if args.c is not None:
            raise ValueError("--c belongs to --stable")
        fix = {name: sympy.sympify(v) for name, v in _pairs(args.fix, "--fix").items()}
        d = derive(args.k, fix=fix or None)
    print(format_derivation(d, **params))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("coeffs", help="derive k-step BELM coefficients and their stability")
    p.add_argument("--k", type=int, default=2, help="number of steps k ≥ 2 (default 2: O-BELM)")
    p.add_argument("--stable", action="store_true", help="the family with all roots of ρ on the unit circle")
    p.add_argument("--c", type=float, default=None, help="parameter c of the stable k = 3, 4 family, |c| < 2")
    p.add_argument("--fix", nargs="*", default=[], metavar="NAME=EXPR", help="pin coefficients, e.g. a3=1 a1=c+1")
    p.add_argument("--param", nargs="*", default=[], metavar="NAME=VALUE", help="values of free symbols in --fix")
    p.set_defaults(func=_main)
