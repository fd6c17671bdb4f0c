"""backprop_lab.loggers.TensorBoardLogger: Lightning's logger, each log_metrics call written as one event."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest
import torch
import yaml
from google.protobuf.message import DecodeError
from lightning.pytorch.loggers import TensorBoardLogger as LightningTensorBoardLogger
from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

from backprop_lab.loggers import TensorBoardLogger

from conftest import event_accumulator, event_files, read_csv_metrics, read_scalars, run_cli, train_run

CALLS = [({"train/loss": 1.25, "grad_norm/w1": torch.tensor(0.5)}, 0), ({"train/loss": 1.0, "relu/h": 0.0}, 1)]


def _log(logger_cls, log_dir, **kwargs):
    logger = logger_cls(save_dir=str(log_dir), name="", version="", default_hp_metric=False, **kwargs)
    for metrics, step in CALLS:
        logger.log_metrics(metrics, step)
    logger.finalize("success")


def test_the_same_tags_and_values_as_lightnings_logger(tmp_path):
    _log(TensorBoardLogger, tmp_path / "ours")
    _log(LightningTensorBoardLogger, tmp_path / "lightning")
    assert (
        read_scalars(tmp_path / "ours")
        == read_scalars(tmp_path / "lightning")
        == {
            "train/loss": {0: 1.25, 1: 1.0},
            "grad_norm/w1": {0: 0.5},
            "relu/h": {1: 0.0},
        }
    )


def test_each_call_is_one_event(tmp_path):
    _log(TensorBoardLogger, tmp_path)
    (path,) = event_files(tmp_path)
    events = [e for e in LegacyEventFileLoader(str(path)).Load() if e.summary.value]
    assert [(e.step, [v.tag for v in e.summary.value]) for e in events] == [
        (0, ["train/loss", "grad_norm/w1"]),
        (1, ["train/loss", "relu/h"]),
    ]


def test_the_calls_of_one_step_are_one_event_until_a_tag_repeats(tmp_path):
    logger = TensorBoardLogger(save_dir=str(tmp_path), name="", version="", default_hp_metric=False)
    logger.log_metrics({"grad_norm/w1": 0.5, "update_ratio/w1": 0.25}, 0)  # the monitors' calls of step 0
    logger.log_metrics({"relu/dead_fraction/h": 1.0}, 0)
    logger.log_metrics({"train/loss": 1.25}, 0)  # then Lightning's own, and its save()
    logger.save()
    logger.log_metrics({"train/loss": 1.0}, 1)
    logger.log_metrics({"train/loss": 0.5}, 1)  # the same tag again at the same step: an event of its own
    logger.log_metrics({"relu/dead_fraction/h": 0.0}, 2)  # written at finalize
    logger.finalize("success")
    (path,) = event_files(tmp_path)
    events = [e for e in LegacyEventFileLoader(str(path)).Load() if e.summary.value]
    assert [(e.step, [(v.tag, v.simple_value) for v in e.summary.value]) for e in events] == [
        (0, [("grad_norm/w1", 0.5), ("update_ratio/w1", 0.25), ("relu/dead_fraction/h", 1.0), ("train/loss", 1.25)]),
        (1, [("train/loss", 1.0)]),
        (1, [("train/loss", 0.5)]),
        (2, [("relu/dead_fraction/h", 0.0)]),
    ]


def test_a_saved_checkpoint_finds_every_earlier_event_on_disk(tmp_path):
    # save() flushes at most every flush_every_s; a checkpoint flushes always, so that a run killed after it and
    # resumed from it misses no event before it
    logger = TensorBoardLogger(save_dir=str(tmp_path), name="", version="", flush_every_s=3600)
    for step in range(3):
        logger.log_metrics({"train/loss": 1.0 / 2**step}, step)
        logger.save()
    logger.after_save_checkpoint(None)
    assert read_scalars(tmp_path) == {"train/loss": {0: 1.0, 1: 0.5, 2: 0.25}}
    logger.finalize("success")


def test_a_prefix_takes_lightnings_own_path(tmp_path):
    _log(TensorBoardLogger, tmp_path, prefix="run")
    assert set(read_scalars(tmp_path)) == {"run-train/loss", "run-grad_norm/w1", "run-relu/h"}


# --- logger=[tensorboard,csv,mlflow,wandb]: the same values read back by each one's own client -------------

WANDB_BLOCK = 32768  # the .wandb file: LevelDB's log format, 32 KiB blocks of records with 7-byte headers
WANDB_FULL, WANDB_LAST = 1, 4  # a whole record, the last piece of a record cut across blocks


def wandb_records(path: Path) -> list:
    """The records of an offline W&B run file, parsed with W&B's published protobuf schema."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, piece, pos = [], b"", 7  # ":W&B", a 2-byte magic number and a version byte
    while pos + 7 <= len(data):
        left = WANDB_BLOCK - pos % WANDB_BLOCK
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or (kind == 0 and length == 0):  # the zero padding at a block's end
            pos += left
            continue
        piece += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (WANDB_FULL, WANDB_LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(piece)
            records.append(record)
            piece = b""
    return records


def wandb_key(item) -> str:
    """An item's key: ``key``, or its ``nested_key`` parts (a key with a ``/`` is written as its parts)."""
    return item.key or "/".join(item.nested_key)


def wandb_values(run_dir: Path) -> tuple[dict[str, dict[int, float]], dict, str]:
    """``({tag: {step: value}}, config, run name)`` of the one offline W&B run in ``run_dir``."""
    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    for _ in range(100):  # W&B's own process writes the file: read it again until its closing record is there
        try:
            records = wandb_records(path)
        except DecodeError:  # a record half written
            records = []
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            break
        time.sleep(0.1)
    values: dict[str, dict[int, float]] = {}
    config, name = {}, None
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {wandb_key(item): json.loads(item.value_json) for item in record.history.item}
            step = items.pop("trainer/global_step")
            for key, value in items.items():
                if not key.startswith("_"):
                    values.setdefault(key, {})[int(step)] = float(value)
        elif kind == "config":
            config.update({wandb_key(item): json.loads(item.value_json) for item in record.config.update})
        elif kind == "run":
            name = record.run.display_name
    return values, config, name


def mlflow_values(run_dir: Path) -> tuple[dict[str, dict[int, float]], dict, object]:
    """``({tag: {step: value}}, params, run info)`` of the one MLflow run in ``<run_dir>/mlruns``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(run_dir / "mlruns").absolute().as_uri())
    experiment = client.get_experiment_by_name("backprop-lab")
    (run,) = client.search_runs([experiment.experiment_id])
    values = {
        key: {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)} for key in run.data.metrics
    }
    return values, run.data.params, run.info


def mlflow_tags(run_dir: Path) -> dict[str, str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(run_dir / "mlruns").absolute().as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("backprop-lab").experiment_id])
    return run.data.tags


def wandb_summary(run_dir: Path) -> dict:
    """The W&B run's summary: its summary records' updates, in order."""
    wandb_values(run_dir)  # until the file is complete
    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    summary = {}
    for record in wandb_records(path):
        if record.WhichOneof("record_type") == "summary":
            summary.update({wandb_key(item): json.loads(item.value_json) for item in record.summary.update})
    return summary


@pytest.mark.slow
def test_four_loggers_get_the_same_values(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # what the logger sets for its store; kept to this test
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    run_dir = tmp_path / "relu_run"
    result, tensorboard = train_run(
        run_dir, "model=relu", "trainer.max_steps=12", "monitor.pictures=[]", "logger=[tensorboard,csv,mlflow,wandb]"
    )
    csv_values = read_csv_metrics(run_dir / "metrics.csv")
    mlflow, params, info = mlflow_values(run_dir)
    wandb, config, name = wandb_values(run_dir)
    run_tags, summary = mlflow_tags(run_dir), wandb_summary(run_dir)

    # every scalar of the run, at every step, in each of the four (TensorBoard stores float32), the final
    # metrics among them
    tags = set(tensorboard)
    assert len(tags) > 10 and {"train/loss", "grads/w1", "hparams/final_loss"} <= tags
    for other in (csv_values, mlflow, wandb):
        assert set(other) == tags
        for tag in tags:
            assert other[tag].keys() == tensorboard[tag].keys(), tag
            for step, value in tensorboard[tag].items():
                assert other[tag][step] == pytest.approx(value, rel=1e-6, abs=1e-7), (tag, step)
    assert set(tensorboard["train/loss"]) == set(range(13))  # the loss before each update and after the last

    # the final metrics and status reach every one of them; the run named after its directory
    for other in (tensorboard, csv_values, mlflow, wandb):
        assert other["hparams/final_loss"] == {result.steps: pytest.approx(result.final_loss)}
        assert other["hparams/steps"] == {result.steps: 12.0}
    assert params["status"] == config["status"] == result.status == "finished"
    assert params["model"] == config["model"] == "ReLUNet"
    assert info.run_name == name == "relu_run"
    assert info.status == "FINISHED" and run_tags["status"] == summary["status"] == "finished"
    assert summary["hparams/final_loss"] == pytest.approx(result.final_loss)
    hparams = yaml.safe_load((run_dir / "hparams.yaml").read_text())
    assert hparams["status"] == "finished" and hparams["optim.lr"] == 0.1


@pytest.mark.slow
def test_the_presets_from_the_command_line_with_no_server_no_account_and_no_stray_warning(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # as on a fresh machine
    proc = run_cli(
        "model=sigmoid", "trainer.max_steps=3", "logger=[csv,mlflow]", f"hydra.run.dir={run_dir}", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    for stray in ("Previous log files", "not found. Creating it", "Warning", "Invalid experiment"):
        assert stray not in out, stray
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    values, params, info = mlflow_values(run_dir)
    csv_values = read_csv_metrics(run_dir / "metrics.csv")
    assert values["train/loss"] == pytest.approx(csv_values["train/loss"])
    assert values["train/loss"][0] == pytest.approx(1.2599149502, abs=1e-6)  # the post's first loss, in float32
    assert info.run_name == "run" and info.status == "FINISHED" and params["status"] == "finished"


# --- TensorBoard's HParams tab: the trial named by its overrides, the headline columns first ---------------


def hparams_record(run_dir: Path) -> tuple:
    """``(experiment, session start info)`` of a run's HParams record, parsed with TensorBoard's hparams plugin."""
    from tensorboard.plugins.hparams import metadata

    acc = event_accumulator(run_dir)
    contents = {tag: acc.SummaryMetadata(tag).plugin_data.content for tag in acc.Tags()["tensors"]}
    experiment = metadata.parse_experiment_plugin_data(contents[metadata.EXPERIMENT_TAG])
    start = metadata.parse_session_start_info_plugin_data(contents[metadata.SESSION_START_INFO_TAG])
    return experiment, start


@pytest.mark.slow
def test_the_hparams_trial_is_named_by_its_overrides_with_model_lr_and_status_first(tmp_path):
    run_dir = tmp_path / "2026-12-04_19-27-57.371407_relu,optim.lr=0.5"  # as the command line names a run
    result, scalars = train_run(run_dir, "model=relu", "optim.lr=0.5", "trainer.max_steps=6", "monitor.pictures=[]")
    experiment, start = hparams_record(run_dir)
    assert start.group_name == "relu,optim.lr=0.5"  # the Trial ID: the overrides, not the time
    shown = [(info.name, info.display_name) for info in experiment.hparam_infos]
    assert shown[:3] == [("1. model", "model"), ("2. optim.lr", "optim.lr"), ("3. status", "status")]
    assert shown[:3] == sorted(shown)[:3]  # TensorBoard's own order (by name) keeps them first
    assert [m.name.tag for m in experiment.metric_infos][:2] == ["hparams/final_loss", "hparams/best_loss"]
    values = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
    assert values["1. model"] == "ReLUNet" and values["2. optim.lr"] == 0.5 and values["3. status"] == result.status
    assert values["trainer.max_steps"] == 6
    assert scalars["hparams/final_loss"] == {6: pytest.approx(result.final_loss)}


@pytest.mark.slow
def test_lightnings_own_mlflow_logger_by_target_gets_a_store_of_its_own(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3's switch for file stores, as its message says
    run_dir = tmp_path / "run"
    result, tensorboard = train_run(
        run_dir, "model=relu", "trainer.max_steps=3", "+logger.ml._target_=lightning.pytorch.loggers.MLFlowLogger"
    )
    client = MlflowClient(tracking_uri=(run_dir / "mlruns").as_uri())  # not the run directory itself
    (experiment,) = [e for e in client.search_experiments() if e.name == "lightning_logs"]
    (run,) = client.search_runs([experiment.experiment_id])
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train/loss")}
    assert history == pytest.approx(tensorboard["train/loss"])
    assert run.data.params["status"] == result.status


@pytest.mark.slow
def test_two_wandb_runs_in_one_process_are_two_wandb_runs(tmp_path, monkeypatch):
    # A notebook's second run: W&B keeps one current run per process, so the first must have been finished.
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    first, _ = train_run(tmp_path / "first", "model=linear", "trainer.max_steps=2", "logger=wandb")
    second, _ = train_run(tmp_path / "second", "model=sigmoid", "trainer.max_steps=3", "logger=wandb")
    values = {}
    for name in ("first", "second"):
        run_values, _config, run_name = wandb_values(tmp_path / name)
        assert run_name == name
        values[name] = run_values
    assert values["first"]["hparams/steps"] == {2: 2.0} and values["second"]["hparams/steps"] == {3: 3.0}
    assert values["second"]["train/loss"][0] == pytest.approx(1.2599149502, abs=1e-6)  # the sigmoid net's, not linear's
