"""`belm demo` and `belm coeffs` end to end."""

import json
import subprocess

from belm.cli import main


def test_demo_json_reports_exact_and_inexact_methods(capsys):
    assert main(["demo", "--steps", "10", "40", "--json", "--batch", "32"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    by = {(r["method"].split("(")[0], r["steps"]): r for r in rows}
    assert {m for m, _ in by} == {"ddim", "bdia", "edict", "o-belm"}
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
