"""Lightning DDP on CPU (gloo, 2 processes) through the real CLI: one run directory, logs written once, and
the same numbers as a single process.

Each rank sees the post's single sigmoid example, so the gradient DDP averages over the two ranks is the
single-process gradient, and every step must match the post: L = 1.2599 at step 0, ∂L/∂w1 = 0.5276,
L = 1.0501 at step 1.
"""

from __future__ import annotations

import json

import pytest

from backprop_lab.config import ConfigError, check_devices
from conftest import compose_config, read_scalars, run_cli, train_run


def test_ddp_trainer_config():
    cfg = compose_config("trainer=ddp")
    assert (cfg.trainer.devices, cfg.trainer.strategy, cfg.trainer.accelerator) == (2, "ddp", "auto")


def test_more_devices_than_the_machine_has_is_refused():
    with pytest.raises(ConfigError, match=r"trainer.devices=4096 is more than this machine has \(\d+ CPU cores"):
        check_devices("cpu", 4096)


@pytest.mark.slow
def test_two_process_ddp_writes_once_into_one_run_dir_and_matches_one_process(tmp_path):
    overrides = ["model=sigmoid", "trainer.max_steps=3", "trainer.enable_progress_bar=false"]
    proc = run_cli("trainer=ddp", "trainer.accelerator=cpu", *overrides, cwd=tmp_path, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "distributed_backend=gloo" in proc.stdout + proc.stderr
    (run,) = (tmp_path / "outputs" / "runs").iterdir()  # rank 1 wrote into the parent's directory
    assert (run / "train_ddp_process_1.log").exists()
    pids = {p.name.split(".")[4] for p in run.glob("events.out.tfevents.*")}
    assert len(pids) == 1  # event files from rank 0 only
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["status"], summary["steps"]) == ("finished", 3)

    ddp = read_scalars(run)
    assert ddp["train/loss"][0] == pytest.approx(1.2599, abs=5e-5)
    assert ddp["grads/w1"][0] == pytest.approx(0.5276, abs=5e-5)
    assert ddp["train/loss"][1] == pytest.approx(1.0501, abs=5e-5)
    _, single = train_run(tmp_path / "single", *overrides)
    for step in range(4):
        assert ddp["train/loss"][step] == pytest.approx(single["train/loss"][step], rel=1e-6)
        assert ddp["params/w1"][step] == pytest.approx(single["params/w1"][step], rel=1e-6)


@pytest.mark.slow
def test_ddp_in_a_local_multirun_is_refused_with_the_alternative(tmp_path):
    proc = run_cli("-m", "trainer=ddp", "optim.lr=0.1,1", cwd=tmp_path)
    assert proc.returncode == 2
    assert "trainer.devices=2 (strategy 'ddp') is not accepted in a multirun (-m) on the BasicLauncher" in proc.stderr
    assert "Run each setting as a single run without -m" in proc.stderr
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_more_devices_than_exist_is_refused_by_the_cli(tmp_path):
    proc = run_cli("trainer.accelerator=cpu", "trainer.devices=4096", cwd=tmp_path)
    assert proc.returncode == 2
    assert "trainer.devices=4096 is more than this machine has" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list((tmp_path / "outputs").rglob("summary.json")) and not list((tmp_path / "outputs").rglob("events*"))
