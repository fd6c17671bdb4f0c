"""backprop_lab.summary: a run's summary.json in strict JSON, written whole, read back by sweeps."""

from __future__ import annotations

import json
import math

from backprop_lab.summary import read_summaries, write_summary


def _refuse(name):
    raise AssertionError(f"non-standard JSON constant {name}")


def test_summary_json_is_strict_json_with_inf_as_a_string(tmp_path):
    write_summary(tmp_path, {"status": "diverged", "final_loss": float("inf"), "best_loss": 16.0})
    text = (tmp_path / "summary.json").read_text()
    assert json.loads(text, parse_constant=_refuse) == {"status": "diverged", "final_loss": "inf", "best_loss": 16.0}


def test_non_finite_values_inside_lists_and_dicts_read_back_with_float(tmp_path):
    write_summary(tmp_path, {"losses": [1.0, float("-inf"), float("nan")], "dead_since": {"h": None, "act1": 4}})
    doc = json.loads((tmp_path / "summary.json").read_text(), parse_constant=_refuse)
    assert doc["losses"][:2] == [1.0, "-inf"] and math.isnan(float(doc["losses"][2]))
    assert float(doc["losses"][1]) == -math.inf
    assert doc["dead_since"] == {"h": None, "act1": 4}


def test_a_summary_is_replaced_whole_and_leaves_no_partial_file(tmp_path):
    write_summary(tmp_path, {"status": "interrupted", "steps": 3})
    path = write_summary(tmp_path, {"status": "finished", "steps": 10})
    assert path == tmp_path / "summary.json"
    assert json.loads(path.read_text()) == {"status": "finished", "steps": 10}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_read_summaries_finds_every_job_and_names_its_directory(tmp_path):
    for job in ("optim.lr=0.1", "optim.lr=1/nested", "job2"):
        (tmp_path / job).mkdir(parents=True)
    write_summary(tmp_path / "optim.lr=0.1", {"final_loss": 0.5})
    write_summary(tmp_path / "optim.lr=1" / "nested", {"final_loss": float("inf")})
    # job2 wrote no summary
    rows = read_summaries(tmp_path)
    assert rows == [
        {"final_loss": 0.5, "run": "optim.lr=0.1"},
        {"final_loss": "inf", "run": "optim.lr=1/nested"},
    ]
