"""A run's ``summary.json``: how it ended, in strict JSON (read back by sweeps and by resumed runs).

This module imports neither torch nor Lightning.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

SUMMARY_FILE = "summary.json"


def _strict_json(value: Any) -> Any:
    """Non-finite floats as the strings "inf", "-inf", "nan" (which float() reads back): JSON has no inf."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strict_json(v) for v in value]
    return value


def write_summary(run_dir: Path, summary: dict[str, Any]) -> Path:
    """``run_dir/summary.json``, written whole or not at all (a temporary file renamed over it)."""
    path = Path(run_dir) / SUMMARY_FILE
    partial = path.with_suffix(".json.partial")
    try:
        partial.write_text(json.dumps(_strict_json(summary), indent=2, allow_nan=False) + "\n")
        partial.replace(path)
    except OSError:
        partial.unlink(missing_ok=True)
        raise
    return path


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """``run_dir/summary.json`` as written (non-finite numbers as floats again); None where there is none."""
    path = Path(run_dir) / SUMMARY_FILE
    if not path.is_file():
        return None
    numbers = ("final_loss", "best_loss")
    return {k: float(v) if k in numbers else v for k, v in json.loads(path.read_text()).items()}


def read_summaries(sweep_dir: Path) -> list[dict[str, Any]]:
    """Every job's summary.json under ``sweep_dir``, with ``run`` (its directory, relative) added."""
    rows = []
    for path in sorted(Path(sweep_dir).rglob(SUMMARY_FILE)):
        row = json.loads(path.read_text())
        row["run"] = str(path.parent.relative_to(sweep_dir))
        rows.append(row)
    return rows
