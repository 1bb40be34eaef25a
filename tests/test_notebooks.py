"""The notebooks in experiments/notebooks run to the end headless (nbclient), a failing cell fails
the run, and the notebooks are stored in git without outputs (`make strip-notebooks`)."""
import glob
import os

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "experiments", "notebooks", "*.ipynb")))
pytestmark = pytest.mark.notebooks


def execute(nb, cwd):
  NotebookClient(nb, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": str(cwd)}}).execute()
  return nb


@pytest.fixture
def kernel_env(monkeypatch):
  monkeypatch.delenv("LCNET_RUN", raising=False)  # notebook 02 makes its own tiny run
  monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")  # faster compiles, same numbers


def test_there_are_the_three_notebooks():
  names = [os.path.basename(p) for p in NOTEBOOKS]
  assert names == ["01_building_blocks.ipynb", "02_face_neuron.ipynb", "03_scaling.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_is_stored_without_outputs(path):
  nb = nbformat.read(path, as_version=4)
  dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
           and (c.outputs or c.execution_count is not None)]
  assert not dirty, f"{path}: cells {dirty} have outputs; run `make strip-notebooks`"


@pytest.mark.parametrize("path", [  # notebook 03 builds 8-device meshes
    pytest.param(p, marks=[pytest.mark.needs_devices(8)] if "03_" in p else []) for p in NOTEBOOKS],
    ids=os.path.basename)
def test_notebook_runs_to_the_end(path, tmp_path, kernel_env):
  nb = execute(nbformat.read(path, as_version=4), tmp_path)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert all(c.execution_count for c in code)
  errors = [o for c in code for o in c.outputs if o.output_type == "error"]
  assert not errors
  if "building_blocks" in path or "scaling" in path:  # figures were drawn, not only computed
    assert any("image/png" in o.get("data", {}) for c in code for o in c.outputs)


def test_a_failing_cell_fails_the_run(tmp_path, kernel_env):
  nb = nbformat.read(NOTEBOOKS[0], as_version=4)
  first = next(c for c in nb.cells if c.cell_type == "code")
  nb.cells = [first, nbformat.v4.new_code_cell("raise RuntimeError('deliberately broken cell')"),
              nbformat.v4.new_code_cell("print('never reached')")]
  with pytest.raises(CellExecutionError, match="deliberately broken cell"):
    execute(nb, tmp_path)
  assert nb.cells[2].execution_count is None
