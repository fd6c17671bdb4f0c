"""backprop_lab.resume: every run keeps a checkpoint, and resume=<run dir> continues it exactly.

A resumed run must log what the uninterrupted run logs at every step: losses, gradients, dead-ReLU
statistics, with the same batches in the same order (mid-epoch too) and the same optimiser state.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backprop_lab.checks import CHECKPOINT
from backprop_lab.config import ConfigError, validate
from backprop_lab.resume import REQUIRED, check_resumable, hydra_quoted, resume_command
from backprop_lab.run_lock import LOCK_FILE

from conftest import as_resumed, compose_config, read_csv_metrics, read_scalars, run_cli, start_cli, train_run

# A batched network whose data set is 8 batches an epoch: 28 steps stop in the middle of epoch 3.
MLP = ("model=mlp", "optim.momentum=0.9", "monitor.pictures=[]", "monitor.backprop_view=false")


def _resume(run_dir, *overrides):
    from backprop_lab.train import train

    cfg = compose_config("trainer.accelerator=cpu", *overrides, f"resume={run_dir}")
    validate(cfg)
    return train(cfg, run_dir=run_dir), read_scalars(run_dir)


@pytest.mark.parametrize("data", ["sine", "moons"])
def test_resume_mid_epoch_logs_exactly_what_the_uninterrupted_run_logs(tmp_path, data):
    whole, expected = train_run(tmp_path / "whole", *MLP, f"data={data}", "trainer.max_steps=40")
    part, before = train_run(
        tmp_path / "part", *MLP, f"data={data}", "trainer.max_steps=28", "checkpoint.every_n_steps=7"
    )
    assert part.steps == 28
    resumed, got = _resume(tmp_path / "part", *MLP, f"data={data}", "trainer.max_steps=40")
    assert (resumed.status, resumed.steps) == (whole.status, whole.steps) == ("finished", 40)
    assert resumed.final_loss == whole.final_loss and resumed.best_loss == whole.best_loss
    _as_the_whole_run(got, expected, before, resumed_at=28)  # TensorBoard drops the first run's steps ≥ 28
    assert len(expected["grad_norm/fc1.weight"]) == 40 and len(expected["relu/dead_fraction/act1"]) == 40


def test_a_finished_run_is_extended_by_raising_max_steps(tmp_path):
    whole, expected = train_run(tmp_path / "whole", "model=relu", "trainer.max_steps=260")
    train_run(tmp_path / "short", "model=relu")  # the default 200 steps
    extended, got = _resume(tmp_path / "short", "model=relu", "trainer.max_steps=260")
    assert extended.steps == 260 and extended.dead_since == whole.dead_since == {"h": 4}
    assert got == expected  # including relu/dead_forever_fraction/h, recomputed over all 260 steps


def test_the_checkpoint_holds_the_runs_config_and_is_refused_for_another(tmp_path):
    train_run(tmp_path, "model=relu", "trainer.max_steps=10")
    cfg = compose_config("model=relu", "trainer.max_steps=20", f"resume={tmp_path}")
    assert check_resumable(cfg, tmp_path) == 10  # the step it continues from
    other = compose_config("model=relu", "model.w1=0.7", f"resume={tmp_path}")
    with pytest.raises(ConfigError, match=r"was written with model\.w1=0\.5, this run has model\.w1=0\.7") as error:
        check_resumable(other, tmp_path)
    assert str(tmp_path / CHECKPOINT) in str(error.value)


def test_a_damaged_or_missing_checkpoint_is_refused_naming_the_file(tmp_path):
    train_run(tmp_path, "model=relu", "trainer.max_steps=3")
    path = tmp_path / CHECKPOINT
    path.write_bytes(path.read_bytes()[:100])  # cut short, as a full disk leaves it
    cfg = compose_config("model=relu", f"resume={tmp_path}")
    with pytest.raises(ConfigError, match="is not a readable checkpoint"):
        check_resumable(cfg, tmp_path)
    path.unlink()
    with pytest.raises(ConfigError, match="does not exist"):
        check_resumable(cfg, tmp_path)


def test_checkpoints_are_loaded_weights_only(tmp_path):
    # Everything in the checkpoint is tensors and plain containers: torch's safe loader reads it all.
    train_run(tmp_path, "model=mlp", "trainer.max_steps=3")
    checkpoint = torch.load(tmp_path / CHECKPOINT, map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 3
    assert checkpoint["hyper_parameters"]["config"]["model"]["hidden"] == [16, 16]
    states = " ".join(checkpoint["callbacks"])
    assert "StepRecorder" in states and "DeadReLUMonitor" in states  # the monitors' histories resume too


def test_resume_command_keeps_the_overrides_and_names_the_run():
    assert resume_command(["model=relu", "optim.lr=0.5", "hydra.run.dir=x"], "outputs/runs/r") == (
        "backprop-lab model=relu optim.lr=0.5 resume=outputs/runs/r"
    )
    assert resume_command(["+x='a b'"], "d") == "backprop-lab '+x='\"'\"'a b'\"'\"'' resume=d"
    # a run's name holds '=' and ',': quoted for Hydra inside, for the shell outside
    assert resume_command(["model=mlp"], "outputs/runs/t_mlp,optim.lr=0.5") == (
        "backprop-lab model=mlp 'resume=\"outputs/runs/t_mlp,optim.lr=0.5\"'"
    )


@pytest.mark.slow
def test_resume_through_the_cli_continues_in_the_same_directory(tmp_path):
    run = tmp_path / "outputs" / "r"
    first = run_cli("model=relu", "trainer.max_steps=5", f"hydra.run.dir={run}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    again = run_cli("model=relu", "trainer.max_steps=9", f"resume={run}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "run finished after 9 steps" in again.stdout
    assert list((tmp_path / "outputs").iterdir()) == [run]  # no second run directory
    assert json.loads((run / "summary.json").read_text())["steps"] == 9
    assert (run / ".hydra" / "overrides.yaml").read_text().count("trainer.max_steps=5")  # the first run's record kept
    refused = run_cli("model=sigmoid", f"resume={run}", cwd=tmp_path)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "was written with model._target_='backprop_lab.models.ReLUNet'" in refused.stderr
    assert len(list((run / ".hydra").glob("resumed_*"))) == 1  # the refused one wrote nothing
    before = _files(run)
    noop = run_cli("model=relu", "trainer.max_steps=9", f"resume={run}", cwd=tmp_path)  # its 9 steps are done
    assert noop.returncode == 0, noop.stderr
    assert f"nothing to resume in {run}: it has taken its trainer.max_steps=9 steps already" in noop.stdout
    assert _files(run) == before  # not a record, not a log line, not an event
    fewer = run_cli("model=relu", "trainer.max_steps=4", f"resume={run}", cwd=tmp_path)
    assert fewer.returncode == 2 and "the run has taken 9 steps already" in fewer.stderr
    assert _files(run) == before


# --- exact resume as a property: any model, data, batch, accumulation, and the step a real signal comes ---


class SignalAt(L.Callback):
    """Sends this process a real signal once training has taken ``step`` updates (GracefulStop handles it)."""

    def __init__(self, step: int, signum: int):
        self.step, self.signum, self.sent = step, signum, False

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step >= self.step and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)


NETS = {  # the overrides of a run; each MLP data set is small enough for epochs of a few batches
    "sigmoid": ("model=sigmoid",),
    "relu": ("model=relu",),
    "mlp-sine": ("model=mlp", "data=sine", "data.n_samples=40", "model.hidden=[8,8]"),
    "mlp-moons": ("model=mlp", "data=moons", "data.n_samples=52", "model.hidden=[8]"),
}


@st.composite
def interrupted_runs(draw):
    net = draw(st.sampled_from(sorted(NETS)))
    overrides = [*NETS[net], "monitor.pictures=[]", f"checkpoint.every_n_steps={draw(st.integers(3, 50))}"]
    if net.startswith("mlp"):
        batch = draw(st.sampled_from([8, 12, 16, 40]))  # 40: one partial batch of 52
        overrides.append(f"data.batch_size={batch}")
        per_epoch = math.ceil((40 if net == "mlp-sine" else 52) / batch)  # an update takes at most an epoch's batches
        overrides.append(f"trainer.accumulate_grad_batches={draw(st.integers(1, min(3, per_epoch)))}")
    overrides.append(f"optim.momentum={draw(st.sampled_from([0.0, 0.9]))}")
    total = draw(st.integers(4, 24))
    stop_at = draw(st.integers(1, total - 1))
    how = draw(st.sampled_from(["SIGTERM", "SIGINT", "finished"]))
    return overrides, total, stop_at, how


@settings(max_examples=14, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=interrupted_runs())
def test_a_resumed_run_logs_exactly_what_the_uninterrupted_run_logs(tmp_path_factory, case):
    overrides, total, stop_at, how = case
    base = ("trainer.accelerator=cpu", "tol=0", *overrides)
    from backprop_lab.train import train

    whole_dir, part_dir = tmp_path_factory.mktemp("whole"), tmp_path_factory.mktemp("part")
    whole = train(_valid(*base, f"trainer.max_steps={total}"), whole_dir)
    if how == "finished":  # a run that ended mid-epoch at max_steps, extended
        first = train(_valid(*base, f"trainer.max_steps={stop_at}"), part_dir)
        assert first.status == "finished"
    else:  # a real signal during training, the checkpoint written at the stop
        with pytest.raises(SystemExit) as stopped:
            train(_valid(*base, "trainer.max_steps=1000"), part_dir, callbacks=[SignalAt(stop_at, signal.Signals[how])])
        assert stopped.value.code == 128 + signal.Signals[how]
    done = json.loads((part_dir / "summary.json").read_text())["steps"]
    assert stop_at <= done <= total
    before = read_scalars(part_dir)
    resumed = train(_valid(*base, f"trainer.max_steps={total}", f"resume={part_dir}"), part_dir)
    assert (resumed.status, resumed.steps, resumed.final_loss, resumed.best_loss) == (
        whole.status,
        whole.steps,
        whole.final_loss,
        whole.best_loss,
    )
    # every tag at every step, bit for bit, read as a TensorBoard server reads the directory (one value a step)
    _as_the_whole_run(read_scalars(part_dir), read_scalars(whole_dir), before, resumed_at=done)


def _as_the_whole_run(got: dict, expected: dict, before: dict, resumed_at: int) -> None:
    """A resumed run's scalars (``got``) against the uninterrupted run's, bit for bit, as :func:`as_resumed` says
    (``before``: its scalars before the resume)."""
    want = as_resumed(expected, before, resumed_at)
    assert sorted(got) == sorted(want)
    for tag in want:
        assert set(want[tag]) == set(expected[tag]), tag  # the same steps, each once
        assert got[tag] == want[tag], tag


def _valid(*overrides: str):
    cfg = compose_config(*overrides)
    validate(cfg)
    return cfg


def test_the_csv_logger_keeps_what_it_wrote_before_a_resume(tmp_path):
    logged = ("model=relu", "logger=[tensorboard,csv]")
    _, expected = train_run(tmp_path / "whole", *logged, "trainer.max_steps=30")
    train_run(tmp_path / "part", *logged, "trainer.max_steps=12")
    _resume(tmp_path / "part", *logged, "trainer.max_steps=30")
    whole, part = (
        read_csv_metrics(tmp_path / "whole" / "metrics.csv"),
        read_csv_metrics(tmp_path / "part" / "metrics.csv"),
    )
    assert part == whole
    assert sorted(part["train/loss"]) == list(range(31))  # steps 0-11 from the first part, 12-30 from the second
    assert part["train/loss"] == expected["train/loss"]


# --- what a resume refuses, and what it leaves alone --------------------------------------------------------


def _files(run_dir: Path) -> dict[str, bytes]:
    # every file but the directory's lock (made and released by whoever takes it; it holds nothing)
    return {
        str(p.relative_to(run_dir)): p.read_bytes()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.name != LOCK_FILE
    }


@pytest.mark.parametrize(
    "overrides, why",
    [
        (("model=relu", "trainer.max_steps=6"), "steps"),  # its steps are done
        (("model=linear", "optim.lr=0.2", "tol=1e-4"), "converged"),  # converged before its 200 steps
        (("model=linear", "optim.lr=0.3"), "diverged"),  # 0.3 > 1/x² = 0.25: diverges
    ],
)
def test_a_resume_with_nothing_left_to_train_changes_nothing(tmp_path, overrides, why):
    first, _ = train_run(tmp_path, *overrides)
    assert why in (first.status if why != "steps" else "steps")
    before = _files(tmp_path)
    cfg = compose_config("trainer.accelerator=cpu", *overrides, f"resume={tmp_path}")
    validate(cfg)
    from backprop_lab.train import train

    again = train(cfg, run_dir=tmp_path)
    assert _files(tmp_path) == before  # not an event, not the summary, not the checkpoint
    assert (again.status, again.steps, again.final_loss) == (first.status, first.steps, first.final_loss) or (
        again.final_loss != again.final_loss and first.final_loss != first.final_loss  # nan == nan
    )


def test_a_resume_to_fewer_steps_than_done_is_refused(tmp_path):
    train_run(tmp_path, "model=relu", "trainer.max_steps=8")
    cfg = compose_config("model=relu", "trainer.max_steps=5", f"resume={tmp_path}")
    with pytest.raises(ConfigError, match=r"trainer\.max_steps=5 is not accepted .* taken 8 steps already"):
        check_resumable(cfg, tmp_path)


@pytest.mark.parametrize("part", [*REQUIRED, "loops.fit_loop", "hyper_parameters.config"])
def test_a_checkpoint_missing_a_part_is_refused_naming_the_file_and_the_part(tmp_path, part):
    train_run(tmp_path, "model=relu", "trainer.max_steps=3")
    path = tmp_path / CHECKPOINT
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    outer, _, inner = part.partition(".")
    (checkpoint[outer] if inner else checkpoint).pop(inner or outer)
    torch.save(checkpoint, path)
    cfg = compose_config("model=relu", "trainer.max_steps=9", f"resume={tmp_path}")
    with pytest.raises(ConfigError, match="is not accepted") as error:
        check_resumable(cfg, tmp_path)
    assert str(path) in str(error.value)
    assert (inner or outer) in str(error.value) or "global_step" in str(error.value)  # loops: its step count


@pytest.mark.parametrize("step", [-7, 10**15, 2, "3", 3.0])
def test_a_checkpoint_whose_step_is_out_of_range_is_refused(tmp_path, step):
    train_run(tmp_path, "model=relu", "trainer.max_steps=3")
    path = tmp_path / CHECKPOINT
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    checkpoint["global_step"] = step  # the loop took 3 updates: any other count (or type) is out of range
    torch.save(checkpoint, path)
    cfg = compose_config("model=relu", "trainer.max_steps=9", f"resume={tmp_path}")
    with pytest.raises(ConfigError, match=rf"has global_step={step!r}, out of range: its training loop took 3"):
        check_resumable(cfg, tmp_path)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(name=st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), min_size=1, max_size=30))
def test_a_run_directory_is_quoted_so_that_hydra_reads_it_back_exactly(name):
    cfg = compose_config(f"resume={hydra_quoted('outputs/runs/' + name)}")
    assert cfg.resume == "outputs/runs/" + name


@pytest.mark.slow
def test_the_printed_resume_command_works_when_pasted_into_a_shell(tmp_path):
    # The default run directory: its name holds the overrides, with '=' and ',' (and a list's items).
    overrides = [
        "model=mlp",
        "model.hidden=[4,4]",
        "optim.lr=0.05",
        "logger=[tensorboard,csv]",
        "trainer.max_steps=1000000",
    ]
    first = start_cli(*overrides, "checkpoint.every_n_steps=20", "trainer.enable_progress_bar=false", cwd=tmp_path)
    (run,) = _wait_for_checkpoint(tmp_path, first)
    assert "[" not in run.name and "]" not in run.name and "model.hidden=4+4,optim.lr=0.05" in run.name
    first.send_signal(signal.SIGINT)
    out, _ = first.communicate(timeout=120)
    assert first.returncode == 130, out
    (command,) = [line.split("to continue: ", 1)[1] for line in out.splitlines() if "to continue: " in line]
    done = json.loads((run / "summary.json").read_text())["steps"]

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    pasted = subprocess.Popen(
        ["bash", "-c", command], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 120
    while json.loads((run / "summary.json").read_text())["status"] == "interrupted" and pasted.poll() is None:
        if (run / CHECKPOINT).stat().st_mtime > (run / "summary.json").stat().st_mtime:
            break  # it resumed and has saved a checkpoint of its own
        assert time.monotonic() < deadline
        time.sleep(0.2)
    pasted.send_signal(signal.SIGTERM)
    out, _ = pasted.communicate(timeout=120)
    assert pasted.returncode == 143, out
    assert "Traceback" not in out and "mismatched input" not in out
    assert [p.name for p in (tmp_path / "outputs" / "runs").iterdir()] == [run.name]  # continued in place
    assert json.loads((run / "summary.json").read_text())["steps"] > done


def _wait_for_checkpoint(cwd: Path, proc: subprocess.Popen) -> list[Path]:
    deadline = time.monotonic() + 120
    while not list((cwd / "outputs" / "runs").glob(f"*/{CHECKPOINT}")):
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.2)
    return [p.parents[1] for p in (cwd / "outputs" / "runs").glob(f"*/{CHECKPOINT}")]
