"""A signal during a batched program's start-up (before its first update) ends every copy as it ends the copy's
separate run signalled at that point: ``interrupted`` at step 0, with the logs and ``summary.json`` of that run and
its own ``checkpoints/last.ckpt``, which ``resume=<copy dir>`` continues alone to the end of the uninterrupted run.

The signals are real (``os.kill`` of this process), sent from code the program runs at start-up: a Lightning
callback's ``setup`` (the fit has begun, no update is taken) and the reading of the copies' config texts (before
the fit, while the program writes its copies' first events). The truth is the separate run (:func:`train`,
signalled in its fit's ``setup``), and the uninterrupted run for the resumed copy.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from test_batched import _compare_runs

from backprop_lab.checks import CHECKPOINT
from backprop_lab.config import validate

from conftest import compose_config, read_scalars, train_run

MONITORS_OFF = (
    "monitor.gradients=false",
    "monitor.dead_relu=false",
    "monitor.backprop_view=false",
    "monitor.pictures=[]",
)
SHARED = {
    "relu": ("model=relu", "trainer.max_steps=12"),
    "mlp": ("model=mlp", "trainer.max_steps=12"),
    "relu, monitors off": ("model=relu", "trainer.max_steps=12", *MONITORS_OFF),
}
JOBS = [["optim.lr=0.1"], ["optim.lr=0.03", "optim.momentum=0.5", "optim.weight_decay=0.01"]]


class _SignalAtSetup(Callback):
    """Sends this process ``signum`` in the fit's ``setup`` hook: start-up, before the first update."""

    def __init__(self, signum: int):
        self.signum = signum

    def setup(self, trainer, pl_module, stage):
        os.kill(os.getpid(), self.signum)


class _SignalAtStep(Callback):
    """Sends this process ``signum`` as the training step ``step`` begins: the run stops after that update."""

    def __init__(self, signum: int, step: int):
        self.signum, self.step = signum, step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


class _SignalOnRead(Sequence):
    """The copies' config texts (None: the program makes each from the copy's config), sending this process
    ``signum`` when the program reads copy ``at``'s: in its start-up, before its fit, copy ``at - 1``'s texts
    already logged."""

    def __init__(self, n: int, at: int, signum: int):
        self.n, self.at, self.signum = n, at, signum

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, k):
        if k == self.at:
            os.kill(os.getpid(), self.signum)
        return None


def _configs(model: str, jobs: list[list[str]]):
    cfgs = [compose_config("trainer.accelerator=cpu", *SHARED[model], *job) for job in jobs]
    for cfg in cfgs:
        validate(cfg)
    return cfgs


def _separate_runs(
    tmp_path: Path, model: str, jobs: list[list[str]], signum: int, signal_at: Callback | None = None
) -> list[Path]:
    """Each job trained alone by train(), signalled by ``signal_at`` (default: in its fit's setup, so interrupted at
    step 0)."""
    from backprop_lab.train import train

    refs = [tmp_path / "ref" / ",".join(job) for job in jobs]
    for cfg, ref in zip(_configs(model, jobs), refs):
        with pytest.raises(SystemExit) as stopped:
            train(cfg, run_dir=ref, callbacks=[signal_at or _SignalAtSetup(signum)])
        assert stopped.value.code == 128 + signum
    return refs


def _group(tmp_path: Path, model: str, jobs: list[list[str]], **kwargs) -> tuple[list[Path], list, int | None]:
    """The jobs as one train_group program, each copy's summary.json written as the launcher writes it; a signal
    that ends the program itself (before the fit, in the old code) fails the test, not the session."""
    from backprop_lab.batched.program import train_group
    from backprop_lab.summary import write_summary

    dirs = [tmp_path / "batched" / ",".join(job) for job in jobs]
    for d in dirs:
        d.mkdir(parents=True)
    try:
        results, signum, _ = train_group(_configs(model, jobs), dirs, jobs, **kwargs)
    except KeyboardInterrupt:
        pytest.fail("the signal ended the program instead of stopping it (no copy ended interrupted)")
    for d, result, job in zip(dirs, results, jobs):
        write_summary(d, {"overrides": job, **result.to_dict()})
    return dirs, results, signum


def _same_as_separate_runs(dirs: list[Path], refs: list[Path], step: int = 0) -> None:
    """Each copy against its separate run: every tag and text, the summary, and the checkpoint's step, loops' state,
    weights and optimizer state (``torch.optim.SGD``'s, no momentum buffer before the first update)."""
    for run, ref in zip(dirs, refs):
        _compare_runs(run, ref, run.name)
        summary, want = (json.loads((r / "summary.json").read_text()) for r in (run, ref))
        for key in ("status", "steps", "diverged_at", "dead_since", "final_dead_fraction", "best_loss"):
            assert summary[key] == want[key], (run.name, key)
        got, saved = (torch.load(r / CHECKPOINT, map_location="cpu", weights_only=True) for r in (run, ref))
        assert got["global_step"] == saved["global_step"] == step, run.name
        assert (got["epoch"], got["loops"]) == (saved["epoch"], saved["loops"]), run.name  # where a resume goes on
        assert got["state_dict"].keys() == saved["state_dict"].keys(), run.name
        for name, w in saved["state_dict"].items():
            assert torch.equal(got["state_dict"][name], w), (run.name, name)
        assert got["optimizer_states"] == saved["optimizer_states"], run.name


def _resumes_as_uninterrupted(tmp_path: Path, run: Path, model: str, job: list[str]) -> None:
    """``resume=<copy dir>`` continues the copy alone (train()) and ends as the job trained without a stop, with
    every scalar tag of the copy's directory equal to the uninterrupted run's."""
    from backprop_lab.train import train

    overrides = (*SHARED[model], *job)
    resumed = compose_config("trainer.accelerator=cpu", *overrides)
    resumed.resume = str(run)  # set, not an override: the copy's directory name holds '=' and ','
    validate(resumed)
    result = train(resumed, run_dir=run)
    whole, expected = train_run(tmp_path / "whole", *overrides)
    assert (result.status, result.steps, result.final_loss) == (whole.status, whole.steps, whole.final_loss)
    assert read_scalars(run) == expected


@pytest.mark.parametrize("model, signum", [("relu", signal.SIGINT), ("mlp", signal.SIGTERM)])
def test_a_signal_as_the_fit_starts_ends_each_copy_as_its_separate_run_and_a_copy_resumes(tmp_path, model, signum):
    """Signalled in the fit's setup: every copy ends interrupted at step 0 as its separate run does, with its
    checkpoint; the first copy, resumed alone, ends as its uninterrupted run."""
    refs = _separate_runs(tmp_path, model, JOBS, signum)
    dirs, results, got = _group(tmp_path, model, JOBS, callbacks=[_SignalAtSetup(signum)])
    assert got == signum
    assert [(r.status, r.steps) for r in results] == [("interrupted", 0)] * len(JOBS)
    _same_as_separate_runs(dirs, refs)
    _resumes_as_uninterrupted(tmp_path, dirs[0], model, JOBS[0])


def test_a_signal_before_the_fit_ends_each_copy_interrupted_at_step_0_as_its_separate_run(tmp_path):
    """Ctrl-C while the program writes its copies' first events (before its fit): the program still starts its
    fit, takes no update, and every copy ends interrupted at step 0 as its separate run signalled at start-up,
    with its checkpoint; the second copy, resumed alone, ends as its uninterrupted run."""
    refs = _separate_runs(tmp_path, "relu", JOBS, signal.SIGINT)
    dirs, results, got = _group(tmp_path, "relu", JOBS, config_texts=_SignalOnRead(len(JOBS), 1, signal.SIGINT))
    assert got == signal.SIGINT
    assert [(r.status, r.steps) for r in results] == [("interrupted", 0)] * len(JOBS)
    assert all((d / CHECKPOINT).is_file() for d in dirs)
    _same_as_separate_runs(dirs, refs)
    _resumes_as_uninterrupted(tmp_path, dirs[1], "relu", JOBS[1])


def test_a_signal_during_training_with_every_monitor_off_still_leaves_each_copy_its_checkpoint(tmp_path):
    """The checkpoint of an interrupted copy does not depend on the monitors: with all of them off, a SIGTERM in step 3
    ends every copy interrupted after that update (4 steps) with the checkpoint its separate run saves, and a copy
    resumed alone ends as its uninterrupted run."""
    model = "relu, monitors off"
    refs = _separate_runs(tmp_path, model, JOBS, signal.SIGTERM, _SignalAtStep(signal.SIGTERM, 3))
    dirs, results, got = _group(tmp_path, model, JOBS, callbacks=[_SignalAtStep(signal.SIGTERM, 3)])
    assert got == signal.SIGTERM
    assert [(r.status, r.steps) for r in results] == [("interrupted", 4)] * len(JOBS)
    assert all((d / CHECKPOINT).is_file() for d in dirs)
    _same_as_separate_runs(dirs, refs, step=4)
    _resumes_as_uninterrupted(tmp_path, dirs[0], model, JOBS[0])


@pytest.mark.slow
def test_a_signal_while_a_batched_sweep_writes_its_copies_records_lets_them_complete_then_exits_for_it(tmp_path):
    """SIGTERM from a Hydra callback's ``on_job_end`` of the first copy (after training, while the launcher writes
    the copies' summaries and closing lines): as a separate run signalled after training, every copy's record is
    completed (``finished``, its summary, its closing lines), the command says which signal came and exits 143."""
    from conftest import run_cli

    (tmp_path / "signal_at_job_end.py").write_text(
        "import os, signal\n"
        "from hydra.experimental.callback import Callback\n\n\n"
        "class SignalAtJobEnd(Callback):\n"
        "    sent = False\n\n"
        "    def on_job_end(self, config, job_return, **kwargs):\n"
        "        if not self.sent:\n"
        "            self.sent = True\n"
        "            os.kill(os.getpid(), signal.SIGTERM)\n"
    )
    proc = run_cli(
        "-m", "hydra/sweeper=batched", "model=relu", "optim.lr=0.1,0.03", "trainer.max_steps=5",
        "trainer.enable_progress_bar=false", "hydra.sweep.dir=sweep",
        "+hydra.callbacks.signal._target_=signal_at_job_end.SignalAtJobEnd",
        cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)},
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "SIGTERM came after training ended: the copies' records were completed first" in out
    summaries = sorted((tmp_path / "sweep").glob("*/summary.json"))
    assert len(summaries) == 2, out
    for path in summaries:
        summary = json.loads(path.read_text())
        assert (summary["status"], summary["steps"]) == ("finished", 5), path
        assert "to continue" not in (path.parent / "train.log").read_text()  # finished: nothing to continue
