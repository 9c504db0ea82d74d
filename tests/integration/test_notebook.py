"""examples/quickstart.ipynb runs top to bottom (nbclient) on a tiny synthetic scan and a tiny trained run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

import noduleflow
from noduleflow.detect.predictor import FRAME_COLUMNS

NOTEBOOK = Path(__file__).parents[2] / "examples" / "quickstart.ipynb"
SRC = str(Path(noduleflow.__file__).parents[1])  # the sources under test, for the kernel too
KERNEL = "noduleflow-test"
PROBE = (
    "import json\n"
    "print(json.dumps({'columns': list(table.columns), 'rows': len(table), 'findings': len(result.findings)}))"
)  # appended to the executed copy: what the notebook's own variables hold at its end


@pytest.fixture(scope="module")
def trained(tiny_detector) -> tuple[Path, Path]:
    """(one scan, a detector run): a scan of the session's tiny detector (tests/conftest.py) and that run."""
    data, run = tiny_detector
    return sorted(data.glob("subset*/*.mhd"))[0], run


def _kernel(folder: Path) -> KernelManager:
    """A kernel on this interpreter, from a kernelspec of our own: no user-level or system kernelspec decides
    which Python (and which noduleflow) runs the notebook."""
    spec = folder / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"}))
    return KernelManager(kernel_name=KERNEL, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(folder)]))


def _outputs(cell) -> set[str]:
    return {kind for out in cell.get("outputs", []) for kind in out.get("data", {})}


def test_the_stored_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)


@pytest.mark.slow  # trains a tiny detector (about a minute) and starts a kernel
def test_quickstart_runs_and_ends_with_the_findings_table(trained, tmp_path, monkeypatch):
    scan, run = trained
    for name, value in {
        "NODULEFLOW_SCAN": str(scan),
        "NODULEFLOW_RUN": str(run),
        "NODULEFLOW_THRESHOLD": "0.1",  # one epoch of training: its segmentation is unsure everywhere
        "PYTHONPATH": SRC,
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),  # connection files, never in the user's home
        "IPYTHONDIR": str(tmp_path / "ipython"),
        "JUPYTER_PLATFORM_DIRS": "1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend must draw the figures
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    client = NotebookClient(
        nb, km=_kernel(tmp_path / "kernels"), timeout=300, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # a cell that raises fails here, with the cell and its traceback

    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    figures = [c for c in code if "image/png" in _outputs(c)]
    assert len(figures) == 2  # the slices, and the findings on their slices
    table = next(c for c in code if c.source.startswith("table = result.to_frame()"))
    assert {"text/plain", "text/html"} <= _outputs(table)  # a DataFrame's display
    probe = json.loads("".join(o.get("text", "") for o in code[-1].outputs if o.output_type == "stream"))
    assert probe["columns"] == list(FRAME_COLUMNS) and probe["rows"] == probe["findings"]
    printed = "".join(o.get("text", "") for c in code for o in c.outputs if o.output_type == "stream")
    assert f"scan: {scan}" in printed and f"series: {scan.stem}" in printed and "finding(s) from" in printed
