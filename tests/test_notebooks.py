"""The example notebooks run top to bottom offline, and their own asserts hold;
committed copies carry no outputs."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
CELL_TIMEOUT = 600  # seconds per cell: a hung kernel fails the test instead of blocking CI
NEEDS_SHAPES_CLIP = {"01_text_to_image_search.ipynb", "02_bulk_zero_shot_tagging.ipynb",
                     "04_using_your_own_model.ipynb", "05_teach_by_example.ipynb"}
KERNEL = "pixdex-test-python"


def _builder():
    spec = importlib.util.spec_from_file_location("notebooks_build", NOTEBOOKS / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BUILD = _builder()
NAMES = sorted(BUILD.NOTEBOOKS)


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory) -> Path:
    """A kernelspec that runs this interpreter (the venv's python), so a fresh clone needs no
    `jupyter kernelspec install`."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "pixdex tests", "language": "python",
    }))
    return root


def test_committed_notebooks_match_the_generator_and_have_no_outputs():
    import nbformat

    assert BUILD.main(["--check"]) == 0, "run: python notebooks/build.py"
    for name in NAMES:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code and all(c.outputs == [] and c.execution_count is None for c in code), name
        assert any("assert " in c.source for c in code), f"{name} checks nothing"


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_offline(name, kernel_dir, tmp_path, monkeypatch, request):
    import nbformat
    from nbclient import NotebookClient

    if name in NEEDS_SHAPES_CLIP:
        request.getfixturevalue("shapes_clip")  # fails with a clear message when the weights are missing
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_dir))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # the kernel's inline backend renders figures as PNG outputs
    monkeypatch.delenv("MPLBACKEND", raising=False)
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name=KERNEL,
                            resources={"metadata": {"path": str(tmp_path)}})
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError (with the cell and traceback) when a cell fails
    print(f"{name}: {time.perf_counter() - start:.1f} s")
    images = sum(o.get("data", {}).get("image/png") is not None for c in nb.cells if c.cell_type == "code"
                 for o in c.outputs)
    assert images >= 1, f"{name} shows no figure"
    assert (tmp_path / f"pixdex-nb-{name[:2]}").is_dir(), "the notebook writes into its working directory"
