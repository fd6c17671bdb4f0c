"""Section ``sweep_batched``: batched sweeps against the basic launcher, whole process against whole process,
on the post's sigmoid and ReLU nets and the issue's small MLP, 2→64→64→1 (``model=mlp data=moons
model.hidden=[64,64]``: the moons' two inputs, the data's default settings) (K learning rates from 0.001 to 100,
every other setting the default: 200 steps, tol 1e-8, every monitor on), and against one default single run of
the same net.

    python scripts/bench.py --only sweep_batched      # K = 16 and 64 on both launchers, K = 1024 batched

The batched rows run ``hydra/sweeper=batched`` (which picks ``hydra/launcher=batched`` and composes one job
per group where Hydra's basic sweeper composes every job); K = 1024 runs batched only, the basic launcher's
time there extrapolated from its per-job cost, (T(64) − T(16)) / 48 seconds a job, and marked as such. One
default single run (``scripts/train.py model=sigmoid``, the same whole process) runs before and after the
sweeps, its median the row the K = 1024 sweep is set against (target: at most 3×). The sigmoid net's figures
are the top-level keys (the targets are set on it); the ReLU net's carry the prefix ``relu_``, the MLP's ``mlp_``.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks.timing import ROOT

BOTH = (16, 64)
BATCHED_ONLY = (1024,)
NETS = ("sigmoid", "relu", "mlp")  # the first is the one the targets are set on
# the overrides that make each net of the section (a post net is its model=)
NET_OVERRIDES = {"mlp": ["model=mlp", "data=moons", "model.hidden=[64,64]"]}


def net_overrides(net: str) -> list[str]:
    return NET_OVERRIDES.get(net, [f"model={net}"])


def learning_rates(k: int) -> str:
    return ",".join(f"{v:.6g}" for v in np.logspace(-3, 2, k))


def _wall_s(cmd: list[str], name: str) -> float:
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed (exit {done.returncode}): {done.stderr[-2000:]}")
    return wall


def sweep_s(tmp: str, name: str, k: int, batched: bool, net: str = "sigmoid") -> float:
    """Wall time of one whole ``scripts/train.py -m`` process sweeping K learning rates."""
    cmd = [
        sys.executable, str(ROOT / "scripts" / "train.py"), "-m", *(["hydra/sweeper=batched"] if batched else []),
        *net_overrides(net), f"optim.lr={learning_rates(k)}", "trainer.enable_progress_bar=false",
        f"hydra.sweep.dir={tmp}/{name}",
    ]  # fmt: skip
    return _wall_s(cmd, f"sweep {name}")


def single_s(tmp: str, name: str, net: str = "sigmoid") -> float:
    """Wall time of one whole default single run, ``scripts/train.py model=<net>``."""
    cmd = [
        sys.executable, str(ROOT / "scripts" / "train.py"), *net_overrides(net), "trainer.enable_progress_bar=false",
        f"hydra.run.dir={tmp}/{name}",
    ]  # fmt: skip
    return _wall_s(cmd, f"single run {name}")


def bench_batched_sweep(ks_both=BOTH, ks_batched=BATCHED_ONLY, nets=NETS, log=print) -> dict:
    """Every net's figures: the first net's as top-level keys, the others' prefixed ``<net>_``; rows carry ``net``."""
    res: dict = {"rows": []}
    loads: list[float] = []
    for i, net in enumerate(nets):
        found = _bench_net(net, ks_both, ks_batched, log)
        res["rows"] += found.pop("rows")
        loads += found.pop("load_avgs")
        res.update(found if i == 0 else {f"{net}_{key}": value for key, value in found.items()})
    return {**res, "load_avg": max(loads), "load_avgs": loads}


def _bench_net(net: str, ks_both, ks_batched, log) -> dict:
    rows = []
    singles = []
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="bench-batched-") as tmp:
        log(f"  {net}: one default single run")
        singles.append(single_s(tmp, "single0", net))
        for k in ks_both:
            for batched in (False, True):
                launcher = "batched" if batched else "basic"
                log(f"  {net}: K = {k}, {launcher} launcher")
                rows.append(
                    {
                        "net": net,
                        "k": k,
                        "launcher": launcher,
                        "wall_s": sweep_s(tmp, f"{launcher}{k}", k, batched, net),
                    }
                )
                loads.append(os.getloadavg()[0])
        basic = {r["k"]: r["wall_s"] for r in rows if r["launcher"] == "basic"}
        small, large = min(basic), max(basic)
        per_job = (basic[large] - basic[small]) / (large - small) if large > small else None
        for k in ks_batched:
            log(f"  {net}: K = {k}, batched launcher")
            rows.append(
                {"net": net, "k": k, "launcher": "batched", "wall_s": sweep_s(tmp, f"batched{k}", k, True, net)}
            )
            if per_job is not None:
                rows.append(
                    {"net": net, "k": k, "launcher": "basic (extrapolated)",
                     "wall_s": basic[large] + (k - large) * per_job}
                )  # fmt: skip
            loads.append(os.getloadavg()[0])
        log(f"  {net}: one default single run, again")
        singles.append(single_s(tmp, "single1", net))
        loads.append(os.getloadavg()[0])
    single = statistics.median(singles)
    for row in rows:
        row.setdefault("extrapolated", row["launcher"].endswith("(extrapolated)"))
    speedups = {}
    for k in sorted({r["k"] for r in rows}):
        times = {r["launcher"].split(" ")[0]: r["wall_s"] for r in rows if r["k"] == k}
        if "basic" in times and "batched" in times:
            speedups[f"speedup_{k}"] = times["basic"] / times["batched"]
    largest = max(ks_batched, default=None)
    batched_large = next((r["wall_s"] for r in rows if r["k"] == largest and r["launcher"] == "batched"), None)
    return {
        "rows": rows,
        "per_job_basic_s": per_job,
        **speedups,
        "single_s": single,
        "single_runs_s": singles,
        f"batched_{largest}_over_single": batched_large / single if batched_large else None,
        "load_avgs": loads,
    }


def targets(res: dict, add) -> None:
    section = res.get("sweep_batched") or {}
    add("batched sweep speed-up, post sigmoid K = 64", section.get("speedup_64"), 25.0, higher_is_better=True)
    add("batched sweep K = 1024 / one default single run", section.get("batched_1024_over_single"), 3.0)


def render(res: dict, table) -> None:
    section = res.get("sweep_batched")
    if not section:
        return
    nets = list(dict.fromkeys(r.get("net", "sigmoid") for r in section["rows"]))
    for i, net in enumerate(nets):
        prefix = "" if i == 0 else f"{net}_"
        single = section.get(f"{prefix}single_s")
        mine = [r for r in section["rows"] if r.get("net", "sigmoid") == net]
        rows = []
        for k in sorted({r["k"] for r in mine}):
            times = {r["launcher"]: r["wall_s"] for r in mine if r["k"] == k}
            basic = times.get("basic", times.get("basic (extrapolated)"))
            batched = times.get("batched")
            note = "basic extrapolated" if "basic (extrapolated)" in times else ""
            rows.append(
                [k, basic, batched, basic / batched if basic and batched else None,
                 batched / single if single and batched else None, note]
            )  # fmt: skip
        rows.append(["1 (single run)", None, single, None, 1.0, f"scripts/train.py {' '.join(net_overrides(net))}"])
        what = "MLP 2→64→64→1 (moons)" if net == "mlp" else f"post {net}"
        table(
            f"Batched sweep: {what}, K learning rates, whole processes (s), 1-min load up to {section['load_avg']:.1f}",
            ["K", "basic launcher", "hydra/sweeper=batched", "speed-up", "× single run", ""],
            rows,
        )
