"""Every section of the benchmark, the targets it checks, and its tables: what ``scripts/bench.py`` runs."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

import torch

from benchmarks import batched, functions, training
from benchmarks.functions import bench_calls, bench_functions, bench_scaling
from benchmarks.timing import MODES, find, fmt, machine
from benchmarks.training import bench_startup, bench_sweep, bench_threads, bench_training


def targets(res: dict) -> list[dict]:
    """Each target with its measured value (None where its section did not run)."""
    out = []

    def add(name: str, value: float | None, limit: float, higher_is_better: bool = False) -> None:
        met = None if value is None else (value >= limit if higher_is_better else value <= limit)
        out.append({"target": name, "value": value, "limit": limit, "met": met})

    functions.targets(res, add)
    training.targets(res, add)
    batched.targets(res, add)
    return out


SECTIONS = ("calls", "functions", "scaling", "training", "threads", "startup", "sweep", "sweep_batched")


def run(quick: bool = False, sections: tuple[str, ...] = SECTIONS, log: Callable[[str], None] = print) -> dict:
    """Run the chosen sections and return the results (the JSON ``scripts/bench.py`` writes)."""
    cfg = MODES["quick" if quick else "full"]
    started = time.perf_counter()
    res: dict = {
        "mode": "quick" if quick else "full",
        "machine": machine(),
        "load_before": os.getloadavg()[0],
        "notes": [],
    }
    if not torch.cuda.is_available():
        res["notes"].append("CUDA rows skipped: no CUDA GPU on this machine (torch.cuda.is_available() is False)")
    if "calls" in sections:
        log("calls: per-call cost of an autograd Function")
        res["calls"] = bench_calls(cfg)
    if "functions" in sections:
        log("functions: hand-written vs native (step, forward, backward, saved tensors)")
        res["functions"], res["memory"] = bench_functions(cfg, quick)
    if "scaling" in sections:
        log("scaling: step time vs width and batch")
        res["scaling"] = bench_scaling(cfg, quick)
    if "training" in sections:
        log("training: package vs bare Lightning vs plain loop")
        res["training"], res["training_ratios"] = bench_training(cfg, quick)
    if "threads" in sections:
        log(f"threads: the package's step with 1 intra-op thread and with torch's default ({torch.get_num_threads()})")
        res["threads"], res["threads_ratios"] = bench_threads(cfg, quick)
    if "startup" in sections:
        log("startup: whole processes")
        res["startup"] = bench_startup(cfg, quick)
    if "sweep" in sections and not quick:
        log("sweep: basic vs joblib launcher (takes ~3 min)")
        step_us = find(res.get("training", []), "us_per_step", model="post sigmoid", runner="package_default")
        res["sweep"] = bench_sweep(step_us)
    elif "sweep" in sections:
        res["sweep"] = None
        res["notes"].append("sweep skipped in --quick mode (8 jobs of >= 10 s each; run the full benchmark)")
    if "sweep_batched" in sections and not quick:
        log("sweep_batched: hydra/launcher=batched vs the basic launcher, whole processes (takes ~5-10 min)")
        res["sweep_batched"] = batched.bench_batched_sweep(log=log)
    elif "sweep_batched" in sections:
        res["sweep_batched"] = None
        res["notes"].append("sweep_batched skipped in --quick mode (whole sweeps of 16 to 1024 jobs)")
    res["targets"] = targets(res)
    res["load_after"] = os.getloadavg()[0]
    res["wall_s"] = time.perf_counter() - started
    return res


def render(res: dict, console=None) -> None:
    """Print the results as rich tables: ratios first, absolute figures beside them."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=None if sys.stdout.isatty() else 150)  # a log file gets whole tables
    m = res["machine"]
    console.print(
        f"[bold]backprop-lab benchmark[/] ({res['mode']}): {m['cpu']}, {m['cpus']} CPUs, torch {m['torch']}, "
        f"lightning {m['lightning']}, CUDA: {m['cuda'] or 'none'}; load {res['load_before']:.1f} → {res['load_after']:.1f}"
    )

    def table(title: str, cols: list[str], rows: list[list]) -> None:
        t = Table(title=title, title_justify="left")
        for i, c in enumerate(cols):
            t.add_column(c, justify="left" if i == 0 else "right")
        for r in rows:
            t.add_row(*[fmt(v) for v in r])
        console.print(t)

    functions.render(res, table)
    training.render(res, table, console)
    batched.render(res, table)
    rows = [
        [
            t["target"],
            t["value"],
            ("≥ " if "speed-up" in t["target"] else "≤ ") + fmt(t["limit"]),
            {True: "yes", False: "NO", None: "not run"}[t["met"]],
        ]
        for t in res["targets"]
    ]
    table("Targets", ["target", "measured", "limit", "met"], rows)
    for note in res["notes"]:
        console.print(f"note: {note}")
    console.print(f"benchmark took {res['wall_s']:.0f} s")
