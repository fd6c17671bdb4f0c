"""backprop_lab.interrupts: SIGINT and SIGTERM stop a run cleanly, one process or two (DDP), real signals.

Each run trains until it is signalled; it must stop at the end of a step, save its checkpoint, flush its
logs, write summary.json (status interrupted), print the exact resume command and exit 130 / 143 within
10 s of the signal. A signal before training starts exits quietly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backprop_lab.checks import CHECKPOINT

from conftest import TRAIN_SCRIPT, event_accumulator, read_scalars, train_run

pytestmark = pytest.mark.slow

LONG = ("trainer.max_steps=1000000", "trainer.enable_progress_bar=false", "checkpoint.every_n_steps=20")


def _start(run_dir: Path, *overrides: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.Popen(
        [sys.executable, str(TRAIN_SCRIPT), *overrides, f"hydra.run.dir={run_dir}"],
        cwd=run_dir.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # A shell's background job (CI may be one) ignores SIGINT, and a child inherits that: Python then
        # installs no Ctrl-C handler. The user at a terminal has the default, so the test gives it that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.2)


def _signal_and_wait(proc: subprocess.Popen, signum: int) -> tuple[int, str, float]:
    sent = time.monotonic()
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=60)
    return proc.returncode, out, time.monotonic() - sent


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_the_run_after_a_step_and_it_resumes_exactly(tmp_path, signum, code):
    run = tmp_path / "run"
    run.mkdir()
    proc = _start(run, "model=relu", *LONG)
    _wait_for(run / CHECKPOINT, proc)
    returncode, out, took = _signal_and_wait(proc, signum)
    assert returncode == code, out
    assert took < 10
    assert "Traceback" not in out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["steps"] >= 20
    steps = summary["steps"]
    assert f"run interrupted after {steps} steps" in out
    assert f"to continue: backprop-lab model=relu {' '.join(LONG)} resume=" in out
    logged = read_scalars(run)  # the logs are readable, up to the step it stopped after
    assert max(logged["train/loss"]) == steps - 1
    import torch

    assert torch.load(run / CHECKPOINT, map_location="cpu", weights_only=True)["global_step"] == steps

    # Continued to steps + 10, it logs what one uninterrupted run of steps + 10 logs.
    from backprop_lab.train import train

    from conftest import compose_config

    overrides = ("model=relu", f"trainer.max_steps={steps + 10}")
    cfg = compose_config("trainer.accelerator=cpu", *overrides, f"resume={run}")
    result = train(cfg, run_dir=run)
    _, whole = train_run(tmp_path / "whole", *overrides)
    assert result.steps == steps + 10
    assert read_scalars(run) == whole


def test_ctrl_c_before_training_starts_exits_quietly(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    proc = _start(run, "model=relu", *LONG)
    time.sleep(1.0)  # Hydra is composing, torch is being imported: no training yet
    assert proc.poll() is None
    returncode, out, _ = _signal_and_wait(proc, signal.SIGINT)
    assert returncode == 130
    assert "Traceback" not in out and "KeyboardInterrupt" not in out


def test_ddp_stops_every_rank_after_the_same_step(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    overrides = ("trainer=ddp", "trainer.accelerator=cpu", "model=mlp", "data=moons", "monitor.pictures=[]", *LONG)
    proc = _start(run, *overrides)
    _wait_for(run / CHECKPOINT, proc, timeout=150)
    returncode, out, took = _signal_and_wait(proc, signal.SIGTERM)  # to rank 0 only, as a scheduler would
    assert returncode == 143, out
    assert took < 10
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    time.sleep(1)
    ranks = subprocess.run(["pgrep", "-f", f"hydra.run.dir={run}"], capture_output=True, text=True).stdout.split()
    assert ranks == []  # rank 1 stopped too
    acc = event_accumulator(run)
    assert max(e.step for e in acc.Scalars("train/loss")) == summary["steps"] - 1
