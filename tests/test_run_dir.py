"""One run per directory, nothing written outside it: the lock, the escape checks, the sweep directory.

The truth here is the file system after the fact: which files exist where, and who got the directory.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backprop_lab.checks import CHECKPOINT
from backprop_lab.config import ConfigError
from backprop_lab.run_lock import LOCK_FILE, is_secondary_rank, lock_run_dir, run_dir_locked, unlock_run_dir

from conftest import compose_config, run_cli, start_cli, train_run


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (but a lock file) with its bytes: what a refused command must leave as it was."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != LOCK_FILE
    }


# --- the lock --------------------------------------------------------------------------------------------


def _holder(run_dir: Path) -> subprocess.Popen:
    """Another process that takes the lock on ``run_dir`` and keeps it until it is killed."""
    code = (
        "import sys, time; from pathlib import Path; from backprop_lab.run_lock import lock_run_dir; "
        "lock_run_dir(Path(sys.argv[1])); print('held', flush=True); time.sleep(600)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_run_into_a_directory_another_process_holds_is_refused_and_writes_nothing(tmp_path):
    run = tmp_path / "run"
    holder = _holder(run)
    try:
        cfg = compose_config("trainer.accelerator=cpu", "model=relu", "trainer.max_steps=2")
        from backprop_lab.train import train

        with pytest.raises(ConfigError, match=r"run_dir=.* is not accepted: another run is writing into it"):
            train(cfg, run_dir=run)
        assert _tree(run) == {}
    finally:
        holder.kill()
        holder.wait()
    # The operating system releases the lock of a killed process: the directory is usable at once.
    result, _ = train_run(run, "model=relu", "trainer.max_steps=2")
    assert result.steps == 2


def test_the_lock_is_counted_within_a_process_and_released_by_the_last_holder(tmp_path):
    lock_run_dir(tmp_path)
    lock_run_dir(tmp_path)  # the CLI's check and the run itself, in one process
    unlock_run_dir(tmp_path)
    probe = "import sys; from pathlib import Path; from backprop_lab.run_lock import lock_run_dir; lock_run_dir(Path(sys.argv[1]))"
    held = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True)
    assert held.returncode != 0 and "another run is writing into it" in held.stderr
    unlock_run_dir(tmp_path)
    free = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True)
    assert free.returncode == 0, free.stderr


@pytest.mark.parametrize(
    "env, secondary",
    [
        ({}, False),
        ({"LOCAL_RANK": "0"}, False),
        ({"LOCAL_RANK": "1"}, True),  # Lightning's DDP child on this node
        ({"RANK": "3"}, True),
        ({"SLURM_PROCID": "0"}, False),
        ({"SLURM_PROCID": "2"}, True),
        ({"JSM_NAMESPACE_RANK": "1"}, True),
    ],
)
def test_only_rank_zero_takes_the_lock(tmp_path, monkeypatch, env, secondary):
    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert is_secondary_rank() is secondary
    with run_dir_locked(tmp_path / "run"):
        assert (tmp_path / "run").exists() is not secondary  # rank 0 makes the directory and locks it


@pytest.mark.slow
def test_two_runs_started_together_into_one_directory_one_runs_the_other_is_refused(tmp_path):
    overrides = ("model=relu", "trainer.max_steps=400", "trainer.enable_progress_bar=false", "hydra.run.dir=run")
    procs = [start_cli(*overrides, cwd=tmp_path, stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outs
    refused = next(err for p, (_, err) in zip(procs, outs) if p.returncode == 2)
    assert "Traceback" not in refused and len(refused.strip().splitlines()) <= 3
    assert "another run is writing into it" in refused or "already holds another run" in refused
    run = tmp_path / "run"
    assert json.loads((run / "summary.json").read_text())["steps"] == 400
    assert len(list((run / ".hydra").glob("config.yaml"))) == 1 and not list((run / ".hydra").glob("resumed_*"))
    assert {p.name for p in run.glob("events.out.tfevents.*")} == {
        p.name
        for p in run.glob(f"events.out.tfevents.*.{procs[0].pid if procs[0].returncode == 0 else procs[1].pid}.*")
    }  # every event file is the winner's


# --- nothing written outside the run directory -------------------------------------------------------------

ESCAPES = [
    # (overrides, the key the refusal names)
    (("hydra.job.name=../../x",), "hydra.job.name"),
    (("hydra.job.name=a/b",), "hydra.job.name"),
    (("hydra.output_subdir=../record",), "hydra.output_subdir"),
    (("hydra.output_subdir=/tmp/record",), "hydra.output_subdir"),
    (("logger.tensorboard.version=../../x",), "logger.tensorboard.version"),
    (("logger.tensorboard.name=/abs",), "logger.tensorboard.name"),
    (("logger=csv", "logger.csv.name=../up"), "logger.csv.name"),
    (
        ("+callbacks.ckpt._target_=lightning.pytorch.callbacks.ModelCheckpoint", "+callbacks.ckpt.dirpath=/tmp/x"),
        "callbacks.ckpt.dirpath",
    ),
    (
        ("+callbacks.ckpt._target_=lightning.pytorch.callbacks.ModelCheckpoint", "+callbacks.ckpt.dirpath=elsewhere"),
        "callbacks.ckpt.dirpath",
    ),
    (
        ("+callbacks.ckpt._target_=lightning.pytorch.callbacks.ModelCheckpoint", "+callbacks.ckpt.filename=../x"),
        "callbacks.ckpt.filename",
    ),
    (("--config-name", "replay"), "--config-name replay"),
]


@pytest.mark.parametrize("overrides, key", ESCAPES, ids=[" ".join(o) for o, _ in ESCAPES])
def test_a_setting_that_would_write_outside_the_run_directory_is_refused(tmp_path, overrides, key):
    done = run_cli("model=relu", "trainer.max_steps=2", "hydra.run.dir=runs/r", *overrides, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and key in done.stderr
    assert _tree(tmp_path) == {}  # not a directory, not a record, not a log


def test_a_run_into_a_directory_that_holds_another_is_refused_whatever_hydra_output_subdir_says(tmp_path):
    train_run(tmp_path / "r", "model=relu", "trainer.max_steps=2")
    before = _tree(tmp_path)
    for extra in ((), ("hydra.output_subdir=null",)):
        done = run_cli("model=relu", "trainer.max_steps=3", "hydra.run.dir=r", *extra, cwd=tmp_path)
        assert done.returncode == 2 and "already holds another run" in done.stderr, done.stderr
    assert _tree(tmp_path) == before


def test_a_run_directory_inside_another_runs_directory_is_refused(tmp_path):
    train_run(tmp_path / "r", "model=relu", "trainer.max_steps=2")
    before = _tree(tmp_path)
    for inner in ("r/checkpoints/inner", "r/sub"):
        done = run_cli("model=relu", "trainer.max_steps=2", f"hydra.run.dir={inner}", cwd=tmp_path)
        assert done.returncode == 2 and "lies inside the directory of another run" in done.stderr, done.stderr
    assert _tree(tmp_path) == before


@pytest.mark.slow
def test_every_file_a_run_writes_lies_inside_its_directory(tmp_path):
    done = run_cli(
        "model=relu",
        "trainer.max_steps=6",
        "checkpoint.every_n_steps=2",
        "logger=[tensorboard,csv]",
        "hydra.run.dir=runs/r",
        "+callbacks.best._target_=lightning.pytorch.callbacks.ModelCheckpoint",
        "+callbacks.best.dirpath=${hydra:runtime.output_dir}/best",
        "+callbacks.best.monitor=train/loss",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written and all(path.startswith("runs/r/") for path in written), written
    assert {"runs/r/summary.json", "runs/r/metrics.csv", f"runs/r/{CHECKPOINT}", "runs/r/train.log"} <= set(written)
    assert any(path.startswith("runs/r/best/") for path in written)


# --- a sweep's directory -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_multirun_into_an_existing_sweep_directory_is_refused_before_the_first_job(tmp_path):
    first = run_cli("-m", "model=relu", "trainer.max_steps=2", "optim.lr=0.1,0.2", "hydra.sweep.dir=s", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = _tree(tmp_path)
    again = run_cli("-m", "model=relu", "trainer.max_steps=2", "optim.lr=0.3", "hydra.sweep.dir=s", cwd=tmp_path)
    assert (
        again.returncode == 2 and "hydra.sweep.dir='s' is not accepted: it already holds another sweep" in again.stderr
    )
    assert "Traceback" not in again.stderr
    assert _tree(tmp_path) == before  # not a job appended, not a summary overwritten


@pytest.mark.parametrize(
    "subdir, says",
    [
        ("${hydra.job.num}/..", "must lie inside hydra.sweep.dir"),  # every job in the sweep directory itself
        ("../out_${hydra.job.num}", "must lie inside hydra.sweep.dir"),
        ("same", "would write into the same directory 'same'"),  # every job in one directory
        ("${model._target_}", "would write into the same directory"),
    ],
)
def test_sweep_subdirs_that_escape_or_collide_are_refused_before_the_first_job(tmp_path, subdir, says):
    done = run_cli(
        "-m", "model=relu", "trainer.max_steps=2", "optim.lr=0.1,0.2", "hydra.sweep.dir=s", f"hydra.sweep.subdir={subdir}",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2 and says in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert _tree(tmp_path) == {}


@pytest.mark.slow
def test_a_killed_run_leaves_no_stale_lock(tmp_path):
    proc = start_cli(
        "model=relu", "trainer.max_steps=1000000", "hydra.run.dir=run", "checkpoint.every_n_steps=10",
        "trainer.enable_progress_bar=false", cwd=tmp_path,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (tmp_path / "run" / CHECKPOINT).exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    import torch

    done = torch.load(tmp_path / "run" / CHECKPOINT, map_location="cpu", weights_only=True)["global_step"]
    resumed = run_cli("model=relu", f"trainer.max_steps={done + 5}", "resume=run", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == done + 5
