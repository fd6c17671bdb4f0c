"""backprop_lab.interrupts: SIGINT and SIGTERM stop a run cleanly, one process or two (DDP), real signals.

Each run trains until it is signalled; it must stop at the end of a step, save its checkpoint, flush its
logs, write summary.json (status interrupted), print the exact resume command and exit 130 / 143. A signal
before training starts exits quietly; one at any later phase (start-up of the fit, the final checkpoint,
the pictures, the summary) ends the run with its record complete. How long a stop takes is not asserted
(a loaded machine decides that); a stop that never comes fails on the generous time-outs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest

from backprop_lab.checks import CHECKPOINT

from conftest import TRAIN_SCRIPT, compose_config, event_accumulator, read_images, read_scalars, start_cli, train_run

pytestmark = pytest.mark.slow

LONG = ("trainer.max_steps=1000000", "trainer.enable_progress_bar=false", "checkpoint.every_n_steps=20")


def _start(run_dir: Path, *overrides: str) -> subprocess.Popen:
    return start_cli(*overrides, f"hydra.run.dir={run_dir}", cwd=run_dir.parent)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.2)


def _signal_and_wait(proc: subprocess.Popen, signum: int) -> tuple[int, str]:
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=120)
    return proc.returncode, out


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_the_run_after_a_step_and_it_resumes_exactly(tmp_path, signum, code):
    run = tmp_path / "run"
    run.mkdir()
    proc = _start(run, "model=relu", *LONG)
    _wait_for(run / CHECKPOINT, proc)
    returncode, out = _signal_and_wait(proc, signum)
    assert returncode == code, out
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
    returncode, out = _signal_and_wait(proc, signal.SIGINT)
    assert returncode == 130
    assert "Traceback" not in out and "KeyboardInterrupt" not in out


def test_ddp_stops_every_rank_after_the_same_step(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    overrides = ("trainer=ddp", "trainer.accelerator=cpu", "model=mlp", "data=moons", "monitor.pictures=[]", *LONG)
    proc = _start(run, *overrides)
    _wait_for(run / CHECKPOINT, proc, timeout=150)
    returncode, out = _signal_and_wait(proc, signal.SIGTERM)  # to rank 0 only, as a scheduler would
    assert returncode == 143, out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    time.sleep(1)
    ranks = subprocess.run(["pgrep", "-f", f"hydra.run.dir={run}"], capture_output=True, text=True).stdout.split()
    assert ranks == []  # rank 1 stopped too
    acc = event_accumulator(run)
    assert max(e.step for e in acc.Scalars("train/loss")) == summary["steps"] - 1


# --- a signal at every phase of a run, in one process ---------------------------------------------------


class SignalIn(L.Callback):
    """Sends this process a real signal in one hook of the fit: ``setup`` (before the first update),
    ``on_train_end`` (the final checkpoint and pictures come after it) or ``teardown`` (after the fit; the
    hparams and the summary come next)."""

    def __init__(self, hook: str, signum: int):
        self.hook, self.signum = hook, signum

    def setup(self, trainer, pl_module, stage):
        self._maybe("setup")

    def on_train_end(self, trainer, pl_module):
        self._maybe("on_train_end")

    def teardown(self, trainer, pl_module, stage):
        self._maybe("teardown")

    def _maybe(self, hook):
        if hook == self.hook:
            os.kill(os.getpid(), self.signum)


RELU = ("trainer.accelerator=cpu", "model=relu", "monitor.pictures=[fit,loss_surface]", "trainer.max_steps=12")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_before_the_first_update_stops_at_step_0_and_the_run_resumes_exactly(tmp_path, signum):
    from backprop_lab.train import train

    cfg = compose_config(*RELU)
    with pytest.raises(SystemExit) as stopped:
        train(cfg, tmp_path / "run", callbacks=[SignalIn("setup", signum)])
    assert stopped.value.code == 128 + signum
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["status"], summary["steps"]) == ("interrupted", 0)
    resumed = train(compose_config(*RELU, f"resume={tmp_path / 'run'}"), tmp_path / "run")
    whole, expected = train_run(tmp_path / "whole", *RELU[1:])
    assert (resumed.status, resumed.steps, resumed.final_loss) == (whole.status, whole.steps, whole.final_loss)
    assert read_scalars(tmp_path / "run") == expected


@pytest.mark.parametrize("hook", ["on_train_end", "teardown"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_after_training_lets_the_run_complete_its_record_first(tmp_path, hook, signum):
    from backprop_lab.train import train

    with pytest.raises(SystemExit) as stopped:
        train(compose_config(*RELU), tmp_path / "run", callbacks=[SignalIn(hook, signum)])
    assert stopped.value.code == 128 + signum  # the shell's status for the signal, after the record
    whole, expected = train_run(tmp_path / "whole", *RELU[1:])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["status"], summary["steps"], summary["final_loss"]) == ("finished", 12, whole.final_loss)
    assert read_scalars(tmp_path / "run") == expected  # every scalar, hparams included
    assert sorted(read_images(tmp_path / "run")) == sorted(read_images(tmp_path / "whole"))
    import torch

    assert torch.load(tmp_path / "run" / CHECKPOINT, map_location="cpu", weights_only=True)["global_step"] == 12


# --- DDP at its edges: signals to rank 0, to rank 1 and to the process group, during start-up -------------


def _ranks(run: Path) -> list[str]:
    return subprocess.run(["pgrep", "-f", f"hydra.run.dir={run}"], capture_output=True, text=True).stdout.split()


@pytest.mark.parametrize("target", ["rank 0", "rank 1", "group"])
def test_ddp_signalled_during_start_up_stops_every_rank_and_can_be_resumed(tmp_path, target):
    run = tmp_path / "run"
    run.mkdir()
    overrides = ("trainer=ddp", "trainer.accelerator=cpu", "model=mlp", "data=moons", "monitor.pictures=[]", *LONG)
    proc = start_cli(*overrides, f"hydra.run.dir={run}", cwd=tmp_path, new_session=True)
    # Rank 1 has started its job (Hydra opened its log): both ranks are starting, neither has trained.
    _wait_for(run / "train_ddp_process_1.log", proc, timeout=150)
    rank1 = next(pid for pid in _ranks(run) if int(pid) != proc.pid)
    if target == "rank 0":
        os.kill(proc.pid, signal.SIGTERM)
    elif target == "rank 1":
        os.kill(int(rank1), signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 143, out
    assert "Traceback" not in out
    deadline = time.monotonic() + 60
    while _ranks(run) and time.monotonic() < deadline:  # no orphan rank
        time.sleep(0.5)
    assert _ranks(run) == []
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["steps"] <= 1
    resumed = subprocess.run(
        [sys.executable, str(TRAIN_SCRIPT), *overrides[:-3], "trainer.max_steps=4", "checkpoint.every_n_steps=20",
         "trainer.enable_progress_bar=false", f"resume={run}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert json.loads((run / "summary.json").read_text())["steps"] == 4
