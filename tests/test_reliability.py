"""Runs that cannot be lost: divergence at any step, bounded pictures, a full disk, a reused directory,
secrets kept out of the logs. (Resume, signals and precisions have their own files.)"""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest

from backprop_lab.monitors import pictures

from conftest import compose_config, event_files, read_images, read_scalars, run_cli, train_run

# --- divergence at step 0 ---------------------------------------------------------------------------


def test_a_loss_non_finite_at_step_0_ends_diverged_with_its_summary(tmp_path):
    # ŷ = w·x = 2e20, so L = (ŷ − y)² = 4e40: inf in float32 before any update.
    result, s = train_run(tmp_path, "model=linear", "model.w=1e20")
    assert (result.status, result.steps, result.diverged_at) == ("diverged", 0, 0)
    assert s["train/loss"][0] == float("inf")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["status"], summary["final_loss"]) == ("diverged", "inf")
    assert s["hparams/steps"] == {0: 0.0}


@pytest.mark.slow
def test_a_sweep_with_a_job_diverging_at_step_0_completes_with_its_table(tmp_path):
    proc = run_cli("-m", "model=linear", "model.w=1e20,3.0", f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    import csv

    with (tmp_path / "s" / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["model.w"], r["status"]) for r in rows] == [("3.0", "converged"), ("1e+20", "diverged")]


# --- bounded pictures ---------------------------------------------------------------------------------


def test_deep_networks_get_summarised_pictures(tmp_path):
    depth = 40  # past MAX_PANELS layers and MAX_LINES weights: one map each, not one panel or line each
    hidden = "[" + ",".join(["3"] * depth) + "]"
    result, _ = train_run(
        tmp_path, "model=mlp", f"model.hidden={hidden}", "trainer.max_steps=2", "monitor.probe_every_n_steps=1"
    )
    assert result.status == "finished"
    images = read_images(tmp_path)
    assert {"pictures/unit_activity", "pictures/grad_norm_by_layer"} <= set(images)
    steps = [0, 1, 2]
    activity = {f"act{i}": [np.ones(3), np.zeros(3), np.zeros(3)] for i in range(1, depth + 1)}
    fig = pictures.draw_unit_activity(steps, activity, "probe set", 2)
    assert len(fig.axes) == 2  # one map and its colour bar, whatever the depth
    norms = {f"fc{i}.weight": np.array([1.0, 0.0, 2.0]) for i in range(1, depth + 1)}
    fig = pictures.draw_grad_norms(np.array(steps), norms, 2)
    assert len(fig.axes) == 2 and fig.axes[0].get_legend() is None


def test_exact_zero_gradients_are_marked_not_dropped():
    norms = {"fc1.weight": np.array([1.0, 0.0, 0.0]), "out.weight": np.array([2.0, 1.0, 0.5])}
    fig = pictures.draw_grad_norms(np.array([0, 1, 2]), norms, 2)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["fc1.weight", "exact 0 (no gradient)", "out.weight"]


# --- faults -------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root (CI runs as root)")
def test_a_full_disk_fails_the_run_with_a_message_and_keeps_what_was_written(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(disk)], check=True)
    try:
        proc = run_cli(
            "model=mlp", "trainer.max_steps=100000", f"hydra.run.dir={disk / 'run'}", cwd=tmp_path, timeout=300
        )
        assert proc.returncode == 1
        assert "No space left on device" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
        assert "error: the run failed" in proc.stderr
        logged = read_scalars(disk / "run")  # every step written before the disk filled stays readable
        assert len(logged["train/loss"]) > 10
        assert not list((disk / "run").glob("*.partial"))
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_failed_run_says_so_in_its_summary(tmp_path, monkeypatch):
    from backprop_lab.monitors import GradientMonitor
    from backprop_lab.train import RunFailed, train

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(GradientMonitor, "on_train_batch_end", full)
    with pytest.raises(RunFailed, match="No space left on device"):
        train(compose_config("trainer.accelerator=cpu", "model=relu"), run_dir=tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and "No space left on device" in summary["reason"]


@pytest.mark.slow
def test_a_directory_holding_another_run_is_refused_not_mixed(tmp_path):
    run = tmp_path / "outputs" / "run"
    first = run_cli("model=relu", "trainer.max_steps=3", f"hydra.run.dir={run}", cwd=tmp_path)
    assert first.returncode == 0
    before = sorted(p.name for p in run.rglob("*"))
    second = run_cli("model=relu", f"hydra.run.dir={run}", cwd=tmp_path)
    assert second.returncode == 2 and "already holds another run" in second.stderr and f"resume={run}" in second.stderr
    assert sorted(p.name for p in run.rglob("*")) == before  # nothing written into it
    assert len(event_files(run)) == len([p for p in before if p.startswith("events.out.tfevents")])


# --- secrets ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_resolved_secrets_never_reach_the_logs(tmp_path):
    secret = "s3cr3t-token-value"
    run = tmp_path / "run"
    proc = run_cli(
        "model=relu", "trainer.max_steps=2", "+logger.tensorboard.comment=${oc.env:BACKPROP_LAB_TEST_SECRET}",
        f"hydra.run.dir={run}", cwd=tmp_path, env={"BACKPROP_LAB_TEST_SECRET": secret},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert "+logger.tensorboard.comment=${oc.env:BACKPROP_LAB_TEST_SECRET}" in summary["overrides"]
    for path in [p for p in run.rglob("*") if p.is_file()]:
        assert secret.encode() not in path.read_bytes(), path
    assert secret not in proc.stdout + proc.stderr
