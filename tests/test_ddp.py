"""End to end: Lightning DDP on CPU (gloo, 2 processes) through the real CLI: one run directory, logs written once, and
the same numbers as a single process.

Each rank sees the post's single sigmoid example, so the gradient DDP averages over the two ranks is the
single-process gradient, and every step must match the post: L = 1.2599 at step 0, ∂L/∂w1 = 0.5276,
L = 1.0501 at step 1.
"""

from __future__ import annotations

import json

import pytest

from conftest import read_scalars, run_cli, train_run


@pytest.mark.slow
def test_two_process_ddp_writes_once_into_one_run_dir_and_matches_one_process(tmp_path):
    overrides = ["model=sigmoid", "trainer.max_steps=3", "trainer.enable_progress_bar=false"]
    proc = run_cli("trainer=ddp", "trainer.accelerator=cpu", *overrides, cwd=tmp_path, timeout=180)
    assert proc.returncode == 0, proc.stderr
    (run,) = (tmp_path / "outputs" / "runs").iterdir()  # rank 1 wrote into the parent's directory
    assert "distributed_backend=gloo" in (run / "train.log").read_text()  # Lightning's lines: the log file
    assert (run / "train_ddp_process_1.log").exists()
    # events.out.tfevents.<time>.<host>.<pid>.<n>: the pid is the second field from the end
    pids = {p.name.split(".")[-2] for p in run.glob("events.out.tfevents.*")}
    assert len(pids) == 1 and pids.pop().isdigit()  # event files from rank 0 only
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


@pytest.mark.slow
def test_two_process_ddp_on_minibatches_matches_one_process_on_the_global_batch(tmp_path):
    # Two ranks, each with 16 of every global batch of 32 moons: DDP averages their gradients, which is
    # the gradient of the global batch, so every step matches one process.
    overrides = [
        "model=mlp",
        "data=moons",
        "data.batch_size=32",
        "trainer.max_steps=4",
        "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false",
        "monitor.pictures=[]",
    ]
    proc = run_cli(
        "trainer=ddp",
        "trainer.accelerator=cpu",
        *overrides,
        f"hydra.run.dir={tmp_path / 'ddp'}",
        cwd=tmp_path,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    ddp = read_scalars(tmp_path / "ddp")
    _, single = train_run(tmp_path / "single", *overrides)
    for step in range(5):
        assert ddp["train/loss"][step] == pytest.approx(single["train/loss"][step], rel=1e-5)
    for step in range(4):
        assert ddp["grad_norm/fc1.weight"][step] == pytest.approx(single["grad_norm/fc1.weight"][step], rel=1e-4)
