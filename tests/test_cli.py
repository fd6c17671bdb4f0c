"""The real CLI, as a user runs it, in a temporary directory; event files read back with tensorboard."""

from __future__ import annotations

import time

import pytest

from conftest import event_accumulator, read_scalars, run_cli


def _run_dirs(cwd):
    return sorted((cwd / "outputs" / "runs").iterdir())


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


@pytest.mark.slow
def test_default_relu_run_lands_in_outputs_and_says_the_unit_died(tmp_path):
    proc = run_cli("model=relu", "trainer.max_steps=20", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    assert "the ReLU unit 'h' died at step 4" in out
    (run,) = _run_dirs(tmp_path)
    assert run.name.endswith("_relu")
    s = read_scalars(run)
    assert s["relu/dead_fraction/h"][4] == 1.0 and s["relu/dead_fraction/h"][3] == 0.0
    assert s["train/loss"][20] == pytest.approx(0.25)


@pytest.mark.slow
def test_two_runs_in_the_same_second_get_two_directories(tmp_path):
    for _ in range(2):
        assert run_cli("model=linear", "trainer.max_steps=1", cwd=tmp_path).returncode == 0
    assert len(_run_dirs(tmp_path)) == 2


BAD_INPUTS = [
    (["model=foo"], "Could not find 'model/foo'"),
    (["optim.lr=abc"], "optim.lr"),
    (["optim.lr=0"], "optim.lr=0.0 is not accepted"),
    (["optim.lr=-1"], "optim.lr=-1.0 is not accepted"),
    (["model=relu", "model.relu_grad_at_zero=2"], "model.relu_grad_at_zero=2 is not accepted: use 0 or 1"),
    (["trainer.max_steps=0"], "trainer.max_steps=0 is not accepted"),
    (["data.x=abc"], "data.x"),
    (["trainer.accelerator=tpu9"], "trainer.accelerator='tpu9' is not accepted"),
    (["trainer.log_every_n_steps=0"], "trainer.log_every_n_steps=0 is not accepted"),
    (["tol=-1"], "tol=-1.0 is not accepted"),
    (["model.w9=1"], "model.w9"),
    (["progress_every_n_steps=-1"], "progress_every_n_steps=-1 is not accepted"),
]


@pytest.mark.slow
@pytest.mark.parametrize("overrides, message", BAD_INPUTS, ids=[" ".join(o) for o, _ in BAD_INPUTS])
def test_bad_input_is_refused_with_the_key_and_no_traceback(tmp_path, overrides, message):
    started = time.perf_counter()
    proc = run_cli(*overrides, cwd=tmp_path)
    elapsed = time.perf_counter() - started
    assert proc.returncode != 0
    assert message in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "outputs" / "runs").exists() or not any(
        (d / "events.out.tfevents").exists() for d in _run_dirs(tmp_path)
    )
    assert elapsed < 30  # generous; the benchmark measures the real figure


@pytest.mark.slow
def test_gpu_on_a_machine_without_one_is_refused(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; the refusal is for machines without one")
    proc = run_cli("trainer.accelerator=gpu", cwd=tmp_path)
    assert proc.returncode == 2
    assert "trainer.accelerator='gpu' is not available" in proc.stderr
    assert "Traceback" not in proc.stderr


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


@pytest.mark.slow
@pytest.mark.gpu
def test_short_gpu_run(tmp_path, cuda):
    proc = run_cli("model=sigmoid", "trainer.max_steps=1", "trainer.accelerator=gpu", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    s = read_scalars(tmp_path / "run")
    assert s["grads/w1"][0] == pytest.approx(0.5276, abs=5e-5)
    assert s["train/loss"][1] == pytest.approx(1.0501, abs=5e-5)
