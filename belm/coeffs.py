"""`belm coeffs`: print BELM coefficients, order, characteristic roots and stability verdicts.

    belm coeffs --k 3                      # LTE-optimal 3-step BELM (unstable)
    belm coeffs --k 3 --stable             # the stable family ρ = (ζ−1)(ζ²−cζ+1), c symbolic
    belm coeffs --k 3 --stable --c -1.19   # … at one c
    belm coeffs --k 3 --fix a3=1 a1=c+1 a2=-c-1 --param c=0.5

`--fix NAME=EXPR` never evaluates code. EXPR is parsed (Python's `ast`, never run) and
must follow this grammar; anything else is refused with a ValueError naming the token:

    expr    := expr ('+' | '-' | '*' | '/') expr  |  ('+' | '-') expr  |  '(' expr ')'
             | expr '**' int                   (an integer literal, |int| ≤ 12)
             | number                          (decimal: 2, 0.5, 1e-3; read exactly, 0.1 = 1/10)
             | parameter                       (a free symbol, see below)

A parameter is a plain identifier of ASCII letters and digits starting with a letter
(c, gamma, c2), at most 16 characters; no underscores, no calls, no attribute access, no
subscripts, no strings, no keywords. Names that look like coefficients ("a1", "b12")
and "zeta" (the variable of ρ) are reserved. Every parameter stays a free symbol of the
derivation; give it a value with `--param NAME=VALUE` to get the equal-step roots and
verdicts. An expression is at most 200 characters long.

The derivation's cost grows quickly with k (measured in docs/math.md §10), so k is
bounded: 2 ≤ k ≤ 6 for the LTE-optimal and `--stable` methods, 2 ≤ k ≤ 4 with `--fix`
(the generic solve of a pinned method is the slow one). Within those bounds a long
`--fix` expression can still make the solve slow, so one derivation is also stopped
after `--time-limit` seconds (default 60; where SIGALRM exists, i.e. not on Windows).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import math
import re
import signal
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import sympy

#: Largest k for the LTE-optimal and --stable derivations (k = 6: a few seconds).
K_MAX = 6
#: Largest k with --fix (k = 5 with one symbolic pin takes minutes).
K_MAX_FIX = 4
#: Default wall-clock limit on one derivation, seconds (--time-limit).
TIME_LIMIT_S = 60.0
#: Longest --fix expression, and largest |n| in x**n.
MAX_EXPR_CHARS = 200
MAX_EXPONENT = 12

_ALLOWED_CHARS = re.compile(r"[A-Za-z0-9.+\-*/() ]*")
_PARAMETER = re.compile(r"[A-Za-z][A-Za-z0-9]{0,15}")
_RESERVED = re.compile(r"[ab][0-9]+|zeta")
_NODE_NAMES = {
    ast.Call: "function call",
    ast.Attribute: "attribute access",
    ast.Subscript: "subscript",
    ast.BoolOp: "boolean operator",
    ast.Compare: "comparison",
    ast.IfExp: "conditional expression",
}


def _pairs(items: list[str], parameter: str) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ValueError(f"{parameter} {item!r} must look like NAME=VALUE")
        out[name.strip()] = value.strip()
    return out


def _refuse(where: str, text: str, token: str, why: str) -> ValueError:
    return ValueError(
        f"{where}={text!r}: {token!r} is not allowed ({why}); an expression may use numbers, "
        "+ - * / ( ), ** with an integer literal, and parameter names of letters and digits"
    )


def parse_fix_value(text: str, where: str = "--fix") -> sympy.Expr:
    """The sympy expression for one `--fix` value, built from a whitelisted syntax tree.

    Nothing in `text` is evaluated: it is parsed with `ast.parse` and each node is
    translated by hand (numbers to exact sympy Rationals, names to sympy Symbols, the
    five operators to sympy arithmetic). The grammar is in this module's docstring.
    Raises ValueError naming the first token outside it.
    """
    import sympy

    if not isinstance(text, str):
        raise TypeError(f"{where} must be a string; got {type(text).__name__}")
    if len(text) > MAX_EXPR_CHARS:
        raise ValueError(f"{where}: expression of {len(text)} characters; at most {MAX_EXPR_CHARS} allowed")
    if not text.strip():
        raise ValueError(f"{where}: empty expression")
    bad = _ALLOWED_CHARS.fullmatch(text)
    if bad is None:
        pos = next(i for i, ch in enumerate(text) if not _ALLOWED_CHARS.fullmatch(ch))
        raise _refuse(where, text, text[pos], f"character at position {pos}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise ValueError(f"{where}={text!r} is not a valid expression ({type(exc).__name__})") from None
    src = text.strip()

    def segment(node: ast.AST) -> str:
        return ast.get_source_segment(src, node) or type(node).__name__

    def build(node: ast.AST) -> sympy.Expr:
        if isinstance(node, ast.Expression):
            return build(node.body)
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise _refuse(where, text, segment(node), "only real numbers are literals")
            if isinstance(value, float) and not math.isfinite(value):
                raise _refuse(where, text, segment(node), "numbers must be finite")
            # the literal's own digits, exactly: "0.1" is 1/10, not the nearest double
            return sympy.Integer(value) if isinstance(value, int) else sympy.Rational(segment(node))
        if isinstance(node, ast.Name):
            name = node.id
            if not _PARAMETER.fullmatch(name):
                raise _refuse(where, text, name, "parameter names are letters and digits, at most 16")
            if _RESERVED.fullmatch(name):
                raise _refuse(where, text, name, "reserved: coefficient names and 'zeta' cannot be parameters")
            return sympy.Symbol(name)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
            operand = build(node.operand)
            return -operand if isinstance(node.op, ast.USub) else operand
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
            exponent = node.right
            sign = 1
            if isinstance(exponent, ast.UnaryOp) and isinstance(exponent.op, (ast.UAdd, ast.USub)):
                sign = -1 if isinstance(exponent.op, ast.USub) else 1
                exponent = exponent.operand
            if not (isinstance(exponent, ast.Constant) and type(exponent.value) is int and exponent.value <= MAX_EXPONENT):
                raise _refuse(where, text, segment(node.right), f"an exponent must be an integer literal, |n| ≤ {MAX_EXPONENT}")
            base = build(node.left)
            if sign * exponent.value < 0 and base == 0:
                raise ValueError(f"{where}={text!r}: division by zero")
            return base ** (sign * exponent.value)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
            left, right = build(node.left), build(node.right)
            if isinstance(node.op, ast.Add):
                return left + right
            if isinstance(node.op, ast.Sub):
                return left - right
            if isinstance(node.op, ast.Mult):
                return left * right
            if right == 0:
                raise ValueError(f"{where}={text!r}: division by zero")
            return left / right
        if isinstance(node, (ast.BinOp, ast.UnaryOp)):
            what = f"operator {type(node.op).__name__}"
        else:
            what = _NODE_NAMES.get(type(node), f"{type(node).__name__} expression")
        raise _refuse(where, text, segment(node), what)

    return build(tree)


def _check_k(k: int, fix: bool) -> None:
    bound = K_MAX_FIX if fix else K_MAX
    if not 2 <= k <= bound:
        extra = (
            f" with --fix (the pinned solve is slow beyond; without --fix k ≤ {K_MAX})" if fix else
            " (the derivation's cost grows steeply with k; belm_core.derive has no bound)"
        )
        raise ValueError(f"--k {k}: allowed 2 ≤ k ≤ {bound}{extra}" + (
            "; k = 1 is DDIM, not a bidirectional explicit method" if k == 1 else ""))


def _params(items: list[str]) -> dict[str, float]:
    out = {}
    for name, value in _pairs(items, "--param").items():
        if not _PARAMETER.fullmatch(name) or _RESERVED.fullmatch(name):
            raise ValueError(f"--param {name}={value}: {name!r} is not a parameter name (letters and digits)")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"--param {name}={value!r}: the value must be a real number") from None
        if not math.isfinite(number):
            raise ValueError(f"--param {name}={value!r}: the value must be finite")
        out[name] = number
    return out


class _TimeLimit(Exception):
    pass


#: seconds between repeated alarms once the limit has passed (see `_time_limit`)
_RETRY_S = 0.05


@contextlib.contextmanager
def _time_limit(seconds: float, what: str):
    """Stop the block after `seconds` of wall time with a ValueError (SIGALRM; main thread only).

    An exception raised by a signal handler while a gc callback or a __del__ runs is
    swallowed (Python prints it as "unraisable"), so the handler re-arms the timer before
    raising: the alarm repeats every `_RETRY_S` until one lands in the block's own code.
    """
    if not (hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()):
        yield
        return
    done = False

    def on_alarm(signum, frame):
        if done:
            return
        signal.setitimer(signal.ITIMER_REAL, _RETRY_S)
        raise _TimeLimit

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except _TimeLimit:
        done = True
        raise ValueError(
            f"{what} took longer than --time-limit {seconds:g} s; pin fewer or simpler coefficients, "
            "use a smaller k, or raise --time-limit"
        ) from None
    finally:
        done = True
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _main(args: argparse.Namespace) -> int:
    from belm_core.derivation import derive, format_derivation, stable_family

    _check_k(args.k, fix=bool(args.fix))
    if not (math.isfinite(args.time_limit) and args.time_limit > 0):
        raise ValueError(f"--time-limit {args.time_limit}: must be a finite number of seconds > 0")
    params = _params(args.param)
    if args.stable and args.fix:
        raise ValueError("--stable pins every a_{i,j}; do not combine it with --fix")
    if not args.stable and args.c is not None:
        raise ValueError("--c belongs to --stable")
    fix = {name: parse_fix_value(v, f"--fix {name}") for name, v in _pairs(args.fix, "--fix").items()}
    with _time_limit(args.time_limit, f"the k = {args.k} derivation"):
        d = stable_family(args.k, c=args.c) if args.stable else derive(args.k, fix=fix or None)
        text = format_derivation(d, **params)
    print(text)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("coeffs", help="derive k-step BELM coefficients and their stability")
    p.add_argument("--k", type=int, default=2,
                   help=f"number of steps, 2 ≤ k ≤ {K_MAX} (≤ {K_MAX_FIX} with --fix; default 2: O-BELM)")
    p.add_argument("--stable", action="store_true", help="the family with all roots of ρ on the unit circle")
    p.add_argument("--c", type=float, default=None, help="parameter c of the stable k = 3, 4 family, |c| < 2")
    p.add_argument("--fix", nargs="*", default=[], metavar="NAME=EXPR",
                   help="pin coefficients, e.g. a3=1 a1=c+1; EXPR: numbers, + - * / ( ), ** integer, parameter names")
    p.add_argument("--param", nargs="*", default=[], metavar="NAME=VALUE", help="values of free symbols in --fix")
    p.add_argument("--time-limit", type=float, default=TIME_LIMIT_S, metavar="SECONDS",
                   help=f"stop a derivation that runs longer (default {TIME_LIMIT_S:g})")
    p.set_defaults(func=_main)
