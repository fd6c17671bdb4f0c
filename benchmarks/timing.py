"""Timing side by side: contenders interleaved in one process, medians of several rounds; the machine.

Every comparison runs its contenders A B A B …, the order flipped every round so neither always runs
on a warm cache, and reports the median of several rounds, so a machine that is busy for a moment
slows both sides alike.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import platform
import statistics
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]  # the checkout: configs/ and scripts/

# How long one timed sample of one contender lasts, and how many interleaved rounds are taken.
MODES = {
    "quick": {
        "sample_s": 0.01,
        "rounds": 3,
        "train_steps": 27,
        "mlp_train_steps": 27,
        "train_rounds": 1,
        "startup_reps": 1,
    },
    # Timed windows (steps 1 … N−2) that hold the periodic work at the rate a default run has: scalars
    # every step, histograms and the probe pass every 25 steps (20 of each in 500 steps, 16 in 400).
    "full": {
        "sample_s": 0.04,
        "rounds": 11,
        "train_steps": 502,
        "mlp_train_steps": 402,
        "train_rounds": 7,
        "startup_reps": 3,
    },
}


# --- timing ---------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def race(cases: dict[str, Callable[[int], float]], rounds: int, sample_s: float) -> dict[str, float]:
    """Median seconds per call of each case, interleaved over ``rounds`` rounds.

    A case is ``fn(n) -> seconds`` that runs n calls and returns the time they took (so a case can
    leave its set-up, e.g. the forward pass before a timed backward, out of the clock).
    """
    inner = {}
    for name, fn in cases.items():
        fn(2)  # warm-up: allocator, first-call dispatch
        n = 1
        while (t := fn(n)) < sample_s / 4 and n < 1 << 20:
            n *= 4
        inner[name] = max(1, math.ceil(n * sample_s / max(t, 1e-9)))
    samples: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    gc.collect()
    gc.disable()  # a collection inside one contender's sample is noise
    try:
        for r in range(rounds):
            for name in names if r % 2 == 0 else reversed(names):
                samples[name].append(cases[name](inner[name]) / inner[name])
    finally:
        gc.enable()
    return {name: statistics.median(s) for name, s in samples.items()}


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def find(rows: list[dict], key: str, **match) -> float | None:
    for r in rows:
        if all(r.get(k) == v for k, v in match.items()):
            return r[key]
    return None


def machine() -> dict:
    cpu = platform.processor()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        cpu = next(ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name"))
    import lightning

    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "platform": platform.platform(),
    }


def size_text(n: int) -> str:
    return f"{n} B" if n < 2**10 else f"{n / 2**10:.1f} KiB" if n < 2**20 else f"{n / 2**20:.2f} MiB"


def fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.1f}"
    return str(v)
