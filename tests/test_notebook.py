"""docs/notebook.ipynb runs from top to bottom (nbclient, a real kernel) and shows what it says it shows."""

from __future__ import annotations

import re
import shutil

import pytest

from conftest import ROOT, read_scalars

NOTEBOOK = ROOT / "docs" / "notebook.ipynb"


def outputs(nb) -> list[tuple[str, str]]:
    """``(mime type or stream name, text)`` of every output of every code cell, in order."""
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if o.output_type == "stream":
                out.append((o.name, o.text))
            for mime, value in o.get("data", {}).items():
                out.append((mime, value if isinstance(value, str) else ""))
    return out


@pytest.mark.slow
def test_the_notebook_runs_and_shows_the_runs_the_replay_and_the_curves(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    copy = tmp_path / "notebook.ipynb"
    shutil.copy(NOTEBOOK, copy)
    nb = nbformat.read(copy, as_version=4)
    for cell in nb.cells:  # what was saved with it is not what is checked
        if cell.cell_type == "code":
            cell.outputs = []
    nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    shown = outputs(nb)
    text = "\n".join(t for kind, t in shown if kind in ("stdout", "text/plain"))

    # the post's three networks, trained where the command line would put them (in the notebook's directory)
    runs = sorted((tmp_path / "outputs" / "runs").iterdir())
    assert [re.sub(r"^[\d_.-]+_", "", p.name).split(",")[0] for p in runs] == ["linear", "sigmoid", "relu"]
    assert "'relu': ('finished', 0.25, 50)" in text
    assert "'linear': ('converged', 0.0, " in text
    assert read_scalars(runs[2])["train/loss"][50] == pytest.approx(0.25)
    assert "The ReLU unit h is dead since step 4" in text  # the run's closing lines
    assert "optim.lr=-1.0 is not accepted: use a positive learning rate, e.g. optim.lr=0.1." in text

    # the replay of the ReLU net's first step, with the post's ∂L/∂w1 = 2
    (markdown,) = [t for kind, t in shown if kind == "text/markdown"]
    assert "model=relu" in markdown
    assert "| ∂L/∂w1 | ∂L/∂ŷ · w2 · ReLU′(z1) · x | (-2) · (-1) · 1 · 1 | 2 | 2 | ✓ |" in markdown

    # two figures drawn inline: the three runs' loss and weights, the reader's own model
    assert [kind for kind, _ in shown].count("image/png") == 2

    # the monitors on the reader's own model logged to its CSV logger, and the notebook says how it ended
    metrics = (tmp_path / "outputs" / "own" / "sine" / "metrics.csv").read_text()
    header = metrics.splitlines()[0].split(",")
    assert {"grad_norm/0.weight", "grad_norm/2.weight", "relu/dead_fraction/1"} <= set(header)
    last = re.search(r"loss (\d\.\d{4}) after 200 steps; (\d+)% of the ReLU units dead at the end", text)
    assert last is not None and float(last[1]) < 0.5
    assert not (ROOT / "docs" / "outputs").exists()
