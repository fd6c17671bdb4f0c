"""The replay's table on a terminal of 80 columns: stacked one row a line, every number whole."""

from __future__ import annotations

import pytest

from backprop_lab.post import exact
from backprop_lab.replay import replay

from conftest import ROOT, compose_config, run_cli

REPLAY_SCRIPT = ROOT / "scripts" / "replay.py"


@pytest.mark.slow
@pytest.mark.parametrize("model", ["linear", "sigmoid", "relu"])
@pytest.mark.parametrize("columns", [80, 200])
def test_every_number_is_printed_whole_at_any_width(tmp_path, model, columns):
    proc = run_cli(f"model={model}", cwd=tmp_path, script=REPLAY_SCRIPT, env={"COLUMNS": str(columns)})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= columns
    assert "…" not in proc.stdout
    words = set(proc.stdout.split())
    r = replay(compose_config(f"model={model}"))
    for row in r.rows:  # the exact value and the post's figure of every row, each on one line, uncut
        assert exact(row.value) in words, (row.quantity, exact(row.value))
        if row.post is not None:
            assert row.post.figure in words
    stacked = "┃ phase" not in proc.stdout
    assert stacked == (columns == 80)  # the table where it fits, else one row a line
