"""backprop_lab.run and backprop_lab.compose (the notebook API) against the command line; python -m backprop_lab."""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import DictConfig

import backprop_lab
from backprop_lab.config import ConfigError

from conftest import read_scalars, run_cli


def test_the_version_is_the_installed_distributions():
    assert backprop_lab.__version__ == importlib.metadata.version("backprop-lab")


def test_importing_the_package_imports_neither_torch_nor_hydra():
    code = "import sys, backprop_lab; print(sorted(m for m in ('torch', 'hydra', 'lightning') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_compose_is_the_validated_config_of_the_command_line():
    cfg = backprop_lab.compose(["model=relu", "optim.lr=0.5"])
    assert isinstance(cfg, DictConfig)
    assert "hydra" not in cfg
    assert cfg.model._target_ == "backprop_lab.models.ReLUNet"
    assert cfg.optim.lr == 0.5
    assert cfg.trainer.max_steps == 200  # configs/trainer/default.yaml
    again = backprop_lab.compose([])  # callable again in the same process
    assert again.model._target_ == "backprop_lab.models.SigmoidNet" and again.optim.lr == 0.1


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["optim.lr=-1"], "optim.lr=-1.0 is not accepted"),
        (["trainer.max_steps=0"], "trainer.max_steps"),
        (["model=nope"], "model"),
        (["+trainer.max_step=5"], "did you mean trainer.max_steps?"),
    ],
)
def test_a_refused_value_is_one_line_naming_the_key(overrides, named, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for call in (backprop_lab.compose, backprop_lab.run):
        with pytest.raises(ConfigError) as error:
            call(overrides)
        assert named in str(error.value)
        assert "\n" not in str(error.value)
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.slow
def test_run_trains_where_the_command_line_would_and_again_in_the_same_process(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    first = backprop_lab.run(["model=relu", "trainer.max_steps=2", "trainer.enable_progress_bar=false"])
    second = backprop_lab.run(["model=sigmoid", "trainer.max_steps=3", "trainer.enable_progress_bar=false"])
    runs = sorted((tmp_path / "outputs" / "runs").iterdir())
    assert [re.sub(r"^[\d_.-]+_", "", p.name) for p in runs] == [
        "relu,trainer.max_steps=2",
        "sigmoid,trainer.max_steps=3",
    ]
    assert [Path(first.log_dir).resolve(), Path(second.log_dir).resolve()] == [p.resolve() for p in runs]
    for result, run_dir, steps in ((first, runs[0], 2), (second, runs[1], 3)):
        assert result.status == "finished" and result.steps == steps
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["final_loss"] == result.final_loss
        assert read_scalars(run_dir)["train/loss"][steps] == pytest.approx(result.final_loss)
        assert (run_dir / ".hydra" / "config.yaml").is_file() and (run_dir / ".hydra" / "overrides.yaml").is_file()
    # the first run's loss after two updates of the post's ReLU net (as tests/test_cli.py reads it from the CLI)
    assert first.final_loss == pytest.approx(0.406793, abs=1e-6)
    out = capsys.readouterr().out
    assert out.count("run finished after") == 2
    assert "GPU available" not in out
    assert "run finished after 2 steps" in (runs[0] / "train.log").read_text()


@pytest.mark.slow
def test_run_into_a_given_directory_and_one_that_holds_a_run_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = backprop_lab.run(["model=relu", "trainer.max_steps=1"], run_dir=tmp_path / "mine")
    assert Path(result.log_dir) == tmp_path / "mine" and (tmp_path / "mine" / "summary.json").is_file()
    with pytest.raises(ConfigError, match="run_dir=.* already holds another run"):
        backprop_lab.run(["model=relu", "trainer.max_steps=1"], run_dir=tmp_path / "mine")
    assert not (tmp_path / "outputs").exists()


def _lines(text: str) -> list[str]:
    """Output lines without what differs between two runs (times, the run directory's time stamp)."""
    text = re.sub(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d\.\d+", "<time>", text)
    return [re.sub(r" in \d+\.\d s$", "", line) for line in text.splitlines()]


@pytest.mark.slow
def test_python_dash_m_is_the_command(tmp_path):
    args = ("model=relu", "trainer.max_steps=2", "trainer.enable_progress_bar=false")
    as_module = subprocess.run(
        [sys.executable, "-m", "backprop_lab", *args], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    command = run_cli(*args, cwd=tmp_path)
    assert as_module.returncode == command.returncode == 0, as_module.stderr
    assert _lines(as_module.stdout) == _lines(command.stdout)
    assert "run finished after 2 steps: loss 0.406793" in as_module.stdout
    refused = subprocess.run(
        [sys.executable, "-m", "backprop_lab", "optim.lr=-1"], cwd=tmp_path, capture_output=True, text=True
    )
    assert refused.returncode == run_cli("optim.lr=-1", cwd=tmp_path).returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "error: optim.lr=-1.0 is not accepted: use a positive learning rate, e.g. optim.lr=0.1."
    ]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("modle=relu", "modle is not accepted: the config has no such key; did you mean model?"),
        ("max_steps=5", "max_steps is not accepted: the config has no such key; did you mean trainer.max_steps?"),
        ("lr=0.1", "lr is not accepted: the config has no such key; did you mean optim.lr?"),
    ],
)
def test_an_unknown_top_level_key_gets_the_nearest_key_not_hydras_plus_hint(override, message):
    with pytest.raises(ConfigError) as error:
        backprop_lab.compose([override])
    assert str(error.value) == message


@pytest.mark.slow
def test_the_command_line_says_did_you_mean_and_help_names_files_the_package_has(tmp_path):
    proc = run_cli("modle=relu", cwd=tmp_path)
    assert proc.returncode == 1
    assert (
        proc.stderr.splitlines()[0] == "error: modle is not accepted: the config has no such key; did you mean model?"
    )
    assert "+modle" not in proc.stderr
    helped = run_cli("--help", cwd=tmp_path)
    assert helped.returncode == 0
    (where,) = re.findall(r'^\s+(python -c ".*")$', helped.stdout, re.M)
    code = where.removeprefix('python -c "').removesuffix('"')  # with this interpreter, whatever PATH says
    path = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    path = path.stdout.strip()
    assert (Path(path) / "train.yaml").is_file() and (Path(path) / "model" / "relu.yaml").is_file()
    assert "docs/configuration.md" not in helped.stdout.split("python -m backprop_lab")[0]  # not as the only source
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_run_resumes_a_run_by_its_log_dir_and_a_resume_with_nothing_left_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    common = ["model=relu", "trainer.enable_progress_bar=false", "monitor.pictures=[]"]
    first = backprop_lab.run([*common, "trainer.max_steps=5"])
    run_dir = Path(first.log_dir)
    assert "," in run_dir.name and "=" in run_dir.name  # what Hydra needs quoted: run() quotes it
    resumed = backprop_lab.run([*common, "trainer.max_steps=8", f"resume={first.log_dir}"])
    assert (resumed.steps, Path(resumed.log_dir)) == (8, run_dir)
    assert sorted(read_scalars(run_dir)["train/loss"]) == list(range(9))
    record = sorted(p.name for p in (run_dir / ".hydra").iterdir())
    again = backprop_lab.run([*common, "trainer.max_steps=8", f"resume={first.log_dir}"])
    assert (again.steps, again.final_loss) == (8, resumed.final_loss)
    assert sorted(p.name for p in (run_dir / ".hydra").iterdir()) == record  # no record of a no-op resume
    assert len(list((tmp_path / "outputs" / "runs").iterdir())) == 1
