"""Every code cell of the notebooks runs, in order, in one namespace."""

import json
import warnings
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_code_cells_run(path, capsys):
    cells = json.loads(path.read_text())["cells"]
    namespace: dict = {}
    code = [c for c in cells if c["cell_type"] == "code"]
    assert code, f"{path.name} has no code cells"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for cell in code:
            exec(compile("".join(cell["source"]), f"{path.name}", "exec"), namespace)
    out = capsys.readouterr().out
    assert "round-trip MSE" in out and "UNSTABLE" in out


def test_there_is_a_notebook():
    assert NOTEBOOKS
