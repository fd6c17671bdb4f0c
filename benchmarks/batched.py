"""Section ``sweep_batched``: ``hydra/launcher=batched`` against the basic launcher, whole process against
whole process, on the post's sigmoid net (K learning rates from 0.001 to 100, every other setting the
default: 200 steps, tol 1e-8, every monitor on).

    python scripts/bench.py --only sweep_batched      # K = 16 and 64 on both launchers, K = 1024 batched

K = 1024 runs on the batched launcher only; the basic launcher's time there is extrapolated from its
per-job cost, (T(64) − T(16)) / 48 seconds a job, and marked as such.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks.timing import ROOT

BOTH = (16, 64)
BATCHED_ONLY = (1024,)


def learning_rates(k: int) -> str:
    return ",".join(f"{v:.6g}" for v in np.logspace(-3, 2, k))


def sweep_s(tmp: str, name: str, k: int, batched: bool) -> float:
    """Wall time of one whole ``scripts/train.py -m`` process sweeping K learning rates."""
    cmd = [
        sys.executable, str(ROOT / "scripts" / "train.py"), "-m", *(["hydra/launcher=batched"] if batched else []),
        "model=sigmoid", f"optim.lr={learning_rates(k)}", "trainer.enable_progress_bar=false",
        f"hydra.sweep.dir={tmp}/{name}",
    ]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"sweep {name} failed (exit {done.returncode}): {done.stderr[-2000:]}")
    return wall


def bench_batched_sweep(ks_both=BOTH, ks_batched=BATCHED_ONLY, log=print) -> dict:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-batched-") as tmp:
        for k in ks_both:
            for batched in (False, True):
                launcher = "batched" if batched else "basic"
                log(f"  K = {k}, {launcher} launcher")
                rows.append({"k": k, "launcher": launcher, "wall_s": sweep_s(tmp, f"{launcher}{k}", k, batched)})
        basic = {r["k"]: r["wall_s"] for r in rows if r["launcher"] == "basic"}
        small, large = min(basic), max(basic)
        per_job = (basic[large] - basic[small]) / (large - small) if large > small else None
        for k in ks_batched:
            log(f"  K = {k}, batched launcher")
            rows.append({"k": k, "launcher": "batched", "wall_s": sweep_s(tmp, f"batched{k}", k, True)})
            if per_job is not None:
                rows.append(
                    {"k": k, "launcher": "basic (extrapolated)", "wall_s": basic[large] + (k - large) * per_job}
                )
    for row in rows:
        row.setdefault("extrapolated", row["launcher"].endswith("(extrapolated)"))
    speedups = {}
    for k in sorted({r["k"] for r in rows}):
        times = {r["launcher"].split(" ")[0]: r["wall_s"] for r in rows if r["k"] == k}
        if "basic" in times and "batched" in times:
            speedups[f"speedup_{k}"] = times["basic"] / times["batched"]
    return {"rows": rows, "per_job_basic_s": per_job, **speedups, "load_avg": os.getloadavg()[0]}


def targets(res: dict, add) -> None:
    section = res.get("sweep_batched") or {}
    add("batched sweep speed-up, post sigmoid K = 64", section.get("speedup_64"), 25.0, higher_is_better=True)


def render(res: dict, table) -> None:
    section = res.get("sweep_batched")
    if not section:
        return
    rows = []
    for k in sorted({r["k"] for r in section["rows"]}):
        times = {r["launcher"]: r["wall_s"] for r in section["rows"] if r["k"] == k}
        basic = times.get("basic", times.get("basic (extrapolated)"))
        batched = times.get("batched")
        note = "basic extrapolated" if "basic (extrapolated)" in times else ""
        rows.append([k, basic, batched, basic / batched if basic and batched else None, note])
    table(
        "Batched sweep: post sigmoid, K learning rates, whole processes (s)",
        ["K", "basic launcher", "hydra/launcher=batched", "speed-up", ""],
        rows,
    )
