"""The real CLI, as a user runs it, in a temporary directory; event files read back with tensorboard.

Also: the package installed from a built wheel (not the editable checkout) trains from any directory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import ROOT, event_accumulator, event_files, read_csv_metrics, read_scalars, run_cli

QUIET = "trainer.enable_progress_bar=false"


def _run_dirs(cwd):
    return sorted((cwd / "outputs" / "runs").iterdir())


# --- training runs --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigmoid_one_step_through_the_cli(tmp_path):
    proc = run_cli("model=sigmoid", "trainer.max_steps=1", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    s = read_scalars(tmp_path / "run")
    assert s["train/loss"][0] == pytest.approx(1.2599, abs=5e-5)
    assert s["grads/w2"][0] == pytest.approx(-1.3974, abs=5e-5)
    assert s["grads/w1"][0] == pytest.approx(0.5276, abs=5e-5)
    assert s["params/w1"][1] == pytest.approx(0.4472, abs=5e-5)
    assert s["params/w2"][1] == pytest.approx(-0.8603, abs=5e-5)
    assert s["train/loss"][1] == pytest.approx(1.0501, abs=5e-5)
    assert "tensorboard --logdir run" in proc.stdout  # relative to where the command ran
    acc = event_accumulator(tmp_path / "run")
    assert "config/text_summary" in acc.Tags()["tensors"]
    assert (tmp_path / "run" / "hparams.yaml").exists()


@pytest.fixture(scope="module")
def default_relu_run(tmp_path_factory):
    """``backprop-lab model=relu`` as it ships (200 steps, progress bar on) in an empty directory."""
    cwd = tmp_path_factory.mktemp("relu")
    proc = run_cli("model=relu", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    (run,) = _run_dirs(cwd)
    return proc, run


@pytest.mark.slow
def test_default_relu_run_lands_in_outputs_and_says_the_unit_died(default_relu_run):
    proc, run = default_relu_run
    out = proc.stdout + proc.stderr
    assert "The ReLU unit h is dead since step 4" in out
    # microseconds in the name (two runs in the same second: test_config.py), then the model
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d\.\d{6}_relu", run.name)
    s = read_scalars(run)
    assert s["relu/dead_fraction/h"][4] == 1.0 and s["relu/dead_fraction/h"][3] == 0.0
    assert s["train/loss"][200] == pytest.approx(0.25)


@pytest.mark.slow
def test_the_console_shows_the_runs_own_lines_and_the_log_file_keeps_lightnings(default_relu_run):
    proc, run = default_relu_run
    out = proc.stdout + proc.stderr
    for noise in ("GPU available", "TPU available", "Tip", "INFO:", "[backprop_lab]"):
        assert noise not in out, noise
    assert out.count("run finished after 200 steps") == 1
    hints = [line for line in out.splitlines() if "logs: " in line]
    assert len(hints) == 1
    relative = f"outputs/runs/{run.name}"
    assert hints[0].endswith(f"logs: {relative}  (open with: tensorboard --logdir {relative})")
    assert str(run) not in out  # never the absolute path
    assert "GPU available" in (run / "train.log").read_text()


@pytest.mark.slow
def test_csv_logger_writes_the_same_values_as_tensorboard(tmp_path):
    both, alone = tmp_path / "both", tmp_path / "csv"
    proc = run_cli(
        "model=relu", "trainer.max_steps=6", "logger=[tensorboard,csv]", QUIET, f"hydra.run.dir={both}", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    csv_values, tb = read_csv_metrics(both / "metrics.csv"), read_scalars(both)
    for column in ("train/loss", "grad_norm/w1", "relu/dead_fraction/h", "params/w1", "relu/probe_dead_fraction/h"):
        assert column in csv_values, column
    assert csv_values["train/loss"][0] == 1.0 and csv_values["train/loss"][6] == 0.25  # the post's §5 run
    for tag, values in csv_values.items():
        assert set(values) == set(tb[tag]), tag
        for step, value in values.items():
            assert value == pytest.approx(tb[tag][step], rel=1e-6), (tag, step)

    proc = run_cli("model=relu", "trainer.max_steps=6", "logger=csv", QUIET, f"hydra.run.dir={alone}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert read_csv_metrics(alone / "metrics.csv") == csv_values  # the same run, the same numbers
    for path in event_files(alone):  # no TensorBoard logger: no scalars anywhere
        acc = event_accumulator(path.parent)
        assert acc.Tags()["scalars"] == [], path


@pytest.mark.slow
def test_early_stopping_and_a_checkpoint_on_train_loss_from_the_command_line(tmp_path):
    # The default relu run is stuck at L = (0.5 − 0)² = 0.25 from step 4 on (the unit dies): no
    # improvement at steps 5, 6, 7 exhausts patience 3, so the run stops after 8 of its 200 updates.
    run = tmp_path / "run"
    proc = run_cli(
        "model=relu", QUIET, f"hydra.run.dir={run}",
        "+callbacks.stop._target_=lightning.pytorch.callbacks.EarlyStopping", "+callbacks.stop.monitor=train/loss",
        "+callbacks.stop.patience=3", "+callbacks.stop.min_delta=1e-6",
        "+callbacks.ckpt._target_=lightning.pytorch.callbacks.ModelCheckpoint", "+callbacks.ckpt.monitor=train/loss",
        f"+callbacks.ckpt.dirpath={run / 'ckpt'}",  # inside the run directory: a run writes only there
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["steps"] < 20
    assert summary["steps"] == 8
    assert "run stopped after 8 steps" in proc.stdout
    (ckpt,) = (run / "ckpt").glob("*.ckpt")
    states = torch.load(ckpt, map_location="cpu", weights_only=True)["callbacks"]
    (mine,) = [v for k, v in states.items() if k.startswith("ModelCheckpoint") and v["monitor"] == "train/loss"]
    assert mine["best_model_score"].item() == pytest.approx(0.25)
    assert mine["best_model_path"] == str(ckpt)


# --- refusals ------------------------------------------------------------------------------------------------

# (overrides, message, exit status): 1 where Hydra refuses (no such config or key, a wrong type), 2 where
# the package's own checks refuse a well-typed value.
BAD_INPUTS = [
    (["model=foo"], "Could not find 'model/foo'", 1),
    (["optim.lr=abc"], "optim.lr", 1),
    (["optim.lr=0"], "optim.lr=0.0 is not accepted", 2),
    (["optim.lr=-1"], "optim.lr=-1.0 is not accepted", 2),
    (["model=relu", "model.relu_grad_at_zero=2"], "model.relu_grad_at_zero=2 is not accepted: use 0 or 1", 2),
    (["trainer.max_steps=0"], "trainer.max_steps=0 is not accepted", 2),
    (["data.x=abc"], "data.x", 1),
    (["trainer.accelerator=tpu9"], "trainer.accelerator='tpu9' is not accepted", 2),
    (["trainer.log_every_n_steps=0"], "trainer.log_every_n_steps=0 is not accepted", 2),
    (["tol=-1"], "tol=-1.0 is not accepted", 2),
    (["model.w9=1"], "model.w9", 1),
    (["progress_every_n_steps=-1"], "progress_every_n_steps=-1 is not accepted", 2),
    (["model=mlp", "data.n_samples=10", "data.batch_size=32"],
     "data.batch_size=32 is not accepted: use an integer from 1 to data.n_samples=10", 2),
    (["monitor.pictures=[fit,surface]"], "monitor.pictures=['fit', 'surface'] is not accepted", 2),
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("overrides, message, status", BAD_INPUTS, ids=[" ".join(o) for o, _, _ in BAD_INPUTS])
def test_bad_input_is_refused_with_the_key_and_no_traceback(tmp_path, overrides, message, status):
    proc = run_cli(*overrides, cwd=tmp_path)
    assert proc.returncode == status
    assert message in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr + proc.stdout
    assert event_files(tmp_path) == []  # refused before training wrote anything


@pytest.mark.slow
@pytest.mark.parametrize("override", ["optim.lr=-1", "optim.lr=abc"])
def test_a_refused_override_answers_before_torch_is_imported(tmp_path, override):
    # What makes a refusal cost about a second: torch (and Lightning) are never imported for it.
    proc = run_cli(override, cwd=tmp_path, python_args=("-X", "importtime"))
    assert proc.returncode != 0 and "optim.lr" in proc.stderr  # 2 from our check, 1 from Hydra's type check
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "hydra" in imported and "omegaconf" in imported  # the import log is real
    assert "torch" not in imported and "lightning" not in imported


@pytest.mark.slow
def test_gpu_on_a_machine_without_one_is_refused(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; the refusal is for machines without one")
    proc = run_cli("trainer.accelerator=gpu", cwd=tmp_path)
    assert proc.returncode == 2
    assert "trainer.accelerator='gpu' is not available" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # refused before Hydra made the run directory


@pytest.mark.slow
def test_full_error_env_shows_the_traceback(tmp_path):
    proc = run_cli("optim.lr=-1", cwd=tmp_path, env={"HYDRA_FULL_ERROR": "1"})
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "ConfigError" in proc.stderr


@pytest.mark.slow
def test_help_and_cfg_answer_without_training(tmp_path):
    proc = run_cli("--help", cwd=tmp_path)
    assert proc.returncode == 0
    assert "model: linear, mlp, relu, sigmoid" in proc.stdout
    proc = run_cli("model=relu", "--cfg", "job", cwd=tmp_path)
    assert proc.returncode == 0
    assert "relu_grad_at_zero: 0" in proc.stdout
    assert not (tmp_path / "outputs").exists()
    proc = run_cli("model=relu", "optim.lr=-1", "--cfg", "job", cwd=tmp_path)  # what it prints is validated
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == "error: optim.lr=-1.0 is not accepted: use a positive learning rate, e.g. optim.lr=0.1.\n"


@pytest.mark.slow
@pytest.mark.gpu
def test_short_gpu_run(tmp_path, cuda):
    proc = run_cli(
        "model=sigmoid",
        "trainer.max_steps=1",
        "trainer.accelerator=gpu",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    s = read_scalars(tmp_path / "run")
    assert s["grads/w1"][0] == pytest.approx(0.5276, abs=5e-5)
    assert s["train/loss"][1] == pytest.approx(1.0501, abs=5e-5)


# --- the installed package -------------------------------------------------------------------------------

INSTALLED = textwrap.dedent(
    """
    import importlib.resources, json, sys
    import backprop_lab
    configs = importlib.resources.files("backprop_lab.configs")
    print(json.dumps({
        "package": backprop_lab.__file__,
        "train.yaml": configs.joinpath("train.yaml").is_file(),
        "model/relu.yaml": configs.joinpath("model", "relu.yaml").is_file(),
    }))
    sys.argv = ["backprop-lab", "model=sigmoid", "trainer.max_steps=1", "trainer.enable_progress_bar=false"]
    from backprop_lab.cli import main
    main()
    """
)


@pytest.mark.slow
def test_the_built_package_trains_from_any_directory_with_its_own_configs(tmp_path):
    # A copy of what the wheel is built from, so that the build writes nothing into the checkout.
    source, site, elsewhere = tmp_path / "source", tmp_path / "site", tmp_path / "elsewhere"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    for name in ("src", "configs"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "--quiet"]
    built = subprocess.run([*pip, "--target", str(site), str(source)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]

    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-c", INSTALLED], cwd=elsewhere, capture_output=True, text=True, timeout=180, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.splitlines()[0])
    assert found["package"].startswith(str(site))  # the installed copy, not the editable checkout
    assert found["train.yaml"] and found["model/relu.yaml"]
    (run,) = _run_dirs(elsewhere)
    assert re.fullmatch(r".*_sigmoid,trainer\.max_steps=1", run.name)  # the model, then the other overrides
    assert read_scalars(run)["train/loss"][0] == pytest.approx(1.2599149502, abs=5e-5)
