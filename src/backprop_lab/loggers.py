"""The package's loggers: Lightning's TensorBoard and CSV loggers, each with one change.

TensorBoard: the ``log_metrics`` calls of one step written as one event (with the Backprop tab's tensor of that
step, :meth:`TensorBoardLogger.add_summary`), flushed at most once a second.

Lightning's ``TensorBoardLogger.log_metrics`` writes one event per scalar (``SummaryWriter.add_scalar``),
each serialised, queued and checksummed on its own: about 26 µs a scalar here, so the ~20 scalars a
monitored MLP logs every step cost ~0.5 ms, a tenth of its step. Here the calls for one step (each monitor's,
then Lightning's own ``train/loss``) are gathered into one ``Summary``, written at Lightning's ``save()`` after
the step, at a call for another step, or before a tag would repeat: the same tags and values reach the same
event file for a fraction of that.
Lightning also calls ``save()`` after every ``log_metrics``, and its TensorBoard logger flushes the writer
there: the training step waits, every step, until the writer's thread has checksummed (in Python, ~0.1 µs a
byte) and written everything queued, and then for the file's flush. Here ``save()`` flushes at most once every
``flush_every_s`` seconds (TensorBoard itself reloads a run every 5 s), and always after a checkpoint is saved
(so a hard-killed run resumed from its checkpoint misses no event before it) and at ``finalize``. Everything
else (the writer, hparams, the directory layout) is Lightning's, unchanged.

CSV: a resumed run keeps the rows its run wrote before the step it resumes from (Lightning's CSVLogger
deletes a ``metrics.csv`` it finds), as TensorBoard keeps the events before its ``purge_step``.

MLflow and W&B (``logger=mlflow``, ``logger=wandb``; ``pip install 'backprop-lab[loggers]'``): Lightning's
loggers, safe on a machine with no server and no account. MLflow writes to a file store in the run
directory (``<run dir>/mlruns``) unless ``tracking_uri`` is given; W&B runs offline (``<run dir>/wandb``)
unless ``offline=false`` or ``WANDB_MODE`` says otherwise. Each names its run after the run directory.
"""

from __future__ import annotations

import csv
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers import MLFlowLogger as LightningMLFlowLogger
from lightning.pytorch.loggers import TensorBoardLogger as LightningTensorBoardLogger
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.utilities import rank_zero_only
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2


class TensorBoardLogger(LightningTensorBoardLogger):
    """``lightning.pytorch.loggers.TensorBoardLogger`` writing the scalars of one call as one event, and flushing
    at most every ``flush_every_s`` seconds (0: at every ``save()``, as Lightning's), after each checkpoint and at
    the end."""

    def __init__(self, *args, prefix: str = "", flush_every_s: float = 1.0, **kwargs):
        number = isinstance(flush_every_s, (int, float)) and not isinstance(flush_every_s, bool)
        if not (number and math.isfinite(flush_every_s) and flush_every_s >= 0):
            raise ValueError(f"flush_every_s={flush_every_s!r}: use a number of seconds >= 0 (0: flush at every step)")
        super().__init__(*args, prefix=prefix, **kwargs)
        self.metric_prefix = prefix  # with one, Lightning's own path names the tags
        self.flush_every_s = float(flush_every_s)
        self._flushed_at = -math.inf
        self._pending: Event | None = None  # the scalars of one step (its ``summary``), not written yet
        self._pending_step: int | None = None
        self._pending_tags: set[str] = set()

    @rank_zero_only
    def save(self) -> None:
        """The step's scalars as one event; Lightning's ``save`` (flush, and ``hparams.yaml`` where missing) at
        most every ``flush_every_s`` s."""
        self._write_pending()
        now = time.monotonic()
        if now - self._flushed_at >= self.flush_every_s:
            self._flushed_at = now
            super().save()

    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback) -> None:
        super().after_save_checkpoint(checkpoint_callback)
        self._write_pending()
        self._flushed_at = time.monotonic()
        super().save()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self._write_pending()
        super().finalize(status)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        try:  # a float, or a one-element tensor's value (Tensor.__float__)
            values = [(k, float(v)) for k, v in metrics.items()] if not self.metric_prefix else None
        except TypeError:  # a dict of values (add_scalars)
            values = None
        pending = self._pending
        if values is not None and (
            pending is None or step != self._pending_step or not self._pending_tags.isdisjoint(metrics)
        ):
            self._write_pending()  # another step, or a tag logged twice at one step: an event of its own
            # A writer that is closed (None) is looked at once per event: Lightning's own path reopens it.
            pending = self._pending = Event() if self.experiment.file_writer is not None else None
            self._pending_step = step
        if values is None or pending is None:  # Lightning's own path: a prefix, a dict of values, a closed writer
            self._write_pending()
            return super().log_metrics(metrics, step)
        add = pending.summary.value.add
        for k, v in values:
            add(tag=k, simple_value=v)
        self._pending_tags.update(metrics)

    @rank_zero_only
    def add_summary(self, summary: Summary, step: int) -> None:
        """``summary``'s values (a plugin's tensor, say) at ``step``, in that step's one event with its scalars, by
        the rule of :meth:`log_metrics`: one event less a step, and its bytes, for the writer to checksum."""
        tags = [v.tag for v in summary.value]
        pending = self._pending
        if pending is None or step != self._pending_step or not self._pending_tags.isdisjoint(tags):
            self._write_pending()
            if self.experiment.file_writer is None:
                return  # closed: nothing written, as SummaryWriter.file_writer.add_summary would not either
            pending = self._pending = Event()
            self._pending_step = step
        pending.summary.value.extend(summary.value)  # copies: the caller may reuse its summary
        self._pending_tags.update(tags)

    def _write_pending(self) -> None:
        event, self._pending = self._pending, None
        self._pending_tags = set()
        if event is None:
            return
        writer = self.experiment.file_writer
        if writer is not None:
            writer.add_event(event, step=self._pending_step)  # built as an Event: not copied into one
        else:  # closed since: Lightning's own path opens it again (scalars only: it writes no other kind)
            values = event.summary.value
            scalars = {v.tag: v.simple_value for v in values if v.WhichOneof("value") == "simple_value"}
            super().log_metrics(scalars, self._pending_step)

    @rank_zero_only
    def log_hparams_record(
        self,
        params: Mapping[str, Any],
        metrics: Mapping[str, float],
        trial: str,
        first: Sequence[str] = (),
        step: int = 0,
    ) -> None:
        """The run's record in TensorBoard's HParams tab: ``params`` (also to ``hparams.yaml``, as Lightning
        keeps them), ``metrics`` at ``step`` as its metric columns, in this order, and the trial named ``trial``.

        TensorBoard orders the HParams columns by name: the keys of ``first`` are named ``1. <key>``,
        ``2. <key>`` … so that they come first, each shown by its own name (its display name)."""
        super().log_hyperparams(params)  # hparams.yaml only: with no metrics (and no hp_metric) nothing else
        self.log_metrics(metrics, step)  # also opens the writer again, where the fit closed it
        self._write_pending()
        names = {key: f"{i}. {key}" for i, key in enumerate(first, start=1)}
        infos = [
            api_pb2.HParamInfo(name=names.get(k, k), display_name=k, type=HPARAM_TYPES.get(type(v), STRING))
            for k, v in sorted(params.items(), key=lambda kv: names.get(kv[0], kv[0]))
        ]
        start = plugin_data_pb2.SessionStartInfo(group_name=trial, start_time_secs=time.time())
        for key, value in params.items():
            field = (
                "bool_value"
                if isinstance(value, bool)
                else "number_value"
                if isinstance(value, (int, float))
                else "string_value"
            )
            setattr(start.hparams[names.get(key, key)], field, value if field != "string_value" else str(value))
        records = {
            metadata.EXPERIMENT_TAG: plugin_data_pb2.HParamsPluginData(
                experiment=api_pb2.Experiment(
                    hparam_infos=infos,
                    metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=t), display_name=t) for t in metrics],
                )
            ),
            metadata.SESSION_START_INFO_TAG: plugin_data_pb2.HParamsPluginData(session_start_info=start),
            metadata.SESSION_END_INFO_TAG: plugin_data_pb2.HParamsPluginData(
                session_end_info=plugin_data_pb2.SessionEndInfo(
                    status=api_pb2.STATUS_SUCCESS, end_time_secs=time.time()
                )
            ),
        }
        writer = self.experiment.file_writer
        for tag, data in records.items():
            summary = Summary()
            summary.value.add(tag=tag, metadata=metadata.create_summary_metadata(data), tensor=metadata.NULL_TENSOR)
            writer.add_summary(summary, global_step=step)
        writer.flush()


STRING = api_pb2.DATA_TYPE_STRING
HPARAM_TYPES = {bool: api_pb2.DATA_TYPE_BOOL, int: api_pb2.DATA_TYPE_FLOAT64, float: api_pb2.DATA_TYPE_FLOAT64}


METRICS_FILE = "metrics.csv"  # Lightning's CSVLogger writes its rows here, in its log_dir


class CSVLogger(LightningCSVLogger):
    """``lightning.pytorch.loggers.CSVLogger``; with ``purge_step`` (a resumed run) the rows of steps before it
    that ``metrics.csv`` already holds are kept, the later ones dropped (the run logs them again)."""

    def __init__(self, *args, purge_step: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if purge_step is None:
            return
        kept = rows_before(Path(self.log_dir) / METRICS_FILE, purge_step)  # read before Lightning deletes it
        writer = self.experiment
        for step, values in kept:
            writer.log_metrics(values, step)
        self.save()

    @property
    def experiment(self):
        # Lightning warns "previous log files in this directory will be deleted" whenever its directory holds
        # any file: here it is the run directory, which holds the run's other logs, and a resumed run's rows
        # before its step are kept (above). Only metrics.csv is ever replaced.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*Previous log files in this directory will be deleted.*")
            return super().experiment


def rows_before(path: Path, step: int) -> list[tuple[int, dict[str, float]]]:
    """``(step, {column: value})`` of each row of a CSVLogger's ``metrics.csv`` logged before ``step``."""
    if not path.is_file():
        return []
    with path.open(newline="") as file:
        rows = list(csv.DictReader(file))
    out = []
    for row in rows:
        at = int(row.pop("step"))
        if at < step:
            out.append((at, {k: _number(v) for k, v in row.items() if v not in ("", None)}))
    return out


def _number(text: str) -> int | float:
    """A cell as it was logged: ``3`` (an epoch) stays an int, ``0.25`` a float."""
    try:
        return int(text)
    except ValueError:
        return float(text)


# --- MLflow and W&B: Lightning's loggers with defaults for a machine with no server and no account ----------

EXPERIMENT = "backprop-lab"  # MLflow's experiment and W&B's project, unless the config names another


class MLFlowLogger(LightningMLFlowLogger):
    """``lightning.pytorch.loggers.MLFlowLogger``; without ``tracking_uri``, a file store in ``<save_dir>/mlruns``
    (``save_dir`` is the run directory), and the run named after the run directory unless ``run_name`` is given.

    MLflow 3 opens a file store only with ``MLFLOW_ALLOW_FILE_STORE=true``: it is set for this store, unless the
    environment says otherwise. The experiment is made here when the store lacks it (Lightning would warn that
    it was "not found")."""

    def __init__(
        self,
        experiment_name: str = EXPERIMENT,
        run_name: str | None = None,
        tracking_uri: str | None = None,
        save_dir: str = ".",
        artifact_location: str | None = None,
        **kwargs,
    ):
        if tracking_uri is None:
            store = Path(save_dir).absolute() / "mlruns"
            tracking_uri = store.as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        super().__init__(
            experiment_name=experiment_name,
            run_name=run_name or Path(save_dir).absolute().name,
            tracking_uri=tracking_uri,
            save_dir=save_dir,
            artifact_location=artifact_location,
            **kwargs,
        )
        self.make_experiment(experiment_name, tracking_uri, artifact_location)

    @staticmethod
    @rank_zero_only
    def make_experiment(name: str, tracking_uri: str, artifact_location: str | None) -> None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri)
        if client.get_experiment_by_name(name) is None:
            client.create_experiment(name, artifact_location=artifact_location)


def wandb_offline() -> bool:
    """Whether a W&B run goes offline by default: unless ``WANDB_MODE`` or an API key in the environment
    says the user set W&B up."""
    return "WANDB_MODE" not in os.environ and "WANDB_API_KEY" not in os.environ


class WandbLogger(LightningWandbLogger):
    """``lightning.pytorch.loggers.WandbLogger``; offline unless configured (``offline=false``, ``WANDB_MODE``,
    ``WANDB_API_KEY``), in ``<save_dir>/wandb`` (the run directory), the run named after the run directory
    and the project ``backprop-lab`` unless given. :meth:`finish` ends the W&B run, so that the next run of the
    same process (a notebook's) starts its own."""

    def __init__(
        self,
        name: str | None = None,
        save_dir: str = ".",
        offline: bool | None = None,
        project: str | None = None,
        **kwargs,
    ):
        super().__init__(
            name=name or Path(save_dir).absolute().name,
            save_dir=save_dir,
            offline=wandb_offline() if offline is None else offline,
            project=project or os.environ.get("WANDB_PROJECT", EXPERIMENT),
            **kwargs,
        )

    @rank_zero_only
    def finish(self) -> None:
        self.experiment.finish()
