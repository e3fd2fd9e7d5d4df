"""Notebooks run top to bottom in a real Jupyter kernel (nbclient), from the notebooks/ folder.

After the notebook's own cells, the test appends one cell that prints a few of its results as
JSON, and checks them, so a notebook that runs but computes nonsense still fails.
"""

import json
import os

import pytest

from conftest import REPO

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

# notebook -> (expression printed by the appended cell, check of its value)
CHECKS = {
    "mae_digits.ipynb": (
        '{"probe": result["evals"]["probe"].scalars["accuracy_model"], "grid_rows": grid.shape[0]}',
        lambda v: v["probe"] > 0.5 and v["grid_rows"] == 3 * 64 + 4,
    ),
    "maskgit_digits.ipynb": (
        '{"summary": summary, "panels": len(panels), "strip": strip.shape[0], '
        '"unmasked_at_end": int(out["masks"][-1].sum())}',
        lambda v: (0.0 <= v["summary"]["class_consistency"] <= 1.0 and v["summary"]["frechet_distance_digits"] > 0
                   and v["panels"] == 4 and v["strip"] == 4 and v["unmasked_at_end"] == 0),
    ),
}


def test_every_notebook_has_a_check():
    names = sorted(f for f in os.listdir(os.path.join(REPO, "notebooks")) if f.endswith(".ipynb"))
    assert names == sorted(CHECKS)


# The MaskGIT notebook trains a tokenizer and a MaskGIT (45 s): behind the slow marker, for the
# default suite's time budget; the MAE notebook runs by default.
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "maskgit_digits.ipynb" else n
                                  for n in sorted(CHECKS)])
def test_notebook_runs(name, tmp_path, monkeypatch):
    # The MaskGIT notebook loads `maskgen demo`'s run if there is one; the test always trains the tiny one.
    monkeypatch.setenv("MASKGEN_DEMO_WORKDIR", str(tmp_path / "no_demo"))
    monkeypatch.setenv("PYTHONPATH", REPO)
    notebook = nbformat.read(os.path.join(REPO, "notebooks", name), as_version=4)
    expression, check = CHECKS[name]
    notebook.cells.append(nbformat.v4.new_code_cell(f"import json as _json\nprint(_json.dumps({expression}))"))
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": os.path.join(REPO, "notebooks")}})
    client.execute()
    printed = "".join(o.get("text", "") for o in notebook.cells[-1].outputs if o.get("name") == "stdout")
    values = json.loads(printed.strip().splitlines()[-1])
    assert check(values), values
