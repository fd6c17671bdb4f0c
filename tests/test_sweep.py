"""Sweeps: named runs, statuses and summaries, the sweep summary, the launchers, bad sweeps refused up front.

Expected losses come from the post's sigmoid example (x = 1, y = 0.5, w1 = 0.5, w2 = −1) worked by hand:
one step of gradient descent with ∂L/∂w1 = 0.5276, ∂L/∂w2 = −1.3975 gives a loss of 0.092448 at η = 1,
1.050105 at η = 0.1 (the post's figure) and 1.237741 at η = 0.01. The linear example (w = 3, x = 2,
y = 10) starts at L = (10 − 6)² = 16, converges in 8 steps at η = 0.1 and overflows at step 10 at η = 10.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from backprop_lab.summary import write_summary
from backprop_lab.sweep import run_name, summarize

from conftest import CONFIGS, TRAIN_SCRIPT, event_accumulator, read_scalars, run_cli

QUIET = "trainer.enable_progress_bar=false"


def _csv_rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def _has_plugin(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _need(module: str, extra: str = "sweep"):
    return pytest.mark.skipif(
        not _has_plugin(module), reason=f"{module} is not installed (pip install -e '.[{extra}]')"
    )


# --- run names -------------------------------------------------------------------------------------------


def test_run_name_keeps_plain_overrides():
    assert run_name("model=sigmoid,optim.lr=0.1", 0) == "model=sigmoid,optim.lr=0.1"


def test_run_name_makes_slashes_and_odd_characters_safe():
    assert run_name("data=sets/moons,note=a b'c", 0) == "data=sets_moons,note=a_b_c"


def test_run_name_of_a_job_without_overrides_is_its_number():
    assert run_name("", 3) == "job3"


def test_run_name_too_long_is_cut_and_stays_unique():
    a = run_name("optim.lr=0.1," + "x" * 300 + "a", 0)
    b = run_name("optim.lr=0.1," + "x" * 300 + "b", 0)
    assert len(a.encode()) <= 200 and len(b.encode()) <= 200
    assert a.startswith("optim.lr=0.1,xxx") and a != b


def test_sweep_subdir_is_named_after_the_overrides():
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["model=relu"], return_hydra_config=True)
    subdir = OmegaConf.to_container(cfg.hydra.sweep)["subdir"]  # unresolved: the job fills in its overrides
    assert subdir == "${run_name:${hydra.job.override_dirname},${hydra.job.num}}"
    assert list(cfg.hydra.job.config.override_dirname.exclude_keys) == [
        "hparams_search",
        "trainer.enable_progress_bar",
        "progress_every_n_steps",
        "resume",  # a resumed run keeps its name (and its directory)
        "checkpoint.every_n_steps",
    ]


# --- the sweep summary ---------------------------------------------------------------------


def test_converged_runs_rank_by_steps_to_converge_before_the_others():
    from backprop_lab.sweep import rank_runs

    rows = [
        {"run": "a", "status": "converged", "final_loss": 1e-12, "best_loss": 1e-12, "steps": 30},
        {"run": "b", "status": "finished", "final_loss": 0.2, "best_loss": 0.1, "steps": 200},
        {"run": "c", "status": "converged", "final_loss": 5e-9, "best_loss": 5e-9, "steps": 8},
        {"run": "d", "status": "diverged", "final_loss": "inf", "best_loss": 3.0, "steps": 4},
        {"run": "e", "status": "finished", "final_loss": 0.05, "best_loss": 0.05, "steps": 200},
    ]
    # c converged in 8 steps, a in 30 (its lower loss says nothing more); then by final loss; diverged last
    assert [r["run"] for r in rank_runs(rows)] == ["c", "a", "e", "b", "d"]


def _fake_sweep(sweep: Path) -> None:
    runs = {
        "optim.lr=10": {
            "status": "diverged",
            "final_loss": float("inf"),
            "best_loss": 16.0,
            "steps": 10,
            "diverged_at": 10,
        },  # fmt: skip
        "optim.lr=0.01": {"status": "finished", "final_loss": 0.5, "best_loss": 0.5, "steps": 100, "diverged_at": None},
        "optim.lr=0.1": {"status": "converged", "final_loss": 1e-9, "best_loss": 1e-9, "steps": 8, "diverged_at": None},
    }
    for name, summary in runs.items():
        (sweep / name).mkdir(parents=True)
        write_summary(sweep / name, {"overrides": ["model=linear", name], "wall_time_s": 0.5, **summary})


def test_sweep_summary_sorts_by_final_loss_and_writes_csv_and_picture(tmp_path, capsys):
    _fake_sweep(tmp_path)
    summarize(tmp_path)
    rows = _csv_rows(tmp_path / "summary.csv")
    assert [r["run"] for r in rows] == ["optim.lr=0.1", "optim.lr=0.01", "optim.lr=10"]
    assert list(rows[0]) == [
        "run", "optim.lr", "status", "final_loss", "best_loss", "steps", "diverged_at", "final_dead_fraction",
        "wall_time_s",
    ]  # fmt: skip
    assert [r["optim.lr"] for r in rows] == ["0.1", "0.01", "10"]
    assert [r["status"] for r in rows] == ["converged", "finished", "diverged"]
    assert rows[2]["final_loss"] == "inf" and rows[2]["diverged_at"] == "10"
    out = capsys.readouterr().out
    best_line = next(line for line in out.splitlines() if "best" in line and "converged" in line)
    assert "0.1" in best_line and "1e-09" in best_line
    images = event_accumulator(tmp_path / "sweep_summary").Tags()["images"]
    assert images == ["sweep/final_loss"]


def test_sweep_without_summaries_writes_no_summary(tmp_path, capsys):
    (tmp_path / "job0").mkdir()  # e.g. a scripts/replay.py multirun: nothing trained, nothing to sort
    assert summarize(tmp_path) == []
    assert capsys.readouterr().out == ""
    assert not (tmp_path / "summary.csv").exists() and not (tmp_path / "sweep_summary").exists()


# --- the CLI: a sweep that survives divergence ------------------------------------------------------------


@pytest.mark.slow
def test_linear_sweep_with_a_diverging_lr_exits_0_with_both_summaries_and_the_table(tmp_path):
    proc = run_cli("-m", "model=linear", "optim.lr=0.1,10", "trainer.max_steps=100", QUIET, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (sweep,) = (tmp_path / "outputs" / "sweeps").iterdir()
    good = sweep / "model=linear,optim.lr=0.1,trainer.max_steps=100"
    bad = sweep / "model=linear,optim.lr=10,trainer.max_steps=100"
    s_good, s_bad = _summary(good), _summary(bad)
    assert (s_good["status"], s_good["steps"], s_good["diverged_at"]) == ("converged", 8, None)
    assert (s_bad["status"], s_bad["steps"], s_bad["diverged_at"]) == ("diverged", 10, 10)
    assert s_bad["final_loss"] == "inf" and s_bad["best_loss"] == 16.0
    # as Hydra hands them to the job (it writes the sweep's booleans as False)
    assert s_good["overrides"] == [
        "model=linear", "optim.lr=0.1", "trainer.max_steps=100", "trainer.enable_progress_bar=False"
    ]  # fmt: skip
    assert s_good["final_loss"] < 1e-8 and s_good["final_dead_fraction"] is None
    # the diverged run's logs stay readable, up to and including the non-finite loss
    loss = read_scalars(bad)["train/loss"]
    assert loss[0] == 16.0 and loss[10] == float("inf") and max(loss.keys()) == 10  # nothing after step 10
    assert "the loss became inf at step 10" in proc.stdout + proc.stderr
    table = proc.stdout
    assert "converged ones by steps to converge" in table
    assert table.index("converged") < table.index("diverged")
    assert [r["status"] for r in _csv_rows(sweep / "summary.csv")] == ["converged", "diverged"]
    # every sweep over η gets the stability-edge figure, from each job's .hydra/config.yaml on this launcher
    assert f"stability edge: {(sweep / 'stability_edge.png').relative_to(tmp_path)}" in proc.stdout
    assert (sweep / "stability_edge.png").stat().st_size > 0
    assert event_accumulator(sweep / "stability_edge").Tags()["images"] == ["sweep/stability_edge"]


@pytest.mark.slow
@_need("hydra_plugins.hydra_joblib_launcher")
def test_sigmoid_lr_sweep_on_joblib_gives_three_named_runs_and_a_three_row_csv(tmp_path):
    proc = run_cli(
        "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model=sigmoid", "optim.lr=0.01,0.1,1.0",
        "trainer.max_steps=1", QUIET, f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    sweep = tmp_path / "sweep"
    names = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert names == [
        "model=sigmoid,optim.lr=0.01,trainer.max_steps=1",
        "model=sigmoid,optim.lr=0.1,trainer.max_steps=1",
        "model=sigmoid,optim.lr=1.0,trainer.max_steps=1",
        "stability_edge",
        "sweep_summary",
    ]
    for name in names[:3]:
        assert any((sweep / name).glob("events.out.tfevents.*"))
    rows = _csv_rows(sweep / "summary.csv")
    assert [r["optim.lr"] for r in rows] == ["1.0", "0.1", "0.01"]
    assert [round(float(r["final_loss"]), 5) for r in rows] == [0.09245, 1.05011, 1.23774]
    assert event_accumulator(sweep / "sweep_summary").Tags()["images"] == ["sweep/final_loss"]


@pytest.mark.slow
@_need("hydra_plugins.hydra_submitit_launcher")
@_need("hydra_plugins.hydra_optuna_sweeper")
def test_optuna_lr_search_runs_two_real_jobs_on_submitit_local(tmp_path):
    # One CLI start for two plugins (each start imports torch in every job: the suite's time budget).
    proc = run_cli(
        "-m", "hparams_search=lr_optuna", "hydra/launcher=submitit_local", "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2", "model=linear", "trainer.max_steps=20", QUIET,
        f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    sweep = tmp_path / "sweep"
    assert len(list(sweep.glob(".submitit/*/*_result.pkl"))) == 2  # two submitit jobs, run to completion
    rows = _csv_rows(sweep / "summary.csv")
    assert len(rows) == 2 and all(r["run"].startswith("model=linear,optim.lr=") for r in rows)
    results = (sweep / "optimization_results.yaml").read_text()
    assert f"optim.lr: {rows[0]['optim.lr']}" in results  # Optuna's best trial is the table's first row


def test_optuna_search_config_uses_memory_storage_and_a_log_uniform_lr():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="pip install -e '.[sweep]'")
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["hparams_search=lr_optuna"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper.storage is None and sweeper.direction == "minimize"
    assert sweeper.params["optim.lr"] == "tag(log, interval(0.001, 10.0))"


def test_slurm_launcher_config_sets_one_task_and_gpu_per_ddp_device():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[sweep]'")
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["hydra/launcher=slurm", "trainer=ddp"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.timeout_min, launcher.mem_gb) == (2, 2, 60, 16)
    assert launcher.partition is None


# --- SIGTERM ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_mid_run_leaves_readable_logs_and_an_interrupted_summary(tmp_path):
    run = tmp_path / "run"
    log = tmp_path / "output.txt"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore"}  # the progress bar shows up at once
    args = [sys.executable, str(TRAIN_SCRIPT), "model=sigmoid", "trainer.max_steps=1000000", "tol=0"]
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*args, "progress_every_n_steps=1", f"hydra.run.dir={run}"], cwd=tmp_path, stdout=out, stderr=out, env=env
        )
        deadline = time.monotonic() + 90
        while "Epoch 0" not in log.read_text() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)  # the bar appears once Lightning's loop (and its SIGTERM handler) runs
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    text = log.read_text()
    assert proc.returncode == 143, text[-2000:]
    summary = _summary(run)
    assert summary["status"] == "interrupted"
    assert 0 < summary["steps"] < 1000000
    assert read_scalars(run)["train/loss"][0] == pytest.approx(1.2599, abs=5e-5)
    assert "Traceback" not in text
    assert "run interrupted after" in text


# --- bad sweeps: refused before the first job -------------------------------------------------------------------

BAD_SWEEPS = [
    (["optim.lr=0.1,0.2,0.3,0.4,0.5,0.6,-1"], "job #6 (optim.lr=-1): optim.lr=-1.0 is not accepted"),
    (["optim.lr=range(0)"], "the sweep over optim.lr is empty"),
    (["optim.foo=1,2"], "Could not override 'optim.foo'"),
    (["optim.lr=0.1,0.1"], "jobs #0 and #1 would write into the same directory 'optim.lr=0.1'"),
    (["model=sigmoid,nope"], "job #1 (model=nope): In 'train': Could not find 'model/nope'"),
    (["hydra/launcher=ray", "optim.lr=0.1,1"], "Could not find 'hydra/launcher/ray'"),
    (["trainer.devices=2", "optim.lr=0.1,1"], "is not accepted in a multirun (-m) on the BasicLauncher"),
]


@pytest.mark.slow
@pytest.mark.parametrize("overrides, message", BAD_SWEEPS, ids=[" ".join(o) for o, _ in BAD_SWEEPS])
def test_bad_sweep_is_refused_before_any_job_runs(tmp_path, overrides, message):
    proc = run_cli("-m", *overrides, cwd=tmp_path)
    assert proc.returncode != 0
    assert message in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "outputs").exists()  # no sweep directory, no job started
