"""The stability edge of a learning-rate sweep: final loss against η on a log axis, diverged runs marked,
and the bound: for the post's linear net the exact one, for its sigmoid and ReLU nets 2/λ_max at the start.

For the linear net, L = (y − w·x)² and one step of gradient descent maps the error e = w·x − y to
(1 − 2ηx²)·e: it shrinks iff |1 − 2ηx²| < 1, i.e. η < 1/x² (0.25 at the post's x = 2). That holds for
plain gradient descent only: curves with momentum or weight decay get no bound line. For the other nets,
λ_max is the largest eigenvalue of the loss Hessian at the initial weights
(:func:`backprop_lab.batched.program.sharpness_at_start`); 2/λ_max is where gradient descent stops being
stable near that point (for the linear net it equals 1/x²), a local bound, not a global one.

Written by the batched launcher after the last job, as ``<sweep dir>/stability_edge.png`` and as the image
``sweep/stability_edge`` of the TensorBoard run ``<sweep dir>/stability_edge``. This module imports no torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

LINEAR_NET = "backprop_lab.models.LinearNet"


def linear_bound(cfg: DictConfig) -> float | None:
    """1/x² for plain gradient descent on the post's linear net, else None (no closed form drawn)."""
    if cfg.model.get("_target_") != LINEAR_NET or "x" not in cfg.data:
        return None
    if float(cfg.optim.get("momentum", 0.0)) != 0.0 or float(cfg.optim.get("weight_decay", 0.0)) != 0.0:
        return None
    return 1.0 / float(cfg.data.x) ** 2


def edge_rows(jobs: Sequence[tuple[DictConfig, dict, Sequence[str]]], bound_of=None) -> list[dict]:
    """One row per job with an η: {curve, lr, final_loss, status, bound, bound_label}; ``curve`` names the job's
    other overrides (the jobs of one curve differ only in η). ``bound_of(cfg)``: (η, label) or None; by default
    the linear net's 1/x² (:func:`backprop_lab.batched.program.stability_bound` adds 2/λ_max); it reads no more
    of a config than ``model``, ``data``, ``optim.momentum``, ``optim.weight_decay`` and ``seed`` (an MLP's
    initial weights), so it is computed once for the jobs that share them."""
    if bound_of is None:

        def bound_of(cfg):
            bound = linear_bound(cfg)
            return None if bound is None else (bound, "η = 1/x²")

    rows = []
    bounds: dict[str, tuple[float, str] | None] = {}  # by what a bound reads: the net, its data, momentum, decay, seed
    for cfg, summary, overrides in jobs:
        if "lr" not in cfg.get("optim", {}):
            continue
        others = [o for o in overrides if not o.startswith("optim.lr=") and "enable_progress_bar" not in o]
        loss = float(summary.get("final_loss", math.nan))
        key = repr(
            [OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "data")]
            + [cfg.optim.get("momentum"), cfg.optim.get("weight_decay"), cfg.get("seed")]  # an MLP's start
        )
        if key not in bounds:  # the copies of a sweep over η share it (each a Hessian: ~5 ms)
            bounds[key] = bound_of(cfg)
        bound = bounds[key]
        rows.append(
            {
                "curve": " ".join(others),
                "lr": float(cfg.optim.lr),
                "final_loss": loss,
                "status": summary.get("status"),
                "bound": None if bound is None else bound[0],
                "bound_label": None if bound is None else bound[1],
            }
        )
    return rows


def stability_edge_figure(rows: list[dict]):
    """Final loss against η (log-log where the losses allow), one curve per setting of the other keys;
    diverged runs as red crosses along the top; the linear net's bound η = 1/x² as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    curves = sorted({r["curve"] for r in rows})
    positive = True
    for curve in curves:
        mine = sorted((r for r in rows if r["curve"] == curve), key=lambda r: r["lr"])
        finite = [(r["lr"], r["final_loss"]) for r in mine if math.isfinite(r["final_loss"])]
        if finite:
            ax.plot(*zip(*finite), "o-", ms=3, label=curve or "final loss")
            positive &= all(loss > 0 for _, loss in finite)
        diverged = [r["lr"] for r in mine if r["status"] == "diverged"]
        if diverged:
            ax.plot(diverged, [0.97] * len(diverged), "rx", transform=ax.get_xaxis_transform())
    if any(r["status"] == "diverged" for r in rows):
        ax.plot([], [], "rx", label="diverged")
    bounds = sorted({(r["bound"], r["bound_label"]) for r in rows if r["bound"] is not None})
    for bound, label in bounds:
        ax.axvline(bound, color="k", ls="--", lw=1, label=f"{label} = {bound:.3g}")
    ax.set_xscale("log")
    if positive and any(math.isfinite(r["final_loss"]) for r in rows):
        ax.set_yscale("log")
    ax.set_xlabel("η (optim.lr)")
    ax.set_ylabel("final loss")
    ax.set_title("stability edge")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def write_stability_edge(sweep_dir: Path, rows: list[dict]) -> Path | None:
    """``<sweep dir>/stability_edge.png`` and the TensorBoard image, where the sweep has two or more η."""
    if len({r["lr"] for r in rows}) < 2:
        return None
    from backprop_lab.sweep import log_figure

    fig = stability_edge_figure(rows)
    path = Path(sweep_dir) / "stability_edge.png"
    fig.savefig(path, dpi=100)
    log_figure(fig, Path(sweep_dir) / "stability_edge", tag="sweep/stability_edge")  # closes the figure
    return path
