"""Notebooks run top to bottom (their code cells, executed in order in one namespace)."""

import json
import os

import pytest

from conftest import REPO

NOTEBOOKS = sorted(f for f in os.listdir(os.path.join(REPO, "notebooks")) if f.endswith(".ipynb"))


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, monkeypatch):
    monkeypatch.chdir(os.path.join(REPO, "notebooks"))
    with open(name) as f:
        cells = [c for c in json.load(f)["cells"] if c["cell_type"] == "code"]
    namespace = {}
    for cell in cells:
        exec(compile("".join(cell["source"]), f"{name}", "exec"), namespace)
    assert namespace["result"]["evals"]["probe"].scalars["accuracy_model"] > 0.5
    assert namespace["grid"].shape[0] == 3 * 64 + 4
