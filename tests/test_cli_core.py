"""`belm demo` and `belm coeffs` end to end."""

import json
import signal
import subprocess

import pytest

from belm.cli import main


def test_demo_json_reports_exact_and_inexact_methods(capsys):
    assert main(["demo", "--steps", "10", "40", "--json", "--batch", "32"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    by = {(r["method"].split("(")[0], r["steps"]): r for r in rows}
    assert {m for m, _ in by} == {"ddim", "bdia", "edict", "o-belm", "recommended: dpl-ob-curv"}
    assert by[("recommended: dpl-ob-curv", 40)]["roundtrip_mse"] <= 1e-20 and by[("recommended: dpl-ob-curv", 40)]["nfe"] == 40
    for m in ("bdia", "edict", "o-belm"):
        assert by[(m, 40)]["roundtrip_mse"] <= 1e-20
    assert by[("ddim", 40)]["roundtrip_mse"] > 1e-7
    assert by[("o-belm", 40)]["sample_rmse"] < by[("ddim", 40)]["sample_rmse"]
    assert by[("edict", 40)]["nfe"] == 80 and by[("o-belm", 40)]["nfe"] == 40


def test_demo_console_script_runs():
    out = subprocess.run(["belm", "demo", "--steps", "10", "--methods", "o-belm", "ddim"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "o-belm" in out.stdout and "round-trip MSE" in out.stdout


def test_coeffs_prints_formulas_and_verdicts(capsys):
    assert main(["coeffs", "--k", "3"]) == 0
    text = capsys.readouterr().out
    assert "a = (-9, 9, 1)" in text and "sampling: UNSTABLE" in text and "order 4" in text
    assert main(["coeffs", "--k", "3", "--stable", "--c", "-1"]) == 0
    text = capsys.readouterr().out
    assert "sampling: stable" in text and "inverse:  stable" in text and "order 2" in text
    assert main(["coeffs", "--k", "2"]) == 0
    assert "a_{i,2} = h_i**2/h_i+1**2" in capsys.readouterr().out


def test_coeffs_bad_input_exits_2(capsys):
    assert main(["coeffs", "--k", "1"]) == 2
    assert "k = 1" in capsys.readouterr().err
    assert main(["coeffs", "--k", "3", "--fix", "z9=1"]) == 2
    assert "valid names: a1, a2, a3, b1, b2" in capsys.readouterr().err
    assert main(["coeffs", "--k", "3", "--stable", "--c", "2.5"]) == 2
    assert "c" in capsys.readouterr().err
    assert main(["demo", "--methods", "nope"]) == 2
    assert "method='nope'" in capsys.readouterr().err


def test_belm_without_command_prints_help(capsys):
    assert main([]) == 2
    assert "demo" in capsys.readouterr().out


# -- belm coeffs: --fix is parsed, never evaluated; k is bounded; a slow solve is stopped --------

PAYLOADS = [
    "__import__('os').system('touch {flag}')",
    "open('{flag}', 'w')",
    "(lambda: __import__('os'))()",
    "c.__class__.__base__",
    "exec('x')",
    "c(1)",
    "c[0]",
    "c if c else 1",
    "c // 2",
    "c**c",
    "2**(2**100)",
    "1j",
    "c_1",
    "a2",
]


def test_coeffs_fix_payloads_never_run(tmp_path, capsys):
    flag = tmp_path / "PWNED"
    for payload in PAYLOADS:
        value = payload.format(flag=flag)
        assert main(["coeffs", "--k", "3", "--fix", f"a1={value}"]) == 2, value
        err = capsys.readouterr().err
        assert "not allowed" in err and "--fix a1" in err, (value, err)
    assert not flag.exists()


def test_coeffs_fix_names_the_offending_token():
    from belm.coeffs import parse_fix_value

    for text, token in [("c + os.getcwd", "os.getcwd"), ("1 + f(c)", "f(c)"), ("c_0", "_"), ("a1 + c", "a1"),
                        ("c % 2", "%"), ("c**0.5", "0.5")]:
        try:
            parse_fix_value(text)
        except ValueError as exc:
            assert repr(token) in str(exc), (text, str(exc))
        else:
            raise AssertionError(f"{text!r} was accepted")


def test_coeffs_fix_builds_exact_expressions_without_eval(monkeypatch):
    import builtins

    import sympy

    from belm.coeffs import parse_fix_value

    def forbidden(*args, **kwargs):
        raise AssertionError("the --fix parser evaluated its input")

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    monkeypatch.setattr(sympy, "sympify", forbidden)
    monkeypatch.setattr(sympy, "parse_expr", forbidden)
    c, gamma = sympy.symbols("c gamma")
    assert parse_fix_value("0.1*c**2 - 3/c") == sympy.Rational(1, 10) * c**2 - 3 / c  # 0.1 read as 1/10
    assert parse_fix_value("-(gamma + 1)**-2 * 1e-3") == -sympy.Rational(1, 1000) / (gamma + 1) ** 2
    assert parse_fix_value(" 2 ") == 2


def test_coeffs_fix_with_a_parameter_gives_the_stable_family(capsys):
    assert main(["coeffs", "--k", "3", "--fix", "a3=1", "a1=c+1", "a2=-c-1", "--param", "c=0.5"]) == 0
    text = capsys.readouterr().out
    assert "order 2" in text and "sampling: stable" in text and "inverse:  stable" in text


def test_coeffs_bounds_k_before_any_work(capsys, monkeypatch):
    from belm_core import derivation

    def boom(*args, **kwargs):
        raise AssertionError("a derivation started")

    monkeypatch.setattr(derivation, "derive", boom)
    monkeypatch.setattr(derivation, "stable_family", boom)
    for argv, bound in [(["--k", "7"], "2 ≤ k ≤ 6"), (["--k", "10"], "2 ≤ k ≤ 6"),
                        (["--k", "5", "--fix", "a5=1"], "2 ≤ k ≤ 4"), (["--k", "0"], "2 ≤ k ≤ 6")]:
        assert main(["coeffs", *argv]) == 2
        assert bound in capsys.readouterr().err


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs SIGALRM")
def test_time_limit_repeats_the_alarm_when_one_is_swallowed():
    import time

    from belm.coeffs import _TimeLimit, _time_limit

    swallowed = 0
    t = time.perf_counter()
    with pytest.raises(ValueError, match="the block took longer than --time-limit 0.05 s"):
        with _time_limit(0.05, "the block"):
            try:  # what a gc callback or __del__ does to an exception raised inside it
                time.sleep(2.0)
            except _TimeLimit:
                swallowed += 1
            time.sleep(2.0)
    assert swallowed == 1 and time.perf_counter() - t < 1.0
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)  # disarmed afterwards
    time.sleep(0.15)  # and no stray alarm arrives later


def test_coeffs_time_limit_stops_a_slow_solve(capsys):
    import time

    t = time.perf_counter()
    assert main(["coeffs", "--k", "4", "--fix", "a1=c/(d+1)", "b1=e", "--time-limit", "0.5"]) == 2
    assert time.perf_counter() - t < 5.0
    assert "--time-limit 0.5" in capsys.readouterr().err
    assert main(["coeffs", "--k", "2", "--time-limit", "nan"]) == 2
    assert "--time-limit" in capsys.readouterr().err
